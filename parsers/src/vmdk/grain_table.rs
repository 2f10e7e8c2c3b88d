//! Grain directories and grain tables: the two-level map from a virtual grain to its
//! place in the extent file. Hosted sparse ("KDMV") and COWD extents store u32 sector
//! numbers (Virtual Disk Format 1.1, "Grain Table and Grain Directory"); SESPARSE
//! stores typed u64 entries (layout per QEMU's block/vmdk.c).
//!
//! The tables themselves are bounded by their headers' validated geometry; these
//! functions decode them and turn each entry into a [`GrainEntry`] without trusting
//! it: sector numbers are checked for overflow here and against the file size by the
//! reader.

use nom::multi::count;
use nom::number::complete::{le_u32, le_u64};

use super::SECTOR;
use crate::bytes;
use crate::error::{ParseError, Result};

/// Where one grain's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainEntry {
    /// Not stored: the parent shows through (zeros without a parent).
    Unallocated,
    /// Reads as zeros, whatever the parent holds.
    Zero,
    /// Stored at this absolute byte offset of the extent file (for a compressed
    /// extent, the offset of the grain marker / compressed stream).
    Data(u64),
}

/// Decodes a table of `n` little-endian u32 entries (a KDMV / COWD grain directory
/// or grain table). `n` was bounded by the caller against `MAX_TABLE_BYTES`.
pub fn parse_u32_table(buf: &[u8], n: usize, what: &'static str, base: u64) -> Result<Vec<u32>> {
    let need = n
        .checked_mul(4)
        .ok_or_else(|| ParseError::corrupt(what, base, "table size overflows"))?;
    let buf = bytes::slice(buf, 0, need, what, base)?;
    bytes::run(count(le_u32, n), buf, what, base)
}

/// Decodes a table of `n` little-endian u64 entries (a SESPARSE grain directory or
/// grain table).
pub fn parse_u64_table(buf: &[u8], n: usize, what: &'static str, base: u64) -> Result<Vec<u64>> {
    let need = n
        .checked_mul(8)
        .ok_or_else(|| ParseError::corrupt(what, base, "table size overflows"))?;
    let buf = bytes::slice(buf, 0, need, what, base)?;
    bytes::run(count(le_u64, n), buf, what, base)
}

/// Entry `index` of a cached little-endian u32 table (None past its end).
pub fn u32_entry(table: &[u8], index: u64) -> Option<u32> {
    let at = usize::try_from(index).ok()?.checked_mul(4)?;
    let b = table.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Entry `index` of a cached little-endian u64 table (None past its end).
pub fn u64_entry(table: &[u8], index: u64) -> Option<u64> {
    let at = usize::try_from(index).ok()?.checked_mul(8)?;
    let b = table.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// A KDMV / COWD grain table entry: 0 is unallocated; 1 is a zero grain when the
/// extent has the zeroed-grain flag (KDMV only); anything else is the grain's
/// sector in the extent file.
pub fn decode_gte(raw: u32, zeroed_grain_flag: bool) -> GrainEntry {
    match raw {
        0 => GrainEntry::Unallocated,
        1 if zeroed_grain_flag => GrainEntry::Zero,
        s => GrainEntry::Data(u64::from(s) * SECTOR),
    }
}

const GD_WHAT: &str = "VMDK SESPARSE grain directory entry";
const GT_WHAT: &str = "VMDK SESPARSE grain table entry";

/// A SESPARSE grain directory entry: 0 means the whole grain table is unallocated;
/// otherwise the top 32 bits must be 0x10000000 (allocated) and the low 32 bits are
/// the grain table's index in the grain tables area. `at` is the entry's absolute
/// offset, for the error.
pub fn decode_sesparse_gde(raw: u64, at: u64) -> Result<Option<u64>> {
    if raw == 0 {
        Ok(None)
    } else if raw & 0xffff_ffff_0000_0000 == 0x1000_0000_0000_0000 {
        Ok(Some(raw & 0xffff_ffff))
    } else {
        Err(ParseError::corrupt(
            GD_WHAT,
            at,
            format!("{raw:#018x} is neither 0 nor an allocated grain table (0x10000000xxxxxxxx)"),
        ))
    }
}

/// A SESPARSE grain table entry, by its top nibble: 0 unallocated (the rest must be
/// 0), 1 unmapped (SCSI UNMAP) and 2 zero, both reading as zeros, 3 allocated: the
/// grain's index in the grains area is the low 48 bits shifted up by 12 ORed with
/// bits 48..60. `grains_offset` is the byte offset of the grains area, `grain_bytes`
/// the grain size.
pub fn decode_sesparse_gte(
    raw: u64,
    at: u64,
    grains_offset: u64,
    grain_bytes: u64,
) -> Result<GrainEntry> {
    match raw >> 60 {
        0 if raw == 0 => Ok(GrainEntry::Unallocated),
        1 | 2 => Ok(GrainEntry::Zero),
        3 => {
            let index =
                ((raw & 0x0fff_0000_0000_0000) >> 48) | ((raw & 0x0000_ffff_ffff_ffff) << 12);
            index
                .checked_mul(grain_bytes)
                .and_then(|b| b.checked_add(grains_offset))
                .map(GrainEntry::Data)
                .ok_or_else(|| {
                    ParseError::corrupt(
                        GT_WHAT,
                        at,
                        format!("grain index {index:#x} is beyond any file"),
                    )
                })
        }
        _ => Err(ParseError::corrupt(
            GT_WHAT,
            at,
            format!("{raw:#018x} has an unknown type"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_entries() {
        let b: Vec<u8> = (0u8..16).collect();
        assert_eq!(u32_entry(&b, 3), Some(0x0f0e0d0c));
        assert_eq!(u32_entry(&b, 4), None);
        assert_eq!(u64_entry(&b, 1), Some(0x0f0e0d0c0b0a0908));
        assert_eq!(u64_entry(&b, 2), None);
        assert_eq!(u64_entry(&b, u64::MAX), None);
    }

    #[test]
    fn kdmv_entries() {
        assert_eq!(decode_gte(0, true), GrainEntry::Unallocated);
        assert_eq!(decode_gte(1, true), GrainEntry::Zero);
        assert_eq!(decode_gte(1, false), GrainEntry::Data(512));
        assert_eq!(
            decode_gte(u32::MAX, false),
            GrainEntry::Data(u64::from(u32::MAX) * 512)
        );
    }

    #[test]
    fn tables() {
        let b: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            parse_u32_table(&b, 2, "t", 0).unwrap(),
            vec![0x03020100, 0x07060504]
        );
        assert_eq!(
            parse_u64_table(&b, 2, "t", 0).unwrap()[1],
            0x0f0e0d0c0b0a0908
        );
        assert!(matches!(
            parse_u32_table(&b, 5, "t", 0x10),
            Err(ParseError::Truncated { offset: 0x10, .. })
        ));
        assert!(matches!(
            parse_u64_table(&b, usize::MAX, "t", 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn sesparse_directory_entries() {
        assert_eq!(decode_sesparse_gde(0, 0).unwrap(), None);
        assert_eq!(
            decode_sesparse_gde(0x1000_0000_0000_0005, 0).unwrap(),
            Some(5)
        );
        let e = decode_sesparse_gde(0x1000_0001_0000_0005, 0x1008).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1008, .. }),
            "{e}"
        );
        assert!(decode_sesparse_gde(0x2000_0000_0000_0005, 0).is_err());
    }

    #[test]
    fn sesparse_table_entries() {
        let d = |raw| decode_sesparse_gte(raw, 0x40, 1 << 20, 4096);
        assert_eq!(d(0).unwrap(), GrainEntry::Unallocated);
        assert!(d(0x0000_0000_0000_0001).is_err(), "type 0 with payload");
        assert_eq!(d(0x1000_0000_0000_0000).unwrap(), GrainEntry::Zero);
        assert_eq!(d(0x2000_0000_0000_0000).unwrap(), GrainEntry::Zero);
        assert_eq!(
            d(0x3000_0000_0000_0002).unwrap(),
            GrainEntry::Data((1 << 20) + (2 << 12) * 4096)
        );
        assert_eq!(
            d(0x3001_0000_0000_0000).unwrap(),
            GrainEntry::Data((1 << 20) + 4096)
        );
        assert!(matches!(
            d(0x4000_0000_0000_0000),
            Err(ParseError::Corrupt { offset: 0x40, .. })
        ));
        assert!(matches!(
            d(0x3000_ffff_ffff_ffff),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        for bit in 0..64 {
            let raw = 0x3000_0000_0000_0001u64 ^ (1 << bit);
            let _ = decode_sesparse_gte(raw, 0, u64::MAX - 5, 4096);
            let _ = decode_sesparse_gde(raw, 0);
        }
    }
}
