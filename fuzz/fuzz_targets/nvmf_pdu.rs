//! Fuzz target: `fastlane_fuzz::nvmf::pdu_stream` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nvmf::pdu_stream(data));
