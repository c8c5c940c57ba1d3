//! RowBinary encoding of the pipeline's rows into the tables of [`super::schema`], one body per
//! table, columns in the order the table lists them.
//!
//! RowBinary (the format every ClickHouse release reads over HTTP): integers and floats
//! little-endian, `String` as a LEB128 length and the bytes, `DateTime` as a `UInt32` of unix
//! seconds, `Array(T)` as a LEB128 count and the elements, `Nullable(T)` as one byte (1 = NULL)
//! followed by the value when it is not NULL. A `Nested` column is its flattened arrays.
//!
//! Cost (it runs on the writer threads, once per stored row): attribute JSON is read by a
//! streaming visitor straight into reusable buffers (no map, no per-key `String`); a resource's
//! arrays are encoded once per distinct resource and copied after; each table's body is sized
//! from the bytes per row of the previous group, so it is not regrown row by row.

use super::schema::{self, Table};
use crate::pipeline::batch::{Batch, LogRow, MetricKind, MetricPointRow, NumberValue, Rows, SpanRow};
use crate::pipeline::route::Fnv1a;
use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use std::fmt::Write as _;
use std::sync::Arc;

/// One table's rows, encoded.
#[derive(Debug)]
pub struct Body {
    pub table: &'static Table,
    pub rows: usize,
    pub bytes: Vec<u8>,
}

/// Bytes per row assumed for a table before any group was encoded.
const FIRST_ROW_BYTES: usize = 512;
/// Most bytes reserved for one body ahead of encoding: one group of unusually large rows must
/// not make the next group reserve gigabytes (a body past it grows as it is written).
pub const MAX_RESERVED_BODY_BYTES: usize = 64 << 20;

/// A writer's encoder: keeps its buffers and each table's bytes per row between groups.
#[derive(Debug)]
pub struct Encoder {
    /// Bytes per row of each table's last body, for sizing the next.
    row_bytes: [usize; schema::TABLES.len()],
    attrs: AttrScratch,
}

impl Default for Encoder {
    fn default() -> Self {
        Self { row_bytes: [FIRST_ROW_BYTES; schema::TABLES.len()], attrs: AttrScratch::default() }
    }
}

impl Encoder {
    /// Every non-empty table body of `batches`, in [`schema::TABLES`] order.
    pub fn encode(&mut self, batches: &[Batch]) -> Vec<Body> {
        let mut rows = [0usize; schema::TABLES.len()];
        for b in batches {
            match &b.rows {
                Rows::Traces(groups) => {
                    for g in groups {
                        rows[0] += g.spans.len();
                        rows[1] += g.logs.len();
                    }
                }
                Rows::Logs(records) => rows[1] += records.len(),
                Rows::Metrics(points) => {
                    for m in points {
                        rows[table_of(m.kind)] += 1;
                    }
                }
            }
        }
        let mut bodies: Vec<Body> = schema::TABLES
            .iter()
            .zip(rows)
            .zip(self.row_bytes)
            .map(|((&table, n), per_row)| Body {
                table,
                rows: 0,
                // 1/8 over the last group's size: a little growth costs no second copy.
                bytes: Vec::with_capacity(
                    n.saturating_mul(per_row + per_row / 8).min(MAX_RESERVED_BODY_BYTES),
                ),
            })
            .collect();
        encode_into(&mut bodies, batches, &mut self.attrs);
        for (body, per_row) in bodies.iter().zip(self.row_bytes.iter_mut()) {
            if let Some(n) = body.bytes.len().checked_div(body.rows) {
                *per_row = n;
            }
        }
        bodies.retain(|b| b.rows > 0);
        bodies
    }
}

/// The index in [`schema::TABLES`] of a metric kind's table.
fn table_of(kind: MetricKind) -> usize {
    match kind {
        MetricKind::Gauge => 2,
        MetricKind::Sum => 3,
        MetricKind::Histogram => 4,
        MetricKind::ExponentialHistogram => 5,
        MetricKind::Summary => 6,
    }
}

fn encode_into(bodies: &mut [Body], batches: &[Batch], scratch: &mut AttrScratch) {
    let mut attrs = AttrCache { last: None, scratch };
    for b in batches {
        let at = b.received.unix_nano;
        match &b.rows {
            Rows::Traces(groups) => {
                for g in groups {
                    for s in &g.spans {
                        if let Some(body) = bodies.get_mut(0) {
                            span(&mut body.bytes, s, at, &mut attrs);
                            body.rows += 1;
                        }
                    }
                    for l in &g.logs {
                        if let Some(body) = bodies.get_mut(1) {
                            log(&mut body.bytes, l, at, &mut attrs);
                            body.rows += 1;
                        }
                    }
                }
            }
            Rows::Logs(records) => {
                for l in records {
                    if let Some(body) = bodies.get_mut(1) {
                        log(&mut body.bytes, l, at, &mut attrs);
                        body.rows += 1;
                    }
                }
            }
            Rows::Metrics(points) => {
                for m in points {
                    if let Some(body) = bodies.get_mut(table_of(m.kind)) {
                        point(&mut body.bytes, m, at, &mut attrs);
                        body.rows += 1;
                    }
                }
            }
        }
    }
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    leb128(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn u8_(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
fn i32_(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn u64_(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn f64_(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Unix nanoseconds as the `UInt64` column (negative times are 0).
fn ns(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Unix nanoseconds as a `DateTime` (UInt32 seconds, clamped to its range).
fn datetime(out: &mut Vec<u8>, unix_nano: i64) {
    let secs = unix_nano.div_euclid(1_000_000_000).clamp(0, i64::from(u32::MAX));
    out.extend_from_slice(&(secs as u32).to_le_bytes());
}

fn nullable_f64(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => out.push(1),
        Some(x) => {
            out.push(0);
            f64_(out, x);
        }
    }
}

fn hex32(id: Option<&crate::pipeline::batch::TraceId>, out: &mut Vec<u8>) {
    let mut buf = [0u8; 32];
    string(out, id.map_or("", |t| t.hex(&mut buf)));
}
fn hex16(id: Option<&crate::pipeline::batch::SpanId>, out: &mut Vec<u8>) {
    let mut buf = [0u8; 16];
    string(out, id.map_or("", |s| s.hex(&mut buf)));
}

/// Reusable buffers for one attribute map's three `Nested` arrays (keys, values as text, values
/// as numbers) while it is read.
#[derive(Debug, Default)]
struct AttrScratch {
    n: u64,
    keys: Vec<u8>,
    texts: Vec<u8>,
    nums: Vec<u8>,
    /// A number's text while it is formatted.
    number: String,
}

impl AttrScratch {
    fn clear(&mut self) {
        self.n = 0;
        self.keys.clear();
        self.texts.clear();
        self.nums.clear();
    }
}

/// Appends typed attribute JSON (DESIGN 1.4) as the three arrays: keys in the object's order,
/// each value's text (a string as itself, a number or bool as its JSON text, null as `""`, an
/// array or object as its compact JSON) and its number (NaN unless the value is a number). Text
/// that is not a JSON object (never produced by the decoder) becomes one `""` key holding the
/// text, so nothing is dropped silently.
fn encode_attrs(out: &mut Vec<u8>, json: &str, sc: &mut AttrScratch) {
    sc.clear();
    if !json.is_empty() {
        let mut de = serde_json::Deserializer::from_str(json);
        let read = de.deserialize_map(ObjectVisitor(sc)).and_then(|()| de.end());
        if read.is_err() {
            sc.clear();
            string(&mut sc.keys, "");
            string(&mut sc.texts, json);
            f64_(&mut sc.nums, f64::NAN);
            sc.n = 1;
        }
    }
    for part in [&sc.keys, &sc.texts, &sc.nums] {
        leb128(out, sc.n);
        out.extend_from_slice(part);
    }
}

/// Reads one attribute object into an [`AttrScratch`].
struct ObjectVisitor<'s>(&'s mut AttrScratch);

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an attribute object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let sc = self.0;
        while map.next_key_seed(KeySeed(&mut sc.keys))?.is_some() {
            map.next_value_seed(ValueSeed {
                texts: &mut sc.texts,
                nums: &mut sc.nums,
                number: &mut sc.number,
            })?;
            sc.n += 1;
        }
        Ok(())
    }
}

/// Appends a key (a RowBinary string) to the keys array.
struct KeySeed<'s>(&'s mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        string(self.0, v);
        Ok(())
    }
}

/// Appends a value's text and number to their arrays.
struct ValueSeed<'s> {
    texts: &'s mut Vec<u8>,
    nums: &'s mut Vec<u8>,
    number: &'s mut String,
}

impl ValueSeed<'_> {
    fn put(self, text: &str, num: f64) {
        string(self.texts, text);
        f64_(self.nums, num);
    }
    fn put_number(self, v: impl std::fmt::Display, num: f64) {
        self.number.clear();
        let _ = write!(self.number, "{v}");
        string(self.texts, self.number);
        f64_(self.nums, num);
    }
    fn put_json(self, v: &serde_json::Value) {
        self.number.clear();
        let _ = write!(self.number, "{v}");
        string(self.texts, self.number);
        f64_(self.nums, f64::NAN);
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an attribute value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.put(v, f64::NAN);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.put(if v { "true" } else { "false" }, f64::NAN);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.put("", f64::NAN);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.put_number(v, v as f64);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.put_number(v, v as f64);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // serde_json's text for the number, as a `Value` would print it.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.put_number(n, v),
            None => self.put("", f64::NAN),
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let v: serde_json::Value = de::Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        self.put_json(&v);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v: serde_json::Value = de::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.put_json(&v);
        Ok(())
    }
}

/// Resource attributes are one `Arc<str>` shared by every row of a resource: encoded once per
/// distinct pointer (the last one seen), not once per row.
struct AttrCache<'s> {
    last: Option<(Arc<str>, Vec<u8>)>,
    scratch: &'s mut AttrScratch,
}

impl AttrCache<'_> {
    fn resource(&mut self, out: &mut Vec<u8>, res: &Arc<str>) {
        match &self.last {
            Some((k, e)) if Arc::ptr_eq(k, res) => out.extend_from_slice(e),
            _ => {
                let mut e = Vec::new();
                encode_attrs(&mut e, res, self.scratch);
                out.extend_from_slice(&e);
                self.last = Some((res.clone(), e));
            }
        }
    }
    fn attrs(&mut self, out: &mut Vec<u8>, json: &str) {
        encode_attrs(out, json, self.scratch);
    }
}

fn span(out: &mut Vec<u8>, s: &SpanRow, ingested_at: i64, cache: &mut AttrCache) {
    datetime(out, s.start_time_unix_nano);
    u64_(out, ns(s.start_time_unix_nano));
    string(out, &s.tenant_id);
    hex32(Some(&s.trace_id), out);
    hex16(Some(&s.span_id), out);
    hex16(s.parent_span_id.as_ref(), out);
    string(out, &s.name);
    string(out, s.kind.as_str());
    string(out, &s.service_name);
    string(out, &s.scope_name);
    u64_(out, ns(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)));
    string(out, s.status_code.as_str());
    string(out, &s.status_message);
    datetime(out, ingested_at);
    u64_(out, ns(s.end_time_unix_nano));
    u64_(out, ns(ingested_at));
    cache.resource(out, &s.resource_attributes);
    cache.attrs(out, &s.attributes);
}

/// The identity hash of a log record: every column but the ingest time.
pub fn log_id(l: &LogRow) -> u64 {
    let mut tb = [0u8; 32];
    let mut sb = [0u8; 16];
    let sep = [0xffu8];
    Fnv1a::default()
        .write(l.tenant_id.as_bytes())
        .write(&sep)
        .write(&l.time_unix_nano.to_le_bytes())
        .write(&l.observed_time_unix_nano.to_le_bytes())
        .write(&l.severity_number.to_le_bytes())
        .write(l.severity_text.as_bytes())
        .write(&sep)
        .write(&[u8::from(l.body.is_some())])
        .write(l.body.as_deref().unwrap_or("").as_bytes())
        .write(&sep)
        .write(l.trace_id.as_ref().map_or("", |t| t.hex(&mut tb)).as_bytes())
        .write(&sep)
        .write(l.span_id.as_ref().map_or("", |s| s.hex(&mut sb)).as_bytes())
        .write(&sep)
        .write(l.service_name.as_bytes())
        .write(&sep)
        .write(l.attributes.as_bytes())
        .write(&sep)
        .write(l.resource_attributes.as_bytes())
        .write(&sep)
        .write(l.scope_name.as_bytes())
        .finish()
}

fn log(out: &mut Vec<u8>, l: &LogRow, ingested_at: i64, cache: &mut AttrCache) {
    datetime(out, l.time_unix_nano);
    u64_(out, ns(l.time_unix_nano));
    u64_(out, ns(l.observed_time_unix_nano));
    string(out, &l.tenant_id);
    hex32(l.trace_id.as_ref(), out);
    hex16(l.span_id.as_ref(), out);
    string(out, &l.severity_text);
    i32_(out, l.severity_number);
    string(out, &l.service_name);
    string(out, l.body.as_deref().unwrap_or(""));
    string(out, &l.scope_name);
    u64_(out, log_id(l));
    datetime(out, ingested_at);
    u64_(out, ns(ingested_at));
    u8_(out, u8::from(l.body.is_some()));
    cache.resource(out, &l.resource_attributes);
    cache.attrs(out, &l.attributes);
}

/// The identity hash of a metric point: every column but the ingest time.
pub fn point_id(m: &MetricPointRow) -> u64 {
    let sep = [0xffu8];
    let opt_s = |s: &Option<String>| s.as_deref().unwrap_or("\u{0}").to_owned();
    let mut h = Fnv1a::default()
        .write(m.tenant_id.as_bytes())
        .write(&sep)
        .write(m.service_name.as_bytes())
        .write(&sep)
        .write(m.name.as_bytes())
        .write(&sep)
        .write(m.description.as_bytes())
        .write(&sep)
        .write(m.unit.as_bytes())
        .write(&sep)
        .write(m.kind.as_str().as_bytes())
        .write(&sep)
        .write(m.temporality.map_or("", |t| t.as_str()).as_bytes())
        .write(&[m.is_monotonic.map_or(2, u8::from)])
        .write(&m.time_unix_nano.to_le_bytes())
        .write(&m.start_time_unix_nano.to_le_bytes());
    h = match m.value {
        None => h.write(&[0]),
        Some(NumberValue::Int(i)) => h.write(&[1]).write(&i.to_le_bytes()),
        Some(NumberValue::Double(d)) => h.write(&[2]).write(&d.to_bits().to_le_bytes()),
    };
    h = h
        .write(&m.count.map_or([0xff; 8], u64::to_le_bytes))
        .write(&m.sum.map_or(u64::MAX, f64::to_bits).to_le_bytes())
        .write(&m.min.map_or(u64::MAX, f64::to_bits).to_le_bytes())
        .write(&m.max.map_or(u64::MAX, f64::to_bits).to_le_bytes())
        .write(&m.scale.map_or([0xff; 4], i32::to_le_bytes))
        .write(&m.zero_count.map_or([0xff; 8], u64::to_le_bytes))
        .write(&m.positive_offset.map_or([0xff; 4], i32::to_le_bytes))
        .write(&m.negative_offset.map_or([0xff; 4], i32::to_le_bytes));
    for s in [
        &m.bucket_counts,
        &m.explicit_bounds,
        &m.positive_bucket_counts,
        &m.negative_bucket_counts,
        &m.quantiles,
    ] {
        h = h.write(opt_s(s).as_bytes()).write(&sep);
    }
    h.write(m.attributes.as_bytes())
        .write(&sep)
        .write(m.resource_attributes.as_bytes())
        .write(&sep)
        .write(m.scope_name.as_bytes())
        .finish()
}

/// A JSON array text of numbers (`bucket_counts`, `explicit_bounds`) as `Array(UInt64)`.
fn array_u64(out: &mut Vec<u8>, json: Option<&str>) {
    let v: Vec<u64> = json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    leb128(out, v.len() as u64);
    for x in v {
        u64_(out, x);
    }
}

/// A JSON array text of numbers as `Array(Float64)`; the non-finite values of DESIGN 1.4
/// (`"NaN"`, `"Infinity"`, `"-Infinity"`) become the floats they name.
fn array_f64(out: &mut Vec<u8>, json: Option<&str>) {
    let v: Vec<serde_json::Value> = json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    leb128(out, v.len() as u64);
    for x in &v {
        f64_(out, json_f64(x));
    }
}

fn json_f64(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        serde_json::Value::String(s) => match s.as_str() {
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => f64::NAN,
        },
        _ => f64::NAN,
    }
}

fn point(out: &mut Vec<u8>, m: &MetricPointRow, ingested_at: i64, cache: &mut AttrCache) {
    datetime(out, m.time_unix_nano);
    u64_(out, ns(m.time_unix_nano));
    u64_(out, ns(m.start_time_unix_nano));
    string(out, &m.tenant_id);
    string(out, &m.service_name);
    string(out, &m.name);
    string(out, &m.description);
    string(out, &m.unit);
    string(out, &m.scope_name);
    u64_(out, point_id(m));
    datetime(out, ingested_at);
    u64_(out, ns(ingested_at));
    string(out, m.temporality.map_or("", |t| t.as_str()));
    cache.resource(out, &m.resource_attributes);
    cache.attrs(out, &m.attributes);
    let value = |out: &mut Vec<u8>| match m.value {
        Some(NumberValue::Int(i)) => {
            f64_(out, i as f64);
            u8_(out, 1);
        }
        Some(NumberValue::Double(d)) => {
            f64_(out, d);
            u8_(out, 0);
        }
        None => {
            f64_(out, f64::NAN);
            u8_(out, 0);
        }
    };
    match m.kind {
        MetricKind::Gauge => value(out),
        MetricKind::Sum => {
            value(out);
            u8_(out, u8::from(m.is_monotonic.unwrap_or(false)));
        }
        MetricKind::Histogram => {
            u64_(out, m.count.unwrap_or(0));
            nullable_f64(out, m.sum);
            array_u64(out, m.bucket_counts.as_deref());
            array_f64(out, m.explicit_bounds.as_deref());
            nullable_f64(out, m.min);
            nullable_f64(out, m.max);
        }
        MetricKind::ExponentialHistogram => {
            u64_(out, m.count.unwrap_or(0));
            nullable_f64(out, m.sum);
            i32_(out, m.scale.unwrap_or(0));
            u64_(out, m.zero_count.unwrap_or(0));
            i32_(out, m.positive_offset.unwrap_or(0));
            array_u64(out, m.positive_bucket_counts.as_deref());
            i32_(out, m.negative_offset.unwrap_or(0));
            array_u64(out, m.negative_bucket_counts.as_deref());
            nullable_f64(out, m.min);
            nullable_f64(out, m.max);
        }
        MetricKind::Summary => {
            u64_(out, m.count.unwrap_or(0));
            f64_(out, m.sum.unwrap_or(0.0));
            let q: Vec<serde_json::Value> =
                m.quantiles.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
            leb128(out, q.len() as u64);
            for x in &q {
                f64_(out, json_f64(&x["quantile"]));
            }
            leb128(out, q.len() as u64);
            for x in &q {
                f64_(out, json_f64(&x["value"]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_matches_the_reference_encoding() {
        let mut v = Vec::new();
        leb128(&mut v, 0);
        leb128(&mut v, 127);
        leb128(&mut v, 128);
        leb128(&mut v, 300);
        assert_eq!(v, vec![0x00, 0x7f, 0x80, 0x01, 0xac, 0x02]);
    }

    fn attrs_of(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_attrs(&mut out, json, &mut AttrScratch::default());
        out
    }

    fn arrays(entries: &[(&str, &str, f64)]) -> Vec<u8> {
        let mut want = Vec::new();
        leb128(&mut want, entries.len() as u64);
        for (k, _, _) in entries {
            string(&mut want, k);
        }
        leb128(&mut want, entries.len() as u64);
        for (_, t, _) in entries {
            string(&mut want, t);
        }
        leb128(&mut want, entries.len() as u64);
        for (_, _, n) in entries {
            f64_(&mut want, *n);
        }
        want
    }

    #[test]
    fn attributes_keep_numbers_as_numbers() {
        let nan = f64::NAN;
        // Keys in the object's order; NaN bit patterns are equal here (one constant is written).
        assert_eq!(
            attrs_of(r#"{"a":"x","n":200,"f":1.5,"b":true,"l":[1,"y"],"o":{"k":[]},"z":null,"i":-3}"#),
            arrays(&[
                ("a", "x", nan),
                ("n", "200", 200.0),
                ("f", "1.5", 1.5),
                ("b", "true", nan),
                ("l", r#"[1,"y"]"#, nan),
                ("o", r#"{"k":[]}"#, nan),
                ("z", "", nan),
                ("i", "-3", -3.0),
            ])
        );
        // Escapes are decoded in keys and values.
        assert_eq!(attrs_of(r#"{"k\"\u00e9":"a\nb"}"#), arrays(&[("k\"é", "a\nb", nan)]));
        assert_eq!(attrs_of("{}"), arrays(&[]));
        assert_eq!(attrs_of(""), arrays(&[]));
    }

    #[test]
    fn text_that_is_not_an_attribute_object_is_kept_whole_under_an_empty_key() {
        let nan = f64::NAN;
        for text in ["[1,2]", "\"x\"", "{\"a\":1", "{\"a\":1} trailing", "not json"] {
            assert_eq!(attrs_of(text), arrays(&[("", text, nan)]), "{text}");
        }
        // A reused scratch holds nothing of a failed or earlier read.
        let mut sc = AttrScratch::default();
        let mut out = Vec::new();
        encode_attrs(&mut out, "{\"a\":1,", &mut sc);
        out.clear();
        encode_attrs(&mut out, r#"{"b":2}"#, &mut sc);
        assert_eq!(out, arrays(&[("b", "2", 2.0)]));
    }

    fn span_group(trace: u8, spans: u8, resource: &Arc<str>) -> crate::pipeline::batch::TraceGroup {
        use crate::pipeline::batch::{SpanId, SpanKind, StatusCode, TraceGroup, TraceId, TraceRow};
        let tenant: Arc<str> = Arc::from("default");
        let service: Arc<str> = Arc::from("checkout");
        TraceGroup {
            trace: TraceRow {
                tenant_id: tenant.clone(),
                trace_id: TraceId([trace; 16]),
                service_name: service.clone(),
                has_root: true,
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_500_000_000,
                status: StatusCode::Unset,
                priority: false,
            },
            spans: (0..spans)
                .map(|i| SpanRow {
                    tenant_id: tenant.clone(),
                    trace_id: TraceId([trace; 16]),
                    span_id: SpanId([i + 1; 8]),
                    parent_span_id: (i > 0).then_some(SpanId([1; 8])),
                    name: format!("op {i}"),
                    kind: SpanKind::Server,
                    service_name: service.clone(),
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    status_code: StatusCode::Unset,
                    status_message: String::new(),
                    attributes: format!(r#"{{"http.route":"/cart/{i}","http.status_code":200}}"#),
                    resource_attributes: resource.clone(),
                    scope_name: Arc::from("lib"),
                })
                .collect(),
            logs: Vec::new(),
        }
    }

    #[test]
    fn an_encoder_sizes_bodies_from_the_last_group_and_encodes_the_same_bytes() {
        use crate::pipeline::batch::Received;
        let resource: Arc<str> = Arc::from(r#"{"service.name":"checkout","host.name":"node-7"}"#);
        let batch = [Batch::new(
            0,
            Rows::Traces(vec![span_group(1, 50, &resource), span_group(2, 50, &resource)]),
            Received::now(),
        )];
        let mut enc = Encoder::default();
        let first = enc.encode(&batch);
        let second = enc.encode(&batch);
        assert_eq!(first.len(), 1, "spans only");
        assert_eq!((first[0].rows, second[0].rows), (100, 100));
        assert!(first[0].bytes == second[0].bytes, "sizing changed the bytes");
        assert!(Encoder::default().encode(&batch)[0].bytes == first[0].bytes, "a fresh encoder differs");
        // Sized from the first group's bytes per row: the body was not regrown.
        let b = &second[0].bytes;
        assert!(
            b.capacity() >= b.len() && b.capacity() <= b.len() + b.len() / 8 + 100,
            "{} for {}",
            b.capacity(),
            b.len()
        );
        // A group of huge rows does not make the next group reserve past the cap.
        let mut huge = span_group(3, 1, &resource);
        huge.spans[0].attributes = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1 << 20));
        enc.encode(&[Batch::new(0, Rows::Traces(vec![huge]), Received::now())]);
        let after = enc.encode(&batch);
        assert!(after[0].bytes.capacity() <= MAX_RESERVED_BODY_BYTES.max(after[0].bytes.len()));
        assert!(after[0].bytes == first[0].bytes);
        // The resource's arrays were written for every row.
        let needle = attrs_of(&resource);
        assert_eq!(b.windows(needle.len()).filter(|w| *w == &needle[..]).count(), 100);
    }

    #[test]
    fn datetime_clamps_to_uint32() {
        let mut v = Vec::new();
        datetime(&mut v, -5);
        datetime(&mut v, 1_700_000_000_999_999_999);
        assert_eq!(&v[..4], &0u32.to_le_bytes());
        assert_eq!(&v[4..], &1_700_000_000u32.to_le_bytes());
    }
}
