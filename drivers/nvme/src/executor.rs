//! A small single-threaded executor for thread-per-core programs: the
//! thread that owns a queue pair runs its tasks in rounds and polls the
//! device between rounds (its idle loop), so the commands the tasks
//! submitted in one round go out with one doorbell.
//!
//! No allocation per I/O and no `unsafe`: a task is boxed once when it is
//! spawned; each task slot has one [`Waker`], made once (an `Arc` through
//! [`std::task::Wake`]), whose wake sets the slot's bit in an atomic
//! bitmap. A round takes the bitmap and polls the tasks whose bits were set.
//! Wakers are `Send + Sync` (a wake from another thread just sets a bit);
//! the tasks themselves stay on this thread (they need not be `Send`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Task slots per bitmap word.
const BITS: usize = 64;

/// One ready bit per task slot.
struct ReadySet {
    words: Box<[AtomicU64]>,
}

impl ReadySet {
    #[inline]
    fn set(&self, id: usize) {
        if let Some(w) = self.words.get(id / BITS) {
            w.fetch_or(1 << (id % BITS), Ordering::Release);
        }
    }
}

/// The waker of one task slot: wakes by setting the slot's ready bit.
struct SlotWaker {
    ready: Arc<ReadySet>,
    id: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.ready.set(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.set(self.id);
    }
}

/// Every task slot is taken: [`LocalExecutor::spawn`] refused the task.
#[derive(Debug, thiserror::Error)]
#[error("the executor runs {0} tasks at most; wait for some to finish")]
pub struct ExecutorFull(pub usize);

/// A single-threaded executor with a fixed number of task slots.
///
/// ```
/// use fastlane_nvme::executor::LocalExecutor;
/// let done = std::cell::Cell::new(0);
/// let mut exec = LocalExecutor::new(4);
/// for _ in 0..4 {
///     exec.spawn(async { done.set(done.get() + 1) })?;
/// }
/// exec.run(|| { /* poll the device here: AsyncQueue::poll */ });
/// assert_eq!(done.get(), 4);
/// # Ok::<(), fastlane_nvme::executor::ExecutorFull>(())
/// ```
pub struct LocalExecutor<'a> {
    tasks: Vec<Option<Pin<Box<dyn Future<Output = ()> + 'a>>>>,
    /// One waker per slot, made once.
    wakers: Vec<Waker>,
    ready: Arc<ReadySet>,
    /// Free slots (never grows past the slot count).
    free: Vec<usize>,
    live: usize,
}

impl<'a> LocalExecutor<'a> {
    /// An executor for up to `slots` tasks at once (at least 1).
    pub fn new(slots: usize) -> LocalExecutor<'a> {
        let slots = slots.max(1);
        let words = (0..slots.div_ceil(BITS))
            .map(|_| AtomicU64::new(0))
            .collect();
        let ready = Arc::new(ReadySet { words });
        let wakers = (0..slots)
            .map(|id| {
                Waker::from(Arc::new(SlotWaker {
                    ready: ready.clone(),
                    id,
                }))
            })
            .collect();
        LocalExecutor {
            tasks: (0..slots).map(|_| None).collect(),
            wakers,
            ready,
            free: (0..slots).rev().collect(),
            live: 0,
        }
    }

    /// Adds a task (one allocation); it first runs in the next round.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + 'a) -> Result<(), ExecutorFull> {
        let id = self.free.pop().ok_or(ExecutorFull(self.tasks.len()))?;
        self.tasks[id] = Some(Box::pin(task));
        self.live += 1;
        self.ready.set(id);
        Ok(())
    }

    /// Tasks not finished yet.
    pub fn live(&self) -> usize {
        self.live
    }

    /// One round: polls every task woken since the last round, once.
    /// Returns how many it polled (0: nothing to do but poll devices).
    pub fn run_ready(&mut self) -> usize {
        let mut polled = 0;
        for w in 0..self.ready.words.len() {
            let mut bits = self.ready.words[w].swap(0, Ordering::Acquire);
            while bits != 0 {
                let id = w * BITS + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // A wake for a slot whose task finished is spurious.
                let (Some(Some(task)), Some(waker)) = (self.tasks.get_mut(id), self.wakers.get(id))
                else {
                    continue;
                };
                polled += 1;
                if task
                    .as_mut()
                    .poll(&mut Context::from_waker(waker))
                    .is_ready()
                {
                    self.tasks[id] = None;
                    self.free.push(id);
                    self.live -= 1;
                }
            }
        }
        polled
    }

    /// Runs rounds until every task has finished, calling `idle` after each
    /// round (where the device is polled and tasks get woken).
    pub fn run(&mut self, mut idle: impl FnMut()) {
        while self.live > 0 {
            self.run_ready();
            if self.live > 0 {
                idle();
            }
        }
    }
}

/// Runs one future to its end on this thread, calling `idle` (poll the
/// device there) whenever it is pending. Makes one waker per call.
pub fn block_on<F: Future>(fut: F, mut idle: impl FnMut()) -> F::Output {
    let ready = Arc::new(ReadySet {
        words: Box::new([AtomicU64::new(0)]),
    });
    let waker = Waker::from(Arc::new(SlotWaker { ready, id: 0 }));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Pending until `flag` is set; then ready.
    struct Gate<'a> {
        flag: &'a Cell<bool>,
        waker: &'a Cell<Option<Waker>>,
    }

    impl Future for Gate<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.flag.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }

    #[test]
    fn a_task_runs_again_only_when_woken() {
        let flag = Cell::new(false);
        let waker = Cell::new(None);
        let polls = Cell::new(0);
        let mut exec = LocalExecutor::new(2);
        exec.spawn(async {
            polls.set(polls.get() + 1);
            Gate {
                flag: &flag,
                waker: &waker,
            }
            .await;
            polls.set(polls.get() + 1);
        })
        .unwrap();
        assert_eq!(exec.run_ready(), 1);
        assert_eq!(exec.run_ready(), 0, "not woken: not polled");
        assert_eq!((polls.get(), exec.live()), (1, 1));
        flag.set(true);
        waker.take().unwrap().wake();
        assert_eq!(exec.run_ready(), 1);
        assert_eq!((polls.get(), exec.live()), (2, 0));
        // A stale wake of the finished task's slot polls nothing.
        exec.wakers[1].wake_by_ref();
        exec.wakers[0].wake_by_ref();
        assert_eq!(exec.run_ready(), 0);
    }

    #[test]
    fn slots_are_reused_and_a_full_executor_refuses() {
        let n = Cell::new(0);
        let mut exec = LocalExecutor::new(65);
        for _ in 0..65 {
            exec.spawn(async { n.set(n.get() + 1) }).unwrap();
        }
        assert!(matches!(exec.spawn(async {}), Err(ExecutorFull(65))));
        assert_eq!(exec.run_ready(), 65);
        assert_eq!(exec.live(), 0);
        for _ in 0..65 {
            exec.spawn(async { n.set(n.get() + 1) }).unwrap();
        }
        exec.run(|| {});
        assert_eq!(n.get(), 130);
    }

    #[test]
    fn block_on_calls_idle_until_ready() {
        let flag = Cell::new(false);
        let waker = Cell::new(None);
        let mut idles = 0;
        block_on(
            Gate {
                flag: &flag,
                waker: &waker,
            },
            || {
                idles += 1;
                if idles == 3 {
                    flag.set(true);
                }
            },
        );
        assert_eq!(idles, 3);
    }
}
