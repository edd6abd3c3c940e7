//! Fuzz target: `fastlane_fuzz::nic::igb_rx_desc` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nic::igb_rx_desc(data));
