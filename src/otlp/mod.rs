//! OTLP decoding: request bytes (protobuf or OTLP/JSON) → rows with priority flags (DESIGN 1.2,
//! 1.4), plus the gRPC length-prefix parser.
//!
//! - [`proto`]: a hand-written protobuf reader (an inlined cursor for tags, lengths and fixed64;
//!   `quick_protobuf::BytesReader` for skipping unknown fields and packed varints, see
//!   `wire.rs` for why the hot reads are not BytesReader calls). It borrows
//!   strings and bytes from the request buffer until rows are built, never recurses on the
//!   thread stack (nested `AnyValue`s use a heap stack with a hard depth limit), accepts packed
//!   and unpacked repeated scalars, keeps proto3 `optional` fields optional, skips unknown fields
//!   of every wire type (groups included, depth-limited) and rejects truncated input and wrong
//!   wire types with an error naming the field.
//! - [`json`]: OTLP/JSON (lowerCamelCase keys, hex ids, enums as integers or names, 64-bit
//!   integers as strings or numbers, base64 `bytesValue`, unknown fields ignored).
//! - [`build`]: the conversion both decoders share (and the prost reference in `tests/` uses):
//!   grouping spans by trace, trace rows, synthesized logs, priority, filters, validation, the
//!   running row-byte estimate.
//! - [`jsonw`]: JSON text output for attribute and array columns.
//! - [`grpc_frame`]: the 5-byte gRPC message prefix.
//!
//! Errors: every failure is a [`DecodeError`] for the whole request; [`DecodeError::http_status`]
//! and [`DecodeError::grpc_code`] give its answer (400 / INVALID_ARGUMENT for bad input, 413 /
//! RESOURCE_EXHAUSTED without RetryInfo for a request that can never fit).
//!
//! ```
//! use otelring::config::DecodeConfig;
//! use otelring::otlp;
//! use otelring::pipeline::batch::Received;
//! let cfg = DecodeConfig::default();
//! let d = otlp::decode_traces_json(br#"{"resourceSpans":[]}"#, &cfg, "default".into(), Received::now()).unwrap();
//! assert_eq!(d.received_items, 0);
//! ```

pub mod build;
pub mod grpc_frame;
pub mod json;
pub mod jsonw;
pub mod proto;
mod wire;

use crate::config::DecodeConfig;
use crate::pipeline::batch::{Received, Request, Signal};
use std::fmt;
use std::sync::Arc;

/// What kind of failure a [`DecodeError`] is; decides the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not a valid encoding: truncated protobuf, wrong wire type, bad varint, malformed JSON.
    Malformed,
    /// Well-formed but not valid OTLP for us: ids of the wrong length, timestamps beyond i64,
    /// invalid UTF-8, bad hex, an ambiguous duplicate field.
    Invalid,
    /// Over a per-item limit (AnyValue depth, attributes per item, events per span).
    Limit,
    /// The request can never fit: its rows pass the byte cap, or it has too many items.
    TooLarge,
}

/// A decode failure for the whole request (nothing of it is stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub message: String,
}

impl DecodeError {
    pub fn new(kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::new(DecodeErrorKind::Malformed, message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(DecodeErrorKind::Invalid, message)
    }
    pub(crate) fn limit(message: impl Into<String>) -> Self {
        Self::new(DecodeErrorKind::Limit, message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(DecodeErrorKind::TooLarge, message)
    }
    /// True for [`DecodeErrorKind::TooLarge`] (counted as `rejected{reason="too_large"}`).
    pub fn is_too_large(&self) -> bool {
        self.kind == DecodeErrorKind::TooLarge
    }
    /// OTLP/HTTP status: 413 for too large, else 400.
    pub fn http_status(&self) -> u16 {
        if self.is_too_large() { 413 } else { 400 }
    }
    /// gRPC status code: 8 RESOURCE_EXHAUSTED (send no RetryInfo: retrying cannot help) for too
    /// large, else 3 INVALID_ARGUMENT.
    pub fn grpc_code(&self) -> u32 {
        if self.is_too_large() { 8 } else { 3 }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Items filtered by policy (DESIGN 1.7 `filtered_items_total{reason}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Log records below `INGEST_MIN_SEVERITY`.
    pub min_severity: u64,
    /// Items of a service not allowed or excluded.
    pub service: u64,
}

impl Filtered {
    pub fn total(&self) -> u64 {
        self.min_severity + self.service
    }
}

/// A decoded request: its rows for the pipeline and the counts for the books.
/// `received_items == request.rows.items() + filtered.total()`.
#[derive(Debug)]
pub struct Decoded {
    pub request: Request,
    /// Items (spans, log records, data points) in the request, filtered ones included.
    pub received_items: u64,
    pub filtered: Filtered,
    /// The running row-byte estimate at the end: never below `request.rows.heap_bytes()`.
    pub est_bytes: u64,
}

impl Decoded {
    pub fn signal(&self) -> Signal {
        self.request.signal()
    }
}

/// Decodes a protobuf `ExportTraceServiceRequest`.
pub fn decode_traces_proto(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    proto::decode_traces(buf, cfg, tenant, received)
}

/// Decodes a protobuf `ExportLogsServiceRequest`.
pub fn decode_logs_proto(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    proto::decode_logs(buf, cfg, tenant, received)
}

/// Decodes a protobuf `ExportMetricsServiceRequest`.
pub fn decode_metrics_proto(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    proto::decode_metrics(buf, cfg, tenant, received)
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_traces_json(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    json::decode_traces(buf, cfg, tenant, received)
}

/// Decodes an OTLP/JSON `ExportLogsServiceRequest`.
pub fn decode_logs_json(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    json::decode_logs(buf, cfg, tenant, received)
}

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest`.
pub fn decode_metrics_json(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    json::decode_metrics(buf, cfg, tenant, received)
}

/// Request encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Decodes one request of `signal` in `encoding`: the single entry point for the server.
pub fn decode(
    signal: Signal,
    encoding: Encoding,
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => decode_traces_proto(buf, cfg, tenant, received),
        (Signal::Logs, Encoding::Protobuf) => decode_logs_proto(buf, cfg, tenant, received),
        (Signal::Metrics, Encoding::Protobuf) => decode_metrics_proto(buf, cfg, tenant, received),
        (Signal::Traces, Encoding::Json) => decode_traces_json(buf, cfg, tenant, received),
        (Signal::Logs, Encoding::Json) => decode_logs_json(buf, cfg, tenant, received),
        (Signal::Metrics, Encoding::Json) => decode_metrics_json(buf, cfg, tenant, received),
    }
}
