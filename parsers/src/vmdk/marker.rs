//! streamOptimized markers, VMware Virtual Disk Format 1.1, section "Stream-Optimized
//! Compressed Sparse Extents": the grain marker in front of each compressed grain,
//! the metadata markers (end of stream, grain table, grain directory, footer), and
//! the footer block at the end of the file whose header copy holds the real grain
//! directory offset when the header says [`GD_AT_END`](super::sparse_header::GD_AT_END).

use nom::number::complete::{le_u32, le_u64};

use super::sparse_header::{parse_sparse_header, VmdkSparseHeader};
use super::SECTOR;
use crate::bytes;
use crate::error::{ParseError, Result};

/// Bytes of a grain marker before the compressed data (lba u64, size u32).
pub const GRAIN_MARKER_BYTES: usize = 12;
/// Bytes of a metadata marker's fields (numSectors u64, size u32, type u32).
pub const METADATA_MARKER_BYTES: usize = 16;
/// Bytes of the footer block: footer marker, header copy, end-of-stream marker.
pub const FOOTER_BYTES: usize = 3 * SECTOR as usize;

/// Metadata marker types.
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;

/// A grain marker: the grain's first virtual sector and the compressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmdkGrainMarker {
    pub lba: u64,
    /// Bytes of compressed data following the marker (1..=`max_size`).
    pub size: u32,
}

/// A metadata marker (its `size` field is 0, which tells it from a grain marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmdkMetadataMarker {
    pub num_sectors: u64,
    pub size: u32,
    pub kind: u32,
}

/// Parses the grain marker at absolute offset `base`. `max_size` bounds the
/// compressed length (the reader passes twice the grain size, as QEMU accepts).
pub fn parse_grain_marker(buf: &[u8], base: u64, max_size: u64) -> Result<VmdkGrainMarker> {
    const WHAT: &str = "VMDK grain marker";
    let buf = bytes::slice(buf, 0, GRAIN_MARKER_BYTES, WHAT, base)?;
    // lba @0x00, size @0x08
    let (lba, size) = bytes::run((le_u64, le_u32), buf, WHAT, base)?;
    if size == 0 {
        return Err(ParseError::corrupt(
            WHAT,
            base.saturating_add(8),
            "compressed size is 0 (a metadata marker where a grain was expected)",
        ));
    }
    if u64::from(size) > max_size {
        return Err(ParseError::corrupt(
            WHAT,
            base.saturating_add(8),
            format!("compressed size {size} exceeds {max_size} (twice the grain size)"),
        ));
    }
    Ok(VmdkGrainMarker { lba, size })
}

/// Parses a metadata marker at absolute offset `base`.
pub fn parse_metadata_marker(buf: &[u8], base: u64) -> Result<VmdkMetadataMarker> {
    const WHAT: &str = "VMDK metadata marker";
    let buf = bytes::slice(buf, 0, METADATA_MARKER_BYTES, WHAT, base)?;
    // numSectors @0x00, size @0x08, type @0x0C
    let (num_sectors, size, kind) = bytes::run((le_u64, le_u32, le_u32), buf, WHAT, base)?;
    Ok(VmdkMetadataMarker {
        num_sectors,
        size,
        kind,
    })
}

/// Parses the footer block (the last three sectors before end of file, `base` being
/// its absolute offset): a footer marker, the header copy, an end-of-stream marker.
/// Returns the validated header copy.
pub fn parse_footer(buf: &[u8], base: u64) -> Result<VmdkSparseHeader> {
    const WHAT: &str = "VMDK streamOptimized footer";
    let buf = bytes::slice(buf, 0, FOOTER_BYTES, WHAT, base)?;
    let footer = parse_metadata_marker(buf, base)?;
    if footer.size != 0 || footer.kind != MARKER_FOOTER {
        return Err(ParseError::corrupt(
            WHAT,
            base,
            format!(
                "expected a footer marker (size 0, type {MARKER_FOOTER}), found size {} type {}",
                footer.size, footer.kind
            ),
        ));
    }
    let eos_at = base.saturating_add(2 * SECTOR);
    let eos = parse_metadata_marker(
        bytes::slice(buf, 2 * SECTOR as usize, METADATA_MARKER_BYTES, WHAT, base)?,
        eos_at,
    )?;
    if eos
        != (VmdkMetadataMarker {
            num_sectors: 0,
            size: 0,
            kind: MARKER_EOS,
        })
    {
        return Err(ParseError::corrupt(
            WHAT,
            eos_at,
            format!(
                "expected an end-of-stream marker (all zero), found sectors {} size {} type {}",
                eos.num_sectors, eos.size, eos.kind
            ),
        ));
    }
    let header_at = base.saturating_add(SECTOR);
    let header = parse_sparse_header(
        bytes::slice(buf, SECTOR as usize, SECTOR as usize, WHAT, base)?,
        header_at,
    )?;
    if header.gd_at_end() {
        return Err(ParseError::corrupt(
            "VMDK sparse extent header",
            header_at.saturating_add(0x38),
            "the footer's header copy also says the grain directory is at the end",
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::sparse_header::tests::sample as header;

    fn footer() -> Vec<u8> {
        let mut b = vec![0u8; FOOTER_BYTES];
        b[0..8].copy_from_slice(&1u64.to_le_bytes());
        b[12..16].copy_from_slice(&MARKER_FOOTER.to_le_bytes());
        b[512..1024].copy_from_slice(&header());
        b
    }

    #[test]
    fn parses_footer() {
        let h = parse_footer(&footer(), 0x1000).unwrap();
        assert_eq!(h.gd_offset_sectors, 22);
    }

    #[test]
    fn footer_rejects_wrong_marker_type() {
        let mut b = footer();
        b[12] = MARKER_GD as u8;
        let e = parse_footer(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1000, .. }),
            "{e}"
        );
    }

    #[test]
    fn footer_rejects_marker_size() {
        let mut b = footer();
        b[8] = 1;
        let e = parse_footer(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1000, .. }),
            "{e}"
        );
    }

    #[test]
    fn footer_rejects_bad_eos() {
        let mut b = footer();
        b[1024 + 12] = 1;
        let e = parse_footer(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1400, .. }),
            "{e}"
        );
    }

    #[test]
    fn footer_rejects_bad_header_copy() {
        let mut b = footer();
        b[512] = b'X';
        let e = parse_footer(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::BadMagic { offset: 0x1200, .. }),
            "{e}"
        );
    }

    #[test]
    fn footer_rejects_gd_at_end_again() {
        let mut b = footer();
        b[512 + 0x38..512 + 0x40].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse_footer(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x1238, .. }),
            "{e}"
        );
    }

    #[test]
    fn grain_marker_rules() {
        let mut b = [0u8; 12];
        b[0..8].copy_from_slice(&128u64.to_le_bytes());
        b[8..12].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            parse_grain_marker(&b, 0, 1000).unwrap(),
            VmdkGrainMarker {
                lba: 128,
                size: 100
            }
        );
        let e = parse_grain_marker(&b, 0x400, 99).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x408, .. }),
            "{e}"
        );
        b[8..12].copy_from_slice(&0u32.to_le_bytes());
        let e = parse_grain_marker(&b, 0x400, 1000).unwrap_err();
        assert!(
            matches!(e, ParseError::Corrupt { offset: 0x408, .. }),
            "{e}"
        );
        assert!(matches!(
            parse_grain_marker(&b[..11], 0, 1000),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        // The footer's fields live in the first 16 bytes of each sector; sweep a
        // footer whose header copy is the short sample (padding bits are inert).
        let b = footer();
        crate::vmdk::sweep::no_panic(&b[..16], |x| parse_metadata_marker(x, 0));
        crate::vmdk::sweep::no_panic(&b[..12], |x| parse_grain_marker(x, 0, 1 << 17));
        for len in 0..b.len() {
            let _ = parse_footer(&b[..len], 0);
        }
        let mut m = b.clone();
        for i in (0..16 * 8)
            .chain(512 * 8..(512 + 0x50) * 8)
            .chain(1024 * 8..(1024 + 16) * 8)
        {
            m[i / 8] ^= 1 << (i % 8);
            let _ = parse_footer(&m, 0);
            m[i / 8] ^= 1 << (i % 8);
        }
    }
}
