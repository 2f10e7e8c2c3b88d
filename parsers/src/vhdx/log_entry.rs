//! A log entry (MS-VHDX 2.3.1): a 64-byte header ("loge"), its 32-byte descriptors
//! ("desc" for a data sector, "zero" for a zeroed range) packed into the first
//! 4 KiB sectors, then one data sector per data descriptor. The CRC-32C covers the
//! whole entry (`entry_length` bytes) with the checksum field zeroed.
//!
//! [`parse_log_entry_header`] validates the header alone (cheap, used while scanning
//! the circular log); [`parse_log_entry`] validates everything and resolves the
//! writes the entry makes.

use nom::multi::count;
use nom::number::complete::{le_u32, le_u64};

use super::log_data::{parse_data_sector, LOG_SECTOR};
use super::{crc32c_zeroed, guid, sig4, Guid};
use crate::bytes::{need, run, show_magic, slice};
use crate::error::{ParseError, Result};

const WHAT: &str = "VHDX log entry";
const DWHAT: &str = "VHDX log descriptor";

/// Bytes of the entry header.
pub const LOG_ENTRY_HEADER: usize = 64;

/// The validated header of a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxLogEntryHeader {
    pub checksum: u32,            // 0x04
    pub entry_length: u32,        // 0x08 multiple of 4 KiB
    pub tail: u32,                // 0x0C offset in the log of the sequence's first entry
    pub sequence_number: u64,     // 0x10 non-zero
    pub descriptor_count: u32,    // 0x18
    pub log_guid: Guid,           // 0x20 equals the header's LogGuid
    pub flushed_file_offset: u64, // 0x30 file size when this entry was written
    pub last_file_offset: u64,    // 0x38 file size the log needs
}

/// One write an entry makes to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// 4 KiB of data at a 4 KiB aligned file offset.
    Data { file_offset: u64, sector: Box<[u8]> },
    /// `length` (a multiple of 4 KiB) zero bytes at a 4 KiB aligned file offset.
    Zero { file_offset: u64, length: u64 },
}

/// A fully validated log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdxLogEntry {
    pub header: VhdxLogEntryHeader,
    pub writes: Vec<LogWrite>,
}

/// Sectors the header and `n` descriptors occupy.
pub fn descriptor_sectors(n: u32) -> u64 {
    (LOG_ENTRY_HEADER as u64 + 32 * u64::from(n)).div_ceil(LOG_SECTOR as u64)
}

/// Validates an entry header at absolute file offset `base` for a log of
/// `log_length` bytes whose header names `log_guid`.
pub fn parse_log_entry_header(
    buf: &[u8],
    base: u64,
    log_guid: Guid,
    log_length: u64,
) -> Result<VhdxLogEntryHeader> {
    need(buf, LOG_ENTRY_HEADER, WHAT, base)?;
    let (signature, checksum, entry_length, tail, sequence_number, descriptor_count, _reserved) =
        run(
            (sig4, le_u32, le_u32, le_u32, le_u64, le_u32, le_u32),
            buf,
            WHAT,
            base,
        )?;
    let (entry_guid, flushed_file_offset, last_file_offset) = run(
        (guid, le_u64, le_u64),
        &buf[0x20..LOG_ENTRY_HEADER],
        WHAT,
        base + 0x20,
    )?;
    if &signature != b"loge" {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: "\"loge\"".into(),
            found: show_magic(&signature),
        });
    }
    let el = u64::from(entry_length);
    if el == 0 || el % LOG_SECTOR as u64 != 0 || el > log_length {
        return Err(ParseError::corrupt(
            WHAT,
            base + 8,
            format!("entry length {entry_length:#x} is not a non-zero multiple of 4 KiB within the {log_length:#x}-byte log"),
        ));
    }
    if u64::from(tail) % LOG_SECTOR as u64 != 0 || u64::from(tail) >= log_length {
        return Err(ParseError::corrupt(
            WHAT,
            base + 0xC,
            format!("tail {tail:#x} is not a 4 KiB aligned log offset"),
        ));
    }
    if sequence_number == 0 {
        return Err(ParseError::corrupt(WHAT, base + 0x10, "sequence number 0"));
    }
    if entry_guid != log_guid {
        return Err(ParseError::corrupt(
            WHAT,
            base + 0x20,
            format!("log GUID {entry_guid} is not the header's {log_guid} (stale entry)"),
        ));
    }
    if descriptor_sectors(descriptor_count) > el / LOG_SECTOR as u64 {
        return Err(ParseError::corrupt(
            WHAT,
            base + 0x18,
            format!(
                "{descriptor_count} descriptors do not fit in an entry of {entry_length:#x} bytes"
            ),
        ));
    }
    Ok(VhdxLogEntryHeader {
        checksum,
        entry_length,
        tail,
        sequence_number,
        descriptor_count,
        log_guid: entry_guid,
        flushed_file_offset,
        last_file_offset,
    })
}

/// Verifies the checksum of a whole entry (`buf` is exactly `entry_length` bytes).
pub fn check_entry_crc(buf: &[u8], base: u64, stored: u32) -> Result<()> {
    let computed = crc32c_zeroed(buf, 4);
    ParseError::check_checksum(WHAT, base + 4, stored, computed)?;
    Ok(())
}

/// Parses and validates a whole entry: `buf` holds the entry's bytes in order
/// (unwrapped from the circular log by the caller), `base` is the absolute file
/// offset of its first byte (offsets of later sectors are reported relative to it).
pub fn parse_log_entry(
    buf: &[u8],
    base: u64,
    log_guid: Guid,
    log_length: u64,
) -> Result<VhdxLogEntry> {
    let header = parse_log_entry_header(buf, base, log_guid, log_length)?;
    let entry = slice(buf, 0, header.entry_length as usize, WHAT, base)?;
    check_entry_crc(entry, base, header.checksum)?;
    let n = header.descriptor_count as usize;
    let descs = slice(entry, LOG_ENTRY_HEADER, n * 32, DWHAT, base)?;
    let raw = run(
        count((sig4, le_u32, le_u64, le_u64, le_u64), n),
        descs,
        DWHAT,
        base + 64,
    )?;
    let mut next_data = descriptor_sectors(header.descriptor_count) * LOG_SECTOR as u64;
    let mut writes = Vec::with_capacity(n);
    for (i, (signature, trailing, leading_or_len, file_offset, seq)) in raw.into_iter().enumerate()
    {
        let at = base + 64 + 32 * i as u64;
        if seq != header.sequence_number {
            return Err(ParseError::corrupt(
                DWHAT,
                at + 0x18,
                format!(
                    "sequence number {seq:#x} does not match its entry's {:#x}",
                    header.sequence_number
                ),
            ));
        }
        if file_offset % LOG_SECTOR as u64 != 0 {
            return Err(ParseError::corrupt(
                DWHAT,
                at + 0x10,
                format!("file offset {file_offset:#x} is not 4 KiB aligned"),
            ));
        }
        match &signature {
            b"zero" => {
                if leading_or_len % LOG_SECTOR as u64 != 0
                    || file_offset.checked_add(leading_or_len).is_none()
                {
                    return Err(ParseError::corrupt(
                        DWHAT,
                        at + 8,
                        format!("zero length {leading_or_len:#x} is not a multiple of 4 KiB"),
                    ));
                }
                writes.push(LogWrite::Zero {
                    file_offset,
                    length: leading_or_len,
                });
            }
            b"desc" => {
                let start = usize::try_from(next_data).unwrap_or(usize::MAX);
                let sector = slice(entry, start, LOG_SECTOR, "VHDX log data sector", base)?;
                let sector =
                    parse_data_sector(sector, base + next_data, seq, leading_or_len, trailing)?;
                next_data += LOG_SECTOR as u64;
                writes.push(LogWrite::Data {
                    file_offset,
                    sector,
                });
            }
            other => {
                return Err(ParseError::BadMagic {
                    what: DWHAT,
                    offset: at,
                    expected: "\"desc\" or \"zero\"".into(),
                    found: show_magic(other),
                });
            }
        }
    }
    Ok(VhdxLogEntry { header, writes })
}

/// Builds an entry (tests, fixtures): writes of 4 KiB data sectors and zero ranges.
pub fn build_log_entry(
    seq: u64,
    tail: u32,
    log_guid: Guid,
    flushed: u64,
    last: u64,
    data: &[(u64, [u8; LOG_SECTOR])],
    zeros: &[(u64, u64)],
) -> Vec<u8> {
    let n = (data.len() + zeros.len()) as u32;
    let dsec = descriptor_sectors(n) as usize;
    let total = dsec + data.len();
    let mut e = vec![0u8; total * LOG_SECTOR];
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&((total * LOG_SECTOR) as u32).to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&n.to_le_bytes());
    e[32..48].copy_from_slice(&log_guid.0);
    e[48..56].copy_from_slice(&flushed.to_le_bytes());
    e[56..64].copy_from_slice(&last.to_le_bytes());
    let mut d = 64;
    for (z_off, z_len) in zeros {
        e[d..d + 4].copy_from_slice(b"zero");
        e[d + 8..d + 16].copy_from_slice(&z_len.to_le_bytes());
        e[d + 16..d + 24].copy_from_slice(&z_off.to_le_bytes());
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
    }
    for (k, (off, payload)) in data.iter().enumerate() {
        let (sector, lead, trail) = super::log_data::build_data_sector(payload, seq);
        e[d..d + 4].copy_from_slice(b"desc");
        e[d + 4..d + 8].copy_from_slice(&trail.to_le_bytes());
        e[d + 8..d + 16].copy_from_slice(&lead.to_le_bytes());
        e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
        d += 32;
        let s = (dsec + k) * LOG_SECTOR;
        e[s..s + LOG_SECTOR].copy_from_slice(&sector);
    }
    super::seal_crc(&mut e, 4);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::seal_crc;

    const G: Guid = Guid([0x42; 16]);

    fn sample() -> Vec<u8> {
        build_log_entry(
            7,
            0,
            G,
            4 << 20,
            4 << 20,
            &[(0x200000, [0xA5; LOG_SECTOR])],
            &[(0x300000, 0x2000)],
        )
    }

    #[test]
    fn parses() {
        let e = parse_log_entry(&sample(), 0x100000, G, 1 << 20).unwrap();
        assert_eq!(e.header.sequence_number, 7);
        assert_eq!(e.writes.len(), 2);
        assert_eq!(
            e.writes[0],
            LogWrite::Zero {
                file_offset: 0x300000,
                length: 0x2000
            }
        );
        assert!(
            matches!(&e.writes[1], LogWrite::Data { file_offset: 0x200000, sector } if sector.iter().all(|&b| b == 0xA5))
        );
    }

    fn resealed(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = sample();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        seal_crc(&mut b, 4);
        b
    }

    fn corrupt_at(b: &[u8]) -> u64 {
        match parse_log_entry(b, 0, G, 1 << 20) {
            Err(e) => e.offset(),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn rule_signature() {
        assert!(matches!(
            parse_log_entry(&resealed(0, b"LOGE"), 0, G, 1 << 20),
            Err(ParseError::BadMagic { .. })
        ));
    }
    #[test]
    fn rule_checksum() {
        let mut b = sample();
        b[5000] ^= 1;
        assert!(matches!(
            parse_log_entry(&b, 0, G, 1 << 20),
            Err(ParseError::Checksum { offset: 4, .. })
        ));
    }
    #[test]
    fn rule_entry_length() {
        assert_eq!(corrupt_at(&resealed(8, &0x1001u32.to_le_bytes())), 8);
        assert_eq!(corrupt_at(&resealed(8, &(2u32 << 20).to_le_bytes())), 8);
    }
    #[test]
    fn rule_tail() {
        assert_eq!(corrupt_at(&resealed(12, &0x10u32.to_le_bytes())), 12);
    }
    #[test]
    fn rule_sequence_zero() {
        assert_eq!(corrupt_at(&resealed(16, &0u64.to_le_bytes())), 16);
    }
    #[test]
    fn rule_log_guid() {
        assert_eq!(corrupt_at(&resealed(32, &[1; 16])), 32);
    }
    #[test]
    fn rule_descriptor_count() {
        assert_eq!(corrupt_at(&resealed(24, &1000u32.to_le_bytes())), 24);
    }
    #[test]
    fn rule_descriptor_sequence() {
        assert_eq!(corrupt_at(&resealed(64 + 24, &8u64.to_le_bytes())), 64 + 24);
    }
    #[test]
    fn rule_descriptor_alignment() {
        assert_eq!(
            corrupt_at(&resealed(64 + 16, &0x300010u64.to_le_bytes())),
            64 + 16
        );
    }
    #[test]
    fn rule_zero_length() {
        assert_eq!(
            corrupt_at(&resealed(64 + 8, &0x10u64.to_le_bytes())),
            64 + 8
        );
    }
    #[test]
    fn rule_descriptor_signature() {
        assert!(matches!(
            parse_log_entry(&resealed(96, b"DESC"), 0, G, 1 << 20),
            Err(ParseError::BadMagic { offset: 96, .. })
        ));
    }
    #[test]
    fn rule_data_sector_sequence() {
        assert_eq!(
            corrupt_at(&resealed(4096 + 4, &1u32.to_le_bytes())),
            4096 + 4
        );
    }

    #[test]
    fn no_panic_sweep() {
        let b = sample();
        for n in 0..b.len() {
            let _ = parse_log_entry(&b[..n], 0, G, 1 << 20);
        }
        for i in (0..160).chain(4096..4104).chain(8188..8192) {
            for bit in 0..8 {
                let mut m = b.clone();
                m[i] ^= 1 << bit;
                let _ = parse_log_entry(&m, 0, G, 1 << 20);
                seal_crc(&mut m, 4);
                let _ = parse_log_entry(&m, 0, G, 1 << 20);
            }
        }
    }
}
