//! The VHD hard disk footer (spec §"Hard Disk Footer Format"): 512 bytes at the end of
//! every VHD, with a copy at offset 0 of dynamic and differencing disks. Old Virtual PC
//! fixed disks end with only 511 of them (the last reserved byte is missing).
//!
//! Invariants of a parsed [`VhdFooter`]: the cookie and the checksum are right, the disk
//! type is fixed, dynamic or differencing, and `virtual_size` is a multiple of 512 no
//! larger than [`MAX_VHD_VIRTUAL_SIZE`].

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};

use crate::bytes;
use crate::error::{ParseError, Result};
use crate::limits::MAX_VHD_VIRTUAL_SIZE;

/// Size of a footer.
pub const FOOTER_BYTES: usize = 512;
/// Size of the truncated footer old Virtual PC versions wrote at the end of fixed disks.
pub const OLD_FOOTER_BYTES: usize = 511;

const WHAT: &str = "VHD footer";
/// The footer cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// Offset of the checksum field.
pub const CHECKSUM_FIELD: usize = 0x40;
/// CHS geometry QEMU writes (65535/16/255) when the size does not fit a real geometry:
/// then only `current_size` can be right.
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// The footer as the spec lays it out (field names from the spec).
struct RawFooter<'a> {
    cookie: &'a [u8],              // 0x00
    features: u32,                 // 0x08
    file_format_version: u32,      // 0x0C
    data_offset: u64,              // 0x10
    time_stamp: u32,               // 0x18
    creator_application: &'a [u8], // 0x1C
    creator_version: u32,          // 0x20
    creator_host_os: &'a [u8],     // 0x24
    original_size: u64,            // 0x28
    current_size: u64,             // 0x30
    cylinder: u16,                 // 0x38
    heads: u8,                     // 0x3A
    sectors_per_track: u8,         // 0x3B
    disk_type: u32,                // 0x3C
    checksum: u32,                 // 0x40
    unique_id: &'a [u8],           // 0x44
    saved_state: u8,               // 0x54
}

/// Kind of disk (footer "Disk Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdDiskType {
    /// 2: the data is the file itself, before the footer.
    Fixed,
    /// 3: blocks allocated on demand through the BAT.
    Dynamic,
    /// 4: like dynamic, plus sector bitmaps that say which sectors override the parent.
    Differencing,
}

impl VhdDiskType {
    /// The name `inspect` shows.
    pub fn name(self) -> &'static str {
        match self {
            VhdDiskType::Fixed => "fixed",
            VhdDiskType::Dynamic => "dynamic",
            VhdDiskType::Differencing => "differencing",
        }
    }
}

/// CHS geometry as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhdGeometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl VhdGeometry {
    /// Cylinders × heads × sectors (cannot overflow: at most 2^32).
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

/// Where the virtual size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdSizeSource {
    /// Cylinders × heads × sectors × 512 (Virtual PC "vpc " and old QEMU "qemu").
    Geometry,
    /// The footer's Current Size, rounded down to a sector.
    CurrentSize,
}

/// A validated footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdFooter {
    /// Absolute offset the footer was read from.
    pub offset: u64,
    pub features: u32,
    pub file_format_version: u32,
    /// Absolute offset of the dynamic disk header (meaningless for fixed disks).
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub time_stamp: u32,
    pub creator_application: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: VhdGeometry,
    pub disk_type: VhdDiskType,
    pub checksum: u32,
    pub unique_id: [u8; 16],
    pub saved_state: bool,
    /// The size of the virtual disk, as `qemu-img` computes it (see [`virtual_size`]).
    pub virtual_size: u64,
    pub size_source: VhdSizeSource,
}

/// Parses a footer from `buf` (512 bytes, or the 511 of an old Virtual PC fixed disk)
/// read at absolute offset `base`. The checksum must match: the footer is the only
/// record of the disk's type and size, so a damaged one cannot be trusted.
pub fn parse_footer(buf: &[u8], base: u64) -> Result<VhdFooter> {
    bytes::need(buf, OLD_FOOTER_BYTES, WHAT, base)?;
    // The missing 512th byte of an old footer is reserved (zero), so padding it keeps
    // the checksum right.
    let mut full = [0u8; FOOTER_BYTES];
    let n = buf.len().min(FOOTER_BYTES);
    full[..n].copy_from_slice(&buf[..n]);

    let raw = bytes::run(
        (
            take(8usize),
            be_u32,
            be_u32,
            be_u64,
            be_u32,
            take(4usize),
            be_u32,
            take(4usize),
            be_u64,
            be_u64,
            be_u16,
            be_u8,
            be_u8,
            be_u32,
            be_u32,
            take(16usize),
            be_u8,
        ),
        &full,
        WHAT,
        base,
    )?;
    let raw = RawFooter {
        cookie: raw.0,
        features: raw.1,
        file_format_version: raw.2,
        data_offset: raw.3,
        time_stamp: raw.4,
        creator_application: raw.5,
        creator_version: raw.6,
        creator_host_os: raw.7,
        original_size: raw.8,
        current_size: raw.9,
        cylinder: raw.10,
        heads: raw.11,
        sectors_per_track: raw.12,
        disk_type: raw.13,
        checksum: raw.14,
        unique_id: raw.15,
        saved_state: raw.16,
    };

    if raw.cookie != COOKIE {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: bytes::show_magic(COOKIE),
            found: bytes::show_magic(raw.cookie),
        });
    }
    let computed = super::checksum(&full, CHECKSUM_FIELD);
    ParseError::check_checksum(WHAT, base + CHECKSUM_FIELD as u64, raw.checksum, computed)?;
    if raw.file_format_version >> 16 != 1 {
        return Err(ParseError::unsupported(
            WHAT,
            base + 0x0c,
            format!("file format version {:#010x}", raw.file_format_version),
        ));
    }
    let disk_type = match raw.disk_type {
        2 => VhdDiskType::Fixed,
        3 => VhdDiskType::Dynamic,
        4 => VhdDiskType::Differencing,
        t => {
            return Err(ParseError::unsupported(
                WHAT,
                base + 0x3c,
                format!("disk type {t} (only 2 fixed, 3 dynamic, 4 differencing exist)"),
            ))
        }
    };
    let geometry = VhdGeometry {
        cylinders: raw.cylinder,
        heads: raw.heads,
        sectors_per_track: raw.sectors_per_track,
    };
    let creator_application = to4(raw.creator_application);
    let (virtual_size, size_source) =
        virtual_size(&creator_application, geometry, raw.current_size);
    ParseError::check_limit(
        WHAT,
        base + 0x30,
        virtual_size,
        MAX_VHD_VIRTUAL_SIZE,
        "MAX_VHD_VIRTUAL_SIZE",
    )?;
    let mut unique_id = [0u8; 16];
    unique_id.copy_from_slice(raw.unique_id);
    Ok(VhdFooter {
        offset: base,
        features: raw.features,
        file_format_version: raw.file_format_version,
        data_offset: raw.data_offset,
        time_stamp: raw.time_stamp,
        creator_application,
        creator_version: raw.creator_version,
        creator_host_os: to4(raw.creator_host_os),
        original_size: raw.original_size,
        current_size: raw.current_size,
        geometry,
        disk_type,
        checksum: raw.checksum,
        unique_id,
        saved_state: raw.saved_state != 0,
        virtual_size,
        size_source,
    })
}

/// The virtual size as `qemu-img` (10.x, block/vpc.c) computes it, so that our export
/// matches its `convert -O raw` byte for byte: Virtual PC ("vpc ") and old QEMU ("qemu")
/// sized disks by their CHS geometry and left Current Size larger than what guests
/// see; every other writer (Hyper-V "win ", QEMU "qem2", Disk2vhd "d2v ", XenServer,
/// Azure "wa\0\0", ...) sizes by Current Size. A geometry at the CHS maximum means the
/// disk was too big for CHS, so Current Size wins there too. Current Size is rounded
/// down to whole sectors.
pub fn virtual_size(
    creator: &[u8; 4],
    geometry: VhdGeometry,
    current_size: u64,
) -> (u64, VhdSizeSource) {
    let chs = geometry.sectors();
    let by_geometry = creator == b"vpc " || creator == b"qemu";
    if by_geometry && chs != MAX_GEOMETRY_SECTORS {
        (chs * 512, VhdSizeSource::Geometry)
    } else {
        (current_size / 512 * 512, VhdSizeSource::CurrentSize)
    }
}

fn to4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    for (o, i) in out.iter_mut().zip(b) {
        *o = *i;
    }
    out
}

impl VhdFooter {
    /// The dynamic header's location, checked against the file: it must lie after this
    /// footer copy at 0 and fit (1024 bytes) inside the file.
    pub fn dynamic_header_offset(&self, file_size: u64) -> Result<u64> {
        let end = self.data_offset.checked_add(1024);
        if self.data_offset < FOOTER_BYTES as u64 || end.is_none_or(|e| e > file_size) {
            return Err(ParseError::corrupt(
                WHAT,
                self.offset + 0x10,
                format!(
                    "data offset {:#x} does not point to a 1024-byte dynamic header inside the file ({file_size} bytes)",
                    self.data_offset
                ),
            ));
        }
        Ok(self.data_offset)
    }

    /// The unique id as 32 lowercase hex digits (what a child's parent id is compared with).
    pub fn unique_id_hex(&self) -> String {
        bytes::hex(&self.unique_id)
    }

    /// Creator application as printable text.
    pub fn creator_application_text(&self) -> String {
        printable(&self.creator_application)
    }

    /// Creator host OS as printable text ("Wi2k", "Mac ").
    pub fn creator_host_os_text(&self) -> String {
        printable(&self.creator_host_os)
    }
}

fn printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                char::from(c).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn parses_a_valid_footer() {
        let f = parse_footer(&footer(3, 10 << 20), 0).unwrap();
        assert_eq!(f.disk_type, VhdDiskType::Dynamic);
        assert_eq!(f.virtual_size, 10 << 20);
        assert_eq!(f.size_source, VhdSizeSource::CurrentSize);
        assert_eq!(f.unique_id_hex(), "11".repeat(16));
        assert_eq!(f.creator_application_text(), "win ");
    }

    #[test]
    fn corpus_footer_of_hyperv_dynamic_disk() {
        // First 0x58 bytes of hyperv-windows/dynamic.vhd (rest of the 512 are zero).
        let head: [u8; 0x58] = [
            0x63, 0x6f, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x78, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0,
            0, 2, 0, 0x26, 0x0c, 0xf3, 0x8f, 0x77, 0x69, 0x6e, 0x20, 0, 0x0a, 0, 0, 0x57, 0x69,
            0x32, 0x6b, 0, 0, 0, 0, 0, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0xa0, 0, 0, 0x01, 0x2d, 0x04,
            0x11, 0, 0, 0, 3, 0xff, 0xff, 0xee, 0x6f, 0x4b, 0x6a, 0x0d, 0x04, 0xf9, 0x46, 0xd7,
            0x4e, 0x83, 0x6f, 0xd3, 0xdc, 0x87, 0xe1, 0x81, 0x6b, 0, 0, 0, 0,
        ];
        let mut b = vec![0u8; 512];
        b[..0x58].copy_from_slice(&head);
        let f = parse_footer(&b, 0).unwrap();
        assert_eq!(f.disk_type, VhdDiskType::Dynamic);
        assert_eq!(f.virtual_size, 10485760);
        assert_eq!(f.data_offset, 512);
        assert_eq!(
            f.geometry,
            VhdGeometry {
                cylinders: 301,
                heads: 4,
                sectors_per_track: 17
            }
        );
    }

    #[test]
    fn old_511_byte_footer_is_accepted() {
        let b = footer(2, 1 << 20);
        let f = parse_footer(&b[..511], 4096).unwrap();
        assert_eq!(f.offset, 4096);
        assert_eq!(f.disk_type, VhdDiskType::Fixed);
    }

    #[test]
    fn geometry_sizes_virtual_pc_and_old_qemu_disks() {
        let g = VhdGeometry {
            cylinders: 20,
            heads: 16,
            sectors_per_track: 63,
        };
        assert_eq!(virtual_size(b"vpc ", g, 1 << 30).0, 20 * 16 * 63 * 512);
        assert_eq!(virtual_size(b"qemu", g, 1 << 30).0, 20 * 16 * 63 * 512);
        assert_eq!(virtual_size(b"qem2", g, 1 << 30).0, 1 << 30);
        assert_eq!(virtual_size(b"win ", g, (1 << 30) + 7).0, 1 << 30);
        let max = VhdGeometry {
            cylinders: 65535,
            heads: 16,
            sectors_per_track: 255,
        };
        assert_eq!(
            virtual_size(b"vpc ", max, 3 << 40),
            (3 << 40, VhdSizeSource::CurrentSize)
        );
    }

    // One negative test per validation rule; each mutates one field and re-seals.

    #[test]
    fn rejects_short_buffer() {
        let b = footer(3, 1 << 20);
        assert!(matches!(
            parse_footer(&b[..510], 0),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_bad_cookie() {
        let mut b = footer(3, 1 << 20);
        b[0] = b'C';
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse_footer(&b, 0x200),
            Err(ParseError::BadMagic { offset: 0x200, .. })
        ));
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut b = footer(3, 1 << 20);
        b[0x30] ^= 1;
        assert!(matches!(
            parse_footer(&b, 0x1000),
            Err(ParseError::Checksum { offset: 0x1040, .. })
        ));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut b = footer(3, 1 << 20);
        put_u32(&mut b, 0x0c, 0x0002_0000);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse_footer(&b, 0),
            Err(ParseError::Unsupported { offset: 0x0c, .. })
        ));
    }

    #[test]
    fn rejects_deprecated_disk_type() {
        let mut b = footer(3, 1 << 20);
        put_u32(&mut b, 0x3c, 5);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse_footer(&b, 0),
            Err(ParseError::Unsupported { offset: 0x3c, .. })
        ));
    }

    #[test]
    fn rejects_size_over_2040_gib() {
        let mut b = footer(3, 1 << 20);
        put_u64(&mut b, 0x30, MAX_VHD_VIRTUAL_SIZE + 512);
        seal(&mut b, CHECKSUM_FIELD);
        assert!(matches!(
            parse_footer(&b, 0),
            Err(ParseError::LimitExceeded { offset: 0x30, .. })
        ));
    }

    #[test]
    fn rejects_data_offset_outside_file() {
        let mut b = footer(3, 1 << 20);
        put_u64(&mut b, 0x10, u64::MAX - 10);
        seal(&mut b, CHECKSUM_FIELD);
        let f = parse_footer(&b, 0).unwrap();
        assert!(matches!(
            f.dynamic_header_offset(1 << 20),
            Err(ParseError::Corrupt { offset: 0x10, .. })
        ));
        put_u64(&mut b, 0x10, 0);
        seal(&mut b, CHECKSUM_FIELD);
        let f = parse_footer(&b, 0).unwrap();
        assert!(f.dynamic_header_offset(1 << 20).is_err());
        assert_eq!(
            parse_footer(&footer(3, 1 << 20), 0)
                .unwrap()
                .dynamic_header_offset(1536)
                .unwrap(),
            512
        );
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flip() {
        sweep(&footer(4, 1 << 20), |b| {
            if let Ok(f) = parse_footer(b, 0) {
                let _ = f.dynamic_header_offset(4096);
                assert_eq!(f.virtual_size % 512, 0);
            }
        });
    }
}
