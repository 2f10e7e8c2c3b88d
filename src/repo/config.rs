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

/// Default compression: zstd level 1 with its match finder tuned for chunk-sized
/// inputs (a hash table of 2^16 entries where level 1 takes 2^14 for inputs this
/// small; matches from 5 bytes where it takes 6). Compression is most of a backup's
/// CPU. Over the backup benchmark's day-0 disk in 256 KiB chunks, one thread,
/// interleaved (median of 4): level 3 3.70 s and 515 MiB, this 2.65 s and 517 MiB
/// (sampled, a third of the chunks); plain level 1 stores ~3% more than level 3,
/// which would make the repository larger than restic's.
pub const DEFAULT_ZSTD: ZstdSettings = ZstdSettings {
    level: 1,
    tuning: Some(ZstdTuning {
        hash_log: 16,
        min_match: 5,
    }),
};

/// How chunks are compressed: a zstd level, with the match finder tuned or not.
/// Decompression needs none of it; it only decides speed and size when writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ZstdSettings {
    pub level: i32,
    pub tuning: Option<ZstdTuning>,
}

impl ZstdSettings {
    /// A plain zstd level.
    pub fn level(level: i32) -> Self {
        ZstdSettings {
            level,
            tuning: None,
        }
    }
}

impl std::fmt::Display for ZstdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "zstd level {}", self.level)?;
        if let Some(t) = self.tuning {
            write!(f, " (hash log {}, min match {})", t.hash_log, t.min_match)?;
        }
        Ok(())
    }
}

/// zstd match-finder parameters that override the level's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZstdTuning {
    /// log2 of the hash table's entries (4 bytes each).
    pub hash_log: u32,
    /// Shortest match searched for, in bytes.
    pub min_match: u32,
}

/// Largest hash log accepted: a table of 4 MiB per worker (a damaged or hostile
/// config must not make every backup allocate gigabytes).
const MAX_HASH_LOG: u32 = 20;

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
    /// Match-finder parameters over the level's (absent in repositories made
    /// before there were any, and when `init` was given a level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_tuning: Option<ZstdTuning>,
}

impl RepoConfig {
    /// A new configuration; `chunk_size` must be a power of two in range.
    pub fn new(chunk_size: u32, zstd: ZstdSettings) -> Result<Self> {
        let cfg = RepoConfig {
            kind: "vmback".into(),
            version: FORMAT_VERSION,
            id: random_id(),
            chunk_size,
            hash: "blake3".into(),
            compression: "zstd".into(),
            zstd_level: zstd.level,
            zstd_tuning: zstd.tuning,
        };
        cfg.validate("(new)")?;
        Ok(cfg)
    }

    /// How chunks are compressed.
    pub fn zstd(&self) -> ZstdSettings {
        ZstdSettings {
            level: self.zstd_level,
            tuning: self.zstd_tuning,
        }
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
        if let Some(t) = self.zstd_tuning {
            if !(10..=MAX_HASH_LOG).contains(&t.hash_log) {
                return bad(format!(
                    "zstd hash log {} is not in 10..={MAX_HASH_LOG}",
                    t.hash_log
                ));
            }
            if !(3..=7).contains(&t.min_match) {
                return bad(format!("zstd min match {} is not in 3..=7", t.min_match));
            }
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
    fn tuning_is_recorded_and_checked() {
        let cfg = RepoConfig::new(DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(
            json.contains(r#""zstd_tuning":{"hash_log":16,"min_match":5}"#),
            "{json}"
        );
        let back: RepoConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.zstd(), DEFAULT_ZSTD);

        // A plain level writes no tuning, and a config without one still reads.
        let plain = RepoConfig::new(DEFAULT_CHUNK_SIZE, ZstdSettings::level(6)).unwrap();
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("zstd_tuning"), "{json}");
        let back: RepoConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.zstd(), ZstdSettings::level(6));

        for (hash_log, min_match) in [(9, 5), (21, 5), (16, 2), (16, 8)] {
            let bad = ZstdSettings {
                level: 1,
                tuning: Some(ZstdTuning {
                    hash_log,
                    min_match,
                }),
            };
            let e = RepoConfig::new(DEFAULT_CHUNK_SIZE, bad).unwrap_err();
            assert!(e.to_string().contains("zstd"), "{e}");
        }
        assert_eq!(
            DEFAULT_ZSTD.to_string(),
            "zstd level 1 (hash log 16, min match 5)"
        );
    }

    #[test]
    fn the_cli_default_chunk_size_is_the_default() {
        assert_eq!(
            crate::backup::ratelimit::parse_size(DEFAULT_CHUNK_SIZE_ARG),
            Ok(u64::from(DEFAULT_CHUNK_SIZE))
        );
    }
}
