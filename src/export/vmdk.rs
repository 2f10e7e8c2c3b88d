//! VMDK export as one monolithicSparse file (VMware Virtual Disk Format 5.0, "Hosted
//! Sparse Extents"), and the pieces both VMDK subformats share: grain geometry, the
//! size limit and the embedded descriptor.
//!
//! Layout, as VMware Workstation and QEMU write it: header, descriptor (20 sectors
//! from sector 1), redundant grain directory and its grain tables, grain directory
//! and its grain tables (all tables preallocated, so the directories never change),
//! then 64 KiB grains from the first grain boundary after the tables, allocated in
//! ascending disk order. A grain that is all zero is not allocated (entry 0: reads
//! as zeros without a parent). A grain table is written, to both copies, once the
//! walk has passed the 32 MiB it covers; a table with no grain stays a hole.

use vmback_parsers::vmdk::sparse_header::{
    VmdkSparseHeader, FLAG_NEWLINE_TEST, FLAG_REDUNDANT_GT, MAX_GTES_PER_GT,
};
use vmback_parsers::vmdk::write::{
    build_descriptor, build_sparse_header, build_u32_table, VmdkDescriptorFields,
};
use vmback_parsers::vmdk::SECTOR;

use super::container::{sector_size, too_large, Written};
use super::ids::random_bytes;
use super::output::Output;
use super::pipeline::{walk, Piece};
use crate::error::{Error, Result};
use crate::image::DiskImage;

/// Sectors per grain: 64 KiB, VMware's and QEMU's default.
pub(super) const GRAIN_SECTORS: u64 = 128;
pub(super) const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per grain table (fixed by the format).
pub(super) const GTES: u64 = MAX_GTES_PER_GT as u64;
/// Disk bytes one grain table maps: 32 MiB.
pub(super) const GT_SPAN: u64 = GRAIN * GTES;
/// Sectors of one grain table (512 × 4 bytes).
pub(super) const GT_SECTORS: u64 = GTES * 4 / SECTOR;
/// Hosted sparse extents address grains by 32-bit sector numbers and VMware caps
/// their capacity at 2 TiB.
pub(super) const MAX_CAPACITY: u64 = 2 << 40;
/// Sectors reserved for the embedded descriptor (QEMU's choice; ours is far smaller).
const DESCRIPTOR_SECTORS: u64 = 20;

/// The disk's size in whole sectors, refused beyond what a hosted sparse extent holds.
pub(super) fn capacity_sectors(disk: &(dyn DiskImage + '_), out: &Output) -> Result<u64> {
    let size = sector_size(disk.size());
    if size > MAX_CAPACITY {
        return Err(too_large(
            out,
            "a VMDK sparse extent",
            size,
            MAX_CAPACITY,
            " (use --format vhdx or qcow2)",
        ));
    }
    Ok(size / SECTOR)
}

/// The embedded descriptor for a single-extent disk of `capacity` sectors, as
/// `create_type`, naming the output file as its extent (readers use the file itself).
pub(super) fn descriptor(out: &Output, create_type: &str, capacity: u64) -> String {
    // Geometry as VMware reports it for SCSI disks: 255 heads, 63 sectors.
    let cylinders = (capacity / (255 * 63)).clamp(1, 65535);
    let file_name = out
        .final_path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    build_descriptor(&VmdkDescriptorFields {
        cid: u32::from_le_bytes(random_bytes()),
        create_type: create_type.into(),
        capacity_sectors: capacity,
        file_name,
        ddb: vec![
            ("virtualHWVersion".into(), "4".into()),
            ("geometry.cylinders".into(), cylinders.to_string()),
            ("geometry.heads".into(), "255".into()),
            ("geometry.sectors".into(), "63".into()),
            ("adapterType".into(), "lsilogic".into()),
        ],
    })
}

/// A sector number as a 32-bit grain table / directory entry.
pub(super) fn entry(out: &Output, sector: u64) -> Result<u32> {
    u32::try_from(sector).map_err(|_| Error::Unsupported {
        path: out.final_path().to_path_buf(),
        feature: "VMDK data beyond 2 TiB into the file (grain tables hold 32-bit sector numbers)"
            .into(),
    })
}

/// The grain table being filled.
struct OpenGt {
    index: u64,
    entries: Vec<u32>,
}

/// Writes `disk` as a monolithicSparse VMDK.
pub(super) fn write(disk: &(dyn DiskImage + '_), out: &Output) -> Result<Written> {
    let capacity = capacity_sectors(disk, out)?;
    let gd_entries = capacity.div_ceil(GRAIN_SECTORS * GTES);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let text = descriptor(out, "monolithicSparse", capacity);
    let desc_sectors = (text.len() as u64).div_ceil(SECTOR).max(DESCRIPTOR_SECTORS);
    let rgd = 1 + desc_sectors;
    let rgts = rgd + gd_sectors;
    let gd = rgts + gd_entries * GT_SECTORS;
    let gts = gd + gd_sectors;
    let overhead = (gts + gd_entries * GT_SECTORS).next_multiple_of(GRAIN_SECTORS);

    let mut gt: Option<OpenGt> = None;
    // Next free grain, in sectors.
    let mut next = overhead;
    let flush = |out: &Output, t: &OpenGt| -> Result<()> {
        let table = build_u32_table(&t.entries);
        out.write_at(&table, (gts + t.index * GT_SECTORS) * SECTOR)?;
        out.write_at(&table, (rgts + t.index * GT_SECTORS) * SECTOR)
    };
    let walked = walk(
        disk,
        GRAIN,
        out,
        &|_| Ok(()),
        &mut |piece: &Piece, (), w| {
            for r in &piece.runs {
                // A piece never crosses a grain table boundary (32 MiB is a multiple of
                // the piece grid), so neither does a run.
                let index = r.start / GT_SPAN;
                if gt.as_ref().is_none_or(|t| t.index != index) {
                    if let Some(done) = gt.take() {
                        flush(out, &done)?;
                    }
                    gt = Some(OpenGt {
                        index,
                        entries: vec![0; GTES as usize],
                    });
                }
                let first = r.start / GRAIN;
                let grains = (r.end - r.start).div_ceil(GRAIN);
                entry(out, next + grains * GRAIN_SECTORS)?;
                if let Some(t) = gt.as_mut() {
                    for g in 0..grains {
                        t.entries[((first + g) % GTES) as usize] =
                            (next + g * GRAIN_SECTORS) as u32;
                    }
                }
                w.push((r.clone(), next * SECTOR));
                next += grains * GRAIN_SECTORS;
            }
            Ok(())
        },
    )?;
    if let Some(done) = gt.take() {
        flush(out, &done)?;
    }
    // The last grain may be partial: the file still holds it whole.
    out.set_len(next * SECTOR)?;

    let dir = |tables: u64| -> Vec<u32> {
        (0..gd_entries)
            .map(|i| (tables + i * GT_SECTORS) as u32)
            .collect()
    };
    entry(out, gts + gd_entries * GT_SECTORS)?;
    out.write_at(&build_u32_table(&dir(gts)), gd * SECTOR)?;
    out.write_at(&build_u32_table(&dir(rgts)), rgd * SECTOR)?;
    out.write_at(text.as_bytes(), SECTOR)?;
    let header = VmdkSparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT,
        capacity_sectors: capacity,
        grain_sectors: GRAIN_SECTORS,
        descriptor_offset_sectors: 1,
        descriptor_size_sectors: desc_sectors,
        gtes_per_gt: MAX_GTES_PER_GT,
        rgd_offset_sectors: rgd,
        gd_offset_sectors: gd,
        overhead_sectors: overhead,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    out.write_at(&build_sparse_header(&header), 0)?;
    Ok(Written {
        virtual_size: capacity * SECTOR,
        data_bytes: walked.data_bytes,
    })
}
