//! `cargo fuzz run body`: see `sluice_fuzz::body` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::body(data));
