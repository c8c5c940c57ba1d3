//! Protobuf OTLP requests → rows, with a hand-written reader (`wire::Msg`; field numbers from
//! opentelemetry-proto's `.proto` files).
//!
//! Strings and bytes are borrowed from the request buffer until the row is built. A message
//! whose fields depend on each other (a resource's `service.name` is needed by every span under
//! it, but may come after them on the wire) is scanned twice: once for what the others need, once
//! for the rest; scanning skips length-delimited fields in O(1), so this costs little. An item's
//! attribute and event slices are collected in its first scan (in per-request scratch vectors)
//! with their byte total, so its JSON `String` is allocated once and nothing is scanned again.
//!
//! Nested `AnyValue`s (arrays, kvlists) are written with a heap stack of open containers, never
//! by recursion, and fail past `max_any_value_depth`. Singular message fields that protobuf would
//! *merge* when repeated (a second `resource`, `status`, `body`, metric data, two values in one
//! `AnyValue`) are rejected as ambiguous: no SDK emits them, and merging would make our rows
//! differ from what a reader of the last occurrence expects.

use super::build::{
    Common, EXCEPTION_MESSAGE_KEY, EventIn, LogIn, LogsBuilder, MetricsBuilder, PointIn, SERVICE_NAME_KEY,
    SpanIn, TracesBuilder,
};
use super::jsonw::{self, ObjWriter};
use super::wire::{Msg, WT_LEN, repeated_fixed64, repeated_varint};
use super::{DecodeError, Decoded};
use crate::config::DecodeConfig;
use crate::pipeline::batch::{MetricKind, NumberValue, Received, Temporality};
use std::sync::Arc;

/// An `AnyValue` read from the wire.
#[derive(Clone, Copy, Debug)]
enum Any<'a> {
    /// No value set (or a profiles-only string-table index): JSON `null`.
    Null,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    Array(&'a [u8]),
    Kv(&'a [u8]),
}

fn ambiguous(what: &str) -> DecodeError {
    DecodeError::invalid(format!("ambiguous {what}: field repeated (duplicate)"))
}

#[inline]
fn parse_any(b: &[u8]) -> Result<Any<'_>, DecodeError> {
    let mut m = Msg::new(b, "AnyValue");
    let mut v = Any::Null;
    let mut n = 0;
    while let Some((f, wt)) = m.next()? {
        v = match f {
            1 => Any::Str(m.str(wt, "AnyValue.string_value")?),
            2 => Any::Bool(m.varint(wt, "AnyValue.bool_value")? != 0),
            3 => Any::Int(m.varint(wt, "AnyValue.int_value")? as i64),
            4 => Any::Double(m.double(wt, "AnyValue.double_value")?),
            5 => Any::Array(m.bytes(wt, "AnyValue.array_value")?),
            6 => Any::Kv(m.bytes(wt, "AnyValue.kvlist_value")?),
            7 => Any::Bytes(m.bytes(wt, "AnyValue.bytes_value")?),
            8 => {
                m.int32(wt, "AnyValue.string_value_strindex")?;
                Any::Null
            }
            _ => {
                m.skip(f, wt)?;
                continue;
            }
        };
        n += 1;
    }
    if n > 1 {
        return Err(DecodeError::invalid("ambiguous AnyValue: more than one value (duplicate)"));
    }
    Ok(v)
}

/// A `KeyValue`: its key and its value's bytes (`None`: no value, written as `null`).
#[inline]
fn parse_kv(b: &[u8]) -> Result<(&str, Option<&[u8]>), DecodeError> {
    let mut m = Msg::new(b, "KeyValue");
    let mut key = "";
    let mut value = None;
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => key = m.str(wt, "KeyValue.key")?,
            2 => {
                if value.is_some() {
                    return Err(ambiguous("KeyValue.value"));
                }
                value = Some(m.bytes(wt, "KeyValue.value")?);
            }
            _ => m.skip(f, wt)?,
        }
    }
    Ok((key, value))
}

/// An open container while writing a nested value.
enum Frame<'a> {
    Arr { m: Msg<'a>, first: bool },
    Kv { m: Msg<'a> },
}

enum Step<'a> {
    Value(&'a [u8], bool),
    Entry(&'a [u8]),
    CloseArr,
    CloseKv,
    Skipped,
}

/// Per-request scratch: the JSON object tracker and the value stack (reused across items).
struct Cx<'a, 'c> {
    cfg: &'c DecodeConfig,
    obj: ObjWriter,
    stack: Vec<Frame<'a>>,
    /// The current item's attribute `KeyValue`s, collected by its first scan.
    kvs: Vec<&'a [u8]>,
    /// Their total payload bytes (to size the item's JSON string once).
    kv_bytes: usize,
    /// The current span's events.
    events: Vec<&'a [u8]>,
}

impl<'a, 'c> Cx<'a, 'c> {
    fn new(cfg: &'c DecodeConfig) -> Self {
        Self {
            cfg,
            obj: ObjWriter::new(),
            stack: Vec::new(),
            kvs: Vec::new(),
            kv_bytes: 0,
            events: Vec::new(),
        }
    }

    /// Writes a scalar, or opens a container (pushed on the stack, depth-checked).
    fn emit(&mut self, out: &mut String, v: Any<'a>) -> Result<(), DecodeError> {
        match v {
            Any::Null => out.push_str("null"),
            Any::Str(s) => jsonw::push_str(out, s),
            Any::Bool(b) => jsonw::push_bool(out, b),
            Any::Int(i) => jsonw::push_i64(out, i),
            Any::Double(d) => jsonw::push_f64(out, d),
            Any::Bytes(b) => jsonw::push_b64(out, b),
            Any::Array(b) | Any::Kv(b) => {
                let max = self.cfg.max_any_value_depth;
                if self.stack.len() >= max {
                    return Err(DecodeError::limit(format!("AnyValue nested deeper than {max} levels")));
                }
                if let Any::Array(_) = v {
                    out.push('[');
                    self.stack.push(Frame::Arr { m: Msg::new(b, "ArrayValue"), first: true });
                } else {
                    self.obj.open(out);
                    self.stack.push(Frame::Kv { m: Msg::new(b, "KeyValueList") });
                }
            }
        }
        Ok(())
    }

    /// Writes a value as JSON, iteratively.
    fn write_any(&mut self, out: &mut String, v: Any<'a>) -> Result<(), DecodeError> {
        self.stack.clear();
        self.emit(out, v)?;
        while let Some(top) = self.stack.last_mut() {
            let step = match top {
                Frame::Arr { m, first } => match m.next()? {
                    Some((1, wt)) => {
                        let b = m.bytes(wt, "ArrayValue.values")?;
                        let comma = !*first;
                        *first = false;
                        Step::Value(b, comma)
                    }
                    Some((f, wt)) => {
                        m.skip(f, wt)?;
                        Step::Skipped
                    }
                    None => Step::CloseArr,
                },
                Frame::Kv { m } => match m.next()? {
                    Some((1, wt)) => Step::Entry(m.bytes(wt, "KeyValueList.values")?),
                    Some((f, wt)) => {
                        m.skip(f, wt)?;
                        Step::Skipped
                    }
                    None => Step::CloseKv,
                },
            };
            match step {
                Step::Value(b, comma) => {
                    if comma {
                        out.push(',');
                    }
                    let v = parse_any(b)?;
                    self.emit(out, v)?;
                }
                Step::Entry(b) => {
                    let (k, vb) = parse_kv(b)?;
                    self.obj.key(out, k);
                    match vb {
                        Some(vb) => {
                            let v = parse_any(vb)?;
                            self.emit(out, v)?;
                        }
                        None => out.push_str("null"),
                    }
                }
                Step::CloseArr => {
                    out.push(']');
                    self.stack.pop();
                }
                Step::CloseKv => {
                    self.obj.close(out);
                    self.stack.pop();
                }
                Step::Skipped => {}
            }
        }
        Ok(())
    }

    /// Collects one attribute `KeyValue` of the item being scanned.
    #[inline]
    fn kv(&mut self, m: &mut Msg<'a>, wt: u8, name: &'static str) -> Result<(), DecodeError> {
        let b = m.bytes(wt, name)?;
        self.kv_bytes += b.len();
        self.kvs.push(b);
        Ok(())
    }

    /// Writes the collected attributes as one JSON object (and forgets them). Returns the object
    /// and the string value of the `capture` key (last wins), if any.
    fn attrs(
        &mut self,
        name: &'static str,
        capture: Option<&str>,
    ) -> Result<(String, Option<&'a str>), DecodeError> {
        let max = self.cfg.max_attributes;
        let n = self.kvs.len();
        if n > max {
            return Err(DecodeError::limit(format!("{name} has more than {max} attributes")));
        }
        // JSON is about as long as the protobuf payload ("k":"v", per entry vs 6 framing bytes).
        let mut out = String::with_capacity(self.kv_bytes + n + 2);
        let mut captured = None;
        let kvs = std::mem::take(&mut self.kvs);
        self.obj.open(&mut out);
        for &kvb in &kvs {
            let (k, vb) = parse_kv(kvb)?;
            self.obj.key(&mut out, k);
            match vb {
                Some(vb) => {
                    let v = parse_any(vb)?;
                    if capture == Some(k) {
                        captured = if let Any::Str(s) = v { Some(s) } else { None };
                    }
                    self.write_any(&mut out, v)?;
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
        self.kvs = kvs;
        self.kvs.clear();
        self.kv_bytes = 0;
        Ok((out, captured))
    }

    /// Writes a value as a log body: a string as is, `None` for no value, else JSON.
    fn body(&mut self, b: &'a [u8]) -> Result<Option<String>, DecodeError> {
        match parse_any(b)? {
            Any::Null => Ok(None),
            Any::Str(s) => Ok(Some(s.to_owned())),
            v => {
                let mut out = String::with_capacity(b.len() + 2);
                self.write_any(&mut out, v)?;
                Ok(Some(out))
            }
        }
    }
}

/// Reads a `Resource*` message's resource (field 1) and starts it on `common`. Returns whether
/// its service is allowed.
fn resource<'a>(
    cx: &mut Cx<'a, '_>,
    common: &mut Common<'_>,
    buf: &'a [u8],
    name: &'static str,
) -> Result<bool, DecodeError> {
    let mut res = None;
    let mut m = Msg::new(buf, name);
    while let Some((f, wt)) = m.next()? {
        if f == 1 {
            if res.is_some() {
                return Err(ambiguous("resource"));
            }
            res = Some(m.bytes(wt, "resource")?);
        } else {
            m.skip(f, wt)?;
        }
    }
    let Some(r) = res else {
        return Ok(common.resource(None, "{}".to_owned()));
    };
    let mut m = Msg::new(r, "Resource");
    while let Some((f, wt)) = m.next()? {
        if f == 1 {
            cx.kv(&mut m, wt, "Resource.attributes")?;
        } else {
            m.skip(f, wt)?;
        }
    }
    let (attrs, service) = cx.attrs("Resource.attributes", Some(SERVICE_NAME_KEY))?;
    Ok(common.resource(service, attrs))
}

/// Reads a `Scope*` message's scope name (field 1 → InstrumentationScope.name).
fn scope_name<'a>(buf: &'a [u8], name: &'static str) -> Result<&'a str, DecodeError> {
    let mut scope = None;
    let mut m = Msg::new(buf, name);
    while let Some((f, wt)) = m.next()? {
        if f == 1 {
            if scope.is_some() {
                return Err(ambiguous("scope"));
            }
            scope = Some(m.bytes(wt, "scope")?);
        } else {
            m.skip(f, wt)?;
        }
    }
    let mut out = "";
    if let Some(s) = scope {
        let mut m = Msg::new(s, "InstrumentationScope");
        while let Some((f, wt)) = m.next()? {
            if f == 1 {
                out = m.str(wt, "InstrumentationScope.name")?;
            } else {
                m.skip(f, wt)?;
            }
        }
    }
    Ok(out)
}

/// Walks request → resource → scope → item (field 2 at both levels), calling `item` for each
/// resource, scope and item; the callback filters.
fn walk<'a, 'c>(
    buf: &'a [u8],
    names: [&'static str; 3],
    cx: &mut Cx<'a, 'c>,
    common: &mut dyn FnMut(&mut Cx<'a, 'c>, Visit<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut m = Msg::new(buf, names[0]);
    while let Some((f, wt)) = m.next()? {
        if f != 1 {
            m.skip(f, wt)?;
            continue;
        }
        let rbuf = m.bytes(wt, names[0])?;
        common(cx, Visit::Resource(rbuf))?;
        let mut rm = Msg::new(rbuf, names[1]);
        while let Some((f, wt)) = rm.next()? {
            if f != 2 {
                rm.skip(f, wt)?;
                continue;
            }
            let sbuf = rm.bytes(wt, names[1])?;
            common(cx, Visit::Scope(sbuf))?;
            let mut sm = Msg::new(sbuf, names[2]);
            while let Some((f, wt)) = sm.next()? {
                if f != 2 {
                    sm.skip(f, wt)?;
                    continue;
                }
                common(cx, Visit::Item(sm.bytes(wt, names[2])?))?;
            }
        }
    }
    Ok(())
}

enum Visit<'a> {
    Resource(&'a [u8]),
    Scope(&'a [u8]),
    Item(&'a [u8]),
}

/// Decodes a protobuf `ExportTraceServiceRequest` into trace groups.
pub fn decode_traces(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let mut b = TracesBuilder::new(cfg, tenant, received);
    let mut cx = Cx::new(cfg);
    let mut allowed = true;
    walk(
        buf,
        ["ExportTraceServiceRequest.resource_spans", "ResourceSpans.scope_spans", "ScopeSpans.spans"],
        &mut cx,
        &mut |cx, v| match v {
            Visit::Resource(r) => {
                allowed = resource(cx, &mut b.common, r, "ResourceSpans")?;
                Ok(())
            }
            Visit::Scope(s) => {
                if allowed {
                    b.common.scope(scope_name(s, "ScopeSpans")?);
                }
                Ok(())
            }
            Visit::Item(s) => {
                if allowed {
                    span(cx, &mut b, s)
                } else {
                    b.common.filter_service_items(1)
                }
            }
        },
    )?;
    b.finish()
}

fn span<'a>(cx: &mut Cx<'a, '_>, b: &mut TracesBuilder<'_>, buf: &'a [u8]) -> Result<(), DecodeError> {
    let mut s = SpanIn::default();
    let mut events = 0;
    let mut status = None;
    let mut m = Msg::new(buf, "Span");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => s.trace_id = m.bytes(wt, "Span.trace_id")?,
            2 => s.span_id = m.bytes(wt, "Span.span_id")?,
            4 => s.parent_span_id = m.bytes(wt, "Span.parent_span_id")?,
            5 => s.name = m.str(wt, "Span.name")?,
            6 => s.kind = m.int32(wt, "Span.kind")?,
            7 => s.start_time_unix_nano = m.fixed64(wt, "Span.start_time_unix_nano")?,
            8 => s.end_time_unix_nano = m.fixed64(wt, "Span.end_time_unix_nano")?,
            9 => cx.kv(&mut m, wt, "Span.attributes")?,
            11 => {
                let e = m.bytes(wt, "Span.events")?;
                cx.events.push(e);
                events += 1;
            }
            15 => {
                if status.is_some() {
                    return Err(ambiguous("Span.status"));
                }
                status = Some(m.bytes(wt, "Span.status")?);
            }
            _ => m.skip(f, wt)?,
        }
    }
    if let Some(st) = status {
        let mut m = Msg::new(st, "Status");
        while let Some((f, wt)) = m.next()? {
            match f {
                2 => s.status_message = m.str(wt, "Status.message")?,
                3 => s.status_code = m.int32(wt, "Status.code")?,
                _ => m.skip(f, wt)?,
            }
        }
    }
    s.attributes = cx.attrs("Span.attributes", None)?.0;
    b.span(s)?;
    if events > 0 {
        let mut evs = std::mem::take(&mut cx.events);
        for &e in &evs {
            let e = event(cx, e)?;
            b.event(e)?;
        }
        evs.clear();
        cx.events = evs;
    }
    Ok(())
}

fn event<'a>(cx: &mut Cx<'a, '_>, buf: &'a [u8]) -> Result<EventIn<'a>, DecodeError> {
    let mut e = EventIn::default();
    let mut m = Msg::new(buf, "Event");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => e.time_unix_nano = m.fixed64(wt, "Event.time_unix_nano")?,
            2 => e.name = m.str(wt, "Event.name")?,
            3 => cx.kv(&mut m, wt, "Event.attributes")?,
            _ => m.skip(f, wt)?,
        }
    }
    let (attrs, exc) = cx.attrs("Event.attributes", Some(EXCEPTION_MESSAGE_KEY))?;
    e.attributes = attrs;
    e.exception_message = exc;
    Ok(e)
}

/// Decodes a protobuf `ExportLogsServiceRequest`.
pub fn decode_logs(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let mut b = LogsBuilder::new(cfg, tenant, received);
    let mut cx = Cx::new(cfg);
    let mut allowed = true;
    walk(
        buf,
        ["ExportLogsServiceRequest.resource_logs", "ResourceLogs.scope_logs", "ScopeLogs.log_records"],
        &mut cx,
        &mut |cx, v| match v {
            Visit::Resource(r) => {
                allowed = resource(cx, &mut b.common, r, "ResourceLogs")?;
                Ok(())
            }
            Visit::Scope(s) => {
                if allowed {
                    b.common.scope(scope_name(s, "ScopeLogs")?);
                }
                Ok(())
            }
            Visit::Item(l) => {
                if allowed {
                    log_record(cx, &mut b, l)
                } else {
                    b.common.filter_service_items(1)
                }
            }
        },
    )?;
    b.finish()
}

fn log_record<'a>(cx: &mut Cx<'a, '_>, b: &mut LogsBuilder<'_>, buf: &'a [u8]) -> Result<(), DecodeError> {
    let mut l = LogIn::default();
    let mut body = None;
    let mut m = Msg::new(buf, "LogRecord");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => l.time_unix_nano = m.fixed64(wt, "LogRecord.time_unix_nano")?,
            11 => l.observed_time_unix_nano = m.fixed64(wt, "LogRecord.observed_time_unix_nano")?,
            2 => l.severity_number = m.int32(wt, "LogRecord.severity_number")?,
            3 => l.severity_text = m.str(wt, "LogRecord.severity_text")?,
            5 => {
                if body.is_some() {
                    return Err(ambiguous("LogRecord.body"));
                }
                body = Some(m.bytes(wt, "LogRecord.body")?);
            }
            6 => cx.kv(&mut m, wt, "LogRecord.attributes")?,
            9 => l.trace_id = m.bytes(wt, "LogRecord.trace_id")?,
            10 => l.span_id = m.bytes(wt, "LogRecord.span_id")?,
            _ => m.skip(f, wt)?,
        }
    }
    if b.filter_severity(l.severity_number, l.severity_text)? {
        cx.kvs.clear();
        cx.kv_bytes = 0;
        return Ok(());
    }
    l.body = match body {
        Some(bb) => cx.body(bb)?,
        None => None,
    };
    l.attributes = cx.attrs("LogRecord.attributes", None)?.0;
    b.log(l)
}

/// Decodes a protobuf `ExportMetricsServiceRequest`.
pub fn decode_metrics(
    buf: &[u8],
    cfg: &DecodeConfig,
    tenant: Arc<str>,
    received: Received,
) -> Result<Decoded, DecodeError> {
    let mut b = MetricsBuilder::new(cfg, tenant, received);
    let mut cx = Cx::new(cfg);
    let mut allowed = true;
    walk(
        buf,
        [
            "ExportMetricsServiceRequest.resource_metrics",
            "ResourceMetrics.scope_metrics",
            "ScopeMetrics.metrics",
        ],
        &mut cx,
        &mut |cx, v| match v {
            Visit::Resource(r) => {
                allowed = resource(cx, &mut b.common, r, "ResourceMetrics")?;
                Ok(())
            }
            Visit::Scope(s) => {
                if allowed {
                    b.common.scope(scope_name(s, "ScopeMetrics")?);
                }
                Ok(())
            }
            Visit::Item(mb) => metric(cx, &mut b, mb, allowed),
        },
    )?;
    b.finish()
}

/// Names of the metric data fields, by field number.
fn data_name(f: u32) -> &'static str {
    match f {
        5 => "Metric.gauge",
        7 => "Metric.sum",
        9 => "Metric.histogram",
        10 => "Metric.exponential_histogram",
        _ => "Metric.summary",
    }
}

fn metric<'a>(
    cx: &mut Cx<'a, '_>,
    b: &mut MetricsBuilder<'_>,
    buf: &'a [u8],
    allowed: bool,
) -> Result<(), DecodeError> {
    let (mut name, mut desc, mut unit) = ("", "", "");
    let mut data: Option<(u32, &[u8])> = None;
    let mut m = Msg::new(buf, "Metric");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => name = m.str(wt, "Metric.name")?,
            2 => desc = m.str(wt, "Metric.description")?,
            3 => unit = m.str(wt, "Metric.unit")?,
            5 | 7 | 9 | 10 | 11 => {
                if data.is_some() {
                    return Err(ambiguous("Metric data"));
                }
                data = Some((f, m.bytes(wt, data_name(f))?));
            }
            _ => m.skip(f, wt)?,
        }
    }
    let Some((kind_f, d)) = data else {
        return Ok(());
    };
    let dname = data_name(kind_f);
    // Temporality (field 2 of sum and both histograms) and monotonicity (field 3 of sum) apply
    // to every point, wherever they are in the message.
    let (mut temporality, mut monotonic, mut points) = (0i32, false, 0u64);
    let mut m = Msg::new(d, dname);
    while let Some((f, wt)) = m.next()? {
        match (kind_f, f) {
            (_, 1) => {
                m.bytes(wt, dname)?;
                points += 1;
            }
            (7 | 9 | 10, 2) => temporality = m.int32(wt, "aggregation_temporality")?,
            (7, 3) => monotonic = m.varint(wt, "Sum.is_monotonic")? != 0,
            _ => m.skip(f, wt)?,
        }
    }
    if !allowed {
        return b.common.filter_service_items(points);
    }
    b.metric(name, desc, unit);
    // Checked against the byte cap first: a point can be 2 bytes on the wire but ~400 as a row.
    b.reserve(usize::try_from(points).unwrap_or(usize::MAX))?;
    let temporality = Temporality::from_i32(temporality);
    let mut m = Msg::new(d, dname);
    while let Some((f, wt)) = m.next()? {
        if f != 1 {
            m.skip(f, wt)?;
            continue;
        }
        let p = m.bytes(wt, dname)?;
        let point = match kind_f {
            5 => number_point(cx, p, MetricKind::Gauge, None, None)?,
            7 => number_point(cx, p, MetricKind::Sum, Some(temporality), Some(monotonic))?,
            9 => histogram_point(cx, p, temporality)?,
            10 => exp_histogram_point(cx, p, temporality)?,
            _ => summary_point(cx, p)?,
        };
        b.point(point)?;
    }
    Ok(())
}

fn number_point<'a>(
    cx: &mut Cx<'a, '_>,
    buf: &'a [u8],
    kind: MetricKind,
    temporality: Option<Temporality>,
    monotonic: Option<bool>,
) -> Result<PointIn, DecodeError> {
    let mut p = PointIn::new(kind);
    p.temporality = temporality;
    p.is_monotonic = monotonic;
    let mut m = Msg::new(buf, "NumberDataPoint");
    while let Some((f, wt)) = m.next()? {
        match f {
            2 => p.start_time_unix_nano = m.fixed64(wt, "NumberDataPoint.start_time_unix_nano")?,
            3 => p.time_unix_nano = m.fixed64(wt, "NumberDataPoint.time_unix_nano")?,
            4 => p.value = Some(NumberValue::Double(m.double(wt, "NumberDataPoint.as_double")?)),
            6 => p.value = Some(NumberValue::Int(m.fixed64(wt, "NumberDataPoint.as_int")? as i64)),
            7 => cx.kv(&mut m, wt, "NumberDataPoint.attributes")?,
            _ => m.skip(f, wt)?,
        }
    }
    p.attributes = cx.attrs("NumberDataPoint.attributes", None)?.0;
    Ok(p)
}

fn histogram_point<'a>(
    cx: &mut Cx<'a, '_>,
    buf: &'a [u8],
    temporality: Temporality,
) -> Result<PointIn, DecodeError> {
    let mut p = PointIn::new(MetricKind::Histogram);
    p.temporality = Some(temporality);
    let mut counts = String::from("[");
    let mut bounds = String::from("[");
    let mut count = 0;
    let mut m = Msg::new(buf, "HistogramDataPoint");
    while let Some((f, wt)) = m.next()? {
        match f {
            2 => p.start_time_unix_nano = m.fixed64(wt, "HistogramDataPoint.start_time_unix_nano")?,
            3 => p.time_unix_nano = m.fixed64(wt, "HistogramDataPoint.time_unix_nano")?,
            4 => count = m.fixed64(wt, "HistogramDataPoint.count")?,
            5 => p.sum = Some(m.double(wt, "HistogramDataPoint.sum")?),
            6 => {
                if wt == WT_LEN {
                    counts.reserve(m.peek_len() / 8 * jsonw::U64_ELEM_HINT);
                }
                repeated_fixed64(&mut m, wt, "HistogramDataPoint.bucket_counts", |v| {
                    jsonw::sep(&mut counts);
                    jsonw::push_u64(&mut counts, v);
                })?
            }
            7 => {
                if wt == WT_LEN {
                    bounds.reserve(m.peek_len() / 8 * jsonw::F64_ELEM_HINT);
                }
                repeated_fixed64(&mut m, wt, "HistogramDataPoint.explicit_bounds", |v| {
                    jsonw::sep(&mut bounds);
                    jsonw::push_f64(&mut bounds, f64::from_bits(v));
                })?
            }
            9 => cx.kv(&mut m, wt, "HistogramDataPoint.attributes")?,
            11 => p.min = Some(m.double(wt, "HistogramDataPoint.min")?),
            12 => p.max = Some(m.double(wt, "HistogramDataPoint.max")?),
            _ => m.skip(f, wt)?,
        }
    }
    counts.push(']');
    bounds.push(']');
    p.count = Some(count);
    p.bucket_counts = Some(counts);
    p.explicit_bounds = Some(bounds);
    p.attributes = cx.attrs("HistogramDataPoint.attributes", None)?.0;
    Ok(p)
}

/// Reads exponential-histogram `Buckets`: (offset, JSON array of counts).
fn buckets(buf: &[u8]) -> Result<(i32, String), DecodeError> {
    let mut offset = 0;
    let mut counts = String::from("[");
    let mut m = Msg::new(buf, "Buckets");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => offset = m.sint32(wt, "Buckets.offset")?,
            2 => repeated_varint(&mut m, wt, "Buckets.bucket_counts", |v| {
                jsonw::sep(&mut counts);
                jsonw::push_u64(&mut counts, v);
            })?,
            _ => m.skip(f, wt)?,
        }
    }
    counts.push(']');
    Ok((offset, counts))
}

fn exp_histogram_point<'a>(
    cx: &mut Cx<'a, '_>,
    buf: &'a [u8],
    temporality: Temporality,
) -> Result<PointIn, DecodeError> {
    let mut p = PointIn::new(MetricKind::ExponentialHistogram);
    p.temporality = Some(temporality);
    let (mut count, mut scale, mut zero) = (0, 0, 0);
    let (mut pos, mut neg) = (None, None);
    let mut m = Msg::new(buf, "ExponentialHistogramDataPoint");
    while let Some((f, wt)) = m.next()? {
        match f {
            1 => cx.kv(&mut m, wt, "ExponentialHistogramDataPoint.attributes")?,
            2 => {
                p.start_time_unix_nano =
                    m.fixed64(wt, "ExponentialHistogramDataPoint.start_time_unix_nano")?
            }
            3 => p.time_unix_nano = m.fixed64(wt, "ExponentialHistogramDataPoint.time_unix_nano")?,
            4 => count = m.fixed64(wt, "ExponentialHistogramDataPoint.count")?,
            5 => p.sum = Some(m.double(wt, "ExponentialHistogramDataPoint.sum")?),
            6 => scale = m.sint32(wt, "ExponentialHistogramDataPoint.scale")?,
            7 => zero = m.fixed64(wt, "ExponentialHistogramDataPoint.zero_count")?,
            8 => {
                if pos.is_some() {
                    return Err(ambiguous("ExponentialHistogramDataPoint.positive"));
                }
                pos = Some(m.bytes(wt, "ExponentialHistogramDataPoint.positive")?);
            }
            9 => {
                if neg.is_some() {
                    return Err(ambiguous("ExponentialHistogramDataPoint.negative"));
                }
                neg = Some(m.bytes(wt, "ExponentialHistogramDataPoint.negative")?);
            }
            12 => p.min = Some(m.double(wt, "ExponentialHistogramDataPoint.min")?),
            13 => p.max = Some(m.double(wt, "ExponentialHistogramDataPoint.max")?),
            _ => m.skip(f, wt)?,
        }
    }
    p.count = Some(count);
    p.scale = Some(scale);
    p.zero_count = Some(zero);
    if let Some(bb) = pos {
        let (o, c) = buckets(bb)?;
        p.positive_offset = Some(o);
        p.positive_bucket_counts = Some(c);
    }
    if let Some(bb) = neg {
        let (o, c) = buckets(bb)?;
        p.negative_offset = Some(o);
        p.negative_bucket_counts = Some(c);
    }
    p.attributes = cx.attrs("ExponentialHistogramDataPoint.attributes", None)?.0;
    Ok(p)
}

fn summary_point<'a>(cx: &mut Cx<'a, '_>, buf: &'a [u8]) -> Result<PointIn, DecodeError> {
    let mut p = PointIn::new(MetricKind::Summary);
    let (mut count, mut sum) = (0, 0.0);
    let mut q = String::from("[");
    let mut m = Msg::new(buf, "SummaryDataPoint");
    while let Some((f, wt)) = m.next()? {
        match f {
            2 => p.start_time_unix_nano = m.fixed64(wt, "SummaryDataPoint.start_time_unix_nano")?,
            3 => p.time_unix_nano = m.fixed64(wt, "SummaryDataPoint.time_unix_nano")?,
            4 => count = m.fixed64(wt, "SummaryDataPoint.count")?,
            5 => sum = m.double(wt, "SummaryDataPoint.sum")?,
            6 => {
                let vb = m.bytes(wt, "SummaryDataPoint.quantile_values")?;
                let (mut quantile, mut value) = (0.0, 0.0);
                let mut vm = Msg::new(vb, "ValueAtQuantile");
                while let Some((f, wt)) = vm.next()? {
                    match f {
                        1 => quantile = vm.double(wt, "ValueAtQuantile.quantile")?,
                        2 => value = vm.double(wt, "ValueAtQuantile.value")?,
                        _ => vm.skip(f, wt)?,
                    }
                }
                jsonw::sep(&mut q);
                jsonw::push_quantile(&mut q, quantile, value);
            }
            7 => cx.kv(&mut m, wt, "SummaryDataPoint.attributes")?,
            _ => m.skip(f, wt)?,
        }
    }
    q.push(']');
    p.count = Some(count);
    p.sum = Some(sum);
    p.quantiles = Some(q);
    p.attributes = cx.attrs("SummaryDataPoint.attributes", None)?.0;
    Ok(p)
}
