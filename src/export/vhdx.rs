//! VHDX export (MS-VHDX v20180912), dynamic and fixed.
//!
//! Layout, as Hyper-V and QEMU lay it out: file identifier at 0, the two headers at
//! 64 and 128 KiB (sequence numbers 1 and 2, so the second is current and there is
//! no tie to break), the region table and its copy at 192 and 256 KiB, an empty
//! 1 MiB log at 1 MiB (log GUID zero: nothing to replay), the metadata region at
//! 2 MiB, the BAT at 3 MiB, then the payload blocks.
//!
//! Blocks are 32 MiB, Hyper-V's default (QEMU picks 8–32 MiB by disk size): the BAT
//! stays small (16 MiB for the 64 TiB maximum), and since only non-zero 4 KiB
//! granules are written, the unwritten rest of a block is a hole of the file and
//! costs no space. Sectors are 512 bytes logical, 4096 physical (what Hyper-V
//! creates). Dynamic: a block is allocated, in ascending disk order, when the first
//! non-zero data of it is met; the others stay "not present" (reading as zeros).
//! Fixed: every block is present, at `payload + block × 32 MiB`, the file has its
//! full length, and the "leave blocks allocated" flag is set.

use vmback_parsers::limits::MAX_VIRTUAL_SIZE;
use vmback_parsers::vhdx::bat::{PayloadState, VhdxBatGeometry};
use vmback_parsers::vhdx::header::HEADER_OFFSETS;
use vmback_parsers::vhdx::metadata::VhdxMetadata;
use vmback_parsers::vhdx::region::{VhdxRegion, REGION_TABLE_OFFSETS};
use vmback_parsers::vhdx::write::{
    bat_entry, bat_region_bytes, build_bat, build_file_id, build_header, build_metadata_region,
    build_region_table, VhdxHeaderFields, METADATA_REGION_BYTES,
};
use vmback_parsers::vhdx::{Guid, MIB};

use super::container::{sector_size, too_large, Written};
use super::ids::random_bytes;
use super::output::Output;
use super::pipeline::{walk, Piece};
use crate::error::Result;
use crate::image::DiskImage;

/// Bytes per payload block.
const BLOCK: u64 = 32 * MIB;
/// Zero detection granule inside blocks.
const GRANULE: u64 = 4096;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// Writes `disk` as a dynamic or fixed VHDX.
pub(super) fn write(disk: &(dyn DiskImage + '_), out: &Output, fixed: bool) -> Result<Written> {
    let size = sector_size(disk.size());
    if size > MAX_VIRTUAL_SIZE {
        return Err(too_large(out, "VHDX", size, MAX_VIRTUAL_SIZE, ""));
    }
    let meta = VhdxMetadata {
        block_size: BLOCK as u32,
        leave_blocks_allocated: fixed,
        has_parent: false,
        virtual_size: size,
        logical_sector_size: 512,
        physical_sector_size: 4096,
        page83: Some(Guid::from_random(random_bytes())),
        parent_locator: None,
    };
    let geometry = VhdxBatGeometry::new(&meta);
    let bat_len = bat_region_bytes(geometry.total_entries);
    let payload = BAT_OFFSET + bat_len;
    // OK: at most 2^21 + 2^14 entries (64 TiB in 32 MiB blocks), 16 MiB.
    let mut bat = vec![0u64; geometry.total_entries as usize];
    let mut next = payload;
    if fixed {
        for b in 0..geometry.data_blocks {
            bat[geometry.payload_index(b) as usize] =
                bat_entry(PayloadState::FullyPresent, payload + b * BLOCK);
        }
        next = payload + geometry.data_blocks * BLOCK;
        out.set_len(next)?;
    }
    let walked = walk(
        disk,
        GRANULE,
        out,
        &|_| Ok(()),
        &mut |piece: &Piece, (), w| {
            for (b, part) in piece.runs_on_grid(BLOCK) {
                // OK: b < data_blocks (runs lie inside the disk).
                let slot = &mut bat[geometry.payload_index(b) as usize];
                if *slot & 7 != PayloadState::FullyPresent.bits() {
                    *slot = bat_entry(PayloadState::FullyPresent, next);
                    next += BLOCK;
                }
                let block_at = (*slot >> 20) << 20;
                let data = block_at + (part.start - b * BLOCK);
                w.push((part, data));
            }
            Ok(())
        },
    )?;
    // The file must hold every present block whole (readers check it).
    out.set_len(next)?;

    out.write_at(&build_file_id(&creator()), 0)?;
    let file_write_guid = Guid::from_random(random_bytes());
    let data_write_guid = Guid::from_random(random_bytes());
    for (seq, at) in [(1, HEADER_OFFSETS[0]), (2, HEADER_OFFSETS[1])] {
        let h = build_header(&VhdxHeaderFields {
            sequence_number: seq,
            file_write_guid,
            data_write_guid,
            log_guid: Guid::ZERO,
            log_length: LOG_LENGTH as u32,
            log_offset: LOG_OFFSET,
        });
        out.write_at(&h, at)?;
    }
    let regions = build_region_table(
        VhdxRegion {
            offset: BAT_OFFSET,
            length: bat_len,
        },
        VhdxRegion {
            offset: METADATA_OFFSET,
            length: METADATA_REGION_BYTES,
        },
    );
    for at in REGION_TABLE_OFFSETS {
        out.write_at(&regions, at)?;
    }
    // The file already covers both regions (payload follows them): their zero tails
    // stay holes.
    out.write_at(trim_zeros(&build_metadata_region(&meta)), METADATA_OFFSET)?;
    out.write_at(trim_zeros(&build_bat(&bat, bat_len)), BAT_OFFSET)?;
    Ok(Written {
        virtual_size: size,
        data_bytes: walked.data_bytes,
    })
}

/// `b` without its trailing zero bytes.
fn trim_zeros(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    &b[..end]
}

/// The creator string of the file identifier.
fn creator() -> String {
    format!("vmback {}", env!("CARGO_PKG_VERSION"))
}
