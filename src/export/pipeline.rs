//! The streaming core every container writer shares: walk the disk's allocation map,
//! read only the ranges that hold data, find what in them is not all zero, and hand
//! the pieces to the format's writer in ascending disk order.
//!
//! Reading, zero scanning and the format's per-piece work (compression for
//! streamOptimized) run in parallel on the rayon pool, a batch of pieces at a time;
//! the writer consumes batches on its own thread, in order, while the next batch is
//! read. So allocation in the output is ascending, like a sequential writer's, and
//! memory is bounded by a few batches of [`PIECE`] bytes whatever the disk size.

use std::ops::Range;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use rayon::prelude::*;
use vmback_parsers::bytes::is_zero;

use crate::error::Result;
use crate::image::{DiskImage, RunKind};
use crate::progress::bytes_bar;

/// Largest piece read at once; pieces never cross a multiple of it, so a format
/// table covering a multiple of 4 MiB (VMDK grain table: 32 MiB, qcow2 L2 table:
/// 512 MiB) never spans two pieces.
pub(super) const PIECE: u64 = 4 << 20;

/// A read piece of the virtual disk and where in it the non-zero data is.
pub(super) struct Piece {
    /// Virtual offset of `buf[0]`.
    pub offset: u64,
    pub buf: Vec<u8>,
    /// Non-zero ranges (virtual offsets, ascending, disjoint, not adjacent), each a
    /// union of whole granules (the last one clipped at the end of the disk).
    pub runs: Vec<Range<u64>>,
}

impl Piece {
    /// The bytes of virtual range `r`, which lies inside this piece.
    pub fn bytes(&self, r: &Range<u64>) -> &[u8] {
        // OK: runs and their sub-ranges lie inside the piece by construction.
        &self.buf[(r.start - self.offset) as usize..(r.end - self.offset) as usize]
    }
}

/// What the walk saw.
pub(super) struct Walked {
    /// Bytes the disk reports as data (whether zero or not).
    pub data_bytes: u64,
}

/// Recycles piece buffers between the reader and the writer thread.
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn get(&self, len: usize) -> Vec<u8> {
        let mut b = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        b.resize(len, 0);
        b
    }

    fn put(&self, b: Vec<u8>) {
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
    ranges.iter().flat_map(|r| {
        let mut at = r.start;
        std::iter::from_fn(move || {
            (at < r.end).then(|| {
                let end = ((at / PIECE + 1) * PIECE).min(r.end);
                let p = at..end;
                at = end;
                p
            })
        })
    })
}

/// The non-zero granules of `buf` (read at `offset`), as merged virtual ranges.
fn nonzero_runs(buf: &[u8], offset: u64, granule: u64) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    // OK: granule is a format constant (4 KiB .. 64 KiB).
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

/// Walks every data range of `disk` in granules of `granule` bytes (a power of two
/// dividing [`PIECE`]): `prepare` runs on each read piece in parallel, then `sink`
/// gets every piece with its prepared value, one at a time, in ascending order, on a
/// writer thread. The first error (of a read, `prepare` or `sink`) stops the walk
/// and is returned.
pub(super) fn walk<P: Send>(
    disk: &(dyn DiskImage + '_),
    granule: u64,
    prepare: &(dyn Fn(&Piece) -> Result<P> + Sync),
    sink: &mut (dyn FnMut(&Piece, P) -> Result<()> + Send),
) -> Result<Walked> {
    let (ranges, data_bytes) = data_ranges(disk, granule)?;
    let bar = bytes_bar(ranges.iter().map(|r| r.end - r.start).sum(), "export");
    let batch_len = 2 * rayon::current_num_threads().max(1);
    let pool = Pool(Mutex::new(Vec::new()));
    let pool = &pool;
    let mut todo = pieces(&ranges);

    let (produced, written) = std::thread::scope(|scope| {
        // Two batches may wait while a third is written: memory stays at about
        // 3 × batch_len × PIECE.
        let (tx, rx) = sync_channel::<Vec<(Piece, P)>>(1);
        let writer = scope.spawn(move || -> Result<()> {
            for batch in rx {
                for (piece, p) in batch {
                    sink(&piece, p)?;
                    pool.put(piece.buf);
                }
            }
            Ok(())
        });
        let produced = (|| -> Result<()> {
            loop {
                let batch: Vec<Range<u64>> = todo.by_ref().take(batch_len).collect();
                if batch.is_empty() {
                    return Ok(());
                }
                let done = batch
                    .par_iter()
                    .map(|r| -> Result<(Piece, P)> {
                        // OK: a piece is at most PIECE (4 MiB) long.
                        let mut buf = pool.get((r.end - r.start) as usize);
                        disk.read_exact_at(r.start, &mut buf)?;
                        let runs = nonzero_runs(&buf, r.start, granule);
                        let piece = Piece {
                            offset: r.start,
                            buf,
                            runs,
                        };
                        let p = prepare(&piece)?;
                        bar.inc(r.end - r.start);
                        Ok((piece, p))
                    })
                    .collect::<Result<Vec<_>>>()?;
                if tx.send(done).is_err() {
                    // The writer stopped: its error is the one to report.
                    return Ok(());
                }
            }
        })();
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (produced, written)
    });
    bar.finish_and_clear();
    written?;
    produced?;
    Ok(Walked { data_bytes })
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
