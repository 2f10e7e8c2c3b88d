//! Volumes: the partitions of a virtual disk (MBR with its EBR chain, GPT with
//! fallback to the backup header, or the whole disk when there is no table), each a
//! window onto the disk with the filesystem detected by signature.
//!
//! Naming follows DESIGN.md's path grammar: `p<N>` by partition number (MBR: 1–4
//! primary, 5+ logical in chain order; GPT: the entry index), `whole` for a
//! partitionless disk. A protective or hybrid MBR means GPT (GPT wins).

use std::collections::HashSet;

use serde::Serialize;
use vmback_parsers::fsprobe::{probe_fs, FS_PROBE_BYTES};
use vmback_parsers::gpt::{parse_gpt_entries, parse_gpt_header, type_name, GptEntry, GptHeader};
use vmback_parsers::limits::MAX_EBR_CHAIN;
use vmback_parsers::mbr::{has_boot_signature, parse_mbr, Mbr};
use vmback_parsers::ParseError;

use crate::error::{Error, Result};
use crate::guestfs::FsUsage;
use crate::io::ReadAt;

/// The partitioning schemes read, as `vmback --version` lists them.
pub const TABLES: &str =
    "MBR with logical partitions (EBR chain), GPT (512- and 4096-byte sectors, backup \
     header fallback), none (the whole disk is one volume)";

/// The partitioning scheme found on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scheme", rename_all = "lowercase")]
pub enum Table {
    /// GPT, with the logical sector size it was found at.
    Gpt {
        sector_size: u64,
        disk_guid: String,
        backup_used: bool,
    },
    /// MBR (possibly with logical partitions in an extended partition).
    Mbr { disk_signature: String },
    /// No partition table: the whole disk is one volume.
    None,
}

/// One volume of a disk.
#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    /// Partition number (0 for `whole`).
    pub number: u32,
    /// Path-grammar name: `p1`, `p2`, ..., or `whole`.
    pub name: String,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// MBR type byte as `0x07`, or the GPT type GUID.
    pub type_id: String,
    /// A human description of the type, where known.
    pub type_name: Option<String>,
    /// GPT partition name.
    pub label: Option<String>,
    /// GPT unique partition GUID.
    pub guid: Option<String>,
    /// Detected by signature.
    pub filesystem: Option<String>,
    /// Filesystem label where the signature block carries it (or, after `inspect`
    /// opened the filesystem, where the filesystem keeps it).
    pub fs_label: Option<String>,
    /// Total, used and free space of the filesystem, when `inspect` could read it
    /// (absent otherwise; the report's warnings say why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<FsUsage>,
}

/// The volumes of a disk and what the user should know about its table.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeTable {
    pub table: Table,
    pub volumes: Vec<Volume>,
    pub warnings: Vec<String>,
}

impl VolumeTable {
    /// The volume named `name` (`p2`, `whole`).
    pub fn get(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }
}

fn perr(disk_name: &str, e: ParseError) -> Error {
    Error::parse(disk_name, e)
}

/// Reads the partition table of `disk` (named `disk_name` in errors).
pub fn read_volumes(disk: &dyn ReadAt, disk_name: &str) -> Result<VolumeTable> {
    let size = disk.size();
    let mut warnings = Vec::new();
    let mut lba0 = vec![0u8; 512];
    if size >= 512 {
        disk.read_exact_at(0, &mut lba0)?;
    }
    let mbr = if has_boot_signature(&lba0) {
        parse_mbr(&lba0, 0).ok()
    } else {
        None
    };
    let volumes;
    let table;
    match &mbr {
        Some(m) if m.is_protective() => {
            if m.entries
                .iter()
                .any(|e| !e.is_empty() && e.partition_type != 0xee)
            {
                warnings
                    .push("hybrid MBR: the GPT is used, the MBR entries are ignored".to_string());
            }
            let (t, v) = read_gpt(disk, disk_name, &mut warnings)?;
            table = t;
            volumes = v;
        }
        Some(m) if m.entries.iter().any(|e| !e.is_empty()) && !looks_like_fs_boot_sector(&lba0) => {
            volumes = read_mbr(disk, disk_name, m, &mut warnings)?;
            table = Table::Mbr {
                disk_signature: format!("{:08x}", m.disk_signature),
            };
        }
        _ => {
            // No usable MBR. A GPT without a protective MBR is still honoured when its
            // header is intact (some tools wipe LBA 0).
            match read_gpt(disk, disk_name, &mut Vec::new()) {
                Ok((t, v)) => {
                    warnings.push("GPT found without a protective MBR".to_string());
                    table = t;
                    volumes = v;
                }
                Err(_) => {
                    table = Table::None;
                    volumes = vec![Volume {
                        number: 0,
                        name: "whole".into(),
                        start: 0,
                        len: size,
                        type_id: String::new(),
                        type_name: None,
                        label: None,
                        guid: None,
                        filesystem: None,
                        fs_label: None,
                        usage: None,
                    }];
                }
            }
        }
    }
    let mut vt = VolumeTable {
        table,
        volumes,
        warnings,
    };
    for v in &mut vt.volumes {
        let end = v.start.saturating_add(v.len);
        if end > size {
            vt.warnings.push(format!(
                "{}: extends to byte {end} but the disk has only {size} bytes (truncated image?)",
                v.name
            ));
            continue;
        }
        let n = (FS_PROBE_BYTES as u64).min(v.len) as usize;
        let mut head = vec![0u8; n];
        disk.read_exact_at(v.start, &mut head)?;
        if let Some(sig) = probe_fs(&head) {
            v.filesystem = Some(sig.kind.name().to_string());
            v.fs_label = sig.label;
        }
    }
    Ok(vt)
}

/// A FAT/NTFS boot sector also ends in 0x55AA; its "partition entries" are boot code.
fn looks_like_fs_boot_sector(lba0: &[u8]) -> bool {
    probe_fs(lba0).is_some()
}

fn read_mbr(
    disk: &dyn ReadAt,
    disk_name: &str,
    mbr: &Mbr,
    warnings: &mut Vec<String>,
) -> Result<Vec<Volume>> {
    let mut out = Vec::new();
    let mut extended = None;
    for (i, e) in mbr.entries.iter().enumerate() {
        if e.is_empty() {
            continue;
        }
        if e.is_extended() {
            if extended.is_some() {
                warnings.push(format!(
                    "more than one extended partition; only the first is followed (entry {})",
                    i + 1
                ));
            } else {
                extended = Some(u64::from(e.first_lba));
            }
            continue;
        }
        out.push(mbr_volume(i as u32 + 1, u64::from(e.first_lba), e));
    }
    if let Some(ext_start) = extended {
        // EBR chain: entry 0 = logical partition relative to this EBR; entry 1 = next
        // EBR relative to the start of the extended partition.
        let mut seen = HashSet::new();
        let mut ebr_lba = ext_start;
        let mut number = 5u32;
        loop {
            if out.len() >= MAX_EBR_CHAIN + 4 {
                warnings.push(format!(
                    "EBR chain longer than {MAX_EBR_CHAIN} (limit MAX_EBR_CHAIN); stopped"
                ));
                break;
            }
            if !seen.insert(ebr_lba) {
                warnings.push(format!("EBR chain loops back to LBA {ebr_lba}; stopped"));
                break;
            }
            let off = ebr_lba
                .checked_mul(512)
                .filter(|o| o.saturating_add(512) <= disk.size());
            let Some(off) = off else {
                warnings.push(format!(
                    "EBR at LBA {ebr_lba} lies beyond the end of the disk; stopped"
                ));
                break;
            };
            let mut sector = vec![0u8; 512];
            disk.read_exact_at(off, &mut sector)?;
            let ebr = parse_mbr(&sector, off).map_err(|e| perr(disk_name, e))?;
            let logical = &ebr.entries[0];
            if !logical.is_empty() {
                out.push(mbr_volume(
                    number,
                    ebr_lba + u64::from(logical.first_lba),
                    logical,
                ));
                number += 1;
            }
            let next = &ebr.entries[1];
            if next.is_empty() || !next.is_extended() {
                break;
            }
            ebr_lba = ext_start + u64::from(next.first_lba);
        }
    }
    Ok(out)
}

fn mbr_volume(number: u32, first_lba: u64, e: &vmback_parsers::mbr::MbrEntry) -> Volume {
    Volume {
        number,
        name: format!("p{number}"),
        start: first_lba * 512,
        len: u64::from(e.sectors) * 512,
        type_id: format!("0x{:02x}", e.partition_type),
        type_name: mbr_type_name(e.partition_type).map(str::to_string),
        label: None,
        guid: None,
        filesystem: None,
        fs_label: None,
        usage: None,
    }
}

fn mbr_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x07 => "NTFS/exFAT/HPFS",
        0x0b | 0x0c => "FAT32",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => return None,
    })
}

/// Finds the GPT at 512- or 4096-byte sectors, falling back to the backup header
/// (and its entry array) when the primary is damaged.
fn read_gpt(
    disk: &dyn ReadAt,
    disk_name: &str,
    warnings: &mut Vec<String>,
) -> Result<(Table, Vec<Volume>)> {
    let mut first_err = None;
    for ss in [512u64, 4096] {
        if disk.size() < ss * 2 {
            continue;
        }
        let primary = read_header(disk, disk_name, ss, ss)
            .and_then(|h| read_entries(disk, disk_name, &h, ss).map(|e| (h, e)));
        let err = match primary {
            Ok((h, entries)) => return Ok(gpt_volumes(h, entries, ss, false)),
            Err(e) => e,
        };
        let last = disk.size() / ss - 1;
        let backup = read_header(disk, disk_name, last * ss, ss)
            .and_then(|h| read_entries(disk, disk_name, &h, ss).map(|en| (h, en)));
        if let Ok((h, entries)) = backup {
            warnings.push(format!(
                "primary GPT damaged ({}); using the backup header at LBA {last}",
                crate::error::chain(&err)
            ));
            return Ok(gpt_volumes(h, entries, ss, true));
        }
        // Prefer the error of the sector size where a GPT signature was actually seen.
        let bad_magic = matches!(
            &err,
            Error::Parse {
                source: ParseError::BadMagic { .. },
                ..
            }
        );
        if first_err.is_none() || !bad_magic {
            first_err = Some(err);
        }
    }
    Err(first_err.unwrap_or_else(|| {
        perr(
            disk_name,
            ParseError::truncated("GPT header", 512, 1024, disk.size()),
        )
    }))
}

fn read_header(disk: &dyn ReadAt, disk_name: &str, offset: u64, ss: u64) -> Result<GptHeader> {
    let mut sector = vec![0u8; ss as usize];
    disk.read_exact_at(offset, &mut sector)?;
    parse_gpt_header(&sector, offset).map_err(|e| perr(disk_name, e))
}

fn read_entries(
    disk: &dyn ReadAt,
    disk_name: &str,
    h: &GptHeader,
    ss: u64,
) -> Result<Vec<GptEntry>> {
    let len = h.entries_bytes();
    let off = h
        .entries_lba
        .checked_mul(ss)
        .filter(|o| o.saturating_add(len as u64) <= disk.size())
        .ok_or_else(|| {
            perr(
                disk_name,
                ParseError::truncated(
                    "GPT partition entry array",
                    h.entries_lba.saturating_mul(ss),
                    len as u64,
                    0,
                ),
            )
        })?;
    let mut buf = vec![0u8; len];
    disk.read_exact_at(off, &mut buf)?;
    parse_gpt_entries(&buf, h, off).map_err(|e| perr(disk_name, e))
}

fn gpt_volumes(
    h: GptHeader,
    entries: Vec<GptEntry>,
    ss: u64,
    backup_used: bool,
) -> (Table, Vec<Volume>) {
    let vols = entries
        .into_iter()
        .map(|e| Volume {
            number: e.number,
            name: format!("p{}", e.number),
            start: e.first_lba.saturating_mul(ss),
            len: (e.last_lba - e.first_lba + 1).saturating_mul(ss),
            type_id: e.type_guid.to_string(),
            type_name: type_name(&e.type_guid).map(str::to_string),
            label: (!e.name.is_empty()).then_some(e.name),
            guid: Some(e.unique_guid.to_string()),
            filesystem: None,
            fs_label: None,
            usage: None,
        })
        .collect();
    (
        Table::Gpt {
            sector_size: ss,
            disk_guid: h.disk_guid.to_string(),
            backup_used,
        },
        vols,
    )
}
