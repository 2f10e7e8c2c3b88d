//! The VMDK text descriptor, VMware Virtual Disk Format 1.1, section "The Descriptor
//! File": `key=value` lines (version, CID, parentCID, createType,
//! parentFileNameHint), extent lines (`RW 20480 SPARSE "disk-s001.vmdk"`) and the
//! disk database (`ddb.key = "value"`).
//!
//! It is either a file of its own or embedded in a monolithic sparse extent (NUL
//! padded, so parsing stops at the first NUL). Lines end in LF or CRLF; `#` starts a
//! comment line; unknown keys are kept out of the way but do not fail. Extent file
//! names are returned as stored (quoted, may contain spaces); resolving them against
//! the descriptor's directory is the reader's job.
//!
//! Invariants of [`VmdkDescriptor`]: at least one and at most [`MAX_VMDK_EXTENTS`]
//! extents, each of at least one sector, with a file name unless it is a ZERO extent;
//! the total size is at most [`MAX_VIRTUAL_SIZE`]; every extent's start offset in
//! its file fits a u64 in bytes.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_till, take_while1};
use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::{eof, opt};
use nom::sequence::{delimited, preceded};
use nom::Parser;

use super::SECTOR;
use crate::error::{ParseError, Result};
use crate::limits::{MAX_DESCRIPTOR_BYTES, MAX_VIRTUAL_SIZE, MAX_VMDK_EXTENTS};

const WHAT: &str = "VMDK descriptor";

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmdkAccess {
    ReadWrite,
    ReadOnly,
    NoAccess,
}

/// Extent types of a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmdkExtentType {
    /// Raw bytes in a file, from an offset.
    Flat,
    /// A hosted sparse ("KDMV") extent (or COWD, which QEMU accepts here too).
    Sparse,
    /// No file: reads as zeros.
    Zero,
    /// ESXi flat extent.
    Vmfs,
    /// ESXi COWD sparse extent.
    VmfsSparse,
    /// ESXi raw device mappings (read as flat files).
    VmfsRdm,
    VmfsRaw,
    /// ESXi 6.5+ space-efficient sparse extent.
    SeSparse,
}

impl VmdkExtentType {
    fn from_word(w: &[u8]) -> Option<Self> {
        Some(match w {
            b"FLAT" => Self::Flat,
            b"SPARSE" => Self::Sparse,
            b"ZERO" => Self::Zero,
            b"VMFS" => Self::Vmfs,
            b"VMFSSPARSE" => Self::VmfsSparse,
            b"VMFSRDM" => Self::VmfsRdm,
            b"VMFSRAW" => Self::VmfsRaw,
            b"SESPARSE" => Self::SeSparse,
            _ => return None,
        })
    }

    /// The keyword as written in descriptors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "FLAT",
            Self::Sparse => "SPARSE",
            Self::Zero => "ZERO",
            Self::Vmfs => "VMFS",
            Self::VmfsSparse => "VMFSSPARSE",
            Self::VmfsRdm => "VMFSRDM",
            Self::VmfsRaw => "VMFSRAW",
            Self::SeSparse => "SESPARSE",
        }
    }
}

/// One validated extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkExtentLine {
    pub access: VmdkAccess,
    pub sectors: u64,
    pub kind: VmdkExtentType,
    /// File name as stored (None only for ZERO extents).
    pub file: Option<String>,
    /// Start of the extent's data in its file, in sectors (flat extents).
    pub offset_sectors: u64,
    /// Absolute offset of the line, for later errors about this extent.
    pub line_offset: u64,
}

impl VmdkExtentLine {
    /// Size in bytes (checked at parse time).
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// A validated descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkDescriptor {
    pub version: u32,
    /// Content ID; changes whenever the disk is written.
    pub cid: Option<u32>,
    /// The parent's CID when this is a delta (None for ffffffff or absent).
    pub parent_cid: Option<u32>,
    pub create_type: String,
    pub parent_file_name_hint: Option<String>,
    pub extents: Vec<VmdkExtentLine>,
    /// Disk database entries (`ddb.` prefix removed).
    pub ddb: Vec<(String, String)>,
}

impl VmdkDescriptor {
    /// A disk database value (key without `ddb.`).
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sum of the extent sizes in bytes (capped at parse time).
    pub fn total_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.bytes()).sum()
    }
}

/// The extent line as written, before validation.
struct RawExtentLine<'a> {
    access: &'a [u8],
    sectors: &'a [u8],
    kind: &'a [u8],
    file: Option<&'a [u8]>,
    offset: Option<&'a [u8]>,
}

fn raw_extent_line(input: &[u8]) -> nom::IResult<&[u8], RawExtentLine<'_>> {
    let (input, (access, _, sectors, _, kind)) = (
        alt((tag("RW"), tag("RDONLY"), tag("NOACCESS"))),
        space1,
        digit1,
        space1,
        take_while1(|c: u8| c.is_ascii_alphanumeric()),
    )
        .parse(input)?;
    let (input, file) = opt(preceded(
        space1,
        delimited(char('"'), take_till(|c| c == b'"'), char('"')),
    ))
    .parse(input)?;
    let (input, offset) = opt(preceded(space1, digit1)).parse(input)?;
    let (input, _) = (space0, eof).parse(input)?;
    Ok((
        input,
        RawExtentLine {
            access,
            sectors,
            kind,
            file,
            offset,
        },
    ))
}

fn is_extent_line(line: &[u8]) -> bool {
    ["RW", "RDONLY", "NOACCESS"].iter().any(|w| {
        line.strip_prefix(w.as_bytes())
            .is_some_and(|rest| rest.first().is_some_and(|c| c.is_ascii_whitespace()))
    })
}

fn number(digits: &[u8], at: u64, name: &str) -> Result<u64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| ParseError::corrupt(WHAT, at, format!("{name} does not fit 64 bits")))
}

fn parse_extent_line(line: &[u8], at: u64) -> Result<VmdkExtentLine> {
    let r = match raw_extent_line(line) {
        Ok((_, r)) => r,
        Err(_) => {
            return Err(ParseError::corrupt(
                WHAT,
                at,
                format!(
                    "malformed extent line {:?} (expected ACCESS SECTORS TYPE \"FILE\" [OFFSET])",
                    String::from_utf8_lossy(line)
                ),
            ))
        }
    };
    let access = match r.access {
        b"RW" => VmdkAccess::ReadWrite,
        b"RDONLY" => VmdkAccess::ReadOnly,
        _ => VmdkAccess::NoAccess,
    };
    let sectors = number(r.sectors, at, "extent size")?;
    if sectors == 0 {
        return Err(ParseError::corrupt(WHAT, at, "extent of 0 sectors"));
    }
    let kind = VmdkExtentType::from_word(r.kind).ok_or_else(|| {
        ParseError::unsupported(
            WHAT,
            at,
            format!("extent type {:?}", String::from_utf8_lossy(r.kind)),
        )
    })?;
    let file = r.file.map(|f| String::from_utf8_lossy(f).into_owned());
    if kind != VmdkExtentType::Zero && file.as_deref().is_none_or(str::is_empty) {
        return Err(ParseError::corrupt(
            WHAT,
            at,
            format!("{} extent without a file name", kind.name()),
        ));
    }
    let offset_sectors = match r.offset {
        Some(d) => number(d, at, "extent offset")?,
        None => 0,
    };
    if offset_sectors.checked_mul(SECTOR).is_none() {
        return Err(ParseError::corrupt(
            WHAT,
            at,
            format!("extent offset {offset_sectors} sectors is beyond any file"),
        ));
    }
    Ok(VmdkExtentLine {
        access,
        sectors,
        kind,
        file,
        offset_sectors,
        line_offset: at,
    })
}

fn hex32(v: &str, at: u64, key: &str) -> Result<u32> {
    u32::from_str_radix(v, 16)
        .map_err(|_| ParseError::corrupt(WHAT, at, format!("{key}={v:?} is not 8 hex digits")))
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses a descriptor from `text` (a whole descriptor file, or the embedded
/// descriptor area of a sparse extent) that lies at absolute offset `base`.
pub fn parse_descriptor(text: &[u8], base: u64) -> Result<VmdkDescriptor> {
    ParseError::check_limit(
        WHAT,
        base,
        text.len() as u64,
        MAX_DESCRIPTOR_BYTES,
        "MAX_DESCRIPTOR_BYTES",
    )?;
    let text = text.split(|&c| c == 0).next().unwrap_or_default();
    let mut version = None;
    let mut cid = None;
    let mut parent_cid = None;
    let mut create_type = None;
    let mut hint = None;
    let mut extents = Vec::new();
    let mut ddb = Vec::new();
    let mut total: u64 = 0;
    let mut pos = 0usize;
    for raw_line in text.split(|&c| c == b'\n') {
        let at = base.saturating_add(pos as u64);
        pos = pos.saturating_add(raw_line.len() + 1);
        let line = raw_line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        if is_extent_line(line) {
            ParseError::check_limit(
                WHAT,
                at,
                extents.len() as u64 + 1,
                MAX_VMDK_EXTENTS as u64,
                "MAX_VMDK_EXTENTS",
            )?;
            let e = parse_extent_line(line, at)?;
            total = total
                .checked_add(e.sectors)
                .filter(|t| t.checked_mul(SECTOR).is_some_and(|b| b <= MAX_VIRTUAL_SIZE))
                .ok_or(ParseError::LimitExceeded {
                    what: WHAT,
                    offset: at,
                    value: total.saturating_add(e.sectors).saturating_mul(SECTOR),
                    limit: MAX_VIRTUAL_SIZE,
                    name: "MAX_VIRTUAL_SIZE",
                })?;
            extents.push(e);
            continue;
        }
        let line = String::from_utf8_lossy(line);
        let Some((key, value)) = line.split_once('=') else {
            continue; // not key=value: tolerated like any unknown line
        };
        let (key, value) = (key.trim(), unquote(value));
        match key {
            "version" => {
                let v = value
                    .parse::<u32>()
                    .map_err(|_| ParseError::corrupt(WHAT, at, format!("version={value:?}")))?;
                if !(1..=3).contains(&v) {
                    return Err(ParseError::unsupported(
                        WHAT,
                        at,
                        format!("descriptor version {v}"),
                    ));
                }
                version = Some(v);
            }
            "CID" => cid = Some(hex32(value, at, key)?),
            "parentCID" => parent_cid = Some(hex32(value, at, key)?).filter(|&c| c != u32::MAX),
            "createType" => create_type = Some(value.to_string()),
            "parentFileNameHint" if !value.is_empty() => hint = Some(value.to_string()),
            k => {
                if let Some(k) = k.strip_prefix("ddb.") {
                    ddb.push((k.to_string(), value.to_string()));
                }
            }
        }
    }
    let create_type =
        create_type.ok_or_else(|| ParseError::corrupt(WHAT, base, "no createType line"))?;
    if extents.is_empty() {
        return Err(ParseError::corrupt(WHAT, base, "no extent lines"));
    }
    Ok(VmdkDescriptor {
        version: version.unwrap_or(1),
        cid,
        parent_cid,
        create_type,
        parent_file_name_hint: hint,
        extents,
        ddb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Disk DescriptorFile\r\nversion=1\r\nCID=8f67ca74\r\nparentCID=0172e8a4\r\n\
createType=\"vmfsSparse\"\r\nparentFileNameHint=\"base disk.vmdk\"\r\n# Extent description\r\n\
RW 4096 VMFSSPARSE \"my disk-delta.vmdk\"\r\nRDONLY 2048 FLAT \"flat file.vmdk\" 63\r\nNOACCESS 8 ZERO\r\n\
\r\n#DDB\r\nddb.adapterType = \"lsilogic\"\r\nddb.geometry.cylinders = \"2\"\r\nsomething odd\r\nunknown.key = \"x\"\r\n";

    fn replaced(from: &str, to: &str) -> Vec<u8> {
        assert!(SAMPLE.contains(from));
        SAMPLE.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn parses_sample() {
        let d = parse_descriptor(SAMPLE.as_bytes(), 0x200).unwrap();
        assert_eq!(d.cid, Some(0x8f67ca74));
        assert_eq!(d.parent_cid, Some(0x0172e8a4));
        assert_eq!(d.create_type, "vmfsSparse");
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("base disk.vmdk"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-delta.vmdk"));
        assert_eq!(d.extents[1].offset_sectors, 63);
        assert_eq!(d.extents[1].access, VmdkAccess::ReadOnly);
        assert_eq!(d.extents[2].kind, VmdkExtentType::Zero);
        assert_eq!(d.total_bytes(), (4096 + 2048 + 8) * 512);
        assert_eq!(d.ddb("adapterType"), Some("lsilogic"));
        let line = SAMPLE.find("RW 4096").unwrap() as u64;
        assert_eq!(d.extents[0].line_offset, 0x200 + line);
    }

    #[test]
    fn stops_at_nul_and_no_parent() {
        let mut t = replaced("parentCID=0172e8a4", "parentCID=ffffffff");
        t.extend_from_slice(&[0; 64]);
        t.extend_from_slice(b"RW 1 FLAT \"junk\" 0\n");
        let d = parse_descriptor(&t, 0).unwrap();
        assert_eq!(d.parent_cid, None);
        assert_eq!(d.extents.len(), 3);
    }

    fn err(t: &[u8]) -> ParseError {
        parse_descriptor(t, 0x200).unwrap_err()
    }

    #[test]
    fn rejects_too_big() {
        let t = vec![b'#'; MAX_DESCRIPTOR_BYTES as usize + 1];
        assert!(matches!(
            err(&t),
            ParseError::LimitExceeded {
                name: "MAX_DESCRIPTOR_BYTES",
                ..
            }
        ));
    }

    #[test]
    fn rejects_version() {
        assert!(matches!(
            err(&replaced("version=1", "version=4")),
            ParseError::Unsupported { .. }
        ));
        assert!(matches!(
            err(&replaced("version=1", "version=x")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_bad_cids() {
        let e = err(&replaced("CID=8f67ca74", "CID=zz"));
        let at = 0x200 + SAMPLE.find("CID=8f").unwrap() as u64;
        assert!(
            matches!(e, ParseError::Corrupt { offset, .. } if offset == at),
            "{e}"
        );
        assert!(matches!(
            err(&replaced("parentCID=0172e8a4", "parentCID=123456789")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_missing_create_type() {
        assert!(matches!(
            err(&replaced("createType", "kreateType")),
            ParseError::Corrupt { offset: 0x200, .. }
        ));
    }

    #[test]
    fn rejects_malformed_extent_line() {
        let e = err(&replaced("RW 4096 VMFSSPARSE", "RW 4096x VMFSSPARSE"));
        let at = 0x200 + SAMPLE.find("RW 4096").unwrap() as u64;
        assert!(
            matches!(e, ParseError::Corrupt { offset, .. } if offset == at),
            "{e}"
        );
        assert!(matches!(
            err(&replaced("\"my disk-delta.vmdk\"", "\"unterminated")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_zero_sectors() {
        assert!(matches!(
            err(&replaced("RW 4096", "RW 0")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_huge_numbers() {
        assert!(matches!(
            err(&replaced("RW 4096", "RW 99999999999999999999")),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(&replaced("\" 63", "\" 18446744073709551615")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_unknown_extent_type() {
        assert!(matches!(
            err(&replaced("VMFSSPARSE", "WEIRD")),
            ParseError::Unsupported { .. }
        ));
    }

    #[test]
    fn rejects_missing_file_name() {
        assert!(matches!(
            err(&replaced(" \"flat file.vmdk\" 63", "")),
            ParseError::Corrupt { .. }
        ));
        assert!(matches!(
            err(&replaced("\"flat file.vmdk\"", "\"\"")),
            ParseError::Corrupt { .. }
        ));
    }

    #[test]
    fn rejects_no_extents() {
        let t = replaced("RW 4096", "# RW 4096");
        let t = String::from_utf8(t)
            .unwrap()
            .replace("RDONLY", "#")
            .replace("NOACCESS", "#");
        assert!(matches!(
            err(t.as_bytes()),
            ParseError::Corrupt { offset: 0x200, .. }
        ));
    }

    #[test]
    fn rejects_too_many_extents() {
        let mut t = b"createType=\"twoGbMaxExtentFlat\"\n".to_vec();
        for _ in 0..=MAX_VMDK_EXTENTS {
            t.extend_from_slice(b"RW 1 ZERO\n");
        }
        assert!(matches!(
            parse_descriptor(&t, 0),
            Err(ParseError::LimitExceeded {
                name: "MAX_VMDK_EXTENTS",
                ..
            })
        ));
    }

    #[test]
    fn rejects_huge_total() {
        let t = replaced("RW 4096", &format!("RW {}", MAX_VIRTUAL_SIZE / 512));
        assert!(matches!(
            err(&t),
            ParseError::LimitExceeded {
                name: "MAX_VIRTUAL_SIZE",
                ..
            }
        ));
    }

    #[test]
    fn no_panic_sweep() {
        crate::vmdk::sweep::no_panic(SAMPLE.as_bytes(), |b| parse_descriptor(b, 0));
    }
}
