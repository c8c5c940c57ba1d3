//! RowBinary encoding of the pipeline's rows into the tables of [`super::schema`], one body per
//! table, columns in the order the table lists them.
//!
//! RowBinary (the format every ClickHouse release reads over HTTP): integers and floats
//! little-endian, `String` as a LEB128 length and the bytes, `DateTime` as a `UInt32` of unix
//! seconds, `Array(T)` as a LEB128 count and the elements, `Nullable(T)` as one byte (1 = NULL)
//! followed by the value when it is not NULL. A `Nested` column is its flattened arrays.

use super::schema::{self, Table};
use crate::pipeline::batch::{Batch, LogRow, MetricKind, MetricPointRow, NumberValue, Rows, SpanRow};
use crate::pipeline::route::Fnv1a;
use std::sync::Arc;

/// One table's rows, encoded.
#[derive(Debug)]
pub struct Body {
    pub table: &'static Table,
    pub rows: usize,
    pub bytes: Vec<u8>,
}

/// Every non-empty table body of `batches`, in [`schema::TABLES`] order.
pub fn encode(batches: &[Batch]) -> Vec<Body> {
    let mut bodies: Vec<Body> =
        schema::TABLES.iter().map(|&table| Body { table, rows: 0, bytes: Vec::new() }).collect();
    let mut attrs = AttrCache::default();
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
                    let i = match m.kind {
                        MetricKind::Gauge => 2,
                        MetricKind::Sum => 3,
                        MetricKind::Histogram => 4,
                        MetricKind::ExponentialHistogram => 5,
                        MetricKind::Summary => 6,
                    };
                    if let Some(body) = bodies.get_mut(i) {
                        point(&mut body.bytes, m, at, &mut attrs);
                        body.rows += 1;
                    }
                }
            }
        }
    }
    bodies.retain(|b| b.rows > 0);
    bodies
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

/// One attribute map as the three `Nested` arrays (keys, values as text, values as numbers),
/// already encoded.
#[derive(Debug, Default)]
struct Encoded(Vec<u8>);

/// Parses typed attribute JSON (DESIGN 1.4) into the three arrays. Text that is not a JSON
/// object (never produced by the decoder) becomes one `""` key holding the text, so nothing is
/// dropped silently.
fn encode_attrs(json: &str) -> Encoded {
    let mut keys: Vec<&str> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut nums: Vec<f64> = Vec::new();
    let parsed: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(json).ok();
    let mut out = Vec::new();
    match &parsed {
        Some(map) => {
            for (k, v) in map {
                keys.push(k);
                let (text, num) = match v {
                    serde_json::Value::String(s) => (s.clone(), f64::NAN),
                    serde_json::Value::Number(n) => (n.to_string(), n.as_f64().unwrap_or(f64::NAN)),
                    serde_json::Value::Bool(b) => (b.to_string(), f64::NAN),
                    serde_json::Value::Null => (String::new(), f64::NAN),
                    other => (other.to_string(), f64::NAN),
                };
                texts.push(text);
                nums.push(num);
            }
        }
        None if json.is_empty() => {}
        None => {
            keys.push("");
            texts.push(json.to_owned());
            nums.push(f64::NAN);
        }
    }
    leb128(&mut out, keys.len() as u64);
    for k in &keys {
        string(&mut out, k);
    }
    leb128(&mut out, texts.len() as u64);
    for t in &texts {
        string(&mut out, t);
    }
    leb128(&mut out, nums.len() as u64);
    for n in &nums {
        f64_(&mut out, *n);
    }
    Encoded(out)
}

/// Resource attributes are one `Arc<str>` shared by every row of a resource: encoded once per
/// distinct pointer (the last one seen), not once per row.
#[derive(Default)]
struct AttrCache {
    last: Option<(Arc<str>, Encoded)>,
}

impl AttrCache {
    fn resource(&mut self, out: &mut Vec<u8>, res: &Arc<str>) {
        match &self.last {
            Some((k, e)) if Arc::ptr_eq(k, res) => out.extend_from_slice(&e.0),
            _ => {
                let e = encode_attrs(res);
                out.extend_from_slice(&e.0);
                self.last = Some((res.clone(), e));
            }
        }
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
    out.extend_from_slice(&encode_attrs(&s.attributes).0);
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
    out.extend_from_slice(&encode_attrs(&l.attributes).0);
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
    out.extend_from_slice(&encode_attrs(&m.attributes).0);
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

    #[test]
    fn attributes_keep_numbers_as_numbers() {
        let e = encode_attrs(r#"{"a":"x","n":200,"f":1.5,"b":true,"l":[1,"y"]}"#);
        let mut want = Vec::new();
        // serde_json's map without preserve_order iterates in key order: a, b, f, l, n.
        leb128(&mut want, 5);
        for k in ["a", "b", "f", "l", "n"] {
            string(&mut want, k);
        }
        leb128(&mut want, 5);
        for t in ["x", "true", "1.5", r#"[1,"y"]"#, "200"] {
            string(&mut want, t);
        }
        leb128(&mut want, 5);
        for (i, n) in [f64::NAN, f64::NAN, 1.5, f64::NAN, 200.0].into_iter().enumerate() {
            let _ = i;
            f64_(&mut want, n);
        }
        // NaN bit patterns are equal here (the same constant is written).
        assert_eq!(e.0, want);
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
