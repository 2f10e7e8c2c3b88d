//! Building VMDK structures for export, the inverse of [`super::sparse_header`],
//! [`super::descriptor`], [`super::grain_table`] and [`super::marker`] (VMware
//! Virtual Disk Format 1.1 / 5.0: "Hosted Sparse Extent Header", "The Descriptor
//! File", "Grain Directories and Grain Tables", "Stream-Optimized Compressed Sparse
//! Extents").
//!
//! Pure functions: a validated header or a table goes in, its sectors come out, and
//! the tests parse every one back with the readers' parsers.

use super::marker::{
    FOOTER_BYTES, GRAIN_MARKER_BYTES, MARKER_EOS, MARKER_FOOTER, METADATA_MARKER_BYTES,
};
use super::sparse_header::{VmdkSparseHeader, KDMV_MAGIC};
use super::SECTOR;

/// The hosted sparse header as its first sector (the header proper plus zero padding).
pub fn build_sparse_header(h: &VmdkSparseHeader) -> [u8; SECTOR as usize] {
    let mut b = [0u8; SECTOR as usize];
    b[0x00..0x04].copy_from_slice(KDMV_MAGIC);
    b[0x04..0x08].copy_from_slice(&h.version.to_le_bytes());
    b[0x08..0x0C].copy_from_slice(&h.flags.to_le_bytes());
    b[0x0C..0x14].copy_from_slice(&h.capacity_sectors.to_le_bytes());
    b[0x14..0x1C].copy_from_slice(&h.grain_sectors.to_le_bytes());
    b[0x1C..0x24].copy_from_slice(&h.descriptor_offset_sectors.to_le_bytes());
    b[0x24..0x2C].copy_from_slice(&h.descriptor_size_sectors.to_le_bytes());
    b[0x2C..0x30].copy_from_slice(&h.gtes_per_gt.to_le_bytes());
    b[0x30..0x38].copy_from_slice(&h.rgd_offset_sectors.to_le_bytes());
    b[0x38..0x40].copy_from_slice(&h.gd_offset_sectors.to_le_bytes());
    b[0x40..0x48].copy_from_slice(&h.overhead_sectors.to_le_bytes());
    b[0x48] = u8::from(h.unclean_shutdown);
    // The newline detection characters: a file that went through a text-mode transfer
    // has them altered, and readers refuse it (FLAG_NEWLINE_TEST).
    b[0x49..0x4D].copy_from_slice(b"\n \r\n");
    b[0x4D..0x4F].copy_from_slice(&h.compress_algorithm.to_le_bytes());
    b
}

/// What a descriptor of a single-extent, parentless disk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkDescriptorFields {
    /// Content ID: random for a new disk.
    pub cid: u32,
    /// "monolithicSparse" or "streamOptimized".
    pub create_type: String,
    pub capacity_sectors: u64,
    /// The extent's file name (the disk itself, for an embedded descriptor); `"` and
    /// control characters are replaced, since the line format cannot quote them.
    pub file_name: String,
    /// Disk database entries, key without `ddb.`, in order.
    pub ddb: Vec<(String, String)>,
}

/// The descriptor text (LF line ends, as VMware writes on every platform).
pub fn build_descriptor(d: &VmdkDescriptorFields) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect()
    };
    let mut t = String::new();
    t.push_str("# Disk DescriptorFile\nversion=1\n");
    t.push_str(&format!("CID={:08x}\nparentCID=ffffffff\n", d.cid));
    t.push_str(&format!("createType=\"{}\"\n\n", clean(&d.create_type)));
    t.push_str("# Extent description\n");
    t.push_str(&format!(
        "RW {} SPARSE \"{}\"\n\n",
        d.capacity_sectors,
        clean(&d.file_name)
    ));
    t.push_str("# The Disk Data Base\n#DDB\n\n");
    for (k, v) in &d.ddb {
        t.push_str(&format!("ddb.{} = \"{}\"\n", clean(k), clean(v)));
    }
    t
}

/// A grain table or grain directory: little-endian u32 sector numbers, zero padded to
/// whole sectors.
pub fn build_u32_table(entries: &[u32]) -> Vec<u8> {
    let len = (entries.len() as u64 * 4).next_multiple_of(SECTOR) as usize;
    let mut b = Vec::with_capacity(len);
    for e in entries {
        b.extend_from_slice(&e.to_le_bytes());
    }
    b.resize(len, 0);
    b
}

/// The grain marker in front of a compressed grain: the grain's first virtual sector
/// and the length of the compressed data that follows.
pub fn build_grain_marker(lba: u64, size: u32) -> [u8; GRAIN_MARKER_BYTES] {
    let mut b = [0u8; GRAIN_MARKER_BYTES];
    b[0..8].copy_from_slice(&lba.to_le_bytes());
    b[8..12].copy_from_slice(&size.to_le_bytes());
    b
}

/// A metadata marker sector (size 0 tells it from a grain marker): `num_sectors` of
/// metadata of type `kind` (grain table, grain directory, footer) follow it; the
/// end-of-stream marker is `(0, MARKER_EOS)`.
pub fn build_metadata_marker(num_sectors: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut b = [0u8; SECTOR as usize];
    b[0..8].copy_from_slice(&num_sectors.to_le_bytes());
    b[12..METADATA_MARKER_BYTES].copy_from_slice(&kind.to_le_bytes());
    b
}

/// The last three sectors of a streamOptimized extent: a footer marker, the header
/// copy that holds the real grain directory offset, and the end-of-stream marker.
pub fn build_stream_footer(h: &VmdkSparseHeader) -> [u8; FOOTER_BYTES] {
    let mut b = [0u8; FOOTER_BYTES];
    let s = SECTOR as usize;
    b[..s].copy_from_slice(&build_metadata_marker(1, MARKER_FOOTER));
    b[s..2 * s].copy_from_slice(&build_sparse_header(h));
    b[2 * s..].copy_from_slice(&build_metadata_marker(0, MARKER_EOS));
    b
}

#[cfg(test)]
mod tests {
    use super::super::descriptor::{parse_descriptor, VmdkExtentType};
    use super::super::grain_table::parse_u32_table;
    use super::super::marker::{
        parse_footer, parse_grain_marker, parse_metadata_marker, MARKER_GD, MARKER_GT,
    };
    use super::super::sparse_header::{
        parse_sparse_header, COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
        FLAG_REDUNDANT_GT, GD_AT_END,
    };
    use super::*;

    fn header(stream: bool) -> VmdkSparseHeader {
        VmdkSparseHeader {
            version: if stream { 3 } else { 1 },
            flags: if stream {
                FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
            } else {
                FLAG_NEWLINE_TEST | FLAG_REDUNDANT_GT
            },
            capacity_sectors: 217_147,
            grain_sectors: 128,
            descriptor_offset_sectors: 1,
            descriptor_size_sectors: 20,
            gtes_per_gt: 512,
            rgd_offset_sectors: if stream { 0 } else { 21 },
            gd_offset_sectors: if stream { GD_AT_END } else { 30 },
            overhead_sectors: 128,
            unclean_shutdown: false,
            compress_algorithm: if stream { COMPRESSION_DEFLATE } else { 0 },
        }
    }

    #[test]
    fn sparse_header_round_trips() {
        for stream in [false, true] {
            let h = header(stream);
            assert_eq!(parse_sparse_header(&build_sparse_header(&h), 0).unwrap(), h);
        }
    }

    #[test]
    fn descriptor_round_trips() {
        let d = VmdkDescriptorFields {
            cid: 0x1234abcd,
            create_type: "streamOptimized".into(),
            capacity_sectors: 217_147,
            file_name: "web \"01\".vmdk".into(),
            ddb: vec![
                ("virtualHWVersion".into(), "4".into()),
                ("adapterType".into(), "lsilogic".into()),
            ],
        };
        let text = build_descriptor(&d);
        let p = parse_descriptor(text.as_bytes(), 512).unwrap();
        assert_eq!(p.cid, Some(0x1234abcd));
        assert_eq!(p.parent_cid, None);
        assert_eq!(p.create_type, "streamOptimized");
        assert_eq!(p.extents.len(), 1);
        assert_eq!(p.extents[0].sectors, 217_147);
        assert_eq!(p.extents[0].kind, VmdkExtentType::Sparse);
        assert_eq!(p.extents[0].file.as_deref(), Some("web _01_.vmdk"));
        assert_eq!(p.ddb("virtualHWVersion"), Some("4"));
        assert_eq!(p.ddb("adapterType"), Some("lsilogic"));
    }

    #[test]
    fn tables_round_trip() {
        let b = build_u32_table(&[0, 128, 7]);
        assert_eq!(b.len(), 512);
        assert_eq!(
            parse_u32_table(&b, 128, "t", 0).unwrap()[..4],
            [0, 128, 7, 0]
        );
    }

    #[test]
    fn markers_round_trip() {
        let g = build_grain_marker(0x80, 1234);
        let p = parse_grain_marker(&g, 0x10000, 2 * 65536).unwrap();
        assert_eq!((p.lba, p.size), (0x80, 1234));
        for kind in [MARKER_GT, MARKER_GD] {
            let m = parse_metadata_marker(&build_metadata_marker(4, kind), 0).unwrap();
            assert_eq!((m.num_sectors, m.size, m.kind), (4, 0, kind));
        }
    }

    #[test]
    fn stream_footer_round_trips() {
        let mut h = header(true);
        h.gd_offset_sectors = 4242;
        let f = build_stream_footer(&h);
        assert_eq!(parse_footer(&f, 0x100000).unwrap(), h);
        // The end-of-stream marker is one all-zero sector.
        assert!(f[1024..].iter().all(|&b| b == 0));
    }
}
