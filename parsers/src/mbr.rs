//! Master Boot Record: the 512-byte sector at LBA 0 with four primary partition
//! entries, and the Extended Boot Records (EBR) that chain logical partitions inside
//! an extended partition. Layout: the "classical generic MBR" (signature 0x55AA at
//! 0x1FE, entries at 0x1BE, 16 bytes each).
//!
//! Pure parsing of one sector at a time; following the EBR chain (I/O, bounded by
//! `limits::MAX_EBR_CHAIN`, loops refused) is the caller's job.

use nom::number::complete::{le_u32, u8 as byte};
use nom::Parser;

use crate::bytes::{need, run, slice};
use crate::error::{ParseError, Result};

/// Partition type bytes that denote an extended partition (CHS, LBA, Linux).
pub const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];
/// Partition type of a GPT protective entry.
pub const GPT_PROTECTIVE: u8 = 0xee;

/// One of the four entries of an MBR or EBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    /// 0x80 = active / bootable.
    pub status: u8,
    pub partition_type: u8,
    /// First sector, relative to the table's base (LBA 0 for the MBR; see EBR rules).
    pub first_lba: u32,
    pub sectors: u32,
}

impl MbrEntry {
    /// An unused slot (type 0 or no sectors).
    pub fn is_empty(&self) -> bool {
        self.partition_type == 0 || self.sectors == 0
    }

    /// Whether the entry points at an extended partition.
    pub fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.partition_type)
    }
}

/// A parsed MBR or EBR sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// Windows disk signature at 0x1B8.
    pub disk_signature: u32,
    pub entries: [MbrEntry; 4],
}

impl Mbr {
    /// Whether any entry is a GPT protective (0xEE) entry: the disk is GPT (a hybrid
    /// MBR also has other entries; GPT still wins).
    pub fn is_protective(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.partition_type == GPT_PROTECTIVE)
    }
}

/// Whether a 512-byte sector carries the 0x55AA boot signature.
pub fn has_boot_signature(sector: &[u8]) -> bool {
    sector.len() >= 512 && sector[510] == 0x55 && sector[511] == 0xaa
}

/// Parses an MBR / EBR sector found at absolute byte `offset`.
pub fn parse_mbr(sector: &[u8], offset: u64) -> Result<Mbr> {
    need(sector, 512, "MBR", offset)?;
    if !has_boot_signature(sector) {
        return Err(ParseError::BadMagic {
            what: "MBR boot signature",
            offset: offset + 0x1fe,
            expected: "0x55aa".into(),
            found: format!("0x{:02x}{:02x}", sector[510], sector[511]),
        });
    }
    let disk_signature = run(
        le_u32,
        slice(sector, 0x1b8, 4, "MBR disk signature", offset)?,
        "MBR disk signature",
        offset + 0x1b8,
    )?;
    let mut entries = [MbrEntry {
        status: 0,
        partition_type: 0,
        first_lba: 0,
        sectors: 0,
    }; 4];
    for (i, e) in entries.iter_mut().enumerate() {
        let at = 0x1be + 16 * i;
        let raw = slice(sector, at, 16, "MBR partition entry", offset)?;
        // 0x00 status, 0x01 CHS first (3), 0x04 type, 0x05 CHS last (3), 0x08 LBA first, 0x0C sectors.
        let entry = (
            byte,
            nom::bytes::complete::take(3usize),
            byte,
            nom::bytes::complete::take(3usize),
            le_u32,
            le_u32,
        )
            .map(
                |(status, _, partition_type, _, first_lba, sectors)| MbrEntry {
                    status,
                    partition_type,
                    first_lba,
                    sectors,
                },
            );
        *e = run(entry, raw, "MBR partition entry", offset + at as u64)?;
        if e.status != 0 && e.status != 0x80 && !e.is_empty() {
            return Err(ParseError::corrupt(
                "MBR partition entry",
                offset + at as u64,
                format!("status byte {:#04x} is neither 0x00 nor 0x80", e.status),
            ));
        }
    }
    Ok(Mbr {
        disk_signature,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector_with(entries: &[(u8, u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        for (i, &(status, ty, lba, n)) in entries.iter().enumerate() {
            let at = 0x1be + 16 * i;
            s[at] = status;
            s[at + 4] = ty;
            s[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
            s[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    #[test]
    fn parses_entries() {
        let s = sector_with(&[(0x80, 0x07, 2048, 1_024_000), (0, 0x05, 1_026_048, 4096)]);
        let m = parse_mbr(&s, 0).unwrap();
        assert_eq!(
            m.entries[0],
            MbrEntry {
                status: 0x80,
                partition_type: 7,
                first_lba: 2048,
                sectors: 1_024_000
            }
        );
        assert!(m.entries[1].is_extended());
        assert!(m.entries[2].is_empty());
        assert!(!m.is_protective());
    }

    #[test]
    fn rejects_missing_signature() {
        let mut s = sector_with(&[]);
        s[511] = 0;
        assert!(matches!(
            parse_mbr(&s, 0),
            Err(ParseError::BadMagic { offset: 0x1fe, .. })
        ));
    }

    #[test]
    fn rejects_bad_status() {
        let s = sector_with(&[(0x12, 0x83, 1, 1)]);
        assert!(matches!(
            parse_mbr(&s, 512),
            Err(ParseError::Corrupt { offset: 0x3be, .. })
        ));
    }

    #[test]
    fn truncated_is_error() {
        assert!(matches!(
            parse_mbr(&[0u8; 100], 0),
            Err(ParseError::Truncated { .. })
        ));
    }
}
