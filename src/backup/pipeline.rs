//! The capture pipeline of one disk: fixed-size chunks → skip what is unallocated or
//! unchanged → read → zero detection → BLAKE3 → dedup → zstd → store, in parallel
//! (rayon tasks) over a bounded number of steps read ahead, so memory stays bounded
//! whatever the disk size.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Instant;

use indicatif::ProgressBar;

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

/// Chunks loaded per step: enough that the step's reads keep the device busy, and
/// bounded in bytes, since [`STEP_BUFFERS`] steps of chunk data are held at once.
fn window(pool: Option<&rayon::ThreadPool>, chunk_size: u32) -> usize {
    let threads = pool.map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
    let by_bytes = (STEP_BYTES / chunk_size.max(1) as usize).max(threads * 2);
    (threads * 32).max(64).min(by_bytes)
}

/// Bytes of chunk data one step may hold (more when every worker needs two chunks).
const STEP_BYTES: usize = 8 << 20;

/// Largest single read of neighbouring chunks: big enough that the device works on
/// many requests at once, small enough to keep a `--limit-read` smooth.
const MAX_READ: u64 = 4 << 20;

/// Threads reading a step: reads in flight at once. They only wait on the device.
const READERS: usize = 4;

/// Step buffers: one being loaded while the workers work through the earlier ones.
/// Enough that the workers still have work queued when a read is slow (the device
/// also writes the chunks back): full of the benchmark disk, interleaved, 3 buffers
/// of 16 MiB 5.31-6.43 s, 4 of 16 MiB 5.99-6.07 s, 6 of 8 MiB 5.29-5.86 s, 8 of
/// 4 MiB 5.26-5.79 s.
const STEP_BUFFERS: usize = 6;

/// Captures `disk` into the repository. `parent` and `changed` (one flag per chunk)
/// come from change tracking: unflagged chunks are copied from the parent's index.
/// `name` names the disk in errors.
///
/// This thread reads the chunks a step at a time (see [`Loader`]) and queues one task
/// per chunk, which the workers hash, compress and store, while it reads the next
/// step: the workers never wait for the device, nor for each other at the end of a
/// step. Before, each worker read its own chunk (a fifth of the CPU idle, even with
/// three workers per core), then all waited at the end of each step for its slowest
/// chunk (full of the benchmark disk, interleaved: 5.98-6.35 s -> 5.63-5.68 s).
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
    let step_len = window(cap.pool, chunk_size);
    let mut plan = Plan {
        parent,
        changed,
        damaged: cap.damaged,
        next: 0,
    };
    let loader = Loader {
        disk,
        name,
        limiter: cap.limiter,
    };
    let mut buffers: Vec<Arc<StepData>> = (0..STEP_BUFFERS)
        .map(|_| Arc::new(StepData::new(step_len, chunk_size as usize)))
        .collect();
    // One message per step, sent by the task that finishes it last (a message per
    // chunk woke this thread ten thousand times per full).
    let (done, outcomes) = mpsc::channel::<Vec<(usize, Result<Outcome>)>>();
    let mut in_flight = 0usize;
    let mut failure: Option<Error> = None;
    // The tasks run on the workers; this thread plans, loads and records, and the
    // scope ends when every task has.
    let planned = in_place_scope(cap.pool, |s| -> Result<()> {
        let mut batch = plan.gather(&mut index, &mut stats, cap.progress, step_len);
        prefetch(disk, &index, &batch);
        while !batch.is_empty() && failure.is_none() {
            // A free buffer (no task holds it): the outcomes that come meanwhile are
            // recorded.
            let slot = loop {
                if let Some(k) = buffers.iter_mut().position(|b| Arc::get_mut(b).is_some()) {
                    break k;
                }
                // OK: a buffer is held only by the tasks of a queued step, whose last
                // task sends.
                let finished = outcomes.recv().expect("a task holds a buffer");
                in_flight -= 1;
                for (i, outcome) in finished {
                    record(&mut index, &mut stats, i, outcome, &mut failure);
                }
            };
            // OK: `position` just found no other holder.
            let step = Arc::get_mut(&mut buffers[slot]).expect("free buffer");
            loader.load(&index, &batch, step)?;
            in_flight += 1;
            let finished = Arc::new(StepOutcomes {
                chunks: batch.len(),
                outcomes: Mutex::new(Vec::with_capacity(batch.len())),
                done: done.clone(),
            });
            for (j, &i) in batch.iter().enumerate() {
                let (step, len) = (Arc::clone(&buffers[slot]), index.chunk_len(i));
                let finished = Arc::clone(&finished);
                s.spawn(move |_| {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        capture_chunk(cap, &step, j, len)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Error::Capture {
                            disk: name.to_string(),
                            reason: "a capture worker panicked".into(),
                        })
                    });
                    // The buffer is free once every task of its step let go of it.
                    drop(step);
                    cap.progress.inc(len as u64);
                    finished.add(i, outcome);
                });
            }
            batch = plan.gather(&mut index, &mut stats, cap.progress, step_len);
            prefetch(disk, &index, &batch);
        }
        Ok(())
    });
    for (i, outcome) in outcomes.try_iter().take(in_flight).flatten() {
        record(&mut index, &mut stats, i, outcome, &mut failure);
    }
    planned?;
    if let Some(e) = failure {
        return Err(e);
    }
    stats.duration_secs = started.elapsed().as_secs_f64();
    Ok((index, stats))
}

/// The outcomes of one step's tasks, gathered until the last one is done.
struct StepOutcomes {
    /// Tasks of the step.
    chunks: usize,
    outcomes: Mutex<Vec<(usize, Result<Outcome>)>>,
    done: mpsc::Sender<Vec<(usize, Result<Outcome>)>>,
}

impl StepOutcomes {
    /// Adds the outcome of chunk `i`; the step's last one sends them all.
    fn add(&self, i: usize, outcome: Result<Outcome>) {
        let mut all = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        all.push((i, outcome));
        if all.len() == self.chunks {
            let _ = self.done.send(std::mem::take(&mut *all));
        }
    }
}

/// A rayon scope whose closure runs on this thread (outside the pool: it waits on
/// I/O), its tasks on `pool` or the global pool.
fn in_place_scope<'scope, R>(
    pool: Option<&rayon::ThreadPool>,
    body: impl FnOnce(&rayon::Scope<'scope>) -> R,
) -> R {
    match pool {
        Some(pool) => pool.in_place_scope(body),
        None => rayon::in_place_scope(body),
    }
}

/// Puts the outcome of chunk `i` into the index and the statistics; the first error
/// goes to `failure`.
fn record(
    index: &mut DiskIndex,
    stats: &mut DiskStats,
    i: usize,
    outcome: Result<Outcome>,
    failure: &mut Option<Error>,
) {
    index.entries[i] = match outcome {
        Err(e) => {
            failure.get_or_insert(e);
            return;
        }
        Ok(Outcome::Zero { scanned }) => {
            stats.chunks_zero += 1;
            stats.bytes_scanned += scanned;
            None
        }
        Ok(Outcome::Deduplicated { id, scanned }) => {
            stats.chunks_deduplicated += 1;
            stats.bytes_scanned += scanned;
            Some(id)
        }
        Ok(Outcome::New {
            id,
            scanned,
            plain,
            stored,
        }) => {
            stats.chunks_new += 1;
            stats.bytes_scanned += scanned;
            stats.bytes_new += plain;
            stats.bytes_stored += stored;
            Some(id)
        }
    };
}

/// The data of one step's chunks: chunk `j` of the step at `j × chunk size` in one
/// page-aligned buffer (so reads may bypass the page cache), and how many of its
/// bytes are allocated data (0: nothing to read, a zero chunk).
struct StepData {
    buf: AlignedBuf,
    chunk_size: usize,
    data_bytes: Vec<u64>,
}

impl StepData {
    /// Room for `step_len` chunks. The memory is only touched where chunks are read.
    fn new(step_len: usize, chunk_size: usize) -> Self {
        StepData {
            buf: AlignedBuf::new(step_len * chunk_size),
            chunk_size,
            data_bytes: Vec::with_capacity(step_len),
        }
    }
}

/// Reads the chunks of a step into a [`StepData`].
struct Loader<'a> {
    disk: &'a dyn DiskImage,
    name: &'a str,
    limiter: Option<&'a RateLimiter>,
}

impl Loader<'_> {
    /// Reads the allocated parts of `chunks` into `into` and zeroes the rest. Runs of
    /// allocated data that are neighbours both on the disk and in the buffer (whole
    /// neighbouring chunks) are read at once, up to [`MAX_READ`]; the reads are
    /// shared by [`READERS`] threads, so scattered chunks (an incremental's) come from
    /// the device several at a time.
    fn load(&self, index: &DiskIndex, chunks: &[usize], into: &mut StepData) -> Result<()> {
        crate::interrupt::check()?;
        let chunk_size = into.chunk_size;
        into.data_bytes.clear();
        into.buf.set_len(chunks.len() * chunk_size);
        let buf = into.buf.as_mut_slice();
        // (disk offset, buffer offset, length) of the reads, in buffer order.
        let mut reads: Vec<(u64, usize, usize)> = Vec::new();
        for (j, &i) in chunks.iter().enumerate() {
            let start = i as u64 * chunk_size as u64;
            let len = index.chunk_len(i);
            let slot = j * chunk_size;
            // Each extent as a range of the chunk.
            let extents: Vec<(RunKind, Range<usize>)> = self
                .disk
                .extents(start..start + len as u64)?
                .iter()
                .map(|e| {
                    let lo = e.start.max(start) - start;
                    let hi = e.end().min(start + len as u64) - start;
                    (e.kind, lo as usize..hi.max(lo) as usize)
                })
                .collect();
            let data_bytes: usize = extents
                .iter()
                .filter(|(kind, _)| *kind == RunKind::Data)
                .map(|(_, r)| r.len())
                .sum();
            into.data_bytes.push(data_bytes as u64);
            // A zero chunk: nothing to read, and its slot is not even zeroed (a sparse
            // disk's holes cost neither memory nor time).
            if data_bytes == 0 {
                continue;
            }
            for (kind, Range { start: lo, end: hi }) in extents {
                if kind != RunKind::Data {
                    buf[slot + lo..slot + hi].fill(0);
                    continue;
                }
                let (disk_at, buf_at) = (start + lo as u64, slot + lo);
                match reads.last_mut() {
                    Some((d, b, l))
                        if *d + *l as u64 == disk_at
                            && *b + *l == buf_at
                            && ((*l + hi - lo) as u64) <= MAX_READ =>
                    {
                        *l += hi - lo
                    }
                    _ => reads.push((disk_at, buf_at, hi - lo)),
                }
            }
        }
        // Each read gets its own part of the buffer.
        let mut parts = Vec::with_capacity(reads.len());
        let (mut rest, mut at) = (buf, 0);
        for (disk_at, buf_at, len) in reads {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(buf_at - at);
            let (part, tail) = tail.split_at_mut(len);
            parts.push((disk_at, part));
            (rest, at) = (tail, buf_at + len);
        }
        let readers = parts.len().min(READERS);
        if readers <= 1 {
            return parts
                .into_iter()
                .try_for_each(|(d, part)| self.read(d, part));
        }
        parts.reverse();
        let queue = std::sync::Mutex::new(parts);
        let take = || queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..readers)
                .map(|_| {
                    s.spawn(|| {
                        while let Some((d, part)) = take() {
                            self.read(d, part)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            threads.into_iter().try_for_each(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(Error::Capture {
                        disk: self.name.to_string(),
                        reason: "a reading thread panicked".into(),
                    })
                })
            })
        })
    }

    fn read(&self, disk_at: u64, part: &mut [u8]) -> Result<()> {
        if let Some(l) = self.limiter {
            l.acquire(part.len() as u64);
        }
        self.disk
            .read_exact_at(disk_at, part)
            .map_err(|e| read_error(self.name, disk_at, e))
    }
}

/// Starts reading the data of `chunks` (coalesced into ranges of neighbours), for
/// sources read through the page cache: the loader's reads then find them in flight.
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
    /// the parent's copy damaged), so a step holds only work: the few changed chunks
    /// of an incremental, far apart, are read a step at a time all the same.
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

/// Stores chunk `j` of a loaded step (`len` bytes) unless it is zero or known.
fn capture_chunk(cap: &Capture<'_>, step: &StepData, j: usize, len: usize) -> Result<Outcome> {
    crate::interrupt::check()?;
    let data_bytes = step.data_bytes[j];
    if data_bytes == 0 {
        return Ok(Outcome::Zero { scanned: 0 });
    }
    let slot = j * step.chunk_size;
    store_chunk(cap, &step.buf.as_slice()[slot..slot + len], data_bytes)
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::image::{Extent, Format};
    use crate::io::ReadAt;

    const CHUNK: usize = 4096;

    /// A disk of `data` whose `holes` (chunk-relative byte ranges of whole chunks or
    /// parts) are unallocated; it records every read and fails those at `bad`.
    struct FakeDisk {
        data: Vec<u8>,
        holes: Vec<Range<u64>>,
        reads: Mutex<Vec<(u64, usize)>>,
        bad: Option<u64>,
    }

    impl ReadAt for FakeDisk {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.lock().unwrap().push((offset, buf.len()));
            if self
                .bad
                .is_some_and(|b| (offset..offset + buf.len() as u64).contains(&b))
            {
                return Err(Error::io("fake", "read", std::io::ErrorKind::Other.into()));
            }
            let at = offset as usize;
            buf.copy_from_slice(&self.data[at..at + buf.len()]);
            Ok(())
        }
    }

    impl DiskImage for FakeDisk {
        fn format(&self) -> Format {
            Format::Raw
        }
        fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
            // Split `range` at the holes' edges.
            let mut cuts = vec![range.start, range.end];
            for h in &self.holes {
                cuts.extend([h.start, h.end].into_iter().filter(|c| range.contains(c)));
            }
            cuts.sort_unstable();
            cuts.dedup();
            Ok(cuts
                .windows(2)
                .map(|w| Extent {
                    start: w[0],
                    len: w[1] - w[0],
                    kind: if self.holes.iter().any(|h| h.contains(&w[0])) {
                        RunKind::Unallocated
                    } else {
                        RunKind::Data
                    },
                })
                .collect())
        }
    }

    fn fake(chunks: usize, holes: Vec<Range<u64>>) -> FakeDisk {
        FakeDisk {
            data: (0..chunks * CHUNK).map(|i| (i % 251) as u8 + 1).collect(),
            holes,
            reads: Mutex::new(Vec::new()),
            bad: None,
        }
    }

    fn load(disk: &FakeDisk, chunks: &[usize]) -> Result<StepData> {
        let index = DiskIndex::zeroed(disk.size(), CHUNK as u32)?;
        let mut step = StepData::new(chunks.len(), CHUNK);
        // Garbage where the loader must write zeros (the buffer is reused).
        step.buf.set_len(chunks.len() * CHUNK);
        step.buf.as_mut_slice().fill(0xee);
        let loader = Loader {
            disk,
            name: "disk0",
            limiter: None,
        };
        loader.load(&index, chunks, &mut step)?;
        Ok(step)
    }

    #[test]
    fn loads_each_chunk_into_its_slot_reading_only_data_and_neighbours_at_once() {
        let c = CHUNK as u64;
        // Chunk 2 is a hole; chunk 5 has a hole in its middle.
        let disk = fake(8, vec![2 * c..3 * c, 5 * c + 100..5 * c + 300]);
        let chunks = [0, 1, 2, 3, 5, 7];
        let step = load(&disk, &chunks).unwrap();
        assert_eq!(step.data_bytes, [c, c, 0, c, c - 200, c]);
        for (j, &i) in chunks.iter().enumerate() {
            if i == 2 {
                // A zero chunk's slot is neither read nor zeroed (a sparse disk's
                // holes cost no memory).
                let slot = &step.buf.as_slice()[j * CHUNK..(j + 1) * CHUNK];
                assert!(slot.iter().all(|&b| b == 0xee), "zero chunk's slot touched");
                continue;
            }
            let mut want = disk.data[i * CHUNK..(i + 1) * CHUNK].to_vec();
            if i == 5 {
                want[100..300].fill(0);
            }
            let got = &step.buf.as_slice()[j * CHUNK..(j + 1) * CHUNK];
            assert!(got == want.as_slice(), "chunk {i} in slot {j}");
        }
        let mut reads = disk.reads.lock().unwrap().clone();
        reads.sort_unstable();
        // Chunks 0-1 are neighbours on the disk and in the buffer: one read. Chunk 2
        // is not read; 3 and 5 are not neighbours on the disk.
        assert_eq!(
            reads,
            [
                (0, 2 * CHUNK),
                (3 * c, CHUNK),
                (5 * c, 100),
                (5 * c + 300, CHUNK - 300),
                (7 * c, CHUNK)
            ]
        );
    }

    #[test]
    fn reads_no_more_than_max_read_at_once() {
        let chunks = (MAX_READ as usize / CHUNK) * 2 + 3;
        let disk = fake(chunks, Vec::new());
        let all: Vec<usize> = (0..chunks).collect();
        let step = load(&disk, &all).unwrap();
        assert!(step.buf.as_slice() == disk.data.as_slice());
        let reads = disk.reads.lock().unwrap();
        assert_eq!(reads.len(), 3);
        assert!(reads.iter().all(|&(_, len)| len as u64 <= MAX_READ));
    }

    #[test]
    fn a_failed_read_names_the_disk_and_offset() {
        let mut disk = fake(8, Vec::new());
        disk.bad = Some(5 * CHUNK as u64 + 7);
        let err = load(&disk, &[1, 3, 5])
            .err()
            .expect("the read of chunk 5 fails");
        let text = crate::error::chain(&err);
        assert!(text.contains("disk0"), "{text}");
        assert!(text.contains(&format!("{:#x}", 5 * CHUNK)), "{text}");
    }
}
