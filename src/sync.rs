//! The loom shim: the only place in the crate that names an atomic, a cell, a spin hint, a lock, a
//! condition variable or a thread primitive used by the ring, admission, lane wake-up and
//! commit-completion code; and the switch of the test-only mutants ([`Mutant`]).
//!
//! Two arms, keyed on the namespaced `cfg(otelring_loom)` (a bare `cfg(loom)` would also flip loom
//! inside dependencies that know it):
//! - normal builds re-export `std` and adapt `std`'s API to loom's (`UnsafeCell::with` /
//!   `with_mut`), never the other way round, so the shipped code and the loom models compile the
//!   same source;
//! - `--cfg otelring_loom` re-exports `loom`, so `loom-tests/` checks the very code that ships.
//!
//! Locks here never report poisoning: a panic while one is held is caught and handled by the
//! writer loop, and the protected data (a wake-up flag) stays valid whatever the panic.

#[cfg(not(otelring_loom))]
mod imp {
    pub use std::sync::Arc;
    pub mod atomic {
        pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
    }
    pub mod hint {
        pub use std::hint::spin_loop;
    }
    pub mod thread {
        pub use std::thread::{JoinHandle, current, park, spawn, yield_now};
    }
    pub(crate) use std::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard};

    /// `std::cell::UnsafeCell` with loom's closure-based API.
    #[derive(Debug)]
    #[repr(transparent)]
    pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline]
        pub const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }
        /// Calls `f` with a shared raw pointer to the contents.
        #[inline]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        /// Calls `f` with a unique raw pointer to the contents.
        #[inline]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(otelring_loom)]
mod imp {
    pub use loom::sync::Arc;
    pub mod atomic {
        pub use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
    }
    pub mod hint {
        pub use loom::hint::spin_loop;
    }
    pub mod thread {
        pub use loom::thread::{JoinHandle, current, park, spawn, yield_now};
    }
    pub use loom::cell::UnsafeCell;
    pub(crate) use loom::sync::{Condvar as RawCondvar, Mutex as RawMutex, MutexGuard};
}

pub use imp::{Arc, UnsafeCell, atomic, hint, thread};

/// One step of a spin-wait. Under loom it yields to the scheduler, so a model that spins on
/// another thread's progress explores that progress instead of spinning forever.
#[inline]
pub fn spin_step() {
    #[cfg(otelring_loom)]
    thread::yield_now();
    #[cfg(not(otelring_loom))]
    hint::spin_loop();
}
use imp::{MutexGuard, RawCondvar, RawMutex};

/// Deliberately broken variants ("mutants") of the synchronisation, one per defect the loom
/// models must catch. They exist only in builds with the test-only feature `__loom_broken`
/// (`loom-tests --features broken`), where `OTELRING_MUTANT=<name>` picks one at run time, so one
/// build proves the suite fails on each (`.ci/test`, README "Concurrency checking"). In every other
/// build [`mutant`] is a constant `false` and the branches on it compile away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutant {
    /// `publish_relaxed`: the ring's stamp store that publishes a pushed value is Relaxed.
    PublishRelaxed,
    /// `pop_stamp_relaxed`: the ring's stamp store that frees a popped slot is Relaxed.
    PopStampRelaxed,
    /// `stopped_ignored`: admission ignores the stopped bit.
    StoppedIgnored,
    /// `drain_on_empty_rings`: the drain is decided on "the rings look empty", not on fill = 0.
    DrainOnEmptyRings,
    /// `no_wake_fence`: the producer's SeqCst fence of the wake-up handshake is removed.
    NoWakeFence,
    /// `tail_relaxed`: the ring's `tail` is loaded and claimed Relaxed (bug 2 of issue 14: a
    /// reserved push could see a stale stamp).
    TailRelaxed,
    /// `no_drain_wake`: the pop that ends a drain does not wake the other shards' writers.
    NoDrainWake,
}

impl Mutant {
    /// Every mutant, in the order `.ci/test` tries them.
    pub const ALL: [Mutant; 7] = [
        Mutant::PublishRelaxed,
        Mutant::PopStampRelaxed,
        Mutant::StoppedIgnored,
        Mutant::DrainOnEmptyRings,
        Mutant::NoWakeFence,
        Mutant::TailRelaxed,
        Mutant::NoDrainWake,
    ];

    /// The name `OTELRING_MUTANT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::PublishRelaxed => "publish_relaxed",
            Mutant::PopStampRelaxed => "pop_stamp_relaxed",
            Mutant::StoppedIgnored => "stopped_ignored",
            Mutant::DrainOnEmptyRings => "drain_on_empty_rings",
            Mutant::NoWakeFence => "no_wake_fence",
            Mutant::TailRelaxed => "tail_relaxed",
            Mutant::NoDrainWake => "no_drain_wake",
        }
    }
}

/// True when `m` is the mutant chosen by `OTELRING_MUTANT` (builds with `__loom_broken` only).
#[cfg(feature = "__loom_broken")]
pub fn mutant(m: Mutant) -> bool {
    // A std `OnceLock`, not loom's: the choice is fixed for the process, outside the model.
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| std::env::var("OTELRING_MUTANT").ok()).as_deref() == Some(m.name())
}

/// Always false: this build has no mutants.
#[cfg(not(feature = "__loom_broken"))]
#[inline(always)]
pub const fn mutant(_: Mutant) -> bool {
    false
}
use std::time::Duration;

/// A mutex whose `lock` cannot fail: poisoning is ignored (see the module doc).
#[derive(Debug, Default)]
pub struct Mutex<T>(RawMutex<T>);

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Self(RawMutex::new(value))
    }
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A condition variable paired with [`Mutex`]; poisoning is ignored.
#[derive(Debug, Default)]
pub struct Condvar(RawCondvar);

impl Condvar {
    pub fn new() -> Self {
        Self(RawCondvar::new())
    }
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
    /// Waits at most `timeout`. Under loom a timed wait never times out, so a model that relies on
    /// a timeout to make progress deadlocks and loom reports it: a lost wake-up cannot hide.
    pub fn wait_timeout<'a, T>(&self, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
        match self.0.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
    pub fn notify_one(&self) {
        self.0.notify_one();
    }
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}
