//! The per-shard dead-letter queue (DESIGN 1.3): batches whose transaction failed, kept on disk
//! until the shard's own writer replays them.
//!
//! One file per spilled group, `DLQ_PATH/shard-<ii>-<id>.dlq`, where `<id>` is
//! `<created unix ns, 20 digits>-<pid and counter, 16 hex>`: names sort oldest first, and the id
//! is what the replay records in the shard's `dlq_applied` table. A file is written under a
//! `.tmp` name, fsynced, renamed and the directory fsynced, so a crash never leaves a half-file
//! under a name replay trusts.
//!
//! Format (all integers little-endian; documented in docs/STORAGE.md):
//! ```text
//! header, 80 bytes: magic "OTRGDLQ\0" | format u32 | shard u32 | created i64 | seq u64
//!                   | items[traces, logs, metrics] 3×u64 | units u64 | body_len u64
//!                   | body_crc32 u32 | header_crc32 u32 (over the 76 bytes before it)
//! body:  cause (str) | batch count (varint) | per batch: signal u8, ingested_at i64,
//!        unit count (varint), units (a trace group, a log record or a metric point)
//! ```
//! Strings are a varint length and UTF-8 bytes; values shared by many rows (tenant, service,
//! resource attributes, scope, metric name...) are interned per file: a varint `0` followed by the
//! string defines the next entry, `n > 0` refers to entry `n - 1`. A file whose header or body
//! checksum, length or structure is wrong is damaged: it is moved to `DLQ_PATH/corrupt/` and its
//! items (from the header, when that is intact) are counted lost.
//!
//! A *unit* is what bisection isolates: one trace group (a trace row with its spans and
//! synthesized logs), one log record, or one metric point, numbered in file order.

use super::{Faults, ShardGauges};
use crate::pipeline::batch::{
    Batch, LogRow, MetricKind, MetricPointRow, NumberValue, Received, Rows, Signal, SpanId, SpanKind,
    SpanRow, StatusCode, Temporality, TraceGroup, TraceId, TraceRow,
};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// First bytes of every DLQ file.
pub const MAGIC: [u8; 8] = *b"OTRGDLQ\0";
/// Format version written by this build; readers refuse others (set aside as damaged).
pub const FORMAT: u32 = 1;
/// Fixed header size in bytes.
pub const HEADER_LEN: usize = 80;
/// File name suffix of a complete DLQ file.
pub const SUFFIX: &str = ".dlq";
/// Suffix of a file being written (never trusted; set aside at start).
pub const TMP_SUFFIX: &str = ".dlq.tmp";
/// Subdirectory of damaged files.
pub const CORRUPT_DIR: &str = "corrupt";
/// Subdirectory of poison units (rows no database accepts).
pub const POISON_DIR: &str = "poison";
/// Bytes written by [`ShardDlq::probe`]: one page, so a full disk refuses it.
pub const PROBE_BYTES: usize = 4096;
/// Longest string or count accepted when decoding (a damaged length must not allocate
/// gigabytes): 1 GiB, above any row the pipeline admits (`INGEST_PIPELINE_MAX_BYTES` ≤ that).
const MAX_DECODE_LEN: u64 = 1 << 30;
/// Most elements reserved up front for a vector read from a DLQ file. A count in a file is only
/// bounded by the bytes left (one byte each at least), but an element in memory is tens to
/// hundreds of bytes (a `SpanRow` is ~200): reserving a crafted or damaged count of tens of
/// millions would ask for gigabytes before the first row fails to decode, and an allocation
/// failure aborts the process. Beyond this, vectors grow as rows actually decode, so memory stays
/// proportional to the file's real content.
const DECODE_PREALLOC_MAX: usize = 1024;

/// A vector for `count` elements claimed by a file, reserving at most [`DECODE_PREALLOC_MAX`].
fn vec_for<T>(count: usize) -> Vec<T> {
    Vec::with_capacity(count.min(DECODE_PREALLOC_MAX))
}

/// Damaged or unreadable DLQ data.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dlq i/o: {0}")]
    Io(#[from] io::Error),
    #[error("damaged dlq file: {0}")]
    Damaged(String),
}

fn damaged(msg: impl Into<String>) -> DlqError {
    DlqError::Damaged(msg.into())
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, the zlib/PNG polynomial), table-driven; enough to catch torn and flipped
// bytes in a file we wrote ourselves.

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// Header

/// The fixed header of a DLQ file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub shard: u32,
    pub created_unix_nano: i64,
    pub seq: u64,
    /// Items per signal (spans, log records, data points), for the books.
    pub items: [u64; 3],
    /// Units (trace groups, log records, points) in the body.
    pub units: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

impl Header {
    /// The file id recorded in `dlq_applied`.
    pub fn id(&self) -> String {
        format!("{:020}-{:016x}", self.created_unix_nano.max(0), self.seq)
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let mut w = Vec::with_capacity(HEADER_LEN);
        w.extend_from_slice(&MAGIC);
        w.extend_from_slice(&FORMAT.to_le_bytes());
        w.extend_from_slice(&self.shard.to_le_bytes());
        w.extend_from_slice(&self.created_unix_nano.to_le_bytes());
        w.extend_from_slice(&self.seq.to_le_bytes());
        for i in self.items {
            w.extend_from_slice(&i.to_le_bytes());
        }
        w.extend_from_slice(&self.units.to_le_bytes());
        w.extend_from_slice(&self.body_len.to_le_bytes());
        w.extend_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        h.copy_from_slice(&w);
        h
    }

    /// Parses and checks a header (magic, format, checksum).
    pub fn decode(b: &[u8]) -> Result<Self, DlqError> {
        if b.len() < HEADER_LEN {
            return Err(damaged(format!("header is {} bytes, expected {HEADER_LEN}", b.len())));
        }
        let mut r = Reader { b: &b[..HEADER_LEN], pos: 0, strings: Vec::new() };
        if r.take(8)? != MAGIC {
            return Err(damaged("bad magic"));
        }
        let format = r.u32()?;
        let shard = r.u32()?;
        let created_unix_nano = r.i64()?;
        let seq = r.u64()?;
        let items = [r.u64()?, r.u64()?, r.u64()?];
        let units = r.u64()?;
        let body_len = r.u64()?;
        let body_crc = r.u32()?;
        let header_crc = r.u32()?;
        if crc32(&b[..HEADER_LEN - 4]) != header_crc {
            return Err(damaged("header checksum mismatch"));
        }
        if format != FORMAT {
            return Err(damaged(format!("format {format} is not {FORMAT}")));
        }
        Ok(Self { shard, created_unix_nano, seq, items, units, body_len, body_crc })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Writer<'a> {
    out: Vec<u8>,
    strings: HashMap<&'a str, u64>,
}

impl<'a> Writer<'a> {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: &Option<String>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    /// An interned shared value.
    fn arc(&mut self, s: &'a Arc<str>) {
        let key: &'a str = s;
        if let Some(&i) = self.strings.get(key) {
            self.varint(i + 1);
        } else {
            let i = self.strings.len() as u64;
            self.strings.insert(key, i);
            self.varint(0);
            self.str(key);
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.varint(v);
            }
        }
    }
    fn opt_f64(&mut self, v: Option<f64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.f64(v);
            }
        }
    }
    fn opt_i32(&mut self, v: Option<i32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.i32(v);
            }
        }
    }

    fn trace_row(&mut self, t: &'a TraceRow) {
        self.arc(&t.tenant_id);
        self.out.extend_from_slice(&t.trace_id.0);
        self.arc(&t.service_name);
        self.u8(u8::from(t.has_root));
        self.i64(t.start_time_unix_nano);
        self.i64(t.end_time_unix_nano);
        self.u8(t.status as u8);
        self.u8(u8::from(t.priority));
    }

    fn span(&mut self, s: &'a SpanRow) {
        self.arc(&s.tenant_id);
        self.out.extend_from_slice(&s.trace_id.0);
        self.out.extend_from_slice(&s.span_id.0);
        match s.parent_span_id {
            None => self.u8(0),
            Some(p) => {
                self.u8(1);
                self.out.extend_from_slice(&p.0);
            }
        }
        self.str(&s.name);
        self.u8(span_kind_code(s.kind));
        self.arc(&s.service_name);
        self.i64(s.start_time_unix_nano);
        self.i64(s.end_time_unix_nano);
        self.u8(s.status_code as u8);
        self.str(&s.status_message);
        self.str(&s.attributes);
        self.arc(&s.resource_attributes);
        self.arc(&s.scope_name);
    }

    fn log(&mut self, l: &'a LogRow) {
        self.arc(&l.tenant_id);
        self.i64(l.time_unix_nano);
        self.i64(l.observed_time_unix_nano);
        self.i32(l.severity_number);
        self.str(&l.severity_text);
        self.opt_str(&l.body);
        match l.trace_id {
            None => self.u8(0),
            Some(t) => {
                self.u8(1);
                self.out.extend_from_slice(&t.0);
            }
        }
        match l.span_id {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.out.extend_from_slice(&s.0);
            }
        }
        self.arc(&l.service_name);
        self.str(&l.attributes);
        self.arc(&l.resource_attributes);
        self.arc(&l.scope_name);
        self.u8(u8::from(l.priority));
    }

    fn point(&mut self, m: &'a MetricPointRow) {
        self.arc(&m.tenant_id);
        self.arc(&m.service_name);
        self.arc(&m.name);
        self.arc(&m.description);
        self.arc(&m.unit);
        self.u8(metric_kind_code(m.kind));
        match m.temporality {
            None => self.u8(0),
            Some(t) => self.u8(1 + temporality_code(t)),
        }
        match m.is_monotonic {
            None => self.u8(0),
            Some(b) => self.u8(1 + u8::from(b)),
        }
        self.i64(m.time_unix_nano);
        self.i64(m.start_time_unix_nano);
        match m.value {
            None => self.u8(0),
            Some(NumberValue::Int(i)) => {
                self.u8(1);
                self.i64(i);
            }
            Some(NumberValue::Double(d)) => {
                self.u8(2);
                self.f64(d);
            }
        }
        self.opt_u64(m.count);
        self.opt_f64(m.sum);
        self.opt_f64(m.min);
        self.opt_f64(m.max);
        self.opt_str(&m.bucket_counts);
        self.opt_str(&m.explicit_bounds);
        self.opt_i32(m.scale);
        self.opt_u64(m.zero_count);
        self.opt_i32(m.positive_offset);
        self.opt_str(&m.positive_bucket_counts);
        self.opt_i32(m.negative_offset);
        self.opt_str(&m.negative_bucket_counts);
        self.opt_str(&m.quantiles);
        self.str(&m.attributes);
        self.arc(&m.resource_attributes);
        self.arc(&m.scope_name);
    }
}

fn span_kind_code(k: SpanKind) -> u8 {
    match k {
        SpanKind::Unspecified => 0,
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn metric_kind_code(k: MetricKind) -> u8 {
    match k {
        MetricKind::Gauge => 0,
        MetricKind::Sum => 1,
        MetricKind::Histogram => 2,
        MetricKind::ExponentialHistogram => 3,
        MetricKind::Summary => 4,
    }
}

fn temporality_code(t: Temporality) -> u8 {
    match t {
        Temporality::Unspecified => 0,
        Temporality::Delta => 1,
        Temporality::Cumulative => 2,
    }
}

/// Units (trace groups, log records, points) of a batch.
pub fn units_of(rows: &Rows) -> usize {
    match rows {
        Rows::Traces(g) => g.len(),
        Rows::Logs(l) => l.len(),
        Rows::Metrics(m) => m.len(),
    }
}

/// Encodes `batches` as a complete DLQ file (header and body).
pub fn encode(batches: &[Batch], shard: u32, created_unix_nano: i64, seq: u64, cause: &str) -> Vec<u8> {
    let mut w = Writer { out: Vec::with_capacity(4096), strings: HashMap::new() };
    w.str(cause);
    w.varint(batches.len() as u64);
    let mut items = [0u64; 3];
    let mut units = 0u64;
    for b in batches {
        w.u8(b.signal() as u8);
        w.i64(b.received.unix_nano);
        w.varint(units_of(&b.rows) as u64);
        units += units_of(&b.rows) as u64;
        items[b.signal().index()] += b.rows.items();
        match &b.rows {
            Rows::Traces(groups) => {
                for g in groups {
                    w.trace_row(&g.trace);
                    w.varint(g.spans.len() as u64);
                    for s in &g.spans {
                        w.span(s);
                    }
                    w.varint(g.logs.len() as u64);
                    for l in &g.logs {
                        w.log(l);
                    }
                }
            }
            Rows::Logs(logs) => {
                for l in logs {
                    w.log(l);
                }
            }
            Rows::Metrics(points) => {
                for m in points {
                    w.point(m);
                }
            }
        }
    }
    let body = w.out;
    let header = Header {
        shard,
        created_unix_nano,
        seq,
        items,
        units,
        body_len: body.len() as u64,
        body_crc: crc32(&body),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding

struct Reader<'b> {
    b: &'b [u8],
    pos: usize,
    strings: Vec<Arc<str>>,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize) -> Result<&'b [u8], DlqError> {
        let end = self.pos.checked_add(n).ok_or_else(|| damaged("length overflow"))?;
        let s = self.b.get(self.pos..end).ok_or_else(|| damaged("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DlqError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DlqError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DlqError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, DlqError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DlqError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DlqError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn f64(&mut self) -> Result<f64, DlqError> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    fn varint(&mut self) -> Result<u64, DlqError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(damaged("varint too long"))
    }
    fn len(&mut self) -> Result<usize, DlqError> {
        let n = self.varint()?;
        if n > MAX_DECODE_LEN {
            return Err(damaged(format!("length {n} is implausible")));
        }
        usize::try_from(n).map_err(|_| damaged("length overflow"))
    }
    fn str(&mut self) -> Result<String, DlqError> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| damaged("invalid UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, DlqError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            t => Err(damaged(format!("bad option tag {t}"))),
        }
    }
    fn flag(&mut self) -> Result<bool, DlqError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(damaged(format!("bad flag {t}"))),
        }
    }
    fn arc(&mut self) -> Result<Arc<str>, DlqError> {
        let n = self.varint()?;
        if n == 0 {
            let s: Arc<str> = Arc::from(self.str()?);
            self.strings.push(s.clone());
            Ok(s)
        } else {
            let i = usize::try_from(n - 1).map_err(|_| damaged("string ref overflow"))?;
            self.strings.get(i).cloned().ok_or_else(|| damaged(format!("unknown string ref {n}")))
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DlqError> {
        Ok(if self.flag()? { Some(self.varint()?) } else { None })
    }
    fn opt_f64(&mut self) -> Result<Option<f64>, DlqError> {
        Ok(if self.flag()? { Some(self.f64()?) } else { None })
    }
    fn opt_i32(&mut self) -> Result<Option<i32>, DlqError> {
        Ok(if self.flag()? { Some(self.i32()?) } else { None })
    }
    fn status(&mut self) -> Result<StatusCode, DlqError> {
        match self.u8()? {
            0 => Ok(StatusCode::Unset),
            1 => Ok(StatusCode::Ok),
            2 => Ok(StatusCode::Error),
            t => Err(damaged(format!("bad status {t}"))),
        }
    }
    /// A count of rows to come, bounded by the bytes left (every row takes at least one byte),
    /// so a damaged count cannot make us reserve a huge vector.
    fn count(&mut self) -> Result<usize, DlqError> {
        let n = self.len()?;
        if n > self.b.len().saturating_sub(self.pos) {
            return Err(damaged(format!("count {n} exceeds the bytes left")));
        }
        Ok(n)
    }

    fn trace_row(&mut self) -> Result<TraceRow, DlqError> {
        Ok(TraceRow {
            tenant_id: self.arc()?,
            trace_id: TraceId(self.array()?),
            service_name: self.arc()?,
            has_root: self.flag()?,
            start_time_unix_nano: self.i64()?,
            end_time_unix_nano: self.i64()?,
            status: self.status()?,
            priority: self.flag()?,
        })
    }

    fn span(&mut self) -> Result<SpanRow, DlqError> {
        Ok(SpanRow {
            tenant_id: self.arc()?,
            trace_id: TraceId(self.array()?),
            span_id: SpanId(self.array()?),
            parent_span_id: if self.flag()? { Some(SpanId(self.array()?)) } else { None },
            name: self.str()?,
            kind: SpanKind::from_i32(i32::from(self.u8()?)),
            service_name: self.arc()?,
            start_time_unix_nano: self.i64()?,
            end_time_unix_nano: self.i64()?,
            status_code: self.status()?,
            status_message: self.str()?,
            attributes: self.str()?,
            resource_attributes: self.arc()?,
            scope_name: self.arc()?,
        })
    }

    fn log(&mut self) -> Result<LogRow, DlqError> {
        Ok(LogRow {
            tenant_id: self.arc()?,
            time_unix_nano: self.i64()?,
            observed_time_unix_nano: self.i64()?,
            severity_number: self.i32()?,
            severity_text: self.str()?,
            body: self.opt_str()?,
            trace_id: if self.flag()? { Some(TraceId(self.array()?)) } else { None },
            span_id: if self.flag()? { Some(SpanId(self.array()?)) } else { None },
            service_name: self.arc()?,
            attributes: self.str()?,
            resource_attributes: self.arc()?,
            scope_name: self.arc()?,
            priority: self.flag()?,
        })
    }

    fn point(&mut self) -> Result<MetricPointRow, DlqError> {
        let tenant_id = self.arc()?;
        let service_name = self.arc()?;
        let name = self.arc()?;
        let description = self.arc()?;
        let unit = self.arc()?;
        let kind = match self.u8()? {
            0 => MetricKind::Gauge,
            1 => MetricKind::Sum,
            2 => MetricKind::Histogram,
            3 => MetricKind::ExponentialHistogram,
            4 => MetricKind::Summary,
            t => return Err(damaged(format!("bad metric kind {t}"))),
        };
        let temporality = match self.u8()? {
            0 => None,
            t @ 1..=3 => Some(Temporality::from_i32(i32::from(t - 1))),
            t => return Err(damaged(format!("bad temporality {t}"))),
        };
        let is_monotonic = match self.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            t => return Err(damaged(format!("bad monotonic flag {t}"))),
        };
        let time_unix_nano = self.i64()?;
        let start_time_unix_nano = self.i64()?;
        let value = match self.u8()? {
            0 => None,
            1 => Some(NumberValue::Int(self.i64()?)),
            2 => Some(NumberValue::Double(self.f64()?)),
            t => return Err(damaged(format!("bad value tag {t}"))),
        };
        Ok(MetricPointRow {
            tenant_id,
            service_name,
            name,
            description,
            unit,
            kind,
            temporality,
            is_monotonic,
            time_unix_nano,
            start_time_unix_nano,
            value,
            count: self.opt_u64()?,
            sum: self.opt_f64()?,
            min: self.opt_f64()?,
            max: self.opt_f64()?,
            bucket_counts: self.opt_str()?,
            explicit_bounds: self.opt_str()?,
            scale: self.opt_i32()?,
            zero_count: self.opt_u64()?,
            positive_offset: self.opt_i32()?,
            positive_bucket_counts: self.opt_str()?,
            negative_offset: self.opt_i32()?,
            negative_bucket_counts: self.opt_str()?,
            quantiles: self.opt_str()?,
            attributes: self.str()?,
            resource_attributes: self.arc()?,
            scope_name: self.arc()?,
        })
    }
}

/// A decoded DLQ file.
#[derive(Debug)]
pub struct Decoded {
    pub header: Header,
    pub cause: String,
    pub batches: Vec<Batch>,
}

/// Decodes and checks a complete DLQ file (header, length, checksum, structure, counts).
pub fn decode(bytes: &[u8], shard: usize) -> Result<Decoded, DlqError> {
    let header = Header::decode(bytes)?;
    let body = &bytes[HEADER_LEN.min(bytes.len())..];
    if body.len() as u64 != header.body_len {
        return Err(damaged(format!("body is {} bytes, header says {}", body.len(), header.body_len)));
    }
    if crc32(body) != header.body_crc {
        return Err(damaged("body checksum mismatch"));
    }
    let mut r = Reader { b: body, pos: 0, strings: Vec::new() };
    let cause = r.str()?;
    let n = r.count()?;
    let mut batches = vec_for(n);
    let mut items = [0u64; 3];
    let mut units = 0u64;
    for _ in 0..n {
        let signal = match r.u8()? {
            0 => Signal::Traces,
            1 => Signal::Logs,
            2 => Signal::Metrics,
            t => return Err(damaged(format!("bad signal {t}"))),
        };
        let unix_nano = r.i64()?;
        let count = r.count()?;
        let rows = match signal {
            Signal::Traces => {
                let mut groups = vec_for(count);
                for _ in 0..count {
                    let trace = r.trace_row()?;
                    let ns = r.count()?;
                    let mut spans = vec_for(ns);
                    for _ in 0..ns {
                        spans.push(r.span()?);
                    }
                    let nl = r.count()?;
                    let mut logs = vec_for(nl);
                    for _ in 0..nl {
                        logs.push(r.log()?);
                    }
                    groups.push(TraceGroup { trace, spans, logs });
                }
                Rows::Traces(groups)
            }
            Signal::Logs => {
                let mut logs = vec_for(count);
                for _ in 0..count {
                    logs.push(r.log()?);
                }
                Rows::Logs(logs)
            }
            Signal::Metrics => {
                let mut points = vec_for(count);
                for _ in 0..count {
                    points.push(r.point()?);
                }
                Rows::Metrics(points)
            }
        };
        units += count as u64;
        items[signal.index()] += rows.items();
        batches.push(Batch::new(shard, rows, Received { instant: Instant::now(), unix_nano }));
    }
    if r.pos != body.len() {
        return Err(damaged("trailing bytes"));
    }
    if items != header.items || units != header.units {
        return Err(damaged("counts disagree with the header"));
    }
    Ok(Decoded { header, cause, batches })
}

/// Items per signal of unit range `[first, last]` of `batches`.
pub fn items_of_units(batches: &[Batch], first: u64, last: u64) -> [u64; 3] {
    let mut items = [0u64; 3];
    let mut i = 0u64;
    for b in batches {
        let n = units_of(&b.rows) as u64;
        let lo = first.max(i);
        let hi = last.min(i + n.saturating_sub(1));
        if n > 0 && lo <= hi {
            let (a, z) = ((lo - i) as usize, (hi - i) as usize);
            items[b.signal().index()] += match &b.rows {
                Rows::Traces(g) => g.get(a..=z).map_or(0, |g| g.iter().map(|g| g.spans.len() as u64).sum()),
                _ => (z - a + 1) as u64,
            };
        }
        i += n;
    }
    items
}

/// Copies unit range `[first, last]` of `batches` into new batches (same signal and ingest time).
pub fn slice_units(batches: &[Batch], first: u64, last: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut i = 0u64;
    for b in batches {
        let n = units_of(&b.rows) as u64;
        let lo = first.max(i);
        let hi = last.min(i + n.saturating_sub(1));
        if n > 0 && lo <= hi {
            let (a, z) = ((lo - i) as usize, (hi - i) as usize);
            let rows = match &b.rows {
                Rows::Traces(g) => Rows::Traces(g.get(a..=z).map(<[_]>::to_vec).unwrap_or_default()),
                Rows::Logs(l) => Rows::Logs(l.get(a..=z).map(<[_]>::to_vec).unwrap_or_default()),
                Rows::Metrics(m) => Rows::Metrics(m.get(a..=z).map(<[_]>::to_vec).unwrap_or_default()),
            };
            out.push(Batch::new(b.shard, rows, b.received));
        }
        i += n;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The shard's DLQ directory

/// One pending DLQ file of a shard.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub items: [u64; 3],
}

/// What [`ShardDlq::open`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Files pending replay.
    pub files: u64,
    /// Items per signal in them.
    pub items: [u64; 3],
    /// Damaged files set aside (their items, when the header was intact, are in `corrupt_items`).
    pub corrupt_files: u64,
    pub corrupt_items: [u64; 3],
    /// Half-written `.tmp` files set aside (a crash during a spill; never acknowledged as spilled).
    pub tmp_files: u64,
}

impl Recovered {
    /// Books what shard `shard`'s DLQ held at start: its items count as `dlq_recovered` and
    /// `dlq_pending`, damaged files' items as recovered and `lost{dlq_corrupt}` (so the books
    /// balance), and logs the files that will be replayed. Both sinks call it at open.
    pub fn book(&self, stats: &crate::pipeline::Stats, shard: usize) {
        use std::sync::atomic::Ordering;
        for s in Signal::ALL {
            let st = stats.signal(s);
            let (items, corrupt) = (self.items[s.index()], self.corrupt_items[s.index()]);
            st.dlq_recovered_items.fetch_add(items + corrupt, Ordering::Relaxed);
            st.dlq_pending_items.fetch_add(items as i64, Ordering::Relaxed);
            st.add_lost(crate::pipeline::LostReason::DlqCorrupt, corrupt);
        }
        if self.files > 0 {
            tracing::info!(
                shard,
                files = self.files,
                spans = self.items[0],
                logs = self.items[1],
                points = self.items[2],
                "dlq files from a previous run will be replayed"
            );
        }
    }
}

/// One shard's files in `DLQ_PATH`, oldest first.
#[derive(Debug)]
pub struct ShardDlq {
    dir: PathBuf,
    shard: usize,
    max_files: u64,
    max_bytes: u64,
    files: VecDeque<Entry>,
    seq: u32,
    /// Files evicted (deleted) by [`ShardDlq::spill`] and not yet handed to the caller for the
    /// books; drained by [`ShardDlq::take_evicted`] whether the spill succeeded or not.
    evicted: Vec<Entry>,
    faults: Arc<Faults>,
}

fn fsync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    faults.dlq_dir_sync()?;
    File::open(dir)?.sync_all()
}

fn unix_nano_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes `bytes` to `dir/name` durably: temp name, fsync, rename, fsync the directory.
///
/// The rename is the commit point. Once it succeeded, a failing directory fsync is logged and the
/// write reported successful: the file is complete (its data was fsynced) and named, so this
/// process tracks and replays it. Reporting failure instead would make the caller keep the group
/// and spill it again, and the first file, still on disk, would be replayed too (duplicate logs
/// and points); removing it first is no cure, since that unlink is no more durable than the
/// rename (same directory, same failing fsync) and the file could come back after a crash. The
/// only cost is that a power loss before the directory is next synced may drop the name, which
/// is the documented async-mode crash window (admitted, not committed).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], faults: &Faults) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", name.trim_end_matches(SUFFIX)));
    let path = dir.join(name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        faults.dlq_write()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        // Best effort: a leftover temp file is set aside at the next start anyway.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fsync_dir(dir, faults) {
        tracing::warn!(file = %path.display(), error = %e,
            "dlq directory fsync failed after the rename; the file is complete and kept");
    }
    Ok(path)
}

impl ShardDlq {
    /// Opens shard `shard`'s DLQ in `dir` (created if missing), keeping at most `max_files` files
    /// and `max_bytes` bytes. Damaged files and leftover temp files are moved to `corrupt/`.
    pub fn open(dir: &Path, shard: usize, max_files: u64, max_bytes: u64) -> io::Result<(Self, Recovered)> {
        fs::create_dir_all(dir)?;
        let prefix = format!("shard-{shard:02}-");
        let mut names: Vec<String> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        names.sort();
        let mut me = Self {
            dir: dir.to_owned(),
            shard,
            max_files,
            max_bytes,
            files: VecDeque::new(),
            seq: 0,
            evicted: Vec::new(),
            faults: Arc::new(Faults::default()),
        };
        let mut rec = Recovered::default();
        for name in names {
            let path = dir.join(&name);
            if name.ends_with(TMP_SUFFIX) {
                tracing::warn!(file = %path.display(), "half-written dlq file from a crash; set aside in corrupt/");
                me.set_aside(&path)?;
                rec.tmp_files += 1;
                continue;
            }
            if !name.ends_with(SUFFIX) {
                continue;
            }
            let mut head = [0u8; HEADER_LEN];
            let header = File::open(&path).and_then(|mut f| f.read_exact(&mut head)).map_err(DlqError::from);
            let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match header.and_then(|()| Header::decode(&head)) {
                Ok(h) if h.shard as usize == shard && bytes == HEADER_LEN as u64 + h.body_len => {
                    for (i, n) in h.items.iter().enumerate() {
                        rec.items[i] += n;
                    }
                    rec.files += 1;
                    me.files.push_back(Entry { id: h.id(), path, bytes, items: h.items });
                }
                other => {
                    let items = match &other {
                        Ok(h) => h.items,
                        Err(_) => [0; 3],
                    };
                    tracing::error!(file = %path.display(), "damaged dlq file; set aside in corrupt/ and counted lost");
                    me.set_aside(&path)?;
                    rec.corrupt_files += 1;
                    for (i, n) in items.iter().enumerate() {
                        rec.corrupt_items[i] += n;
                    }
                }
            }
        }
        Ok((me, rec))
    }

    /// Shares the store's failure-injection hook (tests).
    pub fn set_faults(&mut self, faults: Arc<Faults>) {
        self.faults = faults;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
    /// The oldest pending file.
    pub fn oldest(&self) -> Option<&Entry> {
        self.files.front()
    }
    /// Publishes the pending files and bytes in the shard's `dlq_files` / `dlq_bytes` gauges.
    pub fn publish(&self, gauges: &ShardGauges) {
        use std::sync::atomic::Ordering;
        gauges.dlq_files.store(self.len() as u64, Ordering::Relaxed);
        gauges.dlq_bytes.store(self.bytes(), Ordering::Relaxed);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        (u64::from(std::process::id()) << 32) | u64::from(self.seq)
    }

    /// Writes `batches` as a new file. Before writing (so a full disk gets the space back),
    /// evicts the oldest files while the limits would be passed. A file larger than the byte
    /// limit on its own is still written once everything older is gone.
    ///
    /// Evicted files are gone whether or not the spill then succeeds: they are kept for
    /// [`ShardDlq::take_evicted`], which the caller must call after every spill, `Ok` or `Err`,
    /// to count them lost.
    pub fn spill(&mut self, batches: &[Batch], cause: &str) -> io::Result<Entry> {
        fs::create_dir_all(&self.dir)?;
        let created = unix_nano_now();
        let seq = self.next_seq();
        let bytes = encode(batches, self.shard as u32, created, seq, cause);
        while !self.files.is_empty()
            && (self.files.len() as u64 + 1 > self.max_files
                || self.bytes() + bytes.len() as u64 > self.max_bytes)
        {
            if let Some(old) = self.files.pop_front() {
                match fs::remove_file(&old.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        self.files.push_front(old);
                        return Err(e);
                    }
                }
                tracing::error!(file = %old.path.display(), "dlq full; oldest file evicted and counted lost");
                self.evicted.push(old);
            }
        }
        let header = Header::decode(&bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let id = header.id();
        let name = format!("shard-{:02}-{id}{SUFFIX}", self.shard);
        let path = write_atomic(&self.dir, &name, &bytes, &self.faults)?;
        let entry = Entry { id, path, bytes: bytes.len() as u64, items: header.items };
        self.files.push_back(entry.clone());
        Ok(entry)
    }

    /// The files evicted by spills since the last call (to be counted lost).
    pub fn take_evicted(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.evicted)
    }

    /// A sink's [`crate::pipeline::BatchWriter::spill`]: writes `batches` as one file and moves
    /// shard `shard`'s books and gauges. Files evicted to make room are booked lost
    /// (`dlq_evicted`) even when the write then fails (they are gone either way; the group stays
    /// with the writer loop); `dlq_failing` follows the write's result.
    pub fn spill_booked(
        &mut self,
        batches: &[Batch],
        cause: &crate::pipeline::WriteError,
        shard: usize,
        stats: &crate::pipeline::Stats,
        gauges: &ShardGauges,
    ) -> Result<(), crate::pipeline::WriteError> {
        use crate::pipeline::batch::Signal;
        use crate::pipeline::stats::LostReason;
        use std::sync::atomic::Ordering;
        let spilled = self.spill(batches, &cause.to_string());
        for old in self.take_evicted() {
            gauges.dlq_evicted_files.fetch_add(1, Ordering::Relaxed);
            for s in Signal::ALL {
                let n = old.items[s.index()];
                let st = stats.signal(s);
                st.add_lost(LostReason::DlqEvicted, n);
                st.dlq_pending_items.fetch_sub(n as i64, Ordering::Relaxed);
            }
        }
        if spilled.is_ok() {
            gauges.dlq_spilled_files.fetch_add(1, Ordering::Relaxed);
        }
        stats.dlq_failing.set(shard, spilled.is_err());
        self.publish(gauges);
        spilled.map(drop).map_err(|e| crate::pipeline::WriteError::Spill(e.to_string()))
    }

    /// Forgets the oldest file without touching the disk (it is already gone).
    pub fn forget_oldest(&mut self) -> Option<Entry> {
        self.files.pop_front()
    }

    /// Reads and checks the oldest file.
    pub fn load(&self, e: &Entry) -> Result<Decoded, DlqError> {
        let bytes = fs::read(&e.path)?;
        decode(&bytes, self.shard)
    }

    /// Deletes the oldest file (replayed). Once the unlink succeeded the file is gone and
    /// forgotten even if the directory fsync then fails (logged): should the name come back after
    /// a crash, `dlq_applied` makes its replay a no-op.
    pub fn remove_oldest(&mut self) -> io::Result<()> {
        if let Some(e) = self.files.pop_front() {
            match fs::remove_file(&e.path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    self.files.push_front(e);
                    return Err(err);
                }
            }
            if let Err(err) = fsync_dir(&self.dir, &self.faults) {
                tracing::warn!(file = %e.path.display(), error = %err,
                    "dlq directory fsync failed after deleting a replayed file; it stays deleted");
            }
        }
        Ok(())
    }

    /// Moves the oldest file (damaged) to `corrupt/` and forgets it. A file already gone
    /// (NotFound) is forgotten too.
    pub fn set_aside_oldest(&mut self) -> io::Result<Option<Entry>> {
        let Some(e) = self.files.pop_front() else { return Ok(None) };
        match self.set_aside(&e.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                self.files.push_front(e);
                return Err(err);
            }
        }
        Ok(Some(e))
    }

    /// Moves `path` to `corrupt/`. Once the rename succeeded the file has left the DLQ: a failing
    /// directory fsync is logged, not returned (the entry must not be kept for a file that is no
    /// longer under its name).
    fn set_aside(&self, path: &Path) -> io::Result<()> {
        let corrupt = self.dir.join(CORRUPT_DIR);
        fs::create_dir_all(&corrupt)?;
        let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        fs::rename(path, corrupt.join(name))?;
        if let Err(err) = fsync_dir(&self.dir, &self.faults) {
            tracing::warn!(file = %path.display(), error = %err,
                "dlq directory fsync failed after setting a file aside; it stays set aside");
        }
        Ok(())
    }

    /// Checks that the DLQ directory takes a durable write again (after a spill or a file
    /// operation failed): writes [`PROBE_BYTES`] to a hidden file, fsyncs it and removes it. The
    /// name does not start with `shard-`, so a leftover (a crash mid-probe) is never taken for a
    /// DLQ file. Goes through the same failure hook as spills.
    pub fn probe(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!(".probe-shard-{:02}", self.shard));
        let result = (|| {
            let mut f = File::create(&path)?;
            f.write_all(&[0u8; PROBE_BYTES])?;
            f.sync_all()?;
            self.faults.dlq_write()
        })();
        // Best effort: the name is fixed, so a leftover is overwritten by the next probe.
        let _ = fs::remove_file(&path);
        result
    }

    /// Writes poison units to `poison/` (same format, so they can be inspected or re-fed).
    pub fn write_poison(
        &mut self,
        batches: &[Batch],
        file_id: &str,
        first: u64,
        cause: &str,
    ) -> io::Result<PathBuf> {
        let dir = self.dir.join(POISON_DIR);
        fs::create_dir_all(&dir)?;
        let seq = self.next_seq();
        let bytes = encode(batches, self.shard as u32, unix_nano_now(), seq, cause);
        let name = format!("shard-{:02}-{file_id}-unit-{first}{SUFFIX}", self.shard);
        write_atomic(&dir, &name, &bytes, &self.faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = Header {
            shard: 3,
            created_unix_nano: 42,
            seq: 7,
            items: [1, 2, 3],
            units: 6,
            body_len: 99,
            body_crc: 5,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        let mut bad = b;
        bad[20] ^= 1;
        assert!(Header::decode(&bad).is_err());
        assert!(Header::decode(&b[..40]).is_err());
    }
}
