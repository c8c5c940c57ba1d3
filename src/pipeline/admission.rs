//! Admission: the packed atomic word of one signal and the hybrid backpressure zones (DESIGN 1.2).
//!
//! One `AtomicU64` per signal holds, in one word:
//!
//! ```text
//!  63      62 ........ 40 39 ............. 0
//! [stopped][ fill: 23 bits ][ bytes: 40 bits ]
//! ```
//!
//! - `fill`: batches reserved and not yet popped by a writer, across all of the signal's lanes
//!   (capacity `INGEST_PIPELINE_QUEUE_SIZE`, at most [`MAX_QUEUE_SIZE`]);
//! - `bytes`: estimated bytes of the batches reserved and not yet committed or spilled (capacity
//!   `INGEST_PIPELINE_MAX_BYTES`, at most [`MAX_QUEUE_BYTES`]);
//! - `stopped`: set once by stop; every reservation after it fails.
//!
//! A request reserves all of its batches (or, in the soft zone, all of its priority batches) with
//! ONE compare-and-swap, so it is admitted or refused as a whole, the counters never pass their
//! capacities, and of two racing submitters one can fail only because the other's reservation
//! succeeded. The zone is decided from the word read before the reservation. The slot is released
//! at pop ([`Admission::release_slot`]), the bytes at commit or spill ([`Admission::release_bytes`]);
//! the drain after stop is over when `fill == 0` with `stopped` set, read in one load.
//!
//! # Orderings
//! Every change of the word is a read-modify-write, so the word has one modification order that
//! every thread agrees on, and an Acquire read of any value synchronises with every Release
//! change before it in that order (each later read-modify-write continues its release sequence).
//! Two facts rest on this, and only one needs an ordering:
//! - **the drain** rests on the modification order alone: a reservation is either before the stop
//!   in that order (and counted in `fill` until its batch is popped) or after it (and refused),
//!   so `stopped && fill == 0` in one value means no reserved batch is left or can come. No
//!   happens-before edge is needed, and `stop`, `snapshot` and `drained` are Relaxed;
//! - **a reserved push cannot fail** needs one edge: the pop that freed a slot (its ring stamp
//!   store) happens-before the push of the submitter that reserves the slot. `release_slot` is
//!   Release and the reservation's CAS is Acquire; the ring's `tail` carries the edge on to a
//!   submitter that claims the freed slot after another one (see `Ring::try_push`).
//!
//! Byte releases publish nothing (a counter: the batch memory was given back to the allocator,
//! which synchronises itself) and are Relaxed. Underflow or overflow of a field would corrupt its
//! neighbour or the stopped bit, so every change is checked with a real assert before it is made.

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Mutant, mutant};

const BYTES_BITS: u32 = 40;
const FILL_BITS: u32 = 23;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;
const FILL_SHIFT: u32 = BYTES_BITS;
const FILL_MASK: u64 = ((1 << FILL_BITS) - 1) << FILL_SHIFT;
const STOPPED: u64 = 1 << 63;

/// Largest `INGEST_PIPELINE_QUEUE_SIZE` the word can count: 2^23 − 1 batches (8,388,607; far above
/// any useful queue: each batch is at least a few hundred bytes).
pub const MAX_QUEUE_SIZE: u64 = (1 << FILL_BITS) - 1;
/// Largest `INGEST_PIPELINE_MAX_BYTES` the word can count: 2^40 − 1 bytes (1 TiB).
pub const MAX_QUEUE_BYTES: u64 = (1 << BYTES_BITS) - 1;

/// What one request asks to reserve: a number of batches (one per lane it touches) and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub batches: u64,
    pub bytes: u64,
}

impl Need {
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }
}

/// The decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Below the soft threshold: everything reserved.
    AcceptAll,
    /// In the soft zone: only the priority part reserved (possibly nothing, when it is empty).
    PriorityOnly,
    /// The part the zone asked for would pass the batch capacity.
    QueueFull,
    /// The part the zone asked for would pass the byte capacity.
    BytesFull,
    /// The request alone is larger than the byte capacity: it can never fit (permanent).
    TooLarge,
    /// Stop has begun.
    Stopped,
}

/// A consistent snapshot of the word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub fill: u64,
    pub bytes: u64,
    pub stopped: bool,
}

impl Snapshot {
    fn from_word(w: u64) -> Self {
        Self { fill: (w & FILL_MASK) >> FILL_SHIFT, bytes: w & BYTES_MASK, stopped: w & STOPPED != 0 }
    }
}

/// The admission state of one signal.
#[derive(Debug)]
pub struct Admission {
    word: AtomicU64,
    capacity: u64,
    max_bytes: u64,
    soft_threshold: f64,
}

impl Admission {
    /// `capacity` batches, `max_bytes` bytes, soft zone from `soft_threshold` (0 < t ≤ 1).
    /// Values above the word's limits are clamped to them (config validation refuses them first).
    pub fn new(capacity: u64, max_bytes: u64, soft_threshold: f64) -> Self {
        Self {
            word: AtomicU64::new(0),
            capacity: capacity.clamp(1, MAX_QUEUE_SIZE),
            max_bytes: max_bytes.clamp(1, MAX_QUEUE_BYTES),
            soft_threshold,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Fullness of a snapshot: max(fill / capacity, bytes / max_bytes).
    pub fn fullness_of(&self, s: Snapshot) -> f64 {
        let f = s.fill as f64 / self.capacity as f64;
        let b = s.bytes as f64 / self.max_bytes as f64;
        f.max(b)
    }

    /// Current fullness (for `/readyz` and gauges).
    pub fn fullness(&self) -> f64 {
        self.fullness_of(self.snapshot())
    }

    pub fn snapshot(&self) -> Snapshot {
        // Relaxed: a snapshot of counters (gauges, zone checks, the drain: see the module doc);
        // its readers read nothing that the writers of the word published.
        Snapshot::from_word(self.word.load(Ordering::Relaxed))
    }

    /// Decides and, when the decision admits something, reserves it with one CAS.
    ///
    /// `all` is the whole request, `priority` its priority part (a subset). In the soft zone only
    /// `priority` is reserved; `PriorityOnly` with an empty `priority` reserved nothing.
    ///
    /// # Panics
    /// When `priority` is larger than `all` in batches or bytes (a caller bug).
    pub fn reserve(&self, all: Need, priority: Need) -> Decision {
        assert!(
            priority.batches <= all.batches && priority.bytes <= all.bytes,
            "priority part {priority:?} larger than the request {all:?}"
        );
        if all.bytes > self.max_bytes {
            return Decision::TooLarge;
        }
        // Relaxed: only a guess for the CAS below. A refusal decided from it is followed by no
        // push, so needs no edge; a reservation gets its edge from the CAS's own Acquire.
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let s = Snapshot::from_word(cur);
            if s.stopped && !mutant(Mutant::StoppedIgnored) {
                return Decision::Stopped;
            }
            // The zone comes from the state before the reservation: this value, re-read on every
            // retry, so a zone changed by a racing reservation is seen.
            let soft = self.fullness_of(s) >= self.soft_threshold;
            let (want, decision) =
                if soft { (priority, Decision::PriorityOnly) } else { (all, Decision::AcceptAll) };
            if want.is_empty() {
                return decision;
            }
            // Checked: a sum past the capacity (or past u64) is refused, never wrapped.
            if s.fill.checked_add(want.batches).is_none_or(|f| f > self.capacity) {
                return Decision::QueueFull;
            }
            if s.bytes.checked_add(want.bytes).is_none_or(|b| b > self.max_bytes) {
                return Decision::BytesFull;
            }
            // Both sums are within their capacities, themselves within their fields (`new`
            // clamps them): the additions cannot carry into the next field or the stopped bit.
            let next = cur + (want.batches << FILL_SHIFT) + want.bytes;
            // Success Acquire: pairs with the Release of `release_slot` (and, through the release
            // sequence, of every earlier one): the value we replace is the one whose freed slots
            // we count, so the pops that freed them happen-before our pushes (module doc). No
            // Release half: nobody reads anything of ours through the word (the drain rests on
            // the modification order, and the next submitter's edge to the pop goes through the
            // ring's `tail`).
            // Failure Relaxed: the fresh value is only the next guess, as for the load above.
            match self.word.compare_exchange_weak(cur, next, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return decision,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Frees `n` batch slots (at pop). Returns the snapshot after the release.
    ///
    /// # Panics
    /// When fewer than `n` slots are reserved (a caller bug); the word is left unchanged.
    pub fn release_slot(&self, n: u64) -> Snapshot {
        // Release: the pop (its ring stamp store, before this call) happens-before every
        // reservation whose Acquire reads this value or a later one (see `reserve`).
        // Relaxed fetch: the value only feeds the check and the next attempt.
        let prev = self
            .word
            .fetch_update(Ordering::Release, Ordering::Relaxed, |w| {
                let fill = Snapshot::from_word(w).fill;
                fill.checked_sub(n).map(|f| (w & !FILL_MASK) | (f << FILL_SHIFT))
            })
            .unwrap_or_else(|w| panic!("fill underflow: releasing {n} of {}", Snapshot::from_word(w).fill));
        let mut after = Snapshot::from_word(prev);
        after.fill -= n;
        after
    }

    /// Frees `bytes` (at commit or spill).
    ///
    /// # Panics
    /// When fewer than `bytes` are reserved (a caller bug); the word is left unchanged.
    pub fn release_bytes(&self, bytes: u64) {
        // Relaxed: a counter; nothing is published with the freed room (module doc). The
        // read-modify-write still continues the release sequences `reserve` acquires.
        self.word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let held = Snapshot::from_word(w).bytes;
                held.checked_sub(bytes).map(|b| (w & !BYTES_MASK) | b)
            })
            .unwrap_or_else(|w| {
                panic!("bytes underflow: releasing {bytes} of {}", Snapshot::from_word(w).bytes)
            });
    }

    /// Sets `stopped`: every later reservation fails. Idempotent; returns true the first time.
    pub fn stop(&self) -> bool {
        // Relaxed: the drain rests on the word's modification order, not on a happens-before
        // edge (module doc): a reservation before this change is counted in `fill`, one after it
        // sees `stopped`. The writers are woken through the lanes' mutex after this call.
        self.word.fetch_or(STOPPED, Ordering::Relaxed) & STOPPED == 0
    }

    /// True when stop has begun and every reserved batch has been popped (the drain is over for
    /// this signal's lanes; bytes may still be held by groups being committed).
    pub fn drained(&self) -> bool {
        let s = self.snapshot();
        s.stopped && s.fill == 0
    }
}

#[cfg(all(test, not(otelring_loom)))]
mod tests {
    use super::*;

    fn n(batches: u64, bytes: u64) -> Need {
        Need { batches, bytes }
    }

    #[test]
    fn packs_and_unpacks() {
        let a = Admission::new(MAX_QUEUE_SIZE, MAX_QUEUE_BYTES, 1.0);
        assert_eq!(a.reserve(n(MAX_QUEUE_SIZE, MAX_QUEUE_BYTES), n(0, 0)), Decision::AcceptAll);
        let s = a.snapshot();
        assert_eq!((s.fill, s.bytes, s.stopped), (MAX_QUEUE_SIZE, MAX_QUEUE_BYTES, false));
        a.release_slot(MAX_QUEUE_SIZE);
        a.release_bytes(MAX_QUEUE_BYTES);
        assert!(a.stop());
        assert!(!a.stop());
        assert_eq!(a.snapshot(), Snapshot { fill: 0, bytes: 0, stopped: true });
    }

    #[test]
    fn zones_follow_the_state_before_the_reservation() {
        let a = Admission::new(10, 1_000, 0.9);
        // 8 of 10: below the threshold, a 2-batch request is accepted whole (ends at 100%).
        assert_eq!(a.reserve(n(8, 10), n(0, 0)), Decision::AcceptAll);
        assert_eq!(a.reserve(n(2, 10), n(0, 0)), Decision::AcceptAll);
        a.release_slot(1);
        // 9 of 10 = 0.9: soft zone; only priority is reserved.
        assert_eq!(a.reserve(n(1, 10), n(0, 0)), Decision::PriorityOnly);
        assert_eq!(a.snapshot().fill, 9);
        assert_eq!(a.reserve(n(1, 10), n(1, 5)), Decision::PriorityOnly);
        assert_eq!(a.snapshot().fill, 10);
        // Full: even priority is rejected.
        assert_eq!(a.reserve(n(1, 10), n(1, 5)), Decision::QueueFull);
    }

    #[test]
    fn byte_driven_zones_and_too_large() {
        let a = Admission::new(100, 1_000, 0.9);
        assert_eq!(a.reserve(n(1, 1_001), n(1, 1)), Decision::TooLarge);
        assert_eq!(a.reserve(n(1, 900), n(0, 0)), Decision::AcceptAll);
        assert_eq!(a.reserve(n(1, 10), n(0, 0)), Decision::PriorityOnly);
        assert_eq!(a.reserve(n(1, 200), n(1, 101)), Decision::BytesFull);
        assert_eq!(a.reserve(n(1, 200), n(1, 100)), Decision::PriorityOnly);
        assert_eq!(a.snapshot().bytes, 1_000);
    }

    #[test]
    fn releasing_an_unreserved_slot_panics_and_leaves_the_word_intact() {
        let a = Admission::new(4, 100, 0.9);
        assert_eq!(a.reserve(n(1, 10), n(0, 0)), Decision::AcceptAll);
        let before = a.snapshot();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.release_slot(2)));
        assert!(r.is_err());
        assert_eq!(a.snapshot(), before);
    }

    #[test]
    fn releasing_unreserved_bytes_panics_and_leaves_the_word_intact() {
        let a = Admission::new(4, 100, 0.9);
        assert_eq!(a.reserve(n(1, 10), n(0, 0)), Decision::AcceptAll);
        a.stop();
        let before = a.snapshot();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.release_bytes(11)));
        assert!(r.is_err());
        assert_eq!(a.snapshot(), before);
        assert!(before.stopped);
    }

    #[test]
    #[should_panic(expected = "larger than the request")]
    fn a_priority_part_larger_than_the_request_panics() {
        let a = Admission::new(4, 100, 0.9);
        a.reserve(n(1, 10), n(2, 10));
    }

    #[test]
    fn sums_past_u64_are_refused_not_wrapped() {
        let a = Admission::new(MAX_QUEUE_SIZE, MAX_QUEUE_BYTES, 1.0);
        assert_eq!(a.reserve(n(1, 1), n(0, 0)), Decision::AcceptAll);
        assert_eq!(a.reserve(n(u64::MAX, 1), n(0, 0)), Decision::QueueFull);
        assert_eq!(a.snapshot().fill, 1);
    }

    #[test]
    fn stopped_refuses_and_drained_needs_zero_fill() {
        let a = Admission::new(4, 100, 0.9);
        assert_eq!(a.reserve(n(2, 10), n(0, 0)), Decision::AcceptAll);
        a.stop();
        assert_eq!(a.reserve(n(1, 1), n(1, 1)), Decision::Stopped);
        assert!(!a.drained());
        a.release_slot(2);
        assert!(a.drained());
    }
}
