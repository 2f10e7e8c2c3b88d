//! Building VHD structures (the inverse of [`super::footer`], [`super::dynamic_header`]
//! and [`super::bat`]), for `vmback export --format vhd`. Same spec, same sections:
//! "Hard Disk Footer Format" (including Appendix "CHS Calculation"), "Dynamic Disk
//! Header Format", "Block Allocation Table and Data Blocks".
//!
//! Pure functions from validated values to bytes; every structure they build parses
//! back to the same values (see the tests), checksums included.

use super::bat::UNALLOCATED;
use super::dynamic_header::{self, DYNAMIC_HEADER_BYTES};
use super::footer::{self, VhdDiskType, VhdGeometry, FOOTER_BYTES, MAX_GEOMETRY_SECTORS};
use super::{checksum, SECTOR};

/// `data_offset` of a fixed disk (and the dynamic header's unused `data_offset`): all
/// ones. The spec says 0xFFFFFFFF, but Windows expects all 64 bits set.
pub const NO_DATA_OFFSET: u64 = u64::MAX;

/// Fields a writer chooses for a footer; the rest (cookie, features, version,
/// checksum) are fixed by the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdFooterFields {
    pub disk_type: VhdDiskType,
    /// Offset of the dynamic header ([`NO_DATA_OFFSET`] for a fixed disk).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub time_stamp: u32,
    pub creator_application: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: VhdGeometry,
    pub unique_id: [u8; 16],
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The 512-byte footer, checksum sealed.
pub fn build_footer(f: &VhdFooterFields) -> [u8; FOOTER_BYTES] {
    let mut b = [0u8; FOOTER_BYTES];
    b[0x00..0x08].copy_from_slice(footer::COOKIE);
    // Features: bit 1 is "reserved, must always be set".
    put_u32(&mut b, 0x08, 2);
    put_u32(&mut b, 0x0c, 0x0001_0000);
    put_u64(&mut b, 0x10, f.data_offset);
    put_u32(&mut b, 0x18, f.time_stamp);
    b[0x1c..0x20].copy_from_slice(&f.creator_application);
    put_u32(&mut b, 0x20, f.creator_version);
    b[0x24..0x28].copy_from_slice(&f.creator_host_os);
    put_u64(&mut b, 0x28, f.original_size);
    put_u64(&mut b, 0x30, f.current_size);
    put_u16(&mut b, 0x38, f.geometry.cylinders);
    b[0x3a] = f.geometry.heads;
    b[0x3b] = f.geometry.sectors_per_track;
    put_u32(
        &mut b,
        0x3c,
        match f.disk_type {
            VhdDiskType::Fixed => 2,
            VhdDiskType::Dynamic => 3,
            VhdDiskType::Differencing => 4,
        },
    );
    b[0x44..0x54].copy_from_slice(&f.unique_id);
    let sum = checksum(&b, footer::CHECKSUM_FIELD);
    put_u32(&mut b, footer::CHECKSUM_FIELD, sum);
    b
}

/// The CHS geometry of a disk of `size` bytes, by the spec's algorithm (Appendix "CHS
/// Calculation"): it may cover fewer sectors than the disk, and is capped at
/// 65535/16/255 (about 127 GiB). Only Virtual PC sizes disks by it; writers that want
/// the exact size store it in `current_size` and mark the file accordingly.
pub fn chs_geometry(size: u64) -> VhdGeometry {
    let total = (size / SECTOR).min(MAX_GEOMETRY_SECTORS);
    let (spt, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    // OK: total ≤ 65535 × 16 × 255, so cylinders ≤ 65535 and heads ≤ 16, spt ≤ 255.
    VhdGeometry {
        cylinders: (cyl_times_heads / heads) as u16,
        heads: heads as u8,
        sectors_per_track: spt as u8,
    }
}

/// The 1024-byte dynamic disk header of a dynamic (not differencing) disk whose BAT
/// of `max_table_entries` entries starts at `table_offset`, checksum sealed.
pub fn build_dynamic_header(
    table_offset: u64,
    max_table_entries: u32,
    block_size: u32,
) -> [u8; DYNAMIC_HEADER_BYTES] {
    let mut b = [0u8; DYNAMIC_HEADER_BYTES];
    b[0x00..0x08].copy_from_slice(dynamic_header::COOKIE);
    put_u64(&mut b, 0x08, NO_DATA_OFFSET);
    put_u64(&mut b, 0x10, table_offset);
    put_u32(&mut b, 0x18, 0x0001_0000);
    put_u32(&mut b, 0x1c, max_table_entries);
    put_u32(&mut b, 0x20, block_size);
    let sum = checksum(&b, dynamic_header::CHECKSUM_FIELD);
    put_u32(&mut b, dynamic_header::CHECKSUM_FIELD, sum);
    b
}

/// Bytes the BAT of `entries` entries occupies in the file (whole sectors).
pub fn bat_bytes(entries: u32) -> u64 {
    (u64::from(entries) * 4).next_multiple_of(SECTOR)
}

/// The BAT: one big-endian sector number per block ([`UNALLOCATED`] for none), padded
/// to whole sectors with unallocated entries, as the spec wants the unused tail.
pub fn build_bat(entries: &[u32]) -> Vec<u8> {
    let len = bat_bytes(entries.len().try_into().unwrap_or(u32::MAX)) as usize;
    let mut b = Vec::with_capacity(len);
    for e in entries {
        b.extend_from_slice(&e.to_be_bytes());
    }
    while b.len() < len {
        b.extend_from_slice(&UNALLOCATED.to_be_bytes());
    }
    b
}

/// The sector bitmap of a block whose sectors are all stored (all bits set).
pub fn full_bitmap(block_size: u32) -> Vec<u8> {
    // OK: block sizes are capped (MAX_VHD_BLOCK_BYTES), so the bitmap is at most 64 KiB.
    vec![0xff; dynamic_header::bitmap_bytes(block_size) as usize]
}

#[cfg(test)]
mod tests {
    use super::super::{parse_bat, parse_dynamic_header, parse_footer, VhdSizeSource};
    use super::*;

    fn fields(disk_type: VhdDiskType, size: u64) -> VhdFooterFields {
        VhdFooterFields {
            disk_type,
            data_offset: if disk_type == VhdDiskType::Fixed {
                NO_DATA_OFFSET
            } else {
                512
            },
            time_stamp: 0x3000_0000,
            creator_application: *b"qem2",
            creator_version: 0x0001_0000,
            creator_host_os: *b"Wi2k",
            original_size: size,
            current_size: size,
            geometry: chs_geometry(size),
            unique_id: [0x5a; 16],
        }
    }

    #[test]
    fn footer_round_trips() {
        for (t, size) in [
            (VhdDiskType::Fixed, 10 << 20),
            (VhdDiskType::Dynamic, (100 << 20) + 7 * 512),
        ] {
            let f = fields(t, size);
            let p = parse_footer(&build_footer(&f), 0x1000).unwrap();
            assert_eq!(p.disk_type, t);
            assert_eq!(p.data_offset, f.data_offset);
            assert_eq!(p.time_stamp, f.time_stamp);
            assert_eq!(p.creator_application, f.creator_application);
            assert_eq!(p.creator_version, f.creator_version);
            assert_eq!(p.creator_host_os, f.creator_host_os);
            assert_eq!(p.original_size, size);
            assert_eq!(p.current_size, size);
            assert_eq!(p.geometry, f.geometry);
            assert_eq!(p.unique_id, f.unique_id);
            assert!(!p.saved_state);
            assert_eq!(p.virtual_size, size);
            assert_eq!(p.size_source, VhdSizeSource::CurrentSize);
        }
    }

    #[test]
    fn geometry_follows_the_spec_table() {
        // Examples worked by hand from the spec's algorithm.
        let g = chs_geometry(10 << 20); // 20480 sectors
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (301, 4, 17));
        let g = chs_geometry(127 << 30);
        assert_eq!((g.heads, g.sectors_per_track), (16, 255));
        let g = chs_geometry(2040 << 30);
        assert_eq!(
            (g.cylinders, g.heads, g.sectors_per_track),
            (65535, 16, 255)
        );
        // Never more sectors than the disk has.
        for size in [1 << 20, 3 << 30, (40 << 30) + 512, 200 << 30] {
            let g = chs_geometry(size);
            assert!(g.sectors() * 512 <= size, "{size}: {g:?}");
        }
    }

    #[test]
    fn dynamic_header_round_trips() {
        let b = build_dynamic_header(1536, 51, 2 << 20);
        let h = parse_dynamic_header(&b, 512).unwrap();
        assert_eq!(h.table_offset, 1536);
        assert_eq!(h.max_table_entries, 51);
        assert_eq!(h.block_size, 2 << 20);
        assert_eq!(h.bitmap_bytes(), 512);
        assert!(h.parent_locators.is_empty());
        assert_eq!(h.parent_unicode_name, "");
        assert_eq!(full_bitmap(2 << 20), vec![0xff; 512]);
    }

    #[test]
    fn bat_round_trips_and_pads_with_unallocated() {
        let entries = [4u32, UNALLOCATED, 4 + 4097];
        let b = build_bat(&entries);
        assert_eq!(b.len(), 512);
        assert!(b[12..].chunks(4).all(|c| c == [0xff; 4]));
        let bat = parse_bat(&b, 1536, 3, 2 << 20, 512, 1 << 30).unwrap();
        assert_eq!(bat.bitmap_offset(0), Some(2048));
        assert_eq!(bat.data_offset(0), Some(2560));
        assert_eq!(bat.bitmap_offset(1), None);
        assert_eq!(bat.bitmap_offset(2), Some(4101 * 512));
        assert_eq!(bat_bytes(128), 512);
        assert_eq!(bat_bytes(129), 1024);
    }
}
