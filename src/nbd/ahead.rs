//! Read-ahead for an NBD connection that one worker at a time may use.
//!
//! A backup reads a disk in chunks, each worker its own, and announces the chunks of
//! its next step beforehand (`DiskImage::prefetch`). Over NBD every read is a round
//! trip through the server, which then reads its own disk cold: one 256 KiB request
//! at a time left the connection idle between requests (a full backup over qemu-nbd
//! took 2.5 times as long as from the file, and a dirty-bitmap incremental waited
//! for its scattered chunks one by one). So a read also asks for what is announced
//! after it, up to [`MAX_FETCH`], all requests in flight together (the server reads
//! them side by side), and the surplus waits here for the workers that come for it.
//!
//! Only announced ranges are read ahead, clipped to data, so a change-tracked
//! incremental still reads only its changed chunks. The surplus is bounded
//! ([`MAX_HELD`]); a piece is dropped once every byte of it has been read, or, the
//! one furthest behind first, when newer pieces need the room.

use std::collections::BTreeMap;
use std::ops::Range;

/// The most fetched along with one read: requests for it are in flight together.
pub const MAX_FETCH: u64 = 8 << 20;

/// The largest request of a fetch (a multiple of every chunk size up to 1 MiB, so
/// chunk reads seldom meet a piece boundary; smaller requests let the server read
/// more of them side by side).
pub const MAX_REQUEST: u64 = 1 << 20;

/// The most surplus held at once (a few steps of a backup's workers).
pub const MAX_HELD: usize = 32 << 20;

/// The most announced ranges remembered; beyond, the lowest are forgotten (reads of
/// them are then simply not extended).
const MAX_PLANNED: usize = 1 << 14;

/// Announced ranges and the surplus of extended reads.
#[derive(Default, Debug)]
pub struct ReadAhead {
    /// Announced, not yet fetched: start -> end, disjoint.
    planned: BTreeMap<u64, u64>,
    /// Fetched, not yet read, by start (disjoint: only announced ranges are
    /// fetched, and fetching takes them off).
    held: BTreeMap<u64, Piece>,
    held_bytes: usize,
}

#[derive(Debug)]
struct Piece {
    data: Vec<u8>,
    /// Bytes of `data` handed out so far.
    taken: usize,
}

impl ReadAhead {
    /// Remembers that `range` will be read soon.
    pub fn plan(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // Take out what the new range overlaps, then merge it with the neighbours
        // that now end or start exactly at its edges.
        self.unplan(range.start, range.end);
        let mut start = range.start;
        let mut end = range.end;
        if let Some((&s, &e)) = self.planned.range(..start).next_back() {
            if e == start {
                self.planned.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.planned.remove(&end) {
            end = e;
        }
        while self.planned.len() >= MAX_PLANNED {
            self.planned.pop_first();
        }
        self.planned.insert(start, end);
    }

    /// Removes `[a, b)` from the announced ranges.
    fn unplan(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .planned
            .range(..b)
            .rev()
            .take_while(|(_, &e)| e > a)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.planned.remove(&s);
            if s < a {
                self.planned.insert(s, a);
            }
            if e > b {
                self.planned.insert(b, e);
            }
        }
    }

    /// Copies the held bytes at `offset` into the front of `buf`; returns how many
    /// (0 when no piece holds `offset`).
    pub fn take(&mut self, offset: u64, buf: &mut [u8]) -> usize {
        let Some((&start, piece)) = self.held.range_mut(..=offset).next_back() else {
            return 0;
        };
        let at = (offset - start) as usize;
        if at >= piece.data.len() {
            return 0;
        }
        let n = buf.len().min(piece.data.len() - at);
        buf[..n].copy_from_slice(&piece.data[at..at + n]);
        piece.taken += n;
        if piece.taken >= piece.data.len() {
            self.held_bytes -= piece.data.len();
            self.held.remove(&start);
        }
        n
    }

    /// What to fetch along with a read of `len` bytes at `offset`: the rest of the
    /// announced range holding it, then the announced ranges after it, in requests
    /// of at most `max_request` (and [`MAX_REQUEST`]) bytes whose offset and length
    /// are multiples of `align`; at most [`MAX_FETCH`] bytes and `max_requests`
    /// requests in all, and no more than the room for held bytes. Neither the read
    /// nor what it returns is announced any longer.
    pub fn fetch_plan(
        &mut self,
        offset: u64,
        len: u64,
        align: u64,
        max_request: u64,
        max_requests: usize,
    ) -> Vec<Range<u64>> {
        let align = align.max(1);
        let max_request = max_request.min(MAX_REQUEST);
        let read_end = offset.saturating_add(len);
        // The read itself is no longer to come.
        self.unplan(offset, read_end);
        let mut budget = (MAX_FETCH as usize).min(MAX_HELD.saturating_sub(self.held_bytes)) as u64;
        let mut plan = Vec::new();
        let candidates: Vec<(u64, u64)> = self
            .planned
            .range(read_end..)
            .map(|(&s, &e)| (s, e))
            .take(max_requests)
            .collect();
        for (s, e) in candidates {
            if budget == 0 || plan.len() >= max_requests {
                break;
            }
            let lo = s.div_ceil(align).saturating_mul(align);
            let hi = e - e % align;
            if lo >= hi {
                continue;
            }
            let mut at = lo;
            while at < hi && budget > 0 && plan.len() < max_requests {
                let n = (hi - at).min(max_request).min(budget);
                let n = n - n % align;
                if n == 0 {
                    break;
                }
                plan.push(at..at + n);
                budget -= n;
                at += n;
            }
            self.unplan(lo, at);
        }
        plan
    }

    /// Keeps bytes fetched beyond a read (`data` starts at `start`), dropping the
    /// pieces furthest behind (readers move forward) if that is needed to stay
    /// within [`MAX_HELD`].
    pub fn hold(&mut self, start: u64, data: Vec<u8>) {
        if data.is_empty() || data.len() > MAX_HELD {
            return;
        }
        while self.held_bytes + data.len() > MAX_HELD {
            match self.held.pop_first() {
                Some((_, p)) => self.held_bytes -= p.data.len(),
                None => break,
            }
        }
        self.held_bytes += data.len();
        let old = self.held.insert(start, Piece { data, taken: 0 });
        if let Some(p) = old {
            self.held_bytes -= p.data.len();
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
// Expected plans are written as arrays of ranges, one range or more.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const K: u64 = 1 << 10;

    fn planned(ra: &ReadAhead) -> Vec<(u64, u64)> {
        ra.planned.iter().map(|(&s, &e)| (s, e)).collect()
    }

    #[test]
    fn announced_reads_extend_and_the_surplus_is_served_once() {
        let mut ra = ReadAhead::default();
        ra.plan(0..1024 * K);
        // A read of the first 256 KiB brings the rest of the announced MiB.
        assert_eq!(
            ra.fetch_plan(0, 256 * K, 512, MAX_REQUEST, 32),
            [256 * K..1024 * K]
        );
        assert!(planned(&ra).is_empty());
        let data: Vec<u8> = (0..768 * K).map(|i| i as u8).collect();
        ra.hold(256 * K, data.clone());
        assert!(ra
            .fetch_plan(256 * K, 256 * K, 512, MAX_REQUEST, 32)
            .is_empty());
        let mut buf = vec![0u8; 256 * K as usize];
        for at in [512 * K, 256 * K, 768 * K] {
            assert_eq!(ra.take(at, &mut buf), buf.len());
            let from = (at - 256 * K) as usize;
            assert_eq!(buf, data[from..from + buf.len()]);
        }
        // Every byte was taken: the piece is gone.
        assert_eq!(ra.held_bytes(), 0);
        assert_eq!(ra.take(256 * K, &mut buf), 0);
    }

    #[test]
    fn later_announced_ranges_come_along_in_aligned_requests() {
        let mut ra = ReadAhead::default();
        // Scattered chunks, as a dirty-bitmap incremental announces them.
        for i in [2u64, 5, 6, 9] {
            ra.plan(i * 256 * K..(i + 1) * 256 * K);
        }
        // A read before all of them, outside any: the announced ones come along.
        assert_eq!(
            ra.fetch_plan(0, 256 * K, 4096, MAX_REQUEST, 32),
            [512 * K..768 * K, 1280 * K..1792 * K, 2304 * K..2560 * K]
        );
        assert!(planned(&ra).is_empty());
        // Nothing announced: nothing more.
        assert!(ra.fetch_plan(0, 4096, 512, MAX_REQUEST, 32).is_empty());
        // Unaligned edges are trimmed inwards and stay announced.
        ra.plan(1000..20_000);
        assert_eq!(ra.fetch_plan(0, 512, 4096, MAX_REQUEST, 32), [4096..16384]);
        assert_eq!(planned(&ra), [(1000, 4096), (16384, 20_000)]);
    }

    #[test]
    fn a_read_inside_a_range_keeps_its_head_announced() {
        let mut ra = ReadAhead::default();
        ra.plan(0..100 * 4096);
        assert_eq!(
            ra.fetch_plan(8 * 4096, 4096, 4096, MAX_REQUEST, 32),
            [9 * 4096..100 * 4096]
        );
        assert_eq!(planned(&ra), [(0, 8 * 4096)]);
        assert_eq!(
            ra.fetch_plan(0, 4096, 4096, MAX_REQUEST, 32),
            [4096..8 * 4096]
        );
        // A read that runs past the end of its announced range takes all of it off:
        // no later fetch brings those bytes again.
        ra.plan(100 * 4096..110 * 4096);
        ra.plan(200 * 4096..201 * 4096);
        assert_eq!(
            ra.fetch_plan(105 * 4096, 20 * 4096, 4096, MAX_REQUEST, 32),
            [200 * 4096..201 * 4096]
        );
        assert_eq!(planned(&ra), [(100 * 4096, 105 * 4096)]);
        assert_eq!(
            ra.fetch_plan(0, 4096, 4096, MAX_REQUEST, 32),
            [100 * 4096..105 * 4096]
        );
    }

    #[test]
    fn fetches_are_bounded() {
        let mut ra = ReadAhead::default();
        ra.plan(0..1 << 40);
        let plan = ra.fetch_plan(0, 4096, 512, MAX_REQUEST, 32);
        assert_eq!(plan.iter().map(|r| r.end - r.start).sum::<u64>(), MAX_FETCH);
        assert!(plan.iter().all(|r| r.end - r.start <= MAX_REQUEST));
        assert_eq!(plan[0].start, 4096);
        // At most max_requests requests.
        assert_eq!(ra.fetch_plan(1 << 30, 4096, 512, MAX_REQUEST, 3).len(), 3);
        // With the room used up, nothing comes along.
        for i in 0..(MAX_HELD as u64 / MAX_REQUEST) {
            ra.hold(i * MAX_REQUEST, vec![1; MAX_REQUEST as usize]);
        }
        assert_eq!(ra.held_bytes(), MAX_HELD);
        assert!(ra
            .fetch_plan(1 << 35, 4096, 512, MAX_REQUEST, 32)
            .is_empty());
        // Holding more drops the piece furthest behind.
        ra.hold(1 << 36, vec![2; 4096]);
        assert!(ra.held_bytes() <= MAX_HELD);
        let mut b = [0u8; 1];
        assert_eq!(ra.take(0, &mut b), 0);
        assert_eq!(ra.take(1 << 36, &mut b), 1);
        assert_eq!(b[0], 2);
    }

    #[test]
    fn plans_merge() {
        let mut ra = ReadAhead::default();
        ra.plan(0..10);
        ra.plan(10..20);
        ra.plan(5..30);
        ra.plan(40..50);
        assert_eq!(planned(&ra), [(0, 30), (40, 50)]);
        ra.plan(25..45);
        assert_eq!(planned(&ra), [(0, 50)]);
    }

    #[test]
    fn partial_cover_serves_the_prefix() {
        let mut ra = ReadAhead::default();
        ra.hold(100, vec![7; 50]);
        let mut buf = [0u8; 80];
        assert_eq!(ra.take(120, &mut buf), 30);
        assert!(buf[..30].iter().all(|&b| b == 7));
    }
}
