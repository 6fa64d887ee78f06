//! libFuzzer target: see `callguard::fuzzing::call_events`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    callguard::fuzzing::call_events(data);
});
