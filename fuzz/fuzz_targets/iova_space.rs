//! Fuzz target: `fastlane_fuzz::framework::iova_space` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::framework::iova_space(data));
