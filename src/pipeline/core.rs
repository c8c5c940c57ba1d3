//! The pipeline core: admission words, lanes and the submit / pop / stop protocol, with no thread
//! of its own. [`super::Pipeline`] adds the writer threads; the loom models drive this type
//! directly from model threads, so they check the code that ships.

use super::admission::{Admission, Decision, Need};
use super::batch::{Batch, LogRow, MetricPointRow, Received, Request, Rows, Signal, TraceGroup};
use super::completion::{CommitWaiter, completion};
use super::lane::ShardLanes;
use super::route;
use super::stats::{RejectReason, Stats};
use crate::config::PipelineConfig;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Mutant, mutant};
use std::sync::Arc;

/// What `submit` decided for one request (DESIGN 1.2). Items are spans, log records or points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything admitted (also an empty request: a no-op with `items == 0`).
    Accepted { items: u64 },
    /// Soft zone: the priority part admitted, the healthy part dropped (OTLP partial success).
    SoftDropped { kept: u64, dropped: u64 },
    /// The batch capacity is reached: retry later (RESOURCE_EXHAUSTED + RetryInfo / 429).
    RejectedFull { items: u64 },
    /// The byte capacity is reached: retry later.
    RejectedBytes { items: u64 },
    /// Larger than the byte capacity: can never fit (permanent: 413 / no RetryInfo).
    TooLarge { items: u64 },
    /// Stop has begun (UNAVAILABLE / 503).
    Stopped { items: u64 },
}

impl Outcome {
    /// Items the pipeline took responsibility for.
    pub fn accepted_items(&self) -> u64 {
        match *self {
            Outcome::Accepted { items } => items,
            Outcome::SoftDropped { kept, .. } => kept,
            _ => 0,
        }
    }
}

/// The answer of `submit`: the outcome, and in commit mode the handle to wait on.
#[derive(Debug)]
pub struct Submission {
    pub outcome: Outcome,
    /// `Some` in commit mode when something was admitted: resolves after the writers committed
    /// (or failed) every admitted batch. `None` in async mode or when nothing was admitted.
    pub commit: Option<CommitWaiter>,
}

/// One unit of routing and priority: a trace group, a log record or a metric point.
trait Unit: Sized {
    fn shard(&self, shards: usize) -> usize;
    fn priority(&self) -> bool;
    fn items(&self) -> u64;
    fn heap(&self) -> usize;
    fn into_rows(v: Vec<Self>) -> Rows;
}

impl Unit for TraceGroup {
    fn shard(&self, shards: usize) -> usize {
        route::shard_for_trace(&self.trace.tenant_id, &self.trace.trace_id, shards)
    }
    fn priority(&self) -> bool {
        self.trace.priority
    }
    fn items(&self) -> u64 {
        self.spans.len() as u64
    }
    fn heap(&self) -> usize {
        self.heap_bytes()
    }
    fn into_rows(v: Vec<Self>) -> Rows {
        Rows::Traces(v)
    }
}

impl Unit for LogRow {
    fn shard(&self, shards: usize) -> usize {
        match &self.trace_id {
            Some(t) => route::shard_for_trace(&self.tenant_id, t, shards),
            None => route::shard_for_service(&self.tenant_id, &self.service_name, shards),
        }
    }
    fn priority(&self) -> bool {
        self.priority
    }
    fn items(&self) -> u64 {
        1
    }
    fn heap(&self) -> usize {
        self.heap_bytes()
    }
    fn into_rows(v: Vec<Self>) -> Rows {
        Rows::Logs(v)
    }
}

impl Unit for MetricPointRow {
    fn shard(&self, shards: usize) -> usize {
        route::shard_for_service(&self.tenant_id, &self.service_name, shards)
    }
    fn priority(&self) -> bool {
        false // DESIGN 1.2: metric points are never priority.
    }
    fn items(&self) -> u64 {
        1
    }
    fn heap(&self) -> usize {
        self.heap_bytes()
    }
    fn into_rows(v: Vec<Self>) -> Rows {
        Rows::Metrics(v)
    }
}

/// The rows of one request bound for one shard, with their totals.
struct Part<U> {
    shard: usize,
    units: Vec<U>,
    items: u64,
    heap: usize,
    pri_items: u64,
    pri_heap: usize,
    pri_units: usize,
}

impl<U: Unit> Part<U> {
    fn new(shard: usize, units: Vec<U>) -> Self {
        Self { shard, units, items: 0, heap: 0, pri_items: 0, pri_heap: 0, pri_units: 0 }
    }
    fn account(&mut self, u: &U) {
        let (items, heap) = (u.items(), u.heap());
        self.items += items;
        self.heap += heap;
        if u.priority() {
            self.pri_items += items;
            self.pri_heap += heap;
            self.pri_units += 1;
        }
    }
    /// The batch's own size plus the vector it holds (its capacity stays held after a split).
    fn fixed(&self) -> usize {
        std::mem::size_of::<Batch>() + self.units.capacity() * std::mem::size_of::<U>()
    }
    fn est_all(&self) -> u64 {
        (self.fixed() + self.heap) as u64
    }
    fn est_pri(&self) -> u64 {
        (self.fixed() + self.pri_heap) as u64
    }
}

/// Splits units by shard in one pass, summing items and estimated bytes (all and priority).
fn split<U: Unit>(units: Vec<U>, shards: usize) -> Vec<Part<U>> {
    if shards <= 1 {
        // One shard: keep the decoder's vector as is (no move per unit).
        let mut p = Part::new(0, Vec::new());
        for u in &units {
            p.account(u);
        }
        p.units = units;
        return vec![p];
    }
    let guess = units.len() / shards + 1;
    let mut parts: Vec<Part<U>> = (0..shards).map(|s| Part::new(s, Vec::with_capacity(guess))).collect();
    for u in units {
        let s = u.shard(shards);
        // `shard` is `key % shards`, always in range.
        if let Some(p) = parts.get_mut(s) {
            p.account(&u);
            p.units.push(u);
        }
    }
    parts.retain(|p| !p.units.is_empty());
    parts
}

/// Admission, lanes and stop flags shared by submitters and writers.
#[derive(Debug)]
pub struct Core {
    cfg: PipelineConfig,
    admission: [Admission; Signal::COUNT],
    lanes: Box<[ShardLanes]>,
    stats: Arc<Stats>,
    /// Set when the drain deadline passed (or a second signal came): writers spill what is left
    /// to the failure sink instead of writing it.
    spill_now: AtomicBool,
}

impl Core {
    /// A core for `cfg` (validated by the caller: see [`PipelineConfig::validate`]).
    pub fn new(cfg: PipelineConfig, stats: Arc<Stats>) -> Self {
        let admission =
            Signal::ALL.map(|_| Admission::new(cfg.queue_size, cfg.max_bytes, cfg.soft_threshold));
        let slots = cfg.ring_slots();
        let lanes = (0..cfg.shards).map(|_| ShardLanes::new(slots)).collect();
        Self { cfg, admission, lanes, stats, spill_now: AtomicBool::new(false) }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
    pub fn admission(&self, s: Signal) -> &Admission {
        &self.admission[s.index()]
    }
    pub fn lanes(&self, shard: usize) -> &ShardLanes {
        &self.lanes[shard]
    }
    pub fn shards(&self) -> usize {
        self.lanes.len()
    }

    /// Submits one request: split by shard, decide the zone, reserve with one CAS, push, wake.
    pub fn submit(&self, req: Request) -> Submission {
        let Request { rows, received } = req;
        match rows {
            Rows::Traces(v) => self.submit_units(Signal::Traces, v, received),
            Rows::Logs(v) => self.submit_units(Signal::Logs, v, received),
            Rows::Metrics(v) => self.submit_units(Signal::Metrics, v, received),
        }
    }

    fn submit_units<U: Unit>(&self, signal: Signal, units: Vec<U>, received: Received) -> Submission {
        let stats = self.stats.signal(signal);
        if units.is_empty() {
            // An empty request is a no-op: nothing reserved, nothing to wait for.
            let commit = self.cfg.commit_mode.then(|| completion(0).0);
            return Submission { outcome: Outcome::Accepted { items: 0 }, commit };
        }
        let mut parts = split(units, self.cfg.shards);
        let total_items: u64 = parts.iter().map(|p| p.items).sum();
        stats.submitted_items.fetch_add(total_items, Ordering::Relaxed);
        let all = Need { batches: parts.len() as u64, bytes: parts.iter().map(Part::est_all).sum() };
        let priority = Need {
            batches: parts.iter().filter(|p| p.pri_units > 0).count() as u64,
            bytes: parts.iter().filter(|p| p.pri_units > 0).map(Part::est_pri).sum(),
        };
        let reject = |reason: RejectReason| {
            stats.add_rejected(reason, total_items, all.batches);
        };
        let (outcome, kept_parts) = match self.admission(signal).reserve(all, priority) {
            Decision::AcceptAll => (Outcome::Accepted { items: total_items }, parts),
            Decision::PriorityOnly => {
                let kept: u64 = parts.iter().map(|p| p.pri_items).sum();
                let dropped = total_items - kept;
                let dropped_batches = parts.iter().filter(|p| p.pri_items < p.items).count() as u64;
                stats.dropped_items.fetch_add(dropped, Ordering::Relaxed);
                stats.dropped_batches.fetch_add(dropped_batches, Ordering::Relaxed);
                parts.retain(|p| p.pri_units > 0);
                for p in &mut parts {
                    if p.pri_units < p.units.len() {
                        p.units.retain(U::priority);
                    }
                    p.items = p.pri_items;
                    p.heap = p.pri_heap;
                }
                // A request that is all priority loses nothing: it is simply accepted.
                let outcome = if dropped == 0 {
                    Outcome::Accepted { items: kept }
                } else {
                    Outcome::SoftDropped { kept, dropped }
                };
                (outcome, parts)
            }
            Decision::QueueFull => {
                reject(RejectReason::QueueFull);
                return Submission { outcome: Outcome::RejectedFull { items: total_items }, commit: None };
            }
            Decision::BytesFull => {
                reject(RejectReason::BytesFull);
                return Submission { outcome: Outcome::RejectedBytes { items: total_items }, commit: None };
            }
            Decision::TooLarge => {
                reject(RejectReason::TooLarge);
                return Submission { outcome: Outcome::TooLarge { items: total_items }, commit: None };
            }
            Decision::Stopped => {
                reject(RejectReason::Stopping);
                return Submission { outcome: Outcome::Stopped { items: total_items }, commit: None };
            }
        };
        // Reserved: from here nothing can fail. Count in-flight before the pushes, so a writer
        // that commits at once never drives the gauge below zero.
        let kept_items: u64 = kept_parts.iter().map(|p| p.items).sum();
        stats.in_flight_items.fetch_add(kept_items as i64, Ordering::Relaxed);
        let (commit, mut completions) = if self.cfg.commit_mode {
            let (w, parts) = completion(kept_parts.len());
            (Some(w), parts)
        } else {
            (None, Vec::new())
        };
        for p in kept_parts {
            let est_bytes = p.est_all(); // after a split, `heap` is the priority heap
            let rows = U::into_rows(p.units);
            if signal == Signal::Traces {
                stats.synthesized_logs.fetch_add(rows.synthesized_logs(), Ordering::Relaxed);
            }
            let batch = Batch {
                shard: p.shard,
                items: p.items,
                rows,
                received,
                est_bytes,
                completion: completions.pop(),
            };
            self.push_reserved(signal, batch);
        }
        Submission { outcome, commit }
    }

    /// Pushes a batch whose slot is reserved, then wakes its writer.
    fn push_reserved(&self, signal: Signal, batch: Batch) {
        let lanes = &self.lanes[batch.shard];
        let ring = lanes.ring(signal);
        let mut batch = batch;
        // A reserved push cannot fail. Room: the ring has next_power_of_two(QUEUE_SIZE) slots
        // (at least 2) and holds at most the signal's reserved batches, whose slots admission
        // frees only after their pop completed (one writer pops a lane, one pop at a time).
        // Visibility: the pop that freed the slot we land in happens-before our stamp load,
        // either directly (its `release_slot` is Release, our `reserve` Acquire) or, when
        // another submitter claimed a position after acquiring that pop, through the ring's
        // `tail` (Release claim, Acquire load: see `Ring::try_push`). Loom model:
        // `a_reserved_push_after_a_pop_on_another_thread_never_finds_its_slot_full`. The loop is
        // defensive: a failure would be a bug, caught by the debug assertion in tests.
        loop {
            match ring.try_push(batch) {
                Ok(()) => break,
                Err(back) => {
                    debug_assert!(false, "a reserved push found its ring full");
                    batch = back;
                    crate::sync::spin_step();
                }
            }
        }
        lanes.wake.notify();
    }

    /// Pops one batch of `signal` from `shard`'s lane and frees its slot. Wakes every writer when
    /// this pop ends a drain (stopped and fill = 0), so idle writers can exit.
    pub fn pop(&self, shard: usize, signal: Signal) -> Option<Batch> {
        let b = self.lanes[shard].ring(signal).try_pop()?;
        let after = self.admission(signal).release_slot(1);
        if after.stopped && after.fill == 0 && !mutant(Mutant::NoDrainWake) {
            self.wake_all();
        }
        Some(b)
    }

    /// Frees the bytes of a batch (after commit, spill or loss).
    pub fn release_bytes(&self, signal: Signal, bytes: u64) {
        self.admission(signal).release_bytes(bytes);
    }

    /// Begins stop: every later reservation fails; wakes every writer. Returns true the first time.
    pub fn stop(&self) -> bool {
        let mut first = false;
        for a in &self.admission {
            first |= a.stop();
        }
        self.wake_all();
        first
    }

    pub fn is_stopping(&self) -> bool {
        self.admission[0].snapshot().stopped
    }

    /// True when stop has begun and every reserved batch of every signal has been popped.
    pub fn drained(&self) -> bool {
        if mutant(Mutant::DrainOnEmptyRings) {
            // The mutant: a reservation whose push has not happened yet is missed.
            return self.is_stopping() && self.lanes.iter().all(|l| !l.has_batches());
        }
        self.admission.iter().all(Admission::drained)
    }

    /// Tells the writers to spill what is left instead of writing it (drain deadline passed).
    pub fn set_spill_now(&self) {
        // Relaxed: a flag that publishes nothing; a sleeping writer is woken through its lane's
        // mutex below, which orders the store before its next look at the flag.
        self.spill_now.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    pub fn spill_now(&self) -> bool {
        // Relaxed: see `set_spill_now`.
        self.spill_now.load(Ordering::Relaxed)
    }

    /// Wakes every writer, asleep or not.
    pub fn wake_all(&self) {
        for l in self.lanes.iter() {
            l.wake.force_notify();
        }
    }
}
