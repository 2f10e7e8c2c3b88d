//! VHD (Connectix / Microsoft Virtual PC, Hyper-V "vpc") on-disk structures.
//!
//! Spec: Microsoft "Virtual Hard Disk Image Format Specification" v1.0 (2006):
//! hard disk footer (§"Hard Disk Footer Format"), dynamic disk header (§"Dynamic Disk
//! Header Format"), parent locators, block allocation table and sector bitmaps
//! (§"Block Allocation Table and Data Blocks"). Everything is big-endian.
//!
//! Supported: fixed (2), dynamic (3) and differencing (4) disks, the 511-byte footer of
//! old Virtual PC fixed disks, W2ru / W2ku / MacX parent locators. Not supported: the
//! deprecated disk types 0/1/5/6 (refused as `Unsupported`).
//!
//! One file per on-disk structure: [`footer`], [`dynamic_header`], [`parent_locator`],
//! [`bat`], [`bitmap`]. Each parser is a pure function of the bytes it is given plus
//! the absolute offset they came from (for errors), and, where a field points elsewhere
//! in the file, the file size (so a pointer is checked before anyone follows it).
//! [`write`] builds the same structures for export.

pub mod bat;
pub mod bitmap;
pub mod dynamic_header;
pub mod footer;
pub mod parent_locator;
pub mod write;

pub use bat::{parse_bat, VhdBat};
pub use bitmap::bitmap_run;
pub use dynamic_header::{parse_dynamic_header, VhdDynamicHeader, DYNAMIC_HEADER_BYTES};
pub use footer::{
    parse_footer, VhdDiskType, VhdFooter, VhdGeometry, VhdSizeSource, FOOTER_BYTES,
    OLD_FOOTER_BYTES,
};
pub use parent_locator::{decode_locator, VhdParentLocator, VhdPlatform};

/// The VHD checksum: the one's complement of the sum of all bytes of the structure,
/// with the 4-byte checksum field (at `field`) counted as zero.
pub fn checksum(buf: &[u8], field: usize) -> u32 {
    let sum = buf.iter().enumerate().fold(0u32, |acc, (i, &b)| {
        if i >= field && i < field.saturating_add(4) {
            acc
        } else {
            acc.wrapping_add(u32::from(b))
        }
    });
    !sum
}

/// Bytes per sector: VHD counts everything (BAT entries, geometry, bitmaps) in 512-byte
/// sectors whatever the guest's sector size.
pub const SECTOR: u64 = 512;

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for synthetic, valid structures that the tests then mutate.
    use super::*;

    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    /// Re-seals the checksum at `field`.
    pub fn seal(b: &mut [u8], field: usize) {
        let c = checksum(b, field);
        put_u32(b, field, c);
    }

    /// A valid footer for a dynamic disk of `size` bytes made by Hyper-V ("win ").
    pub fn footer(disk_type: u32, size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(b"conectix");
        put_u32(&mut b, 0x08, 2);
        put_u32(&mut b, 0x0c, 0x0001_0000);
        put_u64(&mut b, 0x10, if disk_type == 2 { u64::MAX } else { 512 });
        b[0x1c..0x20].copy_from_slice(b"win ");
        put_u32(&mut b, 0x20, 0x000a_0000);
        b[0x24..0x28].copy_from_slice(b"Wi2k");
        put_u64(&mut b, 0x28, size);
        put_u64(&mut b, 0x30, size);
        b[0x38..0x3a].copy_from_slice(&20u16.to_be_bytes());
        b[0x3a] = 16;
        b[0x3b] = 63;
        put_u32(&mut b, 0x3c, disk_type);
        b[0x44..0x54].copy_from_slice(&[0x11; 16]);
        seal(&mut b, 0x40);
        b
    }

    /// A valid dynamic header: BAT at 1536, `entries` entries of `block` bytes, with a
    /// W2ru locator of `loc_len` bytes at 0x1000 when `loc_len > 0`.
    pub fn dyn_header(entries: u32, block: u32, loc_len: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[0..8].copy_from_slice(b"cxsparse");
        put_u64(&mut b, 0x08, u64::MAX);
        put_u64(&mut b, 0x10, 1536);
        put_u32(&mut b, 0x18, 0x0001_0000);
        put_u32(&mut b, 0x1c, entries);
        put_u32(&mut b, 0x20, block);
        b[0x28..0x38].copy_from_slice(&[0x22; 16]);
        for (i, c) in "p.vhd".encode_utf16().enumerate() {
            b[0x40 + 2 * i..0x42 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
        if loc_len > 0 {
            b[0x240..0x244].copy_from_slice(b"W2ru");
            put_u32(&mut b, 0x244, 512);
            put_u32(&mut b, 0x248, loc_len);
            put_u64(&mut b, 0x250, 0x1000);
        }
        seal(&mut b, 0x24);
        b
    }

    /// Feeds every truncation and every single-bit flip of `buf` to `f` (which must not
    /// panic; its result is ignored).
    pub fn sweep(buf: &[u8], mut f: impl FnMut(&[u8])) {
        for n in 0..buf.len() {
            f(&buf[..n]);
        }
        let mut m = buf.to_vec();
        for i in 0..m.len() {
            for bit in 0..8 {
                m[i] ^= 1 << bit;
                f(&m);
                m[i] ^= 1 << bit;
            }
        }
    }
}
