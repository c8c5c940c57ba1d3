//! The transport-neutral ingest path: in-flight byte budget, inflation with a size cap, decoding
//! off the I/O threads on a bounded pool, submission to the pipeline, commit-mode waiting, and
//! the books' server-side counters. gRPC and HTTP differ only in framing and in how they encode
//! the answer.

use super::status::{Failure, Success};
use crate::config::DecodeConfig;
use crate::metrics::{FilterReason, Metrics, RequestRejectReason, Transport};
use crate::otlp::{self, Encoding};
use crate::pipeline::batch::Received;
use crate::pipeline::{CommitError, Outcome, Pipeline, Signal};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Bodies up to this size are decoded on the I/O thread: spawning to the pool costs more than
/// decoding them (a few hundred spans decode in well under 100 µs).
pub const INLINE_DECODE_MAX_BYTES: usize = 64 * 1024;

/// The in-flight byte budget (`OTELRING_MAX_INFLIGHT_BYTES`): bodies being read, inflated and
/// decoded reserve their size here before they are read further.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self { used: AtomicU64::new(0), max })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `n` bytes, or `None` when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        self.add(n).then(|| Reservation { budget: self.clone(), bytes: n })
    }

    fn add(&self, n: u64) -> bool {
        // Relaxed: a counter; the CAS makes the cap exact.
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }
}

/// Bytes held in the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to at least `total` bytes; false when the budget has no room.
    pub fn grow_to(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        if self.budget.add(total - self.bytes) {
            self.bytes = total;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Content encodings of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Gzip,
    Deflate,
}

/// Inflates `body` into at most `max` bytes, growing `reservation` as it goes; a body that would
/// inflate past `max` is refused as too large (no gzip bomb gets through).
pub fn inflate(
    body: &[u8],
    compression: Compression,
    max: u64,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, Failure> {
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Identity => return Ok(body.to_vec()),
        // Multi-member: a body of concatenated gzip members is one stream (RFC 1952 2.2).
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Compression::Deflate => Box::new(flate2::read::ZlibDecoder::new(body)),
    };
    // Grows with what is inflated, so memory stays within what the budget has granted.
    let mut out = Vec::with_capacity(body.len().min(max as usize));
    let mut limited = reader.take(max + 1);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = limited
            .read(&mut chunk)
            .map_err(|e| Failure::BadRequest(format!("invalid compressed body: {e}")))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() as u64 > max {
            return Err(Failure::TooLarge(format!("body inflates past the {max}-byte limit")));
        }
        if !reservation.grow_to(body.len() as u64 + out.len() as u64) {
            return Err(Failure::Throttled("in-flight byte budget exhausted while inflating".into()));
        }
    }
    Ok(out)
}

/// Shared state of both listeners.
pub struct Ingest {
    pub pipeline: Arc<Pipeline>,
    pub decode: Arc<DecodeConfig>,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    /// At most one concurrent decode per core (DESIGN 1.2).
    pub decode_permits: Arc<Semaphore>,
    /// `OTELRING_RETRY_AFTER_SECS`.
    pub retry_after: Duration,
    /// `OTELRING_MAX_BODY_BYTES` (wire and inflated).
    pub max_body: u64,
    /// Set when stop begins: new requests are answered UNAVAILABLE / 503.
    pub stopping: AtomicBool,
}

/// The answer to one Export call.
pub type Answer = Result<Success, Failure>;

/// One Export call's facts, from its headers.
#[derive(Debug)]
pub struct Call {
    pub signal: Signal,
    pub transport: Transport,
    pub encoding: Encoding,
    pub tenant: Arc<str>,
    /// When the request arrived (for the Export duration histogram).
    pub started: Instant,
}

impl Ingest {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Counts a request refused before decoding and returns its failure.
    pub fn refuse(
        &self,
        signal: Signal,
        transport: Transport,
        reason: RequestRejectReason,
        f: Failure,
    ) -> Failure {
        self.metrics.counters().rejected_request(signal, transport, reason);
        if matches!(f, Failure::Throttled(_)) {
            self.metrics.counters().throttled(signal, transport);
        }
        f
    }

    /// Decodes `body` (already inflated, its bytes held by `reservation`), submits it, and in
    /// commit mode waits for the commit.
    pub async fn export(&self, call: Call, body: Vec<u8>, reservation: Reservation) -> Answer {
        let (signal, transport, started) = (call.signal, call.transport, call.started);
        let answer = self.export_inner(call, body, reservation).await;
        self.metrics.counters().export_duration(signal, transport, started.elapsed());
        answer
    }

    async fn export_inner(&self, call: Call, body: Vec<u8>, reservation: Reservation) -> Answer {
        let Call { signal, transport, encoding, tenant, .. } = call;
        if self.is_stopping() {
            return Err(self.refuse(
                signal,
                transport,
                RequestRejectReason::Stopping,
                Failure::Unavailable("server is stopping".into()),
            ));
        }
        let decoded = if body.len() <= INLINE_DECODE_MAX_BYTES {
            let decoded = otlp::decode(signal, encoding, &body, &self.decode, tenant, Received::now());
            // Freed now, not after the answer: in commit mode that waits for the commit.
            drop(body);
            decoded
        } else {
            let permit = self.decode_permits.clone().acquire_owned().await;
            let cfg = self.decode.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                otlp::decode(signal, encoding, &body, &cfg, tenant, Received::now())
            })
            .await;
            match joined {
                Ok(d) => d,
                Err(e) => return Err(Failure::Internal(format!("decoder task failed: {e}"))),
            }
        };
        // The body is decoded into rows: the pipeline's byte cap accounts for them from here on.
        drop(reservation);
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                let reason = if e.is_too_large() {
                    RequestRejectReason::BodyTooLarge
                } else {
                    RequestRejectReason::Invalid
                };
                self.metrics.counters().rejected_request(signal, transport, reason);
                return Err(if e.is_too_large() {
                    Failure::TooLarge(e.message)
                } else {
                    Failure::BadRequest(e.message)
                });
            }
        };
        let counters = self.metrics.counters();
        counters.received(signal, transport, decoded.received_items);
        if decoded.filtered.min_severity > 0 {
            counters.filtered(signal, FilterReason::MinSeverity, decoded.filtered.min_severity);
        }
        if decoded.filtered.service > 0 {
            counters.filtered(signal, FilterReason::Service, decoded.filtered.service);
        }
        let submission = self.pipeline.submit(decoded.request);
        let success = match submission.outcome {
            Outcome::Accepted { .. } => Success::default(),
            Outcome::SoftDropped { dropped, .. } => Success {
                rejected: dropped,
                message: format!(
                    "server is shedding load: {dropped} healthy {} dropped, priority data kept",
                    item_name(signal)
                ),
            },
            Outcome::RejectedFull { .. } => {
                counters.throttled(signal, transport);
                return Err(Failure::Throttled(format!("{signal} queue full; retry later")));
            }
            Outcome::RejectedBytes { .. } => {
                counters.throttled(signal, transport);
                return Err(Failure::Throttled(format!("{signal} queue byte limit reached; retry later")));
            }
            Outcome::TooLarge { .. } => {
                return Err(Failure::TooLarge(format!(
                    "request rows exceed INGEST_PIPELINE_MAX_BYTES ({} bytes)",
                    self.pipeline.config().max_bytes
                )));
            }
            Outcome::Stopped { .. } => return Err(Failure::Unavailable("server is stopping".into())),
        };
        if let Some(waiter) = submission.commit {
            match waiter.await {
                Ok(()) => {}
                Err(e @ CommitError::Refused(_)) => {
                    return Err(Failure::BadRequest(format!("not committed: {e}")));
                }
                Err(e) => return Err(Failure::Unavailable(format!("not committed: {e}"))),
            }
        }
        Ok(success)
    }
}

fn item_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "spans",
        Signal::Logs => "log records",
        Signal::Metrics => "data points",
    }
}
