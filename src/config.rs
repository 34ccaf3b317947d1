//! Settings: one serde struct, every field a named limit with a safe default.
//!
//! Owns loading (TOML file, then `SLUICE_*` environment overrides) and
//! validation. Nothing here runs; other modules read the values.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration cannot be used. Each names the file or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration. Every field has a default: `sluice serve` runs with none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on (`SLUICE_LISTEN`).
    pub listen: String,
    /// A second listener serving only `GET /metrics` (and `/healthz`), without
    /// keys, for a scraper on an internal network (`SLUICE_METRICS_LISTEN`).
    /// Unset: metrics are on the main listener only.
    pub metrics_listen: Option<String>,
    /// Record and serve metrics (`SLUICE_METRICS`). Off: nothing is recorded
    /// and `GET /metrics` is 404; the load harness measures their cost so.
    pub metrics: bool,
    /// Store URL: `file://PATH`, `memory://`, `s3://BUCKET/PREFIX` (`SLUICE_STORE`).
    pub store: String,
    /// Tenant that owns every stream while auth is off.
    pub tenant: String,
    pub server: ServerConfig,
    pub limits: Limits,
    pub batch: BatchConfig,
    pub streams: StreamsConfig,
    pub read: ReadConfig,
    pub websocket: WebSocketConfig,
    pub compaction: crate::compact::CompactionConfig,
    /// TLS on the listener; absent means plain HTTP.
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    /// Tenants by name: their streams, rate limits, `auto_create`.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// API keys. With none declared, auth is off (and a warning is logged).
    pub keys: Vec<KeyConfig>,
    /// Garbage collection: retention and orphan segments (`sluice gc`, or
    /// a schedule inside `serve`).
    pub gc: crate::gc::GcConfig,
}

/// Authentication switches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Refuse to start unless keys are declared: keeps a production config
    /// that lost its `[[keys]]` from serving openly.
    pub required: bool,
}

/// One tenant: its own prefix in the store, its own streams and limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Streams not declared below are created on first write (default:
    /// `streams.auto_create`). Off: an undeclared stream is 404 on every route.
    pub auto_create: Option<bool>,
    /// Limit on the whole tenant, all keys and streams together.
    pub rate: RateConfig,
    /// Limit each key of this tenant gets (a key's own `rate` replaces it).
    pub key_rate: RateConfig,
    /// Declared streams and their settings.
    pub streams: BTreeMap<String, StreamConfig>,
}

/// A token-bucket rate limit. 0 means no limit; a burst of 0 means one
/// second's worth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub events_per_sec: u32,
    pub events_burst: u32,
    pub bytes_per_sec: u32,
    pub bytes_burst: u32,
}

/// Settings of one declared stream; unset keys take the global defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub partitions: Option<u32>,
    pub max_bytes: Option<usize>,
    pub max_events: Option<usize>,
    pub max_age_ms: Option<u64>,
    pub max_event_bytes: Option<usize>,
    pub max_events_per_request: Option<usize>,
    /// Limit on this stream, all keys together.
    pub rate: RateConfig,
    /// JSON Schema every event must satisfy: a JSON string or a TOML table.
    pub schema: Option<toml::Value>,
    /// The schema in a JSON file instead (path relative to the working directory).
    pub schema_file: Option<String>,
    /// Write each invalid event to the stream `<name>.dlq` instead of only
    /// reporting it.
    pub dead_letter: bool,
    /// Consumer groups whose lag the gateway exports
    /// (`sluice_consumer_lag_events`); only these, so label values stay bounded.
    pub consumer_groups: Vec<String>,
    /// How long events are kept (`"30m"`, `"12h"`, `"7d"`, or `"forever"`);
    /// unset: `streams.retention`. Garbage collection deletes older ones.
    pub retention: Option<String>,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Write,
    Read,
    Metrics,
}

/// One API key. The config holds only its hash (`sluice keygen` prints both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and metrics; never secret.
    pub id: String,
    pub tenant: String,
    /// `sha256:` and the hex SHA-256 of the key.
    pub hash: String,
    pub scopes: Vec<Scope>,
    /// Stream name patterns (`*` matches any run of characters).
    #[serde(default = "all_streams")]
    pub streams: Vec<String>,
    /// Browser origins allowed to use the key (`https://app.example`, `*` as
    /// a wildcard); empty: a server key, refused when a request has `Origin`.
    #[serde(default)]
    pub origins: Vec<String>,
    /// This key's own limit (default: its tenant's `key_rate`).
    pub rate: Option<RateConfig>,
}

fn all_streams() -> Vec<String> {
    vec!["*".to_string()]
}

/// TLS (rustls) on `listen`. The certificate and key are re-read when their
/// files change, without a restart; open connections keep their session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// How often the two files are checked for changes.
    #[serde(default = "default_tls_reload_ms")]
    pub reload_interval_ms: u64,
    /// Time a client has to finish the TLS handshake.
    #[serde(default = "default_tls_handshake_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    2_000
}

fn default_tls_handshake_ms() -> u64 {
    10_000
}

/// WebSocket ingest and subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Frames one ingest connection may have awaiting their ack; past it the
    /// gateway stops reading that socket (the client is slowed, not dropped).
    pub max_inflight_frames: usize,
    /// Frames queued for one subscriber; a subscriber that falls this far
    /// behind is closed with code 4008 and resumes from its last offsets.
    pub subscriber_queue_frames: usize,
    /// A ping is sent after this long without traffic.
    pub ping_interval_ms: u64,
}

/// Readers: tailing, long-poll, Server-Sent Events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadConfig {
    /// How often a followed partition is polled while records keep arriving.
    pub poll_interval_ms: u64,
    /// Idle polling backs off up to this: an idle partition costs about one
    /// GET per this interval per gateway, however many readers it has.
    pub idle_poll_max_ms: u64,
    /// A partition nobody reads is no longer followed after this long.
    pub linger_ms: u64,
    /// Decompressed segments kept for readers, in bytes.
    pub cache_bytes: usize,
    /// Most partitions followed at once by one gateway.
    pub max_tailers: usize,
    /// Longest `wait` a long-poll may ask for.
    pub max_wait_ms: u64,
    /// Most events one read returns (`limit`).
    pub max_events_per_read: usize,
    /// Most bytes of events one read or one pushed frame holds (at least one
    /// event always goes out, so a reader never stalls on a large event).
    pub max_batch_bytes: usize,
    /// Most Server-Sent-Events connections at once; more get 503.
    pub max_subscribers: usize,
    /// How often the declared consumer groups' lag is measured (a checkpoint
    /// probe and a head probe per group and partition: O(log n) HEADs each).
    pub consumer_lag_interval_ms: u64,
}
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Most open client connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections the kernel queues before accept (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Time a client has to send a request's headers (slowloris guard). hyper
    /// starts this clock whenever a connection waits for a request, so it is
    /// also the idle keep-alive timeout.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send the whole request body once its headers arrived.
    pub body_read_timeout_ms: u64,
    /// Largest request head (start line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// On SIGTERM, how long in-flight requests may take, and then again how
    /// long the final flush may take.
    pub drain_timeout_ms: u64,
}

/// Per-request input limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body as sent (compressed or not); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest body after gzip/zstd decoding; a decompression bomb stops here with 413.
    pub max_decoded_bytes: usize,
    /// Largest single event; larger events are rejected by index.
    pub max_event_bytes: usize,
    /// Most events in one request; more gets 413.
    pub max_events_per_request: usize,
    /// Deepest JSON nesting of an event (objects and arrays); deeper is rejected by index.
    pub max_depth: usize,
    /// Longest stream name; names use `[A-Za-z0-9._-]`.
    pub max_stream_name_len: usize,
    /// Invalid events listed in one answer; the rest are only counted
    /// (`errors_omitted`), so a huge request cannot make a huge error body.
    pub max_reported_errors: usize,
}

/// Batching, memory and durability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Flush a stream's buffer at this many uncompressed bytes.
    pub max_bytes: usize,
    /// Flush at this many events.
    pub max_events: usize,
    /// Flush this long after the buffer's first event: the bound on a durable ack's wait.
    pub max_age_ms: u64,
    /// zstd level of segments (1 is fastest; higher is smaller and slower).
    pub zstd_level: i32,
    /// Bytes buffered across all streams before new writes get 503.
    pub memory_budget_bytes: usize,
    /// A durable request waiting longer than this for its commit gets 503.
    pub ack_timeout_ms: u64,
    /// One store operation is retried with backoff for at most this long.
    pub store_retry_ms: u64,
}

/// Stream defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Partitions of each stream.
    pub partitions: u32,
    /// Most streams one gateway serves (bounds its buffers and label values).
    pub max_streams: usize,
    /// Streams are created on first write; off: only declared streams exist.
    pub auto_create: bool,
    /// How long every stream keeps its events unless it sets its own
    /// (`"30m"`, `"12h"`, `"7d"`); unset: forever. Garbage collection
    /// (`sluice gc`, `[gc]`) deletes what is older.
    pub retention: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: None,
            metrics: true,
            store: "file://./sluice-data".into(),
            tenant: "default".into(),
            server: ServerConfig::default(),
            limits: Limits::default(),
            batch: BatchConfig::default(),
            streams: StreamsConfig::default(),
            read: ReadConfig::default(),
            websocket: WebSocketConfig::default(),
            compaction: Default::default(),
            tls: None,
            auth: AuthConfig::default(),
            tenants: BTreeMap::new(),
            keys: Vec::new(),
            gc: crate::gc::GcConfig::default(),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_inflight_frames: 64,
            subscriber_queue_frames: 64,
            ping_interval_ms: 15_000,
        }
    }
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            poll_interval_ms: 50,
            idle_poll_max_ms: 1_000,
            linger_ms: 60_000,
            cache_bytes: 64 * 1024 * 1024,
            max_tailers: 4_096,
            max_wait_ms: 30_000,
            max_events_per_read: 10_000,
            max_batch_bytes: 1024 * 1024,
            max_subscribers: 1_000,
            consumer_lag_interval_ms: 30_000,
        }
    }
}

impl ReadConfig {
    pub fn poll_interval(&self) -> Duration {
        ms(self.poll_interval_ms)
    }
    pub fn idle_poll_max(&self) -> Duration {
        ms(self.idle_poll_max_ms.max(self.poll_interval_ms))
    }
    pub fn linger(&self) -> Duration {
        ms(self.linger_ms)
    }
    pub fn max_wait(&self) -> Duration {
        ms(self.max_wait_ms)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            listen_backlog: 4096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_header_bytes: 16 * 1024,
            drain_timeout_ms: 30_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_decoded_bytes: 16 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_events_per_request: 10_000,
            max_depth: 32,
            max_stream_name_len: 64,
            max_reported_errors: 100,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: 8 * 1024 * 1024,
            max_events: 100_000,
            max_age_ms: 200,
            zstd_level: 1,
            memory_budget_bytes: 256 * 1024 * 1024,
            ack_timeout_ms: 10_000,
            store_retry_ms: 5_000,
        }
    }
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            partitions: 4,
            max_streams: 1_000,
            auto_create: true,
            retention: None,
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl ServerConfig {
    pub fn header_read_timeout(&self) -> Duration {
        ms(self.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> Duration {
        ms(self.body_read_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        ms(self.drain_timeout_ms)
    }
}

impl BatchConfig {
    pub fn max_age(&self) -> Duration {
        ms(self.max_age_ms)
    }
    pub fn ack_timeout(&self) -> Duration {
        ms(self.ack_timeout_ms)
    }
    pub fn store_retry(&self) -> Duration {
        ms(self.store_retry_ms)
    }
}

impl Config {
    /// Load: the file if given (or `SLUICE_CONFIG`), then environment
    /// overrides (see [`Config::from_sources`]), then validation.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var("SLUICE_CONFIG").ok();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| from_env.map(Into::into));
        let text = match &file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let shown = file.map_or_else(|| "(no file)".to_string(), |p| p.display().to_string());
        let config = Self::from_sources(&shown, &text, std::env::vars())?;
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => ConfigError::Parse {
                path: shown,
                message: format!("key {key}: {message}"),
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parse TOML `text` (from `shown`), then apply `SLUICE_*` overrides:
    /// `SLUICE_LISTEN`, `SLUICE_METRICS_LISTEN`, `SLUICE_METRICS`, `SLUICE_STORE`,
    /// `SLUICE_TENANT` set top-level keys;
    /// `SLUICE_<SECTION>__<KEY>` sets `[section] key` (e.g.
    /// `SLUICE_BATCH__MAX_AGE_MS=50`). Values are TOML (numbers, booleans),
    /// or taken as strings. Other `SLUICE_*` variables are not config.
    pub fn from_sources(
        shown: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: shown.to_string(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        for (name, value) in env {
            if let Some(path) = env_key(&name) {
                set(&mut table, &path, env_value(&value))
                    .map_err(|m| parse_error(format!("{name}: {m}")))?;
            }
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.to_string()))
    }

    /// Reject values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool, &str); 14] = [
            (
                "read.poll_interval_ms",
                self.read.poll_interval_ms > 0,
                "must be at least 1",
            ),
            (
                "read.consumer_lag_interval_ms",
                self.read.consumer_lag_interval_ms >= 100,
                "must be at least 100",
            ),
            (
                "read.max_events_per_read",
                self.read.max_events_per_read > 0,
                "must be at least 1",
            ),
            (
                "listen",
                self.listen.parse::<std::net::SocketAddr>().is_ok(),
                "must be HOST:PORT with an IP address, e.g. 127.0.0.1:8080",
            ),
            (
                "metrics_listen",
                self.metrics_listen.as_ref().is_none_or(|a| {
                    let port_0 = a
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| a.port() == 0);
                    a.parse::<std::net::SocketAddr>().is_ok() && (*a != self.listen || port_0)
                }),
                "must be HOST:PORT with an IP address, other than listen",
            ),
            (
                "metrics_listen",
                self.metrics || self.metrics_listen.is_none(),
                "must be unset while metrics = false",
            ),
            (
                "tenant",
                crate::names::valid(&self.tenant, 64),
                "must be 1-64 characters of [A-Za-z0-9._-]",
            ),
            (
                "server.max_connections",
                self.server.max_connections > 0,
                "must be at least 1",
            ),
            (
                "server.max_header_bytes",
                self.server.max_header_bytes >= 1024,
                "must be at least 1024",
            ),
            (
                "limits.max_decoded_bytes",
                self.limits.max_decoded_bytes >= self.limits.max_event_bytes,
                "must be at least limits.max_event_bytes",
            ),
            (
                "batch.max_bytes",
                self.batch.max_bytes > 0 && self.batch.max_bytes <= self.batch.memory_budget_bytes,
                "must be between 1 and batch.memory_budget_bytes",
            ),
            (
                "batch.max_events",
                self.batch.max_events > 0,
                "must be at least 1",
            ),
            (
                "batch.zstd_level",
                (-7..=22).contains(&self.batch.zstd_level),
                "must be between -7 and 22",
            ),
            (
                "streams.partitions",
                (1..=9999).contains(&self.streams.partitions),
                "must be between 1 and 9999",
            ),
        ];
        for (key, ok, message) in checks {
            if !ok {
                return Err(ConfigError::Invalid {
                    key: key.to_string(),
                    message: message.to_string(),
                });
            }
        }
        self.compaction.validate()?;
        if let Some(r) = &self.streams.retention {
            check_retention("streams.retention", r)?;
        }
        self.gc
            .validate(&self.batch)
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        self.validate_access()
    }

    /// Auth is on exactly when keys are declared.
    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn validate_access(&self) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if let Some(tls) = &self.tls {
            if tls.handshake_timeout_ms == 0 || tls.reload_interval_ms < 10 {
                return bad(
                    "tls".into(),
                    "handshake_timeout_ms must be at least 1 and reload_interval_ms at least 10"
                        .into(),
                );
            }
        }
        if self.auth.required && self.keys.is_empty() {
            return bad(
                "auth.required".into(),
                "is true but no [[keys]] are declared".into(),
            );
        }
        for (name, tenant) in &self.tenants {
            if !crate::names::valid(name, 64) {
                return bad(
                    format!("tenants.{name}"),
                    "tenant names are 1-64 characters of [A-Za-z0-9._-]".into(),
                );
            }
            check_rate(&format!("tenants.{name}.rate"), &tenant.rate)?;
            check_rate(&format!("tenants.{name}.key_rate"), &tenant.key_rate)?;
            for (stream, s) in &tenant.streams {
                self.validate_stream(&format!("tenants.{name}.streams.{stream}"), stream, s)?;
                let parent = stream
                    .strip_suffix(".dlq")
                    .and_then(|p| tenant.streams.get(p));
                if parent.is_some_and(|p| p.dead_letter) {
                    return bad(
                        format!("tenants.{name}.streams.{stream}"),
                        "is the dead-letter stream of a stream with dead_letter = true; the gateway sets it up (one partition, no schema): remove this section".into(),
                    );
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("keys[{i}] (id {:?})", key.id);
            if !ids.insert(key.id.as_str()) {
                return bad(at, "another key has the same id".into());
            }
            if !self.tenants.contains_key(&key.tenant) {
                return bad(
                    format!("{at}.tenant"),
                    format!(
                        "tenant {:?} is not declared: add [tenants.{}]",
                        key.tenant, key.tenant
                    ),
                );
            }
            if let Err(m) = crate::auth::keys::parse_hash(&key.hash) {
                return bad(format!("{at}.hash"), m);
            }
            if !hashes.insert(key.hash.to_ascii_lowercase()) {
                return bad(
                    format!("{at}.hash"),
                    "another key has the same hash: each key needs its own (sluice keygen)".into(),
                );
            }
            if key.scopes.is_empty() {
                return bad(
                    format!("{at}.scopes"),
                    "name at least one of \"write\", \"read\", \"metrics\"".into(),
                );
            }
            if let Some(o) = key.origins.iter().find(|o| !valid_origin(o)) {
                return bad(
                    format!("{at}.origins"),
                    format!("{o:?} is not an origin: scheme://host[:port] in lowercase, no path (\"*\" wildcards allowed)"),
                );
            }
            if let Some(rate) = &key.rate {
                check_rate(&format!("{at}.rate"), rate)?;
            }
        }
        Ok(())
    }

    fn validate_stream(&self, at: &str, name: &str, s: &StreamConfig) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: format!("{at}{key}"),
                message: message.to_string(),
            })
        };
        if !crate::names::valid(name, self.limits.max_stream_name_len) {
            return bad(
                "",
                "stream names use [A-Za-z0-9._-] (limits.max_stream_name_len)",
            );
        }
        if s.partitions.is_some_and(|p| !(1..=9999).contains(&p)) {
            return bad(".partitions", "must be between 1 and 9999");
        }
        if s.max_bytes
            .is_some_and(|b| b == 0 || b > self.batch.memory_budget_bytes)
        {
            return bad(
                ".max_bytes",
                "must be between 1 and batch.memory_budget_bytes",
            );
        }
        if s.max_events == Some(0) {
            return bad(".max_events", "must be at least 1");
        }
        if s.max_events_per_request == Some(0) {
            return bad(".max_events_per_request", "must be at least 1");
        }
        if s.max_event_bytes
            .is_some_and(|b| b == 0 || b > self.limits.max_decoded_bytes)
        {
            return bad(
                ".max_event_bytes",
                "must be between 1 and limits.max_decoded_bytes",
            );
        }
        if let Some(r) = &s.retention {
            check_retention(&format!("{at}.retention"), r)?;
        }
        if let Err(m) = crate::validate::Schema::document_of(s)
            .and_then(|doc| doc.map(crate::validate::Schema::compile).transpose())
        {
            return bad(".schema", &m);
        }
        if !s
            .consumer_groups
            .iter()
            .all(|g| crate::names::valid(g, crate::consume::MAX_NAME_LEN))
        {
            return bad(
                ".consumer_groups",
                "group names use 1 to 64 of [A-Za-z0-9._-], not starting with '.' or '-'",
            );
        }
        if s.dead_letter
            && !crate::names::valid(&format!("{name}.dlq"), self.limits.max_stream_name_len)
        {
            return bad(
                ".dead_letter",
                "the dead-letter stream name (<name>.dlq) is longer than limits.max_stream_name_len",
            );
        }
        check_rate(&format!("{at}.rate"), &s.rate)
    }
}

fn check_retention(at: &str, text: &str) -> Result<(), ConfigError> {
    crate::gc::config::parse_retention(text)
        .map(|_| ())
        .map_err(|m| ConfigError::Invalid {
            key: at.to_string(),
            message: format!("{m}, or \"forever\""),
        })
}

fn check_rate(at: &str, rate: &RateConfig) -> Result<(), ConfigError> {
    let burst_without_rate = (rate.events_per_sec == 0 && rate.events_burst > 0)
        || (rate.bytes_per_sec == 0 && rate.bytes_burst > 0);
    if burst_without_rate {
        return Err(ConfigError::Invalid {
            key: at.to_string(),
            message: "a burst needs its per-second rate (events_per_sec or bytes_per_sec)".into(),
        });
    }
    Ok(())
}

/// `scheme://host[:port]` with no path, or a pattern of that with `*`.
fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    // Browsers send scheme and host in lowercase; an uppercase pattern could never match.
    let host_ok = |b: u8| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'.' | b'-' | b':' | b'*' | b'[' | b']')
    };
    matches!(scheme, "http" | "https") && !rest.is_empty() && rest.bytes().all(host_ok)
}

/// The config path an environment variable names, if it names one.
fn env_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix("SLUICE_")?;
    if let Some((section, key)) = rest.split_once("__") {
        return Some(vec![section.to_ascii_lowercase(), key.to_ascii_lowercase()]);
    }
    matches!(
        rest,
        "LISTEN" | "METRICS_LISTEN" | "METRICS" | "STORE" | "TENANT"
    )
    .then(|| vec![rest.to_ascii_lowercase()])
}

/// A TOML value if the text is one (number, boolean), else the text as a string.
fn env_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) if !matches!(t.get("v"), Some(toml::Value::Table(_))) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        _ => toml::Value::String(text.to_string()),
    }
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [key] => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [section, rest @ ..] => {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set(t, rest, value),
                _ => Err(format!("{section} is not a section")),
            }
        }
        [] => Err("empty key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_env_overrides_file() {
        Config::default().validate().unwrap();
        let file = "listen = \"127.0.0.1:1\"\n[batch]\nmax_age_ms = 10\n";
        let vars = env(&[
            ("SLUICE_LISTEN", "0.0.0.0:9000"),
            ("SLUICE_BATCH__MAX_AGE_MS", "50"),
            ("SLUICE_STREAMS__PARTITIONS", "8"),
            ("SLUICE_LOAD_SECS", "3"),
            ("SLUICE_LOG", "debug"),
        ]);
        let c = Config::from_sources("f.toml", file, vars).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.batch.max_age_ms, 50);
        assert_eq!(c.streams.partitions, 8);
        assert_eq!(c.store, "file://./sluice-data");
    }

    #[test]
    fn bad_env_values_name_the_variable_or_key() {
        let vars = env(&[("SLUICE_BATCH__MAX_AGE_MS", "soon")]);
        let err = Config::from_sources("(no file)", "", vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_age_ms"), "{err}");
        let vars = env(&[("SLUICE_BATCH__NOPE", "1")]);
        let err = Config::from_sources("(no file)", "", vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn a_bad_retention_names_the_file_and_the_key() {
        let file = "[tenants.acme.streams.clicks]\nretention = \"7x\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, file).unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("sluice.toml"), "{err}");
        assert!(
            err.contains("tenants.acme.streams.clicks.retention"),
            "{err}"
        );
        assert!(err.contains("\"7x\" is not a duration"), "{err}");
        let c: Config = toml::from_str("[streams]\nretention = \"2w\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("streams.retention"), "{err}");
        let c: Config =
            toml::from_str("[streams]\nretention = \"7d\"\n[gc]\ninterval = \"soon\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("gc.interval"), "{err}");
        let ok: Config = toml::from_str(
            "[streams]\nretention = \"12h\"\n[tenants.a.streams.s]\nretention = \"forever\"",
        )
        .unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = toml::from_str::<Config>("[batch]\nmax_agee_ms = 5").unwrap_err();
        assert!(err.to_string().contains("max_agee_ms"), "{err}");
        let c: Config = toml::from_str("[streams]\npartitions = 0").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("streams.partitions"), "{err}");
    }
}
