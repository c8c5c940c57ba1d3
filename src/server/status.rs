//! The ONE mapping from a request's fate to its HTTP status and gRPC code (DESIGN 1.5), and the
//! small encoders the OTLP protos do not provide: `google.rpc.Status`, `google.rpc.RetryInfo`,
//! the OTLP `*PartialSuccess` responses, `grpc-message` percent-encoding and unpadded base64 for
//! `-bin` trailers.

use crate::pipeline::Signal;
use base64::Engine;
use quick_protobuf::sizeofs::{sizeof_len, sizeof_varint};
use quick_protobuf::{MessageWrite, Writer, WriterBackend};
use std::time::Duration;

/// gRPC status codes used here (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Why a request was not (fully) accepted, independent of the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Undecodable or invalid input: 400 / INVALID_ARGUMENT.
    BadRequest(String),
    /// Can never fit (body or rows over a cap): 413 / RESOURCE_EXHAUSTED without RetryInfo.
    TooLarge(String),
    /// Full for now (queue, bytes or in-flight budget): 429 / RESOURCE_EXHAUSTED + RetryInfo.
    Throttled(String),
    /// Stopping, or commit mode's database failed: 503 / UNAVAILABLE + retry delay.
    Unavailable(String),
    /// Unknown path or gRPC method: 404 / UNIMPLEMENTED.
    NotFound(String),
    /// Wrong HTTP method: 405.
    MethodNotAllowed(String),
    /// Unsupported content type or content encoding: 415 / UNIMPLEMENTED.
    UnsupportedMedia(String),
    /// Missing or wrong API key, or a tenant the key does not allow: 401 / UNAUTHENTICATED.
    Unauthenticated(String),
    /// A bug (a task panicked): 500 / INTERNAL.
    Internal(String),
}

impl Failure {
    pub fn http_status(&self) -> u16 {
        match self {
            Failure::BadRequest(_) => 400,
            Failure::TooLarge(_) => 413,
            Failure::Throttled(_) => 429,
            Failure::Unavailable(_) => 503,
            Failure::NotFound(_) => 404,
            Failure::MethodNotAllowed(_) => 405,
            Failure::UnsupportedMedia(_) => 415,
            Failure::Unauthenticated(_) => 401,
            Failure::Internal(_) => 500,
        }
    }

    pub fn grpc_code(&self) -> u32 {
        match self {
            Failure::BadRequest(_) => code::INVALID_ARGUMENT,
            Failure::TooLarge(_) | Failure::Throttled(_) => code::RESOURCE_EXHAUSTED,
            Failure::Unavailable(_) => code::UNAVAILABLE,
            Failure::NotFound(_) | Failure::MethodNotAllowed(_) | Failure::UnsupportedMedia(_) => {
                code::UNIMPLEMENTED
            }
            Failure::Unauthenticated(_) => code::UNAUTHENTICATED,
            Failure::Internal(_) => code::INTERNAL,
        }
    }

    /// True when the client should retry after a delay (RetryInfo / Retry-After are sent).
    pub fn retryable(&self) -> bool {
        matches!(self, Failure::Throttled(_) | Failure::Unavailable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::BadRequest(m)
            | Failure::TooLarge(m)
            | Failure::Throttled(m)
            | Failure::Unavailable(m)
            | Failure::NotFound(m)
            | Failure::MethodNotAllowed(m)
            | Failure::UnsupportedMedia(m)
            | Failure::Unauthenticated(m)
            | Failure::Internal(m) => m,
        }
    }
}

/// `google.protobuf.Duration`.
struct PbDuration {
    seconds: i64,
    nanos: i32,
}

impl MessageWrite for PbDuration {
    fn get_size(&self) -> usize {
        (if self.seconds != 0 { 1 + sizeof_varint(self.seconds as u64) } else { 0 })
            + (if self.nanos != 0 { 1 + sizeof_varint(self.nanos as u64) } else { 0 })
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        if self.seconds != 0 {
            w.write_with_tag(8, |w| w.write_int64(self.seconds))?;
        }
        if self.nanos != 0 {
            w.write_with_tag(16, |w| w.write_int32(self.nanos))?;
        }
        Ok(())
    }
}

/// `google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }`.
struct RetryInfo(PbDuration);

impl MessageWrite for RetryInfo {
    fn get_size(&self) -> usize {
        1 + sizeof_len(self.0.get_size())
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        w.write_with_tag(10, |w| w.write_message(&self.0))
    }
}

/// `google.protobuf.Any { string type_url = 1; bytes value = 2; }`.
struct Any<'a> {
    type_url: &'a str,
    value: &'a [u8],
}

impl MessageWrite for Any<'_> {
    fn get_size(&self) -> usize {
        1 + sizeof_len(self.type_url.len()) + 1 + sizeof_len(self.value.len())
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        w.write_with_tag(10, |w| w.write_string(self.type_url))?;
        w.write_with_tag(18, |w| w.write_bytes(self.value))
    }
}

/// `google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }`.
struct RpcStatus<'a> {
    code: u32,
    message: &'a str,
    details: Vec<Any<'a>>,
}

impl MessageWrite for RpcStatus<'_> {
    fn get_size(&self) -> usize {
        (if self.code != 0 { 1 + sizeof_varint(u64::from(self.code)) } else { 0 })
            + (if self.message.is_empty() { 0 } else { 1 + sizeof_len(self.message.len()) })
            + self.details.iter().map(|d| 1 + sizeof_len(d.get_size())).sum::<usize>()
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        if self.code != 0 {
            w.write_with_tag(8, |w| w.write_int32(self.code as i32))?;
        }
        if !self.message.is_empty() {
            w.write_with_tag(18, |w| w.write_string(self.message))?;
        }
        for d in &self.details {
            w.write_with_tag(26, |w| w.write_message(d))?;
        }
        Ok(())
    }
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn to_bytes(m: &impl MessageWrite) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.get_size());
    let mut w = Writer::new(&mut out);
    // Writing into a Vec cannot fail.
    let _ = m.write_message(&mut w);
    out
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// Encoded `google.rpc.RetryInfo` with `delay`.
pub fn retry_info_bytes(delay: Duration) -> Vec<u8> {
    to_bytes(&RetryInfo(pb_duration(delay)))
}

/// Encoded `google.rpc.Status` for `f`; a retryable failure carries a RetryInfo detail.
pub fn status_proto(f: &Failure, retry_after: Duration) -> Vec<u8> {
    let info = retry_info_bytes(retry_after);
    let details =
        if f.retryable() { vec![Any { type_url: RETRY_INFO_TYPE, value: &info }] } else { Vec::new() };
    to_bytes(&RpcStatus { code: f.grpc_code(), message: f.message(), details })
}

/// Proto3 JSON `google.rpc.Status` for `f` (for OTLP/JSON requests).
pub fn status_json(f: &Failure, retry_after: Duration) -> Vec<u8> {
    let mut v = serde_json::json!({ "code": f.grpc_code(), "message": f.message() });
    if f.retryable() {
        let secs = retry_after.as_secs_f64();
        v["details"] = serde_json::json!([{ "@type": RETRY_INFO_TYPE, "retryDelay": format!("{secs}s") }]);
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `Export*PartialSuccess { int64 rejected_<items> = 1; string error_message = 2; }`.
struct PartialSuccess<'a> {
    rejected: i64,
    message: &'a str,
}

impl MessageWrite for PartialSuccess<'_> {
    fn get_size(&self) -> usize {
        (if self.rejected != 0 { 1 + sizeof_varint(self.rejected as u64) } else { 0 })
            + (if self.message.is_empty() { 0 } else { 1 + sizeof_len(self.message.len()) })
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        if self.rejected != 0 {
            w.write_with_tag(8, |w| w.write_int64(self.rejected))?;
        }
        if !self.message.is_empty() {
            w.write_with_tag(18, |w| w.write_string(self.message))?;
        }
        Ok(())
    }
}

/// `Export*ServiceResponse { Export*PartialSuccess partial_success = 1; }`.
struct ExportResponse<'a>(Option<PartialSuccess<'a>>);

impl MessageWrite for ExportResponse<'_> {
    fn get_size(&self) -> usize {
        self.0.as_ref().map_or(0, |p| 1 + sizeof_len(p.get_size()))
    }
    fn write_message<W: WriterBackend>(&self, w: &mut Writer<W>) -> quick_protobuf::Result<()> {
        if let Some(p) = &self.0 {
            w.write_with_tag(10, |w| w.write_message(p))?;
        }
        Ok(())
    }
}

/// The success answer: empty, or with a partial success for `rejected` dropped items.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Success {
    pub rejected: u64,
    pub message: String,
}

/// Encoded `Export{Trace,Logs,Metrics}ServiceResponse` (all three share field numbers).
pub fn success_proto(s: &Success) -> Vec<u8> {
    let partial = (s.rejected > 0 || !s.message.is_empty()).then(|| PartialSuccess {
        rejected: i64::try_from(s.rejected).unwrap_or(i64::MAX),
        message: &s.message,
    });
    to_bytes(&ExportResponse(partial))
}

/// OTLP/JSON `Export*ServiceResponse`.
pub fn success_json(signal: Signal, s: &Success) -> Vec<u8> {
    if s.rejected == 0 && s.message.is_empty() {
        return b"{}".to_vec();
    }
    let key = match signal {
        Signal::Traces => "rejectedSpans",
        Signal::Logs => "rejectedLogRecords",
        Signal::Metrics => "rejectedDataPoints",
    };
    let v =
        serde_json::json!({ "partialSuccess": { key: s.rejected.to_string(), "errorMessage": s.message } });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Percent-encodes a `grpc-message` value: bytes outside printable ASCII, and `%`.
pub fn grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unpadded standard base64 for `-bin` metadata (gRPC accepts both; we emit unpadded).
pub fn bin_header(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, prost::Message)]
    struct PDuration {
        #[prost(int64, tag = "1")]
        seconds: i64,
        #[prost(int32, tag = "2")]
        nanos: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PRetryInfo {
        #[prost(message, optional, tag = "1")]
        retry_delay: Option<PDuration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PAny {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<PAny>,
    }

    #[test]
    fn status_with_retry_info_decodes_with_prost() {
        let f = Failure::Throttled("queue full".into());
        let s = PStatus::decode(status_proto(&f, Duration::from_millis(1_500)).as_slice()).unwrap();
        assert_eq!((s.code, s.message.as_str()), (8, "queue full"));
        assert_eq!(s.details.len(), 1);
        assert_eq!(s.details[0].type_url, RETRY_INFO_TYPE);
        let r = PRetryInfo::decode(s.details[0].value.as_slice()).unwrap();
        assert_eq!(r.retry_delay, Some(PDuration { seconds: 1, nanos: 500_000_000 }));
        // Permanent failures carry no RetryInfo.
        let s = PStatus::decode(
            status_proto(&Failure::TooLarge("big".into()), Duration::from_secs(1)).as_slice(),
        )
        .unwrap();
        assert_eq!((s.code, s.details.len()), (8, 0));
    }

    #[test]
    fn partial_success_decodes_with_the_otlp_types() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        let b = success_proto(&Success { rejected: 7, message: "dropped".into() });
        let r = ExportTraceServiceResponse::decode(b.as_slice()).unwrap();
        let p = r.partial_success.unwrap();
        assert_eq!((p.rejected_spans, p.error_message.as_str()), (7, "dropped"));
        assert!(success_proto(&Success::default()).is_empty());
        let j: serde_json::Value = serde_json::from_slice(&success_json(
            Signal::Logs,
            &Success { rejected: 3, message: "x".into() },
        ))
        .unwrap();
        assert_eq!(j["partialSuccess"]["rejectedLogRecords"], "3");
    }

    #[test]
    fn every_failure_has_one_status() {
        let cases = [
            (Failure::BadRequest(String::new()), 400, 3),
            (Failure::TooLarge(String::new()), 413, 8),
            (Failure::Throttled(String::new()), 429, 8),
            (Failure::Unavailable(String::new()), 503, 14),
            (Failure::NotFound(String::new()), 404, 12),
            (Failure::MethodNotAllowed(String::new()), 405, 12),
            (Failure::UnsupportedMedia(String::new()), 415, 12),
            (Failure::Unauthenticated(String::new()), 401, 16),
            (Failure::Internal(String::new()), 500, 13),
        ];
        for (f, http, grpc) in cases {
            assert_eq!((f.http_status(), f.grpc_code()), (http, grpc), "{f:?}");
        }
        let j: serde_json::Value = serde_json::from_slice(&status_json(
            &Failure::Unavailable("stopping".into()),
            Duration::from_secs(1),
        ))
        .unwrap();
        assert_eq!(j["code"], 14);
        assert_eq!(j["details"][0]["retryDelay"], "1s");
    }

    #[test]
    fn grpc_message_is_percent_encoded_and_bin_is_unpadded() {
        assert_eq!(grpc_message("ok: 100% é"), "ok: 100%25 %C3%A9");
        assert_eq!(bin_header(b"ab"), "YWI");
    }
}
