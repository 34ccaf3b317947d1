//! Hours of receive time: the unit compaction works in.

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDateTime;

use crate::log::segment::ReceivedAt;

const HOUR_MS: i64 = 3_600_000;

/// One UTC hour, `[start, start + 1h)` of receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour {
    start: i64,
}

impl Hour {
    /// The hour holding `millis`.
    pub fn of(millis: i64) -> Hour {
        Hour {
            start: millis.div_euclid(HOUR_MS) * HOUR_MS,
        }
    }

    pub fn start(self) -> i64 {
        self.start
    }

    pub fn end(self) -> i64 {
        self.start + HOUR_MS
    }

    pub fn next(self) -> Hour {
        Hour { start: self.end() }
    }

    /// `dt=YYYY-MM-DD/hr=HH`, the hive partition of tables and segments.
    pub fn partition(self) -> String {
        ReceivedAt::from_millis(self.start).hour_partition()
    }

    /// The hour of a `dt=YYYY-MM-DD/hr=HH` path (its last two segments).
    pub fn from_partition(path: &str) -> Option<Hour> {
        let mut parts = path.rsplit('/');
        let hr = parts.next()?.strip_prefix("hr=")?;
        let dt = parts.next()?.strip_prefix("dt=")?;
        format!("{dt}T{hr}").parse().ok()
    }
}

impl fmt::Display for Hour {
    /// `YYYY-MM-DDTHH`, as `sluice compact --hour` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&ReceivedAt::from_millis(self.start).as_str()[..13])
    }
}

impl FromStr for Hour {
    type Err = String;

    fn from_str(s: &str) -> Result<Hour, String> {
        let at = NaiveDateTime::parse_from_str(&format!("{s}:00:00"), "%Y-%m-%dT%H:%M:%S")
            .map_err(|_| {
                format!("{s:?} is not an hour: use YYYY-MM-DDTHH (UTC), e.g. 2026-11-24T13")
            })?;
        Ok(Hour::of(at.and_utc().timestamp_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_print_parse_and_name_their_partition() {
        let h: Hour = "2026-11-24T13".parse().unwrap();
        assert_eq!(h.to_string(), "2026-11-24T13");
        assert_eq!(h.partition(), "dt=2026-11-24/hr=13");
        assert_eq!(Hour::from_partition("x/data/dt=2026-11-24/hr=13"), Some(h));
        assert_eq!(h.next().to_string(), "2026-11-24T14");
        assert_eq!(Hour::of(h.start() + 3_599_999), h);
        assert!("2026-11-24".parse::<Hour>().is_err());
        assert!("2026-11-24T25".parse::<Hour>().is_err());
    }
}
