//! Fuzz target: `fastlane_fuzz::nvme::completion_entry` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nvme::completion_entry(data));
