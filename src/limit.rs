//! Rate limits: token buckets (governor's GCRA) on events/s and bytes/s.
//!
//! Owns the buckets and the verdict on one request: a key, its stream and its
//! tenant each may have a limit; the request passes only if every bucket has
//! room for all its events and bytes, so a request is never partly accepted.
//! Every bucket is made at config load, one per declared key, stream and
//! tenant: memory is bounded by the config, never by traffic.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue};

use crate::config::RateConfig;
use crate::error::{Problem, ProblemType};

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

#[derive(Debug)]
struct Bucket {
    gcra: Gcra,
    per_sec: u32,
    burst: u32,
    policy: &'static str,
}

/// The limits of one key, stream or tenant.
#[derive(Debug)]
pub struct Limiter {
    events: Option<Bucket>,
    bytes: Option<Bucket>,
    /// The config key that sets it, for messages.
    pub source: String,
}

/// Which budget a policy spends.
#[derive(Clone, Copy)]
enum Unit {
    Events,
    Bytes,
}

fn policy(scope: &str, unit: Unit) -> &'static str {
    match (scope, unit) {
        ("key", Unit::Events) => "key-events",
        ("key", Unit::Bytes) => "key-bytes",
        ("stream", Unit::Events) => "stream-events",
        ("stream", Unit::Bytes) => "stream-bytes",
        (_, Unit::Events) => "tenant-events",
        (_, Unit::Bytes) => "tenant-bytes",
    }
}

impl Bucket {
    fn new(per_sec: u32, burst: u32, policy: &'static str) -> Option<Bucket> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Bucket {
            gcra: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
            per_sec,
            burst: burst.get(),
            policy,
        })
    }

    fn state(&self, remaining: u32) -> RateState {
        RateState {
            policy: self.policy,
            rate: self.per_sec,
            burst: self.burst,
            remaining,
            reset: (self.burst - remaining.min(self.burst)).div_ceil(self.per_sec),
        }
    }

    fn take(&self, n: u32, source: &str) -> Result<RateState, Refused> {
        let Some(cells) = NonZeroU32::new(n) else {
            return Ok(self.state(self.burst));
        };
        match self.gcra.check_n(cells) {
            Ok(Ok(snapshot)) => Ok(self.state(snapshot.remaining_burst_capacity())),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = (wait.as_millis() as u64).div_ceil(1000).max(1) as u32;
                let mut state = self.state(0);
                state.reset = retry_after;
                Err(Refused::Limited {
                    state,
                    retry_after,
                    source: source.to_string(),
                    rate: self.per_sec,
                })
            }
            Err(_) => Err(Refused::OverBurst {
                policy: self.policy,
                asked: n,
                burst: self.burst,
                source: source.to_string(),
            }),
        }
    }
}

impl Limiter {
    /// `None` when `rate` limits nothing. `scope` is `key`, `stream` or `tenant`.
    pub fn new(rate: &RateConfig, scope: &str, source: String) -> Option<Limiter> {
        let events = Bucket::new(
            rate.events_per_sec,
            rate.events_burst,
            policy(scope, Unit::Events),
        );
        let bytes = Bucket::new(
            rate.bytes_per_sec,
            rate.bytes_burst,
            policy(scope, Unit::Bytes),
        );
        (events.is_some() || bytes.is_some()).then_some(Limiter {
            events,
            bytes,
            source,
        })
    }
}

/// Where a client stands against its tightest limit (the `RateLimit` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub policy: &'static str,
    /// Units per second.
    pub rate: u32,
    /// Most units at once.
    pub burst: u32,
    /// Units that would pass now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (or, refused, until the
    /// request would fit).
    pub reset: u32,
}

impl RateState {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers):
    /// the policy is the rate (`q` units per `w` = 1 s; bytes policies say
    /// `qu="content-bytes"`, counting decoded bytes), `r` what would pass now
    /// (at most the burst), `t` the seconds until that is full again.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let unit = match unit_name(self.policy) {
            "bytes" => ";qu=\"content-bytes\"",
            _ => "",
        };
        let policy = format!("\"{}\";q={};w=1{unit}", self.policy, self.rate);
        let now = format!("\"{}\";r={};t={}", self.policy, self.remaining, self.reset);
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", now)] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// Lower share of the burst left is tighter.
    fn tighter_than(&self, other: &RateState) -> bool {
        (self.remaining as u64) * (other.burst as u64)
            < (other.remaining as u64) * (self.burst as u64)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Over the rate now; retry later.
    Limited {
        state: RateState,
        retry_after: u32,
        source: String,
        rate: u32,
    },
    /// The request alone is larger than the burst: it can never pass.
    OverBurst {
        policy: &'static str,
        asked: u32,
        burst: u32,
        source: String,
    },
}

/// Take `events` and `bytes` from every limiter, or refuse the whole request.
/// On success, the tightest limit's state (for headers), if any limit applies.
pub fn check(
    limiters: &[Option<&Limiter>],
    events: usize,
    bytes: usize,
) -> Result<Option<RateState>, Refused> {
    let (events, bytes) = (clamp(events), clamp(bytes));
    let mut tightest: Option<RateState> = None;
    for limiter in limiters.iter().flatten() {
        let taken = [(&limiter.events, events), (&limiter.bytes, bytes)];
        for (bucket, n) in taken {
            let Some(bucket) = bucket else { continue };
            let state = bucket.take(n, &limiter.source)?;
            if tightest.is_none_or(|t| state.tighter_than(&t)) {
                tightest = Some(state);
            }
        }
    }
    Ok(tightest)
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl From<Refused> for Problem {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Limited {
                state,
                retry_after,
                source,
                rate,
            } => {
                let unit = unit_name(state.policy);
                let mut p = Problem::new(
                    ProblemType::RateLimited,
                    format!("over the limit of {rate} {unit}/s (burst {}) set by {source}; nothing of this request was accepted: retry in {retry_after} s", state.burst),
                )
                .retry_after(retry_after);
                state.write_headers(p.headers_mut());
                p
            }
            Refused::OverBurst {
                policy,
                asked,
                burst,
                source,
            } => Problem::new(
                ProblemType::OverBurst,
                format!(
                    "this request carries {asked} {}; the limit set by {source} allows at most {burst} at once: send smaller requests",
                    unit_name(policy)
                ),
            ),
        }
    }
}

fn unit_name(policy: &str) -> &'static str {
    if policy.ends_with("bytes") {
        "bytes"
    } else {
        "events"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: u32, burst: u32) -> Limiter {
        let rate = RateConfig {
            events_per_sec: per_sec,
            events_burst: burst,
            ..RateConfig::default()
        };
        Limiter::new(&rate, "key", "keys[0].rate".into()).unwrap()
    }

    #[test]
    fn a_request_passes_whole_or_not_at_all() {
        let l = limiter(1, 10);
        let state = check(&[Some(&l)], 6, 100).unwrap().unwrap();
        assert_eq!((state.remaining, state.burst), (4, 10));
        let refused = check(&[Some(&l)], 6, 100).unwrap_err();
        assert!(matches!(refused, Refused::Limited { retry_after, .. } if retry_after >= 2));
        // The refused request took nothing: 4 still fit.
        assert_eq!(check(&[Some(&l)], 4, 0).unwrap().unwrap().remaining, 0);
        assert!(matches!(
            check(&[Some(&l)], 11, 0).unwrap_err(),
            Refused::OverBurst {
                asked: 11,
                burst: 10,
                ..
            }
        ));
    }

    #[test]
    fn no_limit_means_no_limiter_and_no_headers() {
        assert!(Limiter::new(&RateConfig::default(), "tenant", String::new()).is_none());
        assert_eq!(check(&[None, None], 1_000_000, 1 << 30), Ok(None));
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let l = limiter(10, 20);
        let state = check(&[Some(&l)], 5, 0).unwrap().unwrap();
        let mut h = HeaderMap::new();
        state.write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"key-events\";q=10;w=1");
        assert_eq!(h["ratelimit"], "\"key-events\";r=15;t=1");
        let bytes = RateConfig {
            bytes_per_sec: 100,
            ..RateConfig::default()
        };
        let l = Limiter::new(&bytes, "tenant", String::new()).unwrap();
        let mut h = HeaderMap::new();
        check(&[Some(&l)], 1, 40)
            .unwrap()
            .unwrap()
            .write_headers(&mut h);
        assert_eq!(
            h["ratelimit-policy"],
            "\"tenant-bytes\";q=100;w=1;qu=\"content-bytes\""
        );
        assert_eq!(h["ratelimit"], "\"tenant-bytes\";r=60;t=1");
    }
}
