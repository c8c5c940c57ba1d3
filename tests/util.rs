//! Shared test helpers: row builders and an in-memory `BatchWriter` with fault injection.

#![allow(dead_code)]

use otelring::config::PipelineConfig;
use otelring::pipeline::batch::{
    LogRow, MetricKind, MetricPointRow, NumberValue, Received, Request, Rows, SpanId, SpanKind, SpanRow,
    StatusCode, TraceGroup, TraceId, TraceRow,
};
use otelring::pipeline::{Batch, BatchWriter, Group, Pipeline, RowRef, Stats, WriteError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A trace id unique per `n` (big-endian counter in the last 8 bytes, a tag in the first).
pub fn trace_id(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[0] = 0xab;
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId(b)
}

pub fn span_id(n: u64) -> SpanId {
    SpanId(n.to_be_bytes())
}

/// One trace group of `spans` spans (the first is the root); `error` marks the last span ERROR
/// and sets the trace's priority flag, as the decoder would.
pub fn trace_group(tenant: &str, n: u64, spans: usize, error: bool) -> TraceGroup {
    let tenant: Arc<str> = Arc::from(tenant);
    let service: Arc<str> = Arc::from("checkout");
    let res: Arc<str> = Arc::from(r#"{"service.name":"checkout"}"#);
    let scope: Arc<str> = Arc::from("test-scope");
    let tid = trace_id(n);
    let spans: Vec<SpanRow> = (0..spans)
        .map(|i| SpanRow {
            tenant_id: tenant.clone(),
            trace_id: tid,
            span_id: span_id(n * 1_000 + i as u64 + 1),
            parent_span_id: if i == 0 { None } else { Some(span_id(n * 1_000 + 1)) },
            name: format!("span-{i}"),
            kind: SpanKind::Server,
            service_name: service.clone(),
            start_time_unix_nano: 1_000_000_000 + i as i64,
            end_time_unix_nano: 2_000_000_000 + i as i64,
            status_code: if error && i + 1 == spans { StatusCode::Error } else { StatusCode::Ok },
            status_message: String::new(),
            attributes: format!(r#"{{"http.method":"GET","i":{i}}}"#),
            resource_attributes: res.clone(),
            scope_name: scope.clone(),
        })
        .collect();
    let logs = if error {
        vec![LogRow {
            tenant_id: tenant.clone(),
            time_unix_nano: 2_000_000_000,
            observed_time_unix_nano: 2_000_000_000,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(format!("span 'span-{}' failed", spans.len().saturating_sub(1))),
            trace_id: Some(tid),
            span_id: spans.last().map(|s| s.span_id),
            service_name: service.clone(),
            attributes: "{}".into(),
            resource_attributes: res.clone(),
            scope_name: scope.clone(),
            priority: true,
        }]
    } else {
        Vec::new()
    };
    TraceGroup {
        trace: TraceRow {
            tenant_id: tenant,
            trace_id: tid,
            service_name: service,
            has_root: true,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 2_000_000_000 + spans.len() as i64,
            status: if error { StatusCode::Error } else { StatusCode::Ok },
            priority: error,
        },
        spans,
        logs,
    }
}

/// A traces request of `traces` traces × `spans` spans, ids starting at `first`; the traces whose
/// index is in `errors` are error (priority) traces.
pub fn traces_request(first: u64, traces: u64, spans: usize, errors: &[u64]) -> Request {
    let groups = (0..traces).map(|i| trace_group("default", first + i, spans, errors.contains(&i))).collect();
    Request::new(Rows::Traces(groups), Received::now())
}

pub fn log_row(n: u64, severity: i32, with_trace: bool) -> LogRow {
    LogRow {
        tenant_id: Arc::from("default"),
        time_unix_nano: 1_000 + n as i64,
        observed_time_unix_nano: 1_000 + n as i64,
        severity_number: severity,
        severity_text: if severity >= 17 { "ERROR".into() } else { "INFO".into() },
        body: Some(format!("log line {n}")),
        trace_id: with_trace.then(|| trace_id(n)),
        span_id: None,
        service_name: Arc::from(format!("svc-{}", n % 7).as_str()),
        attributes: "{}".into(),
        resource_attributes: Arc::from("{}"),
        scope_name: Arc::from(""),
        priority: severity >= 17,
    }
}

pub fn logs_request(first: u64, n: u64, severity: i32) -> Request {
    let rows = (first..first + n).map(|i| log_row(i, severity, i % 2 == 0)).collect();
    Request::new(Rows::Logs(rows), Received::now())
}

pub fn metric_point(n: u64) -> MetricPointRow {
    MetricPointRow {
        tenant_id: Arc::from("default"),
        service_name: Arc::from(format!("svc-{}", n % 5).as_str()),
        name: Arc::from("requests"),
        description: Arc::from(""),
        unit: Arc::from("1"),
        kind: MetricKind::Gauge,
        temporality: None,
        is_monotonic: None,
        time_unix_nano: n as i64,
        start_time_unix_nano: 0,
        value: Some(NumberValue::Int(n as i64)),
        count: None,
        sum: None,
        min: None,
        max: None,
        bucket_counts: None,
        explicit_bounds: None,
        scale: None,
        zero_count: None,
        positive_offset: None,
        positive_bucket_counts: None,
        negative_offset: None,
        negative_bucket_counts: None,
        quantiles: None,
        attributes: "{}".into(),
        resource_attributes: Arc::from("{}"),
        scope_name: Arc::from(""),
    }
}

pub fn metrics_request(first: u64, n: u64) -> Request {
    Request::new(Rows::Metrics((first..first + n).map(metric_point).collect()), Received::now())
}

/// What the in-memory writer stored, in commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Trace(String),
    Span(String, String),
    Log(String),
    Point(i64),
}

/// Shared state of the in-memory writers, with fault injection.
#[derive(Default)]
pub struct MemShared {
    /// (shard, row) in commit order.
    pub rows: Mutex<Vec<(usize, Stored)>>,
    pub groups: AtomicUsize,
    /// Batches per group, in commit order.
    pub group_sizes: Mutex<Vec<usize>>,
    /// Fail this many upcoming writes.
    pub fail_writes: AtomicUsize,
    /// Refuse this many upcoming writes for good (`WriteError::Refused`: rows the database will
    /// never take).
    pub refuse_writes: AtomicUsize,
    /// Panic in this many upcoming writes.
    pub panic_writes: AtomicUsize,
    /// Fail every write of a group that holds a trace with this id (a poison batch).
    pub poison_trace: Mutex<Option<TraceId>>,
    /// Fail this many upcoming spills.
    pub fail_spills: AtomicUsize,
    /// Items handed to `spill`, per signal index.
    pub spilled_items: [AtomicUsize; 3],
    /// While true, writers block at the start of `write`.
    pub held: Mutex<bool>,
    pub held_cv: Condvar,
    /// Writers currently blocked in `write`.
    pub blocked: AtomicUsize,
    /// What the writers answer to `BatchWriter::linger` (zero by default, as the SQLite sink).
    pub linger: Mutex<std::time::Duration>,
}

impl MemShared {
    pub fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }
    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.held_cv.notify_all();
    }
    pub fn spans(&self) -> Vec<(usize, String, String)> {
        self.rows
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(s, r)| match r {
                Stored::Span(t, sp) => Some((*s, t.clone(), sp.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn count(&self, f: impl Fn(&Stored) -> bool) -> usize {
        self.rows.lock().unwrap().iter().filter(|(_, r)| f(r)).count()
    }
}

pub struct MemWriter {
    pub shard: usize,
    pub shared: Arc<MemShared>,
}

impl BatchWriter for MemWriter {
    fn write(&mut self, group: &Group) -> Result<(), WriteError> {
        {
            let mut held = self.shared.held.lock().unwrap();
            if *held {
                self.shared.blocked.fetch_add(1, Ordering::SeqCst);
                while *held {
                    held = self.shared.held_cv.wait(held).unwrap();
                }
                self.shared.blocked.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if take_one(&self.shared.panic_writes) {
            panic!("injected writer panic");
        }
        if take_one(&self.shared.fail_writes) {
            return Err(WriteError::Database("injected failure".into()));
        }
        if take_one(&self.shared.refuse_writes) {
            return Err(WriteError::Refused("injected refusal".into()));
        }
        if let Some(p) = *self.shared.poison_trace.lock().unwrap()
            && group.trace_rows().any(|t| t.trace_id == p)
        {
            return Err(WriteError::Database("poison row".into()));
        }
        let mut out = Vec::with_capacity(group.rows());
        for r in group.rows_in_fk_order() {
            out.push((
                self.shard,
                match r {
                    RowRef::Trace(t) => Stored::Trace(t.trace_id.to_hex()),
                    RowRef::Span(s) => Stored::Span(s.trace_id.to_hex(), s.span_id.to_hex()),
                    RowRef::Log(l) => Stored::Log(l.body.clone().unwrap_or_default()),
                    RowRef::MetricPoint(m) => Stored::Point(m.time_unix_nano),
                },
            ));
        }
        self.shared.rows.lock().unwrap().extend(out);
        self.shared.group_sizes.lock().unwrap().push(group.len());
        self.shared.groups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn linger(&self) -> std::time::Duration {
        *self.shared.linger.lock().unwrap()
    }

    fn spill(&mut self, batches: &[Batch], _cause: &WriteError) -> Result<(), WriteError> {
        if take_one(&self.shared.fail_spills) {
            return Err(WriteError::Spill("injected spill failure".into()));
        }
        for b in batches {
            self.shared.spilled_items[b.signal().index()].fetch_add(b.items as usize, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn take_one(c: &AtomicUsize) -> bool {
    c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

/// A small test configuration.
pub fn small_config(shards: usize, queue: u64, max_bytes: u64) -> PipelineConfig {
    PipelineConfig {
        shards,
        queue_size: queue,
        max_bytes,
        soft_threshold: 0.9,
        writer_max_delay: Duration::from_millis(5),
        shutdown_timeout: Duration::from_secs(10),
        ..PipelineConfig::default()
    }
}

/// One group of shard 0 holding a batch per `rows`, all received at `at` (unix ns): what a
/// writer gets from its lanes, built directly for the store's own tests.
pub fn group_of(rows: Vec<Rows>, at: i64) -> Group {
    Group::from(
        rows.into_iter()
            .map(|r| Batch::new(0, r, Received { instant: std::time::Instant::now(), unix_nano: at }))
            .collect::<Vec<_>>(),
    )
}

/// Drains `child`'s stderr into a shared string on a thread until EOF (a full pipe would block
/// the server), then reads its first stdout line, "otelring listening: OTLP/gRPC on A,
/// OTLP/HTTP on B; ...", and returns the text, the reader thread and (gRPC, HTTP) addresses.
#[allow(clippy::type_complexity)]
pub fn serve_output(
    child: &mut std::process::Child,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>, std::net::SocketAddr, std::net::SocketAddr) {
    use std::io::BufRead;
    let stderr = Arc::new(Mutex::new(String::new()));
    let drain = {
        let mut pipe = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                stderr.lock().unwrap().push_str(&line);
                line.clear();
            }
        })
    };
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped")).read_line(&mut line).unwrap();
    let addr = |after: &str, until: char| -> std::net::SocketAddr {
        let Some(rest) = line.split(after).nth(1) else {
            panic!("no listening line: {line:?}\n{}", stderr.lock().unwrap())
        };
        rest.split(until).next().unwrap().parse().unwrap()
    };
    let (grpc, http) = (addr("OTLP/gRPC on ", ','), addr("OTLP/HTTP on ", ';'));
    (stderr, drain, grpc, http)
}

/// Now as unix nanoseconds.
pub fn now_ns() -> i64 {
    Received::now().unix_nano
}

/// A started pipeline with in-memory writers.
pub fn started(cfg: PipelineConfig) -> (Pipeline, Arc<MemShared>) {
    let (p, shared) = unstarted(cfg);
    start(&p, &shared);
    (p, shared)
}

pub fn unstarted(cfg: PipelineConfig) -> (Pipeline, Arc<MemShared>) {
    let p = Pipeline::new(cfg, Arc::new(Stats::new())).expect("valid config");
    (p, Arc::new(MemShared::default()))
}

pub fn start(p: &Pipeline, shared: &Arc<MemShared>) {
    let writers: Vec<Box<dyn BatchWriter>> = (0..p.config().shards)
        .map(|shard| Box::new(MemWriter { shard, shared: shared.clone() }) as Box<dyn BatchWriter>)
        .collect();
    p.start(writers).expect("start");
}

/// Waits until `f` holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// The server binary the end-to-end and reliability tests start: `$OTELRING_BIN` when set
/// (`.ci/test` points it at the release build, which is what users run), else the debug binary
/// cargo built for these tests.
pub fn server_bin() -> std::path::PathBuf {
    match std::env::var_os("OTELRING_BIN") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(env!("CARGO_BIN_EXE_otelring")),
    }
}

/// Sends SIGTERM to process `pid` (the graceful stop), asserting it was delivered.
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}: {status:?}");
}
