//! A disk of a restore point as a [`ReadAt`] + [`DiskImage`]: index lookups, chunk
//! reads verified by hash, and an LRU of decompressed chunks with a byte budget, so
//! the guest-filesystem code and the exporters read a restore point exactly as they
//! read an image file.
//!
//! The LRU ([`ChunkCache`]) is keyed by chunk id, so one cache can serve several
//! disks under one budget (the FUSE mount shares one across every restore point it
//! shows: consecutive restore points share most chunks). Concurrent misses of the
//! same chunk load it once; the others wait for that load.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use lru::LruCache;

use super::chunk::ChunkId;
use super::index::DiskIndex;
use super::Repository;
use crate::error::{Error, Result};
use crate::image::{DiskImage, Extent, Format, RunKind};
use crate::io::ReadAt;

/// Default budget of decompressed chunks kept in memory per open disk.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// A chunk being loaded by one thread while others wait: the plaintext, or the
/// loader's error as text (the waiters get a copy).
type Loading = Arc<OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>;

/// Decompressed, verified chunks by id, within a byte budget (counted in whole
/// chunks of the repository's chunk size).
pub struct ChunkCache {
    lru: Mutex<LruCache<ChunkId, Arc<Vec<u8>>>>,
    loading: Mutex<HashMap<ChunkId, Loading>>,
    /// Chunks fetched from the repository (misses).
    reads: AtomicU64,
}

impl ChunkCache {
    /// A cache of `budget_bytes` for chunks of `chunk_size` bytes (at least two
    /// chunks are kept).
    pub fn new(budget_bytes: u64, chunk_size: u32) -> Self {
        let slots = (budget_bytes / u64::from(chunk_size.max(1))).max(2);
        let slots = usize::try_from(slots).unwrap_or(usize::MAX);
        ChunkCache {
            // OK: slots >= 2.
            lru: Mutex::new(LruCache::new(
                NonZeroUsize::new(slots).unwrap_or(NonZeroUsize::MIN),
            )),
            loading: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
        }
    }

    /// Chunks fetched from the repository so far (cache misses).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Whether chunk `id` is in memory now.
    pub fn contains(&self, id: &ChunkId) -> bool {
        lock(&self.lru).contains(id)
    }

    /// Chunk `id` from memory, or from `load` (run once however many threads miss
    /// at the same time). Neither lock is held while loading.
    fn get_or_load(
        &self,
        id: &ChunkId,
        load: impl FnOnce() -> Result<Vec<u8>>,
        describe: impl Fn(String) -> Error,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = lock(&self.lru).get(id) {
            return Ok(hit.clone());
        }
        let cell = lock(&self.loading).entry(*id).or_default().clone();
        let mut own_error = None;
        let result = cell.get_or_init(|| match load() {
            Ok(data) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                let data = Arc::new(data);
                lock(&self.lru).put(*id, data.clone());
                Ok(data)
            }
            Err(e) => {
                let text = crate::error::chain(&e);
                own_error = Some(e);
                Err(text)
            }
        });
        {
            let mut loading = lock(&self.loading);
            if loading.get(id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                loading.remove(id);
            }
        }
        match result {
            Ok(data) => Ok(data.clone()),
            Err(text) => Err(own_error.unwrap_or_else(|| describe(text.clone()))),
        }
    }
}

/// A poisoned lock is still usable: every update under these locks is one call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One disk of one restore point.
pub struct RestorePointDisk {
    repo: Arc<Repository>,
    index: DiskIndex,
    /// Names the disk in errors: `<vm>/<restore point>/<disk>`.
    name: String,
    cache: Arc<ChunkCache>,
}

impl RestorePointDisk {
    /// Opens a disk whose index is already loaded; `cache_bytes` bounds the memory of
    /// decompressed chunks (at least two chunks are kept).
    pub fn new(repo: Arc<Repository>, index: DiskIndex, name: String, cache_bytes: u64) -> Self {
        let cache = Arc::new(ChunkCache::new(cache_bytes, index.chunk_size));
        Self::with_cache(repo, index, name, cache)
    }

    /// Opens a disk that keeps its chunks in `cache`, which other disks may share.
    pub fn with_cache(
        repo: Arc<Repository>,
        index: DiskIndex,
        name: String,
        cache: Arc<ChunkCache>,
    ) -> Self {
        RestorePointDisk {
            repo,
            index,
            name,
            cache,
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

    /// Chunks fetched from the repository so far (cache misses; of every disk
    /// sharing the cache).
    pub fn chunk_reads(&self) -> u64 {
        self.cache.reads()
    }

    /// Loads the chunks under `range` into the cache (readahead); stops at the first
    /// chunk that is already there, so a prefetch that fell behind the reader costs
    /// nothing.
    pub fn preload(&self, range: Range<u64>) -> Result<()> {
        for i in self.will_need(range) {
            self.chunk(i)?;
        }
        Ok(())
    }

    /// Tells the repository about the stored chunks under `range` that are not in
    /// the cache, up to the first one that is, so that their reads are in flight
    /// together (while the first ones are decompressed) instead of one at a time.
    /// Returns their numbers, in order.
    fn will_need(&self, range: Range<u64>) -> Vec<usize> {
        let cs = u64::from(self.index.chunk_size.max(1));
        let end = range.end.min(self.index.disk_size);
        let first = usize::try_from(range.start / cs).unwrap_or(usize::MAX);
        let last = usize::try_from(end.div_ceil(cs)).unwrap_or(usize::MAX);
        let mut wanted = Vec::new();
        for i in first..last.min(self.index.entries.len()) {
            if let Some(id) = &self.index.entries[i] {
                if self.cache.contains(id) {
                    break;
                }
                self.repo.will_need_chunk(id);
                wanted.push(i);
            }
        }
        wanted
    }

    /// The plaintext of chunk `i`, from the cache or the repository.
    fn chunk(&self, i: usize) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(id) = self.index.entries.get(i).copied().flatten() else {
            return Ok(None);
        };
        let want = self.index.chunk_len(i);
        let offset = i as u64 * self.index.chunk_size as u64;
        let place = || format!("{}: chunk {i} (disk offset {offset:#x})", self.name);
        let context = |reason: String| Error::Repository {
            location: self.repo.location(),
            reason: format!("{}: {reason}", place()),
        };
        let load = || {
            // A missing or damaged chunk stays that kind of error (so the binary
            // prints its hint to run verify), with the disk position added.
            let data = self.repo.read_chunk(&id).map_err(|e| match e {
                Error::NotInRepository { location, key } => Error::Damaged {
                    location,
                    key,
                    reason: format!("{} is missing", place()),
                },
                Error::Damaged {
                    location,
                    key,
                    reason,
                } => Error::Damaged {
                    location,
                    key,
                    reason: format!("{}: {reason}", place()),
                },
                e => context(e.to_string()),
            })?;
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
            Ok(data)
        };
        let data = self.cache.get_or_load(&id, load, context)?;
        if data.len() != want {
            // The same content at a position of another length: cannot be (a chunk
            // is named by its content), unless the cache is shared across damaged
            // repositories. Never hand out the wrong length.
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
        Ok(Some(data))
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
        if offset % cs + buf.len() as u64 > cs {
            // Several chunks: ask for all of them before waiting for the first.
            self.will_need(offset..offset + buf.len() as u64);
        }
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

    /// Starts the reads of the chunks under `range` (a hint: they are loaded, and
    /// verified, when read).
    fn prefetch(&self, range: Range<u64>) {
        self.will_need(range);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn err(reason: String) -> Error {
        Error::Usage(reason)
    }

    #[test]
    fn concurrent_misses_load_a_chunk_once() {
        let cache = Arc::new(ChunkCache::new(4 << 20, 1 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let id = ChunkId::of(b"x");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                std::thread::spawn(move || {
                    let got = cache.get_or_load(
                        &id,
                        || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok(vec![7u8; 16])
                        },
                        err,
                    );
                    got.map(|d| d.len())
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 16);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.reads(), 1);
        assert!(cache.contains(&id));
    }

    #[test]
    fn a_failed_load_is_reported_and_retried_later() {
        let cache = ChunkCache::new(4 << 20, 1 << 20);
        let id = ChunkId::of(b"y");
        let e = cache
            .get_or_load(&id, || Err(err("disk on fire".into())), err)
            .unwrap_err();
        assert!(e.to_string().contains("disk on fire"));
        assert!(!cache.contains(&id));
        let ok = cache.get_or_load(&id, || Ok(vec![1, 2, 3]), err).unwrap();
        assert_eq!(*ok, vec![1, 2, 3]);
    }

    #[test]
    fn the_budget_bounds_the_chunks_kept() {
        let cache = ChunkCache::new(2 << 20, 1 << 20);
        for i in 0u8..5 {
            let id = ChunkId::of(&[i]);
            cache.get_or_load(&id, || Ok(vec![i; 8]), err).unwrap();
        }
        let kept = (0u8..5)
            .filter(|i| cache.contains(&ChunkId::of(&[*i])))
            .count();
        assert_eq!(kept, 2);
    }
}
