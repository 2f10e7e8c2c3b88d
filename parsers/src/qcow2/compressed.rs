//! The compressed cluster descriptor (qcow2.txt, "Compressed Clusters Descriptor"):
//! bits 0–61 of an L2 entry whose bit 62 is set. With `x = 62 - (cluster_bits - 8)`,
//! bits `0..x` hold the host byte offset of the compressed data (usually not
//! aligned to anything) and bits `x..62` the number of 512-byte sectors the data
//! occupies beyond the sector holding its first byte. The data is one cluster
//! compressed with the image's compression type; it may end anywhere inside its
//! last sector, and the next cluster's data may start in that same sector.
//!
//! The compressed length is therefore bounded by the field widths: at most
//! `2^(cluster_bits - 8) * 512 = 2 * cluster_size` bytes (4 MiB at 2 MiB clusters),
//! which is what makes reading it without a separate cap safe.

use crate::error::{ParseError, Result};

const WHAT: &str = "qcow2 compressed cluster descriptor";

/// A validated compressed cluster descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2CompressedDescriptor {
    /// Absolute byte offset of the compressed data in the image file.
    pub host_offset: u64,
    /// 512-byte sectors used beyond the one holding `host_offset`.
    pub additional_sectors: u64,
}

impl Qcow2CompressedDescriptor {
    /// Decodes bits 0–61 of `entry` (the L2 entry at absolute offset `at`) for an
    /// image with `cluster_bits` (9..=21, validated by the header).
    pub fn parse(entry: u64, cluster_bits: u32, at: u64) -> Result<Self> {
        let cluster_bits = cluster_bits.clamp(9, 21);
        let x = 62 - (cluster_bits - 8); // 49..=61
        let host_offset = entry & ((1u64 << x) - 1);
        let additional_sectors = (entry >> x) & ((1u64 << (62 - x)) - 1);
        // Offsets at or above 2^56 cannot be represented by the format's mapping.
        if host_offset >> 56 != 0 {
            return Err(ParseError::corrupt(
                WHAT,
                at,
                format!("host offset {host_offset:#x} has bits set above bit 55"),
            ));
        }
        // The first cluster holds the header: compressed data cannot live there.
        if host_offset < (1u64 << cluster_bits) {
            return Err(ParseError::corrupt(
                WHAT,
                at,
                format!("host offset {host_offset:#x} lies inside the header cluster"),
            ));
        }
        Ok(Qcow2CompressedDescriptor {
            host_offset,
            additional_sectors,
        })
    }

    /// Bytes from `host_offset` to the end of the last sector the data occupies:
    /// the most that has to be read to decompress the cluster.
    pub fn max_compressed_len(&self) -> u64 {
        // OK: additional_sectors < 2^13, so this cannot overflow.
        (self.additional_sectors + 1) * 512 - (self.host_offset & 511)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_offset_and_sector_count_at_x() {
        // 64 KiB clusters: x = 54.
        let e = (3u64 << 54) | 0x12_3456;
        let d = Qcow2CompressedDescriptor::parse(e, 16, 0).unwrap();
        assert_eq!(d.host_offset, 0x12_3456);
        assert_eq!(d.additional_sectors, 3);
        assert_eq!(d.max_compressed_len(), 4 * 512 - 0x56);
        // 2 MiB clusters: x = 49, 13 bits of sectors.
        let e = (0x1fffu64 << 49) | 0x40_0000;
        let d = Qcow2CompressedDescriptor::parse(e, 21, 0).unwrap();
        assert_eq!(d.additional_sectors, 0x1fff);
        assert_eq!(d.max_compressed_len(), 0x2000 * 512);
    }

    #[test]
    fn rejects_offset_bits_above_55() {
        // 512-byte clusters: x = 61, so bits 56..60 belong to the offset and must be 0.
        let e = (1u64 << 57) | 0x1000;
        let err = Qcow2CompressedDescriptor::parse(e, 9, 0x777).unwrap_err();
        assert_eq!(err.offset(), 0x777);
    }

    #[test]
    fn rejects_offset_in_header_cluster() {
        assert!(Qcow2CompressedDescriptor::parse(0x200, 16, 0).is_err());
    }

    #[test]
    fn no_panic_on_any_single_bit() {
        for cb in 0..40 {
            for bit in 0..64 {
                let _ = Qcow2CompressedDescriptor::parse(1u64 << bit, cb, 0);
                let _ = Qcow2CompressedDescriptor::parse(!(1u64 << bit), cb, 0);
            }
        }
    }
}
