//! Fuzz bodies for the NIC drivers' handling of device-written data: the
//! virtio used ring (`used.idx` and `virtq_used_elem`, virtio spec 2.7.8)
//! through `RingState`, and (behind the `igb-desc` feature) the igb receive
//! write-back descriptor (82576 datasheet 7.1.5).

use std::collections::HashMap;

use fastlane_nic::virtio::spec::VirtqUsedElem;
use fastlane_nic::virtio::virtqueue::{RingState, MAX_CHAIN};

use crate::Bytes;

/// A driver posting chains and a device returning used entries it chose
/// from the input (valid heads, stale heads, anything), with `used.idx`
/// values that may run ahead. Every token comes back at most once, a bad
/// entry is an error, and descriptors are never lost or doubly used.
pub fn virtio_used_ring(data: &[u8]) {
    let mut input = Bytes::new(data);
    let size = 1u16 << (input.u8() % 9);
    let mut ring: RingState<u32> = RingState::new(size).expect("power of two");
    // Model: head -> (token, chain), descriptors free, used entries consumed.
    let mut chains: HashMap<u16, (u32, Vec<u16>)> = HashMap::new();
    let mut free = usize::from(size);
    let mut last_used = 0u16;
    let mut token = 0u32;
    while !input.is_empty() {
        match input.u8() % 4 {
            0 | 1 => {
                let n = 1 + usize::from(input.u8()) % MAX_CHAIN;
                token += 1;
                match ring.reserve(n, token) {
                    Ok(ids) => {
                        assert!(free >= n);
                        let chain = ids[..n].to_vec();
                        for &id in &chain {
                            assert!(id < size, "descriptor {id} outside a {size}-entry table");
                            assert!(
                                !chains.values().any(|(_, c)| c.contains(&id)),
                                "descriptor {id} in two chains"
                            );
                        }
                        assert!(ids[n..].iter().all(|&i| i == u16::MAX));
                        free -= n;
                        chains.insert(chain[0], (token, chain));
                        assert!(ring.next_avail_slot() < usize::from(size));
                    }
                    Err(t) => {
                        assert_eq!(t, token, "a different token came back");
                        assert!(free < n, "refused with {free} descriptors free");
                    }
                }
            }
            2 => {
                // The device moves used.idx: accepted exactly when it covers
                // no more entries than chains in flight.
                let idx = input.u16();
                let ahead = idx.wrapping_sub(last_used);
                match ring.used_pending(idx) {
                    Ok(n) => assert!(n == ahead && usize::from(n) <= chains.len()),
                    Err(e) => {
                        assert!(usize::from(ahead) > chains.len());
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
            _ => {
                // The device writes a used element; the driver consumes it.
                let raw: [u8; 8] = input.take(8).try_into().unwrap_or([0; 8]);
                let mut e: VirtqUsedElem = bytemuck::pod_read_unaligned(&raw);
                // Half the time name a real head so completions happen.
                if e.len.is_multiple_of(2) && !chains.is_empty() {
                    let mut heads: Vec<u16> = chains.keys().copied().collect();
                    heads.sort_unstable();
                    e.id = u32::from(heads[e.id as usize % heads.len()]);
                }
                assert!(ring.next_used_slot() < usize::from(size));
                let res = ring.complete(e.id);
                last_used = last_used.wrapping_add(1);
                let expect = u16::try_from(e.id).ok().and_then(|h| chains.remove(&h));
                match (res, expect) {
                    (Ok(t), Some((want, chain))) => {
                        assert_eq!(t, want, "token of another chain");
                        free += chain.len();
                    }
                    (Err(_), None) => {}
                    (res, expect) => panic!("complete({}) = {res:?}, model {expect:?}", e.id),
                }
            }
        }
        assert_eq!(ring.free_descs(), free, "descriptors lost or duplicated");
        assert_eq!(ring.in_flight(), chains.len());
        if ring.take_unpublished().is_some() {
            assert!(ring.take_unpublished().is_none(), "published twice");
        }
    }
    let mut left: Vec<u32> = ring.drain().collect();
    left.sort_unstable();
    let mut want: Vec<u32> = chains.values().map(|(t, _)| *t).collect();
    want.sort_unstable();
    assert_eq!(left, want, "drain returns exactly the tokens in flight");
    assert_eq!(ring.in_flight(), 0);
}

/// An igb advanced receive descriptor after write-back: the upper quadword
/// decodes consistently with the datasheet bit positions.
#[cfg(feature = "igb-desc")]
pub fn igb_rx_desc(data: &[u8]) {
    use fastlane_nic::igb::desc::{rx, RxDescWb, RxStatus, STATUS_QWORD_OFFSET};
    let Some(raw) = data.get(..16) else { return };
    let wb: RxDescWb = bytemuck::pod_read_unaligned(raw);
    let q = u64::from_le_bytes(raw[STATUS_QWORD_OFFSET..16].try_into().expect("8 bytes"));
    let s = RxStatus::from_qword(q);
    assert_eq!((s.status_error, s.length), (wb.status_error, wb.length));
    assert_eq!(s.done(), wb.status_error & rx::DD != 0);
    assert_eq!(s.end_of_packet(), wb.status_error & rx::EOP != 0);
    assert_eq!(s.frame_error(), wb.status_error & rx::ERR_FRAME != 0);
}
