//! Decode benchmarks (criterion, `Throughput::Bytes` of the protobuf request):
//! - `otelring_rows`: our hand-written reader, request bytes → rows with priority flags;
//! - `prost_rows`: prost decoding the same bytes into opentelemetry-proto types, then the same
//!   conversion to rows (the shared builders of `src/otlp/build.rs`, via
//!   tests/decode/reference.rs): the DESIGN 3 baseline, goal 2×;
//! - `prost_bare`: prost decoding alone (our decoder has no separate bare stage: it goes straight
//!   to rows, so this compares our full work against prost's partial work);
//! - `otelring_json_rows`: the OTLP/JSON form of the same request → rows (informative).
//!
//! Requests: 5 resources × 100 spans × 10 attributes with events; 1,000 log records; 500
//! histogram points. Both decoders run in one binary with the same (system) allocator.
//! Run: `cargo bench --bench decode`; figures in docs/PERFORMANCE.md ("## Decode").

#[path = "../tests/decode/fixtures.rs"]
mod fixtures;
#[path = "../tests/decode/reference.rs"]
mod reference;

use criterion::{Criterion, Throughput, criterion_group};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otelring::config::DecodeConfig;
use otelring::otlp::{self, Encoding};
use otelring::pipeline::Signal;
use prost::Message as _;
use std::hint::black_box;
use std::time::Duration;

fn bench_decode(c: &mut Criterion) {
    let cfg = DecodeConfig::default();
    let t = fixtures::traces(5, 100);
    let l = fixtures::logs(1_000);
    let m = fixtures::histograms(500);
    let cases: [(&str, Signal, Vec<u8>, Vec<u8>); 3] = [
        ("traces_5x100", Signal::Traces, t.encode_to_vec(), reference::traces_json(&t)),
        ("logs_1000", Signal::Logs, l.encode_to_vec(), reference::logs_json(&l)),
        ("histograms_500", Signal::Metrics, m.encode_to_vec(), reference::metrics_json(&m)),
    ];
    for (name, signal, pb, json) in &cases {
        // The two paths must agree before they are timed.
        reference::check(&format!("proto_{}", signal.as_str()), pb).expect("decoders disagree");
        let mut g = c.benchmark_group(format!("decode/{name}"));
        g.throughput(Throughput::Bytes(pb.len() as u64));
        g.bench_function("otelring_rows", |b| {
            b.iter(|| {
                otlp::decode(
                    *signal,
                    Encoding::Protobuf,
                    black_box(pb),
                    &cfg,
                    reference::tenant(),
                    reference::received(),
                )
            })
        });
        g.bench_function("prost_rows", |b| {
            b.iter(|| match signal {
                Signal::Traces => ExportTraceServiceRequest::decode(black_box(&pb[..]))
                    .map(|r| reference::traces_rows(&r, &cfg))
                    .is_ok(),
                Signal::Logs => ExportLogsServiceRequest::decode(black_box(&pb[..]))
                    .map(|r| reference::logs_rows(&r, &cfg))
                    .is_ok(),
                Signal::Metrics => ExportMetricsServiceRequest::decode(black_box(&pb[..]))
                    .map(|r| reference::metrics_rows(&r, &cfg))
                    .is_ok(),
            })
        });
        g.bench_function("prost_bare", |b| {
            b.iter(|| match signal {
                Signal::Traces => ExportTraceServiceRequest::decode(black_box(&pb[..])).is_ok(),
                Signal::Logs => ExportLogsServiceRequest::decode(black_box(&pb[..])).is_ok(),
                Signal::Metrics => ExportMetricsServiceRequest::decode(black_box(&pb[..])).is_ok(),
            })
        });
        g.bench_function("otelring_json_rows", |b| {
            b.iter(|| {
                otlp::decode(
                    *signal,
                    Encoding::Json,
                    black_box(json),
                    &cfg,
                    reference::tenant(),
                    reference::received(),
                )
            })
        });
        g.finish();
    }
}

/// Paired A/B ratios, robust to the noise of a shared 2-core machine: rounds alternate a batch
/// of `otelring_rows` with a batch of `prost_rows` (and of `prost_bare`) on the same request, and
/// the median of the per-round ratios is printed. Run with `cargo bench --bench decode -- paired`.
fn paired(filter: &str) {
    if !"paired".contains(filter) && !filter.is_empty() {
        return;
    }
    let cfg = DecodeConfig::default();
    let t = fixtures::traces(5, 100).encode_to_vec();
    let l = fixtures::logs(1_000).encode_to_vec();
    let m = fixtures::histograms(500).encode_to_vec();
    const ROUNDS: usize = 41;
    const BATCH: usize = 20;
    for (name, signal, pb) in [
        ("traces_5x100", Signal::Traces, &t),
        ("logs_1000", Signal::Logs, &l),
        ("histograms_500", Signal::Metrics, &m),
    ] {
        let ours = || {
            black_box(otlp::decode(
                signal,
                Encoding::Protobuf,
                pb,
                &cfg,
                reference::tenant(),
                reference::received(),
            ))
            .is_ok()
        };
        let prost_rows = || match signal {
            Signal::Traces => {
                ExportTraceServiceRequest::decode(&pb[..]).map(|r| reference::traces_rows(&r, &cfg)).is_ok()
            }
            Signal::Logs => {
                ExportLogsServiceRequest::decode(&pb[..]).map(|r| reference::logs_rows(&r, &cfg)).is_ok()
            }
            Signal::Metrics => ExportMetricsServiceRequest::decode(&pb[..])
                .map(|r| reference::metrics_rows(&r, &cfg))
                .is_ok(),
        };
        let prost_bare = || match signal {
            Signal::Traces => ExportTraceServiceRequest::decode(&pb[..]).is_ok(),
            Signal::Logs => ExportLogsServiceRequest::decode(&pb[..]).is_ok(),
            Signal::Metrics => ExportMetricsServiceRequest::decode(&pb[..]).is_ok(),
        };
        let time = |f: &dyn Fn() -> bool| {
            let t0 = std::time::Instant::now();
            for _ in 0..BATCH {
                black_box(f());
            }
            t0.elapsed().as_secs_f64() / BATCH as f64
        };
        let (mut r_rows, mut r_bare, mut ours_t) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let a = time(&ours);
            let b = time(&prost_rows);
            let c = time(&prost_bare);
            r_rows.push(b / a);
            r_bare.push(c / a);
            ours_t.push(a);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ours_med = med(&mut ours_t);
        println!(
            "paired {name}: otelring_rows {:.0} µs ({:.0} MiB/s); prost_rows / otelring_rows = {:.2}x; prost_bare / otelring_rows = {:.2}x (median of {ROUNDS} rounds)",
            ours_med * 1e6,
            pb.len() as f64 / ours_med / (1024.0 * 1024.0),
            med(&mut r_rows),
            med(&mut r_bare)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_decode
}

fn main() {
    // `cargo bench --bench decode -- <filter>`: the first free argument filters.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    paired(&filter);
    if filter != "paired" {
        benches();
    }
    Criterion::default().configure_from_args().final_summary();
}
