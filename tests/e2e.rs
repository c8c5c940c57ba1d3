//! End to end: the real server (both listeners on port 0, a temp data dir with real SQLite
//! shards) driven by real OTLP clients (the Rust `opentelemetry-otlp` exporters over gRPC and
//! HTTP/protobuf) and by raw OTLP/JSON and protobuf posts for the spec quirks and error statuses.

use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use otelring::config::{DecodeConfig, PipelineConfig, ServerConfig, StoreConfig};
use otelring::metrics::Transport;
use otelring::pipeline::{BatchWriter, Pipeline, Signal, Stats, StopReport};
use otelring::server::{self, Listeners, Shared};
use otelring::store::Store;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Every client call is bounded: the SDK hangs without a server.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

struct TestServer {
    grpc: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
    pipeline: Arc<Pipeline>,
    shared: Arc<Shared>,
    /// Writers not started yet (to fill the queue on purpose).
    held_writers: Mutex<Option<Vec<Box<dyn BatchWriter>>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<StopReport>>,
}

impl TestServer {
    async fn start(tweak: impl FnOnce(&mut PipelineConfig, &mut ServerConfig), start_writers: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut pcfg = PipelineConfig { shards: 2, ..PipelineConfig::default() };
        let mut scfg = ServerConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        };
        tweak(&mut pcfg, &mut scfg);
        let stats = Arc::new(Stats::new());
        let store = Store::open(&StoreConfig::for_data_dir(dir.path()), pcfg.shards, stats.clone()).unwrap();
        let gauges = store.gauges();
        let pipeline = Arc::new(Pipeline::new(pcfg.clone(), stats).unwrap());
        let writers = store.into_writers();
        let held = if start_writers {
            pipeline.start(writers).unwrap();
            None
        } else {
            Some(writers)
        };
        let decode = DecodeConfig { max_bytes: pcfg.max_bytes, ..DecodeConfig::default() };
        let shared = server::build(&scfg, decode, pipeline.clone(), gauges).unwrap();
        let listeners = Listeners::bind(&scfg).await.unwrap();
        let (grpc, http) = listeners.addrs().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            shared.clone(),
            listeners,
            async move {
                let _ = rx.await;
            },
            std::future::pending(),
        ));
        Self {
            grpc,
            http,
            dir,
            pipeline,
            shared,
            held_writers: Mutex::new(held),
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn release_writers(&self) {
        if let Some(w) = self.held_writers.lock().unwrap().take() {
            self.pipeline.start(w).unwrap();
        }
    }

    /// Graceful stop (as SIGTERM does); returns the pipeline's report.
    async fn stop(&mut self) -> StopReport {
        self.release_writers();
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// One-column query over every shard (through `otelring sql`'s views).
    fn query(&self, sql: &str) -> Vec<String> {
        let conn = otelring::store::sql::open_read_only(self.dir.path()).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| {
            let v: rusqlite::types::Value = r.get(0)?;
            Ok(match v {
                rusqlite::types::Value::Null => "NULL".to_string(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Real(f) => f.to_string(),
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Blob(b) => format!("{b:?}"),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0].parse().unwrap()
    }

    fn assert_books(&self) {
        for s in Signal::ALL {
            assert!(
                self.shared.metrics.books_balanced(s),
                "{s} books do not balance:\n{}",
                self.shared.metrics.encode()
            );
        }
    }
}

pub(crate) fn resource(service: &str) -> Resource {
    Resource::builder().with_service_name(service.to_owned()).build()
}

/// Sends one trace (root + child, the child failing) with the Rust SDK's span exporter.
pub(crate) async fn send_trace(exporter: opentelemetry_otlp::SpanExporter, service: &str) {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource(service))
        .build();
    let tracer = provider.tracer("e2e-scope");
    tracer.in_span("GET /checkout", |cx| {
        cx.span().set_attribute(KeyValue::new("http.method", "GET"));
        cx.span().set_attribute(KeyValue::new("http.status_code", 500));
        let mut child = tracer.start("charge card");
        child.set_attribute(KeyValue::new("card.retries", 2));
        child.add_event("exception", vec![KeyValue::new("exception.message", "card declined")]);
        child.set_status(Status::error("declined"));
        child.end();
    });
    tokio::time::timeout(CLIENT_TIMEOUT, tokio::task::spawn_blocking(move || provider.shutdown()))
        .await
        .expect("exporter finished in time")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_traces_over_grpc_and_http_are_persisted_with_their_values() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    let grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", s.grpc))
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    send_trace(grpc, "grpc-svc").await;
    let http = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(reqwest::Client::new())
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", s.http))
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    send_trace(http, "http-svc").await;
    let report = s.stop().await;
    assert!(report.drained_in_time);
    for svc in ["grpc-svc", "http-svc"] {
        assert_eq!(s.count(&format!("SELECT count(*) FROM spans WHERE service_name = '{svc}'")), 2, "{svc}");
        let root = s.query(&format!(
            "SELECT json_extract(attributes, '$.\"http.status_code\"') || ' ' || kind || ' ' || parent_span_id || '|' \
             FROM spans WHERE service_name = '{svc}' AND name = 'GET /checkout'"
        ));
        assert_eq!(root, vec!["500 SPAN_KIND_INTERNAL |".to_string()]);
        let child = s.query(&format!(
            "SELECT status_code || ' ' || status_message || ' ' || json_extract(attributes, '$.\"card.retries\"') \
             FROM spans WHERE service_name = '{svc}' AND name = 'charge card'"
        ));
        assert_eq!(child, vec!["STATUS_CODE_ERROR declined 2".to_string()]);
        // The trace row: one per trace, error status, root's service.
        let t = s.query(&format!(
            "SELECT status || ' ' || length(trace_id) FROM traces WHERE service_name = '{svc}'"
        ));
        assert_eq!(t, vec!["STATUS_CODE_ERROR 32".to_string()]);
        // The exception event became an ERROR log with its message.
        let l =
            s.query(&format!("SELECT severity_number || ' ' || body FROM logs WHERE service_name = '{svc}'"));
        assert_eq!(l, vec!["17 card declined".to_string()]);
    }
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_logs_over_grpc_are_persisted() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    send_logs_grpc(s.grpc, "log-svc").await;
    s.stop().await;
    let rows = s.query(
        "SELECT severity_number || ' ' || severity_text || ' ' || body || ' ' || json_extract(attributes, '$.\"user.id\"') \
         FROM logs WHERE service_name = 'log-svc' ORDER BY severity_number",
    );
    assert_eq!(rows, vec!["9 INFO hello 42".to_string(), "17 ERROR it broke 42".to_string()]);
    s.assert_books();
}

/// Emits two log records (INFO "hello", ERROR "it broke", both with `user.id` = 42) with the
/// Rust SDK's gRPC log exporter.
pub(crate) async fn send_logs_grpc(grpc: SocketAddr, service: &str) {
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{grpc}"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource(service))
        .build();
    let logger = provider.logger("e2e-logs");
    for (sev, body) in [(Severity::Info, "hello"), (Severity::Error, "it broke")] {
        let mut r = logger.create_log_record();
        r.set_severity_number(sev);
        r.set_severity_text(if sev == Severity::Error { "ERROR" } else { "INFO" });
        r.set_body(body.into());
        r.add_attribute("user.id", 42);
        logger.emit(r);
    }
    tokio::time::timeout(CLIENT_TIMEOUT, tokio::task::spawn_blocking(move || provider.shutdown()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

const JSON_TRACE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"json-svc"}}]},
 "scopeSpans":[{"scope":{"name":"raw"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
 "name":"json span","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
 "attributes":[{"key":"n","value":{"intValue":"7"}},{"key":"ok","value":{"boolValue":true}}],"status":{}}]}]}]}"#;

const JSON_METRICS: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"m-svc"}}]},
 "scopeMetrics":[{"metrics":[{"name":"requests","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,
 "dataPoints":[{"asInt":"12","timeUnixNano":"1000","startTimeUnixNano":"500"}]}},
 {"name":"latency","histogram":{"aggregationTemporality":1,"dataPoints":[{"count":"3","sum":1.5,"bucketCounts":["1","2"],
 "explicitBounds":[0.5],"timeUnixNano":"1000"}]}}]}]}]}"#;

async fn post(
    addr: SocketAddr,
    path: &str,
    ct: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req =
        reqwest::Client::new().post(format!("http://{addr}{path}")).header("content-type", ct).body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let resp = tokio::time::timeout(CLIENT_TIMEOUT, req.send()).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let headers =
        resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn deflate(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_posts_plain_gzip_and_deflate_are_persisted() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    let (st, _, body) =
        post(s.http, "/v1/traces", "application/json; charset=utf-8", None, JSON_TRACE.into()).await;
    assert_eq!((st, body.as_slice()), (200, b"{}".as_slice()));
    let (st, h, _) =
        post(s.http, "/v1/metrics", "application/json", Some("gzip"), gzip(JSON_METRICS.as_bytes())).await;
    assert_eq!(st, 200);
    assert!(h.iter().any(|(k, v)| k == "content-type" && v == "application/json"));
    let logs = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"SEVERITY_NUMBER_WARN","body":{"kvlistValue":{"values":[{"key":"a","value":{"doubleValue":1.5}}]}}}]}]}]}"#;
    let (st, _, _) =
        post(s.http, "/v1/logs", "application/json", Some("deflate"), deflate(logs.as_bytes())).await;
    assert_eq!(st, 200);
    s.stop().await;
    let span = s.query(
        "SELECT trace_id || ' ' || span_id || ' ' || kind || ' ' || duration_us || ' ' || attributes FROM spans",
    );
    assert_eq!(
        span,
        vec!["5b8efff798038103d269b633813fc60c eee19b7ec3c1b174 SPAN_KIND_SERVER 1000000 {\"n\":7,\"ok\":true}".to_string()]
    );
    let m = s.query("SELECT kind || ' ' || coalesce(value, '') || ' ' || coalesce(bucket_counts, '') FROM metric_points ORDER BY name");
    assert_eq!(m, vec!["histogram  [1,2]".to_string(), "sum 12 ".to_string()]);
    let l = s.query("SELECT severity_number || ' ' || body || ' ' || service_name FROM logs");
    assert_eq!(l, vec!["13 {\"a\":1.5} unknown_service".to_string()]);
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_error_status_comes_from_a_real_request() {
    let mut s = TestServer::start(|_, c| c.max_body_bytes = 64 * 1024, true).await;
    // (path, content type, content encoding, body, expected status)
    type Case = (&'static str, &'static str, Option<&'static str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("/v1/nope", "application/json", None, b"{}".to_vec(), 404),
        ("/v1/traces", "text/plain", None, b"{}".to_vec(), 415),
        ("/v1/traces", "application/json", Some("br"), b"{}".to_vec(), 415),
        ("/v1/traces", "application/json", None, b"{not json".to_vec(), 400),
        ("/v1/traces", "application/x-protobuf", None, vec![0x0a, 0xff, 0xff], 400),
        ("/v1/traces", "application/json", None, vec![b' '; 65 * 1024], 413),
        // A gzip bomb: 64 KiB wire, megabytes inflated: refused while inflating.
        ("/v1/traces", "application/json", Some("gzip"), gzip(&vec![b' '; 8 << 20]), 413),
    ];
    for (path, ct, enc, body, want) in cases {
        let (st, h, body) = post(s.http, path, ct, enc, body).await;
        assert_eq!(st, want, "{path} {ct} {enc:?}");
        if ct == "application/json" && want != 404 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["code"].as_u64().is_some() && v["message"].as_str().is_some(), "{v}");
        }
        let _ = h;
    }
    let r = reqwest::Client::new().get(format!("http://{}/v1/traces", s.http)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = reqwest::Client::new().get(format!("http://{}/healthz", s.http)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = reqwest::Client::new().get(format!("http://{}/readyz", s.http)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.stop().await;
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_throttles_with_retry_after_and_the_clients_retry_succeeds() {
    // Queue of 2 batches per signal, one shard, writers held: the third request is throttled.
    let mut s = TestServer::start(
        |p, _| {
            p.shards = 1;
            p.queue_size = 2;
        },
        false,
    )
    .await;
    // JSON_TRACE's span lasts 1 s: slow, so priority. A 1 ms one is healthy.
    let healthy = JSON_TRACE.replace("1544712661000000000", "1544712660001000000");
    for _ in 0..2 {
        let (st, _, _) = post(s.http, "/v1/traces", "application/json", None, healthy.clone().into()).await;
        assert_eq!(st, 200);
    }
    // 2 of 2: the soft zone. Healthy data is dropped and reported as partial success...
    let (st, _, body) = post(s.http, "/v1/traces", "application/json", None, healthy.into()).await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["partialSuccess"]["rejectedSpans"], "1", "{v}");
    // ...and priority data that does not fit is refused with a retry delay.
    let error_trace = JSON_TRACE.replace(r#""status":{}"#, r#""status":{"code":2,"message":"boom"}"#);
    assert_ne!(error_trace, JSON_TRACE);
    let (st, h, body) = post(s.http, "/v1/traces", "application/json", None, error_trace.into()).await;
    assert_eq!(st, 429);
    assert!(h.iter().any(|(k, v)| k == "retry-after" && v == "1"), "{h:?}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 8);
    assert_eq!(v["details"][0]["retryDelay"], "1s");
    // The Rust SDK's gRPC exporter is throttled too, reads RetryInfo, and retries: once the
    // writers run, its retry succeeds.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", s.grpc))
        .with_timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let release = {
        let p = s.pipeline.clone();
        let held = s.held_writers.lock().unwrap().take();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(w) = held {
                p.start(w).unwrap();
            }
        })
    };
    // The traces queue is still full: the SDK's first attempt (an error trace) is refused.
    send_trace(exporter, "retry-svc").await;
    release.await.unwrap();
    s.stop().await;
    assert_eq!(s.count("SELECT count(*) FROM spans WHERE service_name = 'retry-svc'"), 2);
    let c = s.shared.metrics.counters();
    assert!(c.throttled_count(Signal::Traces, Transport::Grpc) >= 1, "the SDK's first attempt was throttled");
    assert!(c.throttled_count(Signal::Traces, Transport::Http) >= 1);
    s.assert_books();
}

/// The Python interpreter of the venv `.ci/test` creates (or `OTELRING_PYTHON`).
pub(crate) fn python() -> std::path::PathBuf {
    let p = std::env::var_os("OTELRING_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/test` (it creates the venv with the OpenTelemetry Python SDK), \
         or point OTELRING_PYTHON at a python with opentelemetry-sdk and the OTLP exporters",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_exporters_over_grpc_and_http_deliver_all_three_signals() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_otlp.py");
    for transport in ["grpc", "http"] {
        let run = tokio::process::Command::new(python())
            .arg(&script)
            .args([transport, &s.grpc.to_string(), &s.http.to_string(), &format!("py-{transport}")])
            .output();
        let out =
            tokio::time::timeout(Duration::from_secs(90), run).await.expect("python client in time").unwrap();
        assert!(
            out.status.success(),
            "python {transport} client failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.stop().await;
    for transport in ["grpc", "http"] {
        let svc = format!("py-{transport}");
        let spans = s.query(&format!(
            "SELECT name || ' ' || status_code || ' ' || coalesce(json_extract(attributes, '$.retries'), '-') \
             FROM spans WHERE service_name = '{svc}' ORDER BY name"
        ));
        assert_eq!(
            spans,
            vec!["py child STATUS_CODE_ERROR -".to_string(), "py root STATUS_CODE_UNSET 3".to_string()]
        );
        let logs = s.query(&format!(
            "SELECT severity_number || ' ' || body FROM logs WHERE service_name = '{svc}' ORDER BY severity_number, body"
        ));
        assert_eq!(
            logs,
            vec!["9 py hello".to_string(), "17 bad card".to_string(), "17 py failure".to_string()],
            "{svc}: two records and the exception event"
        );
        let points = s.query(&format!(
            "SELECT name || ' ' || kind || ' ' || coalesce(value, count) FROM metric_points WHERE service_name = '{svc}' ORDER BY name"
        ));
        assert_eq!(points, vec!["py.latency histogram 1".to_string(), "py.requests sum 5".to_string()]);
    }
    s.assert_books();
}

/// A raw unary gRPC call over h2: returns (grpc-status, grpc-message, all response metadata).
async fn grpc_call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (String, String, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    // The server may answer (and close the stream) before reading the body, e.g. for an unknown
    // method: a send error then is not a failure.
    let _ = send.send_data(bytes::Bytes::from(body), false);
    // tonic's habit: an empty final DATA frame with END_STREAM.
    let _ = send.send_data(bytes::Bytes::new(), true);
    let resp = tokio::time::timeout(CLIENT_TIMEOUT, resp).await.unwrap().unwrap();
    let mut meta = resp.headers().clone();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Ok(Some(t)) = body.trailers().await {
        meta.extend(t);
    }
    let get = |k: &str| meta.get(k).map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
    (get("grpc-status"), get("grpc-message"), meta)
}

fn framed(message: &[u8], compressed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    otelring::otlp::grpc_frame::encode_frame(compressed, message, &mut out);
    out
}

const TRACE_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_error_status_comes_from_a_real_request() {
    let mut s = TestServer::start(|_, c| c.max_body_bytes = 64 * 1024, true).await;
    let ok_body = framed(&[], false);
    let (st, _, _) = grpc_call(s.grpc, TRACE_PATH, &[], ok_body.clone()).await;
    assert_eq!(st, "0", "an empty request is a valid no-op");
    let (st, msg, _) = grpc_call(s.grpc, "/opentelemetry.Nope/Export", &[], ok_body.clone()).await;
    assert_eq!(st, "12", "{msg}");
    let (st, _, meta) = grpc_call(s.grpc, TRACE_PATH, &[("grpc-encoding", "snappy")], ok_body.clone()).await;
    assert_eq!(st, "12");
    assert_eq!(meta.get("grpc-accept-encoding").unwrap(), "identity,gzip");
    let (st, msg, _) = grpc_call(s.grpc, TRACE_PATH, &[], framed(&[0x0a, 0xff, 0xff], false)).await;
    assert_eq!(st, "3", "undecodable → INVALID_ARGUMENT: {msg}");
    let (st, _, meta) = grpc_call(s.grpc, TRACE_PATH, &[], framed(&vec![0u8; 65 * 1024], false)).await;
    assert_eq!(st, "8", "over the message limit");
    assert!(meta.get("google.rpc.retryinfo-bin").is_none(), "too large is permanent: no RetryInfo");
    // gzip: a valid compressed message works; a bomb is refused while inflating.
    let (st, _, _) =
        grpc_call(s.grpc, TRACE_PATH, &[("grpc-encoding", "gzip")], framed(&gzip(&[]), true)).await;
    assert_eq!(st, "0");
    let bomb = gzip(&vec![0u8; 8 << 20]);
    let (st, _, _) = grpc_call(s.grpc, TRACE_PATH, &[("grpc-encoding", "gzip")], framed(&bomb, true)).await;
    assert_eq!(st, "8");
    let (st, _, _) = grpc_call(s.grpc, TRACE_PATH, &[("x-tenant-id", "")], ok_body.clone()).await;
    assert_eq!(st, "3", "an empty tenant id is invalid");
    s.stop().await;
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_grpc_call_carries_retry_info_in_both_trailers() {
    let mut s = TestServer::start(
        |p, _| {
            p.shards = 1;
            p.queue_size = 1;
        },
        false,
    )
    .await;
    let error_trace = JSON_TRACE.replace(r#""status":{}"#, r#""status":{"code":2}"#);
    assert_eq!(post(s.http, "/v1/traces", "application/json", None, error_trace.clone().into()).await.0, 200);
    let (status, _, body) = post(s.http, "/v1/traces", "application/json", None, error_trace.into()).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    // The same over gRPC, protobuf-encoded by the OTLP prost types.
    use prost::Message;
    let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest = {
        let mut r = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::default();
        let mut span = opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            name: "x".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        };
        span.status = Some(opentelemetry_proto::tonic::trace::v1::Status { code: 2, message: "e".into() });
        r.resource_spans.push(opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        });
        r
    };
    let (st, msg, meta) = grpc_call(s.grpc, TRACE_PATH, &[], framed(&req.encode_to_vec(), false)).await;
    assert_eq!(st, "8", "{msg}");
    for k in ["grpc-status-details-bin", "google.rpc.retryinfo-bin"] {
        assert!(meta.get(k).is_some(), "{k} missing: {meta:?}");
    }
    s.stop().await;
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_mode_a_span_is_readable_as_soon_as_its_export_returned() {
    let mut s = TestServer::start(|p, _| p.commit_mode = true, true).await;
    for i in 0..5 {
        let body = JSON_TRACE.replace("EEE19B7EC3C1B174", &format!("EEE19B7EC3C1B17{i}"));
        let (st, _, _) = post(s.http, "/v1/traces", "application/json", None, body.into()).await;
        assert_eq!(st, 200);
        assert_eq!(s.count("SELECT count(*) FROM spans"), i + 1, "readable right after the answer");
    }
    s.stop().await;
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_python_prometheus_parser_and_the_books_balance() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    post(s.http, "/v1/traces", "application/json", None, JSON_TRACE.into()).await;
    post(s.http, "/v1/metrics", "application/json", None, JSON_METRICS.into()).await;
    post(s.http, "/v1/traces", "application/json", None, b"{bad".to_vec()).await;
    // Let the writers commit, then scrape.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.pipeline.queue_bytes(Signal::Traces) + s.pipeline.queue_bytes(Signal::Metrics) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    );
    let text = reqwest::get(format!("http://{}/metrics", s.http)).await.unwrap().text().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_books.py");
    let out = tokio::process::Command::new(python()).arg(script).arg(&path).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("traces received=1 persisted=1"), "{stdout}");
    assert!(stdout.contains("metrics received=2 persisted=2"), "{stdout}");
    s.stop().await;
}

/// A distinct healthy JSON trace request of `spans` spans for load tests.
pub(crate) fn load_trace(n: u64, spans: u64) -> String {
    let spans: Vec<String> = (0..spans)
        .map(|i| {
            format!(
                r#"{{"traceId":"{n:032x}","spanId":"{:016x}","name":"load","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000","attributes":[{{"key":"i","value":{{"intValue":"{i}"}}}}]}}"#,
                n * 1000 + i + 1
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"load-svc"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

#[test]
fn sigterm_under_load_exits_zero_and_the_books_balance() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::util::server_bin())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "otelring listening: OTLP/gRPC on A, OTLP/HTTP on B; ..."
    let http: SocketAddr =
        line.split("OTLP/HTTP on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    let grpc: SocketAddr =
        line.split("OTLP/gRPC on ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Both transports: 2 gRPC clients (protobuf, one h2 connection each, 20-span requests of 4
    // five-span traces) beside the 4 HTTP/JSON clients below.
    let grpc_clients: Vec<_> = (0..2u64)
        .map(|c| {
            let accepted = accepted.clone();
            rt.spawn(async move {
                use crate::floods::{framed, grpc_unary, h2_connect, proto_traces};
                let client = h2_connect(grpc).await;
                for i in 0..100_000u64 {
                    let first = 10_000_000 + c * 1_000_000 + i * 4;
                    let body = framed(&proto_traces(first, 4, 5, "grpc-load", false));
                    let Ok(answer) = grpc_unary(&client, grpc, body).await else { break };
                    match answer.status.as_str() {
                        "0" => {
                            let dropped = answer.rejected_spans() as u64;
                            accepted.fetch_add(20 - dropped, std::sync::atomic::Ordering::SeqCst);
                        }
                        "14" => break, // UNAVAILABLE: stopping
                        _ => continue,
                    }
                }
            })
        })
        .collect();
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let accepted = accepted.clone();
            rt.spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..100_000u64 {
                    let body = load_trace(c * 1_000_000 + i, 20);
                    let sent = client
                        .post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let Ok(resp) = sent else { break };
                    if resp.status() != 200 {
                        if resp.status() == 503 {
                            break; // stopping
                        }
                        continue;
                    }
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                    let dropped = v["partialSuccess"]["rejectedSpans"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0u64);
                    accepted.fetch_add(20 - dropped, std::sync::atomic::Ordering::SeqCst);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    crate::util::sigterm(child.id());
    let status = child.wait().unwrap();
    for c in clients.into_iter().chain(grpc_clients) {
        let _ = rt.block_on(c);
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}\n{stderr}");
    // Three ways: the clients' acknowledged spans, the server's books (its metrics at exit), and
    // `otelring sql` row counts.
    let books: Vec<&str> = stderr.lines().filter(|l| l.contains("otelring: books")).collect();
    assert_eq!(books.len(), 3, "{stderr}");
    assert!(books.iter().all(|l| l.ends_with(" balanced") && l.contains("in_flight=0")), "{books:#?}");
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(accepted > 0, "the load ran");
    let traces_line = books.iter().find(|l| l.contains("books traces")).unwrap();
    assert!(traces_line.contains(&format!("persisted={accepted} ")), "{traces_line}");
    let sql = std::process::Command::new(crate::util::server_bin())
        .args(["sql", "--json", "--data-dir"])
        .arg(dir.path())
        .arg("SELECT count(*) AS n, count(DISTINCT trace_id) AS t, sum(service_name = 'grpc-load') AS g FROM spans")
        .output()
        .unwrap();
    assert!(sql.status.success(), "{}", String::from_utf8_lossy(&sql.stderr));
    let v: serde_json::Value = serde_json::from_slice(&sql.stdout).unwrap();
    assert_eq!(v[0]["n"].as_u64(), Some(accepted), "every acknowledged span is in SQLite, nothing more: {v}");
    assert!(v[0]["g"].as_u64().unwrap_or(0) > 0, "the gRPC clients' spans are stored too: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_stopping_new_requests_get_503_and_unavailable_with_a_retry_delay() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/traces", s.http);
    let r =
        client.post(&url).header("content-type", "application/json").body(JSON_TRACE).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A raw h2 connection stays open too, so the grace window lasts while we probe.
    let tcp = tokio::net::TcpStream::connect(s.grpc).await.unwrap();
    let (h2c, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let _ = s.stop.take().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r =
        client.post(&url).header("content-type", "application/json").body(JSON_TRACE).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{TRACE_PATH}", s.grpc))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (resp, mut send) = h2c.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from(framed(&[], false)), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "14");
    assert!(resp.headers().get("google.rpc.retryinfo-bin").is_some());
    drop(h2c);
    let report = s.task.take().unwrap().await.unwrap();
    assert!(report.drained_in_time);
    assert_eq!(s.count("SELECT count(*) FROM spans"), 1);
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_bind_their_tenant() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "# key tenant\nsecret-a team-a\nsecret-b team-b\n").unwrap();
    let path = keys.path().to_owned();
    let mut s = TestServer::start(move |_, c| c.api_keys_file = Some(path), true).await;
    let send = |key: Option<&'static str>, tenant: Option<&'static str>| {
        let mut r = reqwest::Client::new()
            .post(format!("http://{}/v1/traces", s.http))
            .header("content-type", "application/json")
            .body(JSON_TRACE);
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        if let Some(t) = tenant {
            r = r.header("x-tenant-id", t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(None, None).await, 401);
    assert_eq!(send(Some("wrong"), None).await, 401);
    assert_eq!(send(Some("secret-a"), Some("team-b")).await, 401, "a key cannot write another tenant");
    assert_eq!(send(Some("secret-a"), None).await, 200);
    assert_eq!(send(Some("secret-b"), Some("team-b")).await, 200);
    s.stop().await;
    assert_eq!(s.query("SELECT tenant_id FROM spans ORDER BY tenant_id"), vec!["team-a", "team-b"]);
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_grpc_connections_are_closed_after_the_keepalive_idle_time() {
    let mut s = TestServer::start(|_, c| c.keepalive_idle = Duration::from_millis(300), true).await;
    let tcp = tokio::net::TcpStream::connect(s.grpc).await.unwrap();
    let (_client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // The server sends GOAWAY after 300 ms without a stream; the connection then ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle connection was kept open");
    // Its slot is freed when the server's connection task ends (just after the client sees it).
    let freed = tokio::time::timeout(Duration::from_secs(5), async {
        while s.shared.conns.open() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the connection slot was not freed");
    s.stop().await;
}

// ------------------------------------------------------------------------------------------
// Hostile input over both transports (issue 7): each gets its 4xx / gRPC code, the server stays
// up, and valid traffic sent alongside is persisted completely.

pub(crate) fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
pub(crate) fn ld(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    varint(u64::from(field << 3 | 2), &mut out);
    varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// An `AnyValue` nested `depth` arrays deep, built without recursion.
pub(crate) fn nested_any_value(depth: usize) -> Vec<u8> {
    let inner = ld(1, b"x"); // AnyValue { string_value: "x" }
    // Sizes from the inside out: ArrayValue { values: AnyValue } then AnyValue { array_value }.
    let mut prefixes: Vec<Vec<u8>> = Vec::with_capacity(depth);
    let mut len = inner.len() as u64;
    for _ in 0..depth {
        let mut p = Vec::new();
        let mut arr = Vec::new();
        varint(u64::from(1u32 << 3 | 2), &mut arr);
        varint(len, &mut arr);
        let arr_len = arr.len() as u64 + len;
        varint(u64::from(5u32 << 3 | 2), &mut p);
        varint(arr_len, &mut p);
        p.extend_from_slice(&arr);
        len += p.len() as u64;
        prefixes.push(p);
    }
    let mut out = Vec::with_capacity(len as usize);
    for p in prefixes.iter().rev() {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&inner);
    out
}

/// An ExportTraceServiceRequest with one span carrying `attributes` (encoded KeyValues).
fn request_with_attributes(attributes: &[u8], trace_id: &[u8]) -> Vec<u8> {
    let mut span = ld(1, trace_id);
    span.extend(ld(2, &[1, 2, 3, 4, 5, 6, 7, 8]));
    span.extend(ld(5, b"hostile"));
    span.extend_from_slice(attributes);
    ld(1, &ld(2, &ld(2, &span)))
}

pub(crate) fn attribute(key: &str, value: &[u8]) -> Vec<u8> {
    let mut kv = ld(1, key.as_bytes());
    kv.extend(ld(2, value));
    ld(9, &kv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_its_error_and_valid_traffic_alongside_is_persisted() {
    let mut s = TestServer::start(|_, _| {}, true).await;
    let id = [7u8; 16];
    let deep = request_with_attributes(&attribute("deep", &nested_any_value(200_000)), &id);
    let mut many = Vec::new();
    for i in 0..1_000_000u32 {
        many.extend(attribute("a", &{
            let mut v = Vec::new();
            varint(3 << 3, &mut v); // int_value
            varint(u64::from(i % 100), &mut v);
            v
        }));
    }
    let many = request_with_attributes(&many, &id);
    let bad_utf8 = request_with_attributes(&attribute("k", &ld(1, &[0xff, 0xfe, b'x'])), &id);
    let short_id = request_with_attributes(&[], &[1, 2, 3]);
    let truncated = {
        let mut v = request_with_attributes(&[], &id);
        v.truncate(v.len() - 3);
        v
    };
    let wrong_wire_type = vec![0x09, 1, 2, 3, 4, 5, 6, 7, 8]; // field 1 as fixed64
    let protobuf_cases: Vec<(&str, Vec<u8>)> = vec![
        ("200,000-level AnyValue", deep),
        ("1,000,000 attributes", many),
        ("invalid UTF-8", bad_utf8),
        ("3-byte trace id", short_id),
        ("truncated", truncated),
        ("wrong wire type", wrong_wire_type),
    ];
    // Valid traffic at the same time, over both transports.
    let valid = {
        let http = s.http;
        tokio::spawn(async move {
            let mut ok = 0;
            for n in 0..30u64 {
                let (st, _, _) =
                    post(http, "/v1/traces", "application/json", None, load_trace(5_000_000 + n, 10).into())
                        .await;
                ok += u64::from(st == 200);
            }
            ok
        })
    };
    for (name, body) in &protobuf_cases {
        let (st, _, _) = post(s.http, "/v1/traces", "application/x-protobuf", None, body.clone()).await;
        assert_eq!(st, 400, "HTTP {name}");
        let (code, msg, _) = grpc_call(s.grpc, TRACE_PATH, &[], framed(body, false)).await;
        assert_eq!(code, "3", "gRPC {name}: {msg}");
    }
    let json_cases: Vec<(&str, String)> = vec![
        (
            "base64 trace id",
            JSON_TRACE.replace("5B8EFFF798038103D269B633813FC60C", "W47/95gDgQPSabYzgT/GDA=="),
        ),
        ("huge number", JSON_TRACE.replace("\"1544712660000000000\"", "1e400")),
        ("timestamp beyond i64", JSON_TRACE.replace("\"1544712660000000000\"", "\"18446744073709551615\"")),
        ("not an object", "[1,2,3]".to_string()),
    ];
    for (name, body) in json_cases {
        let (st, _, resp) = post(s.http, "/v1/traces", "application/json", None, body.into()).await;
        assert_eq!(st, 400, "JSON {name}: {}", String::from_utf8_lossy(&resp));
    }
    // Duplicate keys: last wins, accepted.
    let dup = JSON_TRACE.replace(r#""name":"json span""#, r#""name":"first","name":"json span""#);
    assert_eq!(post(s.http, "/v1/traces", "application/json", None, dup.into()).await.0, 200);
    assert_eq!(valid.await.unwrap(), 30, "valid traffic was answered 200 throughout");
    s.stop().await;
    assert_eq!(s.count("SELECT count(*) FROM spans WHERE service_name = 'load-svc'"), 300);
    assert_eq!(s.count("SELECT count(*) FROM spans WHERE name = 'json span'"), 1);
    s.assert_books();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TestServer::start(|_, c| c.header_read_timeout = Duration::from_millis(300), true).await;
    let mut sock = tokio::net::TcpStream::connect(s.http).await.unwrap();
    sock.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finish the headers: the server must close the connection.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a client that never finishes its headers kept its connection");
    s.stop().await;
}

#[test]
fn bench_discard_stores_nothing_warns_and_counts_every_item_as_persisted() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(crate::util::server_bin())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(&data)
        .env("OTELRING_BENCH_DISCARD", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("discarding (benchmark mode, nothing stored)"), "{line}");
    let http: SocketAddr =
        line.split("OTLP/HTTP on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        for n in 0..10 {
            let resp = client
                .post(format!("http://{http}/v1/traces"))
                .header("content-type", "application/json")
                .body(load_trace(n, 20))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.bytes().await.unwrap().as_ref(), b"{}");
        }
    });
    crate::util::sigterm(child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("WARNING: --bench-discard"), "{stderr}");
    let traces = stderr.lines().find(|l| l.contains("otelring: books traces")).unwrap();
    assert!(traces.contains("received=200 ") && traces.contains("persisted=200 "), "{traces}");
    assert!(traces.ends_with(" balanced"), "{traces}");
    assert!(!data.exists(), "the discard sink must not create the data directory");
}
