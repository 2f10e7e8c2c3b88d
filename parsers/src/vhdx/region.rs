//! The region table (MS-VHDX 2.2.3): 64 KiB at 192 KiB, with an identical copy at
//! 256 KiB, listing the BAT and metadata regions (and possibly others, which a
//! reader may ignore unless they are marked required). Signature "regi", CRC-32C over
//! the whole 64 KiB with the checksum field zeroed, at most 2047 entries.

use nom::multi::count;
use nom::number::complete::{le_u32, le_u64};

use super::{crc32c_zeroed, guid, sig4, Guid, MIB, SLOT};
use crate::bytes::{need, run, show_magic, slice};
use crate::error::{ParseError, Result};
use crate::limits::MAX_VHDX_TABLE_ENTRIES;

/// Bytes of one region table.
pub const REGION_TABLE_BYTES: usize = 64 * 1024;
/// File offsets of the region table and of its copy.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [3 * SLOT, 4 * SLOT];

/// The BAT region: 2DC27766-F623-4200-9D64-115E9BFD4A08.
pub const BAT_GUID: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// The metadata region: 8B7CA206-4790-4B9A-B8FE-575F050F886E.
pub const METADATA_GUID: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// One entry as stored (32 bytes).
#[derive(Debug, Clone)]
struct RawRegionEntry {
    guid: Guid,       // 0x00
    file_offset: u64, // 0x10 1 MiB aligned
    length: u32,      // 0x18 multiple of 1 MiB
    required: u32,    // 0x1C bit 0: a reader that does not know the region must fail
}

/// A region of the file: `[offset, offset + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxRegion {
    pub offset: u64,
    pub length: u64,
}

/// The validated region table: where the BAT and the metadata live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxRegionTable {
    pub bat: VhdxRegion,
    pub metadata: VhdxRegion,
    /// Regions we do not know and that are not required (ignored).
    pub ignored: Vec<Guid>,
}

fn what(copy: usize) -> &'static str {
    if copy == 0 {
        "VHDX region table"
    } else {
        "VHDX region table copy"
    }
}

/// Parses region table `copy` (0 = at 192 KiB, 1 = at 256 KiB) from its 64 KiB.
pub fn parse_region_table(buf: &[u8], copy: usize) -> Result<VhdxRegionTable> {
    let what = what(copy);
    let base = REGION_TABLE_OFFSETS.get(copy).copied().unwrap_or(0);
    need(buf, REGION_TABLE_BYTES, what, base)?;
    let buf = &buf[..REGION_TABLE_BYTES];
    let (signature, checksum, entry_count, _reserved) =
        run((sig4, le_u32, le_u32, le_u32), buf, what, base)?;
    if &signature != b"regi" {
        return Err(ParseError::BadMagic {
            what,
            offset: base,
            expected: "\"regi\"".into(),
            found: show_magic(&signature),
        });
    }
    let computed = crc32c_zeroed(buf, 4);
    ParseError::check_checksum(what, base + 4, checksum, computed)?;
    ParseError::check_limit(
        what,
        base + 8,
        entry_count.into(),
        MAX_VHDX_TABLE_ENTRIES.into(),
        "MAX_VHDX_TABLE_ENTRIES",
    )?;
    let n = entry_count as usize;
    let body = slice(buf, 16, n * 32, what, base)?;
    let raw = run(
        count(
            nom::combinator::map(
                (guid, le_u64, le_u32, le_u32),
                |(guid, file_offset, length, required)| RawRegionEntry {
                    guid,
                    file_offset,
                    length,
                    required,
                },
            ),
            n,
        ),
        body,
        what,
        base + 16,
    )?;
    let mut bat = None;
    let mut metadata = None;
    let mut ignored = Vec::new();
    let mut seen: Vec<(VhdxRegion, u64)> = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        let at = base + 16 + 32 * i as u64;
        let region = VhdxRegion {
            offset: e.file_offset,
            length: e.length.into(),
        };
        if e.file_offset % MIB != 0 || e.file_offset < MIB {
            return Err(ParseError::corrupt(
                what,
                at + 0x10,
                format!(
                    "region {} at {:#x} is not 1 MiB aligned past the header section",
                    e.guid, e.file_offset
                ),
            ));
        }
        if u64::from(e.length) % MIB != 0 || e.length == 0 {
            return Err(ParseError::corrupt(
                what,
                at + 0x18,
                format!(
                    "region {} length {:#x} is not a non-zero multiple of 1 MiB",
                    e.guid, e.length
                ),
            ));
        }
        let end = e
            .file_offset
            .checked_add(region.length)
            .ok_or_else(|| ParseError::corrupt(what, at + 0x10, "region end overflows"))?;
        for (other, other_at) in &seen {
            if e.file_offset < other.offset + other.length && other.offset < end {
                return Err(ParseError::corrupt(
                    what,
                    at,
                    format!(
                        "region {} overlaps the region of the entry at {other_at:#x}",
                        e.guid
                    ),
                ));
            }
        }
        seen.push((region, at));
        let slot = if e.guid == BAT_GUID {
            &mut bat
        } else if e.guid == METADATA_GUID {
            &mut metadata
        } else if e.required & 1 != 0 {
            return Err(ParseError::unsupported(
                what,
                at,
                format!("required region {} is not known to this reader", e.guid),
            ));
        } else {
            ignored.push(e.guid);
            continue;
        };
        if slot.replace(region).is_some() {
            return Err(ParseError::corrupt(
                what,
                at,
                format!("region {} is listed twice", e.guid),
            ));
        }
    }
    let missing =
        |name: &str| ParseError::corrupt(what, base + 8, format!("no {name} region in the table"));
    Ok(VhdxRegionTable {
        bat: bat.ok_or_else(|| missing("BAT"))?,
        metadata: metadata.ok_or_else(|| missing("metadata"))?,
        ignored,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vhdx::seal_crc;

    pub(crate) fn entry(b: &mut [u8], i: usize, g: Guid, off: u64, len: u32, req: u32) {
        let at = 16 + 32 * i;
        b[at..at + 16].copy_from_slice(&g.0);
        b[at + 16..at + 24].copy_from_slice(&off.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&len.to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&req.to_le_bytes());
    }

    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_BYTES];
        b[..4].copy_from_slice(b"regi");
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        entry(&mut b, 0, BAT_GUID, 3 << 20, 1 << 20, 1);
        entry(&mut b, 1, METADATA_GUID, 2 << 20, 1 << 20, 1);
        seal_crc(&mut b, 4);
        b
    }

    fn resealed(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = sample();
        f(&mut b);
        seal_crc(&mut b, 4);
        b
    }

    #[test]
    fn parses() {
        let t = parse_region_table(&sample(), 0).unwrap();
        assert_eq!(
            t.bat,
            VhdxRegion {
                offset: 3 << 20,
                length: 1 << 20
            }
        );
        assert_eq!(t.metadata.offset, 2 << 20);
    }

    #[test]
    fn rule_signature() {
        let b = resealed(|b| b[0] = b'R');
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::BadMagic {
                offset: 0x30000,
                ..
            })
        ));
    }

    #[test]
    fn rule_checksum() {
        let mut b = sample();
        b[60000] = 1;
        assert!(matches!(
            parse_region_table(&b, 1),
            Err(ParseError::Checksum {
                offset: 0x40004,
                ..
            })
        ));
    }

    #[test]
    fn rule_entry_count() {
        let b = resealed(|b| b[8..12].copy_from_slice(&2048u32.to_le_bytes()));
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn rule_alignment() {
        let b = resealed(|b| b[16 + 16..16 + 24].copy_from_slice(&0x1234_5000u64.to_le_bytes()));
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Corrupt {
                offset: 0x30020,
                ..
            })
        ));
    }

    #[test]
    fn rule_length() {
        let b = resealed(|b| b[16 + 24..16 + 28].copy_from_slice(&4096u32.to_le_bytes()));
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Corrupt {
                offset: 0x30028,
                ..
            })
        ));
    }

    #[test]
    fn rule_overlap() {
        let b = resealed(|b| b[48 + 16..48 + 24].copy_from_slice(&(3u64 << 20).to_le_bytes()));
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Corrupt {
                offset: 0x30030,
                ..
            })
        ));
    }

    #[test]
    fn rule_unknown_required_region() {
        let b = resealed(|b| {
            b[8] = 3;
            entry(b, 2, Guid([9; 16]), 5 << 20, 1 << 20, 1);
        });
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Unsupported {
                offset: 0x30050,
                ..
            })
        ));
        let b = resealed(|b| {
            b[8] = 3;
            entry(b, 2, Guid([9; 16]), 5 << 20, 1 << 20, 0);
        });
        assert_eq!(
            parse_region_table(&b, 0).unwrap().ignored,
            vec![Guid([9; 16])]
        );
    }

    #[test]
    fn rule_duplicate_and_missing() {
        let b = resealed(|b| entry(b, 1, BAT_GUID, 5 << 20, 1 << 20, 1));
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Corrupt {
                offset: 0x30030,
                ..
            })
        ));
        let b = resealed(|b| b[8] = 1);
        assert!(matches!(
            parse_region_table(&b, 0),
            Err(ParseError::Corrupt {
                offset: 0x30008,
                ..
            })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let b = sample();
        for n in 0..b.len() {
            assert!(parse_region_table(&b[..n], 0).is_err());
        }
        for bit in 0..80 * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_region_table(&m, 0);
            seal_crc(&mut m, 4);
            let _ = parse_region_table(&m, 0);
        }
    }
}
