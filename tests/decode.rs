//! OTLP decoding: differential tests against prost, row semantics (DESIGN 1.2, 1.4), error
//! cases, and the replay of every committed fuzz seed and regression through the fuzz targets'
//! own property checks (so CI needs neither nightly nor cargo-fuzz).

mod fixtures;
mod reference;

use fixtures::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList, any_value::Value as Av};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};
use otelring::config::DecodeConfig;
use otelring::otlp::{self, DecodeErrorKind, Decoded};
use otelring::pipeline::batch::{LogRow, MetricPointRow, Rows, StatusCode, TraceGroup};
use prost::Message as _;
use reference::{check, received, tenant};
use std::path::{Path, PathBuf};

const TARGETS: [&str; 7] =
    ["proto_traces", "proto_logs", "proto_metrics", "json_traces", "json_logs", "json_metrics", "grpc_frame"];

fn traces_of(d: &Decoded) -> &[TraceGroup] {
    match &d.request.rows {
        Rows::Traces(g) => g,
        r => panic!("not traces: {r:?}"),
    }
}

fn logs_of(d: &Decoded) -> &[LogRow] {
    match &d.request.rows {
        Rows::Logs(l) => l,
        r => panic!("not logs: {r:?}"),
    }
}

fn points_of(d: &Decoded) -> &[MetricPointRow] {
    match &d.request.rows {
        Rows::Metrics(m) => m,
        r => panic!("not metrics: {r:?}"),
    }
}

fn dec_traces(buf: &[u8], cfg: &DecodeConfig) -> Result<Decoded, otlp::DecodeError> {
    otlp::decode_traces_proto(buf, cfg, tenant(), received())
}

fn one_span(span: Span) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("svc"),
            scope_spans: vec![ScopeSpans { scope: scope("lib"), spans: vec![span], ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn span(n: u64, parent: Option<u64>, dur_ms: u64, code: i32) -> Span {
    Span {
        trace_id: trace_id(1),
        span_id: span_id(n),
        parent_span_id: parent.map(span_id).unwrap_or_default(),
        name: format!("op{n}"),
        start_time_unix_nano: T0 + n * 1_000,
        end_time_unix_nano: T0 + n * 1_000 + dur_ms * 1_000_000,
        status: Some(Status { code, message: String::new() }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Differential: ours = prost + the same conversion, JSON = protobuf

#[test]
fn realistic_requests_agree_with_prost_and_json() {
    let t = traces(5, 100).encode_to_vec();
    check("proto_traces", &t).unwrap();
    let l = logs(1_000).encode_to_vec();
    check("proto_logs", &l).unwrap();
    let m = histograms(500).encode_to_vec();
    check("proto_metrics", &m).unwrap();
    let e = every_metric_type().encode_to_vec();
    check("proto_metrics", &e).unwrap();
    let d = dec_traces(&t, &DecodeConfig::default()).unwrap();
    assert_eq!(d.received_items, 500);
    assert_eq!(d.request.rows.items(), 500);
    // Every 4th span has an event, every 50th an exception: 125 + 10 synthesized logs.
    assert_eq!(d.request.rows.synthesized_logs(), 135);
}

#[test]
fn odd_attribute_values_agree_and_format_per_design() {
    let mut sp = span(0, None, 1, 0);
    sp.attributes = odd_attributes();
    let buf = one_span(sp).encode_to_vec();
    check("proto_traces", &buf).unwrap();
    let d = dec_traces(&buf, &DecodeConfig::default()).unwrap();
    let a = &traces_of(&d)[0].spans[0].attributes;
    let v: serde_json::Value = serde_json::from_str(a).unwrap();
    assert_eq!(v["arr"], serde_json::json!(["a", 1, null]));
    assert_eq!(v["map"], serde_json::json!({"x": "Infinity", "y": null}));
    assert_eq!(v["bytes"], "AAEC/w==");
    assert_eq!(v["quote\"and\\slash\n"], "tab\there \u{1} é 😀");
    assert_eq!(v["dup"], "last");
    assert_eq!(v["none"], serde_json::Value::Null);
    assert_eq!(v["neg_inf"], "-Infinity");
}

// ---------------------------------------------------------------------------------------------
// Row semantics

#[test]
fn trace_rows_aggregate_spans_root_service_and_status() {
    let mut req = one_span(span(2, Some(1), 1, 1));
    // A second resource holds the root span of the same trace, and an ERROR span.
    req.resource_spans.push(ResourceSpans {
        resource: resource("frontend"),
        scope_spans: vec![ScopeSpans {
            spans: vec![span(1, None, 3, 0), span(3, Some(1), 2, 2)],
            ..Default::default()
        }],
        ..Default::default()
    });
    let d = dec_traces(&req.encode_to_vec(), &DecodeConfig::default()).unwrap();
    let g = traces_of(&d);
    assert_eq!(g.len(), 1);
    let t = &g[0].trace;
    assert_eq!(&*t.service_name, "frontend");
    assert!(t.has_root);
    assert_eq!(t.status, StatusCode::Error);
    assert!(t.priority, "an ERROR span makes its trace priority");
    assert_eq!(t.start_time_unix_nano as u64, T0 + 1_000);
    assert_eq!(t.end_time_unix_nano as u64, T0 + 1_000 + 3_000_000);
    assert_eq!(g[0].spans.len(), 3);
    assert_eq!(&*g[0].spans[2].scope_name, "", "absent scope is an empty name");
    // The ERROR span without an exception event gets one ERROR log with a default body.
    assert_eq!(g[0].logs.len(), 1);
    let l = &g[0].logs[0];
    assert_eq!((l.severity_number, l.severity_text.as_str()), (17, "ERROR"));
    assert_eq!(l.body.as_deref(), Some("span 'op3' failed"));
    assert!(l.priority);
    assert_eq!(l.span_id, Some(otelring::pipeline::batch::SpanId(span_id(3).try_into().unwrap())));
}

#[test]
fn exception_event_becomes_the_error_log() {
    let mut sp = span(0, None, 1, 2);
    sp.status = Some(Status { code: 2, message: "db down".into() });
    sp.events = vec![
        Event { time_unix_nano: T0 + 5, name: "retry".into(), ..Default::default() },
        Event {
            time_unix_nano: T0 + 6,
            name: "exception".into(),
            attributes: vec![
                kv("exception.message", s("connection refused")),
                kv("exception.type", s("IOError")),
            ],
            ..Default::default()
        },
    ];
    let d = dec_traces(&one_span(sp).encode_to_vec(), &DecodeConfig::default()).unwrap();
    let logs = &traces_of(&d)[0].logs;
    assert_eq!(logs.len(), 2, "an event log and the exception log, no extra status log");
    assert_eq!((logs[0].severity_number, logs[0].body.as_deref()), (9, Some("retry")));
    assert_eq!((logs[1].severity_number, logs[1].body.as_deref()), (17, Some("connection refused")));
    assert_eq!(logs[1].time_unix_nano as u64, T0 + 6);
    assert!(logs.iter().all(|l| l.priority), "synthesized logs take their trace's priority");
    assert_eq!(d.request.rows.items(), 1);
}

#[test]
fn slow_priority_uses_the_threshold_and_can_be_disabled() {
    let buf = one_span(span(0, None, 600, 0)).encode_to_vec();
    let d = dec_traces(&buf, &DecodeConfig::default()).unwrap();
    assert!(traces_of(&d)[0].trace.priority);
    let fast = one_span(span(0, None, 499, 0)).encode_to_vec();
    assert!(!traces_of(&dec_traces(&fast, &DecodeConfig::default()).unwrap())[0].trace.priority);
    for off in [0, -1] {
        let cfg = DecodeConfig { slow_threshold_ms: off, ..DecodeConfig::default() };
        assert!(!traces_of(&dec_traces(&buf, &cfg).unwrap())[0].trace.priority);
    }
}

fn log_req(records: Vec<LogRecord>, service: &str) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: if service.is_empty() { None } else { resource(service) },
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn rec(sev: i32, text: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: T0,
        severity_number: sev,
        severity_text: text.into(),
        body: s("x"),
        ..Default::default()
    }
}

#[test]
fn log_priority_filters_and_books() {
    let recs = vec![
        rec(17, ""),
        rec(9, "ERROR"),
        rec(0, "critical failure"),
        rec(0, "info"),
        rec(3, "TRACE"),
        rec(0, ""),
    ];
    let buf = log_req(recs, "").encode_to_vec();
    let d = otlp::decode_logs_proto(&buf, &DecodeConfig::default(), tenant(), received()).unwrap();
    let p: Vec<bool> = logs_of(&d).iter().map(|l| l.priority).collect();
    assert_eq!(p, [true, false, true, false, false, false]);
    assert_eq!(&*logs_of(&d)[0].service_name, "unknown_service");
    assert_eq!(logs_of(&d)[0].trace_id, None, "empty trace id = no trace");

    let cfg = DecodeConfig { min_severity: Some(9), ..DecodeConfig::default() };
    let d = otlp::decode_logs_proto(&buf, &cfg, tenant(), received()).unwrap();
    // Filtered: 3 (TRACE) and "info"? no: info = 9 is kept; "" is unknown and kept.
    assert_eq!(d.filtered.min_severity, 1);
    assert_eq!(d.received_items, 6);
    assert_eq!(d.request.rows.items(), 5);
    reference::sane(&d).unwrap();

    let cfg = DecodeConfig { excluded_services: vec!["checkout".into()], ..DecodeConfig::default() };
    let d = otlp::decode_logs_proto(&logs(30).encode_to_vec(), &cfg, tenant(), received()).unwrap();
    assert_eq!((d.received_items, d.filtered.service, d.request.rows.items()), (30, 30, 0));
    let cfg = DecodeConfig { allowed_services: Some(vec!["other".into()]), ..DecodeConfig::default() };
    let d =
        otlp::decode_metrics_proto(&every_metric_type().encode_to_vec(), &cfg, tenant(), received()).unwrap();
    assert_eq!(d.filtered.service, d.received_items);
    assert_eq!(d.received_items, 10);
    let cfg = DecodeConfig { allowed_services: Some(vec!["svc-1".into()]), ..DecodeConfig::default() };
    let d = dec_traces(&traces(3, 10).encode_to_vec(), &cfg).unwrap();
    assert_eq!((d.received_items, d.filtered.service, d.request.rows.items()), (30, 20, 10));
}

#[test]
fn log_bodies_keep_non_strings_as_json() {
    let kvl = AnyValue {
        value: Some(Av::KvlistValue(KeyValueList { values: vec![kv("a", i(1)), kv("b", s("x"))] })),
    };
    let recs = vec![
        LogRecord { body: Some(kvl), ..Default::default() },
        LogRecord { body: i(42), ..Default::default() },
        LogRecord { body: None, ..Default::default() },
    ];
    let buf = log_req(recs, "svc").encode_to_vec();
    check("proto_logs", &buf).unwrap();
    let d = otlp::decode_logs_proto(&buf, &DecodeConfig::default(), tenant(), received()).unwrap();
    let bodies: Vec<Option<&str>> = logs_of(&d).iter().map(|l| l.body.as_deref()).collect();
    assert_eq!(bodies, [Some(r#"{"a":1,"b":"x"}"#), Some("42"), None]);
}

#[test]
fn metric_points_of_every_type() {
    let buf = every_metric_type().encode_to_vec();
    let d = otlp::decode_metrics_proto(&buf, &DecodeConfig::default(), tenant(), received()).unwrap();
    let p = points_of(&d);
    assert_eq!(p.len(), 10);
    use otelring::pipeline::batch::{MetricKind::*, NumberValue, Temporality};
    assert_eq!(p[0].value, Some(NumberValue::Int((1 << 53) + 1)));
    assert_eq!((p[0].temporality, p[0].is_monotonic), (None, None));
    assert_eq!(p[2].value, None);
    assert_eq!(p[3].kind, Sum);
    assert_eq!((p[3].temporality, p[3].is_monotonic), (Some(Temporality::Delta), Some(true)));
    assert_eq!(p[4].kind, Histogram);
    assert_eq!(p[4].sum, None, "absent optional sum stays absent");
    assert_eq!(p[5].sum, Some(0.0), "present zero sum stays zero");
    assert_eq!(p[4].bucket_counts.as_deref(), Some("[1,0,2]"));
    assert_eq!(p[4].explicit_bounds.as_deref(), Some(r#"[0.1,"-Infinity"]"#));
    assert_eq!(p[6].kind, ExponentialHistogram);
    assert_eq!((p[6].scale, p[6].zero_count, p[6].positive_offset), (Some(-3), Some(1), Some(-2)));
    assert_eq!(p[6].positive_bucket_counts.as_deref(), Some("[1,2,3,18446744073709551615]"));
    assert_eq!(p[6].negative_bucket_counts.as_deref(), Some("[]"));
    assert_eq!((p[6].min, p[6].max), (Some(-1.5), None));
    assert_eq!(p[7].positive_offset, None);
    assert_eq!(p[7].scale, Some(20));
    assert_eq!(p[9].kind, Gauge);
    assert_eq!(&*p[9].service_name, "unknown_service");
    let summary = p.iter().find(|x| x.kind == Summary).unwrap();
    assert_eq!(
        summary.quantiles.as_deref(),
        Some(r#"[{"quantile":0.5,"value":4.0},{"quantile":0.99,"value":12.25}]"#)
    );
}

// ---------------------------------------------------------------------------------------------
// Wire-level edge cases (hand-encoded)

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn field_len(f: u32, b: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(f << 3 | 2), out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
fn field_fixed64(f: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(f << 3 | 1), out);
    out.extend_from_slice(&v.to_le_bytes());
}
/// Wraps an encoded Span into an ExportTraceServiceRequest.
fn wrap_span(span: &[u8]) -> Vec<u8> {
    let mut ss = vec![];
    field_len(2, span, &mut ss);
    let mut rs = vec![];
    field_len(2, &ss, &mut rs);
    let mut req = vec![];
    field_len(1, &rs, &mut req);
    req
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let base = span(0, None, 1, 0).encode_to_vec();
    let mut sp = base.clone();
    // varint field 100, fixed64 field 101, len field 102, group field 103 {varint}, fixed32 104.
    varint(100 << 3, &mut sp);
    varint(300, &mut sp);
    field_fixed64(101, 7, &mut sp);
    field_len(102, b"zz", &mut sp);
    varint((103 << 3) | 3, &mut sp);
    varint(1 << 3, &mut sp);
    varint(5, &mut sp);
    varint((103 << 3) | 4, &mut sp);
    varint((104 << 3) | 5, &mut sp);
    sp.extend_from_slice(&[1, 2, 3, 4]);
    let a = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap();
    let b = dec_traces(&wrap_span(&base), &DecodeConfig::default()).unwrap();
    reference::same(&a, &b).unwrap();
    check("proto_traces", &wrap_span(&sp)).unwrap();
}

#[test]
fn truncated_input_and_wrong_wire_types_are_clear_errors() {
    let buf = traces(1, 3).encode_to_vec();
    for cut in [1, 2, 10, buf.len() / 2, buf.len() - 1] {
        let e = dec_traces(&buf[..cut], &DecodeConfig::default()).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Malformed, "cut {cut}: {e}");
        assert_eq!(e.http_status(), 400);
    }
    // Span.start_time_unix_nano (fixed64) sent as a varint.
    let mut sp = span(0, None, 1, 0).encode_to_vec();
    varint(7 << 3, &mut sp);
    varint(5, &mut sp);
    let e = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap_err();
    assert!(e.message.contains("wrong wire type 0 for Span.start_time_unix_nano"), "{e}");
}

#[test]
fn invalid_ids_timestamps_and_utf8_reject_the_request() {
    let mut sp = span(0, None, 1, 0);
    sp.trace_id = vec![1; 15];
    let e = dec_traces(&one_span(sp).encode_to_vec(), &DecodeConfig::default()).unwrap_err();
    assert_eq!(e.message, "invalid span traceId: expected 16 bytes, got 15");
    assert_eq!((e.kind, e.http_status(), e.grpc_code()), (DecodeErrorKind::Invalid, 400, 3));
    let mut sp = span(0, None, 1, 0);
    sp.parent_span_id = vec![1; 9];
    assert!(dec_traces(&one_span(sp).encode_to_vec(), &DecodeConfig::default()).is_err());
    let mut sp = span(0, None, 1, 0);
    sp.end_time_unix_nano = u64::MAX;
    let e = dec_traces(&one_span(sp).encode_to_vec(), &DecodeConfig::default()).unwrap_err();
    assert!(e.message.contains("beyond the i64 range"), "{e}");
    let mut r = rec(9, "x");
    r.span_id = vec![1; 3];
    let e = otlp::decode_logs_proto(
        &log_req(vec![r], "").encode_to_vec(),
        &DecodeConfig::default(),
        tenant(),
        received(),
    )
    .unwrap_err();
    assert_eq!(e.message, "invalid log spanId: expected 8 bytes, got 3");
    // Invalid UTF-8 in the span name (field 5).
    let mut sp = span(0, None, 1, 0).encode_to_vec();
    field_len(5, &[0xff, 0xfe], &mut sp);
    let e = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap_err();
    assert_eq!(e.message, "invalid UTF-8 in Span.name");
}

/// `depth` nested single-element ArrayValues around a string, as an AnyValue encoding. Each
/// level is only two headers before its inner value, so the encoding is all headers (outermost
/// first) then the innermost value: built in linear time from the lengths, inside out.
fn nested_any(depth: usize) -> Vec<u8> {
    let mut inner = vec![];
    field_len(1, b"x", &mut inner);
    let vlen = |n: usize| {
        let mut b = vec![];
        varint(n as u64, &mut b);
        b.len()
    };
    // any_len[i]: encoded length of the AnyValue i levels out from the innermost.
    let mut heads = Vec::with_capacity(depth);
    let mut any_len = inner.len();
    for _ in 0..depth {
        let arr_len = 1 + vlen(any_len) + any_len;
        heads.push((arr_len, any_len));
        any_len = 1 + vlen(arr_len) + arr_len;
    }
    let mut out = Vec::with_capacity(any_len);
    for &(arr_len, inner_len) in heads.iter().rev() {
        out.push(5 << 3 | 2);
        varint(arr_len as u64, &mut out);
        out.push(1 << 3 | 2);
        varint(inner_len as u64, &mut out);
    }
    out.extend(inner);
    out
}

#[test]
fn deep_any_value_is_rejected_on_a_small_stack() {
    let t = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut kvb = vec![];
            field_len(1, b"deep", &mut kvb);
            field_len(2, &nested_any(200_000), &mut kvb);
            let mut sp = span(0, None, 1, 0).encode_to_vec();
            field_len(9, &kvb, &mut sp);
            let e = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap_err();
            assert_eq!(e.kind, DecodeErrorKind::Limit);
            assert_eq!(e.message, "AnyValue nested deeper than 32 levels");
            let mut small = vec![];
            field_len(1, b"x", &mut small);
            for _ in 0..3 {
                let mut arr = vec![];
                field_len(1, &small, &mut arr);
                small.clear();
                field_len(5, &arr, &mut small);
            }
            assert_eq!(nested_any(3), small);
            // 32 levels are fine.
            let mut kvb = vec![];
            field_len(1, b"ok", &mut kvb);
            field_len(2, &nested_any(32), &mut kvb);
            let mut sp = span(0, None, 1, 0).encode_to_vec();
            field_len(9, &kvb, &mut sp);
            let d = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap();
            assert!(traces_of(&d)[0].spans[0].attributes.contains(&format!("{}\"x\"", "[".repeat(32))));
            // JSON: 200,000 nested arrays.
            let mut j = String::from(r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b5b5b5b5b5b5b5b0000000000000001","spanId":"0000000000000001","attributes":[{"key":"k","value":"#);
            for _ in 0..200_000 {
                j.push_str(r#"{"arrayValue":{"values":["#);
            }
            let e = otlp::decode_traces_json(j.as_bytes(), &DecodeConfig::default(), tenant(), received()).unwrap_err();
            assert_eq!(e.http_status(), 400);
        })
        .unwrap();
    t.join().unwrap();
}

#[test]
fn packed_and_unpacked_repeated_scalars_agree() {
    // HistogramDataPoint with bucket_counts packed vs one field per value, explicit bounds mixed.
    let mut packed = vec![];
    let mut counts = vec![];
    for c in [3u64, 0, 9] {
        counts.extend(c.to_le_bytes());
    }
    field_len(6, &counts, &mut packed);
    field_len(7, &1.5f64.to_le_bytes(), &mut packed);
    let mut unpacked = vec![];
    for c in [3u64, 0, 9] {
        field_fixed64(6, c, &mut unpacked);
    }
    field_fixed64(7, 1.5f64.to_bits(), &mut unpacked);
    let wrap = |p: &[u8]| {
        let mut h = vec![];
        field_len(1, p, &mut h);
        let mut m = vec![];
        field_len(1, b"h", &mut m);
        field_len(9, &h, &mut m);
        let mut sm = vec![];
        field_len(2, &m, &mut sm);
        let mut rm = vec![];
        field_len(2, &sm, &mut rm);
        let mut req = vec![];
        field_len(1, &rm, &mut req);
        req
    };
    let a =
        otlp::decode_metrics_proto(&wrap(&packed), &DecodeConfig::default(), tenant(), received()).unwrap();
    let b =
        otlp::decode_metrics_proto(&wrap(&unpacked), &DecodeConfig::default(), tenant(), received()).unwrap();
    reference::same(&a, &b).unwrap();
    assert_eq!(points_of(&a)[0].bucket_counts.as_deref(), Some("[3,0,9]"));
    check("proto_metrics", &wrap(&unpacked)).unwrap();
    // Misaligned packed data (odd length) is an error, never a misaligned read.
    let mut bad = vec![];
    field_len(6, &[1, 2, 3], &mut bad);
    assert!(otlp::decode_metrics_proto(&wrap(&bad), &DecodeConfig::default(), tenant(), received()).is_err());
}

#[test]
fn limits_give_distinct_errors() {
    let buf = traces(5, 100).encode_to_vec();
    let cfg = DecodeConfig { max_bytes: 64 * 1024, ..DecodeConfig::default() };
    let e = dec_traces(&buf, &cfg).err().unwrap();
    assert!(e.is_too_large());
    assert_eq!((e.http_status(), e.grpc_code()), (413, 8));
    let cfg = DecodeConfig { max_items_per_request: 499, ..DecodeConfig::default() };
    assert!(dec_traces(&buf, &cfg).err().unwrap().is_too_large());
    let cfg = DecodeConfig { max_attributes: 9, ..DecodeConfig::default() };
    assert_eq!(dec_traces(&buf, &cfg).err().unwrap().kind, DecodeErrorKind::Limit);
    let cfg = DecodeConfig { max_events_per_span: 1, ..DecodeConfig::default() };
    let mut sp = span(0, None, 1, 0);
    sp.events = vec![Event::default(), Event::default()];
    assert_eq!(dec_traces(&one_span(sp).encode_to_vec(), &cfg).unwrap_err().kind, DecodeErrorKind::Limit);
    // The estimate never undercounts the rows' heap.
    let d = dec_traces(&buf, &DecodeConfig::default()).unwrap();
    assert!(d.est_bytes >= d.request.rows.heap_bytes() as u64);
}

#[test]
fn ambiguous_duplicates_are_rejected() {
    let mut sp = span(0, None, 1, 0).encode_to_vec();
    field_len(15, &[], &mut sp);
    let e = dec_traces(&wrap_span(&sp), &DecodeConfig::default()).unwrap_err();
    assert!(e.message.contains("ambiguous Span.status"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// OTLP/JSON

#[test]
fn json_accepts_spec_forms_and_names_errors() {
    let j = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
      "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5B5B5B5B5B5B5B5B0000000000000001","spanId":"00000000000000AA",
      "name":"x","kind":"SPAN_KIND_SERVER","startTimeUnixNano":1700000000000000000,"endTimeUnixNano":"1700000000900000000",
      "status":{"code":"STATUS_CODE_ERROR"},"unknownField":{"a":[1,2]},
      "attributes":[{"key":"n","value":{"intValue":"9007199254740993"}},{"key":"b","value":{"bytesValue":"AAEC/w=="}},
      {"key":"d","value":{"doubleValue":"NaN"}}]}]}]}]}"#;
    let d = otlp::decode_traces_json(j, &DecodeConfig::default(), tenant(), received()).unwrap();
    let g = traces_of(&d);
    assert_eq!(&*g[0].trace.service_name, "web");
    assert_eq!(g[0].spans[0].kind.as_str(), "SPAN_KIND_SERVER");
    assert_eq!(g[0].spans[0].span_id.to_hex(), "00000000000000aa");
    assert_eq!(g[0].spans[0].attributes, r#"{"n":9007199254740993,"b":"AAEC/w==","d":"NaN"}"#);
    assert!(g[0].trace.priority);

    let bad = |s: &str| {
        otlp::decode_traces_json(s.as_bytes(), &DecodeConfig::default(), tenant(), received()).unwrap_err()
    };
    let e = bad(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abc","spanId":"00000000000000aa"}]}]}]}"#,
    );
    assert_eq!(e.message, "invalid traceId: expected 32 hex characters");
    let e = bad(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b5b5b5b5b5b5b5b0000000000000001","spanId":"zz00000000000000"}]}]}]}"#,
    );
    assert_eq!(e.message, "invalid spanId: expected 16 hex characters");
    let e = bad(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b5b5b5b5b5b5b5b0000000000000001","spanId":"00000000000000aa","startTimeUnixNano":"-1"}]}]}]}"#,
    );
    assert!(e.message.contains("startTimeUnixNano"), "{e}");
    assert_eq!(bad("{").kind, DecodeErrorKind::Malformed);
    assert_eq!(bad("[]").kind, DecodeErrorKind::Malformed);
}

#[test]
fn json_rows_equal_protobuf_rows() {
    for (target, buf) in [
        ("proto_traces", traces(2, 20).encode_to_vec()),
        ("proto_logs", logs(50).encode_to_vec()),
        ("proto_metrics", every_metric_type().encode_to_vec()),
    ] {
        // `check` decodes the JSON form of the prost request and compares with the reference.
        check(target, &buf).unwrap();
    }
    let mut sp = span(0, None, 1, 2);
    sp.attributes = odd_attributes();
    check("proto_traces", &one_span(sp).encode_to_vec()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Seeds and regressions

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn replay_fuzz_seeds_and_regressions() {
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        for target in TARGETS {
            for f in files_under(&fuzz_dir().join(kind).join(target)) {
                let data = std::fs::read(&f).unwrap();
                if let Err(e) = check(target, &data) {
                    panic!("{}: {e}", f.display());
                }
                n += 1;
            }
        }
    }
    assert!(n >= TARGETS.len(), "expected committed seeds under fuzz/seeds, found {n} files");
}

/// Writes the prost-built seeds (run with `--ignored` after changing the fixtures).
#[test]
#[ignore = "writes fuzz/seeds: run by hand with --ignored after changing the fixtures"]
fn write_fuzz_seeds() {
    let dir = fuzz_dir().join("seeds");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    let t_small = traces(1, 6);
    let mut odd = span(0, None, 700, 2);
    odd.attributes = odd_attributes();
    odd.events = vec![Event {
        name: "exception".into(),
        attributes: vec![kv("exception.message", s("boom"))],
        ..Default::default()
    }];
    let t_odd = one_span(odd);
    let l = logs(12);
    let l_edge = log_req(vec![rec(0, "FATAL"), rec(24, ""), LogRecord::default()], "");
    let m_all = every_metric_type();
    let m_hist = histograms(5);
    for (name, data) in
        [("prost_small.pb", t_small.encode_to_vec()), ("prost_odd_attributes.pb", t_odd.encode_to_vec())]
    {
        put("proto_traces", name, &data);
        put("json_traces", name, &data);
        let mut framed = vec![];
        otelring::otlp::grpc_frame::encode_frame(false, &data, &mut framed);
        put("grpc_frame", name, &framed);
    }
    put("json_traces", "small.json", &reference::traces_json(&t_small));
    put("json_traces", "odd_attributes.json", &reference::traces_json(&t_odd));
    for (name, data) in [("prost_logs.pb", l.encode_to_vec()), ("prost_edge.pb", l_edge.encode_to_vec())] {
        put("proto_logs", name, &data);
        put("json_logs", name, &data);
    }
    put("json_logs", "logs.json", &reference::logs_json(&l));
    put("json_logs", "edge.json", &reference::logs_json(&l_edge));
    for (name, data) in
        [("prost_every_type.pb", m_all.encode_to_vec()), ("prost_histograms.pb", m_hist.encode_to_vec())]
    {
        put("proto_metrics", name, &data);
        put("json_metrics", name, &data);
    }
    put("json_metrics", "every_type.json", &reference::metrics_json(&m_all));
    // Hand-encoded edge cases.
    let mut sp = span(0, None, 1, 0).encode_to_vec();
    varint(100 << 3, &mut sp);
    varint(300, &mut sp);
    field_fixed64(101, 7, &mut sp);
    varint((103 << 3) | 3, &mut sp);
    varint(1 << 3, &mut sp);
    varint(5, &mut sp);
    varint((103 << 3) | 4, &mut sp);
    put("proto_traces", "edge_unknown_fields_and_group.pb", &wrap_span(&sp));
    let mut kvb = vec![];
    field_len(1, b"deep", &mut kvb);
    field_len(2, &nested_any(40), &mut kvb);
    let mut sp = span(0, None, 1, 0).encode_to_vec();
    field_len(9, &kvb, &mut sp);
    put("proto_traces", "edge_depth_40.pb", &wrap_span(&sp));
    let full = t_small.encode_to_vec();
    put("proto_traces", "edge_truncated.pb", &full[..full.len() / 2]);
    let mut h = vec![];
    for c in [3u64, 0, 9] {
        field_fixed64(6, c, &mut h);
    }
    field_len(7, &2.5f64.to_le_bytes(), &mut h);
    let mut hist = vec![];
    field_len(1, &h, &mut hist);
    let mut m = vec![];
    field_len(1, b"unpacked", &mut m);
    field_len(9, &hist, &mut m);
    let mut sm = vec![];
    field_len(2, &m, &mut sm);
    let mut rm = vec![];
    field_len(2, &sm, &mut rm);
    let mut req = vec![];
    field_len(1, &rm, &mut req);
    put("proto_metrics", "edge_unpacked_histogram.pb", &req);
    put("grpc_frame", "empty_compressed", &[1, 0, 0, 0, 0]);
    put("grpc_frame", "two_frames", &[0, 0, 0, 0, 2, 0x0a, 0x00, 0, 0, 0, 0, 0]);
}

// ---------------------------------------------------------------------------------------------
// Regressions found by fuzzing (each also replayed from fuzz/regressions/<target>/)

/// fuzz/regressions/proto_traces/json_double_one_ulp_off.pb: the JSON side of the property
/// failed because serde_json (without `float_roundtrip`) parses 1.8665272370064378e-301 one ULP
/// off. Doubles given as strings (proto3 JSON allows it) are parsed exactly; the reference JSON
/// encoder uses a string when the number form would not round-trip.
#[test]
fn regression_json_double_one_ulp_off() {
    let v = 1.8665272370064378e-301_f64;
    let mut sp = span(0, None, 1, 0);
    sp.attributes = vec![kv("sampling.ratio", d(v))];
    check("proto_traces", &one_span(sp).encode_to_vec()).unwrap();
    let j = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b5b5b5b5b5b5b5b0000000000000001","spanId":"0000000000000001","attributes":[{{"key":"r","value":{{"doubleValue":"{v:?}"}}}}]}}]}}]}}]}}"#
    );
    let dj = otlp::decode_traces_json(j.as_bytes(), &DecodeConfig::default(), tenant(), received()).unwrap();
    assert_eq!(traces_of(&dj)[0].spans[0].attributes, format!(r#"{{"r":{v:?}}}"#));
    let data = std::fs::read(fuzz_dir().join("regressions/proto_traces/json_double_one_ulp_off.pb")).unwrap();
    check("proto_traces", &data).unwrap();
}

#[test]
fn python_sdk_seeds_decode_to_the_expected_rows() {
    let dir = fuzz_dir().join("seeds");
    let t = std::fs::read(dir.join("proto_traces/python_sdk_spans.pb")).unwrap();
    let d = dec_traces(&t, &DecodeConfig::default()).unwrap();
    let g = traces_of(&d);
    assert_eq!(g.len(), 1, "one trace");
    assert_eq!(&*g[0].trace.service_name, "sdk-seed");
    assert!(g[0].trace.has_root && g[0].trace.priority);
    assert_eq!(g[0].trace.status, StatusCode::Error);
    assert_eq!(g[0].spans.len(), 4);
    let bodies: Vec<&str> = g[0].logs.iter().filter_map(|l| l.body.as_deref()).collect();
    assert!(bodies.contains(&"invalid literal for int() with base 10: 'x'"), "{bodies:?}");
    assert!(bodies.contains(&"span 'render' failed"), "{bodies:?}");
    assert!(bodies.contains(&"cache.miss"), "{bodies:?}");
    let m = std::fs::read(dir.join("proto_metrics/python_sdk_metrics.pb")).unwrap();
    let d = otlp::decode_metrics_proto(&m, &DecodeConfig::default(), tenant(), received()).unwrap();
    let kinds: std::collections::BTreeSet<&str> = points_of(&d).iter().map(|p| p.kind.as_str()).collect();
    for k in ["sum", "gauge", "histogram", "exponential_histogram"] {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }
    let l = std::fs::read(dir.join("proto_logs/python_sdk_logs.pb")).unwrap();
    let d = otlp::decode_logs_proto(&l, &DecodeConfig::default(), tenant(), received()).unwrap();
    let logs = logs_of(&d);
    assert!(logs.len() >= 6);
    assert!(logs.iter().any(|l| l.trace_id.is_some()), "the log inside a span carries its trace");
    assert_eq!(logs.iter().filter(|l| l.priority).count(), 3, "error, critical, exception");
}
