//! GUID Partition Table (UEFI 2.10, section 5.3): the header at LBA 1 (and its backup
//! at the last LBA), and the partition entry array it points to. Both carry CRC-32
//! (IEEE) checksums, which are verified: a mismatch is an error, and the caller may
//! fall back to the backup header.
//!
//! Logical sector size is a property of the disk, not recorded in GPT: the caller
//! tries 512 and 4096 (the header sits at byte 512 or 4096).
//!
//! Why not the `gpt` crate: it needs `Read + Write + Seek` and validates both headers
//! against the device size on open, so it cannot read a table whose backup is absent
//! (a truncated image, the corpus' `gpt.bin`) and reports errors without offsets.

use nom::bytes::complete::take;
use nom::number::complete::{le_u32, le_u64};

use crate::bytes::{need, run, slice};
use crate::error::{ParseError, Result};
use crate::limits::{MAX_GPT_ENTRIES, MAX_GPT_ENTRY_SIZE};

/// "EFI PART".
pub const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

/// A GUID as stored on disk (mixed endian: first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// All-zero GUID (an unused entry's type).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// A validated GPT header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    pub revision: u32,
    pub header_size: u32,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc32: u32,
}

impl GptHeader {
    /// Bytes of the partition entry array (bounded by the limits checked on parse).
    pub fn entries_bytes(&self) -> usize {
        self.num_entries as usize * self.entry_size as usize
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// 1-based index in the entry array (the partition number tools show).
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// Parses the GPT header in `sector` (one logical sector, read from byte `offset`).
pub fn parse_gpt_header(sector: &[u8], offset: u64) -> Result<GptHeader> {
    need(sector, 92, "GPT header", offset)?;
    if &sector[..8] != GPT_SIGNATURE {
        return Err(ParseError::BadMagic {
            what: "GPT header",
            offset,
            expected: "\"EFI PART\"".into(),
            found: crate::bytes::show_magic(&sector[..8]),
        });
    }
    // 0x08 revision, 0x0C header size, 0x10 header CRC32, 0x14 reserved, 0x18 my LBA,
    // 0x20 alternate LBA, 0x28 first usable, 0x30 last usable, 0x38 disk GUID,
    // 0x48 entries LBA, 0x50 number of entries, 0x54 entry size, 0x58 entries CRC32.
    let fields = (
        le_u32,
        le_u32,
        le_u32,
        le_u32,
        le_u64,
        le_u64,
        le_u64,
        le_u64,
        take(16usize),
        le_u64,
        le_u32,
        le_u32,
        le_u32,
    );
    let (
        revision,
        header_size,
        header_crc,
        _reserved,
        my_lba,
        alternate_lba,
        first_usable_lba,
        last_usable_lba,
        guid,
        entries_lba,
        num_entries,
        entry_size,
        entries_crc32,
    ) = run(
        fields,
        slice(sector, 8, 84, "GPT header", offset)?,
        "GPT header",
        offset + 8,
    )?;
    if header_size < 92 || header_size as usize > sector.len() {
        return Err(ParseError::corrupt(
            "GPT header size",
            offset + 0x0c,
            format!("{header_size} is outside 92..={}", sector.len()),
        ));
    }
    let mut copy = sector[..header_size as usize].to_vec();
    copy[0x10..0x14].fill(0);
    let computed = crc32fast::hash(&copy);
    ParseError::check_checksum("GPT header", offset + 0x10, header_crc, computed)?;
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(ParseError::corrupt(
            "GPT entry size",
            offset + 0x54,
            format!("{entry_size} is not 128 × 2^n"),
        ));
    }
    ParseError::check_limit(
        "GPT entry size",
        offset + 0x54,
        entry_size.into(),
        MAX_GPT_ENTRY_SIZE.into(),
        "MAX_GPT_ENTRY_SIZE",
    )?;
    ParseError::check_limit(
        "GPT number of entries",
        offset + 0x50,
        num_entries.into(),
        MAX_GPT_ENTRIES.into(),
        "MAX_GPT_ENTRIES",
    )?;
    if first_usable_lba > last_usable_lba.saturating_add(1) {
        return Err(ParseError::corrupt(
            "GPT header",
            offset + 0x28,
            format!(
                "first usable LBA {first_usable_lba} is after last usable LBA {last_usable_lba}"
            ),
        ));
    }
    let mut disk_guid = Guid::default();
    disk_guid.0.copy_from_slice(guid);
    Ok(GptHeader {
        revision,
        header_size,
        my_lba,
        alternate_lba,
        first_usable_lba,
        last_usable_lba,
        disk_guid,
        entries_lba,
        num_entries,
        entry_size,
        entries_crc32,
    })
}

/// Parses the partition entry array `buf` (exactly `header.entries_bytes()` bytes,
/// read from byte `offset`), verifying its CRC. Returns used entries only.
pub fn parse_gpt_entries(buf: &[u8], header: &GptHeader, offset: u64) -> Result<Vec<GptEntry>> {
    let len = header.entries_bytes();
    let array = slice(buf, 0, len, "GPT partition entry array", offset)?;
    let computed = crc32fast::hash(array);
    ParseError::check_checksum(
        "GPT partition entry array",
        offset,
        header.entries_crc32,
        computed,
    )?;
    let mut out = Vec::new();
    for (i, raw) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let at = offset + (i * header.entry_size as usize) as u64;
        // 0x00 type GUID, 0x10 unique GUID, 0x20 first LBA, 0x28 last LBA, 0x30 attributes, 0x38 name (72 bytes UTF-16LE).
        let (ty, uniq, first_lba, last_lba, attributes, name) = run(
            (
                take(16usize),
                take(16usize),
                le_u64,
                le_u64,
                le_u64,
                take(72usize),
            ),
            raw,
            "GPT partition entry",
            at,
        )?;
        let mut type_guid = Guid::default();
        type_guid.0.copy_from_slice(ty);
        if type_guid.is_nil() {
            continue;
        }
        let mut unique_guid = Guid::default();
        unique_guid.0.copy_from_slice(uniq);
        if last_lba < first_lba {
            return Err(ParseError::corrupt(
                "GPT partition entry",
                at + 0x20,
                format!(
                    "partition {} ends (LBA {last_lba}) before it starts (LBA {first_lba})",
                    i + 1
                ),
            ));
        }
        let units: Vec<u16> = name
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(GptEntry {
            number: i as u32 + 1,
            type_guid,
            unique_guid,
            first_lba,
            last_lba,
            attributes,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

/// A human name for well-known partition type GUIDs.
pub fn type_name(t: &Guid) -> Option<&'static str> {
    Some(match t.to_string().as_str() {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid header + entry array with one partition, for mutation tests.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let mut entries = vec![0u8; 128 * 128];
        entries[0] = 0xaf; // type GUID (non-nil)
        entries[0x10] = 1;
        entries[0x20..0x28].copy_from_slice(&2048u64.to_le_bytes());
        entries[0x28..0x30].copy_from_slice(&4095u64.to_le_bytes());
        for (i, u) in "data".encode_utf16().enumerate() {
            entries[0x38 + 2 * i..0x3a + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&1u64.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&8191u64.to_le_bytes());
        h[0x28..0x30].copy_from_slice(&34u64.to_le_bytes());
        h[0x30..0x38].copy_from_slice(&8158u64.to_le_bytes());
        h[0x48..0x50].copy_from_slice(&2u64.to_le_bytes());
        h[0x50..0x54].copy_from_slice(&128u32.to_le_bytes());
        h[0x54..0x58].copy_from_slice(&128u32.to_le_bytes());
        h[0x58..0x5c].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        reseal(&mut h);
        (h, entries)
    }

    fn reseal(h: &mut [u8]) {
        h[0x10..0x14].fill(0);
        let c = crc32fast::hash(&h[..92]);
        h[0x10..0x14].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn parses_header_and_entries() {
        let (h, e) = sample();
        let hdr = parse_gpt_header(&h, 512).unwrap();
        assert_eq!(
            (hdr.num_entries, hdr.entry_size, hdr.entries_lba),
            (128, 128, 2)
        );
        let parts = parse_gpt_entries(&e, &hdr, 1024).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].number, parts[0].first_lba, parts[0].last_lba),
            (1, 2048, 4095)
        );
        assert_eq!(parts[0].name, "data");
    }

    #[test]
    fn header_crc_mismatch() {
        let (mut h, _) = sample();
        h[0x28] ^= 1;
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::Checksum { offset: 0x210, .. })
        ));
    }

    #[test]
    fn bad_signature() {
        let (mut h, _) = sample();
        h[0] = b'X';
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::BadMagic { .. })
        ));
    }

    #[test]
    fn bad_header_size() {
        let (mut h, _) = sample();
        h[12..16].copy_from_slice(&4000u32.to_le_bytes());
        reseal(&mut h);
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::Corrupt { offset: 0x20c, .. })
        ));
    }

    #[test]
    fn bad_entry_size_and_count() {
        let (mut h, _) = sample();
        h[0x54..0x58].copy_from_slice(&100u32.to_le_bytes());
        reseal(&mut h);
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::Corrupt { .. })
        ));
        let (mut h, _) = sample();
        h[0x50..0x54].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut h);
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn usable_range_inverted() {
        let (mut h, _) = sample();
        h[0x28..0x30].copy_from_slice(&9000u64.to_le_bytes());
        reseal(&mut h);
        assert!(matches!(
            parse_gpt_header(&h, 512),
            Err(ParseError::Corrupt { offset: 0x228, .. })
        ));
    }

    #[test]
    fn entries_crc_and_inverted_partition() {
        let (h, mut e) = sample();
        let hdr = parse_gpt_header(&h, 512).unwrap();
        e[0x20] ^= 1;
        assert!(matches!(
            parse_gpt_entries(&e, &hdr, 1024),
            Err(ParseError::Checksum { .. })
        ));
        let (_, mut e) = sample();
        e[0x28..0x30].copy_from_slice(&10u64.to_le_bytes());
        let mut hdr2 = hdr.clone();
        hdr2.entries_crc32 = crc32fast::hash(&e);
        assert!(matches!(
            parse_gpt_entries(&e, &hdr2, 1024),
            Err(ParseError::Corrupt { offset: 0x420, .. })
        ));
    }

    #[test]
    fn no_panic_on_any_truncation_or_bit_flip() {
        let (h, e) = sample();
        for n in 0..h.len() {
            let _ = parse_gpt_header(&h[..n], 0);
        }
        for bit in 0..92 * 8 {
            let mut m = h.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            if let Ok(hdr) = parse_gpt_header(&m, 0) {
                let _ = parse_gpt_entries(&e, &hdr, 0);
            }
        }
    }

    #[test]
    fn guid_display_is_mixed_endian() {
        let g = Guid([
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ]);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(type_name(&g), Some("EFI System"));
    }
}
