//! The FAT boot sector's BIOS parameter block: where the FAT and the data area lie
//! and how many clusters there are. Layout: Microsoft fatgen103 section 3 (BPB at
//! 0x0B; FAT32 extension at 0x24).
//!
//! The FAT width follows the Linux kernel (the reader a guest most often has): a
//! zero 16-bit FAT size means the FAT32 layout; otherwise more than 4084 clusters is
//! FAT16, else FAT12 (fatgen103's own count rule, which gives the same answer on
//! every volume a formatter makes).
//!
//! Invariants of [`FatBoot`]: sector size is 512..=4096 and a power of two, cluster
//! size a power of two up to 128 sectors, at least one FAT, the active FAT exists,
//! the data area starts inside the volume's stated sectors, and the FAT is large
//! enough for an entry per cluster.

use nom::bytes::complete::take;
use nom::number::complete::{le_u16, le_u32, u8 as byte};
use nom::Parser;

use crate::bytes::{need, run};
use crate::error::{ParseError, Result};

const WHAT: &str = "FAT boot sector";

/// Most clusters a FAT32 volume can have (cluster numbers 2..=0x0FFFFFF6).
const MAX_FAT32_CLUSTERS: u64 = 0x0FFF_FFF5;
/// Most clusters of FAT12 (the kernel's MAX_FAT12).
const MAX_FAT12_CLUSTERS: u64 = 4084;

/// Width of the FAT's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

impl FatKind {
    /// Bits per FAT entry.
    pub fn bits(self) -> u64 {
        match self {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        }
    }
}

/// Validated geometry of a FAT volume (byte values are offsets inside the volume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatBoot {
    pub kind: FatKind,
    pub sector_size: u32,
    pub cluster_size: u32,
    /// Byte offset of the FAT in use (the first one unless FAT32 mirroring is off).
    pub fat_offset: u64,
    /// Bytes of one FAT.
    pub fat_bytes: u64,
    /// Clusters in the data area (cluster numbers 2 ..= clusters + 1).
    pub clusters: u64,
}

/// The fields we use, with the spec's names (offsets in the sector).
struct RawBpb {
    bytes_per_sec: u16, // 0x0B
    sec_per_clus: u8,   // 0x0D
    rsvd_sec_cnt: u16,  // 0x0E
    num_fats: u8,       // 0x10
    root_ent_cnt: u16,  // 0x11
    tot_sec16: u16,     // 0x13
    fat_sz16: u16,      // 0x16
    tot_sec32: u32,     // 0x20
    fat_sz32: u32,      // 0x24 (FAT32 only)
    ext_flags: u16,     // 0x28 (FAT32 only)
}

fn raw(b: &[u8]) -> Result<RawBpb> {
    run(
        (
            take(0x0busize),
            le_u16,
            byte,
            le_u16,
            byte,
            le_u16,
            le_u16,
            take(1usize),
            le_u16,
            take(0x20usize - 0x18),
            le_u32,
            le_u32,
            le_u16,
        )
            .map(
                |(_, bps, spc, rsvd, nfats, root, tot16, _, fat16, _, tot32, fat32, ext)| RawBpb {
                    bytes_per_sec: bps,
                    sec_per_clus: spc,
                    rsvd_sec_cnt: rsvd,
                    num_fats: nfats,
                    root_ent_cnt: root,
                    tot_sec16: tot16,
                    fat_sz16: fat16,
                    tot_sec32: tot32,
                    fat_sz32: fat32,
                    ext_flags: ext,
                },
            ),
        b,
        WHAT,
        0,
    )
}

/// Parses and validates the first 512 bytes of a FAT volume.
pub fn parse_fat_boot(b: &[u8]) -> Result<FatBoot> {
    need(b, 512, WHAT, 0)?;
    let r = raw(b)?;
    let bad = |off: u64, reason: String| ParseError::corrupt(WHAT, off, reason);
    let ss = u64::from(r.bytes_per_sec);
    if !(512..=4096).contains(&ss) || !ss.is_power_of_two() {
        return Err(bad(
            0x0b,
            format!("bytes per sector {ss} is not a power of two in 512..=4096"),
        ));
    }
    let spc = u64::from(r.sec_per_clus);
    if spc == 0 || !spc.is_power_of_two() {
        return Err(bad(0x0d, format!("sectors per cluster {spc} is invalid")));
    }
    if r.num_fats == 0 {
        return Err(bad(0x10, "no FAT (number of FATs is 0)".into()));
    }
    let fat32_layout = r.fat_sz16 == 0;
    let fat_sectors = if fat32_layout {
        u64::from(r.fat_sz32)
    } else {
        u64::from(r.fat_sz16)
    };
    if fat_sectors == 0 {
        return Err(bad(0x24, "FAT size is 0 sectors".into()));
    }
    let total = if r.tot_sec16 != 0 {
        u64::from(r.tot_sec16)
    } else {
        u64::from(r.tot_sec32)
    };
    // All in u64 from 8-, 16- and 32-bit fields: no overflow.
    let root_sectors = (u64::from(r.root_ent_cnt) * 32).div_ceil(ss);
    let first_data = u64::from(r.rsvd_sec_cnt) + u64::from(r.num_fats) * fat_sectors + root_sectors;
    let data_sectors = total.checked_sub(first_data).ok_or_else(|| {
        bad(
            0x13,
            format!("{total} sectors leave no room for the {first_data} before the data area"),
        )
    })?;
    let clusters = data_sectors / spc;
    let kind = if fat32_layout {
        FatKind::Fat32
    } else if clusters > MAX_FAT12_CLUSTERS {
        FatKind::Fat16
    } else {
        FatKind::Fat12
    };
    if kind == FatKind::Fat32 && clusters > MAX_FAT32_CLUSTERS {
        return Err(bad(
            0x20,
            format!("{clusters} clusters exceed the FAT32 maximum of {MAX_FAT32_CLUSTERS}"),
        ));
    }
    let fat_bytes = fat_sectors * ss;
    // Entries 0 and 1 are reserved; one more per cluster.
    if (clusters + 2) * kind.bits() > fat_bytes * 8 {
        return Err(bad(
            if fat32_layout { 0x24 } else { 0x16 },
            format!(
                "a FAT of {fat_bytes} bytes cannot map {clusters} clusters of {} bits",
                kind.bits()
            ),
        ));
    }
    // FAT32 with mirroring off (bit 7) uses only the FAT numbered in bits 0-3.
    let active = if kind == FatKind::Fat32 && r.ext_flags & 0x80 != 0 {
        u64::from(r.ext_flags & 0x0f)
    } else {
        0
    };
    if active >= u64::from(r.num_fats) {
        return Err(bad(
            0x28,
            format!("active FAT {active} of {} does not exist", r.num_fats),
        ));
    }
    Ok(FatBoot {
        kind,
        sector_size: r.bytes_per_sec.into(),
        // OK: ≤ 4096 × 128 sectors.
        cluster_size: (ss * spc) as u32,
        fat_offset: (u64::from(r.rsvd_sec_cnt) + active * fat_sectors) * ss,
        fat_bytes,
        clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector like mkfs.fat writes for a 40 MiB volume (2048-byte clusters).
    fn fat16() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        b[0x0d] = 4;
        b[0x0e..0x10].copy_from_slice(&4u16.to_le_bytes());
        b[0x10] = 2;
        b[0x11..0x13].copy_from_slice(&512u16.to_le_bytes());
        b[0x13..0x15].copy_from_slice(&0u16.to_le_bytes());
        b[0x16..0x18].copy_from_slice(&80u16.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&81920u32.to_le_bytes());
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b
    }

    /// FAT32: 512-byte clusters, 516-sector FATs, 67000 sectors (the corpus volume).
    fn fat32() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        b[0x0d] = 1;
        b[0x0e..0x10].copy_from_slice(&32u16.to_le_bytes());
        b[0x10] = 2;
        b[0x20..0x24].copy_from_slice(&67000u32.to_le_bytes());
        b[0x24..0x28].copy_from_slice(&516u32.to_le_bytes());
        b
    }

    #[test]
    fn geometry_of_fat16_and_fat32() {
        let g = parse_fat_boot(&fat16()).unwrap();
        assert_eq!(g.kind, FatKind::Fat16);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.fat_offset, 4 * 512);
        // 81920 - 4 - 160 - 32 = 81724 sectors = 20431 clusters.
        assert_eq!(g.clusters, 20431);
        let g = parse_fat_boot(&fat32()).unwrap();
        assert_eq!(g.kind, FatKind::Fat32);
        assert_eq!(g.clusters, 65936); // as fsck.fat reports for the corpus volume
        assert_eq!(g.fat_offset, 16384);
        // Mirroring off, FAT 1 active.
        let mut b = fat32();
        b[0x28] = 0x81;
        assert_eq!(parse_fat_boot(&b).unwrap().fat_offset, 16384 + 516 * 512);
    }

    #[test]
    fn small_volume_is_fat12() {
        let mut b = fat16();
        b[0x20..0x24].copy_from_slice(&0u32.to_le_bytes());
        b[0x13..0x15].copy_from_slice(&2880u16.to_le_bytes());
        b[0x0d] = 1;
        b[0x16..0x18].copy_from_slice(&9u16.to_le_bytes());
        b[0x11..0x13].copy_from_slice(&224u16.to_le_bytes());
        b[0x0e..0x10].copy_from_slice(&1u16.to_le_bytes());
        let g = parse_fat_boot(&b).unwrap();
        assert_eq!((g.kind, g.clusters), (FatKind::Fat12, 2847));
    }

    fn reject(base: fn() -> Vec<u8>, mutate: impl Fn(&mut Vec<u8>), off: u64) {
        let mut b = base();
        mutate(&mut b);
        let e = parse_fat_boot(&b).unwrap_err();
        assert_eq!(e.offset(), off, "{e}");
    }

    #[test]
    fn each_rule_rejects() {
        reject(fat16, |b| b[0x0c] = 3, 0x0b); // 768-byte sectors
        reject(fat16, |b| b[0x0d] = 3, 0x0d);
        reject(fat16, |b| b[0x0d] = 0, 0x0d);
        reject(fat16, |b| b[0x10] = 0, 0x10);
        reject(fat32, |b| b[0x24..0x28].fill(0), 0x24);
        reject(fat16, |b| b[0x20..0x24].fill(0), 0x13);
        reject(fat16, |b| b[0x16] = 20, 0x16); // FAT too small for its clusters
        reject(
            fat32,
            |b| {
                b[0x0d] = 1;
                b[0x20..0x24].copy_from_slice(&u32::MAX.to_le_bytes());
                b[0x24..0x28].copy_from_slice(&0x0100_0000u32.to_le_bytes());
            },
            0x20,
        );
        reject(fat32, |b| b[0x28] = 0x82, 0x28); // FAT 2 of 2 (0-based)
        reject(fat16, |b| b.truncate(100), 0);
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        for s in [fat16(), fat32()] {
            for n in 0..s.len() {
                let _ = parse_fat_boot(&s[..n]);
            }
            for i in 0..0x30 * 8 {
                let mut b = s.clone();
                b[i / 8] ^= 1 << (i % 8);
                let _ = parse_fat_boot(&b);
            }
        }
    }
}
