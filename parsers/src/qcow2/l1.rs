//! The active L1 table (qcow2.txt, "Cluster mapping"): one big-endian u64 per L2
//! table, contiguous in the file at `l1_table_offset`.
//!
//! L1 entry: bits 9–55 are the cluster-aligned offset of an L2 table (0: the whole
//! range the table would map is unallocated); bit 63 is the "copied" flag and bits
//! 0–8 / 56–62 are reserved; a reader ignores all of those, as QEMU does. An
//! unaligned L2 offset is `Corrupt` (QEMU refuses it too).
//!
//! Only the entries that map the virtual disk are parsed: `l1_size` may be larger,
//! and QEMU never looks at the rest.

use nom::multi::count;
use nom::number::complete::be_u64;

use crate::bytes;
use crate::error::{ParseError, Result};

const WHAT: &str = "qcow2 L1 table";

/// Bits 9–55 of an L1 or standard L2 entry: a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// The validated active L1 table: the L2 table offset of each entry (0 = none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2L1Table {
    l2_offsets: Vec<u64>,
}

impl Qcow2L1Table {
    /// The L2 table offset for L1 index `index`, `None` when unallocated or when
    /// the index is beyond the entries parsed.
    pub fn l2_offset(&self, index: u64) -> Option<u64> {
        let i = usize::try_from(index).ok()?;
        self.l2_offsets.get(i).copied().filter(|&o| o != 0)
    }

    /// Entries parsed.
    pub fn len(&self) -> usize {
        self.l2_offsets.len()
    }

    /// True when no entry was parsed (a zero-sized disk).
    pub fn is_empty(&self) -> bool {
        self.l2_offsets.is_empty()
    }

    /// Every allocated `(L1 index, L2 offset)`.
    pub fn allocated(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.l2_offsets
            .iter()
            .enumerate()
            .filter(|(_, &o)| o != 0)
            .map(|(i, &o)| (i, o))
    }
}

/// Parses the first `entries` entries of the L1 table held in `buf`, which was read
/// from absolute offset `base`. `entries` is what the virtual size needs (already
/// checked against `l1_size` and `MAX_TABLE_BYTES` by the header).
pub fn parse_l1_table(
    buf: &[u8],
    base: u64,
    entries: usize,
    cluster_bits: u32,
) -> Result<Qcow2L1Table> {
    let len = entries
        .checked_mul(8)
        .ok_or_else(|| ParseError::corrupt(WHAT, base, "entry count overflows"))?;
    let body = bytes::slice(buf, 0, len, WHAT, base)?;
    let raw: Vec<u64> = bytes::run(count(be_u64, entries), body, WHAT, base)?;
    let align = (1u64 << cluster_bits.min(63)) - 1;
    let mut l2_offsets = Vec::with_capacity(entries);
    for (i, e) in raw.into_iter().enumerate() {
        let off = e & OFFSET_MASK;
        if off & align != 0 {
            return Err(ParseError::corrupt(
                WHAT,
                base + (i as u64) * 8,
                format!(
                    "L1 index {i}: L2 table offset {off:#x} is not aligned to the cluster size {}",
                    align + 1
                ),
            ));
        }
        l2_offsets.push(off);
    }
    Ok(Qcow2L1Table { l2_offsets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[u64]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.to_be_bytes()).collect()
    }

    #[test]
    fn parses_offsets_and_ignores_flag_bits() {
        let buf = table(&[0, 0x8000_0000_0003_0000, 0x0000_0000_0005_0000]);
        let t = parse_l1_table(&buf, 0x30000, 3, 16).unwrap();
        assert_eq!(t.l2_offset(0), None);
        assert_eq!(t.l2_offset(1), Some(0x30000));
        assert_eq!(t.l2_offset(2), Some(0x50000));
        assert_eq!(t.l2_offset(3), None);
        assert_eq!(t.allocated().count(), 2);
    }

    #[test]
    fn rejects_unaligned_l2_offset_naming_index_and_offset() {
        let buf = table(&[0x30000, 0x30200]);
        let e = parse_l1_table(&buf, 0x1000, 2, 16).unwrap_err();
        assert_eq!(e.offset(), 0x1008);
        assert!(e.to_string().contains("L1 index 1"), "{e}");
    }

    #[test]
    fn truncated_table_is_an_error() {
        let buf = table(&[0x30000]);
        assert!(matches!(
            parse_l1_table(&buf, 0, 2, 16),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        let buf = table(&[0x30000, 0, 0x8000_0000_0007_0000, 0x50000]);
        for n in 0..=buf.len() {
            let _ = parse_l1_table(&buf[..n], 0, 4, 16);
        }
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_l1_table(&b, 0, 4, 16);
        }
    }
}
