//! A virtqueue of either layout behind one interface: split (§2.7) or
//! packed (§2.8, VIRTIO_F_RING_PACKED), chosen once per port at feature
//! negotiation. The receive, transmit and control queues use this; one
//! predictable branch per call picks the layout.

use super::packed::PackedQueue;
use super::virtqueue::{Segment, Virtqueue};
use crate::Result;

/// A split or a packed virtqueue carrying a `T` per chain.
pub enum Ring<T> {
    /// Descriptor table, available ring, used ring.
    Split(Virtqueue<T>),
    /// One descriptor ring both sides write.
    Packed(PackedQueue<T>),
}

impl<T> From<Virtqueue<T>> for Ring<T> {
    fn from(q: Virtqueue<T>) -> Ring<T> {
        Ring::Split(q)
    }
}

impl<T> From<PackedQueue<T>> for Ring<T> {
    fn from(q: PackedQueue<T>) -> Ring<T> {
        Ring::Packed(q)
    }
}

impl<T> Ring<T> {
    /// Descriptors free for new chains.
    #[inline]
    pub fn free_descs(&self) -> usize {
        match self {
            Ring::Split(q) => q.free_descs(),
            Ring::Packed(q) => q.free_descs(),
        }
    }

    /// Chains the device holds.
    #[inline]
    pub fn in_flight(&self) -> usize {
        match self {
            Ring::Split(q) => q.in_flight(),
            Ring::Packed(q) => q.in_flight(),
        }
    }

    /// Adds a chain of `segs` carrying `token` (the token back when full).
    #[inline]
    pub fn add(&mut self, segs: &[Segment], token: T) -> std::result::Result<(), T> {
        match self {
            Ring::Split(q) => q.add(segs, token),
            Ring::Packed(q) => q.add(segs, token),
        }
    }

    /// Publishes what was added and notifies the device if it wants it.
    #[inline]
    pub fn kick(&mut self) -> bool {
        match self {
            Ring::Split(q) => q.kick(),
            Ring::Packed(q) => q.kick(),
        }
    }

    /// The next chain the device returned, if any: its token and the bytes
    /// the device wrote. An error (a used entry naming no chain in flight)
    /// finishes nothing.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<(T, u32)>> {
        match self {
            Ring::Split(q) => q.next_used(),
            Ring::Packed(q) => q.pop_used(),
        }
    }

    /// Every token back; only after the device was reset.
    pub fn drain(&mut self) -> Vec<T> {
        match self {
            Ring::Split(q) => q.drain().collect(),
            Ring::Packed(q) => q.drain().collect(),
        }
    }
}
