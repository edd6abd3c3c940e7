//! Fuzz target: `fastlane_fuzz::framework::iova_ranges` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::framework::iova_ranges(data));
