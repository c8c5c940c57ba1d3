//! Lanes: the rings of one shard (one per signal) and the wake-up of that shard's writer.
//!
//! A writer parks when its lanes are empty and is woken by the push that fills one. The wake-up
//! is a Dekker handshake between two `fence(SeqCst)`s: the producer publishes its push, fences,
//! then reads `sleeping`; the writer sets `sleeping`, fences, then looks at the rings. Whatever
//! the interleaving, either the producer sees `sleeping == true` and notifies under the mutex, or
//! the writer sees the push and does not sleep: no lost wake-up. The producer pays one fence and
//! one relaxed load per push while the writer is busy; the mutex is taken only to wake a sleeper.
//! (loom 0.7 models SeqCst loads and stores as AcqRel, so the handshake uses fences, which loom
//! models exactly; see `loom-tests/`.)

use super::batch::{Batch, Signal};
use crate::ring::Ring;
use crate::sync::atomic::{AtomicBool, Ordering, fence};
use crate::sync::{Condvar, Mutant, Mutex, mutant};
use std::time::{Duration, Instant};

/// Wake-up of one writer thread.
#[derive(Debug, Default)]
pub struct Wake {
    /// True while the writer is (about to be) waiting.
    sleeping: AtomicBool,
    /// True when a notification is pending; guarded so a notify cannot slip between the writer's
    /// check and its wait.
    notified: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Producer side, called after a push (or after setting a flag the writer checks). Cheap when
    /// the writer is awake.
    pub fn notify(&self) {
        // SeqCst fence: the producer half of the Dekker handshake; our push (before this fence)
        // and the writer's `sleeping = true` (before its fence) cannot both go unseen. (The
        // test-only mutant `no_wake_fence` removes it: a lost wake-up the models must catch.)
        if !mutant(Mutant::NoWakeFence) {
            fence(Ordering::SeqCst);
        }
        // Relaxed: ordered by the fences above.
        if self.sleeping.load(Ordering::Relaxed) {
            self.force_notify();
        }
    }

    /// Wakes the writer whether or not it looks asleep (stop, deadline).
    pub fn force_notify(&self) {
        let mut n = self.notified.lock();
        *n = true;
        drop(n);
        self.cv.notify_one();
    }

    /// Writer side: sleeps until notified, unless `has_work()` is already true after announcing the
    /// sleep; gives up after `timeout` when one is given (`None` waits for a notification only).
    /// Returns true when woken by a notification (or found work), false on timeout.
    pub fn wait(&self, has_work: impl Fn() -> bool, timeout: Option<Duration>) -> bool {
        // Relaxed store, then the SeqCst fence: the writer half of the handshake (see `notify`).
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if has_work() {
            self.sleeping.store(false, Ordering::Relaxed);
            // The caller loops back to work that may still be in a producer's hands (a claimed
            // but unpublished ring slot): a spin hint, and under loom a yield.
            crate::sync::spin_step();
            // A notification that raced with this check is consumed by the next wait at worst as
            // one spurious wake-up.
            return true;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut n = self.notified.lock();
        let woken = loop {
            if *n {
                break true;
            }
            match deadline {
                None => n = self.cv.wait(n),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    n = self.cv.wait_timeout(n, left);
                }
            }
        };
        *n = false;
        drop(n);
        // Relaxed: the next handshake starts with its own fence.
        self.sleeping.store(false, Ordering::Relaxed);
        woken
    }
}

/// The lanes of one shard: one ring per signal, and its writer's wake-up.
#[derive(Debug)]
pub struct ShardLanes {
    rings: [Ring<Batch>; Signal::COUNT],
    pub wake: Wake,
}

impl ShardLanes {
    /// Rings of `slots` (a power of two ≥ the signal's queue capacity, and ≥ 2, so a reserved
    /// push never finds its ring full).
    pub fn new(slots: usize) -> Self {
        Self {
            rings: [Ring::with_capacity(slots), Ring::with_capacity(slots), Ring::with_capacity(slots)],
            wake: Wake::new(),
        }
    }

    pub fn ring(&self, signal: Signal) -> &Ring<Batch> {
        &self.rings[signal.index()]
    }

    /// True when any ring holds (or is receiving) a batch.
    pub fn has_batches(&self) -> bool {
        self.rings.iter().any(|r| !r.is_empty())
    }
}
