//! The ext2/3/4 superblock (1024 bytes at byte 1024 of the volume): the block counts
//! that say how full the filesystem is. Layout: the kernel's
//! Documentation/filesystems/ext4/super.rst (`struct ext4_super_block`).
//!
//! Only the fields needed for space accounting are read; ext4-view parses the rest
//! for browsing but does not expose these counts.
//!
//! Invariants of [`ExtSuperblock`]: block size is 1 KiB..=64 KiB, the block count is
//! non-zero, free and reserved counts do not exceed it, `blocks * block_size` does not
//! overflow, and the checksum matched when the filesystem has `metadata_csum`.

use nom::bytes::complete::take;
use nom::number::complete::{le_u16, le_u32};
use nom::Parser;

use crate::bytes::{need, run, slice};
use crate::error::{ParseError, Result};

const WHAT: &str = "ext superblock";

/// Where the superblock starts inside the volume, and its size.
pub const EXT_SUPERBLOCK_OFFSET: u64 = 1024;
pub const EXT_SUPERBLOCK_BYTES: usize = 1024;

const EXT_MAGIC: u16 = 0xef53;
/// `INCOMPAT_RECOVER`: the journal holds transactions not yet written in place.
const INCOMPAT_RECOVER: u32 = 0x4;
/// `INCOMPAT_64BIT`: the `_hi` halves of the block counts are valid.
const INCOMPAT_64BIT: u32 = 0x80;
/// `RO_COMPAT_METADATA_CSUM`: the superblock carries a CRC32C at 0x3fc.
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Largest block size exponent (`1024 << 6` = 64 KiB, the kernel's maximum).
const MAX_LOG_BLOCK_SIZE: u32 = 6;

/// Validated space accounting of an ext2/3/4 superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtSuperblock {
    pub block_size: u32,
    /// `s_blocks_count`: every block of the filesystem, metadata included.
    pub blocks: u64,
    /// `s_free_blocks_count` (reserved blocks included, as `dumpe2fs` prints it).
    pub free_blocks: u64,
    /// `s_r_blocks_count`: free blocks only root may allocate.
    pub reserved_blocks: u64,
    /// The journal still has to be replayed: the counts are as of the last checkpoint.
    pub needs_recovery: bool,
}

/// The fields we use, with the spec's names (offsets in the superblock).
struct RawSuperblock {
    s_blocks_count_lo: u32,      // 0x04
    s_r_blocks_count_lo: u32,    // 0x08
    s_free_blocks_count_lo: u32, // 0x0c
    s_log_block_size: u32,       // 0x18
    s_magic: u16,                // 0x38
    s_feature_incompat: u32,     // 0x60
    s_feature_ro_compat: u32,    // 0x64
}

fn raw(b: &[u8]) -> Result<RawSuperblock> {
    run(
        (
            take(4usize),
            le_u32,
            le_u32,
            le_u32,
            take(0x18usize - 0x10),
            le_u32,
            take(0x38usize - 0x1c),
            le_u16,
            take(0x60usize - 0x3a),
            le_u32,
            le_u32,
        )
            .map(
                |(_, blocks, r, free, _, log, _, magic, _, incompat, ro)| RawSuperblock {
                    s_blocks_count_lo: blocks,
                    s_r_blocks_count_lo: r,
                    s_free_blocks_count_lo: free,
                    s_log_block_size: log,
                    s_magic: magic,
                    s_feature_incompat: incompat,
                    s_feature_ro_compat: ro,
                },
            ),
        b,
        WHAT,
        EXT_SUPERBLOCK_OFFSET,
    )
}

fn le32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = slice(b, at, 4, WHAT, EXT_SUPERBLOCK_OFFSET)?;
    run(le_u32, s, WHAT, EXT_SUPERBLOCK_OFFSET + at as u64)
}

/// Parses the 1024-byte superblock `b` (read from volume offset
/// [`EXT_SUPERBLOCK_OFFSET`]; errors carry volume offsets).
pub fn parse_ext_superblock(b: &[u8]) -> Result<ExtSuperblock> {
    need(b, EXT_SUPERBLOCK_BYTES, WHAT, EXT_SUPERBLOCK_OFFSET)?;
    let b = &b[..EXT_SUPERBLOCK_BYTES];
    let at = |field: u64| EXT_SUPERBLOCK_OFFSET + field;
    let r = raw(b)?;
    if r.s_magic != EXT_MAGIC {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: at(0x38),
            expected: format!("{EXT_MAGIC:#06x}"),
            found: format!("{:#06x}", r.s_magic),
        });
    }
    if r.s_feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        // ext4 stores the raw CRC32C (seed !0, no final inversion), which is the
        // complement of the standard CRC32C.
        let stored = le32_at(b, 0x3fc)?;
        ParseError::check_checksum(WHAT, at(0x3fc), stored, !crc32c::crc32c(&b[..0x3fc]))?;
    }
    if r.s_log_block_size > MAX_LOG_BLOCK_SIZE {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x18),
            format!(
                "block size exponent {} is over {MAX_LOG_BLOCK_SIZE} (64 KiB blocks)",
                r.s_log_block_size
            ),
        ));
    }
    let block_size = 1024u32 << r.s_log_block_size;
    let is64 = r.s_feature_incompat & INCOMPAT_64BIT != 0;
    let hilo = |lo: u32, hi_at: usize| -> Result<u64> {
        let hi = if is64 { le32_at(b, hi_at)? } else { 0 };
        Ok(u64::from(hi) << 32 | u64::from(lo))
    };
    let blocks = hilo(r.s_blocks_count_lo, 0x150)?;
    let reserved_blocks = hilo(r.s_r_blocks_count_lo, 0x154)?;
    let free_blocks = hilo(r.s_free_blocks_count_lo, 0x158)?;
    if blocks == 0 || blocks.checked_mul(u64::from(block_size)).is_none() {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x04),
            format!("block count {blocks} of {block_size}-byte blocks is impossible"),
        ));
    }
    for (count, field, name) in [
        (free_blocks, 0x0c, "free"),
        (reserved_blocks, 0x08, "reserved"),
    ] {
        if count > blocks {
            return Err(ParseError::corrupt(
                WHAT,
                at(field),
                format!("{name} block count {count} exceeds the block count {blocks}"),
            ));
        }
    }
    Ok(ExtSuperblock {
        block_size,
        blocks,
        free_blocks,
        reserved_blocks,
        needs_recovery: r.s_feature_incompat & INCOMPAT_RECOVER != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A 64bit, metadata_csum superblock: 4 KiB blocks, 2^32 + 10 blocks, 7 free.
    fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        put32(&mut b, 0x04, 10);
        put32(&mut b, 0x08, 3);
        put32(&mut b, 0x0c, 7);
        put32(&mut b, 0x18, 2);
        b[0x38..0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        put32(&mut b, 0x60, INCOMPAT_64BIT);
        put32(&mut b, 0x64, RO_COMPAT_METADATA_CSUM);
        put32(&mut b, 0x150, 1);
        reseal(&mut b);
        b
    }

    fn reseal(b: &mut [u8]) {
        let c = !crc32c::crc32c(&b[..0x3fc]);
        put32(b, 0x3fc, c);
    }

    #[test]
    fn parses_counts_with_high_halves() {
        let s = parse_ext_superblock(&sample()).unwrap();
        assert_eq!(s.block_size, 4096);
        assert_eq!(s.blocks, (1 << 32) + 10);
        assert_eq!((s.free_blocks, s.reserved_blocks), (7, 3));
        assert!(!s.needs_recovery);
        // Without INCOMPAT_64BIT the high halves are ignored.
        let mut b = sample();
        put32(&mut b, 0x60, INCOMPAT_RECOVER);
        reseal(&mut b);
        let s = parse_ext_superblock(&b).unwrap();
        assert_eq!(s.blocks, 10);
        assert!(s.needs_recovery);
    }

    fn reject(mutate: impl Fn(&mut Vec<u8>), off: u64) {
        let mut b = sample();
        mutate(&mut b);
        if b.len() >= 1024 && off != EXT_SUPERBLOCK_OFFSET + 0x3fc {
            reseal(&mut b);
        }
        let e = parse_ext_superblock(&b).unwrap_err();
        assert_eq!(e.offset(), off, "{e}");
    }

    #[test]
    fn each_rule_rejects() {
        let at = |f| EXT_SUPERBLOCK_OFFSET + f;
        reject(|b| b[0x38] = 0x54, at(0x38));
        reject(|b| b[0x10] ^= 1, at(0x3fc)); // checksum not resealed
        reject(|b| put32(b, 0x18, 7), at(0x18));
        reject(
            |b| {
                put32(b, 0x04, 0);
                put32(b, 0x150, 0);
            },
            at(0x04),
        );
        reject(|b| put32(b, 0x150, u32::MAX), at(0x04)); // overflows with 4 KiB blocks
        reject(
            |b| {
                put32(b, 0x150, 0);
                put32(b, 0x0c, 11);
            },
            at(0x0c),
        );
        reject(
            |b| {
                put32(b, 0x150, 0);
                put32(b, 0x08, 11);
            },
            at(0x08),
        );
        reject(|b| b.truncate(1023), EXT_SUPERBLOCK_OFFSET);
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        let s = sample();
        for n in 0..s.len() {
            let _ = parse_ext_superblock(&s[..n]);
        }
        for i in 0..s.len() * 8 {
            let mut b = s.clone();
            b[i / 8] ^= 1 << (i % 8);
            let _ = parse_ext_superblock(&b);
            reseal(&mut b);
            let _ = parse_ext_superblock(&b);
        }
    }
}
