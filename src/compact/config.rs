//! `[compaction]`: when and how closed hours become Parquet tables.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Parquet compaction (`sluice compact`, and the schedule inside `serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Compact inside `serve` every `interval_ms`. Safe on every replica at
    /// once (runs claim their work put-if-absent); off by default, for a
    /// CronJob running `sluice compact` instead.
    pub enabled: bool,
    /// Time between scheduled runs.
    pub interval_ms: u64,
    /// How long after an event's receipt its commit record surely exists:
    /// an hour is compacted once it ended this long ago. Larger: tables
    /// appear later. A commit later than this (a store outage) is not lost:
    /// the next run writes it to another file of the same hour.
    pub lateness_ms: u64,
    /// Hours the schedule looks back for work it has not done.
    pub lookback_hours: u32,
    /// Most uncompressed event bytes in one Parquet file; also about the
    /// memory a run holds (the events of one file).
    pub max_file_bytes: u64,
    /// Most event-field columns of a table; further fields go to `_extra`.
    pub max_columns: usize,
    /// Rows per Parquet row group (larger: better compression, more memory).
    pub row_group_rows: usize,
    /// zstd level of Parquet pages (1 fastest … 22 smallest).
    pub zstd_level: i32,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: false,
            interval_ms: 5 * 60 * 1000,
            lateness_ms: 15 * 60 * 1000,
            lookback_hours: 48,
            max_file_bytes: 256 * 1024 * 1024,
            max_columns: 500,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
        }
    }
}

impl CompactionConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&str, bool, &str); 6] = [
            (
                "interval_ms",
                self.interval_ms >= 1000,
                "must be at least 1000",
            ),
            (
                "lookback_hours",
                self.lookback_hours >= 1,
                "must be at least 1",
            ),
            (
                "max_file_bytes",
                self.max_file_bytes >= 1024 * 1024,
                "must be at least 1048576 (1 MiB)",
            ),
            ("max_columns", self.max_columns >= 1, "must be at least 1"),
            (
                "row_group_rows",
                self.row_group_rows >= 1,
                "must be at least 1",
            ),
            (
                "zstd_level",
                (1..=22).contains(&self.zstd_level),
                "must be between 1 and 22",
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((key, _, message)) => Err(ConfigError::Invalid {
                key: format!("compaction.{key}"),
                message: message.to_string(),
            }),
            None => Ok(()),
        }
    }
}
