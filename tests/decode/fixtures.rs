//! Realistic OTLP requests built with the opentelemetry-proto prost types (shaped like what the
//! SDKs send: resource with service.name and SDK attributes, one scope per instrumentation
//! library, 10 attributes per span, events with exceptions), shared by the tests, the benchmark
//! and the seed writer.

#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value as Av,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    exponential_histogram_data_point, metric::Data, number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};

pub const T0: u64 = 1_700_000_000_000_000_000;

pub fn s(v: &str) -> Option<AnyValue> {
    Some(AnyValue { value: Some(Av::StringValue(v.into())) })
}
pub fn i(v: i64) -> Option<AnyValue> {
    Some(AnyValue { value: Some(Av::IntValue(v)) })
}
pub fn d(v: f64) -> Option<AnyValue> {
    Some(AnyValue { value: Some(Av::DoubleValue(v)) })
}
pub fn b(v: bool) -> Option<AnyValue> {
    Some(AnyValue { value: Some(Av::BoolValue(v)) })
}
pub fn kv(k: &str, v: Option<AnyValue>) -> KeyValue {
    KeyValue { key: k.into(), value: v, ..Default::default() }
}

pub fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("service.version", s("1.4.2")),
            kv("telemetry.sdk.language", s("python")),
            kv("telemetry.sdk.name", s("opentelemetry")),
            kv("telemetry.sdk.version", s("1.45.2")),
            kv("host.name", s("ip-10-0-3-17")),
        ],
        ..Default::default()
    })
}

pub fn scope(name: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: name.into(), version: "0.54b0".into(), ..Default::default() })
}

pub fn trace_id(n: u64) -> Vec<u8> {
    let mut v = vec![0x5b; 8];
    v.extend(n.to_be_bytes());
    v
}

pub fn span_id(n: u64) -> Vec<u8> {
    (n + 1).to_be_bytes().to_vec()
}

/// `resources` resources × `spans` spans, 10 attributes each, 5 spans per trace, an event on
/// every 4th span and an exception on every 50th (which is also ERROR).
pub fn traces(resources: usize, spans: usize) -> ExportTraceServiceRequest {
    let mut n = 0u64;
    let resource_spans = (0..resources)
        .map(|r| ResourceSpans {
            resource: resource(&format!("svc-{r}")),
            scope_spans: vec![ScopeSpans {
                scope: scope("opentelemetry.instrumentation.flask"),
                spans: (0..spans)
                    .map(|k| {
                        n += 1;
                        let trace = n / 5;
                        let root = n % 5 == 0;
                        let error = k % 50 == 49;
                        let start = T0 + n * 1_000_000;
                        let mut events = vec![];
                        if k % 4 == 0 {
                            events.push(Event {
                                time_unix_nano: start + 1_000,
                                name: "cache.miss".into(),
                                attributes: vec![kv("cache.key", s(&format!("user:{k}")))],
                                ..Default::default()
                            });
                        }
                        if error {
                            events.push(Event {
                                time_unix_nano: start + 2_000,
                                name: "exception".into(),
                                attributes: vec![
                                    kv("exception.type", s("ValueError")),
                                    kv("exception.message", s("invalid literal for int() with base 10: 'x'")),
                                    kv(
                                        "exception.stacktrace",
                                        s("Traceback (most recent call last):\n  File \"app.py\", line 12"),
                                    ),
                                ],
                                ..Default::default()
                            });
                        }
                        Span {
                            trace_id: trace_id(trace + r as u64 * 1_000_000),
                            span_id: span_id(n),
                            parent_span_id: if root { vec![] } else { span_id(n - n % 5) },
                            name: format!("GET /api/v1/users/{{id}}/orders/{k}"),
                            kind: if root { 2 } else { 3 },
                            start_time_unix_nano: start,
                            end_time_unix_nano: start + 1_000_000 + k as u64 * 7_000,
                            attributes: vec![
                                kv("http.method", s("GET")),
                                kv("http.route", s("/api/v1/users/{id}/orders")),
                                kv("http.status_code", i(if error { 500 } else { 200 })),
                                kv("http.target", s(&format!("/api/v1/users/{k}/orders?limit=20"))),
                                kv("net.peer.name", s("orders.internal")),
                                kv("net.peer.port", i(8443)),
                                kv("http.user_agent", s("python-requests/2.32.3")),
                                kv("thread.id", i(140_234_567 + k as i64)),
                                kv("sampling.ratio", d(0.25)),
                                kv("cache.hit", b(k % 3 == 0)),
                            ],
                            events,
                            status: Some(Status {
                                code: if error { 2 } else { 0 },
                                message: if error { "boom".into() } else { String::new() },
                            }),
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// `n` log records of mixed severity, some with trace context, some with map bodies.
pub fn logs(n: usize) -> ExportLogsServiceRequest {
    let records = (0..n)
        .map(|k| {
            let sev = [9, 9, 9, 13, 5, 17][k % 6];
            LogRecord {
                time_unix_nano: T0 + k as u64,
                observed_time_unix_nano: T0 + k as u64 + 500,
                severity_number: sev,
                severity_text: ["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"][k % 6].into(),
                body: if k % 10 == 0 {
                    Some(AnyValue {
                        value: Some(Av::KvlistValue(KeyValueList {
                            values: vec![kv("event", s("login")), kv("user_id", i(k as i64))],
                        })),
                    })
                } else {
                    s(&format!("request {k} handled in {} ms by worker-{}", k % 97, k % 8))
                },
                attributes: vec![
                    kv("code.filepath", s("/srv/app/handlers.py")),
                    kv("code.lineno", i(120 + (k % 40) as i64)),
                    kv("code.function", s("handle_request")),
                    kv("http.request.id", s(&format!("req-{k:08x}"))),
                ],
                trace_id: if k % 2 == 0 { trace_id(k as u64) } else { vec![] },
                span_id: if k % 2 == 0 { span_id(k as u64) } else { vec![] },
                flags: if k % 2 == 0 { 1 } else { 0 },
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("checkout"),
            scope_logs: vec![ScopeLogs {
                scope: scope("app.logger"),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn point_attrs(k: usize) -> Vec<KeyValue> {
    vec![
        kv("http.route", s(["/api/orders", "/api/users", "/health"][k % 3])),
        kv("http.response.status_code", i([200, 404, 500][k % 3])),
    ]
}

/// `n` histogram points (explicit buckets like the SDK's defaults) in one metric per 50 points.
pub fn histograms(n: usize) -> ExportMetricsServiceRequest {
    let bounds = vec![
        0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0,
    ];
    let metrics = (0..n.div_ceil(50))
        .map(|m| Metric {
            name: format!("http.server.duration.{m}"),
            description: "Duration of HTTP server requests.".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                aggregation_temporality: 2,
                data_points: (0..50.min(n - m * 50))
                    .map(|k| HistogramDataPoint {
                        attributes: point_attrs(k),
                        start_time_unix_nano: T0,
                        time_unix_nano: T0 + 60_000_000_000,
                        count: 100 + k as u64,
                        sum: Some(1234.5 + k as f64),
                        bucket_counts: (0..16).map(|b| (b * k as u64) % 17).collect(),
                        explicit_bounds: bounds.clone(),
                        min: Some(0.5),
                        max: Some(980.25),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("checkout"),
            scope_metrics: vec![ScopeMetrics {
                scope: scope("opentelemetry.instrumentation.flask"),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One metric of every type, with edge values (absent optional sum, NaN, ±Inf, zero counts,
/// negative buckets, an int gauge above 2^53).
pub fn every_metric_type() -> ExportMetricsServiceRequest {
    let gauge = Metric {
        name: "process.memory.usage".into(),
        unit: "By".into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![
                NumberDataPoint {
                    time_unix_nano: T0,
                    value: Some(number_data_point::Value::AsInt((1 << 53) + 1)),
                    attributes: point_attrs(0),
                    ..Default::default()
                },
                NumberDataPoint {
                    time_unix_nano: T0,
                    value: Some(number_data_point::Value::AsDouble(f64::NAN)),
                    ..Default::default()
                },
                NumberDataPoint { time_unix_nano: T0, value: None, ..Default::default() },
            ],
        })),
        ..Default::default()
    };
    let sum = Metric {
        name: "http.server.requests".into(),
        description: "Requests".into(),
        unit: "{request}".into(),
        data: Some(Data::Sum(Sum {
            aggregation_temporality: 1,
            is_monotonic: true,
            data_points: vec![NumberDataPoint {
                start_time_unix_nano: T0 - 10,
                time_unix_nano: T0,
                value: Some(number_data_point::Value::AsDouble(f64::INFINITY)),
                attributes: point_attrs(1),
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let hist = Metric {
        name: "db.client.duration".into(),
        unit: "s".into(),
        data: Some(Data::Histogram(Histogram {
            aggregation_temporality: 2,
            data_points: vec![
                HistogramDataPoint {
                    time_unix_nano: T0,
                    count: 3,
                    sum: None,
                    bucket_counts: vec![1, 0, 2],
                    explicit_bounds: vec![0.1, f64::NEG_INFINITY],
                    ..Default::default()
                },
                HistogramDataPoint {
                    time_unix_nano: T0,
                    count: 0,
                    sum: Some(0.0),
                    min: Some(0.0),
                    max: Some(0.0),
                    ..Default::default()
                },
            ],
        })),
        ..Default::default()
    };
    let exp = Metric {
        name: "rpc.duration".into(),
        unit: "ms".into(),
        data: Some(Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: 1,
            data_points: vec![
                ExponentialHistogramDataPoint {
                    time_unix_nano: T0,
                    count: 9,
                    sum: Some(42.0),
                    scale: -3,
                    zero_count: 1,
                    positive: Some(exponential_histogram_data_point::Buckets {
                        offset: -2,
                        bucket_counts: vec![1, 2, 3, u64::MAX],
                    }),
                    negative: Some(exponential_histogram_data_point::Buckets {
                        offset: 5,
                        bucket_counts: vec![],
                    }),
                    min: Some(-1.5),
                    max: None,
                    zero_threshold: 1e-9,
                    attributes: point_attrs(2),
                    ..Default::default()
                },
                ExponentialHistogramDataPoint { time_unix_nano: T0, scale: 20, ..Default::default() },
            ],
        })),
        ..Default::default()
    };
    let summary = Metric {
        name: "gc.pause".into(),
        unit: "ms".into(),
        data: Some(Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                time_unix_nano: T0,
                count: 10,
                sum: 55.5,
                quantile_values: vec![
                    ValueAtQuantile { quantile: 0.5, value: 4.0 },
                    ValueAtQuantile { quantile: 0.99, value: 12.25 },
                ],
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let empty = Metric { name: "no.data".into(), data: None, ..Default::default() };
    ExportMetricsServiceRequest {
        resource_metrics: vec![
            ResourceMetrics {
                resource: resource("payments"),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope("io.opentelemetry.runtime"),
                    metrics: vec![gauge, sum, hist, exp, summary, empty],
                    ..Default::default()
                }],
                ..Default::default()
            },
            // No resource, no scope.
            ResourceMetrics {
                resource: None,
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: vec![Metric {
                        name: "bare".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                value: Some(number_data_point::Value::AsInt(-7)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    }
}

/// Nested attribute values: arrays, kvlists, bytes, duplicates, NaN/Inf, escapes.
pub fn odd_attributes() -> Vec<KeyValue> {
    vec![
        kv(
            "arr",
            Some(AnyValue {
                value: Some(Av::ArrayValue(ArrayValue {
                    values: vec![s("a").unwrap(), i(1).unwrap(), AnyValue { value: None }],
                })),
            }),
        ),
        kv(
            "map",
            Some(AnyValue {
                value: Some(Av::KvlistValue(KeyValueList {
                    values: vec![kv("x", d(f64::NAN)), kv("x", d(f64::INFINITY)), kv("y", None)],
                })),
            }),
        ),
        kv("bytes", Some(AnyValue { value: Some(Av::BytesValue(vec![0, 1, 2, 255])) })),
        kv("quote\"and\\slash\n", s("tab\there \u{1} é 😀")),
        kv("dup", i(1)),
        kv("dup", s("last")),
        kv("none", None),
        kv("empty", Some(AnyValue { value: None })),
        kv("neg_inf", d(f64::NEG_INFINITY)),
    ]
}
