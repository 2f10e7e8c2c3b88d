//! Finding the active log sequence and replaying it in memory (MS-VHDX 2.3.2–2.3.3).
//!
//! The log is a circular buffer of 4 KiB sectors. We scan it for valid entries
//! (header, GUID and CRC-32C checked; after a valid entry the scan continues past
//! it, so the CRC work is linear in the log size), then pick as active the valid
//! sequence whose head has the highest sequence number, where a sequence runs from
//! the entry its head's `tail` names through consecutive entries (each at the end of
//! the previous one, sequence number one higher) to the head.
//!
//! Replay never writes the file: it yields a [`VhdxLogOverlay`], a sparse map of
//! 4 KiB file sectors (data or zero) that every later read of the file — region
//! table, metadata, BAT and payload — is patched with, plus the file length the log
//! requires (`last_file_offset`: the file reads as zeros up to it).

use std::collections::BTreeMap;

use super::log_data::LOG_SECTOR;
use super::log_entry::{
    check_entry_crc, parse_log_entry, parse_log_entry_header, LogWrite, VhdxLogEntryHeader,
};
use super::Guid;
use crate::error::{ParseError, Result};
use crate::limits::{MAX_VHDX_LOG_BYTES, MAX_VHDX_LOG_ENTRIES};

const WHAT: &str = "VHDX log";
const SECTOR: u64 = LOG_SECTOR as u64;

/// The replayed log: what the file looks like after the active sequence is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhdxLogOverlay {
    /// 4 KiB aligned file offset -> the sector's bytes (`None`: zeros).
    sectors: BTreeMap<u64, Option<Box<[u8]>>>,
    /// Entries replayed.
    pub entries: usize,
    /// Sequence number of the head entry.
    pub head_sequence: u64,
    /// The file must be at least this long (it was when the head entry was written).
    pub flushed_file_offset: u64,
    /// The file reads as at least this long after replay (zeros past its end).
    pub last_file_offset: u64,
}

impl VhdxLogOverlay {
    /// The file's length after replay, for a file that is `file_size` bytes on disk.
    pub fn file_len(&self, file_size: u64) -> u64 {
        let written = self.sectors.keys().next_back().map_or(0, |k| k + SECTOR);
        file_size.max(self.last_file_offset).max(written)
    }

    /// True when the overlay changes nothing.
    pub fn is_empty(&self) -> bool {
        self.sectors.is_empty()
    }

    /// Number of file sectors the overlay replaces.
    pub fn sector_count(&self) -> usize {
        self.sectors.len()
    }

    /// Patches `buf`, which holds the file's bytes at `file_offset` (zeros past the
    /// end of the file on disk), with the replayed sectors.
    pub fn apply(&self, file_offset: u64, buf: &mut [u8]) {
        let Some(end) = file_offset.checked_add(buf.len() as u64) else {
            return;
        };
        let first = file_offset - file_offset % SECTOR;
        for (&at, sector) in self.sectors.range(first..end) {
            let lo = at.max(file_offset);
            let hi = (at + SECTOR).min(end);
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - file_offset) as usize..(hi - file_offset) as usize];
            match sector {
                Some(data) => dst.copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]),
                None => dst.fill(0),
            }
        }
    }

    /// True when `[file_offset, file_offset + len)` touches a replayed sector.
    pub fn touches(&self, file_offset: u64, len: u64) -> bool {
        let first = file_offset - file_offset % SECTOR;
        let end = file_offset.saturating_add(len);
        self.sectors.range(first..end).next().is_some()
    }
}

/// The bytes of the entry at log offset `at`, unwrapped from the circular log.
fn entry_bytes(log: &[u8], at: u64, len: u64) -> Option<std::borrow::Cow<'_, [u8]>> {
    let at = usize::try_from(at).ok()?;
    let len = usize::try_from(len).ok()?;
    if at.checked_add(len)? <= log.len() {
        Some(std::borrow::Cow::Borrowed(log.get(at..at + len)?))
    } else {
        let first = log.get(at..)?;
        let rest = log.get(..len - first.len())?;
        Some(std::borrow::Cow::Owned([first, rest].concat()))
    }
}

/// Finds and replays the active sequence of `log` (the whole log region, read from
/// absolute file offset `log_base`), for a header naming `log_guid`, in a file of
/// `file_size` bytes. `Ok(None)` when the log holds no valid sequence (nothing to
/// replay).
pub fn replay_log(
    log: &[u8],
    log_base: u64,
    log_guid: Guid,
    file_size: u64,
) -> Result<Option<VhdxLogOverlay>> {
    let log_len = log.len() as u64;
    ParseError::check_limit(
        WHAT,
        log_base,
        log_len,
        MAX_VHDX_LOG_BYTES,
        "MAX_VHDX_LOG_BYTES",
    )?;
    if log_len == 0 || log_len % SECTOR != 0 {
        return Err(ParseError::corrupt(
            WHAT,
            log_base,
            format!("log length {log_len:#x} is not a multiple of 4 KiB"),
        ));
    }
    // 1. Scan for valid entries.
    let mut valid: BTreeMap<u64, VhdxLogEntryHeader> = BTreeMap::new();
    let mut at = 0u64;
    while at < log_len {
        let head = log.get(at as usize..).unwrap_or(&[]);
        let ok = parse_log_entry_header(head, log_base + at, log_guid, log_len)
            .ok()
            .and_then(|h| {
                let bytes = entry_bytes(log, at, h.entry_length.into())?;
                check_entry_crc(&bytes, log_base + at, h.checksum).ok()?;
                Some(h)
            });
        match ok {
            Some(h) => {
                let len = u64::from(h.entry_length);
                valid.insert(at, h);
                ParseError::check_limit(
                    WHAT,
                    log_base + at,
                    valid.len() as u64,
                    MAX_VHDX_LOG_ENTRIES as u64,
                    "MAX_VHDX_LOG_ENTRIES",
                )?;
                at += len;
            }
            None => at += SECTOR,
        }
    }
    // 2. Heads by descending sequence number; the first that closes a sequence wins.
    let mut heads: Vec<(u64, u64)> = valid.iter().map(|(&o, h)| (h.sequence_number, o)).collect();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    let mut budget = 16 * valid.len() as u64 + 1024;
    let mut active: Option<Vec<u64>> = None;
    'heads: for &(head_seq, head_at) in &heads {
        let Some(head) = valid.get(&head_at) else {
            continue;
        };
        let mut chain = Vec::new();
        let mut pos = u64::from(head.tail);
        let mut expect: Option<u64> = None;
        loop {
            if budget == 0 {
                return Err(ParseError::LimitExceeded {
                    what: WHAT,
                    offset: log_base,
                    value: 16 * valid.len() as u64 + 1024,
                    limit: 16 * valid.len() as u64 + 1024,
                    name: "MAX_VHDX_LOG_ENTRIES (sequence search steps)",
                });
            }
            budget -= 1;
            let Some(e) = valid.get(&pos) else {
                continue 'heads;
            };
            if expect.is_some_and(|s| s != e.sequence_number) || e.sequence_number > head_seq {
                continue 'heads;
            }
            chain.push(pos);
            if pos == head_at {
                break;
            }
            if chain.len() > valid.len() {
                continue 'heads;
            }
            expect = e.sequence_number.checked_add(1);
            pos = (pos + u64::from(e.entry_length)) % log_len;
        }
        active = Some(chain);
        break;
    }
    let Some(chain) = active else { return Ok(None) };

    // 3. Replay the sequence, oldest first, into the overlay.
    let mut overlay = VhdxLogOverlay {
        entries: chain.len(),
        ..Default::default()
    };
    let mut bytes = 0u64;
    for &pos in &chain {
        let Some(h) = valid.get(&pos) else { continue };
        let Some(buf) = entry_bytes(log, pos, h.entry_length.into()) else {
            continue;
        };
        let entry = parse_log_entry(&buf, log_base + pos, log_guid, log_len)?;
        for w in entry.writes {
            match w {
                LogWrite::Data {
                    file_offset,
                    sector,
                } => {
                    bytes += SECTOR;
                    ParseError::check_limit(
                        WHAT,
                        log_base + pos,
                        bytes,
                        MAX_VHDX_LOG_BYTES,
                        "MAX_VHDX_LOG_BYTES",
                    )?;
                    overlay.sectors.insert(file_offset, Some(sector));
                }
                LogWrite::Zero {
                    file_offset,
                    length,
                } => {
                    bytes = bytes.saturating_add(length);
                    ParseError::check_limit(
                        WHAT,
                        log_base + pos,
                        bytes,
                        MAX_VHDX_LOG_BYTES,
                        "MAX_VHDX_LOG_BYTES",
                    )?;
                    let mut o = file_offset;
                    while o < file_offset + length {
                        overlay.sectors.insert(o, None);
                        o += SECTOR;
                    }
                }
            }
        }
        overlay.head_sequence = h.sequence_number;
        overlay.flushed_file_offset = h.flushed_file_offset;
        overlay.last_file_offset = h.last_file_offset;
    }
    if overlay.flushed_file_offset > file_size {
        return Err(ParseError::corrupt(
            WHAT,
            log_base,
            format!(
                "the log was written when the file was {:#x} bytes long, but it is only {file_size:#x} (truncated file)",
                overlay.flushed_file_offset
            ),
        ));
    }
    Ok(Some(overlay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::log_entry::build_log_entry;

    const G: Guid = Guid([0x42; 16]);
    const LOG: usize = 64 * 1024;

    fn log_with(entries: &[(usize, Vec<u8>)]) -> Vec<u8> {
        let mut log = vec![0u8; LOG];
        for (at, e) in entries {
            for (i, b) in e.iter().enumerate() {
                log[(at + i) % LOG] = *b;
            }
        }
        log
    }

    fn e(seq: u64, tail: u32, off: u64, fill: u8) -> Vec<u8> {
        build_log_entry(
            seq,
            tail,
            G,
            4 << 20,
            6 << 20,
            &[(off, [fill; LOG_SECTOR])],
            &[],
        )
    }

    #[test]
    fn replays_highest_complete_sequence_in_order() {
        // Sequence 5,6,7 from offset 0 (tail 0), later entries overwrite earlier ones.
        let log = log_with(&[
            (0, e(5, 0, 0x200000, 1)),
            (8192, e(6, 0, 0x200000, 2)),
            (16384, e(7, 0, 0x201000, 3)),
        ]);
        let o = replay_log(&log, 0x100000, G, 4 << 20).unwrap().unwrap();
        assert_eq!((o.entries, o.head_sequence), (3, 7));
        let mut buf = vec![9u8; 3 * 4096];
        o.apply(0x1ff000, &mut buf);
        assert!(buf[..4096].iter().all(|&b| b == 9));
        assert!(buf[4096..8192].iter().all(|&b| b == 2));
        assert!(buf[8192..].iter().all(|&b| b == 3));
        assert_eq!(o.file_len(4 << 20), 6 << 20);
    }

    #[test]
    fn tail_limits_the_replay_and_wraps() {
        // Head 9 wraps around the end of the log; its tail names entry 8, so the
        // older self-contained sequence 3 is not replayed.
        let t = (LOG - 12288) as u32;
        let log = log_with(&[
            (16384, e(3, 16384, 0x200000, 1)),
            (LOG - 12288, e(8, t, 0x300000, 8)),
            (LOG - 4096, e(9, t, 0x301000, 9)),
        ]);
        let o = replay_log(&log, 0, G, 4 << 20).unwrap().unwrap();
        assert_eq!((o.entries, o.head_sequence), (2, 9));
        assert!(!o.touches(0x200000, 4096));
        assert!(o.touches(0x300000, 8192));
    }

    #[test]
    fn incomplete_sequence_is_not_active() {
        // Head 6's tail names an entry that is not there: fall back to 4 (self-tailed).
        let log = log_with(&[(0, e(4, 0, 0x200000, 4)), (16384, e(6, 8192, 0x200000, 6))]);
        let o = replay_log(&log, 0, G, 4 << 20).unwrap().unwrap();
        assert_eq!(o.head_sequence, 4);
    }

    #[test]
    fn stale_guid_means_nothing_to_replay() {
        let log = log_with(&[(0, e(4, 0, 0x200000, 4))]);
        assert_eq!(replay_log(&log, 0, Guid([1; 16]), 4 << 20).unwrap(), None);
    }

    #[test]
    fn rule_truncated_file() {
        let log = log_with(&[(0, e(4, 0, 0x200000, 4))]);
        assert!(matches!(
            replay_log(&log, 0x100000, G, 1 << 20),
            Err(ParseError::Corrupt {
                offset: 0x100000,
                ..
            })
        ));
    }

    #[test]
    fn rule_zero_descriptor_replays_zeros() {
        let z = build_log_entry(2, 0, G, 1 << 20, 1 << 20, &[], &[(0x200000, 0x3000)]);
        let o = replay_log(&log_with(&[(0, z)]), 0, G, 4 << 20)
            .unwrap()
            .unwrap();
        let mut buf = vec![7u8; 0x4000];
        o.apply(0x200000, &mut buf);
        assert!(buf[..0x3000].iter().all(|&b| b == 0));
        assert!(buf[0x3000..].iter().all(|&b| b == 7));
    }

    #[test]
    fn rule_log_length() {
        assert!(matches!(
            replay_log(&[0u8; 100], 0, G, 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let log = log_with(&[(0, e(5, 0, 0x200000, 1)), (8192, e(6, 0, 0x200000, 2))]);
        for n in (0..=LOG).step_by(4096) {
            let _ = replay_log(&log[..n], 0, G, 8 << 20);
        }
        for i in (0..128).chain(4096..4104).chain(8192..8320) {
            for bit in 0..8 {
                let mut m = log.clone();
                m[i] ^= 1 << bit;
                let _ = replay_log(&m, 0, G, 8 << 20);
            }
        }
    }
}
