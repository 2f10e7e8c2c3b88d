//! The qcow2 header (qcow2.txt, "Header"), versions 2 and 3, with its feature bits,
//! its header extensions ([`super::extensions`]) and the backing file name: all of
//! it lives in the first cluster, so [`parse_header`] takes that cluster and returns
//! everything a reader needs to find the L1 table and the parent.
//!
//! What is refused, and why:
//! - encryption (`crypt_method` ≠ 0): we cannot decrypt, and reading ciphertext as
//!   guest data would be silently wrong → `Unsupported`;
//! - an incompatible feature bit we do not know: the spec says a reader must fail,
//!   and we name the bit (and its name from the feature name table when present);
//! - `cluster_bits` > 21: QEMU's own limit (2 MiB clusters), which also bounds every
//!   per-cluster buffer we allocate;
//! - anything whose fields contradict each other (L1 too small for the disk,
//!   unaligned tables, compression type vs. its feature bit, ...) → `Corrupt`.
//!
//! The dirty and corrupt bits are accepted: a reader never uses refcounts, and QEMU
//! itself opens corrupt images read-only. The caller turns them into warnings.

use nom::bytes::complete::take;
use nom::number::complete::{be_u32, be_u64, u8 as be_u8};

use super::extensions::{parse_extensions, Qcow2Extensions, Qcow2FeatureType};
use super::QCOW2_MAGIC;
use crate::bytes;
use crate::error::{ParseError, Result};
use crate::limits::{
    MAX_QCOW2_BACKING_NAME_BYTES, MAX_QCOW2_SNAPSHOTS, MAX_TABLE_BYTES, MAX_VIRTUAL_SIZE,
};

const WHAT: &str = "qcow2 header";

/// Length of the version 2 header (and of the common part of every version).
pub const V2_HEADER_LEN: usize = 72;
/// Smallest version 3 header (up to and including `header_length`).
pub const V3_MIN_HEADER_LEN: usize = 104;

/// Incompatible feature bit 0: the image was not closed cleanly.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: QEMU found corruption and stopped writing.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest clusters live in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` (byte 104) is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: 128-bit L2 entries with 32 subclusters.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible bit this reader understands.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature bit 0: lazy refcounts (irrelevant to reading).
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: the external data file is a consistent raw image on its own.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Compression {
    /// Raw deflate (zlib without its header), QEMU's default.
    Zlib,
    /// A zstd frame.
    Zstd,
}

impl Qcow2Compression {
    /// The name QEMU uses (`-o compression_type=`).
    pub fn name(self) -> &'static str {
        match self {
            Qcow2Compression::Zlib => "zlib",
            Qcow2Compression::Zstd => "zstd",
        }
    }
}

/// The header as stored, with the spec's field names (hex offsets in comments).
/// Version 3 fields are zero for version 2, as the spec says absent fields read.
struct RawHeader {
    magic: [u8; 4],               // 0x00
    version: u32,                 // 0x04
    backing_file_offset: u64,     // 0x08
    backing_file_size: u32,       // 0x10
    cluster_bits: u32,            // 0x14
    size: u64,                    // 0x18
    crypt_method: u32,            // 0x20
    l1_size: u32,                 // 0x24
    l1_table_offset: u64,         // 0x28
    refcount_table_offset: u64,   // 0x30
    refcount_table_clusters: u32, // 0x38
    nb_snapshots: u32,            // 0x3c
    snapshots_offset: u64,        // 0x40
    incompatible_features: u64,   // 0x48 (v3)
    compatible_features: u64,     // 0x50 (v3)
    autoclear_features: u64,      // 0x58 (v3)
    refcount_order: u32,          // 0x60 (v3; 4 for v2)
    header_length: u32,           // 0x64 (v3; 72 for v2)
    compression_type: u8,         // 0x68 (v3, present when header_length > 104)
}

/// A validated qcow2 header with its extensions and backing file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes (≤ `MAX_VIRTUAL_SIZE`).
    pub virtual_size: u64,
    /// Entries in the active L1 table (enough for `virtual_size`, within the cap).
    pub l1_size: u32,
    /// Cluster-aligned offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Cluster-aligned offset of the refcount table (never read; shown by inspect).
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots (≤ `MAX_QCOW2_SNAPSHOTS`).
    pub nb_snapshots: u32,
    /// Cluster-aligned offset of the snapshot table (meaningful when `nb_snapshots` > 0).
    pub snapshots_offset: u64,
    /// Incompatible feature bits (only known ones: see [`INCOMPAT_KNOWN`]).
    pub incompatible_features: u64,
    /// Compatible feature bits (unknown ones allowed).
    pub compatible_features: u64,
    /// Autoclear feature bits (unknown ones allowed).
    pub autoclear_features: u64,
    /// Refcount width is `1 << refcount_order` bits (0..=6).
    pub refcount_order: u32,
    /// Bytes of the header proper (72 for v2).
    pub header_length: u32,
    /// Compression of compressed clusters.
    pub compression: Qcow2Compression,
    /// Backing file name as stored (absolute or relative to the image), if any.
    pub backing_file: Option<String>,
    /// Header extensions.
    pub extensions: Qcow2Extensions,
}

impl Qcow2Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
    /// The image was not closed cleanly (refcounts may be stale).
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    /// QEMU marked the image corrupt.
    pub fn is_corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }
    /// Guest clusters live in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }
    /// The external data file is a raw image of the whole disk.
    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0
    }
    /// L2 entries are 128 bits with 32 subclusters per cluster.
    pub fn has_extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// Bytes per L2 entry (8, or 16 with extended L2).
    pub fn l2_entry_size(&self) -> u64 {
        if self.has_extended_l2() {
            16
        } else {
            8
        }
    }
    /// log2 of the number of entries in one L2 table.
    pub fn l2_bits(&self) -> u32 {
        // OK: cluster_bits ≥ 9 (≥ 14 with extended L2), so this never underflows.
        self.cluster_bits - if self.has_extended_l2() { 4 } else { 3 }
    }
    /// L1 entries needed to map `virtual_size`.
    pub fn l1_entries_needed(&self) -> u64 {
        l1_entries_needed(self.virtual_size, self.cluster_bits, self.l2_bits())
    }
    /// Names of the features in use, for `inspect`.
    pub fn feature_list(&self) -> Vec<String> {
        let mut out = Vec::new();
        let named =
            |bits: u64, kind: Qcow2FeatureType, known: &[(u64, &str)], out: &mut Vec<String>| {
                for bit in 0..64u32 {
                    let mask = 1u64 << bit;
                    if bits & mask == 0 {
                        continue;
                    }
                    let name = known
                        .iter()
                        .find(|(m, _)| *m == mask)
                        .map(|(_, n)| n.to_string())
                        .or_else(|| self.extensions.feature_name(kind, bit))
                        .unwrap_or_else(|| format!("{kind:?} bit {bit}").to_lowercase());
                    out.push(name);
                }
            };
        named(
            self.incompatible_features,
            Qcow2FeatureType::Incompatible,
            &[
                (INCOMPAT_DIRTY, "dirty"),
                (INCOMPAT_CORRUPT, "corrupt"),
                (INCOMPAT_DATA_FILE, "external data file"),
                (INCOMPAT_COMPRESSION, "compression type"),
                (INCOMPAT_EXTL2, "extended L2"),
            ],
            &mut out,
        );
        named(
            self.compatible_features,
            Qcow2FeatureType::Compatible,
            &[(COMPAT_LAZY_REFCOUNTS, "lazy refcounts")],
            &mut out,
        );
        named(
            self.autoclear_features,
            Qcow2FeatureType::Autoclear,
            &[
                (AUTOCLEAR_BITMAPS, "bitmaps"),
                (AUTOCLEAR_DATA_FILE_RAW, "raw external data"),
            ],
            &mut out,
        );
        out
    }
}

/// L1 entries that map `size` bytes: `ceil(size / (cluster_size * l2_entries))`
/// without overflow (`l2_bits` is log2 of the entries per L2 table).
pub fn l1_entries_needed(size: u64, cluster_bits: u32, l2_bits: u32) -> u64 {
    let shift = cluster_bits + l2_bits; // ≤ 21 + 18 = 39
    let span = 1u64 << shift;
    size / span + u64::from(size % span != 0)
}

fn parse_raw(buf: &[u8]) -> Result<RawHeader> {
    bytes::need(buf, V2_HEADER_LEN, WHAT, 0)?;
    let common = (
        take(4usize),
        be_u32,
        be_u64,
        be_u32,
        be_u32,
        be_u64,
        be_u32,
        be_u32,
        be_u64,
        be_u64,
        be_u32,
        be_u32,
        be_u64,
    );
    let (
        magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = bytes::run(common, &buf[..V2_HEADER_LEN], WHAT, 0)?;
    let mut raw = RawHeader {
        magic: [0; 4],
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V2_HEADER_LEN as u32,
        compression_type: 0,
    };
    raw.magic.copy_from_slice(magic);
    if version >= 3 {
        let v3 = bytes::slice(
            buf,
            V2_HEADER_LEN,
            V3_MIN_HEADER_LEN - V2_HEADER_LEN,
            WHAT,
            0,
        )?;
        let (incompat, compat, autoclear, refcount_order, header_length) = bytes::run(
            (be_u64, be_u64, be_u64, be_u32, be_u32),
            v3,
            WHAT,
            V2_HEADER_LEN as u64,
        )?;
        raw.incompatible_features = incompat;
        raw.compatible_features = compat;
        raw.autoclear_features = autoclear;
        raw.refcount_order = refcount_order;
        raw.header_length = header_length;
        // compression_type is present only when the header is long enough to hold it.
        if header_length as usize > V3_MIN_HEADER_LEN {
            let b = bytes::slice(buf, V3_MIN_HEADER_LEN, 1, WHAT, 0)?;
            raw.compression_type = bytes::run(be_u8::<_, nom::error::Error<&[u8]>>, b, WHAT, 0x68)?;
        }
    }
    Ok(raw)
}

/// From the first bytes of a file (at least the first 24), the size of the first
/// cluster, which [`parse_header`] wants whole. Checks magic, version and
/// `cluster_bits` so the caller never reads a buffer sized by an unchecked value.
pub fn header_cluster_size(head: &[u8]) -> Result<u64> {
    bytes::need(head, 24, WHAT, 0)?;
    let (magic, version, _, _, cluster_bits) = bytes::run(
        (take(4usize), be_u32, be_u64, be_u32, be_u32),
        &head[..24],
        WHAT,
        0,
    )?;
    check_magic(magic)?;
    check_version(version)?;
    check_cluster_bits(cluster_bits)?;
    Ok(1u64 << cluster_bits)
}

fn check_magic(magic: &[u8]) -> Result<()> {
    if magic != QCOW2_MAGIC {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: 0,
            expected: bytes::show_magic(&QCOW2_MAGIC),
            found: bytes::show_magic(magic),
        });
    }
    Ok(())
}

fn check_version(version: u32) -> Result<()> {
    if version != 2 && version != 3 {
        return Err(ParseError::unsupported(
            WHAT,
            0x04,
            format!("version {version} (only 2 and 3 exist)"),
        ));
    }
    Ok(())
}

fn check_cluster_bits(cluster_bits: u32) -> Result<()> {
    if cluster_bits < 9 {
        return Err(ParseError::corrupt(
            WHAT,
            0x14,
            format!("cluster_bits {cluster_bits} is below the minimum of 9 (512-byte clusters)"),
        ));
    }
    if cluster_bits > 21 {
        return Err(ParseError::unsupported(
            WHAT,
            0x14,
            format!("cluster_bits {cluster_bits}: clusters above 2 MiB (QEMU's limit too)"),
        ));
    }
    Ok(())
}

fn aligned(offset: u64, cluster_bits: u32) -> bool {
    offset & ((1u64 << cluster_bits) - 1) == 0
}

/// Parses and validates the header, its extensions and the backing file name from
/// `first_cluster`: the first `cluster_size` bytes of the file (see
/// [`header_cluster_size`]), or the whole file when it is shorter.
pub fn parse_header(first_cluster: &[u8]) -> Result<Qcow2Header> {
    let raw = parse_raw(first_cluster)?;
    check_magic(&raw.magic)?;
    check_version(raw.version)?;
    check_cluster_bits(raw.cluster_bits)?;
    let cluster_bits = raw.cluster_bits;
    let cluster_size = 1u64 << cluster_bits;

    if raw.version >= 3 {
        let hl = raw.header_length;
        if (hl as usize) < V3_MIN_HEADER_LEN {
            return Err(ParseError::corrupt(
                WHAT,
                0x64,
                format!("header_length {hl} is below the version 3 minimum of 104"),
            ));
        }
        if u64::from(hl) > cluster_size {
            return Err(ParseError::corrupt(
                WHAT,
                0x64,
                format!("header_length {hl} exceeds the cluster size {cluster_size}"),
            ));
        }
        bytes::need(first_cluster, hl as usize, WHAT, 0)?;
    }

    ParseError::check_limit(WHAT, 0x18, raw.size, MAX_VIRTUAL_SIZE, "MAX_VIRTUAL_SIZE")?;
    if raw.crypt_method != 0 {
        let name = match raw.crypt_method {
            1 => "AES".to_string(),
            2 => "LUKS".to_string(),
            n => format!("method {n}"),
        };
        return Err(ParseError::unsupported(
            WHAT,
            0x20,
            format!("encrypted image ({name} encryption)"),
        ));
    }
    if raw.refcount_order > 6 {
        return Err(ParseError::corrupt(
            WHAT,
            0x60,
            format!(
                "refcount_order {} exceeds 6 (64-bit refcounts)",
                raw.refcount_order
            ),
        ));
    }

    // Backing file name: inside the first cluster, at most 1023 bytes (spec).
    let backing_file = if raw.backing_file_offset != 0 {
        let off = raw.backing_file_offset;
        let len = u64::from(raw.backing_file_size);
        ParseError::check_limit(
            WHAT,
            0x10,
            len,
            MAX_QCOW2_BACKING_NAME_BYTES,
            "MAX_QCOW2_BACKING_NAME_BYTES",
        )?;
        let end = off.checked_add(len).filter(|&e| e <= cluster_size);
        let Some(end) = end else {
            return Err(ParseError::corrupt(
                WHAT,
                0x08,
                format!(
                    "backing file name ({len} bytes at offset {off:#x}) extends past the first cluster ({cluster_size} bytes)"
                ),
            ));
        };
        // OK: end ≤ cluster_size ≤ 2 MiB fits usize.
        let name = bytes::slice(
            first_cluster,
            off as usize,
            (end - off) as usize,
            "qcow2 backing file name",
            0,
        )?;
        if name.is_empty() {
            None
        } else {
            Some(String::from_utf8(name.to_vec()).map_err(|_| {
                ParseError::unsupported(
                    "qcow2 backing file name",
                    off,
                    format!("name is not UTF-8: {}", bytes::hex(name)),
                )
            })?)
        }
    } else {
        None
    };

    // Header extensions: from the end of the header to the backing file name (or
    // the end of the first cluster).
    let ext_start = u64::from(raw.header_length);
    let ext_end = if raw.backing_file_offset != 0 {
        raw.backing_file_offset
    } else {
        cluster_size
    }
    .min(first_cluster.len() as u64);
    let extensions = if ext_start < ext_end {
        // OK: both ≤ first_cluster.len().
        parse_extensions(
            &first_cluster[ext_start as usize..ext_end as usize],
            ext_start,
        )?
    } else {
        Qcow2Extensions::default()
    };

    let unknown = raw.incompatible_features & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let names: Vec<String> = (0..64u32)
            .filter(|b| unknown & (1u64 << b) != 0)
            .map(
                |b| match extensions.feature_name(Qcow2FeatureType::Incompatible, b) {
                    Some(n) => format!("bit {b} ({n})"),
                    None => format!("bit {b}"),
                },
            )
            .collect();
        return Err(ParseError::unsupported(
            WHAT,
            0x48,
            format!("unknown incompatible feature {}", names.join(", ")),
        ));
    }

    let compression = match raw.compression_type {
        0 => Qcow2Compression::Zlib,
        1 => Qcow2Compression::Zstd,
        n => {
            return Err(ParseError::unsupported(
                WHAT,
                0x68,
                format!("compression type {n} (known: 0 zlib, 1 zstd)"),
            ))
        }
    };
    let bit_set = raw.incompatible_features & INCOMPAT_COMPRESSION != 0;
    if bit_set != (compression != Qcow2Compression::Zlib) {
        return Err(ParseError::corrupt(
            WHAT,
            0x48,
            format!(
                "compression type feature bit is {} but compression_type is {}",
                if bit_set { "set" } else { "clear" },
                raw.compression_type
            ),
        ));
    }

    if raw.incompatible_features & INCOMPAT_EXTL2 != 0 && cluster_bits < 14 {
        return Err(ParseError::corrupt(
            WHAT,
            0x14,
            format!("extended L2 entries need clusters of at least 16 KiB, cluster_bits is {cluster_bits}"),
        ));
    }

    let has_data_file = raw.incompatible_features & INCOMPAT_DATA_FILE != 0;
    if has_data_file && extensions.data_file.is_none() {
        return Err(ParseError::unsupported(
            WHAT,
            0x48,
            "external data file bit set but no data file name extension (QEMU needs a data-file= option here)",
        ));
    }
    if !has_data_file && raw.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0 {
        return Err(ParseError::corrupt(
            WHAT,
            0x58,
            "raw external data bit set without an external data file",
        ));
    }
    if let Some(at) = extensions.encryption_at {
        return Err(ParseError::unsupported(
            "qcow2 header extension",
            at,
            "full disk encryption header (encrypted image)",
        ));
    }

    // L1 table: big enough for the disk, within the cap, aligned, not on the header.
    let l2_bits = cluster_bits
        - if raw.incompatible_features & INCOMPAT_EXTL2 != 0 {
            4
        } else {
            3
        };
    let l1_bytes = u64::from(raw.l1_size) * 8;
    ParseError::check_limit(WHAT, 0x24, l1_bytes, MAX_TABLE_BYTES, "MAX_TABLE_BYTES")?;
    let needed = l1_entries_needed(raw.size, cluster_bits, l2_bits);
    if u64::from(raw.l1_size) < needed {
        return Err(ParseError::corrupt(
            WHAT,
            0x24,
            format!(
                "l1_size {} is too small for a virtual size of {} bytes (needs {needed} entries)",
                raw.l1_size, raw.size
            ),
        ));
    }
    if !aligned(raw.l1_table_offset, cluster_bits) {
        return Err(ParseError::corrupt(
            WHAT,
            0x28,
            format!(
                "l1_table_offset {:#x} is not aligned to the cluster size {cluster_size}",
                raw.l1_table_offset
            ),
        ));
    }
    if raw.l1_size > 0 && raw.l1_table_offset == 0 {
        return Err(ParseError::corrupt(
            WHAT,
            0x28,
            "l1_table_offset is 0: the L1 table would overlap the header",
        ));
    }
    if !aligned(raw.refcount_table_offset, cluster_bits) {
        return Err(ParseError::corrupt(
            WHAT,
            0x30,
            format!(
                "refcount_table_offset {:#x} is not aligned to the cluster size {cluster_size}",
                raw.refcount_table_offset
            ),
        ));
    }
    ParseError::check_limit(
        WHAT,
        0x3c,
        u64::from(raw.nb_snapshots),
        u64::from(MAX_QCOW2_SNAPSHOTS),
        "MAX_QCOW2_SNAPSHOTS",
    )?;
    if raw.nb_snapshots > 0 && !aligned(raw.snapshots_offset, cluster_bits) {
        return Err(ParseError::corrupt(
            WHAT,
            0x40,
            format!(
                "snapshots_offset {:#x} is not aligned to the cluster size {cluster_size}",
                raw.snapshots_offset
            ),
        ));
    }

    Ok(Qcow2Header {
        version: raw.version,
        cluster_bits,
        virtual_size: raw.size,
        l1_size: raw.l1_size,
        l1_table_offset: raw.l1_table_offset,
        refcount_table_offset: raw.refcount_table_offset,
        refcount_table_clusters: raw.refcount_table_clusters,
        nb_snapshots: raw.nb_snapshots,
        snapshots_offset: raw.snapshots_offset,
        incompatible_features: raw.incompatible_features,
        compatible_features: raw.compatible_features,
        autoclear_features: raw.autoclear_features,
        refcount_order: raw.refcount_order,
        header_length: raw.header_length,
        compression,
        backing_file,
        extensions,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::extensions::{EXT_BACKING_FORMAT, EXT_CRYPTO, EXT_FEATURE_TABLE};
    use super::*;

    /// A synthetic header, field by field, so a test can change exactly one.
    #[derive(Clone)]
    pub(crate) struct H {
        pub magic: [u8; 4],
        pub version: u32,
        pub backing_file_offset: u64,
        pub backing_file_size: u32,
        pub cluster_bits: u32,
        pub size: u64,
        pub crypt_method: u32,
        pub l1_size: u32,
        pub l1_table_offset: u64,
        pub refcount_table_offset: u64,
        pub refcount_table_clusters: u32,
        pub nb_snapshots: u32,
        pub snapshots_offset: u64,
        pub incompatible: u64,
        pub compatible: u64,
        pub autoclear: u64,
        pub refcount_order: u32,
        pub header_length: u32,
        pub compression_type: u8,
        /// (type, data) records, then the end marker.
        pub extensions: Vec<(u32, Vec<u8>)>,
        pub backing: Vec<u8>,
    }

    pub(crate) fn feature_entry(kind: u8, bit: u8, name: &str) -> Vec<u8> {
        let mut e = vec![kind, bit];
        e.extend_from_slice(name.as_bytes());
        e.resize(48, 0);
        e
    }

    impl H {
        /// v3, 64 KiB clusters, 1 GiB, one snapshot, backing file "base.qcow2" (qcow2).
        pub(crate) fn v3() -> H {
            H {
                magic: QCOW2_MAGIC,
                version: 3,
                backing_file_offset: 0, // filled by build()
                backing_file_size: 10,
                cluster_bits: 16,
                size: 1 << 30,
                crypt_method: 0,
                l1_size: 2,
                l1_table_offset: 0x3_0000,
                refcount_table_offset: 0x1_0000,
                refcount_table_clusters: 1,
                nb_snapshots: 1,
                snapshots_offset: 0x5_0000,
                incompatible: 0,
                compatible: COMPAT_LAZY_REFCOUNTS,
                autoclear: 0,
                refcount_order: 4,
                header_length: 112,
                compression_type: 0,
                extensions: vec![
                    (EXT_BACKING_FORMAT, b"qcow2".to_vec()),
                    (EXT_FEATURE_TABLE, feature_entry(0, 5, "future-feature")),
                ],
                backing: b"base.qcow2".to_vec(),
            }
        }

        pub(crate) fn v2() -> H {
            H {
                version: 2,
                header_length: 72,
                refcount_order: 0, // not stored in v2
                compatible: 0,
                ..H::v3()
            }
        }

        /// The bytes; the backing name goes right after the extensions unless
        /// `backing_file_offset` was set explicitly.
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&self.magic);
            b.extend_from_slice(&self.version.to_be_bytes());
            b.extend_from_slice(&0u64.to_be_bytes());
            b.extend_from_slice(&self.backing_file_size.to_be_bytes());
            b.extend_from_slice(&self.cluster_bits.to_be_bytes());
            b.extend_from_slice(&self.size.to_be_bytes());
            b.extend_from_slice(&self.crypt_method.to_be_bytes());
            b.extend_from_slice(&self.l1_size.to_be_bytes());
            b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
            b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
            b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
            b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
            b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
            if self.version >= 3 {
                b.extend_from_slice(&self.incompatible.to_be_bytes());
                b.extend_from_slice(&self.compatible.to_be_bytes());
                b.extend_from_slice(&self.autoclear.to_be_bytes());
                b.extend_from_slice(&self.refcount_order.to_be_bytes());
                b.extend_from_slice(&self.header_length.to_be_bytes());
                b.push(self.compression_type);
                b.resize(112, 0);
            }
            for (t, d) in &self.extensions {
                b.extend_from_slice(&t.to_be_bytes());
                b.extend_from_slice(&(d.len() as u32).to_be_bytes());
                b.extend_from_slice(d);
                b.resize(b.len().div_ceil(8) * 8, 0);
            }
            b.extend_from_slice(&[0; 8]);
            if !self.backing.is_empty() {
                let off = if self.backing_file_offset != 0 {
                    self.backing_file_offset
                } else {
                    b.len() as u64
                };
                b[8..16].copy_from_slice(&off.to_be_bytes());
                if off as usize + self.backing.len() <= 4096 {
                    b.resize(b.len().max(off as usize), 0);
                    b.truncate(off as usize);
                    b.extend_from_slice(&self.backing);
                }
            }
            b
        }

        fn parse(&self) -> Result<Qcow2Header> {
            parse_header(&self.build())
        }
    }

    fn corrupt_at(r: Result<Qcow2Header>, offset: u64) -> String {
        match r {
            Err(e @ ParseError::Corrupt { .. }) => {
                assert_eq!(e.offset(), offset, "{e}");
                e.to_string()
            }
            other => panic!("expected Corrupt at {offset:#x}, got {other:?}"),
        }
    }

    fn unsupported(r: Result<Qcow2Header>) -> String {
        match r {
            Err(e @ ParseError::Unsupported { .. }) => e.to_string(),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    fn limit(r: Result<Qcow2Header>, name: &str) {
        match r {
            Err(ParseError::LimitExceeded { name: n, .. }) => assert_eq!(n, name),
            other => panic!("expected LimitExceeded({name}), got {other:?}"),
        }
    }

    #[test]
    fn parses_v3_with_extensions_and_backing() {
        let h = H::v3().parse().unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.virtual_size, 1 << 30);
        assert_eq!(h.l1_entries_needed(), 2);
        assert_eq!(h.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(h.extensions.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(
            h.extensions
                .feature_name(Qcow2FeatureType::Incompatible, 5)
                .as_deref(),
            Some("future-feature")
        );
        assert_eq!(h.compression, Qcow2Compression::Zlib);
        assert_eq!(h.feature_list(), vec!["lazy refcounts".to_string()]);
        assert_eq!(header_cluster_size(&H::v3().build()).unwrap(), 65536);
    }

    #[test]
    fn parses_v2() {
        let h = H::v2().parse().unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.refcount_order, 4);
        assert_eq!(h.header_length, 72);
        assert_eq!(h.backing_file.as_deref(), Some("base.qcow2"));
        assert_eq!(h.extensions.backing_format.as_deref(), Some("qcow2"));
    }

    #[test]
    fn accepts_dirty_corrupt_zstd_extl2_and_data_file() {
        let mut h = H::v3();
        h.incompatible = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
        h.compression_type = 1;
        h.l1_size = 4; // 16-byte entries: half the reach per L2 table
        let p = h.parse().unwrap();
        assert!(p.is_dirty() && p.is_corrupt() && p.has_extended_l2());
        assert_eq!(p.compression, Qcow2Compression::Zstd);
        assert_eq!(p.l2_bits(), 12);
        let mut h = H::v3();
        h.backing.clear();
        h.incompatible = INCOMPAT_DATA_FILE;
        h.autoclear = AUTOCLEAR_DATA_FILE_RAW;
        h.extensions
            .push((EXT_DATA_FILE_TYPE, b"data.raw".to_vec()));
        let p = h.parse().unwrap();
        assert_eq!(p.extensions.data_file.as_deref(), Some("data.raw"));
        assert!(p.has_data_file() && p.data_file_raw());
        assert_eq!(p.backing_file, None);
    }

    const EXT_DATA_FILE_TYPE: u32 = super::super::extensions::EXT_DATA_FILE;

    #[test]
    fn rejects_bad_magic() {
        let mut h = H::v3();
        h.magic = *b"QFI\xfa";
        assert!(matches!(
            h.parse(),
            Err(ParseError::BadMagic { offset: 0, .. })
        ));
        assert!(header_cluster_size(&h.build()).is_err());
    }

    #[test]
    fn rejects_unknown_version() {
        let mut h = H::v3();
        h.version = 4;
        assert!(unsupported(h.parse()).contains("version 4"));
    }

    #[test]
    fn rejects_cluster_bits_out_of_range() {
        let mut h = H::v3();
        h.cluster_bits = 8;
        corrupt_at(h.parse(), 0x14);
        h.cluster_bits = 22;
        unsupported(h.parse());
        assert!(header_cluster_size(&h.build()).is_err());
    }

    #[test]
    fn rejects_short_v3_header_length() {
        let mut h = H::v3();
        h.header_length = 100;
        corrupt_at(h.parse(), 0x64);
    }

    #[test]
    fn rejects_header_length_beyond_cluster() {
        let mut h = H::v3();
        h.header_length = 0x2_0000;
        corrupt_at(h.parse(), 0x64);
    }

    #[test]
    fn rejects_virtual_size_over_cap() {
        let mut h = H::v3();
        h.size = MAX_VIRTUAL_SIZE + 1;
        limit(h.parse(), "MAX_VIRTUAL_SIZE");
    }

    #[test]
    fn rejects_encryption() {
        let mut h = H::v3();
        h.crypt_method = 2;
        assert!(unsupported(h.parse()).contains("LUKS"));
    }

    #[test]
    fn rejects_refcount_order_over_6() {
        let mut h = H::v3();
        h.refcount_order = 7;
        corrupt_at(h.parse(), 0x60);
    }

    #[test]
    fn rejects_backing_name_over_1023_bytes() {
        let mut h = H::v3();
        h.backing_file_size = 1024;
        limit(h.parse(), "MAX_QCOW2_BACKING_NAME_BYTES");
    }

    #[test]
    fn rejects_backing_name_past_first_cluster() {
        let mut h = H::v3();
        h.backing_file_offset = 0xfffa; // 10 bytes from here cross 64 KiB
        corrupt_at(h.parse(), 0x08);
    }

    #[test]
    fn rejects_non_utf8_backing_name() {
        let mut h = H::v3();
        h.backing = b"base\xff.qcow".to_vec();
        unsupported(h.parse());
    }

    #[test]
    fn rejects_unknown_incompatible_bit_by_name() {
        let mut h = H::v3();
        h.incompatible = 1 << 5;
        let msg = unsupported(h.parse());
        assert!(msg.contains("bit 5 (future-feature)"), "{msg}");
        h.incompatible = 1 << 40;
        assert!(unsupported(h.parse()).contains("bit 40"));
    }

    #[test]
    fn rejects_compression_bit_without_type() {
        let mut h = H::v3();
        h.incompatible = INCOMPAT_COMPRESSION;
        corrupt_at(h.parse(), 0x48);
    }

    #[test]
    fn rejects_compression_type_without_bit() {
        let mut h = H::v3();
        h.compression_type = 1;
        corrupt_at(h.parse(), 0x48);
    }

    #[test]
    fn rejects_unknown_compression_type() {
        let mut h = H::v3();
        h.compression_type = 2;
        assert!(unsupported(h.parse()).contains("compression type 2"));
    }

    #[test]
    fn rejects_extended_l2_with_small_clusters() {
        let mut h = H::v3();
        h.incompatible = INCOMPAT_EXTL2;
        h.l1_size = 4;
        assert!(h.parse().is_ok());
        h.cluster_bits = 13;
        corrupt_at(h.parse(), 0x14);
    }

    #[test]
    fn rejects_data_file_bit_without_name() {
        let mut h = H::v3();
        h.incompatible = INCOMPAT_DATA_FILE;
        assert!(unsupported(h.parse()).contains("data file"));
    }

    #[test]
    fn rejects_raw_data_bit_without_data_file() {
        let mut h = H::v3();
        h.autoclear = AUTOCLEAR_DATA_FILE_RAW;
        corrupt_at(h.parse(), 0x58);
    }

    #[test]
    fn rejects_encryption_header_extension() {
        let mut h = H::v3();
        h.extensions[0].0 = EXT_CRYPTO;
        assert!(unsupported(h.parse()).contains("encryption"));
    }

    #[test]
    fn rejects_extension_running_past_its_area() {
        let mut b = H::v3().build();
        // Length of the first extension (at 112): far more than the area holds.
        b[116..120].copy_from_slice(&4000u32.to_be_bytes());
        let e = parse_header(&b).unwrap_err();
        assert!(matches!(e, ParseError::Corrupt { offset: 112, .. }), "{e}");
    }

    #[test]
    fn rejects_l1_table_over_cap() {
        let mut h = H::v3();
        h.l1_size = (MAX_TABLE_BYTES / 8 + 1) as u32;
        limit(h.parse(), "MAX_TABLE_BYTES");
    }

    #[test]
    fn rejects_l1_too_small_for_size() {
        let mut h = H::v3();
        h.l1_size = 1;
        corrupt_at(h.parse(), 0x24);
    }

    #[test]
    fn rejects_unaligned_l1_offset() {
        let mut h = H::v3();
        h.l1_table_offset = 0x3_0200;
        corrupt_at(h.parse(), 0x28);
    }

    #[test]
    fn rejects_l1_on_the_header() {
        let mut h = H::v3();
        h.l1_table_offset = 0;
        corrupt_at(h.parse(), 0x28);
    }

    #[test]
    fn rejects_unaligned_refcount_table() {
        let mut h = H::v3();
        h.refcount_table_offset = 0x1_0008;
        corrupt_at(h.parse(), 0x30);
    }

    #[test]
    fn rejects_too_many_snapshots() {
        let mut h = H::v3();
        h.nb_snapshots = MAX_QCOW2_SNAPSHOTS + 1;
        limit(h.parse(), "MAX_QCOW2_SNAPSHOTS");
    }

    #[test]
    fn rejects_unaligned_snapshot_table() {
        let mut h = H::v3();
        h.snapshots_offset = 0x5_0010;
        corrupt_at(h.parse(), 0x40);
    }

    #[test]
    fn rejects_truncated_header() {
        let b = H::v3().build();
        assert!(matches!(
            parse_header(&b[..80]),
            Err(ParseError::Truncated { .. })
        ));
        assert!(matches!(
            header_cluster_size(&b[..20]),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        for base in [H::v3().build(), H::v2().build()] {
            for n in 0..=base.len() {
                let _ = parse_header(&base[..n]);
                let _ = header_cluster_size(&base[..n]);
            }
            for bit in 0..base.len() * 8 {
                let mut b = base.clone();
                b[bit / 8] ^= 1 << (bit % 8);
                if let Ok(h) = parse_header(&b) {
                    let _ = h.feature_list();
                    let _ = h.l1_entries_needed();
                }
                let _ = header_cluster_size(&b);
            }
        }
    }
}
