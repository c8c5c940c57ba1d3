//! The asynchronous ingest pipeline: admission with hybrid backpressure, one lane ring per
//! (signal, shard), one writer thread per shard (DESIGN 1.1–1.3).
//!
//! ```text
//! submit(Request) ─ split by shard (FNV-1a of tenant + trace id) ─ one CAS reserves every batch
//!   ─ push into lane (signal, shard) ─ wake writer ─ answer
//! writer i: pop its lanes (frees the slot) ─ coalesce ─ BatchWriter::write (one transaction)
//!   ─ free the bytes, book persisted; on failure: commit-mode retries alone, async spills (DLQ)
//! ```
//!
//! Invariants:
//! - admission is exact: fill and bytes never pass their capacities; a request is admitted or
//!   refused as a whole (in the soft zone, its priority part as a whole);
//! - nothing admitted is lost by the pipeline: it is committed, spilled to the failure sink, or
//!   (commit mode only) refused to its waiting client; only a spill that still fails when the
//!   process must exit loses items, and they are counted (`lost{reason="crash"}`);
//! - stop is idempotent, refuses new submits, drains until fill = 0 (reserved batches included)
//!   within the deadline, then spills the rest.

pub mod admission;
pub mod batch;
pub mod completion;
pub mod core;
pub mod discard;
pub mod lane;
pub mod route;
pub mod stats;
pub mod writer;

pub use self::core::{Core, Outcome, Submission};
pub use batch::{Batch, Request, Rows, Signal};
pub use completion::{CommitError, CommitWaiter};
pub use stats::{Books, LostReason, RejectReason, Stats};
pub use writer::{BatchWriter, Group, RowRef, WriteError, run_writer};

use crate::config::{ConfigError, PinPolicy, PipelineConfig};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often `stop` checks whether the writers have finished draining.
const STOP_POLL: Duration = Duration::from_millis(2);

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("expected {expected} shard writers, got {got}")]
    WriterCount { expected: usize, got: usize },
    #[error("the pipeline was already started")]
    AlreadyStarted,
    #[error("could not spawn writer thread {shard}: {source}")]
    Spawn { shard: usize, source: std::io::Error },
}

/// What a stop did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopReport {
    /// True when every admitted batch was written before the deadline.
    pub drained_in_time: bool,
    /// Items handed to the failure sink during this stop (deadline spill).
    pub spilled_items: u64,
    /// Items counted lost during this stop.
    pub lost_items: u64,
    pub elapsed: Duration,
}

#[derive(Default)]
struct Threads {
    started: bool,
    handles: Vec<JoinHandle<()>>,
    report: Option<StopReport>,
}

/// The pipeline: a [`Core`] plus its writer threads.
pub struct Pipeline {
    core: Arc<Core>,
    threads: Mutex<Threads>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("core", &self.core).finish()
    }
}

impl Pipeline {
    /// A pipeline for `cfg`; submits are accepted (and queued) before [`Pipeline::start`].
    pub fn new(cfg: PipelineConfig, stats: Arc<Stats>) -> Result<Self, PipelineError> {
        cfg.validate()?;
        Ok(Self { core: Arc::new(Core::new(cfg, stats)), threads: Mutex::new(Threads::default()) })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
    pub fn config(&self) -> &PipelineConfig {
        self.core.config()
    }
    pub fn stats(&self) -> &Arc<Stats> {
        self.core.stats()
    }

    /// Starts one writer thread per shard, writer i owning `writers[i]`.
    pub fn start(&self, writers: Vec<Box<dyn BatchWriter>>) -> Result<(), PipelineError> {
        let shards = self.core.shards();
        if writers.len() != shards {
            return Err(PipelineError::WriterCount { expected: shards, got: writers.len() });
        }
        let mut t = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if t.started {
            return Err(PipelineError::AlreadyStarted);
        }
        t.started = true;
        let pins = pin_plan(&self.core.config().pin, shards);
        let nice = self.core.config().writer_nice;
        for (shard, sink) in writers.into_iter().enumerate() {
            let core_ref = self.core.clone();
            let pin = pins.get(shard).copied().flatten();
            let h = std::thread::Builder::new()
                .name(format!("otelring-w{shard}"))
                .spawn(move || {
                    if let Some(core) = pin
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::warn!(shard, core = core.id, "could not pin writer; running unpinned");
                    }
                    if nice > 0 {
                        lower_priority(shard, nice);
                    }
                    writer::run_writer(shard, core_ref, sink);
                })
                .map_err(|source| PipelineError::Spawn { shard, source })?;
            t.handles.push(h);
        }
        Ok(())
    }

    /// Submits one decoded request (see [`Core::submit`]).
    pub fn submit(&self, req: Request) -> Submission {
        self.core.submit(req)
    }

    /// Stops with the configured `OTELRING_SHUTDOWN_TIMEOUT`.
    pub fn stop(&self) -> StopReport {
        self.stop_within(self.core.config().shutdown_timeout)
    }

    /// Stops: refuses new submits, lets the writers drain for at most `deadline`, then has them
    /// spill what is left, and joins them. Idempotent: later calls return the first report.
    /// A pipeline that was never started has no writer to drain into: what it holds stays in its
    /// rings until it is dropped (commit waiters then see `Dropped`).
    pub fn stop_within(&self, deadline: Duration) -> StopReport {
        let mut t = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = t.report {
            return r;
        }
        let start = Instant::now();
        let before = self.spill_lost_totals();
        self.core.stop();
        let mut drained_in_time = true;
        loop {
            if t.handles.iter().all(|h| h.is_finished()) {
                break;
            }
            if drained_in_time && start.elapsed() >= deadline {
                drained_in_time = false;
                tracing::warn!(
                    deadline_ms = deadline.as_millis() as u64,
                    "drain deadline passed; spilling what is left"
                );
                self.core.set_spill_now();
            }
            std::thread::sleep(STOP_POLL);
        }
        for h in t.handles.drain(..) {
            if h.join().is_err() {
                tracing::error!("a writer thread panicked outside a group");
            }
        }
        let after = self.spill_lost_totals();
        let report = StopReport {
            drained_in_time,
            spilled_items: after.0 - before.0,
            lost_items: after.1 - before.1,
            elapsed: start.elapsed(),
        };
        t.report = Some(report);
        report
    }

    /// Second signal: skip the rest of the drain and spill at once. `stop` still joins.
    pub fn spill_now(&self) {
        self.core.stop();
        self.core.set_spill_now();
    }

    /// Batches queued (reserved, not yet popped) for `signal`, read now.
    pub fn queue_depth(&self, signal: Signal) -> u64 {
        self.core.admission(signal).snapshot().fill
    }

    /// Estimated bytes held (reserved, not yet committed or spilled) for `signal`, read now.
    pub fn queue_bytes(&self, signal: Signal) -> u64 {
        self.core.admission(signal).snapshot().bytes
    }

    /// The highest fullness over the signals, read now.
    pub fn fullness(&self) -> f64 {
        Signal::ALL.iter().map(|&s| self.core.admission(s).fullness()).fold(0.0, f64::max)
    }

    fn spill_lost_totals(&self) -> (u64, u64) {
        Signal::ALL.iter().fold((0, 0), |(s, l), &sig| {
            let st = self.core.stats().signal(sig);
            (s + st.spilled_items.load(Ordering::Relaxed), l + st.lost_total())
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let started = self.threads.lock().map(|t| t.started && t.report.is_none()).unwrap_or(false);
        if started {
            self.stop();
        }
    }
}

/// Runs the calling (writer) thread at niceness `nice` (1..=19, `INGEST_WRITER_NICE`), below the
/// request path: on a machine without spare cores a decode or an answer then preempts a commit
/// instead of waiting for its time slice. The writers also yield to every other process then, so
/// it is off by default (docs/PERFORMANCE.md). Linux niceness is per thread. Failure only costs
/// latency, so it is logged, not fatal.
#[cfg(all(feature = "server", target_os = "linux", not(otelring_loom)))]
fn lower_priority(shard: usize, nice: i32) {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
    match ThreadPriorityValue::try_from(crossplatform_for_nice(nice)) {
        Ok(p) => {
            if let Err(e) = set_current_thread_priority(ThreadPriority::Crossplatform(p)) {
                tracing::warn!(shard, nice, error = ?e, "could not lower the writer's priority");
            }
        }
        Err(e) => tracing::warn!(shard, nice, error = %e, "no priority value for this niceness"),
    }
}

#[cfg(not(all(feature = "server", target_os = "linux", not(otelring_loom))))]
fn lower_priority(_shard: usize, _nice: i32) {}

/// thread-priority 3 maps a cross-platform value p in 0..=99 to niceness
/// `trunc(39 × (1 − p/99)) − 20` (in f32; `ThreadPriority::to_posix`): this is the p in the
/// middle of the run of values that land on `nice`, away from the rounding edges (every niceness
/// 1..=19 on a real thread is checked by `lower_priority_sets_the_calling_threads_niceness`).
#[cfg(all(feature = "server", target_os = "linux", not(otelring_loom)))]
fn crossplatform_for_nice(nice: i32) -> u8 {
    let lands = |p: u8| ((39.0_f32 * (1.0 - f32::from(p) / 99.0)) as i8 as i32) - 20;
    let hits: Vec<u8> = (0..=99u8).filter(|&p| lands(p) == nice).collect();
    hits.get(hits.len() / 2).copied().unwrap_or(if nice > 0 { 0 } else { 99 })
}

/// Which core each writer is pinned to (DESIGN 1.6 `INGEST_PIPELINE_PIN`).
fn pin_plan(policy: &PinPolicy, shards: usize) -> Vec<Option<core_affinity::CoreId>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match policy {
        PinPolicy::Off => vec![None; shards],
        // Only with at least two cores to spare for the network and decoding: the last cores go
        // to the writers, the first ones stay free.
        PinPolicy::Auto if cores.len() >= shards + 2 => {
            let first = cores.len() - shards;
            (0..shards).map(|i| cores.get(first + i).copied()).collect()
        }
        PinPolicy::Auto => vec![None; shards],
        PinPolicy::Cores(list) => (0..shards)
            .map(|i| {
                let want = list.get(i % list.len().max(1))?;
                cores.iter().copied().find(|c| c.id == *want)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(feature = "server", target_os = "linux"))]
    #[test]
    fn lower_priority_sets_the_calling_threads_niceness() {
        for want in 1..=19 {
            let got = std::thread::spawn(move || {
                lower_priority(0, want);
                // Field 19 of /proc/thread-self/stat (after the parenthesised command name).
                let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
                stat.rsplit(')').next().unwrap().split_whitespace().nth(16).unwrap().parse::<i32>().unwrap()
            })
            .join()
            .unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn pin_plan_auto_needs_two_spare_cores() {
        let n = core_affinity::get_core_ids().map_or(0, |v| v.len());
        let plan = pin_plan(&PinPolicy::Auto, 2);
        if n >= 4 {
            assert!(plan.iter().all(Option::is_some));
        } else {
            assert!(plan.iter().all(Option::is_none));
        }
        assert!(pin_plan(&PinPolicy::Off, 3).iter().all(Option::is_none));
        let plan = pin_plan(&PinPolicy::Cores(vec![0]), 2);
        assert_eq!(plan.len(), 2);
        if n > 0 {
            assert!(plan.iter().all(|c| c.map(|c| c.id) == Some(0)));
        }
    }
}
