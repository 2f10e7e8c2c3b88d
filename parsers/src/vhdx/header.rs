//! The two VHDX headers (MS-VHDX 2.2.2), 4 KiB each at 64 KiB and 128 KiB. A header
//! is valid when its signature is "head" and its CRC-32C (over the 4 KiB with the
//! checksum field zeroed) matches; the current header is the valid one with the
//! higher sequence number. Two valid headers with the same sequence number are
//! accepted only when they are byte-identical (Disk2VHD writes such files), as
//! qemu does; anything else is ambiguous and refused.

use nom::number::complete::{le_u16, le_u32, le_u64};

use super::{crc32c_zeroed, guid, sig4, Guid, MIB, SLOT};
use crate::bytes::{need, run, show_magic};
use crate::error::{ParseError, Result};

/// Bytes of one header (the rest of its 64 KiB slot is reserved).
pub const HEADER_BYTES: usize = 4096;
/// File offsets of header 1 and header 2.
pub const HEADER_OFFSETS: [u64; 2] = [SLOT, 2 * SLOT];

/// The header as stored (field names from the spec, hex offsets in comments).
#[derive(Debug, Clone)]
struct RawHeader {
    signature: [u8; 4],    // 0x00 "head"
    checksum: u32,         // 0x04 CRC-32C of the 4 KiB, this field zero
    sequence_number: u64,  // 0x08
    file_write_guid: Guid, // 0x10
    data_write_guid: Guid, // 0x20
    log_guid: Guid,        // 0x30
    log_version: u16,      // 0x40 must be 0
    version: u16,          // 0x42 must be 1
    log_length: u32,       // 0x44 multiple of 1 MiB
    log_offset: u64,       // 0x48 multiple of 1 MiB, >= 1 MiB
}

/// A validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxHeader {
    /// Which slot it came from: 1 or 2.
    pub index: u8,
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    /// Changes whenever user-visible data changes: a child records it as its parent's identity.
    pub data_write_guid: Guid,
    /// Non-zero when the log may hold entries that must be replayed.
    pub log_guid: Guid,
    pub log_length: u32,
    pub log_offset: u64,
}

fn what(index: u8) -> &'static str {
    if index == 1 {
        "VHDX header 1"
    } else {
        "VHDX header 2"
    }
}

/// Parses header `index` (1 or 2) from its 4 KiB at `HEADER_OFFSETS[index - 1]`.
pub fn parse_header(buf: &[u8], index: u8) -> Result<VhdxHeader> {
    let what = what(index);
    let base = if index == 1 {
        HEADER_OFFSETS[0]
    } else {
        HEADER_OFFSETS[1]
    };
    need(buf, HEADER_BYTES, what, base)?;
    let buf = &buf[..HEADER_BYTES];
    let (signature, checksum, sequence_number, file_write_guid, data_write_guid, log_guid) =
        run((sig4, le_u32, le_u64, guid, guid, guid), buf, what, base)?;
    let tail = buf.get(0x40..).unwrap_or(&[]);
    let (log_version, version, log_length, log_offset) =
        run((le_u16, le_u16, le_u32, le_u64), tail, what, base + 0x40)?;
    let raw = RawHeader {
        signature,
        checksum,
        sequence_number,
        file_write_guid,
        data_write_guid,
        log_guid,
        log_version,
        version,
        log_length,
        log_offset,
    };
    if &raw.signature != b"head" {
        return Err(ParseError::BadMagic {
            what,
            offset: base,
            expected: "\"head\"".into(),
            found: show_magic(&raw.signature),
        });
    }
    let computed = crc32c_zeroed(buf, 4);
    ParseError::check_checksum(what, base + 4, raw.checksum, computed)?;
    if raw.version != 1 {
        return Err(ParseError::unsupported(
            what,
            base + 0x42,
            format!("header version {} (only 1 is defined)", raw.version),
        ));
    }
    if raw.log_version != 0 {
        return Err(ParseError::unsupported(
            what,
            base + 0x40,
            format!("log version {} (only 0 is defined)", raw.log_version),
        ));
    }
    if u64::from(raw.log_length) % MIB != 0 {
        return Err(ParseError::corrupt(
            what,
            base + 0x44,
            format!(
                "log length {:#x} is not a multiple of 1 MiB",
                raw.log_length
            ),
        ));
    }
    if raw.log_offset % MIB != 0 || raw.log_offset < MIB {
        return Err(ParseError::corrupt(
            what,
            base + 0x48,
            format!(
                "log offset {:#x} is not a 1 MiB aligned offset past the header section",
                raw.log_offset
            ),
        ));
    }
    if !raw.log_guid.is_zero() && raw.log_length == 0 {
        return Err(ParseError::corrupt(
            what,
            base + 0x30,
            "log GUID is set but the log is empty (length 0)",
        ));
    }
    Ok(VhdxHeader {
        index,
        sequence_number: raw.sequence_number,
        file_write_guid: raw.file_write_guid,
        data_write_guid: raw.data_write_guid,
        log_guid: raw.log_guid,
        log_length: raw.log_length,
        log_offset: raw.log_offset,
    })
}

/// Picks the current header from the two slots' bytes. Returns the current header
/// and, when the other one is invalid, its error (worth a warning: the file was
/// interrupted during a header update, or is damaged).
pub fn current_header(h1: &[u8], h2: &[u8]) -> Result<(VhdxHeader, Option<ParseError>)> {
    let a = parse_header(h1, 1);
    let b = parse_header(h2, 2);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok((a, None))
            } else if b.sequence_number > a.sequence_number {
                Ok((b, None))
            } else if h1.get(..HEADER_BYTES) == h2.get(..HEADER_BYTES) {
                Ok((a, None))
            } else {
                Err(ParseError::corrupt(
                    "VHDX headers",
                    HEADER_OFFSETS[1] + 8,
                    format!(
                        "both headers are valid with the same sequence number {} but differ",
                        a.sequence_number
                    ),
                ))
            }
        }
        (Ok(a), Err(e)) => Ok((a, Some(e))),
        (Err(e), Ok(b)) => Ok((b, Some(e))),
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vhdx::seal_crc;

    pub(crate) fn sample(seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        b[..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&seq.to_le_bytes());
        b[0x10..0x20].copy_from_slice(&[0x11; 16]);
        b[0x20..0x30].copy_from_slice(&[0x22; 16]);
        b[0x42..0x44].copy_from_slice(&1u16.to_le_bytes());
        b[0x44..0x48].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[0x48..0x50].copy_from_slice(&(1u64 << 20).to_le_bytes());
        seal_crc(&mut b, 4);
        b
    }

    fn mutate(seq: u64, at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = sample(seq);
        b[at..at + bytes.len()].copy_from_slice(bytes);
        seal_crc(&mut b, 4);
        b
    }

    #[test]
    fn parses_and_picks_highest_sequence() {
        let (h, warn) = current_header(&sample(3), &sample(4)).unwrap();
        assert_eq!((h.index, h.sequence_number), (2, 4));
        assert!(warn.is_none());
        let (h, _) = current_header(&sample(9), &sample(4)).unwrap();
        assert_eq!(h.index, 1);
        assert_eq!(h.data_write_guid, Guid([0x22; 16]));
    }

    #[test]
    fn identical_headers_are_accepted_differing_equal_ones_are_not() {
        assert_eq!(current_header(&sample(5), &sample(5)).unwrap().0.index, 1);
        let other = mutate(5, 0x10, &[0x33; 16]);
        assert!(matches!(
            current_header(&sample(5), &other),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn one_bad_header_falls_back_with_a_warning() {
        let mut bad = sample(9);
        bad[100] ^= 1;
        let (h, warn) = current_header(&bad, &sample(2)).unwrap();
        assert_eq!(h.index, 2);
        assert!(matches!(
            warn,
            Some(ParseError::Checksum {
                offset: 0x10004,
                ..
            })
        ));
        assert!(current_header(&bad, &bad).is_err());
    }

    #[test]
    fn rule_signature() {
        let b = mutate(1, 0, b"HEAD");
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::BadMagic {
                offset: 0x10000,
                ..
            })
        ));
    }

    #[test]
    fn rule_checksum() {
        let mut b = sample(1);
        b[0x200] = 1;
        assert!(matches!(
            parse_header(&b, 2),
            Err(ParseError::Checksum {
                offset: 0x20004,
                ..
            })
        ));
    }

    #[test]
    fn rule_version() {
        let b = mutate(1, 0x42, &2u16.to_le_bytes());
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::Unsupported {
                offset: 0x10042,
                ..
            })
        ));
    }

    #[test]
    fn rule_log_version() {
        let b = mutate(1, 0x40, &1u16.to_le_bytes());
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::Unsupported {
                offset: 0x10040,
                ..
            })
        ));
    }

    #[test]
    fn rule_log_length() {
        let b = mutate(1, 0x44, &4096u32.to_le_bytes());
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::Corrupt {
                offset: 0x10044,
                ..
            })
        ));
    }

    #[test]
    fn rule_log_offset() {
        let b = mutate(1, 0x48, &0x1000u64.to_le_bytes());
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::Corrupt {
                offset: 0x10048,
                ..
            })
        ));
    }

    #[test]
    fn rule_log_guid_needs_log() {
        let mut b = sample(1);
        b[0x30] = 1;
        b[0x44..0x48].fill(0);
        seal_crc(&mut b, 4);
        assert!(matches!(
            parse_header(&b, 1),
            Err(ParseError::Corrupt {
                offset: 0x10030,
                ..
            })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let b = sample(1);
        for n in 0..b.len() {
            assert!(parse_header(&b[..n], 1).is_err());
        }
        for bit in 0..0x60 * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_header(&m, 1);
            seal_crc(&mut m, 4);
            let _ = parse_header(&m, 1);
            let _ = current_header(&m, &b);
        }
    }
}
