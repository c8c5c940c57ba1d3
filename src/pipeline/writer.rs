//! Writer threads: one per shard. Each drains its shard's lanes, coalesces batches into a group
//! (up to `INGEST_WRITER_MAX_ROWS` rows or `INGEST_WRITER_MAX_DELAY_MS`, and no longer than its
//! lanes have batches: it never lingers on empty lanes), and hands the group to its
//! [`BatchWriter`] in one call, which persists it in one transaction in FK order.
//!
//! Failure handling (DESIGN 1.3):
//! - a write error or a panic in the writer is caught; the thread goes on;
//! - commit-mode batches (with a completion) are retried one by one, each alone, before any
//!   request is answered, so only the failing requests get the error; they never go to the DLQ;
//! - async batches go to [`BatchWriter::spill`] (the DLQ). When that fails too, the writer keeps
//!   the group and retries database and spill with backoff, popping nothing more, so admission
//!   throttles instead of anything acknowledged being dropped. Only when the process must exit
//!   (spill mode after the drain deadline) and the spill still fails are the items counted lost
//!   (`reason="crash"`);
//! - after a failed group (async mode) the writer pauses with backoff before trying the database
//!   again, so a failing database gets one group per pause (one DLQ file, not one per request);
//!   the pause ends early at stop or when the queue reaches half the soft threshold.

use super::batch::{Batch, LogRow, MetricPointRow, Rows, Signal, SpanRow, TraceRow};
use super::completion::CommitError;
use super::core::Core;
use super::stats::{LostReason, RejectReason};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// First backoff when both the database and the spill fail; doubles up to [`MAX_BACKOFF`].
#[cfg(not(otelring_loom))]
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between retries of a failing database and DLQ (well under clients' 10 s export
/// timeout, so a recovered disk is used quickly).
#[cfg(not(otelring_loom))]
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Under loom every backoff is an hour: a loom execution must not depend on real time, so in the
/// models a pause ends only through a wake-up (stop, drain deadline, a full queue), never by
/// running out, and a missing wake-up shows as a deadlock.
#[cfg(otelring_loom)]
pub const MIN_BACKOFF: Duration = Duration::from_secs(3600);
#[cfg(otelring_loom)]
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// A pause after a failed group ends once any signal's queue is this share of the soft
/// threshold full, so the pause itself never pushes clients into the shedding zone.
pub const PAUSE_FULLNESS_SHARE: f64 = 0.5;

/// Why a group could not be written or spilled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The database refused the transaction for its state (I/O error, disk full, read-only, a
    /// node down...): the same rows may succeed later.
    #[error("database error: {0}")]
    Database(String),
    /// The database refuses these rows for good (a constraint, a value too big, a schema
    /// mismatch): the same rows fail the same way again. Async batches still go to the DLQ, whose
    /// replay isolates the refused units as poison; a commit-mode client is told not to retry.
    #[error("database refuses the rows: {0}")]
    Refused(String),
    /// The failure sink (DLQ) could not keep the batches.
    #[error("dead-letter queue error: {0}")]
    Spill(String),
    /// The writer or sink panicked; the panic was caught.
    #[error("writer panicked: {0}")]
    Panicked(String),
    /// No failure sink is configured.
    #[error("no failure sink configured")]
    NoSink,
}

/// A coalesced group of batches, handed to the [`BatchWriter`] in one call.
#[derive(Debug, Default)]
pub struct Group {
    batches: Vec<Batch>,
    rows: usize,
}

impl Group {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, b: Batch) {
        self.rows += b.rows.row_count();
        self.batches.push(b);
    }
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }
    pub fn into_batches(self) -> Vec<Batch> {
        self.batches
    }
    pub fn len(&self) -> usize {
        self.batches.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
    /// Rows of every table in the group.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Trace rows of every traces batch (first in FK order).
    pub fn trace_rows(&self) -> impl Iterator<Item = &TraceRow> {
        self.batches
            .iter()
            .flat_map(|b| match &b.rows {
                Rows::Traces(g) => Some(g.iter().map(|g| &g.trace)),
                _ => None,
            })
            .flatten()
    }
    /// Spans (second).
    pub fn spans(&self) -> impl Iterator<Item = &SpanRow> {
        self.batches
            .iter()
            .flat_map(|b| match &b.rows {
                Rows::Traces(g) => Some(g.iter().flat_map(|g| g.spans.iter())),
                _ => None,
            })
            .flatten()
    }
    /// Logs (third): those synthesized from spans, then log records.
    pub fn logs(&self) -> impl Iterator<Item = &LogRow> {
        let synthesized = self
            .batches
            .iter()
            .flat_map(|b| match &b.rows {
                Rows::Traces(g) => Some(g.iter().flat_map(|g| g.logs.iter())),
                _ => None,
            })
            .flatten();
        let records = self
            .batches
            .iter()
            .flat_map(|b| match &b.rows {
                Rows::Logs(l) => Some(l.iter()),
                _ => None,
            })
            .flatten();
        synthesized.chain(records)
    }
    /// Metric points (last).
    pub fn metric_points(&self) -> impl Iterator<Item = &MetricPointRow> {
        self.batches
            .iter()
            .flat_map(|b| match &b.rows {
                Rows::Metrics(m) => Some(m.iter()),
                _ => None,
            })
            .flatten()
    }
    /// Every row in FK order: trace rows, spans, logs, metric points.
    pub fn rows_in_fk_order(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.trace_rows()
            .map(RowRef::Trace)
            .chain(self.spans().map(RowRef::Span))
            .chain(self.logs().map(RowRef::Log))
            .chain(self.metric_points().map(RowRef::MetricPoint))
    }
}

impl From<Vec<Batch>> for Group {
    fn from(batches: Vec<Batch>) -> Self {
        let rows = batches.iter().map(|b| b.rows.row_count()).sum();
        Self { batches, rows }
    }
}

/// A borrowed row of any table.
#[derive(Clone, Copy, Debug)]
pub enum RowRef<'a> {
    Trace(&'a TraceRow),
    Span(&'a SpanRow),
    Log(&'a LogRow),
    MetricPoint(&'a MetricPointRow),
}

/// Persists groups for one shard. Implemented by the SQLite shard writer; tests use in-memory
/// ones. Called only from that shard's writer thread.
pub trait BatchWriter: Send {
    /// Persists the whole group in ONE transaction, in FK order (trace rows, spans, logs, metric
    /// points: see [`Group::rows_in_fk_order`]), or nothing of it.
    fn write(&mut self, group: &Group) -> Result<(), WriteError>;

    /// The failure sink: keeps batches that could not be written (the DLQ), to be replayed later.
    /// Called with async-mode batches only. The default has no sink.
    fn spill(&mut self, _batches: &[Batch], _cause: &WriteError) -> Result<(), WriteError> {
        Err(WriteError::NoSink)
    }

    /// Work between groups (DLQ replay, retention, checkpoints). Returns how soon it wants to be
    /// called again while the lanes stay idle; `None` lets an idle writer sleep until a push.
    fn maintain(&mut self) -> Option<Duration> {
        None
    }

    /// How long, after its first row, a group may wait on empty lanes for more rows before it is
    /// written while it holds fewer than `INGEST_WRITER_MAX_ROWS`. For a sink whose every write
    /// has a fixed cost on the far side (a ClickHouse insert makes a part: files, then merges),
    /// fewer larger writes. Zero (the default, the SQLite store): a group is written as soon as
    /// the lanes are empty. Never waited for once stop has begun, nor for a group holding a
    /// commit-mode batch: its client is waiting, and group commit (what arrives during the
    /// previous write) batches a loaded commit mode without adding latency.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs shard `shard`'s writer loop on the calling thread until stop has begun and every reserved
/// batch has been popped and written or spilled. [`super::Pipeline::start`] runs it on a named,
/// optionally pinned thread; the loom models run it on a model thread.
pub fn run_writer(shard: usize, core: Arc<Core>, sink: Box<dyn BatchWriter>) {
    Writer { shard, core, sink, maintenance_due: None, fail_backoff: MIN_BACKOFF }.run();
}

/// One writer thread's state.
struct Writer {
    shard: usize,
    core: Arc<Core>,
    sink: Box<dyn BatchWriter>,
    /// When `maintain` wants to run next (`None`: only after the next group or spill).
    maintenance_due: Option<Instant>,
    /// Pause after the next failed group; doubles to [`MAX_BACKOFF`], reset by a commit.
    fail_backoff: Duration,
}

impl Writer {
    /// The thread body: runs until stop has begun and every reserved batch has been popped and
    /// written or spilled.
    fn run(mut self) {
        // Maintenance (DLQ replay, retention, checkpoints, probes) runs at start, after every
        // group (a write changes what is due: it can take the WAL over its limit, or leave the
        // database failing with nothing queued to retry it), and whenever the sink's requested
        // delay has passed: between groups under load, on a timed wake-up when idle.
        self.maintenance_due = Some(Instant::now());
        loop {
            if !self.core.is_stopping() && self.maintenance_due.is_some_and(|d| Instant::now() >= d) {
                self.maintenance_due = self.maintain().map(|d| Instant::now() + d);
            }
            let group = self.collect();
            if !group.is_empty() {
                if self.core.spill_now() {
                    self.spill_group(group, &WriteError::Spill("drain deadline passed".into()));
                } else {
                    self.process(group);
                }
                continue;
            }
            if self.core.drained() {
                break;
            }
            let timeout = if self.core.is_stopping() {
                None
            } else {
                self.maintenance_due.map(|d| d.saturating_duration_since(Instant::now()))
            };
            let lanes = self.core.lanes(self.shard);
            let core = &self.core;
            lanes.wake.wait(|| lanes.has_batches() || core.drained() || core.spill_now(), timeout);
        }
    }

    fn maintain(&mut self) -> Option<Duration> {
        match catch_unwind(AssertUnwindSafe(|| self.sink.maintain())) {
            Ok(next) => next,
            Err(p) => {
                tracing::error!(shard = self.shard, panic = %panic_message(p.as_ref()), "writer maintenance panicked");
                Some(MAX_BACKOFF)
            }
        }
    }

    /// Pops batches round-robin over the shard's lanes until the group holds `writer_max_rows`
    /// rows, or `writer_max_delay` (or the sink's longer [`BatchWriter::linger`]) has passed since
    /// the first pop, or the lanes are empty and the sink's linger has passed too (at once for a
    /// sink without one, or when a client waits on a batch of the group). While it lingers the
    /// writer sleeps on its lanes' wake-up: a push, stop or the drain deadline wakes it.
    fn collect(&self) -> Group {
        let cfg = self.core.config();
        let linger = self.sink.linger();
        let max_delay = cfg.writer_max_delay.max(linger);
        let mut group = Group::new();
        let mut started: Option<Instant> = None;
        let mut client_waits = false;
        'outer: loop {
            let mut any = false;
            for s in Signal::ALL {
                if let Some(b) = self.core.pop(self.shard, s) {
                    started.get_or_insert_with(Instant::now);
                    client_waits |= b.completion.is_some();
                    group.push(b);
                    any = true;
                    if group.rows() >= cfg.writer_max_rows {
                        break 'outer;
                    }
                }
            }
            let Some(first) = started else { break };
            if any {
                if first.elapsed() >= max_delay {
                    break;
                }
                continue;
            }
            // The lanes are empty: linger for a fuller group, unless stopping or a client waits.
            let left = linger.saturating_sub(first.elapsed());
            if left.is_zero() || client_waits || self.core.is_stopping() || self.core.spill_now() {
                break;
            }
            let lanes = self.core.lanes(self.shard);
            let core = &self.core;
            lanes.wake.wait(|| lanes.has_batches() || core.is_stopping() || core.spill_now(), Some(left));
        }
        group
    }

    fn write(&mut self, group: &Group) -> Result<(), WriteError> {
        match catch_unwind(AssertUnwindSafe(|| self.sink.write(group))) {
            Ok(r) => r,
            Err(p) => {
                let msg = panic_message(p.as_ref());
                tracing::error!(shard = self.shard, panic = %msg, "writer panicked; the group goes to the failure path");
                Err(WriteError::Panicked(msg))
            }
        }
    }

    fn process(&mut self, group: Group) {
        let start = Instant::now();
        match self.write(&group) {
            Ok(()) => {
                self.core.stats().record_commit(start.elapsed(), group.rows());
                self.core.stats().db_failing.set(self.shard, false);
                self.fail_backoff = MIN_BACKOFF;
                self.committed(group.into_batches());
            }
            Err(e) => {
                self.core.stats().groups_failed.fetch_add(1, Ordering::Relaxed);
                self.core.stats().db_failing.set(self.shard, true);
                self.failed(group, e);
                self.pause_after_failure();
            }
        }
        self.maintenance_due = Some(Instant::now());
    }

    /// Async mode, after a failed group: waits `fail_backoff` before the next group (batches
    /// gather in the lanes meanwhile and go as one group), so a failing database is retried with
    /// backoff and the DLQ gets one file per pause, not one per request (its file cap would
    /// otherwise be used up in seconds and acknowledged items evicted). Ends early at stop, at the
    /// drain deadline, or once a queue is [`PAUSE_FULLNESS_SHARE`] of the soft threshold full.
    /// Commit mode never pauses (nothing is spilled; its clients are answered at once).
    fn pause_after_failure(&mut self) {
        let cfg = self.core.config();
        if cfg.commit_mode {
            return;
        }
        let until = Instant::now() + self.fail_backoff;
        self.fail_backoff = (self.fail_backoff * 2).min(MAX_BACKOFF);
        let limit = cfg.soft_threshold * PAUSE_FULLNESS_SHARE;
        let core = &self.core;
        let over = || {
            core.is_stopping()
                || core.spill_now()
                || Signal::ALL.iter().any(|&s| core.admission(s).fullness() >= limit)
        };
        let lanes = core.lanes(self.shard);
        while !over() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            lanes.wake.wait(over, Some(left));
        }
    }

    /// Books a committed batch and answers its request.
    fn committed(&self, batches: Vec<Batch>) {
        let now = Instant::now();
        for b in batches {
            let sig = b.signal();
            let st = self.core.stats().signal(sig);
            st.persisted_items.fetch_add(b.items, Ordering::Relaxed);
            st.persisted_batches.fetch_add(1, Ordering::Relaxed);
            st.in_flight_items.fetch_sub(b.items as i64, Ordering::Relaxed);
            st.record_e2e(now.saturating_duration_since(b.received.instant));
            self.core.release_bytes(sig, b.est_bytes);
            if let Some(c) = b.completion {
                c.resolve(Ok(()));
            }
        }
    }

    /// Books a commit-mode batch the client is told to retry.
    fn refused(&self, b: Batch, reason: RejectReason, err: CommitError) {
        let sig = b.signal();
        let st = self.core.stats().signal(sig);
        st.in_flight_items.fetch_sub(b.items as i64, Ordering::Relaxed);
        st.add_rejected(reason, b.items, 1);
        self.core.release_bytes(sig, b.est_bytes);
        if let Some(c) = b.completion {
            c.resolve(Err(err));
        }
    }

    fn failed(&mut self, group: Group, err: WriteError) {
        tracing::warn!(shard = self.shard, batches = group.len(), error = %err, "group write failed");
        let (commit, spill): (Vec<Batch>, Vec<Batch>) =
            group.into_batches().into_iter().partition(|b| b.completion.is_some());
        // Commit mode: retry each batch alone, so only the failing requests get the error.
        let single = commit.len() > 1 || !spill.is_empty();
        for b in commit {
            if !single {
                self.refused(b, reject_reason(&err), commit_error(&err));
                continue;
            }
            let one = Group::from(vec![b]);
            match self.write(&one) {
                Ok(()) => self.committed(one.into_batches()),
                Err(e) => {
                    for b in one.into_batches() {
                        self.refused(b, reject_reason(&e), commit_error(&e));
                    }
                }
            }
        }
        if !spill.is_empty() {
            self.spill_group(Group::from(spill), &err);
        }
    }

    /// Hands async batches to the failure sink; while it fails too, keeps them and retries the
    /// database and the sink with backoff (popping nothing more, so admission throttles).
    fn spill_group(&mut self, group: Group, cause: &WriteError) {
        let (commit, spill): (Vec<Batch>, Vec<Batch>) =
            group.into_batches().into_iter().partition(|b| b.completion.is_some());
        // Commit-mode batches left at the drain deadline: the client is told to retry.
        for b in commit {
            self.refused(b, RejectReason::Stopping, CommitError::Stopped);
        }
        if spill.is_empty() {
            return;
        }
        let group = Group::from(spill);
        let mut cause = cause.clone();
        let mut backoff = MIN_BACKOFF;
        loop {
            let spilled = catch_unwind(AssertUnwindSafe(|| self.sink.spill(group.batches(), &cause)))
                .unwrap_or_else(|p| Err(WriteError::Panicked(panic_message(p.as_ref()))));
            match spilled {
                Ok(()) => {
                    self.spilled(group.into_batches());
                    return;
                }
                Err(e) => {
                    if self.core.spill_now() {
                        tracing::error!(shard = self.shard, error = %e, "spill failed at exit; items lost");
                        self.lost(group.into_batches(), LostReason::Crash);
                        return;
                    }
                    tracing::error!(shard = self.shard, error = %e, backoff_ms = backoff.as_millis() as u64,
                        "spill failed; keeping the group and retrying");
                }
            }
            let lanes = self.core.lanes(self.shard);
            let core = &self.core;
            lanes.wake.wait(|| core.spill_now(), Some(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if !self.core.spill_now() {
                match self.write(&group) {
                    Ok(()) => {
                        self.core.stats().db_failing.set(self.shard, false);
                        self.fail_backoff = MIN_BACKOFF;
                        self.committed(group.into_batches());
                        return;
                    }
                    Err(e) => cause = e,
                }
            }
        }
    }

    fn spilled(&mut self, batches: Vec<Batch>) {
        // The sink now holds dead letters to replay: let its maintenance run soon.
        self.maintenance_due = Some(Instant::now());
        for b in batches {
            let sig = b.signal();
            let st = self.core.stats().signal(sig);
            st.spilled_items.fetch_add(b.items, Ordering::Relaxed);
            st.spilled_batches.fetch_add(1, Ordering::Relaxed);
            st.dlq_pending_items.fetch_add(b.items as i64, Ordering::Relaxed);
            st.in_flight_items.fetch_sub(b.items as i64, Ordering::Relaxed);
            self.core.release_bytes(sig, b.est_bytes);
        }
    }

    fn lost(&self, batches: Vec<Batch>, reason: LostReason) {
        for b in batches {
            let sig = b.signal();
            let st = self.core.stats().signal(sig);
            st.add_lost(reason, b.items);
            st.in_flight_items.fetch_sub(b.items as i64, Ordering::Relaxed);
            self.core.release_bytes(sig, b.est_bytes);
        }
    }
}

fn commit_error(e: &WriteError) -> CommitError {
    match e {
        WriteError::Panicked(_) => CommitError::Panicked,
        WriteError::Refused(why) => CommitError::Refused(why.clone()),
        other => CommitError::Database(other.to_string()),
    }
}

/// How the books count a commit-mode batch the database did not take: refused for good counts as
/// invalid input (the client is told not to retry), anything else as unavailable (retry).
fn reject_reason(e: &WriteError) -> RejectReason {
    match e {
        WriteError::Refused(_) => RejectReason::Invalid,
        _ => RejectReason::Unavailable,
    }
}
