//! Fuzz target: `fastlane_fuzz::nvme::identify_controller` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nvme::identify_controller(data));
