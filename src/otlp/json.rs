//! OTLP/JSON requests → rows (the OTLP spec's JSON encoding): lowerCamelCase keys (the proto
//! field names are accepted too), trace and span ids as hex strings (any case; not base64),
//! enums as integers or names, 64-bit integers as numbers or strings, doubles as numbers or
//! `"NaN"`/`"Infinity"`/`"-Infinity"`, `bytesValue` as base64, unknown fields ignored.
//!
//! The document is parsed by serde_json (which stops at 128 nested containers without
//! overflowing the stack); values are then walked with a hard depth check before each level and
//! handed to the same builders as the protobuf decoder, so both produce equal rows for the same
//! data.

use super::build::{
    EXCEPTION_MESSAGE_KEY, EventIn, LogIn, LogsBuilder, MetricsBuilder, PointIn, SERVICE_NAME_KEY, SpanIn,
    TracesBuilder,
};
use super::jsonw::{self, ObjWriter};
use super::{DecodeError, Decoded};
use crate::config::DecodeConfig;
use crate::pipeline::batch::{MetricKind, NumberValue, Received, Temporality};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::sync::Arc;

type Obj = Map<String, Value>;

fn bad(what: &str, expected: &str) -> DecodeError {
    DecodeError::invalid(format!("invalid {what}: expected {expected}"))
}

/// A field by its lowerCamelCase or proto name; JSON `null` counts as absent.
fn get<'v>(o: &'v Obj, camel: &str, snake: &str) -> Option<&'v Value> {
    o.get(camel).or_else(|| if snake != camel { o.get(snake) } else { None }).filter(|v| !v.is_null())
}

fn as_obj<'v>(v: &'v Value, what: &str) -> Result<&'v Obj, DecodeError> {
    v.as_object().ok_or_else(|| bad(what, "an object"))
}

fn arr<'v>(o: &'v Obj, camel: &str, snake: &str) -> Result<&'v [Value], DecodeError> {
    match get(o, camel, snake) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(camel, "an array")),
    }
}

fn obj_field<'v>(o: &'v Obj, camel: &str, snake: &str) -> Result<Option<&'v Obj>, DecodeError> {
    get(o, camel, snake).map(|v| as_obj(v, camel)).transpose()
}

fn str_field<'v>(o: &'v Obj, camel: &str, snake: &str) -> Result<&'v str, DecodeError> {
    match get(o, camel, snake) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(camel, "a string")),
    }
}

fn u64_value(v: &Value, what: &str) -> Result<u64, DecodeError> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| bad(what, "an unsigned 64-bit integer")),
        Value::String(s) => s.trim().parse().map_err(|_| bad(what, "an unsigned 64-bit integer")),
        _ => Err(bad(what, "an unsigned 64-bit integer")),
    }
}

fn i64_value(v: &Value, what: &str) -> Result<i64, DecodeError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| bad(what, "a 64-bit integer")),
        Value::String(s) => s.trim().parse().map_err(|_| bad(what, "a 64-bit integer")),
        _ => Err(bad(what, "a 64-bit integer")),
    }
}

fn f64_value(v: &Value, what: &str) -> Result<f64, DecodeError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad(what, "a number")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            t => t.trim().parse().map_err(|_| bad(what, "a number")),
        },
        _ => Err(bad(what, "a number")),
    }
}

fn u64_field(o: &Obj, camel: &str, snake: &str) -> Result<u64, DecodeError> {
    get(o, camel, snake).map_or(Ok(0), |v| u64_value(v, camel))
}

fn opt_f64(o: &Obj, camel: &str, snake: &str) -> Result<Option<f64>, DecodeError> {
    get(o, camel, snake).map(|v| f64_value(v, camel)).transpose()
}

fn bool_field(o: &Obj, camel: &str, snake: &str) -> Result<bool, DecodeError> {
    match get(o, camel, snake) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(camel, "true or false")),
    }
}

/// An enum given as an integer or by name.
fn enum_field(
    o: &Obj,
    camel: &str,
    snake: &str,
    by_name: fn(&str) -> Option<i32>,
) -> Result<i32, DecodeError> {
    match get(o, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            n.as_i64().and_then(|v| i32::try_from(v).ok()).ok_or_else(|| bad(camel, "a 32-bit enum value"))
        }
        Some(Value::String(s)) => by_name(s).ok_or_else(|| bad(camel, "a known enum name or number")),
        Some(_) => Err(bad(camel, "an enum number or name")),
    }
}

fn span_kind_by_name(s: &str) -> Option<i32> {
    let names = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"];
    let t = s.strip_prefix("SPAN_KIND_")?;
    names.iter().position(|n| *n == t).map(|i| i as i32)
}

fn status_by_name(s: &str) -> Option<i32> {
    match s {
        "STATUS_CODE_UNSET" => Some(0),
        "STATUS_CODE_OK" => Some(1),
        "STATUS_CODE_ERROR" => Some(2),
        _ => None,
    }
}

fn temporality_by_name(s: &str) -> Option<i32> {
    match s {
        "AGGREGATION_TEMPORALITY_UNSPECIFIED" => Some(0),
        "AGGREGATION_TEMPORALITY_DELTA" => Some(1),
        "AGGREGATION_TEMPORALITY_CUMULATIVE" => Some(2),
        _ => None,
    }
}

fn severity_by_name(s: &str) -> Option<i32> {
    let t = s.strip_prefix("SEVERITY_NUMBER_")?;
    if t == "UNSPECIFIED" {
        return Some(0);
    }
    let levels = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
    let (i, rest) = levels.iter().enumerate().find_map(|(i, l)| t.strip_prefix(l).map(|r| (i as i32, r)))?;
    let sub = match rest {
        "" => 0,
        "2" => 1,
        "3" => 2,
        "4" => 3,
        _ => return None,
    };
    Some(i * 4 + 1 + sub)
}

/// A hex id of `N` bytes; `Ok(None)` when absent or empty.
fn hex_id<const N: usize>(o: &Obj, camel: &str, snake: &str) -> Result<Option<[u8; N]>, DecodeError> {
    let s = str_field(o, camel, snake)?;
    if s.is_empty() {
        return Ok(None);
    }
    let err = || bad(camel, &format!("{} hex characters", 2 * N));
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (Some(hi), Some(lo)) =
            (pair.first().and_then(|&c| hex_digit(c)), pair.get(1).and_then(|&c| hex_digit(c)))
        else {
            return Err(err());
        };
        *o = (hi << 4) | lo;
    }
    Ok(Some(out))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn b64(s: &str) -> Result<Vec<u8>, DecodeError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let cfg = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg).decode(s))
        .map_err(|_| bad("bytesValue", "base64"))
}

/// A JSON `AnyValue` in our value model.
enum Any<'v> {
    Null,
    Str(&'v str),
    Other(&'v Value, &'v str),
}

fn classify<'v>(v: &'v Value) -> Result<Any<'v>, DecodeError> {
    let o = as_obj(v, "AnyValue")?;
    const KEYS: [(&str, &str); 8] = [
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
        ("stringValueStrindex", "string_value_strindex"),
    ];
    let mut found = None;
    for (c, s) in KEYS {
        if let Some(x) = get(o, c, s) {
            if found.is_some() {
                return Err(DecodeError::invalid("ambiguous AnyValue: more than one value (duplicate)"));
            }
            found = Some((c, x));
        }
    }
    Ok(match found {
        None | Some(("stringValueStrindex", _)) => Any::Null,
        Some(("stringValue", x)) => Any::Str(x.as_str().ok_or_else(|| bad("stringValue", "a string"))?),
        Some((c, x)) => Any::Other(x, c),
    })
}

/// Per-request scratch.
struct Cx<'c> {
    cfg: &'c DecodeConfig,
    obj: ObjWriter,
}

impl<'c> Cx<'c> {
    fn write_any(&mut self, out: &mut String, v: &Value, depth: usize) -> Result<(), DecodeError> {
        match classify(v)? {
            Any::Null => out.push_str("null"),
            Any::Str(s) => jsonw::push_str(out, s),
            Any::Other(x, key) => self.write_typed(out, x, key, depth)?,
        }
        Ok(())
    }

    fn write_typed(
        &mut self,
        out: &mut String,
        x: &Value,
        key: &str,
        depth: usize,
    ) -> Result<(), DecodeError> {
        match key {
            "boolValue" => {
                jsonw::push_bool(out, x.as_bool().ok_or_else(|| bad("boolValue", "true or false"))?)
            }
            "intValue" => jsonw::push_i64(out, i64_value(x, "intValue")?),
            "doubleValue" => jsonw::push_f64(out, f64_value(x, "doubleValue")?),
            "bytesValue" => {
                jsonw::push_b64(out, &b64(x.as_str().ok_or_else(|| bad("bytesValue", "base64"))?)?)
            }
            "arrayValue" | "kvlistValue" => {
                let max = self.cfg.max_any_value_depth;
                if depth >= max {
                    return Err(DecodeError::limit(format!("AnyValue nested deeper than {max} levels")));
                }
                let values = arr(as_obj(x, key)?, "values", "values")?;
                if key == "arrayValue" {
                    out.push('[');
                    for (i, v) in values.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        self.write_any(out, v, depth + 1)?;
                    }
                    out.push(']');
                } else {
                    self.obj.open(out);
                    for kv in values {
                        let kv = as_obj(kv, "KeyValue")?;
                        self.obj.key(out, str_field(kv, "key", "key")?);
                        match get(kv, "value", "value") {
                            Some(v) => self.write_any(out, v, depth + 1)?,
                            None => out.push_str("null"),
                        }
                    }
                    self.obj.close(out);
                }
            }
            _ => out.push_str("null"),
        }
        Ok(())
    }

    /// Writes an `attributes` array as one JSON object; returns the `capture` key's string value.
    fn attrs<'v>(
        &mut self,
        o: &'v Obj,
        capture: Option<&str>,
    ) -> Result<(String, Option<&'v str>), DecodeError> {
        let a = arr(o, "attributes", "attributes")?;
        let max = self.cfg.max_attributes;
        if a.len() > max {
            return Err(DecodeError::limit(format!("item has more than {max} attributes")));
        }
        let mut out = String::with_capacity(2 + 24 * a.len());
        let mut captured = None;
        self.obj.open(&mut out);
        for kv in a {
            let kv = as_obj(kv, "KeyValue")?;
            let k = str_field(kv, "key", "key")?;
            self.obj.key(&mut out, k);
            match get(kv, "value", "value") {
                Some(v) => {
                    let any = classify(v)?;
                    if capture == Some(k) {
                        captured = if let Any::Str(s) = any { Some(s) } else { None };
                    }
                    match any {
                        Any::Null => out.push_str("null"),
                        Any::Str(s) => jsonw::push_str(&mut out, s),
                        Any::Other(x, key) => self.write_typed(&mut out, x, key, 0)?,
                    }
                }
                None => {
                    if capture == Some(k) {
                        captured = None;
                    }
                    out.push_str("null");
                }
            }
        }
        self.obj.close(&mut out);
        Ok((out, captured))
    }

    fn body(&mut self, v: &Value) -> Result<Option<String>, DecodeError> {
        match classify(v)? {
            Any::Null => Ok(None),
            Any::Str(s) => Ok(Some(s.to_owned())),
            Any::Other(x, key) => {
                let mut out = String::new();
                self.write_typed(&mut out, x, key, 0)?;
                Ok(Some(out))
            }
        }
    }

    /// Starts a resource; returns whether its service is allowed.
    fn resource(&mut self, common: &mut super::build::Common<'_>, r: &Obj) -> Result<bool, DecodeError> {
        match obj_field(r, "resource", "resource")? {
            None => Ok(common.resource(None, "{}".to_owned())),
            Some(res) => {
                let (a, service) = self.attrs(res, Some(SERVICE_NAME_KEY))?;
                Ok(common.resource(service, a))
            }
        }
    }
}

fn scope_name(s: &Obj) -> Result<&str, DecodeError> {
    match obj_field(s, "scope", "scope")? {
        None => Ok(""),
        Some(sc) => str_field(sc, "name", "name"),
    }
}

fn parse(buf: &[u8]) -> Result<Obj, DecodeError> {
    match serde_json::from_slice::<Value>(buf) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(DecodeError::malformed("invalid JSON request: expected an object")),
        Err(e) => Err(DecodeError::malformed(format!("invalid JSON: {e}"))),
    }
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_traces(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let doc = parse(buf)?;
    let mut b = TracesBuilder::new(cfg, tenant, received);
    let mut cx = Cx { cfg, obj: ObjWriter::new() };
    for r in arr(&doc, "resourceSpans", "resource_spans")? {
        let r = as_obj(r, "resourceSpans")?;
        let allowed = cx.resource(&mut b.common, r)?;
        for s in arr(r, "scopeSpans", "scope_spans")? {
            let s = as_obj(s, "scopeSpans")?;
            let spans = arr(s, "spans", "spans")?;
            if !allowed {
                b.common.filter_service_items(spans.len() as u64)?;
                continue;
            }
            b.common.scope(scope_name(s)?);
            for sp in spans {
                span(&mut cx, &mut b, as_obj(sp, "span")?)?;
            }
        }
    }
    b.finish()
}

fn span(cx: &mut Cx<'_>, b: &mut TracesBuilder<'_>, o: &Obj) -> Result<(), DecodeError> {
    let tid = hex_id::<16>(o, "traceId", "trace_id")?.ok_or_else(|| bad("traceId", "32 hex characters"))?;
    let sid = hex_id::<8>(o, "spanId", "span_id")?.ok_or_else(|| bad("spanId", "16 hex characters"))?;
    let parent = hex_id::<8>(o, "parentSpanId", "parent_span_id")?;
    let status = obj_field(o, "status", "status")?;
    let (status_code, status_message) = match status {
        Some(st) => (enum_field(st, "code", "code", status_by_name)?, str_field(st, "message", "message")?),
        None => (0, ""),
    };
    let s = SpanIn {
        trace_id: &tid,
        span_id: &sid,
        parent_span_id: parent.as_ref().map_or(&[][..], |p| &p[..]),
        name: str_field(o, "name", "name")?,
        kind: enum_field(o, "kind", "kind", span_kind_by_name)?,
        start_time_unix_nano: u64_field(o, "startTimeUnixNano", "start_time_unix_nano")?,
        end_time_unix_nano: u64_field(o, "endTimeUnixNano", "end_time_unix_nano")?,
        status_code,
        status_message,
        attributes: cx.attrs(o, None)?.0,
    };
    b.span(s)?;
    for e in arr(o, "events", "events")? {
        let e = as_obj(e, "event")?;
        let (attributes, exc) = cx.attrs(e, Some(EXCEPTION_MESSAGE_KEY))?;
        b.event(EventIn {
            time_unix_nano: u64_field(e, "timeUnixNano", "time_unix_nano")?,
            name: str_field(e, "name", "name")?,
            attributes,
            exception_message: exc,
        })?;
    }
    Ok(())
}

/// Decodes an OTLP/JSON `ExportLogsServiceRequest`.
pub fn decode_logs(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let doc = parse(buf)?;
    let mut b = LogsBuilder::new(cfg, tenant, received);
    let mut cx = Cx { cfg, obj: ObjWriter::new() };
    for r in arr(&doc, "resourceLogs", "resource_logs")? {
        let r = as_obj(r, "resourceLogs")?;
        let allowed = cx.resource(&mut b.common, r)?;
        for s in arr(r, "scopeLogs", "scope_logs")? {
            let s = as_obj(s, "scopeLogs")?;
            let recs = arr(s, "logRecords", "log_records")?;
            if !allowed {
                b.common.filter_service_items(recs.len() as u64)?;
                continue;
            }
            b.common.scope(scope_name(s)?);
            for l in recs {
                log_record(&mut cx, &mut b, as_obj(l, "logRecord")?)?;
            }
        }
    }
    b.finish()
}

fn log_record(cx: &mut Cx<'_>, b: &mut LogsBuilder<'_>, o: &Obj) -> Result<(), DecodeError> {
    let severity_number = enum_field(o, "severityNumber", "severity_number", severity_by_name)?;
    let severity_text = str_field(o, "severityText", "severity_text")?;
    let time = u64_field(o, "timeUnixNano", "time_unix_nano")?;
    let observed = u64_field(o, "observedTimeUnixNano", "observed_time_unix_nano")?;
    let tid = hex_id::<16>(o, "traceId", "trace_id")?;
    let sid = hex_id::<8>(o, "spanId", "span_id")?;
    if b.filter_severity(severity_number, severity_text)? {
        return Ok(());
    }
    let body = match get(o, "body", "body") {
        Some(v) => cx.body(v)?,
        None => None,
    };
    b.log(LogIn {
        time_unix_nano: time,
        observed_time_unix_nano: observed,
        severity_number,
        severity_text,
        body,
        trace_id: tid.as_ref().map_or(&[][..], |t| &t[..]),
        span_id: sid.as_ref().map_or(&[][..], |s| &s[..]),
        attributes: cx.attrs(o, None)?.0,
    })
}

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest`.
pub fn decode_metrics(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let doc = parse(buf)?;
    let mut b = MetricsBuilder::new(cfg, tenant, received);
    let mut cx = Cx { cfg, obj: ObjWriter::new() };
    for r in arr(&doc, "resourceMetrics", "resource_metrics")? {
        let r = as_obj(r, "resourceMetrics")?;
        let allowed = cx.resource(&mut b.common, r)?;
        for s in arr(r, "scopeMetrics", "scope_metrics")? {
            let s = as_obj(s, "scopeMetrics")?;
            if allowed {
                b.common.scope(scope_name(s)?);
            }
            for m in arr(s, "metrics", "metrics")? {
                metric(&mut cx, &mut b, as_obj(m, "metric")?, allowed)?;
            }
        }
    }
    b.finish()
}

const DATA_KEYS: [(&str, &str, MetricKind); 5] = [
    ("gauge", "gauge", MetricKind::Gauge),
    ("sum", "sum", MetricKind::Sum),
    ("histogram", "histogram", MetricKind::Histogram),
    ("exponentialHistogram", "exponential_histogram", MetricKind::ExponentialHistogram),
    ("summary", "summary", MetricKind::Summary),
];

fn metric(cx: &mut Cx<'_>, b: &mut MetricsBuilder<'_>, o: &Obj, allowed: bool) -> Result<(), DecodeError> {
    let mut data = None;
    for &(c, s, kind) in &DATA_KEYS {
        if let Some(d) = obj_field(o, c, s)? {
            if data.is_some() {
                return Err(DecodeError::invalid("ambiguous Metric data: more than one (duplicate)"));
            }
            data = Some((kind, d));
        }
    }
    let Some((kind, d)) = data else {
        return Ok(());
    };
    let points = arr(d, "dataPoints", "data_points")?;
    if !allowed {
        return b.common.filter_service_items(points.len() as u64);
    }
    b.metric(
        str_field(o, "name", "name")?,
        str_field(o, "description", "description")?,
        str_field(o, "unit", "unit")?,
    );
    let temporality = Temporality::from_i32(enum_field(
        d,
        "aggregationTemporality",
        "aggregation_temporality",
        temporality_by_name,
    )?);
    let monotonic = bool_field(d, "isMonotonic", "is_monotonic")?;
    for p in points {
        let p = as_obj(p, "dataPoint")?;
        let mut pt = PointIn::new(kind);
        pt.start_time_unix_nano = u64_field(p, "startTimeUnixNano", "start_time_unix_nano")?;
        pt.time_unix_nano = u64_field(p, "timeUnixNano", "time_unix_nano")?;
        match kind {
            MetricKind::Gauge | MetricKind::Sum => {
                if kind == MetricKind::Sum {
                    pt.temporality = Some(temporality);
                    pt.is_monotonic = Some(monotonic);
                }
                let d = get(p, "asDouble", "as_double");
                let i = get(p, "asInt", "as_int");
                pt.value = match (d, i) {
                    (Some(_), Some(_)) => {
                        return Err(DecodeError::invalid(
                            "ambiguous data point value: asDouble and asInt (duplicate)",
                        ));
                    }
                    (Some(d), None) => Some(NumberValue::Double(f64_value(d, "asDouble")?)),
                    (None, Some(i)) => Some(NumberValue::Int(i64_value(i, "asInt")?)),
                    (None, None) => None,
                };
            }
            MetricKind::Histogram => {
                pt.temporality = Some(temporality);
                pt.count = Some(u64_field(p, "count", "count")?);
                pt.sum = opt_f64(p, "sum", "sum")?;
                pt.min = opt_f64(p, "min", "min")?;
                pt.max = opt_f64(p, "max", "max")?;
                pt.bucket_counts = Some(u64_array(p, "bucketCounts", "bucket_counts")?);
                let mut bounds = String::from("[");
                for v in arr(p, "explicitBounds", "explicit_bounds")? {
                    jsonw::sep(&mut bounds);
                    jsonw::push_f64(&mut bounds, f64_value(v, "explicitBounds")?);
                }
                bounds.push(']');
                pt.explicit_bounds = Some(bounds);
            }
            MetricKind::ExponentialHistogram => {
                pt.temporality = Some(temporality);
                pt.count = Some(u64_field(p, "count", "count")?);
                pt.sum = opt_f64(p, "sum", "sum")?;
                pt.min = opt_f64(p, "min", "min")?;
                pt.max = opt_f64(p, "max", "max")?;
                pt.scale = Some(int32(p, "scale")?);
                pt.zero_count = Some(u64_field(p, "zeroCount", "zero_count")?);
                if let Some(bk) = obj_field(p, "positive", "positive")? {
                    pt.positive_offset = Some(int32(bk, "offset")?);
                    pt.positive_bucket_counts = Some(u64_array(bk, "bucketCounts", "bucket_counts")?);
                }
                if let Some(bk) = obj_field(p, "negative", "negative")? {
                    pt.negative_offset = Some(int32(bk, "offset")?);
                    pt.negative_bucket_counts = Some(u64_array(bk, "bucketCounts", "bucket_counts")?);
                }
            }
            MetricKind::Summary => {
                pt.count = Some(u64_field(p, "count", "count")?);
                pt.sum = Some(opt_f64(p, "sum", "sum")?.unwrap_or(0.0));
                let mut q = String::from("[");
                for v in arr(p, "quantileValues", "quantile_values")? {
                    let v = as_obj(v, "quantileValues")?;
                    let quantile = opt_f64(v, "quantile", "quantile")?.unwrap_or(0.0);
                    let value = opt_f64(v, "value", "value")?.unwrap_or(0.0);
                    jsonw::sep(&mut q);
                    jsonw::push_quantile(&mut q, quantile, value);
                }
                q.push(']');
                pt.quantiles = Some(q);
            }
        }
        pt.attributes = cx.attrs(p, None)?.0;
        b.point(pt)?;
    }
    Ok(())
}

fn int32(o: &Obj, key: &str) -> Result<i32, DecodeError> {
    match get(o, key, key) {
        None => Ok(0),
        Some(v) => i64_value(v, key)?.try_into().map_err(|_| bad(key, "a 32-bit integer")),
    }
}

fn u64_array(o: &Obj, camel: &str, snake: &str) -> Result<String, DecodeError> {
    let mut out = String::from("[");
    for v in arr(o, camel, snake)? {
        jsonw::sep(&mut out);
        jsonw::push_u64(&mut out, u64_value(v, camel)?);
    }
    out.push(']');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_names() {
        assert_eq!(severity_by_name("SEVERITY_NUMBER_ERROR"), Some(17));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_FATAL4"), Some(24));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_TRACE"), Some(1));
        assert_eq!(severity_by_name("SEVERITY_NUMBER_UNSPECIFIED"), Some(0));
        assert_eq!(severity_by_name("ERROR"), None);
        assert_eq!(span_kind_by_name("SPAN_KIND_CONSUMER"), Some(5));
    }

    #[test]
    fn ids_are_hex_any_case() {
        let o: Obj =
            serde_json::from_str(r#"{"traceId":"0123456789ABCDEF0123456789abcdef","spanId":"x"}"#).unwrap();
        let t = hex_id::<16>(&o, "traceId", "trace_id").unwrap().unwrap();
        assert_eq!(t[0], 0x01);
        assert_eq!(t[7], 0xef);
        let e = hex_id::<8>(&o, "spanId", "span_id").unwrap_err();
        assert_eq!(e.message, "invalid spanId: expected 16 hex characters");
    }
}
