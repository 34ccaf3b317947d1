//! The checks behind sluice's fuzz targets (`fuzz_targets/`), one module each.
//!
//! - [`body`]: a `POST …/events` body (object, array or NDJSON; identity,
//!   gzip or zstd) through the gateway's decode and split, with the default
//!   limits; every accepted event must be a JSON object within the limits,
//!   every dead letter valid JSON, and the schema fast path must decide
//!   exactly as the full validator.
//! - [`frame`]: a WebSocket ingest text frame taken apart, then split.
//! - [`commit_record`]: a commit record's bytes parsed, used as readers use
//!   it, and round-tripped.
//!
//! Each function panics on a broken property, which libFuzzer reports as a
//! crash. Kept in a library so `cargo test` (stable, no libFuzzer) can run
//! the seed corpora through the same checks.

mod body;
mod checks;
mod frame;
mod record;

pub use body::body;
pub use frame::frame;
pub use record::commit_record;

#[cfg(test)]
mod tests {
    /// Every seed of `corpus/<target>` passes its target's checks (stable
    /// `cargo test` in `fuzz/`, no libFuzzer needed).
    #[test]
    fn the_seed_corpora_pass() {
        let targets: [(&str, fn(&[u8])); 3] = [
            ("body", super::body),
            ("frame", super::frame),
            ("commit_record", super::commit_record),
        ];
        for (name, target) in targets {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("corpus")
                .join(name);
            for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
                let path = entry.expect("a seed").path();
                target(&std::fs::read(&path).expect("read a seed"));
            }
        }
    }
}
