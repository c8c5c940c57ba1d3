//! Row and batch types: what the decoder produces, admission reserves, lanes carry and the shard
//! writers persist.
//!
//! Every row type is owned, `Send + 'static`, and carries every column of DESIGN 1.4 for its
//! table, except two columns that all rows of one request share and that therefore live once per
//! request/batch in [`Received`]: `tenant_id` is per row (requests are single-tenant, but a row
//! must stand alone in the DLQ), `ingested_at` is [`Received::unix_nano`].
//!
//! Representation choices (measured reasons in docs/PERFORMANCE.md):
//! - ids stay raw bytes ([`TraceId`], [`SpanId`]); the writer formats them as lowercase hex into a
//!   stack buffer when binding, so no `String` is allocated per id;
//! - values shared by all items of one resource or scope (tenant, service name, resource
//!   attributes, scope name) are `Arc<str>`, cloned per row without allocating;
//! - attributes are already the typed JSON object text of DESIGN 1.4 (built once by the decoder);
//! - [`Batch::est_bytes`] is an estimate of the heap held by a batch that is never below the real
//!   heap use: shared `Arc<str>` values are charged in full to every row that points at them.
//!
//! A [`TraceGroup`] keeps one trace's row, spans and synthesized logs together, so routing and the
//! per-trace priority split need one hash and one flag per trace, not per span.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// The three OTLP signals; each has its own admission word and one lane per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Traces = 0,
    Logs = 1,
    Metrics = 2,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];
    pub const COUNT: usize = 3;

    /// The label value used in metrics (`signal="traces"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `bytes` as lowercase hex into `out` (which must be twice as long) and returns it as str.
fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or("")
}

/// A 16-byte OTLP trace id, kept raw; stored as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// Lowercase hex into a caller-provided stack buffer (no allocation).
    pub fn hex<'a>(&self, buf: &'a mut [u8; 32]) -> &'a str {
        hex_into(&self.0, buf)
    }
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 32];
        self.hex(&mut buf).to_owned()
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        f.write_str(self.hex(&mut buf))
    }
}

/// An 8-byte OTLP span id, kept raw; stored as 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl SpanId {
    pub fn hex<'a>(&self, buf: &'a mut [u8; 16]) -> &'a str {
        hex_into(&self.0, buf)
    }
    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 16];
        self.hex(&mut buf).to_owned()
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 16];
        f.write_str(self.hex(&mut buf))
    }
}

/// OTLP `Span.SpanKind`; stored as its `SPAN_KIND_*` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// Maps the wire number; numbers outside the enum are `Unspecified` (proto3 open enums).
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "SPAN_KIND_UNSPECIFIED",
            Self::Internal => "SPAN_KIND_INTERNAL",
            Self::Server => "SPAN_KIND_SERVER",
            Self::Client => "SPAN_KIND_CLIENT",
            Self::Producer => "SPAN_KIND_PRODUCER",
            Self::Consumer => "SPAN_KIND_CONSUMER",
        }
    }
}

/// OTLP `Status.StatusCode`, ordered so that `max` is the "only upgrades toward ERROR" rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

impl StatusCode {
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Ok,
            2 => Self::Error,
            _ => Self::Unset,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "STATUS_CODE_UNSET",
            Self::Ok => "STATUS_CODE_OK",
            Self::Error => "STATUS_CODE_ERROR",
        }
    }
    /// Inverse of [`StatusCode::as_str`] (used when upgrading a stored trace row).
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "STATUS_CODE_UNSET" => Some(Self::Unset),
            "STATUS_CODE_OK" => Some(Self::Ok),
            "STATUS_CODE_ERROR" => Some(Self::Error),
            _ => None,
        }
    }
}

/// Server-side receive facts shared by every row of one request.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Monotonic receive instant, for end-to-end (receive → commit) latency.
    pub instant: Instant,
    /// Wall-clock receive time in unix nanoseconds: the `ingested_at` column.
    pub unix_nano: i64,
}

impl Received {
    /// Now, on both clocks.
    pub fn now() -> Self {
        let unix_nano = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self { instant: Instant::now(), unix_nano }
    }
}

/// Heap bytes charged for an `Arc<str>`: its text plus the two reference counts. Charged in full
/// to every holder, so sums over rows never undercount.
#[inline]
pub fn arc_str_heap(s: &Arc<str>) -> usize {
    s.len() + 2 * std::mem::size_of::<usize>()
}

#[inline]
fn opt_string_heap(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::capacity)
}

/// One row of `traces`: the per-request aggregate of a trace's spans. The writer merges it with
/// the stored row (min start, max end, root service once seen, status only upgrades).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    pub tenant_id: Arc<str>,
    pub trace_id: TraceId,
    /// The root span's service when this request holds the root, else the first span's.
    pub service_name: Arc<str>,
    /// True when `service_name` comes from the root span (empty parent span id).
    pub has_root: bool,
    pub start_time_unix_nano: i64,
    pub end_time_unix_nano: i64,
    /// Worst status seen in this request (ERROR > OK > UNSET).
    pub status: StatusCode,
    /// Per-trace priority (DESIGN 1.2): any ERROR span or any span at/over the slow threshold.
    pub priority: bool,
}

impl TraceRow {
    /// `duration_us` column: (end − start) in microseconds, never negative.
    pub fn duration_us(&self) -> i64 {
        duration_us(self.start_time_unix_nano, self.end_time_unix_nano)
    }
    pub fn heap_bytes(&self) -> usize {
        arc_str_heap(&self.tenant_id) + arc_str_heap(&self.service_name)
    }
}

/// `(end − start)` nanoseconds as microseconds, 0 when end precedes start.
pub fn duration_us(start: i64, end: i64) -> i64 {
    end.saturating_sub(start).max(0) / 1_000
}

/// One row of `spans`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRow {
    pub tenant_id: Arc<str>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a root span (stored as '').
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    pub service_name: Arc<str>,
    pub start_time_unix_nano: i64,
    pub end_time_unix_nano: i64,
    pub status_code: StatusCode,
    pub status_message: String,
    /// Typed JSON object text (`{"http.method":"GET","http.status_code":200}`).
    pub attributes: String,
    pub resource_attributes: Arc<str>,
    pub scope_name: Arc<str>,
}

impl SpanRow {
    pub fn duration_us(&self) -> i64 {
        duration_us(self.start_time_unix_nano, self.end_time_unix_nano)
    }
    pub fn heap_bytes(&self) -> usize {
        arc_str_heap(&self.tenant_id)
            + self.name.capacity()
            + arc_str_heap(&self.service_name)
            + self.status_message.capacity()
            + self.attributes.capacity()
            + arc_str_heap(&self.resource_attributes)
            + arc_str_heap(&self.scope_name)
    }
}

/// One row of `logs`: a log record, or a log synthesized from a span (event or ERROR status).
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    pub tenant_id: Arc<str>,
    pub time_unix_nano: i64,
    pub observed_time_unix_nano: i64,
    pub severity_number: i32,
    pub severity_text: String,
    /// A string body as is; any other body as JSON text; `None` when absent.
    pub body: Option<String>,
    /// `None` when the record names no trace (stored as '').
    pub trace_id: Option<TraceId>,
    pub span_id: Option<SpanId>,
    pub service_name: Arc<str>,
    pub attributes: String,
    pub resource_attributes: Arc<str>,
    pub scope_name: Arc<str>,
    /// Per-record priority (DESIGN 1.2); synthesized logs take their trace's priority.
    pub priority: bool,
}

impl LogRow {
    pub fn heap_bytes(&self) -> usize {
        arc_str_heap(&self.tenant_id)
            + self.severity_text.capacity()
            + opt_string_heap(&self.body)
            + arc_str_heap(&self.service_name)
            + self.attributes.capacity()
            + arc_str_heap(&self.resource_attributes)
            + arc_str_heap(&self.scope_name)
    }
}

/// `metric_points.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
}

impl MetricKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Sum => "sum",
            Self::Histogram => "histogram",
            Self::ExponentialHistogram => "exponential_histogram",
            Self::Summary => "summary",
        }
    }
}

/// OTLP `AggregationTemporality`; stored as its name (NULL for gauge and summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Temporality {
    #[default]
    Unspecified,
    Delta,
    Cumulative,
}

impl Temporality {
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Delta,
            2 => Self::Cumulative,
            _ => Self::Unspecified,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "AGGREGATION_TEMPORALITY_UNSPECIFIED",
            Self::Delta => "AGGREGATION_TEMPORALITY_DELTA",
            Self::Cumulative => "AGGREGATION_TEMPORALITY_CUMULATIVE",
        }
    }
}

/// A gauge or sum data point's value: OTLP keeps integers and doubles apart, and so do we
/// (an `as_int` above 2^53 would not survive a float).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NumberValue {
    Int(i64),
    Double(f64),
}

/// One row of `metric_points`: one data point of any of the five metric types. Columns that do
/// not apply to the point's kind are `None` (NULL). Array columns are JSON array text.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPointRow {
    pub tenant_id: Arc<str>,
    pub service_name: Arc<str>,
    pub name: Arc<str>,
    pub description: Arc<str>,
    pub unit: Arc<str>,
    pub kind: MetricKind,
    /// Sum, histogram and exponential histogram only.
    pub temporality: Option<Temporality>,
    /// Sum only.
    pub is_monotonic: Option<bool>,
    pub time_unix_nano: i64,
    pub start_time_unix_nano: i64,
    /// Gauge and sum.
    pub value: Option<NumberValue>,
    /// Histogram, exponential histogram, summary.
    pub count: Option<u64>,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Histogram: JSON array of u64.
    pub bucket_counts: Option<String>,
    /// Histogram: JSON array of f64.
    pub explicit_bounds: Option<String>,
    /// Exponential histogram.
    pub scale: Option<i32>,
    pub zero_count: Option<u64>,
    pub positive_offset: Option<i32>,
    pub positive_bucket_counts: Option<String>,
    pub negative_offset: Option<i32>,
    pub negative_bucket_counts: Option<String>,
    /// Summary: JSON array of `{"quantile":q,"value":v}`.
    pub quantiles: Option<String>,
    pub attributes: String,
    pub resource_attributes: Arc<str>,
    pub scope_name: Arc<str>,
}

impl MetricPointRow {
    pub fn heap_bytes(&self) -> usize {
        arc_str_heap(&self.tenant_id)
            + arc_str_heap(&self.service_name)
            + arc_str_heap(&self.name)
            + arc_str_heap(&self.description)
            + arc_str_heap(&self.unit)
            + opt_string_heap(&self.bucket_counts)
            + opt_string_heap(&self.explicit_bounds)
            + opt_string_heap(&self.positive_bucket_counts)
            + opt_string_heap(&self.negative_bucket_counts)
            + opt_string_heap(&self.quantiles)
            + self.attributes.capacity()
            + arc_str_heap(&self.resource_attributes)
            + arc_str_heap(&self.scope_name)
    }
}

/// One trace's rows from one request: its trace row, its spans, and the logs synthesized from
/// them (span events, ERROR status). Routed and prioritised as a unit.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceGroup {
    pub trace: TraceRow,
    pub spans: Vec<SpanRow>,
    pub logs: Vec<LogRow>,
}

impl TraceGroup {
    pub fn heap_bytes(&self) -> usize {
        self.trace.heap_bytes()
            + self.spans.capacity() * std::mem::size_of::<SpanRow>()
            + self.spans.iter().map(SpanRow::heap_bytes).sum::<usize>()
            + self.logs.capacity() * std::mem::size_of::<LogRow>()
            + self.logs.iter().map(LogRow::heap_bytes).sum::<usize>()
    }
}

/// The rows of one request or batch, by signal.
#[derive(Clone, Debug, PartialEq)]
pub enum Rows {
    /// Spans grouped by trace (the traces signal; its synthesized logs ride along).
    Traces(Vec<TraceGroup>),
    Logs(Vec<LogRow>),
    Metrics(Vec<MetricPointRow>),
}

impl Rows {
    pub fn empty(signal: Signal) -> Self {
        match signal {
            Signal::Traces => Rows::Traces(Vec::new()),
            Signal::Logs => Rows::Logs(Vec::new()),
            Signal::Metrics => Rows::Metrics(Vec::new()),
        }
    }

    pub fn signal(&self) -> Signal {
        match self {
            Rows::Traces(_) => Signal::Traces,
            Rows::Logs(_) => Signal::Logs,
            Rows::Metrics(_) => Signal::Metrics,
        }
    }

    /// Items in the sense of the books (DESIGN 1.7): spans, log records or data points.
    /// Logs synthesized from spans are not items (they are counted apart).
    pub fn items(&self) -> u64 {
        match self {
            Rows::Traces(g) => g.iter().map(|g| g.spans.len() as u64).sum(),
            Rows::Logs(l) => l.len() as u64,
            Rows::Metrics(m) => m.len() as u64,
        }
    }

    /// Logs synthesized from spans (traces signal only).
    pub fn synthesized_logs(&self) -> u64 {
        match self {
            Rows::Traces(g) => g.iter().map(|g| g.logs.len() as u64).sum(),
            _ => 0,
        }
    }

    /// Rows of every table, for coalescing limits (trace rows + spans + logs + points).
    pub fn row_count(&self) -> usize {
        match self {
            Rows::Traces(g) => g.iter().map(|g| 1 + g.spans.len() + g.logs.len()).sum(),
            Rows::Logs(l) => l.len(),
            Rows::Metrics(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Rows::Traces(g) => g.is_empty(),
            Rows::Logs(l) => l.is_empty(),
            Rows::Metrics(m) => m.is_empty(),
        }
    }

    /// Estimated heap bytes held by these rows; never below the real heap use.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Rows::Traces(g) => {
                g.capacity() * std::mem::size_of::<TraceGroup>()
                    + g.iter().map(TraceGroup::heap_bytes).sum::<usize>()
            }
            Rows::Logs(l) => {
                l.capacity() * std::mem::size_of::<LogRow>() + l.iter().map(LogRow::heap_bytes).sum::<usize>()
            }
            Rows::Metrics(m) => {
                m.capacity() * std::mem::size_of::<MetricPointRow>()
                    + m.iter().map(MetricPointRow::heap_bytes).sum::<usize>()
            }
        }
    }
}

/// What the decoder hands to the pipeline: the rows of one request for one signal.
#[derive(Debug)]
pub struct Request {
    pub rows: Rows,
    pub received: Received,
}

impl Request {
    pub fn new(rows: Rows, received: Received) -> Self {
        Self { rows, received }
    }
    pub fn signal(&self) -> Signal {
        self.rows.signal()
    }
}

/// One admitted part of one request for one lane (signal, shard): what a ring slot holds.
#[derive(Debug)]
pub struct Batch {
    pub shard: usize,
    pub rows: Rows,
    pub received: Received,
    /// Estimated bytes reserved at admission (size of the batch itself plus its heap); released
    /// when the batch is committed or spilled.
    pub est_bytes: u64,
    /// Items (spans / log records / points) in this batch, for the books.
    pub items: u64,
    /// Set in commit mode: resolved by the writer after commit or failure.
    pub completion: Option<crate::pipeline::completion::CompletionPart>,
}

impl Batch {
    /// Builds a batch and computes its estimate and item count.
    pub fn new(shard: usize, rows: Rows, received: Received) -> Self {
        let items = rows.items();
        let est_bytes = (std::mem::size_of::<Batch>() + rows.heap_bytes()) as u64;
        Self { shard, rows, received, est_bytes, items, completion: None }
    }

    pub fn signal(&self) -> Signal {
        self.rows.signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_as_lowercase_hex() {
        let t = TraceId([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
        ]);
        assert_eq!(t.to_hex(), "0123456789abcdeffedcba9876543210");
        let s = SpanId([0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
        assert_eq!(s.to_hex(), "deadbeef00010203");
    }

    #[test]
    fn status_orders_toward_error() {
        assert_eq!(StatusCode::Ok.max(StatusCode::Error), StatusCode::Error);
        assert_eq!(StatusCode::Error.max(StatusCode::Unset), StatusCode::Error);
        assert_eq!(StatusCode::Unset.max(StatusCode::Ok), StatusCode::Ok);
        for s in [StatusCode::Unset, StatusCode::Ok, StatusCode::Error] {
            assert_eq!(StatusCode::from_name(s.as_str()), Some(s));
        }
    }

    #[test]
    fn duration_never_negative() {
        assert_eq!(duration_us(1_000, 3_500), 2);
        assert_eq!(duration_us(5_000, 1_000), 0);
        assert_eq!(duration_us(i64::MIN, i64::MAX), i64::MAX / 1_000);
    }

    fn assert_send_static<T: Send + 'static>() {}

    #[test]
    fn rows_are_send_and_static() {
        assert_send_static::<TraceRow>();
        assert_send_static::<SpanRow>();
        assert_send_static::<LogRow>();
        assert_send_static::<MetricPointRow>();
        assert_send_static::<Batch>();
        assert_send_static::<Request>();
    }
}
