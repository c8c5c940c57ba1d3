//! OTLP/HTTP on hyper (HTTP/1.1 and h2c on one listener, DESIGN 1.5): `POST /v1/traces`,
//! `/v1/logs`, `/v1/metrics` in protobuf or JSON (by `Content-Type`, parameters accepted), gzip
//! and deflate bodies, and on the same listener `GET /metrics`, `/healthz`, `/readyz`.
//!
//! A body's size is reserved from the in-flight budget before it is read (`Content-Length`, or
//! grown chunk by chunk), checked against `OTELRING_MAX_BODY_BYTES` while reading and while
//! inflating. Errors are `google.rpc.Status` bodies encoded like the request.
//!
//! Connections are managed as on the gRPC listener ([`super::grpc::ConnState`]): closed with
//! GOAWAY / `Connection: close` after `OTELRING_KEEPALIVE_IDLE` without a request (hyper's h2
//! keep-alive only pings, so an idle h2c client that answers pings would keep its connection slot
//! forever) and at stop, dropped [`super::grpc::GOAWAY_GRACE`] later when no request is in
//! progress, and cut off when the client cancels more requests than its budget (rapid reset).

use super::grpc::{Acceptor, ConnState, GOAWAY_GRACE};
use super::ingest::{Call, Compression, Reservation, inflate};
use super::status::{Failure, status_json, status_proto, success_json, success_proto};
use super::{Shared, tenant_of};
use crate::metrics::{RequestRejectReason, Transport};
use crate::otlp::Encoding;
use crate::pipeline::Signal;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

type Resp = Response<Full<Bytes>>;

/// Marks a response to a request whose body the client cut short (stream reset, connection
/// closed): it counts as a cancellation, not an answer.
#[derive(Clone, Copy, Debug)]
struct Cancelled;

/// Accepts HTTP connections until `shutdown` turns true, then shuts them down gracefully.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.limits.max_concurrent_streams)
        .initial_stream_window_size(super::grpc::STREAM_WINDOW)
        .initial_connection_window_size(super::grpc::CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(super::grpc::MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(super::grpc::MAX_LOCAL_ERROR_RESETS))
        .keep_alive_interval(Some(shared.limits.keepalive_idle))
        .keep_alive_timeout(Duration::from_secs(20));
    let mut connections = tokio::task::JoinSet::new();
    let mut acceptor = Acceptor::new("HTTP", shared.conns.clone());
    loop {
        tokio::select! {
            (sock, guard) = acceptor.next(&listener) => {
                let state = ConnState::new();
                let s = shared.clone();
                let st = state.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let s = s.clone();
                    // Created when hyper accepts the request, so a request dropped before its
                    // first poll (reset at once) still counts as cancelled.
                    let mut request = st.begin();
                    async move {
                        let resp = handle(req, &s).await;
                        if resp.extensions().get::<Cancelled>().is_none() {
                            request.answered();
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(sock), svc).into_owned();
                let (limits, shutdown) = (shared.limits.clone(), shutdown.clone());
                connections.spawn(async move {
                    connection(conn, |c| c.graceful_shutdown(), state, &limits, shutdown).await;
                    drop(guard);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Each connection sees the shutdown too: GOAWAY / `Connection: close`, then closed.
    while connections.join_next().await.is_some() {}
}

/// Drives one connection until it ends: graceful shutdown when idle for the keep-alive time or at
/// stop, dropped [`GOAWAY_GRACE`] later once no request is in progress, dropped at once on a
/// reset flood.
async fn connection<C, E>(
    conn: C,
    graceful: impl Fn(std::pin::Pin<&mut C>),
    state: Arc<ConnState>,
    limits: &super::ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut closing = false;
    let close = tokio::time::sleep(GOAWAY_GRACE);
    tokio::pin!(close);
    if *shutdown.borrow() {
        closing = true;
        graceful(conn.as_mut());
        close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
    }
    let idle = tokio::time::sleep(limits.keepalive_idle);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTP connection error");
                }
                return;
            }
            // hyper cannot send GOAWAY(ENHANCE_YOUR_CALM) on demand: drop the connection.
            () = state.flooded() => return,
            _ = shutdown.changed(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
                close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
            }
            () = &mut idle, if !closing => {
                let idle_for = state.idle_for();
                if state.active() == 0 && idle_for >= limits.keepalive_idle {
                    closing = true;
                    graceful(conn.as_mut());
                    close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
                } else {
                    let left = limits.keepalive_idle.saturating_sub(idle_for).max(Duration::from_millis(10));
                    idle.as_mut().reset(tokio::time::Instant::now() + left);
                }
            }
            () = &mut close, if closing => {
                if state.active() == 0 {
                    return;
                }
                close.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
            }
        }
    }
}

fn signal_of(path: &str) -> Option<Signal> {
    match path {
        "/v1/traces" => Some(Signal::Traces),
        "/v1/logs" => Some(Signal::Logs),
        "/v1/metrics" => Some(Signal::Metrics),
        _ => None,
    }
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
    r
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Resp {
    let path = req.uri().path().to_owned();
    if let Some(signal) = signal_of(&path) {
        if req.method() != Method::POST {
            return failure(
                &Failure::MethodNotAllowed(format!("{path} accepts POST only")),
                false,
                shared,
                Some("POST"),
            );
        }
        return export(signal, req, shared).await;
    }
    let get_only = |resp: Resp| {
        if req.method() == Method::GET {
            resp
        } else {
            failure(
                &Failure::MethodNotAllowed(format!("{path} accepts GET only")),
                false,
                shared,
                Some("GET"),
            )
        }
    };
    match path.as_str() {
        "/healthz" => get_only(text(StatusCode::OK, "ok\n")),
        "/readyz" => {
            let pipeline = &shared.ingest.pipeline;
            shared.readiness.update(pipeline);
            let ready = shared.readiness.ready(pipeline) && !shared.ingest.is_stopping();
            get_only(if ready {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            })
        }
        "/metrics" => {
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok());
            let (ct, body) = shared.metrics.encode_for(accept);
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(ct));
            get_only(r)
        }
        _ => failure(&Failure::NotFound(format!("no route for {path}")), false, shared, None),
    }
}

/// The media type of `Content-Type` without parameters, lowercase.
fn media_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn export(signal: Signal, req: Request<Incoming>, shared: &Shared) -> Resp {
    let started = Instant::now();
    let ingest = &shared.ingest;
    let media = media_type(&req);
    let encoding = match media.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            let f = ingest.refuse(
                signal,
                Transport::Http,
                RequestRejectReason::UnsupportedMediaType,
                Failure::UnsupportedMedia(format!(
                    "unsupported content type {media:?}: use application/x-protobuf or application/json"
                )),
            );
            return failure(&f, false, shared, None);
        }
    };
    let json = encoding == Encoding::Json;
    let refuse = |reason, f| failure(&ingest.refuse(signal, Transport::Http, reason, f), json, shared, None);
    let compression = match req
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => Compression::Identity,
        Some(e) if e.is_empty() || e == "identity" => Compression::Identity,
        Some(e) if e == "gzip" || e == "x-gzip" => Compression::Gzip,
        Some(e) if e == "deflate" => Compression::Deflate,
        Some(e) => {
            return refuse(
                RequestRejectReason::UnsupportedMediaType,
                Failure::UnsupportedMedia(format!("unsupported content encoding {e:?}: use gzip or deflate")),
            );
        }
    };
    let tenant = match tenant_of(req.headers(), &ingest.decode.default_tenant, &shared.limits) {
        Ok(t) => t,
        Err(f @ Failure::Unauthenticated(_)) => return refuse(RequestRejectReason::Unauthenticated, f),
        Err(f) => return refuse(RequestRejectReason::Invalid, f),
    };
    if ingest.is_stopping() {
        return refuse(RequestRejectReason::Stopping, Failure::Unavailable("server is stopping".into()));
    }
    let content_length =
        req.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|n| n > ingest.max_body) {
        return refuse(
            RequestRejectReason::BodyTooLarge,
            Failure::TooLarge(format!("body over OTELRING_MAX_BODY_BYTES ({} bytes)", ingest.max_body)),
        );
    }
    let Some(reservation) = ingest.budget.try_reserve(content_length.unwrap_or(0)) else {
        return refuse(
            RequestRejectReason::InflightBudget,
            Failure::Throttled("in-flight byte budget exhausted; retry later".into()),
        );
    };
    let read = tokio::time::timeout(
        shared.limits.body_read_timeout,
        read_body(req.into_body(), ingest.max_body, reservation),
    );
    let (wire, mut reservation) = match read.await {
        Ok(Ok(r)) => r,
        Ok(Err((reason, f))) => {
            let cut_short = matches!(f, Failure::BadRequest(_)) && reason == RequestRejectReason::Invalid;
            let mut r = refuse(reason, f);
            if cut_short {
                r.extensions_mut().insert(Cancelled);
            }
            return r;
        }
        // A slow link is not bad input: answer retryable (503 + Retry-After).
        Err(_) => {
            return refuse(
                RequestRejectReason::Invalid,
                Failure::Unavailable("timed out reading the body; retry".into()),
            );
        }
    };
    let body = match compression {
        Compression::Identity => wire,
        c => {
            let inflated = inflate(&wire, c, ingest.max_body, &mut reservation);
            // The wire bytes are not needed past here: free them now, not after the answer (in
            // commit mode that waits for the commit, outside every cap).
            drop(wire);
            match inflated {
                Ok(b) => b,
                Err(f) => {
                    let reason = match f {
                        Failure::TooLarge(_) => RequestRejectReason::BodyTooLarge,
                        Failure::Throttled(_) => RequestRejectReason::InflightBudget,
                        _ => RequestRejectReason::Invalid,
                    };
                    return refuse(reason, f);
                }
            }
        }
    };
    let call = Call { signal, transport: Transport::Http, encoding, tenant, started };
    match ingest.export(call, body, reservation).await {
        Ok(success) => {
            let (body, ct) = if json {
                (success_json(signal, &success), "application/json")
            } else {
                (success_proto(&success), "application/x-protobuf")
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(ct));
            r
        }
        Err(f) => failure(&f, json, shared, None),
    }
}

type ReadError = (RequestRejectReason, Failure);

async fn read_body(
    mut body: Incoming,
    max: u64,
    mut reservation: Reservation,
) -> Result<(Vec<u8>, Reservation), ReadError> {
    // Content-Length (already reserved and under the limit) sizes the buffer once.
    let mut buf = Vec::with_capacity(usize::try_from(reservation.bytes()).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (RequestRejectReason::Invalid, Failure::BadRequest(format!("error reading the body: {e}")))
        })?;
        let Some(data) = frame.data_ref() else { continue };
        let total = buf.len() as u64 + data.len() as u64;
        if total > max {
            return Err((
                RequestRejectReason::BodyTooLarge,
                Failure::TooLarge(format!("body over OTELRING_MAX_BODY_BYTES ({max} bytes)")),
            ));
        }
        if !reservation.grow_to(total) {
            return Err((
                RequestRejectReason::InflightBudget,
                Failure::Throttled("in-flight byte budget exhausted; retry later".into()),
            ));
        }
        buf.extend_from_slice(data);
    }
    Ok((buf, reservation))
}

/// A failure as a `google.rpc.Status` body, with `Retry-After` when retryable.
fn failure(f: &Failure, json: bool, shared: &Shared, allow: Option<&'static str>) -> Resp {
    let retry = shared.ingest.retry_after;
    let (body, ct) = if json {
        (status_json(f, retry), "application/json")
    } else {
        (status_proto(f, retry), "application/x-protobuf")
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(f.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", hyper::header::HeaderValue::from_static(ct));
    if f.retryable() {
        let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
            h.insert("retry-after", v);
        }
    }
    if let Some(a) = allow {
        h.insert("allow", hyper::header::HeaderValue::from_static(a));
    }
    if shared.ingest.is_stopping() {
        h.insert("connection", hyper::header::HeaderValue::from_static("close"));
    }
    r
}
