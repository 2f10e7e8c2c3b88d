//! The repository's `config` object: written once by `init`, read by every command,
//! so that every writer chunks, hashes and compresses the same way.

use serde::{Deserialize, Serialize};

use super::chunk::MAX_CHUNK_SIZE;
use crate::error::{Error, Result};

/// Format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Default chunk size: 256 KiB (the README's chunk size measurements). A full
/// costs about what it costs at 1 MiB, but an incremental of scattered small writes
/// stores half as much (0.99× the changed bytes instead of 2.01×), which keeps the
/// repository smaller than restic's.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

/// [`DEFAULT_CHUNK_SIZE`] as `vmback init --chunk-size` shows it.
pub const DEFAULT_CHUNK_SIZE_ARG: &str = "256KiB";

/// Default zstd level. Compression is most of a backup's CPU (~70% at level 3);
/// level 1 compresses in ~65% of level 3's time but stores ~3% more.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Smallest chunk size accepted (a sector's multiple, and an index stays small).
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;

/// Contents of `config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Always "vmback": tells a vmback repository from any other JSON file.
    pub kind: String,
    pub version: u32,
    /// Random id (hex), for telling repositories apart in messages and caches.
    pub id: String,
    /// Bytes per chunk (the last chunk of a disk may be shorter).
    pub chunk_size: u32,
    /// Content hash naming chunks: "blake3".
    pub hash: String,
    /// Compression: "zstd".
    pub compression: String,
    pub zstd_level: i32,
}

impl RepoConfig {
    /// A new configuration; `chunk_size` must be a power of two in range.
    pub fn new(chunk_size: u32, zstd_level: i32) -> Result<Self> {
        let cfg = RepoConfig {
            kind: "vmback".into(),
            version: FORMAT_VERSION,
            id: random_id(),
            chunk_size,
            hash: "blake3".into(),
            compression: "zstd".into(),
            zstd_level,
        };
        cfg.validate("(new)")?;
        Ok(cfg)
    }

    /// Checks what this build supports; `location` names the repository.
    pub fn validate(&self, location: &str) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::Repository {
                location: location.to_string(),
                reason,
            })
        };
        if self.kind != "vmback" {
            return bad(format!(
                "config says kind {:?}, not a vmback repository",
                self.kind
            ));
        }
        if self.version != FORMAT_VERSION {
            return bad(format!(
                "format version {} (this vmback reads version {FORMAT_VERSION}; upgrade vmback)",
                self.version
            ));
        }
        if !self.chunk_size.is_power_of_two()
            || self.chunk_size < MIN_CHUNK_SIZE
            || self.chunk_size as usize > MAX_CHUNK_SIZE
        {
            return bad(format!(
                "chunk size {} is not a power of two between {} KiB and {} MiB",
                self.chunk_size,
                MIN_CHUNK_SIZE >> 10,
                MAX_CHUNK_SIZE >> 20
            ));
        }
        if self.hash != "blake3" {
            return bad(format!("unsupported hash {:?}", self.hash));
        }
        if self.compression != "zstd" {
            return bad(format!("unsupported compression {:?}", self.compression));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad(format!("zstd level {} is not in 1..=22", self.zstd_level));
        }
        Ok(())
    }
}

/// 16 random bytes as hex: the kernel's random UUID mixed with time, pid and the
/// stack address through BLAKE3 (no extra crate needed for an id).
pub fn random_id() -> String {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&bytes);
    }
    let local = 0u8;
    h.update(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    super::chunk::hex(&h.finalize().as_bytes()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_default_chunk_size_is_the_default() {
        assert_eq!(
            crate::backup::ratelimit::parse_size(DEFAULT_CHUNK_SIZE_ARG),
            Ok(u64::from(DEFAULT_CHUNK_SIZE))
        );
    }
}
