//! The segment format: envelope lines built in one buffer, then zstd.
//!
//! Owns the bytes of a segment and nothing else: each line is
//! `{"received_at":"…","event":<event bytes as sent>}` and the event bytes are
//! copied once into the segment buffer, never parsed or re-serialised here.
//! Where a segment is stored and how it is committed belong to `log`.

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};

const PREFIX: &[u8] = b"{\"received_at\":\"";
const MIDDLE: &[u8] = b"\",\"event\":";
const SUFFIX: &[u8] = b"}\n";

/// A receive time, formatted once (`2026-11-24T13:00:00.123Z`) and shared by
/// every event of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedAt {
    millis: i64,
    text: [u8; 24],
}

impl ReceivedAt {
    pub fn now() -> Self {
        Self::from_millis(Utc::now().timestamp_millis())
    }

    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        Self::from_millis(at.timestamp_millis())
    }

    /// Format milliseconds since the epoch without allocating (years 0–9999).
    pub fn from_millis(millis: i64) -> Self {
        let clamped = millis.clamp(-62_167_219_200_000, 253_402_300_799_999);
        let (days, ms_of_day) = (
            clamped.div_euclid(86_400_000),
            clamped.rem_euclid(86_400_000),
        );
        let (y, m, d) = civil_from_days(days);
        let mut text = *b"0000-00-00T00:00:00.000Z";
        put(&mut text[0..4], y as u64);
        put(&mut text[5..7], m);
        put(&mut text[8..10], d);
        put(&mut text[11..13], (ms_of_day / 3_600_000) as u64);
        put(&mut text[14..16], (ms_of_day / 60_000 % 60) as u64);
        put(&mut text[17..19], (ms_of_day / 1000 % 60) as u64);
        put(&mut text[20..23], (ms_of_day % 1000) as u64);
        ReceivedAt { millis, text }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).unwrap_or("1970-01-01T00:00:00.000Z")
    }

    pub fn millis(&self) -> i64 {
        self.millis
    }

    /// `dt=YYYY-MM-DD/hr=HH`, the hive partition of the segment's first event.
    pub fn hour_partition(&self) -> String {
        let t = self.as_str();
        format!("dt={}/hr={}", &t[0..10], &t[11..13])
    }
}

/// Write `n` as zero-padded decimal filling `out`.
fn put(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Accumulates envelope lines for one segment.
#[derive(Debug, Default)]
pub struct SegmentBuilder {
    buf: BytesMut,
    count: u64,
    min: Option<ReceivedAt>,
    max: Option<ReceivedAt>,
}

impl SegmentBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        SegmentBuilder {
            buf: BytesMut::with_capacity(bytes),
            ..Default::default()
        }
    }

    /// Append one event's bytes, as sent, inside its envelope.
    pub fn push(&mut self, at: ReceivedAt, event: &[u8]) {
        self.buf
            .reserve(PREFIX.len() + 24 + MIDDLE.len() + event.len() + SUFFIX.len());
        self.buf.extend_from_slice(PREFIX);
        self.buf.extend_from_slice(&at.text);
        self.buf.extend_from_slice(MIDDLE);
        self.buf.extend_from_slice(event);
        self.buf.extend_from_slice(SUFFIX);
        self.count += 1;
        self.min = Some(self.min.map_or(at, |m| m.min(at)));
        self.max = Some(self.max.map_or(at, |m| m.max(at)));
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Uncompressed bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Compress into a sealed segment. `None` when nothing was pushed.
    pub fn seal(self, zstd_level: i32) -> std::io::Result<Option<Segment>> {
        let (Some(min), Some(max)) = (self.min, self.max) else {
            return Ok(None);
        };
        let data = zstd::bulk::compress(&self.buf, zstd_level)?;
        Ok(Some(Segment {
            data: Bytes::from(data),
            raw_len: self.buf.len() as u64,
            count: self.count,
            min_received_at: min,
            max_received_at: max,
        }))
    }
}

/// A compressed segment ready to be stored and committed.
#[derive(Debug, Clone)]
pub struct Segment {
    pub data: Bytes,
    pub raw_len: u64,
    pub count: u64,
    pub min_received_at: ReceivedAt,
    pub max_received_at: ReceivedAt,
}

/// Decompress a stored segment whose uncompressed size is known from its record.
pub fn decompress(data: &[u8], raw_len: u64) -> std::io::Result<Bytes> {
    let cap = usize::try_from(raw_len).unwrap_or(usize::MAX);
    zstd::bulk::decompress(data, cap).map(Bytes::from)
}

/// Split decompressed segment bytes into envelope lines (no trailing newline).
pub fn lines(raw: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= raw.len() {
            return None;
        }
        let end = raw[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| start + p);
        let line = raw.slice(start..end);
        start = end + 1;
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_event_bytes_as_sent() {
        let at = ReceivedAt::from_datetime(
            DateTime::parse_from_rfc3339("2026-11-24T13:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        let mut b = SegmentBuilder::default();
        b.push(at, br#"{ "a" : 1.50 }"#);
        b.push(at, br#"{"b":[]}"#);
        let seg = b.seal(1).unwrap().unwrap();
        let raw = decompress(&seg.data, seg.raw_len).unwrap();
        let got: Vec<Bytes> = lines(&raw).collect();
        assert_eq!(
            got[0],
            Bytes::from_static(
                br#"{"received_at":"2026-11-24T13:00:00.123Z","event":{ "a" : 1.50 }}"#
            )
        );
        assert_eq!(got.len(), 2);
        assert_eq!(seg.count, 2);
        assert_eq!(at.hour_partition(), "dt=2026-11-24/hr=13");
    }

    #[test]
    fn formats_like_chrono_across_dates() {
        for millis in [
            0i64,
            951_782_400_123,
            1_795_000_000_999,
            4_102_444_799_999,
            1_709_164_800_000,
        ] {
            let chrono = DateTime::from_timestamp_millis(millis)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(ReceivedAt::from_millis(millis).as_str(), chrono);
        }
    }

    #[test]
    fn empty_builder_seals_to_nothing() {
        assert!(SegmentBuilder::default().seal(1).unwrap().is_none());
    }
}
