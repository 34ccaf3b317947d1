//! `cargo fuzz run commit_record`: see `sluice_fuzz::commit_record` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::commit_record(data));
