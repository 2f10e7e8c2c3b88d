//! The file type identifier (MS-VHDX 2.2.1): the first 64 KiB of every VHDX file
//! start with the signature "vhdxfile" and a UTF-16LE creator string (512 bytes)
//! naming the program that made the file. The creator is informational only.

use crate::bytes::{need, run, show_magic, slice};
use crate::error::{ParseError, Result};

/// Size of the structure we read: signature + creator.
pub const FILE_ID_BYTES: usize = 8 + 512;
const WHAT: &str = "VHDX file type identifier";

/// The validated file type identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxFileId {
    /// The creator, up to its first NUL (lossy for unpaired surrogates).
    pub creator: String,
}

/// Parses the identifier at file offset 0 from `buf` (at least [`FILE_ID_BYTES`]).
pub fn parse_file_id(buf: &[u8]) -> Result<VhdxFileId> {
    need(buf, FILE_ID_BYTES, WHAT, 0)?;
    let signature = run(nom::bytes::complete::take(8usize), buf, WHAT, 0)?;
    if signature != b"vhdxfile" {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: 0,
            expected: "\"vhdxfile\"".into(),
            found: show_magic(signature),
        });
    }
    let creator = slice(buf, 8, 512, WHAT, 0)?;
    Ok(VhdxFileId {
        creator: utf16le_until_nul(creator),
    })
}

/// Decodes UTF-16LE up to the first NUL code unit (lossy).
pub fn utf16le_until_nul(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; FILE_ID_BYTES];
        b[..8].copy_from_slice(b"vhdxfile");
        for (i, u) in "QEMU v10".encode_utf16().enumerate() {
            b[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_creator() {
        assert_eq!(parse_file_id(&sample()).unwrap().creator, "QEMU v10");
    }

    #[test]
    fn rejects_bad_signature() {
        let mut b = sample();
        b[0] = b'V';
        assert!(matches!(
            parse_file_id(&b),
            Err(ParseError::BadMagic { offset: 0, .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let b = sample();
        for n in 0..b.len() {
            let _ = parse_file_id(&b[..n]);
        }
        for bit in 0..b.len() * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_file_id(&m);
        }
    }
}
