//! A disk of a restore point as a [`ReadAt`] + [`DiskImage`]: index lookups, chunk
//! reads verified by hash, and an LRU of decompressed chunks with a byte budget, so
//! the guest-filesystem code and the exporters read a restore point exactly as they
//! read an image file.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::index::DiskIndex;
use super::Repository;
use crate::error::{Error, Result};
use crate::image::{DiskImage, Extent, Format, RunKind};
use crate::io::ReadAt;

/// Default budget of decompressed chunks kept in memory per open disk.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// One disk of one restore point.
pub struct RestorePointDisk {
    repo: Arc<Repository>,
    index: DiskIndex,
    /// Names the disk in errors: `<vm>/<restore point>/<disk>`.
    name: String,
    cache: Mutex<LruCache<usize, Arc<Vec<u8>>>>,
    chunk_reads: AtomicU64,
}

impl RestorePointDisk {
    /// Opens a disk whose index is already loaded; `cache_bytes` bounds the memory of
    /// decompressed chunks (at least two chunks are kept).
    pub fn new(repo: Arc<Repository>, index: DiskIndex, name: String, cache_bytes: u64) -> Self {
        let slots = (cache_bytes / index.chunk_size.max(1) as u64).max(2) as usize;
        RestorePointDisk {
            repo,
            index,
            name,
            // OK: slots >= 2.
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(slots).unwrap_or(NonZeroUsize::MIN),
            )),
            chunk_reads: AtomicU64::new(0),
        }
    }

    /// The disk's index.
    pub fn index(&self) -> &DiskIndex {
        &self.index
    }

    /// The name given at opening.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Chunks fetched from the repository so far (cache misses).
    pub fn chunk_reads(&self) -> u64 {
        self.chunk_reads.load(Ordering::Relaxed)
    }

    /// The plaintext of chunk `i`, from the cache or the repository.
    fn chunk(&self, i: usize) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.index.entries.get(i).copied().flatten() else {
            return Ok(None);
        };
        if let Some(hit) = self.lock().get(&i) {
            return Ok(Some(hit.clone()));
        }
        let data = self.repo.read_chunk(&id).map_err(|e| Error::Repository {
            location: self.repo.location(),
            reason: format!(
                "{}: chunk {i} (disk offset {:#x}): {e}",
                self.name,
                i as u64 * self.index.chunk_size as u64
            ),
        })?;
        self.chunk_reads.fetch_add(1, Ordering::Relaxed);
        let want = self.index.chunk_len(i);
        if data.len() != want {
            return Err(Error::Damaged {
                location: self.repo.location(),
                key: id.key(),
                reason: format!(
                    "{}: chunk {i} holds {} bytes, the index expects {want}",
                    self.name,
                    data.len()
                ),
            });
        }
        let data = Arc::new(data);
        self.lock().put(i, data.clone());
        Ok(Some(data))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<usize, Arc<Vec<u8>>>> {
        // A panic while holding the lock cannot leave the cache inconsistent (puts are
        // single calls), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadAt for RestorePointDisk {
    fn size(&self) -> u64 {
        self.index.disk_size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.index.disk_size;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err(Error::OutOfRange {
                path: self.name.clone().into(),
                offset,
                len: buf.len() as u64,
                size,
            });
        }
        let cs = self.index.chunk_size as u64;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let i = (off / cs) as usize;
            let within = (off % cs) as usize;
            let n = (buf.len() - pos).min(cs as usize - within);
            match self.chunk(i)? {
                None => buf[pos..pos + n].fill(0),
                Some(data) => buf[pos..pos + n].copy_from_slice(&data[within..within + n]),
            }
            pos += n;
        }
        Ok(())
    }
}

impl DiskImage for RestorePointDisk {
    fn format(&self) -> Format {
        Format::Raw
    }

    /// Stored chunks are data; all-zero chunks were never stored and read as holes.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let end = range.end.min(self.index.disk_size);
        let cs = self.index.chunk_size as u64;
        let mut out: Vec<Extent> = Vec::new();
        let mut off = range.start;
        while off < end {
            let i = (off / cs) as usize;
            let chunk_end = ((i as u64 + 1) * cs).min(end);
            let kind = match self.index.entries.get(i) {
                Some(Some(_)) => RunKind::Data,
                _ => RunKind::Unallocated,
            };
            match out.last_mut() {
                Some(last) if last.kind == kind && last.end() == off => last.len += chunk_end - off,
                _ => out.push(Extent {
                    start: off,
                    len: chunk_end - off,
                    kind,
                }),
            }
            off = chunk_end;
        }
        Ok(out)
    }
}
