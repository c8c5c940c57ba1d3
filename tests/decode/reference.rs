//! The reference path and the property checks shared by `tests/decode.rs`, `benches/decode.rs`
//! and every `fuzz/` target (included with `#[path]`, so CI checks on stable exactly what the
//! fuzzers check on nightly).
//!
//! - `*_rows`: prost-decoded requests → rows through the same builders as our decoders; this is
//!   the reference our protobuf decoder must agree with, and the benchmark's baseline ("prost
//!   decode + the same conversion").
//! - `*_json`: prost requests → OTLP/JSON text, so "rows from JSON = rows from protobuf for the
//!   same data" can be checked on any input prost accepts.
//! - [`check`]: the property of each fuzz target, by target name.

#![allow(dead_code)]

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Av};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use otelring::config::DecodeConfig;
use otelring::otlp::build::{
    Common, EXCEPTION_MESSAGE_KEY, EventIn, LogIn, LogsBuilder, MetricsBuilder, PointIn, SERVICE_NAME_KEY,
    SpanIn, TracesBuilder,
};
use otelring::otlp::jsonw::{self, ObjWriter};
use otelring::otlp::{self, DecodeError, DecodeErrorKind, Decoded};
use otelring::pipeline::batch::{MetricKind, NumberValue, Received, Temporality};
use prost::Message as _;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub fn tenant() -> Arc<str> {
    Arc::from("default")
}

/// One fixed receive time so rows from two decodes compare equal.
pub fn received() -> Received {
    thread_local! {
        static R: Received = Received::now();
    }
    R.with(|r| *r)
}

// ---------------------------------------------------------------------------------------------
// prost → rows

struct W<'c> {
    cfg: &'c DecodeConfig,
    obj: ObjWriter,
}

impl W<'_> {
    fn any(&mut self, out: &mut String, v: Option<&AnyValue>, depth: usize) -> Result<(), DecodeError> {
        match v.and_then(|a| a.value.as_ref()) {
            None | Some(Av::StringValueStrindex(_)) => out.push_str("null"),
            Some(Av::StringValue(s)) => jsonw::push_str(out, s),
            Some(Av::BoolValue(b)) => jsonw::push_bool(out, *b),
            Some(Av::IntValue(i)) => jsonw::push_i64(out, *i),
            Some(Av::DoubleValue(d)) => jsonw::push_f64(out, *d),
            Some(Av::BytesValue(b)) => jsonw::push_b64(out, b),
            Some(Av::ArrayValue(a)) => {
                self.depth(depth)?;
                out.push('[');
                for (i, v) in a.values.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.any(out, Some(v), depth + 1)?;
                }
                out.push(']');
            }
            Some(Av::KvlistValue(kv)) => {
                self.depth(depth)?;
                self.obj.open(out);
                for e in &kv.values {
                    self.obj.key(out, &e.key);
                    self.any(out, e.value.as_ref(), depth + 1)?;
                }
                self.obj.close(out);
            }
        }
        Ok(())
    }

    fn depth(&self, depth: usize) -> Result<(), DecodeError> {
        if depth >= self.cfg.max_any_value_depth {
            return Err(DecodeError::new(DecodeErrorKind::Limit, "AnyValue too deep"));
        }
        Ok(())
    }

    fn attrs<'a>(
        &mut self,
        a: &'a [KeyValue],
        capture: Option<&str>,
    ) -> Result<(String, Option<&'a str>), DecodeError> {
        if a.len() > self.cfg.max_attributes {
            return Err(DecodeError::new(DecodeErrorKind::Limit, "too many attributes"));
        }
        let mut out = String::new();
        let mut cap = None;
        self.obj.open(&mut out);
        for kv in a {
            self.obj.key(&mut out, &kv.key);
            if capture == Some(kv.key.as_str()) {
                cap = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Av::StringValue(s)) => Some(s.as_str()),
                    _ => None,
                };
            }
            self.any(&mut out, kv.value.as_ref(), 0)?;
        }
        self.obj.close(&mut out);
        Ok((out, cap))
    }

    fn resource(&mut self, c: &mut Common<'_>, r: Option<&Resource>) -> Result<bool, DecodeError> {
        match r {
            None => Ok(c.resource(None, "{}".to_owned())),
            Some(r) => {
                let (a, s) = self.attrs(&r.attributes, Some(SERVICE_NAME_KEY))?;
                Ok(c.resource(s, a))
            }
        }
    }
}

pub fn traces_rows(req: &ExportTraceServiceRequest, cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let mut b = TracesBuilder::new(cfg, tenant(), received());
    let mut w = W { cfg, obj: ObjWriter::new() };
    for rs in &req.resource_spans {
        let allowed = w.resource(&mut b.common, rs.resource.as_ref())?;
        for ss in &rs.scope_spans {
            if !allowed {
                b.common.filter_service_items(ss.spans.len() as u64)?;
                continue;
            }
            b.common.scope(ss.scope.as_ref().map_or("", |s| s.name.as_str()));
            for s in &ss.spans {
                let (code, msg) = s.status.as_ref().map_or((0, ""), |st| (st.code, st.message.as_str()));
                b.span(SpanIn {
                    trace_id: &s.trace_id,
                    span_id: &s.span_id,
                    parent_span_id: &s.parent_span_id,
                    name: &s.name,
                    kind: s.kind,
                    start_time_unix_nano: s.start_time_unix_nano,
                    end_time_unix_nano: s.end_time_unix_nano,
                    status_code: code,
                    status_message: msg,
                    attributes: w.attrs(&s.attributes, None)?.0,
                })?;
                for e in &s.events {
                    let (attributes, exc) = w.attrs(&e.attributes, Some(EXCEPTION_MESSAGE_KEY))?;
                    b.event(EventIn {
                        time_unix_nano: e.time_unix_nano,
                        name: &e.name,
                        attributes,
                        exception_message: exc,
                    })?;
                }
            }
        }
    }
    b.finish()
}

pub fn logs_rows(req: &ExportLogsServiceRequest, cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let mut b = LogsBuilder::new(cfg, tenant(), received());
    let mut w = W { cfg, obj: ObjWriter::new() };
    for rl in &req.resource_logs {
        let allowed = w.resource(&mut b.common, rl.resource.as_ref())?;
        for sl in &rl.scope_logs {
            if !allowed {
                b.common.filter_service_items(sl.log_records.len() as u64)?;
                continue;
            }
            b.common.scope(sl.scope.as_ref().map_or("", |s| s.name.as_str()));
            for l in &sl.log_records {
                if b.filter_severity(l.severity_number, &l.severity_text)? {
                    continue;
                }
                let body = match l.body.as_ref().and_then(|v| v.value.as_ref()) {
                    None => None,
                    Some(Av::StringValue(s)) => Some(s.clone()),
                    Some(_) => {
                        let mut out = String::new();
                        w.any(&mut out, l.body.as_ref(), 0)?;
                        Some(out)
                    }
                };
                b.log(LogIn {
                    time_unix_nano: l.time_unix_nano,
                    observed_time_unix_nano: l.observed_time_unix_nano,
                    severity_number: l.severity_number,
                    severity_text: &l.severity_text,
                    body,
                    trace_id: &l.trace_id,
                    span_id: &l.span_id,
                    attributes: w.attrs(&l.attributes, None)?.0,
                })?;
            }
        }
    }
    b.finish()
}

fn u64_array(v: &[u64]) -> String {
    let mut s = String::with_capacity(2 + v.len() * jsonw::U64_ELEM_HINT);
    s.push('[');
    for &x in v {
        jsonw::sep(&mut s);
        jsonw::push_u64(&mut s, x);
    }
    s.push(']');
    s
}

fn f64_array(v: &[f64]) -> String {
    let mut s = String::with_capacity(2 + v.len() * jsonw::F64_ELEM_HINT);
    s.push('[');
    for &x in v {
        jsonw::sep(&mut s);
        jsonw::push_f64(&mut s, x);
    }
    s.push(']');
    s
}

pub fn metrics_rows(req: &ExportMetricsServiceRequest, cfg: &DecodeConfig) -> Result<Decoded, DecodeError> {
    let mut b = MetricsBuilder::new(cfg, tenant(), received());
    let mut w = W { cfg, obj: ObjWriter::new() };
    for rm in &req.resource_metrics {
        let allowed = w.resource(&mut b.common, rm.resource.as_ref())?;
        for sm in &rm.scope_metrics {
            if allowed {
                b.common.scope(sm.scope.as_ref().map_or("", |s| s.name.as_str()));
            }
            for m in &sm.metrics {
                let Some(data) = &m.data else { continue };
                if !allowed {
                    let n = match data {
                        Data::Gauge(g) => g.data_points.len(),
                        Data::Sum(s) => s.data_points.len(),
                        Data::Histogram(h) => h.data_points.len(),
                        Data::ExponentialHistogram(h) => h.data_points.len(),
                        Data::Summary(s) => s.data_points.len(),
                    };
                    b.common.filter_service_items(n as u64)?;
                    continue;
                }
                b.metric(&m.name, &m.description, &m.unit);
                match data {
                    Data::Gauge(_) | Data::Sum(_) => {
                        let (pts, kind, temp, mono) = match data {
                            Data::Sum(s) => (
                                &s.data_points,
                                MetricKind::Sum,
                                Some(Temporality::from_i32(s.aggregation_temporality)),
                                Some(s.is_monotonic),
                            ),
                            Data::Gauge(g) => (&g.data_points, MetricKind::Gauge, None, None),
                            _ => unreachable!(),
                        };
                        for p in pts {
                            let mut pt = PointIn::new(kind);
                            pt.temporality = temp;
                            pt.is_monotonic = mono;
                            pt.time_unix_nano = p.time_unix_nano;
                            pt.start_time_unix_nano = p.start_time_unix_nano;
                            pt.value = p.value.map(|v| match v {
                                number_data_point::Value::AsDouble(d) => NumberValue::Double(d),
                                number_data_point::Value::AsInt(i) => NumberValue::Int(i),
                            });
                            pt.attributes = w.attrs(&p.attributes, None)?.0;
                            b.point(pt)?;
                        }
                    }
                    Data::Histogram(h) => {
                        for p in &h.data_points {
                            let mut pt = PointIn::new(MetricKind::Histogram);
                            pt.temporality = Some(Temporality::from_i32(h.aggregation_temporality));
                            pt.time_unix_nano = p.time_unix_nano;
                            pt.start_time_unix_nano = p.start_time_unix_nano;
                            pt.count = Some(p.count);
                            pt.sum = p.sum;
                            pt.min = p.min;
                            pt.max = p.max;
                            pt.bucket_counts = Some(u64_array(&p.bucket_counts));
                            pt.explicit_bounds = Some(f64_array(&p.explicit_bounds));
                            pt.attributes = w.attrs(&p.attributes, None)?.0;
                            b.point(pt)?;
                        }
                    }
                    Data::ExponentialHistogram(h) => {
                        for p in &h.data_points {
                            let mut pt = PointIn::new(MetricKind::ExponentialHistogram);
                            pt.temporality = Some(Temporality::from_i32(h.aggregation_temporality));
                            pt.time_unix_nano = p.time_unix_nano;
                            pt.start_time_unix_nano = p.start_time_unix_nano;
                            pt.count = Some(p.count);
                            pt.sum = p.sum;
                            pt.min = p.min;
                            pt.max = p.max;
                            pt.scale = Some(p.scale);
                            pt.zero_count = Some(p.zero_count);
                            if let Some(bk) = &p.positive {
                                pt.positive_offset = Some(bk.offset);
                                pt.positive_bucket_counts = Some(u64_array(&bk.bucket_counts));
                            }
                            if let Some(bk) = &p.negative {
                                pt.negative_offset = Some(bk.offset);
                                pt.negative_bucket_counts = Some(u64_array(&bk.bucket_counts));
                            }
                            pt.attributes = w.attrs(&p.attributes, None)?.0;
                            b.point(pt)?;
                        }
                    }
                    Data::Summary(s) => {
                        for p in &s.data_points {
                            let mut pt = PointIn::new(MetricKind::Summary);
                            pt.time_unix_nano = p.time_unix_nano;
                            pt.start_time_unix_nano = p.start_time_unix_nano;
                            pt.count = Some(p.count);
                            pt.sum = Some(p.sum);
                            let mut q = String::from("[");
                            for v in &p.quantile_values {
                                jsonw::sep(&mut q);
                                jsonw::push_quantile(&mut q, v.quantile, v.value);
                            }
                            q.push(']');
                            pt.quantiles = Some(q);
                            pt.attributes = w.attrs(&p.attributes, None)?.0;
                            b.point(pt)?;
                        }
                    }
                }
            }
        }
    }
    b.finish()
}

// ---------------------------------------------------------------------------------------------
// prost → OTLP/JSON

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn jf64(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        // serde_json without its `float_roundtrip` feature parses some numbers (e.g.
        // 1.8665272370064378e-301) one ULP off; proto3 JSON also accepts doubles as strings, which
        // our decoder parses exactly, so use a string when the number form would not round-trip.
        let n = json!(v);
        if serde_json::from_str::<f64>(&n.to_string()).is_ok_and(|back| back.to_bits() == v.to_bits()) {
            n
        } else {
            json!(format!("{v:?}"))
        }
    }
}

fn jany(v: &AnyValue) -> Value {
    match &v.value {
        None => json!({}),
        Some(Av::StringValue(s)) => json!({ "stringValue": s }),
        Some(Av::BoolValue(b)) => json!({ "boolValue": b }),
        Some(Av::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(Av::DoubleValue(d)) => json!({ "doubleValue": jf64(*d) }),
        Some(Av::BytesValue(b)) => {
            json!({ "bytesValue": base64::engine::general_purpose::STANDARD.encode(b) })
        }
        Some(Av::ArrayValue(a)) => {
            json!({ "arrayValue": { "values": a.values.iter().map(jany).collect::<Vec<_>>() } })
        }
        Some(Av::KvlistValue(kv)) => json!({ "kvlistValue": { "values": jattrs(&kv.values) } }),
        Some(Av::StringValueStrindex(i)) => json!({ "stringValueStrindex": i }),
    }
}

fn jattrs(a: &[KeyValue]) -> Value {
    Value::Array(
        a.iter()
            .map(|kv| {
                let mut o = Map::new();
                o.insert("key".into(), json!(kv.key));
                if let Some(v) = &kv.value {
                    o.insert("value".into(), jany(v));
                }
                Value::Object(o)
            })
            .collect(),
    )
}

fn jresource(r: &Option<Resource>, o: &mut Map<String, Value>) {
    if let Some(r) = r {
        o.insert("resource".into(), json!({ "attributes": jattrs(&r.attributes) }));
    }
}

fn jscope(
    s: &Option<opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    o: &mut Map<String, Value>,
) {
    if let Some(s) = s {
        o.insert("scope".into(), json!({ "name": s.name, "version": s.version }));
    }
}

pub fn traces_json(req: &ExportTraceServiceRequest) -> Vec<u8> {
    let rs: Vec<Value> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let mut o = Map::new();
            jresource(&rs.resource, &mut o);
            let ss: Vec<Value> = rs
                .scope_spans
                .iter()
                .map(|ss| {
                    let mut so = Map::new();
                    jscope(&ss.scope, &mut so);
                    let spans: Vec<Value> = ss
                        .spans
                        .iter()
                        .map(|s| {
                            let mut sp = json!({
                                "traceId": hex(&s.trace_id),
                                "spanId": hex(&s.span_id),
                                "parentSpanId": hex(&s.parent_span_id),
                                "name": s.name,
                                "kind": s.kind,
                                "startTimeUnixNano": s.start_time_unix_nano.to_string(),
                                "endTimeUnixNano": s.end_time_unix_nano.to_string(),
                                "attributes": jattrs(&s.attributes),
                                "events": s.events.iter().map(|e| json!({
                                    "timeUnixNano": e.time_unix_nano.to_string(),
                                    "name": e.name,
                                    "attributes": jattrs(&e.attributes),
                                })).collect::<Vec<_>>(),
                            });
                            if let (Some(st), Some(o)) = (&s.status, sp.as_object_mut()) {
                                o.insert("status".into(), json!({ "code": st.code, "message": st.message }));
                            }
                            sp
                        })
                        .collect();
                    so.insert("spans".into(), Value::Array(spans));
                    Value::Object(so)
                })
                .collect();
            o.insert("scopeSpans".into(), Value::Array(ss));
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceSpans": rs })).unwrap_or_default()
}

pub fn logs_json(req: &ExportLogsServiceRequest) -> Vec<u8> {
    let rl: Vec<Value> = req
        .resource_logs
        .iter()
        .map(|rl| {
            let mut o = Map::new();
            jresource(&rl.resource, &mut o);
            let sl: Vec<Value> = rl
                .scope_logs
                .iter()
                .map(|sl| {
                    let mut so = Map::new();
                    jscope(&sl.scope, &mut so);
                    let recs: Vec<Value> = sl
                        .log_records
                        .iter()
                        .map(|l| {
                            let mut lo = json!({
                                "timeUnixNano": l.time_unix_nano.to_string(),
                                "observedTimeUnixNano": l.observed_time_unix_nano.to_string(),
                                "severityNumber": l.severity_number,
                                "severityText": l.severity_text,
                                "traceId": hex(&l.trace_id),
                                "spanId": hex(&l.span_id),
                                "attributes": jattrs(&l.attributes),
                            });
                            if let (Some(b), Some(o)) = (&l.body, lo.as_object_mut()) {
                                o.insert("body".into(), jany(b));
                            }
                            lo
                        })
                        .collect();
                    so.insert("logRecords".into(), Value::Array(recs));
                    Value::Object(so)
                })
                .collect();
            o.insert("scopeLogs".into(), Value::Array(sl));
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceLogs": rl })).unwrap_or_default()
}

fn jopt(o: &mut Map<String, Value>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        o.insert(k.into(), jf64(v));
    }
}

fn jbuckets(b: &Buckets) -> Value {
    json!({ "offset": b.offset, "bucketCounts": b.bucket_counts.iter().map(|c| c.to_string()).collect::<Vec<_>>() })
}

pub fn metrics_json(req: &ExportMetricsServiceRequest) -> Vec<u8> {
    let rm: Vec<Value> = req
        .resource_metrics
        .iter()
        .map(|rm| {
            let mut o = Map::new();
            jresource(&rm.resource, &mut o);
            let sm: Vec<Value> = rm
                .scope_metrics
                .iter()
                .map(|sm| {
                    let mut so = Map::new();
                    jscope(&sm.scope, &mut so);
                    let ms: Vec<Value> = sm
                        .metrics
                        .iter()
                        .map(|m| {
                            let mut mo = Map::new();
                            mo.insert("name".into(), json!(m.name));
                            mo.insert("description".into(), json!(m.description));
                            mo.insert("unit".into(), json!(m.unit));
                            let times = |s: u64, t: u64, a: &[KeyValue]| {
                                let mut p = Map::new();
                                p.insert("startTimeUnixNano".into(), json!(s.to_string()));
                                p.insert("timeUnixNano".into(), json!(t.to_string()));
                                p.insert("attributes".into(), jattrs(a));
                                p
                            };
                            match &m.data {
                                None => {}
                                Some(Data::Gauge(_)) | Some(Data::Sum(_)) => {
                                    let pts = match &m.data {
                                        Some(Data::Gauge(g)) => &g.data_points,
                                        Some(Data::Sum(s)) => &s.data_points,
                                        _ => unreachable!(),
                                    };
                                    let pts: Vec<Value> = pts
                                        .iter()
                                        .map(|p| {
                                            let mut po = times(p.start_time_unix_nano, p.time_unix_nano, &p.attributes);
                                            match p.value {
                                                Some(number_data_point::Value::AsDouble(d)) => {
                                                    po.insert("asDouble".into(), jf64(d));
                                                }
                                                Some(number_data_point::Value::AsInt(i)) => {
                                                    po.insert("asInt".into(), json!(i.to_string()));
                                                }
                                                None => {}
                                            }
                                            Value::Object(po)
                                        })
                                        .collect();
                                    match &m.data {
                                        Some(Data::Sum(s)) => {
                                            mo.insert(
                                                "sum".into(),
                                                json!({ "dataPoints": pts, "aggregationTemporality": s.aggregation_temporality, "isMonotonic": s.is_monotonic }),
                                            );
                                        }
                                        _ => {
                                            mo.insert("gauge".into(), json!({ "dataPoints": pts }));
                                        }
                                    }
                                }
                                Some(Data::Histogram(h)) => {
                                    let pts: Vec<Value> = h
                                        .data_points
                                        .iter()
                                        .map(|p| {
                                            let mut po = times(p.start_time_unix_nano, p.time_unix_nano, &p.attributes);
                                            po.insert("count".into(), json!(p.count.to_string()));
                                            jopt(&mut po, "sum", p.sum);
                                            jopt(&mut po, "min", p.min);
                                            jopt(&mut po, "max", p.max);
                                            po.insert(
                                                "bucketCounts".into(),
                                                json!(p.bucket_counts.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
                                            );
                                            po.insert(
                                                "explicitBounds".into(),
                                                Value::Array(p.explicit_bounds.iter().map(|b| jf64(*b)).collect()),
                                            );
                                            Value::Object(po)
                                        })
                                        .collect();
                                    mo.insert(
                                        "histogram".into(),
                                        json!({ "dataPoints": pts, "aggregationTemporality": h.aggregation_temporality }),
                                    );
                                }
                                Some(Data::ExponentialHistogram(h)) => {
                                    let pts: Vec<Value> = h
                                        .data_points
                                        .iter()
                                        .map(|p| {
                                            let mut po = times(p.start_time_unix_nano, p.time_unix_nano, &p.attributes);
                                            po.insert("count".into(), json!(p.count.to_string()));
                                            jopt(&mut po, "sum", p.sum);
                                            jopt(&mut po, "min", p.min);
                                            jopt(&mut po, "max", p.max);
                                            po.insert("scale".into(), json!(p.scale));
                                            po.insert("zeroCount".into(), json!(p.zero_count.to_string()));
                                            if let Some(b) = &p.positive {
                                                po.insert("positive".into(), jbuckets(b));
                                            }
                                            if let Some(b) = &p.negative {
                                                po.insert("negative".into(), jbuckets(b));
                                            }
                                            Value::Object(po)
                                        })
                                        .collect();
                                    mo.insert(
                                        "exponentialHistogram".into(),
                                        json!({ "dataPoints": pts, "aggregationTemporality": h.aggregation_temporality }),
                                    );
                                }
                                Some(Data::Summary(s)) => {
                                    let pts: Vec<Value> = s
                                        .data_points
                                        .iter()
                                        .map(|p| {
                                            let mut po = times(p.start_time_unix_nano, p.time_unix_nano, &p.attributes);
                                            po.insert("count".into(), json!(p.count.to_string()));
                                            po.insert("sum".into(), jf64(p.sum));
                                            po.insert(
                                                "quantileValues".into(),
                                                Value::Array(
                                                    p.quantile_values
                                                        .iter()
                                                        .map(|q| json!({ "quantile": jf64(q.quantile), "value": jf64(q.value) }))
                                                        .collect(),
                                                ),
                                            );
                                            Value::Object(po)
                                        })
                                        .collect();
                                    mo.insert("summary".into(), json!({ "dataPoints": pts }));
                                }
                            }
                            Value::Object(mo)
                        })
                        .collect();
                    so.insert("metrics".into(), Value::Array(ms));
                    Value::Object(so)
                })
                .collect();
            o.insert("scopeMetrics".into(), Value::Array(sm));
            Value::Object(o)
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceMetrics": rm })).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Rows compared through their Debug text (so NaN equals NaN), plus the books' counts.
pub fn same(a: &Decoded, b: &Decoded) -> Result<(), String> {
    let (ra, rb) = (format!("{:?}", a.request.rows), format!("{:?}", b.request.rows));
    if ra != rb {
        let at = ra.bytes().zip(rb.bytes()).take_while(|(x, y)| x == y).count();
        let from = at.saturating_sub(300);
        let window = |s: &str| s.get(from..(at + 300).min(s.len())).unwrap_or_default().to_owned();
        return Err(format!("rows differ at byte {at}:\n ours: …{}\n  ref: …{}", window(&ra), window(&rb)));
    }
    if (a.received_items, a.filtered) != (b.received_items, b.filtered) {
        return Err(format!(
            "counts differ: {:?} vs {:?}",
            (a.received_items, a.filtered),
            (b.received_items, b.filtered)
        ));
    }
    Ok(())
}

/// Invariants of any successful decode: the books balance and the estimate covers the heap.
pub fn sane(d: &Decoded) -> Result<(), String> {
    if d.received_items != d.request.rows.items() + d.filtered.total() {
        return Err(format!(
            "books: received {} != rows {} + filtered {:?}",
            d.received_items,
            d.request.rows.items(),
            d.filtered
        ));
    }
    let heap = d.request.rows.heap_bytes() as u64;
    if d.est_bytes < heap {
        return Err(format!("estimate {} below heap bytes {heap}", d.est_bytes));
    }
    Ok(())
}

/// Errors our decoder may give where the reference (prost merges repeated singular messages,
/// allows deeper nesting) succeeds.
fn allowed_extra_error(e: &DecodeError) -> bool {
    e.message.contains("ambiguous") || e.kind == DecodeErrorKind::Limit
}

/// JSON-specific: serde_json stops at 128 nested containers (deep kvlists in JSON).
fn allowed_json_error(e: &DecodeError) -> bool {
    e.message.contains("recursion limit")
}

/// ours vs reference: when the reference succeeds, ours succeeds with the same rows (or fails
/// only in the documented stricter ways); when the reference conversion fails, ours fails too.
fn agree(
    ours: &Result<Decoded, DecodeError>,
    reference: &Result<Decoded, DecodeError>,
    json: bool,
) -> Result<(), String> {
    if let Ok(d) = ours {
        sane(d)?;
    }
    match (ours, reference) {
        (Ok(a), Ok(b)) => same(a, b),
        (Err(e), Ok(_)) if allowed_extra_error(e) || (json && allowed_json_error(e)) => Ok(()),
        (Err(e), Ok(_)) => Err(format!("we reject what the reference accepts: {e}")),
        (Ok(_), Err(e)) => Err(format!("we accept what the reference rejects: {e}")),
        (Err(_), Err(_)) => Ok(()),
    }
}

/// The property of one fuzz target on one input (`Err` = property violated).
pub fn check(target: &str, data: &[u8]) -> Result<(), String> {
    let cfg = DecodeConfig::default();
    match target {
        "proto_traces" | "json_traces" => {
            let direct = if target == "json_traces" {
                otlp::decode_traces_json(data, &cfg, tenant(), received())
            } else {
                otlp::decode_traces_proto(data, &cfg, tenant(), received())
            };
            if let Ok(d) = &direct {
                sane(d)?;
            }
            if let Ok(req) = ExportTraceServiceRequest::decode(data) {
                let reference = traces_rows(&req, &cfg);
                if target == "proto_traces" {
                    agree(&direct, &reference, false)?;
                }
                let j = otlp::decode_traces_json(&traces_json(&req), &cfg, tenant(), received());
                agree(&j, &reference, true).map_err(|e| format!("JSON: {e}"))?;
            }
            Ok(())
        }
        "proto_logs" | "json_logs" => {
            let direct = if target == "json_logs" {
                otlp::decode_logs_json(data, &cfg, tenant(), received())
            } else {
                otlp::decode_logs_proto(data, &cfg, tenant(), received())
            };
            if let Ok(d) = &direct {
                sane(d)?;
            }
            if let Ok(req) = ExportLogsServiceRequest::decode(data) {
                let reference = logs_rows(&req, &cfg);
                if target == "proto_logs" {
                    agree(&direct, &reference, false)?;
                }
                let j = otlp::decode_logs_json(&logs_json(&req), &cfg, tenant(), received());
                agree(&j, &reference, true).map_err(|e| format!("JSON: {e}"))?;
            }
            Ok(())
        }
        "proto_metrics" | "json_metrics" => {
            let direct = if target == "json_metrics" {
                otlp::decode_metrics_json(data, &cfg, tenant(), received())
            } else {
                otlp::decode_metrics_proto(data, &cfg, tenant(), received())
            };
            if let Ok(d) = &direct {
                sane(d)?;
            }
            if let Ok(req) = ExportMetricsServiceRequest::decode(data) {
                let reference = metrics_rows(&req, &cfg);
                if target == "proto_metrics" {
                    agree(&direct, &reference, false)?;
                }
                let j = otlp::decode_metrics_json(&metrics_json(&req), &cfg, tenant(), received());
                agree(&j, &reference, true).map_err(|e| format!("JSON: {e}"))?;
            }
            Ok(())
        }
        "grpc_frame" => check_grpc_frame(data),
        other => Err(format!("unknown fuzz target {other}")),
    }
}

/// gRPC framing: every parsed frame re-encodes to exactly the bytes it came from, a simple
/// reference parser agrees, and each message decodes (or fails cleanly) as a trace request.
fn check_grpc_frame(data: &[u8]) -> Result<(), String> {
    use otelring::otlp::grpc_frame::{encode_frame, parse_frame};
    let max = 1 << 16;
    let mut rest = data;
    loop {
        let ours = parse_frame(rest, max);
        // Reference: straightforward indexing on a copy.
        let reference = if rest.len() < 5 {
            Ok(None)
        } else if rest[0] > 1 {
            Err(())
        } else {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len > max {
                Err(())
            } else if rest.len() < 5 + len {
                Ok(None)
            } else {
                Ok(Some((rest[0] == 1, rest[5..5 + len].to_vec(), 5 + len)))
            }
        };
        match (ours, reference) {
            (Ok(None), Ok(None)) => return Ok(()),
            (Err(_), Err(())) => return Ok(()),
            (Ok(Some((f, after))), Ok(Some((c, msg, used)))) => {
                if f.compressed != c || f.message != msg.as_slice() || after.len() != rest.len() - used {
                    return Err("frame differs from the reference parser".into());
                }
                let mut enc = Vec::new();
                encode_frame(f.compressed, f.message, &mut enc);
                if enc.as_slice() != &rest[..used] {
                    return Err("frame does not re-encode to its bytes".into());
                }
                if let Ok(d) =
                    otlp::decode_traces_proto(f.message, &DecodeConfig::default(), tenant(), received())
                {
                    sane(&d)?;
                }
                rest = after;
            }
            (o, r) => return Err(format!("framing disagrees: ours {o:?}, reference {r:?}")),
        }
    }
}
