//! The file allocation table as a whole: how many clusters are free. fatgen103
//! section 4: an entry of 0 marks a free cluster; FAT32 entries use their low 28
//! bits. Counting the table is exact, unlike FAT32's FSInfo free count, which the
//! spec calls a hint (0xFFFFFFFF = unknown) and which drivers leave stale.
//!
//! The caller reads the FAT in pieces (a FAT32 FAT can be 1 GiB) and passes each piece
//! with the number of its first entry; a FAT12 piece must start on an even entry
//! (two entries share three bytes).

use std::ops::Range;

use super::boot::FatKind;

/// Counts the free entries among `want` (entry numbers) found in `piece`, which holds
/// the FAT's bytes from entry `first` on. Entries of `want` outside the piece are not
/// counted; so is a FAT12 piece whose `first` is odd (never produced by a caller
/// that splits on even entries).
pub fn count_free_entries(kind: FatKind, piece: &[u8], first: u64, want: Range<u64>) -> u64 {
    let in_piece = piece.len() as u64 * 8 / kind.bits();
    let from = want.start.max(first);
    let to = want.end.min(first.saturating_add(in_piece));
    if from >= to {
        return 0;
    }
    let (lo, hi) = (from - first, to - first);
    match kind {
        FatKind::Fat32 => piece
            .chunks_exact(4)
            .skip(lo as usize)
            .take((hi - lo) as usize)
            .filter(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & 0x0fff_ffff == 0)
            .count() as u64,
        FatKind::Fat16 => piece
            .chunks_exact(2)
            .skip(lo as usize)
            .take((hi - lo) as usize)
            .filter(|e| e[0] == 0 && e[1] == 0)
            .count() as u64,
        FatKind::Fat12 => {
            if first % 2 != 0 {
                return 0;
            }
            (lo..hi)
                .filter(|&i| {
                    // Entry i sits in the 16 bits at byte i * 3 / 2: low 12 bits when
                    // i is even, high 12 bits when odd.
                    let at = (i * 3 / 2) as usize;
                    let (Some(&a), Some(&b)) = (piece.get(at), piece.get(at + 1)) else {
                        return false;
                    };
                    let v = u16::from_le_bytes([a, b]);
                    let v = if i % 2 == 0 { v & 0x0fff } else { v >> 4 };
                    v == 0
                })
                .count() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat12_packs_two_entries_in_three_bytes() {
        // Entries: 0xff8 0xfff | 0x000 0x003 | 0x000 0x000 (media, EOC, free, used, free, free).
        let fat = [0xf8, 0xff, 0xff, 0x00, 0x30, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(count_free_entries(FatKind::Fat12, &fat, 0, 2..6), 3);
        assert_eq!(count_free_entries(FatKind::Fat12, &fat, 0, 3..4), 0);
        assert_eq!(count_free_entries(FatKind::Fat12, &fat, 0, 2..3), 1);
        // A range past the piece counts only what the piece holds.
        assert_eq!(count_free_entries(FatKind::Fat12, &fat, 0, 2..100), 3);
        assert_eq!(count_free_entries(FatKind::Fat12, &fat, 1, 2..6), 0);
    }

    #[test]
    fn fat16_and_fat32_pieces() {
        let fat16: Vec<u8> = [0xfff8u16, 0xffff, 0, 5, 0, 0xfff7]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_free_entries(FatKind::Fat16, &fat16, 0, 2..6), 2);
        // Upper 4 bits of a FAT32 entry are reserved: 0xf0000000 is free.
        let fat32: Vec<u8> = [0u32, 0xf000_0000, 7, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        // The piece starts at entry 100.
        assert_eq!(count_free_entries(FatKind::Fat32, &fat32, 100, 0..1000), 3);
        assert_eq!(count_free_entries(FatKind::Fat32, &fat32, 100, 101..103), 1);
        assert_eq!(count_free_entries(FatKind::Fat32, &fat32, 100, 0..100), 0);
        assert_eq!(
            count_free_entries(FatKind::Fat32, &fat32[..3], 100, 0..1000),
            0
        );
    }
}
