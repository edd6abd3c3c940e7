//! Driver cost per packet of the receive and transmit bursts against the
//! in-process model, for callgrind (instructions are stable on a busy
//! machine, time is not). The model's work runs outside the counted
//! functions `cg_virtio_rx` and `cg_virtio_tx`. Run an ignored test under
//! callgrind twice with two packet counts and subtract the functions'
//! inclusive counts, as `benches/callgrind-nic.sh` does for igb:
//!
//! ```text
//! FASTLANE_BENCH_ITERS=64000 valgrind --tool=callgrind <fastlane_nic test binary> \
//!     --ignored --exact virtio::cost::tests::callgrind_virtio_bursts
//! ```
//!
//! (`callgrind_virtio_jumbo` for 9014-byte frames.)

#[cfg(all(test, feature = "sim"))]
mod tests {
    use fastlane_framework::{DmaDomain, DmaRegion, PageSize, PoolCache};

    use super::super::rx::{RxQueue, RX_HEADROOM};
    use super::super::sim::{queue_pair, SimQueue};
    use super::super::spec::{VirtioNetHdr, NET_HDR_LEN};
    use super::super::tx::TxQueue;
    use crate::{Packet, PacketPool, Stats, HEADROOM};

    const BURST: usize = 32;

    #[inline(never)]
    fn cg_virtio_rx(
        rx: &mut RxQueue,
        out: &mut Vec<Packet>,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        rx.burst(out, BURST, cache, stats)
    }

    #[inline(never)]
    fn cg_virtio_tx(
        tx: &mut TxQueue,
        pkts: &mut Vec<Packet>,
        cache: &mut PoolCache,
        stats: &mut Stats,
    ) -> usize {
        tx.burst(pkts, cache, stats)
    }

    /// A transmit queue of 256 on the model, and its header's region.
    fn tx_queue() -> (TxQueue, SimQueue, DmaRegion) {
        let (q, dev) = queue_pair(256);
        let region = DmaRegion::new_unmapped(4096, PageSize::Small).unwrap();
        let hdr = region.carve::<u8>(0, 64).unwrap();
        let tx = TxQueue::new(q, hdr, DmaDomain::UNMAPPED).unwrap();
        (tx, dev, region)
    }

    /// Frames per run: `FASTLANE_BENCH_ITERS`, else `default`.
    fn bench_iters(default: usize) -> usize {
        std::env::var("FASTLANE_BENCH_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Receives and sends `FASTLANE_BENCH_ITERS` one-buffer 60-byte frames
    /// (default 3200) in bursts of 32 on split rings; prints the count.
    #[test]
    #[ignore]
    fn callgrind_virtio_bursts() {
        let iters = bench_iters(3200);
        let bursts = iters.div_ceil(BURST);
        let pool = PacketPool::new_unmapped(2048).unwrap();
        let mut cache = pool.cache(256);
        let mut stats = Stats::default();
        let (q, mut dev) = queue_pair(256);
        let mut rx = RxQueue::new(q);
        rx.refill(&mut cache);
        let mut bytes = bytemuck::bytes_of(&VirtioNetHdr {
            num_buffers: 1,
            ..Default::default()
        })
        .to_vec();
        bytes.extend_from_slice(&[0x5a; 60]);
        let mut out = Vec::with_capacity(BURST);
        for _ in 0..bursts {
            for _ in 0..BURST {
                let (head, chain) = dev.pop_avail().unwrap();
                dev.write_buf(&chain[0], &bytes);
                dev.push_used(head as u32, bytes.len() as u32);
            }
            assert_eq!(
                cg_virtio_rx(&mut rx, &mut out, &mut cache, &mut stats),
                BURST
            );
            assert_eq!(out[0].offset(), RX_HEADROOM);
            cache.free_all(out.drain(..).map(Packet::into_buf));
        }

        let (mut tx, mut dev, _hdr) = tx_queue();
        let mut pkts = Vec::with_capacity(BURST);
        for _ in 0..bursts {
            for _ in 0..BURST {
                let mut p = Packet::with_offset(cache.alloc().unwrap(), HEADROOM, 60).unwrap();
                p.data_mut()[..12].fill(0xa5);
                pkts.push(p);
            }
            assert_eq!(
                cg_virtio_tx(&mut tx, &mut pkts, &mut cache, &mut stats),
                BURST
            );
            for _ in 0..BURST {
                let (head, chain) = dev.pop_avail().unwrap();
                assert_eq!(chain[0].len as usize, NET_HDR_LEN + 60);
                dev.push_used(head as u32, 0);
            }
        }
        println!("callgrind mode: {} packets per direction", bursts * BURST);
    }

    /// [`callgrind_virtio_bursts`] with 9014-byte frames: received over 6
    /// mergeable buffers each, sent as chains of 5 descriptors, bursts of
    /// 8 (`FASTLANE_BENCH_ITERS` frames, default 800). Counted: rx 3613,
    /// tx 1491 instructions per frame (the Packet's chain allocations
    /// included).
    #[test]
    #[ignore]
    fn callgrind_virtio_jumbo() {
        use super::super::rx::RxMode;
        use super::super::sim::pattern;
        const JUMBO_BURST: usize = 8;
        let iters = bench_iters(800);
        let bursts = iters.div_ceil(JUMBO_BURST);
        let pool = PacketPool::new_unmapped(2048).unwrap();
        let mut cache = pool.cache(256);
        let mut stats = Stats::default();
        let mode = RxMode {
            mergeable: true,
            checksum: false,
            max_frame: crate::MAX_JUMBO_FRAME,
        };
        let (q, mut dev) = queue_pair(256);
        let mut rx = RxQueue::with_mode(q, mode, crate::packet::PACKET_BUF_SIZE);
        rx.refill(&mut cache);
        let frame = pattern(crate::MAX_JUMBO_FRAME, 1);
        let mut out = Vec::with_capacity(JUMBO_BURST);
        for _ in 0..bursts {
            for _ in 0..JUMBO_BURST {
                dev.receive_mergeable(VirtioNetHdr::default(), &frame, None);
            }
            let n = cg_virtio_rx(&mut rx, &mut out, &mut cache, &mut stats);
            assert_eq!(n, JUMBO_BURST);
            assert_eq!(out[0].segment_count(), 6);
            cache.free_all(out.drain(..).map(Packet::into_buf));
        }
        let (mut tx, mut dev, _hdr) = tx_queue();
        tx.set_max_frame(crate::MAX_JUMBO_FRAME);
        let mut pkts = Vec::with_capacity(JUMBO_BURST);
        for _ in 0..bursts {
            for _ in 0..JUMBO_BURST {
                let alloc = || Ok(cache.alloc()?);
                let p = crate::packet::alloc_frame(alloc, HEADROOM, frame.len(), frame.len());
                pkts.push(p.unwrap());
            }
            let n = cg_virtio_tx(&mut tx, &mut pkts, &mut cache, &mut stats);
            assert_eq!(n, JUMBO_BURST);
            for _ in 0..JUMBO_BURST {
                let (head, chain) = dev.pop_avail().unwrap();
                assert_eq!(chain.len(), 5);
                dev.push_used(head as u32, 0);
            }
        }
        println!(
            "callgrind mode: {} jumbo frames per direction",
            bursts * JUMBO_BURST
        );
    }
}
