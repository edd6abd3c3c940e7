//! Fuzz target: `fastlane_fuzz::nic::virtio_used_ring` on every input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastlane_fuzz::nic::virtio_used_ring(data));
