//! Building VHDX structures for export, the inverse of the parsers next to this file
//! (MS-VHDX v20180912): the file type identifier (2.2.1), the headers (2.2.2), the
//! region table (2.2.3), BAT entries (2.5) and the metadata region with its five
//! system items (2.6). Checksums (CRC-32C) are sealed here, so a caller cannot forget
//! one; every structure parses back to the values it was built from (see the tests).
//!
//! Only what a non-differencing disk needs: no parent locator, no log entries (a
//! freshly written file has nothing to replay, so the log GUID is zero).

use super::bat::PayloadState;
use super::file_id::FILE_ID_BYTES;
use super::header::HEADER_BYTES;
use super::metadata::{
    build_metadata, VhdxMetadata, FILE_PARAMETERS, LOGICAL_SECTOR_SIZE, PAGE83_DATA,
    PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE,
};
use super::region::{VhdxRegion, BAT_GUID, METADATA_GUID, REGION_TABLE_BYTES};
use super::{seal_crc, Guid, MIB};

/// Metadata item flags (MS-VHDX 2.6.1.2): the item describes the virtual disk (not
/// the file), and a reader that does not know it must fail.
const IS_VIRTUAL_DISK: u32 = 1 << 1;
const IS_REQUIRED: u32 = 1 << 2;

/// Bytes of the metadata region we write: the table plus five small items fit in
/// 1 MiB, the region's minimum (Hyper-V and qemu use the same).
pub const METADATA_REGION_BYTES: u64 = MIB;

/// The file type identifier: signature plus `creator` as UTF-16LE (at most 255 code
/// units, so a terminating NUL always fits). The rest of its 64 KiB slot is zero.
pub fn build_file_id(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; FILE_ID_BYTES];
    b[..8].copy_from_slice(b"vhdxfile");
    for (i, u) in creator.encode_utf16().take(255).enumerate() {
        b[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    b
}

/// Fields of a header a writer chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxHeaderFields {
    /// The header with the higher number is current.
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    /// Zero: the log holds nothing to replay.
    pub log_guid: Guid,
    pub log_length: u32,
    pub log_offset: u64,
}

/// One 4 KiB header, CRC-32C sealed.
pub fn build_header(h: &VhdxHeaderFields) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_BYTES];
    b[..4].copy_from_slice(b"head");
    b[0x08..0x10].copy_from_slice(&h.sequence_number.to_le_bytes());
    b[0x10..0x20].copy_from_slice(&h.file_write_guid.0);
    b[0x20..0x30].copy_from_slice(&h.data_write_guid.0);
    b[0x30..0x40].copy_from_slice(&h.log_guid.0);
    // 0x40 log version 0; 0x42 version 1.
    b[0x42..0x44].copy_from_slice(&1u16.to_le_bytes());
    b[0x44..0x48].copy_from_slice(&h.log_length.to_le_bytes());
    b[0x48..0x50].copy_from_slice(&h.log_offset.to_le_bytes());
    seal_crc(&mut b, 4);
    b
}

/// The 64 KiB region table listing the BAT and the metadata region (both required,
/// as the spec demands of them), CRC-32C sealed. The same bytes go to both copies.
pub fn build_region_table(bat: VhdxRegion, metadata: VhdxRegion) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_BYTES];
    b[..4].copy_from_slice(b"regi");
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (guid, r)) in [(BAT_GUID, bat), (METADATA_GUID, metadata)]
        .into_iter()
        .enumerate()
    {
        let at = 16 + 32 * i;
        b[at..at + 16].copy_from_slice(&guid.0);
        b[at + 16..at + 24].copy_from_slice(&r.offset.to_le_bytes());
        // OK: region lengths here are a few MiB at most (BAT of a 64 TiB disk: 16 MiB).
        b[at + 24..at + 28].copy_from_slice(&(r.length as u32).to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&1u32.to_le_bytes());
    }
    seal_crc(&mut b, 4);
    b
}

/// The metadata region (1 MiB) of a disk without a parent: file parameters, virtual
/// disk size, logical and physical sector size and page 83 data (`m.page83`, which
/// should be set: Windows reports it as the disk's SCSI identifier).
pub fn build_metadata_region(m: &VhdxMetadata) -> Vec<u8> {
    let mut file_params = m.block_size.to_le_bytes().to_vec();
    file_params.extend_from_slice(&u32::from(m.leave_blocks_allocated).to_le_bytes());
    let items = [
        (FILE_PARAMETERS, IS_REQUIRED, file_params),
        (
            VIRTUAL_DISK_SIZE,
            IS_VIRTUAL_DISK | IS_REQUIRED,
            m.virtual_size.to_le_bytes().to_vec(),
        ),
        (
            PAGE83_DATA,
            IS_VIRTUAL_DISK | IS_REQUIRED,
            m.page83.unwrap_or_default().0.to_vec(),
        ),
        (
            LOGICAL_SECTOR_SIZE,
            IS_VIRTUAL_DISK | IS_REQUIRED,
            m.logical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            IS_VIRTUAL_DISK | IS_REQUIRED,
            m.physical_sector_size.to_le_bytes().to_vec(),
        ),
    ];
    build_metadata(METADATA_REGION_BYTES as usize, &items)
}

/// A BAT entry: `state` in bits 0–2, the MiB-aligned `file_offset` in bits 20–63.
pub fn bat_entry(state: PayloadState, file_offset: u64) -> u64 {
    state.bits() | (file_offset & !(MIB - 1))
}

/// Bytes of the BAT region for `total_entries` entries: whole MiB, as regions must be.
pub fn bat_region_bytes(total_entries: u64) -> u64 {
    (total_entries * 8).next_multiple_of(MIB).max(MIB)
}

/// The BAT region: `entries` little-endian, zero (not present) up to `region_bytes`.
pub fn build_bat(entries: &[u64], region_bytes: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(region_bytes as usize);
    for e in entries {
        b.extend_from_slice(&e.to_le_bytes());
    }
    b.resize((region_bytes as usize).max(b.len()), 0);
    b
}

#[cfg(test)]
mod tests {
    use super::super::bat::{parse_bat, VhdxBatGeometry};
    use super::super::file_id::parse_file_id;
    use super::super::header::{current_header, parse_header, HEADER_OFFSETS};
    use super::super::metadata::parse_metadata;
    use super::super::region::parse_region_table;
    use super::*;

    fn guid(b: u8) -> Guid {
        Guid::from_random([b; 16])
    }

    #[test]
    fn file_id_round_trips() {
        let id = parse_file_id(&build_file_id("vmback 0.1")).unwrap();
        assert_eq!(id.creator, "vmback 0.1");
        let long = "x".repeat(400);
        assert_eq!(
            parse_file_id(&build_file_id(&long)).unwrap().creator.len(),
            255
        );
    }

    #[test]
    fn headers_round_trip_and_the_newer_wins() {
        let fields = |seq| VhdxHeaderFields {
            sequence_number: seq,
            file_write_guid: guid(1),
            data_write_guid: guid(2),
            log_guid: Guid::ZERO,
            log_length: MIB as u32,
            log_offset: MIB,
        };
        let h1 = build_header(&fields(1));
        let h2 = build_header(&fields(2));
        let p = parse_header(&h1, 1).unwrap();
        assert_eq!(p.sequence_number, 1);
        assert_eq!(p.file_write_guid, guid(1));
        assert_eq!(p.data_write_guid, guid(2));
        assert!(p.log_guid.is_zero());
        assert_eq!((p.log_offset, p.log_length), (MIB, MIB as u32));
        let (cur, other) = current_header(&h1, &h2).unwrap();
        assert_eq!((cur.index, cur.sequence_number), (2, 2));
        assert!(other.is_none());
        assert_eq!(HEADER_OFFSETS, [64 << 10, 128 << 10]);
    }

    #[test]
    fn region_table_round_trips() {
        let bat = VhdxRegion {
            offset: 3 * MIB,
            length: MIB,
        };
        let meta = VhdxRegion {
            offset: 2 * MIB,
            length: MIB,
        };
        let b = build_region_table(bat, meta);
        for copy in [0, 1] {
            let t = parse_region_table(&b, copy).unwrap();
            assert_eq!(t.bat, bat);
            assert_eq!(t.metadata, meta);
            assert!(t.ignored.is_empty());
        }
    }

    #[test]
    fn metadata_round_trips() {
        for fixed in [false, true] {
            let m = VhdxMetadata {
                block_size: 32 << 20,
                leave_blocks_allocated: fixed,
                has_parent: false,
                virtual_size: (100 << 20) + 512,
                logical_sector_size: 512,
                physical_sector_size: 4096,
                page83: Some(guid(7)),
                parent_locator: None,
            };
            let region = build_metadata_region(&m);
            assert_eq!(region.len() as u64, METADATA_REGION_BYTES);
            assert_eq!(parse_metadata(&region, 2 * MIB).unwrap(), m);
        }
    }

    #[test]
    fn bat_round_trips() {
        let m = VhdxMetadata {
            block_size: 1 << 20,
            leave_blocks_allocated: false,
            has_parent: false,
            virtual_size: 300 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            page83: None,
            parent_locator: None,
        };
        let g = VhdxBatGeometry::new(&m);
        // Chunk ratio 4096 at 1 MiB blocks: 300 payload entries, no bitmap entry yet.
        assert_eq!(g.total_entries, 300);
        let mut entries = vec![0u64; g.total_entries as usize];
        entries[g.payload_index(0) as usize] = bat_entry(PayloadState::FullyPresent, 4 * MIB);
        entries[g.payload_index(299) as usize] = bat_entry(PayloadState::FullyPresent, 5 * MIB);
        let region = bat_region_bytes(g.total_entries);
        assert_eq!(region, MIB);
        let b = build_bat(&entries, region);
        let bat = parse_bat(&b, 3 * MIB, g, 6 * MIB).unwrap();
        let p = bat.payload(0).unwrap();
        assert_eq!(
            (p.state, p.file_offset),
            (PayloadState::FullyPresent, 4 * MIB)
        );
        let p = bat.payload(1).unwrap();
        assert_eq!(p.state, PayloadState::NotPresent);
        assert_eq!(bat.payload(299).unwrap().file_offset, 5 * MIB);
    }
}
