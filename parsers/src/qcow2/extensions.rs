//! qcow2 header extensions (qcow2.txt, "Header extensions"): a list of
//! `(type: u32, length: u32, data, padding to 8)` records after the header, ended by
//! type 0 or by the end of the area (the backing file name, or the end of the first
//! cluster). We read the ones that change how the image is read (backing format,
//! external data file name), the feature name table (to name unknown features in
//! errors), recognise the bitmaps extension (shown by inspect) and the encryption
//! header pointer (refused by the header), and skip unknown ones as the spec allows.
//!
//! Every record must lie inside the area; a record that runs past it is `Corrupt`.

use nom::bytes::complete::take;
use nom::number::complete::{be_u32, be_u64, u8 as be_u8};

use crate::bytes;
use crate::error::{ParseError, Result};

const WHAT: &str = "qcow2 header extension";

/// End of the extension list.
pub const EXT_END: u32 = 0x0000_0000;
/// Backing file format name (e.g. "raw", "qcow2").
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Persistent dirty bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// External data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Bytes of one feature name table entry.
const FEATURE_ENTRY_LEN: usize = 48;
/// Unknown extension types remembered for inspect (the rest are skipped silently).
const MAX_UNKNOWN_KEPT: usize = 32;

/// Which feature bitmap a feature name table entry refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2FeatureType {
    Incompatible,
    Compatible,
    Autoclear,
    /// A type this reader does not know (kept, never matched).
    Other(u8),
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2FeatureName {
    pub kind: Qcow2FeatureType,
    /// Bit number 0..=63 (entries with larger numbers are dropped).
    pub bit: u8,
    pub name: String,
}

/// The bitmaps extension (recognised, not interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qcow2Bitmaps {
    pub nb_bitmaps: u32,
    pub bitmap_directory_size: u64,
    pub bitmap_directory_offset: u64,
}

/// The header extensions that matter to a reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qcow2Extensions {
    /// Backing file format name (0xe2792aca).
    pub backing_format: Option<String>,
    /// Feature names (0x6803f857).
    pub feature_names: Vec<Qcow2FeatureName>,
    /// External data file name (0x44415441), relative to the image or absolute.
    pub data_file: Option<String>,
    /// Bitmaps extension (0x23852875).
    pub bitmaps: Option<Qcow2Bitmaps>,
    /// Absolute offset of a full disk encryption header extension, if present.
    pub encryption_at: Option<u64>,
    /// Types of unknown extensions (at most a few are kept).
    pub unknown: Vec<u32>,
}

impl Qcow2Extensions {
    /// The name the feature table gives to `bit` of the `kind` bitmap.
    pub fn feature_name(&self, kind: Qcow2FeatureType, bit: u32) -> Option<String> {
        self.feature_names
            .iter()
            .find(|f| f.kind == kind && u32::from(f.bit) == bit)
            .map(|f| f.name.clone())
    }
}

/// The extension record header as stored.
struct RawExtension {
    ext_type: u32, // +0x00
    length: u32,   // +0x04
}

/// Parses the extension area `area`, which starts at absolute offset `base` (the
/// end of the header) and ends where the backing file name or the first cluster ends.
pub fn parse_extensions(area: &[u8], base: u64) -> Result<Qcow2Extensions> {
    let mut out = Qcow2Extensions::default();
    let mut pos = 0usize;
    while pos < area.len() {
        let at = base.saturating_add(pos as u64);
        let head = bytes::slice(area, pos, 8, WHAT, base)?;
        let (ext_type, length) = bytes::run((be_u32, be_u32), head, WHAT, at)?;
        let raw = RawExtension { ext_type, length };
        if raw.ext_type == EXT_END {
            break;
        }
        let data_start = pos + 8;
        let len = raw.length as usize;
        if len > area.len() - data_start {
            return Err(ParseError::corrupt(
                WHAT,
                at,
                format!(
                    "extension {:#010x} claims {len} bytes, but only {} remain before the end of the extension area",
                    raw.ext_type,
                    area.len() - data_start
                ),
            ));
        }
        // OK: checked just above.
        let data = &area[data_start..data_start + len];
        let data_at = at + 8;
        match raw.ext_type {
            EXT_BACKING_FORMAT => {
                out.backing_format = Some(utf8(data, "qcow2 backing format extension", data_at)?)
            }
            EXT_DATA_FILE => {
                out.data_file = Some(utf8(data, "qcow2 external data file extension", data_at)?)
            }
            EXT_FEATURE_TABLE => out.feature_names = parse_feature_table(data, data_at)?,
            EXT_BITMAPS => out.bitmaps = Some(parse_bitmaps(data, data_at)?),
            EXT_CRYPTO => out.encryption_at = Some(at),
            other => {
                if out.unknown.len() < MAX_UNKNOWN_KEPT {
                    out.unknown.push(other);
                }
            }
        }
        // Data is padded to a multiple of 8; the padding may be cut by the area end.
        let padded = len.div_ceil(8) * 8;
        pos = data_start.saturating_add(padded);
    }
    Ok(out)
}

fn utf8(data: &[u8], what: &'static str, at: u64) -> Result<String> {
    String::from_utf8(data.to_vec())
        .map_err(|_| ParseError::corrupt(what, at, format!("not UTF-8: {}", bytes::hex(data))))
}

fn parse_feature_table(data: &[u8], base: u64) -> Result<Vec<Qcow2FeatureName>> {
    // A trailing partial entry is ignored (the table length is the extension length).
    let mut out = Vec::with_capacity(data.len() / FEATURE_ENTRY_LEN);
    for (i, entry) in data.chunks_exact(FEATURE_ENTRY_LEN).enumerate() {
        let at = base + (i * FEATURE_ENTRY_LEN) as u64;
        let (kind, bit, name) = bytes::run(
            (be_u8, be_u8, take(FEATURE_ENTRY_LEN - 2)),
            entry,
            "qcow2 feature name table",
            at,
        )?;
        if bit > 63 {
            continue;
        }
        let name: &[u8] = name;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(name.get(..end).unwrap_or(name)).into_owned();
        let kind = match kind {
            0 => Qcow2FeatureType::Incompatible,
            1 => Qcow2FeatureType::Compatible,
            2 => Qcow2FeatureType::Autoclear,
            n => Qcow2FeatureType::Other(n),
        };
        out.push(Qcow2FeatureName { kind, bit, name });
    }
    Ok(out)
}

fn parse_bitmaps(data: &[u8], base: u64) -> Result<Qcow2Bitmaps> {
    let what = "qcow2 bitmaps extension";
    let body = bytes::slice(data, 0, 24, what, base)?;
    let (nb_bitmaps, _reserved, bitmap_directory_size, bitmap_directory_offset) =
        bytes::run((be_u32, be_u32, be_u64, be_u64), body, what, base)?;
    Ok(Qcow2Bitmaps {
        nb_bitmaps,
        bitmap_directory_size,
        bitmap_directory_offset,
    })
}
