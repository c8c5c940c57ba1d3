//! JSON text output for row columns (DESIGN 1.4): escaped strings, integers, floats with
//! NaN/±Inf as the strings `"NaN"`/`"Infinity"`/`"-Infinity"`, bytes as base64, and objects whose
//! duplicate keys are resolved "last wins".
//!
//! Every decoder (protobuf, OTLP/JSON, and the prost reference used by tests and benches) writes
//! attribute objects through these functions, so the three produce byte-identical text for the
//! same data. Nothing here allocates except by appending to the caller's `String`; duplicate keys
//! are detected cheaply and only then is the object rebuilt.

use base64::Engine as _;

/// Objects with at most this many keys check duplicates pairwise (cheaper than sorting for the
/// 5 to 15 attributes a typical span carries); larger ones sort key indices.
const PAIRWISE_DUP_CHECK_MAX: usize = 16;

/// Appends `s` as a quoted, escaped JSON string.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Appends the escaped body of a JSON string (no quotes).
pub fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Fast path: most keys and values need no escaping (a tight scan, then one copy).
    let Some(first) = bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\') else {
        out.push_str(s);
        return;
    };
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(s.get(start..i).unwrap_or_default());
        if esc.is_empty() {
            out.push_str("\\u00");
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
}

/// "00" to "99": two-digit chunks for [`push_u64`], as a `&str` so they are appended without
/// re-validating UTF-8.
const TWO_DIGITS: &str = match std::str::from_utf8(&two_digit_table()) {
    Ok(s) => s,
    Err(_) => "",
};

const fn two_digit_table() -> [u8; 200] {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
}

/// Appends `n` < 100 as two digits, or as one when `trim` and `n` < 10.
#[inline]
fn push_two(out: &mut String, n: u64, trim: bool) {
    let i = (n as usize) * 2;
    let from = if trim && n < 10 { i + 1 } else { i };
    out.push_str(TWO_DIGITS.get(from..i + 2).unwrap_or_default());
}

/// Appends an unsigned integer in decimal. Values below 10,000 (bucket counts, ports, status
/// codes, most bounds) take one or two table lookups; this was a quarter of histogram
/// conversion when written digit by digit.
pub fn push_u64(out: &mut String, v: u64) {
    if v < 100 {
        push_two(out, v, true);
        return;
    }
    if v < 10_000 {
        push_two(out, v / 100, true);
        push_two(out, v % 100, false);
        return;
    }
    // Larger values: two digits at a time from the right into a stack buffer (u64::MAX has 20
    // digits), then appended chunk by chunk.
    let mut chunks = [0u64; 10];
    let mut n = 0;
    let mut rest = v;
    while rest >= 100 {
        if let Some(c) = chunks.get_mut(n) {
            *c = rest % 100;
        }
        n += 1;
        rest /= 100;
    }
    push_two(out, rest, true);
    for &c in chunks.iter().take(n).rev() {
        push_two(out, c, false);
    }
}

/// Appends a signed integer in decimal.
pub fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// Appends a double: a JSON number when finite (shortest round-trip form), else the string
/// `"NaN"`, `"Infinity"` or `"-Infinity"` (JSON has no literal for them).
pub fn push_f64(out: &mut String, v: f64) {
    use serde_json::ser::Formatter as _;
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("\"NaN\"");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else if v.trunc() == v && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // Integral values (histogram bounds, counters sent as doubles) without the float
        // formatter: "5.0". Exact below 1e15 (< 2^53).
        push_i64(out, v as i64);
        out.push_str(".0");
    } else {
        // The shortest representation that round-trips (ryu, through serde_json's formatter),
        // with an exponent for very large or small magnitudes ("1e300", "1e-7"). It is about 4×
        // cheaper than `{:?}`, which dominated histogram conversion (explicit bounds).
        let mut buf = [0u8; 32];
        let mut w: &mut [u8] = &mut buf;
        let room = w.len();
        if serde_json::ser::CompactFormatter.write_f64(&mut w, v).is_ok() {
            let used = room - w.len();
            if let Some(text) = buf.get(..used).filter(|t| t.is_ascii()) {
                out.reserve(text.len());
                for &c in text {
                    out.push(char::from(c));
                }
                return;
            }
        }
        let _ = write!(out, "{v:?}");
    }
}

/// Appends `true` or `false`.
pub fn push_bool(out: &mut String, v: bool) {
    out.push_str(if v { "true" } else { "false" });
}

/// Appends bytes as a quoted standard base64 string.
pub fn push_b64(out: &mut String, b: &[u8]) {
    out.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(b, out);
    out.push('"');
}

/// Capacity hints per array element (separator included) for histogram arrays: bucket counts
/// are mostly 1 to 3 digits, explicit bounds up to 7 characters ("10000.0").
pub const U64_ELEM_HINT: usize = 4;
pub const F64_ELEM_HINT: usize = 8;

/// Appends an array element separator (`,` unless the array was just opened).
#[inline]
pub fn sep(out: &mut String) {
    if !out.ends_with('[') {
        out.push(',');
    }
}

/// Appends `{"quantile":q,"value":v}` (an element of the `quantiles` column).
pub fn push_quantile(out: &mut String, quantile: f64, value: f64) {
    out.push_str("{\"quantile\":");
    push_f64(out, quantile);
    out.push_str(",\"value\":");
    push_f64(out, value);
    out.push('}');
}

/// Tracks open JSON objects in one output `String` so duplicate keys can be resolved when each
/// object closes. Reusable across items (its vectors keep their capacity).
#[derive(Default, Debug)]
pub struct ObjWriter {
    /// For every key written into a still-open object: (entry start, key end) offsets in the
    /// output. An entry is `"key":value`; it ends where the next entry's comma is, or at the
    /// object's end.
    entries: Vec<(usize, usize)>,
    /// Open objects: (offset of `{`, index of the object's first entry in `entries`).
    frames: Vec<(usize, usize)>,
    /// Scratch for the sort-based duplicate check of large objects.
    idx: Vec<usize>,
}

impl ObjWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens an object (`{`).
    pub fn open(&mut self, out: &mut String) {
        self.frames.push((out.len(), self.entries.len()));
        out.push('{');
    }

    /// Writes the key of the next entry (`,"key":`); the caller writes its value next.
    pub fn key(&mut self, out: &mut String, key: &str) {
        if self.frames.last().is_some_and(|&(_, first)| self.entries.len() > first) {
            out.push(',');
        }
        let start = out.len();
        push_str(out, key);
        self.entries.push((start, out.len()));
        out.push(':');
    }

    /// Closes the innermost object (`}`), keeping only the last entry of each duplicated key.
    pub fn close(&mut self, out: &mut String) {
        let Some((obj_start, first)) = self.frames.pop() else {
            return;
        };
        if self.has_duplicates(out, first) {
            self.rebuild(out, obj_start, first);
        }
        self.entries.truncate(first);
        out.push('}');
    }

    /// The escaped key text of entry `i` as bytes (no char-boundary checks: escaping is
    /// injective, so equal bytes mean equal keys).
    #[inline]
    fn key_at<'o>(&self, out: &'o str, i: usize) -> &'o [u8] {
        self.entries.get(i).and_then(|&(s, e)| out.as_bytes().get(s..e)).unwrap_or_default()
    }

    fn has_duplicates(&mut self, out: &str, first: usize) -> bool {
        let n = self.entries.len() - first;
        if n < 2 {
            return false;
        }
        if n <= PAIRWISE_DUP_CHECK_MAX {
            for i in first..self.entries.len() {
                let k = self.key_at(out, i);
                for j in first..i {
                    if self.key_at(out, j) == k {
                        return true;
                    }
                }
            }
            return false;
        }
        let mut idx = std::mem::take(&mut self.idx);
        idx.clear();
        idx.extend(first..self.entries.len());
        idx.sort_unstable_by(|&a, &b| self.key_at(out, a).cmp(self.key_at(out, b)));
        let dup = idx.windows(2).any(|w| matches!(*w, [a, b] if self.key_at(out, a) == self.key_at(out, b)));
        self.idx = idx;
        dup
    }

    /// Rewrites the open object's entries keeping the last occurrence of each key, in the order
    /// of those last occurrences. Runs only when a duplicate was found.
    fn rebuild(&mut self, out: &mut String, obj_start: usize, first: usize) {
        let end = out.len();
        let entries = self.entries.get(first..).unwrap_or_default();
        // Entry i spans from its start to the next entry's start minus the comma, or to `end`.
        let spans: Vec<(usize, usize, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, &(s, k))| (s, k, entries.get(i + 1).map_or(end, |n| n.0 - 1)))
            .collect();
        let key = |&(s, k, _): &(usize, usize, usize)| out.get(s..k).unwrap_or_default();
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by(|&a, &b| {
            let (ka, kb) = (spans.get(a).map(key), spans.get(b).map(key));
            ka.cmp(&kb).then(a.cmp(&b))
        });
        // In key order (ties by position), an entry is superseded when the next has its key.
        let mut keep = vec![true; spans.len()];
        for w in order.windows(2) {
            if let [a, b] = *w {
                if spans.get(a).map(key) == spans.get(b).map(key) {
                    if let Some(k) = keep.get_mut(a) {
                        *k = false;
                    }
                }
            }
        }
        let mut rebuilt = String::with_capacity(end - obj_start);
        for (&(s, _, e), _) in spans.iter().zip(&keep).filter(|(_, k)| **k) {
            if !rebuilt.is_empty() {
                rebuilt.push(',');
            }
            rebuilt.push_str(out.get(s..e).unwrap_or_default());
        }
        out.truncate(obj_start + 1);
        out.push_str(&rebuilt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(pairs: &[(&str, &str)]) -> String {
        let mut w = ObjWriter::new();
        let mut out = String::new();
        w.open(&mut out);
        for (k, v) in pairs {
            w.key(&mut out, k);
            out.push_str(v);
        }
        w.close(&mut out);
        out
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\nd\u{1}é\u{7f}");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é\u{7f}");
    }

    #[test]
    fn numbers_and_non_finite_floats() {
        let mut s = String::new();
        for v in [0i64, -1, i64::MIN, i64::MAX] {
            s.clear();
            push_i64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        let big = (0..64).map(|b| 1u64 << b).chain((0..20).map(|e| 10u64.pow(e) - 1)).chain([u64::MAX]);
        for v in (0..=20_000u64).chain(big) {
            s.clear();
            push_u64(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        for (v, t) in
            [(f64::NAN, "\"NaN\""), (f64::INFINITY, "\"Infinity\""), (f64::NEG_INFINITY, "\"-Infinity\"")]
        {
            s.clear();
            push_f64(&mut s, v);
            assert_eq!(s, t);
        }
        for v in [0.1, 1e300, -2.5e-7, 1.0, -0.0] {
            s.clear();
            push_f64(&mut s, v);
            let back: f64 = serde_json::from_str(&s).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{s}");
        }
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(obj(&[("a", "1"), ("b", "2")]), r#"{"a":1,"b":2}"#);
        assert_eq!(obj(&[("a", "1"), ("b", "2"), ("a", "3")]), r#"{"b":2,"a":3}"#);
        assert_eq!(obj(&[]), "{}");
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("k{}", i % 30), i.to_string())).collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let v: serde_json::Value = serde_json::from_str(&obj(&pairs)).unwrap();
        let m = v.as_object().unwrap();
        assert_eq!(m.len(), 30);
        assert_eq!(m["k0"], 30);
        assert_eq!(m["k29"], 29);
    }

    #[test]
    fn nested_objects_dedup_independently() {
        let mut w = ObjWriter::new();
        let mut out = String::new();
        w.open(&mut out);
        w.key(&mut out, "x");
        w.open(&mut out);
        w.key(&mut out, "x");
        out.push('1');
        w.key(&mut out, "x");
        out.push('2');
        w.close(&mut out);
        w.key(&mut out, "y");
        out.push_str("null");
        w.close(&mut out);
        assert_eq!(out, r#"{"x":{"x":2},"y":null}"#);
    }
}
