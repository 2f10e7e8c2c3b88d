//! The internal snapshot table (qcow2.txt, "Snapshots"): `nb_snapshots` entries of
//! variable length, contiguous from `snapshots_offset`, each padded to 8 bytes.
//! A reader never needs snapshots (the active L1 table is the current disk); we list
//! them for `inspect` (id, name, VM state size, date) so a user sees what the image
//! holds besides the current state.
//!
//! An entry is read in two steps so the caller never allocates by an unchecked
//! value: the 40 fixed bytes give [`snapshot_entry_len`] (extra data capped by
//! `MAX_QCOW2_SNAPSHOT_EXTRA_BYTES`, names bounded by their u16 lengths), then
//! [`parse_snapshot_entry`] parses the whole entry.

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u64};

use crate::bytes;
use crate::error::{ParseError, Result};
use crate::limits::MAX_QCOW2_SNAPSHOT_EXTRA_BYTES;

const WHAT: &str = "qcow2 snapshot table entry";

/// Bytes of the fixed part of an entry.
pub const SNAPSHOT_FIXED_LEN: usize = 40;

/// The fixed part of an entry as stored (offsets relative to the entry).
struct RawSnapshot {
    l1_table_offset: u64, // 0x00
    l1_size: u32,         // 0x08
    id_str_size: u16,     // 0x0c
    name_size: u16,       // 0x0e
    date_sec: u32,        // 0x10
    date_nsec: u32,       // 0x14
    vm_clock_nsec: u64,   // 0x18
    vm_state_size: u32,   // 0x20
    extra_data_size: u32, // 0x24
}

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Snapshot {
    /// Unique id string (usually a number).
    pub id: String,
    /// User-given name.
    pub name: String,
    pub l1_table_offset: u64,
    pub l1_size: u32,
    /// When it was taken: seconds since the Epoch and nanoseconds.
    pub date_sec: u32,
    pub date_nsec: u32,
    /// Guest run time at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Saved VM state in bytes (the 64-bit extra field when present).
    pub vm_state_size: u64,
    /// Disk size at the snapshot, when the extra data records it.
    pub disk_size: Option<u64>,
}

fn parse_fixed(buf: &[u8], at: u64) -> Result<RawSnapshot> {
    let fixed = bytes::slice(buf, 0, SNAPSHOT_FIXED_LEN, WHAT, at)?;
    let (
        l1_table_offset,
        l1_size,
        id_str_size,
        name_size,
        date_sec,
        date_nsec,
        vm_clock_nsec,
        vm_state_size,
        extra_data_size,
    ) = bytes::run(
        (
            be_u64, be_u32, be_u16, be_u16, be_u32, be_u32, be_u64, be_u32, be_u32,
        ),
        fixed,
        WHAT,
        at,
    )?;
    let raw = RawSnapshot {
        l1_table_offset,
        l1_size,
        id_str_size,
        name_size,
        date_sec,
        date_nsec,
        vm_clock_nsec,
        vm_state_size,
        extra_data_size,
    };
    ParseError::check_limit(
        WHAT,
        at + 0x24,
        u64::from(raw.extra_data_size),
        MAX_QCOW2_SNAPSHOT_EXTRA_BYTES,
        "MAX_QCOW2_SNAPSHOT_EXTRA_BYTES",
    )?;
    Ok(raw)
}

fn padded_len(raw: &RawSnapshot) -> usize {
    // ≤ 40 + 1024 + 2 × 65535 + 7: no overflow.
    let len = SNAPSHOT_FIXED_LEN
        + raw.extra_data_size as usize
        + usize::from(raw.id_str_size)
        + usize::from(raw.name_size);
    len.div_ceil(8) * 8
}

/// Length of the whole entry (padded to 8) from its first 40 bytes, found at
/// absolute offset `at`.
pub fn snapshot_entry_len(fixed: &[u8], at: u64) -> Result<usize> {
    Ok(padded_len(&parse_fixed(fixed, at)?))
}

/// Parses the entry at the start of `buf` (found at absolute offset `at`); returns
/// it with its padded length. Padding may be missing after the last entry.
pub fn parse_snapshot_entry(buf: &[u8], at: u64) -> Result<(Qcow2Snapshot, usize)> {
    let raw = parse_fixed(buf, at)?;
    let extra_len = raw.extra_data_size as usize;
    let var_len = extra_len + usize::from(raw.id_str_size) + usize::from(raw.name_size);
    let var = bytes::slice(buf, SNAPSHOT_FIXED_LEN, var_len, WHAT, at)?;
    let (extra, id, name): (&[u8], &[u8], &[u8]) = bytes::run(
        (
            take(extra_len),
            take(usize::from(raw.id_str_size)),
            take(usize::from(raw.name_size)),
        ),
        var,
        WHAT,
        at + SNAPSHOT_FIXED_LEN as u64,
    )?;
    // Extra data: 64-bit VM state size at +0, disk size at +8 (each when present).
    let extra_u64 = |i: usize| -> Option<u64> {
        let b = extra.get(i..i + 8)?;
        bytes::run(be_u64, b, WHAT, at).ok()
    };
    let vm_state_size = extra_u64(0).unwrap_or(u64::from(raw.vm_state_size));
    let snap = Qcow2Snapshot {
        id: String::from_utf8_lossy(id).into_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        l1_table_offset: raw.l1_table_offset,
        l1_size: raw.l1_size,
        date_sec: raw.date_sec,
        date_nsec: raw.date_nsec,
        vm_clock_nsec: raw.vm_clock_nsec,
        vm_state_size,
        disk_size: extra_u64(8),
    };
    Ok((snap, padded_len(&raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str, extra: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x7_0000u64.to_be_bytes());
        b.extend_from_slice(&8u32.to_be_bytes());
        b.extend_from_slice(&(id.len() as u16).to_be_bytes());
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        b.extend_from_slice(&5u32.to_be_bytes());
        b.extend_from_slice(&99u64.to_be_bytes());
        b.extend_from_slice(&1234u32.to_be_bytes());
        b.extend_from_slice(&(extra.len() as u32).to_be_bytes());
        b.extend_from_slice(extra);
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(name.as_bytes());
        while b.len() % 8 != 0 {
            b.push(0);
        }
        b
    }

    fn extra_v3() -> Vec<u8> {
        let mut x = 5_000_000_000u64.to_be_bytes().to_vec();
        x.extend_from_slice(&(1u64 << 30).to_be_bytes());
        x
    }

    #[test]
    fn parses_entry_with_extra_data() {
        let b = entry("1", "before-upgrade", &extra_v3());
        assert_eq!(snapshot_entry_len(&b, 0).unwrap(), b.len());
        let (s, len) = parse_snapshot_entry(&b, 0).unwrap();
        assert_eq!(len, b.len());
        assert_eq!(s.id, "1");
        assert_eq!(s.name, "before-upgrade");
        assert_eq!(s.vm_state_size, 5_000_000_000);
        assert_eq!(s.disk_size, Some(1 << 30));
        assert_eq!(s.date_sec, 1_700_000_000);
    }

    #[test]
    fn v2_entry_without_extra_uses_32_bit_state_size() {
        let (s, _) = parse_snapshot_entry(&entry("2", "x", &[]), 0).unwrap();
        assert_eq!(s.vm_state_size, 1234);
        assert_eq!(s.disk_size, None);
    }

    #[test]
    fn rejects_extra_data_over_cap() {
        let mut b = entry("1", "a", &[]);
        b[0x24..0x28].copy_from_slice(&2000u32.to_be_bytes());
        let e = snapshot_entry_len(&b, 0x1000).unwrap_err();
        assert!(
            matches!(e, ParseError::LimitExceeded { offset: 0x1024, .. }),
            "{e}"
        );
    }

    #[test]
    fn rejects_names_past_the_buffer() {
        let mut b = entry("1", "a", &[]);
        b[0x0e..0x10].copy_from_slice(&500u16.to_be_bytes());
        assert!(matches!(
            parse_snapshot_entry(&b, 0),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        let b = entry("1", "snap", &extra_v3());
        for n in 0..=b.len() {
            let _ = parse_snapshot_entry(&b[..n], 0);
            let _ = snapshot_entry_len(&b[..n], 0);
        }
        for bit in 0..b.len() * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_snapshot_entry(&m, 0);
        }
    }
}
