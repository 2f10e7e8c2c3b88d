//! Small helpers shared by the parsers: bounded slicing with errors that name the
//! structure and the absolute offset, and nom glue that keeps nom's error types
//! inside this crate.

use crate::error::{ParseError, Result};

/// `buf[start..start + len]`, or `Truncated` naming `what` at `base + start`.
pub fn slice<'a>(
    buf: &'a [u8],
    start: usize,
    len: usize,
    what: &'static str,
    base: u64,
) -> Result<&'a [u8]> {
    let end = start.checked_add(len);
    match end {
        Some(end) if end <= buf.len() => Ok(&buf[start..end]),
        _ => Err(ParseError::truncated(
            what,
            base.saturating_add(start as u64),
            len as u64,
            buf.len().saturating_sub(start) as u64,
        )),
    }
}

/// Requires `buf` to be at least `len` bytes long.
pub fn need(buf: &[u8], len: usize, what: &'static str, base: u64) -> Result<()> {
    if buf.len() < len {
        Err(ParseError::truncated(
            what,
            base,
            len as u64,
            buf.len() as u64,
        ))
    } else {
        Ok(())
    }
}

/// Runs a nom parser over `input` (which must already be the whole, length-checked
/// structure) and maps any nom failure to `Truncated`/`Corrupt` at `base`.
pub fn run<'a, O>(
    mut parser: impl nom::Parser<&'a [u8], Output = O, Error = nom::error::Error<&'a [u8]>>,
    input: &'a [u8],
    what: &'static str,
    base: u64,
) -> Result<O> {
    match parser.parse(input) {
        Ok((_, out)) => Ok(out),
        Err(nom::Err::Incomplete(_)) => Err(ParseError::truncated(
            what,
            base,
            input.len() as u64 + 1,
            input.len() as u64,
        )),
        Err(nom::Err::Error(e)) | Err(nom::Err::Failure(e)) => {
            let at = input.len().saturating_sub(e.input.len()) as u64;
            Err(ParseError::corrupt(
                what,
                base.saturating_add(at),
                format!("{:?}", e.code),
            ))
        }
    }
}

/// Hex rendering of a short byte string for error messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Printable rendering of a magic for error messages (ASCII where printable).
pub fn show_magic(b: &[u8]) -> String {
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("0x{}", hex(b))
    }
}

/// True when every byte is zero. Checks 256-byte blocks, each OR-folded in 16-byte
/// words (a loop that vectorises), and stops at the first block that is not zero:
/// data is usually told from zeros in its first block, which matters because exports
/// and backups ask this of every 4 KiB of every disk they read.
pub fn is_zero(b: &[u8]) -> bool {
    const BLOCK: usize = 256;
    let mut blocks = b.chunks_exact(BLOCK);
    let body = blocks.by_ref().all(|block| {
        block.chunks_exact(16).fold(0u128, |acc, w| {
            // OK: chunks_exact yields exactly 16 bytes.
            acc | u128::from_ne_bytes(w.try_into().unwrap_or([0xff; 16]))
        }) == 0
    });
    body && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_one_byte_anywhere() {
        for len in [0usize, 1, 15, 16, 255, 256, 257, 4096, 4096 + 7] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "{len} zeros");
            for at in [0, 15, 16, 255, 256, len / 2, len.saturating_sub(1)] {
                if at < len {
                    b[at] = 0x80;
                    assert!(!is_zero(&b), "byte {at} of {len}");
                    b[at] = 0;
                }
            }
        }
    }
}
