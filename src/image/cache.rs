//! A small shared cache of decompressed grains / clusters, keyed by their file
//! offset, so reading a compressed image in small pieces decompresses each grain once.
//! `lru::LruCache::get` needs `&mut`, so it sits behind a `Mutex`; the lock is never
//! held while reading or decompressing.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::error::Result;

/// Decompressed blocks keyed by an id the format chooses (e.g. the compressed
/// block's file offset), bounded by a number of entries.
pub struct BlockCache {
    inner: Mutex<LruCache<u64, Arc<[u8]>>>,
}

impl BlockCache {
    /// A cache of at most `entries` blocks (at least 1).
    pub fn new(entries: usize) -> Self {
        let n = NonZeroUsize::new(entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        BlockCache {
            inner: Mutex::new(LruCache::new(n)),
        }
    }

    /// A cache sized to hold about `budget_bytes` of blocks of `block_bytes` each.
    pub fn with_budget(budget_bytes: u64, block_bytes: u64) -> Self {
        Self::new((budget_bytes / block_bytes.max(1)).clamp(4, 4096) as usize)
    }

    /// The block `key`, produced by `load` on a miss (outside the lock; two threads
    /// may both load the same block, which is harmless).
    pub fn get_or_load(
        &self,
        key: u64,
        load: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Arc<[u8]>> {
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        let block: Arc<[u8]> = load()?.into();
        self.lock().put(key, block.clone());
        Ok(block)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<[u8]>>> {
        // A panic while holding the lock cannot leave the LRU inconsistent for our use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
