//! The capture pipeline of one disk: fixed-size chunks → skip what is unallocated or
//! unchanged → read → zero detection → BLAKE3 → dedup → zstd → store, in parallel
//! (rayon) over a bounded window of chunks, so memory stays bounded whatever the
//! disk size.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Instant;

use indicatif::ProgressBar;
use rayon::prelude::*;

use super::ratelimit::RateLimiter;
use crate::error::{Error, Result};
use crate::image::{DiskImage, RunKind};
use crate::io::AlignedBuf;
use crate::repo::chunk::{self, ChunkId};
use crate::repo::index::DiskIndex;
use crate::repo::manifest::DiskStats;
use crate::repo::Repository;

/// Shared by the disks of one backup.
pub struct Capture<'a> {
    pub repo: &'a Repository,
    pub limiter: Option<&'a RateLimiter>,
    /// Chunks known to be in the repository (the parent's, and those stored so far),
    /// so most dedup checks cost no I/O.
    pub known: &'a RwLock<HashSet<ChunkId>>,
    /// Chunks verify found damaged: re-read and stored again whenever met.
    pub damaged: &'a HashSet<ChunkId>,
    pub progress: &'a ProgressBar,
    /// Worker threads for the chunks (`None`: the global pool). The caller stays
    /// outside the pool, as with the global pool.
    pub pool: Option<&'a rayon::ThreadPool>,
}

/// What happened to one chunk.
enum Outcome {
    /// Unallocated, explicitly zero, or read and found all-zero.
    Zero { scanned: u64 },
    /// Read; the repository already held it.
    Deduplicated { id: ChunkId, scanned: u64 },
    /// Read and stored.
    New {
        id: ChunkId,
        scanned: u64,
        plain: u64,
        stored: u64,
    },
}

/// Chunks processed per parallel step. Each worker holds one chunk's buffers at a
/// time (threads × chunk size × 2 bytes at most, whatever the window), so the window
/// only bounds the outcomes kept for the index. It is wide because every step ends
/// with a barrier where all workers wait for the slowest chunk of the step (a cold
/// read, an incompressible chunk beside a compressible one).
fn window(pool: Option<&rayon::ThreadPool>) -> usize {
    let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
    (threads * 32).max(64)
}

/// Captures `disk` into the repository. `parent` and `changed` (one flag per chunk)
/// come from change tracking: unflagged chunks are copied from the parent's index.
/// `name` names the disk in errors.
pub fn capture_disk(
    cap: &Capture<'_>,
    disk: &dyn DiskImage,
    name: &str,
    parent: Option<&DiskIndex>,
    changed: Option<&[bool]>,
) -> Result<(DiskIndex, DiskStats)> {
    let started = Instant::now();
    let chunk_size = cap.repo.config().chunk_size;
    let mut index = DiskIndex::zeroed(disk.size(), chunk_size)?;
    let mut stats = DiskStats {
        chunks: index.entries.len() as u64,
        ..DiskStats::default()
    };
    let step_len = window(cap.pool);
    let mut plan = Plan {
        parent,
        changed,
        damaged: cap.damaged,
        next: 0,
    };
    let mut batch = plan.gather(&mut index, &mut stats, cap.progress, step_len);
    prefetch(disk, &index, &batch);
    while !batch.is_empty() {
        // The next step's reads start (on this thread, otherwise idle) while the
        // workers process this one: a step's scattered chunks then come from the
        // device with many reads in flight instead of one per worker.
        let next = plan.gather(&mut index, &mut stats, cap.progress, step_len);
        let step = || -> Vec<Result<Outcome>> {
            batch
                .par_iter()
                .map(|&i| {
                    let outcome = capture_chunk(cap, disk, name, &index, i);
                    cap.progress.inc(index.chunk_len(i) as u64);
                    outcome
                })
                .collect()
        };
        let outcomes = std::thread::scope(|s| {
            let workers = s.spawn(|| match cap.pool {
                Some(pool) => pool.install(step),
                None => step(),
            });
            prefetch(disk, &index, &next);
            workers.join()
        })
        .map_err(|_| Error::Capture {
            disk: name.to_string(),
            reason: "a capture worker panicked".into(),
        })?;
        for (&i, outcome) in batch.iter().zip(outcomes) {
            index.entries[i] = match outcome? {
                Outcome::Zero { scanned } => {
                    stats.chunks_zero += 1;
                    stats.bytes_scanned += scanned;
                    None
                }
                Outcome::Deduplicated { id, scanned } => {
                    stats.chunks_deduplicated += 1;
                    stats.bytes_scanned += scanned;
                    Some(id)
                }
                Outcome::New {
                    id,
                    scanned,
                    plain,
                    stored,
                } => {
                    stats.chunks_new += 1;
                    stats.bytes_scanned += scanned;
                    stats.bytes_new += plain;
                    stats.bytes_stored += stored;
                    Some(id)
                }
            };
        }
        batch = next;
    }
    stats.duration_secs = started.elapsed().as_secs_f64();
    Ok((index, stats))
}

/// Starts reading the data of `chunks` (coalesced into ranges of neighbours). Bounded:
/// at most one step ahead of the workers, so `--limit-read` still holds on average.
fn prefetch(disk: &dyn DiskImage, index: &DiskIndex, chunks: &[usize]) {
    let size = index.chunk_size as u64;
    let range = |(a, b): (usize, usize)| a as u64 * size..(b as u64 * size).min(disk.size());
    let mut run: Option<(usize, usize)> = None;
    for &i in chunks {
        match &mut run {
            Some((_, end)) if *end == i => *end = i + 1,
            _ => {
                if let Some(r) = run.replace((i, i + 1)) {
                    disk.prefetch(range(r));
                }
            }
        }
    }
    if let Some(r) = run {
        disk.prefetch(range(r));
    }
}

/// Which chunks a backup must read, handed out a step at a time.
struct Plan<'a> {
    parent: Option<&'a DiskIndex>,
    /// One flag per chunk from change tracking (`None`: everything changed).
    changed: Option<&'a [bool]>,
    damaged: &'a HashSet<ChunkId>,
    /// The first chunk not yet handed out.
    next: usize,
}

impl Plan<'_> {
    /// The next (up to) `step_len` chunks to capture. Chunks change tracking did not
    /// flag are taken over from the parent's index on the way (unless verify found
    /// the parent's copy damaged), so a step holds only work: an incremental whose
    /// few changed chunks lie far apart still gives every worker a chunk between
    /// two barriers.
    fn gather(
        &mut self,
        index: &mut DiskIndex,
        stats: &mut DiskStats,
        progress: &ProgressBar,
        step_len: usize,
    ) -> Vec<usize> {
        let mut batch = Vec::with_capacity(step_len);
        let mut carried = 0;
        while self.next < index.entries.len() && batch.len() < step_len {
            let i = self.next;
            self.next += 1;
            let unchanged = self
                .changed
                .is_some_and(|c| !c.get(i).copied().unwrap_or(true));
            let parent_id = self
                .parent
                .and_then(|p| p.entries.get(i).copied().flatten());
            let parent_damaged = parent_id.is_some_and(|id| self.damaged.contains(&id));
            if self.parent.is_some() && unchanged && !parent_damaged {
                index.entries[i] = parent_id;
                stats.chunks_unchanged += 1;
                carried += index.chunk_len(i) as u64;
            } else {
                batch.push(i);
            }
        }
        progress.inc(carried);
        batch
    }
}

/// Reads chunk `i` (only its allocated parts) and stores it unless it is zero or known.
fn capture_chunk(
    cap: &Capture<'_>,
    disk: &dyn DiskImage,
    name: &str,
    index: &DiskIndex,
    i: usize,
) -> Result<Outcome> {
    crate::interrupt::check()?;
    let start = i as u64 * index.chunk_size as u64;
    let len = index.chunk_len(i);
    let extents = disk.extents(start..start + len as u64)?;
    let data_bytes: u64 = extents
        .iter()
        .filter(|e| e.kind == RunKind::Data)
        .map(|e| e.len)
        .sum();
    if data_bytes == 0 {
        return Ok(Outcome::Zero { scanned: 0 });
    }
    if let Some(l) = cap.limiter {
        l.acquire(data_bytes);
    }
    CHUNK_BUF.with(|cell| {
        let mut slot = cell.borrow_mut();
        let buf = AlignedBuf::reuse(&mut slot, len);
        // The buffer is reused: what the extents do not read must be zeroed.
        for e in &extents {
            let lo = (e.start.max(start) - start) as usize;
            let hi = (e.end().min(start + len as u64) - start) as usize;
            if e.kind == RunKind::Data {
                disk.read_exact_at(start + lo as u64, &mut buf[lo..hi])
                    .map_err(|e| read_error(name, start + lo as u64, e))?;
            } else {
                buf[lo..hi].fill(0);
            }
        }
        store_chunk(cap, buf, data_bytes)
    })
}

thread_local! {
    /// Each worker's chunk buffer, reused from chunk to chunk: page-aligned (the
    /// kernel copies into it faster, see [`AlignedBuf`]) and never zeroed twice.
    static CHUNK_BUF: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Hashes a read chunk and stores it unless it is zero or already in the repository.
fn store_chunk(cap: &Capture<'_>, buf: &[u8], data_bytes: u64) -> Result<Outcome> {
    let len = buf.len();
    if is_zero(buf) {
        return Ok(Outcome::Zero {
            scanned: data_bytes,
        });
    }
    let id = ChunkId::of(buf);
    if cap.damaged.contains(&id) {
        // verify found the stored copy damaged: this good copy replaces it.
        let object = chunk::encode(buf, cap.repo.config().zstd())?;
        cap.repo.repair_chunk(&id, &object)?;
        remember(cap, id);
        return Ok(Outcome::New {
            id,
            scanned: data_bytes,
            plain: len as u64,
            stored: object.len() as u64,
        });
    }
    let known = cap
        .known
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id);
    // `claim_chunk` refreshes an existing chunk's time (so a concurrent gc keeps it);
    // `remember` is the claim among our threads: of several holding the same new
    // content, one stores it and the others count it as deduplicated.
    if known || cap.repo.claim_chunk(&id, cap.damaged)? || !remember(cap, id) {
        remember(cap, id);
        return Ok(Outcome::Deduplicated {
            id,
            scanned: data_bytes,
        });
    }
    let object = chunk::encode(buf, cap.repo.config().zstd())?;
    cap.repo.put_chunk_object(&id, &object)?;
    Ok(Outcome::New {
        id,
        scanned: data_bytes,
        plain: len as u64,
        stored: object.len() as u64,
    })
}

/// Adds `id` to the known chunks; false when it was already there.
fn remember(cap: &Capture<'_>, id: ChunkId) -> bool {
    cap.known
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id)
}

/// Puts the disk and offset in front of a source read error (a source that vanished
/// mid-backup must say where).
fn read_error(name: &str, offset: u64, e: Error) -> Error {
    Error::Capture {
        disk: name.to_string(),
        reason: format!(
            "reading the source at offset {offset:#x}: {}",
            crate::error::chain(&e)
        ),
    }
}

/// Whether `buf` is all zero bytes (OR-folded in blocks, which vectorises).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}
