//! qcow2 export (QEMU docs/interop/qcow2.txt): version 3, 64 KiB clusters, 16-bit
//! refcounts, no backing file, no compression.
//!
//! One pass, everything allocated in ascending order and never moved: the header
//! cluster first (written last), then for each 512 MiB of disk that holds non-zero
//! data its L2 table followed by its data clusters, then the L1 table, then the
//! refcount table and blocks. Clusters that are all zero are not allocated (their L2
//! entry stays 0, which reads as zeros without a backing file). Every cluster of the
//! file is in use exactly once, so the refcount blocks are "1" up to the end of the
//! file, and `qemu-img check` finds neither leaks nor corruptions.

use vmback_parsers::limits::MAX_VIRTUAL_SIZE;
use vmback_parsers::qcow2::header::l1_entries_needed;
use vmback_parsers::qcow2::write::{
    build_header, build_refcount_block, build_u64_table, refcount_layout, table_entry,
    Qcow2HeaderFields,
};

use super::container::{sector_size, too_large, Written};
use super::output::Output;
use super::pipeline::{walk, Piece};
use crate::error::Result;
use crate::image::DiskImage;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Entries per L2 table (one cluster of u64).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Disk bytes one L2 table maps: 512 MiB.
const L2_SPAN: u64 = CLUSTER * L2_ENTRIES;

/// The L2 table being filled: the one for the region of the disk being written.
struct OpenL2 {
    index: u64,
    offset: u64,
    entries: Vec<u64>,
}

/// Writes `disk` as a qcow2 image.
pub(super) fn write(disk: &(dyn DiskImage + '_), out: &Output) -> Result<Written> {
    let size = sector_size(disk.size());
    if size > MAX_VIRTUAL_SIZE {
        return Err(too_large(out, "qcow2", size, MAX_VIRTUAL_SIZE, ""));
    }
    // OK: ≤ 64 TiB / 512 MiB = 131072 entries.
    let l1_size = l1_entries_needed(size, CLUSTER_BITS, CLUSTER_BITS - 3);
    let mut l1 = vec![0u64; l1_size as usize];
    let mut l2: Option<OpenL2> = None;
    // Next free cluster: cluster 0 is the header.
    let mut next = CLUSTER;

    let walked = walk(
        disk,
        CLUSTER,
        out,
        &|_| Ok(()),
        &mut |piece: &Piece, (), w| {
            for (index, part) in piece.runs_on_grid(L2_SPAN) {
                if l2.as_ref().is_none_or(|t| t.index != index) {
                    if let Some(done) = l2.take() {
                        flush(out, &done)?;
                    }
                    // OK: index < l1_size (runs lie inside the disk).
                    l1[index as usize] = table_entry(next);
                    l2 = Some(OpenL2 {
                        index,
                        offset: next,
                        entries: vec![0; L2_ENTRIES as usize],
                    });
                    next += CLUSTER;
                }
                // The open table is the one for `index` now.
                if let Some(t) = l2.as_mut() {
                    let first = part.start / CLUSTER;
                    for c in first..part.end.div_ceil(CLUSTER) {
                        t.entries[(c % L2_ENTRIES) as usize] =
                            table_entry(next + (c - first) * CLUSTER);
                    }
                }
                // Runs are whole clusters (but the last one of the disk): one write
                // for all of them, at consecutive clusters.
                let clusters = (part.end - part.start).div_ceil(CLUSTER);
                w.push((part, next));
                next += clusters * CLUSTER;
            }
            Ok(())
        },
    )?;
    if let Some(done) = l2.take() {
        flush(out, &done)?;
    }

    let l1_offset = next;
    let l1_bytes = (l1_size * 8).next_multiple_of(CLUSTER);
    out.write_at(&build_u64_table(&l1, l1_bytes as usize), l1_offset)?;
    let used = (l1_offset + l1_bytes) / CLUSTER;
    let (table_clusters, block_clusters) = refcount_layout(used, CLUSTER_BITS);
    let table_offset = used * CLUSTER;
    let total = used + table_clusters + block_clusters;
    let blocks: Vec<u64> = (0..block_clusters)
        .map(|i| (used + table_clusters + i) * CLUSTER)
        .collect();
    out.write_at(
        &build_u64_table(&blocks, (table_clusters * CLUSTER) as usize),
        table_offset,
    )?;
    for (i, &at) in blocks.iter().enumerate() {
        out.write_at(&build_refcount_block(i as u64, total, CLUSTER_BITS), at)?;
    }
    out.write_at(
        &build_header(&Qcow2HeaderFields {
            cluster_bits: CLUSTER_BITS,
            virtual_size: size,
            l1_size: l1_size as u32,
            l1_table_offset: l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
        }),
        0,
    )?;
    Ok(Written {
        virtual_size: size,
        data_bytes: walked.data_bytes,
    })
}

fn flush(out: &Output, t: &OpenL2) -> Result<()> {
    out.write_at(&build_u64_table(&t.entries, CLUSTER as usize), t.offset)
}
