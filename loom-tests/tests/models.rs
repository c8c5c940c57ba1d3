//! loom models of otelring's shipped ring, admission, lanes, writer loop and commit completion.
//!
//! Run (from the repository root; its own target directory so switching RUSTFLAGS does not
//! rebuild the main build's dependencies):
//!
//! ```text
//! RUSTFLAGS="--cfg otelring_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test -p loom-tests --release --target-dir target/loom
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` decides the bound (unset: unbounded, which takes very long; README
//! "Concurrency checking" gives the bounds CI uses and the deeper runs with their times).
//!
//! Each model is one small scenario named after the property it checks. Capacities shrink to 1–4
//! and at most 3 threads run (loom allows 5 including main). The writer-side models run the real
//! writer loop (`run_writer`) and the real `Core::submit` / `Core::pop` / `Core::stop`; the ring
//! models use `Ring` directly; the completion models use the real `CommitWaiter`.
//!
//! With the feature `broken` the crate is built with its test-only mutants (see
//! `otelring::sync::Mutant`), one chosen at run time by `OTELRING_MUTANT`; `.ci/test` runs the
//! model named for each mutant and requires it to fail.

#![cfg(otelring_loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use otelring::config::PipelineConfig;
use otelring::pipeline::batch::{
    Batch, Received, Request, Rows, SpanId, SpanKind, SpanRow, StatusCode, TraceGroup, TraceId, TraceRow,
};
use otelring::pipeline::completion::{CommitError, completion};
use otelring::pipeline::{BatchWriter, Core, Group, Outcome, Signal, Stats, WriteError, route, run_writer};
use otelring::ring::Ring;
use std::time::Duration;

/// Checks `f` under loom with the bounds of the environment (`LOOM_MAX_PREEMPTIONS`, ...).
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(f);
}

// ---------------------------------------------------------------------------------------------
// The ring alone.

#[test]
fn ring_two_producers_one_consumer_lose_and_duplicate_nothing() {
    model(|| {
        let ring = Arc::new(Ring::with_capacity(2));
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut v = p + 1;
                    while let Err(back) = ring.try_push(v) {
                        v = back;
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match ring.try_pop() {
                Some(v) => seen.push(v),
                None => thread::yield_now(),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        seen.sort();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(ring.try_pop(), None);
    });
}

#[test]
fn ring_one_producer_two_consumers_deliver_each_pushed_value_exactly_once() {
    model(|| {
        // Capacity 2, three values: the producer also meets a full ring and gives a value up.
        let ring = Arc::new(Ring::with_capacity(2));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (ring, taken) = (ring.clone(), taken.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        if let Some(v) = ring.try_pop() {
                            taken.lock().unwrap().push(v);
                        }
                        thread::yield_now();
                    }
                })
            })
            .collect();
        let mut pushed = Vec::new();
        for v in 1..=3u32 {
            let mut v = v;
            // Give up after a bounded number of tries: consumers stop after two pops each.
            for _ in 0..3 {
                match ring.try_push(v) {
                    Ok(()) => {
                        pushed.push(v);
                        break;
                    }
                    Err(back) => {
                        v = back;
                        thread::yield_now();
                    }
                }
            }
        }
        for c in consumers {
            c.join().unwrap();
        }
        // What the consumers took plus what is left is exactly what was pushed: nothing lost,
        // nothing duplicated, nothing invented.
        let mut all = taken.lock().unwrap().clone();
        while let Some(v) = ring.try_pop() {
            all.push(v);
        }
        all.sort();
        assert_eq!(all, pushed, "delivered vs pushed");
        assert!(pushed.len() >= 2, "the ring holds 2, so at least two pushes succeed: {pushed:?}");
    });
}

#[test]
fn a_ring_asked_for_one_slot_hands_back_what_it_cannot_hold() {
    model(|| {
        // One slot asked: every value must come out once, in order, whatever the interleaving
        // (with one slot the stamps "full at p" and "free at p + 1" would be the same number).
        let ring = Arc::new(Ring::with_capacity(1));
        let r = ring.clone();
        let producer = thread::spawn(move || {
            for v in 1..=3u32 {
                let mut v = v;
                while let Err(back) = r.try_push(v) {
                    v = back;
                    thread::yield_now();
                }
            }
        });
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match ring.try_pop() {
                Some(v) => seen.push(v),
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(ring.try_pop(), None);
    });
}

/// A value that counts its drops (loom's atomic, so the count is part of the model).
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn dropping_a_ring_drops_each_value_left_in_it_exactly_once() {
    model(|| {
        // A producer fills both slots while a consumer takes at most one; the ring is dropped
        // with one or two values left (across a wrap when the pop came first).
        let drops = Arc::new(AtomicUsize::new(0));
        let ring = Arc::new(Ring::with_capacity(2));
        let producer = {
            let (ring, drops) = (ring.clone(), drops.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    assert!(ring.try_push(Counted(drops.clone())).is_ok(), "two slots hold two values");
                }
            })
        };
        let consumer = {
            let ring = ring.clone();
            thread::spawn(move || ring.try_pop().is_some())
        };
        producer.join().unwrap();
        let popped = consumer.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), usize::from(popped));
        drop(ring);
        assert_eq!(drops.load(Ordering::Relaxed), 2, "each value dropped exactly once");
    });
}

// ---------------------------------------------------------------------------------------------
// Admission and lanes, through `Core::submit`.

fn cfg(shards: usize, queue: u64, soft: f64) -> PipelineConfig {
    PipelineConfig {
        shards,
        queue_size: queue,
        max_bytes: 1 << 30,
        soft_threshold: soft,
        writer_max_rows: 1_000,
        writer_max_delay: Duration::from_secs(3600),
        ..PipelineConfig::default()
    }
}

/// The core is shared through `std::sync::Arc` because `run_writer` takes one (loom's `Arc` only
/// adds leak tracking; every atomic inside the core is loom's).
fn core(c: PipelineConfig) -> std::sync::Arc<Core> {
    std::sync::Arc::new(Core::new(c, std::sync::Arc::new(Stats::new())))
}

/// A trace id whose trace routes to `shard` of `shards` (searched, so routing stays the real one).
fn trace_on(shard: usize, shards: usize, salt: u8) -> TraceId {
    (0u8..=255)
        .map(|i| TraceId([salt, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
        .find(|t| route::shard_for_trace("default", t, shards) == shard)
        .unwrap()
}

fn group(trace_id: TraceId, priority: bool) -> TraceGroup {
    let t: std::sync::Arc<str> = "default".into();
    let s: std::sync::Arc<str> = "svc".into();
    TraceGroup {
        trace: TraceRow {
            tenant_id: t.clone(),
            trace_id,
            service_name: s.clone(),
            has_root: true,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            status: if priority { StatusCode::Error } else { StatusCode::Ok },
            priority,
        },
        spans: vec![SpanRow {
            tenant_id: t,
            trace_id,
            span_id: SpanId([1; 8]),
            parent_span_id: None,
            name: "s".into(),
            kind: SpanKind::Internal,
            service_name: s.clone(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            status_code: if priority { StatusCode::Error } else { StatusCode::Ok },
            status_message: String::new(),
            attributes: "{}".into(),
            resource_attributes: s.clone(),
            scope_name: s,
        }],
        logs: Vec::new(),
    }
}

fn request(groups: Vec<TraceGroup>) -> Request {
    Request::new(Rows::Traces(groups), Received::now())
}

/// Pops everything queued on `shard`, returning items (what a writer would take).
fn pop_all(core: &Core, shard: usize) -> u64 {
    let mut items = 0;
    while let Some(b) = core.pop(shard, Signal::Traces) {
        items += b.items;
        core.release_bytes(Signal::Traces, b.est_bytes);
    }
    items
}

#[test]
fn soft_zone_drops_only_healthy_parts() {
    model(|| {
        // Capacity 4, soft from 0.5; two batches already queued: every decision is in the soft zone.
        let c = core(cfg(1, 4, 0.5));
        for i in 0..2 {
            let out = c.submit(request(vec![group(trace_on(0, 1, i), false)])).outcome;
            assert_eq!(out, Outcome::Accepted { items: 1 });
        }
        let c1 = c.clone();
        let a = thread::spawn(move || c1.submit(request(vec![group(trace_on(0, 1, 10), true)])).outcome);
        let c2 = c.clone();
        let b = thread::spawn(move || {
            let mixed = vec![group(trace_on(0, 1, 20), true), group(trace_on(0, 1, 21), false)];
            c2.submit(request(mixed)).outcome
        });
        assert_eq!(a.join().unwrap(), Outcome::Accepted { items: 1 });
        assert_eq!(b.join().unwrap(), Outcome::SoftDropped { kept: 1, dropped: 1 });
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!(s.fill, 4);
        assert_eq!(pop_all(&c, 0), 2 + 1 + 1);
    });
}

#[test]
fn at_capacity_every_push_is_rejected_and_counters_never_exceed_capacity() {
    model(|| {
        let c = core(cfg(1, 2, 1.0));
        for i in 0..2 {
            c.submit(request(vec![group(trace_on(0, 1, i), true)]));
        }
        let hs: Vec<_> = (0..2u8)
            .map(|i| {
                let c = c.clone();
                thread::spawn(move || c.submit(request(vec![group(trace_on(0, 1, 10 + i), true)])).outcome)
            })
            .collect();
        // A writer pops one batch meanwhile: at most one of the two may then get in.
        let popped = c.pop(0, Signal::Traces).map(|b| b.items).unwrap_or(0);
        assert_eq!(popped, 1);
        let outs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let accepted = outs.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count();
        assert!(accepted <= 1, "{outs:?}");
        assert!(outs.iter().all(|o| matches!(o, Outcome::Accepted { .. } | Outcome::RejectedFull { .. })));
        let s = c.admission(Signal::Traces).snapshot();
        assert!(s.fill <= 2);
        assert_eq!(s.fill, 1 + accepted as u64);
    });
}

#[test]
fn two_racing_submitters_never_both_fail_when_one_fits() {
    model(|| {
        // One free slot of two; soft zone off (threshold 1.0).
        let c = core(cfg(1, 2, 1.0));
        c.submit(request(vec![group(trace_on(0, 1, 0), false)]));
        let hs: Vec<_> = (0..2u8)
            .map(|i| {
                let c = c.clone();
                thread::spawn(move || c.submit(request(vec![group(trace_on(0, 1, 10 + i), false)])).outcome)
            })
            .collect();
        let outs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let accepted = outs.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count();
        assert_eq!(accepted, 1, "{outs:?}");
        assert_eq!(c.admission(Signal::Traces).snapshot().fill, 2);
    });
}

#[test]
fn a_request_spread_over_two_lanes_is_admitted_or_refused_as_a_whole() {
    model(|| {
        // Two shards, three slots: two 2-lane requests cannot both fit.
        let c = core(cfg(2, 3, 1.0));
        let hs: Vec<_> = (0..2u8)
            .map(|i| {
                let c = c.clone();
                thread::spawn(move || {
                    let g = vec![group(trace_on(0, 2, 10 + i), false), group(trace_on(1, 2, 20 + i), false)];
                    c.submit(request(g)).outcome
                })
            })
            .collect();
        let outs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let accepted = outs.iter().filter(|o| matches!(o, Outcome::Accepted { items: 2 })).count();
        let rejected = outs.iter().filter(|o| matches!(o, Outcome::RejectedFull { items: 2 })).count();
        assert_eq!((accepted, rejected), (1, 1), "{outs:?}");
        // Exactly the admitted request's two batches, one per lane.
        assert_eq!(pop_all(&c, 0), 1);
        assert_eq!(pop_all(&c, 1), 1);
        assert_eq!(c.admission(Signal::Traces).snapshot().fill, 0);
    });
}

#[test]
fn the_zone_is_decided_again_on_every_cas_retry() {
    model(|| {
        // Capacity 4, soft from 0.5, one batch queued (0.25). Whichever of the two one-batch
        // requests reserves first takes the queue to 0.5, so the other must find itself in the
        // soft zone, even when it read the word before the first one's CAS and retries.
        let c = core(cfg(1, 4, 0.5));
        c.submit(request(vec![group(trace_on(0, 1, 0), false)]));
        let healthy = {
            let c = c.clone();
            thread::spawn(move || c.submit(request(vec![group(trace_on(0, 1, 1), false)])).outcome)
        };
        let mixed = vec![group(trace_on(0, 1, 2), true), group(trace_on(0, 1, 3), false)];
        let mixed = c.submit(request(mixed)).outcome;
        let healthy = healthy.join().unwrap();
        let fill = c.admission(Signal::Traces).snapshot().fill;
        match (healthy, mixed) {
            (Outcome::Accepted { items: 1 }, Outcome::SoftDropped { kept: 1, dropped: 1 }) => {
                assert_eq!(fill, 3)
            }
            (Outcome::SoftDropped { kept: 0, dropped: 1 }, Outcome::Accepted { items: 2 }) => {
                assert_eq!(fill, 2)
            }
            other => panic!("both decided in the zone of the same word: {other:?}"),
        }
    });
}

#[test]
fn a_reserved_push_after_a_pop_on_another_thread_never_finds_its_slot_full() {
    model(|| {
        // Two slots, one batch queued. X reserves the second slot; a pop frees slot 0 and its
        // reservation; Y reserves it and claims position 1; X then claims position 2 (slot 0) and
        // must see the pop's stamp store: a reserved push cannot fail (the debug_assert in
        // `Core::push_reserved` fires if it does).
        let c = core(cfg(1, 2, 1.0));
        assert_eq!(
            c.submit(request(vec![group(trace_on(0, 1, 0), false)])).outcome,
            Outcome::Accepted { items: 1 }
        );
        let x = {
            let c = c.clone();
            thread::spawn(move || c.submit(request(vec![group(trace_on(0, 1, 1), false)])).outcome)
        };
        let popper = {
            let c = c.clone();
            thread::spawn(move || {
                let b = c.pop(0, Signal::Traces).expect("position 0 was published before the spawn");
                c.release_bytes(Signal::Traces, b.est_bytes);
            })
        };
        let y = c.submit(request(vec![group(trace_on(0, 1, 2), false)])).outcome;
        let x = x.join().unwrap();
        popper.join().unwrap();
        let accepted = [x, y].iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count() as u64;
        assert_eq!(pop_all(&c, 0), accepted);
        assert_eq!(c.admission(Signal::Traces).snapshot().fill, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// The writer loop: drain, stop and wake-up.

/// A sink that records items and lets a model thread wait for them (loom primitives, so a
/// missing wake-up shows as a deadlock).
#[derive(Default)]
struct Recorder {
    items: Mutex<u64>,
    cv: Condvar,
}

struct Sink(Arc<Recorder>);

impl BatchWriter for Sink {
    fn write(&mut self, group: &Group) -> Result<(), WriteError> {
        let n: u64 = group.batches().iter().map(|b: &Batch| b.items).sum();
        *self.0.items.lock().unwrap() += n;
        self.0.cv.notify_all();
        Ok(())
    }
}

#[test]
fn drain_after_stop_delivers_every_accepted_item_exactly_once() {
    model(|| {
        let c = core(cfg(1, 2, 1.0));
        let rec = Arc::new(Recorder::default());
        let writer = {
            let (c, rec) = (c.clone(), rec.clone());
            thread::spawn(move || run_writer(0, c, Box::new(Sink(rec))))
        };
        let submitter = {
            let c = c.clone();
            thread::spawn(move || c.submit(request(vec![group(trace_on(0, 1, 1), false)])).outcome)
        };
        // The stop races the reservation and the push.
        c.stop();
        let out = submitter.join().unwrap();
        writer.join().unwrap();
        let written = *rec.items.lock().unwrap();
        match out {
            Outcome::Accepted { items } => assert_eq!(written, items, "accepted but not drained"),
            Outcome::Stopped { .. } => assert_eq!(written, 0, "refused but written"),
            other => panic!("unexpected {other:?}"),
        }
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!((s.fill, s.bytes, s.stopped), (0, 0, true));
    });
}

#[test]
fn a_push_racing_the_writers_park_is_popped_with_no_timeout_firing() {
    model(|| {
        // The writer parks with no timeout (its sink asks for no maintenance): only the push's
        // notification can wake it. A lost wake-up leaves both threads blocked: loom reports a
        // deadlock.
        let c = core(cfg(1, 2, 1.0));
        let rec = Arc::new(Recorder::default());
        let writer = {
            let (c, rec) = (c.clone(), rec.clone());
            thread::spawn(move || run_writer(0, c, Box::new(Sink(rec))))
        };
        let out = c.submit(request(vec![group(trace_on(0, 1, 1), false)])).outcome;
        assert_eq!(out, Outcome::Accepted { items: 1 });
        {
            let mut got = rec.items.lock().unwrap();
            while *got < 1 {
                got = rec.cv.wait(got).unwrap();
            }
        }
        c.stop();
        writer.join().unwrap();
        assert_eq!(*rec.items.lock().unwrap(), 1);
    });
}

/// A sink that refuses every write and keeps every spill (a failing database with a working
/// dead-letter queue), recording both.
#[derive(Default)]
struct Failing {
    /// (write attempts, items spilled)
    counts: Mutex<(u64, u64)>,
    cv: Condvar,
}

struct FailingSink(Arc<Failing>);

impl BatchWriter for FailingSink {
    fn write(&mut self, _group: &Group) -> Result<(), WriteError> {
        self.0.counts.lock().unwrap().0 += 1;
        Err(WriteError::Database("disk full".into()))
    }
    fn spill(&mut self, batches: &[Batch], _cause: &WriteError) -> Result<(), WriteError> {
        self.0.counts.lock().unwrap().1 += batches.iter().map(|b| b.items).sum::<u64>();
        self.0.cv.notify_all();
        Ok(())
    }
}

#[test]
fn the_pop_that_ends_a_drain_wakes_the_writers_of_every_shard() {
    model(|| {
        // Two shards, one batch queued on shard 1, stop already begun. Writer 0 has nothing to
        // do and sleeps with no timeout until the drain is over (the stop's own wake-up is used
        // up by its first look). Only the pop of shard 1's batch ends the drain, so only
        // `Core::pop`'s wake-up of every lane can tell writer 0: without it writer 0 sleeps
        // forever and loom reports the deadlock.
        let c = core(cfg(2, 2, 1.0));
        let out = c.submit(request(vec![group(trace_on(1, 2, 1), false)])).outcome;
        assert_eq!(out, Outcome::Accepted { items: 1 });
        c.stop();
        let writer0 = {
            let c = c.clone();
            thread::spawn(move || run_writer(0, c, Box::new(Sink(Arc::new(Recorder::default())))))
        };
        // Shard 1's writer, reduced to its pop (the property is the wake-up `pop` sends).
        assert_eq!(pop_all(&c, 1), 1);
        writer0.join().unwrap();
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!((s.fill, s.bytes, s.stopped), (0, 0, true));
    });
}

/// The estimated bytes of the one-group request `trace_on(0, 1, 0)` makes, measured with the real
/// estimate (so the byte cap can be set to exactly one batch). Inside a model: the core's atomics
/// are loom's.
fn one_batch_bytes() -> u64 {
    let probe = core(cfg(1, 4, 1.0));
    probe.submit(request(vec![group(trace_on(0, 1, 0), true)]));
    probe.admission(Signal::Traces).snapshot().bytes
}

#[test]
fn the_byte_cap_holds_and_every_commit_gives_its_bytes_back() {
    model(|| {
        let cap = one_batch_bytes();
        // Room for one batch's bytes (the batch cap is not the limit). A second request is refused
        // while the first one's bytes are held and admitted once its commit gave them back; at
        // the end every byte is returned. Priority rows, so the soft zone (a full byte budget is
        // fullness 1.0) still asks for all of them.
        let c = core(PipelineConfig { max_bytes: cap, ..cfg(1, 4, 1.0) });
        assert_eq!(
            c.submit(request(vec![group(trace_on(0, 1, 0), true)])).outcome,
            Outcome::Accepted { items: 1 }
        );
        let rec = Arc::new(Recorder::default());
        let writer = {
            let (c, rec) = (c.clone(), rec.clone());
            thread::spawn(move || run_writer(0, c, Box::new(Sink(rec))))
        };
        let second = c.submit(request(vec![group(trace_on(0, 1, 0), true)])).outcome;
        assert!(c.admission(Signal::Traces).snapshot().bytes <= cap);
        c.stop();
        writer.join().unwrap();
        let written = *rec.items.lock().unwrap();
        match second {
            Outcome::Accepted { items: 1 } => assert_eq!(written, 2),
            Outcome::RejectedBytes { items: 1 } => assert_eq!(written, 1),
            other => panic!("unexpected {other:?}"),
        }
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!((s.fill, s.bytes), (0, 0), "bytes given back at commit");
    });
}

#[test]
fn a_failed_write_is_spilled_once_and_the_writer_pauses_until_stop() {
    model(|| {
        // Async mode, a database that always fails, a DLQ that works. The first batch's write
        // fails and it is spilled; the writer then pauses (under loom the backoff never runs
        // out), so a second batch is not written while the queue stays under half the soft
        // threshold; the stop ends the pause, the second batch is tried once and spilled too.
        let c = core(cfg(1, 4, 1.0));
        let sink = Arc::new(Failing::default());
        let writer = {
            let (c, sink) = (c.clone(), sink.clone());
            thread::spawn(move || run_writer(0, c, Box::new(FailingSink(sink))))
        };
        assert_eq!(
            c.submit(request(vec![group(trace_on(0, 1, 1), false)])).outcome,
            Outcome::Accepted { items: 1 }
        );
        {
            let mut n = sink.counts.lock().unwrap();
            while n.1 < 1 {
                n = sink.cv.wait(n).unwrap();
            }
        }
        assert_eq!(
            c.submit(request(vec![group(trace_on(0, 1, 2), false)])).outcome,
            Outcome::Accepted { items: 1 }
        );
        assert_eq!(sink.counts.lock().unwrap().0, 1, "a write during the pause after a failure");
        c.stop();
        writer.join().unwrap();
        assert_eq!(*sink.counts.lock().unwrap(), (2, 2), "(writes, spilled items)");
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!((s.fill, s.bytes), (0, 0), "bytes given back at spill");
        assert_eq!(
            c.stats().signal(Signal::Traces).spilled_items.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Commit-mode completion.

#[test]
fn a_commit_racing_the_waiter_answers_ok_once_every_part_committed() {
    model(|| {
        let (waiter, parts) = completion(2);
        let resolvers: Vec<_> = parts.into_iter().map(|p| thread::spawn(move || p.resolve(Ok(())))).collect();
        assert_eq!(waiter.wait(), Ok(()));
        for r in resolvers {
            r.join().unwrap();
        }
    });
}

#[test]
fn a_failure_racing_the_waiter_answers_with_the_error() {
    model(|| {
        let (waiter, mut parts) = completion(2);
        let ok = parts.pop().unwrap();
        let failed = parts.pop().unwrap();
        let a = thread::spawn(move || ok.resolve(Ok(())));
        let b = thread::spawn(move || failed.resolve(Err(CommitError::Database("disk full".into()))));
        assert_eq!(waiter.wait(), Err(CommitError::Database("disk full".into())));
        a.join().unwrap();
        b.join().unwrap();
    });
}

#[test]
fn the_drain_deadline_answers_every_commit_mode_waiter() {
    model(|| {
        // Commit mode: a request is admitted, then the drain deadline (spill now, then stop)
        // races the writer. The waiter is answered whatever the interleaving: Ok if its batch
        // was written, Stopped if the deadline came first; never left waiting.
        let c = core(PipelineConfig { commit_mode: true, ..cfg(1, 2, 1.0) });
        let sub = c.submit(request(vec![group(trace_on(0, 1, 1), false)]));
        assert_eq!(sub.outcome, Outcome::Accepted { items: 1 });
        let rec = Arc::new(Recorder::default());
        let writer = {
            let (c, rec) = (c.clone(), rec.clone());
            thread::spawn(move || run_writer(0, c, Box::new(Sink(rec))))
        };
        c.set_spill_now();
        c.stop();
        let answer = sub.commit.expect("commit mode").wait();
        writer.join().unwrap();
        let written = *rec.items.lock().unwrap();
        match answer {
            Ok(()) => assert_eq!(written, 1),
            Err(CommitError::Stopped) => assert_eq!(written, 0),
            other => panic!("unexpected {other:?}"),
        }
        let s = c.admission(Signal::Traces).snapshot();
        assert_eq!((s.fill, s.bytes, s.stopped), (0, 0, true));
    });
}
