//! Per-send id rewriting for `otelring loadgen --duration`: the pre-encoded requests are sent
//! again and again, and every send must be distinct (spans are idempotent by (tenant, trace id,
//! span id), so a resent request would be persisted as nothing and hide the work).
//!
//! At preparation the encoded protobuf is walked once to find where every trace id and span id
//! sits ([`locate`]); each send copies the body and XORs those bytes with masks derived from the
//! send's cycle number ([`patch`]). Cycle 0 is the request as generated. The masks keep ids
//! distinct within and across cycles: a trace id's first 8 bytes are the generator's seed in every
//! generated request, so XORing them with `cycle << 32` gives each cycle its own prefix; span ids
//! and parent span ids get the same span mask, so the parent links of a trace survive.

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

/// The XOR masks of send cycle `cycle`: (first 8 bytes of a trace id, a span id).
pub fn masks(cycle: u64) -> ([u8; 8], [u8; 8]) {
    ((cycle << 32).to_be_bytes(), cycle.rotate_right(16).to_be_bytes())
}

/// A trace id as sent in cycle `cycle`.
pub fn trace_id(id: &[u8; 16], cycle: u64) -> [u8; 16] {
    let (t, _) = masks(cycle);
    let mut out = *id;
    for (b, m) in out.iter_mut().zip(t) {
        *b ^= m;
    }
    out
}

/// `body` with every id at `ids` rewritten for cycle `cycle`.
pub fn patch(body: &[u8], ids: &[IdAt], cycle: u64) -> Vec<u8> {
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
    use prost::Message;
    use std::collections::HashSet;

    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        a: super::super::LoadgenArgs,
    }

    fn args() -> super::super::LoadgenArgs {
        W::parse_from(["loadgen", "--items", "1000", "--error-share", "0.1"]).a
    }

    #[test]
    fn every_cycle_sends_new_ids_with_the_parent_links_kept() {
        let a = args();
        let mut rng = fastrand::Rng::with_seed(1);
        let (req, priority) = super::super::traces_request(&a, 7, &mut rng);
        assert!(!priority.is_empty());
        let mut body = vec![0u8; 5];
        body.extend(req.encode_to_vec());
        let ids = locate(Signal::Traces, &body, 5).unwrap();
        // 200 traces × 5 spans: a trace id and a span id per span, a parent for 4 of 5.
        assert_eq!(ids.len(), 1000 + 1000 + 800);
        let mut seen = HashSet::new();
        for cycle in 0..4u64 {
            let patched = patch(&body, &ids, cycle);
            assert_eq!(patch(&patched, &ids, cycle), body, "XOR twice is the identity");
            let got = ExportTraceServiceRequest::decode(&patched[5..]).unwrap();
            let spans = |r: &ExportTraceServiceRequest| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| rs.scope_spans.iter().flat_map(|ss| ss.spans.iter().cloned()))
                    .collect::<Vec<_>>()
            };
            let (orig, new) = (spans(&req), spans(&got));
            assert_eq!(orig.len(), new.len());
            let roots: HashSet<Vec<u8>> =
                new.iter().filter(|s| s.parent_span_id.is_empty()).map(|s| s.span_id.clone()).collect();
            for (o, n) in orig.iter().zip(&new) {
                let tid: [u8; 16] = o.trace_id.clone().try_into().unwrap();
                assert_eq!(n.trace_id, trace_id(&tid, cycle));
                assert!(seen.insert((n.trace_id.clone(), n.span_id.clone())), "span key reused");
                assert_eq!((n.name.as_str(), &n.attributes), (o.name.as_str(), &o.attributes));
                if !n.parent_span_id.is_empty() {
                    assert!(roots.contains(&n.parent_span_id), "parent link broken");
                }
            }
        }
    }

    #[test]
    fn log_trace_ids_are_found_and_metrics_have_none() {
        let a = args();
        let mut rng = fastrand::Rng::with_seed(1);
        let body = super::super::logs_request(&a, 3, &mut rng).encode_to_vec();
        let ids = locate(Signal::Logs, &body, 0).unwrap();
        // Every third record carries a trace context.
        assert_eq!(ids.len(), 2 * 1000usize.div_ceil(3));
        let got = ExportLogsServiceRequest::decode(&patch(&body, &ids, 9)[..]).unwrap();
        let rec = &got.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.trace_id[..8], (a.seed ^ (9 << 32)).to_be_bytes());
        let metrics = super::super::metrics_request(&a, 1, &mut rng).encode_to_vec();
        assert_eq!(locate(Signal::Metrics, &metrics, 0).unwrap(), Vec::new());
    }
}
