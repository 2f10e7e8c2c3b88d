//! SESPARSE (ESXi 6.5+ `*-sesparse.vmdk`) constant and volatile headers. VMware has
//! not published this format; the layout and the strict checks follow QEMU's
//! block/vmdk.c, the reference every other reader follows. What QEMU refuses, we
//! refuse (flags, reserved fields, padding, a journal that needs replay), so that we
//! never read a variant nobody has verified.
//!
//! Geometry (fixed by those checks): 4 KiB grains (8 sectors), grain tables of 64
//! sectors = 4096 u64 entries (16 MiB of disk each). The grain directory, the grain
//! tables and the grains areas are given in sectors. Invariants of
//! [`VmdkSeSparseHeader`]: capacity at most [`MAX_VIRTUAL_SIZE`]; the grain directory
//! covers the capacity and fits [`MAX_TABLE_BYTES`]; every area offset times 512 fits a u64.

use nom::multi::count;
use nom::number::complete::le_u64;

use super::{div_ceil, SECTOR};
use crate::bytes;
use crate::error::{ParseError, Result};
use crate::limits::{MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

/// Magic of the constant header (u64 at offset 0).
pub const SESPARSE_CONST_MAGIC: u64 = 0x0000_0000_cafe_babe;
/// Magic of the volatile header.
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0x0000_0000_cafe_cafe;
/// The only version QEMU knows.
pub const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;
/// Grain size in sectors (4 KiB).
pub const SESPARSE_GRAIN_SECTORS: u64 = 8;
/// Grain table size in sectors (4096 entries of 8 bytes).
pub const SESPARSE_GT_SECTORS: u64 = 64;
/// Entries per grain table.
pub const SESPARSE_GTES_PER_GT: u64 = SESPARSE_GT_SECTORS * SECTOR / 8;
/// Both headers are one sector.
pub const SESPARSE_HEADER_BYTES: usize = 512;

/// The constant header as stored (26 u64 fields, then 304 bytes of padding).
#[allow(dead_code)]
struct RawConstHeader {
    magic: u64,                  // 0x00
    version: u64,                // 0x08
    capacity: u64,               // 0x10 sectors
    grain_size: u64,             // 0x18 sectors
    grain_table_size: u64,       // 0x20 sectors
    flags: u64,                  // 0x28
    reserved: [u64; 4],          // 0x30
    volatile_header_offset: u64, // 0x50
    volatile_header_size: u64,   // 0x58
    journal_header_offset: u64,  // 0x60
    journal_header_size: u64,    // 0x68
    journal_offset: u64,         // 0x70
    journal_size: u64,           // 0x78
    grain_dir_offset: u64,       // 0x80
    grain_dir_size: u64,         // 0x88
    grain_tables_offset: u64,    // 0x90
    grain_tables_size: u64,      // 0x98
    free_bitmap_offset: u64,     // 0xA0
    free_bitmap_size: u64,       // 0xA8
    backmap_offset: u64,         // 0xB0
    backmap_size: u64,           // 0xB8
    grains_offset: u64,          // 0xC0
    grains_size: u64,            // 0xC8
} // 0xD0 pad[304]

/// A validated SESPARSE constant header (all offsets in sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkSeSparseHeader {
    pub capacity_sectors: u64,
    pub volatile_header_offset_sectors: u64,
    pub grain_dir_offset_sectors: u64,
    pub grain_dir_size_sectors: u64,
    pub grain_tables_offset_sectors: u64,
    pub grains_offset_sectors: u64,
}

const WHAT: &str = "VMDK SESPARSE constant header";
const VWHAT: &str = "VMDK SESPARSE volatile header";
const PAD_AT: usize = 0xD0;

/// Parses and validates the constant header (the first sector of the file, `base`
/// being its absolute offset, normally 0).
pub fn parse_sesparse_header(buf: &[u8], base: u64) -> Result<VmdkSeSparseHeader> {
    let buf = bytes::slice(buf, 0, SESPARSE_HEADER_BYTES, WHAT, base)?;
    let f = bytes::run(count(le_u64, PAD_AT / 8), buf, WHAT, base)?;
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let r = RawConstHeader {
        magic: field(0),
        version: field(1),
        capacity: field(2),
        grain_size: field(3),
        grain_table_size: field(4),
        flags: field(5),
        reserved: [field(6), field(7), field(8), field(9)],
        volatile_header_offset: field(10),
        volatile_header_size: field(11),
        journal_header_offset: field(12),
        journal_header_size: field(13),
        journal_offset: field(14),
        journal_size: field(15),
        grain_dir_offset: field(16),
        grain_dir_size: field(17),
        grain_tables_offset: field(18),
        grain_tables_size: field(19),
        free_bitmap_offset: field(20),
        free_bitmap_size: field(21),
        backmap_offset: field(22),
        backmap_size: field(23),
        grains_offset: field(24),
        grains_size: field(25),
    };
    let at = |off: u64| base.saturating_add(off);
    if r.magic != SESPARSE_CONST_MAGIC {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: format!("{SESPARSE_CONST_MAGIC:#018x}"),
            found: format!("{:#018x}", r.magic),
        });
    }
    let fixed = [
        (0x08, r.version, SESPARSE_VERSION, "version"),
        (0x18, r.grain_size, SESPARSE_GRAIN_SECTORS, "grain size"),
        (
            0x20,
            r.grain_table_size,
            SESPARSE_GT_SECTORS,
            "grain table size",
        ),
        (0x28, r.flags, 0, "flags"),
    ];
    for (off, found, want, name) in fixed {
        if found != want {
            return Err(ParseError::unsupported(
                WHAT,
                at(off),
                format!("{name} {found:#x} (only {want:#x} is known)"),
            ));
        }
    }
    if r.reserved.iter().any(|&x| x != 0) {
        return Err(ParseError::unsupported(
            WHAT,
            at(0x30),
            "non-zero reserved fields",
        ));
    }
    if buf.get(PAD_AT..).is_some_and(|p| p.iter().any(|&x| x != 0)) {
        return Err(ParseError::unsupported(
            WHAT,
            at(PAD_AT as u64),
            "non-zero padding",
        ));
    }
    ParseError::check_limit(
        WHAT,
        at(0x10),
        r.capacity.saturating_mul(SECTOR),
        MAX_VIRTUAL_SIZE,
        "MAX_VIRTUAL_SIZE",
    )?;
    ParseError::check_limit(
        WHAT,
        at(0x88),
        r.grain_dir_size.saturating_mul(SECTOR),
        MAX_TABLE_BYTES,
        "MAX_TABLE_BYTES (grain directory)",
    )?;
    // Offsets become byte offsets by `* 512`; refuse those that cannot.
    for (off, v) in [
        (0x50, r.volatile_header_offset),
        (0x80, r.grain_dir_offset),
        (0x90, r.grain_tables_offset),
        (0xC0, r.grains_offset),
    ] {
        if v == 0 || v.checked_mul(SECTOR).is_none() {
            return Err(ParseError::corrupt(
                WHAT,
                at(off),
                format!("area offset {v:#x} sectors is 0 or beyond any file"),
            ));
        }
    }
    let h = VmdkSeSparseHeader {
        capacity_sectors: r.capacity,
        volatile_header_offset_sectors: r.volatile_header_offset,
        grain_dir_offset_sectors: r.grain_dir_offset,
        grain_dir_size_sectors: r.grain_dir_size,
        grain_tables_offset_sectors: r.grain_tables_offset,
        grains_offset_sectors: r.grains_offset,
    };
    let stored = r.grain_dir_size * SECTOR / 8;
    if h.gd_entries() > stored {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x88),
            format!(
                "grain directory has {stored} entries, the capacity needs {}",
                h.gd_entries()
            ),
        ));
    }
    Ok(h)
}

impl VmdkSeSparseHeader {
    /// Virtual size in bytes (capped at parse time).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    /// Grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        div_ceil(
            self.capacity_sectors,
            SESPARSE_GRAIN_SECTORS * SESPARSE_GTES_PER_GT,
        )
    }
}

/// Validates the volatile header (the sector at `volatile_header_offset`, `base` its
/// absolute offset). A journal that needs replay is refused, as QEMU does: reading
/// without replaying it would return stale data.
pub fn parse_sesparse_volatile_header(buf: &[u8], base: u64) -> Result<()> {
    let buf = bytes::slice(buf, 0, SESPARSE_HEADER_BYTES, VWHAT, base)?;
    // magic @0x00, free_gt_number @0x08, next_txn_seq_number @0x10, replay_journal @0x18
    let (magic, _free_gt, _txn, replay) =
        bytes::run((le_u64, le_u64, le_u64, le_u64), buf, VWHAT, base)?;
    if magic != SESPARSE_VOLATILE_MAGIC {
        return Err(ParseError::BadMagic {
            what: VWHAT,
            offset: base,
            expected: format!("{SESPARSE_VOLATILE_MAGIC:#018x}"),
            found: format!("{magic:#018x}"),
        });
    }
    if replay != 0 {
        return Err(ParseError::unsupported(
            VWHAT,
            base.saturating_add(0x18),
            "the journal needs replaying (image not closed cleanly)",
        ));
    }
    if buf.get(0x20..).is_some_and(|p| p.iter().any(|&x| x != 0)) {
        return Err(ParseError::unsupported(
            VWHAT,
            base.saturating_add(0x20),
            "non-zero padding",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid constant header for `capacity` sectors, laid out as ESXi does.
    pub fn sample(capacity: u64) -> Vec<u8> {
        let gts = capacity.div_ceil(SESPARSE_GRAIN_SECTORS * SESPARSE_GTES_PER_GT);
        let gd_size = (gts * 8).div_ceil(512).next_multiple_of(2048);
        let gt_size = (gts * SESPARSE_GT_SECTORS).next_multiple_of(2048);
        let fields: [u64; 26] = [
            SESPARSE_CONST_MAGIC,
            SESPARSE_VERSION,
            capacity,
            8,
            64,
            0,
            0,
            0,
            0,
            0,
            1,
            1,
            2,
            2,
            2048,
            2048,
            4096,
            gd_size,
            4096 + gd_size,
            gt_size,
            4096 + gd_size + gt_size,
            2048,
            4096 + gd_size + gt_size + 2048,
            gt_size * 64,
            4096 + gd_size + gt_size + 2048 + gt_size * 64,
            capacity,
        ];
        let mut b = vec![0u8; 512];
        for (i, v) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn volatile() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(&SESPARSE_VOLATILE_MAGIC.to_le_bytes());
        b
    }

    fn with(field: usize, v: u64) -> Vec<u8> {
        let mut b = sample(8192);
        b[field..field + 8].copy_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn parses_sample() {
        let h = parse_sesparse_header(&sample(8192), 0).unwrap();
        assert_eq!(h.capacity_bytes(), 4 << 20);
        assert_eq!(h.gd_entries(), 1);
        assert_eq!(h.grain_dir_offset_sectors, 4096);
        parse_sesparse_volatile_header(&volatile(), 512).unwrap();
    }

    #[test]
    fn rejects_each_rule() {
        let cases: [(usize, u64, u64); 10] = [
            (0x00, 0xcafebabf, 0),
            (0x08, 0x100000001, 0x08),
            (0x18, 16, 0x18),
            (0x20, 128, 0x20),
            (0x28, 1, 0x28),
            (0x40, 1, 0x30),
            (0x10, u64::MAX / 256, 0x10),
            (0x88, 1 << 30, 0x88),
            (0x80, 0, 0x80),
            (0x88, 0, 0x88),
        ];
        for (field, v, at) in cases {
            let e = parse_sesparse_header(&with(field, v), 0).unwrap_err();
            assert_eq!(e.offset(), at, "field {field:#x}: {e}");
        }
        let mut b = sample(8192);
        b[0x1ff] = 1;
        let e = parse_sesparse_header(&b, 0).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { offset: 0xD0, .. }),
            "{e}"
        );
    }

    #[test]
    fn volatile_rules() {
        let mut b = volatile();
        b[0] = 0xbe;
        assert!(matches!(
            parse_sesparse_volatile_header(&b, 512),
            Err(ParseError::BadMagic { offset: 512, .. })
        ));
        let mut b = volatile();
        b[0x18] = 1;
        assert!(matches!(
            parse_sesparse_volatile_header(&b, 512),
            Err(ParseError::Unsupported { offset: 0x218, .. })
        ));
        let mut b = volatile();
        b[0x100] = 1;
        assert!(matches!(
            parse_sesparse_volatile_header(&b, 512),
            Err(ParseError::Unsupported { offset: 0x220, .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        crate::vmdk::sweep::no_panic(&sample(8192), |b| parse_sesparse_header(b, 0));
        crate::vmdk::sweep::no_panic(&volatile(), |b| parse_sesparse_volatile_header(b, 0));
    }
}
