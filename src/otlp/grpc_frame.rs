//! The gRPC length-prefixed message framing: 1 byte compressed flag (0 or 1), 4 bytes big-endian
//! message length, then the message (gRPC over HTTP/2, "Length-Prefixed-Message").
//!
//! ```
//! use otelring::otlp::grpc_frame::{parse_frame, Frame};
//! let buf = [0, 0, 0, 0, 2, 0x0a, 0x00];
//! let (f, rest) = parse_frame(&buf, 1024).unwrap().unwrap();
//! assert_eq!(f, Frame { compressed: false, message: &[0x0a, 0x00] });
//! assert!(rest.is_empty());
//! ```

use std::fmt;

/// Bytes of the prefix.
pub const PREFIX_LEN: usize = 5;
/// Default largest message (DESIGN 1.5: 64 MiB, the same as `OTELRING_MAX_BODY_BYTES`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One message of a gRPC stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The compressed flag: the message is in the stream's `grpc-encoding`.
    pub compressed: bool,
    pub message: &'a [u8],
}

/// A framing error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The flag byte is neither 0 nor 1.
    BadFlag(u8),
    /// The declared length exceeds the maximum (answer RESOURCE_EXHAUSTED).
    TooLarge { len: u64, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFlag(b) => write!(f, "invalid gRPC compressed flag {b} (expected 0 or 1)"),
            Self::TooLarge { len, max } => write!(f, "gRPC message of {len} bytes exceeds the maximum {max}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The prefix alone: (compressed, declared length). `None` when fewer than 5 bytes are given.
/// Checks the flag and the maximum before any message byte is read, so the caller can reserve
/// or refuse from the prefix.
pub fn parse_prefix(buf: &[u8], max_message: usize) -> Result<Option<(bool, usize)>, FrameError> {
    let Some(&[flag, l0, l1, l2, l3]) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let compressed = match flag {
        0 => false,
        1 => true,
        b => return Err(FrameError::BadFlag(b)),
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max_message {
        return Err(FrameError::TooLarge { len: u64::from(len), max: max_message });
    }
    Ok(Some((compressed, len_usize)))
}

/// Parses one complete frame from the start of `buf`; `Ok(None)` when more bytes are needed.
/// Returns the frame and the bytes after it.
pub fn parse_frame(buf: &[u8], max_message: usize) -> Result<Option<(Frame<'_>, &[u8])>, FrameError> {
    let Some((compressed, len)) = parse_prefix(buf, max_message)? else {
        return Ok(None);
    };
    let Some(end) = PREFIX_LEN.checked_add(len) else {
        return Ok(None);
    };
    let (Some(message), Some(rest)) = (buf.get(PREFIX_LEN..end), buf.get(end..)) else {
        return Ok(None);
    };
    Ok(Some((Frame { compressed, message }, rest)))
}

/// Encodes a frame (for tests, benches and the server's responses).
pub fn encode_frame(compressed: bool, message: &[u8], out: &mut Vec<u8>) {
    out.push(u8::from(compressed));
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_partial_input() {
        let mut buf = Vec::new();
        encode_frame(true, b"hello", &mut buf);
        encode_frame(false, b"", &mut buf);
        let (f, rest) = parse_frame(&buf, 100).unwrap().unwrap();
        assert_eq!(f, Frame { compressed: true, message: b"hello" });
        let (f, rest) = parse_frame(rest, 100).unwrap().unwrap();
        assert_eq!(f, Frame { compressed: false, message: b"" });
        assert!(rest.is_empty());
        for cut in 0..10 {
            assert_eq!(parse_frame(&buf[..cut], 100), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn bad_flag_and_too_large() {
        assert_eq!(parse_frame(&[2, 0, 0, 0, 0], 10), Err(FrameError::BadFlag(2)));
        assert_eq!(parse_frame(&[0, 0, 0, 0, 11], 10), Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert_eq!(
            parse_prefix(&[0, 0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_MESSAGE_BYTES),
            Err(FrameError::TooLarge { len: u64::from(u32::MAX), max: DEFAULT_MAX_MESSAGE_BYTES })
        );
    }
}
