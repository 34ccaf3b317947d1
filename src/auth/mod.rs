//! Who may do what: keys, scopes, stream patterns, origins, CORS.
//!
//! Owns turning a request into a [`Grant`] (the tenant it acts for and the
//! key it used) or a 401/403 problem, and the CORS answers. Every route asks
//! here first; what a grant may then read or write is always inside its
//! tenant. Rate limits live in `limit`, stream settings in `tenants`.

pub mod keys;

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::config::{Config, KeyConfig, Scope};
use crate::error::{Problem, ProblemType};
use crate::limit::Limiter;
use crate::tenants::{StreamError, StreamSettings, Tenant, Tenants};
use keys::KeyTable;

/// What a route does, and so the scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Write,
    Read,
    Metrics,
}

impl Action {
    fn scope(self) -> Scope {
        match self {
            Action::Write => Scope::Write,
            Action::Read => Scope::Read,
            Action::Metrics => Scope::Metrics,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Write => "write",
            Action::Read => "read",
            Action::Metrics => "metrics",
        }
    }
}

/// One configured key.
#[derive(Debug)]
pub struct Key {
    pub id: String,
    pub tenant: Arc<Tenant>,
    scopes: Vec<Scope>,
    streams: Vec<String>,
    origins: Vec<String>,
    pub limiter: Option<Limiter>,
}

impl Key {
    fn new(i: usize, cfg: &KeyConfig, tenant: Arc<Tenant>) -> Key {
        let (rate, source) = match &cfg.rate {
            Some(rate) => (*rate, format!("keys[{i}].rate (key {})", cfg.id)),
            None => (
                tenant.key_rate,
                format!("tenants.{}.key_rate (key {})", tenant.name, cfg.id),
            ),
        };
        Key {
            id: cfg.id.clone(),
            scopes: cfg.scopes.clone(),
            streams: cfg.streams.clone(),
            origins: cfg.origins.clone(),
            limiter: Limiter::new(&rate, "key", source),
            tenant,
        }
    }

    /// May this key touch `stream`?
    pub fn allows_stream(&self, stream: &str) -> bool {
        self.streams.iter().any(|p| keys::glob(p, stream))
    }

    /// A browser key (it names origins): its key ships inside web pages.
    pub fn is_browser_key(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows_origin(&self, origin: &str) -> bool {
        origin_allowed(&self.origins, origin)
    }
}

/// The outcome of authentication: whose request this is.
#[derive(Debug, Clone)]
pub struct Grant {
    pub tenant: Arc<Tenant>,
    /// `None` while auth is off.
    pub key: Option<Arc<Key>>,
}

impl Grant {
    /// A stream of this grant's tenant: 400 for a bad name, 404 for one that
    /// does not exist (not declared, and the tenant does not auto-create).
    pub fn stream(&self, name: &str) -> Result<Arc<StreamSettings>, Problem> {
        self.tenant.stream(name).cloned().map_err(|e| match e {
            StreamError::BadName { .. } => {
                Problem::new(ProblemType::InvalidStreamName, e.to_string())
            }
            StreamError::Unknown { .. } => Problem::new(ProblemType::UnknownStream, e.to_string()),
        })
    }

    /// A stream this grant may write: [`Grant::stream`], but not a
    /// dead-letter stream (only the gateway writes those).
    pub fn writable(&self, name: &str) -> Result<Arc<StreamSettings>, Problem> {
        let settings = self.stream(name)?;
        if settings.dead_letters {
            return Err(forbidden(
                ProblemType::DeadLetterStream,
                format!("{name} is a dead-letter stream: only the gateway writes it (sluice replay moves its events back)"),
            ));
        }
        Ok(settings)
    }

    /// May this grant see `stream` (in listings)?
    pub fn sees(&self, stream: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.allows_stream(stream))
    }

    /// The limiters one write of this grant to `stream` must pass, tightest
    /// scope first (so a refusal by the key's own limit charges nothing else).
    pub fn limiters<'a>(&'a self, stream: &'a StreamSettings) -> [Option<&'a Limiter>; 3] {
        [
            self.key.as_ref().and_then(|k| k.limiter.as_ref()),
            stream.limiter.as_ref(),
            self.tenant.limiter.as_ref(),
        ]
    }

    /// The key id, or `-` while auth is off (for logs and dead letters).
    pub fn key_id(&self) -> &str {
        self.key.as_ref().map_or("-", |k| k.id.as_str())
    }
}

/// Keys and tenants of one config.
#[derive(Debug)]
pub struct Access {
    enabled: bool,
    keys: KeyTable<Key>,
    tenants: Tenants,
    /// Every origin pattern of every key: preflights carry no key.
    origins: Vec<String>,
}

/// Methods and headers a browser may use cross-origin.
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const ALLOW_HEADERS: &str =
    "authorization, x-api-key, content-type, content-encoding, prefer, last-event-id";
const EXPOSE_HEADERS: &str = "retry-after, ratelimit, ratelimit-policy";

impl Access {
    /// From a validated config.
    pub fn from_config(config: &Config) -> Access {
        let tenants = Tenants::from_config(config);
        let entries = config.keys.iter().enumerate().filter_map(|(i, k)| {
            let tenant = tenants.get(&k.tenant)?.clone();
            let digest = keys::parse_hash(&k.hash).ok()?;
            Some((digest, Arc::new(Key::new(i, k, tenant))))
        });
        let keys = KeyTable::new(entries);
        let mut origins: Vec<String> = config.keys.iter().flat_map(|k| k.origins.clone()).collect();
        origins.sort();
        origins.dedup();
        Access {
            enabled: config.auth_enabled(),
            keys,
            tenants,
            origins,
        }
    }

    /// Every tenant and its streams.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Answers depend on `Origin` once keys exist: every response says so
    /// (`Vary`), so a shared cache never serves one origin's answer to another.
    pub fn vary(&self, headers: &mut HeaderMap) {
        if self.enabled {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }

    /// Who sent `req`, and may they do `action` (on `stream`)?
    pub fn authorize<B>(
        &self,
        req: &Request<B>,
        action: Action,
        stream: Option<&str>,
    ) -> Result<Grant, Problem> {
        if !self.enabled {
            check_same_origin(req)?;
            return Ok(Grant {
                tenant: self.tenants.default_tenant().clone(),
                key: None,
            });
        }
        let (presented, in_query) = credential(req)?;
        let key = self.keys.find(presented).ok_or_else(|| {
            unauthorized(
                ProblemType::UnknownKey,
                "the API key is not known to this gateway",
            )
        })?;
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if in_query {
            check_query_key(key, action, origin)?;
        }
        if !key.scopes.contains(&action.scope()) {
            return Err(forbidden(
                ProblemType::ForbiddenScope,
                format!("key {} has no {:?} scope", key.id, action.name()),
            ));
        }
        if let Some(s) = stream.filter(|s| !key.allows_stream(s)) {
            return Err(forbidden(
                ProblemType::ForbiddenStream,
                format!("key {} may not use stream {s:?} (keys[].streams)", key.id),
            ));
        }
        if let Some(o) = origin.filter(|o| !key.allows_origin(o)) {
            return Err(forbidden(
                ProblemType::ForbiddenOrigin,
                format!(
                    "key {} may not be used from origin {o:?} (keys[].origins)",
                    key.id
                ),
            ));
        }
        Ok(Grant {
            tenant: key.tenant.clone(),
            key: Some(key.clone()),
        })
    }

    /// The `Origin` of `headers`, if some key allows it (CORS response headers).
    pub fn cors_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        origin_allowed(&self.origins, text).then(|| origin.clone())
    }

    /// Answer a CORS preflight (`OPTIONS`): allowed when some key allows the
    /// origin (or, with `?key=`, when that key does).
    pub fn preflight<B>(&self, req: &Request<B>) -> Response<Body> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let Some(origin) = origin else {
            return Problem::new(
                ProblemType::NotAPreflight,
                "OPTIONS is answered for CORS preflights, which carry Origin",
            )
            .response();
        };
        let allowed = match query_key(req) {
            Some(k) => self.keys.find(k).is_some_and(|k| k.allows_origin(origin)),
            None => origin_allowed(&self.origins, origin),
        };
        if !allowed {
            let whose = match query_key(req) {
                Some(_) => "the key in ?key= may not",
                None => "no key of this gateway may",
            };
            return forbidden(
                ProblemType::ForbiddenOrigin,
                format!("{whose} be used from origin {origin:?}"),
            )
            .response();
        }
        let mut resp = Response::new(crate::body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        resp
    }
}

/// Does one of `patterns` allow `origin`? `null` (sandboxed frames, `file:`
/// pages) is never allowed, whatever the patterns.
fn origin_allowed(patterns: &[String], origin: &str) -> bool {
    origin != "null" && patterns.iter().any(|p| keys::glob(p, origin))
}

/// Add the CORS headers for an allowed `origin` to any response.
pub fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// Is this a CORS preflight?
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
}

/// The key a request carries: `Authorization: Bearer`, `X-API-Key`, or
/// `?key=` (second value: it came in the query).
fn credential<B>(req: &Request<B>) -> Result<(&str, bool), Problem> {
    let headers = req.headers();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let text = v.to_str().unwrap_or("");
        let bearer = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim());
        return bearer.map(|k| (k, false)).ok_or_else(|| {
            unauthorized(
                ProblemType::BadAuthorization,
                "Authorization must be \"Bearer <key>\"",
            )
        });
    }
    if let Some(v) = headers.get("x-api-key") {
        return Ok((v.to_str().unwrap_or("").trim(), false));
    }
    match query_key(req) {
        Some(k) => Ok((k, true)),
        None => Err(unauthorized(
            ProblemType::MissingKey,
            "send an API key: Authorization: Bearer <key>, X-API-Key, or ?key= (writes from browsers)",
        )),
    }
}

fn query_key<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
}

/// `?key=` is for browsers that cannot set headers (`sendBeacon`): writes
/// only, from an origin the key names.
fn check_query_key(key: &Key, action: Action, origin: Option<&str>) -> Result<(), Problem> {
    if action != Action::Write {
        return Err(forbidden(
            ProblemType::KeyInQuery,
            "?key= is accepted for writes only; send the key in Authorization or X-API-Key",
        ));
    }
    match origin {
        Some(o) if key.allows_origin(o) => Ok(()),
        Some(o) => Err(forbidden(
            ProblemType::ForbiddenOrigin,
            format!(
                "key {} may not be used from origin {o:?} (keys[].origins)",
                key.id
            ),
        )),
        None => Err(forbidden(
            ProblemType::KeyInQuery,
            format!(
                "?key= needs an Origin header that key {} allows (keys[].origins)",
                key.id
            ),
        )),
    }
}

/// While auth is off, a browser page on another origin must not reach the
/// gateway: CORS does not cover WebSockets or `sendBeacon`, so a request whose
/// `Origin` is not the gateway's own (`Host`) is refused on every route.
fn check_same_origin<B>(req: &Request<B>) -> Result<(), Problem> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, a)| a);
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(forbidden(
            ProblemType::ForbiddenOrigin,
            "auth is off: requests from browser pages on other origins are refused; declare [[keys]] with origins",
        )),
    }
}

fn unauthorized(kind: ProblemType, detail: &str) -> Problem {
    let mut p = Problem::new(kind, detail);
    p.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sluice\""),
    );
    p
}

fn forbidden(kind: ProblemType, detail: impl Into<String>) -> Problem {
    Problem::new(kind, detail)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_null_origin_is_never_allowed() {
        let any = ["*".to_string()];
        assert!(super::origin_allowed(&any, "https://shop.example"));
        assert!(!super::origin_allowed(&any, "null"));
        assert!(!super::origin_allowed(&["null".to_string()], "null"));
    }
}
