//! `vmback backup`: all disks of one VM into one restore point.
//!
//! Order of work, chosen so that a crash or an error at any moment leaves the
//! repository valid: pre hook → open sources → per disk: plan change tracking,
//! capture chunks, store the index → post hook (always) → manifest (last, atomic).

pub mod cbt;
pub mod hooks;
pub mod pipeline;
pub mod ratelimit;
pub mod source;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::index::DiskIndex;
use crate::repo::manifest::{
    DiskRecord, DiskStats, Manifest, Snapshot, VmIdentity, VolumeRecord, MANIFEST_VERSION,
};
use crate::repo::reader::RestorePointDisk;
use crate::repo::Repository;
use cbt::Tracking;
use pipeline::Capture;
use ratelimit::RateLimiter;
use source::Source;

/// One disk to capture and how its changes are tracked.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Image path, block device, or NBD URI.
    pub spec: String,
    pub tracking: Tracking,
}

/// Everything `vmback backup` was asked.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub vm: VmIdentity,
    pub host: Option<String>,
    pub datastores: Vec<String>,
    pub tags: Vec<String>,
    pub sources: Vec<SourceSpec>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    pub hook_timeout: Duration,
    /// Where the hooks run (None: our working directory). A job's hooks run in the
    /// job file's directory, where its relative paths resolve too.
    pub hook_dir: Option<std::path::PathBuf>,
    /// Limit on the bytes per second read from the sources, all disks together; one
    /// limiter can be shared by several backups running at once (`vmback run`).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Read every disk completely without building on the previous restore point
    /// (a new full), for this reason (kept in each disk's change-tracking record).
    pub full_reason: Option<String>,
    /// More environment for the hooks (e.g. `VMBACK_JOB`, `VMBACK_ATTEMPT`).
    pub extra_env: Vec<(String, String)>,
    /// Worker threads for this backup's chunks (`None`: the global pool).
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// What a backup did, per disk and in total.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub snapshot: String,
    pub short_id: String,
    pub vm: String,
    pub name: String,
    pub parent: Option<String>,
    pub disks: Vec<DiskReport>,
    pub totals: DiskStats,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub name: String,
    pub source: String,
    pub virtual_size: u64,
    pub method: String,
    pub detail: Option<String>,
    pub stats: DiskStats,
}

/// Runs a backup into `repo`.
pub fn backup(repo: &Arc<Repository>, opts: &BackupOptions) -> Result<BackupReport> {
    if opts.sources.is_empty() {
        return Err(Error::Usage("no source disks given".into()));
    }
    if opts.vm.name.is_empty() || opts.vm.name.contains('/') || opts.vm.name.starts_with('.') {
        return Err(Error::Usage(format!(
            "VM name {:?} cannot be used in paths (no '/', not empty, not starting with '.')",
            opts.vm.name
        )));
    }
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let history = repo.snapshots()?;
    let mut parent = history
        .iter()
        .rev()
        .find(|s| same_vm(&s.manifest.vm, &opts.vm))
        .cloned();
    if opts.full_reason.is_some() {
        parent = None;
    }
    // The lock tells a concurrent gc when we started (it keeps every chunk younger
    // than that) and which indexes we build on (it keeps those and their chunks).
    let parent_indexes = parent
        .iter()
        .flat_map(|p| p.manifest.disks.iter().map(|d| d.index.clone()))
        .collect();
    let _lock = crate::repo::lock::shared(repo, "backup", parent_indexes)?;
    let mut warnings = Vec::new();
    if let Some(p) = &parent {
        // A forget between reading the parent and taking the lock: do not build on it.
        if !repo.backend().exists(&format!("snapshots/{}", p.id))? {
            warnings.push(format!(
                "the previous restore point {} was removed while this backup started; reading everything",
                p.short_id()
            ));
            parent = None;
        }
    }

    let mut env = vec![
        ("VMBACK_VM".to_string(), opts.vm.name.clone()),
        (
            "VMBACK_VM_UUID".to_string(),
            opts.vm.uuid.clone().unwrap_or_default(),
        ),
        (
            "VMBACK_HOST".to_string(),
            opts.host.clone().unwrap_or_default(),
        ),
        ("VMBACK_DATASTORES".to_string(), opts.datastores.join(",")),
        ("VMBACK_REPO".to_string(), repo.location()),
        (
            "VMBACK_SOURCES".to_string(),
            opts.sources
                .iter()
                .map(|s| s.spec.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    env.extend(opts.extra_env.iter().cloned());

    let pre = match &opts.pre_hook {
        Some(cmd) => {
            let mut e = env.clone();
            e.push(("VMBACK_PHASE".into(), "pre".into()));
            hooks::run_hook(
                hooks::Phase::Pre,
                cmd,
                &e,
                opts.hook_dir.as_deref(),
                opts.hook_timeout,
            )
        }
        None => Ok(()),
    };
    let captured = match pre {
        Ok(()) => capture_all(repo, opts, parent.as_ref(), &mut warnings),
        Err(e) => Err(e),
    };
    if let Some(cmd) = &opts.post_hook {
        env.push(("VMBACK_PHASE".into(), "post".into()));
        env.push((
            "VMBACK_STATUS".into(),
            if captured.is_ok() {
                "success"
            } else {
                "failure"
            }
            .into(),
        ));
        if let Err(e) = hooks::run_hook(
            hooks::Phase::Post,
            cmd,
            &env,
            opts.hook_dir.as_deref(),
            opts.hook_timeout,
        ) {
            if captured.is_ok() {
                warnings.push(e.to_string());
            } else {
                eprintln!("vmback: warning: {e}");
            }
        }
    }
    let mut disks = captured?;
    if let Some(why) = &opts.full_reason {
        for d in &mut disks {
            d.change_tracking.method = "full".into();
            d.change_tracking.detail = Some(format!("full read forced: {why}"));
        }
    }

    let name = unique_name(&history, &opts.vm, started);
    let totals = sum_stats(disks.iter().map(|d| &d.stats), clock.elapsed());
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        vm: opts.vm.clone(),
        host: opts.host.clone(),
        datastores: opts.datastores.clone(),
        tags: opts.tags.clone(),
        time: started.to_string(),
        end_time: jiff::Timestamp::now().to_string(),
        name: name.clone(),
        parent: parent.as_ref().map(|p| p.id.clone()),
        proxy: hostname(),
        chunk_size: repo.config().chunk_size,
        disks: disks.clone(),
        warnings: warnings.clone(),
        program: format!("vmback {}", env!("CARGO_PKG_VERSION")),
    };
    let id = repo.save_manifest(&manifest)?;
    Ok(BackupReport {
        short_id: id[..8].to_string(),
        snapshot: id,
        vm: opts.vm.name.clone(),
        name,
        parent: manifest.parent.clone(),
        disks: disks
            .iter()
            .map(|d| DiskReport {
                name: d.name.clone(),
                source: d.source.clone(),
                virtual_size: d.virtual_size,
                method: d.change_tracking.method.clone(),
                detail: d.change_tracking.detail.clone(),
                stats: d.stats.clone(),
            })
            .collect(),
        totals,
        warnings,
    })
}

/// A restore point belongs to the same VM when the names match and, where both
/// carry a UUID, the UUIDs too.
pub fn same_vm(a: &VmIdentity, b: &VmIdentity) -> bool {
    a.name == b.name
        && match (&a.uuid, &b.uuid) {
            (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
            _ => true,
        }
}

/// Opens the sources and captures every disk; returns their manifest records.
fn capture_all(
    repo: &Arc<Repository>,
    opts: &BackupOptions,
    parent: Option<&Snapshot>,
    warnings: &mut Vec<String>,
) -> Result<Vec<DiskRecord>> {
    {
        // The chunk directories are read while the sources open and change
        // tracking plans (detached: a hint that holds nothing).
        let repo = repo.clone();
        let _ = std::thread::Builder::new()
            .name("warm-up".into())
            .spawn(move || repo.backend().warm_up("chunks"));
    }
    let mut sources = Vec::new();
    for s in &opts.sources {
        let bitmap = match &s.tracking {
            Tracking::DirtyBitmap(b) => Some(b.as_str()),
            _ => None,
        };
        let src = Source::open(&s.spec, bitmap)?;
        warnings.extend(src.warnings());
        sources.push(src);
    }
    let total: u64 = sources.iter().map(Source::size).sum();
    let bar = if opts.progress {
        crate::progress::bytes_bar(total, &format!("backup {}", opts.vm.name))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let known = RwLock::new(HashSet::new());
    let damaged = repo.damaged_chunks()?;
    let chunk_size = repo.config().chunk_size;
    let mut records = Vec::new();
    for (n, (src, spec)) in sources.iter().zip(&opts.sources).enumerate() {
        let name = format!("disk{n}");
        let parent_disk = match parent.and_then(|p| p.manifest.disks.get(n)) {
            Some(rec) => match repo.load_index(&rec.index) {
                Ok(index) => Some((rec, index)),
                Err(e) => {
                    warnings.push(format!(
                        "{name}: the previous restore point's index cannot be read ({e}); reading everything"
                    ));
                    None
                }
            },
            None => None,
        };
        if let Some((_, idx)) = &parent_disk {
            let mut k = known.write().unwrap_or_else(|p| p.into_inner());
            k.extend(idx.entries.iter().flatten().copied());
        }
        let plan = cbt::plan(
            src,
            &spec.tracking,
            parent_disk.as_ref().map(|(r, i)| (*r, i)),
            chunk_size,
        )?;
        if let Some(w) = &plan.warning {
            warnings.push(format!("{name}: {w}"));
        }
        let disk = src.disk();
        let layers = src.layer_records()?;
        let cap = Capture {
            repo,
            limiter: opts.limiter.as_deref(),
            known: &known,
            damaged: &damaged,
            progress: &bar,
            pool: opts.pool.as_deref(),
        };
        let (index, mut stats) = pipeline::capture_disk(
            &cap,
            disk.as_ref(),
            &format!("{name} ({})", src.spec),
            parent_disk.as_ref().map(|(_, i)| i),
            plan.changed.as_deref(),
        )?;
        stats.bytes_read = src.bytes_read();
        let index_id = repo.save_index(&index)?;
        let volumes = volumes_of(repo, index, &name);
        records.push(DiskRecord {
            name,
            source: src.spec.clone(),
            format: src.format(),
            virtual_size: src.size(),
            index: index_id,
            layers,
            change_tracking: plan.record,
            volumes,
            stats,
        });
    }
    bar.finish_and_clear();
    Ok(records)
}

/// Partitions and filesystems of the captured disk, read back from the repository
/// (the cache holds the chunks just written, and it proves the restore point parses).
fn volumes_of(repo: &Arc<Repository>, index: DiskIndex, name: &str) -> Vec<VolumeRecord> {
    let disk = RestorePointDisk::new(repo.clone(), index, name.to_string(), 8 << 20);
    match crate::volume::read_volumes(&disk, name) {
        Ok(table) => table
            .volumes
            .iter()
            .map(|v| VolumeRecord {
                name: v.name.clone(),
                offset: v.start,
                size: v.len,
                filesystem: v.filesystem.clone(),
                label: v.fs_label.clone(),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `2026-11-21T030000Z`, made unique among the VM's restore points.
fn unique_name(history: &[Snapshot], vm: &VmIdentity, t: jiff::Timestamp) -> String {
    let base = t.strftime("%Y-%m-%dT%H%M%SZ").to_string();
    let taken = |n: &str| {
        history
            .iter()
            .any(|s| s.manifest.vm.name == vm.name && s.manifest.name == n)
    };
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or(base)
}

fn sum_stats<'a>(all: impl Iterator<Item = &'a DiskStats>, elapsed: Duration) -> DiskStats {
    let mut t = DiskStats::default();
    for s in all {
        t.bytes_read += s.bytes_read;
        t.bytes_scanned += s.bytes_scanned;
        t.chunks += s.chunks;
        t.chunks_unchanged += s.chunks_unchanged;
        t.chunks_zero += s.chunks_zero;
        t.chunks_deduplicated += s.chunks_deduplicated;
        t.chunks_new += s.chunks_new;
        t.bytes_new += s.bytes_new;
        t.bytes_stored += s.bytes_stored;
    }
    t.duration_secs = elapsed.as_secs_f64();
    t
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
