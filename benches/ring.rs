//! Ring benchmarks (criterion):
//! - the bare ring against `crossbeam_queue::ArrayQueue` and `std::sync::mpsc::sync_channel`,
//!   same capacity, pointer-sized items, 1 producer / 1 consumer and 2 producers / 1 consumer;
//! - admission overhead: one reserve + slot release + byte release cycle, in ns/op;
//! - `Core::submit` → pop of a one-span request, in ns/op;
//! - push → pop wake-up latency of an idle writer (it parks; the push wakes it).
//!
//! Cross-thread timing uses `iter_custom` with a `Barrier`, so thread start-up is not timed.
//! Run: `cargo bench --bench ring`; figures in docs/PERFORMANCE.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use otelring::config::PipelineConfig;
use otelring::pipeline::admission::{Admission, Need};
use otelring::pipeline::batch::{
    Received, Request, Rows, SpanId, SpanKind, SpanRow, StatusCode, TraceGroup, TraceId, TraceRow,
};
use otelring::pipeline::{BatchWriter, Core, Group, Pipeline, Signal, Stats, WriteError};
use otelring::ring::Ring;
use std::hint::black_box;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The default `INGEST_PIPELINE_QUEUE_SIZE` (lane rings have this many slots).
const CAPACITY: usize = 4096;

/// The queue interface under test.
trait Queue: Send + Sync + 'static {
    fn push(&self, v: usize);
    fn pop(&self) -> Option<usize>;
}

/// Spin a little, then yield: on 2 cores with 3 threads, pure spinning starves the peer.
#[inline]
fn backoff(step: &mut u32) {
    if *step < 64 {
        std::hint::spin_loop();
        *step += 1;
    } else {
        std::thread::yield_now();
    }
}

impl Queue for Ring<usize> {
    fn push(&self, mut v: usize) {
        let mut step = 0;
        while let Err(back) = self.try_push(v) {
            v = back;
            backoff(&mut step);
        }
    }
    fn pop(&self) -> Option<usize> {
        self.try_pop()
    }
}

impl Queue for ArrayQueue<usize> {
    fn push(&self, mut v: usize) {
        let mut step = 0;
        while let Err(back) = ArrayQueue::push(self, v) {
            v = back;
            backoff(&mut step);
        }
    }
    fn pop(&self) -> Option<usize> {
        ArrayQueue::pop(self)
    }
}

/// `sync_channel` split in two halves; the receiver is only used by the single consumer.
struct Channel {
    tx: SyncSender<usize>,
    rx: std::sync::Mutex<Receiver<usize>>,
}

impl Queue for Channel {
    fn push(&self, v: usize) {
        // Blocking send is the channel's natural full-queue behaviour.
        let _ = self.tx.send(v);
    }
    fn pop(&self) -> Option<usize> {
        // Uncontended lock: one consumer.
        self.rx.lock().ok()?.try_recv().ok()
    }
}

/// Moves `items` values through `q` with `producers` producers and one consumer; returns the time
/// from the common start to the consumer's last pop.
fn run<Q: Queue>(q: &Arc<Q>, producers: usize, items: u64) -> Duration {
    let per = (items as usize).div_ceil(producers);
    let total = per * producers;
    let barrier = Arc::new(Barrier::new(producers + 1));
    let hs: Vec<_> = (0..producers)
        .map(|p| {
            let (q, barrier) = (q.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per {
                    q.push(p * per + i + 1);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut got = 0;
    let mut sum = 0usize;
    let mut step = 0;
    while got < total {
        match q.pop() {
            Some(v) => {
                sum = sum.wrapping_add(v);
                got += 1;
                step = 0;
            }
            None => backoff(&mut step),
        }
    }
    let elapsed = start.elapsed();
    black_box(sum);
    for h in hs {
        let _ = h.join();
    }
    elapsed
}

fn queues(c: &mut Criterion) {
    for producers in [1usize, 2] {
        let mut g = c.benchmark_group(format!("queue_{producers}p1c"));
        g.throughput(Throughput::Elements(1));
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(3));
        let ring = Arc::new(Ring::<usize>::with_capacity(CAPACITY));
        g.bench_function(BenchmarkId::new("otelring_ring", CAPACITY), |b| {
            b.iter_custom(|iters| run(&ring, producers, iters))
        });
        let aq = Arc::new(ArrayQueue::<usize>::new(CAPACITY));
        g.bench_function(BenchmarkId::new("crossbeam_array_queue", CAPACITY), |b| {
            b.iter_custom(|iters| run(&aq, producers, iters))
        });
        let (tx, rx) = sync_channel(CAPACITY);
        let ch = Arc::new(Channel { tx, rx: std::sync::Mutex::new(rx) });
        g.bench_function(BenchmarkId::new("std_sync_channel", CAPACITY), |b| {
            b.iter_custom(|iters| run(&ch, producers, iters))
        });
        g.finish();
    }
}

fn one_span(n: u64) -> Request {
    let t: Arc<str> = Arc::from("default");
    let tid = TraceId([n as u8; 16]);
    Request::new(
        Rows::Traces(vec![TraceGroup {
            trace: TraceRow {
                tenant_id: t.clone(),
                trace_id: tid,
                service_name: t.clone(),
                has_root: true,
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                status: StatusCode::Ok,
                priority: false,
            },
            spans: vec![SpanRow {
                tenant_id: t.clone(),
                trace_id: tid,
                span_id: SpanId([1; 8]),
                parent_span_id: None,
                name: "s".into(),
                kind: SpanKind::Internal,
                service_name: t.clone(),
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                status_code: StatusCode::Ok,
                status_message: String::new(),
                attributes: "{}".into(),
                resource_attributes: t.clone(),
                scope_name: t,
            }],
            logs: vec![],
        }]),
        Received::now(),
    )
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission");
    g.throughput(Throughput::Elements(1));
    let a = Admission::new(4096, 128 << 20, 0.9);
    let need = Need { batches: 2, bytes: 4_000 };
    g.bench_function("reserve_release_cycle", |b| {
        b.iter(|| {
            black_box(a.reserve(black_box(need), black_box(need)));
            a.release_slot(2);
            a.release_bytes(4_000);
        })
    });
    let cfg = PipelineConfig { shards: 2, ..PipelineConfig::default() };
    let core = Core::new(cfg, Arc::new(Stats::new()));
    g.bench_function("core_submit_pop_one_span", |b| {
        b.iter_batched(
            || one_span(7),
            |req| {
                black_box(core.submit(req));
                for shard in 0..2 {
                    while let Some(batch) = core.pop(shard, Signal::Traces) {
                        core.release_bytes(Signal::Traces, batch.est_bytes);
                    }
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Signals each write to the bench thread.
struct Notify(SyncSender<Instant>);

impl BatchWriter for Notify {
    fn write(&mut self, _group: &Group) -> Result<(), WriteError> {
        let _ = self.0.send(Instant::now());
        Ok(())
    }
}

fn wakeup(c: &mut Criterion) {
    let mut g = c.benchmark_group("wakeup");
    g.sample_size(20);
    let cfg = PipelineConfig { shards: 1, ..PipelineConfig::default() };
    let p = Pipeline::new(cfg, Arc::new(Stats::new())).expect("config");
    let (tx, rx) = sync_channel(16);
    p.start(vec![Box::new(Notify(tx))]).expect("start");
    g.bench_function("idle_writer_push_to_pop", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                // Let the writer park first.
                std::thread::sleep(Duration::from_micros(200));
                let req = one_span(i);
                let sent = Instant::now();
                p.submit(req);
                if let Ok(at) = rx.recv() {
                    total += at.saturating_duration_since(sent);
                }
            }
            total
        })
    });
    g.finish();
    p.stop();
}

criterion_group!(benches, queues, admission, wakeup);
criterion_main!(benches);
