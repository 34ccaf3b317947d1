//! Tenants and their streams: which streams exist and what each runs with.
//!
//! Owns resolving (tenant, stream name) to a stream's settings: a declared
//! stream gets its overrides of the global batching and limits, any other
//! name the tenant's defaults when it auto-creates streams, or nothing (the
//! routes answer 404). Built once per config load; lookups never allocate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BatchConfig, Config, Limits, RateConfig, StreamConfig, TenantConfig};
use crate::gc::config::{parse_retention, Retention};
use crate::limit::Limiter;
use crate::validate::Schema;

/// The settings one stream runs with.
#[derive(Debug)]
pub struct StreamSettings {
    pub partitions: u32,
    pub batch: BatchConfig,
    pub limits: Limits,
    /// Declared in the config (not auto-created).
    pub declared: bool,
    /// The stream-wide rate limit (all keys together), if any.
    pub limiter: Option<Limiter>,
    /// The compiled schema events must satisfy, if declared.
    pub schema: Option<Arc<Schema>>,
    /// Set when the declared schema did not compile at build time (config
    /// validation normally stops that first): writes are refused, never
    /// let through unchecked.
    pub schema_error: Option<String>,
    /// Invalid events go to `<name>.dlq`.
    pub dead_letter: bool,
    /// A dead-letter stream: only the gateway writes it.
    pub dead_letters: bool,
    /// Consumer groups whose lag is exported as a metric.
    pub consumer_groups: Vec<String>,
    /// How long events are kept (`None`: forever); garbage collection
    /// deletes what is older.
    pub retention: Option<Duration>,
}

/// One tenant: its streams and its limits.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub auto_create: bool,
    /// The tenant-wide rate limit, if any.
    pub limiter: Option<Limiter>,
    /// What each key of the tenant gets unless it has its own `rate`.
    pub key_rate: RateConfig,
    declared: HashMap<String, Arc<StreamSettings>>,
    defaults: Arc<StreamSettings>,
    max_name_len: usize,
}

/// Why a stream name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream name {name:?} must be 1-{max} characters of [A-Za-z0-9._-], not starting with '.' or '-' (limits.max_stream_name_len)")]
    BadName { name: String, max: usize },
    #[error("stream {name:?} is not declared and this tenant does not create streams on first use (auto_create = false)")]
    Unknown { name: String },
}

impl Tenant {
    fn new(name: &str, cfg: &TenantConfig, config: &Config) -> Tenant {
        let mut declared: HashMap<String, Arc<StreamSettings>> = HashMap::new();
        for (stream, s) in &cfg.streams {
            let at = format!("tenants.{name}.streams.{stream}.rate");
            declared.insert(stream.clone(), Arc::new(settings(config, Some(s), &at)));
            if s.dead_letter {
                declared
                    .entry(format!("{stream}.dlq"))
                    .or_insert_with(|| Arc::new(dead_letters(config)));
            }
        }
        Tenant {
            name: name.to_string(),
            auto_create: cfg.auto_create.unwrap_or(config.streams.auto_create),
            limiter: Limiter::new(&cfg.rate, "tenant", format!("tenants.{name}.rate")),
            key_rate: cfg.key_rate,
            declared,
            defaults: Arc::new(settings(config, None, "")),
            max_name_len: config.limits.max_stream_name_len,
        }
    }

    /// The settings of `name`, if this tenant has (or creates) such a stream.
    pub fn stream(&self, name: &str) -> Result<&Arc<StreamSettings>, StreamError> {
        if !crate::names::valid(name, self.max_name_len) {
            return Err(StreamError::BadName {
                name: name.to_string(),
                max: self.max_name_len,
            });
        }
        match self.declared.get(name) {
            Some(s) => Ok(s),
            None if self.auto_create => Ok(&self.defaults),
            None => Err(StreamError::Unknown {
                name: name.to_string(),
            }),
        }
    }

    /// Names of the declared streams.
    pub fn declared(&self) -> impl Iterator<Item = &str> {
        self.declared.keys().map(String::as_str)
    }
}

/// A retention setting (validated at load; an unparsable one keeps forever).
fn retention(text: Option<&String>) -> Option<Retention> {
    text.and_then(|t| parse_retention(t).ok())
}

fn kept_for(r: Option<Retention>) -> Option<Duration> {
    match r {
        Some(Retention::For(d)) => Some(d),
        Some(Retention::Forever) | None => None,
    }
}

/// Global settings with a declared stream's overrides applied.
fn settings(config: &Config, s: Option<&StreamConfig>, rate_key: &str) -> StreamSettings {
    let (mut batch, mut limits) = (config.batch.clone(), config.limits.clone());
    let global = retention(config.streams.retention.as_ref());
    let Some(s) = s else {
        return StreamSettings {
            partitions: config.streams.partitions,
            batch,
            limits,
            declared: false,
            limiter: None,
            schema: None,
            schema_error: None,
            dead_letter: false,
            dead_letters: false,
            consumer_groups: Vec::new(),
            retention: kept_for(global),
        };
    };
    let (schema, schema_error) =
        match Schema::document_of(s).and_then(|doc| doc.map(Schema::compile).transpose()) {
            Ok(schema) => (schema.map(Arc::new), None),
            Err(e) => (None, Some(e)),
        };
    batch.max_bytes = s.max_bytes.unwrap_or(batch.max_bytes);
    batch.max_events = s.max_events.unwrap_or(batch.max_events);
    batch.max_age_ms = s.max_age_ms.unwrap_or(batch.max_age_ms);
    limits.max_event_bytes = s.max_event_bytes.unwrap_or(limits.max_event_bytes);
    limits.max_events_per_request = s
        .max_events_per_request
        .unwrap_or(limits.max_events_per_request);
    StreamSettings {
        partitions: s.partitions.unwrap_or(config.streams.partitions),
        batch,
        limits,
        declared: true,
        limiter: Limiter::new(&s.rate, "stream", rate_key.to_string()),
        schema,
        schema_error,
        dead_letter: s.dead_letter,
        dead_letters: false,
        consumer_groups: s.consumer_groups.clone(),
        retention: kept_for(retention(s.retention.as_ref()).or(global)),
    }
}

/// A dead-letter stream: one partition, so its offsets are one sequence
/// (`sluice replay --from-offset`), no schema, never dead-lettered itself.
fn dead_letters(config: &Config) -> StreamSettings {
    StreamSettings {
        partitions: 1,
        declared: true,
        dead_letters: true,
        ..settings(config, None, "")
    }
}

/// Every tenant of a config. The top-level `tenant` (the one serving while
/// auth is off) always exists, declared or not.
#[derive(Debug)]
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
    default: Arc<Tenant>,
}

impl Tenants {
    pub fn from_config(config: &Config) -> Tenants {
        let mut by_name: HashMap<String, Arc<Tenant>> = config
            .tenants
            .iter()
            .map(|(name, t)| (name.clone(), Arc::new(Tenant::new(name, t, config))))
            .collect();
        let default = by_name
            .entry(config.tenant.clone())
            .or_insert_with(|| {
                Arc::new(Tenant::new(
                    &config.tenant,
                    &TenantConfig::default(),
                    config,
                ))
            })
            .clone();
        Tenants { by_name, default }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.by_name.get(name)
    }

    /// Every tenant.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_name.values()
    }

    /// The tenant that serves every request while auth is off.
    pub fn default_tenant(&self) -> &Arc<Tenant> {
        &self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_streams_override_and_auto_create_decides_the_rest() {
        let text = r#"
            [tenants.acme]
            auto_create = false
            [tenants.acme.streams.clicks]
            partitions = 8
            max_age_ms = 5
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let tenants = Tenants::from_config(&config);
        let acme = tenants.get("acme").unwrap();
        let clicks = acme.stream("clicks").unwrap();
        assert_eq!((clicks.partitions, clicks.batch.max_age_ms), (8, 5));
        assert_eq!(clicks.batch.max_bytes, config.batch.max_bytes);
        assert!(matches!(
            acme.stream("views"),
            Err(StreamError::Unknown { .. })
        ));
        assert!(matches!(
            acme.stream("../x"),
            Err(StreamError::BadName { .. })
        ));
        let default = tenants.default_tenant();
        assert_eq!(default.name, "default");
        assert_eq!(default.stream("views").unwrap().partitions, 4);
        assert_eq!(clicks.retention, None, "forever by default");
    }

    #[test]
    fn retention_comes_from_the_stream_else_the_global_default() {
        let text = r#"
            [streams]
            retention = "7d"
            [tenants.acme.streams.clicks]
            retention = "12h"
            [tenants.acme.streams.audit]
            retention = "forever"
            [tenants.acme.streams.views]
            partitions = 2
        "#;
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let tenants = Tenants::from_config(&config);
        let acme = tenants.get("acme").unwrap();
        let hours = |h: u64| Some(Duration::from_secs(h * 3600));
        assert_eq!(acme.stream("clicks").unwrap().retention, hours(12));
        assert_eq!(acme.stream("audit").unwrap().retention, None);
        assert_eq!(acme.stream("views").unwrap().retention, hours(168));
        assert_eq!(acme.stream("other").unwrap().retention, hours(168));
    }
}
