//! The per-thread loop: one worker owns one I/O queue pair of the backing
//! controller and a buffer pool, and polls its connections' sockets
//! (non-blocking) and the queue pair together. A command's device tag
//! names its connection (slab index and generation) and slot: completions
//! find their connection without a lookup, and a completion for a
//! connection that is gone only returns its buffer to the pool.

use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastlane_framework::BufferPool;
use fastlane_nvme::IoQueuePair;
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::admin::Subsystem;
use crate::conn::{Conn, Ctx, Phase};

/// Empty passes (no socket or device progress) before sleeping in poll(2).
const SPINS_BEFORE_SLEEP: u32 = 256;
/// Longest sleep when idle (new connections arrive through a channel).
const IDLE_SLEEP: Duration = Duration::from_millis(5);
/// How often keep-alive and controller liveness are checked.
const TICK: Duration = Duration::from_millis(100);

struct Entry {
    generation: u16,
    conn: Option<Conn>,
}

/// One worker thread's state.
pub struct Worker {
    pub sub: Arc<Subsystem>,
    pub qp: IoQueuePair,
    pub pool: BufferPool,
    pub incoming: Receiver<TcpStream>,
    pub stop: Arc<AtomicBool>,
    pub digests: bool,
}

fn tag_base(index: usize, generation: u16) -> u64 {
    (index as u64) << 32 | (generation as u64) << 16
}

impl Worker {
    /// Runs until `stop` is set; then closes its connections.
    pub fn run(self) {
        let Worker { sub, mut qp, pool, incoming, stop, digests } = self;
        let mut conns: Vec<Entry> = Vec::new();
        let mut idle = 0u32;
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            while let Ok(sock) = incoming.try_recv() {
                match Conn::new(sock) {
                    Ok(c) => match conns.iter_mut().position(|e| e.conn.is_none()) {
                        Some(i) => conns[i].conn = Some(c),
                        None => conns.push(Entry { generation: 0, conn: Some(c) }),
                    },
                    Err(e) => log::warn!("new connection: {e}"),
                }
            }
            let mut progress = false;
            let tick = last_tick.elapsed() >= TICK;
            if tick {
                last_tick = Instant::now();
            }
            for (i, e) in conns.iter_mut().enumerate() {
                let Some(c) = e.conn.as_mut() else { continue };
                let mut ctx = Ctx { sub: &sub, qp: &mut qp, pool: &pool, tag: tag_base(i, e.generation), digests_allowed: digests };
                progress |= c.poll_rx(&mut ctx);
                c.retry_pending(&mut ctx);
                progress |= c.poll_tx();
                if tick {
                    c.tick(&sub);
                }
                if c.phase == Phase::Closed {
                    c.close(&sub);
                    e.conn = None;
                    e.generation = e.generation.wrapping_add(1);
                    progress = true;
                }
            }
            let done = qp.poll(64, |comp| {
                let i = (comp.tag >> 32) as usize;
                let generation = (comp.tag >> 16) as u16;
                let slot = comp.tag as u16;
                match conns.get_mut(i) {
                    Some(Entry { generation: g, conn: Some(c) }) if *g == generation => {
                        c.complete(slot, comp.buf, comp.result)
                    }
                    // The connection is gone: the buffer drops back to the pool.
                    _ => {}
                }
            });
            if done > 0 {
                progress = true;
                for e in conns.iter_mut() {
                    if let Some(c) = e.conn.as_mut() {
                        c.poll_tx();
                    }
                }
            }
            qp.submit();
            if progress {
                idle = 0;
                continue;
            }
            idle += 1;
            let busy = qp.outstanding() > 0 || conns.iter().any(|e| e.conn.as_ref().is_some_and(|c| c.busy()));
            if busy || idle < SPINS_BEFORE_SLEEP {
                std::thread::yield_now();
                continue;
            }
            // Idle: sleep until a socket is readable (or a short timeout).
            let mut fds: Vec<PollFd<'_>> = conns
                .iter()
                .filter_map(|e| e.conn.as_ref())
                .map(|c| PollFd::from_borrowed_fd(c.socket().as_fd(), PollFlags::IN))
                .collect();
            let t = Timespec { tv_sec: 0, tv_nsec: IDLE_SLEEP.as_nanos() as _ };
            let _ = rustix::event::poll(&mut fds, Some(&t));
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
    }
}
