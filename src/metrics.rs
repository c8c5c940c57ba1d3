//! Prometheus metrics and the books (DESIGN 1.7), served by the HTTP listener at `GET /metrics`.
//!
//! This module owns the exposition and the counters only the server knows (received, filtered,
//! refused requests, throttles, Export durations: [`ServerCounters`]). Everything else is **read
//! at scrape time** from where it lives, by one [`prometheus_client`] [`Collector`]:
//!
//! - the pipeline's books in items and batches, end-to-end latency, writer commit time and rows per
//!   transaction: [`Stats`];
//! - queue depth and bytes: [`QueueGauges`] (implemented by [`Pipeline`]), read live from the
//!   admission words;
//! - in-flight body bytes, WAL bytes per shard, DLQ files / bytes / replays / failures /
//!   evictions: [`LiveGauges`], implemented by the server over its budget and the store.
//!
//! Nothing is mirrored into separate metric objects, so an exported value cannot drift from its
//! source. Invariants:
//! - every metric name and every label combination is exported from start, at 0;
//! - counters and histograms never reset; histogram bucket counts are cumulative and monotone;
//! - `in_flight` and `dlq_pending` are tracked `i64` gauges exported as they are (a transiently
//!   negative value is a bookkeeping race made visible, not hidden);
//! - the books identity, per signal, exact whenever the server is quiescent:
//!   `received + dlq_recovered = persisted + dropped + rejected + filtered + lost + dlq_pending +
//!   in_flight` ([`Metrics::books_balanced`]).
//!
//! Histograms are recorded into hdrhistogram (3 significant digits) and exported as Prometheus
//! histograms with the fixed buckets [`LATENCY_BUCKETS_US`] (seconds) and [`ROWS_BUCKETS`]. A
//! sample is counted under the first bound at or above the lowest value of its hdrhistogram bin
//! (the semantics of hdrhistogram's own `count_between`), so a sample within 0.1% above a bound
//! may count under it. `_sum` is exact for Export durations (kept alongside the histogram);
//! for end-to-end latency, commit time and rows per commit it is computed from the histogram
//! (each bin's median-equivalent value × its count, hdrhistogram's `mean() × len()`), within
//! 0.1% of the exact sum.
//!
//! All counters here are plain `std` atomics with `Relaxed` ordering: statistics read by scrapes
//! and tests; they order nothing.

use crate::pipeline::stats::{LostReason, RejectReason, SignalStats, Stats, hdr};
use crate::pipeline::{Pipeline, Signal};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prefix of every metric name (DESIGN 1.7).
pub const PREFIX: &str = "otelring";

/// `Content-Type` of [`Metrics::encode`]: the Prometheus text format 0.0.4, which every
/// Prometheus server and `prometheus_client.parser` read.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Content-Type` of [`Metrics::encode_openmetrics`] (for scrapers that ask for OpenMetrics in
/// `Accept`).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (µs) of the latency histograms, exported in seconds: end-to-end latency, Export
/// duration and writer commit time. 100 µs to 30 s in 1–2.5–5 steps: an async-mode Export is
/// answered in well under a millisecond, a commit-mode Export waits for one group commit (tens of
/// ms), and the drain deadline (`OTELRING_SHUTDOWN_TIMEOUT`, 30 s) bounds how long a batch can
/// wait in a ring; slower samples land in `+Inf`.
pub const LATENCY_BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Upper bounds of `otelring_writer_rows_per_commit`: 1 row to 100,000 rows. The default
/// coalescing limit (`INGEST_WRITER_MAX_ROWS`) is 20,000 rows per transaction; a group can pass
/// it by at most one batch, and trace rows and synthesized logs count too, hence the two bounds
/// above it.
pub const ROWS_BUCKETS: [u64; 13] =
    [1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000];

/// The only reason items are dropped (acknowledged as partial success, then discarded).
pub const DROP_REASON: &str = "soft_backpressure";

/// The OTLP transport a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc = 0,
    Http = 1,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Grpc, Transport::Http];
    pub const COUNT: usize = 2;

    /// The label value (`transport="grpc"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why decoded items were filtered out by policy (`INGEST_MIN_SEVERITY`, service lists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterReason {
    MinSeverity = 0,
    Service = 1,
}

impl FilterReason {
    pub const ALL: [FilterReason; 2] = [FilterReason::MinSeverity, FilterReason::Service];
    pub const COUNT: usize = 2;

    /// The label value (`reason="min_severity"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FilterReason::MinSeverity => "min_severity",
            FilterReason::Service => "service",
        }
    }
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a request was refused before its items were decoded (so it counts in requests, not items).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestRejectReason {
    /// Its body did not fit the `OTELRING_MAX_INFLIGHT_BYTES` budget (429 / RESOURCE_EXHAUSTED).
    InflightBudget = 0,
    /// Over `OTELRING_MAX_BODY_BYTES`, on the wire or inflated (413 / RESOURCE_EXHAUSTED).
    BodyTooLarge = 1,
    /// The server is stopping (503 / UNAVAILABLE).
    Stopping = 2,
    /// Unknown content type or encoding (415 / UNIMPLEMENTED).
    UnsupportedMediaType = 3,
    /// Missing or unknown API key, or a tenant conflicting with the key's.
    Unauthenticated = 4,
    /// Undecodable (400 / INVALID_ARGUMENT).
    Invalid = 5,
}

impl RequestRejectReason {
    pub const ALL: [RequestRejectReason; 6] = [
        Self::InflightBudget,
        Self::BodyTooLarge,
        Self::Stopping,
        Self::UnsupportedMediaType,
        Self::Unauthenticated,
        Self::Invalid,
    ];
    pub const COUNT: usize = 6;

    /// The label value (`reason="inflight_budget"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InflightBudget => "inflight_budget",
            Self::BodyTooLarge => "too_large",
            Self::Stopping => "stopping",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthenticated => "unauthenticated",
            Self::Invalid => "invalid",
        }
    }
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Adds `n` to a counter cell (`None` cannot happen: every index is built from enum values below
/// the array's length; `get` keeps it from panicking anyway).
fn bump(cell: Option<&AtomicU64>, n: u64) {
    if let Some(c) = cell {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads a counter cell (0 for `None`, see [`bump`]).
fn read(cell: Option<&AtomicU64>) -> u64 {
    cell.map_or(0, |c| c.load(Ordering::Relaxed))
}

/// One Export-duration histogram: µs samples plus their exact sum.
#[derive(Default)]
struct DurationHist {
    /// Allocated on the first sample (each is about 200 KB).
    hist: Option<hdr::Histogram>,
    /// Exact sum of the samples, µs (saturating: 584,000 years).
    sum_us: u64,
}

/// Counters only the server knows, per signal: items received and filtered, requests refused
/// before decoding, throttles, Export durations. Updated on the request path with `Relaxed`
/// atomics (one `Mutex` per Export-duration histogram).
#[derive(Default)]
pub struct ServerCounters {
    /// `[signal][transport]`.
    received: [AtomicU64; Signal::COUNT * Transport::COUNT],
    /// `[signal][filter reason]`.
    filtered: [AtomicU64; Signal::COUNT * FilterReason::COUNT],
    /// `[signal][transport][request reject reason]`.
    rejected_requests: [[AtomicU64; RequestRejectReason::COUNT]; Signal::COUNT * Transport::COUNT],
    /// `[signal][transport]`.
    throttled: [AtomicU64; Signal::COUNT * Transport::COUNT],
    /// `[signal][transport]`.
    export: [Mutex<DurationHist>; Signal::COUNT * Transport::COUNT],
}

impl fmt::Debug for ServerCounters {
    /// Totals per signal only (the histograms hold thousands of bins).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ServerCounters");
        for s in Signal::ALL {
            d.field(s.as_str(), &(self.received_total(s), self.filtered_total(s)));
        }
        d.finish_non_exhaustive()
    }
}

/// Index of `[signal][transport]`.
fn st(s: Signal, t: Transport) -> usize {
    s.index() * Transport::COUNT + t.index()
}

impl ServerCounters {
    /// `items` decoded from one request.
    pub fn received(&self, signal: Signal, transport: Transport, items: u64) {
        bump(self.received.get(st(signal, transport)), items);
    }
    /// `items` taken out by a policy filter (never submitted).
    pub fn filtered(&self, signal: Signal, reason: FilterReason, items: u64) {
        bump(self.filtered.get(signal.index() * FilterReason::COUNT + reason.index()), items);
    }
    /// One request refused before decoding.
    pub fn rejected_request(&self, signal: Signal, transport: Transport, reason: RequestRejectReason) {
        let row = self.rejected_requests.get(st(signal, transport));
        bump(row.and_then(|r| r.get(reason.index())), 1);
    }
    /// One request answered 429 / RESOURCE_EXHAUSTED with a retry delay: an in-flight budget
    /// refusal (also counted by [`ServerCounters::rejected_request`]) or an admission rejection for
    /// `queue_full` / `bytes_full` (also in the pipeline's rejected items). Exported per transport
    /// as `otelring_http_otlp_throttled_total` and `otelring_grpc_throttled_total`.
    pub fn throttled(&self, signal: Signal, transport: Transport) {
        bump(self.throttled.get(st(signal, transport)), 1);
    }
    /// One Export call's duration (request received → answer sent), recorded in µs.
    pub fn export_duration(&self, signal: Signal, transport: Transport, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(m) = self.export.get(st(signal, transport)) {
            let mut h = m.lock().unwrap_or_else(|p| p.into_inner());
            h.hist.get_or_insert_with(hdr::Histogram::new).record(us);
            h.sum_us = h.sum_us.saturating_add(us);
        }
    }

    /// Items received for `signal` on `transport` so far.
    pub fn received_items(&self, signal: Signal, transport: Transport) -> u64 {
        read(self.received.get(st(signal, transport)))
    }
    /// Items received for `signal` on every transport.
    pub fn received_total(&self, signal: Signal) -> u64 {
        Transport::ALL.iter().map(|&t| self.received_items(signal, t)).sum()
    }
    /// Items of `signal` filtered for `reason`.
    pub fn filtered_items(&self, signal: Signal, reason: FilterReason) -> u64 {
        read(self.filtered.get(signal.index() * FilterReason::COUNT + reason.index()))
    }
    /// Items of `signal` filtered for any reason.
    pub fn filtered_total(&self, signal: Signal) -> u64 {
        FilterReason::ALL.iter().map(|&r| self.filtered_items(signal, r)).sum()
    }
    /// Requests refused before decoding.
    pub fn rejected_requests(
        &self,
        signal: Signal,
        transport: Transport,
        reason: RequestRejectReason,
    ) -> u64 {
        let row = self.rejected_requests.get(st(signal, transport));
        read(row.and_then(|r| r.get(reason.index())))
    }
    /// Throttled requests.
    pub fn throttled_count(&self, signal: Signal, transport: Transport) -> u64 {
        read(self.throttled.get(st(signal, transport)))
    }
    /// Export calls recorded by [`ServerCounters::export_duration`].
    pub fn export_count(&self, signal: Signal, transport: Transport) -> u64 {
        self.export.get(st(signal, transport)).map_or(0, |m| {
            m.lock().unwrap_or_else(|p| p.into_inner()).hist.as_ref().map_or(0, hdr::Histogram::len)
        })
    }

    /// The Export-duration histogram of (signal, transport) in seconds, computed under its lock.
    fn export_snapshot(&self, signal: Signal, transport: Transport) -> HistSnapshot {
        match self.export.get(st(signal, transport)) {
            Some(m) => {
                let h = m.lock().unwrap_or_else(|p| p.into_inner());
                let mut snap = HistSnapshot::from_hdr(
                    h.hist.as_ref().and_then(hdr::Histogram::inner),
                    &LATENCY_BUCKETS_US,
                    US_PER_SECOND,
                );
                snap.sum = h.sum_us as f64 / US_PER_SECOND;
                snap
            }
            None => HistSnapshot::from_hdr(None, &LATENCY_BUCKETS_US, US_PER_SECOND),
        }
    }
}

/// Live queue values of the pipeline, read at scrape time.
pub trait QueueGauges: Send + Sync {
    /// Batches queued (reserved, not yet popped) for `signal`.
    fn queue_depth(&self, signal: Signal) -> u64;
    /// Estimated bytes held (reserved, not yet committed or spilled) for `signal`.
    fn queue_bytes(&self, signal: Signal) -> u64;
    /// Number of shards (so `otelring_wal_bytes{shard}` is exported for each from start).
    fn shards(&self) -> usize;
    /// Capacity of each signal's queue: (batches, bytes), i.e. `INGEST_PIPELINE_QUEUE_SIZE` and
    /// `INGEST_PIPELINE_MAX_BYTES`, so alert rules can compare depth and bytes with their caps.
    /// 0 = unknown.
    fn capacity(&self) -> (u64, u64) {
        (0, 0)
    }
}

impl QueueGauges for Pipeline {
    fn queue_depth(&self, signal: Signal) -> u64 {
        Pipeline::queue_depth(self, signal)
    }
    fn queue_bytes(&self, signal: Signal) -> u64 {
        Pipeline::queue_bytes(self, signal)
    }
    fn shards(&self) -> usize {
        self.config().shards
    }
    fn capacity(&self) -> (u64, u64) {
        (self.config().queue_size, self.config().max_bytes)
    }
}

/// Values only the server and the store know, read at scrape time. Every method defaults to 0
/// (or no shard), so a server without a store still compiles and exports them at 0.
pub trait LiveGauges: Send + Sync {
    /// Bytes reserved now from the `OTELRING_MAX_INFLIGHT_BYTES` budget (bodies being read and
    /// decoded).
    fn inflight_bytes(&self) -> u64 {
        0
    }
    /// Size of each shard's `-wal` file, indexed by shard.
    fn wal_bytes(&self) -> Vec<u64> {
        Vec::new()
    }
    /// DLQ files pending replay (all shards).
    fn dlq_files(&self) -> u64 {
        0
    }
    /// Bytes of the DLQ files pending replay (all shards).
    fn dlq_bytes(&self) -> u64 {
        0
    }
    /// Items replayed from the DLQ into the database (counter).
    fn dlq_replayed_items(&self) -> u64 {
        0
    }
    /// DLQ files replayed into the database (counter).
    fn dlq_replayed_files(&self) -> u64 {
        0
    }
    /// DLQ operations that failed: replays (database or DLQ disk unavailable) and writes
    /// (counter).
    fn dlq_failed(&self) -> u64 {
        0
    }
    /// DLQ files evicted because the DLQ was full (their items count as lost) (counter).
    fn dlq_evicted_files(&self) -> u64 {
        0
    }
    /// Segment values of every shard, indexed by shard.
    fn segments(&self) -> Vec<SegmentValues> {
        Vec::new()
    }
}

/// One shard's segment values (DESIGN 1.4 revised), read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentValues {
    /// Segments of the shard (active included) and their bytes on disk (files + WAL).
    pub segments: u64,
    pub data_bytes: u64,
    pub active_bytes: u64,
    /// The shard's share of `OTELRING_RETENTION_BYTES` (0: no size limit).
    pub retention_limit_bytes: u64,
    /// Counters: segments dropped by retention for age / for the size limit, their bytes and rows.
    pub dropped_age: u64,
    pub dropped_bytes_limit: u64,
    pub dropped_bytes: u64,
    pub dropped_rows: u64,
    /// Counter: rotations; gauge: the longest writer pause one caused (ns).
    pub rotations: u64,
    pub rotation_max_pause_ns: u64,
    /// Counter: spans not stored again because the previous segment holds them.
    pub prev_segment_duplicates: u64,
}

/// [`LiveGauges`] of a server with no store or budget: everything 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLiveGauges;

impl LiveGauges for NoLiveGauges {}

/// One signal's books in the terms of DESIGN 1.7 (the server's terms included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalBooks {
    pub received: u64,
    pub dlq_recovered: u64,
    pub persisted: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub filtered: u64,
    pub lost: u64,
    pub dlq_pending: i64,
    pub in_flight: i64,
}

impl SignalBooks {
    /// True when `received + dlq_recovered = persisted + dropped + rejected + filtered + lost +
    /// dlq_pending + in_flight`.
    pub fn balanced(&self) -> bool {
        let left = i128::from(self.received) + i128::from(self.dlq_recovered);
        let right = i128::from(self.persisted)
            + i128::from(self.dropped)
            + i128::from(self.rejected)
            + i128::from(self.filtered)
            + i128::from(self.lost)
            + i128::from(self.dlq_pending)
            + i128::from(self.in_flight);
        left == right
    }
}

/// What the collector reads at each scrape.
struct Sources {
    stats: Arc<Stats>,
    queues: Arc<dyn QueueGauges>,
    live: Arc<dyn LiveGauges>,
    counters: ServerCounters,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").field("counters", &self.counters).finish_non_exhaustive()
    }
}

/// The registry and its live sources. Share it as `Arc<Metrics>`: the request path updates
/// [`Metrics::counters`], `GET /metrics` calls [`Metrics::encode`].
///
/// ```
/// use std::sync::Arc;
/// use otelring::config::PipelineConfig;
/// use otelring::metrics::{Metrics, NoLiveGauges, Transport};
/// use otelring::pipeline::{Pipeline, Signal, Stats};
///
/// let stats = Arc::new(Stats::new());
/// let pipeline = Arc::new(Pipeline::new(PipelineConfig::default(), stats.clone())?);
/// let metrics = Metrics::new(stats, pipeline, Arc::new(NoLiveGauges));
/// metrics.counters().received(Signal::Traces, Transport::Grpc, 10);
/// let text = metrics.encode();
/// assert!(text.contains(r#"otelring_ingest_received_items_total{signal="traces",transport="grpc"} 10"#));
/// assert!(!metrics.books_balanced(Signal::Traces)); // 10 received, none accounted for yet
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sources: Arc<Sources>,
}

impl Metrics {
    /// Metrics over the pipeline's `stats`, its live `queues` (the [`Pipeline`]) and the server's
    /// `live` gauges. Every value is read from these at each scrape.
    pub fn new(stats: Arc<Stats>, queues: Arc<dyn QueueGauges>, live: Arc<dyn LiveGauges>) -> Arc<Metrics> {
        let sources = Arc::new(Sources { stats, queues, live, counters: ServerCounters::default() });
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(LiveCollector(sources.clone())));
        Arc::new(Metrics { registry, sources })
    }

    /// The server's counters (update them on the request path).
    pub fn counters(&self) -> &ServerCounters {
        &self.sources.counters
    }

    /// The pipeline's books this registry reads.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.sources.stats
    }

    /// The exposition in the Prometheus text format 0.0.4 (serve it with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            // Writing into a String cannot fail and the collector returns no error of its own.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The exposition in the OpenMetrics 1.0 text format, `# EOF` included (serve it with
    /// [`OPENMETRICS_CONTENT_TYPE`]).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(64 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Content negotiation for `GET /metrics`: OpenMetrics when the `Accept` header asks for
    /// `application/openmetrics-text` (as Prometheus does), else the Prometheus text format.
    /// Returns the `Content-Type` to send with the body.
    pub fn encode_for(&self, accept: Option<&str>) -> (&'static str, String) {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => {
                (OPENMETRICS_CONTENT_TYPE, self.encode_openmetrics())
            }
            _ => (CONTENT_TYPE, self.encode()),
        }
    }

    /// The books of `signal` now (not atomic as a whole: exact when quiescent).
    pub fn books(&self, signal: Signal) -> SignalBooks {
        let s = self.sources.stats.signal(signal);
        let c = &self.sources.counters;
        SignalBooks {
            received: c.received_total(signal),
            dlq_recovered: s.dlq_recovered_items.load(Ordering::Relaxed),
            persisted: s.persisted_items.load(Ordering::Relaxed),
            dropped: s.dropped_items.load(Ordering::Relaxed),
            rejected: s.rejected_total(),
            filtered: c.filtered_total(signal),
            lost: s.lost_total(),
            dlq_pending: s.dlq_pending_items.load(Ordering::Relaxed),
            in_flight: s.in_flight_items.load(Ordering::Relaxed),
        }
    }

    /// True when the books of `signal` balance (DESIGN 1.7):
    /// `received + dlq_recovered = persisted + dropped + rejected + filtered + lost + dlq_pending +
    /// in_flight`. Meaningful when the server is quiescent.
    pub fn books_balanced(&self, signal: Signal) -> bool {
        self.books(signal).balanced()
    }
}

/// µs per second: latency bounds and sums are divided by it (a division, not a multiplication by
/// 1e-6, so bounds print as `0.025`, not `0.024999999999999998`).
const US_PER_SECOND: f64 = 1e6;

/// A histogram ready to encode: per-bucket (not cumulative: the encoder accumulates) counts for
/// each bound, then `+Inf`.
#[derive(Debug, Clone, PartialEq)]
struct HistSnapshot {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl HistSnapshot {
    /// Buckets `h` (in source units) by `bounds` (same units); exported bounds and the sum are
    /// divided by `unit` (source units per exported unit). One pass over the recorded bins. See the module doc for how a bin
    /// straddling a bound is counted and how the sum is estimated.
    fn from_hdr(h: Option<&hdrhistogram::Histogram<u64>>, bounds: &[u64], unit: f64) -> Self {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = 0.0;
        let mut count = 0u64;
        if let Some(h) = h {
            for v in h.iter_recorded() {
                let n = v.count_at_value();
                let value = v.value_iterated_to();
                let lowest = h.lowest_equivalent(value);
                // First bound at or above the bin's lowest value; past the last bound: +Inf.
                let i = bounds.partition_point(|&b| b < lowest);
                if let Some(c) = counts.get_mut(i) {
                    *c += n;
                }
                count += n;
                sum += h.median_equivalent(value) as f64 * n as f64;
            }
        }
        let buckets = bounds
            .iter()
            .map(|&b| b as f64 / unit)
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect();
        Self { buckets, count, sum: sum / unit }
    }
}

/// Reads every value from [`Sources`] at each scrape.
#[derive(Debug)]
struct LiveCollector(Arc<Sources>);

type Labels<'a> = [(&'static str, &'a str)];

/// Writes one counter family.
fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        let labels: &Labels = &labels;
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
    }
    Ok(())
}

/// Writes one gauge family (`i64`: the tracked gauges may be transiently negative).
fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, i64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        let labels: &Labels = &labels;
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// Writes one histogram family.
fn histogram<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, &'a str)>, HistSnapshot)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in samples {
        let labels: &Labels = &labels;
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

/// `u64` gauge value as the `i64` the encoder writes (saturating; no real value comes close).
fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `signal=<s>` for every signal, with `f(signal stats, signal)`.
fn per_signal<'a, T>(
    stats: &'a Stats,
    f: impl Fn(&'a SignalStats, Signal) -> T + 'a,
) -> impl Iterator<Item = (Vec<(&'static str, &'a str)>, T)> + 'a {
    Signal::ALL.into_iter().map(move |s| (vec![("signal", s.as_str())], f(stats.signal(s), s)))
}

/// Reads one cell of a per-reason array of [`SignalStats`].
fn cell(arr: &[AtomicU64], i: usize) -> u64 {
    read(arr.get(i))
}

impl Collector for LiveCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let src = &*self.0;
        let stats = &*src.stats;
        let c = &src.counters;
        let live = &*src.live;
        let queues = &*src.queues;
        let e = &mut enc;

        // The books, in items (DESIGN 1.7).
        counter(
            e,
            "ingest_received_items",
            "Items (spans, log records, data points) decoded from requests",
            Signal::ALL.into_iter().flat_map(|s| {
                Transport::ALL.into_iter().map(move |t| {
                    (vec![("signal", s.as_str()), ("transport", t.as_str())], c.received_items(s, t))
                })
            }),
        )?;
        counter(
            e,
            "ingest_submitted_items",
            "Items handed to the pipeline (received minus filtered and refused before submit)",
            per_signal(stats, |st, _| st.submitted_items.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "ingest_persisted_items",
            "Items committed to SQLite (a duplicate kept once by its unique key counts)",
            per_signal(stats, |st, _| st.persisted_items.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "ingest_dropped_items",
            "Items acknowledged as partial success, then discarded",
            Signal::ALL.into_iter().map(|s| {
                let v = stats.signal(s).dropped_items.load(Ordering::Relaxed);
                (vec![("signal", s.as_str()), ("reason", DROP_REASON)], v)
            }),
        )?;
        counter(
            e,
            "ingest_rejected_items",
            "Decoded items refused; the client was told (retry or permanent)",
            Signal::ALL.into_iter().flat_map(|s| {
                RejectReason::ALL.into_iter().map(move |r| {
                    (vec![("signal", s.as_str()), ("reason", r.as_str())], stats.signal(s).rejected(r))
                })
            }),
        )?;
        counter(
            e,
            "ingest_filtered_items",
            "Decoded items removed by a policy filter",
            Signal::ALL.into_iter().flat_map(|s| {
                FilterReason::ALL.into_iter().map(move |r| {
                    (vec![("signal", s.as_str()), ("reason", r.as_str())], c.filtered_items(s, r))
                })
            }),
        )?;
        counter(
            e,
            "ingest_lost_items",
            "Acknowledged items lost",
            Signal::ALL.into_iter().flat_map(|s| {
                LostReason::ALL.into_iter().map(move |r| {
                    (vec![("signal", s.as_str()), ("reason", r.as_str())], stats.signal(s).lost(r))
                })
            }),
        )?;
        gauge(
            e,
            "dlq_pending_items",
            "Items in the DLQ waiting for replay (tracked)",
            per_signal(stats, |st, _| st.dlq_pending_items.load(Ordering::Relaxed)),
        )?;
        gauge(
            e,
            "ingest_in_flight_items",
            "Items admitted and neither committed, spilled nor refused yet (tracked)",
            per_signal(stats, |st, _| st.in_flight_items.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "dlq_recovered_items",
            "Items the DLQ held at start",
            per_signal(stats, |st, _| st.dlq_recovered_items.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "ingest_spilled_items",
            "Items written to the DLQ",
            per_signal(stats, |st, _| st.spilled_items.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "ingest_synthesized_items",
            "Logs made from spans (outside the books)",
            std::iter::once((
                vec![("signal", Signal::Logs.as_str())],
                Signal::ALL
                    .into_iter()
                    .map(|s| stats.signal(s).synthesized_logs.load(Ordering::Relaxed))
                    .sum::<u64>(),
            )),
        )?;

        // The books, in batches.
        counter(
            e,
            "ingest_persisted_batches",
            "Batches committed to SQLite",
            per_signal(stats, |st, _| st.persisted_batches.load(Ordering::Relaxed)),
        )?;
        counter(
            e,
            "ingest_dropped_batches",
            "Batches acknowledged as partial success, then discarded",
            Signal::ALL.into_iter().map(|s| {
                let v = stats.signal(s).dropped_batches.load(Ordering::Relaxed);
                (vec![("signal", s.as_str()), ("reason", DROP_REASON)], v)
            }),
        )?;
        counter(
            e,
            "ingest_rejected_batches",
            "Batches refused; the client was told",
            Signal::ALL.into_iter().flat_map(|s| {
                RejectReason::ALL.into_iter().map(move |r| {
                    let v = cell(&stats.signal(s).rejected_batches, r as usize);
                    (vec![("signal", s.as_str()), ("reason", r.as_str())], v)
                })
            }),
        )?;
        counter(
            e,
            "ingest_spilled_batches",
            "Batches written to the DLQ",
            per_signal(stats, |st, _| st.spilled_batches.load(Ordering::Relaxed)),
        )?;

        // Requests refused before decoding, and throttles.
        counter(
            e,
            "ingest_rejected_requests",
            "Requests refused before their items were decoded",
            Signal::ALL.into_iter().flat_map(|s| {
                Transport::ALL.into_iter().flat_map(move |t| {
                    RequestRejectReason::ALL.into_iter().map(move |r| {
                        let labels =
                            vec![("signal", s.as_str()), ("transport", t.as_str()), ("reason", r.as_str())];
                        (labels, c.rejected_requests(s, t, r))
                    })
                })
            }),
        )?;
        for (name, t) in [("http_otlp_throttled", Transport::Http), ("grpc_throttled", Transport::Grpc)] {
            counter(
                e,
                name,
                "Requests answered with a retry delay (429 / RESOURCE_EXHAUSTED + RetryInfo)",
                Signal::ALL.into_iter().map(|s| (vec![("signal", s.as_str())], c.throttled_count(s, t))),
            )?;
        }

        // Live queue values.
        gauge(
            e,
            "ingest_pipeline_queue_depth",
            "Batches queued (reserved, not yet popped by a writer), read at scrape time",
            Signal::ALL.into_iter().map(|s| (vec![("signal", s.as_str())], g(queues.queue_depth(s)))),
        )?;
        gauge(
            e,
            "ingest_pipeline_queue_bytes",
            "Estimated bytes held by the pipeline (reserved, not yet committed), read at scrape time",
            Signal::ALL.into_iter().map(|s| (vec![("signal", s.as_str())], g(queues.queue_bytes(s)))),
        )?;
        let (cap_batches, cap_bytes) = queues.capacity();
        gauge(
            e,
            "ingest_pipeline_queue_capacity",
            "Batches a signal's queue holds at most (INGEST_PIPELINE_QUEUE_SIZE)",
            Signal::ALL.into_iter().map(|s| (vec![("signal", s.as_str())], g(cap_batches))),
        )?;
        gauge(
            e,
            "ingest_pipeline_max_bytes",
            "Estimated bytes a signal's queue holds at most (INGEST_PIPELINE_MAX_BYTES)",
            Signal::ALL.into_iter().map(|s| (vec![("signal", s.as_str())], g(cap_bytes))),
        )?;
        gauge(
            e,
            "ingest_inflight_bytes",
            "Bytes reserved from the in-flight budget (bodies being read and decoded)",
            std::iter::once((Vec::new(), g(live.inflight_bytes()))),
        )?;

        // Latency histograms.
        histogram(
            e,
            "ingest_e2e_latency_seconds",
            "Receive to commit latency",
            per_signal(stats, |st, _| {
                let h = st.e2e_snapshot();
                HistSnapshot::from_hdr(h.inner(), &LATENCY_BUCKETS_US, US_PER_SECOND)
            }),
        )?;
        histogram(
            e,
            "export_duration_seconds",
            "Export call duration, request received to answer sent",
            Signal::ALL.into_iter().flat_map(|s| {
                Transport::ALL.into_iter().map(move |t| {
                    (vec![("signal", s.as_str()), ("transport", t.as_str())], c.export_snapshot(s, t))
                })
            }),
        )?;

        // Writers.
        let commit = stats.commit_time_snapshot();
        histogram(
            e,
            "writer_commit_seconds",
            "Writer transaction time of committed groups",
            std::iter::once((
                Vec::new(),
                HistSnapshot::from_hdr(commit.inner(), &LATENCY_BUCKETS_US, US_PER_SECOND),
            )),
        )?;
        drop(commit);
        let rows = stats.rows_per_commit_snapshot();
        histogram(
            e,
            "writer_rows_per_commit",
            "Rows (all tables) per committed transaction",
            std::iter::once((Vec::new(), HistSnapshot::from_hdr(rows.inner(), &ROWS_BUCKETS, 1.0))),
        )?;
        drop(rows);
        counter(
            e,
            "writer_groups_committed",
            "Groups of batches committed in one transaction",
            std::iter::once((Vec::new(), stats.groups_committed.load(Ordering::Relaxed))),
        )?;
        counter(
            e,
            "writer_groups_failed",
            "Groups of batches whose transaction failed",
            std::iter::once((Vec::new(), stats.groups_failed.load(Ordering::Relaxed))),
        )?;

        // Store.
        let wal = live.wal_bytes();
        let shards = queues.shards().max(wal.len());
        let shard_names: Vec<String> = (0..shards).map(|i| i.to_string()).collect();
        gauge(
            e,
            "wal_bytes",
            "Size of the shard's SQLite WAL file",
            shard_names
                .iter()
                .enumerate()
                .map(|(i, name)| (vec![("shard", name.as_str())], g(wal.get(i).copied().unwrap_or(0)))),
        )?;
        // Readiness flags (`/readyz` is 503 while any is 1): set by a shard's writer when its
        // database or its DLQ disk fails, cleared by the next success or probe.
        let flag = |f: &crate::pipeline::stats::ShardFlags, i: usize| i64::from(f.get(i));
        gauge(
            e,
            "database_failing",
            "1 while the shard's database is failing (its writes go to the DLQ), else 0",
            shard_names
                .iter()
                .enumerate()
                .map(|(i, name)| (vec![("shard", name.as_str())], flag(&stats.db_failing, i))),
        )?;
        gauge(
            e,
            "dlq_disk_failing",
            "1 while the shard's DLQ disk is failing (admission throttles), else 0",
            shard_names
                .iter()
                .enumerate()
                .map(|(i, name)| (vec![("shard", name.as_str())], flag(&stats.dlq_failing, i))),
        )?;
        let one = |v: u64| std::iter::once((Vec::new(), v));
        let one_g = |v: u64| std::iter::once((Vec::new(), g(v)));
        gauge(e, "dlq_files", "DLQ files pending replay", one_g(live.dlq_files()))?;
        gauge(e, "dlq_bytes", "Bytes of the DLQ files pending replay", one_g(live.dlq_bytes()))?;
        counter(e, "dlq_replayed_items", "Items replayed from the DLQ", one(live.dlq_replayed_items()))?;
        counter(e, "dlq_replayed_files", "DLQ files replayed", one(live.dlq_replayed_files()))?;
        counter(e, "dlq_failed", "DLQ writes or replays that failed", one(live.dlq_failed()))?;
        counter(
            e,
            "dlq_evicted_files",
            "DLQ files evicted from a full DLQ (their items count as lost)",
            one(live.dlq_evicted_files()),
        )?;

        // Segments, per shard (every shard from start, at 0 until the store reports).
        let segs = live.segments();
        let seg = |i: usize| segs.get(i).copied().unwrap_or_default();
        let per_shard_g = |f: &dyn Fn(SegmentValues) -> u64| -> Vec<(Vec<(&str, &str)>, i64)> {
            shard_names.iter().enumerate().map(|(i, n)| (vec![("shard", n.as_str())], g(f(seg(i))))).collect()
        };
        gauge(e, "store_segments", "Segments of the shard (active included)", per_shard_g(&|v| v.segments))?;
        gauge(
            e,
            "store_data_bytes",
            "Bytes of the shard's segments on disk (files and WAL)",
            per_shard_g(&|v| v.data_bytes),
        )?;
        gauge(
            e,
            "store_active_segment_bytes",
            "Bytes of the shard's active segment",
            per_shard_g(&|v| v.active_bytes),
        )?;
        let sum = |f: &dyn Fn(SegmentValues) -> u64| segs.iter().map(|v| f(*v)).sum::<u64>();
        gauge(
            e,
            "store_retention_limit_bytes",
            "The shard's share of OTELRING_RETENTION_BYTES (0: no size limit)",
            per_shard_g(&|v| v.retention_limit_bytes),
        )?;
        counter(
            e,
            "store_retention_dropped_segments",
            "Segments dropped by retention (reason: age = OTELRING_RETENTION, bytes = OTELRING_RETENTION_BYTES)",
            [
                (vec![("reason", "age")], sum(&|v| v.dropped_age)),
                (vec![("reason", "bytes")], sum(&|v| v.dropped_bytes_limit)),
            ],
        )?;
        counter(
            e,
            "store_retention_dropped_bytes",
            "Bytes of the segments dropped by retention",
            one(sum(&|v| v.dropped_bytes)),
        )?;
        counter(
            e,
            "store_retention_dropped_rows",
            "Rows of the segments dropped by retention",
            one(sum(&|v| v.dropped_rows)),
        )?;
        counter(
            e,
            "store_segment_rotations",
            "Active segments sealed and replaced",
            one(sum(&|v| v.rotations)),
        )?;
        {
            let pause = segs.iter().map(|v| v.rotation_max_pause_ns).max().unwrap_or(0) as f64 / 1e9;
            let mut m = e.encode_descriptor(
                "store_rotation_max_pause_seconds",
                "Longest pause a segment rotation caused a writer",
                None,
                MetricType::Gauge,
            )?;
            let none: &Labels = &[];
            m.encode_family(&none)?.encode_gauge(&pause)?;
        }
        counter(
            e,
            "store_prev_segment_duplicate_spans",
            "Spans not stored again because the previous segment holds them (retries across a rotation)",
            one(sum(&|v| v.prev_segment_duplicates)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::pipeline::batch::{LogRow, Received, Request, Rows};
    use std::collections::BTreeMap;

    /// A fake for the queue values.
    #[derive(Default)]
    struct FakeQueues {
        depth: AtomicU64,
        bytes: AtomicU64,
    }
    impl QueueGauges for FakeQueues {
        fn queue_depth(&self, _s: Signal) -> u64 {
            self.depth.load(Ordering::Relaxed)
        }
        fn queue_bytes(&self, _s: Signal) -> u64 {
            self.bytes.load(Ordering::Relaxed)
        }
        fn shards(&self) -> usize {
            2
        }
    }

    /// A fake store and budget.
    #[derive(Default)]
    struct FakeLive {
        v: AtomicU64,
    }
    impl LiveGauges for FakeLive {
        fn inflight_bytes(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
        fn wal_bytes(&self) -> Vec<u64> {
            vec![self.v.load(Ordering::Relaxed); 3]
        }
        fn dlq_files(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
        fn dlq_bytes(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
        fn dlq_replayed_items(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
        fn dlq_failed(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
        fn dlq_evicted_files(&self) -> u64 {
            self.v.load(Ordering::Relaxed)
        }
    }

    fn fixture() -> (Arc<Metrics>, Arc<Stats>, Arc<FakeQueues>, Arc<FakeLive>) {
        let stats = Arc::new(Stats::new());
        let q = Arc::new(FakeQueues::default());
        let live = Arc::new(FakeLive::default());
        let m = Metrics::new(stats.clone(), q.clone(), live.clone());
        (m, stats, q, live)
    }

    /// Sample lines as `name{labels}` → value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse::<f64>().unwrap())
            })
            .collect()
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        if labels.is_empty() {
            return name.to_string();
        }
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", l.join(","))
    }

    /// Every (series, labels) the contract names, with its sample suffix, for the 0 check.
    fn expected_series() -> Vec<String> {
        let mut out = Vec::new();
        let sig = |s: Signal| ("signal", s.as_str());
        for s in Signal::ALL {
            for t in Transport::ALL {
                out.push(key("otelring_ingest_received_items_total", &[sig(s), ("transport", t.as_str())]));
                for r in RequestRejectReason::ALL {
                    out.push(key(
                        "otelring_ingest_rejected_requests_total",
                        &[sig(s), ("transport", t.as_str()), ("reason", r.as_str())],
                    ));
                }
                for suffix in ["_sum", "_count"] {
                    out.push(key(
                        &format!("otelring_export_duration_seconds{suffix}"),
                        &[sig(s), ("transport", t.as_str())],
                    ));
                }
                out.push(key(
                    "otelring_export_duration_seconds_bucket",
                    &[sig(s), ("transport", t.as_str()), ("le", "+Inf")],
                ));
            }
            for n in [
                "otelring_ingest_submitted_items_total",
                "otelring_ingest_persisted_items_total",
                "otelring_ingest_persisted_batches_total",
                "otelring_dlq_pending_items",
                "otelring_ingest_in_flight_items",
                "otelring_dlq_recovered_items_total",
                "otelring_ingest_spilled_items_total",
                "otelring_ingest_spilled_batches_total",
                "otelring_http_otlp_throttled_total",
                "otelring_grpc_throttled_total",
                "otelring_ingest_pipeline_queue_depth",
                "otelring_ingest_pipeline_queue_bytes",
                "otelring_ingest_pipeline_queue_capacity",
                "otelring_ingest_pipeline_max_bytes",
                "otelring_ingest_e2e_latency_seconds_sum",
                "otelring_ingest_e2e_latency_seconds_count",
            ] {
                out.push(key(n, &[sig(s)]));
            }
            out.push(key("otelring_ingest_e2e_latency_seconds_bucket", &[sig(s), ("le", "+Inf")]));
            for n in ["otelring_ingest_dropped_items_total", "otelring_ingest_dropped_batches_total"] {
                out.push(key(n, &[sig(s), ("reason", "soft_backpressure")]));
            }
            for r in RejectReason::ALL {
                for n in ["otelring_ingest_rejected_items_total", "otelring_ingest_rejected_batches_total"] {
                    out.push(key(n, &[sig(s), ("reason", r.as_str())]));
                }
            }
            for r in FilterReason::ALL {
                out.push(key("otelring_ingest_filtered_items_total", &[sig(s), ("reason", r.as_str())]));
            }
            for r in LostReason::ALL {
                out.push(key("otelring_ingest_lost_items_total", &[sig(s), ("reason", r.as_str())]));
            }
        }
        out.push(key("otelring_ingest_synthesized_items_total", &[("signal", "logs")]));
        for n in [
            "otelring_ingest_inflight_bytes",
            "otelring_writer_commit_seconds_sum",
            "otelring_writer_commit_seconds_count",
            "otelring_writer_rows_per_commit_sum",
            "otelring_writer_rows_per_commit_count",
            "otelring_writer_groups_committed_total",
            "otelring_writer_groups_failed_total",
            "otelring_dlq_files",
            "otelring_dlq_bytes",
            "otelring_dlq_replayed_items_total",
            "otelring_dlq_replayed_files_total",
            "otelring_dlq_failed_total",
            "otelring_dlq_evicted_files_total",
        ] {
            out.push(n.to_string());
        }
        out.push(key("otelring_writer_commit_seconds_bucket", &[("le", "+Inf")]));
        out.push(key("otelring_writer_rows_per_commit_bucket", &[("le", "+Inf")]));
        // The fake store reports 3 WAL files (the fake pipeline 2 shards): all 3 are exported.
        for shard in ["0", "1", "2"] {
            for n in ["otelring_wal_bytes", "otelring_database_failing", "otelring_dlq_disk_failing"] {
                out.push(key(n, &[("shard", shard)]));
            }
            for n in [
                "otelring_store_segments",
                "otelring_store_data_bytes",
                "otelring_store_active_segment_bytes",
                "otelring_store_retention_limit_bytes",
            ] {
                out.push(key(n, &[("shard", shard)]));
            }
        }
        for r in ["age", "bytes"] {
            out.push(key("otelring_store_retention_dropped_segments_total", &[("reason", r)]));
        }
        for n in [
            "otelring_store_retention_dropped_bytes_total",
            "otelring_store_retention_dropped_rows_total",
            "otelring_store_segment_rotations_total",
            "otelring_store_rotation_max_pause_seconds",
            "otelring_store_prev_segment_duplicate_spans_total",
        ] {
            out.push(n.to_string());
        }
        out
    }

    #[test]
    fn every_series_is_exported_at_zero_from_start() {
        let (m, ..) = fixture();
        let text = m.encode();
        let got = samples(&text);
        let expected = expected_series();
        for k in &expected {
            assert_eq!(got.get(k), Some(&0.0), "{k} missing or not 0 in:\n{text}");
        }
        // Every sample is 0 at start (buckets included), and nothing else is there.
        assert!(got.values().all(|&v| v == 0.0), "{text}");
        // Buckets: 3 e2e + 6 export + 1 commit series with the latency bounds, 1 with row bounds.
        let buckets = got.keys().filter(|k| k.contains("_bucket{")).count();
        assert_eq!(buckets, 10 * (LATENCY_BUCKETS_US.len() + 1) + ROWS_BUCKETS.len() + 1);
        assert_eq!(got.len(), expected.len() - 11 + buckets, "unexpected series in:\n{text}");
        // Counters are typed as counters, histograms as histograms.
        assert!(text.contains("# TYPE otelring_ingest_received_items_total counter\n"));
        assert!(text.contains("# TYPE otelring_ingest_e2e_latency_seconds histogram\n"));
        assert!(text.contains("# TYPE otelring_ingest_in_flight_items gauge\n"));
    }

    #[test]
    fn values_follow_their_sources_at_scrape_time() {
        let (m, stats, q, live) = fixture();
        let c = m.counters();
        c.received(Signal::Logs, Transport::Http, 7);
        c.received(Signal::Logs, Transport::Grpc, 5);
        c.filtered(Signal::Logs, FilterReason::MinSeverity, 2);
        c.rejected_request(Signal::Metrics, Transport::Grpc, RequestRejectReason::InflightBudget);
        c.throttled(Signal::Traces, Transport::Http);
        c.throttled(Signal::Traces, Transport::Grpc);
        c.throttled(Signal::Traces, Transport::Grpc);
        let tr = stats.signal(Signal::Traces);
        tr.add_rejected(RejectReason::QueueFull, 30, 3);
        tr.add_lost(LostReason::Poison, 4);
        tr.in_flight_items.fetch_sub(1, Ordering::Relaxed);
        tr.synthesized_logs.fetch_add(9, Ordering::Relaxed);
        q.depth.store(11, Ordering::Relaxed);
        q.bytes.store(4096, Ordering::Relaxed);
        live.v.store(13, Ordering::Relaxed);

        let got = samples(&m.encode());
        let at = |name: &str, labels: &[(&str, &str)]| got.get(&key(name, labels)).copied();
        let logs = ("signal", "logs");
        let traces = ("signal", "traces");
        assert_eq!(at("otelring_ingest_received_items_total", &[logs, ("transport", "http")]), Some(7.0));
        assert_eq!(at("otelring_ingest_received_items_total", &[logs, ("transport", "grpc")]), Some(5.0));
        assert_eq!(
            at("otelring_ingest_filtered_items_total", &[logs, ("reason", "min_severity")]),
            Some(2.0)
        );
        assert_eq!(
            at(
                "otelring_ingest_rejected_requests_total",
                &[("signal", "metrics"), ("transport", "grpc"), ("reason", "inflight_budget")]
            ),
            Some(1.0)
        );
        assert_eq!(at("otelring_http_otlp_throttled_total", &[traces]), Some(1.0));
        assert_eq!(at("otelring_grpc_throttled_total", &[traces]), Some(2.0));
        assert_eq!(
            at("otelring_ingest_rejected_items_total", &[traces, ("reason", "queue_full")]),
            Some(30.0)
        );
        assert_eq!(
            at("otelring_ingest_rejected_batches_total", &[traces, ("reason", "queue_full")]),
            Some(3.0)
        );
        assert_eq!(at("otelring_ingest_lost_items_total", &[traces, ("reason", "poison")]), Some(4.0));
        // A transiently negative tracked gauge is exported as it is.
        assert_eq!(at("otelring_ingest_in_flight_items", &[traces]), Some(-1.0));
        assert_eq!(at("otelring_ingest_synthesized_items_total", &[logs]), Some(9.0));
        assert_eq!(at("otelring_ingest_pipeline_queue_depth", &[logs]), Some(11.0));
        assert_eq!(at("otelring_ingest_pipeline_queue_bytes", &[traces]), Some(4096.0));
        assert_eq!(at("otelring_ingest_inflight_bytes", &[]), Some(13.0));
        // The store reports 3 shards, more than the pipeline's 2: all are exported.
        assert_eq!(at("otelring_wal_bytes", &[("shard", "2")]), Some(13.0));
        for n in [
            "otelring_dlq_files",
            "otelring_dlq_bytes",
            "otelring_dlq_replayed_items_total",
            "otelring_dlq_failed_total",
            "otelring_dlq_evicted_files_total",
        ] {
            assert_eq!(at(n, &[]), Some(13.0), "{n}");
        }

        // Live: the next scrape reads the sources again.
        q.depth.store(0, Ordering::Relaxed);
        c.received(Signal::Logs, Transport::Http, 1);
        let got = samples(&m.encode());
        assert_eq!(got.get(&key("otelring_ingest_pipeline_queue_depth", &[logs])), Some(&0.0));
        assert_eq!(
            got.get(&key("otelring_ingest_received_items_total", &[logs, ("transport", "http")])),
            Some(&8.0)
        );
    }

    /// `(le, cumulative count)` of one histogram series, in exposition order, plus its count.
    fn buckets_of(text: &str, name: &str, labels: &str) -> (Vec<(f64, f64)>, f64, f64) {
        let prefix = format!("{name}_bucket{{{labels}");
        let mut bs = Vec::new();
        for l in text.lines().filter(|l| l.starts_with(&prefix)) {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            bs.push((le, l.rsplit_once(' ').unwrap().1.parse().unwrap()));
        }
        let got = samples(text);
        let sfx = |s: &str| {
            if labels.is_empty() { format!("{name}_{s}") } else { format!("{name}_{s}{{{labels}}}") }
        };
        (bs, got[&sfx("count")], got[&sfx("sum")])
    }

    fn assert_cumulative(bs: &[(f64, f64)], count: f64) {
        assert!(!bs.is_empty());
        for w in bs.windows(2) {
            assert!(w[0].0 < w[1].0, "bounds ascend: {bs:?}");
            assert!(w[0].1 <= w[1].1, "cumulative: {bs:?}");
        }
        let last = bs.last().unwrap();
        assert_eq!(last.0, f64::INFINITY);
        assert_eq!(last.1, count);
    }

    #[test]
    fn histograms_are_cumulative_monotone_and_exact_on_bounds() {
        let (m, stats, ..) = fixture();
        let c = m.counters();
        let ms = Duration::from_millis;
        for d in [Duration::from_micros(100), ms(1), ms(1), ms(3), ms(40), ms(2_000), Duration::from_secs(60)]
        {
            c.export_duration(Signal::Traces, Transport::Grpc, d);
        }
        let text = m.encode();
        let lbl = r#"signal="traces",transport="grpc""#;
        let (bs, count, sum) = buckets_of(&text, "otelring_export_duration_seconds", lbl);
        assert_cumulative(&bs, count);
        assert_eq!(count, 7.0);
        // The exact sum: 0.0001 + 0.001 + 0.001 + 0.003 + 0.04 + 2 + 60.
        assert!((sum - 62.0451).abs() < 1e-9, "{sum}");
        let at = |le: f64| bs.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(at(0.0001), 1.0); // a sample on a bound counts under it
        assert_eq!(at(0.001), 3.0);
        assert_eq!(at(0.0025), 3.0);
        assert_eq!(at(0.005), 4.0);
        assert_eq!(at(0.05), 5.0);
        assert_eq!(at(2.5), 6.0);
        assert_eq!(at(30.0), 6.0);
        assert_eq!(at(f64::INFINITY), 7.0);
        // Other series untouched.
        let (bs, count, _) =
            buckets_of(&text, "otelring_export_duration_seconds", r#"signal="traces",transport="http""#);
        assert_eq!(count, 0.0);
        assert_cumulative(&bs, 0.0);

        // Pipeline-side histograms: e2e, commit time, rows per commit.
        stats.signal(Signal::Logs).record_e2e(ms(7));
        stats.signal(Signal::Logs).record_e2e(ms(700));
        stats.record_commit(ms(12), 20_000);
        stats.record_commit(ms(3), 5);
        let text2 = m.encode();
        let (bs, count, sum) = buckets_of(&text2, "otelring_ingest_e2e_latency_seconds", r#"signal="logs""#);
        assert_cumulative(&bs, count);
        assert_eq!(count, 2.0);
        assert!((sum - 0.707).abs() < 0.707 * 1e-3, "{sum}");
        let (bs, count, sum) = buckets_of(&text2, "otelring_writer_rows_per_commit", "");
        assert_cumulative(&bs, count);
        assert_eq!(count, 2.0);
        // From the histogram: 20,000 sits in a bin of width 16 (median 20,008); 5 is exact.
        assert!((sum - 20_005.0).abs() <= 20_005.0 * 1e-3, "{sum}");
        assert_eq!(bs.iter().find(|b| b.0 == 10.0).unwrap().1, 1.0);
        assert_eq!(bs.iter().find(|b| b.0 == 20_000.0).unwrap().1, 2.0);
        let (bs, count, _) = buckets_of(&text2, "otelring_writer_commit_seconds", "");
        assert_cumulative(&bs, count);
        assert_eq!(count, 2.0);

        // Never reset: a later scrape has every bucket at or above the earlier one.
        c.export_duration(Signal::Traces, Transport::Grpc, ms(1));
        let text3 = m.encode();
        let (before, ..) = buckets_of(&text, "otelring_export_duration_seconds", lbl);
        let (after, count, _) = buckets_of(&text3, "otelring_export_duration_seconds", lbl);
        assert_eq!(count, 8.0);
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.0, a.0);
            assert!(a.1 >= b.1);
        }
        assert_eq!(c.export_count(Signal::Traces, Transport::Grpc), 8);
    }

    #[test]
    fn books_balance_by_the_design_formula() {
        let (m, stats, ..) = fixture();
        let s = Signal::Traces;
        assert!(m.books_balanced(s));
        let c = m.counters();
        let st = stats.signal(s);
        // 100 received on two transports, 10 filtered, 90 submitted: 50 persisted, 5 dropped,
        // 8 rejected, 2 lost, 5 pending in the DLQ, 20 still in flight.
        c.received(s, Transport::Grpc, 60);
        c.received(s, Transport::Http, 40);
        assert!(!m.books_balanced(s));
        c.filtered(s, FilterReason::Service, 10);
        st.persisted_items.fetch_add(50, Ordering::Relaxed);
        st.dropped_items.fetch_add(5, Ordering::Relaxed);
        st.add_rejected(RejectReason::BytesFull, 8, 1);
        st.add_lost(LostReason::DlqEvicted, 2);
        st.dlq_pending_items.fetch_add(5, Ordering::Relaxed);
        st.in_flight_items.fetch_add(19, Ordering::Relaxed);
        assert!(!m.books_balanced(s), "one item short");
        st.in_flight_items.fetch_add(1, Ordering::Relaxed);
        assert!(m.books_balanced(s), "{:?}", m.books(s));
        // DLQ replay at the next start: recovered on the left, pending → persisted on the right.
        st.dlq_recovered_items.fetch_add(3, Ordering::Relaxed);
        assert!(!m.books_balanced(s));
        st.persisted_items.fetch_add(3, Ordering::Relaxed);
        assert!(m.books_balanced(s));
        // A transiently negative gauge still adds up.
        st.in_flight_items.fetch_sub(21, Ordering::Relaxed);
        st.persisted_items.fetch_add(21, Ordering::Relaxed);
        assert_eq!(m.books(s).in_flight, -1);
        assert!(m.books_balanced(s));
        // Other signals are separate.
        assert!(m.books_balanced(Signal::Logs));
        c.received(Signal::Logs, Transport::Http, 1);
        assert!(!m.books_balanced(Signal::Logs));
        assert!(m.books_balanced(s));
    }

    fn log_row() -> LogRow {
        let a: Arc<str> = Arc::from("");
        LogRow {
            tenant_id: Arc::from("default"),
            time_unix_nano: 1,
            observed_time_unix_nano: 1,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some("hello".into()),
            trace_id: None,
            span_id: None,
            service_name: Arc::from("svc"),
            attributes: "{}".into(),
            resource_attributes: a.clone(),
            scope_name: a,
            priority: false,
        }
    }

    /// With the real pipeline: queue depth and bytes are read from admission at scrape time, and
    /// the books balance with the items in flight.
    #[test]
    fn reads_a_real_pipeline_live() {
        let stats = Arc::new(Stats::new());
        let cfg = PipelineConfig { shards: 1, ..PipelineConfig::default() };
        let pipeline = Arc::new(Pipeline::new(cfg, stats.clone()).unwrap());
        let m = Metrics::new(stats.clone(), pipeline.clone(), Arc::new(NoLiveGauges));
        let got = samples(&m.encode());
        assert_eq!(got[r#"otelring_ingest_pipeline_queue_depth{signal="logs"}"#], 0.0);
        assert_eq!(got[r#"otelring_wal_bytes{shard="0"}"#], 0.0);
        // The caps the alert rules compare depth and bytes with.
        let d = PipelineConfig::default();
        assert_eq!(got[r#"otelring_ingest_pipeline_queue_capacity{signal="logs"}"#], d.queue_size as f64);
        assert_eq!(got[r#"otelring_ingest_pipeline_max_bytes{signal="metrics"}"#], d.max_bytes as f64);
        // The readiness flags follow the writer's shard flags.
        assert_eq!(got[r#"otelring_database_failing{shard="0"}"#], 0.0);
        stats.db_failing.set(0, true);
        stats.dlq_failing.set(0, true);
        let got = samples(&m.encode());
        assert_eq!(got[r#"otelring_database_failing{shard="0"}"#], 1.0);
        assert_eq!(got[r#"otelring_dlq_disk_failing{shard="0"}"#], 1.0);
        stats.db_failing.set(0, false);
        stats.dlq_failing.set(0, false);
        let got = samples(&m.encode());
        assert_eq!(got[r#"otelring_database_failing{shard="0"}"#], 0.0);
        assert_eq!(got[r#"otelring_dlq_disk_failing{shard="0"}"#], 0.0);

        // Not started: the batch stays queued.
        m.counters().received(Signal::Logs, Transport::Http, 2);
        let _ = pipeline.submit(Request::new(Rows::Logs(vec![log_row(), log_row()]), Received::now()));
        let got = samples(&m.encode());
        assert_eq!(got[r#"otelring_ingest_pipeline_queue_depth{signal="logs"}"#], 1.0);
        assert!(got[r#"otelring_ingest_pipeline_queue_bytes{signal="logs"}"#] > 0.0);
        assert_eq!(got[r#"otelring_ingest_in_flight_items{signal="logs"}"#], 2.0);
        assert_eq!(got[r#"otelring_ingest_pipeline_queue_depth{signal="traces"}"#], 0.0);
        assert!(m.books_balanced(Signal::Logs), "{:?}", m.books(Signal::Logs));
    }

    #[test]
    fn openmetrics_exposition_has_the_same_series() {
        let (m, ..) = fixture();
        m.counters().received(Signal::Traces, Transport::Grpc, 3);
        let om = m.encode_openmetrics();
        assert!(om.ends_with("# EOF\n"));
        assert!(om.contains("# TYPE otelring_ingest_received_items counter\n"));
        assert!(om.contains(r#"otelring_ingest_received_items_total{signal="traces",transport="grpc"} 3"#));
        // The OpenMetrics encoder writes `le` first: compare with sorted labels.
        let norm = |text: &str| -> BTreeMap<String, f64> {
            samples(text)
                .into_iter()
                .map(|(k, v)| match k.split_once('{') {
                    Some((name, labels)) => {
                        let mut l: Vec<String> = labels
                            .trim_end_matches('}')
                            .split(',')
                            .map(|kv| match kv.strip_prefix("le=\"") {
                                // `1.0` (OpenMetrics) and `1` (Prometheus text) are one bound.
                                Some(le) if le != "+Inf\"" => {
                                    format!("le=\"{}\"", le.trim_end_matches('"').parse::<f64>().unwrap())
                                }
                                _ => kv.to_string(),
                            })
                            .collect();
                        l.sort_unstable();
                        (format!("{name}{{{}}}", l.join(",")), v)
                    }
                    None => (k, v),
                })
                .collect()
        };
        assert_eq!(norm(&m.encode()), norm(&om));
    }

    #[test]
    fn negotiates_the_format_from_accept() {
        let (m, ..) = fixture();
        let (ct, body) = m.encode_for(None);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.contains("# TYPE otelring_ingest_received_items_total counter\n"));
        let (ct, body) = m.encode_for(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert_eq!(ct, CONTENT_TYPE);
        assert!(!body.contains("# EOF"));
        let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (ct, body) = m.encode_for(Some(prometheus_accept));
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn debug_output_stays_small() {
        let (m, ..) = fixture();
        m.counters().export_duration(Signal::Logs, Transport::Http, Duration::from_millis(1));
        let d = format!("{m:?}");
        assert!(d.len() < 4096, "{} bytes", d.len());
    }

    #[test]
    fn label_values_match_the_contract() {
        assert_eq!(Transport::ALL.map(Transport::as_str), ["grpc", "http"]);
        assert_eq!(FilterReason::ALL.map(FilterReason::as_str), ["min_severity", "service"]);
        assert_eq!(
            RequestRejectReason::ALL.map(RequestRejectReason::as_str),
            [
                "inflight_budget",
                "too_large",
                "stopping",
                "unsupported_media_type",
                "unauthenticated",
                "invalid"
            ]
        );
        for (i, r) in RequestRejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
        assert!(ROWS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    /// Writes a sample exposition for a manual check with Python's parsers:
    /// `OTELRING_METRICS_SAMPLE=/tmp/m.txt cargo test --lib metrics::tests::write_sample`.
    #[test]
    fn write_sample() {
        let Ok(path) = std::env::var("OTELRING_METRICS_SAMPLE") else { return };
        let (m, stats, q, live) = fixture();
        let c = m.counters();
        c.received(Signal::Traces, Transport::Grpc, 1000);
        c.export_duration(Signal::Traces, Transport::Grpc, Duration::from_micros(750));
        c.throttled(Signal::Logs, Transport::Http);
        stats.signal(Signal::Traces).persisted_items.fetch_add(990, Ordering::Relaxed);
        stats.signal(Signal::Traces).in_flight_items.fetch_sub(2, Ordering::Relaxed);
        stats.signal(Signal::Traces).record_e2e(Duration::from_millis(20));
        stats.record_commit(Duration::from_millis(9), 5000);
        q.depth.store(3, Ordering::Relaxed);
        live.v.store(1 << 20, Ordering::Relaxed);
        std::fs::write(&path, m.encode()).unwrap();
        std::fs::write(format!("{path}.om"), m.encode_openmetrics()).unwrap();
    }
}
