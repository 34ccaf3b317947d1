//! The Prometheus text exposition, parsed just enough for assertions: each
//! family's `# TYPE` and every sample with its labels.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` text.
#[derive(Debug, Default)]
pub struct Exposition {
    /// The text as served.
    pub text: String,
    /// Family name → `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut out = Exposition {
            text: text.to_string(),
            ..Exposition::default()
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                out.types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                out.samples.push(sample(line));
            }
        }
        out
    }

    /// The samples of one series name (`…_bucket`, `…_count` for histograms).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// Scrape `url` (a `/metrics` address) every 10 ms until `done` holds,
/// for at most `limit`; panics naming `what`, with the last text.
pub async fn wait_for(
    url: &str,
    limit: std::time::Duration,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + limit;
    loop {
        let resp = client.get(url).send().await.unwrap();
        let e = Exposition::parse(&resp.text().await.unwrap());
        if done(&e) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} (within {limit:?}); last /metrics:\n{}",
            e.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').expect("sample value");
    let value = value.parse().unwrap_or(f64::NAN);
    let Some((name, rest)) = head.split_once('{') else {
        return Sample {
            name: head.to_string(),
            labels: BTreeMap::new(),
            value,
        };
    };
    Sample {
        name: name.to_string(),
        labels: labels(rest.strip_suffix('}').expect("closing brace")),
        value,
    }
}

/// `k="v",k2="v2"`; values may hold escaped quotes and commas.
fn labels(mut text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while let Some((key, rest)) = text.split_once("=\"") {
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        text = &rest[end..];
    }
    out
}
