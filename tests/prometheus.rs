//! The alert rules of `deploy/prometheus/otelring.rules.yml` against the real Prometheus tools
//! (issue 12): `promtool check rules` and `promtool test rules` (the unit tests in
//! `otelring.rules.test.yml`, one firing and one silent case per alert, checked here), and a live
//! Prometheus scraping the release binary driven into the soft and the hard zone by
//! `otelring loadgen`, whose `/api/v1/alerts` must show the right alerts go pending, then firing,
//! and resolve once the load stops.
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package (`.ci/run` installs it).
//! When they are missing these tests fail with a message saying so; they never skip.
//!
//! Run alone: `OTELRING_BIN=target/release/otelring cargo nextest run -E 'test(prometheus::)'
//! --features otelring/loadgen` (the binary must be built with `--features loadgen`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/otelring.rules.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/otelring.rules.test.yml");
const OPERATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md");

/// The path of `name` on `$PATH`; panics (never skips) when it is missing.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: these tests need Debian's `prometheus` package \
             (`apt-get install prometheus`; .ci/run installs it when missing)"
        )
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool");
    let check = run(Command::new(&promtool).args(["check", "rules", RULES]));
    assert!(check.contains("SUCCESS"), "{check}");
    let test = run(Command::new(&promtool).args(["test", "rules", RULE_TESTS]));
    assert!(test.contains("SUCCESS"), "{test}");
}

/// `(alert names, recording rule names, every line)` of the rules file (line-based: the file is
/// written in one regular style, which this test also pins).
fn rule_names() -> (Vec<String>, Vec<String>, String) {
    let text = std::fs::read_to_string(RULES).unwrap();
    let pick = |key: &str| -> Vec<String> {
        text.lines().filter_map(|l| l.trim().strip_prefix(key)).map(|n| n.trim().to_string()).collect()
    };
    (pick("- alert:"), pick("- record:"), text)
}

/// Every alert has a `for:`, a severity, the four annotations, and unit tests both ways: a case
/// where it fires and one where nothing fires (`exp_alerts: []`).
#[test]
fn every_alert_has_for_severity_annotations_and_a_firing_and_a_silent_unit_test() {
    let (alerts, _, text) = rule_names();
    assert!(alerts.len() >= 12, "{alerts:?}");
    // Each alert's block: from its `- alert:` line to the next rule.
    let blocks: Vec<&str> = text.split("- alert:").skip(1).collect();
    assert_eq!(blocks.len(), alerts.len());
    for (name, block) in alerts.iter().zip(&blocks) {
        let block = block.split("- record:").next().unwrap();
        for key in ["for: ", "severity: ", "summary: ", "description: ", "action: ", "runbook: "] {
            assert!(block.contains(key), "{name} has no `{key}`");
        }
        let sev = block.lines().find_map(|l| l.trim().strip_prefix("severity: ")).unwrap().trim();
        assert!(sev == "warning" || sev == "critical", "{name}: severity {sev}");
        let anchor = format!("docs/OPERATIONS.md#{}", name.to_lowercase());
        assert!(block.contains(&anchor), "{name}: runbook is not {anchor}");
        let ops = std::fs::read_to_string(OPERATIONS).unwrap();
        assert!(ops.contains(&format!("### {name}")), "docs/OPERATIONS.md has no `### {name}` section");
    }
    // The unit tests: after each `alertname: X`, the next `exp_alerts:` is either `[]` (silent)
    // or a list (firing).
    let tests = std::fs::read_to_string(RULE_TESTS).unwrap();
    let (mut firing, mut silent) = (Vec::new(), Vec::new());
    let mut current: Option<String> = None;
    for l in tests.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("alertname:") {
            current = Some(n.trim().to_string());
        } else if let Some(rest) = l.strip_prefix("exp_alerts:") {
            let n = current.take().expect("exp_alerts after an alertname");
            if rest.trim() == "[]" { silent.push(n) } else { firing.push(n) }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "{a}: no promtool case where it fires");
        assert!(silent.contains(a), "{a}: no promtool case where it stays silent");
    }
    for a in firing.iter().chain(&silent) {
        assert!(alerts.contains(a), "{a} is tested but is not in the rules");
    }
}

// ------------------------------------------------------------------------------------------
// The live test.

/// Bounded wait for each phase of the live test (the whole test takes 20–30 s here).
const PHASE_TIMEOUT: Duration = Duration::from_secs(25);

/// A blocking HTTP/1.0 GET (HTTP/1.0: Prometheus answers unchunked and closes): (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A `Child` killed and reaped on drop (a failed assertion must not leave processes behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `otelring serve` on port 0 with a temp data dir; stderr collected (the books are printed
/// there at exit).
struct Server {
    child: Reaped,
    http: SocketAddr,
    grpc: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(crate::util::server_bin());
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--workers", "2"])
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = Reaped(cmd.spawn().unwrap());
        // The reader thread ends at the server's exit (EOF); `stop` waits for the books lines.
        let (stderr, _reader, grpc, http) = crate::util::serve_output(&mut child.0);
        Server { child, http, grpc, stderr, _dir: dir }
    }

    /// SIGTERM; the exit must be 0 with the three books balanced.
    fn stop(mut self) {
        crate::util::sigterm(self.child.0.id());
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "no exit 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The stderr reader ends at EOF, right after the exit.
        let end = Instant::now() + Duration::from_secs(5);
        let stderr = loop {
            let s = self.stderr.lock().unwrap().clone();
            if s.lines().filter(|l| l.contains("otelring: books")).count() == 3 || Instant::now() > end {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "exit {status:?}\n{stderr}");
        let books: Vec<&str> = stderr.lines().filter(|l| l.contains("otelring: books")).collect();
        assert_eq!(books.len(), 3, "{stderr}");
        assert!(books.iter().all(|l| l.ends_with(" balanced")), "{books:#?}");
    }
}

/// `otelring loadgen` against `server` over OTLP/HTTP until killed: 500-span requests at `rate`
/// requests/s from 8 calls in flight, ids rewritten on every send. Light on purpose (25k spans/s
/// at 50 requests/s): the zones come from the small caps, not from saturating the machine, so the
/// test does not starve the rest of the suite running beside it.
fn loadgen(server: &Server, rate: &str) -> Reaped {
    let child = Command::new(crate::util::server_bin())
        .args(["loadgen", "--transport", "http", "--signal", "traces", "--requests", "16", "--items", "500"])
        .args(["--concurrency", "8", "--connections", "8", "--rate", rate, "--duration", "120"])
        .arg("--target-http")
        .arg(server.http.to_string())
        .arg("--target-grpc")
        .arg(server.grpc.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Reaped(child)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shipped rules with every range window cut to 4 s and every `for:` to 2 s, so the live
/// test sees pending → firing → resolved within seconds; the production windows (1–15 min) and
/// `for:` durations (1–15 min) are what the promtool unit tests exercise.
fn rules_for_live_test() -> String {
    let text = std::fs::read_to_string(RULES).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        for w in ["1m", "2m", "5m", "10m", "15m"] {
            l = l.replace(&format!("[{w}]"), "[4s]");
        }
        if l.trim_start().starts_with("for: ") {
            let indent = &l[..l.len() - l.trim_start().len()];
            l = format!("{indent}for: 2s");
        }
        assert!(!l.contains("m]"), "a range window the rewrite missed: {l}");
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// A Prometheus started on a free loopback port with its config, rules and TSDB in a temp dir.
struct Prometheus {
    child: Reaped,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("otelring.rules.yml"), rules_for_live_test()).unwrap();
        let mut scrape = String::new();
        for (zone, addr) in targets {
            scrape.push_str(&format!("      - targets: ['{addr}']\n        labels: {{zone: {zone}}}\n"));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [otelring.rules.yml]\n\
             scrape_configs:\n  - job_name: otelring\n    static_configs:\n{scrape}"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus { child: Reaped(child), addr, dir };
        let end = Instant::now() + PHASE_TIMEOUT;
        while !matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
            assert!(Instant::now() < end, "Prometheus not ready in {PHASE_TIMEOUT:?}:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` → its JSON `data`.
    fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) =
            http_get(self.addr, path).unwrap_or_else(|e| panic!("{path}: {e}\n{}", self.log()));
        assert_eq!(status, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// The instant vector of `query` (no spaces or special characters in it).
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={query}"))["result"].as_array().cloned().unwrap_or_default()
    }

    /// Active (pending or firing) alerts as (alertname, zone, state).
    fn alerts(&self) -> Vec<(String, String, String)> {
        let data = self.api("/api/v1/alerts");
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (s(&a["labels"]["alertname"]), s(&a["labels"]["zone"]), s(&a["state"])))
            .collect()
    }

    fn stop(mut self) {
        crate::util::sigterm(self.child.0.id());
        let end = Instant::now() + Duration::from_secs(15);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "Prometheus did not stop in 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every `otelring_*` metric name in `text` (expressions, annotations, prose); names ending in
/// `_` (a prefix in prose) are left out.
fn metric_names_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("otelring_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        if !name.ends_with('_') {
            names.push(name.to_string());
        }
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

/// True when `name` is a metric family (`# TYPE name ...`, e.g. a histogram's base name) or a
/// sample name of the exposition.
fn exported(exposition: &str, name: &str) -> bool {
    exposition.lines().any(|l| {
        l.strip_prefix("# TYPE ").is_some_and(|t| t.split(' ').next() == Some(name))
            || l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
    })
}

#[test]
fn live_prometheus_sees_soft_and_hard_zone_alerts_fire_and_resolve() {
    let started = Instant::now();
    tool("prometheus");
    // soft: any queued batch already counts as the soft zone (threshold 0.0001 of 4096 slots),
    // while the 4096-slot queue never fills: it sheds healthy data and rejects nothing.
    let soft = Server::start(&[("INGEST_PIPELINE_SOFT_THRESHOLD", "0.0001")]);
    // hard: 2 slots for 2 shards, so a request arriving while any batch waits for its writer is
    // rejected as a whole (429 + Retry-After), priority data included.
    let hard = Server::start(&[("INGEST_PIPELINE_QUEUE_SIZE", "2")]);

    // Every metric the rules read is exported by the real server (a misspelt name would make
    // an alert that can never fire).
    let (status, exposition) = http_get(soft.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    for (file, min) in [(RULES, 20), (RULE_TESTS, 20), (OPERATIONS, 15)] {
        let names = metric_names_in(&std::fs::read_to_string(file).unwrap());
        assert!(names.len() >= min, "{file}: {names:?}");
        for n in &names {
            assert!(exported(&exposition, n), "{file} names {n}, which the server does not export");
        }
    }

    let prom = Prometheus::start(&[("soft", soft.http), ("hard", hard.http)]);
    let end = Instant::now() + PHASE_TIMEOUT;
    while prom.query("up==1").len() < 2 {
        assert!(Instant::now() < end, "targets not up:\n{}", prom.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every recording rule yields series for both instances from the real labels (a label
    // mismatch in a binary operation would yield nothing, and the alerts on it never fire).
    let (_, records, _) = rule_names();
    for r in &records {
        let end = Instant::now() + PHASE_TIMEOUT;
        loop {
            let zones: Vec<String> = prom
                .query(r)
                .iter()
                .map(|s| s["metric"]["zone"].as_str().unwrap_or("").to_string())
                .collect();
            if zones.iter().any(|z| z == "soft") && zones.iter().any(|z| z == "hard") {
                break;
            }
            assert!(Instant::now() < end, "recording rule {r} yields no series for both targets: {zones:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let quiet = prom.alerts();
    assert!(quiet.is_empty(), "alerts before any load: {quiet:?}");
    eprintln!("prometheus up, rules recorded: {:.1?}", started.elapsed());

    // Load both; wait for the expected alerts to go pending, then firing.
    let load_started = Instant::now();
    let load_soft = loadgen(&soft, "50");
    let load_hard = loadgen(&hard, "50");
    let expected = [
        ("OtelringSheddingHealthyData", "soft"),
        ("OtelringRejectingData", "hard"),
        ("OtelringClientsThrottled", "hard"),
    ];
    let mut pending_seen = [false; 3];
    let end = Instant::now() + PHASE_TIMEOUT;
    let mut last;
    loop {
        last = prom.alerts();
        // The soft zone never rejects: these must not appear for it at any time.
        for (name, zone, state) in &last {
            assert!(
                !(zone == "soft" && (name == "OtelringRejectingData" || name == "OtelringClientsThrottled")),
                "{name} {state} for the soft-zone server: {last:?}"
            );
        }
        let state = |n: &str, z: &str| last.iter().find(|(a, b, _)| a == n && b == z).map(|t| t.2.clone());
        for (i, (n, z)) in expected.iter().enumerate() {
            pending_seen[i] |= state(n, z).as_deref() == Some("pending");
        }
        if expected.iter().all(|(n, z)| state(n, z).as_deref() == Some("firing")) {
            break;
        }
        assert!(Instant::now() < end, "not all of {expected:?} firing within {PHASE_TIMEOUT:?}: {last:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, e) in expected.iter().enumerate() {
        assert!(pending_seen[i], "{e:?} went firing without being seen pending first");
    }
    eprintln!("firing {:.1?} after the load started: {last:?}", load_started.elapsed());

    // Stop the load: every alert resolves (the 4 s windows empty out).
    drop(load_soft);
    drop(load_hard);
    let load_stopped = Instant::now();
    let end = Instant::now() + PHASE_TIMEOUT;
    loop {
        last = prom.alerts();
        if last.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "alerts still active {PHASE_TIMEOUT:?} after the load stopped: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Quiescent: the books balance in Prometheus too.
    for s in prom.query("otelring:books_imbalance:items") {
        assert_eq!(s["value"][1], "0", "books imbalance after the load: {s}");
    }
    eprintln!("resolved {:.1?} after the load stopped", load_stopped.elapsed());

    // Prometheus first (its keep-alive scrape connections would hold the servers' stop window).
    prom.stop();
    soft.stop();
    hard.stop();
    let took = started.elapsed();
    eprintln!("live Prometheus test: {took:.1?}");
    assert!(took < Duration::from_secs(60), "the live test took {took:?}");
}
