//! VMDK export as a streamOptimized file (VMware Virtual Disk Format 5.0,
//! "Stream-Optimized Compressed Sparse Extents"): what OVF/OVA packages carry and
//! what vSphere imports.
//!
//! The file is written front to back, as VMware's own stream writers do: header
//! (grain directory "at the end": `gdOffset` = -1), descriptor, then from 64 KiB
//! every non-zero grain as a grain marker (its first sector and compressed length)
//! followed by its zlib stream, padded to a sector; after the grains of each 32 MiB
//! that has any, a grain table marker and the grain table (entries point at grain
//! markers); at the end a grain directory marker and the directory (0 for a table
//! never written), a footer marker, the footer (the header again, with the real
//! `gdOffset`) and the end-of-stream marker.
//!
//! Grains are compressed in parallel on the rayon pool (each piece of the walk on
//! one worker, one zlib stream per 64 KiB grain); the writer only appends.

use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, Status};
use vmback_parsers::vmdk::marker::{MARKER_GD, MARKER_GT};
use vmback_parsers::vmdk::sparse_header::{
    VmdkSparseHeader, COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
    GD_AT_END, MAX_GTES_PER_GT,
};
use vmback_parsers::vmdk::write::{
    build_grain_marker, build_metadata_marker, build_sparse_header, build_stream_footer,
    build_u32_table,
};
use vmback_parsers::vmdk::SECTOR;

use super::container::Written;
use super::output::Output;
use super::pipeline::{walk, Piece};
use super::vmdk::{capacity_sectors, descriptor, entry, GRAIN, GRAIN_SECTORS, GTES, GT_SPAN};
use crate::error::{Error, Result};
use crate::image::DiskImage;

/// zlib level: the default of zlib and of VMware's writers (QEMU uses it too).
const LEVEL: u32 = 6;
/// Where the grain stream starts: after header and descriptor, at 64 KiB.
const STREAM_START_SECTORS: u64 = 128;

/// One piece's grains, compressed and framed, ready to append.
struct Framed {
    /// Markers + zlib streams, each padded to a sector, back to back.
    bytes: Vec<u8>,
    /// For each grain: its index on the disk and its frame's offset in `bytes`.
    grains: Vec<(u64, u64)>,
}

/// Compresses and frames every non-zero grain of `piece` (`out` names the output in
/// errors).
fn frame(piece: &Piece, out: &Path) -> Result<Framed> {
    let mut z = Compress::new(Compression::new(LEVEL), true);
    let mut bytes = Vec::new();
    let mut grains = Vec::new();
    let mut padded = Vec::new();
    for r in &piece.runs {
        let mut at = r.start;
        while at < r.end {
            let end = r.end.min(at + GRAIN);
            let mut data = piece.bytes(&(at..end));
            if data.len() < GRAIN as usize {
                // The last grain of a disk that is not a whole number of grains:
                // compress a whole grain, as readers expect one back.
                padded.clear();
                padded.extend_from_slice(data);
                padded.resize(GRAIN as usize, 0);
                data = &padded;
            }
            let start = bytes.len();
            bytes.extend_from_slice(&[0u8; 12]);
            z.reset();
            // Room for incompressible data: deflate adds a few bytes per 16 KiB.
            bytes.reserve(data.len() + data.len() / 64 + 64);
            let status = z.compress_vec(data, &mut bytes, FlushCompress::Finish);
            if !matches!(status, Ok(Status::StreamEnd)) {
                return Err(Error::io(
                    out,
                    format!("compress the grain at disk offset {at:#x}"),
                    std::io::Error::other(format!("zlib did not finish: {status:?}")),
                ));
            }
            let len = (bytes.len() - start - 12) as u32;
            bytes[start..start + 12].copy_from_slice(&build_grain_marker(at / SECTOR, len));
            bytes.resize(bytes.len().next_multiple_of(SECTOR as usize), 0);
            grains.push((at / GRAIN, start as u64));
            at = end;
        }
    }
    Ok(Framed { bytes, grains })
}

/// The grain table being filled.
struct OpenGt {
    index: u64,
    entries: Vec<u32>,
}

/// Writes `disk` as a streamOptimized VMDK.
pub(super) fn write(disk: &(dyn DiskImage + '_), out: &Output) -> Result<Written> {
    let capacity = capacity_sectors(disk, out)?;
    let gd_entries = capacity.div_ceil(GRAIN_SECTORS * GTES);
    let text = descriptor(out, "streamOptimized", capacity);
    let desc_sectors = (text.len() as u64).div_ceil(SECTOR);
    let mut header = VmdkSparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity_sectors: capacity,
        grain_sectors: GRAIN_SECTORS,
        descriptor_offset_sectors: 1,
        descriptor_size_sectors: desc_sectors,
        gtes_per_gt: MAX_GTES_PER_GT,
        rgd_offset_sectors: 0,
        gd_offset_sectors: GD_AT_END,
        overhead_sectors: STREAM_START_SECTORS.max(1 + desc_sectors),
        unclean_shutdown: false,
        compress_algorithm: COMPRESSION_DEFLATE,
    };
    out.write_at(&build_sparse_header(&header), 0)?;
    out.write_at(text.as_bytes(), SECTOR)?;

    // OK: capacity ≤ 2 TiB, so at most 65536 entries.
    let mut gd = vec![0u32; gd_entries as usize];
    let mut gt: Option<OpenGt> = None;
    // Next free sector of the stream.
    let mut next = header.overhead_sectors;
    let flush = |out: &Output, next: &mut u64, gd: &mut [u32], t: &OpenGt| -> Result<()> {
        let table = build_u32_table(&t.entries);
        let sectors = table.len() as u64 / SECTOR;
        out.write_at(&build_metadata_marker(sectors, MARKER_GT), *next * SECTOR)?;
        // OK: t.index < gd_entries.
        gd[t.index as usize] = entry(out, *next + 1)?;
        out.write_at(&table, (*next + 1) * SECTOR)?;
        *next += 1 + sectors;
        Ok(())
    };
    let path = out.final_path().to_path_buf();
    let walked = walk(
        disk,
        GRAIN,
        out,
        &|p| frame(p, &path),
        &mut |piece: &Piece, f: Framed, _| {
            let Some(&(first, _)) = f.grains.first() else {
                return Ok(());
            };
            // A piece never crosses a grain table boundary (32 MiB is a multiple of the
            // piece grid): all its grains belong to one table.
            let index = first * GRAIN / GT_SPAN;
            debug_assert!(piece.offset / GT_SPAN == index);
            if gt.as_ref().is_none_or(|t| t.index != index) {
                if let Some(done) = gt.take() {
                    flush(out, &mut next, &mut gd, &done)?;
                }
                gt = Some(OpenGt {
                    index,
                    entries: vec![0; GTES as usize],
                });
            }
            entry(out, next + f.bytes.len() as u64 / SECTOR)?;
            if let Some(t) = gt.as_mut() {
                for &(g, at) in &f.grains {
                    t.entries[(g % GTES) as usize] = (next + at / SECTOR) as u32;
                }
            }
            out.write_at(&f.bytes, next * SECTOR)?;
            next += f.bytes.len() as u64 / SECTOR;
            Ok(())
        },
    )?;
    if let Some(done) = gt.take() {
        flush(out, &mut next, &mut gd, &done)?;
    }

    let dir = build_u32_table(&gd);
    let dir_sectors = dir.len() as u64 / SECTOR;
    out.write_at(
        &build_metadata_marker(dir_sectors, MARKER_GD),
        next * SECTOR,
    )?;
    header.gd_offset_sectors = next + 1;
    out.write_at(&dir, (next + 1) * SECTOR)?;
    next += 1 + dir_sectors;
    out.write_at(&build_stream_footer(&header), next * SECTOR)?;
    Ok(Written {
        virtual_size: capacity * SECTOR,
        data_bytes: walked.data_bytes,
    })
}
