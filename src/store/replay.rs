//! How a shard writer recovers after failures, one routine for both sinks (the SQLite shard
//! writer and the ClickHouse writer); what differs between them is behind [`Sink`]:
//! - [`replay_oldest`]: the replay of the shard's oldest DLQ file (below);
//! - [`probe_when_due`]: while a readiness flag is set that nothing else will clear
//!   ([`probes_due`]), the failing DLQ disk and / or database is tried again, so `/readyz`
//!   recovers without traffic;
//! - [`Backoff`]: when replays and probes are tried again (doubling from a minimum to a maximum
//!   while they fail).
//!
//! One call of [`replay_oldest`] is one attempt at the oldest file of the shard's [`ShardDlq`]:
//! - a damaged file is set aside in `corrupt/`, a missing one forgotten; either way its items
//!   count lost (`dlq_corrupt`);
//! - otherwise the units that earlier attempts did not settle ([`Sink::settled`]) are inserted,
//!   the whole file in one insert when nothing of it is settled. A range the sink refuses for a
//!   permanent reason is bisected down to its poison units: each is written to `poison/`, handed
//!   to [`Sink::poison_found`] and counted lost (`poison`). A transient refusal, or a failing
//!   DLQ disk, ends the attempt with [`Outcome::Failed`]: the caller backs off and tries again;
//! - a finished file is removed from the DLQ, and only then do the books move: its items leave
//!   `dlq_pending`, its poison items go to `lost{poison}` and the rest to `persisted`.
//!
//! Invariants:
//! - a file's items are booked once, when the file leaves the DLQ (finished, set aside or
//!   forgotten); a failed attempt books nothing;
//! - a poison unit is counted (`poison_units`, `lost{poison}`) once, however many attempts the
//!   file takes: the sink remembers it before the attempt goes on, and [`Sink::settled`] gives it
//!   back to the next attempt, which does not insert it again;
//! - readiness: a successful insert clears the shard's `db_failing`, a transient refusal or a sink
//!   that cannot answer sets it; a failed DLQ file operation sets `dlq_failing`, and removing a
//!   replayed file clears it.

use super::ShardGauges;
use super::dlq::{self, DlqError, ShardDlq};
use crate::pipeline::Stats;
use crate::pipeline::batch::{Batch, Signal};
use crate::pipeline::stats::LostReason;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// When a failed replay or probe is tried again: after the current delay, which starts at `min`,
/// doubles with each failure up to `max` and returns to `min` after a success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Instant,
    delay: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Due at once.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { next: Instant::now(), delay: min, min, max }
    }
    pub(crate) fn is_due(&self) -> bool {
        Instant::now() >= self.next
    }
    /// When the next attempt is due.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }
    /// An attempt failed: the next waits the current delay, and the delay doubles.
    pub(crate) fn failed(&mut self) {
        self.postpone();
        self.delay = (self.delay * 2).min(self.max);
    }
    /// An attempt succeeded: the next failure waits `min` again.
    pub(crate) fn succeeded(&mut self) {
        self.delay = self.min;
    }
    /// Something else failed (a write to the same database): the next attempt waits the current
    /// delay, which does not grow.
    pub(crate) fn postpone(&mut self) {
        self.next = Instant::now() + self.delay;
    }
}

/// True while a readiness flag of shard `shard` is set that nothing else will clear: the DLQ
/// disk failed, or the database failed and no DLQ file's replay will retry it.
pub(crate) fn probes_due(stats: &Stats, shard: usize, dlq: &ShardDlq) -> bool {
    stats.dlq_failing.get(shard) || (stats.db_failing.get(shard) && dlq.is_empty())
}

/// When [`probes_due`] and the sink's [`Sink::probe_backoff`] is due: tries the failing DLQ
/// disk and / or database again, then backs off while either still fails.
pub(crate) fn probe_when_due<S: Sink>(sink: &mut S, shard: usize, stats: &Stats) {
    if !probes_due(stats, shard, sink.dlq()) || !sink.probe_backoff().is_due() {
        return;
    }
    if probe(sink, shard, stats) {
        sink.probe_backoff().succeeded();
    } else {
        sink.probe_backoff().failed();
    }
}

/// Tries the failing DLQ disk and / or database of shard `shard` again and clears each flag
/// that succeeds. Returns false while either still fails.
fn probe<S: Sink>(sink: &mut S, shard: usize, stats: &Stats) -> bool {
    let mut ok = true;
    if stats.dlq_failing.get(shard) {
        match sink.dlq().probe() {
            Ok(()) => stats.dlq_failing.set(shard, false),
            Err(e) => {
                tracing::debug!(shard, error = %e, "dlq probe failed");
                ok = false;
            }
        }
    }
    if stats.db_failing.get(shard) && sink.dlq().is_empty() {
        match sink.probe_database() {
            Ok(()) => stats.db_failing.set(shard, false),
            Err(e) => {
                tracing::debug!(shard, error = %e, "database probe failed");
                ok = false;
            }
        }
    }
    ok
}

/// Result of one replay attempt on the oldest DLQ file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The file is done (stored, its poison isolated, or set aside) and gone, or there was none.
    Finished,
    /// The sink or the DLQ disk is failing: back off and try again.
    Failed,
}

/// What earlier attempts at a file settled: none of it is inserted again.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// The whole file is stored.
    pub whole: bool,
    /// Unit ranges `(first, last)` stored.
    pub stored: Vec<(u64, u64)>,
    /// Poison units `(first, last)` already written to `poison/` and counted.
    pub poison: Vec<(u64, u64)>,
}

/// Unit range `first..=last` of a DLQ file; `whole` when it is the whole file and nothing of it
/// was settled before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Units {
    pub first: u64,
    pub last: u64,
    pub whole: bool,
}

/// Why a sink did not store a range: `permanent` when the rows themselves are refused (the same
/// rows fail again: bisect), else the sink's state (wait and retry).
#[derive(Debug)]
pub(crate) struct Refused {
    pub permanent: bool,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A sink's part of a replay and of the probes.
pub(crate) trait Sink {
    /// Tries the database with a write that fails as a group's would (the probe of a shard whose
    /// database failed while nothing is left to replay).
    fn probe_database(&mut self) -> Result<(), String>;
    /// When the next probe is due.
    fn probe_backoff(&mut self) -> &mut Backoff;
    /// The shard's DLQ.
    fn dlq(&mut self) -> &mut ShardDlq;
    /// What earlier attempts at file `file` settled. An error means the sink cannot tell now: the
    /// attempt fails and `db_failing` is set.
    fn settled(&mut self, file: &str) -> Result<Settled, String>;
    /// Stores `batches`, units `units` of file `file`, all or nothing.
    fn insert_units(&mut self, file: &str, units: Units, batches: &[Batch]) -> Result<(), Refused>;
    /// Unit `first..=last` of file `file` is poison and written to `poison/`: remember it for the
    /// next attempts ([`Sink::settled`]). An error fails the attempt and sets `db_failing`.
    fn poison_found(&mut self, file: &str, first: u64, last: u64) -> Result<(), String>;
    /// File `file` is finished and removed from the DLQ.
    fn finished(&mut self, file: &str);
}

/// Replays the oldest file of `sink`'s DLQ (shard `shard`), moving `stats` and `gauges`: see
/// the module doc.
pub(crate) fn replay_oldest<S: Sink>(
    sink: &mut S,
    shard: usize,
    stats: &Stats,
    gauges: &ShardGauges,
) -> Outcome {
    let Some(entry) = sink.dlq().oldest().cloned() else { return Outcome::Finished };
    let decoded = match sink.dlq().load(&entry) {
        Ok(d) => d,
        Err(DlqError::Damaged(why)) => {
            tracing::error!(shard, file = %entry.path.display(), why,
                "damaged dlq file; set aside in corrupt/ and counted lost");
            return match sink.dlq().set_aside_oldest() {
                Ok(_) => {
                    gauges.dlq_corrupt_files.fetch_add(1, Ordering::Relaxed);
                    book_finished(sink.dlq(), stats, gauges, [0; 3], LostReason::DlqCorrupt, entry.items);
                    Outcome::Finished
                }
                Err(e) => {
                    tracing::error!(shard, error = %e, "could not set a damaged dlq file aside");
                    stats.dlq_failing.set(shard, true);
                    Outcome::Failed
                }
            };
        }
        Err(DlqError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            // Gone (deleted by hand, or moved away by a set-aside whose fsync failed): waiting
            // would block every later file of this shard forever. Its items leave dlq_pending
            // as lost; should it come back, the sink's idempotency (SQLite's dlq_applied,
            // ClickHouse's identity keys) keeps what was stored from being stored twice.
            tracing::error!(shard, file = %entry.path.display(),
                "pending dlq file is missing; forgotten and counted lost");
            sink.dlq().forget_oldest();
            gauges.dlq_corrupt_files.fetch_add(1, Ordering::Relaxed);
            book_finished(sink.dlq(), stats, gauges, [0; 3], LostReason::DlqCorrupt, entry.items);
            return Outcome::Finished;
        }
        Err(DlqError::Io(e)) => {
            tracing::warn!(shard, error = %e, "could not read a dlq file");
            stats.dlq_failing.set(shard, true);
            return Outcome::Failed;
        }
    };
    let units = decoded.header.units;
    let id = entry.id.clone();
    let settled = match sink.settled(&id) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(shard, error = %e, "dlq replay: database unavailable");
            stats.db_failing.set(shard, true);
            return Outcome::Failed;
        }
    };
    let mut poison = settled.poison.clone();
    if !settled.whole && units > 0 {
        let covered: Vec<(u64, u64)> = settled.stored.iter().chain(&settled.poison).copied().collect();
        // Work list of unit ranges still to insert, processed front first.
        let mut work: Vec<(u64, u64)> = uncovered(0, units - 1, &covered);
        work.reverse();
        while let Some((a, b)) = work.pop() {
            let whole = a == 0 && b == units - 1 && covered.is_empty();
            let part;
            let batches: &[Batch] = if whole {
                &decoded.batches
            } else {
                part = dlq::slice_units(&decoded.batches, a, b);
                &part
            };
            match sink.insert_units(&id, Units { first: a, last: b, whole }, batches) {
                Ok(()) => stats.db_failing.set(shard, false),
                Err(e) if e.permanent && a < b => {
                    let mid = a + (b - a) / 2;
                    tracing::warn!(shard, file = %id, first = a, last = b, error = %e,
                        "dlq replay failed for a permanent reason; bisecting");
                    work.push((mid + 1, b));
                    work.push((a, mid));
                }
                Err(e) if e.permanent => {
                    tracing::error!(shard, file = %id, unit = a, error = %e,
                        "poison unit moved to the dlq's poison/ directory and counted lost");
                    if let Err(err) = sink.dlq().write_poison(batches, &id, a, &e.message) {
                        tracing::error!(shard, error = %err, "could not write a poison file");
                        stats.dlq_failing.set(shard, true);
                        return Outcome::Failed;
                    }
                    if let Err(err) = sink.poison_found(&id, a, b) {
                        tracing::warn!(shard, error = %err, "could not record a poison unit");
                        stats.db_failing.set(shard, true);
                        return Outcome::Failed;
                    }
                    gauges.poison_units.fetch_add(1, Ordering::Relaxed);
                    poison.push((a, b));
                }
                Err(e) => {
                    tracing::warn!(shard, file = %id, error = %e, "dlq replay failed; will retry");
                    stats.db_failing.set(shard, true);
                    return Outcome::Failed;
                }
            }
        }
    }
    let mut lost = [0u64; 3];
    for &(a, b) in &poison {
        for (i, n) in dlq::items_of_units(&decoded.batches, a, b).iter().enumerate() {
            lost[i] += n;
        }
    }
    if let Err(e) = sink.dlq().remove_oldest() {
        tracing::warn!(shard, error = %e, "could not delete a replayed dlq file");
        stats.dlq_failing.set(shard, true);
        return Outcome::Failed;
    }
    sink.finished(&id);
    // The file was read and removed: the DLQ disk works.
    stats.dlq_failing.set(shard, false);
    let mut persisted = entry.items;
    for (p, l) in persisted.iter_mut().zip(lost) {
        *p = p.saturating_sub(l);
    }
    gauges.dlq_replayed_files.fetch_add(1, Ordering::Relaxed);
    gauges.dlq_replayed_items.fetch_add(persisted.iter().sum::<u64>(), Ordering::Relaxed);
    book_finished(sink.dlq(), stats, gauges, persisted, LostReason::Poison, lost);
    Outcome::Finished
}

/// Books a finished DLQ file: `persisted` items stored, `lost` items lost for `reason`; both
/// leave `dlq_pending`. Then publishes the DLQ's new size.
fn book_finished(
    dlq: &ShardDlq,
    stats: &Stats,
    gauges: &ShardGauges,
    persisted: [u64; 3],
    reason: LostReason,
    lost: [u64; 3],
) {
    for s in Signal::ALL {
        let st = stats.signal(s);
        let (p, l) = (persisted[s.index()], lost[s.index()]);
        st.persisted_items.fetch_add(p, Ordering::Relaxed);
        if l > 0 {
            st.add_lost(reason, l);
        }
        st.dlq_pending_items.fetch_sub((p + l) as i64, Ordering::Relaxed);
    }
    dlq.publish(gauges);
}

/// The sub-ranges of `[a, b]` not covered by `covered`, in order.
fn uncovered(a: u64, b: u64, covered: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut c: Vec<(u64, u64)> =
        covered.iter().copied().filter(|&(x, y)| x <= y && y >= a && x <= b).collect();
    c.sort_unstable();
    let mut out = Vec::new();
    let mut next = a;
    for (x, y) in c {
        if x > next {
            out.push((next, x - 1));
        }
        if y >= next {
            match y.checked_add(1) {
                Some(n) => next = n,
                None => return out,
            }
        }
        if next > b {
            return out;
        }
    }
    if next <= b {
        out.push((next, b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_maximum_and_a_success_resets_it() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        assert!(b.is_due(), "due at once");
        let mut waits = Vec::new();
        for _ in 0..4 {
            let before = Instant::now();
            b.failed();
            waits.push(b.next().saturating_duration_since(before));
        }
        // 100, 200, 350 (capped), 350; each measured from just before the call.
        for (w, want) in waits.iter().zip([100, 200, 350, 350]) {
            assert!(*w >= ms(want) && *w < ms(want + 50), "{waits:?}");
        }
        assert!(!b.is_due());
        b.succeeded();
        let before = Instant::now();
        b.postpone();
        let w = b.next().saturating_duration_since(before);
        assert!(w >= ms(100) && w < ms(150), "a success resets the delay: {w:?}");
    }

    #[test]
    fn uncovered_ranges() {
        assert_eq!(uncovered(0, 9, &[]), vec![(0, 9)]);
        assert_eq!(uncovered(0, 9, &[(0, 4)]), vec![(5, 9)]);
        assert_eq!(uncovered(0, 9, &[(3, 4), (7, 7)]), vec![(0, 2), (5, 6), (8, 9)]);
        assert_eq!(uncovered(0, 9, &[(0, 9)]), vec![]);
        assert_eq!(uncovered(0, 9, &[(0, 3), (2, 5)]), vec![(6, 9)]);
    }
}
