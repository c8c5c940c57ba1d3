//! loom models of otelring's shipped ring, admission, lanes and writer loop.
//!
//! Run (from the repository root; its own target directory so switching RUSTFLAGS does not
//! rebuild the main build's dependencies):
//!
//! ```text
//! RUSTFLAGS="--cfg otelring_loom -C debug-assertions" LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test -p loom-tests --release --target-dir target/loom
//! ```
//!
//! Each model is one small scenario named after the property it checks. Capacities shrink to 1–4
//! and at most 3 threads are spawned (loom allows 4 besides main). The writer-side models run the
//! real writer loop (`run_writer`) and the real `Core::submit` / `Core::stop`; the ring models use
//! `Ring` directly. `broken_ring_is_caught` (feature `broken`) shows the models can fail.

#![cfg(otelring_loom)]
// With `broken`, only `broken_ring_is_caught` is compiled; the shared helpers go unused.
#![cfg_attr(feature = "broken", allow(dead_code, unused_imports))]

use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use otelring::config::PipelineConfig;
use otelring::pipeline::batch::{
    Batch, Received, Request, Rows, SpanId, SpanKind, SpanRow, StatusCode, TraceGroup, TraceId, TraceRow,
};
use otelring::pipeline::{BatchWriter, Core, Group, Outcome, Signal, Stats, WriteError, route, run_writer};
use otelring::ring::Ring;
use std::time::Duration;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

// ---------------------------------------------------------------------------------------------
// The ring alone.

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
#[test]
fn ring_one_producer_two_consumers_lose_and_duplicate_nothing() {
    model(|| {
        // Capacity 2, three values: the producer also meets a full ring.
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
        for v in 1..=3u32 {
            let mut v = v;
            // Give up after a bounded number of tries: consumers stop after two pops each.
            for _ in 0..3 {
                match ring.try_push(v) {
                    Ok(()) => break,
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
        // What the consumers took plus what is left is what was pushed, each exactly once.
        let mut all = taken.lock().unwrap().clone();
        while let Some(v) = ring.try_pop() {
            all.push(v);
        }
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "duplicated: {all:?}");
        assert!(all.iter().all(|v| (1..=3).contains(v)));
        assert!(all.len() >= 2, "the ring holds 2, so at least two pushes succeeded: {all:?}");
    });
}

#[cfg(feature = "broken")]
#[test]
#[should_panic(expected = "Causality violation")]
fn broken_ring_is_caught() {
    // With `PUBLISH = Relaxed` the consumer may read a slot the producer has not finished
    // writing; loom's cell tracking must report it.
    model(|| {
        let ring = Arc::new(Ring::with_capacity(2));
        let r = ring.clone();
        let p = thread::spawn(move || {
            r.try_push(String::from("x")).unwrap();
        });
        loop {
            if let Some(v) = ring.try_pop() {
                assert_eq!(v, "x");
                break;
            }
            thread::yield_now();
        }
        p.join().unwrap();
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

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
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

#[cfg(not(feature = "broken"))]
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
