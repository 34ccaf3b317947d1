//! Garbage-collection settings (`[gc]`) and the duration syntax of
//! `retention` (`"30m"`, `"12h"`, `"7d"`).
//!
//! Owns parsing and validation only; the collector reads the values.

use std::time::Duration;

use serde::Deserialize;

use crate::config::BatchConfig;

/// `[gc]`: the optional schedule inside `serve`, and the bounds every run
/// (scheduled or `sluice gc`) works within.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run gc inside `serve` every `interval`. Safe on every replica at once
    /// (they coordinate through create-only watermark objects), but each
    /// run costs store requests: one replica or a CronJob is enough.
    pub enabled: bool,
    /// Time between scheduled runs; each replica starts at a random point
    /// of the first interval, so replicas spread out.
    pub interval: String,
    /// A segment written (its object's `last_modified`) less than this long
    /// ago is never deleted as an orphan. Protects commits in flight: a
    /// commit creates its record at most a few dozen store operations after
    /// its segment PUT, each retried for up to `batch.store_retry_ms` (a
    /// retried commit PUTs its segment again, restarting the clock), so it
    /// must be at least 120 × `batch.store_retry_ms` (10 min at the default).
    /// A gateway frozen (SIGSTOP, a suspended VM) between the two steps for
    /// longer than this would commit a record whose segment is gone.
    pub orphan_grace: String,
    /// An hour of `data/` is checked for orphans once it ended this long
    /// (plus `orphan_grace`) ago, and a segment written more than this long
    /// after its hour ended is never taken for an orphan (kept). Larger:
    /// orphans go later, fewer late segments are kept forever. Events whose
    /// commit waits longer (a gateway riding out a long store outage)
    /// write such late segments.
    pub lateness: String,
    /// How far gateway clocks (which stamp `received_at`, and so name a
    /// segment's hour) may be from the store's clock (which stamps objects).
    pub clock_skew: String,
    /// Records one run reads per partition for retention (and so at most
    /// deletes); a partition with more expired records finishes in later
    /// runs. Bounds a run's memory (about 200 bytes a record) and time.
    pub max_records_per_run: usize,
    /// Hours of `data/` one run checks for orphans per stream; the rest
    /// wait for the next run (a cursor object remembers where it stopped).
    pub orphan_hours_per_run: usize,
    /// Store requests one run has in flight at once.
    pub concurrency: usize,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: false,
            interval: "1h".into(),
            orphan_grace: "1h".into(),
            lateness: "6h".into(),
            clock_skew: "5m".into(),
            max_records_per_run: 100_000,
            orphan_hours_per_run: 48,
            concurrency: 16,
        }
    }
}

impl GcConfig {
    pub fn interval(&self) -> Duration {
        parse_duration(&self.interval).unwrap_or(Duration::from_secs(3600))
    }
    pub fn orphan_grace(&self) -> Duration {
        parse_duration(&self.orphan_grace).unwrap_or(Duration::from_secs(3600))
    }
    pub fn lateness(&self) -> Duration {
        parse_duration(&self.lateness).unwrap_or(Duration::from_secs(6 * 3600))
    }
    pub fn clock_skew(&self) -> Duration {
        parse_duration(&self.clock_skew).unwrap_or(Duration::from_secs(300))
    }

    /// `orphan_grace` covers a commit in flight (see the field). Checked at
    /// load when the schedule is on, and by `sluice gc` before it runs, so a
    /// large `batch.store_retry_ms` does not invalidate configs that never
    /// collect.
    pub fn check_grace(&self, batch: &BatchConfig) -> Result<(), (String, String)> {
        let floor = batch.store_retry().saturating_mul(120);
        if self.orphan_grace() < floor {
            return Err((
                "gc.orphan_grace".into(),
                format!(
                    "must be at least 120 × batch.store_retry_ms ({}s): a commit in flight must never lose its segment",
                    floor.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Reject values that cannot work: `(key under gc., message)`.
    pub fn validate(&self, batch: &BatchConfig) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("gc.{key}"), message));
        for (key, text) in [
            ("interval", &self.interval),
            ("orphan_grace", &self.orphan_grace),
            ("lateness", &self.lateness),
            ("clock_skew", &self.clock_skew),
        ] {
            if let Err(m) = parse_duration(text) {
                return bad(key, m);
            }
        }
        if self.enabled {
            self.check_grace(batch)?;
        }
        let counts = [
            ("max_records_per_run", self.max_records_per_run, usize::MAX),
            (
                "orphan_hours_per_run",
                self.orphan_hours_per_run,
                usize::MAX,
            ),
            ("concurrency", self.concurrency, 256),
        ];
        for (key, n, max) in counts {
            if n == 0 || n > max {
                return bad(key, format!("must be between 1 and {max}"));
            }
        }
        Ok(())
    }
}

/// How long a stream keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Forever,
    For(Duration),
}

/// A `retention` value: a duration, or `"forever"`.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    match text.trim() {
        "forever" => Ok(Retention::Forever),
        t => parse_duration(t).map(Retention::For),
    }
}

/// Longest duration accepted (100 years): keeps time arithmetic in range.
const MAX_DURATION_SECS: u64 = 36_500 * 86_400;

/// `"90s"`, `"30m"`, `"12h"`, `"7d"`: a whole positive number and a unit,
/// at most 100 years.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration: use a whole number and a unit, s, m, h or d (e.g. \"30m\", \"12h\", \"7d\")")
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(secs) {
        Some(s) if s > 0 && s <= MAX_DURATION_SECS => Ok(Duration::from_secs(s)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_retentions() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "1.5h",
            "-1d",
            "0h",
            "7 days",
            "99999999999999999999d",
            "36501d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_retention("forever"), Ok(Retention::Forever));
        assert_eq!(
            parse_retention("7d"),
            Ok(Retention::For(Duration::from_secs(604_800)))
        );
    }

    #[test]
    fn defaults_are_valid_and_the_grace_covers_a_commit() {
        let batch = BatchConfig::default();
        GcConfig::default().validate(&batch).unwrap();
        let short = GcConfig {
            orphan_grace: "5m".into(),
            ..GcConfig::default()
        };
        short.validate(&batch).unwrap();
        let (key, _) = short.check_grace(&batch).unwrap_err();
        assert_eq!(key, "gc.orphan_grace");
        let scheduled = GcConfig {
            enabled: true,
            ..short
        };
        let (key, message) = scheduled.validate(&batch).unwrap_err();
        assert_eq!(key, "gc.orphan_grace");
        assert!(message.contains("store_retry_ms"), "{message}");
    }
}
