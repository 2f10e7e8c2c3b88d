//! VHD export (Microsoft VHD specification v1.0), dynamic and fixed.
//!
//! Size: `current_size` and `original_size` hold the exact virtual size (rounded up
//! to a sector, or with `--align` to a MiB, which cloud imports of fixed VHDs demand).
//! The CHS geometry is the spec's best effort and may cover less than that; the
//! creator application is "qem2", the tag QEMU writes for exactly this case
//! (`force_size=on`) and that every reader we know (QEMU since 2.6, Hyper-V, libvhdi)
//! takes to mean "size by `current_size`". An unknown tag would be sized by its
//! geometry in older QEMU releases, which would cut the end of the disk off.
//!
//! Dynamic layout: footer copy, dynamic header, BAT at 1536, then the blocks (2 MiB,
//! QEMU's and Virtual PC's default, each behind a sector bitmap with every bit set)
//! allocated in ascending disk order as data is met, then the footer. Only non-zero
//! 4 KiB granules are written: the rest of an allocated block stays a hole of the
//! file, which reads as zeros. Fixed layout: the disk, sparse, then the footer.

use vmback_parsers::limits::MAX_VHD_VIRTUAL_SIZE;
use vmback_parsers::vhd::bat::UNALLOCATED;
use vmback_parsers::vhd::dynamic_header::bitmap_bytes;
use vmback_parsers::vhd::write::{
    bat_bytes, build_bat, build_dynamic_header, build_footer, chs_geometry, full_bitmap,
    VhdFooterFields, NO_DATA_OFFSET,
};
use vmback_parsers::vhd::{VhdDiskType, DYNAMIC_HEADER_BYTES, FOOTER_BYTES};

use super::container::{sector_size, too_large, Written};
use super::ids::{random_bytes, unix_seconds};
use super::output::Output;
use super::pipeline::{walk, Piece};
use crate::error::{Error, Result};
use crate::image::DiskImage;

/// Bytes per block of a dynamic disk.
const BLOCK: u64 = 2 << 20;
/// Zero detection granule inside blocks (and for the fixed layout).
const GRANULE: u64 = 4096;
/// VHD time stamps count from 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: u64 = 946_684_800;
/// `--align`: fixed VHDs of whole MiB.
const ALIGN: u64 = 1 << 20;

/// Writes `disk` as a dynamic or fixed VHD.
pub(super) fn write(
    disk: &(dyn DiskImage + '_),
    out: &Output,
    fixed: bool,
    align: bool,
) -> Result<Written> {
    let mut size = sector_size(disk.size());
    if align {
        size = size.next_multiple_of(ALIGN);
    }
    if size > MAX_VHD_VIRTUAL_SIZE {
        return Err(too_large(
            out,
            "VHD",
            size,
            MAX_VHD_VIRTUAL_SIZE,
            " (use --format vhdx)",
        ));
    }
    let footer = build_footer(&VhdFooterFields {
        disk_type: if fixed {
            VhdDiskType::Fixed
        } else {
            VhdDiskType::Dynamic
        },
        data_offset: if fixed {
            NO_DATA_OFFSET
        } else {
            FOOTER_BYTES as u64
        },
        time_stamp: u32::try_from(unix_seconds().saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX),
        creator_application: *b"qem2",
        creator_version: creator_version(),
        creator_host_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: chs_geometry(size),
        unique_id: random_bytes(),
    });
    let data_bytes = if fixed {
        write_fixed(disk, out, size, &footer)?
    } else {
        write_dynamic(disk, out, size, &footer)?
    };
    Ok(Written {
        virtual_size: size,
        data_bytes,
    })
}

/// vmback's version as VHD's "major.minor" creator version.
fn creator_version() -> u32 {
    let part = |s: &str| s.parse::<u16>().unwrap_or(0);
    let major = part(env!("CARGO_PKG_VERSION_MAJOR"));
    let minor = part(env!("CARGO_PKG_VERSION_MINOR"));
    (u32::from(major) << 16) | u32::from(minor)
}

fn write_fixed(disk: &(dyn DiskImage + '_), out: &Output, size: u64, footer: &[u8]) -> Result<u64> {
    out.set_len(size + FOOTER_BYTES as u64)?;
    let walked = walk(
        disk,
        GRANULE,
        out,
        &|_| Ok(()),
        &mut |piece: &Piece, (), w| {
            w.extend(piece.runs.iter().map(|r| (r.clone(), r.start)));
            Ok(())
        },
    )?;
    out.write_at(footer, size)?;
    Ok(walked.data_bytes)
}

fn write_dynamic(
    disk: &(dyn DiskImage + '_),
    out: &Output,
    size: u64,
    footer: &[u8],
) -> Result<u64> {
    // OK: size ≤ MAX_VHD_VIRTUAL_SIZE, so fewer than 2^21 entries.
    let entries = size.div_ceil(BLOCK) as u32;
    let block = BLOCK as u32;
    let bitmap = full_bitmap(block);
    let bitmap_len = bitmap_bytes(block);
    let table_offset = (FOOTER_BYTES + DYNAMIC_HEADER_BYTES) as u64;
    let mut bat = vec![UNALLOCATED; entries as usize];
    // Where the next block's bitmap goes.
    let mut next = table_offset + bat_bytes(entries);
    let walked = walk(
        disk,
        GRANULE,
        out,
        &|_| Ok(()),
        &mut |piece: &Piece, (), w| {
            for (i, part) in piece.runs_on_grid(BLOCK) {
                // OK: i < entries (runs lie inside the disk).
                let slot = &mut bat[i as usize];
                if *slot == UNALLOCATED {
                    *slot = u32::try_from(next / 512).map_err(|_| Error::Unsupported {
                        path: out.final_path().to_path_buf(),
                        feature: "a VHD block beyond sector 2^32".into(),
                    })?;
                    out.write_at(&bitmap, next)?;
                    next += bitmap_len + BLOCK;
                }
                let data = u64::from(*slot) * 512 + bitmap_len + (part.start - i * BLOCK);
                w.push((part, data));
            }
            Ok(())
        },
    )?;
    // The footer after the last block also makes the file cover that whole block.
    out.write_at(footer, next)?;
    out.write_at(footer, 0)?;
    out.write_at(
        &build_dynamic_header(table_offset, entries, block),
        FOOTER_BYTES as u64,
    )?;
    out.write_at(&build_bat(&bat), table_offset)?;
    Ok(walked.data_bytes)
}
