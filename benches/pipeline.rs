//! Pipeline benchmark (criterion): decoded requests → admission → lanes → writer threads →
//! SQLite shards in a temp dir, in persisted spans per second, so regressions show without
//! sockets. Requests are decoded once from a realistic protobuf request (the decoder is measured by
//! benches/decode.rs); each submitted copy gets fresh random trace ids and span ids (128 and 64
//! bits, as the OpenTelemetry SDKs make them; parent links kept), so idempotent inserts never hide
//! work and every index takes the scattered keys a real fleet sends. Timed: from the first submit
//! until every admitted span is committed.
//!
//! Run: `cargo bench --bench pipeline` (`PIPELINE_BENCH_ORDERED_IDS=1`: sequential trace ids
//! instead, only to show the difference).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otelring::bench_baseline::Gen;
use otelring::config::{DecodeConfig, PipelineConfig, StoreConfig};
use otelring::pipeline::batch::{Received, Request, Rows, SpanId, TraceId};
use otelring::pipeline::{Outcome, Pipeline, Signal, Stats};
use otelring::store::Store;
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Spans per request, as the DESIGN 3 end-to-end load.
const SPANS: u64 = 1_000;
/// Spans per trace.
const PER_TRACE: u64 = 5;

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

/// A 1,000-span request: 200 traces of 5 spans, 10 attributes each.
fn encoded_request() -> Vec<u8> {
    let spans = (0..SPANS)
        .map(|i| {
            let t = i / PER_TRACE;
            let mut trace_id = [0u8; 16];
            trace_id[8..].copy_from_slice(&t.to_be_bytes());
            Span {
                trace_id: trace_id.to_vec(),
                span_id: (i + 1).to_be_bytes().to_vec(),
                parent_span_id: if i % PER_TRACE == 0 {
                    vec![]
                } else {
                    (t * PER_TRACE + 1).to_be_bytes().to_vec()
                },
                name: "GET /api/v1/items".into(),
                kind: 2,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i,
                end_time_unix_nano: 1_700_000_000_010_000_000 + i,
                attributes: (0..10)
                    .map(|a| {
                        kv(&format!("attr.{a}"), any_value::Value::StringValue(format!("value-{a}-{i}")))
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", any_value::Value::StringValue("bench".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Fresh ids for the copies of the template: random (W3C-style, never zero) or, only to show the
/// difference, sequential trace ids.
struct Ids {
    rng: Gen,
    ordered: bool,
    next: u64,
}

impl Ids {
    fn trace(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        if self.ordered {
            self.next += 1;
            id[..8].copy_from_slice(&[0xbe; 8]);
            id[8..].copy_from_slice(&self.next.to_be_bytes());
        } else {
            while id == [0; 16] {
                id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
                id[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes());
            }
        }
        TraceId(id)
    }

    fn span(&mut self) -> SpanId {
        SpanId(self.rng.next_u64().max(1).to_be_bytes())
    }
}

/// The decoded request with every trace id and span id replaced by a fresh one (random unless
/// ordered), each span's parent pointing at its parent's new id.
fn fresh(template: &Rows, ids: &mut Ids) -> Request {
    let mut rows = template.clone();
    if let Rows::Traces(groups) = &mut rows {
        for g in groups {
            let id = ids.trace();
            g.trace.trace_id = id;
            let new: Vec<(SpanId, SpanId)> = g.spans.iter().map(|s| (s.span_id, ids.span())).collect();
            let renamed = |old: SpanId| new.iter().find(|(o, _)| *o == old).map_or(old, |(_, n)| *n);
            for s in &mut g.spans {
                s.trace_id = id;
                s.span_id = renamed(s.span_id);
                s.parent_span_id = s.parent_span_id.map(renamed);
            }
        }
    }
    Request::new(rows, Received::now())
}

fn bench(c: &mut Criterion) {
    let decoded = otelring::otlp::decode_traces_proto(
        &encoded_request(),
        &DecodeConfig::default(),
        Arc::from("default"),
        Received::now(),
    )
    .expect("bench request decodes");
    let template = decoded.request.rows;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(SPANS));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for shards in [1usize, 2] {
        let dir = tempfile::tempdir().expect("temp dir");
        let stats = Arc::new(Stats::new());
        let store =
            Store::open(&StoreConfig::for_data_dir(dir.path()), shards, stats.clone()).expect("store");
        let cfg =
            PipelineConfig { shards, queue_size: 65_536, max_bytes: 1 << 38, ..PipelineConfig::default() };
        let pipeline = Pipeline::new(cfg, stats.clone()).expect("pipeline");
        pipeline.start(store.into_writers()).expect("start");
        let ordered = std::env::var_os("PIPELINE_BENCH_ORDERED_IDS").is_some_and(|v| v != "0");
        let mut ids = Ids { rng: Gen::new(0x5EED + shards as u64), ordered, next: 0 };
        g.bench_function(format!("submit_to_commit_{shards}_shard"), |b| {
            b.iter_custom(|iters| {
                let requests: Vec<Request> = (0..iters).map(|_| fresh(&template, &mut ids)).collect();
                let persisted = || stats.signal(Signal::Traces).persisted_items.load(Ordering::Relaxed);
                let target = persisted() + iters * SPANS;
                let start = Instant::now();
                for r in requests {
                    let out = pipeline.submit(r).outcome;
                    assert!(matches!(out, Outcome::Accepted { .. }), "{out:?}");
                }
                while persisted() < target {
                    std::thread::sleep(Duration::from_micros(200));
                }
                start.elapsed()
            })
        });
        pipeline.stop();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
