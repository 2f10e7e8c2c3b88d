//! The Block Allocation Table (MS-VHDX 2.5): one 64-bit entry per payload block,
//! with one sector-bitmap entry after every `chunk_ratio` payload entries, where
//! `chunk_ratio = 2^23 * logical_sector_size / block_size` (the number of payload
//! blocks one 1 MiB sector bitmap block describes). An entry holds a 3-bit state
//! and, in bits 20..63, the file offset in MiB.
//!
//! Invariants kept by [`parse_bat`]: every entry we will ever follow has a known
//! state, and every present block lies inside the file past the 1 MiB header
//! section, so a reader never needs to re-check offsets.

use super::metadata::VhdxMetadata;
use super::MIB;
use crate::error::{ParseError, Result};
use crate::limits::MAX_TABLE_BYTES;

const WHAT: &str = "VHDX BAT";

/// State of a payload block (MS-VHDX 2.5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadState {
    /// 0: never written (differencing: read the parent).
    NotPresent,
    /// 1: content undefined (we read it like NotPresent).
    Undefined,
    /// 2: reads as zeros.
    Zero,
    /// 3: unmapped by a trim; reads like NotPresent.
    Unmapped,
    /// 6: the whole block is in the file.
    FullyPresent,
    /// 7: differencing only: the sector bitmap says which sectors are in the file.
    PartiallyPresent,
}

impl PayloadState {
    /// The 3-bit state as stored in a BAT entry.
    pub fn bits(self) -> u64 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
        }
    }

    fn from_bits(v: u64) -> Option<Self> {
        Some(match v {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            _ => return None,
        })
    }
}

/// A payload block: its state and, when present, its file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadBlock {
    pub state: PayloadState,
    pub file_offset: u64,
}

/// BAT geometry derived from the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdxBatGeometry {
    pub block_size: u64,
    pub logical_sector_size: u64,
    pub chunk_ratio: u64,
    pub data_blocks: u64,
    pub bitmap_blocks: u64,
    pub total_entries: u64,
    pub has_parent: bool,
}

impl VhdxBatGeometry {
    /// Computes the geometry; `metadata` is already validated, so nothing can overflow.
    pub fn new(m: &VhdxMetadata) -> VhdxBatGeometry {
        let block_size = u64::from(m.block_size);
        let lss = u64::from(m.logical_sector_size);
        let chunk_ratio = ((1u64 << 23) * lss / block_size).max(1);
        let data_blocks = m.virtual_size.div_ceil(block_size);
        let bitmap_blocks = data_blocks.div_ceil(chunk_ratio);
        let total_entries = if m.has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else {
            data_blocks + data_blocks.saturating_sub(1) / chunk_ratio
        };
        VhdxBatGeometry {
            block_size,
            logical_sector_size: lss,
            chunk_ratio,
            data_blocks,
            bitmap_blocks,
            total_entries,
            has_parent: m.has_parent,
        }
    }

    /// Bytes of BAT that must be read.
    pub fn bat_bytes(&self) -> u64 {
        self.total_entries * 8
    }

    /// Index in the BAT of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// Index in the BAT of the sector bitmap of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }
}

/// The validated BAT.
#[derive(Debug, Clone)]
pub struct VhdxBat {
    pub geometry: VhdxBatGeometry,
    entries: Vec<u64>,
}

fn entry_at(buf: &[u8], i: u64) -> Option<u64> {
    let at = usize::try_from(i.checked_mul(8)?).ok()?;
    let b = buf.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

/// Parses and validates the BAT `buf` (read from absolute file offset `base`), for
/// a file whose readable length (after log replay) is `file_len`.
pub fn parse_bat(
    buf: &[u8],
    base: u64,
    geometry: VhdxBatGeometry,
    file_len: u64,
) -> Result<VhdxBat> {
    let bytes = geometry.bat_bytes();
    ParseError::check_limit(WHAT, base, bytes, MAX_TABLE_BYTES, "MAX_TABLE_BYTES")?;
    if (buf.len() as u64) < bytes {
        return Err(ParseError::truncated(WHAT, base, bytes, buf.len() as u64));
    }
    let block = geometry.block_size;
    let check_offset = |i: u64, off: u64, len: u64, what: &str| -> Result<()> {
        let end = off.checked_add(len);
        if off < MIB || end.is_none_or(|e| e > file_len) {
            return Err(ParseError::corrupt(
                WHAT,
                base + i * 8,
                format!("{what} at file offset {off:#x} (+{len:#x}) lies outside the file of {file_len:#x} bytes"),
            ));
        }
        Ok(())
    };
    for b in 0..geometry.data_blocks {
        let i = geometry.payload_index(b);
        let v = entry_at(buf, i).ok_or_else(|| ParseError::truncated(WHAT, base + i * 8, 8, 0))?;
        let state = PayloadState::from_bits(v & 7).ok_or_else(|| {
            ParseError::corrupt(
                WHAT,
                base + i * 8,
                format!("payload block {b}: unknown state {}", v & 7),
            )
        })?;
        let off = (v >> 20) << 20;
        match state {
            PayloadState::FullyPresent => check_offset(i, off, block, "payload block")?,
            PayloadState::PartiallyPresent if geometry.has_parent => {
                check_offset(i, off, block, "payload block")?
            }
            PayloadState::PartiallyPresent => {
                return Err(ParseError::corrupt(
                    WHAT,
                    base + i * 8,
                    format!("payload block {b} is partially present in a disk without a parent"),
                ))
            }
            _ => {}
        }
    }
    // Sector bitmaps only mean something in a differencing disk; qemu before 8.0
    // wrote garbage into them in dynamic disks, so they are not even looked at there.
    if geometry.has_parent {
        for c in 0..geometry.bitmap_blocks {
            let i = geometry.bitmap_index(c);
            let v =
                entry_at(buf, i).ok_or_else(|| ParseError::truncated(WHAT, base + i * 8, 8, 0))?;
            match v & 7 {
                0 => {}
                6 => check_offset(i, (v >> 20) << 20, MIB, "sector bitmap block")?,
                s => {
                    return Err(ParseError::corrupt(
                        WHAT,
                        base + i * 8,
                        format!("sector bitmap of chunk {c}: invalid state {s}"),
                    ))
                }
            }
        }
    }
    let n = bytes as usize / 8;
    let entries = buf
        .chunks_exact(8)
        .take(n)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect();
    Ok(VhdxBat { geometry, entries })
}

impl VhdxBat {
    /// Payload block `block` (`None` past the last block).
    pub fn payload(&self, block: u64) -> Option<PayloadBlock> {
        if block >= self.geometry.data_blocks {
            return None;
        }
        let i = usize::try_from(self.geometry.payload_index(block)).ok()?;
        let v = *self.entries.get(i)?;
        Some(PayloadBlock {
            // Validated in parse_bat.
            state: PayloadState::from_bits(v & 7)?,
            file_offset: (v >> 20) << 20,
        })
    }

    /// File offset of the sector bitmap block of chunk `chunk`, `None` when not present.
    pub fn bitmap(&self, chunk: u64) -> Option<u64> {
        if !self.geometry.has_parent || chunk >= self.geometry.bitmap_blocks {
            return None;
        }
        let i = usize::try_from(self.geometry.bitmap_index(chunk)).ok()?;
        let v = *self.entries.get(i)?;
        (v & 7 == 6).then_some((v >> 20) << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(block: u32, vsize: u64, parent: bool) -> VhdxMetadata {
        VhdxMetadata {
            block_size: block,
            leave_blocks_allocated: false,
            has_parent: parent,
            virtual_size: vsize,
            logical_sector_size: 512,
            physical_sector_size: 512,
            page83: None,
            parent_locator: None,
        }
    }

    fn put(buf: &mut [u8], i: u64, v: u64) {
        let i = i as usize * 8;
        buf[i..i + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn geometry_matches_spec() {
        let g = VhdxBatGeometry::new(&meta(32 << 20, 10 << 30, false));
        assert_eq!((g.chunk_ratio, g.data_blocks), (128, 320));
        assert_eq!(g.total_entries, 320 + 319 / 128);
        assert_eq!(g.payload_index(128), 129);
        let g = VhdxBatGeometry::new(&meta(2 << 20, 1 << 30, true));
        assert_eq!(g.chunk_ratio, 2048);
        assert_eq!(g.total_entries, 2049);
        assert_eq!(g.bitmap_index(0), 2048);
    }

    fn sample(parent: bool) -> (Vec<u8>, VhdxBatGeometry) {
        let g = VhdxBatGeometry::new(&meta(1 << 20, 4 << 20, parent));
        let mut b = vec![0u8; g.bat_bytes() as usize];
        put(&mut b, 0, (3 << 20) | 6);
        put(&mut b, 1, 2);
        if parent {
            put(&mut b, 2, (4 << 20) | 7);
            put(&mut b, g.bitmap_index(0), (5 << 20) | 6);
        }
        (b, g)
    }

    #[test]
    fn parses_states() {
        let (b, g) = sample(true);
        let bat = parse_bat(&b, 0x300000, g, 8 << 20).unwrap();
        assert_eq!(
            bat.payload(0),
            Some(PayloadBlock {
                state: PayloadState::FullyPresent,
                file_offset: 3 << 20
            })
        );
        assert_eq!(bat.payload(1).unwrap().state, PayloadState::Zero);
        assert_eq!(
            bat.payload(2).unwrap().state,
            PayloadState::PartiallyPresent
        );
        assert_eq!(bat.payload(3).unwrap().state, PayloadState::NotPresent);
        assert_eq!(bat.payload(4), None);
        assert_eq!(bat.bitmap(0), Some(5 << 20));
    }

    #[test]
    fn rule_unknown_state() {
        let (mut b, g) = sample(false);
        put(&mut b, 3, 4);
        assert!(matches!(
            parse_bat(&b, 0x300000, g, 8 << 20),
            Err(ParseError::Corrupt {
                offset: 0x300018,
                ..
            })
        ));
    }

    #[test]
    fn rule_block_outside_file() {
        let (mut b, g) = sample(false);
        put(&mut b, 0, (100 << 20) | 6);
        assert!(matches!(
            parse_bat(&b, 0x300000, g, 8 << 20),
            Err(ParseError::Corrupt {
                offset: 0x300000,
                ..
            })
        ));
        put(&mut b, 0, 6);
        assert!(matches!(
            parse_bat(&b, 0x300000, g, 8 << 20),
            Err(ParseError::Corrupt {
                offset: 0x300000,
                ..
            })
        ));
    }

    #[test]
    fn rule_partial_without_parent() {
        let (mut b, g) = sample(false);
        put(&mut b, 2, (4 << 20) | 7);
        assert!(matches!(
            parse_bat(&b, 0, g, 8 << 20),
            Err(ParseError::Corrupt { offset: 16, .. })
        ));
    }

    #[test]
    fn rule_bitmap_state_and_offset() {
        let (mut b, g) = sample(true);
        let i = g.bitmap_index(0);
        put(&mut b, i, (5 << 20) | 2);
        assert!(matches!(
            parse_bat(&b, 0, g, 8 << 20),
            Err(ParseError::Corrupt { .. })
        ));
        put(&mut b, i, (50 << 20) | 6);
        assert!(matches!(
            parse_bat(&b, 0, g, 8 << 20),
            Err(ParseError::Corrupt { .. })
        ));
        // Garbage in a dynamic disk's bitmap entries is ignored.
        let (mut b, g) = sample(false);
        if g.total_entries > g.chunk_ratio {
            put(&mut b, g.chunk_ratio, 5);
        }
        assert!(parse_bat(&b, 0, g, 8 << 20).is_ok());
    }

    #[test]
    fn rule_size_limit_and_truncation() {
        let g = VhdxBatGeometry::new(&meta(1 << 20, 64 << 40, false));
        assert!(matches!(
            parse_bat(&[], 0, g, 0),
            Err(ParseError::LimitExceeded { .. })
        ));
        let (b, g) = sample(true);
        assert!(matches!(
            parse_bat(&b[..8], 0, g, 8 << 20),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let (b, g) = sample(true);
        for n in (0..b.len()).step_by(8).take(64) {
            let _ = parse_bat(&b[..n], 0, g, 8 << 20);
        }
        for bit in 0..64 * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            if let Ok(bat) = parse_bat(&m, 0, g, 8 << 20) {
                for i in 0..5 {
                    let _ = bat.payload(i);
                    let _ = bat.bitmap(i);
                }
            }
        }
        let mut m = b.clone();
        let i = g.bitmap_index(0) as usize * 8;
        for bit in 0..64 {
            m[i + bit / 8] ^= 1 << (bit % 8);
            let _ = parse_bat(&m, 0, g, 8 << 20);
        }
    }
}
