//! The network front: OTLP/gRPC on h2 ([`grpc`]) and OTLP/HTTP on hyper ([`http`]), sharing one
//! transport-neutral ingest path ([`ingest`]) and one error → status mapping ([`status`]).
//!
//! Lifecycle ([`run`]): bind both listeners, serve until SIGTERM/SIGINT; then answer new
//! requests UNAVAILABLE / 503 + `Retry-After: 1` for up to [`STOP_GRACE`] (ending early when no
//! connection is open), send GOAWAY / `Connection: close`, let in-flight requests finish, and stop
//! the pipeline (drain within `OTELRING_SHUTDOWN_TIMEOUT`, then spill). A second signal spills
//! at once.

pub mod grpc;
pub mod http;
pub mod ingest;
pub mod status;

use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, StopReport};
use ingest::Ingest;
use status::Failure;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long new requests are refused with UNAVAILABLE / 503 after a stop signal, before the
/// listeners close (DESIGN 1.3); ends as soon as no client connection is open.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Readiness: not ready after this long above the soft threshold (DESIGN 1.5).
pub const NOT_READY_AFTER: Duration = Duration::from_secs(5);
/// Readiness: ready again below this fullness (hysteresis).
pub const READY_BELOW: f64 = 0.8;

/// Limits and auth shared by both listeners.
#[derive(Debug)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub keepalive_idle: Duration,
    pub max_concurrent_streams: u32,
    /// Bearer API key → tenant; empty when auth is off.
    pub api_keys: HashMap<String, String>,
}

/// Counts open connections against `OTELRING_MAX_CONNECTIONS` (both listeners together).
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    max: usize,
}

impl ConnLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), max })
    }
    /// Takes a connection slot, or `None` at the limit.
    pub fn try_enter(self: &Arc<Self>) -> Option<ConnGuard> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| ConnGuard(self.clone()))
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// An open connection's slot; freed on drop.
#[derive(Debug)]
pub struct ConnGuard(Arc<ConnLimit>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tenant of a request: the API key's tenant when keys are configured (a conflicting
/// `x-tenant-id` is refused), else `x-tenant-id`, else the default. Invalid ids (empty, over 64
/// bytes, control characters) are refused.
pub fn tenant_of(
    headers: &::http::HeaderMap,
    default: &str,
    limits: &ServerLimits,
) -> Result<Arc<str>, Failure> {
    let header = headers.get("x-tenant-id").map(|v| v.to_str().map_err(|_| ()));
    let named = match header {
        None => None,
        Some(Ok(t)) => {
            crate::config::validate_tenant(t)
                .map_err(|e| Failure::BadRequest(format!("invalid x-tenant-id: {e}")))?;
            Some(t)
        }
        Some(Err(())) => return Err(Failure::BadRequest("invalid x-tenant-id: not visible ASCII".into())),
    };
    if limits.api_keys.is_empty() {
        return Ok(Arc::from(named.unwrap_or(default)));
    }
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| Failure::Unauthenticated("missing bearer API key".into()))?;
    let bound =
        limits.api_keys.get(key.trim()).ok_or_else(|| Failure::Unauthenticated("unknown API key".into()))?;
    match named {
        Some(t) if t != bound => {
            Err(Failure::Unauthenticated(format!("API key is not valid for tenant {t:?}")))
        }
        _ => Ok(Arc::from(bound.as_str())),
    }
}

/// Readiness with hysteresis: not ready after [`NOT_READY_AFTER`] above the soft threshold
/// (ready again below [`READY_BELOW`]), and while any shard's database or DLQ disk is failing
/// (the writers set and clear those flags per shard, and probe a failed store when no traffic or
/// replay would, so readiness returns once the fault clears).
#[derive(Debug, Default)]
pub struct Readiness {
    not_ready: AtomicBool,
    above_since: std::sync::Mutex<Option<Instant>>,
}

impl Readiness {
    /// Re-evaluates from the pipeline's live state (called on a timer and by `/readyz`).
    pub fn update(&self, pipeline: &Pipeline) {
        let fullness = pipeline.fullness();
        let soft = pipeline.config().soft_threshold;
        let mut above = self.above_since.lock().unwrap_or_else(|p| p.into_inner());
        if fullness >= soft {
            let since = *above.get_or_insert_with(Instant::now);
            if since.elapsed() >= NOT_READY_AFTER {
                self.not_ready.store(true, Ordering::Relaxed);
            }
        } else {
            // Below the threshold the 5 s window starts over; readiness itself only comes back
            // below READY_BELOW (hysteresis).
            *above = None;
            if fullness < READY_BELOW {
                self.not_ready.store(false, Ordering::Relaxed);
            }
        }
    }

    pub fn ready(&self, pipeline: &Pipeline) -> bool {
        let stats = pipeline.stats();
        !self.not_ready.load(Ordering::Relaxed) && !stats.db_failing.any() && !stats.dlq_failing.any()
    }
}

/// Everything the listeners share.
pub struct Shared {
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<ServerLimits>,
    pub readiness: Readiness,
    pub conns: Arc<ConnLimit>,
}

/// Bound listeners, so tests can bind port 0 and read the addresses.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(cfg: &ServerConfig) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(cfg.grpc_addr).await?,
            http: TcpListener::bind(cfg.http_addr).await?,
        })
    }
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.http.local_addr()?))
    }
}

/// Serves until `stop` resolves (the first stop signal), then shuts down as the module doc says
/// and returns the pipeline's stop report. `spill` resolves on a second signal.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Listeners,
    stop: impl std::future::Future<Output = ()>,
    spill: impl std::future::Future<Output = ()> + Send + 'static,
) -> StopReport {
    let (tx, rx) = watch::channel(false);
    let grpc = tokio::spawn(grpc::serve(
        listeners.grpc,
        shared.ingest.clone(),
        shared.limits.clone(),
        shared.conns.clone(),
        rx.clone(),
    ));
    let http = tokio::spawn(http::serve(listeners.http, shared.clone(), rx.clone()));
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            loop {
                t.tick().await;
                shared.readiness.update(&shared.ingest.pipeline);
            }
        })
    };
    stop.await;
    tracing::info!("stop requested: refusing new requests, then closing the listeners");
    shared.ingest.stopping.store(true, Ordering::Release);
    // From here on a second signal turns the drain into a spill, whatever phase we are in.
    let pipeline = shared.ingest.pipeline.clone();
    let spiller = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            spill.await;
            tracing::warn!("second stop signal: spilling what is left to the DLQ");
            pipeline.spill_now();
        })
    };
    let grace_end = Instant::now() + STOP_GRACE;
    while Instant::now() < grace_end && shared.conns.open() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tx.send(true);
    // GOAWAY / Connection: close, then in-flight requests finish; bounded by the body read
    // timeout, so a client that never finishes cannot hold the stop.
    let bound = shared.limits.body_read_timeout;
    if tokio::time::timeout(bound, grpc).await.is_err() || tokio::time::timeout(bound, http).await.is_err() {
        tracing::warn!("listeners did not close within {bound:?}; stopping the pipeline anyway");
    }
    let drain_end = Instant::now() + bound;
    while Instant::now() < drain_end && shared.conns.open() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ticker.abort();
    let report = tokio::task::spawn_blocking(move || pipeline.stop()).await;
    spiller.abort();
    match report {
        Ok(r) => r,
        Err(_) => {
            StopReport { drained_in_time: false, spilled_items: 0, lost_items: 0, elapsed: Duration::ZERO }
        }
    }
}

/// Live values only the server and the store know, for `/metrics`.
struct Live {
    budget: Arc<ingest::Budget>,
    shards: Vec<Arc<crate::store::ShardGauges>>,
}

impl crate::metrics::LiveGauges for Live {
    fn inflight_bytes(&self) -> u64 {
        self.budget.used()
    }
    fn wal_bytes(&self) -> Vec<u64> {
        self.shards.iter().map(|g| g.wal_bytes.load(Ordering::Relaxed)).collect()
    }
    fn dlq_files(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_files.load(Ordering::Relaxed)).sum()
    }
    fn dlq_bytes(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_bytes.load(Ordering::Relaxed)).sum()
    }
    fn dlq_replayed_files(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_replayed_files.load(Ordering::Relaxed)).sum()
    }
    fn dlq_failed(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_replay_failures.load(Ordering::Relaxed)).sum()
    }
    fn dlq_evicted_files(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_evicted_files.load(Ordering::Relaxed)).sum()
    }
    fn dlq_replayed_items(&self) -> u64 {
        self.shards.iter().map(|g| g.dlq_replayed_items.load(Ordering::Relaxed)).sum()
    }
    fn segments(&self) -> Vec<crate::metrics::SegmentValues> {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        self.shards
            .iter()
            .map(|g| crate::metrics::SegmentValues {
                segments: r(&g.segments),
                data_bytes: r(&g.data_bytes),
                active_bytes: r(&g.active_segment_bytes),
                retention_limit_bytes: r(&g.retention_limit_bytes),
                dropped_age: r(&g.retention_segments_age),
                dropped_bytes_limit: r(&g.retention_segments_bytes),
                dropped_bytes: r(&g.retention_dropped_bytes),
                dropped_rows: r(&g.retention_deleted_rows),
                rotations: r(&g.rotations),
                rotation_max_pause_ns: r(&g.rotation_max_pause_ns),
                prev_segment_duplicates: r(&g.prev_segment_duplicates),
            })
            .collect()
    }
}

/// Assembles the shared server state around a started pipeline and its store's gauges.
pub fn build(
    cfg: &ServerConfig,
    decode: crate::config::DecodeConfig,
    pipeline: Arc<Pipeline>,
    shard_gauges: Vec<Arc<crate::store::ShardGauges>>,
) -> Result<Arc<Shared>, crate::config::ConfigError> {
    let api_keys = cfg.api_keys()?;
    let budget = ingest::Budget::new(cfg.max_inflight_bytes);
    let live = Arc::new(Live { budget: budget.clone(), shards: shard_gauges });
    let metrics = Metrics::new(pipeline.stats().clone(), pipeline.clone(), live);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ingest = Arc::new(Ingest {
        pipeline,
        decode: Arc::new(decode),
        metrics: metrics.clone(),
        budget,
        decode_permits: Arc::new(tokio::sync::Semaphore::new(cores)),
        retry_after: cfg.retry_after,
        max_body: cfg.max_body_bytes,
        stopping: AtomicBool::new(false),
    });
    let limits = Arc::new(ServerLimits {
        header_read_timeout: cfg.header_read_timeout,
        body_read_timeout: cfg.body_read_timeout,
        keepalive_idle: cfg.keepalive_idle,
        max_concurrent_streams: cfg.max_concurrent_streams,
        api_keys,
    });
    Ok(Arc::new(Shared {
        ingest,
        metrics,
        limits,
        readiness: Readiness::default(),
        conns: ConnLimit::new(cfg.max_connections),
    }))
}
