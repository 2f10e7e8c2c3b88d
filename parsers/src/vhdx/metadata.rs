//! The metadata region (MS-VHDX 2.6): a 64 KiB table ("metadata" signature, at most
//! 2047 32-byte entries) pointing at items inside the region, identified by GUID.
//! We read the five system items every disk has (file parameters, virtual disk size,
//! logical and physical sector size, page 83 data) and the parent locator of a
//! differencing disk. An unknown item marked required is refused, as the spec demands.

use nom::multi::count;
use nom::number::complete::{le_u16, le_u32, le_u64};

use super::parent_locator::{parse_parent_locator, VhdxParentLocator};
use super::{guid, Guid, MIB};
use crate::bytes::{need, run, show_magic, slice};
use crate::error::{ParseError, Result};
use crate::limits::{MAX_VHDX_TABLE_ENTRIES, MAX_VIRTUAL_SIZE};

/// Bytes of the metadata table at the start of the region.
pub const METADATA_TABLE_BYTES: usize = 64 * 1024;

/// CAA16737-FA36-4D43-B3B6-33F0AA44E76B
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// 2FA54224-CD1B-4876-B211-5DBED83BF4B8
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// BECA12AB-B2E6-4523-93EF-C309E000C746
pub const PAGE83_DATA: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// 8141BF1D-A96F-4709-BA47-F233A8FAAB5F
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// CDA348C7-445D-4471-9CC9-E9885251C556
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// A8D35F2D-B30B-454D-ABF7-D3D84834AB0C
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

const WHAT: &str = "VHDX metadata table";

/// One table entry as stored (32 bytes).
#[derive(Debug, Clone)]
struct RawMetadataEntry {
    item_id: Guid, // 0x00
    offset: u32,   // 0x10 from the start of the region, >= 64 KiB (0 when length is 0)
    length: u32,   // 0x14
    flags: u32,    // 0x18 bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
}

/// The validated metadata a reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxMetadata {
    /// Bytes per payload block: a power of two, 1 MiB ..= 256 MiB.
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    pub page83: Option<Guid>,
    /// Present exactly when `has_parent`.
    pub parent_locator: Option<VhdxParentLocator>,
}

fn item<'a>(
    region: &'a [u8],
    region_base: u64,
    e: &RawMetadataEntry,
    need_len: usize,
    name: &'static str,
) -> Result<(&'a [u8], u64)> {
    let at = region_base + u64::from(e.offset);
    if (e.length as usize) < need_len {
        return Err(ParseError::corrupt(
            name,
            at,
            format!("item is {} bytes, needs {need_len}", e.length),
        ));
    }
    Ok((
        slice(
            region,
            e.offset as usize,
            e.length as usize,
            name,
            region_base,
        )?,
        at,
    ))
}

/// Parses the metadata region `region` (the whole region, as long as the region
/// table says) that starts at absolute file offset `region_base`.
pub fn parse_metadata(region: &[u8], region_base: u64) -> Result<VhdxMetadata> {
    need(region, METADATA_TABLE_BYTES, WHAT, region_base)?;
    let table = &region[..METADATA_TABLE_BYTES];
    let (signature, _reserved, entry_count) = run(
        (nom::bytes::complete::take(8usize), le_u16, le_u16),
        table,
        WHAT,
        region_base,
    )?;
    if signature != b"metadata" {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: region_base,
            expected: "\"metadata\"".into(),
            found: show_magic(signature),
        });
    }
    ParseError::check_limit(
        WHAT,
        region_base + 10,
        entry_count.into(),
        MAX_VHDX_TABLE_ENTRIES.into(),
        "MAX_VHDX_TABLE_ENTRIES",
    )?;
    let n = entry_count as usize;
    let body = slice(table, 32, n * 32, WHAT, region_base)?;
    let entries = run(
        count(
            nom::combinator::map(
                (guid, le_u32, le_u32, le_u32, le_u32),
                |(item_id, offset, length, flags, _)| RawMetadataEntry {
                    item_id,
                    offset,
                    length,
                    flags,
                },
            ),
            n,
        ),
        body,
        WHAT,
        region_base + 32,
    )?;

    let mut found: [Option<&RawMetadataEntry>; 6] = [None; 6];
    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PAGE83_DATA,
        PARENT_LOCATOR,
    ];
    for (i, e) in entries.iter().enumerate() {
        let at = region_base + 32 + 32 * i as u64;
        if e.length == 0 {
            if e.offset != 0 {
                return Err(ParseError::corrupt(
                    WHAT,
                    at + 0x10,
                    "empty item with a non-zero offset",
                ));
            }
        } else if u64::from(e.offset) < METADATA_TABLE_BYTES as u64
            || u64::from(e.offset) + u64::from(e.length) > region.len() as u64
        {
            return Err(ParseError::corrupt(
                WHAT,
                at + 0x10,
                format!(
                    "item {} at {:#x}+{:#x} lies outside the item area of the {:#x}-byte region",
                    e.item_id,
                    e.offset,
                    e.length,
                    region.len()
                ),
            ));
        }
        match known.iter().position(|g| *g == e.item_id) {
            Some(k) if found[k].replace(e).is_some() => {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    format!("item {} is listed twice", e.item_id),
                ));
            }
            Some(_) => {}
            None if e.flags & 4 != 0 => {
                return Err(ParseError::unsupported(
                    WHAT,
                    at,
                    format!(
                        "required metadata item {} is not known to this reader",
                        e.item_id
                    ),
                ))
            }
            None => {}
        }
    }
    let missing = |name: &str| {
        ParseError::corrupt(
            WHAT,
            region_base + 10,
            format!("required item {name} is missing"),
        )
    };

    let fp = found[0].ok_or_else(|| missing("file parameters"))?;
    let (b, at) = item(region, region_base, fp, 8, "VHDX file parameters")?;
    let (block_size, flags) = run((le_u32, le_u32), b, "VHDX file parameters", at)?;
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&u64::from(block_size)) {
        return Err(ParseError::corrupt(
            "VHDX file parameters",
            at,
            format!("block size {block_size:#x} is not a power of two between 1 MiB and 256 MiB"),
        ));
    }
    let leave_blocks_allocated = flags & 1 != 0;
    let has_parent = flags & 2 != 0;

    let ls = found[2].ok_or_else(|| missing("logical sector size"))?;
    let (b, at) = item(region, region_base, ls, 4, "VHDX logical sector size")?;
    let logical_sector_size = run(le_u32, b, "VHDX logical sector size", at)?;
    if logical_sector_size != 512 && logical_sector_size != 4096 {
        return Err(ParseError::corrupt(
            "VHDX logical sector size",
            at,
            format!("{logical_sector_size} (must be 512 or 4096)"),
        ));
    }

    let ps = found[3].ok_or_else(|| missing("physical sector size"))?;
    let (b, at) = item(region, region_base, ps, 4, "VHDX physical sector size")?;
    let physical_sector_size = run(le_u32, b, "VHDX physical sector size", at)?;
    if physical_sector_size != 512 && physical_sector_size != 4096 {
        return Err(ParseError::corrupt(
            "VHDX physical sector size",
            at,
            format!("{physical_sector_size} (must be 512 or 4096)"),
        ));
    }

    let vs = found[1].ok_or_else(|| missing("virtual disk size"))?;
    let (b, at) = item(region, region_base, vs, 8, "VHDX virtual disk size")?;
    let virtual_size = run(le_u64, b, "VHDX virtual disk size", at)?;
    ParseError::check_limit(
        "VHDX virtual disk size",
        at,
        virtual_size,
        MAX_VIRTUAL_SIZE,
        "MAX_VIRTUAL_SIZE",
    )?;
    if virtual_size == 0 || virtual_size % u64::from(logical_sector_size) != 0 {
        return Err(ParseError::corrupt(
            "VHDX virtual disk size",
            at,
            format!(
                "{virtual_size} is not a non-zero multiple of the logical sector size {logical_sector_size}"
            ),
        ));
    }

    let page83 = match found[4] {
        Some(e) => {
            let (b, at) = item(region, region_base, e, 16, "VHDX page 83 data")?;
            Some(run(guid, b, "VHDX page 83 data", at)?)
        }
        None => None,
    };

    let parent_locator = match (has_parent, found[5]) {
        (true, Some(e)) => {
            let (b, at) = item(region, region_base, e, 20, "VHDX parent locator")?;
            Some(parse_parent_locator(b, at)?)
        }
        (true, None) => return Err(missing("parent locator (the disk has a parent)")),
        (false, _) => None,
    };

    Ok(VhdxMetadata {
        block_size,
        leave_blocks_allocated,
        has_parent,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        page83,
        parent_locator,
    })
}

/// Builds a metadata region of `len` bytes from `(guid, flags, item bytes)` (for tests
/// and fixtures).
pub fn build_metadata(len: usize, items: &[(Guid, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..8].copy_from_slice(b"metadata");
    b[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
    let mut off = METADATA_TABLE_BYTES;
    for (i, (g, flags, data)) in items.iter().enumerate() {
        let at = 32 + 32 * i;
        b[at..at + 16].copy_from_slice(&g.0);
        b[at + 16..at + 20].copy_from_slice(&(off as u32).to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
        b[off..off + data.len()].copy_from_slice(data);
        off += data.len().max(1).next_multiple_of(8);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::parent_locator::build_parent_locator;

    fn items(block: u32, flags: u32, vsize: u64, ls: u32, ps: u32) -> Vec<(Guid, u32, Vec<u8>)> {
        let mut fp = block.to_le_bytes().to_vec();
        fp.extend_from_slice(&flags.to_le_bytes());
        let mut v = vec![
            (FILE_PARAMETERS, 4, fp),
            (VIRTUAL_DISK_SIZE, 6, vsize.to_le_bytes().to_vec()),
            (LOGICAL_SECTOR_SIZE, 6, ls.to_le_bytes().to_vec()),
            (PHYSICAL_SECTOR_SIZE, 6, ps.to_le_bytes().to_vec()),
            (PAGE83_DATA, 6, vec![0x5a; 16]),
        ];
        if flags & 2 != 0 {
            v.push((
                PARENT_LOCATOR,
                4,
                build_parent_locator(&[
                    ("parent_linkage", "{00000000-0000-0000-0000-000000000001}"),
                    ("relative_path", "p.vhdx"),
                ]),
            ));
        }
        v
    }

    fn sample() -> Vec<u8> {
        build_metadata(1 << 20, &items(32 << 20, 0, 10 << 30, 512, 4096))
    }

    #[test]
    fn parses() {
        let m = parse_metadata(&sample(), 2 << 20).unwrap();
        assert_eq!(m.block_size, 32 << 20);
        assert_eq!(m.virtual_size, 10 << 30);
        assert_eq!((m.logical_sector_size, m.physical_sector_size), (512, 4096));
        assert!(!m.has_parent && m.parent_locator.is_none());
        let d = build_metadata(1 << 20, &items(1 << 20, 2, 1 << 30, 4096, 4096));
        let m = parse_metadata(&d, 0).unwrap();
        assert!(m.has_parent);
        assert_eq!(
            m.parent_locator.unwrap().relative_path.as_deref(),
            Some("p.vhdx")
        );
    }

    fn err(block: u32, flags: u32, vsize: u64, ls: u32, ps: u32) -> ParseError {
        parse_metadata(
            &build_metadata(1 << 20, &items(block, flags, vsize, ls, ps)),
            0,
        )
        .unwrap_err()
    }

    #[test]
    fn rule_signature() {
        let mut b = sample();
        b[0] = b'M';
        assert!(matches!(
            parse_metadata(&b, 0x200000),
            Err(ParseError::BadMagic {
                offset: 0x200000,
                ..
            })
        ));
    }

    #[test]
    fn rule_block_size() {
        assert!(matches!(
            err(3 << 20, 0, 1 << 30, 512, 512),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(512 << 20, 0, 1 << 30, 512, 512),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(1 << 19, 0, 1 << 30, 512, 512),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rule_sector_sizes() {
        assert!(matches!(
            err(1 << 20, 0, 1 << 30, 1024, 512),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(1 << 20, 0, 1 << 30, 512, 520),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rule_virtual_size() {
        assert!(matches!(
            err(1 << 20, 0, 0, 512, 512),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(1 << 20, 0, 1000, 512, 512),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(1 << 20, 0, 65 << 40, 512, 512),
            ParseError::LimitExceeded { .. }
        ));
    }

    #[test]
    fn rule_entry_count() {
        let mut b = sample();
        b[10..12].copy_from_slice(&2048u16.to_le_bytes());
        assert!(matches!(
            parse_metadata(&b, 0),
            Err(ParseError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn rule_item_bounds() {
        let mut b = sample();
        b[32 + 16..32 + 20].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(matches!(
            parse_metadata(&b, 0),
            Err(ParseError::Corrupt { offset: 0x30, .. })
        ));
        let mut b = sample();
        b[32 + 20..32 + 24].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(matches!(
            parse_metadata(&b, 0),
            Err(ParseError::Corrupt { offset: 0x30, .. })
        ));
    }

    #[test]
    fn rule_item_too_short() {
        let mut b = sample();
        b[32 + 20..32 + 24].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            parse_metadata(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn rule_missing_and_duplicate_items() {
        let mut it = items(1 << 20, 0, 1 << 30, 512, 512);
        it.remove(1);
        assert!(matches!(
            parse_metadata(&build_metadata(1 << 20, &it), 0),
            Err(ParseError::Corrupt { offset: 10, .. })
        ));
        let mut it = items(1 << 20, 0, 1 << 30, 512, 512);
        it.push(it[2].clone());
        assert!(matches!(
            parse_metadata(&build_metadata(1 << 20, &it), 0),
            Err(ParseError::Corrupt { .. })
        ));
        // HasParent without a locator.
        let mut it = items(1 << 20, 2, 1 << 30, 512, 512);
        it.pop();
        assert!(matches!(
            parse_metadata(&build_metadata(1 << 20, &it), 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn rule_unknown_required_item() {
        let mut it = items(1 << 20, 0, 1 << 30, 512, 512);
        it.push((Guid([7; 16]), 4, vec![1, 2, 3, 4]));
        assert!(matches!(
            parse_metadata(&build_metadata(1 << 20, &it), 0),
            Err(ParseError::Unsupported { offset: 0xc0, .. })
        ));
        it.last_mut().unwrap().1 = 0;
        assert!(parse_metadata(&build_metadata(1 << 20, &it), 0).is_ok());
    }

    #[test]
    fn no_panic_sweep() {
        let b = build_metadata(0x10200, &items(1 << 20, 2, 1 << 30, 512, 512));
        for n in (0..b.len()).step_by(7) {
            let _ = parse_metadata(&b[..n], 0);
        }
        let mut flip_at: Vec<usize> = (0..32 + 6 * 32).collect();
        flip_at.extend(0x10000..0x10200);
        for i in flip_at {
            for bit in 0..8 {
                let mut m = b.clone();
                m[i] ^= 1 << bit;
                let _ = parse_metadata(&m, 0);
            }
        }
    }
}
