//! LZNT1, the compression of NTFS compressed files ([MS-XCA] 2.5): a compression unit
//! (16 clusters) is a sequence of chunks, each with a 2-byte header (bits 0..12: stored
//! data length − 1; bits 12..15: signature 3; bit 15: compressed) and up to 4 KiB of
//! output. A compressed chunk is groups of one flag
//! byte and eight items: a literal byte (flag bit 0) or a 16-bit back reference (flag
//! bit 1) whose split between displacement and length depends on the position in
//! the chunk (displacement bits = max(4, ⌈log2(position)⌉)).
//!
//! Invariants: output never exceeds `max_out`; every back reference stays inside the
//! current chunk's output.

use crate::error::{ParseError, Result};

/// Decompressed size of one LZNT1 chunk.
pub const LZNT1_CHUNK: usize = 4096;

const WHAT: &str = "NTFS LZNT1 chunk";

/// Decompresses one compression unit `input` (whose first byte is at absolute offset
/// `base`), appending at most `max_out` bytes to `out`. Stops at a zero chunk header or
/// at the end of the input, as Windows does.
pub fn decompress_lznt1(input: &[u8], max_out: usize, base: u64, out: &mut Vec<u8>) -> Result<()> {
    let limit = out.len().saturating_add(max_out);
    let mut at = 0usize;
    while let Some(h) = input.get(at..at + 2) {
        let header = u16::from_le_bytes([h[0], h[1]]);
        if header == 0 {
            break;
        }
        let here = base.saturating_add(at as u64);
        let len = usize::from(header & 0x0fff) + 1;
        let data = input.get(at + 2..at + 2 + len).ok_or_else(|| {
            ParseError::truncated(WHAT, here, len as u64 + 2, (input.len() - at) as u64)
        })?;
        let chunk_start = out.len();
        if header & 0x8000 == 0 {
            if len > limit - out.len() {
                return Err(over(here));
            }
            out.extend_from_slice(data);
        } else {
            chunk(data, here + 2, out, chunk_start, limit)?;
        }
        at += 2 + len;
    }
    Ok(())
}

fn over(at: u64) -> ParseError {
    ParseError::corrupt(WHAT, at, "decompresses beyond the compression unit")
}

fn chunk(data: &[u8], base: u64, out: &mut Vec<u8>, start: usize, limit: usize) -> Result<()> {
    let chunk_limit = limit.min(start + LZNT1_CHUNK);
    let mut i = 0usize;
    while i < data.len() {
        let flags = data[i]; // OK: i < data.len() (loop condition)
        i += 1;
        for bit in 0..8 {
            if i >= data.len() {
                return Ok(());
            }
            if flags & (1 << bit) == 0 {
                if out.len() >= chunk_limit {
                    return Err(over(base + i as u64));
                }
                out.push(data[i]); // OK: i < data.len() checked above
                i += 1;
                continue;
            }
            let Some(t) = data.get(i..i + 2) else {
                return Err(ParseError::truncated(WHAT, base + i as u64, 2, 1));
            };
            let token = u16::from_le_bytes([t[0], t[1]]);
            let pos = out.len() - start;
            let mut disp_bits = 4u32;
            while (1usize << disp_bits) < pos {
                disp_bits += 1;
            }
            let len_bits = 16u32.saturating_sub(disp_bits);
            let disp = usize::from(token >> len_bits) + 1;
            let len = usize::from(token & ((1u16 << len_bits) - 1)) + 3;
            if disp > pos {
                return Err(ParseError::corrupt(
                    WHAT,
                    base + i as u64,
                    format!("back reference {disp} bytes before position {pos} of the chunk"),
                ));
            }
            if len > chunk_limit - out.len() {
                return Err(over(base + i as u64));
            }
            for _ in 0..len {
                // OK: 1 <= disp <= pos <= out.len().
                let b = out[out.len() - disp];
                out.push(b);
            }
            i += 2;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "abc" + a back reference (displacement 3, length 9) = "abc" × 4, in one
    /// compressed chunk; then an uncompressed chunk "xyz"; then the end marker.
    fn sample() -> Vec<u8> {
        let mut b = vec![0x05, 0xb0, 0x08, b'a', b'b', b'c', 0x06, 0x20];
        b.extend([0x02, 0x30, b'x', b'y', b'z']);
        b.extend([0, 0]);
        b
    }

    #[test]
    fn literals_back_references_and_stored_chunks() {
        let mut out = Vec::new();
        decompress_lznt1(&sample(), 65536, 0, &mut out).unwrap();
        assert_eq!(out, b"abcabcabcabcxyz");
    }

    #[test]
    fn each_rule_rejects() {
        // Back reference before the start of the chunk.
        let mut b = sample();
        b[7] = 0x40; // displacement 5 at position 3
        let e = decompress_lznt1(&b, 65536, 0x1000, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1006, .. }),
            "{e}"
        );
        // Chunk length beyond the input.
        let mut b = sample();
        b[0] = 0x40;
        let e = decompress_lznt1(&b, 65536, 0, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ParseError::Truncated { offset: 0, .. }), "{e}");
        // Output over the cap.
        let e = decompress_lznt1(&sample(), 8, 0, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { .. }), "{e}");
        // A token cut in half.
        let b = [0x02, 0xb0, 0x01, 0x06];
        let e = decompress_lznt1(&b, 65536, 0, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ParseError::Truncated { .. }), "{e}");
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        let s = sample();
        for n in 0..s.len() {
            let _ = decompress_lznt1(&s[..n], 65536, 0, &mut Vec::new());
        }
        for i in 0..s.len() * 8 {
            let mut b = s.clone();
            b[i / 8] ^= 1 << (i % 8);
            let mut out = Vec::new();
            if decompress_lznt1(&b, 65536, 0, &mut out).is_ok() {
                assert!(out.len() <= 65536);
            }
        }
    }
}
