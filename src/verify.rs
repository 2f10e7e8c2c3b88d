//! `vmback verify`: every referenced object exists and, with `--read-data`, every
//! chunk decompresses and hashes to its name. Problems are reported with the restore
//! points and disks (and disk offsets) that depend on them.
//!
//! Two passes keep memory proportional to the distinct chunks, not to the references:
//! the first collects the distinct chunk ids, the second (only when something is
//! wrong) finds who uses the bad ones.

use std::collections::{BTreeMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::repo::chunk::ChunkId;
use crate::repo::manifest::Snapshot;
use crate::repo::Repository;

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub disks: usize,
    pub chunks: usize,
    pub chunks_read: usize,
    pub bytes_read: u64,
    /// Manifests or indexes that cannot be read.
    pub broken_objects: Vec<BrokenObject>,
    /// Chunks missing or damaged, with their users.
    pub bad_chunks: Vec<BadChunk>,
    /// With `--filesystems`: every volume's filesystem walked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<crate::verify_fs::FsCheck>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.broken_objects.is_empty()
            && self.bad_chunks.is_empty()
            && self.filesystems.iter().all(|f| f.is_ok())
    }
}

#[derive(Debug, Serialize)]
pub struct BrokenObject {
    pub object: String,
    pub problem: String,
    /// The restore points affected (short id and `vm/name`).
    pub restore_points: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BadChunk {
    pub chunk: String,
    pub problem: String,
    pub used_by: Vec<ChunkUse>,
}

#[derive(Debug, Serialize)]
pub struct ChunkUse {
    pub restore_point: String,
    pub vm: String,
    pub name: String,
    pub disk: String,
    /// Byte offsets in the disk where the chunk is used.
    pub offsets: Vec<u64>,
    /// Guest files (`<volume>/<path>`) whose data is in the chunk, where a
    /// filesystem is recognised.
    pub files: Vec<String>,
}

/// Checks the restore points `which` (all when `None`).
pub fn verify(
    repo: &std::sync::Arc<Repository>,
    which: Option<&Snapshot>,
    read_data: bool,
    filesystems: bool,
    progress: bool,
) -> Result<VerifyReport> {
    let _lock = crate::repo::lock::shared(repo, "verify", Vec::new())?;
    let mut report = VerifyReport::default();
    let snapshots: Vec<(String, Option<Snapshot>)> = match which {
        Some(s) => vec![(s.id.clone(), Some(s.clone()))],
        None => repo
            .snapshot_ids()?
            .into_iter()
            .map(|id| match repo.load_manifest(&id) {
                Ok(manifest) => (id.clone(), Some(Snapshot { id, manifest })),
                Err(e) => {
                    report.broken_objects.push(BrokenObject {
                        object: format!("snapshots/{id}"),
                        problem: e.to_string(),
                        restore_points: vec![id.get(..8).unwrap_or(&id).to_string()],
                    });
                    (id, None)
                }
            })
            .collect(),
    };
    let snapshots: Vec<Snapshot> = snapshots.into_iter().filter_map(|(_, s)| s).collect();
    report.snapshots = snapshots.len();

    // Pass 1: distinct chunks.
    let mut distinct: HashSet<ChunkId> = HashSet::new();
    for s in &snapshots {
        for d in &s.manifest.disks {
            report.disks += 1;
            match repo.load_index(&d.index) {
                Ok(idx) => distinct.extend(idx.entries.iter().flatten().copied()),
                Err(e) => report.broken_objects.push(BrokenObject {
                    object: format!("indexes/{}", d.index),
                    problem: e.to_string(),
                    restore_points: vec![describe(s, &d.name)],
                }),
            }
        }
    }
    report.chunks = distinct.len();

    let present: HashSet<String> = repo
        .backend()
        .list("chunks")?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut ids: Vec<ChunkId> = distinct.into_iter().collect();
    ids.sort();
    let mut problems: BTreeMap<ChunkId, String> = BTreeMap::new();
    for id in &ids {
        if !present.contains(&id.key()) && repo.backend().get_aside(&id.key())?.is_none() {
            // Noted so that the next backup holding this content stores it again.
            repo.mark_damaged(id)?;
            problems.insert(*id, "missing".into());
        }
    }
    if read_data {
        let to_read: Vec<&ChunkId> = ids.iter().filter(|id| !problems.contains_key(id)).collect();
        let bar = if progress {
            crate::progress::count_bar(to_read.len() as u64, "verify chunks")
        } else {
            indicatif::ProgressBar::hidden()
        };
        let results: Vec<(ChunkId, std::result::Result<u64, String>)> = to_read
            .par_iter()
            .map(|id| {
                let r = repo
                    .read_chunk(id)
                    .map(|d| d.len() as u64)
                    .map_err(|e| match e {
                        crate::Error::Damaged { reason, .. } => format!("damaged: {reason}"),
                        other => other.to_string(),
                    });
                bar.inc(1);
                (**id, r)
            })
            .collect();
        bar.finish_and_clear();
        for (id, r) in results {
            match r {
                Ok(n) => {
                    report.chunks_read += 1;
                    report.bytes_read += n;
                }
                Err(p) => {
                    // Noted so that the next backup holding this content stores it again.
                    if p.starts_with("damaged") {
                        repo.mark_damaged(&id)?;
                    }
                    problems.insert(id, p);
                }
            }
        }
    }

    // Pass 2: who uses the bad chunks.
    if !problems.is_empty() {
        let mut uses: BTreeMap<ChunkId, Vec<ChunkUse>> = BTreeMap::new();
        for s in &snapshots {
            for d in &s.manifest.disks {
                let Ok(idx) = repo.load_index(&d.index) else {
                    continue;
                };
                let mut per_chunk: BTreeMap<ChunkId, Vec<u64>> = BTreeMap::new();
                for (i, e) in idx.entries.iter().enumerate() {
                    if let Some(id) = e.filter(|id| problems.contains_key(id)) {
                        per_chunk
                            .entry(id)
                            .or_default()
                            .push(i as u64 * idx.chunk_size as u64);
                    }
                }
                if per_chunk.is_empty() {
                    continue;
                }
                let bad_keys: HashSet<String> = per_chunk.keys().map(|id| id.key()).collect();
                let all_offsets: Vec<u64> = per_chunk.values().flatten().copied().collect();
                let files = crate::verify_fs::files_using(
                    repo,
                    s,
                    &d.name,
                    &all_offsets,
                    idx.chunk_size as u64,
                    &bad_keys,
                );
                for (id, offsets) in per_chunk {
                    // A file's read stops at the first bad chunk it meets: it is
                    // listed under that chunk.
                    let key = id.key();
                    let files = files
                        .iter()
                        .filter(|(_, k)| *k == key)
                        .map(|(f, _)| f.clone())
                        .collect();
                    uses.entry(id).or_default().push(ChunkUse {
                        restore_point: s.short_id().to_string(),
                        vm: s.manifest.vm.name.clone(),
                        name: s.manifest.name.clone(),
                        disk: d.name.clone(),
                        offsets,
                        files,
                    });
                }
            }
        }
        for (id, problem) in problems {
            report.bad_chunks.push(BadChunk {
                chunk: id.hex(),
                problem,
                used_by: uses.remove(&id).unwrap_or_default(),
            });
        }
    }
    if filesystems {
        report.filesystems = crate::verify_fs::check_filesystems(repo, &snapshots, progress);
    }
    Ok(report)
}

fn describe(s: &Snapshot, disk: &str) -> String {
    format!(
        "{} ({}/{}/{disk})",
        s.short_id(),
        s.manifest.vm.name,
        s.manifest.name
    )
}

/// The report as text for a terminal.
pub fn render(r: &VerifyReport, read_data: bool) -> String {
    let mut out = String::new();
    for b in &r.broken_objects {
        out += &format!(
            "BROKEN {}: {}\n  affects: {}\n",
            b.object,
            b.problem,
            b.restore_points.join(", ")
        );
    }
    for c in &r.bad_chunks {
        out += &format!("BAD chunk {}: {}\n", c.chunk, c.problem);
        for u in &c.used_by {
            let offsets: Vec<String> = u
                .offsets
                .iter()
                .take(8)
                .map(|o| format!("{o:#x}"))
                .collect();
            if !u.files.is_empty() {
                out += &format!("  guest files: {}\n", u.files.join(", "));
            }
            out += &format!(
                "  used by {} ({}/{}/{}) at {}{}\n",
                u.restore_point,
                u.vm,
                u.name,
                u.disk,
                offsets.join(", "),
                if u.offsets.len() > 8 {
                    format!(" and {} more", u.offsets.len() - 8)
                } else {
                    String::new()
                }
            );
        }
    }
    for f in &r.filesystems {
        let what = format!(
            "{} ({}/{}/{}{})",
            f.restore_point,
            f.vm,
            f.name,
            f.disk,
            f.volume
                .as_ref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        );
        if f.is_ok() {
            out += &format!(
                "fs ok  {what}: {} {} entries\n",
                f.filesystem.as_deref().unwrap_or("?"),
                f.entries
            );
        } else {
            out += &format!(
                "FS BAD {what}: {} error(s) in {} entries\n",
                f.error_count, f.entries
            );
            for e in &f.errors {
                out += &format!("  {e}\n");
            }
        }
    }
    out += &format!(
        "{}: {} restore points, {} disks, {} chunks{}\n",
        if r.is_clean() { "ok" } else { "PROBLEMS FOUND" },
        r.snapshots,
        r.disks,
        r.chunks,
        if read_data {
            format!(
                ", {} chunks read and re-hashed ({})",
                r.chunks_read,
                crate::inspect::human(r.bytes_read)
            )
        } else {
            " present (add --read-data to re-hash them)".into()
        }
    );
    out
}
