//! The hosted sparse extent header ("KDMV"), VMware Virtual Disk Format 1.1, section
//! "Hosted Sparse Extent Header". Also used, byte for byte, as the footer copy of a
//! streamOptimized extent (see [`super::marker`]).
//!
//! Invariants of a [`VmdkSparseHeader`]: version 1-3; grain size a power of two of at
//! most [`MAX_GRAIN_BYTES`]; 1..=512 grain table entries per grain table; capacity at
//! most [`MAX_VIRTUAL_SIZE`]; compression none or deflate; the grain directory it
//! implies fits [`MAX_TABLE_BYTES`]; an embedded descriptor fits
//! [`MAX_DESCRIPTOR_BYTES`]. So every byte value its methods return is free of overflow.
//! Offsets against the file size are checked by the reader, which knows the file.

use nom::bytes::complete::take;
use nom::number::complete::{le_u16, le_u32, le_u64, u8 as byte};
use nom::Parser;

use super::{div_ceil, SECTOR};
use crate::bytes::{self, show_magic};
use crate::error::{ParseError, Result};
use crate::limits::{MAX_DESCRIPTOR_BYTES, MAX_GRAIN_BYTES, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE};

/// "KDMV" as stored (the little-endian u32 0x564d444b).
pub const KDMV_MAGIC: &[u8; 4] = b"KDMV";
/// Bytes of the header that carry fields (the rest of the 512-byte sector is padding).
pub const SPARSE_HEADER_BYTES: usize = 0x4f;
/// `gdOffset` value meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: the four newline-detection characters are valid and must be checked.
pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
/// Flag: a redundant grain directory / tables exist at `rgdOffset`.
pub const FLAG_REDUNDANT_GT: u32 = 1 << 1;
/// Flag: a grain table entry of 1 means "this grain reads as zeros".
pub const FLAG_ZEROED_GRAIN_GTE: u32 = 1 << 2;
/// Flag: grains are compressed (streamOptimized).
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: the extent contains markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for deflate (zlib stream).
pub const COMPRESSION_DEFLATE: u16 = 1;
/// Most grain table entries per grain table: the spec fixes 512 and QEMU refuses more.
pub const MAX_GTES_PER_GT: u32 = 512;

/// The header as stored; field names are the spec's.
#[allow(non_snake_case, dead_code)]
struct RawSparseHeader {
    magicNumber: [u8; 4],   // 0x00
    version: u32,           // 0x04
    flags: u32,             // 0x08
    capacity: u64,          // 0x0C sectors
    grainSize: u64,         // 0x14 sectors
    descriptorOffset: u64,  // 0x1C sectors
    descriptorSize: u64,    // 0x24 sectors
    numGTEsPerGT: u32,      // 0x2C
    rgdOffset: u64,         // 0x30 sectors
    gdOffset: u64,          // 0x38 sectors
    overHead: u64,          // 0x40 sectors
    uncleanShutdown: u8,    // 0x48
    singleEndLineChar: u8,  // 0x49 '\n'
    nonEndLineChar: u8,     // 0x4A ' '
    doubleEndLineChar1: u8, // 0x4B '\r'
    doubleEndLineChar2: u8, // 0x4C '\n'
    compressAlgorithm: u16, // 0x4D
}

/// A validated hosted sparse extent header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkSparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity_sectors: u64,
    pub grain_sectors: u64,
    /// Embedded descriptor position and length (0 when there is none).
    pub descriptor_offset_sectors: u64,
    pub descriptor_size_sectors: u64,
    pub gtes_per_gt: u32,
    pub rgd_offset_sectors: u64,
    /// [`GD_AT_END`] for a streamOptimized extent whose footer holds the real value.
    pub gd_offset_sectors: u64,
    pub overhead_sectors: u64,
    pub unclean_shutdown: bool,
    pub compress_algorithm: u16,
}

fn raw(input: &[u8]) -> nom::IResult<&[u8], RawSparseHeader> {
    let (input, (magic, version, flags, capacity, grain, doff, dsize)) =
        (take(4usize), le_u32, le_u32, le_u64, le_u64, le_u64, le_u64).parse(input)?;
    let (input, (gtes, rgd, gd, overhead, unclean, c1, c2, c3, c4, algo)) = (
        le_u32, le_u64, le_u64, le_u64, byte, byte, byte, byte, byte, le_u16,
    )
        .parse(input)?;
    let mut magic_number = [0u8; 4];
    magic_number.copy_from_slice(magic);
    Ok((
        input,
        RawSparseHeader {
            magicNumber: magic_number,
            version,
            flags,
            capacity,
            grainSize: grain,
            descriptorOffset: doff,
            descriptorSize: dsize,
            numGTEsPerGT: gtes,
            rgdOffset: rgd,
            gdOffset: gd,
            overHead: overhead,
            uncleanShutdown: unclean,
            singleEndLineChar: c1,
            nonEndLineChar: c2,
            doubleEndLineChar1: c3,
            doubleEndLineChar2: c4,
            compressAlgorithm: algo,
        },
    ))
}

const WHAT: &str = "VMDK sparse extent header";

/// Parses and validates a hosted sparse header from `buf` (at least
/// [`SPARSE_HEADER_BYTES`]; normally the whole first sector), which lies at absolute
/// offset `base` of its file.
pub fn parse_sparse_header(buf: &[u8], base: u64) -> Result<VmdkSparseHeader> {
    let buf = bytes::slice(buf, 0, SPARSE_HEADER_BYTES, WHAT, base)?;
    let r = bytes::run(raw, buf, WHAT, base)?;
    let at = |field: u64| base.saturating_add(field);
    if &r.magicNumber != KDMV_MAGIC {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: show_magic(KDMV_MAGIC),
            found: show_magic(&r.magicNumber),
        });
    }
    if !(1..=3).contains(&r.version) {
        return Err(ParseError::unsupported(
            WHAT,
            at(0x04),
            format!("version {} (only 1, 2 and 3 exist)", r.version),
        ));
    }
    if r.flags & FLAG_NEWLINE_TEST != 0
        && [
            r.singleEndLineChar,
            r.nonEndLineChar,
            r.doubleEndLineChar1,
            r.doubleEndLineChar2,
        ] != *b"\n \r\n"
    {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x49),
            "newline detection characters are altered (file transferred in text mode?)",
        ));
    }
    if r.grainSize == 0 || !r.grainSize.is_power_of_two() {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x14),
            format!("grain size {} sectors is not a power of two", r.grainSize),
        ));
    }
    ParseError::check_limit(
        WHAT,
        at(0x14),
        r.grainSize.saturating_mul(SECTOR),
        MAX_GRAIN_BYTES,
        "MAX_GRAIN_BYTES",
    )?;
    if r.numGTEsPerGT == 0 || r.numGTEsPerGT > MAX_GTES_PER_GT {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x2C),
            format!(
                "{} grain table entries per grain table (must be 1..={MAX_GTES_PER_GT})",
                r.numGTEsPerGT
            ),
        ));
    }
    ParseError::check_limit(
        WHAT,
        at(0x0C),
        r.capacity.saturating_mul(SECTOR),
        MAX_VIRTUAL_SIZE,
        "MAX_VIRTUAL_SIZE",
    )?;
    if r.compressAlgorithm > COMPRESSION_DEFLATE {
        return Err(ParseError::unsupported(
            WHAT,
            at(0x4D),
            format!("compression algorithm {}", r.compressAlgorithm),
        ));
    }
    if r.gdOffset == 0 && r.capacity != 0 {
        return Err(ParseError::corrupt(
            WHAT,
            at(0x38),
            "grain directory offset is 0 (that is the header itself)",
        ));
    }
    if r.descriptorOffset != 0 {
        ParseError::check_limit(
            WHAT,
            at(0x24),
            r.descriptorSize.saturating_mul(SECTOR),
            MAX_DESCRIPTOR_BYTES,
            "MAX_DESCRIPTOR_BYTES",
        )?;
    }
    let h = VmdkSparseHeader {
        version: r.version,
        flags: r.flags,
        capacity_sectors: r.capacity,
        grain_sectors: r.grainSize,
        descriptor_offset_sectors: r.descriptorOffset,
        descriptor_size_sectors: r.descriptorSize,
        gtes_per_gt: r.numGTEsPerGT,
        rgd_offset_sectors: r.rgdOffset,
        gd_offset_sectors: r.gdOffset,
        overhead_sectors: r.overHead,
        unclean_shutdown: r.uncleanShutdown != 0,
        compress_algorithm: r.compressAlgorithm,
    };
    ParseError::check_limit(
        WHAT,
        at(0x0C),
        h.gd_entries().saturating_mul(4),
        MAX_TABLE_BYTES,
        "MAX_TABLE_BYTES (grain directory)",
    )?;
    Ok(h)
}

impl VmdkSparseHeader {
    /// Virtual size of this extent in bytes (capped at parse time).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR
    }

    /// Bytes per grain (capped at parse time).
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Bytes of the virtual disk one grain table covers.
    pub fn gt_coverage_bytes(&self) -> u64 {
        self.grain_bytes() * u64::from(self.gtes_per_gt)
    }

    /// Grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        div_ceil(
            self.capacity_sectors,
            self.grain_sectors * u64::from(self.gtes_per_gt),
        )
    }

    /// True when the grain directory must be taken from the footer.
    pub fn gd_at_end(&self) -> bool {
        self.gd_offset_sectors == GD_AT_END
    }

    /// Grains are deflate-compressed. QEMU (and VMware) decide this by the algorithm
    /// field, not by [`FLAG_COMPRESSED`], so this does too.
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Compressed grains start with a grain marker.
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// A grain table entry of 1 reads as zeros.
    pub fn has_zeroed_grain_gte(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN_GTE != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid header: 8 MiB, 64 KiB grains, 512 GTEs, embedded descriptor.
    pub fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..4].copy_from_slice(KDMV_MAGIC);
        b[0x04..0x08].copy_from_slice(&1u32.to_le_bytes());
        b[0x08..0x0C].copy_from_slice(&(FLAG_NEWLINE_TEST | FLAG_ZEROED_GRAIN_GTE).to_le_bytes());
        b[0x0C..0x14].copy_from_slice(&16384u64.to_le_bytes());
        b[0x14..0x1C].copy_from_slice(&128u64.to_le_bytes());
        b[0x1C..0x24].copy_from_slice(&1u64.to_le_bytes());
        b[0x24..0x2C].copy_from_slice(&20u64.to_le_bytes());
        b[0x2C..0x30].copy_from_slice(&512u32.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&21u64.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&22u64.to_le_bytes());
        b[0x40..0x48].copy_from_slice(&128u64.to_le_bytes());
        b[0x49..0x4D].copy_from_slice(b"\n \r\n");
        b
    }

    fn with(off: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = sample();
        b[off..off + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn parses_sample() {
        let h = parse_sparse_header(&sample(), 0).unwrap();
        assert_eq!(h.capacity_bytes(), 8 << 20);
        assert_eq!(h.grain_bytes(), 64 << 10);
        assert_eq!(h.gd_entries(), 1);
        assert_eq!(h.gt_coverage_bytes(), 32 << 20);
        assert!(h.has_zeroed_grain_gte() && !h.compressed() && !h.gd_at_end());
    }

    #[test]
    fn rejects_bad_magic() {
        let e = parse_sparse_header(&with(0, b"KDMW"), 0x200).unwrap_err();
        assert!(
            matches!(e, ParseError::BadMagic { offset: 0x200, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_version() {
        let e = parse_sparse_header(&with(4, &4u32.to_le_bytes()), 0).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { offset: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_mangled_newlines() {
        let e = parse_sparse_header(&with(0x4B, b"\n"), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x49, .. }), "{e}");
    }

    #[test]
    fn rejects_grain_not_power_of_two() {
        let e = parse_sparse_header(&with(0x14, &96u64.to_le_bytes()), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x14, .. }), "{e}");
    }

    #[test]
    fn rejects_huge_grain() {
        let e = parse_sparse_header(&with(0x14, &(1u64 << 40).to_le_bytes()), 0).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::LimitExceeded {
                    name: "MAX_GRAIN_BYTES",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_gtes_per_gt() {
        let e = parse_sparse_header(&with(0x2C, &513u32.to_le_bytes()), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x2C, .. }), "{e}");
        let e = parse_sparse_header(&with(0x2C, &0u32.to_le_bytes()), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x2C, .. }), "{e}");
    }

    #[test]
    fn rejects_huge_capacity() {
        let e = parse_sparse_header(&with(0x0C, &(u64::MAX / 2).to_le_bytes()), 0).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::LimitExceeded {
                    name: "MAX_VIRTUAL_SIZE",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_compression() {
        let e = parse_sparse_header(&with(0x4D, &2u16.to_le_bytes()), 0).unwrap_err();
        assert!(
            matches!(e, ParseError::Unsupported { offset: 0x4D, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_gd_at_zero() {
        let e = parse_sparse_header(&with(0x38, &0u64.to_le_bytes()), 0).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 0x38, .. }), "{e}");
    }

    #[test]
    fn rejects_huge_descriptor() {
        let e = parse_sparse_header(&with(0x24, &(1u64 << 20).to_le_bytes()), 0).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::LimitExceeded {
                    name: "MAX_DESCRIPTOR_BYTES",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_huge_grain_directory() {
        // 64 TiB in 512-byte grains with 1 GTE per GT: 2^37 GD entries.
        let mut b = with(0x14, &1u64.to_le_bytes());
        b[0x2C..0x30].copy_from_slice(&1u32.to_le_bytes());
        b[0x0C..0x14].copy_from_slice(&(1u64 << 37).to_le_bytes());
        let e = parse_sparse_header(&b, 0).unwrap_err();
        assert!(
            matches!(
                e,
                ParseError::LimitExceeded {
                    name: "MAX_TABLE_BYTES (grain directory)",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_truncated() {
        let e = parse_sparse_header(&sample()[..0x40], 0).unwrap_err();
        assert!(matches!(e, ParseError::Truncated { .. }), "{e}");
    }

    #[test]
    fn no_panic_sweep() {
        crate::vmdk::sweep::no_panic(&sample()[..0x60], |b| parse_sparse_header(b, 0));
    }
}
