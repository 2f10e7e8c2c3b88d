//! The VHD dynamic disk header (spec §"Dynamic Disk Header Format"): 1024 bytes at the
//! footer's Data Offset of dynamic and differencing disks. It locates the BAT, gives the
//! block size and, for differencing disks, identifies and locates the parent.
//!
//! Invariants of a parsed [`VhdDynamicHeader`]: cookie and checksum are right, the block
//! size is a power of two in `512..=MAX_VHD_BLOCK_BYTES`, the table has at most
//! [`MAX_VHD_BAT_ENTRIES`] entries. [`VhdDynamicHeader::bat_entries_for`] adds the checks
//! that need the footer and the file size.

use nom::bytes::complete::take;
use nom::number::complete::{be_u32, be_u64};

use super::parent_locator::{VhdParentLocator, VhdPlatform};
use crate::bytes;
use crate::error::{ParseError, Result};
use crate::limits::{MAX_VHD_BAT_ENTRIES, MAX_VHD_BLOCK_BYTES};

/// Size of the dynamic header.
pub const DYNAMIC_HEADER_BYTES: usize = 1024;

const WHAT: &str = "VHD dynamic header";
/// The dynamic header cookie.
pub const COOKIE: &[u8; 8] = b"cxsparse";
/// Offset of the checksum field.
pub const CHECKSUM_FIELD: usize = 0x24;
const LOCATORS_AT: usize = 0x240;
const LOCATOR_BYTES: usize = 24;

/// The header as the spec lays it out (field names from the spec).
struct RawDynamicHeader<'a> {
    cookie: &'a [u8],              // 0x000
    data_offset: u64,              // 0x008
    table_offset: u64,             // 0x010
    header_version: u32,           // 0x018
    max_table_entries: u32,        // 0x01C
    block_size: u32,               // 0x020
    checksum: u32,                 // 0x024
    parent_unique_id: &'a [u8],    // 0x028
    parent_time_stamp: u32,        // 0x038
    reserved: u32,                 // 0x03C
    parent_unicode_name: &'a [u8], // 0x040, 512 bytes UTF-16BE
    // 0x240: eight parent locator entries of 24 bytes:
    // platform code u32, platform data space u32, platform data length u32,
    // reserved u32, platform data offset u64.
    parent_locator_entries: Vec<(u32, u32, u32, u32, u64)>,
}

/// A validated dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdDynamicHeader {
    /// Absolute offset the header was read from.
    pub offset: u64,
    /// Absolute offset of the BAT.
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    /// Bytes per block: a power of two, at least 512.
    pub block_size: u32,
    pub parent_unique_id: [u8; 16],
    /// The parent footer's time stamp when the child was made (seconds since 2000).
    pub parent_time_stamp: u32,
    /// Parent Unicode Name (UTF-16BE in the file; unpaired surrogates replaced).
    pub parent_unicode_name: String,
    /// The used locator entries, in header order.
    pub parent_locators: Vec<VhdParentLocator>,
}

/// Parses the dynamic header from `buf` (at least 1024 bytes) read at absolute `base`.
pub fn parse_dynamic_header(buf: &[u8], base: u64) -> Result<VhdDynamicHeader> {
    let buf = bytes::slice(buf, 0, DYNAMIC_HEADER_BYTES, WHAT, base)?;
    let locator = (be_u32, be_u32, be_u32, be_u32, be_u64);
    let r = bytes::run(
        (
            take(8usize),
            be_u64,
            be_u64,
            be_u32,
            be_u32,
            be_u32,
            be_u32,
            take(16usize),
            be_u32,
            be_u32,
            take(512usize),
            nom::multi::count(locator, 8),
        ),
        buf,
        WHAT,
        base,
    )?;
    let raw = RawDynamicHeader {
        cookie: r.0,
        data_offset: r.1,
        table_offset: r.2,
        header_version: r.3,
        max_table_entries: r.4,
        block_size: r.5,
        checksum: r.6,
        parent_unique_id: r.7,
        parent_time_stamp: r.8,
        reserved: r.9,
        parent_unicode_name: r.10,
        parent_locator_entries: r.11,
    };
    // Kept in the raw struct for completeness; the spec gives them no meaning.
    let _ = (raw.data_offset, raw.reserved);

    if raw.cookie != COOKIE {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: bytes::show_magic(COOKIE),
            found: bytes::show_magic(raw.cookie),
        });
    }
    let computed = super::checksum(buf, CHECKSUM_FIELD);
    ParseError::check_checksum(WHAT, base + CHECKSUM_FIELD as u64, raw.checksum, computed)?;
    if raw.header_version >> 16 != 1 {
        return Err(ParseError::unsupported(
            WHAT,
            base + 0x18,
            format!("header version {:#010x}", raw.header_version),
        ));
    }
    if !raw.block_size.is_power_of_two() || raw.block_size < 512 {
        return Err(ParseError::corrupt(
            WHAT,
            base + 0x20,
            format!(
                "block size {} is not a power of two of at least 512",
                raw.block_size
            ),
        ));
    }
    ParseError::check_limit(
        WHAT,
        base + 0x20,
        raw.block_size.into(),
        MAX_VHD_BLOCK_BYTES.into(),
        "MAX_VHD_BLOCK_BYTES",
    )?;
    ParseError::check_limit(
        WHAT,
        base + 0x1c,
        raw.max_table_entries.into(),
        MAX_VHD_BAT_ENTRIES.into(),
        "MAX_VHD_BAT_ENTRIES",
    )?;

    let name: Vec<u16> = raw
        .parent_unicode_name
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let mut parent_unique_id = [0u8; 16];
    parent_unique_id.copy_from_slice(raw.parent_unique_id);
    let parent_locators = raw
        .parent_locator_entries
        .iter()
        .enumerate()
        .filter_map(|(i, &(code, space, len, _reserved, off))| {
            Some(VhdParentLocator {
                entry_offset: base + (LOCATORS_AT + i * LOCATOR_BYTES) as u64,
                platform: VhdPlatform::from_code(code)?,
                platform_data_space: space,
                platform_data_length: len,
                platform_data_offset: off,
            })
        })
        .collect();
    Ok(VhdDynamicHeader {
        offset: base,
        table_offset: raw.table_offset,
        header_version: raw.header_version,
        max_table_entries: raw.max_table_entries,
        block_size: raw.block_size,
        parent_unique_id,
        parent_time_stamp: raw.parent_time_stamp,
        parent_unicode_name: String::from_utf16_lossy(&name),
        parent_locators,
    })
}

/// Bytes of the sector bitmap in front of every block of `block_size` bytes: one bit
/// per sector, rounded up to whole sectors (readers and writers share this rule).
pub fn bitmap_bytes(block_size: u32) -> u64 {
    (u64::from(block_size) / 512).div_ceil(8).div_ceil(512) * 512
}

impl VhdDynamicHeader {
    /// Bytes of the sector bitmap before each block: one bit per sector, rounded up to
    /// whole sectors.
    pub fn bitmap_bytes(&self) -> u64 {
        bitmap_bytes(self.block_size)
    }

    /// Number of BAT entries that address a virtual disk of `virtual_size` bytes, after
    /// checking that the table has that many and that they fit inside a file of
    /// `file_size` bytes. Entries past the virtual size are never used, so only these
    /// are read.
    pub fn bat_entries_for(&self, virtual_size: u64, file_size: u64) -> Result<u32> {
        let needed = virtual_size.div_ceil(self.block_size.into());
        if needed > u64::from(self.max_table_entries) {
            return Err(ParseError::corrupt(
                WHAT,
                self.offset + 0x1c,
                format!(
                    "{} BAT entries of {} bytes cannot hold the virtual size of {virtual_size} bytes",
                    self.max_table_entries, self.block_size
                ),
            ));
        }
        // needed <= max_table_entries <= MAX_VHD_BAT_ENTRIES: fits u32, no overflow below.
        let needed = needed as u32;
        let end = self.table_offset.checked_add(u64::from(needed) * 4);
        if end.is_none_or(|e| e > file_size) {
            return Err(ParseError::truncated(
                "VHD BAT",
                self.table_offset,
                u64::from(needed) * 4,
                file_size.saturating_sub(self.table_offset),
            ));
        }
        Ok(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn parse(b: &[u8]) -> Result<VhdDynamicHeader> {
        parse_dynamic_header(b, 512)
    }

    #[test]
    fn parses_a_valid_header() {
        let h = parse(&dyn_header(5, 2 << 20, 24)).unwrap();
        assert_eq!(h.table_offset, 1536);
        assert_eq!(h.block_size, 2 << 20);
        assert_eq!(h.bitmap_bytes(), 512);
        assert_eq!(h.parent_unicode_name, "p.vhd");
        assert_eq!(h.parent_locators.len(), 1);
        assert_eq!(h.parent_locators[0].entry_offset, 512 + 0x240);
        assert_eq!(h.parent_locators[0].platform, VhdPlatform::W2ru);
        assert_eq!(h.bat_entries_for(10 << 20, 1 << 20).unwrap(), 5);
        assert_eq!(h.bat_entries_for(1, 1 << 20).unwrap(), 1);
    }

    #[test]
    fn bitmap_size_rounds_up_to_sectors() {
        let h = parse(&dyn_header(5, 512, 0)).unwrap();
        assert_eq!(h.bitmap_bytes(), 512);
        let h = parse(&dyn_header(1, 256 << 20, 0)).unwrap();
        assert_eq!(h.bitmap_bytes(), 64 << 10);
    }

    #[test]
    fn rejects_short_buffer() {
        assert!(matches!(
            parse(&dyn_header(5, 2 << 20, 0)[..1023]),
            Err(ParseError::Truncated { offset: 512, .. })
        ));
    }

    #[test]
    fn rejects_bad_cookie() {
        let mut b = dyn_header(5, 2 << 20, 0);
        b[7] = b'X';
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse(&b),
            Err(ParseError::BadMagic { offset: 512, .. })
        ));
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut b = dyn_header(5, 2 << 20, 0);
        b[0x300] = 1;
        assert!(matches!(
            parse(&b),
            Err(ParseError::Checksum { offset: 0x224, .. })
        ));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut b = dyn_header(5, 2 << 20, 0);
        put_u32(&mut b, 0x18, 0x0002_0000);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse(&b),
            Err(ParseError::Unsupported { offset: 0x218, .. })
        ));
    }

    #[test]
    fn rejects_block_size_not_power_of_two_or_too_small() {
        for bad in [0u32, 256, 3 << 20] {
            let mut b = dyn_header(5, 2 << 20, 0);
            put_u32(&mut b, 0x20, bad);
            seal(&mut b, CHECKSUM_FIELD);
            assert!(
                matches!(parse(&b), Err(ParseError::Corrupt { offset: 0x220, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_block_size_over_cap() {
        let mut b = dyn_header(5, 2 << 20, 0);
        put_u32(&mut b, 0x20, 1 << 31);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse(&b),
            Err(ParseError::LimitExceeded { offset: 0x220, .. })
        ));
    }

    #[test]
    fn rejects_table_over_cap_like_afl5() {
        // qemu-samples/afl5.img: Max Table Entries 1073741825, block size 512.
        let mut b = dyn_header(0x4000_0001, 512, 0);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse(&b),
            Err(ParseError::LimitExceeded {
                offset: 0x21c,
                name: "MAX_VHD_BAT_ENTRIES",
                ..
            })
        ));
    }

    #[test]
    fn rejects_table_too_small_for_virtual_size() {
        let h = parse(&dyn_header(4, 2 << 20, 0)).unwrap();
        assert!(matches!(
            h.bat_entries_for((8 << 20) + 512, 1 << 30),
            Err(ParseError::Corrupt { offset: 0x21c, .. })
        ));
    }

    #[test]
    fn rejects_table_outside_file() {
        let h = parse(&dyn_header(5, 2 << 20, 0)).unwrap();
        assert!(matches!(
            h.bat_entries_for(10 << 20, 1536 + 19),
            Err(ParseError::Truncated { offset: 1536, .. })
        ));
        let mut b = dyn_header(5, 2 << 20, 0);
        put_u64(&mut b, 0x10, u64::MAX - 2);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(parse(&b)
            .unwrap()
            .bat_entries_for(10 << 20, u64::MAX)
            .is_err());
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flip() {
        sweep(&dyn_header(5, 2 << 20, 24), |b| {
            if let Ok(h) = parse(b) {
                let _ = h.bat_entries_for(10 << 20, 1 << 20);
                let _ = h.bitmap_bytes();
                for l in &h.parent_locators {
                    let _ = l.check(1 << 20);
                }
            }
        });
    }
}
