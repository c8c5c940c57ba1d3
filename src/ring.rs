//! A bounded, lock-free, multi-producer multi-consumer ring buffer: Dmitry Vyukov's bounded MPMC
//! queue (<https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue>), the
//! algorithm behind crossbeam's `ArrayQueue`.
//!
//! This is the only module of the crate with `unsafe`. It names no `std` atomic or cell: every
//! primitive comes from [`crate::sync`], so the loom models in `loom-tests/` check this very code.
//!
//! # Stamps
//! The ring has `slots = 2^k ≥ 2` slots (Vyukov's algorithm needs two: with one slot, "full at
//! `p`" (`p + 1`) and "free at `p + 1`" would be the same stamp). `head` and `tail` are unbounded positions (wrapping `usize`
//! counters); position `p` lives in slot `p & mask`. Each slot carries a stamp:
//! - `stamp == p` means the slot is free for the push at position `p` (its "next write");
//! - `stamp == p + 1` means it holds the value pushed at `p`, ready for the pop at `p` (its "next
//!   read");
//! - a pop at `p` sets `stamp = p + slots`: free for the push one lap later.
//!
//! Comparing a stamp with a position by wrapping difference tells a producer whether the slot is
//! free (0), still full from the previous lap (< 0: the ring is full) or already taken by a faster
//! producer (> 0: reload `tail`); a consumer likewise.
//!
//! # Invariants
//! - a position is claimed by exactly one thread: the compare-and-swap on `tail` (`head`) is a
//!   read-modify-write, so two producers (consumers) cannot both move it from `p` to `p + 1`;
//! - `head ≤ tail ≤ head + slots` (as positions, before wrapping): a pop at `p` needs the stamp
//!   `p + 1`, which only the push at `p` stores, and a push at `p` needs the stamp `p`, which only
//!   the pop at `p − slots` stores (or the constructor, for `p < slots`); both stamps are distinct
//!   from every other stamp the slot takes because `slots ≥ 2`;
//! - the value in a slot is written only by the producer that claimed its position and the stamp
//!   is then published with `Release`; it is read only by the consumer that claimed the same
//!   position after an `Acquire` load saw that stamp; so each value is moved in once and out once;
//! - `Drop` (which has `&mut self`, so no operation is in progress) drops exactly the values in
//!   `head..tail`, at most `slots` of them, each in its own slot.
//!
//! # Spurious answers
//! `try_push` reports full while a consumer that claimed position `tail − slots` has not yet
//! stored its stamp (the slot is about to be free), and `try_pop` reports empty while the producer
//! of position `head` has claimed it but not yet published it. Neither re-checks (crossbeam's
//! `ArrayQueue` re-reads the other index behind a `SeqCst` fence): the pipeline never needs it,
//! because its one consumer per ring finishes each pop before admission frees the slot, and a
//! writer that finds a lane empty looks again after the wake-up handshake.

use crate::sync::atomic::{AtomicUsize, Ordering};
use crate::sync::{Mutant, UnsafeCell, mutant};
use crossbeam_utils::CachePadded;
use std::mem::MaybeUninit;

/// Least number of slots: see the module doc (one slot cannot tell "full" from "free").
const MIN_SLOTS: usize = 2;

/// The ordering of the stamp store that publishes a pushed value (Release). The test-only mutant
/// `publish_relaxed` weakens it, a real bug (the consumer could read the slot before the value is
/// in it) that the loom models must catch.
#[inline]
fn publish_ordering() -> Ordering {
    if mutant(Mutant::PublishRelaxed) { Ordering::Relaxed } else { Ordering::Release }
}

/// The orderings of the `tail` load (Acquire) and of the claim's CAS (Release on success,
/// Acquire on failure): see `try_push`. The test-only mutant `tail_relaxed` weakens all three
/// (the code before issue 14, whose reserved push could see a stale stamp).
#[inline]
fn tail_orderings() -> (Ordering, Ordering, Ordering) {
    if mutant(Mutant::TailRelaxed) {
        (Ordering::Relaxed, Ordering::Relaxed, Ordering::Relaxed)
    } else {
        (Ordering::Acquire, Ordering::Release, Ordering::Acquire)
    }
}

/// The ordering of the stamp store that frees a popped slot (Release). The test-only mutant
/// `pop_stamp_relaxed` weakens it (the next lap's producer could overwrite the value while it is
/// being read).
#[inline]
fn free_ordering() -> Ordering {
    if mutant(Mutant::PopStampRelaxed) { Ordering::Relaxed } else { Ordering::Release }
}

/// One slot: its stamp and its (possibly uninitialised) value.
struct Slot<T> {
    /// See the module doc: `p` = free for the push at `p`, `p + 1` = full for the pop at `p`.
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// A bounded MPMC ring of `T` with a power-of-two number of slots.
///
/// ```
/// use otelring::ring::Ring;
/// let ring = Ring::with_capacity(3); // rounded up to 4 slots
/// assert_eq!(ring.capacity(), 4);
/// assert_eq!(Ring::<u8>::with_capacity(1).capacity(), 2); // never fewer than 2
/// ring.try_push(1).unwrap();
/// assert_eq!(ring.try_pop(), Some(1));
/// assert_eq!(ring.try_pop(), None);
/// ```
pub struct Ring<T> {
    /// Next position to pop. Cache-padded so consumers and producers do not share a line.
    head: CachePadded<AtomicUsize>,
    /// Next position to push.
    tail: CachePadded<AtomicUsize>,
    slots: Box<[Slot<T>]>,
    /// `slots.len() - 1`.
    mask: usize,
}

// SAFETY: values of `T` are moved in by one thread and out by another, never shared, so `T: Send`
// suffices for the ring to be sent or shared between threads; all other state is atomic.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above: a `&Ring<T>` only lets threads move `T` values in and out, each exactly once,
// under the stamp protocol of the module doc.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring with `capacity.next_power_of_two()` slots, and never fewer than 2 (see the module
    /// doc: 0 and 1 are rounded up to 2).
    pub fn with_capacity(capacity: usize) -> Self {
        let n = capacity.max(MIN_SLOTS).next_power_of_two();
        let slots: Box<[Slot<T>]> = (0..n)
            .map(|i| Slot { stamp: AtomicUsize::new(i), value: UnsafeCell::new(MaybeUninit::uninit()) })
            .collect();
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots,
            mask: n - 1,
        }
    }

    /// Number of slots (a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn slot(&self, pos: usize) -> &Slot<T> {
        let index = pos & self.mask;
        debug_assert!(index < self.slots.len());
        &self.slots[index]
    }

    /// Pushes `value`, or hands it back when every slot is full (or, spuriously, while the
    /// consumer of the slot it needs is between claiming and freeing it: see the module doc).
    ///
    /// A push that happens after the pop that freed its slot (by any chain of synchronisation,
    /// even through other producers' pushes) cannot fail: that is what lets the pipeline push
    /// after an admission reservation without a retry.
    pub fn try_push(&self, value: T) -> Result<(), T> {
        // Acquire: pairs with the Release of the claim (CAS below) that stored this `tail`, and,
        // since every write of `tail` is a read-modify-write, with every earlier claim (a release
        // sequence). So whatever happened-before the claims of positions below `tail` happens-
        // before our stamp load. The pipeline needs it: submitter Y acquires the pop that freed
        // slot 0 (admission) and claims position 1; submitter X then reads `tail = 2` (slot 0)
        // from Y's claim and must see the pop's stamp store, or its reserved push would find the
        // slot full (loom model `a_reserved_push_after_a_pop_on_another_thread_...`).
        let (load, claim, claim_failed) = tail_orderings();
        let mut tail = self.tail.load(load);
        loop {
            let slot = self.slot(tail);
            // Acquire: pairs with the Release stamp store of the pop that emptied this slot one
            // lap ago, so that pop's read of the old value happens-before our write below.
            let stamp = slot.stamp.load(Ordering::Acquire);
            let diff = stamp.wrapping_sub(tail) as isize;
            if diff == 0 {
                // The slot is free for position `tail`: claim the position (one winner per
                // position: the CAS is a read-modify-write).
                // Success Release: hands what happened-before this claim (for the pipeline, the
                // admission reservation and the pop it acquired) to the producer that reads the
                // new `tail` (Acquire above). No Acquire half: the stamp load above already
                // ordered the slot's previous pop before our write.
                // Failure Acquire: the value read becomes our next candidate, as for the load.
                match self.tail.compare_exchange_weak(tail, tail.wrapping_add(1), claim, claim_failed) {
                    Ok(_) => {
                        slot.value.with_mut(|p| {
                            // SAFETY: winning the CAS made this thread the only owner of position
                            // `tail`; the stamp said the previous value was taken out, and no
                            // consumer reads the slot before the stamp store below.
                            unsafe { p.write(MaybeUninit::new(value)) };
                        });
                        // Release: the value write above happens-before the Acquire stamp load
                        // of the consumer that pops position `tail`.
                        slot.stamp.store(tail.wrapping_add(1), publish_ordering());
                        return Ok(());
                    }
                    Err(current) => tail = current,
                }
            } else if diff < 0 {
                // The slot still holds the value of the previous lap: the ring is full (or a
                // consumer is between claiming and emptying it).
                return Err(value);
            } else {
                // A faster producer already took this position: try the current tail.
                crate::sync::spin_step();
                // Acquire: as for the first load.
                tail = self.tail.load(load);
            }
        }
    }

    /// Pops the oldest value, or `None` when the ring is empty (or its oldest value is still being
    /// written by a producer that has claimed the position but not yet published it, or its
    /// stamp store is not yet visible: a spurious `None` that callers look past).
    pub fn try_pop(&self) -> Option<T> {
        // Relaxed: candidate position only; the stamp (Acquire below) decides. Unlike `tail`,
        // nothing relies on a pop never missing a value: a stale stamp makes it report empty.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(head);
            // Acquire: pairs with the producer's Release stamp store (`publish_ordering`), so
            // its write of the value happens-before our read.
            let stamp = slot.stamp.load(Ordering::Acquire);
            let diff = stamp.wrapping_sub(head.wrapping_add(1)) as isize;
            if diff == 0 {
                // Relaxed: one winner per position; visibility comes from the stamps.
                match self.head.compare_exchange_weak(
                    head,
                    head.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = slot.value.with(|p| {
                            // SAFETY: winning the CAS made this thread the only owner of position
                            // `head`; the Acquire stamp load saw `head + 1`, so the value written
                            // for this position is initialised and visible; it is moved out once,
                            // and the stamp store below marks the slot empty before any reuse.
                            unsafe { p.read().assume_init() }
                        });
                        // Release: our read above happens-before the next lap's producer write,
                        // whose Acquire stamp load sees this store.
                        slot.stamp.store(head.wrapping_add(self.slots.len()), free_ordering());
                        return Some(value);
                    }
                    Err(current) => head = current,
                }
            } else if diff < 0 {
                // Not yet written for this lap: empty.
                return None;
            } else {
                // A faster consumer took this position: try the current head.
                crate::sync::spin_step();
                head = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Number of positions claimed by producers and not yet by consumers: an approximation,
    /// in `0..=capacity()`, that may be stale by the time it is used.
    ///
    /// The two loads are not one snapshot: nothing orders the pushes that moved `tail` before the
    /// pops that moved `head`, so `head` may be seen ahead of `tail` (values pushed and popped
    /// between the loads; counted as 0) or far behind it (clamped to `capacity()`). It is exact
    /// for a thread that is the ring's only consumer and has synchronised with the pushes it
    /// counts, which is how the writer's wake-up check uses it.
    pub fn len(&self) -> usize {
        // Relaxed: a count for gauges and wake-up checks; the exact accounting lives in the
        // admission word, and the wake-up handshake orders these loads with its own fences.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        match tail.wrapping_sub(head) as isize {
            d if d <= 0 => 0,
            d => (d as usize).min(self.slots.len()),
        }
    }

    /// True when `len() == 0`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // `&mut self`: no push or pop is in progress (every claimed position was published, every
        // claimed pop completed), so every position in head..tail holds a published value.
        // Relaxed loads suffice: the `&mut` borrow already synchronised with every thread that
        // used the ring.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        // The module invariant head ≤ tail ≤ head + slots: the positions head..tail map to
        // distinct slots, so no value is dropped twice.
        assert!(tail.wrapping_sub(head) <= self.slots.len(), "ring invariant broken: tail − head > slots");
        let mut pos = head;
        while pos != tail {
            let slot = self.slot(pos);
            slot.value.with_mut(|p| {
                // SAFETY: position `pos` in head..tail was pushed (its value written and published)
                // and not popped, and head..tail spans at most `slots` positions (asserted above),
                // so this slot holds an initialised value that no other position of the range
                // shares and that nobody else can reach any more; it is dropped once.
                unsafe { (*p).assume_init_drop() };
            });
            pos = pos.wrapping_add(1);
        }
    }
}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("capacity", &self.capacity()).field("len", &self.len()).finish()
    }
}

#[cfg(all(test, not(otelring_loom)))]
mod tests {
    use super::Ring;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn rounds_capacity_up_to_power_of_two() {
        assert_eq!(Ring::<u8>::with_capacity(0).capacity(), 2);
        assert_eq!(Ring::<u8>::with_capacity(1).capacity(), 2);
        assert_eq!(Ring::<u8>::with_capacity(2).capacity(), 2);
        assert_eq!(Ring::<u8>::with_capacity(5).capacity(), 8);
        assert_eq!(Ring::<u8>::with_capacity(4096).capacity(), 4096);
    }

    #[test]
    fn full_ring_hands_value_back_and_fifo_order_holds() {
        let r = Ring::with_capacity(4);
        for i in 0..4 {
            assert!(r.try_push(i).is_ok());
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.try_push(99), Err(99));
        for i in 0..4 {
            assert_eq!(r.try_pop(), Some(i));
        }
        assert_eq!(r.try_pop(), None);
        assert!(r.is_empty());
        // Many laps keep working (stamps wrap correctly).
        for i in 0..1000 {
            r.try_push(i).unwrap();
            assert_eq!(r.try_pop(), Some(i));
        }
    }

    /// Rings asked for 0, 1 and 2 slots hold exactly `capacity()` values, hand the next one back,
    /// give them out once in order over many laps and drop what is left once (sized for miri).
    #[test]
    fn rings_of_zero_one_and_two_slots_hold_capacity_values_over_many_laps() {
        for asked in [0, 1, 2] {
            let drops = Arc::new(AtomicUsize::new(0));
            let r = Ring::with_capacity(asked);
            let n = r.capacity();
            let mut next = 0usize;
            for _lap in 0..20 {
                for i in 0..n {
                    assert!(r.try_push((next + i, Counted(drops.clone()))).is_ok(), "asked {asked}");
                }
                let refused = r.try_push((usize::MAX, Counted(drops.clone())));
                assert!(refused.is_err(), "asked {asked}: a push past capacity {n} was accepted");
                drop(refused);
                for i in 0..n {
                    assert_eq!(r.try_pop().map(|(v, _)| v), Some(next + i), "asked {asked}");
                }
                assert!(r.try_pop().is_none(), "asked {asked}");
                next += n;
            }
            r.try_push((0, Counted(drops.clone()))).ok().unwrap();
            let before = drops.load(Ordering::SeqCst);
            drop(r);
            assert_eq!(drops.load(Ordering::SeqCst), before + 1, "asked {asked}");
        }
    }

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_drops_remaining_items_exactly_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        {
            let r = Ring::with_capacity(8);
            for _ in 0..6 {
                r.try_push(Counted(drops.clone())).ok().unwrap();
            }
            // Pop two (dropped here), leave four in the ring, across a wrap.
            drop(r.try_pop());
            drop(r.try_pop());
            for _ in 0..3 {
                r.try_push(Counted(drops.clone())).ok().unwrap();
            }
            assert_eq!(drops.load(Ordering::SeqCst), 2);
        }
        assert_eq!(drops.load(Ordering::SeqCst), 9);
    }

    #[test]
    fn concurrent_producers_and_consumers_lose_and_duplicate_nothing() {
        // Miri runs the same test, smaller: it interprets every step.
        const PER: usize = if cfg!(miri) { 200 } else { 50_000 };
        let r = Arc::new(Ring::with_capacity(64));
        let seen = Arc::new((0..4 * PER).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let popped = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        for p in 0..4 {
            let r = r.clone();
            hs.push(std::thread::spawn(move || {
                for i in 0..PER {
                    let mut v = p * PER + i;
                    while let Err(back) = r.try_push(v) {
                        v = back;
                        std::thread::yield_now();
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (r, seen, popped) = (r.clone(), seen.clone(), popped.clone());
            hs.push(std::thread::spawn(move || {
                while popped.load(Ordering::SeqCst) < 4 * PER {
                    if let Some(v) = r.try_pop() {
                        seen[v].fetch_add(1, Ordering::SeqCst);
                        popped.fetch_add(1, Ordering::SeqCst);
                    } else {
                        std::thread::yield_now();
                    }
                }
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
        assert!(seen.iter().all(|c| c.load(Ordering::SeqCst) == 1));
    }
}
