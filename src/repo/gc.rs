//! Garbage collection: remove chunks and indexes that no restore point references.
//!
//! The protocol that lets gc run while backups run (from this host or others):
//!
//! 1. gc takes the exclusive lock (one gc or forget at a time) and puts back what an
//!    interrupted gc left aside.
//! 2. It reads the shared locks. `cutoff` = min(now, start of the oldest running
//!    backup) − grace. The grace (default 1 h) covers clock skew between hosts and
//!    lock refresh delays.
//! 3. It marks every chunk of every index named by a manifest or by a lock (a running
//!    backup's parent, a mounted restore point).
//! 4. It removes each unmarked chunk or index *only if its modification time is
//!    before `cutoff`*, with [`Backend::remove_if_older`]: the object is moved aside,
//!    its time checked, then deleted or moved back.
//!
//! Why a running backup never loses a chunk it counts on:
//! - chunks it wrote itself are younger than its start, hence than `cutoff`;
//! - a chunk it found already stored is first *touched* (backup: `claim_chunk`), so
//!   it is younger than the backup's start too. A touch that races with step 4
//!   either lands before the move aside (gc sees the new time and moves it back) or
//!   fails because the chunk is aside (the backup then stores it again);
//! - chunks taken over from its parent restore point are marked through the lock,
//!   even if the parent is forgotten meanwhile;
//! - a backup that starts after gc computed `cutoff` only touches or writes objects
//!   after that, so they are younger than `cutoff` as well.
//!
//! [`Backend::remove_if_older`]: super::backend::Backend::remove_if_older

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::chunk::ChunkId;
use super::lock;
use super::Repository;
use crate::error::{Error, Result};

/// Default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What gc did (or would do, with `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub restore_points: usize,
    pub referenced_chunks: usize,
    pub chunks_removed: u64,
    pub indexes_removed: u64,
    pub bytes_reclaimed: u64,
    /// Unreferenced objects kept because they are younger than the cutoff.
    pub kept_young: u64,
    pub temp_files_removed: u64,
    /// Objects an interrupted gc had left aside, put back.
    pub recovered: usize,
    /// Running operations whose start bounded the cutoff.
    pub running: Vec<String>,
    pub stale_locks: Vec<String>,
}

/// Runs gc with the given grace period.
pub fn gc(repo: &Arc<Repository>, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let _lock = lock::exclusive(repo, "gc")?;
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    if !dry_run {
        report.recovered = repo.backend().recover_aside()?;
    }
    let now = SystemTime::now();
    let mut oldest = now;
    let mut marked_indexes: HashSet<String> = HashSet::new();
    for l in lock::list(repo)? {
        if l.stale.is_some() {
            report.stale_locks.push(lock::describe(&l));
            continue;
        }
        if l.key == "locks/exclusive" {
            continue;
        }
        let started = UNIX_EPOCH + Duration::from_secs(l.info.started);
        oldest = oldest.min(started);
        marked_indexes.extend(l.info.indexes.iter().cloned());
        report.running.push(lock::describe(&l));
    }
    let cutoff = oldest.checked_sub(grace).unwrap_or(UNIX_EPOCH);

    // Mark. Any unreadable restore point stops gc: deleting while not knowing what
    // is referenced could destroy data.
    for id in repo.snapshot_ids()? {
        let m = repo.load_manifest(&id).map_err(|e| refuse(repo, &e))?;
        report.restore_points += 1;
        marked_indexes.extend(m.disks.iter().map(|d| d.index.clone()));
    }
    let mut marked: HashSet<ChunkId> = HashSet::new();
    let bar = crate::progress::count_bar(marked_indexes.len() as u64, "gc: read indexes");
    for idx in &marked_indexes {
        bar.inc(1);
        match repo.load_index(idx) {
            Ok(i) => marked.extend(i.entries.iter().flatten().copied()),
            // A lock may name an index its backup never wrote (it crashed); a manifest's
            // index that is missing is damage: verify reports it, gc cannot help.
            Err(Error::NotInRepository { .. }) => {}
            Err(e) => return Err(refuse(repo, &e)),
        }
    }
    bar.finish_and_clear();
    report.referenced_chunks = marked.len();

    // Sweep.
    let chunks = repo.backend().list("chunks")?;
    let bar = crate::progress::count_bar(chunks.len() as u64, "gc: sweep chunks");
    for obj in chunks {
        bar.inc(1);
        let Some(id) = obj.key.rsplit('/').next().and_then(ChunkId::from_hex) else {
            continue;
        };
        if marked.contains(&id) {
            continue;
        }
        sweep(repo, &obj, cutoff, dry_run, &mut report, true)?;
    }
    bar.finish_and_clear();
    for obj in repo.backend().list("indexes")? {
        let name = obj.key.trim_start_matches("indexes/");
        if marked_indexes.contains(name) {
            continue;
        }
        sweep(repo, &obj, cutoff, dry_run, &mut report, false)?;
    }
    for obj in repo.backend().list("tmp")? {
        if obj.modified.is_some_and(|m| m < cutoff) {
            if !dry_run {
                repo.backend().delete(&obj.key)?;
            }
            report.temp_files_removed += 1;
        }
    }
    Ok(report)
}

fn sweep(
    repo: &Repository,
    obj: &super::backend::ObjectInfo,
    cutoff: SystemTime,
    dry_run: bool,
    report: &mut GcReport,
    is_chunk: bool,
) -> Result<()> {
    let freed = if dry_run {
        obj.modified.filter(|m| *m < cutoff).map(|_| obj.size)
    } else {
        repo.backend().remove_if_older(&obj.key, cutoff)?
    };
    match freed {
        Some(bytes) => {
            report.bytes_reclaimed += bytes;
            if is_chunk {
                report.chunks_removed += 1;
            } else {
                report.indexes_removed += 1;
            }
        }
        None => report.kept_young += 1,
    }
    Ok(())
}

fn refuse(repo: &Repository, e: &Error) -> Error {
    Error::Repository {
        location: repo.location(),
        reason: format!(
            "gc stopped before deleting anything it cannot prove unused: {e} (run `vmback verify`)"
        ),
    }
}
