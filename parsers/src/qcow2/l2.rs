//! L2 table entries (qcow2.txt, "Cluster mapping" and "Extended L2 Entries"). An L2
//! table is exactly one cluster of entries; an entry maps one guest cluster:
//!
//! - bit 63: "copied" (refcount is one) — ignored by a reader, except that with an
//!   external data file it disambiguates host offset 0 from "unallocated";
//! - bit 62: compressed → bits 0–61 are a [`Qcow2CompressedDescriptor`];
//! - otherwise bits 9–55: the cluster-aligned host offset (0 = unallocated, the
//!   backing file shows through), and, in version 3 without extended L2, bit 0:
//!   the cluster reads as zeros whatever the offset says.
//!
//! With extended L2 entries (incompatible bit 4) each entry is 128 bits: the word
//! above, then a bitmap whose bits 0–31 mark allocated subclusters and bits 32–63
//! subclusters that read as zeros (32 subclusters per cluster). Compressed clusters
//! ignore the bitmap. Both bits set for one subcluster, or allocated subclusters
//! without a host offset, are `Corrupt` (QEMU refuses both).
//!
//! Rules QEMU enforces and we do too: a zero flag in a version 2 image, an unaligned
//! host offset, and a compressed cluster in an image with an external data file are
//! all `Corrupt`. Reserved bits are ignored, as QEMU does when reading.

use nom::number::complete::be_u64;

use super::compressed::Qcow2CompressedDescriptor;
use super::header::Qcow2Header;
use super::l1::OFFSET_MASK;
use super::QCOW2_SUBCLUSTERS;
use crate::bytes;
use crate::error::{ParseError, Result};

const WHAT: &str = "qcow2 L2 entry";

/// Bit 63 of an L1 or L2 entry: the cluster's refcount is exactly one ("copied").
pub const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;

/// A validated L2 entry: what one guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2L2Entry {
    /// Not stored in this image: the backing file shows through (or zeros).
    Unallocated,
    /// Reads as zeros (version 3 zero flag); never read, never falls through.
    Zero,
    /// The whole cluster is stored at this cluster-aligned host offset (in the
    /// external data file when the image has one).
    Data { host: u64 },
    /// The cluster is stored compressed.
    Compressed(Qcow2CompressedDescriptor),
    /// Extended L2: per-subcluster status. `alloc` and `zero` never overlap, and
    /// `alloc` is 0 when `host` is `None`.
    Subclusters {
        host: Option<u64>,
        alloc: u32,
        zero: u32,
    },
}

/// What a byte of a guest cluster maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Mapping {
    Unallocated,
    Zero,
    /// Stored uncompressed at this absolute host offset.
    Data {
        host: u64,
    },
    /// Inside this compressed cluster.
    Compressed(Qcow2CompressedDescriptor),
}

impl Qcow2L2Entry {
    /// What byte `pos` (< cluster size) of the cluster maps to, and how many bytes
    /// from `pos` on (up to the end of the cluster) map the same way, contiguously.
    pub fn map(&self, pos: u64, cluster_bits: u32) -> (Qcow2Mapping, u64) {
        let cluster_size = 1u64 << cluster_bits;
        let pos = pos.min(cluster_size - 1);
        let to_end = cluster_size - pos;
        match *self {
            Qcow2L2Entry::Unallocated => (Qcow2Mapping::Unallocated, to_end),
            Qcow2L2Entry::Zero => (Qcow2Mapping::Zero, to_end),
            Qcow2L2Entry::Data { host } => (
                Qcow2Mapping::Data {
                    host: host.saturating_add(pos),
                },
                to_end,
            ),
            Qcow2L2Entry::Compressed(d) => (Qcow2Mapping::Compressed(d), to_end),
            Qcow2L2Entry::Subclusters { host, alloc, zero } => {
                let sc_bits = cluster_bits.saturating_sub(5);
                let status = |i: u64| -> u8 {
                    if alloc >> i & 1 != 0 {
                        2
                    } else if zero >> i & 1 != 0 {
                        1
                    } else {
                        0
                    }
                };
                let first = pos >> sc_bits;
                let s = status(first);
                let mut next = first + 1;
                while next < u64::from(QCOW2_SUBCLUSTERS) && status(next) == s {
                    next += 1;
                }
                let len = (next << sc_bits) - pos;
                let mapping = match (s, host) {
                    (2, Some(h)) => Qcow2Mapping::Data {
                        host: h.saturating_add(pos),
                    },
                    (1, _) => Qcow2Mapping::Zero,
                    // alloc without host is rejected at parse time.
                    _ => Qcow2Mapping::Unallocated,
                };
                (mapping, len)
            }
        }
    }
}

/// How L2 entries of one image are laid out and interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2L2Format {
    pub cluster_bits: u32,
    pub version: u32,
    pub extended: bool,
    pub external_data: bool,
}

impl Qcow2L2Format {
    /// The format of `header`'s L2 tables.
    pub fn from_header(h: &Qcow2Header) -> Self {
        Qcow2L2Format {
            cluster_bits: h.cluster_bits,
            version: h.version,
            extended: h.has_extended_l2(),
            external_data: h.has_data_file(),
        }
    }

    /// Bytes per entry.
    pub fn entry_size(&self) -> usize {
        if self.extended {
            16
        } else {
            8
        }
    }

    /// Entries per L2 table (one cluster).
    pub fn entries_per_table(&self) -> u64 {
        (1u64 << self.cluster_bits) / self.entry_size() as u64
    }

    /// Entry `index` of the L2 table `table` (one cluster, read from absolute
    /// offset `table_offset`).
    pub fn entry(&self, table: &[u8], index: u64, table_offset: u64) -> Result<Qcow2L2Entry> {
        let size = self.entry_size();
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(size))
            .ok_or_else(|| ParseError::corrupt(WHAT, table_offset, "index overflows"))?;
        let at = table_offset.saturating_add(start as u64);
        let raw = bytes::slice(table, start, size, WHAT, table_offset)?;
        let (word, bitmap) = if self.extended {
            bytes::run((be_u64, be_u64), raw, WHAT, at)?
        } else {
            (bytes::run(be_u64, raw, WHAT, at)?, 0)
        };
        self.parse(word, bitmap, at).map_err(|e| match e {
            ParseError::Corrupt {
                what,
                offset,
                reason,
            } => ParseError::Corrupt {
                what,
                offset,
                reason: format!("L2 table at {table_offset:#x}, index {index}: {reason}"),
            },
            other => other,
        })
    }

    /// Validates one entry: `word` (bits 0–63), `bitmap` (extended L2 only, else
    /// 0), found at absolute offset `at`.
    pub fn parse(&self, word: u64, bitmap: u64, at: u64) -> Result<Qcow2L2Entry> {
        if word & COMPRESSED != 0 {
            if self.external_data {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    "compressed cluster in an image with an external data file",
                ));
            }
            return Ok(Qcow2L2Entry::Compressed(Qcow2CompressedDescriptor::parse(
                word & !(COPIED | COMPRESSED),
                self.cluster_bits,
                at,
            )?));
        }
        let offset = word & OFFSET_MASK;
        // Offset 0 is a real offset in an external data file when "copied" is set.
        let host = if offset != 0 || (self.external_data && word & COPIED != 0) {
            Some(offset)
        } else {
            None
        };
        if let Some(h) = host {
            if h & ((1u64 << self.cluster_bits) - 1) != 0 {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    format!(
                        "host cluster offset {h:#x} is not aligned to the cluster size {}",
                        1u64 << self.cluster_bits
                    ),
                ));
            }
        }
        if self.extended {
            let alloc = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            if alloc & zero != 0 {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    format!(
                        "subclusters {:#010x} are marked both allocated and zero",
                        alloc & zero
                    ),
                ));
            }
            if host.is_none() && alloc != 0 {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    format!("subclusters {alloc:#010x} are allocated but the cluster has no host offset"),
                ));
            }
            return Ok(Qcow2L2Entry::Subclusters { host, alloc, zero });
        }
        if word & ZERO != 0 {
            if self.version < 3 {
                return Err(ParseError::corrupt(
                    WHAT,
                    at,
                    "zero cluster flag in a version 2 image",
                ));
            }
            return Ok(Qcow2L2Entry::Zero);
        }
        Ok(match host {
            Some(host) => Qcow2L2Entry::Data { host },
            None => Qcow2L2Entry::Unallocated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: Qcow2L2Format = Qcow2L2Format {
        cluster_bits: 16,
        version: 3,
        extended: false,
        external_data: false,
    };
    const EXT: Qcow2L2Format = Qcow2L2Format {
        cluster_bits: 16,
        version: 3,
        extended: true,
        external_data: false,
    };

    #[test]
    fn standard_entries() {
        assert_eq!(STD.parse(0, 0, 0).unwrap(), Qcow2L2Entry::Unallocated);
        assert_eq!(
            STD.parse(COPIED | 0x5_0000, 0, 0).unwrap(),
            Qcow2L2Entry::Data { host: 0x5_0000 }
        );
        assert_eq!(STD.parse(ZERO, 0, 0).unwrap(), Qcow2L2Entry::Zero);
        assert_eq!(
            STD.parse(0x5_0000 | ZERO, 0, 0).unwrap(),
            Qcow2L2Entry::Zero
        );
        assert!(matches!(
            STD.parse(COMPRESSED | 0x12345, 0, 0).unwrap(),
            Qcow2L2Entry::Compressed(d) if d.host_offset == 0x12345
        ));
        // Copied flag with offset 0 is unallocated without a data file...
        assert_eq!(STD.parse(COPIED, 0, 0).unwrap(), Qcow2L2Entry::Unallocated);
        // ...and host offset 0 with one.
        let df = Qcow2L2Format {
            external_data: true,
            ..STD
        };
        assert_eq!(
            df.parse(COPIED, 0, 0).unwrap(),
            Qcow2L2Entry::Data { host: 0 }
        );
    }

    #[test]
    fn rejects_zero_flag_in_v2() {
        let v2 = Qcow2L2Format { version: 2, ..STD };
        assert!(v2.parse(ZERO, 0, 8).is_err());
        assert!(v2.parse(0x5_0000, 0, 8).is_ok());
    }

    #[test]
    fn rejects_unaligned_host_offset() {
        let e = STD.parse(0x5_0200, 0, 0x1238).unwrap_err();
        assert_eq!(e.offset(), 0x1238);
    }

    #[test]
    fn rejects_compressed_with_external_data_file() {
        let df = Qcow2L2Format {
            external_data: true,
            ..STD
        };
        assert!(df.parse(COMPRESSED | 0x12345, 0, 0).is_err());
    }

    #[test]
    fn rejects_subcluster_both_allocated_and_zero() {
        assert!(EXT.parse(0x5_0000, (1u64 << 32) | 1, 0).is_err());
        assert!(EXT.parse(0x5_0000, (1u64 << 33) | 1, 0).is_ok());
    }

    #[test]
    fn rejects_allocated_subclusters_without_host() {
        assert!(EXT.parse(0, 1, 0).is_err());
        assert!(EXT.parse(0, 1u64 << 32, 0).is_ok());
    }

    #[test]
    fn extended_l2_ignores_bit0_and_maps_subclusters() {
        // 64 KiB cluster, 2 KiB subclusters: 0-1 allocated, 2 zero, 3.. unallocated.
        let e = EXT
            .parse(0x5_0000 | ZERO, (0b100u64 << 32) | 0b11, 0)
            .unwrap();
        assert_eq!(e.map(0, 16), (Qcow2Mapping::Data { host: 0x5_0000 }, 4096));
        assert_eq!(
            e.map(100, 16),
            (Qcow2Mapping::Data { host: 0x5_0064 }, 4096 - 100)
        );
        assert_eq!(e.map(4096, 16), (Qcow2Mapping::Zero, 2048));
        assert_eq!(e.map(6144, 16), (Qcow2Mapping::Unallocated, 65536 - 6144));
    }

    #[test]
    fn entry_reads_from_table_with_index_in_errors() {
        let mut table = vec![0u8; 65536];
        table[8..16].copy_from_slice(&0x5_0200u64.to_be_bytes());
        assert_eq!(
            STD.entry(&table, 0, 0x3_0000).unwrap(),
            Qcow2L2Entry::Unallocated
        );
        let e = STD.entry(&table, 1, 0x3_0000).unwrap_err();
        assert_eq!(e.offset(), 0x3_0008);
        assert!(e.to_string().contains("index 1"), "{e}");
        assert!(STD.entry(&table, 8192, 0).is_err());
        assert_eq!(EXT.entries_per_table(), 4096);
    }

    #[test]
    fn no_panic_on_bit_flips_of_entries() {
        for fmt in [
            STD,
            EXT,
            Qcow2L2Format {
                version: 2,
                cluster_bits: 9,
                ..STD
            },
        ] {
            let base = [COPIED | 0x5_0000, 0xffff_fffe_0000_0001];
            for bit in 0..128 {
                let mut w = base;
                w[bit / 64] ^= 1 << (bit % 64);
                if let Ok(e) = fmt.parse(w[0], w[1], 0) {
                    for pos in [0, 1, 511, 4096, 65535] {
                        let (_, len) = e.map(pos, fmt.cluster_bits);
                        assert!(len >= 1);
                    }
                }
            }
        }
    }
}
