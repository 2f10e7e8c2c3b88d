//! The COWD header of ESXi VMFSSPARSE extents (`*-delta.vmdk` of ESXi snapshots
//! before 6.5, and the old "vmfsSparse" create type). Not in VMware's public spec;
//! layout from libyal's libvmdk documentation ("COWD sparse extent header") and
//! QEMU's block/vmdk.c (which reads the same first fields).
//!
//! Grain tables of a COWD extent always hold 4096 entries of u32 sector numbers; an
//! entry of 0 is unallocated (falls through to the parent). There is no zero-grain
//! entry. Invariants of [`VmdkCowdHeader`]: version 1; grain size a power of two of at
//! most [`MAX_GRAIN_BYTES`]; the grain directory it states covers the capacity and
//! fits [`MAX_TABLE_BYTES`].

use nom::bytes::complete::take;
use nom::number::complete::le_u32;
use nom::Parser;

use super::{div_ceil, SECTOR};
use crate::bytes::{self, show_magic};
use crate::error::{ParseError, Result};
use crate::limits::{MAX_GRAIN_BYTES, MAX_TABLE_BYTES};

/// "COWD" as stored.
pub const COWD_MAGIC: &[u8; 4] = b"COWD";
/// Bytes of the header fields we read (the on-disk header is 2048 bytes).
pub const COWD_HEADER_BYTES: usize = 0x20;
/// Grain table entries per grain table, fixed by the format.
pub const COWD_GTES_PER_GT: u64 = 4096;

/// The fields we use, as stored; names follow libvmdk's documentation.
#[allow(non_snake_case)]
struct RawCowdHeader {
    magic: [u8; 4],    // 0x00
    version: u32,      // 0x04
    flags: u32,        // 0x08
    capacity: u32,     // 0x0C sectors
    grainSize: u32,    // 0x10 sectors
    gdOffset: u32,     // 0x14 sectors
    numGDEntries: u32, // 0x18
    freeSector: u32,   // 0x1C
}

/// A validated COWD header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkCowdHeader {
    pub flags: u32,
    pub capacity_sectors: u64,
    pub grain_sectors: u64,
    pub gd_offset_sectors: u64,
    /// Entries stored in the grain directory.
    pub gd_entries_stored: u64,
    pub free_sector: u64,
}

const WHAT: &str = "VMDK COWD header";

fn raw(input: &[u8]) -> nom::IResult<&[u8], RawCowdHeader> {
    let (input, (magic, version, flags, capacity, grain, gd, n, free)) = (
        take(4usize),
        le_u32,
        le_u32,
        le_u32,
        le_u32,
        le_u32,
        le_u32,
        le_u32,
    )
        .parse(input)?;
    let mut m = [0u8; 4];
    m.copy_from_slice(magic);
    Ok((
        input,
        RawCowdHeader {
            magic: m,
            version,
            flags,
            capacity,
            grainSize: grain,
            gdOffset: gd,
            numGDEntries: n,
            freeSector: free,
        },
    ))
}

/// Parses and validates a COWD header at absolute offset `base`.
pub fn parse_cowd_header(buf: &[u8], base: u64) -> Result<VmdkCowdHeader> {
    let buf = bytes::slice(buf, 0, COWD_HEADER_BYTES, WHAT, base)?;
    let r = bytes::run(raw, buf, WHAT, base)?;
    let at = |field: u64| base.saturating_add(field);
    if &r.magic != COWD_MAGIC {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: show_magic(COWD_MAGIC),
            found: show_magic(&r.magic),
        });
    }
    if r.version != 1 {
        return Err(ParseError::unsupported(
            WHAT,
            at(0x04),
            format!("version {} (only 1 is known)", r.version),
        ));
    }
    if r.grainSize == 0 || !r.grainSize.is_power_of_two() {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x10),
            format!("grain size {} sectors is not a power of two", r.grainSize),
        ));
    }
    let grain_sectors = u64::from(r.grainSize);
    ParseError::check_limit(
        WHAT,
        at(0x10),
        grain_sectors * SECTOR,
        MAX_GRAIN_BYTES,
        "MAX_GRAIN_BYTES",
    )?;
    let stored = u64::from(r.numGDEntries);
    ParseError::check_limit(
        WHAT,
        at(0x18),
        stored * 4,
        MAX_TABLE_BYTES,
        "MAX_TABLE_BYTES (grain directory)",
    )?;
    let h = VmdkCowdHeader {
        flags: r.flags,
        capacity_sectors: u64::from(r.capacity),
        grain_sectors,
        gd_offset_sectors: u64::from(r.gdOffset),
        gd_entries_stored: stored,
        free_sector: u64::from(r.freeSector),
    };
    if h.gd_entries() > stored {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x18),
            format!(
                "grain directory has {stored} entries, the capacity needs {}",
                h.gd_entries()
            ),
        ));
    }
    if h.gd_offset_sectors == 0 && h.capacity_sectors != 0 {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x14),
            "grain directory offset is 0 (that is the header itself)",
        ));
    }
    Ok(h)
}

impl VmdkCowdHeader {
    /// Virtual size in bytes (a u32 sector count cannot overflow).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    /// Bytes per grain (capped at parse time).
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Grain directory entries needed to cover the capacity (≤ those stored).
    pub fn gd_entries(&self) -> u64 {
        div_ceil(self.capacity_sectors, self.grain_sectors * COWD_GTES_PER_GT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 0x20];
        b[0..4].copy_from_slice(COWD_MAGIC);
        for (off, v) in [
            (4, 1u32),
            (8, 3),
            (0xC, 4096),
            (0x10, 1),
            (0x14, 4),
            (0x18, 1),
            (0x1C, 40),
        ] {
            b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn with(off: usize, v: u32) -> Vec<u8> {
        let mut b = sample();
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn parses_sample() {
        let h = parse_cowd_header(&sample(), 0).unwrap();
        assert_eq!(h.capacity_bytes(), 2 << 20);
        assert_eq!(h.grain_bytes(), 512);
        assert_eq!(h.gd_entries(), 1);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut b = sample();
        b[0] = b'X';
        assert!(matches!(
            parse_cowd_header(&b, 0),
            Err(ParseError::BadMagic { .. })
        ));
    }

    #[test]
    fn rejects_version() {
        let e = parse_cowd_header(&with(4, 2), 0).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { offset: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_grain_size() {
        let e = parse_cowd_header(&with(0x10, 3), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x10, .. }), "{e}");
        let e = parse_cowd_header(&with(0x10, 1 << 20), 0).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::LimitExceeded {
                    name: "MAX_GRAIN_BYTES",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_short_grain_directory() {
        let e = parse_cowd_header(&with(0xC, 4097), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x18, .. }), "{e}");
    }

    #[test]
    fn rejects_huge_grain_directory() {
        let e = parse_cowd_header(&with(0x18, u32::MAX), 0).unwrap_err();
        assert!(
            matches!(e, ParseError::LimitExceeded { offset: 0x18, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_gd_at_zero() {
        let e = parse_cowd_header(&with(0x14, 0), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x14, .. }), "{e}");
    }

    #[test]
    fn no_panic_sweep() {
        crate::vmdk::sweep::no_panic(&sample(), |b| parse_cowd_header(b, 0));
    }
}
