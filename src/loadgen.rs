//! `otelring loadgen`: drives a running server over OTLP/gRPC or OTLP/HTTP (protobuf or JSON,
//! gzip or not) with pre-encoded, distinct, realistic requests, and reports what happened.
//!
//! - Requests are built and encoded before the clock starts (prost types of the
//!   `opentelemetry-proto` crate), every one with its own trace/span ids, so idempotent inserts
//!   never hide work: several services of [`INSTANCES_PER_SERVICE`] instances, each with a
//!   realistic resource ([`resource`]), 5-span traces nested root → children, 10 attributes per
//!   span, span events, a share of error and slow traces; log records of every severity; all five
//!   metric types. Trace and span ids are random as the OpenTelemetry SDKs make them (W3C trace
//!   context), so every index takes scattered keys as from a real fleet; `--ordered-ids` gives
//!   sequential ids instead, only to show the difference.
//! - Two modes: `--rate R` is open loop (request i is due at start + i/R and its latency counts from
//!   that due time, so coordinated omission cannot hide queueing); `--rate 0` sends as fast as
//!   the server answers, `--concurrency` calls in flight.
//! - `--duration S` runs for S seconds instead of sending each request once: the pre-encoded
//!   requests (`--requests` of them) are sent in turn, again and again, each send with its trace
//!   and span ids replaced by fresh random ones in a copy of the body ([`rewrite`]), parent and
//!   log → trace links kept, so that every send is distinct.
//! - Output: a progress line per second on stderr; at the end a table (or `--json`) with sent,
//!   accepted, partial-success dropped, throttled, errors per signal, Export latency
//!   p50/p90/p99/p999/max (hdrhistogram), a per-second timeline (with the server's persisted
//!   items scraped from `/metrics` every second), and, scraped from the server's `/metrics`,
//!   persisted items and the end-to-end latency. `--timeline-out FILE` writes the per-second
//!   timeline as CSV ([`TIMELINE_HEADER`]), with the data dir's size when `--data-dir` is given.
//! - `--priority-ids-out FILE` writes the trace id and span count of every priority trace (an
//!   ERROR span, or a span of 600 ms: over the server's default 500 ms slow threshold) of every
//!   acknowledged request, so a benchmark can check by id that none was lost or dropped.
//! - `--baseline-spans N` sends nothing: it runs the DESIGN 3 storage baseline
//!   ([`crate::bench_baseline`], the same code as `cargo bench --bench store`) and prints spans/s.
//!
//! Built only with the `loadgen` feature, so its dependencies stay out of the server binary.

pub mod rewrite;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exponential_histogram_data_point::Buckets, metric, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Spans per generated trace (a root and its children).
pub const SPANS_PER_TRACE: u64 = 5;
/// Attributes per generated span.
pub const ATTRIBUTES_PER_SPAN: usize = 10;
/// Services the generated resources cycle through.
pub const SERVICES: [&str; 5] = ["checkout", "cart", "payment", "shipping", "frontend"];
/// Distinct instances (pods, hosts) per service: a request's resource is one of
/// `SERVICES.len() × INSTANCES_PER_SERVICE`, as a real fleet has.
pub const INSTANCES_PER_SERVICE: u64 = 4;
/// Largest items per request accepted by `--items`.
pub const MAX_ITEMS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    Grpc,
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Traces,
    Logs,
    Metrics,
    /// Traces, logs and metrics in turn.
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Enc {
    Proto,
    Json,
}

/// `otelring loadgen` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Transport.
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: Wire,
    /// The server's OTLP/gRPC address.
    #[arg(long = "target-grpc", default_value = "127.0.0.1:4317")]
    pub target_grpc: SocketAddr,
    /// The server's OTLP/HTTP address (also scraped for /metrics at the end).
    #[arg(long = "target-http", default_value = "127.0.0.1:4318")]
    pub target_http: SocketAddr,
    /// What to send.
    #[arg(long, value_enum, default_value = "traces")]
    pub signal: Kind,
    /// Body encoding for OTLP/HTTP (gRPC is always protobuf).
    #[arg(long, value_enum, default_value = "proto")]
    pub encoding: Enc,
    /// Compress bodies with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Distinct pre-encoded requests to send.
    #[arg(long, default_value_t = 800)]
    pub requests: u64,
    /// Items (spans, log records, data points) per request, 1..=10000.
    #[arg(long, default_value_t = 1_000)]
    pub items: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Connections (calls are spread over them; HTTP/1.1 uses one connection per call in flight).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Requests per second (open loop); 0 sends as fast as the server answers.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Share of traces with an ERROR span (priority data).
    #[arg(long, default_value_t = 0.02)]
    pub error_share: f64,
    /// Share of traces with a span over 500 ms (priority data).
    #[arg(long, default_value_t = 0.02)]
    pub slow_share: f64,
    /// Seed of the generator (ids as generated, attribute values, priority choices): two runs
    /// with different seeds send different ids. The fresh ids of `--duration`'s later sends come
    /// from a generator seeded anew in every run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ordered ids instead of random ones, only to show the difference: trace ids
    /// `seed ‖ (request << 24 | trace)` and, with `--duration`, one XOR mask per cycle, so
    /// consecutive traces sort next to each other and every index appends at its right edge.
    /// Without it every trace id and span id is random, as the OpenTelemetry SDKs make them (W3C
    /// trace context), and `--duration` draws fresh random ids for every send.
    #[arg(long)]
    pub ordered_ids: bool,
    /// Write the per-second timeline as CSV to this file (one row per second, written as it
    /// goes): offered, accepted, partial-success dropped items, throttled and failed calls,
    /// Export latency p50/p99, the server's persisted items (from /metrics), the data dir's size.
    #[arg(long, value_name = "FILE")]
    pub timeline_out: Option<PathBuf>,
    /// The server's data dir, read only: its size in bytes (every file under it) goes into the
    /// timeline every second.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Tenant header to send.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run for this many seconds, sending the pre-encoded requests in turn again and again, each
    /// send with its trace and span ids rewritten so every send is distinct (protobuf bodies,
    /// without --gzip). `--requests` is then the number of distinct templates.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Write `<trace id hex> <spans>` for every priority trace (an ERROR span or a 600 ms span) of
    /// every acknowledged request (fully or with partial success) to this file.
    #[arg(long, value_name = "FILE")]
    pub priority_ids_out: Option<PathBuf>,
    /// Wait this long after the load before the final /metrics scrape (0: scrape at once).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub settle_ms: u64,
    /// Send nothing: run the DESIGN 3 storage baseline (plain rusqlite, WAL + NORMAL, per-span
    /// trace upsert, 5,000 spans per transaction) with this many spans into an empty file and
    /// print spans/s.
    #[arg(long, value_name = "SPANS")]
    pub baseline_spans: Option<usize>,
    /// Where the baseline's temporary directory goes (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub baseline_dir: Option<PathBuf>,
}

/// A priority trace of a generated request: its id and span count.
type PriorityTrace = ([u8; 16], u64);

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// splitmix64: stable pseudo-random values for the resource attributes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` lowercase hex digits derived from `seed`.
fn hex_digits(seed: u64, n: usize) -> String {
    (0..n.div_ceil(16)).map(|k| format!("{:016x}", mix(seed ^ mix(k as u64)))).collect::<String>()[..n].into()
}

/// A UUID-shaped string derived from `seed`.
fn uuid(seed: u64) -> String {
    let h = hex_digits(seed, 32);
    format!("{}-{}-4{}-a{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
}

/// The resource of instance `instance` (a pod; [`INSTANCES_PER_SERVICE`] per service) of
/// `service`, as a Java service instrumented by the OpenTelemetry agent on Kubernetes (EKS)
/// reports it: the SDK's service.* and telemetry.*, the host, os, process, container, k8s and
/// cloud detectors' attributes. 32 attributes, about 1.4 KB encoded (the `default_resource_is_realistic`
/// test pins the range 0.5–1.5 KB). The same (service, instance) gives the same resource, so a
/// fleet of `SERVICES.len() × INSTANCES_PER_SERVICE` distinct resources sends the load.
pub fn resource(service: &str, instance: u64) -> Option<Resource> {
    let svc = SERVICES.iter().position(|s| *s == service).unwrap_or(0) as u64;
    let seed = mix((svc << 32) | instance);
    let replicaset = hex_digits(mix(svc), 9);
    let pod = format!("{service}-{replicaset}-{}", &hex_digits(seed, 5));
    let node = format!("ip-10-0-{}-{}.eu-west-1.compute.internal", seed % 4, (seed >> 8) % 250 + 2);
    let zone = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][(seed % 3) as usize];
    let i = |v: i64| any_value::Value::IntValue(v);
    Some(Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("service.namespace", s("shop")),
            kv("service.version", s("1.4.2")),
            kv("service.instance.id", s(&uuid(seed))),
            kv("deployment.environment.name", s("production")),
            kv("telemetry.sdk.name", s("opentelemetry")),
            kv("telemetry.sdk.language", s("java")),
            kv("telemetry.sdk.version", s("1.44.1")),
            kv("host.name", s(&pod)),
            kv("host.arch", s("amd64")),
            kv("os.type", s("linux")),
            kv("os.description", s("Linux 6.1.0-28-cloud-amd64")),
            kv("process.pid", i(1)),
            kv("process.executable.name", s("java")),
            kv(
                "process.command_line",
                s(&format!(
                    "/opt/java/openjdk/bin/java -javaagent:/otel/opentelemetry-javaagent.jar -Xms512m \
                     -Xmx2g -jar /app/{service}.jar --spring.profiles.active=prod"
                )),
            ),
            kv("process.runtime.name", s("OpenJDK Runtime Environment")),
            kv("process.runtime.version", s("21.0.5+11-LTS")),
            kv("container.id", s(&hex_digits(seed ^ 1, 64))),
            kv("container.image.name", s(&format!("registry.example.com/shop/{service}"))),
            kv("container.image.tag", s("1.4.2")),
            kv("k8s.cluster.name", s("prod-eu-west-1")),
            kv("k8s.namespace.name", s("shop")),
            kv("k8s.node.name", s(&node)),
            kv("k8s.pod.name", s(&pod)),
            kv("k8s.pod.uid", s(&uuid(seed ^ 2))),
            kv("k8s.replicaset.name", s(&format!("{service}-{replicaset}"))),
            kv("k8s.deployment.name", s(service)),
            kv("cloud.provider", s("aws")),
            kv("cloud.platform", s("aws_eks")),
            kv("cloud.region", s("eu-west-1")),
            kv("cloud.availability_zone", s(zone)),
            kv("cloud.account.id", s("123456789012")),
        ],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: "otelring.loadgen".into(), version: "1".into(), ..Default::default() })
}

/// Waits until `due` with sub-millisecond precision. tokio's timer wheel ticks in whole
/// milliseconds, so `sleep_until` alone wakes up to ~1 ms late, and an open-loop generator that
/// counts latency from the due time would charge that lateness to the server (it showed as a
/// 1.8 ms median for one-span requests that the server answers in 30 µs). The coarse part of the
/// wait stays on the timer; the last 2 ms are a `std::thread::sleep` (nanosleep, ~60 µs slack) on
/// the blocking pool, so no runtime worker is held.
async fn wait_until(due: Instant) {
    const FINE: Duration = Duration::from_millis(2);
    let now = Instant::now();
    if due <= now {
        return;
    }
    if due - now > FINE {
        tokio::time::sleep_until((due - FINE).into()).await;
    }
    let left = due.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Request `r` of the run: random trace and span ids (W3C, as the SDKs make them), or with
/// `--ordered-ids` distinct ordered ids from (seed, r, item).
fn traces_request(
    a: &LoadgenArgs,
    r: u64,
    rng: &mut fastrand::Rng,
) -> (ExportTraceServiceRequest, Vec<PriorityTrace>) {
    let base = now_ns();
    let mut priority = Vec::new();
    let traces = a.items.div_ceil(SPANS_PER_TRACE);
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
    let mut left = a.items;
    for t in 0..traces {
        let (trace_id, root) = if a.ordered_ids {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&a.seed.to_be_bytes());
            id[8..].copy_from_slice(&((r << 24) | t).to_be_bytes());
            (id, ((r << 32) | (t << 4) | 1).to_be_bytes())
        } else {
            (rewrite::random_trace_id(rng), rewrite::random_span_id(rng))
        };
        let error = rng.f64() < a.error_share;
        let slow = rng.f64() < a.slow_share;
        let service = (t as usize) % SERVICES.len();
        let n = left.min(SPANS_PER_TRACE);
        left -= n;
        if error || slow {
            priority.push((trace_id, n));
        }
        let start = base - 1_000_000_000 + t * 1_000;
        for i in 0..n {
            let span_id = match i {
                0 => root.to_vec(),
                _ if a.ordered_ids => ((r << 32) | (t << 4) | (i + 1)).to_be_bytes().to_vec(),
                _ => rewrite::random_span_id(rng).to_vec(),
            };
            let parent = if i == 0 { Vec::new() } else { root.to_vec() };
            let dur = if slow && i == 0 { 600_000_000 } else { 1_000_000 + rng.u64(0..20_000_000) };
            let mut attributes = vec![
                kv("http.method", s(["GET", "POST", "PUT"][(i % 3) as usize])),
                kv("http.route", s(&format!("/api/v1/items/{}", rng.u32(0..500)))),
                kv(
                    "http.status_code",
                    any_value::Value::IntValue(if error && i == n - 1 { 500 } else { 200 }),
                ),
                kv("net.peer.name", s("10.0.0.7")),
                kv("user.id", any_value::Value::IntValue(rng.i64(0..1_000_000))),
                kv("cache.hit", any_value::Value::BoolValue(rng.bool())),
                kv("db.rows", any_value::Value::DoubleValue(rng.f64() * 100.0)),
                kv("thread.name", s("worker-3")),
                kv("feature.flags", s("new-cart,fast-pay")),
                kv("request.id", s(&format!("{r:x}-{t:x}-{i:x}"))),
            ];
            attributes.truncate(ATTRIBUTES_PER_SPAN);
            let events = if i == 1 {
                vec![span::Event {
                    time_unix_nano: start + 500,
                    name: if error { "exception".into() } else { "cache.miss".into() },
                    attributes: vec![kv("exception.message", s("upstream timed out"))],
                    ..Default::default()
                }]
            } else {
                Vec::new()
            };
            by_service[service].push(Span {
                trace_id: trace_id.to_vec(),
                span_id,
                parent_span_id: parent,
                name: format!("{} /api/v1/items", ["GET", "POST", "PUT"][(i % 3) as usize]),
                kind: if i == 0 { 2 } else { 3 },
                start_time_unix_nano: start + i * 100,
                end_time_unix_nano: start + i * 100 + dur,
                attributes,
                events,
                status: Some(Status {
                    code: if error && i == n - 1 { 2 } else { 0 },
                    message: if error && i == n - 1 { "upstream failed".into() } else { String::new() },
                }),
                ..Default::default()
            });
        }
    }
    let request = ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, spans)| ResourceSpans {
                resource: resource(SERVICES[i], r % INSTANCES_PER_SERVICE),
                scope_spans: vec![ScopeSpans { scope: scope(), spans, ..Default::default() }],
                ..Default::default()
            })
            .collect(),
    };
    (request, priority)
}

fn logs_request(a: &LoadgenArgs, r: u64, rng: &mut fastrand::Rng) -> ExportLogsServiceRequest {
    let base = now_ns();
    // Every third record carries a trace context; 10 of them in a row share a trace (and span).
    let mut context = (Vec::new(), Vec::new());
    let records = (0..a.items)
        .map(|i| {
            let sev = (i % 24 + 1) as i32;
            if i % 30 == 0 {
                context = if a.ordered_ids {
                    ([a.seed.to_be_bytes(), ((r << 24) | i | (1 << 23)).to_be_bytes()].concat(), vec![1; 8])
                } else {
                    (rewrite::random_trace_id(rng).to_vec(), rewrite::random_span_id(rng).to_vec())
                };
            }
            let (trace_id, span_id) = if i % 3 == 0 { context.clone() } else { (Vec::new(), Vec::new()) };
            LogRecord {
                time_unix_nano: base - 1_000_000 + i,
                observed_time_unix_nano: base,
                severity_number: sev,
                severity_text: ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"][((sev - 1) / 4) as usize]
                    .into(),
                body: Some(AnyValue {
                    value: Some(s(&format!("request {r}/{i} handled in {} ms", rng.u32(1..900)))),
                }),
                attributes: vec![
                    kv("code.function", s("handle")),
                    kv("user.id", any_value::Value::IntValue(rng.i64(0..1_000_000))),
                    kv("request.id", s(&format!("{r:x}-{i:x}"))),
                ],
                span_id,
                trace_id,
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(SERVICES[(r as usize) % SERVICES.len()], r % INSTANCES_PER_SERVICE),
            scope_logs: vec![ScopeLogs { scope: scope(), log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn metrics_request(a: &LoadgenArgs, r: u64, rng: &mut fastrand::Rng) -> ExportMetricsServiceRequest {
    let now = now_ns();
    let attrs = |i: u64| {
        vec![
            kv("route", s(&format!("/r/{}", i % 50))),
            kv("request.seq", any_value::Value::IntValue((r * MAX_ITEMS + i) as i64)),
        ]
    };
    let metrics = (0..a.items)
        .map(|i| {
            let data = match i % 5 {
                0 => metric::Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        attributes: attrs(i),
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsDouble(rng.f64() * 100.0)),
                        ..Default::default()
                    }],
                }),
                1 => metric::Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        attributes: attrs(i),
                        start_time_unix_nano: now - 60_000_000_000,
                        time_unix_nano: now,
                        value: Some(number_data_point::Value::AsInt(rng.i64(0..100_000))),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                2 => metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: attrs(i),
                        start_time_unix_nano: now - 60_000_000_000,
                        time_unix_nano: now,
                        count: 10,
                        sum: Some(123.5),
                        bucket_counts: vec![1, 2, 3, 4],
                        explicit_bounds: vec![5.0, 10.0, 50.0],
                        min: Some(0.5),
                        max: Some(70.0),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                }),
                3 => metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        attributes: attrs(i),
                        time_unix_nano: now,
                        count: 6,
                        sum: Some(20.0),
                        scale: 2,
                        zero_count: 1,
                        positive: Some(Buckets { offset: 1, bucket_counts: vec![2, 3] }),
                        negative: Some(Buckets { offset: 0, bucket_counts: vec![] }),
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                }),
                _ => metric::Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        attributes: attrs(i),
                        time_unix_nano: now,
                        count: 4,
                        sum: 10.0,
                        quantile_values: vec![
                            ValueAtQuantile { quantile: 0.5, value: 2.0 },
                            ValueAtQuantile { quantile: 0.99, value: 4.0 },
                        ],
                        ..Default::default()
                    }],
                }),
            };
            Metric {
                name: format!("load.metric.{}", i % 5),
                unit: "1".into(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(SERVICES[(r as usize) % SERVICES.len()], r % INSTANCES_PER_SERVICE),
            scope_metrics: vec![ScopeMetrics { scope: scope(), metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// One pre-encoded request.
struct Prepared {
    signal: crate::pipeline::Signal,
    body: Bytes,
    items: u64,
    /// Priority traces (traces requests only), as generated (cycle 0).
    priority: Vec<PriorityTrace>,
    /// The slot of each priority trace in `ids` (random ids with `--duration`).
    priority_slots: Vec<usize>,
    /// Where the ids sit in `body`, grouped by value (only with `--duration`).
    ids: rewrite::Ids,
}

impl Prepared {
    fn priority_spans(&self) -> u64 {
        self.priority.iter().map(|(_, n)| n).sum()
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(b);
    e.finish().unwrap_or_default()
}

fn prepare(a: &LoadgenArgs) -> Result<Vec<Prepared>, String> {
    use crate::pipeline::Signal;
    let mut rng = fastrand::Rng::with_seed(a.seed);
    let json = a.transport == Wire::Http && a.encoding == Enc::Json;
    (0..a.requests)
        .map(|r| {
            let kind = match a.signal {
                Kind::Mixed => [Kind::Traces, Kind::Logs, Kind::Metrics][(r % 3) as usize],
                k => k,
            };
            let mut priority = Vec::new();
            let (signal, raw) = match kind {
                Kind::Traces | Kind::Mixed => {
                    let (m, p) = traces_request(a, r, &mut rng);
                    priority = p;
                    let raw = if json {
                        serde_json::to_vec(&m).map_err(|e| e.to_string())?
                    } else {
                        m.encode_to_vec()
                    };
                    (Signal::Traces, raw)
                }
                Kind::Logs => {
                    let m = logs_request(a, r, &mut rng);
                    let raw = if json {
                        serde_json::to_vec(&m).map_err(|e| e.to_string())?
                    } else {
                        m.encode_to_vec()
                    };
                    (Signal::Logs, raw)
                }
                Kind::Metrics => {
                    let m = metrics_request(a, r, &mut rng);
                    let raw = if json {
                        serde_json::to_vec(&m).map_err(|e| e.to_string())?
                    } else {
                        m.encode_to_vec()
                    };
                    (Signal::Metrics, raw)
                }
            };
            let payload = if a.gzip { gzip(&raw) } else { raw };
            let (body, base) = if a.transport == Wire::Grpc {
                let mut framed = Vec::with_capacity(payload.len() + 5);
                crate::otlp::grpc_frame::encode_frame(a.gzip, &payload, &mut framed);
                (framed, 5)
            } else {
                (payload, 0)
            };
            // Ids are only rewritten with --duration (checked: protobuf, no gzip).
            let ids = if a.duration.is_some() {
                rewrite::Ids::new(&body, rewrite::locate(signal, &body, base)?)
            } else {
                rewrite::Ids::default()
            };
            let priority_slots = if a.duration.is_some() && !a.ordered_ids {
                priority
                    .iter()
                    .map(|(id, _)| ids.trace_slot(id).ok_or("a priority trace id is not in its request"))
                    .collect::<Result<_, _>>()?
            } else {
                Vec::new()
            };
            Ok(Prepared { signal, body: Bytes::from(body), items: a.items, priority, priority_slots, ids })
        })
        .collect()
}

/// What one call came back with.
enum Reply {
    Accepted { dropped: u64 },
    Throttled,
    Error(String),
}

/// Item counters of one signal.
#[derive(Default)]
struct SignalTally {
    /// Items of every request sent.
    sent_items: AtomicU64,
    /// Items of acknowledged requests (fully or with partial success).
    acked_items: AtomicU64,
    /// Items reported rejected by partial success.
    dropped_items: AtomicU64,
    /// Items of throttled requests.
    throttled_items: AtomicU64,
    /// Items of requests that failed otherwise.
    error_items: AtomicU64,
}

/// Counters and latency of the whole run.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    /// Items of the requests sent so far (counted when the call goes out).
    offered_items: AtomicU64,
    accepted_calls: AtomicU64,
    /// Acknowledged items minus the partial-success drops.
    accepted_items: AtomicU64,
    dropped_items: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
    /// Per signal, by `Signal::index`.
    by_signal: [SignalTally; 3],
    /// Priority traces and their spans in acknowledged requests.
    priority_traces_acked: AtomicU64,
    priority_spans_acked: AtomicU64,
    /// Acknowledged requests whose partial-success count exceeds their non-priority items, i.e.
    /// that must have counted priority items as dropped (DESIGN: never).
    priority_violations: AtomicU64,
    /// Export latency in µs (1 µs to 10 min, 3 significant digits).
    latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The same, since the last progress line (reset every second; the timeline's latency).
    interval_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    first_error: Mutex<Option<String>>,
    /// `--priority-ids-out`.
    priority_out: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
}

impl Tally {
    fn new(priority_out: Option<std::fs::File>) -> Self {
        Self {
            latency_us: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).ok()),
            interval_us: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).ok()),
            priority_out: Mutex::new(priority_out.map(std::io::BufWriter::new)),
            ..Self::default()
        }
    }

    /// Records the reply to request `p` sent in cycle `cycle`, with the trace ids `sent` by slot
    /// when its ids were rewritten with random ones (`--ordered-ids`: empty; cycle 0: the ids as
    /// generated).
    fn record(&self, p: &Prepared, cycle: u64, sent: &[[u8; 16]], reply: Reply, latency: Duration) {
        let sig = &self.by_signal[p.signal.index()];
        self.sent.fetch_add(1, Ordering::Relaxed);
        sig.sent_items.fetch_add(p.items, Ordering::Relaxed);
        match reply {
            Reply::Accepted { dropped } => {
                self.accepted_calls.fetch_add(1, Ordering::Relaxed);
                self.accepted_items.fetch_add(p.items.saturating_sub(dropped), Ordering::Relaxed);
                self.dropped_items.fetch_add(dropped, Ordering::Relaxed);
                sig.acked_items.fetch_add(p.items, Ordering::Relaxed);
                sig.dropped_items.fetch_add(dropped, Ordering::Relaxed);
                let priority_spans = p.priority_spans();
                if dropped > p.items.saturating_sub(priority_spans) {
                    self.priority_violations.fetch_add(1, Ordering::Relaxed);
                }
                self.priority_traces_acked.fetch_add(p.priority.len() as u64, Ordering::Relaxed);
                self.priority_spans_acked.fetch_add(priority_spans, Ordering::Relaxed);
                if !p.priority.is_empty() {
                    let mut out = self.priority_out.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(out) = out.as_mut() {
                        for (k, (id, spans)) in p.priority.iter().enumerate() {
                            let id = match p.priority_slots.get(k).and_then(|&slot| sent.get(slot)) {
                                Some(sent) => *sent,
                                None => rewrite::trace_id(id, cycle),
                            };
                            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                            let _ = writeln!(out, "{hex} {spans}");
                        }
                    }
                }
            }
            Reply::Throttled => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                sig.throttled_items.fetch_add(p.items, Ordering::Relaxed);
            }
            Reply::Error(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                sig.error_items.fetch_add(p.items, Ordering::Relaxed);
                self.first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            }
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Some(h) = self.interval_us.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            h.saturating_record(us);
        }
        if let Some(h) = self.latency_us.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            h.saturating_record(us);
        }
    }
}

/// A client connection: an h2 handle for gRPC, or an HTTP/1.1 connection per task.
enum Conn {
    Grpc(h2::client::SendRequest<Bytes>),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

async fn connect_grpc(addr: SocketAddr) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn connect_http(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Reads `partial_success.rejected_*` (field 1 of field 1) from a protobuf Export response.
fn dropped_of(body: &[u8]) -> u64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

async fn call(conn: &mut Conn, a: &LoadgenArgs, signal: crate::pipeline::Signal, body: Bytes) -> Reply {
    match conn {
        Conn::Grpc(h2c) => {
            let mut b = http::Request::builder()
                .method("POST")
                .uri(format!("http://{}{}", a.target_grpc, crate::server::grpc::path_of(signal)))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if a.gzip {
                b = b.header("grpc-encoding", "gzip");
            }
            if let Some(t) = &a.tenant {
                b = b.header("x-tenant-id", t.as_str());
            }
            let Ok(req) = b.body(()) else { return Reply::Error("bad request".into()) };
            let ready = match h2c.clone().ready().await {
                Ok(r) => r,
                Err(e) => return Reply::Error(e.to_string()),
            };
            *h2c = ready;
            let (resp, mut send) = match h2c.send_request(req, false) {
                Ok(x) => x,
                Err(e) => return Reply::Error(e.to_string()),
            };
            let _ = send.send_data(body, true);
            let resp = match resp.await {
                Ok(r) => r,
                Err(e) => return Reply::Error(e.to_string()),
            };
            let mut meta = resp.headers().clone();
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { break };
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            if let Ok(Some(t)) = body.trailers().await {
                meta.extend(t);
            }
            match meta.get("grpc-status").and_then(|v| v.to_str().ok()) {
                Some("0") => Reply::Accepted { dropped: data.get(5..).map_or(0, dropped_of) },
                Some("8") if meta.contains_key("google.rpc.retryinfo-bin") => Reply::Throttled,
                other => Reply::Error(format!(
                    "grpc-status {other:?}: {}",
                    meta.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("")
                )),
            }
        }
        Conn::Http(send) => {
            let path = match signal {
                crate::pipeline::Signal::Traces => "/v1/traces",
                crate::pipeline::Signal::Logs => "/v1/logs",
                crate::pipeline::Signal::Metrics => "/v1/metrics",
            };
            let json = a.encoding == Enc::Json;
            let mut b = http::Request::builder()
                .method("POST")
                .uri(path)
                .header("host", a.target_http.to_string())
                .header("content-type", if json { "application/json" } else { "application/x-protobuf" });
            if a.gzip {
                b = b.header("content-encoding", "gzip");
            }
            if let Some(t) = &a.tenant {
                b = b.header("x-tenant-id", t.as_str());
            }
            let Ok(req) = b.body(Full::new(body)) else {
                return Reply::Error("bad request".into());
            };
            if send.ready().await.is_err() {
                match connect_http(a.target_http).await {
                    Ok(s) => *send = s,
                    Err(e) => return Reply::Error(e),
                }
            }
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(e) => return Reply::Error(e.to_string()),
            };
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            match status {
                200 if json => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let p = &v["partialSuccess"];
                    let d = ["rejectedSpans", "rejectedLogRecords", "rejectedDataPoints"]
                        .iter()
                        .find_map(|k| p[*k].as_str().and_then(|s| s.parse().ok()).or(p[*k].as_u64()))
                        .unwrap_or(0);
                    Reply::Accepted { dropped: d }
                }
                200 => Reply::Accepted { dropped: dropped_of(&body) },
                429 | 503 => Reply::Throttled,
                s => Reply::Error(format!("HTTP {s}: {}", String::from_utf8_lossy(&body))),
            }
        }
    }
}

/// The columns of `--timeline-out` (per-second deltas except `t_s` and `data_dir_bytes`; empty
/// fields: not measured that second).
pub const TIMELINE_HEADER: &str = "second,t_s,offered_items,accepted_items,dropped_items,throttled_calls,\
                                   error_calls,p50_ms,p99_ms,persisted_items,data_dir_bytes";

/// Bytes of every file under `dir` (recursively, symlinks not followed; files that vanish while
/// it walks, as segments being dropped, count as nothing).
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// Scrapes one counter family's value for `signal` from the server's `/metrics`.
async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut send = connect_http(addr).await.ok()?;
    let req = http::Request::builder()
        .uri("/metrics")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

fn metric_value(text: &str, name: &str, signal: &str) -> Option<f64> {
    let label = format!("signal=\"{signal}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&label) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// The server's persisted items (`otelring_ingest_persisted_items_total`) of `signals`.
fn persisted_of(text: &str, signals: &[&str]) -> f64 {
    signals.iter().filter_map(|s| metric_value(text, "otelring_ingest_persisted_items_total", s)).sum()
}

fn signal_names(k: Kind) -> &'static [&'static str] {
    match k {
        Kind::Traces => &["traces"],
        Kind::Logs => &["logs"],
        Kind::Metrics => &["metrics"],
        Kind::Mixed => &["traces", "logs", "metrics"],
    }
}

/// `--baseline-spans`: the DESIGN 3 storage baseline in a fresh directory, removed afterwards.
fn run_baseline(a: &LoadgenArgs, spans: usize) -> Result<(), Box<dyn std::error::Error>> {
    let parent = a.baseline_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = parent.join(format!("otelring-baseline-{}-{}", std::process::id(), now_ns()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("loadgen: DESIGN 3 baseline, {spans} spans into {}", dir.display());
    let wall = Instant::now();
    let rate = crate::bench_baseline::baseline(spans, &dir);
    let wall = wall.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let rate = rate?;
    if a.json {
        let v = serde_json::json!({
            "baseline_spans": spans,
            "spans_per_s": rate,
            "timed_s": spans as f64 / rate,
            "wall_s": wall,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "baseline         {spans} spans, {rate:.0} spans/s (DESIGN 3: plain rusqlite, WAL + \
             NORMAL, per-span trace upsert, 5,000 spans/tx)"
        );
    }
    Ok(())
}

/// Runs the load and prints the result. Returns an error when nothing could be sent.
pub fn run(a: LoadgenArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(spans) = a.baseline_spans {
        return run_baseline(&a, spans);
    }
    if a.items == 0 || a.items > MAX_ITEMS {
        return Err(format!("--items must be 1..={MAX_ITEMS}").into());
    }
    if let Some(d) = a.duration {
        if !(d > 0.0 && d.is_finite()) {
            return Err("--duration must be a positive number of seconds".into());
        }
        if a.gzip || (a.transport == Wire::Http && a.encoding == Enc::Json) {
            return Err(
                "--duration rewrites ids in protobuf bodies: not with --gzip or --encoding json".into()
            );
        }
        if a.requests == 0 {
            return Err("--duration needs at least one request to cycle over".into());
        }
    }
    let priority_out = match &a.priority_ids_out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut timeline_csv = match &a.timeline_out {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
            );
            writeln!(f, "{TIMELINE_HEADER}")?;
            f.flush()?;
            Some(f)
        }
        None => None,
    };
    let prep_start = Instant::now();
    let prepared = Arc::new(prepare(&a)?);
    let bytes: u64 = prepared.iter().map(|p| p.body.len() as u64).sum();
    eprintln!(
        "loadgen: {} requests × {} items pre-encoded ({:.1} MB) in {:.1} s",
        prepared.len(),
        a.items,
        bytes as f64 / 1e6,
        prep_start.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let a = Arc::new(a);
    let tally = Arc::new(Tally::new(priority_out));
    let next = Arc::new(AtomicU64::new(0));
    let timeline = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let signals = signal_names(a.signal);
    let (elapsed, start_unix_ns, scraped_before) = rt.block_on(async {
        let before = scrape(a.target_http).await;
        let before_persisted = before.as_deref().map_or(0.0, |t| persisted_of(t, signals));
        let mut grpc_conns = Vec::new();
        if a.transport == Wire::Grpc {
            for _ in 0..a.connections.max(1) {
                grpc_conns.push(connect_grpc(a.target_grpc).await?);
            }
        }
        let mut http_conns = Vec::new();
        if a.transport == Wire::Http {
            for _ in 0..a.concurrency.max(1) {
                http_conns.push(connect_http(a.target_http).await?);
            }
        }
        let start = Instant::now();
        let start_unix_ns = now_ns();
        eprintln!("loadgen: load started at unix_ns {start_unix_ns}");
        let end = a.duration.map(|d| start + Duration::from_secs_f64(d));
        let progress = {
            let (tally, timeline, target) = (tally.clone(), timeline.clone(), a.target_http);
            let data_dir = a.data_dir.clone();
            let mut csv = timeline_csv.take();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_secs(1));
                t.tick().await;
                let mut prev = [0u64; 5];
                let mut prev_persisted = Some(0.0);
                for second in 1u64.. {
                    t.tick().await;
                    let s = start.elapsed().as_secs_f64();
                    // The server's persisted items this second (a scrape costs it a few µs).
                    let persisted =
                        scrape(target).await.map(|x| persisted_of(&x, signals) - before_persisted);
                    let dir_bytes = match data_dir.clone() {
                        Some(d) => tokio::task::spawn_blocking(move || dir_size(&d)).await.ok(),
                        None => None,
                    };
                    let accepted = tally.accepted_items.load(Ordering::Relaxed);
                    // Export latency of the calls that ended in this second, then reset.
                    let (p50, p99, max) =
                        match tally.interval_us.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                            Some(h) if !h.is_empty() => {
                                let q = (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
                                h.reset();
                                (q.0 as f64 / 1e3, q.1 as f64 / 1e3, q.2 as f64 / 1e3)
                            }
                            _ => (0.0, 0.0, 0.0),
                        };
                    timeline.lock().unwrap_or_else(|e| e.into_inner()).push(serde_json::json!({
                        "t": s,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "max_ms": max,
                        "sent": tally.sent.load(Ordering::Relaxed),
                        "accepted_items": accepted,
                        "dropped_items": tally.dropped_items.load(Ordering::Relaxed),
                        "throttled": tally.throttled.load(Ordering::Relaxed),
                        "errors": tally.errors.load(Ordering::Relaxed),
                        "server_persisted_items": persisted,
                        "offered_items": tally.offered_items.load(Ordering::Relaxed),
                        "data_dir_bytes": dir_bytes,
                    }));
                    if let Some(f) = csv.as_mut() {
                        let now = [
                            tally.offered_items.load(Ordering::Relaxed),
                            accepted,
                            tally.dropped_items.load(Ordering::Relaxed),
                            tally.throttled.load(Ordering::Relaxed),
                            tally.errors.load(Ordering::Relaxed),
                        ];
                        let d: Vec<u64> = now.iter().zip(prev).map(|(n, p)| n.saturating_sub(p)).collect();
                        prev = now;
                        let persisted_delta = match (persisted, prev_persisted) {
                            (Some(n), Some(p)) => format!("{:.0}", (n - p).max(0.0)),
                            _ => String::new(),
                        };
                        if persisted.is_some() {
                            prev_persisted = persisted;
                        }
                        let _ = writeln!(
                            f,
                            "{second},{:.3},{},{},{},{},{},{p50:.3},{p99:.3},{persisted_delta},{}",
                            s,
                            d[0],
                            d[1],
                            d[2],
                            d[3],
                            d[4],
                            dir_bytes.map_or(String::new(), |b| b.to_string())
                        );
                        let _ = f.flush();
                    }
                    eprintln!(
                        "loadgen: {:>5.1} s  sent {}  accepted items {} ({:.0}/s)  dropped {}  \
                         throttled {}  errors {}  persisted {}{}",
                        s,
                        tally.sent.load(Ordering::Relaxed),
                        accepted,
                        accepted as f64 / s,
                        tally.dropped_items.load(Ordering::Relaxed),
                        tally.throttled.load(Ordering::Relaxed),
                        tally.errors.load(Ordering::Relaxed),
                        persisted.map_or("?".into(), |p| format!("{p:.0}")),
                        dir_bytes.map_or(String::new(), |b| format!("  data dir {:.1} MB", b as f64 / 1e6))
                    );
                }
            })
        };
        let mut tasks = Vec::new();
        for w in 0..a.concurrency.max(1) {
            let mut conn = match a.transport {
                Wire::Grpc => Conn::Grpc(grpc_conns[w % grpc_conns.len()].clone()),
                Wire::Http => Conn::Http(http_conns.pop().ok_or("no HTTP connection")?),
            };
            let (a, tally, next, prepared) = (a.clone(), tally.clone(), next.clone(), prepared.clone());
            // Fresh ids per send: each task its own generator, seeded differently in every run.
            let mut rng = fastrand::Rng::with_seed(mix(a.seed ^ now_ns() ^ mix(w as u64)));
            tasks.push(tokio::spawn(async move {
                let n = prepared.len() as u64;
                let mut sent = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    // Each request once, or (--duration) the templates in turn until the end.
                    let (p, cycle) = match end {
                        None => match prepared.get(i as usize) {
                            Some(p) => (p, 0),
                            None => break,
                        },
                        Some(_) => (&prepared[(i % n) as usize], i / n),
                    };
                    // Open loop: request i is due at start + i / rate; latency counts from then.
                    let due =
                        if a.rate > 0.0 { start + Duration::from_secs_f64(i as f64 / a.rate) } else { start };
                    if let Some(end) = end {
                        if due >= end || Instant::now() >= end {
                            break;
                        }
                    }
                    let due = if a.rate > 0.0 {
                        wait_until(due).await;
                        due
                    } else {
                        Instant::now()
                    };
                    // Cycle 0 sends the request as generated; every later send gets new ids.
                    sent.clear();
                    let body = if cycle == 0 {
                        p.body.clone()
                    } else if a.ordered_ids {
                        Bytes::from(rewrite::patch_ordered(&p.body, &p.ids.at, cycle))
                    } else {
                        Bytes::from(p.ids.patch(&p.body, &mut rng, &mut sent))
                    };
                    tally.offered_items.fetch_add(p.items, Ordering::Relaxed);
                    let reply = call(&mut conn, &a, p.signal, body).await;
                    tally.record(p, cycle, &sent, reply, due.elapsed());
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        progress.abort();
        Ok::<_, String>((start.elapsed(), start_unix_ns, before))
    })?;
    let after = rt.block_on(async {
        // Give the writers a moment to commit what was just accepted (--settle-ms).
        tokio::time::sleep(Duration::from_millis(a.settle_ms)).await;
        scrape(a.target_http).await
    });
    if let Some(out) = tally.priority_out.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        out.flush()?;
    }
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|e| e.into_inner()));
    let run = Run { elapsed, start_unix_ns, timeline, templates: prepared.len() as u64 };
    report(&a, &tally, &run, scraped_before.as_deref(), after.as_deref());
    Ok(())
}

/// What a run produced besides the tally.
struct Run {
    elapsed: Duration,
    start_unix_ns: u64,
    timeline: Vec<serde_json::Value>,
    templates: u64,
}

fn report(a: &LoadgenArgs, t: &Tally, run: &Run, before: Option<&str>, after: Option<&str>) {
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let h = t.latency_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let q = |x: f64| h.as_ref().map_or(0.0, |h| h.value_at_quantile(x) as f64 / 1_000.0);
    let max = h.as_ref().map_or(0.0, |h| h.max() as f64 / 1_000.0);
    let signals = signal_names(a.signal);
    let persisted = |text: Option<&str>| text.map(|x| persisted_of(x, signals));
    let persisted_delta = match (persisted(before), persisted(after)) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let accepted = t.accepted_items.load(Ordering::Relaxed);
    let v = serde_json::json!({
        "transport": format!("{:?}", a.transport).to_lowercase(),
        "signal": format!("{:?}", a.signal).to_lowercase(),
        "encoding": format!("{:?}", a.encoding).to_lowercase(),
        "gzip": a.gzip,
        "requests": a.requests,
        "items_per_request": a.items,
        "concurrency": a.concurrency,
        "rate": a.rate,
        "elapsed_s": secs,
        "sent": t.sent.load(Ordering::Relaxed),
        "accepted_calls": t.accepted_calls.load(Ordering::Relaxed),
        "accepted_items": accepted,
        "accepted_items_per_s": accepted as f64 / secs,
        "dropped_items": t.dropped_items.load(Ordering::Relaxed),
        "throttled": t.throttled.load(Ordering::Relaxed),
        "errors": t.errors.load(Ordering::Relaxed),
        "start_unix_ns": run.start_unix_ns,
        "duration_s": a.duration,
        "templates": run.templates,
        "by_signal": crate::pipeline::Signal::ALL.iter().map(|s| {
            let c = &t.by_signal[s.index()];
            let acked = c.acked_items.load(Ordering::Relaxed);
            let dropped = c.dropped_items.load(Ordering::Relaxed);
            (s.as_str().to_owned(), serde_json::json!({
                "sent_items": c.sent_items.load(Ordering::Relaxed),
                "acked_items": acked,
                "dropped_items": dropped,
                "accepted_items": acked.saturating_sub(dropped),
                "throttled_items": c.throttled_items.load(Ordering::Relaxed),
                "error_items": c.error_items.load(Ordering::Relaxed),
            }))
        }).collect::<serde_json::Map<_, _>>(),
        "priority_traces_acked": t.priority_traces_acked.load(Ordering::Relaxed),
        "priority_spans_acked": t.priority_spans_acked.load(Ordering::Relaxed),
        "priority_violations": t.priority_violations.load(Ordering::Relaxed),
        "timeline": run.timeline,
        "first_error": t.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": max },
        "server_persisted_items_delta": persisted_delta,
        // Logs the server made from span events and ERROR spans (stored in `logs`, outside the
        // books): counted at admission, so final once every call is answered.
        "server_synthesized_logs_delta": match (before, after) {
            (Some(b), Some(x)) => {
                let of = |t: &str| metric_value(t, "otelring_ingest_synthesized_items_total", "logs");
                Some(of(x).unwrap_or(0.0) - of(b).unwrap_or(0.0))
            }
            _ => None,
        },
        "server_e2e_latency_buckets": after.map(|x| x.lines().filter(|l| l.starts_with("otelring_ingest_e2e_latency_seconds_count")).map(str::to_owned).collect::<Vec<_>>()),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!("transport        {:?} ({:?}{})", a.transport, a.encoding, if a.gzip { ", gzip" } else { "" });
    println!(
        "signal           {:?}, {} requests × {} items, concurrency {}",
        a.signal, a.requests, a.items, a.concurrency
    );
    println!("elapsed          {secs:.2} s");
    println!("sent             {}", v["sent"]);
    println!("accepted items   {accepted} ({:.0}/s)", accepted as f64 / secs);
    println!("dropped (partial){:>}", format!(" {}", v["dropped_items"]));
    println!("throttled        {}", v["throttled"]);
    println!(
        "errors           {}{}",
        v["errors"],
        t.first_error
            .lock()
            .map(|e| e.clone().map(|e| format!(" (first: {e})")).unwrap_or_default())
            .unwrap_or_default()
    );
    println!(
        "latency ms       p50 {:.2}  p90 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        max
    );
    let priority = t.priority_traces_acked.load(Ordering::Relaxed);
    if priority > 0 {
        println!(
            "priority acked   {priority} traces, {} spans (requests that dropped priority: {})",
            t.priority_spans_acked.load(Ordering::Relaxed),
            t.priority_violations.load(Ordering::Relaxed)
        );
    }
    match persisted_delta {
        Some(d) => println!("server persisted {d:.0} items during the run (+{} ms)", a.settle_ms),
        None => println!("server persisted (could not scrape /metrics at {})", a.target_http),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_resource_is_realistic() {
        let mut sizes = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        for service in SERVICES {
            for instance in 0..INSTANCES_PER_SERVICE * 3 {
                let r = resource(service, instance).unwrap();
                assert!(r.attributes.len() >= 15);
                sizes.push(r.encoded_len());
                distinct.insert(r.encode_to_vec());
            }
        }
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        eprintln!(
            "default resource: {} attributes, {min}..={max} bytes encoded",
            resource("cart", 0).unwrap().attributes.len()
        );
        assert!(*min >= 500 && *max <= 1500, "{min}..={max} bytes");
        // Every (service, instance) its own resource; the generator bounds the fleet by sending
        // instance r % INSTANCES_PER_SERVICE.
        assert_eq!(distinct.len(), SERVICES.len() * INSTANCES_PER_SERVICE as usize * 3);
    }

    #[test]
    fn dir_size_sums_the_files_below() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub").join("b"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(d.path()), 123);
        assert_eq!(dir_size(&d.path().join("missing")), 0);
    }
}
