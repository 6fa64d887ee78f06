//! libFuzzer target: see `callguard::fuzzing::text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callguard::fuzzing::text(data));
