//! The parent locator metadata item (MS-VHDX 2.6.2.6 and 2.6.2.6.1): how a
//! differencing disk names its parent. A header (locator type GUID, key/value
//! count) is followed by 12-byte entries pointing at UTF-16LE key and value strings
//! inside the item. For the VHDX locator type the keys are `parent_linkage` (the
//! parent's DataWriteGuid), `parent_linkage2`, `relative_path`, `volume_path` and
//! `absolute_win32_path`. Unknown keys are kept but not interpreted.

use nom::multi::count;
use nom::number::complete::{le_u16, le_u32};

use super::{guid, Guid};
use crate::bytes::{need, run, slice};
use crate::error::{ParseError, Result};
use crate::limits::MAX_VHDX_LOCATOR_ENTRIES;

/// The VHDX parent locator type: B04AEFB7-D19E-4A81-B789-25B8E9445913.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

const WHAT: &str = "VHDX parent locator";

/// One entry as stored (12 bytes).
#[derive(Debug, Clone)]
struct RawLocatorEntry {
    key_offset: u32,   // 0x00 from the start of the item
    value_offset: u32, // 0x04
    key_length: u16,   // 0x08 bytes
    value_length: u16, // 0x0A bytes
}

/// A validated parent locator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VhdxParentLocator {
    /// The parent's DataWriteGuid as recorded when the child was made.
    pub parent_linkage: Option<Guid>,
    pub parent_linkage2: Option<Guid>,
    pub relative_path: Option<String>,
    pub volume_path: Option<String>,
    pub absolute_win32_path: Option<String>,
    /// Every pair, in stored order.
    pub entries: Vec<(String, String)>,
}

fn utf16(b: &[u8], what: &'static str, at: u64) -> Result<String> {
    if b.len() % 2 != 0 {
        return Err(ParseError::corrupt(what, at, "UTF-16 string of odd length"));
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units)
        .map_err(|_| ParseError::corrupt(what, at, "string is not valid UTF-16"))
}

/// Parses the locator item `buf` found at absolute file offset `base`.
pub fn parse_parent_locator(buf: &[u8], base: u64) -> Result<VhdxParentLocator> {
    need(buf, 20, WHAT, base)?;
    let (locator_type, _reserved, kv_count) = run((guid, le_u16, le_u16), buf, WHAT, base)?;
    if locator_type != VHDX_LOCATOR_TYPE {
        return Err(ParseError::unsupported(
            WHAT,
            base,
            format!(
                "locator type {locator_type} (only the VHDX type {VHDX_LOCATOR_TYPE} is defined)"
            ),
        ));
    }
    ParseError::check_limit(
        WHAT,
        base + 18,
        kv_count.into(),
        MAX_VHDX_LOCATOR_ENTRIES.into(),
        "MAX_VHDX_LOCATOR_ENTRIES",
    )?;
    let n = kv_count as usize;
    let table = slice(buf, 20, n * 12, WHAT, base)?;
    let raw = run(
        count(
            nom::combinator::map((le_u32, le_u32, le_u16, le_u16), |(ko, vo, kl, vl)| {
                RawLocatorEntry {
                    key_offset: ko,
                    value_offset: vo,
                    key_length: kl,
                    value_length: vl,
                }
            }),
            n,
        ),
        table,
        WHAT,
        base + 20,
    )?;
    let mut out = VhdxParentLocator::default();
    for (i, e) in raw.iter().enumerate() {
        let at = base + 20 + 12 * i as u64;
        if e.key_length == 0 || e.value_length == 0 {
            return Err(ParseError::corrupt(WHAT, at, "empty key or value"));
        }
        let key_bytes = slice(buf, e.key_offset as usize, e.key_length.into(), WHAT, base)?;
        let value_bytes = slice(
            buf,
            e.value_offset as usize,
            e.value_length.into(),
            WHAT,
            base,
        )?;
        let key = utf16(key_bytes, WHAT, base + u64::from(e.key_offset))?;
        let value = utf16(value_bytes, WHAT, base + u64::from(e.value_offset))?;
        if out.entries.iter().any(|(k, _)| *k == key) {
            return Err(ParseError::corrupt(
                WHAT,
                at,
                format!("key {key:?} appears twice"),
            ));
        }
        let as_guid = |v: &str| {
            Guid::parse_text(v).ok_or_else(|| {
                ParseError::corrupt(
                    WHAT,
                    base + u64::from(e.value_offset),
                    format!("{key} value {v:?} is not a GUID"),
                )
            })
        };
        match key.as_str() {
            "parent_linkage" => out.parent_linkage = Some(as_guid(&value)?),
            "parent_linkage2" => out.parent_linkage2 = Some(as_guid(&value)?),
            "relative_path" => out.relative_path = Some(value.clone()),
            "volume_path" => out.volume_path = Some(value.clone()),
            "absolute_win32_path" => out.absolute_win32_path = Some(value.clone()),
            _ => {}
        }
        out.entries.push((key, value));
    }
    if out.parent_linkage.is_none() {
        return Err(ParseError::corrupt(
            WHAT,
            base,
            "no parent_linkage entry (required for the VHDX locator type)",
        ));
    }
    if out.relative_path.is_none() && out.volume_path.is_none() && out.absolute_win32_path.is_none()
    {
        return Err(ParseError::corrupt(WHAT, base, "no path to the parent"));
    }
    Ok(out)
}

/// Builds a locator item from pairs (for tests and fixtures).
pub fn build_parent_locator(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(&VHDX_LOCATOR_TYPE.0);
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut strings = Vec::new();
    let table_end = 20 + 12 * pairs.len();
    for (k, v) in pairs {
        let k: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let v: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let ko = table_end + strings.len();
        strings.extend_from_slice(&k);
        let vo = table_end + strings.len();
        strings.extend_from_slice(&v);
        head.extend_from_slice(&(ko as u32).to_le_bytes());
        head.extend_from_slice(&(vo as u32).to_le_bytes());
        head.extend_from_slice(&(k.len() as u16).to_le_bytes());
        head.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    head.extend_from_slice(&strings);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "{12345678-9abc-def0-1122-334455667788}";

    fn sample() -> Vec<u8> {
        build_parent_locator(&[
            ("parent_linkage", LINK),
            ("relative_path", ".\\base.vhdx"),
            ("absolute_win32_path", "C:\\vms\\base.vhdx"),
        ])
    }

    #[test]
    fn parses() {
        let l = parse_parent_locator(&sample(), 0x1000).unwrap();
        assert_eq!(l.parent_linkage, Guid::parse_text(LINK));
        assert_eq!(l.relative_path.as_deref(), Some(".\\base.vhdx"));
        assert_eq!(l.absolute_win32_path.as_deref(), Some("C:\\vms\\base.vhdx"));
        assert_eq!(l.entries.len(), 3);
    }

    #[test]
    fn rule_locator_type() {
        let mut b = sample();
        b[0] ^= 1;
        assert!(matches!(
            parse_parent_locator(&b, 0x1000),
            Err(ParseError::Unsupported { offset: 0x1000, .. })
        ));
    }

    #[test]
    fn rule_count_limit() {
        let mut b = sample();
        b[18..20].copy_from_slice(&1000u16.to_le_bytes());
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn rule_string_bounds() {
        let mut b = sample();
        b[20..24].copy_from_slice(&60000u32.to_le_bytes());
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn rule_odd_length() {
        let mut b = sample();
        b[28..30].copy_from_slice(&27u16.to_le_bytes());
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn rule_linkage_is_guid_and_required() {
        let b = build_parent_locator(&[("parent_linkage", "nope"), ("relative_path", "a")]);
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
        let b = build_parent_locator(&[("relative_path", "a")]);
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
        let b = build_parent_locator(&[("parent_linkage", LINK)]);
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn rule_duplicate_key() {
        let b = build_parent_locator(&[
            ("parent_linkage", LINK),
            ("parent_linkage", LINK),
            ("relative_path", "a"),
        ]);
        assert!(matches!(
            parse_parent_locator(&b, 0),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let b = sample();
        for n in 0..b.len() {
            let _ = parse_parent_locator(&b[..n], 0);
        }
        for bit in 0..b.len() * 8 {
            let mut m = b.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let _ = parse_parent_locator(&m, 0);
        }
    }
}
