//! Async reads and writes on one queue pair, for thread-per-core programs:
//! many tasks on one thread share an [`AsyncQueue`]; `aq.read(..).await`
//! resolves to the buffer and the result. The thread's idle loop calls
//! [`AsyncQueue::poll`], which rings the doorbell for everything the tasks
//! submitted since, and wakes the tasks whose commands completed (with
//! [`crate::executor::LocalExecutor`], or any executor whose tasks stay on
//! this thread).
//!
//! Built on [`IoQueuePair`]'s callback path: a command's tag names a slot of
//! a table fixed at the queue pair's capacity (result, buffer and waker),
//! so nothing is allocated per I/O. When every command slot is taken, a
//! new request waits (in arrival order, `Pending`) until completions free
//! enough of them. A future dropped before its command completed leaves the
//! buffer with the queue pair until the device is done with it; the
//! completion then drops it (back to its pool) and frees the slot, so a
//! later command never sees the old result.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use fastlane_framework::DmaBuf;

use crate::controller::Namespace;
use crate::error::{NvmeError, Result};
use crate::qpair::{Completion, IoQueuePair, QpairStats};

/// Counters of an [`AsyncQueue`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AioStats {
    /// Requests handed to the queue pair.
    pub submitted: u64,
    /// Requests whose completion reached their future.
    pub completed: u64,
    /// Requests that had to wait for free command slots.
    pub waited: u64,
    /// Completions of requests whose future had been dropped (their buffer
    /// went back to its pool).
    pub abandoned: u64,
    /// Completions naming no request in flight (finish nothing).
    pub stale: u64,
}

/// What a slot of the request table holds.
enum State {
    Free,
    /// Submitted; the waker of the task awaiting it.
    InFlight(Option<Waker>),
    /// Completed, not yet taken by its future.
    Done(Option<DmaBuf>, Result<()>),
    /// Submitted, and its future was dropped.
    Abandoned,
}

struct Slot {
    state: State,
    /// Bumped at every use: in the tag, so a completion names one use.
    generation: u32,
    /// Command slots of the queue pair the request holds.
    commands: usize,
}

/// A request waiting for command slots (`waker: None`: its future was
/// dropped).
struct Waiter {
    waker: Option<Waker>,
    need: usize,
}

struct Inner {
    qp: IoQueuePair,
    slots: Box<[Slot]>,
    /// Free request slots.
    free: Vec<u32>,
    /// Command slots of the queue pair not held by a request.
    permits: usize,
    /// Permits promised to woken waiters that have not taken them yet.
    granted: usize,
    /// Waiters in arrival order; `waiters[i]` has ticket `first_ticket + i`.
    waiters: VecDeque<Waiter>,
    first_ticket: u64,
    /// Wakes to run once the table is no longer borrowed.
    to_wake: Vec<Waker>,
    /// The first namespace and its read/write command size in blocks (the
    /// usual case, without a search).
    ns1: Option<(Namespace, u64)>,
    stats: AioStats,
}

/// A queue pair shared by the tasks of one thread. See the module docs.
pub struct AsyncQueue {
    inner: RefCell<Inner>,
}

/// A read or a write not yet handed to the queue pair.
struct Request {
    write: bool,
    nsid: u32,
    lba: u64,
    blocks: u32,
    buf: DmaBuf,
    need: usize,
}

enum IoState {
    Start(Request),
    /// Waiting for command slots with this ticket.
    Queued(Request, u64),
    InFlight {
        slot: u32,
        generation: u32,
    },
    Finished,
}

/// The future of [`AsyncQueue::read`] / [`AsyncQueue::write`]: resolves to
/// the buffer and the command's result. A request for an unknown namespace
/// or blocks outside it resolves at its first poll with that error; one the
/// queue pair refuses for its buffer (too small, of another container)
/// resolves when its turn to submit comes. Dropping the future before it
/// resolved cancels nothing on the device: see the module docs.
#[must_use = "a future does nothing unless awaited"]
pub struct Io<'q> {
    q: &'q AsyncQueue,
    state: IoState,
}

impl AsyncQueue {
    /// Wraps `qp`; its capacity is the number of commands in flight.
    pub fn new(qp: IoQueuePair) -> AsyncQueue {
        let capacity = qp.capacity();
        let ns1 = qp
            .namespaces()
            .first()
            .map(|ns| (*ns, chunk_blocks(qp.max_transfer(), ns.block_size)));
        let slots = (0..capacity)
            .map(|_| Slot {
                state: State::Free,
                generation: 0,
                commands: 0,
            })
            .collect();
        AsyncQueue {
            inner: RefCell::new(Inner {
                qp,
                slots,
                free: (0..capacity as u32).rev().collect(),
                permits: capacity,
                granted: 0,
                waiters: VecDeque::with_capacity(capacity),
                first_ticket: 0,
                to_wake: Vec::with_capacity(capacity),
                ns1,
                stats: AioStats::default(),
            }),
        }
    }

    /// Reads `blocks` blocks at `lba` of namespace `nsid` into `buf`.
    pub fn read(&self, nsid: u32, lba: u64, blocks: u32, buf: DmaBuf) -> Io<'_> {
        self.io(false, nsid, lba, blocks, buf)
    }

    /// Writes `blocks` blocks from `buf` at `lba` of namespace `nsid`.
    pub fn write(&self, nsid: u32, lba: u64, blocks: u32, buf: DmaBuf) -> Io<'_> {
        self.io(true, nsid, lba, blocks, buf)
    }

    fn io(&self, write: bool, nsid: u32, lba: u64, blocks: u32, buf: DmaBuf) -> Io<'_> {
        Io {
            q: self,
            state: IoState::Start(Request {
                write,
                nsid,
                lba,
                blocks,
                buf,
                // Counted at the first poll.
                need: 1,
            }),
        }
    }

    /// Rings the doorbell, hands up to `max` completions to their futures
    /// and wakes their tasks. Returns how many completed. Call it from the
    /// thread's idle loop.
    pub fn poll(&self, max: usize) -> usize {
        let n = {
            let mut g = self.inner.borrow_mut();
            let Inner {
                qp,
                slots,
                free,
                to_wake,
                stats,
                ..
            } = &mut *g;
            let mut released = 0;
            let n = qp.poll(max, |c| {
                deliver(slots, free, to_wake, stats, &mut released, c)
            });
            if released > 0 {
                g.release(released);
            }
            (n, !g.to_wake.is_empty())
        };
        if n.1 {
            self.wake_pending();
        }
        n.0
    }

    /// Rings the doorbell for what was submitted since (the next
    /// [`Self::poll`] does it too).
    pub fn submit(&self) {
        self.inner.borrow_mut().qp.submit();
    }

    /// Requests submitted whose completion has not been polled yet
    /// (including those of dropped futures).
    pub fn outstanding(&self) -> usize {
        self.inner.borrow().qp.outstanding()
    }

    /// Requests waiting for command slots.
    pub fn waiting(&self) -> usize {
        let g = self.inner.borrow();
        g.waiters.iter().filter(|w| w.waker.is_some()).count()
    }

    /// Commands that can be in flight at once.
    pub fn capacity(&self) -> usize {
        self.inner.borrow().slots.len()
    }

    /// This layer's counters.
    pub fn stats(&self) -> AioStats {
        self.inner.borrow().stats
    }

    /// The queue pair's counters.
    pub fn qpair_stats(&self) -> QpairStats {
        self.inner.borrow().qp.stats()
    }

    /// Runs the wakes queued while the table was borrowed (a waker may run
    /// code that uses this queue).
    fn wake_pending(&self) {
        let mut list = std::mem::take(&mut self.inner.borrow_mut().to_wake);
        while !list.is_empty() {
            for w in list.drain(..) {
                w.wake();
            }
            // Wakes queued meanwhile go round again; the list's capacity
            // goes back to the table.
            std::mem::swap(&mut list, &mut self.inner.borrow_mut().to_wake);
        }
    }
}

/// A completion from the queue pair: to its future, or, for a dropped one,
/// the buffer back to its pool and the slot free (`released` counts the
/// command slots freed).
#[inline]
fn deliver(
    slots: &mut [Slot],
    free: &mut Vec<u32>,
    to_wake: &mut Vec<Waker>,
    stats: &mut AioStats,
    released: &mut usize,
    c: Completion,
) {
    let (index, generation) = ((c.tag & u32::MAX as u64) as usize, (c.tag >> 32) as u32);
    let Some(slot) = slots.get_mut(index).filter(|s| s.generation == generation) else {
        stats.stale += 1;
        return;
    };
    match &mut slot.state {
        State::InFlight(waker) => {
            if let Some(w) = waker.take() {
                to_wake.push(w);
            }
            slot.state = State::Done(c.buf, c.result);
        }
        State::Abandoned => {
            slot.state = State::Free;
            stats.abandoned += 1;
            *released += slot.commands;
            free.push(index as u32);
            // `c.buf` drops here: back to its pool.
        }
        State::Free | State::Done(..) => stats.stale += 1,
    }
}

impl Inner {
    /// Command slots a read or write of `blocks` blocks at `lba` takes
    /// (more than one when the queue pair splits it above the maximum
    /// transfer), or the error the queue pair would refuse it with for its
    /// namespace or block range: such a request does not wait for a slot.
    #[inline]
    fn commands_for(&self, nsid: u32, lba: u64, blocks: u32) -> Result<usize> {
        let (ns, chunk) = match self.ns1 {
            Some((ns, chunk)) if ns.id == nsid => (ns, chunk),
            _ => match self.qp.namespaces().iter().find(|n| n.id == nsid) {
                Some(ns) => (*ns, chunk_blocks(self.qp.max_transfer(), ns.block_size)),
                None => return Err(NvmeError::InvalidNamespace(nsid)),
            },
        };
        if blocks == 0
            || lba
                .checked_add(blocks as u64)
                .is_none_or(|end| end > ns.blocks)
        {
            return Err(range_refusal(ns, lba, blocks));
        }
        // A request above what the queue pair holds waits for all of it,
        // then is refused (TooLarge).
        Ok(((blocks as u64).div_ceil(chunk) as usize).min(self.slots.len()))
    }

    /// Gives back the command slots of a finished request and wakes the
    /// waiters they now cover.
    #[inline]
    fn release(&mut self, commands: usize) {
        self.permits += commands;
        if !self.waiters.is_empty() {
            self.grant();
        }
    }

    /// Wakes waiters, in order, while the permits not yet promised cover
    /// the first one. Afterwards either nobody waits or the first waiter
    /// needs more than is free: a new request may go ahead only if nobody
    /// waits.
    fn grant(&mut self) {
        while let Some(w) = self.waiters.front() {
            if w.waker.is_some() && self.permits.saturating_sub(self.granted) < w.need {
                return;
            }
            let Some(w) = self.waiters.pop_front() else {
                return;
            };
            self.first_ticket += 1;
            if let Some(waker) = w.waker {
                self.granted += w.need;
                self.to_wake.push(waker);
            }
        }
    }

    /// Whether a request needing `need` commands may be submitted now
    /// (`granted`: it holds a promise from [`Self::grant`]).
    #[inline]
    fn may_submit(&self, need: usize, granted: bool) -> bool {
        granted || (self.waiters.is_empty() && self.permits.saturating_sub(self.granted) >= need)
    }

    /// Submits `req` in a free slot; `Err` gives the request's end when the
    /// queue pair refused it.
    #[inline]
    fn submit(
        &mut self,
        req: Request,
        waker: &Waker,
    ) -> std::result::Result<(u32, u32), (DmaBuf, NvmeError)> {
        let Some(index) = self.free.pop() else {
            // Cannot happen: each request holds at least one of the
            // permits, and there are as many slots as permits.
            return Err((req.buf, NvmeError::QueueFull));
        };
        let need = req.need;
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let generation = slot.generation;
        let tag = (generation as u64) << 32 | index as u64;
        let r = if req.write {
            self.qp.write(req.nsid, req.lba, req.blocks, req.buf, tag)
        } else {
            self.qp.read(req.nsid, req.lba, req.blocks, req.buf, tag)
        };
        match r {
            Ok(()) => {
                slot.state = State::InFlight(Some(waker.clone()));
                slot.commands = need;
                self.permits -= need;
                self.stats.submitted += 1;
                Ok((index, generation))
            }
            Err(rej) => {
                self.free.push(index);
                match rej.buf {
                    Some(buf) => Err((buf, rej.error)),
                    None => buffer_lost(),
                }
            }
        }
    }

    /// Takes the result of a completed request and frees its slot; `None`
    /// while it is in flight (the waker is updated then).
    #[inline]
    fn take(&mut self, index: u32, waker: &Waker) -> Option<(DmaBuf, Result<()>)> {
        let slot = &mut self.slots[index as usize];
        if let State::InFlight(w) = &mut slot.state {
            if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *w = Some(waker.clone());
            }
            return None;
        }
        match std::mem::replace(&mut slot.state, State::Free) {
            State::Done(buf, result) => {
                let commands = slot.commands;
                self.free.push(index);
                self.stats.completed += 1;
                self.release(commands);
                match buf {
                    Some(buf) => Some((buf, result)),
                    None => buffer_lost(),
                }
            }
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// The future of the request in `index` is gone.
    fn abandon(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        match std::mem::replace(&mut slot.state, State::Abandoned) {
            State::InFlight(_) => {}
            State::Done(buf, _) => {
                // Completed but never taken: the buffer goes back now.
                drop(buf);
                slot.state = State::Free;
                let commands = slot.commands;
                self.free.push(index);
                self.release(commands);
            }
            other => slot.state = other,
        }
    }
}

/// The queue pair hands back the buffer of every read and write it takes
/// or refuses (`Completion::buf` / `Rejected::buf` are `Some` for them);
/// this is that contract broken, a bug in this crate.
#[cold]
fn buffer_lost() -> ! {
    panic!("the queue pair lost the buffer of a read or write (driver bug)")
}

/// The queue pair's refusal of `blocks` blocks at `lba` outside `ns` (or
/// of no blocks).
#[cold]
fn range_refusal(ns: Namespace, lba: u64, blocks: u32) -> NvmeError {
    if blocks == 0 {
        NvmeError::InvalidArgument("0 blocks: a read or write moves at least one".into())
    } else {
        NvmeError::LbaOutOfRange {
            lba,
            blocks,
            capacity: ns.blocks,
        }
    }
}

/// Blocks per command of the queue pair's splits (as `rw_split` cuts).
fn chunk_blocks(max_transfer: usize, block_size: u32) -> u64 {
    (max_transfer as u64 / block_size.max(1) as u64).max(1)
}

impl Future for Io<'_> {
    type Output = (DmaBuf, Result<()>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let q = this.q;
        let mut g = q.inner.borrow_mut();
        let out = match &mut this.state {
            IoState::InFlight { slot, .. } => match g.take(*slot, cx.waker()) {
                Some(done) => {
                    this.state = IoState::Finished;
                    Poll::Ready(done)
                }
                None => Poll::Pending,
            },
            IoState::Queued(_, ticket) if *ticket >= g.first_ticket => {
                // Still waiting: keep the newest waker.
                let at = (*ticket - g.first_ticket) as usize;
                if let Some(w) = g.waiters.get_mut(at) {
                    if !w.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        w.waker = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
            IoState::Start(_) | IoState::Queued(..) => {
                match std::mem::replace(&mut this.state, IoState::Finished) {
                    IoState::Start(mut req) => {
                        match g.commands_for(req.nsid, req.lba, req.blocks) {
                            Ok(need) => {
                                req.need = need;
                                this.state_after_start(&mut g, req, false, cx)
                            }
                            // Refused without waiting for a slot.
                            Err(e) => Poll::Ready((req.buf, Err(e))),
                        }
                    }
                    IoState::Queued(req, _) => {
                        // Woken by `grant`: the permits are promised to us.
                        g.granted -= req.need;
                        this.state_after_start(&mut g, req, true, cx)
                    }
                    _ => Poll::Pending,
                }
            }
            // Polled after it resolved: the buffer went with the result.
            IoState::Finished => Poll::Pending,
        };
        let wake = !g.to_wake.is_empty();
        drop(g);
        if wake {
            q.wake_pending();
        }
        out
    }
}

impl Io<'_> {
    /// Submits `req` if it may go now, else queues it (`Pending`).
    #[inline]
    fn state_after_start(
        &mut self,
        g: &mut Inner,
        req: Request,
        granted: bool,
        cx: &mut Context<'_>,
    ) -> Poll<(DmaBuf, Result<()>)> {
        if !g.may_submit(req.need, granted) {
            let ticket = g.first_ticket + g.waiters.len() as u64;
            g.waiters.push_back(Waiter {
                waker: Some(cx.waker().clone()),
                need: req.need,
            });
            g.stats.waited += 1;
            self.state = IoState::Queued(req, ticket);
            return Poll::Pending;
        }
        match g.submit(req, cx.waker()) {
            Ok((slot, generation)) => {
                self.state = IoState::InFlight { slot, generation };
                Poll::Pending
            }
            Err((buf, e)) => {
                if granted {
                    // The promise goes on to the next waiter.
                    g.grant();
                }
                Poll::Ready((buf, Err(e)))
            }
        }
    }
}

impl Drop for Io<'_> {
    fn drop(&mut self) {
        if matches!(self.state, IoState::Start(_) | IoState::Finished) {
            return;
        }
        let state = std::mem::replace(&mut self.state, IoState::Finished);
        {
            let mut g = self.q.inner.borrow_mut();
            match state {
                IoState::Queued(req, ticket) => {
                    if ticket < g.first_ticket {
                        // Woken but never ran: pass the promise on.
                        g.granted -= req.need;
                    } else {
                        let at = (ticket - g.first_ticket) as usize;
                        if let Some(w) = g.waiters.get_mut(at) {
                            w.waker = None;
                        }
                    }
                    g.grant();
                }
                IoState::InFlight { slot, generation } => {
                    if g.slots[slot as usize].generation == generation {
                        g.abandon(slot);
                    }
                }
                IoState::Start(_) | IoState::Finished => {}
            }
        }
        self.q.wake_pending();
    }
}
