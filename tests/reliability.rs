//! Reliability under crashes: the real binary is killed with SIGKILL while clients send at full
//! speed, again and again on the same data directory. Every shard must pass
//! `PRAGMA integrity_check`, the server must restart and accept traffic, and in commit mode every
//! acknowledged span must be in SQLite after the crash.

use crate::e2e::load_trace;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Starts the binary on `dir` and returns it with its HTTP address.
fn spawn(dir: &Path, extra_env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(crate::util::server_bin());
    cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let http = line.split("OTLP/HTTP on ").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    (child, http)
}

/// Sends distinct 20-span traces from 3 clients until `stop`; returns the spans acknowledged in
/// full (200 without partial success), by trace number.
fn load(
    http: SocketAddr,
    first: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<u64>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..3u64)
        .map(|c| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let client = reqwest::Client::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let n = first + c * 1_000_000 + i;
                        i += 1;
                        let sent = client
                            .post(format!("http://{http}/v1/traces"))
                            .header("content-type", "application/json")
                            .body(load_trace(n, 20))
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await;
                        let Ok(resp) = sent else { break };
                        if resp.status() == 200 {
                            let body = resp.bytes().await.unwrap_or_default();
                            if body.as_ref() == b"{}" {
                                acked.lock().unwrap().push(n);
                            }
                        }
                    }
                });
            })
        })
        .collect()
}

/// Spans stored for trace `id` (hex) of the default tenant.
fn spans_of_trace(conn: &rusqlite::Connection, id: &str) -> i64 {
    conn.query_row("SELECT count(*) FROM spans WHERE tenant_id = 'default' AND trace_id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Every segment file of every shard and the catalog pass `PRAGMA integrity_check`, and every
/// shard has its first segment; returns how many segment files there are.
fn integrity_ok(dir: &Path, shards: usize) -> usize {
    let mut files = vec![dir.join(otelring::store::catalog::CATALOG_FILE)];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if otelring::store::segment::parse_segment_file_name(&name).is_some() {
            files.push(e.path());
        }
    }
    for i in 0..shards {
        assert!(files.iter().any(|f| f.ends_with(format!("otelring-{i}.db"))), "shard {i}'s first segment");
    }
    for path in &files {
        let conn = rusqlite::Connection::open(path).unwrap();
        let r: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(r, "ok", "{}", path.display());
    }
    files.len() - 1
}

fn kill9(child: &mut Child) {
    assert!(Command::new("kill").arg("-KILL").arg(child.id().to_string()).status().unwrap().success());
    let _ = child.wait();
}

/// 8 MiB segments: the load rotates them several times a second, so the kills land before,
/// during and after rotations (a spare prepared, the catalog switched, a sealed segment still
/// being checkpointed and closed).
const CRASH_SEGMENT_ENV: [(&str, &str); 1] = [("OTELRING_SEGMENT_MAX_BYTES", "8MiB")];

#[test]
fn kill_9_under_load_five_times_leaves_sound_shards_that_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spans_before_last = Arc::new(AtomicU64::new(0));
    for round in 0..5u64 {
        let (mut child, http) = spawn(dir.path(), &CRASH_SEGMENT_ENV);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let clients = load(http, round * 10_000_000, stop.clone(), acked.clone());
        std::thread::sleep(Duration::from_millis(700));
        kill9(&mut child);
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            let _ = c.join();
        }
        assert!(!acked.lock().unwrap().is_empty(), "round {round}: the load ran");
        let segments = integrity_ok(dir.path(), 2);
        eprintln!("round {round}: {segments} segment files");
        let conn = otelring::store::sql::open_read_only(dir.path()).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
        assert!(n as u64 >= spans_before_last.load(Ordering::SeqCst), "committed rows never disappear");
        // The async-mode loss window: acknowledged (admitted) but not yet committed at the kill.
        let acked = acked.lock().unwrap().clone();
        let mut lost = 0;
        for t in &acked {
            let id = format!("{t:032x}");
            let c: i64 = spans_of_trace(&conn, &id);
            lost += 20 - c;
        }
        eprintln!(
            "round {round}: {} spans acknowledged, {lost} of them not committed at kill -9",
            acked.len() * 20
        );
        spans_before_last.store(n as u64, Ordering::SeqCst);
    }
    // Rotations happened under the kills (more segments than the 2 first ones).
    assert!(integrity_ok(dir.path(), 2) > 2, "the load rotated segments");
    // A sixth start accepts traffic and stops cleanly.
    let (mut child, http) = spawn(dir.path(), &CRASH_SEGMENT_ENV);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{http}/v1/traces"))
            .header("content-type", "application/json")
            .body(load_trace(999_999_999, 3))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    crate::util::sigterm(child.id());
    assert!(child.wait().unwrap().success());
    integrity_ok(dir.path(), 2);
}

#[test]
fn commit_mode_loses_nothing_acknowledged_on_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = spawn(dir.path(), &[("INGEST_ASYNC_ENABLED", "false")]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients = load(http, 0, stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(1_000));
    kill9(&mut child);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the load ran");
    integrity_ok(dir.path(), 2);
    let conn = otelring::store::sql::open_read_only(dir.path()).unwrap();
    for n in &acked {
        let id = format!("{n:032x}");
        let c: i64 = spans_of_trace(&conn, &id);
        assert_eq!(c, 20, "acknowledged trace {id} lost after kill -9 in commit mode");
    }
}

/// A JSON request of 10 five-span traces numbered from `first`; trace `first` has an ERROR
/// span (priority), the other nine are healthy.
fn mixed_request(first: u64) -> String {
    let mut spans = Vec::new();
    for t in first..first + 10 {
        for i in 0..5u64 {
            let status = if t == first && i == 4 { r#"{"code":2,"message":"boom"}"# } else { "{}" };
            spans.push(format!(
                r#"{{"traceId":"{t:032x}","spanId":"{:016x}","name":"op","kind":2,"startTimeUnixNano":"1000","endTimeUnixNano":"2000","status":{status},"attributes":[{{"key":"k","value":{{"stringValue":"{}"}}}}]}}"#,
                t * 16 + i + 1,
                "v".repeat(200)
            ));
        }
    }
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"overload"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

#[test]
fn overload_sheds_healthy_data_keeps_every_acknowledged_priority_trace_and_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    // A small byte cap (a few requests' rows) so 4 clients that are answered at admission
    // outrun the writers: the soft zone sheds healthy traces, and full queues throttle.
    let (mut child, http) =
        spawn(dir.path(), &[("OTELRING_MAX_BODY_BYTES", "128KiB"), ("INGEST_PIPELINE_MAX_BYTES", "256KiB")]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_priority = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let (dropped, throttled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (stop, acked, dropped, throttled) =
                (stop.clone(), acked_priority.clone(), dropped.clone(), throttled.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let first = (c * 1_000_000 + i) * 10;
                    i += 1;
                    let Ok(resp) = client
                        .post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/json")
                        .body(mixed_request(first))
                        .send()
                        .await
                    else {
                        break;
                    };
                    match resp.status().as_u16() {
                        200 => {
                            let body = resp.bytes().await.unwrap_or_default();
                            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            let d: u64 = v["partialSuccess"]["rejectedSpans"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            assert!(d <= 45, "only the 45 healthy spans may be dropped, got {d}");
                            dropped.fetch_add(d, Ordering::SeqCst);
                            acked.lock().unwrap().push(first);
                        }
                        429 => {
                            assert!(resp.headers().contains_key("retry-after"));
                            throttled.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();
    // /healthz stays responsive throughout.
    let health = {
        let stop = stop.clone();
        rt.spawn(async move {
            let client = reqwest::Client::new();
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let t = std::time::Instant::now();
                let r = client.get(format!("http://{http}/healthz")).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            worst
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let worst = rt.block_on(health).unwrap();
    assert!(worst < Duration::from_secs(2), "/healthz took {worst:?}");
    assert!(
        dropped.load(Ordering::SeqCst) + throttled.load(Ordering::SeqCst) > 0,
        "the load overloaded the server (soft zone or full)"
    );
    crate::util::sigterm(child.id());
    assert!(child.wait().unwrap().success());
    let conn = otelring::store::sql::open_read_only(dir.path()).unwrap();
    let acked = acked_priority.lock().unwrap().clone();
    for first in &acked {
        let id = format!("{first:032x}");
        let n: i64 = spans_of_trace(&conn, &id);
        assert_eq!(n, 5, "acknowledged priority trace {id} incomplete");
    }
    eprintln!(
        "overload: {} requests acknowledged, {} healthy spans dropped, {} throttled, worst /healthz {worst:?}",
        acked.len(),
        dropped.load(Ordering::SeqCst),
        throttled.load(Ordering::SeqCst)
    );
}

/// A client retry that reaches the release binary after its segment rotated (age limit 1 s):
/// the spans are not stored again, and neither is the ERROR log made from the failed span.
#[test]
fn a_retry_that_crosses_a_rotation_is_stored_once_with_one_error_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = spawn(dir.path(), &[("OTELRING_SEGMENT_MAX_AGE", "1s")]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = 7_000_000_000u64;
    let (rotations, dups) = rt.block_on(async {
        let client = reqwest::Client::new();
        let post = || async {
            let r = client
                .post(format!("http://{http}/v1/traces"))
                .header("content-type", "application/json")
                .body(mixed_request(first))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert_eq!(r.text().await.unwrap(), "{}");
        };
        let metric = |name: &'static str| {
            let client = client.clone();
            async move {
                let text =
                    client.get(format!("http://{http}/metrics")).send().await.unwrap().text().await.unwrap();
                text.lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            }
        };
        post().await;
        // Every shard that holds a trace of the request rotates once its segment is 1 s old.
        let t = std::time::Instant::now();
        while metric("otelring_store_segment_rotations_total").await < 1.0 {
            assert!(t.elapsed() < Duration::from_secs(20), "no rotation within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        post().await;
        let t = std::time::Instant::now();
        while metric("otelring_ingest_persisted_items_total{signal=\"traces\"").await < 100.0 {
            assert!(t.elapsed() < Duration::from_secs(20), "the retry was not committed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (
            metric("otelring_store_segment_rotations_total").await,
            metric("otelring_store_prev_segment_duplicate_spans_total").await,
        )
    });
    crate::util::sigterm(child.id());
    assert!(child.wait().unwrap().success());
    assert!(rotations >= 1.0);
    assert_eq!(dups, 50.0, "every span of the retry was found in the previous segment");
    let conn = otelring::store::sql::open_read_only(dir.path()).unwrap();
    let spans: i64 = conn.query_row("SELECT count(*) FROM spans", [], |r| r.get(0)).unwrap();
    assert_eq!(spans, 50, "the retry stored no span twice");
    let logs: i64 = conn
        .query_row("SELECT count(*) FROM logs WHERE trace_id = ?1", [format!("{first:032x}")], |r| r.get(0))
        .unwrap();
    assert_eq!(logs, 1, "one ERROR log for the failed span, not one per delivery");
    let traces: i64 = conn.query_row("SELECT count(*) FROM traces", [], |r| r.get(0)).unwrap();
    assert_eq!(traces, 10, "one logical row per trace across the segments");
}
