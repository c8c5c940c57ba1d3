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

use super::ingest::{Call, Compression, Ingest, inflate};
use super::status::{Failure, bin_header, grpc_message, retry_info_bytes, status_proto, success_proto};
use super::{ConnLimit, ServerLimits, tenant_of};
use crate::metrics::{RequestRejectReason, Transport};
use crate::otlp::Encoding;
use crate::otlp::grpc_frame;
use crate::pipeline::Signal;
use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((sock, _peer)) = accepted else { continue };
                // Without TCP_NODELAY a peer loses ~40 ms per call to delayed ACKs.
                let _ = sock.set_nodelay(true);
                let Some(guard) = conns.try_enter() else {
                    tracing::warn!("gRPC connection refused: connection limit reached");
                    continue;
                };
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
        .handshake::<_, Bytes>(sock);
    let mut conn = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let mut closing = *shutdown.borrow();
    if closing {
        conn.graceful_shutdown();
    }
    // Idle connections (no stream for OTELRING_KEEPALIVE_IDLE) are closed with GOAWAY, so idle or
    // dead peers cannot hold connection slots forever.
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let idle = tokio::time::sleep(limits.keepalive_idle);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.keepalive_idle);
                    let (ingest, limits, active) = (ingest.clone(), limits.clone(), active.clone());
                    active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(async move {
                        stream(req, respond, ingest, limits).await;
                        active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "gRPC connection error");
                    break;
                }
                None => break,
            },
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                if active.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    closing = true;
                    conn.graceful_shutdown();
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.keepalive_idle);
                }
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

async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ingest: Arc<Ingest>,
    limits: Arc<ServerLimits>,
) {
    let started = Instant::now();
    let Some(signal) = signal_of(req.uri().path()) else {
        let f = Failure::NotFound(format!("unknown method {}", req.uri().path()));
        trailers_only(&mut respond, &f, &ingest, None);
        return;
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
            let Ok(mut send) = respond.send_response(resp, false) else { return };
            let mut framed = Vec::with_capacity(body.len() + 5);
            grpc_frame::encode_frame(false, &body, &mut framed);
            if send.send_data(Bytes::from(framed), false).is_err() {
                return;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
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
        inflate(&message, compression, ingest.max_body, &mut reservation).map_err(|f| {
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
/// RetryInfo in both places clients look.
fn trailers_only(
    respond: &mut SendResponse<Bytes>,
    f: &Failure,
    ingest: &Ingest,
    accept_encoding: Option<&str>,
) {
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
    if let Ok(resp) = b.body(()) {
        let _ = respond.send_response(resp, true);
    }
}
