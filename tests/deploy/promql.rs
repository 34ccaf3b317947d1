//! Metric and label names: those a `/metrics` page exports, and those a
//! PromQL expression (dashboard, adapter rule, HPA) refers to.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

/// What a scrape of `/metrics` holds: the type of each family and the label
/// names seen on each series name (`x_bucket` has `le`).
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
        let mut out = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    out.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let names = out.labels.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                let close = line.rfind('}').unwrap_or(line.len());
                for c in label.captures_iter(&line[end..close]) {
                    names.insert(c[1].to_string());
                }
            }
        }
        out
    }

    /// Whether a series name is exported: a sample line of its own, or a
    /// histogram's (or summary's) `_bucket`, `_sum` or `_count`.
    pub fn has_series(&self, name: &str) -> bool {
        if self.labels.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|family| {
                matches!(
                    self.types.get(family).map(String::as_str),
                    Some("histogram" | "summary")
                )
            })
        })
    }

    /// Label names on the series `name`.
    pub fn labels_of(&self, name: &str) -> BTreeSet<String> {
        self.labels.get(name).cloned().unwrap_or_default()
    }
}

/// `sluice_*` metric names an expression refers to.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = Regex::new(r"(^|[^a-zA-Z0-9_:])(sluice_[a-zA-Z0-9_:]+)").unwrap();
    re.captures_iter(expr).map(|c| c[2].to_string()).collect()
}

/// Label names an expression uses: in `by`/`without`/`on`/`ignoring`
/// lists and in `{label="…"}` matchers. Template placeholders (`<<…>>`,
/// the adapter's) are not labels.
pub fn label_names(expr: &str) -> BTreeSet<String> {
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let matchers = Regex::new(r#"\{([^{}]*)\}"#).unwrap();
    let matcher =
        Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*""#).unwrap();
    let mut out = BTreeSet::new();
    for c in grouping.captures_iter(expr) {
        out.extend(
            c[1].split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains("<<"))
                .map(String::from),
        );
    }
    for c in matchers.captures_iter(expr) {
        if c[1].contains("<<") {
            continue;
        }
        out.extend(matcher.captures_iter(&c[1]).map(|m| m[1].to_string()));
    }
    out
}

/// Every string in a JSON value, with the key it sits under.
pub fn strings_in<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key.to_string(), s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings_in(x, key, out)),
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| strings_in(x, k, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_of_expressions() {
        let e = r#"histogram_quantile(0.99, sum by (le) (rate(sluice_ack_latency_seconds_bucket{stream!~"a,b"}[5m]))) / sum(sluice_x)"#;
        let names: Vec<_> = metric_names(e).into_iter().collect();
        assert_eq!(names, ["sluice_ack_latency_seconds_bucket", "sluice_x"]);
        let labels: Vec<_> = label_names(e).into_iter().collect();
        assert_eq!(labels, ["le", "stream"]);
        let adapter = "sum(avg_over_time(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)";
        assert!(label_names(adapter).is_empty());
        assert!(metric_names("not_sluice_x + xsluice_y").is_empty());
    }

    #[test]
    fn exposition_families() {
        let text = "# TYPE sluice_h histogram\nsluice_h_bucket{le=\"0.1\"} 1\nsluice_h_sum 1\n\
                    # TYPE sluice_c counter\nsluice_c{op=\"put\",stream=\"a\\\"b\"} 2\n";
        let x = Exposition::parse(text);
        assert!(x.has_series("sluice_h_bucket") && x.has_series("sluice_h_count"));
        assert!(x.has_series("sluice_c") && !x.has_series("sluice_c_count"));
        let labels: Vec<_> = x.labels_of("sluice_c").into_iter().collect();
        assert_eq!(labels, ["op", "stream"]);
    }
}
