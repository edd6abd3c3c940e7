//! Fuzz target: `fastlane_fuzz::nvme::identify_namespace` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nvme::identify_namespace(data));
