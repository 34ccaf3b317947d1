//! `cargo fuzz run frame`: see `sluice_fuzz::frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::frame(data));
