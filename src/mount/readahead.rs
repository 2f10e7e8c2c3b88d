//! Readahead for sequential readers: each open file tracks where the next read
//! would start; once two reads in a row continue each other, the next few units
//! (chunks of the restore point) are loaded on a small pool of background threads
//! while the reader consumes the current one. The kernel's own readahead asks only
//! for the next 128 KiB or so, while loading a chunk (read, decompress, verify)
//! costs a whole chunk: this keeps that cost off the reader's path.
//!
//! Prefetching only warms the chunk cache; a failed prefetch is dropped silently
//! (the real read reports the error, with its path).

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

/// Units kept loaded ahead of a sequential reader.
const WINDOW_UNITS: u64 = 4;
/// Jobs waiting for a thread; more are dropped (readahead is only a hint).
const QUEUE: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The pool of background threads that run prefetch jobs.
pub struct Readahead {
    jobs: Mutex<SyncSender<Job>>,
}

impl Readahead {
    /// Starts `threads` threads.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("vmback-readahead-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Readahead {
            jobs: Mutex::new(tx),
        })
    }

    /// Queues `job`; drops it when the queue is full.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let tx = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match tx.try_send(Box::new(job)) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the receiver lock only to take one job, never while running it.
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// Per open file: whether reads are sequential, and how far ahead was loaded.
#[derive(Default)]
pub struct Sequential {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Where the next read starts if the reader is sequential.
    next: u64,
    /// Consecutive reads that continued the previous one.
    run: u32,
    /// End of the range already handed to the pool.
    ahead: u64,
}

impl Sequential {
    /// Records a read of `len` bytes at `offset` in a file of `size` bytes; returns
    /// the range to prefetch now, if any (whole `unit`s ahead of the reader).
    pub fn on_read(&self, offset: u64, len: u64, size: u64, unit: u64) -> Option<Range<u64>> {
        let unit = unit.max(4096);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // The kernel sends a sequential reader's requests in parallel, and our
        // threads may take them slightly out of order: a read within a unit of the
        // expected offset still counts as sequential.
        let end = offset.saturating_add(len);
        if s.next != 0 && offset.abs_diff(s.next) <= unit {
            s.run = s.run.saturating_add(1);
            s.next = s.next.max(end);
        } else {
            s.run = 0;
            s.ahead = 0;
            s.next = end;
        }
        if s.run < 1 {
            return None;
        }
        let target = s
            .next
            .saturating_add(unit.saturating_mul(WINDOW_UNITS))
            .min(size);
        let start = s.ahead.max(s.next);
        // Hand out whole units only (or what is left of the file), so a reader of
        // 128 KiB blocks does not queue a job per block.
        if target <= start || target - start < unit.min(size.saturating_sub(start)) {
            return None;
        }
        s.ahead = target;
        Some(start..target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_trigger_readahead_in_units() {
        let s = Sequential::default();
        let unit = 1 << 20;
        let size = 100 << 20;
        let blk = 128 << 10;
        assert_eq!(s.on_read(0, blk, size, unit), None);
        // Second read continues the first: prefetch 4 units past it.
        let r = s.on_read(blk, blk, size, unit).unwrap();
        assert_eq!(r, 2 * blk..2 * blk + 4 * unit);
        // Next reads are inside the window: nothing until a unit's worth is free.
        let mut off = 2 * blk;
        let mut more = Vec::new();
        while off < 3 * unit {
            if let Some(r) = s.on_read(off, blk, size, unit) {
                more.push(r);
            }
            off += blk;
        }
        assert!(!more.is_empty());
        for r in &more {
            assert!(r.end - r.start >= unit);
        }
        // Slightly out of order (parallel requests) is still sequential: no restart.
        let r = s.on_read(off + blk, blk, size, unit);
        let r2 = s.on_read(off, blk, size, unit);
        assert!(r.is_none() || r2.is_none(), "one job per unit at most");
        // A seek restarts detection.
        assert_eq!(s.on_read(50 << 20, blk, size, unit), None);
        // Near the end of the file the window stops at the size.
        s.on_read(size - 2 * blk, blk, size, unit);
        let r = s.on_read(size - blk, blk, size, unit);
        assert_eq!(r, None, "nothing left past the end");
    }
}
