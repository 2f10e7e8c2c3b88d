//! Building qcow2 structures for export (qcow2.txt: "Header", "Cluster mapping",
//! "Host cluster management"), the inverse of [`super::header`], [`super::l1`] and
//! [`super::l2`], plus the refcount structures a reader never needs but `qemu-img
//! check` verifies.
//!
//! What we write: version 3, no backing file, no extensions, standard 64-bit L2
//! entries, 16-bit refcounts (order 4, QEMU's default), no compression. Every
//! allocated cluster is referenced exactly once, so every L1 / L2 entry carries the
//! "copied" flag (QEMU's check reports its absence as corruption) and every refcount
//! is 1.

use super::l2::COPIED;
use super::QCOW2_MAGIC;

/// Bytes of the version 3 header we write: 104 plus the compression type byte,
/// padded to a multiple of 8 (as QEMU writes it).
pub const HEADER_BYTES: u32 = 112;
/// log2 of the refcount width in bits: 16-bit refcounts.
pub const REFCOUNT_ORDER: u32 = 4;

/// Header fields a writer chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2HeaderFields {
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
}

/// The first cluster: the header, then an empty extension list (an all-zero end
/// marker), then zeros.
pub fn build_header(f: &Qcow2HeaderFields) -> Vec<u8> {
    let mut b = vec![0u8; 1usize << f.cluster_bits];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(0x00, &QCOW2_MAGIC);
    put(0x04, &3u32.to_be_bytes());
    // 0x08 backing_file_offset, 0x10 backing_file_size: none.
    put(0x14, &f.cluster_bits.to_be_bytes());
    put(0x18, &f.virtual_size.to_be_bytes());
    // 0x20 crypt_method: none.
    put(0x24, &f.l1_size.to_be_bytes());
    put(0x28, &f.l1_table_offset.to_be_bytes());
    put(0x30, &f.refcount_table_offset.to_be_bytes());
    put(0x38, &f.refcount_table_clusters.to_be_bytes());
    // 0x3c nb_snapshots, 0x40 snapshots_offset, 0x48..0x60 feature bits: none.
    put(0x60, &REFCOUNT_ORDER.to_be_bytes());
    put(0x64, &HEADER_BYTES.to_be_bytes());
    // 0x68 compression_type 0 (zlib), padding, then the end-of-extensions marker.
    b
}

/// An L1 entry (pointing at an L2 table) or a standard L2 entry (pointing at a data
/// cluster) for a cluster referenced only from here.
pub fn table_entry(host_offset: u64) -> u64 {
    host_offset | COPIED
}

/// A table of big-endian u64 entries (L1, L2, refcount table), zero padded to `len`.
pub fn build_u64_table(entries: &[u64], len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(len.max(entries.len() * 8));
    for e in entries {
        b.extend_from_slice(&e.to_be_bytes());
    }
    b.resize(len.max(b.len()), 0);
    b
}

/// Refcounts one refcount block holds.
pub fn refcounts_per_block(cluster_bits: u32) -> u64 {
    ((1u64 << cluster_bits) * 8) >> REFCOUNT_ORDER
}

/// How many clusters the refcount table and the refcount blocks take when they are
/// placed after `used` clusters of everything else and must count themselves too:
/// `(table clusters, block clusters)`, the smallest fixed point.
pub fn refcount_layout(used: u64, cluster_bits: u32) -> (u64, u64) {
    let cluster = 1u64 << cluster_bits;
    let per_block = refcounts_per_block(cluster_bits);
    let (mut table, mut blocks) = (0u64, 0u64);
    loop {
        let total = used + table + blocks;
        let need_blocks = total.div_ceil(per_block);
        let need_table = (need_blocks * 8).div_ceil(cluster).max(1);
        if (need_table, need_blocks) == (table, blocks) {
            return (table, blocks);
        }
        // Both only grow, and by less each round: this converges in a few steps.
        table = need_table;
        blocks = need_blocks;
    }
}

/// Refcount block number `index`: a refcount of 1 for every cluster below
/// `total_clusters` that it covers, 0 for the rest.
pub fn build_refcount_block(index: u64, total_clusters: u64, cluster_bits: u32) -> Vec<u8> {
    let per_block = refcounts_per_block(cluster_bits);
    let first = index * per_block;
    let used = total_clusters.saturating_sub(first).min(per_block) as usize;
    let mut b = vec![0u8; 1usize << cluster_bits];
    for e in b.chunks_exact_mut(2).take(used) {
        e.copy_from_slice(&1u16.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::super::header::{l1_entries_needed, parse_header, Qcow2Compression};
    use super::super::l1::parse_l1_table;
    use super::super::l2::{Qcow2L2Entry, Qcow2L2Format};
    use super::*;

    #[test]
    fn header_round_trips() {
        let size = (100 << 20) + 7 * 512;
        let l1_size = l1_entries_needed(size, 16, 13) as u32;
        assert_eq!(l1_size, 1);
        let f = Qcow2HeaderFields {
            cluster_bits: 16,
            virtual_size: size,
            l1_size,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x40000,
            refcount_table_clusters: 1,
        };
        let b = build_header(&f);
        assert_eq!(b.len(), 65536);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_bits, 16);
        assert_eq!(h.virtual_size, size);
        assert_eq!(h.l1_size, 1);
        assert_eq!(h.l1_table_offset, 0x30000);
        assert_eq!(h.refcount_table_offset, 0x40000);
        assert_eq!(h.refcount_table_clusters, 1);
        assert_eq!(h.nb_snapshots, 0);
        assert_eq!(h.incompatible_features, 0);
        assert_eq!(h.refcount_order, REFCOUNT_ORDER);
        assert_eq!(h.header_length, HEADER_BYTES);
        assert_eq!(h.compression, Qcow2Compression::Zlib);
        assert_eq!(h.backing_file, None);
        assert!(!h.has_extended_l2());
    }

    #[test]
    fn tables_round_trip() {
        let l1 = build_u64_table(&[table_entry(0x10000), 0, table_entry(0x50000)], 65536);
        assert_eq!(l1.len(), 65536);
        let t = parse_l1_table(&l1, 0x20000, 3, 16).unwrap();
        assert_eq!(t.l2_offset(0), Some(0x10000));
        assert_eq!(t.l2_offset(1), None);
        assert_eq!(t.l2_offset(2), Some(0x50000));

        let l2 = build_u64_table(&[table_entry(0x70000), 0], 65536);
        let fmt = Qcow2L2Format {
            cluster_bits: 16,
            version: 3,
            extended: false,
            external_data: false,
        };
        assert_eq!(
            fmt.entry(&l2, 0, 0x10000).unwrap(),
            Qcow2L2Entry::Data { host: 0x70000 }
        );
        assert_eq!(
            fmt.entry(&l2, 1, 0x10000).unwrap(),
            Qcow2L2Entry::Unallocated
        );
    }

    #[test]
    fn refcount_layout_counts_itself() {
        // 64 KiB clusters: 32768 refcounts per block, 8192 blocks per table cluster.
        assert_eq!(refcounts_per_block(16), 32768);
        assert_eq!(refcount_layout(10, 16), (1, 1));
        assert_eq!(refcount_layout(32766, 16), (1, 1));
        assert_eq!(refcount_layout(32767, 16), (1, 2));
        let (t, b) = refcount_layout(5_000_000, 16);
        assert!((5_000_000 + t + b).div_ceil(32768) == b && (b * 8).div_ceil(65536) == t);
    }

    #[test]
    fn refcount_block_marks_used_clusters() {
        let b = build_refcount_block(0, 3, 16);
        assert_eq!(&b[..8], &[0, 1, 0, 1, 0, 1, 0, 0]);
        let b = build_refcount_block(1, 32768 + 2, 16);
        assert_eq!(&b[..6], &[0, 1, 0, 1, 0, 0]);
        assert!(build_refcount_block(2, 32768 + 2, 16)
            .iter()
            .all(|&x| x == 0));
    }
}
