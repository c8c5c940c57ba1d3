//! The pipeline's books (DESIGN 1.7), in items and batches, per signal.
//!
//! For each signal, whenever the pipeline is quiescent (and after stop):
//!
//! `submitted + dlq_recovered = persisted + dropped + rejected + lost + dlq_pending + in_flight`
//!
//! `submitted` is what reached `submit` (the server's `received` minus what its filters took, or
//! refused before submit: those terms live in the server's books). `in_flight` and `dlq_pending`
//! are tracked gauges, never derived from the other terms, so a bookkeeping bug shows as an
//! imbalance. These are plain `std` atomics with `Relaxed` ordering: they are statistics, read
//! by scrapes and tests, and order nothing.

use super::batch::Signal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Why items were rejected (the client was told; retry or permanent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Batch capacity would be passed (retryable, RetryInfo).
    QueueFull = 0,
    /// Byte capacity would be passed (retryable, RetryInfo).
    BytesFull = 1,
    /// Larger than the byte capacity: can never fit (permanent).
    TooLarge = 2,
    /// Stop has begun, or a commit-mode batch was left at the stop deadline.
    Stopping = 3,
    /// Undecodable or invalid (counted by the server's decoder), or, in commit mode, rows the
    /// database refuses for good (the client got INVALID_ARGUMENT / 400).
    Invalid = 4,
    /// Commit mode: the database failed for this batch; the client was told to retry.
    Unavailable = 5,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] =
        [Self::QueueFull, Self::BytesFull, Self::TooLarge, Self::Stopping, Self::Invalid, Self::Unavailable];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::BytesFull => "bytes_full",
            Self::TooLarge => "too_large",
            Self::Stopping => "stopping",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Why acknowledged items were lost (DESIGN 1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// Evicted from a full DLQ.
    DlqEvicted = 0,
    /// A damaged DLQ file set aside.
    DlqCorrupt = 1,
    /// Rows no database accepts, moved to `poison/`.
    Poison = 2,
    /// Could be neither committed nor spilled before the process had to exit.
    Crash = 3,
}

impl LostReason {
    pub const ALL: [LostReason; 4] = [Self::DlqEvicted, Self::DlqCorrupt, Self::Poison, Self::Crash];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DlqEvicted => "dlq_evicted",
            Self::DlqCorrupt => "dlq_corrupt",
            Self::Poison => "poison",
            Self::Crash => "crash",
        }
    }
}

/// Counters of one signal.
#[derive(Debug, Default)]
pub struct SignalStats {
    pub submitted_items: AtomicU64,
    pub persisted_items: AtomicU64,
    pub persisted_batches: AtomicU64,
    pub dropped_items: AtomicU64,
    pub dropped_batches: AtomicU64,
    pub rejected_items: [AtomicU64; 6],
    pub rejected_batches: [AtomicU64; 6],
    pub lost_items: [AtomicU64; 4],
    pub in_flight_items: AtomicI64,
    pub dlq_pending_items: AtomicI64,
    pub dlq_recovered_items: AtomicU64,
    pub spilled_items: AtomicU64,
    pub spilled_batches: AtomicU64,
    /// Logs synthesized from spans (traces signal), outside the books.
    pub synthesized_logs: AtomicU64,
    /// End-to-end (receive → commit) latency, microseconds.
    pub e2e_latency_us: Mutex<Option<hdr::Histogram>>,
}

/// A small wrapper so the histogram type stays an implementation detail.
pub mod hdr {
    /// Largest latency recorded: one hour, in microseconds; longer samples saturate.
    pub const MAX_US: u64 = 3_600_000_000;

    /// Latency histogram in microseconds, 1 µs to [`MAX_US`], 3 significant digits (a fixed size
    /// of about 200 KB).
    #[derive(Debug, Clone)]
    pub struct Histogram(Option<hdrhistogram::Histogram<u64>>);

    impl Histogram {
        pub fn new() -> Self {
            // Only fails for invalid bounds, and these are constants that are valid.
            Self(hdrhistogram::Histogram::new_with_bounds(1, MAX_US, 3).ok())
        }
        pub fn record(&mut self, us: u64) {
            if let Some(h) = &mut self.0 {
                h.saturating_record(us.max(1));
            }
        }
        pub fn inner(&self) -> Option<&hdrhistogram::Histogram<u64>> {
            self.0.as_ref()
        }
        pub fn len(&self) -> u64 {
            self.0.as_ref().map_or(0, |h| h.len())
        }
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
        /// Value at quantile `q` (0..=1) in microseconds; 0 when empty.
        pub fn quantile_us(&self, q: f64) -> u64 {
            self.0.as_ref().map_or(0, |h| h.value_at_quantile(q))
        }
    }

    impl Default for Histogram {
        fn default() -> Self {
            Self::new()
        }
    }
}

impl SignalStats {
    pub fn rejected(&self, r: RejectReason) -> u64 {
        self.rejected_items[r as usize].load(Ordering::Relaxed)
    }
    pub fn lost(&self, r: LostReason) -> u64 {
        self.lost_items[r as usize].load(Ordering::Relaxed)
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected_items.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
    pub fn lost_total(&self) -> u64 {
        self.lost_items.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn add_rejected(&self, r: RejectReason, items: u64, batches: u64) {
        self.rejected_items[r as usize].fetch_add(items, Ordering::Relaxed);
        self.rejected_batches[r as usize].fetch_add(batches, Ordering::Relaxed);
    }
    pub fn add_lost(&self, r: LostReason, items: u64) {
        self.lost_items[r as usize].fetch_add(items, Ordering::Relaxed);
    }

    /// Records one end-to-end latency sample.
    pub fn record_e2e(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let mut h = self.e2e_latency_us.lock().unwrap_or_else(|p| p.into_inner());
        h.get_or_insert_with(hdr::Histogram::new).record(us);
    }

    /// A copy of the end-to-end latency histogram (empty when nothing was committed yet).
    pub fn e2e_snapshot(&self) -> hdr::Histogram {
        let h = self.e2e_latency_us.lock().unwrap_or_else(|p| p.into_inner());
        h.clone().unwrap_or_default()
    }

    /// The books of this signal at one moment (not atomic as a whole: exact when quiescent).
    pub fn books(&self) -> Books {
        Books {
            submitted: self.submitted_items.load(Ordering::Relaxed),
            dlq_recovered: self.dlq_recovered_items.load(Ordering::Relaxed),
            persisted: self.persisted_items.load(Ordering::Relaxed),
            dropped: self.dropped_items.load(Ordering::Relaxed),
            rejected: self.rejected_total(),
            lost: self.lost_total(),
            dlq_pending: self.dlq_pending_items.load(Ordering::Relaxed),
            in_flight: self.in_flight_items.load(Ordering::Relaxed),
        }
    }
}

/// One signal's books at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Books {
    pub submitted: u64,
    pub dlq_recovered: u64,
    pub persisted: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub lost: u64,
    pub dlq_pending: i64,
    pub in_flight: i64,
}

impl Books {
    /// True when `submitted + dlq_recovered = persisted + dropped + rejected + lost + dlq_pending +
    /// in_flight`.
    pub fn balanced(&self) -> bool {
        let left = i128::from(self.submitted) + i128::from(self.dlq_recovered);
        let right = i128::from(self.persisted)
            + i128::from(self.dropped)
            + i128::from(self.rejected)
            + i128::from(self.lost)
            + i128::from(self.dlq_pending)
            + i128::from(self.in_flight);
        left == right
    }
}

/// Counters of every signal, shared by submitters, writers and the store (DLQ replay).
#[derive(Debug, Default)]
pub struct Stats {
    signals: [SignalStats; Signal::COUNT],
    /// Writer transaction time (the `BatchWriter::write` call of a group that committed), µs.
    commit_us: Mutex<Option<hdr::Histogram>>,
    /// Rows (all tables) per committed group.
    rows_per_commit: Mutex<Option<hdr::Histogram>>,
    /// Groups that committed / failed.
    pub groups_committed: AtomicU64,
    pub groups_failed: AtomicU64,
    /// Shards whose database is failing: set when a group (or a DLQ replay, or a probe) fails
    /// for the database's state, cleared when one commits. Per shard, so one healthy shard's
    /// commits cannot hide another's failure (for `/readyz`).
    pub db_failing: ShardFlags,
    /// Shards whose DLQ disk is failing: set when a spill or a DLQ file operation fails, cleared
    /// when one succeeds (for `/readyz`).
    pub dlq_failing: ShardFlags,
}

/// One flag per shard (bit i: shard i), for readiness. `Relaxed`: each flag is a status that
/// orders nothing.
#[derive(Debug, Default)]
pub struct ShardFlags(AtomicU64);

impl ShardFlags {
    /// The bit of `shard` (shards are at most `MAX_SHARDS` = 10, far under 64).
    fn bit(shard: usize) -> u64 {
        1u64 << (shard % 64)
    }
    /// Sets (`on`) or clears shard `shard`'s flag.
    pub fn set(&self, shard: usize, on: bool) {
        if on {
            self.0.fetch_or(Self::bit(shard), Ordering::Relaxed);
        } else {
            self.0.fetch_and(!Self::bit(shard), Ordering::Relaxed);
        }
    }
    pub fn get(&self, shard: usize) -> bool {
        self.0.load(Ordering::Relaxed) & Self::bit(shard) != 0
    }
    /// True when any shard's flag is set.
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }
}

impl Stats {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn signal(&self, s: Signal) -> &SignalStats {
        &self.signals[s.index()]
    }

    /// Records one committed group: its write time and its rows.
    pub fn record_commit(&self, took: Duration, rows: usize) {
        self.groups_committed.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut h = self.commit_us.lock().unwrap_or_else(|p| p.into_inner());
        h.get_or_insert_with(hdr::Histogram::new).record(us);
        drop(h);
        let mut h = self.rows_per_commit.lock().unwrap_or_else(|p| p.into_inner());
        h.get_or_insert_with(hdr::Histogram::new).record(rows as u64);
    }

    /// Copy of the commit-time histogram (µs).
    pub fn commit_time_snapshot(&self) -> hdr::Histogram {
        self.commit_us.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    /// Copy of the rows-per-commit histogram.
    pub fn rows_per_commit_snapshot(&self) -> hdr::Histogram {
        self.rows_per_commit.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }
}
