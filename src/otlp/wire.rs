//! Protobuf wire primitives: one [`Msg`] cursor per message slice, typed reads that check the
//! wire type and name the field on error, and unknown-field skipping for every wire type
//! (through `quick_protobuf::BytesReader`; groups iteratively, depth-limited).

use super::DecodeError;
use quick_protobuf::BytesReader;

/// Deepest nesting of (deprecated) groups inside an unknown field that we skip. prost's own
/// recursion limit is 100; groups never appear in OTLP, so a small bound costs nothing.
const MAX_GROUP_DEPTH: usize = 32;

pub const WT_VARINT: u8 = 0;
pub const WT_I64: u8 = 1;
pub const WT_LEN: u8 = 2;
const WT_SGROUP: u8 = 3;
const WT_EGROUP: u8 = 4;
pub const WT_I32: u8 = 5;

fn truncated(msg: &str) -> DecodeError {
    DecodeError::malformed(format!("truncated or malformed protobuf in {msg}"))
}

fn wrong_type(field: &str, wt: u8) -> DecodeError {
    DecodeError::malformed(format!("wrong wire type {wt} for {field}"))
}

/// A cursor over one message's bytes.
///
/// The hot reads (tags, lengths, fixed64) are decoded here, inlined, rather than through
/// `quick_protobuf::BytesReader`: quick-protobuf 0.8.1 marks them
/// `#[cfg_attr(std, inline(always))]`, but `std` is a cargo *feature*, not a cfg, so the
/// attribute never applies and every tag and length became an out-of-line call (about a third of
/// the decode time in `perf` on the 5 × 100-span request). Skipping unknown fields and packed
/// varints still go through `BytesReader`.
pub struct Msg<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Message name for errors ("Span").
    name: &'static str,
}

/// Longest varint (10 bytes for 64 bits).
const MAX_VARINT_LEN: usize = 10;

impl<'a> Msg<'a> {
    #[inline]
    pub fn new(buf: &'a [u8], name: &'static str) -> Self {
        Self { buf, pos: 0, name }
    }

    /// Reads a varint; `None` when truncated or longer than 64 bits.
    #[inline(always)]
    fn read_varint(&mut self) -> Option<u64> {
        let b = *self.buf.get(self.pos)?;
        if b < 0x80 {
            self.pos += 1;
            return Some(u64::from(b));
        }
        self.read_varint_slow()
    }

    #[cold]
    fn read_varint_slow(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = *self.buf.get(self.pos + i)?;
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Some(v);
            }
        }
        None
    }

    /// The next field's (number, wire type), `None` at the end of the message.
    #[inline(always)]
    pub fn next(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.read_varint().ok_or_else(|| truncated(self.name))?;
        let tag = u32::try_from(tag)
            .map_err(|_| DecodeError::malformed(format!("invalid field tag in {}", self.name)))?;
        let field = tag >> 3;
        let wt = (tag & 7) as u8;
        if field == 0 {
            return Err(DecodeError::malformed(format!("invalid field number 0 in {}", self.name)));
        }
        Ok(Some((field, wt)))
    }

    /// The length of the length-delimited field at the cursor, without consuming it (0 when
    /// unreadable: only a capacity hint).
    #[inline]
    pub fn peek_len(&self) -> usize {
        let mut probe = Msg { buf: self.buf, pos: self.pos, name: self.name };
        probe.read_varint().and_then(|l| usize::try_from(l).ok()).map_or(0, |l| l.min(self.buf.len()))
    }

    /// A length-delimited field's bytes.
    #[inline(always)]
    pub fn bytes(&mut self, wt: u8, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if wt != WT_LEN {
            return Err(wrong_type(field, wt));
        }
        let len = self.read_varint().ok_or_else(|| truncated(field))?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .ok_or_else(|| truncated(field))?;
        let b = self.buf.get(self.pos..end).ok_or_else(|| truncated(field))?;
        self.pos = end;
        Ok(b)
    }

    /// A string field (UTF-8 checked).
    #[inline(always)]
    pub fn str(&mut self, wt: u8, field: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.bytes(wt, field)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::invalid(format!("invalid UTF-8 in {field}")))
    }

    #[inline]
    pub fn varint(&mut self, wt: u8, field: &'static str) -> Result<u64, DecodeError> {
        if wt != WT_VARINT {
            return Err(wrong_type(field, wt));
        }
        self.read_varint().ok_or_else(|| truncated(field))
    }

    /// int32 / enum: the varint truncated to 32 bits, as protobuf decoders do.
    #[inline]
    pub fn int32(&mut self, wt: u8, field: &'static str) -> Result<i32, DecodeError> {
        Ok(self.varint(wt, field)? as i32)
    }

    /// sint32 (zigzag).
    #[inline]
    pub fn sint32(&mut self, wt: u8, field: &'static str) -> Result<i32, DecodeError> {
        let n = self.varint(wt, field)? as u32;
        Ok(((n >> 1) as i32) ^ (-((n & 1) as i32)))
    }

    #[inline]
    pub fn fixed64(&mut self, wt: u8, field: &'static str) -> Result<u64, DecodeError> {
        if wt != WT_I64 {
            return Err(wrong_type(field, wt));
        }
        let end = self.pos + 8;
        let b: [u8; 8] =
            self.buf.get(self.pos..end).and_then(|b| b.try_into().ok()).ok_or_else(|| truncated(field))?;
        self.pos = end;
        Ok(u64::from_le_bytes(b))
    }

    #[inline]
    pub fn double(&mut self, wt: u8, field: &'static str) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.fixed64(wt, field)?))
    }

    /// Skips a field we do not keep, of any wire type.
    pub fn skip(&mut self, field_no: u32, wt: u8) -> Result<(), DecodeError> {
        match wt {
            WT_SGROUP => self.skip_group(field_no),
            WT_EGROUP => Err(DecodeError::malformed(format!("unexpected end group in {}", self.name))),
            WT_VARINT | WT_I64 | WT_LEN | WT_I32 => {
                let rest = self.buf.get(self.pos..).unwrap_or_default();
                let mut r = BytesReader::from_bytes(rest);
                r.read_unknown(rest, (field_no << 3) | u32::from(wt)).map_err(|_| truncated(self.name))?;
                self.pos += rest.len() - r.len();
                Ok(())
            }
            _ => Err(DecodeError::malformed(format!("invalid wire type {wt} in {}", self.name))),
        }
    }

    /// Skips a group (already past its start tag) iteratively, checking that each end tag
    /// matches its start.
    fn skip_group(&mut self, field_no: u32) -> Result<(), DecodeError> {
        let mut open = [0u32; MAX_GROUP_DEPTH];
        let mut depth = 1usize;
        open[0] = field_no;
        while depth > 0 {
            let Some((f, wt)) = self.next()? else {
                return Err(truncated(self.name));
            };
            match wt {
                WT_SGROUP => {
                    if depth >= MAX_GROUP_DEPTH {
                        return Err(DecodeError::limit(format!(
                            "groups nested deeper than {MAX_GROUP_DEPTH}"
                        )));
                    }
                    if let Some(slot) = open.get_mut(depth) {
                        *slot = f;
                    }
                    depth += 1;
                }
                WT_EGROUP => {
                    depth -= 1;
                    if open.get(depth) != Some(&f) {
                        return Err(DecodeError::malformed(format!("mismatched end group in {}", self.name)));
                    }
                }
                _ => self.skip(f, wt)?,
            }
        }
        Ok(())
    }
}

/// Calls `each` for every value of a repeated fixed64 field occurrence, packed (`WT_LEN`) or not.
#[inline]
pub fn repeated_fixed64<'a>(
    m: &mut Msg<'a>,
    wt: u8,
    field: &'static str,
    mut each: impl FnMut(u64),
) -> Result<(), DecodeError> {
    if wt == WT_LEN {
        let b = m.bytes(wt, field)?;
        if b.len() % 8 != 0 {
            return Err(DecodeError::malformed(format!("packed {field} length is not a multiple of 8")));
        }
        // Read each value from its 8 bytes: no alignment assumption about the buffer.
        for c in b.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            each(u64::from_le_bytes(a));
        }
        Ok(())
    } else {
        each(m.fixed64(wt, field)?);
        Ok(())
    }
}

/// Calls `each` for every value of a repeated varint field occurrence, packed or not.
#[inline]
pub fn repeated_varint<'a>(
    m: &mut Msg<'a>,
    wt: u8,
    field: &'static str,
    mut each: impl FnMut(u64),
) -> Result<(), DecodeError> {
    if wt == WT_LEN {
        let b = m.bytes(wt, field)?;
        let mut r = BytesReader::from_bytes(b);
        while !r.is_eof() {
            each(r.read_varint64(b).map_err(|_| truncated(field))?);
        }
        Ok(())
    } else {
        each(m.varint(wt, field)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_every_wire_type_and_groups() {
        // field 1 varint 150, field 2 fixed64, field 3 len "ab", field 4 group { field 5 varint },
        // field 6 fixed32, then field 7 varint 1.
        let buf = [
            0x08, 0x96, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1a, 2, b'a', b'b', 0x23, 0x28, 1, 0x24, 0x35,
            1, 2, 3, 4, 0x38, 1,
        ];
        let mut m = Msg::new(&buf, "T");
        let mut seen = vec![];
        while let Some((f, wt)) = m.next().unwrap() {
            if f == 7 {
                assert_eq!(m.varint(wt, "T.f7").unwrap(), 1);
            } else {
                m.skip(f, wt).unwrap();
            }
            seen.push(f);
        }
        assert_eq!(seen, [1, 2, 3, 4, 6, 7]);
    }

    #[test]
    fn rejects_truncation_wrong_types_and_bad_groups() {
        assert!(
            Msg::new(&[0x1a, 5, b'a'], "T").bytes(2, "T.x").is_err() || {
                let mut m = Msg::new(&[0x1a, 5, b'a'], "T");
                let (_, wt) = m.next().unwrap().unwrap();
                m.bytes(wt, "T.x").is_err()
            }
        );
        let mut m = Msg::new(&[0x08, 1], "T");
        let (_, wt) = m.next().unwrap().unwrap();
        assert!(m.bytes(wt, "T.x").unwrap_err().message.contains("wrong wire type"));
        // Group with mismatched end.
        let mut m = Msg::new(&[0x23, 0x2c], "T");
        let (f, wt) = m.next().unwrap().unwrap();
        assert!(m.skip(f, wt).is_err());
        // Unterminated group.
        let mut m = Msg::new(&[0x23], "T");
        let (f, wt) = m.next().unwrap().unwrap();
        assert!(m.skip(f, wt).is_err());
        // Deep groups.
        let deep = vec![0x23u8; 100_000];
        let mut m = Msg::new(&deep, "T");
        let (f, wt) = m.next().unwrap().unwrap();
        assert!(m.skip(f, wt).is_err());
        // Field number 0.
        assert!(Msg::new(&[0x00, 0], "T").next().is_err());
    }

    #[test]
    fn packed_and_unpacked_fixed64() {
        let mut buf = vec![0x0a, 16];
        buf.extend(1u64.to_le_bytes());
        buf.extend(2u64.to_le_bytes());
        buf.push(0x09);
        buf.extend(3u64.to_le_bytes());
        let mut m = Msg::new(&buf[1..], "T");
        // Misaligned on purpose: starts at offset 1.
        let _ = m.next();
        let mut m = Msg::new(&buf, "T");
        let mut v = vec![];
        while let Some((_, wt)) = m.next().unwrap() {
            repeated_fixed64(&mut m, wt, "T.x", |x| v.push(x)).unwrap();
        }
        assert_eq!(v, [1, 2, 3]);
    }
}
