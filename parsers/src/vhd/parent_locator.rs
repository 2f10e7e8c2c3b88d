//! VHD parent locator entries (spec §"Dynamic Disk Header Format", Parent Locator
//! Entries): eight 24-byte entries in the dynamic header of a differencing disk, each
//! pointing to a blob elsewhere in the file that names the parent for one platform.
//!
//! Supported blobs: W2ru (relative Windows path) and W2ku (absolute Windows path), both
//! UTF-16LE; MacX (a `file://` URL, UTF-8). The deprecated Wi2r/Wi2k (ANSI) and Mac
//! (an opaque Mac OS alias record) blobs are kept as entries but not decoded.

use crate::error::{ParseError, Result};
use crate::limits::MAX_PARENT_NAME_BYTES;

const WHAT: &str = "VHD parent locator";

/// Platform code of a locator entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhdPlatform {
    /// "W2ru": relative path, UTF-16LE.
    W2ru,
    /// "W2ku": absolute path, UTF-16LE.
    W2ku,
    /// "Wi2r": deprecated relative path (ANSI).
    Wi2r,
    /// "Wi2k": deprecated absolute path (ANSI).
    Wi2k,
    /// "MacX": file URL, UTF-8.
    MacX,
    /// "Mac ": Mac OS alias record.
    Mac,
    /// Any other non-zero code (kept for `inspect`).
    Other(u32),
}

impl VhdPlatform {
    /// From the big-endian platform code; `None` for 0 (an unused entry).
    pub fn from_code(code: u32) -> Option<VhdPlatform> {
        Some(match &code.to_be_bytes() {
            [0, 0, 0, 0] => return None,
            b"W2ru" => VhdPlatform::W2ru,
            b"W2ku" => VhdPlatform::W2ku,
            b"Wi2r" => VhdPlatform::Wi2r,
            b"Wi2k" => VhdPlatform::Wi2k,
            b"MacX" => VhdPlatform::MacX,
            b"Mac " => VhdPlatform::Mac,
            _ => VhdPlatform::Other(code),
        })
    }
}

/// One used locator entry, with its blob checked to lie inside the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdParentLocator {
    /// Absolute offset of the 24-byte entry in the dynamic header.
    pub entry_offset: u64,
    pub platform: VhdPlatform,
    /// Platform Data Space (the spec says sectors; Hyper-V writes bytes): informative.
    pub platform_data_space: u32,
    /// Bytes of the blob.
    pub platform_data_length: u32,
    /// Absolute offset of the blob.
    pub platform_data_offset: u64,
}

impl VhdParentLocator {
    /// Checks that the blob is no longer than [`MAX_PARENT_NAME_BYTES`] and lies inside a
    /// file of `file_size` bytes, so the caller may read exactly that range.
    pub fn check(&self, file_size: u64) -> Result<()> {
        ParseError::check_limit(
            WHAT,
            self.entry_offset + 8,
            self.platform_data_length.into(),
            MAX_PARENT_NAME_BYTES,
            "MAX_PARENT_NAME_BYTES",
        )?;
        let end = self
            .platform_data_offset
            .checked_add(self.platform_data_length.into());
        if end.is_none_or(|e| e > file_size) {
            return Err(ParseError::corrupt(
                WHAT,
                self.entry_offset + 0x10,
                format!(
                    "blob of {} bytes at {:#x} lies outside the file ({file_size} bytes)",
                    self.platform_data_length, self.platform_data_offset
                ),
            ));
        }
        Ok(())
    }
}

/// Decodes the blob of a locator (`data`, read at absolute offset `base`) into a path
/// as stored (Windows separators kept; the chain resolver interprets them). `None` for
/// platforms whose blobs we do not decode.
pub fn decode_locator(platform: VhdPlatform, data: &[u8], base: u64) -> Result<Option<String>> {
    let text = match platform {
        VhdPlatform::W2ru | VhdPlatform::W2ku => {
            if data.len() % 2 != 0 {
                return Err(ParseError::corrupt(
                    WHAT,
                    base,
                    format!("UTF-16 path of odd length {}", data.len()),
                ));
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16(&units)
                .map_err(|_| ParseError::corrupt(WHAT, base, "path is not valid UTF-16"))?
        }
        VhdPlatform::MacX => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let url = std::str::from_utf8(&data[..end])
                .map_err(|_| ParseError::corrupt(WHAT, base, "file URL is not valid UTF-8"))?;
            file_url_path(url)
                .ok_or_else(|| ParseError::corrupt(WHAT, base, "not a file:// URL"))?
        }
        _ => return Ok(None),
    };
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(text))
}

/// `file://localhost/a%20b/c.vhd` or `file:///a/c.vhd` -> `/a b/c.vhd`.
fn file_url_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("file://")?;
    let path = &rest[rest.find('/')?..];
    let mut out = Vec::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }

    fn entry(len: u32, off: u64) -> VhdParentLocator {
        VhdParentLocator {
            entry_offset: 0x440,
            platform: VhdPlatform::W2ru,
            platform_data_space: 512,
            platform_data_length: len,
            platform_data_offset: off,
        }
    }

    #[test]
    fn decodes_windows_and_mac_names() {
        let mut w = utf16le(".\\parent.vhd");
        w.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            decode_locator(VhdPlatform::W2ru, &w, 0).unwrap().as_deref(),
            Some(".\\parent.vhd")
        );
        assert_eq!(
            decode_locator(
                VhdPlatform::MacX,
                b"file://localhost/Users/a%20b/p.vhd\0",
                0
            )
            .unwrap()
            .as_deref(),
            Some("/Users/a b/p.vhd")
        );
        assert_eq!(decode_locator(VhdPlatform::Mac, b"alias", 0).unwrap(), None);
        assert_eq!(VhdPlatform::from_code(0), None);
        assert_eq!(
            VhdPlatform::from_code(u32::from_be_bytes(*b"W2ku")),
            Some(VhdPlatform::W2ku)
        );
    }

    #[test]
    fn rejects_odd_utf16_length() {
        assert!(matches!(
            decode_locator(VhdPlatform::W2ku, b"abc", 0x3000),
            Err(ParseError::Corrupt { offset: 0x3000, .. })
        ));
    }

    #[test]
    fn rejects_unpaired_surrogate() {
        assert!(decode_locator(VhdPlatform::W2ku, &[0x00, 0xd8, 0x41, 0x00], 0).is_err());
    }

    #[test]
    fn rejects_non_file_url() {
        assert!(decode_locator(VhdPlatform::MacX, b"http://x/y", 0).is_err());
        assert!(decode_locator(VhdPlatform::MacX, &[0xff, 0xfe], 0).is_err());
    }

    #[test]
    fn rejects_blob_outside_file_or_too_long() {
        assert!(entry(24, 4096).check(4096 + 24).is_ok());
        assert!(matches!(
            entry(24, 4096).check(4096 + 23),
            Err(ParseError::Corrupt { offset: 0x450, .. })
        ));
        assert!(entry(24, u64::MAX - 3).check(u64::MAX).is_err());
        assert!(matches!(
            entry(u32::MAX, 0).check(u64::MAX),
            Err(ParseError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn no_panic_on_any_blob() {
        let mut w = utf16le("C:\\vms\\p.vhd");
        w.extend_from_slice(b"file:///x%4");
        for n in 0..w.len() {
            for p in [VhdPlatform::W2ku, VhdPlatform::MacX] {
                let _ = decode_locator(p, &w[..n], 0);
                let _ = decode_locator(p, &w[n..], 0);
            }
        }
    }
}
