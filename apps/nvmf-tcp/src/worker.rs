//! The per-thread loop: one worker owns one I/O queue pair of the backing
//! controller and a buffer pool, and serves its connections' sockets and
//! the queue pair together. A command's device tag names its connection
//! (slab index and generation) and slot: completions find their connection
//! without a lookup, and a completion for a connection that is gone only
//! returns its buffer to the pool.
//!
//! Sockets are readiness-driven (edge-triggered epoll): a connection is
//! read only after the kernel said it has bytes, and a short read means it
//! has no more until the next edge, so an idle connection costs no
//! syscall. Sleeping is by time: the worker polls (epoll with a zero
//! timeout) for `idle_spin` after the last progress; then, while commands
//! are on the device, it naps `device_nap` at a time in `epoll_wait`
//! between completion-queue polls (0: it keeps polling), and with nothing
//! on the device it blocks until a socket, a new connection or the next
//! keep-alive tick wakes it. Under emulation a spinning vCPU takes the host
//! CPU the client and the device model need, so the spin is short and
//! never yields in a loop.

use std::io;
use std::net::TcpStream;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastlane_framework::BufferPool;
use fastlane_nvme::IoQueuePair;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags, Timespec};
use rustix::thread::CpuSet;

use crate::admin::Subsystem;
use crate::conn::{Conn, Ctx, Phase};

/// How often keep-alive and controller liveness are checked (and the
/// longest a worker blocks, so `stop` is seen).
const TICK: Duration = Duration::from_millis(100);
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 64;
/// The epoll token of the new-connection eventfd (slab tokens have the
/// index in the high 32 bits, far below this).
const NEW_CONN: u64 = u64::MAX;

/// Where the accept loop hands sockets to a worker: a channel plus an
/// eventfd that wakes the worker out of `epoll_wait`.
pub struct Inbox {
    rx: Receiver<TcpStream>,
    wake: Arc<OwnedFd>,
}

/// The accept loop's end of an [`Inbox`].
#[derive(Clone)]
pub struct InboxSender {
    tx: Sender<TcpStream>,
    wake: Arc<OwnedFd>,
}

/// A connected pair: the worker keeps the [`Inbox`].
pub fn inbox() -> io::Result<(InboxSender, Inbox)> {
    let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        InboxSender {
            tx,
            wake: wake.clone(),
        },
        Inbox { rx, wake },
    ))
}

impl InboxSender {
    /// Hands `sock` to the worker and wakes it. Err: the worker is gone.
    pub fn send(&self, sock: TcpStream) -> io::Result<()> {
        self.tx
            .send(sock)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        // A full counter (it is not) or EAGAIN only means a wake is pending.
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        Ok(())
    }
}

struct Entry {
    generation: u16,
    conn: Option<Conn>,
    /// The kernel reported bytes (or an end) not read yet.
    readable: bool,
    /// The socket had no room; it reported room since.
    writable: bool,
}

/// How a worker serves its connections.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Offer header and data digests to hosts that ask.
    pub digests: bool,
    /// How long to keep polling after the last progress before blocking.
    pub idle_spin: Duration,
    /// While commands are on the device and `idle_spin` passed without
    /// progress: 0 polls the completion queue continuously; more naps that
    /// long in `epoll_wait` between polls (a socket event still ends the
    /// nap at once).
    pub device_nap: Duration,
    /// Move the worker to the CPU where its busiest connection's packets
    /// arrive (the socket's SO_INCOMING_CPU), within the CPUs it started
    /// with: the host's sends then wake it without an inter-processor
    /// wakeup, as the kernel target's per-socket work runs there too.
    pub follow_host_cpu: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            digests: false,
            idle_spin: Duration::from_micros(50),
            device_nap: Duration::from_micros(50),
            follow_host_cpu: false,
        }
    }
}

/// One worker thread's state.
pub struct Worker {
    pub sub: Arc<Subsystem>,
    pub qp: IoQueuePair,
    pub pool: BufferPool,
    pub incoming: Inbox,
    pub stop: Arc<AtomicBool>,
    pub tuning: Tuning,
}

fn tag_base(index: usize, generation: u16) -> u64 {
    (index as u64) << 32 | (generation as u64) << 16
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

impl Worker {
    /// A worker for queue pair `qp`, taking connections from `incoming`.
    pub fn new(
        sub: Arc<Subsystem>,
        qp: IoQueuePair,
        pool: BufferPool,
        incoming: Inbox,
        stop: Arc<AtomicBool>,
        tuning: Tuning,
    ) -> Worker {
        Worker {
            sub,
            qp,
            pool,
            incoming,
            stop,
            tuning,
        }
    }

    /// Runs until `stop` is set; then closes its connections. Fails only
    /// when epoll cannot be set up.
    pub fn run(self) -> io::Result<()> {
        let Worker {
            sub,
            mut qp,
            pool,
            incoming,
            stop,
            tuning,
        } = self;
        let Tuning {
            digests,
            idle_spin,
            device_nap,
            follow_host_cpu,
        } = tuning;
        let mut follow = follow_host_cpu.then(CpuFollower::new).flatten();
        if !device_nap.is_zero() {
            // Naps of tens of microseconds, not the default 50 us slack more.
            let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1000));
        }
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &ep,
            &*incoming.wake,
            EventData::new_u64(NEW_CONN),
            EventFlags::IN,
        )?;
        let mut conns: Vec<Entry> = Vec::new();
        let mut events = Vec::with_capacity(EVENTS);
        let mut last_tick = Instant::now();
        let mut last_progress = Instant::now();
        // Whether the previous pass did anything (then look again at once).
        let mut progress = true;
        while !stop.load(Ordering::Relaxed) {
            // --- wait for readiness, or only look --------------------------
            let device_busy = qp.outstanding() > 0;
            // Spin for `idle_spin` after progress; then nap while the
            // device has commands (or spin on, with no nap set), or block.
            let timeout = if progress || last_progress.elapsed() < idle_spin {
                Duration::ZERO
            } else if device_busy {
                device_nap
            } else {
                TICK.saturating_sub(last_tick.elapsed())
            };
            events.clear();
            match epoll::wait(
                &ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timespec(timeout)),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            progress = false;
            for ev in &events {
                let token = ev.data.u64();
                if token == NEW_CONN {
                    let mut sink = [0u8; 8];
                    let _ = rustix::io::read(&*incoming.wake, &mut sink);
                    while let Ok(sock) = incoming.rx.try_recv() {
                        adopt(&ep, &mut conns, sock);
                    }
                    progress = true;
                    continue;
                }
                let (i, generation) = ((token >> 32) as usize, (token >> 16) as u16);
                if let Some(e) = conns
                    .get_mut(i)
                    .filter(|e| e.generation == generation && e.conn.is_some())
                {
                    let f = ev.flags;
                    if f.intersects(
                        EventFlags::IN | EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR,
                    ) {
                        e.readable = true;
                    }
                    if f.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR) {
                        e.writable = true;
                    }
                }
            }
            let tick = last_tick.elapsed() >= TICK;
            if tick {
                last_tick = Instant::now();
                if let Some(f) = follow.as_mut() {
                    f.tick(&conns);
                }
            }

            // --- sockets in: commands to the device --------------------------
            for (i, e) in conns.iter_mut().enumerate() {
                let Some(c) = e.conn.as_mut() else { continue };
                let mut ctx = Ctx {
                    sub: &sub,
                    qp: &mut qp,
                    pool: &pool,
                    tag: tag_base(i, e.generation),
                    digests_allowed: digests,
                };
                if e.readable || c.rx_buffered() {
                    progress |= c.poll_rx(&mut ctx, e.readable);
                    e.readable = !c.rx_drained();
                }
                if c.has_pending() {
                    progress |= c.retry_pending(&mut ctx);
                }
                if tick {
                    c.tick(&sub);
                }
            }
            qp.submit();

            // --- device completions -------------------------------------------
            let done = qp.poll(64, |comp| {
                let i = (comp.tag >> 32) as usize;
                let generation = (comp.tag >> 16) as u16;
                let slot = comp.tag as u16;
                match conns.get_mut(i) {
                    Some(Entry {
                        generation: g,
                        conn: Some(c),
                        ..
                    }) if *g == generation => c.complete(slot, comp.buf, comp.result),
                    // The connection is gone: the buffer drops back to the pool.
                    _ => {}
                }
            });
            progress |= done > 0;

            // --- sockets out: everything queued this pass, gathered ------------
            for e in conns.iter_mut() {
                let Some(c) = e.conn.as_mut() else { continue };
                if c.has_tx() && (e.writable || !c.tx_blocked()) {
                    progress |= c.poll_tx();
                    e.writable = false;
                }
                if c.phase == Phase::Closed {
                    c.close(&sub);
                    // Dropping the socket removes it from the epoll set.
                    e.conn = None;
                    e.generation = e.generation.wrapping_add(1);
                    progress = true;
                }
            }
            if progress {
                last_progress = Instant::now();
            }
        }
        for e in conns.iter_mut() {
            if let Some(mut c) = e.conn.take() {
                c.close(&sub);
            }
        }
        // Let the device finish what is outstanding before the queue pair
        // goes (its drop deletes the queues).
        let deadline = Instant::now() + Duration::from_secs(2);
        while qp.outstanding() > 0 && Instant::now() < deadline {
            qp.poll(64, |_| {});
        }
        Ok(())
    }
}

/// Keeps a worker on the CPU its busiest connection's packets arrive on.
struct CpuFollower {
    /// The CPUs the worker may use (its affinity when it started).
    allowed: CpuSet,
    /// The CPU it is bound to now, if any.
    on: Option<u32>,
    /// Commands per slab entry at the last tick.
    seen: Vec<u64>,
}

impl CpuFollower {
    fn new() -> Option<CpuFollower> {
        let allowed = rustix::thread::sched_getaffinity(None).ok()?;
        (allowed.count() > 1).then(|| CpuFollower {
            allowed,
            on: None,
            seen: Vec::new(),
        })
    }

    /// Binds the thread to the incoming CPU of the connection that got the
    /// most commands since the last tick (none got any: stays put).
    fn tick(&mut self, conns: &[Entry]) {
        self.seen.resize(conns.len(), 0);
        let mut busiest = None;
        let mut most = 0;
        for (e, seen) in conns.iter().zip(self.seen.iter_mut()) {
            let Some(c) = e.conn.as_ref() else {
                *seen = 0;
                continue;
            };
            let n = c.commands.wrapping_sub(*seen);
            *seen = c.commands;
            if n > most {
                most = n;
                busiest = Some(c);
            }
        }
        let Some(c) = busiest else { return };
        let Ok(cpu) = rustix::net::sockopt::socket_incoming_cpu(c.socket()) else {
            return;
        };
        if self.on == Some(cpu) || !self.allowed.is_set(cpu as usize) {
            return;
        }
        let mut set = CpuSet::new();
        set.set(cpu as usize);
        if rustix::thread::sched_setaffinity(None, &set).is_ok() {
            log::debug!("worker follows its host to CPU {cpu}");
            self.on = Some(cpu);
        }
    }
}

/// Takes a new socket into a free slab entry and the epoll set.
fn adopt(ep: &OwnedFd, conns: &mut Vec<Entry>, sock: TcpStream) {
    let c = match Conn::new(sock) {
        Ok(c) => c,
        Err(e) => return log::warn!("new connection: {e}"),
    };
    let i = match conns.iter().position(|e| e.conn.is_none()) {
        Some(i) => i,
        None => {
            conns.push(Entry {
                generation: 0,
                conn: None,
                readable: false,
                writable: false,
            });
            conns.len() - 1
        }
    };
    let e = &mut conns[i];
    let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
    if let Err(err) = epoll::add(
        ep,
        c.socket().as_fd(),
        EventData::new_u64(tag_base(i, e.generation)),
        flags,
    ) {
        return log::warn!("new connection: epoll: {err}");
    }
    // Bytes may have arrived before the socket joined the set.
    e.readable = true;
    e.writable = true;
    e.conn = Some(c);
}
