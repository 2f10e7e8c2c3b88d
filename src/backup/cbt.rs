//! Changed-block tracking: which chunks of a disk an incremental must read. Anything
//! that does not line up (no parent, disk resized, a bitmap that does not track from
//! the parent, extents past the end) falls back to reading everything, with a visible
//! warning: never a silently wrong restore point.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::source::Source;
use crate::error::{Error, Result};
use crate::repo::index::DiskIndex;
use crate::repo::manifest::{ChangeTracking, DiskRecord};

/// What the user asked for, per disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tracking {
    /// Differencing layer when the chain allows, else read everything.
    #[default]
    Auto,
    /// NBD `qemu:dirty-bitmap:NAME`.
    DirtyBitmap(String),
    /// A JSON list of changed extents (VMware QueryChangedDiskAreas, Hyper-V RCT).
    ChangedExtents(PathBuf),
    /// Read everything (dedup still applies).
    FullRead,
}

/// The decision for one disk.
#[derive(Debug, Clone)]
pub struct Plan {
    pub record: ChangeTracking,
    /// Chunks to read (`None`: all of them; the others are taken from the parent).
    pub changed: Option<Vec<bool>>,
    /// Shown to the user and kept in the manifest.
    pub warning: Option<String>,
}

impl Plan {
    fn new(method: &str, bitmap: Option<String>, detail: impl Into<String>) -> Self {
        Plan {
            record: ChangeTracking {
                method: method.into(),
                bitmap,
                detail: Some(detail.into()),
            },
            changed: None,
            warning: None,
        }
    }

    fn fallback(bitmap: Option<String>, why: String) -> Self {
        let mut p = Plan::new("fallback", bitmap, format!("read everything: {why}"));
        p.warning = Some(format!(
            "{why}; reading the whole disk (only new chunks are stored)"
        ));
        p
    }
}

/// Decides how to capture `source` given the parent's record of the same disk.
pub fn plan(
    source: &Source,
    tracking: &Tracking,
    parent: Option<(&DiskRecord, &DiskIndex)>,
    chunk_size: u32,
) -> Result<Plan> {
    let bitmap = match tracking {
        Tracking::DirtyBitmap(b) => Some(b.clone()),
        _ => None,
    };
    let size = source.size();
    let Some((parent_rec, parent_index)) = parent else {
        return Ok(Plan::new(
            "full",
            bitmap,
            "no earlier restore point of this disk",
        ));
    };
    if parent_index.disk_size != size || parent_index.chunk_size != chunk_size {
        return Ok(Plan::fallback(
            bitmap,
            format!(
                "{}: the disk is {size} bytes now, {} bytes in the previous restore point",
                source.spec, parent_index.disk_size
            ),
        ));
    }
    let (method, ranges) = match tracking {
        Tracking::FullRead => {
            return Ok(Plan::new(
                "fallback",
                None,
                "read everything (asked with --full)",
            ))
        }
        Tracking::DirtyBitmap(name) => {
            if parent_rec.change_tracking.bitmap.as_deref() != Some(name.as_str()) {
                return Ok(Plan::fallback(
                    bitmap.clone(),
                    format!(
                        "{}: the previous restore point was not taken with dirty bitmap {name}, so it cannot tell what changed since",
                        source.spec
                    ),
                ));
            }
            ("dirty-bitmap", source.dirty_ranges()?)
        }
        Tracking::ChangedExtents(file) => ("changed-extents", read_changed_extents(file)?),
        Tracking::Auto => {
            let current = source.layer_records()?;
            let base = &parent_rec.layers;
            let above = (!base.is_empty() && current.len() >= base.len())
                .then(|| current.len() - base.len())
                .filter(|&k| current[k..] == base[..]);
            match above {
                Some(k) => ("differencing", source.upper_layer_ranges(k)?),
                None => {
                    return Ok(Plan::new(
                        "fallback",
                        None,
                        "read everything: no change tracking for this source (the previous restore point did not capture a base of this chain)",
                    ))
                }
            }
        }
    };
    let mut changed = vec![false; parent_index.entries.len()];
    let mut bytes = 0u64;
    for r in &ranges {
        if r.start > r.end || r.end > size {
            return Ok(Plan::fallback(
                bitmap,
                format!(
                    "{}: {method} names bytes {}..{} outside the {size}-byte disk",
                    source.spec, r.start, r.end
                ),
            ));
        }
        if r.is_empty() {
            continue;
        }
        bytes += r.end - r.start;
        let first = (r.start / chunk_size as u64) as usize;
        let last = ((r.end - 1) / chunk_size as u64) as usize;
        changed[first..=last].fill(true);
    }
    let mut plan = Plan::new(
        method,
        bitmap,
        format!("{} extents, {bytes} bytes changed", ranges.len()),
    );
    plan.changed = Some(changed);
    Ok(plan)
}

/// Largest changed-extents file read.
const MAX_EXTENTS_FILE: u64 = 256 << 20;

/// Reads a changed-extents file. Accepted shapes:
/// `[{"offset": N, "length": N}, …]`, VMware's `DiskChangeInfo`
/// (`{"changedArea": [{"start": N, "length": N}, …]}`), and Hyper-V RCT ranges
/// (`[{"ByteOffset": N, "ByteLength": N}, …]`).
pub fn read_changed_extents(path: &Path) -> Result<Vec<Range<u64>>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open changed extents", e))?;
    if meta.len() > MAX_EXTENTS_FILE {
        return Err(bad_extents(
            path,
            format!("{} bytes, too large", meta.len()),
        ));
    }
    let text = std::fs::read(path).map_err(|e| Error::io(path, "read changed extents", e))?;
    let value: Value =
        serde_json::from_slice(&text).map_err(|e| bad_extents(path, e.to_string()))?;
    let list = match &value {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("changedArea").or_else(|| o.get("extents")) {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(bad_extents(
                    path,
                    "an object without a \"changedArea\" list".into(),
                ))
            }
        },
        _ => return Err(bad_extents(path, "not a list of extents".into())),
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| item.get(*n))
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        bad_extents(
                            path,
                            format!("entry {i}: needs a number {}", names.join(" or ")),
                        )
                    })
            };
            let start = field(&["offset", "start", "ByteOffset"])?;
            let len = field(&["length", "ByteLength"])?;
            let end = start.checked_add(len).ok_or_else(|| {
                bad_extents(path, format!("entry {i}: offset + length overflows"))
            })?;
            Ok(start..end)
        })
        .collect()
}

fn bad_extents(path: &Path, reason: String) -> Error {
    Error::Usage(format!(
        "{}: not a changed-extents file: {reason}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            r#"[{"offset": 0, "length": 512}, {"offset": 4096, "length": 10}]"#,
            r#"{"startOffset": 0, "length": 8192, "changedArea": [{"start": 0, "length": 512}, {"start": 4096, "length": 10}]}"#,
            r#"[{"ByteOffset": 0, "ByteLength": 512}, {"ByteOffset": 4096, "ByteLength": 10}]"#,
        ];
        for c in cases {
            let f = dir.path().join("x.json");
            std::fs::write(&f, c).unwrap();
            assert_eq!(read_changed_extents(&f).unwrap(), vec![0..512, 4096..4106]);
        }
        for bad in [
            r#"{"a":1}"#,
            r#"[{"offset":1}]"#,
            r#"[{"offset":18446744073709551615,"length":2}]"#,
            "nope",
        ] {
            let f = dir.path().join("bad.json");
            std::fs::write(&f, bad).unwrap();
            assert!(read_changed_extents(&f).is_err(), "{bad}");
        }
    }
}
