//! Auth over the wire: every route × key × origin answers as DESIGN §4 says;
//! tenants never see each other; rate limits refuse whole requests with the
//! draft `RateLimit` headers and recover; bad configs say what is wrong; TLS
//! serves a replaced certificate to the next connection.

mod common;

use std::time::Duration;

use common::gateway::{config_from, event_of, memory, test_config, TestGateway};
use common::keys::{entry, secret};
use serde_json::{json, Value};
use sluice::auth::keys::hash_text;
use sluice::config::Config;
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use sluice::store::Store;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALLOWED: &str = "http://allowed.example";

/// The keys of one test config, by role.
struct Keys {
    writer: String,
    reader: String,
    browser: String,
    ops: String,
    beta: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            writer: secret(),
            reader: secret(),
            browser: secret(),
            ops: secret(),
            beta: secret(),
        }
    }

    /// Tenant acme declares three streams and creates no others; tenant beta
    /// auto-creates.
    fn config(&self, extra: &str) -> Config {
        let keys = [
            entry(
                "writer",
                "acme",
                &self.writer,
                &["write"],
                r#"streams = ["clicks", "app.*"]"#,
            ),
            entry("reader", "acme", &self.reader, &["read"], ""),
            entry(
                "browser",
                "acme",
                &self.browser,
                &["write"],
                &format!("origins = [\"{ALLOWED}\"]"),
            ),
            entry("ops", "acme", &self.ops, &["metrics"], ""),
            entry("beta", "beta", &self.beta, &["write", "read"], ""),
        ];
        let streams = r#"
[tenants.acme]
auto_create = false
[tenants.acme.streams.clicks]
partitions = 2
[tenants.acme.streams."app.views"]
[tenants.acme.streams.secret]
[tenants.beta]
"#;
        config_from(&format!("{streams}\n{}\n{extra}", keys.concat()))
    }
}

/// How a request carries its key.
#[derive(Clone, Copy, Debug)]
enum Via<'a> {
    None,
    Bearer(&'a str),
    Header(&'a str),
    Query(&'a str),
}

/// One row: route, stream, key, origin → status.
struct Case<'a> {
    route: &'static str,
    stream: &'a str,
    via: Via<'a>,
    origin: Option<&'a str>,
    status: u16,
}

async fn send(gw: &TestGateway, client: &reqwest::Client, c: &Case<'_>) -> (u16, String) {
    if matches!(c.route, "ws" | "subscribe") {
        return websocket(gw, c).await;
    }
    let path = match c.route {
        "post" | "read" => format!("/v1/streams/{}/events", c.stream),
        "describe" => format!("/v1/streams/{}", c.stream),
        "list" => "/v1/streams".to_string(),
        other => format!("/{other}"),
    };
    let mut url = gw.url(&path);
    if let Via::Query(k) = c.via {
        url.push_str(&format!("?key={k}"));
    }
    let mut req = match c.route {
        "post" => client.post(&url).body(r#"{"n":1}"#),
        _ => client.get(&url),
    };
    req = match c.via {
        Via::Bearer(k) => req.bearer_auth(k),
        Via::Header(k) => req.header("x-api-key", k),
        Via::None | Via::Query(_) => req,
    };
    if let Some(o) = c.origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// A WebSocket handshake: 101, or the status of the refusal.
async fn websocket(gw: &TestGateway, c: &Case<'_>) -> (u16, String) {
    let query = match c.via {
        Via::Query(k) => format!("?key={k}"),
        _ => String::new(),
    };
    let url = format!(
        "ws://{}/v1/streams/{}/{}{query}",
        gw.addr, c.stream, c.route
    );
    let mut req = url.as_str().into_client_request().unwrap();
    let h = req.headers_mut();
    match c.via {
        Via::Bearer(k) => h.insert("authorization", format!("Bearer {k}").parse().unwrap()),
        Via::Header(k) => h.insert("x-api-key", k.parse().unwrap()),
        Via::None | Via::Query(_) => None,
    };
    if let Some(o) = c.origin {
        h.insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut socket, resp)) => {
            let _ = socket.close(None).await;
            (resp.status().as_u16(), String::new())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            )
        }
        Err(e) => panic!("websocket {url}: {e}"),
    }
}

#[tokio::test]
async fn every_route_answers_each_key_as_documented() {
    let keys = Keys::new();
    let gw = TestGateway::start(keys.config(""), memory()).await;
    let client = reqwest::Client::new();
    let (w, r, b, ops) = (
        keys.writer.as_str(),
        keys.reader.as_str(),
        keys.browser.as_str(),
        keys.ops.as_str(),
    );
    let unknown = secret();
    let case = |route, stream, via, origin, status| Case {
        route,
        stream,
        via,
        origin,
        status,
    };
    use Via::*;
    let cases = [
        // No key, or one nobody declared: 401 on every route but health.
        case("post", "clicks", None, Option::None, 401),
        case("read", "clicks", None, Option::None, 401),
        case("ws", "clicks", None, Option::None, 401),
        case("subscribe", "clicks", None, Option::None, 401),
        case("list", "", None, Option::None, 401),
        case("describe", "clicks", None, Option::None, 401),
        case("metrics", "", None, Option::None, 401),
        case("post", "clicks", Bearer(&unknown), Option::None, 401),
        case("read", "clicks", Header(&unknown), Option::None, 401),
        case("healthz", "", None, Option::None, 200),
        case("readyz", "", None, Option::None, 200),
        // The writer: its streams, by header or bearer; nothing else.
        case("post", "clicks", Bearer(w), Option::None, 200),
        case("post", "app.views", Header(w), Option::None, 200),
        case("ws", "clicks", Bearer(w), Option::None, 101),
        case("post", "secret", Bearer(w), Option::None, 403),
        case("post", "app.nope", Bearer(w), Option::None, 404),
        case("read", "clicks", Bearer(w), Option::None, 403),
        case("subscribe", "clicks", Bearer(w), Option::None, 403),
        case("list", "", Bearer(w), Option::None, 403),
        case("metrics", "", Bearer(w), Option::None, 403),
        // A server key used from a browser page is refused.
        case("post", "clicks", Bearer(w), Some(ALLOWED), 403),
        // The reader reads every stream of its tenant, writes none.
        case("read", "clicks", Bearer(r), Option::None, 200),
        case("read", "secret", Header(r), Option::None, 200),
        case("subscribe", "clicks", Bearer(r), Option::None, 101),
        case("list", "", Bearer(r), Option::None, 200),
        case("describe", "clicks", Bearer(r), Option::None, 200),
        case("read", "undeclared", Bearer(r), Option::None, 404),
        case("post", "clicks", Bearer(r), Option::None, 403),
        case("ws", "clicks", Bearer(r), Option::None, 403),
        // ?key=: writes only, from an origin the key names.
        case("post", "clicks", Query(b), Some(ALLOWED), 200),
        case("ws", "clicks", Query(b), Some(ALLOWED), 101),
        case("post", "clicks", Query(b), Some("http://evil.example"), 403),
        case("post", "clicks", Query(b), Option::None, 403),
        case("post", "clicks", Query(w), Option::None, 403),
        case("read", "clicks", Query(r), Option::None, 403),
        case(
            "post",
            "clicks",
            Bearer(b),
            Some("http://evil.example"),
            403,
        ),
        case("post", "clicks", Bearer(b), Some(ALLOWED), 200),
        case("metrics", "", Bearer(ops), Option::None, 200),
    ];
    let mut wrong = Vec::new();
    for c in &cases {
        let (status, body) = send(&gw, &client, c).await;
        if status != c.status {
            wrong.push(format!(
                "{} {} via {:?} origin {:?}: got {status}, want {} ({body})",
                c.route, c.stream, c.via, c.origin, c.status
            ));
        }
        if status == 401 {
            assert!(body.contains("urn:sluice:problem:"), "{body}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    gw.stop().await;
}

#[tokio::test]
async fn refusals_say_why_and_carry_the_auth_headers() {
    let keys = Keys::new();
    let gw = TestGateway::start(keys.config(""), memory()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/clicks/events");
    let resp = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"sluice\""
    );
    assert_eq!(resp.headers()["vary"], "origin", "answers depend on Origin");
    let body: Value = resp
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(body["type"], "urn:sluice:problem:missing-key");
    let resp = client
        .post(gw.url("/v1/streams/secret/events"))
        .bearer_auth(&keys.writer)
        .body("{}")
        .send()
        .await
        .unwrap();
    let body: Value = resp
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(body["type"], "urn:sluice:problem:forbidden-stream");
    assert!(
        body["detail"].as_str().unwrap().contains("writer"),
        "{body}"
    );
    let resp = client
        .post(gw.url("/v1/streams/nope/events"))
        .bearer_auth(&keys.beta)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "beta auto-creates streams");
    gw.stop().await;
}

#[tokio::test]
async fn preflight_answers_from_the_keys_origins() {
    let keys = Keys::new();
    let gw = TestGateway::start(keys.config(""), memory()).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                gw.url("/v1/streams/clicks/events"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight(ALLOWED).await.unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let refused = preflight("http://evil.example").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
    // With ?key=, that key's origins decide, and a refusal carries no CORS
    // headers even though another key allows the origin.
    let with_key = client
        .request(
            reqwest::Method::OPTIONS,
            gw.url(&format!("/v1/streams/clicks/events?key={}", keys.writer)),
        )
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 403);
    assert!(!with_key
        .headers()
        .contains_key("access-control-allow-origin"));
    assert!(with_key
        .text()
        .await
        .unwrap()
        .contains("the key in ?key= may not be used"));
    // The real request from the allowed origin can read its answer.
    let resp = client
        .post(gw.url("/v1/streams/clicks/events"))
        .bearer_auth(&keys.browser)
        .header("origin", ALLOWED)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], ALLOWED);
    gw.stop().await;
}

/// Every event of a tenant's stream, all partitions.
async fn events_of(store: &Store, tenant: &str, stream: &str) -> Vec<String> {
    let log = Log::new(store.clone(), "reader", RetryPolicy::default());
    let s = log.stream(tenant, stream);
    let mut out = Vec::new();
    for p in 0..4 {
        let batch = log.read(&s, p, 0, usize::MAX).await.unwrap();
        out.extend(batch.events.iter().map(|e| event_of(e)));
    }
    out
}

#[tokio::test]
async fn tenants_with_the_same_stream_names_never_see_each_other() {
    let keys = Keys::new();
    let store = memory();
    let gw = TestGateway::start(keys.config(""), store.clone()).await;
    let client = reqwest::Client::new();
    let post = |key: &str, stream: &str, body: &'static str| {
        client
            .post(gw.url(&format!("/v1/streams/{stream}/events")))
            .bearer_auth(key)
            .body(body)
            .send()
    };
    assert_eq!(
        post(&keys.writer, "clicks", r#"{"t":"acme"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(&keys.beta, "clicks", r#"{"t":"beta"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(&keys.beta, "beta-only", r#"{"t":"beta"}"#)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        events_of(&store, "acme", "clicks").await,
        [r#"{"t":"acme"}"#]
    );
    assert_eq!(
        events_of(&store, "beta", "clicks").await,
        [r#"{"t":"beta"}"#]
    );

    let get = |key: &str, path: String| client.get(gw.url(&path)).bearer_auth(key).send();
    // Long-poll reads: every partition of beta's clicks holds only beta's event.
    let mut seen = Vec::new();
    for p in 0..4 {
        let page: Value = get(
            &keys.beta,
            format!("/v1/streams/clicks/events?partition={p}"),
        )
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event"].clone()),
        );
    }
    assert_eq!(seen, [json!({"t": "beta"})]);
    // Listings and heads: only the caller's own.
    let list: Value = get(&keys.beta, "/v1/streams".into())
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(list["streams"], json!(["beta-only", "clicks"]));
    let list: Value = get(&keys.reader, "/v1/streams".into())
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(list["streams"], json!(["app.views", "clicks", "secret"]));
    let described: Value = get(&keys.reader, "/v1/streams/clicks".into())
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    let heads: u64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["head_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(heads, 1, "acme's clicks holds one event: {described}");
    assert_eq!(described["partitions"].as_array().unwrap().len(), 2);
    // acme has no stream called beta-only, and does not create one.
    let resp = get(&keys.reader, "/v1/streams/beta-only/events".into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("beta\""), "{body}");
    // A WebSocket subscription from earliest gets beta's event, not acme's.
    let url = format!("ws://{}/v1/streams/clicks/subscribe?from=earliest", gw.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", keys.beta).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use futures::StreamExt;
    let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a frame within 10 s")
        .unwrap()
        .unwrap();
    let frame: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(frame["events"][0]["event"], json!({"t": "beta"}));
    drop(socket);
    gw.stop().await;
}

#[tokio::test]
async fn over_the_limit_the_whole_request_is_refused_then_recovers() {
    let keys = Keys::new();
    let limited = secret();
    let rate = "rate = { events_per_sec = 2, events_burst = 3 }";
    let extra = entry("limited", "beta", &limited, &["write"], rate);
    let store = memory();
    let gw = TestGateway::start(keys.config(&extra), store.clone()).await;
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(gw.url("/v1/streams/metered/events"))
            .bearer_auth(&limited)
            .body(body)
            .send()
    };
    let ok = post(r#"[{"n":1},{"n":2}]"#).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["ratelimit-policy"], "\"key-events\";q=2;w=1");
    assert_eq!(ok.headers()["ratelimit"], "\"key-events\";r=1;t=1");
    // Two more events do not fit in the one left: nothing of them is taken.
    let refused = post(r#"[{"n":3},{"n":4}]"#).await.unwrap();
    assert_eq!(refused.status(), 429);
    let h = refused.headers().clone();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-policy"], "\"key-events\";q=2;w=1");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"key-events\";r=0;t="));
    let body: Value = refused
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
        .unwrap();
    assert_eq!(body["type"], "urn:sluice:problem:rate-limited");
    assert!(
        body["detail"].as_str().unwrap().contains("keys[5].rate"),
        "{body}"
    );
    // More than the burst can never pass: 413, not a retry loop.
    let too_big = post(r#"[{"a":1},{"a":2},{"a":3},{"a":4}]"#).await.unwrap();
    assert_eq!(too_big.status(), 413);
    // After Retry-After the same request is accepted.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(post(r#"[{"n":3},{"n":4}]"#).await.unwrap().status(), 200);
    let mut events = events_of(&store, "beta", "metered").await;
    events.sort();
    assert_eq!(
        events,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#]
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_tenant_limit_is_shared_by_its_keys() {
    let keys = Keys::new();
    let mut config = keys.config("");
    let acme = config.tenants.get_mut("acme").unwrap();
    acme.rate.events_per_sec = 1;
    acme.rate.events_burst = 2;
    let gw = TestGateway::start(config, memory()).await;
    let client = reqwest::Client::new();
    let post = |key: &str| {
        client
            .post(gw.url("/v1/streams/clicks/events"))
            .bearer_auth(key)
            .body(r#"[{"a":1},{"a":2}]"#)
            .send()
    };
    assert_eq!(post(&keys.writer).await.unwrap().status(), 200);
    let refused = post(&keys.browser).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        "\"tenant-events\";q=1;w=1"
    );
    // Beta's keys are not affected by acme's limit.
    let beta = client
        .post(gw.url("/v1/streams/clicks/events"))
        .bearer_auth(&keys.beta)
        .body(r#"[{"a":1},{"a":2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(beta.status(), 200);
    gw.stop().await;
}

/// `sluice check-config` on a config text: (exit ok, stderr).
fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&path)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), err)
}

#[test]
fn malformed_access_config_names_the_key_and_the_fix() {
    let hash = hash_text("sk_x");
    let key = |tenant: &str, hash: &str, scopes: &str| {
        format!("[tenants.acme]\n[[keys]]\nid = \"k1\"\ntenant = \"{tenant}\"\nhash = \"{hash}\"\nscopes = {scopes}\n")
    };
    let cases = [
        (key("acme", &hash, "[\"write\"]"), "", true),
        (
            key("acm", &hash, "[\"write\"]"),
            "tenant \"acm\" is not declared",
            false,
        ),
        (
            key("acme", "sha1:abc", "[\"write\"]"),
            "keys[0] (id \"k1\").hash",
            false,
        ),
        (key("acme", &hash, "[\"delete\"]"), "delete", false),
        (key("acme", &hash, "[]"), "at least one", false),
        ("[auth]\nrequired = true\n".into(), "auth.required", false),
        (
            format!("{}{}", key("acme", &hash, "[\"write\"]"), key("acme", &hash, "[\"read\"]").replace("[tenants.acme]\n", "").replace("k1", "k2")),
            "another key has the same hash",
            false,
        ),
        (
            "[tenants.acme.streams.clicks]\ndead_letter = true\n[tenants.acme.streams.\"clicks.dlq\"]\npartitions = 4\n".into(),
            "is the dead-letter stream",
            false,
        ),
        (
            "[tenants.acme.streams.clicks]\npartitions = 0\n".into(),
            "tenants.acme.streams.clicks.partitions",
            false,
        ),
    ];
    for (text, needle, valid) in cases {
        let (ok, err) = check_config(&text);
        assert_eq!(ok, valid, "{text}\n{err}");
        assert!(err.contains(needle), "{text}\nwanted {needle:?} in: {err}");
        if !valid {
            assert!(err.contains("sluice.toml"), "the file is named: {err}");
        }
    }
}

#[test]
fn keygen_prints_a_key_and_a_config_entry_that_accepts_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "keygen",
            "--id",
            "web",
            "--tenant",
            "acme",
            "--scopes",
            "write,read",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().strip_prefix("key: ").unwrap();
    let entry: String = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(
        !entry.contains(key),
        "the config entry must not hold the key"
    );
    let config: Config = toml::from_str(&format!("[tenants.acme]\n{entry}")).unwrap();
    config.validate().unwrap();
    let k = &config.keys[0];
    assert_eq!((k.id.as_str(), k.tenant.as_str()), ("web", "acme"));
    assert_eq!(k.hash, hash_text(key));
    assert_eq!(k.scopes.len(), 2);
}

#[tokio::test]
async fn a_websocket_frame_over_the_limit_gets_a_429_answer_and_the_socket_stays() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let keys = Keys::new();
    let limited = secret();
    let rate = "rate = { events_per_sec = 1, events_burst = 3 }";
    let extra = entry("limited", "beta", &limited, &["write"], rate);
    let store = memory();
    let gw = TestGateway::start(keys.config(&extra), store.clone()).await;
    let url = format!("ws://{}/v1/streams/frames/ws", gw.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {limited}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut answer = async |frame: &str| -> Value {
        socket.send(Message::text(frame)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .unwrap();
        serde_json::from_str(reply.to_text().unwrap()).unwrap()
    };
    let first = answer(r#"[{"f":1},{"f":2}]"#).await;
    assert_eq!(first["accepted"], 2, "{first}");
    let second = answer(r#"[{"f":3},{"f":4}]"#).await;
    assert_eq!(second["status"], 429, "{second}");
    assert_eq!(second["type"], "urn:sluice:problem:rate-limited");
    assert_eq!(second["frame"], 1);
    let third = answer(r#"{"f":5}"#).await;
    assert_eq!(third["accepted"], 1, "the socket still works: {third}");
    drop(socket);
    let mut events = events_of(&store, "beta", "frames").await;
    events.sort();
    assert_eq!(events, [r#"{"f":1}"#, r#"{"f":2}"#, r#"{"f":5}"#]);
    gw.stop().await;
}

#[tokio::test]
async fn with_auth_off_only_same_origin_browsers_get_in() {
    let gw = TestGateway::start(test_config(), memory()).await;
    let client = reqwest::Client::new();
    let post = |origin: Option<String>| {
        let mut req = client.post(gw.url("/v1/streams/open/events")).body("{}");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 200, "curl and servers");
    let own = format!("http://{}", gw.addr);
    assert_eq!(
        post(Some(own)).await.unwrap().status(),
        200,
        "the gateway's own origin"
    );
    let other = post(Some("http://evil.example".into())).await.unwrap();
    assert_eq!(other.status(), 403);
    // A page cannot open a subscription either (CORS does not cover WebSockets).
    let url = format!("ws://{}/v1/streams/open/subscribe?from=earliest", gw.addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("a cross-origin subscription was not refused: {other:?}"),
    }
    gw.stop().await;
}

/// `metrics_listen`: a second port serves `/metrics` without a key (and
/// nothing else), while the main port still wants the `metrics` scope.
#[tokio::test]
async fn the_metrics_listener_serves_metrics_without_a_key_and_nothing_else() {
    let keys = Keys::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = sluice::server::Gateway::with_store(keys.config(""), memory(), listener)
        .with_metrics_listener(metrics_listener);
    let (main, side) = (
        gateway.local_addr().unwrap(),
        gateway.metrics_addr().unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let get =
        |addr: std::net::SocketAddr, path: &str| client.get(format!("http://{addr}{path}")).send();
    assert_eq!(get(main, "/metrics").await.unwrap().status(), 401);
    let scraped = get(side, "/metrics").await.unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("sluice_http_requests_total"), "{text}");
    assert_eq!(get(side, "/healthz").await.unwrap().status(), 200);
    let other = get(side, "/v1/streams").await.unwrap();
    assert_eq!(other.status(), 404);
    assert!(other
        .text()
        .await
        .unwrap()
        .contains("GET /metrics and GET /healthz only"));
    let _ = stop.send(());
    task.await.unwrap();
}
