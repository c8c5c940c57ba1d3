//! Per-send id rewriting for `otelring loadgen --duration`: the pre-encoded requests are sent
//! again and again, and every send must be distinct (spans are idempotent by (tenant, trace id,
//! span id), so a resent request would be persisted as nothing and hide the work).
//!
//! At preparation the encoded protobuf is walked once to find where every trace id and span id
//! sits ([`locate`]), and every distinct id value of the request gets a slot: the same trace id
//! (the spans of one trace, a log record and the trace it points to) or span id (a root span's id
//! and its children's parent span id) shares one slot. Each send copies the body, draws a fresh
//! random value per slot and writes it over every position of that slot ([`Ids::patch`]), so
//! every id of every send is new and random, as the OpenTelemetry SDKs make them (W3C trace
//! context: random 128-bit trace ids, random 64-bit span ids, never all zero), while the parent
//! links within a trace and the log → trace links stay intact. Cost: one copy of the body (the
//! `Bytes` a send needs anyway) plus a fresh 16 bytes per trace and 8 per span written at 2,800
//! positions of a 1,000-span request (357 KB). The `rewrite_cost` test prints it; on the 2-core
//! machines, busy: 25–48 µs per send against 0.59–0.79 ms to encode the same request in the
//! release build (`cargo test --release --features loadgen --lib rewrite_cost -- --nocapture`),
//! 319 µs against 15.9 ms unoptimized. At 150 requests/s that is under 1% of one core.
//!
//! `--ordered-ids` keeps the old scheme, only to show the difference: every generated trace id is
//! `seed ‖ (request << 24 | trace)` and each send XORs one mask per cycle ([`patch_ordered`]), so
//! consecutive traces sort next to each other and every index appends at its right edge.

use std::collections::HashMap;

/// What an id is, which decides its length and mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// A 16-byte trace id (spans' field 1, log records' field 9).
    Trace,
    /// An 8-byte span id or parent span id (spans' fields 2 and 4, log records' field 10).
    Span,
}

impl IdKind {
    fn len(self) -> usize {
        match self {
            IdKind::Trace => 16,
            IdKind::Span => 8,
        }
    }
}

/// An id's position in an encoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdAt {
    /// Byte offset of the id's first byte.
    pub offset: usize,
    pub kind: IdKind,
}

/// Nested messages down to the items, and the id fields of an item.
struct Shape {
    /// Field numbers of the nested length-delimited messages (request → resource → scope →
    /// item).
    path: [u64; 3],
    /// (field number, kind) of the ids inside an item.
    ids: &'static [(u64, IdKind)],
}

/// ExportTraceServiceRequest.resource_spans(1) → ResourceSpans.scope_spans(2) →
/// ScopeSpans.spans(2) → Span: trace_id(1), span_id(2), parent_span_id(4).
const TRACES: Shape =
    Shape { path: [1, 2, 2], ids: &[(1, IdKind::Trace), (2, IdKind::Span), (4, IdKind::Span)] };
/// ExportLogsServiceRequest.resource_logs(1) → ResourceLogs.scope_logs(2) →
/// ScopeLogs.log_records(2) → LogRecord: trace_id(9), span_id(10).
const LOGS: Shape = Shape { path: [1, 2, 2], ids: &[(9, IdKind::Trace), (10, IdKind::Span)] };

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint over 10 bytes".into())
}

/// The length-delimited fields of one message: (field number, absolute offset, length).
fn len_fields(buf: &[u8], base: usize) -> Result<Vec<(u64, usize, usize)>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        match tag & 7 {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                if pos + len > buf.len() {
                    return Err("length past the end".into());
                }
                out.push((tag >> 3, base + pos, len));
                pos += len;
            }
            5 => pos += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    if pos != buf.len() {
        return Err("truncated field".into());
    }
    Ok(out)
}

/// Every trace id and span id in `body`, an encoded traces or logs request starting at offset
/// `base` of `body` (5 for a gRPC-framed body). Metrics requests carry no ids: empty.
pub fn locate(signal: crate::pipeline::Signal, body: &[u8], base: usize) -> Result<Vec<IdAt>, String> {
    use crate::pipeline::Signal;
    let shape = match signal {
        Signal::Traces => &TRACES,
        Signal::Logs => &LOGS,
        Signal::Metrics => return Ok(Vec::new()),
    };
    let msg = body.get(base..).ok_or("body shorter than its frame header")?;
    let mut level = vec![(base, msg.len())];
    for field in shape.path {
        let mut next = Vec::new();
        for (off, len) in level {
            for (f, o, l) in len_fields(&body[off..off + len], off)? {
                if f == field {
                    next.push((o, l));
                }
            }
        }
        level = next;
    }
    let mut out = Vec::new();
    for (off, len) in level {
        for (f, o, l) in len_fields(&body[off..off + len], off)? {
            if let Some(&(_, kind)) = shape.ids.iter().find(|(n, k)| *n == f && k.len() == l) {
                out.push(IdAt { offset: o, kind });
            }
        }
    }
    Ok(out)
}

/// The ids of one encoded request grouped by value: what a send rewrites.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    /// Every id position, in body order.
    pub at: Vec<IdAt>,
    /// The slot of each position of `at`: an index into the send's table of fresh trace ids or
    /// span ids (by the position's kind).
    slot: Vec<u32>,
    /// The request's distinct trace ids as generated, in slot order.
    traces: Vec<[u8; 16]>,
    /// Distinct span ids (parent span ids share their parent's slot).
    spans: usize,
}

impl Ids {
    /// Groups the ids at `at` (from [`locate`] on `body`) by value.
    pub fn new(body: &[u8], at: Vec<IdAt>) -> Self {
        let mut traces = Vec::new();
        let mut trace_slots: HashMap<[u8; 16], u32> = HashMap::new();
        let mut span_slots: HashMap<[u8; 8], u32> = HashMap::new();
        let slot = at
            .iter()
            .map(|id| match id.kind {
                IdKind::Trace => {
                    let v: [u8; 16] = body[id.offset..id.offset + 16].try_into().unwrap_or_default();
                    *trace_slots.entry(v).or_insert_with(|| {
                        traces.push(v);
                        traces.len() as u32 - 1
                    })
                }
                IdKind::Span => {
                    let v: [u8; 8] = body[id.offset..id.offset + 8].try_into().unwrap_or_default();
                    let n = span_slots.len() as u32;
                    *span_slots.entry(v).or_insert(n)
                }
            })
            .collect();
        Ids { at, slot, traces, spans: span_slots.len() }
    }

    /// The slot of trace id `id` as generated (None when the request has no such trace).
    pub fn trace_slot(&self, id: &[u8; 16]) -> Option<usize> {
        self.traces.iter().position(|t| t == id)
    }

    /// Distinct trace ids and span ids of the request.
    pub fn distinct(&self) -> (usize, usize) {
        (self.traces.len(), self.spans)
    }

    /// `body` with every trace id and span id replaced by a fresh random one (never all zero),
    /// the same value at every position of a slot. `sent` receives the new trace ids by slot
    /// (what [`Ids::trace_slot`] indexes), for `--priority-ids-out`.
    pub fn patch(&self, body: &[u8], rng: &mut fastrand::Rng, sent: &mut Vec<[u8; 16]>) -> Vec<u8> {
        let mut out = body.to_vec();
        sent.clear();
        sent.extend((0..self.traces.len()).map(|_| random_trace_id(rng)));
        let spans: Vec<[u8; 8]> = (0..self.spans).map(|_| random_span_id(rng)).collect();
        for (id, &slot) in self.at.iter().zip(&self.slot) {
            let o = id.offset;
            match id.kind {
                IdKind::Trace => out[o..o + 16].copy_from_slice(&sent[slot as usize]),
                IdKind::Span => out[o..o + 8].copy_from_slice(&spans[slot as usize]),
            }
        }
        out
    }
}

/// A random 128-bit trace id, never all zero (W3C trace context).
pub fn random_trace_id(rng: &mut fastrand::Rng) -> [u8; 16] {
    rng.u128(1..).to_be_bytes()
}

/// A random 64-bit span id, never all zero (W3C trace context).
pub fn random_span_id(rng: &mut fastrand::Rng) -> [u8; 8] {
    rng.u64(1..).to_be_bytes()
}

/// `--ordered-ids`: the XOR masks of send cycle `cycle`: (first 8 bytes of a trace id, a span
/// id). A trace id's first 8 bytes are the generator's seed in every ordered request, so XORing
/// them with `cycle << 32` gives each cycle its own prefix; span ids and parent span ids get the
/// same span mask, so the parent links of a trace survive.
pub fn masks(cycle: u64) -> ([u8; 8], [u8; 8]) {
    ((cycle << 32).to_be_bytes(), cycle.rotate_right(16).to_be_bytes())
}

/// `--ordered-ids`: a trace id as sent in cycle `cycle`.
pub fn trace_id(id: &[u8; 16], cycle: u64) -> [u8; 16] {
    let (t, _) = masks(cycle);
    let mut out = *id;
    for (b, m) in out.iter_mut().zip(t) {
        *b ^= m;
    }
    out
}

/// `--ordered-ids`: `body` with every id at `ids` XORed with the masks of cycle `cycle`.
pub fn patch_ordered(body: &[u8], ids: &[IdAt], cycle: u64) -> Vec<u8> {
    let mut out = body.to_vec();
    if cycle == 0 {
        return out;
    }
    let (t, s) = masks(cycle);
    for id in ids {
        let mask: &[u8] = match id.kind {
            IdKind::Trace => &t,
            IdKind::Span => &s,
        };
        for (b, m) in out[id.offset..].iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Signal;
    use clap::Parser;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;
    use std::collections::{HashMap, HashSet};

    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        a: super::super::LoadgenArgs,
    }

    fn args(extra: &[&str]) -> super::super::LoadgenArgs {
        let mut v = vec!["loadgen", "--items", "1000", "--error-share", "0.1", "--duration", "1"];
        v.extend(extra);
        W::parse_from(v).a
    }

    fn framed_traces(a: &super::super::LoadgenArgs) -> (ExportTraceServiceRequest, Vec<[u8; 16]>, Vec<u8>) {
        let mut rng = fastrand::Rng::with_seed(1);
        let (req, priority) = super::super::traces_request(a, 7, &mut rng);
        let mut body = vec![0u8; 5];
        body.extend(req.encode_to_vec());
        (req, priority.into_iter().map(|(id, _)| id).collect(), body)
    }

    fn spans(r: &ExportTraceServiceRequest) -> Vec<Span> {
        r.resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| ss.spans.iter().cloned()))
            .collect()
    }

    #[test]
    fn generated_ids_are_random_and_every_send_gets_fresh_ones_with_the_links_kept() {
        let a = args(&[]);
        let (req, priority, body) = framed_traces(&a);
        assert!(!priority.is_empty());
        let ids = Ids::new(&body, locate(Signal::Traces, &body, 5).unwrap());
        // 200 traces × 5 spans: a trace id and a span id per span, a parent for 4 of 5.
        assert_eq!(ids.at.len(), 1000 + 1000 + 800);
        assert_eq!(ids.distinct(), (200, 1000));
        let orig = spans(&req);
        // As generated: random (not one shared prefix), never zero.
        let prefixes: HashSet<&[u8]> = orig.iter().map(|s| &s.trace_id[..8]).collect();
        assert_eq!(prefixes.len(), 200, "trace ids share a prefix: not random");
        let mut rng = fastrand::Rng::with_seed(99);
        let mut seen_traces: HashSet<Vec<u8>> = orig.iter().map(|s| s.trace_id.clone()).collect();
        let mut seen_spans: HashSet<Vec<u8>> = orig.iter().map(|s| s.span_id.clone()).collect();
        let mut sent = Vec::new();
        for _send in 0..4 {
            let patched = ids.patch(&body, &mut rng, &mut sent);
            assert_eq!(patched.len(), body.len());
            assert_eq!(patched[..5], body[..5], "the gRPC frame header is kept");
            let new = spans(&ExportTraceServiceRequest::decode(&patched[5..]).unwrap());
            assert_eq!(orig.len(), new.len());
            // Old trace id -> new trace id, one to one; old span id -> new span id.
            let mut traces: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let mut span_map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let mut fresh_traces = HashSet::new();
            for (o, n) in orig.iter().zip(&new) {
                assert_eq!(
                    (n.name.as_str(), &n.attributes, n.start_time_unix_nano),
                    (o.name.as_str(), &o.attributes, o.start_time_unix_nano)
                );
                assert!(n.trace_id.iter().any(|&b| b != 0) && n.span_id.iter().any(|&b| b != 0));
                let t = traces.entry(o.trace_id.clone()).or_insert_with(|| n.trace_id.clone());
                assert_eq!(*t, n.trace_id, "the spans of one trace got different trace ids");
                if fresh_traces.insert(n.trace_id.clone()) {
                    assert!(seen_traces.insert(n.trace_id.clone()), "trace id reused across sends");
                }
                assert!(seen_spans.insert(n.span_id.clone()), "span id reused");
                span_map.insert(o.span_id.clone(), n.span_id.clone());
            }
            assert_eq!(fresh_traces.len(), 200);
            for (o, n) in orig.iter().zip(&new) {
                assert_eq!(o.parent_span_id.is_empty(), n.parent_span_id.is_empty());
                if !o.parent_span_id.is_empty() {
                    assert_eq!(n.parent_span_id, span_map[&o.parent_span_id], "parent link broken");
                }
            }
            // `sent` names the real ids of the priority traces.
            for id in &priority {
                assert_eq!(sent[ids.trace_slot(id).unwrap()].to_vec(), traces[&id.to_vec()]);
            }
        }
    }

    #[test]
    fn log_trace_links_are_kept_and_metrics_have_no_ids() {
        let a = args(&[]);
        let mut rng = fastrand::Rng::with_seed(1);
        let req = super::super::logs_request(&a, 3, &mut rng);
        let body = req.encode_to_vec();
        let ids = Ids::new(&body, locate(Signal::Logs, &body, 0).unwrap());
        // Every third record carries a trace context, 10 in a row the same.
        assert_eq!(ids.at.len(), 2 * 1000usize.div_ceil(3));
        assert_eq!(ids.distinct(), (34, 34));
        let got = ExportLogsServiceRequest::decode(&ids.patch(&body, &mut rng, &mut Vec::new())[..]).unwrap();
        let recs = |r: &ExportLogsServiceRequest| r.resource_logs[0].scope_logs[0].log_records.clone();
        let mut map = HashMap::new();
        for (o, n) in recs(&req).iter().zip(&recs(&got)) {
            assert_eq!(o.trace_id.is_empty(), n.trace_id.is_empty());
            if !o.trace_id.is_empty() {
                assert_ne!(o.trace_id, n.trace_id);
                let pair =
                    map.entry(o.trace_id.clone()).or_insert_with(|| (n.trace_id.clone(), n.span_id.clone()));
                assert_eq!(*pair, (n.trace_id.clone(), n.span_id.clone()), "log -> trace link broken");
            }
        }
        let metrics = super::super::metrics_request(&a, 1, &mut rng).encode_to_vec();
        assert_eq!(locate(Signal::Metrics, &metrics, 0).unwrap(), Vec::new());
    }

    #[test]
    fn ordered_ids_xor_one_mask_per_cycle() {
        let a = args(&["--ordered-ids"]);
        let (req, _, body) = framed_traces(&a);
        let ids = locate(Signal::Traces, &body, 5).unwrap();
        let mut seen = HashSet::new();
        for cycle in 0..4u64 {
            let patched = patch_ordered(&body, &ids, cycle);
            assert_eq!(patch_ordered(&patched, &ids, cycle), body, "XOR twice is the identity");
            let new = spans(&ExportTraceServiceRequest::decode(&patched[5..]).unwrap());
            for (o, n) in spans(&req).iter().zip(&new) {
                let tid: [u8; 16] = o.trace_id.clone().try_into().unwrap();
                assert_eq!(n.trace_id, trace_id(&tid, cycle));
                assert_eq!(n.trace_id[..8], (a.seed ^ (cycle << 32)).to_be_bytes());
                assert!(seen.insert((n.trace_id.clone(), n.span_id.clone())), "span key reused");
            }
        }
    }

    /// The cost of a send's rewrite against the cost of encoding the same request (printed, not
    /// asserted as a time: `cargo nextest run --features loadgen rewrite_cost --no-capture`).
    #[test]
    fn rewrite_cost() {
        let a = args(&[]);
        let (req, _, body) = framed_traces(&a);
        let ids = Ids::new(&body, locate(Signal::Traces, &body, 5).unwrap());
        let mut rng = fastrand::Rng::with_seed(3);
        let mut sent = Vec::new();
        let n = 50u32;
        let t = std::time::Instant::now();
        let mut keep = 0usize;
        for _ in 0..n {
            keep += ids.patch(&body, &mut rng, &mut sent)[100] as usize;
        }
        let patch = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            keep += req.encode_to_vec()[100] as usize;
        }
        let encode = t.elapsed() / n;
        eprintln!(
            "rewrite_cost: {} bytes, {} ids: rewrite {patch:?} per send, encode {encode:?} ({keep})",
            body.len(),
            ids.at.len()
        );
    }
}
