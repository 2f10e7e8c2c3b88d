//! Reparse data buffers ([MS-FSCC] 2.1.2.1, 2.1.2.4, 2.1.2.5) as stored in the
//! `$REPARSE_POINT` attribute, and ntfs-3g's Interix symlink files ("IntxLNK\1" +
//! UTF-16LE target, SYSTEM attribute set), which is what `ln -s` on an ntfs-3g mount
//! writes.
//!
//! Only symbolic links and mount points (junctions) have a target we show; every other
//! tag (dedup, OneDrive placeholders, WSL, ...) is reported by tag so the caller can
//! treat the file as an ordinary file.

use nom::number::complete::{le_u16, le_u32};
use nom::Parser;

use crate::bytes::{need, run, slice};
use crate::error::{ParseError, Result};
use crate::limits::MAX_NTFS_REPARSE_BYTES;

pub const IO_REPARSE_TAG_MOUNT_POINT: u32 = 0xA000_0003;
pub const IO_REPARSE_TAG_SYMLINK: u32 = 0xA000_000C;
/// Magic of an Interix (SFU / ntfs-3g) symlink file.
pub const INTERIX_SYMLINK_MAGIC: &[u8; 8] = b"IntxLNK\x01";

const WHAT: &str = "NTFS reparse point";

/// A parsed reparse point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtfsReparse {
    /// A symlink or junction: the substitute name as stored (e.g. `\??\C:\Windows`,
    /// or a relative `..\file`), and whether it is a junction.
    Link {
        tag: u32,
        target: String,
        print_name: String,
        relative: bool,
    },
    /// Any other tag.
    Other { tag: u32 },
}

/// The fixed fields with the spec's names (offsets from the start of the buffer).
struct RawReparse {
    reparse_tag: u32,            // 0x00
    reparse_data_length: u16,    // 0x04
    substitute_name_offset: u16, // 0x08
    substitute_name_length: u16, // 0x0A
    print_name_offset: u16,      // 0x0C
    print_name_length: u16,      // 0x0E
}

/// Parses a reparse buffer; `base` is its absolute offset for errors.
pub fn parse_reparse(b: &[u8], base: u64) -> Result<NtfsReparse> {
    if b.len() as u64 > MAX_NTFS_REPARSE_BYTES {
        return Err(ParseError::LimitExceeded {
            what: WHAT,
            offset: base,
            value: b.len() as u64,
            limit: MAX_NTFS_REPARSE_BYTES,
            name: "MAX_NTFS_REPARSE_BYTES",
        });
    }
    need(b, 8, WHAT, base)?;
    let (tag, len) = run((le_u32, le_u16), b, WHAT, base)?;
    let data = slice(b, 8, len.into(), WHAT, base)?;
    if tag != IO_REPARSE_TAG_SYMLINK && tag != IO_REPARSE_TAG_MOUNT_POINT {
        return Ok(NtfsReparse::Other { tag });
    }
    let r = run(
        (le_u16, le_u16, le_u16, le_u16).map(|(so, sl, po, pl)| RawReparse {
            reparse_tag: tag,
            reparse_data_length: len,
            substitute_name_offset: so,
            substitute_name_length: sl,
            print_name_offset: po,
            print_name_length: pl,
        }),
        data,
        WHAT,
        base + 8,
    )?;
    // The symlink buffer has a 4-byte Flags field before the path buffer.
    let (path_at, relative) = if r.reparse_tag == IO_REPARSE_TAG_SYMLINK {
        let flags = run(le_u32, slice(data, 8, 4, WHAT, base + 8)?, WHAT, base + 16)?;
        (12usize, flags & 1 != 0)
    } else {
        (8usize, false)
    };
    let paths = data.get(path_at..).unwrap_or(&[]);
    let paths_base = base + 8 + path_at as u64;
    debug_assert!(usize::from(r.reparse_data_length) == data.len());
    let target = utf16(
        paths,
        r.substitute_name_offset,
        r.substitute_name_length,
        paths_base,
    )?;
    let print_name = utf16(paths, r.print_name_offset, r.print_name_length, paths_base)?;
    Ok(NtfsReparse::Link {
        tag,
        target,
        print_name,
        relative,
    })
}

fn utf16(paths: &[u8], off: u16, len: u16, base: u64) -> Result<String> {
    if len % 2 != 0 {
        return Err(ParseError::corrupt(
            WHAT,
            base,
            format!("name length {len} is odd"),
        ));
    }
    let raw = slice(paths, off.into(), len.into(), WHAT, base)?;
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units)
        .map_err(|_| ParseError::corrupt(WHAT, base + u64::from(off), "name is not valid UTF-16"))
}

/// The target of an Interix symlink file (its whole content), or `None` if the bytes
/// are not one.
pub fn parse_interix_symlink(b: &[u8], base: u64) -> Result<Option<String>> {
    let Some(rest) = b.strip_prefix(INTERIX_SYMLINK_MAGIC.as_slice()) else {
        return Ok(None);
    };
    if rest.len() % 2 != 0 || rest.len() as u64 > MAX_NTFS_REPARSE_BYTES {
        return Err(ParseError::corrupt(
            "Interix symlink",
            base,
            format!(
                "target of {} bytes is not UTF-16 within the cap",
                rest.len()
            ),
        ));
    }
    let units: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units)
        .map(Some)
        .map_err(|_| ParseError::corrupt("Interix symlink", base + 8, "target is not valid UTF-16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn buffer(tag: u32, sub: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
        let (s, p) = (u16s(sub), u16s(print));
        let mut body = Vec::new();
        body.extend((0u16).to_le_bytes());
        body.extend((s.len() as u16).to_le_bytes());
        body.extend((s.len() as u16).to_le_bytes());
        body.extend((p.len() as u16).to_le_bytes());
        if let Some(f) = flags {
            body.extend(f.to_le_bytes());
        }
        body.extend(&s);
        body.extend(&p);
        let mut b = tag.to_le_bytes().to_vec();
        b.extend((body.len() as u16).to_le_bytes());
        b.extend([0, 0]);
        b.extend(body);
        b
    }

    #[test]
    fn symlink_and_junction() {
        let b = buffer(IO_REPARSE_TAG_SYMLINK, "..\\a", "..\\a", Some(1));
        assert_eq!(
            parse_reparse(&b, 0).unwrap(),
            NtfsReparse::Link {
                tag: IO_REPARSE_TAG_SYMLINK,
                target: "..\\a".into(),
                print_name: "..\\a".into(),
                relative: true
            }
        );
        let b = buffer(IO_REPARSE_TAG_MOUNT_POINT, "\\??\\C:\\W", "C:\\W", None);
        match parse_reparse(&b, 0).unwrap() {
            NtfsReparse::Link {
                target, relative, ..
            } => {
                assert_eq!(target, "\\??\\C:\\W");
                assert!(!relative);
            }
            o => panic!("{o:?}"),
        }
        let other = 0x8000_0013u32
            .to_le_bytes()
            .iter()
            .chain(&[0, 0, 0, 0])
            .copied()
            .collect::<Vec<_>>();
        assert_eq!(
            parse_reparse(&other, 0).unwrap(),
            NtfsReparse::Other { tag: 0x8000_0013 }
        );
    }

    #[test]
    fn each_rule_rejects() {
        let good = buffer(IO_REPARSE_TAG_SYMLINK, "abc", "abc", Some(0));
        // Data length beyond the buffer.
        let mut b = good.clone();
        b[4] = 0xff;
        assert!(matches!(
            parse_reparse(&b, 0x100),
            Err(ParseError::Truncated { offset: 0x108, .. })
        ));
        // Substitute name beyond the path buffer.
        let mut b = good.clone();
        b[8] = 0x40;
        assert!(parse_reparse(&b, 0).is_err());
        // Odd name length.
        let mut b = good.clone();
        b[10] = 5;
        assert!(matches!(
            parse_reparse(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
        // Unpaired surrogate.
        let mut b = good.clone();
        let at = b.len() - 2;
        b[at..].copy_from_slice(&0xd800u16.to_le_bytes());
        assert!(matches!(
            parse_reparse(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
        // Over the cap.
        let big = vec![0u8; MAX_NTFS_REPARSE_BYTES as usize + 1];
        assert!(matches!(
            parse_reparse(&big, 0),
            Err(ParseError::LimitExceeded { .. })
        ));
        // Too short for the header.
        assert!(matches!(
            parse_reparse(&good[..7], 0),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn interix() {
        let mut b = INTERIX_SYMLINK_MAGIC.to_vec();
        b.extend(u16s("file-with-12345"));
        assert_eq!(
            parse_interix_symlink(&b, 0).unwrap().as_deref(),
            Some("file-with-12345")
        );
        assert_eq!(parse_interix_symlink(b"hello", 0).unwrap(), None);
        b.push(0);
        assert!(parse_interix_symlink(&b, 0).is_err());
    }

    #[test]
    fn no_panic_on_truncation_or_bit_flips() {
        for s in [
            buffer(IO_REPARSE_TAG_SYMLINK, "..\\target", "target", Some(1)),
            buffer(IO_REPARSE_TAG_MOUNT_POINT, "\\??\\C:\\x", "C:\\x", None),
        ] {
            for n in 0..s.len() {
                let _ = parse_reparse(&s[..n], 0);
            }
            for i in 0..s.len() * 8 {
                let mut b = s.clone();
                b[i / 8] ^= 1 << (i % 8);
                let _ = parse_reparse(&b, 0);
            }
        }
    }
}
