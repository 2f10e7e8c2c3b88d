//! The VHD block allocation table (spec §"Block Allocation Table and Data Blocks"):
//! one big-endian u32 per block, the file sector where the block's sector bitmap
//! starts (the data follows the bitmap), or 0xFFFFFFFF for a block not allocated.
//!
//! Invariant of a parsed [`VhdBat`]: every allocated block (bitmap + data) lies inside
//! the file, so readers can follow an entry without re-checking it.

use crate::error::{ParseError, Result};

const WHAT: &str = "VHD BAT";
/// The entry of a block that is not allocated.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// A validated BAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdBat {
    entries: Vec<u32>,
    bitmap_bytes: u64,
}

/// Parses `entries` BAT entries from `buf` (read at absolute `base`), for blocks of
/// `block_size` bytes preceded by `bitmap_bytes` of bitmap, in a file of `file_size`
/// bytes. The caller has bounded `entries` (see `VhdDynamicHeader::bat_entries_for`).
pub fn parse_bat(
    buf: &[u8],
    base: u64,
    entries: u32,
    block_size: u32,
    bitmap_bytes: u64,
    file_size: u64,
) -> Result<VhdBat> {
    let len = (entries as usize)
        .checked_mul(4)
        .ok_or_else(|| ParseError::corrupt(WHAT, base, "table size overflows"))?;
    let table = crate::bytes::slice(buf, 0, len, WHAT, base)?;
    let mut out = Vec::with_capacity(entries as usize);
    for (i, c) in table.chunks_exact(4).enumerate() {
        let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        if e != UNALLOCATED {
            let end = u64::from(e)
                .checked_mul(512)
                .and_then(|o| o.checked_add(bitmap_bytes))
                .and_then(|o| o.checked_add(block_size.into()));
            if end.is_none_or(|end| end > file_size) {
                return Err(ParseError::corrupt(
                    WHAT,
                    base + 4 * i as u64,
                    format!(
                        "entry {i}: block at sector {e:#x} (byte {:#x}) ends past the end of the file ({file_size} bytes; truncated?)",
                        u64::from(e) * 512
                    ),
                ));
            }
        }
        out.push(e);
    }
    Ok(VhdBat {
        entries: out,
        bitmap_bytes,
    })
}

impl VhdBat {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Absolute offset of block `i`'s sector bitmap, `None` when not allocated (or `i`
    /// is past the table).
    pub fn bitmap_offset(&self, i: u64) -> Option<u64> {
        let e = *self.entries.get(usize::try_from(i).ok()?)?;
        (e != UNALLOCATED).then(|| u64::from(e) * 512)
    }

    /// Absolute offset of block `i`'s first data byte, `None` when not allocated.
    pub fn data_offset(&self, i: u64) -> Option<u64> {
        // Checked against the file size at parse time: cannot overflow.
        self.bitmap_offset(i).map(|o| o + self.bitmap_bytes)
    }

    /// Number of allocated blocks.
    pub fn allocated(&self) -> usize {
        self.entries.iter().filter(|&&e| e != UNALLOCATED).count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::sweep;
    use super::*;

    fn table(e: &[u32]) -> Vec<u8> {
        e.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn maps_entries() {
        let b = parse_bat(
            &table(&[4, UNALLOCATED, 8]),
            1536,
            3,
            1024,
            512,
            8 * 512 + 1536,
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.allocated(), 2);
        assert_eq!(b.bitmap_offset(0), Some(2048));
        assert_eq!(b.data_offset(0), Some(2560));
        assert_eq!(b.bitmap_offset(1), None);
        assert_eq!(b.bitmap_offset(3), None);
        assert_eq!(b.bitmap_offset(u64::MAX), None);
    }

    #[test]
    fn rejects_short_table() {
        assert!(matches!(
            parse_bat(&table(&[4, 5]), 1536, 3, 1024, 512, 1 << 20),
            Err(ParseError::Truncated { offset: 1536, .. })
        ));
    }

    #[test]
    fn rejects_block_past_end_of_file() {
        assert!(matches!(
            parse_bat(
                &table(&[4, UNALLOCATED, 8]),
                1536,
                3,
                1024,
                512,
                8 * 512 + 1535
            ),
            Err(ParseError::Corrupt { offset: 1544, .. })
        ));
        assert!(parse_bat(&table(&[0xFFFF_FFFE]), 0, 1, 1 << 28, 1 << 16, u64::MAX).is_ok());
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flip() {
        let t = table(&[4, UNALLOCATED, 8, 0x10]);
        sweep(&t, |b| {
            if let Ok(bat) = parse_bat(b, 0, 4, 4096, 512, 1 << 20) {
                for i in 0..5 {
                    let _ = bat.data_offset(i);
                }
            }
        });
    }
}
