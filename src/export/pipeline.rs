//! The streaming core every container writer shares: walk the disk's allocation map,
//! read only the ranges that hold data, find what in them is not all zero, and hand
//! the pieces to the format's writer in ascending disk order.
//!
//! Reading, zero scanning, the format's per-piece work (compression for
//! streamOptimized) and the writes of the data run on worker threads; only the
//! allocation in between runs in disk order (see [`walk`]). So allocation in the
//! output is ascending, like a sequential writer's, and memory is bounded by a
//! window of [`PIECE`]-sized buffers whatever the disk size.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Condvar, Mutex};

use vmback_parsers::bytes::is_zero;

use super::output::Output;
use crate::error::{Error, Result};
use crate::image::{DiskImage, RunKind};
use crate::io::AlignedBuf;
use crate::progress::bytes_bar;

/// Largest piece read at once; pieces never cross a multiple of it, so a format
/// table covering a multiple of 1 MiB (VMDK grain table: 32 MiB, qcow2 L2 table:
/// 512 MiB) never spans two pieces. 1 MiB: a piece is copied into memory by its
/// read and out by its write, and small pieces are still in the CPU caches then.
pub(super) const PIECE: u64 = 1 << 20;
/// How far ahead of the piece it reads a worker asks the kernel to start reading
/// (`DiskImage::prefetch`, POSIX_FADV_WILLNEED): each piece is asked for once, a few
/// pieces before a worker needs it. Measured on the benchmark VM, raw image to
/// qcow2, cold, 3 interleaved runs: 5.43 / 6.15 / 5.50 s without it, 4.49 / 5.03 /
/// 3.99 s with 4 MiB (8 and 16 MiB no better), with about 40% less CPU: the
/// readahead the reads themselves trigger was the costlier way to fill the cache.
const READ_AHEAD: u64 = 4 << 20;
/// Pieces per worker that may be read ahead of the sink or wait for their writes:
/// enough to keep every worker busy, and memory at a few MiB per worker.
const WINDOW_PER_WORKER: usize = 2;

/// A read piece of the virtual disk and where in it the non-zero data is.
pub(super) struct Piece {
    /// Virtual offset of the first byte of `buf`.
    pub offset: u64,
    buf: AlignedBuf,
    /// Non-zero ranges (virtual offsets, ascending, disjoint, not adjacent), each a
    /// union of whole granules (the last one clipped at the end of the disk).
    pub runs: Vec<Range<u64>>,
}

impl Piece {
    /// The piece's non-zero runs, split on a grid of `grid` bytes (a container's
    /// blocks or tables), each part with its cell number.
    pub fn runs_on_grid(&self, grid: u64) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        self.runs
            .iter()
            .flat_map(move |r| split_on_grid(r.clone(), grid))
    }

    /// The bytes of virtual range `r`, which lies inside this piece.
    pub fn bytes(&self, r: &Range<u64>) -> &[u8] {
        // OK: runs and their sub-ranges lie inside the piece by construction.
        &self.buf.as_slice()[(r.start - self.offset) as usize..(r.end - self.offset) as usize]
    }
}

/// What the walk saw.
pub(super) struct Walked {
    /// Bytes the disk reports as data (whether zero or not).
    pub data_bytes: u64,
}

/// Recycles piece buffers from one batch to the next.
struct Pool(Mutex<Vec<AlignedBuf>>);

impl Pool {
    /// A buffer of `len` (at most [`PIECE`]) bytes.
    fn get(&self, len: usize) -> AlignedBuf {
        let mut b = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| AlignedBuf::new(PIECE as usize));
        b.set_len(len);
        b
    }

    fn put(&self, b: AlignedBuf) {
        if let Ok(mut p) = self.0.lock() {
            p.push(b);
        }
    }
}

/// The data ranges of the disk, widened to whole granules and merged: every range
/// a writer might have to store, and nothing else.
fn data_ranges(disk: &(dyn DiskImage + '_), granule: u64) -> Result<(Vec<Range<u64>>, u64)> {
    let size = disk.size();
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut data_bytes = 0;
    for e in disk.extents(0..size)? {
        if e.kind != RunKind::Data {
            continue;
        }
        data_bytes += e.len;
        let start = e.start / granule * granule;
        let end = e.end().div_ceil(granule).saturating_mul(granule).min(size);
        match ranges.last_mut() {
            Some(r) if start <= r.end => r.end = r.end.max(end),
            _ => ranges.push(start..end),
        }
    }
    Ok((ranges, data_bytes))
}

/// Pieces of `ranges`, split where they cross a multiple of [`PIECE`].
fn pieces(ranges: &[Range<u64>]) -> impl Iterator<Item = Range<u64>> + '_ {
    ranges
        .iter()
        .flat_map(|r| split_on_grid(r.clone(), PIECE).map(|(_, p)| p))
}

/// `range` split where it crosses a multiple of `grid` (> 0), each part with the
/// number of the grid cell it lies in: how the writers map runs onto their blocks.
pub(super) fn split_on_grid(
    range: Range<u64>,
    grid: u64,
) -> impl Iterator<Item = (u64, Range<u64>)> {
    let mut at = range.start;
    std::iter::from_fn(move || {
        (at < range.end).then(|| {
            let cell = at / grid;
            let end = ((cell + 1) * grid).min(range.end);
            let part = at..end;
            at = end;
            (cell, part)
        })
    })
}

/// The non-zero granules of `buf` (read at `offset`), as merged virtual ranges.
pub(super) fn nonzero_runs(buf: &[u8], offset: u64, granule: u64) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    // OK: granule is a constant (4 KiB .. 64 KiB).
    for (i, g) in buf.chunks(granule as usize).enumerate() {
        if is_zero(g) {
            continue;
        }
        let start = offset + i as u64 * granule;
        let end = start + g.len() as u64;
        match runs.last_mut() {
            Some(r) if r.end == start => r.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// A deferred write of piece data: the virtual range (inside the piece) goes to this
/// offset of the output file.
pub(super) type DataWrite = (Range<u64>, u64);

/// The format's sink: places a piece (with its prepared value) in the output and
/// lists the data writes it needs.
pub(super) type Sink<'a, P> = dyn FnMut(&Piece, P, &mut Vec<DataWrite>) -> Result<()> + 'a;

/// Work shared by the workers and the thread that runs the sink.
struct Shared<I, P> {
    /// Pieces not yet handed out, and the index the next one gets.
    todo: I,
    next_index: usize,
    exhausted: bool,
    /// Read (and prepared) pieces waiting for the sink, by index.
    ready: BTreeMap<usize, Result<(Piece, P)>>,
    /// Pieces the sink has placed, with the data writes it asked for.
    writes: VecDeque<(Piece, Vec<DataWrite>)>,
    /// Pieces handed out and not yet written: bounds memory.
    in_flight: usize,
    /// The sink has seen every piece.
    sunk: bool,
    /// Stop everything; the first error is kept in `failed`.
    stop: bool,
    failed: Option<Error>,
}

impl<I, P> Shared<I, P> {
    fn fail(&mut self, e: Error) {
        self.stop = true;
        self.failed.get_or_insert(e);
    }
}

/// What a thread does next.
enum Job {
    Read(usize, Range<u64>),
    Write(Piece, Vec<DataWrite>),
}

/// The error recorded when a thread of the walk panics (a bug), so the others stop
/// instead of waiting for its pieces forever.
fn panicked(out: &Output) -> Error {
    Error::io(
        out.final_path(),
        "export",
        std::io::Error::other("internal error: an export thread panicked"),
    )
}

/// Walks every data range of `disk` in granules of `granule` bytes (a power of two
/// dividing [`PIECE`]):
///
/// - worker threads (as many as rayon's pool has) read pieces ahead of the sink,
///   scan them for non-zero granules and give them to `prepare` (compression, for
///   example), at most a window of pieces ahead;
/// - on the calling thread, `sink` gets every piece with its prepared value in
///   ascending disk order: it allocates space in the output, may write its own
///   metadata, and pushes the writes of piece data it wants onto the list it is given;
/// - the workers (and the calling thread, while it waits) then do those writes.
///
/// There is no barrier between batches, so a worker that the scheduler takes off a
/// busy machine stalls nobody but the pieces it holds. Allocation stays in ascending
/// order, copies into and out of the page cache run on every core, and memory is a
/// window of pieces whatever the disk size. The first error stops the walk and is
/// returned.
pub(super) fn walk<P: Send>(
    disk: &(dyn DiskImage + '_),
    granule: u64,
    out: &Output,
    prepare: &(dyn Fn(&Piece) -> Result<P> + Sync),
    sink: &mut Sink<'_, P>,
) -> Result<Walked> {
    let (ranges, data_bytes) = data_ranges(disk, granule)?;
    let bar = bytes_bar(ranges.iter().map(|r| r.end - r.start).sum(), "export");
    // Workers wait for reads and writes most of the time: several per thread keep
    // the device busy, as in the raw export.
    let workers = (rayon::current_num_threads() * super::WORKERS_PER_THREAD).max(1);
    let window = WINDOW_PER_WORKER * workers;
    let pool = Pool(Mutex::new(Vec::new()));
    let shared = Mutex::new(Shared {
        todo: pieces(&ranges),
        next_index: 0,
        exhausted: false,
        ready: BTreeMap::new(),
        writes: VecDeque::new(),
        in_flight: 0,
        sunk: false,
        stop: false,
        failed: None,
    });
    let changed = Condvar::new();
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    let wait = |g| changed.wait(g).unwrap_or_else(|p| p.into_inner());

    // Does one job and records its outcome.
    let run = |job: Job| {
        match job {
            Job::Read(index, r) => {
                let read = (|| {
                    crate::interrupt::check()?;
                    disk.prefetch(
                        r.start.saturating_add(READ_AHEAD)..r.end.saturating_add(READ_AHEAD),
                    );
                    // OK: a piece is at most PIECE long.
                    let mut buf = pool.get((r.end - r.start) as usize);
                    disk.read_exact_at(r.start, buf.as_mut_slice())?;
                    let runs = nonzero_runs(buf.as_slice(), r.start, granule);
                    let piece = Piece {
                        offset: r.start,
                        buf,
                        runs,
                    };
                    let p = prepare(&piece)?;
                    Ok((piece, p))
                })();
                lock().ready.insert(index, read);
            }
            Job::Write(piece, writes) => {
                let written = writes
                    .iter()
                    .try_for_each(|(r, at)| out.write_at(piece.bytes(r), *at));
                bar.inc(piece.buf.as_slice().len() as u64);
                pool.put(piece.buf);
                let mut st = lock();
                st.in_flight -= 1;
                if let Err(e) = written {
                    st.fail(e);
                }
            }
        }
        changed.notify_all();
    };
    // Runs a job; a panic stops the walk (and is reported as an error).
    let guarded = |job: Job| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job))).is_err() {
            lock().fail(panicked(out));
            changed.notify_all();
        }
    };

    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let job = {
                    let mut st = lock();
                    loop {
                        if st.stop {
                            return;
                        }
                        if let Some((piece, w)) = st.writes.pop_front() {
                            break Job::Write(piece, w);
                        }
                        if !st.exhausted && st.in_flight < window {
                            if let Some(r) = st.todo.next() {
                                let index = st.next_index;
                                st.next_index += 1;
                                st.in_flight += 1;
                                break Job::Read(index, r);
                            }
                            st.exhausted = true;
                            changed.notify_all();
                        }
                        if st.sunk && st.in_flight == 0 {
                            return;
                        }
                        st = wait(st);
                    }
                };
                guarded(job);
            });
        }

        // The sink, in disk order, on this thread.
        let sunk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
            let mut next = 0usize;
            loop {
                let read = {
                    let mut st = lock();
                    loop {
                        if st.stop {
                            return Ok(());
                        }
                        if let Some(read) = st.ready.remove(&next) {
                            break read;
                        }
                        if st.exhausted && next == st.next_index {
                            return Ok(());
                        }
                        // Help with the writes while the next piece is being read.
                        if let Some((piece, w)) = st.writes.pop_front() {
                            drop(st);
                            guarded(Job::Write(piece, w));
                            st = lock();
                            continue;
                        }
                        st = wait(st);
                    }
                };
                let (piece, p) = read?;
                let mut w = Vec::new();
                sink(&piece, p, &mut w)?;
                lock().writes.push_back((piece, w));
                changed.notify_all();
                next += 1;
            }
        }));
        let mut st = lock();
        match sunk {
            Ok(Ok(())) => st.sunk = true,
            Ok(Err(e)) => st.fail(e),
            Err(_) => st.fail(panicked(out)),
        }
        drop(st);
        changed.notify_all();
        // Leaving the scope joins the workers: they do the last writes first.
    });
    bar.finish_and_clear();
    let failed = lock().failed.take();
    match failed {
        Some(e) => Err(e),
        None => Ok(Walked { data_bytes }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_on_the_grid() {
        let r = [0..100, (PIECE - 10)..(2 * PIECE + 5)];
        let p: Vec<_> = pieces(&r).collect();
        assert_eq!(
            p,
            vec![
                0..100,
                (PIECE - 10)..PIECE,
                PIECE..2 * PIECE,
                2 * PIECE..2 * PIECE + 5
            ]
        );
    }

    #[test]
    fn runs_merge_and_clip() {
        let mut buf = vec![0u8; 4096 * 4 + 100];
        buf[10] = 1;
        buf[4096 + 5] = 1;
        buf[4096 * 4 + 99] = 1;
        assert_eq!(
            nonzero_runs(&buf, 8192, 4096),
            vec![8192..8192 + 8192, 8192 + 16384..8192 + 16384 + 100]
        );
        assert!(nonzero_runs(&[0; 9000], 0, 4096).is_empty());
    }
}
