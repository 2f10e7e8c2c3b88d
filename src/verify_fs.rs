//! The filesystem half of `vmback verify`:
//! - `--filesystems`: open every volume's filesystem in each restore point and walk
//!   its directory tree (metadata only) — the cheap daily proof that a restore point
//!   can give files back;
//! - for damaged chunks: which guest files use them (found by reading the files of
//!   the volumes the damage falls in, so this costs a read of those volumes, and
//!   only when something is damaged).

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::browse::DiskView;
use crate::error::chain;
use crate::guestfs::{FileType, GuestFs, NodeId};
use crate::repo::manifest::Snapshot;
use crate::repo::Repository;

/// Entries walked per volume at most (a corrupt, cyclic tree must end).
const MAX_ENTRIES: u64 = 50_000_000;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 256;
/// Errors listed per volume (the count is exact).
const MAX_LISTED: usize = 20;

/// The result for one volume (or a disk whose partition table failed).
#[derive(Debug, Serialize)]
pub struct FsCheck {
    pub restore_point: String,
    pub vm: String,
    pub name: String,
    pub disk: String,
    pub volume: Option<String>,
    pub filesystem: Option<String>,
    pub entries: u64,
    pub error_count: u64,
    pub errors: Vec<String>,
}

impl FsCheck {
    pub fn is_ok(&self) -> bool {
        self.error_count == 0
    }
}

/// Walks every filesystem of `snapshots` (with a progress bar per disk when
/// `progress` and stderr is a terminal).
pub fn check_filesystems(
    repo: &Arc<Repository>,
    snapshots: &[Snapshot],
    progress: bool,
) -> Vec<FsCheck> {
    let mut out = Vec::new();
    let disks = snapshots
        .iter()
        .map(|s| s.manifest.disks.len() as u64)
        .sum();
    let bar = if progress {
        crate::progress::count_bar(disks, "verify filesystems (disks)")
    } else {
        indicatif::ProgressBar::hidden()
    };
    for s in snapshots {
        for d in &s.manifest.disks {
            bar.inc(1);
            let mut base = FsCheck {
                restore_point: s.short_id().to_string(),
                vm: s.manifest.vm.name.clone(),
                name: s.manifest.name.clone(),
                disk: d.name.clone(),
                volume: None,
                filesystem: None,
                entries: 0,
                error_count: 0,
                errors: Vec::new(),
            };
            let view = match open_view(repo, s, &d.name) {
                Ok(v) => v,
                Err(e) => {
                    base.error_count = 1;
                    base.errors.push(format!("partition table: {e}"));
                    out.push(base);
                    continue;
                }
            };
            for v in &view.table().volumes {
                let Some(kind) = v.filesystem.clone() else {
                    continue;
                };
                let mut c = FsCheck {
                    volume: Some(v.name.clone()),
                    filesystem: Some(kind),
                    errors: Vec::new(),
                    ..base_clone(&base)
                };
                match view.filesystem(&v.name) {
                    Ok((_, fs)) => {
                        walk(fs.as_ref(), fs.root(), "", 0, &mut |path, err| {
                            match err {
                                None => c.entries += 1,
                                Some(e) => {
                                    c.error_count += 1;
                                    if c.errors.len() < MAX_LISTED {
                                        c.errors.push(format!("{path}: {e}"));
                                    }
                                }
                            }
                            c.entries < MAX_ENTRIES
                        });
                    }
                    Err(e) => {
                        c.error_count = 1;
                        c.errors.push(format!("cannot open: {}", chain(&e)));
                    }
                }
                out.push(c);
            }
        }
    }
    bar.finish_and_clear();
    out
}

fn base_clone(b: &FsCheck) -> FsCheck {
    FsCheck {
        restore_point: b.restore_point.clone(),
        vm: b.vm.clone(),
        name: b.name.clone(),
        disk: b.disk.clone(),
        volume: None,
        filesystem: None,
        entries: 0,
        error_count: 0,
        errors: Vec::new(),
    }
}

fn open_view(repo: &Arc<Repository>, s: &Snapshot, disk: &str) -> crate::Result<DiskView> {
    let rpd = repo.open_disk(s, disk, 32 << 20)?;
    let name = rpd.name().to_string();
    DiskView::new(Arc::new(rpd), &name)
}

/// Depth-first walk of metadata; `visit(path, error)` returns false to stop.
fn walk(
    fs: &dyn GuestFs,
    node: NodeId,
    path: &str,
    depth: usize,
    visit: &mut dyn FnMut(&str, Option<String>) -> bool,
) -> bool {
    let shown = if path.is_empty() { "/" } else { path };
    let meta = match fs.metadata(node) {
        Ok(m) => m,
        Err(e) => return visit(shown, Some(chain(&e))),
    };
    if !visit(shown, None) {
        return false;
    }
    if meta.file_type != FileType::Dir {
        return true;
    }
    if depth >= MAX_DEPTH {
        return visit(shown, Some(format!("nested deeper than {MAX_DEPTH}")));
    }
    let entries = match fs.read_dir(node) {
        Ok(e) => e,
        Err(e) => return visit(shown, Some(chain(&e))),
    };
    for e in entries {
        let child = format!(
            "{path}/{}",
            crate::ls::display_name(std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str()))
        );
        if !walk(fs, e.node, &child, depth + 1, visit) {
            return false;
        }
    }
    true
}

/// Guest files of disk `disk` of `s` whose reads hit one of the `bad_keys` chunks
/// (volumes that overlap `offsets` only): `(volume/path, chunk key)` pairs.
pub fn files_using(
    repo: &Arc<Repository>,
    s: &Snapshot,
    disk: &str,
    offsets: &[u64],
    chunk_size: u64,
    bad_keys: &HashSet<String>,
) -> Vec<(String, String)> {
    let Ok(view) = open_view(repo, s, disk) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for v in &view.table().volumes {
        let overlaps = offsets
            .iter()
            .any(|&o| o < v.start + v.len && o + chunk_size > v.start);
        if !overlaps || v.filesystem.is_none() {
            continue;
        }
        let Ok((_, fs)) = view.filesystem(&v.name) else {
            continue;
        };
        let mut files: Vec<(String, NodeId, u64)> = Vec::new();
        collect_files(fs.as_ref(), fs.root(), "", 0, &mut files);
        for (path, node, size) in files {
            let mut off = 0u64;
            while off < size {
                let want = ((size - off) as usize).min(buf.len());
                match fs.read_at(node, off, &mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => off += n as u64,
                    Err(e) => {
                        let text = chain(&e);
                        if let Some(k) = bad_keys.iter().find(|k| text.contains(k.as_str())) {
                            found.push((format!("{}{path}", v.name), k.clone()));
                        }
                        break;
                    }
                }
            }
        }
    }
    found
}

fn collect_files(
    fs: &dyn GuestFs,
    node: NodeId,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, NodeId, u64)>,
) {
    if depth > MAX_DEPTH || out.len() as u64 > MAX_ENTRIES {
        return;
    }
    let Ok(meta) = fs.metadata(node) else { return };
    match meta.file_type {
        FileType::File => out.push((path.to_string(), node, meta.size)),
        FileType::Dir => {
            let Ok(entries) = fs.read_dir(node) else {
                return;
            };
            for e in entries {
                let child = format!(
                    "{path}/{}",
                    crate::ls::display_name(std::os::unix::ffi::OsStrExt::as_bytes(
                        e.name.as_os_str()
                    ))
                );
                collect_files(fs, e.node, &child, depth + 1, out);
            }
        }
        _ => {}
    }
}
