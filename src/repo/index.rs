//! The fixed index of one disk in one restore point: the chunk ids in disk order, so
//! reading offset X is a direct lookup of entry X / chunk_size. Every restore point
//! carries a complete index, so restoring the 300th incremental costs the same as
//! restoring the first full.
//!
//! Object `indexes/<64 hex>`, named by the BLAKE3 of its plaintext, zstd-compressed:
//! ```text
//! 0   4  magic "VBI1"
//! 4   4  chunk size, little endian
//! 8   8  disk size in bytes
//! 16  8  number of entries = ceil(disk size / chunk size)
//! 24  …  32 bytes per entry: the chunk id, or 32 zero bytes for an all-zero chunk
//! ```

use super::chunk::{hex, ChunkId, MAX_CHUNK_SIZE};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"VBI1";
const HEADER_LEN: usize = 24;

/// Largest index accepted when reading (2^26 entries: 64 TiB at 1 MiB chunks), so a
/// damaged header cannot make us allocate without bound.
pub const MAX_ENTRIES: u64 = 1 << 26;

/// The chunks of one disk, in order; `None` is an all-zero chunk (never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIndex {
    pub chunk_size: u32,
    pub disk_size: u64,
    pub entries: Vec<Option<ChunkId>>,
}

impl DiskIndex {
    /// Number of chunks a disk of `disk_size` bytes has.
    pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
        disk_size.div_ceil(chunk_size as u64)
    }

    /// An index of all-zero chunks for a disk of this size.
    pub fn zeroed(disk_size: u64, chunk_size: u32) -> Result<Self> {
        let n = Self::chunk_count(disk_size, chunk_size);
        if n > MAX_ENTRIES {
            return Err(Error::Usage(format!(
                "a disk of {disk_size} bytes needs {n} chunks of {chunk_size} bytes; at most {MAX_ENTRIES} are supported"
            )));
        }
        Ok(DiskIndex {
            chunk_size,
            disk_size,
            entries: vec![None; n as usize],
        })
    }

    /// Byte length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * self.chunk_size as u64;
        (self.disk_size.saturating_sub(start)).min(self.chunk_size as u64) as usize
    }

    /// The plaintext object (before compression).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.entries.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(e.as_ref().map_or(&[0u8; 32], |id| &id.0));
        }
        out
    }

    /// Parses the plaintext object; `key` names it in errors.
    pub fn from_bytes(data: &[u8], location: &str, key: &str) -> Result<Self> {
        let damaged = |reason: String| Error::Damaged {
            location: location.to_string(),
            key: key.to_string(),
            reason,
        };
        if data.len() < HEADER_LEN || &data[..4] != MAGIC {
            return Err(damaged("not an index (bad header)".into()));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let chunk_size = u32_at(4);
        let disk_size = u64_at(8);
        let count = u64_at(16);
        if chunk_size == 0 || chunk_size as usize > MAX_CHUNK_SIZE {
            return Err(damaged(format!("chunk size {chunk_size} at offset 4")));
        }
        if count > MAX_ENTRIES || count != Self::chunk_count(disk_size, chunk_size) {
            return Err(damaged(format!(
                "{count} entries (offset 16) do not fit a disk of {disk_size} bytes"
            )));
        }
        let body = &data[HEADER_LEN..];
        if body.len() as u64 != count * 32 {
            return Err(damaged(format!(
                "{} bytes of entries, expected {}",
                body.len(),
                count * 32
            )));
        }
        let entries = body
            .chunks_exact(32)
            .map(|e| {
                let mut id = [0u8; 32];
                id.copy_from_slice(e);
                (id != [0u8; 32]).then_some(ChunkId(id))
            })
            .collect();
        Ok(DiskIndex {
            chunk_size,
            disk_size,
            entries,
        })
    }

    /// The name of this index: the BLAKE3 of its plaintext.
    pub fn id(&self) -> String {
        hex(blake3::hash(&self.to_bytes()).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_last_chunk() {
        let mut idx = DiskIndex::zeroed(3 * 1024 + 100, 1024).unwrap();
        assert_eq!(idx.entries.len(), 4);
        assert_eq!(idx.chunk_len(3), 100);
        idx.entries[1] = Some(ChunkId::of(b"x"));
        let bytes = idx.to_bytes();
        assert_eq!(DiskIndex::from_bytes(&bytes, "r", "k").unwrap(), idx);
        let mut bad = bytes.clone();
        bad[16] = 9;
        assert!(DiskIndex::from_bytes(&bad, "r", "k").is_err());
        assert!(DiskIndex::from_bytes(&bytes[..bytes.len() - 1], "r", "k").is_err());
    }
}
