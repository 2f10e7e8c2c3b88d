//! VHDX (Hyper-V virtual hard disk v2), after Microsoft's [MS-VHDX] open
//! specification (v20180912), sections 2.1–2.6.
//!
//! One file per on-disk structure: [`file_id`] (2.1), [`header`] (2.2.2),
//! [`region`] (2.2.3), [`log_entry`] / [`log_data`] (2.3.1), [`log_replay`] (2.3.3,
//! finding the active sequence and turning it into an in-memory overlay),
//! [`metadata`] (2.6.1–2.6.2), [`parent_locator`] (2.6.2.6) and [`bat`] (2.5);
//! [`write`] builds them for export.
//!
//! Supported: dynamic, fixed and differencing disks, 512 and 4096 byte logical
//! sectors, every block size the spec allows, dirty logs (replayed in memory only).
//! Every structure is a pure function of bytes; every offset in an error is absolute
//! in the VHDX file.

pub mod bat;
pub mod file_id;
pub mod header;
pub mod log_data;
pub mod log_entry;
pub mod log_replay;
pub mod metadata;
pub mod parent_locator;
pub mod region;
pub mod write;

use nom::bytes::complete::take;
use nom::number::complete::le_u32;
use nom::{IResult, Parser};

/// 1 KiB, 64 KiB and 1 MiB: the units the spec aligns structures to.
pub const KIB: u64 = 1024;
/// Structures such as headers and region tables live in 64 KiB slots.
pub const SLOT: u64 = 64 * KIB;
/// Payload, BAT and metadata regions are 1 MiB aligned.
pub const MIB: u64 = 1024 * KIB;

/// A GUID as MS-VHDX stores it: the first three fields little-endian, the last eight
/// bytes as they are (the "mixed-endian" Windows layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID (e.g. "no log").
    pub const ZERO: Guid = Guid([0; 16]);

    /// A GUID from its canonical parts (as written in the spec: `data1-data2-data3-data4`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// A version 4 (random) GUID from 16 random bytes: the version and variant bits
    /// are set as RFC 4122 asks, in the mixed-endian layout MS-VHDX stores.
    pub fn from_random(mut b: [u8; 16]) -> Guid {
        // data3 is little-endian: its high nibble (the version) is in byte 7.
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// True for the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the canonical text form, with or without braces, any case
    /// (parent locators store `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`).
    pub fn parse_text(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s.strip_prefix('{').unwrap_or(s);
        let s = s.strip_suffix('}').unwrap_or(s);
        let parts: Vec<&str> = s.split('-').collect();
        let [p1, p2, p3, p4, p5] = parts.as_slice() else {
            return None;
        };
        if p1.len() != 8 || p2.len() != 4 || p3.len() != 4 || p4.len() != 4 || p5.len() != 12 {
            return None;
        }
        let d1 = u32::from_str_radix(p1, 16).ok()?;
        let d2 = u16::from_str_radix(p2, 16).ok()?;
        let d3 = u16::from_str_radix(p3, 16).ok()?;
        let tail = format!("{p4}{p5}");
        let mut d4 = [0u8; 8];
        for (i, b) in d4.iter_mut().enumerate() {
            let hex = tail.get(i * 2..i * 2 + 2)?;
            *b = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }
}

impl std::fmt::Display for Guid {
    /// Canonical lowercase `8-4-4-4-12` without braces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// nom: a 16-byte GUID.
pub(crate) fn guid(i: &[u8]) -> IResult<&[u8], Guid> {
    take(16usize)
        .map(|b: &[u8]| {
            let mut g = [0u8; 16];
            g.copy_from_slice(b);
            Guid(g)
        })
        .parse(i)
}

/// nom: a 4-byte signature.
pub(crate) fn sig4(i: &[u8]) -> IResult<&[u8], [u8; 4]> {
    le_u32.map(|v| v.to_le_bytes()).parse(i)
}

/// CRC-32C of `buf` computed as the spec requires: with the 4-byte checksum field at
/// `field` taken as zero.
pub fn crc32c_zeroed(buf: &[u8], field: usize) -> u32 {
    let head = buf.get(..field).unwrap_or(buf);
    let after = field.saturating_add(4);
    let tail = buf.get(after..).unwrap_or(&[]);
    let crc = crc32c::crc32c(head);
    let crc = if buf.len() >= after {
        crc32c::crc32c_append(crc, &[0; 4])
    } else {
        crc
    };
    crc32c::crc32c_append(crc, tail)
}

/// Stores the CRC-32C of `buf` (checksum field at `field` zeroed) into that field:
/// used by tests and fixtures to re-seal a mutated structure.
pub fn seal_crc(buf: &mut [u8], field: usize) {
    if let Some(f) = buf.get_mut(field..field + 4) {
        f.fill(0);
    }
    let crc = crc32c::crc32c(buf);
    if let Some(f) = buf.get_mut(field..field + 4) {
        f.copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip() {
        let g = Guid::from_fields(
            0x2DC2_7766,
            0xF623,
            0x4200,
            [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
        );
        assert_eq!(g.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(
            Guid::parse_text("{2DC27766-F623-4200-9D64-115E9BFD4A08}"),
            Some(g)
        );
        assert_eq!(
            Guid::parse_text("2dc27766-f623-4200-9d64-115e9bfd4a0"),
            None
        );
        assert_eq!(Guid::parse_text("not a guid"), None);
    }

    #[test]
    fn random_guid_is_version_4() {
        let g = Guid::from_random([0xff; 16]);
        assert_eq!(g.to_string(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let g = Guid::from_random([0; 16]);
        assert_eq!(g.to_string(), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn crc_with_zeroed_field_matches_sealed() {
        let mut b = vec![7u8; 64];
        seal_crc(&mut b, 4);
        let stored = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(crc32c_zeroed(&b, 4), stored);
    }
}
