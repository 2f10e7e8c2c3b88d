//! The NTFS boot sector (sector 0 of the volume): geometry, where the MFT starts, and
//! the sizes of file and index records. Layout: Linux-NTFS "Boot Sector" (BPB at 0x0B,
//! extended BPB at 0x24).
//!
//! Invariants of [`NtfsBoot`]: sector size is a power of two in 256..=4096, cluster
//! size a power of two up to 2 MiB, record sizes powers of two within
//! 256..=[`MAX_NTFS_RECORD_BYTES`], the MFT starts inside the volume.

use nom::bytes::complete::take;
use nom::number::complete::{i8 as sbyte, le_u16, le_u64, u8 as byte};
use nom::Parser;

use crate::bytes::{need, run, show_magic};
use crate::error::{ParseError, Result};
use crate::limits::MAX_NTFS_RECORD_BYTES;

const WHAT: &str = "NTFS boot sector";

/// Validated boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NtfsBoot {
    pub sector_size: u32,
    pub cluster_size: u32,
    /// Volume size in bytes as the boot sector states it.
    pub volume_bytes: u64,
    /// Absolute byte offset of the MFT inside the volume.
    pub mft_offset: u64,
    pub file_record_size: u32,
    pub index_record_size: u32,
    pub serial: u64,
}

/// The fields we use, with the spec's names (offsets in the sector).
struct RawBoot<'a> {
    oem_id: &'a [u8],              // 0x03
    bytes_per_sector: u16,         // 0x0B
    sectors_per_cluster: u8,       // 0x0D
    total_sectors: u64,            // 0x28
    mft_lcn: u64,                  // 0x30
    clusters_per_file_record: i8,  // 0x40
    clusters_per_index_record: i8, // 0x44
    serial: u64,                   // 0x48
}

fn raw(b: &[u8]) -> Result<RawBoot<'_>> {
    run(
        (
            take(3usize),
            take(8usize),
            le_u16,
            byte,
            take(0x28usize - 0x0e),
            le_u64,
            le_u64,
            take(8usize),
            sbyte,
            take(3usize),
            sbyte,
            take(3usize),
            le_u64,
        )
            .map(
                |(_, oem_id, bps, spc, _, total, mft, _, fr, _, ir, _, serial)| RawBoot {
                    oem_id,
                    bytes_per_sector: bps,
                    sectors_per_cluster: spc,
                    total_sectors: total,
                    mft_lcn: mft,
                    clusters_per_file_record: fr,
                    clusters_per_index_record: ir,
                    serial,
                },
            ),
        b,
        WHAT,
        0,
    )
}

/// Parses and validates the first 512 bytes of an NTFS volume. `volume_size` is the
/// size of the window the volume lives in (the MFT must start inside it).
pub fn parse_ntfs_boot(b: &[u8], volume_size: u64) -> Result<NtfsBoot> {
    need(b, 512, WHAT, 0)?;
    let r = raw(b)?;
    if r.oem_id != b"NTFS    " {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: 3,
            expected: "\"NTFS    \"".into(),
            found: show_magic(r.oem_id),
        });
    }
    let sector_size = u32::from(r.bytes_per_sector);
    if !(256..=4096).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(ParseError::corrupt(
            WHAT,
            0x0b,
            format!("bytes per sector {sector_size} is not a power of two in 256..=4096"),
        ));
    }
    // Values above 0x80 are a negated binary exponent (cluster sizes above 64 KiB).
    let spc = r.sectors_per_cluster;
    let cluster_size = if spc == 0 {
        None
    } else if spc <= 0x80 {
        spc.is_power_of_two()
            .then(|| sector_size.checked_mul(u32::from(spc)))
            .flatten()
    } else {
        1u32.checked_shl(u32::from(spc.wrapping_neg()))
    }
    .filter(|c| *c <= 2 << 20)
    .ok_or_else(|| {
        ParseError::corrupt(
            WHAT,
            0x0d,
            format!("sectors per cluster {spc:#x} is invalid"),
        )
    })?;
    let record = |v: i8, off: u64, name: &str| -> Result<u32> {
        let size = if v > 0 {
            cluster_size.checked_mul(v.unsigned_abs().into())
        } else {
            1u32.checked_shl(u32::from(v.unsigned_abs()))
        };
        let size = size
            .filter(|s| s.is_power_of_two() && *s >= 256)
            .ok_or_else(|| {
                ParseError::corrupt(
                    WHAT,
                    off,
                    format!("{name} record size field {v} is invalid"),
                )
            })?;
        if size > MAX_NTFS_RECORD_BYTES {
            return Err(ParseError::LimitExceeded {
                what: WHAT,
                offset: off,
                value: size.into(),
                limit: MAX_NTFS_RECORD_BYTES.into(),
                name: "MAX_NTFS_RECORD_BYTES",
            });
        }
        Ok(size)
    };
    let file_record_size = record(r.clusters_per_file_record, 0x40, "file")?;
    let index_record_size = record(r.clusters_per_index_record, 0x44, "index")?;
    let volume_bytes = r
        .total_sectors
        .checked_mul(sector_size.into())
        .ok_or_else(|| {
            ParseError::corrupt(
                WHAT,
                0x28,
                format!("total sectors {} overflow", r.total_sectors),
            )
        })?;
    let mft_offset = r
        .mft_lcn
        .checked_mul(cluster_size.into())
        .filter(|o| {
            o.checked_add(file_record_size.into())
                .is_some_and(|e| e <= volume_size)
        })
        .ok_or_else(|| {
            ParseError::corrupt(
                WHAT,
                0x30,
                format!(
                    "MFT cluster {} lies outside the volume ({volume_size} bytes)",
                    r.mft_lcn
                ),
            )
        })?;
    Ok(NtfsBoot {
        sector_size,
        cluster_size,
        volume_bytes,
        mft_offset,
        file_record_size,
        index_record_size,
        serial: r.serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot sector as mkntfs writes it for a 2 MiB volume (512-byte clusters).
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[3..11].copy_from_slice(b"NTFS    ");
        b[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        b[0x0d] = 1;
        b[0x28..0x30].copy_from_slice(&4095u64.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&16u64.to_le_bytes());
        b[0x40] = 0xf6; // 2^10 = 1024
        b[0x44] = 8; // 8 clusters = 4096
        b[0x48..0x50].copy_from_slice(&0x1234u64.to_le_bytes());
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b
    }

    #[test]
    fn parses_mkntfs_geometry() {
        let b = parse_ntfs_boot(&sample(), 2 << 20).unwrap();
        assert_eq!(b.cluster_size, 512);
        assert_eq!(b.file_record_size, 1024);
        assert_eq!(b.index_record_size, 4096);
        assert_eq!(b.mft_offset, 16 * 512);
        assert_eq!(b.serial, 0x1234);
    }

    fn reject(mutate: impl Fn(&mut Vec<u8>), off: u64) {
        let mut b = sample();
        mutate(&mut b);
        let e = parse_ntfs_boot(&b, 2 << 20).unwrap_err();
        let got = match &e {
            ParseError::BadMagic { offset, .. }
            | ParseError::Corrupt { offset, .. }
            | ParseError::LimitExceeded { offset, .. }
            | ParseError::Truncated { offset, .. } => *offset,
            _ => u64::MAX,
        };
        assert_eq!(got, off, "{e}");
    }

    #[test]
    fn each_rule_rejects() {
        reject(|b| b[3] = b'X', 3);
        reject(
            |b| b[0x0b..0x0d].copy_from_slice(&768u16.to_le_bytes()),
            0x0b,
        );
        reject(|b| b[0x0d] = 3, 0x0d);
        reject(|b| b[0x0d] = 0, 0x0d);
        reject(|b| b[0x0d] = 0xe0, 0x0d); // 2^32
        reject(|b| b[0x40] = 3, 0x40); // 3 clusters: not a power of two
        reject(|b| b[0x40] = 0xe0, 0x40); // 2^32
        reject(|b| b[0x40] = 0xee, 0x40); // 256 KiB > cap
        reject(|b| b[0x44] = 0, 0x44); // 2^0 = 1 byte
        reject(
            |b| b[0x30..0x38].copy_from_slice(&5000u64.to_le_bytes()),
            0x30,
        );
        reject(
            |b| b[0x30..0x38].copy_from_slice(&u64::MAX.to_le_bytes()),
            0x30,
        );
        reject(|b| b.truncate(511), 0);
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        let s = sample();
        for n in 0..s.len() {
            let _ = parse_ntfs_boot(&s[..n], 2 << 20);
        }
        for i in 0..0x50 * 8 {
            let mut b = s.clone();
            b[i / 8] ^= 1 << (i % 8);
            let _ = parse_ntfs_boot(&b, 2 << 20);
        }
    }
}
