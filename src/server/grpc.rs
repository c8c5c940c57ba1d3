//! OTLP/gRPC on h2 (DESIGN 1.5): the three `Export` methods of the trace, logs and metrics
//! services, unary, one length-prefixed message per call.
//!
//! Per stream: method and content type are checked, `grpc-encoding` must be identity or gzip, the
//! message length from the 5-byte prefix is checked against `OTELRING_MAX_BODY_BYTES` and reserved
//! from the in-flight budget before the rest is read, flow-control capacity is released as DATA is
//! consumed, an empty final DATA frame is accepted. Every failure is a trailers-only response with
//! `grpc-status` and a percent-encoded `grpc-message`; retryable ones carry the RetryInfo in both
//! `grpc-status-details-bin` and `google.rpc.retryinfo-bin` (the Rust and Python SDKs each read
//! only one of them).
//!
//! Per connection ([`ConnState`], shared with OTLP/HTTP): requests a client cancels before their
//! answer are counted against a budget ([`RESET_BURST`], [`RESETS_PER_SEC`]) and a client over it
//! is cut off with GOAWAY(ENHANCE_YOUR_CALM): h2's own guard, `max_pending_accept_reset_streams`,
//! only catches resets that pile up faster than the accept loop takes them, so a rapid-reset
//! client that paces its HEADERS + RST_STREAM pairs would otherwise cost a stream task each,
//! forever (CVE-2023-44487). A connection is closed with GOAWAY after `OTELRING_KEEPALIVE_IDLE`
//! without a request, and at stop; [`GOAWAY_GRACE`] after a GOAWAY a connection with no request
//! in progress is closed even if the client never acknowledges it.

use super::ingest::{Call, Compression, Ingest, inflate};
use super::status::{Failure, bin_header, grpc_message, retry_info_bytes, status_proto, success_proto};
use super::{ConnGuard, ConnLimit, ServerLimits, tenant_of};
use crate::metrics::{RequestRejectReason, Transport};
use crate::otlp::Encoding;
use crate::otlp::grpc_frame;
use crate::pipeline::Signal;
use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Per-stream flow-control window: 1 MiB lets a typical 300 KB–1 MB export arrive in one round
/// trip without waiting for WINDOW_UPDATEs (h2's default 64 KiB needs ~10 on loopback).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Per-connection window: 4 MiB, enough for several concurrent exports on one connection. Memory
/// bound: max connections × this (DESIGN 1.2).
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// Largest DATA frame we accept: 256 KiB (fewer frames per message than the 16 KiB default).
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Largest header block: 64 KiB (metadata is tiny; this stops header floods).
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Pending locally-reset streams kept before the connection is closed (h2 reset-flood guard).
pub const MAX_PENDING_RESETS: usize = 64;
/// Streams the server may reset because of the client's errors (REFUSED_STREAM past the
/// concurrency limit, protocol errors) before the connection is closed with
/// GOAWAY(ENHANCE_YOUR_CALM): h2's default, made explicit.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Requests a client may cancel at once on one connection (RST_STREAM before the answer, or a
/// body cut short) before the connection is cut off: the rapid-reset guard. Two hundred is far
/// above what a client whose exports time out produces (one cancel per export timeout).
pub const RESET_BURST: u32 = 200;
/// Cancellations per second a connection earns back after [`RESET_BURST`] (token bucket).
pub const RESETS_PER_SEC: u32 = 20;
/// After a GOAWAY (stop or idle), a connection with no request in progress is closed this long
/// after even if the client never acknowledges: h2's graceful close waits for the client's PING
/// acknowledgement, so a silent or dead client would otherwise hold its connection slot, and the
/// stop, until the body read timeout.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed accept (EMFILE: out of file descriptors, ENOBUFS, ...) before the next:
/// the listener stays readable, so retrying at once would spin a core until a descriptor frees.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Warnings a flood can trigger (accept failures, connections refused at the limit) are logged
/// at most this often per listener, with the count since the last one.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// One connection's requests in progress, its last activity and its cancellation budget, shared
/// by the connection task and its request tasks (both listeners).
#[derive(Debug)]
pub struct ConnState {
    /// Requests in progress. A counter read for the idle and close decisions only: AcqRel /
    /// Acquire so a decision never sees a request's end before its begin; no data hangs off it.
    active: AtomicUsize,
    last_active: Mutex<Instant>,
    /// The cancellation token bucket: tokens left, last refill.
    resets: Mutex<(f64, Instant)>,
    /// Set once (swap, AcqRel) by the request that runs out of budget; read (Acquire) by the
    /// connection task after `flood` wakes it. No other data is published through it.
    flooding: AtomicBool,
    /// Wakes the connection task when the client goes over its cancellation budget.
    flood: Notify,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            active: AtomicUsize::new(0),
            last_active: Mutex::new(now),
            resets: Mutex::new((f64::from(RESET_BURST), now)),
            flooding: AtomicBool::new(false),
            flood: Notify::new(),
        })
    }

    /// A request begins; it counts as cancelled unless [`RequestGuard::answered`] is called.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard { conn: self.clone(), answered: false }
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// How long the connection has had no request in progress (zero while one is).
    pub fn idle_for(&self) -> Duration {
        if self.active() > 0 {
            return Duration::ZERO;
        }
        self.last_active.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    /// True once the client cancelled more requests than its budget allows.
    pub fn flooding(&self) -> bool {
        self.flooding.load(Ordering::Acquire)
    }

    /// Resolves once the client is over its cancellation budget.
    pub async fn flooded(&self) {
        while !self.flooding() {
            self.flood.notified().await;
        }
    }

    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn cancelled(&self) {
        let mut b = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(b.1).as_secs_f64() * f64::from(RESETS_PER_SEC);
        *b = ((b.0 + earned).min(f64::from(RESET_BURST)), now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
        } else if !self.flooding.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                "client cancelled more than {RESET_BURST} requests (+{RESETS_PER_SEC}/s) on one connection: \
                 closing it (reset flood)"
            );
            self.flood.notify_one();
        }
    }
}

/// A request in progress on a connection; dropped without [`RequestGuard::answered`] it counts
/// as a cancellation against the connection's budget.
#[derive(Debug)]
pub struct RequestGuard {
    conn: Arc<ConnState>,
    answered: bool,
}

impl RequestGuard {
    /// The answer reached the connection (the client did not cancel first).
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.touch();
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        if !self.answered {
            self.conn.cancelled();
        }
    }
}

/// A warning a flood can trigger, logged at most once per [`WARN_INTERVAL`] with the number of
/// occurrences it stands for: a flood must not cost a log line per attempt.
#[derive(Debug, Default)]
pub struct WarnEvery {
    last: Option<Instant>,
    since: u64,
}

impl WarnEvery {
    /// Counts one occurrence; when a warning is due, returns the occurrences it reports.
    pub fn due(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < WARN_INTERVAL) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

/// One listener's accept step, shared by both listeners: the next connection that fits under
/// the connection limit, with `TCP_NODELAY` set (without it a peer loses ~40 ms per call to
/// delayed ACKs). A failed accept (EMFILE, ...) waits [`ACCEPT_BACKOFF`] so a persistent error
/// does not spin a core; a connection over the limit is closed at once; both warn at most once per
/// [`WARN_INTERVAL`]. Cancel-safe (no await between an accept and its return), so it can sit in a
/// `select!` beside the shutdown signal.
#[derive(Debug)]
pub struct Acceptor {
    listener: &'static str,
    conns: Arc<ConnLimit>,
    accept_warn: WarnEvery,
    limit_warn: WarnEvery,
}

impl Acceptor {
    pub fn new(listener: &'static str, conns: Arc<ConnLimit>) -> Self {
        Self { listener, conns, accept_warn: WarnEvery::default(), limit_warn: WarnEvery::default() }
    }

    pub async fn next(&mut self, tcp: &TcpListener) -> (TcpStream, ConnGuard) {
        loop {
            let sock = match tcp.accept().await {
                Ok((sock, _peer)) => sock,
                Err(e) => {
                    if let Some(n) = self.accept_warn.due() {
                        tracing::warn!(
                            error = %e,
                            "{}: accept failed ({n}x since the last warning); retrying every {ACCEPT_BACKOFF:?}",
                            self.listener
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            match self.conns.try_enter() {
                Some(guard) => return (sock, guard),
                None => {
                    if let Some(n) = self.limit_warn.due() {
                        tracing::warn!(
                            "{} connection refused: connection limit reached ({n} refused since the last warning)",
                            self.listener
                        );
                    }
                }
            }
        }
    }
}

/// Method paths of the three OTLP `Export` calls.
pub const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
pub const LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
pub const METRICS: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Accepts gRPC connections until `shutdown` turns true, then closes them gracefully (GOAWAY).
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    limits: Arc<ServerLimits>,
    conns: Arc<ConnLimit>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut acceptor = Acceptor::new("gRPC", conns);
    loop {
        tokio::select! {
            (sock, guard) = acceptor.next(&listener) => {
                let (ingest, limits, shutdown) = (ingest.clone(), limits.clone(), shutdown.clone());
                tokio::spawn(async move {
                    connection(sock, ingest, limits, shutdown).await;
                    drop(guard);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn connection(
    sock: tokio::net::TcpStream,
    ingest: Arc<Ingest>,
    limits: Arc<ServerLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(sock);
    let mut conn = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let state = ConnState::new();
    let mut closing = false;
    let mut aborted = false;
    // Armed once closing: a connection with no request in progress (or aborted) is dropped when
    // it fires, whether or not the client acknowledged the GOAWAY.
    let close = tokio::time::sleep(GOAWAY_GRACE);
    tokio::pin!(close);
    if *shutdown.borrow() {
        closing = true;
        conn.graceful_shutdown();
        close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
    }
    // Idle connections (no request for OTELRING_KEEPALIVE_IDLE) are closed with GOAWAY, so idle or
    // dead peers cannot hold connection slots forever.
    let idle = tokio::time::sleep(limits.keepalive_idle);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let mut guard = state.begin();
                    let (ingest, limits) = (ingest.clone(), limits.clone());
                    tokio::spawn(async move {
                        if stream(req, respond, ingest, limits).await {
                            guard.answered();
                        }
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "gRPC connection error");
                    break;
                }
                None => break,
            },
            () = state.flooded(), if !aborted => {
                aborted = true;
                closing = true;
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
                close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
            }
            () = &mut idle, if !closing => {
                let idle_for = state.idle_for();
                if state.active() == 0 && idle_for >= limits.keepalive_idle {
                    closing = true;
                    conn.graceful_shutdown();
                    close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
                } else {
                    let left = limits.keepalive_idle.saturating_sub(idle_for).max(Duration::from_millis(10));
                    idle.as_mut().reset(tokio::time::Instant::now() + left);
                }
            }
            () = &mut close, if closing => {
                if aborted || state.active() == 0 {
                    break;
                }
                close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
            }
        }
    }
}

/// The method path of `signal`'s Export call.
pub fn path_of(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => TRACES,
        Signal::Logs => LOGS,
        Signal::Metrics => METRICS,
    }
}

fn signal_of(path: &str) -> Option<Signal> {
    match path {
        TRACES => Some(Signal::Traces),
        LOGS => Some(Signal::Logs),
        METRICS => Some(Signal::Metrics),
        _ => None,
    }
}

/// Serves one stream; returns whether its answer reached the connection (false when the client
/// reset the stream first).
async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ingest: Arc<Ingest>,
    limits: Arc<ServerLimits>,
) -> bool {
    let started = Instant::now();
    let Some(signal) = signal_of(req.uri().path()) else {
        let f = Failure::NotFound(format!("unknown method {}", req.uri().path()));
        return trailers_only(&mut respond, &f, &ingest, None);
    };
    let answer = call(signal, req, &ingest, &limits, started).await;
    match answer {
        Ok(body) => {
            let resp = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-encoding", "identity")
                .body(())
                .unwrap_or_default();
            let Ok(mut send) = respond.send_response(resp, false) else { return false };
            let mut framed = Vec::with_capacity(body.len() + 5);
            grpc_frame::encode_frame(false, &body, &mut framed);
            if send.send_data(Bytes::from(framed), false).is_err() {
                return false;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            send.send_trailers(trailers).is_ok()
        }
        Err((f, accept_encoding)) => trailers_only(&mut respond, &f, &ingest, accept_encoding),
    }
}

type CallError = (Failure, Option<&'static str>);

async fn call(
    signal: Signal,
    req: Request<RecvStream>,
    ingest: &Ingest,
    limits: &ServerLimits,
    started: Instant,
) -> Result<Vec<u8>, CallError> {
    let refuse = |reason, f| (ingest.refuse(signal, Transport::Grpc, reason, f), None);
    let headers = req.headers();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    // application/grpc or application/grpc+proto; not grpc-web (a different framing).
    if !(content_type == "application/grpc" || content_type.starts_with("application/grpc+")) {
        return Err(refuse(
            RequestRejectReason::UnsupportedMediaType,
            Failure::UnsupportedMedia(format!("content-type {content_type:?} is not application/grpc")),
        ));
    }
    let compression = match headers.get("grpc-encoding").map(|v| v.to_str().unwrap_or("?")) {
        None | Some("identity") => Compression::Identity,
        Some("gzip") => Compression::Gzip,
        Some(other) => {
            let f = Failure::UnsupportedMedia(format!("grpc-encoding {other:?} is not supported"));
            let (f, _) = refuse(RequestRejectReason::UnsupportedMediaType, f);
            return Err((f, Some("identity,gzip")));
        }
    };
    let tenant = tenant_of(headers, &ingest.decode.default_tenant, limits).map_err(|f| {
        let reason = if matches!(f, Failure::Unauthenticated(_)) {
            RequestRejectReason::Unauthenticated
        } else {
            RequestRejectReason::Invalid
        };
        refuse(reason, f)
    })?;
    if ingest.is_stopping() {
        return Err(refuse(RequestRejectReason::Stopping, Failure::Unavailable("server is stopping".into())));
    }
    let mut body = req.into_body();
    let read = tokio::time::timeout(limits.body_read_timeout, read_message(&mut body, ingest, signal));
    let (message, compressed, mut reservation) = match read.await {
        Ok(r) => r?,
        // A slow link is not bad input: answer retryable, so the client's batch is not lost.
        Err(_) => {
            return Err(refuse(
                RequestRejectReason::Invalid,
                Failure::Unavailable("timed out reading the message; retry".into()),
            ));
        }
    };
    let message = if compressed {
        if compression == Compression::Identity {
            return Err(refuse(
                RequestRejectReason::Invalid,
                Failure::BadRequest("compressed flag set without a grpc-encoding".into()),
            ));
        }
        let inflated = inflate(&message, compression, ingest.max_body, &mut reservation);
        // The wire bytes are not needed past here: free them now, not after the answer (in commit
        // mode that waits for the commit, outside every cap).
        drop(message);
        inflated.map_err(|f| {
            let reason = match f {
                Failure::TooLarge(_) => RequestRejectReason::BodyTooLarge,
                Failure::Throttled(_) => RequestRejectReason::InflightBudget,
                _ => RequestRejectReason::Invalid,
            };
            refuse(reason, f)
        })?
    } else {
        Vec::from(message)
    };
    let call = Call { signal, transport: Transport::Grpc, encoding: Encoding::Protobuf, tenant, started };
    let answer = ingest.export(call, message, reservation).await;
    answer.map(|s| success_proto(&s)).map_err(|f| (f, None))
}

/// Reads the one length-prefixed message of a unary call, releasing flow-control capacity as
/// data is consumed and reserving the message's size in the budget before reading it.
async fn read_message(
    body: &mut RecvStream,
    ingest: &Ingest,
    signal: Signal,
) -> Result<(BytesMut, bool, super::ingest::Reservation), CallError> {
    let refuse = |reason, f| (ingest.refuse(signal, Transport::Grpc, reason, f), None);
    let mut buf = BytesMut::new();
    let mut header: Option<(bool, usize)> = None;
    let mut reservation = None;
    loop {
        let Some(chunk) = body.data().await else { break };
        let chunk = chunk.map_err(|e| {
            refuse(RequestRejectReason::Invalid, Failure::BadRequest(format!("stream error: {e}")))
        })?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if header.is_none() {
            match grpc_frame::parse_prefix(&buf, ingest.max_body as usize) {
                Ok(None) => continue,
                Ok(Some((compressed, len))) => {
                    header = Some((compressed, len));
                    match ingest.budget.try_reserve(len as u64) {
                        Some(r) => reservation = Some(r),
                        None => {
                            return Err(refuse(
                                RequestRejectReason::InflightBudget,
                                Failure::Throttled("in-flight byte budget exhausted; retry later".into()),
                            ));
                        }
                    }
                    buf.reserve(len.saturating_sub(buf.len().saturating_sub(5)));
                }
                Err(e) => {
                    let too_large = matches!(e, grpc_frame::FrameError::TooLarge { .. });
                    let (reason, f) = if too_large {
                        (RequestRejectReason::BodyTooLarge, Failure::TooLarge(e.to_string()))
                    } else {
                        (RequestRejectReason::Invalid, Failure::BadRequest(e.to_string()))
                    };
                    return Err(refuse(reason, f));
                }
            }
        }
        if let Some((_, len)) = header
            && buf.len() > 5 + len
        {
            return Err(refuse(
                RequestRejectReason::Invalid,
                Failure::BadRequest("more than one message in a unary call".into()),
            ));
        }
    }
    match (header, reservation) {
        (Some((compressed, len)), Some(r)) if buf.len() == 5 + len => {
            let message = buf.split_off(5);
            Ok((message, compressed, r))
        }
        _ => Err(refuse(RequestRejectReason::Invalid, Failure::BadRequest("truncated gRPC message".into()))),
    }
}

/// Answers with headers only: `grpc-status`, `grpc-message`, and for retryable failures the
/// RetryInfo in both places clients look. False when the stream is gone (reset by the client).
fn trailers_only(
    respond: &mut SendResponse<Bytes>,
    f: &Failure,
    ingest: &Ingest,
    accept_encoding: Option<&str>,
) -> bool {
    let mut b = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", f.grpc_code().to_string())
        .header("grpc-message", grpc_message(f.message()));
    if f.retryable() {
        b = b
            .header("grpc-status-details-bin", bin_header(&status_proto(f, ingest.retry_after)))
            .header("google.rpc.retryinfo-bin", bin_header(&retry_info_bytes(ingest.retry_after)));
    }
    if let Some(a) = accept_encoding {
        b = b.header("grpc-accept-encoding", a);
    }
    match b.body(()) {
        Ok(resp) => respond.send_response(resp, true).is_ok(),
        Err(_) => false,
    }
}
