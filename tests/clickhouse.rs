//! The ClickHouse sink end to end (DESIGN 1.8): the release binary with `OTELRING_SINK=clickhouse`
//! into a real 2-shard ClickHouse cluster ([`crate::chcluster`]), driven by the Python and Rust
//! OpenTelemetry SDKs and by raw OTLP posts; nodes killed and restarted; two instances at once.
//! Every count is read back from the cluster with `FINAL` (the documented dedup of replays and
//! retries, docs/CLICKHOUSE.md).

use crate::chcluster::{Books, Cluster, Otelring};
use crate::e2e::load_trace;
use opentelemetry_otlp::WithExportConfig as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// POSTs an OTLP/JSON body; (status, retry-after present, body).
async fn post_json(
    client: &reqwest::Client,
    http: SocketAddr,
    path: &str,
    body: String,
) -> Option<(u16, bool, String)> {
    let r = client
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    Some((status, retry, r.text().await.unwrap_or_default()))
}

fn get_status(rt: &tokio::runtime::Runtime, http: SocketAddr, path: &str) -> u16 {
    rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{http}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    })
}

/// One metric's value from `/metrics` (summed over its label sets).
fn metric(rt: &tokio::runtime::Runtime, http: SocketAddr, name: &str) -> f64 {
    let text = rt.block_on(async {
        reqwest::get(format!("http://{http}/metrics")).await.unwrap().text().await.unwrap()
    });
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `f` holds (polling every 100 ms) or panics with `what` after `timeout`.
fn wait_for(timeout: Duration, what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(f(), "timed out after {timeout:?} waiting for {what}");
}

/// Spans per trace id (hex) visible with FINAL.
fn spans_per_trace(c: &Cluster) -> HashMap<String, u64> {
    c.rows("SELECT TraceId, count() FROM otel.otel_traces FINAL GROUP BY TraceId")
        .iter()
        .filter_map(|l| {
            let (t, n) = l.split_once('\t')?;
            Some((t.to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// Every trace of `traces` has exactly `spans` spans visible with FINAL.
fn assert_traces_complete(c: &Cluster, traces: impl IntoIterator<Item = u64>, spans: u64, what: &str) {
    let per_trace = spans_per_trace(c);
    for n in traces {
        assert_eq!(per_trace.get(&format!("{n:032x}")).copied(), Some(spans), "{what} trace {n}");
    }
}

/// Posts traces `first..first + count` of `spans` spans each, one after another, over OTLP/JSON;
/// each must be acknowledged whole (200 `{}`). Returns their numbers.
fn post_acked_traces(
    rt: &tokio::runtime::Runtime,
    http: SocketAddr,
    first: u64,
    count: u64,
    spans: u64,
) -> Vec<u64> {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut acked = Vec::new();
        for n in first..first + count {
            let (s, _, body) = post_json(&client, http, "/v1/traces", load_trace(n, spans)).await.unwrap();
            assert_eq!((s, body.as_str()), (200, "{}"));
            acked.push(n);
        }
        acked
    })
}

/// No item is visible twice: rows with FINAL = distinct identities.
fn assert_no_visible_duplicates(c: &Cluster) {
    let finals = c.count("SELECT count() FROM otel.otel_traces FINAL");
    let distinct = c.count("SELECT uniqExact(TenantId, TraceId, SpanId) FROM otel.otel_traces");
    assert_eq!(finals, distinct, "a span is visible twice through FINAL");
    let finals = c.count("SELECT count() FROM otel.otel_logs FINAL");
    let distinct = c.count("SELECT uniqExact(TenantId, ServiceName, TimestampNs, LogId) FROM otel.otel_logs");
    assert_eq!(finals, distinct, "a log record is visible twice through FINAL");
}

fn assert_balanced(books: &[Books; 3]) {
    for (sig, b) in ["traces", "logs", "metrics"].iter().zip(books) {
        assert!(b.balanced, "{sig}: books unbalanced: {b:?}");
        assert_eq!(b.dlq_pending, 0, "{sig}: {b:?}");
        assert_eq!(b.in_flight, 0, "{sig}: {b:?}");
    }
}

/// Clients posting distinct 20-span JSON traces until `stop`; returns the acknowledged trace
/// numbers (200 without partial success).
fn trace_load(
    rt: &tokio::runtime::Runtime,
    http: SocketAddr,
    clients: u64,
    first: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (stop, acked) = (stop.clone(), acked.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let n = first + c * 1_000_000 + i;
                    i += 1;
                    match post_json(&client, http, "/v1/traces", load_trace(n, 20)).await {
                        Some((200, _, body)) if body == "{}" => acked.lock().unwrap().push(n),
                        Some((200 | 429 | 503, _, _)) => {}
                        Some((s, _, body)) => panic!("unexpected status {s}: {body}"),
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect()
}

#[test]
fn ch_python_and_rust_sdks_deliver_traces_logs_and_metrics_with_their_values() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_otlp.py");
    for transport in ["grpc", "http"] {
        let out = std::process::Command::new(crate::e2e::python())
            .arg(&script)
            .args([transport, &o.grpc.to_string(), &o.http.to_string(), &format!("py-ch-{transport}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python {transport}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rt = runtime();
    let grpc = o.grpc;
    rt.block_on(async move {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{grpc}"))
            .with_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        crate::e2e::send_trace(exporter, "rust-ch").await;
        crate::e2e::send_logs_grpc(grpc, "rust-ch-logs").await;
    });
    // Ten more traces, so both shards (and nodes) hold some whatever the SDKs' random ids are.
    let http = o.http;
    rt.block_on(async move {
        let client = reqwest::Client::new();
        for n in 0..10 {
            let (s, _, _) = post_json(&client, http, "/v1/traces", load_trace(9_000 + n, 3)).await.unwrap();
            assert_eq!(s, 200);
        }
    });
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    for transport in ["grpc", "http"] {
        let svc = format!("py-ch-{transport}");
        let spans = cluster.rows(&format!(
            "SELECT SpanName, StatusCode, SpanAttributes.values[indexOf(SpanAttributes.keys, 'retries')], \
             length(TraceId), length(SpanId) FROM otel.otel_traces FINAL WHERE ServiceName = '{svc}' ORDER BY SpanName"
        ));
        assert_eq!(
            spans,
            vec!["py child\tSTATUS_CODE_ERROR\t\t32\t16", "py root\tSTATUS_CODE_UNSET\t3\t32\t16"]
        );
        // Numbers stay numbers.
        let retries = cluster.query(&format!(
            "SELECT sum(SpanAttributes.numbers[indexOf(SpanAttributes.keys, 'retries')]) * 2 \
             FROM otel.otel_traces FINAL WHERE ServiceName = '{svc}' AND SpanName = 'py root'"
        ));
        assert_eq!(retries.trim(), "6");
        let logs = cluster.rows(&format!(
            "SELECT SeverityNumber, Body FROM otel.otel_logs FINAL WHERE ServiceName = '{svc}' ORDER BY SeverityNumber, Body"
        ));
        assert_eq!(logs, vec!["9\tpy hello", "17\tbad card", "17\tpy failure"], "{svc}");
        let sums = cluster.rows(&format!(
            "SELECT MetricName, Value, IsMonotonic, AggregationTemporality FROM otel.otel_metrics_sum FINAL \
             WHERE ServiceName = '{svc}'"
        ));
        assert_eq!(sums, vec!["py.requests\t5\t1\tAGGREGATION_TEMPORALITY_CUMULATIVE"], "{svc}");
        let hist = cluster.rows(&format!(
            "SELECT MetricName, MetricUnit, Count, Sum FROM otel.otel_metrics_histogram FINAL WHERE ServiceName = '{svc}'"
        ));
        assert_eq!(hist, vec!["py.latency\tms\t1\t12.5"], "{svc}");
    }
    let rust = cluster.rows(
        "SELECT SpanName, StatusCode, StatusMessage, SpanAttributes.numbers[indexOf(SpanAttributes.keys, 'http.status_code')], \
         ParentSpanId = '' FROM otel.otel_traces FINAL WHERE ServiceName = 'rust-ch' ORDER BY SpanName",
    );
    assert_eq!(
        rust,
        vec!["GET /checkout\tSTATUS_CODE_UNSET\t\t500\t1", "charge card\tSTATUS_CODE_ERROR\tdeclined\t0\t0"]
    );
    let event =
        cluster.rows("SELECT SeverityNumber, Body FROM otel.otel_logs FINAL WHERE ServiceName = 'rust-ch'");
    assert_eq!(event, vec!["17\tcard declined"], "the exception event became an ERROR log");
    let rlogs = cluster.rows(
        "SELECT SeverityNumber, SeverityText, Body, LogAttributes.numbers[indexOf(LogAttributes.keys, 'user.id')] \
         FROM otel.otel_logs FINAL WHERE ServiceName = 'rust-ch-logs' ORDER BY SeverityNumber",
    );
    assert_eq!(rlogs, vec!["9\tINFO\thello\t42", "17\tERROR\tit broke\t42"]);
    // The books: every persisted item is in the cluster (synthesized logs are outside them).
    assert_eq!(books[0].persisted, cluster.count("SELECT count() FROM otel.otel_traces FINAL"));
    let points = cluster.count(
        "SELECT (SELECT count() FROM otel.otel_metrics_sum FINAL) + (SELECT count() FROM otel.otel_metrics_histogram FINAL) \
         + (SELECT count() FROM otel.otel_metrics_gauge FINAL)",
    );
    assert_eq!(books[2].persisted, points);
    // Each trace lives on one node.
    let per_node: Vec<Vec<String>> = (0..2)
        .map(|i| {
            cluster
                .try_query_node(i, "SELECT DISTINCT TraceId FROM otel.otel_traces_local")
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect();
    assert!(!per_node[0].is_empty() && !per_node[1].is_empty(), "both nodes got traces: {per_node:?}");
    assert!(per_node[0].iter().all(|t| !per_node[1].contains(t)), "a trace is split over nodes");
    assert_no_visible_duplicates(&cluster);
}

#[test]
fn ch_node_killed_under_load_and_restarted_nothing_acknowledged_lost_no_duplicates_visible() {
    let mut cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients = trace_load(&rt, o.http, 3, 0, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(1_500));
    cluster.kill(1);
    wait_for(Duration::from_secs(10), "/readyz 503 while a node is down", || {
        get_status(&rt, o.http, "/readyz") == 503
    });
    std::thread::sleep(Duration::from_millis(1_500));
    let during = acked.lock().unwrap().len();
    cluster.restart(1);
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > during && during > 0, "the load ran before, during and after the outage");
    wait_for(Duration::from_secs(60), "the DLQ replayed and /readyz 200", || {
        metric(&rt, o.http, "otelring_dlq_files") == 0.0 && get_status(&rt, o.http, "/readyz") == 200
    });
    assert!(metric(&rt, o.http, "otelring_dlq_replayed_files_total") > 0.0, "batches went through the DLQ");
    // Client retries of acknowledged requests, with merges stopped so the duplicates stay
    // physically in the tables: FINAL must hide them.
    for i in 0..2 {
        cluster.try_query_node(i, "SYSTEM STOP MERGES").unwrap();
    }
    let resent: Vec<u64> = acked.iter().copied().take(20).collect();
    rt.block_on(async {
        let client = reqwest::Client::new();
        for &n in &resent {
            let r = post_json(&client, o.http, "/v1/traces", load_trace(n, 20)).await;
            assert_eq!(r.map(|r| r.0), Some(200));
        }
    });
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert_eq!(books[0].lost, 0);
    assert_traces_complete(&cluster, acked.iter().copied(), 20, "acknowledged");
    let physical = cluster.count("SELECT count() FROM otel.otel_traces");
    let visible = cluster.count("SELECT count() FROM otel.otel_traces FINAL");
    assert!(physical >= visible + 20 * 20, "the resent spans are stored again ({physical} vs {visible})");
    assert_no_visible_duplicates(&cluster);
    // Every persisted span is visible once; the resent ones count twice in the books.
    assert_eq!(books[0].persisted, visible + 20 * 20, "{:?}", books[0]);
}

#[test]
fn ch_commit_mode_while_a_node_is_down_answers_unavailable_then_stores_the_retries() {
    use crate::floods::{framed, grpc_unary, h2_connect, proto_traces};
    let mut cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[("INGEST_ASYNC_ENABLED", "false")]);
    let rt = runtime();
    cluster.kill(1);
    let http = o.http;
    // One trace per request: shard 1's traces (node 1) fail, shard 0's are stored.
    let answers: Vec<(u64, u16, bool)> = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        for n in 0..40u64 {
            let (s, retry, _) =
                post_json(&client, http, "/v1/traces", load_trace(7_000_000 + n, 3)).await.unwrap();
            out.push((7_000_000 + n, s, retry));
        }
        out
    });
    let failed: Vec<u64> = answers.iter().filter(|a| a.1 == 503).map(|a| a.0).collect();
    assert!(
        answers.iter().all(|a| a.1 == 200 || (a.1 == 503 && a.2)),
        "200 or 503 + Retry-After: {answers:?}"
    );
    assert!(!failed.is_empty() && failed.len() < answers.len(), "both shards were hit: {answers:?}");
    assert_eq!(get_status(&rt, http, "/readyz"), 503);
    // gRPC: UNAVAILABLE (14) for a request that touches the failing node.
    let grpc = o.grpc;
    let statuses: Vec<String> = rt.block_on(async move {
        let client = h2_connect(grpc).await;
        let mut s = Vec::new();
        for i in 0..8u64 {
            let a = grpc_unary(
                &client,
                grpc,
                framed(&proto_traces(8_000_000 + i * 10, 1, 2, "grpc-commit", false)),
            )
            .await
            .unwrap();
            s.push(a.status);
        }
        s
    });
    assert!(statuses.iter().any(|s| s == "14"), "UNAVAILABLE while node 1 is down: {statuses:?}");
    assert!(statuses.iter().all(|s| s == "14" || s == "0"), "{statuses:?}");
    cluster.restart(1);
    // Nothing is in the DLQ in commit mode and no request arrives: the writer's probe alone
    // brings readiness back.
    wait_for(Duration::from_secs(20), "/readyz 200 after the node is back, without traffic", || {
        get_status(&rt, http, "/readyz") == 200
    });
    // The client retries what was refused; commit mode stores it before answering.
    rt.block_on(async {
        let client = reqwest::Client::new();
        for &n in &failed {
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                let (s, _, _) = post_json(&client, http, "/v1/traces", load_trace(n, 3)).await.unwrap();
                if s == 200 {
                    break;
                }
                assert!(Instant::now() < end, "retry of trace {n} still refused");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    assert_traces_complete(&cluster, answers.iter().map(|a| a.0), 3, "after its retry:");
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert_eq!(books[0].dlq_recovered, 0);
    assert!(!o.data.path().join("data/dlq").exists() || dlq_file_count(&o.data.path().join("data/dlq")) == 0);
}

fn dlq_file_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".dlq")).count()
        })
        .unwrap_or(0)
}

/// A JSON logs request of `n` distinct records numbered from `first`.
fn logs_json(first: u64, n: u64, service: &str) -> String {
    let recs: Vec<String> = (first..first + n)
        .map(|i| {
            format!(
                r#"{{"timeUnixNano":"{}","severityNumber":9,"severityText":"INFO","body":{{"stringValue":"line {i}"}},"attributes":[{{"key":"n","value":{{"intValue":"{i}"}}}}]}}"#,
                1_700_000_000_000_000_000u64 + i
            )
        })
        .collect();
    format!(
        r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeLogs":[{{"logRecords":[{}]}}]}}]}}"#,
        recs.join(",")
    )
}

#[test]
fn ch_sigterm_under_load_books_balance_and_persisted_equals_rows_in_the_cluster() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = trace_load(&rt, o.http, 3, 0, stop.clone(), acked.clone());
    let http = o.http;
    {
        let stop = stop.clone();
        clients.push(rt.spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                if post_json(&client, http, "/v1/logs", logs_json(i * 50, 50, "log-load")).await.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let (ok, books) = o.stop();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert!(books[0].persisted > 0 && books[1].persisted > 0, "{books:?}");
    assert_eq!(books[0].lost + books[1].lost, 0);
    assert_eq!(books[0].persisted, cluster.count("SELECT count() FROM otel.otel_traces FINAL"));
    assert_eq!(books[1].persisted, cluster.count("SELECT count() FROM otel.otel_logs FINAL"));
    assert_traces_complete(&cluster, acked.lock().unwrap().iter().copied(), 20, "acknowledged");
    assert_no_visible_duplicates(&cluster);
}

#[test]
fn ch_commit_mode_kill_9_under_load_loses_nothing_acknowledged() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[("INGEST_ASYNC_ENABLED", "false")]);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients = trace_load(&rt, o.http, 4, 0, stop.clone(), acked.clone());
    wait_for(Duration::from_secs(20), "commit-mode acknowledgements under load", || {
        acked.lock().unwrap().len() >= 200
    });
    // SIGKILL mid-load: requests in flight lose their connection (not acknowledged).
    let mut child = o.child.take().expect("running");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    // A commit-mode 200 is sent only after every node acknowledged the group's inserts.
    assert_traces_complete(
        &cluster,
        acked.lock().unwrap().iter().copied(),
        20,
        "after kill -9: acknowledged",
    );
    assert_no_visible_duplicates(&cluster);
}

#[test]
fn ch_two_instances_into_one_cluster_hold_exactly_the_sum_of_their_books() {
    let cluster = Cluster::start();
    let mut a = Otelring::start(&cluster, &[]);
    let mut b = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = trace_load(&rt, a.http, 2, 0, stop.clone(), acked.clone());
    clients.extend(trace_load(&rt, b.http, 2, 50_000_000, stop.clone(), acked.clone()));
    std::thread::sleep(Duration::from_millis(2_500));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let (ok_a, books_a) = a.stop();
    let (ok_b, books_b) = b.stop();
    assert!(ok_a && ok_b, "{}\n{}", a.stderr_text(), b.stderr_text());
    assert_balanced(&books_a);
    assert_balanced(&books_b);
    assert!(books_a[0].persisted > 0 && books_b[0].persisted > 0);
    assert_eq!(
        books_a[0].persisted + books_b[0].persisted,
        cluster.count("SELECT count() FROM otel.otel_traces FINAL"),
        "{books_a:?} {books_b:?}"
    );
    assert!(acked.lock().unwrap().len() as u64 * 20 <= books_a[0].persisted + books_b[0].persisted);
    assert_no_visible_duplicates(&cluster);
}

/// A request whose rows every node refuses (a schema mismatch: a column the insert names is
/// gone) is poison: replay bisects it to its units, moves them to `poison/` and counts them lost;
/// it is not retried forever, and the other rows of the same groups are stored.
#[test]
fn ch_rows_a_node_refuses_for_good_become_poison_not_an_endless_retry() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    for i in 0..2 {
        cluster.try_query_node(i, "ALTER TABLE otel.otel_logs_local DROP COLUMN HasBody").unwrap();
    }
    let rt = runtime();
    let http = o.http;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let (s, _, _) = post_json(&client, http, "/v1/logs", logs_json(0, 12, "poison-svc")).await.unwrap();
        assert_eq!(s, 200);
        let (s, _, _) = post_json(&client, http, "/v1/traces", load_trace(42, 5)).await.unwrap();
        assert_eq!(s, 200);
    });
    wait_for(Duration::from_secs(60), "the refused logs left the DLQ", || {
        metric(&rt, http, "otelring_dlq_files") == 0.0
            && metric(&rt, http, "otelring_ingest_lost_items_total{signal=\"logs\",reason=\"poison\"}")
                >= 12.0
    });
    let (_, books) = o.stop();
    assert_balanced(&books);
    assert_eq!((books[1].persisted, books[1].lost), (0, 12), "{:?}", books[1]);
    assert_eq!(books[0].persisted, 5);
    assert_eq!(cluster.count("SELECT count() FROM otel.otel_traces FINAL"), 5);
    let poison = o.data.path().join("data/dlq/poison");
    assert_eq!(dlq_file_count(&poison), 12, "one poison file per refused record");
}

/// Commit mode: rows every node refuses for good are answered 400 / INVALID_ARGUMENT (the client
/// must not retry them), counted rejected as invalid; other requests are stored.
#[test]
fn ch_commit_mode_rows_a_node_refuses_for_good_get_400_not_a_retry() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[("INGEST_ASYNC_ENABLED", "false")]);
    for i in 0..2 {
        cluster.try_query_node(i, "ALTER TABLE otel.otel_logs_local DROP COLUMN HasBody").unwrap();
    }
    let rt = runtime();
    let http = o.http;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let (s, retry, body) =
            post_json(&client, http, "/v1/logs", logs_json(0, 4, "refused-svc")).await.unwrap();
        assert_eq!((s, retry), (400, false), "{body}");
        assert!(body.contains("refuses"), "{body}");
        let (s, _, _) = post_json(&client, http, "/v1/traces", load_trace(43, 5)).await.unwrap();
        assert_eq!(s, 200);
    });
    assert_eq!(
        metric(&rt, http, "otelring_ingest_rejected_items_total{signal=\"logs\",reason=\"invalid\"}"),
        4.0
    );
    let (_, books) = o.stop();
    assert_balanced(&books);
    assert_eq!(books[0].persisted, 5);
    assert_eq!(cluster.count("SELECT count() FROM otel.otel_traces FINAL"), 5);
    assert_eq!(dlq_file_count(&o.data.path().join("data/dlq")), 0, "commit mode spills nothing");
}

/// Extracts the ```sql blocks of docs/CLICKHOUSE.md.
fn documented_queries() -> Vec<String> {
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CLICKHOUSE.md"))
            .unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match (&mut cur, line.trim()) {
            (None, "```sql") => cur = Some(String::new()),
            (Some(q), "```") => {
                out.push(q.trim().trim_end_matches(';').to_owned());
                cur = None;
            }
            (Some(q), _) => {
                q.push_str(line);
                q.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The data the documented queries are written against (ids and names in docs/CLICKHOUSE.md).
const DOC_TRACE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
 "scopeSpans":[{"scope":{"name":"doc"},"spans":[
 {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"POST /pay","kind":2,
  "startTimeUnixNano":"1765000000000000000","endTimeUnixNano":"1765000000250000000",
  "attributes":[{"key":"http.route","value":{"stringValue":"/pay"}},{"key":"http.status_code","value":{"intValue":"502"}}],
  "status":{"code":2,"message":"upstream failed"}},
 {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","parentSpanId":"eee19b7ec3c1b174","name":"charge","kind":3,
  "startTimeUnixNano":"1765000000010000000","endTimeUnixNano":"1765000000200000000",
  "attributes":[{"key":"http.status_code","value":{"intValue":"200"}}],"status":{}}]}]}]}"#;
const DOC_LOGS: &str = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
 "scopeLogs":[{"logRecords":[{"timeUnixNano":"1765000000100000000","severityNumber":17,"severityText":"ERROR",
 "body":{"stringValue":"card service timed out"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
const DOC_METRICS: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
 "scopeMetrics":[{"metrics":[{"name":"http.server.requests","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,
 "dataPoints":[{"asInt":"10","timeUnixNano":"1765000000000000000","attributes":[{"key":"http.route","value":{"stringValue":"/pay"}}]},
 {"asInt":"25","timeUnixNano":"1765000060000000000","attributes":[{"key":"http.route","value":{"stringValue":"/pay"}}]}]}}]}]}]}"#;

#[test]
fn ch_documented_queries_run_on_the_cluster_and_find_the_data() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let http = o.http;
    rt.block_on(async {
        let client = reqwest::Client::new();
        for (path, body) in [("/v1/traces", DOC_TRACE), ("/v1/logs", DOC_LOGS), ("/v1/metrics", DOC_METRICS)]
        {
            // Twice: the documented queries must not show the retry's duplicates.
            for _ in 0..2 {
                let (s, _, b) = post_json(&client, http, path, body.to_owned()).await.unwrap();
                assert_eq!(s, 200, "{path}: {b}");
            }
        }
    });
    let (ok, _) = o.stop();
    assert!(ok);
    let queries = documented_queries();
    assert!(queries.len() >= 5, "docs/CLICKHOUSE.md has the five example queries: {queries:?}");
    for q in &queries {
        let rows = cluster.try_query_node(1, q).unwrap_or_else(|e| panic!("{q}\n{e}"));
        let rows: Vec<&str> = rows.lines().collect();
        assert!(!rows.is_empty(), "no rows from the documented query:\n{q}");
        // Each query's rows are distinct: the duplicates of the retried requests stay hidden.
        let mut sorted = rows.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), rows.len(), "duplicate rows from:\n{q}\n{rows:?}");
    }
}

/// Start-up refuses a ClickHouse sink it cannot set up, naming the variable to fix.
#[test]
fn ch_bad_sink_settings_stop_the_start_with_the_variable_named() {
    let cluster = Cluster::start();
    let run = |env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(crate::util::server_bin());
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
            .arg("--data-dir")
            .arg(dir.path())
            .env("OTELRING_SINK", "clickhouse");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("OTELRING_CLICKHOUSE_URLS"), "{err}");
    let (code, err) =
        run(&[("OTELRING_CLICKHOUSE_URLS", &cluster.urls()), ("OTELRING_CLICKHOUSE_CLUSTER", "nope")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("OTELRING_CLICKHOUSE_CLUSTER") && err.contains("otel_test"), "{err}");
    let (code, err) = run(&[("OTELRING_SINK", "mysql")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sqlite or clickhouse"), "{err}");
    // A node whose schema is newer than this build is refused, not written into.
    cluster.query("CREATE DATABASE IF NOT EXISTS otel");
    cluster.query("CREATE TABLE IF NOT EXISTS otel.otelring_schema (version UInt32, applied_at DateTime) ENGINE = TinyLog");
    cluster.query("INSERT INTO otel.otelring_schema VALUES (99, now())");
    let (code, err) = run(&[("OTELRING_CLICKHOUSE_URLS", &cluster.urls())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("version 99"), "{err}");
}

/// otelring starts while a node is down: the node's tables are created by its writers once it
/// answers, and what was admitted meanwhile is replayed from the DLQ.
#[test]
fn ch_a_node_down_at_start_is_set_up_later_and_gets_its_rows_from_the_dlq() {
    let mut cluster = Cluster::start();
    cluster.kill(1);
    let mut o = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let http = o.http;
    let acked = post_acked_traces(&rt, http, 3_000_000, 30, 4);
    // (The writer marks the node failing before its spill has written the DLQ file: wait for
    // both.)
    wait_for(
        Duration::from_secs(10),
        "/readyz 503 and shard 1's groups in the DLQ while node 1 is down",
        || get_status(&rt, http, "/readyz") == 503 && metric(&rt, http, "otelring_dlq_files") > 0.0,
    );
    cluster.restart(1);
    wait_for(Duration::from_secs(60), "the DLQ replayed into the new node and /readyz 200", || {
        metric(&rt, http, "otelring_dlq_files") == 0.0 && get_status(&rt, http, "/readyz") == 200
    });
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert_eq!(cluster.try_query_node(1, "EXISTS TABLE otel.otel_traces_local").unwrap().trim(), "1");
    assert_traces_complete(&cluster, acked, 4, "replayed");
    assert_eq!(books[0].persisted, cluster.count("SELECT count() FROM otel.otel_traces FINAL"));
}

/// One data point of each of the five kinds, every column that applies checked in its table.
const KINDS_METRICS: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"kinds"}}]},
 "scopeMetrics":[{"scope":{"name":"kinds-scope"},"metrics":[
 {"name":"g","unit":"By","gauge":{"dataPoints":[{"asDouble":2.5,"timeUnixNano":"1765000000000000001","attributes":[{"key":"host","value":{"stringValue":"a"}}]}]}},
 {"name":"s","sum":{"aggregationTemporality":1,"isMonotonic":false,"dataPoints":[{"asInt":"-7","timeUnixNano":"1765000000000000002","startTimeUnixNano":"1765000000000000000"}]}},
 {"name":"h","histogram":{"aggregationTemporality":1,"dataPoints":[{"count":"3","bucketCounts":["1","2"],"explicitBounds":[0.5],"timeUnixNano":"1765000000000000003"}]}},
 {"name":"eh","exponentialHistogram":{"aggregationTemporality":2,"dataPoints":[{"count":"5","sum":10.5,"scale":2,"zeroCount":"1",
  "positive":{"offset":3,"bucketCounts":["1","2"]},"negative":{"offset":-1,"bucketCounts":["1"]},"min":0.5,"max":4,"timeUnixNano":"1765000000000000004"}]}},
 {"name":"sm","summary":{"dataPoints":[{"count":"4","sum":8.0,"quantileValues":[{"quantile":0.5,"value":1.5},{"quantile":0.99,"value":3.5}],"timeUnixNano":"1765000000000000005"}]}}
 ]}]}]}"#;

#[test]
fn ch_every_metric_kind_lands_in_its_table_with_its_values() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[]);
    let rt = runtime();
    let http = o.http;
    rt.block_on(async {
        let (s, _, b) =
            post_json(&reqwest::Client::new(), http, "/v1/metrics", KINDS_METRICS.to_owned()).await.unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
    });
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert_eq!(books[2].persisted, 5);
    let one = |sql: &str| cluster.rows(sql);
    assert_eq!(
        one(
            "SELECT MetricName, MetricUnit, Value, ValueIsInt, Attributes.values[indexOf(Attributes.keys, 'host')], \
             ScopeName, TimeUnixNano FROM otel.otel_metrics_gauge FINAL WHERE ServiceName = 'kinds'"
        ),
        vec!["g\tBy\t2.5\t0\ta\tkinds-scope\t1765000000000000001"]
    );
    assert_eq!(
        one("SELECT MetricName, Value, ValueIsInt, IsMonotonic, AggregationTemporality, StartTimeUnixNano \
             FROM otel.otel_metrics_sum FINAL WHERE ServiceName = 'kinds'"),
        vec!["s\t-7\t1\t0\tAGGREGATION_TEMPORALITY_DELTA\t1765000000000000000"]
    );
    assert_eq!(
        one("SELECT MetricName, Count, Sum, BucketCounts, ExplicitBounds, Min, Max \
             FROM otel.otel_metrics_histogram FINAL WHERE ServiceName = 'kinds'"),
        vec!["h\t3\t\\N\t[1,2]\t[0.5]\t\\N\t\\N"]
    );
    assert_eq!(
        one(
            "SELECT MetricName, Count, Sum, Scale, ZeroCount, PositiveOffset, PositiveBucketCounts, NegativeOffset, \
             NegativeBucketCounts, Min, Max FROM otel.otel_metrics_exponential_histogram FINAL WHERE ServiceName = 'kinds'"
        ),
        vec!["eh\t5\t10.5\t2\t1\t3\t[1,2]\t-1\t[1]\t0.5\t4"]
    );
    assert_eq!(
        one("SELECT MetricName, Count, Sum, ValueAtQuantiles.Quantile, ValueAtQuantiles.Value \
             FROM otel.otel_metrics_summary FINAL WHERE ServiceName = 'kinds'"),
        vec!["sm\t4\t8\t[0.5,0.99]\t[1.5,3.5]"]
    );
}

/// A node that hangs (SIGSTOP: connections are accepted, nothing is answered) fails the insert
/// at `OTELRING_CLICKHOUSE_INSERT_TIMEOUT`; the group goes to the DLQ. When the node resumes it
/// also executes the inserts that timed out, so the replay stores those rows a second time:
/// `FINAL` shows each once.
#[test]
fn ch_a_hanging_node_times_out_into_the_dlq_and_the_double_insert_stays_invisible() {
    let cluster = Cluster::start();
    let mut o = Otelring::start(&cluster, &[("OTELRING_CLICKHOUSE_INSERT_TIMEOUT", "1s")]);
    let rt = runtime();
    let http = o.http;
    for i in 0..2 {
        cluster.try_query_node(i, "SYSTEM STOP MERGES").unwrap();
    }
    cluster.nodes[1].signal("STOP");
    let acked = post_acked_traces(&rt, http, 4_000_000, 20, 5);
    wait_for(Duration::from_secs(15), "/readyz 503 and a DLQ file while node 1 hangs", || {
        get_status(&rt, http, "/readyz") == 503 && metric(&rt, http, "otelring_dlq_files") > 0.0
    });
    cluster.nodes[1].signal("CONT");
    wait_for(Duration::from_secs(60), "the DLQ replayed and /readyz 200", || {
        metric(&rt, http, "otelring_dlq_files") == 0.0 && get_status(&rt, http, "/readyz") == 200
    });
    let (ok, books) = o.stop();
    assert!(ok, "{}", o.stderr_text());
    assert_balanced(&books);
    assert_traces_complete(&cluster, acked, 5, "replayed");
    let visible = cluster.count("SELECT count() FROM otel.otel_traces FINAL");
    assert_eq!(books[0].persisted, visible);
    let physical = cluster.count("SELECT count() FROM otel.otel_traces");
    assert!(physical > visible, "the timed-out insert ran when the node resumed ({physical} vs {visible})");
    assert_no_visible_duplicates(&cluster);
}
