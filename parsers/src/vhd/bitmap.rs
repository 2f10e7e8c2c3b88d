//! The sector bitmap before each VHD data block (spec §"Block Allocation Table and Data
//! Blocks"): one bit per sector of the block, most significant bit first (sector 0 is
//! bit 7 of byte 0). In a differencing disk a set bit means the sector is stored in
//! this file; a clear bit means it reads through to the parent. (In a dynamic disk
//! QEMU ignores the bitmap and reads the whole allocated block; we do the same.)

/// Whether sector `first` of the block is present, and how many sectors from `first`
/// (at most `max`, at least 1 when `max > 0`) share that state. Bits past the end of
/// `bitmap` count as clear (not present), so a short bitmap cannot cause a panic.
pub fn bitmap_run(bitmap: &[u8], first: u64, max: u64) -> (bool, u64) {
    let bit = |s: u64| -> bool {
        usize::try_from(s / 8)
            .ok()
            .and_then(|i| bitmap.get(i))
            .is_some_and(|b| b & (0x80 >> (s % 8)) != 0)
    };
    let present = bit(first);
    let whole = if present { 0xFF } else { 0x00 };
    let end = first.saturating_add(max);
    let mut s = first;
    while s < end {
        // Skip whole bytes of the same state: bitmaps are mostly all-ones or all-zero.
        if s % 8 == 0 && end - s >= 8 {
            let byte = usize::try_from(s / 8)
                .ok()
                .and_then(|i| bitmap.get(i))
                .copied()
                .unwrap_or(0);
            if byte == whole {
                s += 8;
                continue;
            }
        }
        if bit(s) != present {
            break;
        }
        s += 1;
    }
    (present, s - first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first_runs() {
        let b = [0b1110_0000, 0xFF, 0x00, 0x01];
        assert_eq!(bitmap_run(&b, 0, 100), (true, 3));
        assert_eq!(bitmap_run(&b, 3, 100), (false, 5));
        assert_eq!(bitmap_run(&b, 8, 100), (true, 8));
        assert_eq!(bitmap_run(&b, 16, 100), (false, 15));
        assert_eq!(bitmap_run(&b, 31, 100), (true, 1));
        assert_eq!(bitmap_run(&b, 32, 100), (false, 100));
        assert_eq!(bitmap_run(&b, 8, 4), (true, 4));
        assert_eq!(bitmap_run(&b, 1, 1), (true, 1));
        assert_eq!(bitmap_run(&b, u64::MAX - 1, 5), (false, 1));
    }

    #[test]
    fn matches_a_bit_by_bit_reference() {
        let b: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(97) ^ (i >> 2)) as u8)
            .collect();
        for first in 0..(b.len() as u64 * 8) {
            for max in [1u64, 7, 64, 1000] {
                let (p, n) = bitmap_run(&b, first, max);
                let get = |s: u64| {
                    b.get((s / 8) as usize)
                        .is_some_and(|x| x & (0x80 >> (s % 8)) != 0)
                };
                assert_eq!(p, get(first));
                assert!(n >= 1 && n <= max);
                assert!((first..first + n).all(|s| get(s) == p));
                if n < max {
                    assert_ne!(get(first + n), p);
                }
            }
        }
    }
}
