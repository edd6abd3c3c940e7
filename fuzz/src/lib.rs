//! Bodies of the fuzz targets in `fuzz_targets/`, one function per target,
//! each total over arbitrary bytes: it returns normally or fails an
//! assertion that names a broken promise of the code under test.
//!
//! `nvme.rs` is also compiled into `drivers/nvme/tests/proptest.rs`, so CI
//! runs those bodies on random bytes without a fuzzer; the framework and
//! NIC and NVMe/TCP bodies run as tests of this package (`cargo test` in
//! `fuzz/`).

pub mod framework;
pub mod nic;
pub mod nvme;
pub mod nvmf;

/// Reads the input front to back; past the end every value is zero, so any
/// input, even an empty one, is a complete test case.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn iova_space(data in prop::collection::vec(any::<u8>(), 0..400)) {
            crate::framework::iova_space(&data);
        }

        #[test]
        fn virtio_used_ring(data in prop::collection::vec(any::<u8>(), 0..600)) {
            crate::nic::virtio_used_ring(&data);
        }

        #[test]
        fn nvmf_pdu_stream(data in prop::collection::vec(any::<u8>(), 0..600)) {
            crate::nvmf::pdu_stream(&data);
        }

        #[test]
        fn nvme_completion_entry(data in prop::collection::vec(any::<u8>(), 0..40)) {
            crate::nvme::completion_entry(&data);
        }
    }
}
