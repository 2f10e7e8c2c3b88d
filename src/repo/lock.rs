//! Repository locks.
//!
//! - **Shared** locks (backup, restore, mount, verify) never exclude each other: any
//!   number of backups, from any number of hosts, can write at once, because every
//!   object is named by its content and written atomically.
//! - The **exclusive** lock (gc, forget) is one object, `locks/exclusive`, created
//!   only if absent: at most one gc or forget runs at a time.
//! - gc does not wait for shared locks. It reads them to learn the oldest running
//!   backup (chunks younger than that are kept: see `gc.rs`) and the indexes they
//!   rely on (a backup's parent, a mounted restore point), which it keeps too.
//!
//! A lock is a small JSON object refreshed every [`HEARTBEAT`] by a thread. It is
//! stale when its process is gone (same host) or its heartbeat is older than
//! [`STALE_AFTER`] (another host); stale locks are reported and ignored, and removed
//! by `vmback unlock`.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Repository;
use crate::error::{Error, Result};

/// How often a held lock is refreshed.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// A lock not refreshed for this long belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

const EXCLUSIVE_KEY: &str = "locks/exclusive";

/// What a lock says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    /// backup, restore, mount, verify, gc, forget.
    pub kind: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since the epoch when the operation started.
    pub started: u64,
    /// Index objects the holder relies on (a backup's parent, a mounted restore point):
    /// gc keeps them and their chunks.
    #[serde(default)]
    pub indexes: Vec<String>,
}

/// A lock as found in the repository.
#[derive(Debug, Clone)]
pub struct FoundLock {
    pub key: String,
    pub info: LockInfo,
    /// When it was last refreshed.
    pub refreshed: Option<SystemTime>,
    /// Why it is considered stale, if it is.
    pub stale: Option<String>,
}

/// A held lock; released (removed) on drop.
pub struct Lock {
    repo: Arc<Repository>,
    key: String,
    /// Dropped to stop the heartbeat.
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").field("key", &self.key).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl LockInfo {
    fn new(kind: &str, indexes: Vec<String>) -> Self {
        LockInfo {
            kind: kind.into(),
            host: this_host(),
            pid: std::process::id(),
            started: now_secs(),
            indexes,
        }
    }
}

/// Takes a shared lock of `kind`, protecting `indexes` from gc while held.
pub fn shared(repo: &Arc<Repository>, kind: &str, indexes: Vec<String>) -> Result<Lock> {
    let info = LockInfo::new(kind, indexes);
    let key = format!(
        "locks/{kind}-{}-{}-{}",
        sanitize(&info.host),
        info.pid,
        super::config::random_id()
    );
    write_lock(repo, &key, &info, false)?;
    Ok(start(repo, key, info))
}

/// Takes the exclusive lock for `kind` (gc, forget), or says who holds it.
pub fn exclusive(repo: &Arc<Repository>, kind: &str) -> Result<Lock> {
    let info = LockInfo::new(kind, Vec::new());
    // A holder that died on this host (killed, crashed) cannot finish: its lock is
    // broken with a warning. Other stale locks need `vmback unlock`.
    if let Some(dead) = list(repo)?.into_iter().find(|l| {
        l.key == EXCLUSIVE_KEY
            && l.info.host == info.host
            && l.stale
                .as_deref()
                .is_some_and(|s| s.contains("no longer running"))
    }) {
        eprintln!("vmback: warning: removing stale lock: {}", describe(&dead));
        repo.backend().delete(EXCLUSIVE_KEY)?;
    }
    if !write_lock(repo, EXCLUSIVE_KEY, &info, true)? {
        let holder = list(repo)?
            .into_iter()
            .find(|l| l.key == EXCLUSIVE_KEY)
            .map(|l| describe(&l))
            .unwrap_or_else(|| "another process".into());
        return Err(Error::Repository {
            location: repo.location(),
            reason: format!(
                "locked by {holder}; wait for it to finish{}",
                ", or remove a stale lock with `vmback unlock`"
            ),
        });
    }
    Ok(start(repo, EXCLUSIVE_KEY.to_string(), info))
}

fn write_lock(repo: &Repository, key: &str, info: &LockInfo, only_new: bool) -> Result<bool> {
    let json = serde_json::to_vec(info).map_err(|e| Error::Repository {
        location: repo.location(),
        reason: format!("encoding a lock: {e}"),
    })?;
    if only_new {
        repo.backend().put_new(key, &json)
    } else {
        repo.backend().put(key, &json).map(|()| true)
    }
}

fn start(repo: &Arc<Repository>, key: String, info: LockInfo) -> Lock {
    // Dropping the sender wakes the heartbeat at once: releasing a lock must not wait
    // out a polling interval (it ends every backup, so it adds to each one).
    let (stop, stopped) = mpsc::channel::<()>();
    let (r, k) = (repo.clone(), key.clone());
    let heartbeat = std::thread::Builder::new()
        .name("vmback-lock".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                // Rewriting refreshes the modification time the staleness check reads.
                let _ = write_lock(&r, &k, &info, false);
            }
        })
        .ok();
    Lock {
        repo: repo.clone(),
        key,
        stop: Some(stop),
        heartbeat,
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let _ = self.repo.backend().delete(&self.key);
    }
}

/// Every lock in the repository, with staleness decided.
pub fn list(repo: &Repository) -> Result<Vec<FoundLock>> {
    let host = this_host();
    let mut out = Vec::new();
    for obj in repo.backend().list("locks")? {
        let Ok(raw) = repo.backend().get(&obj.key) else {
            continue; // released meanwhile
        };
        let Ok(info) = serde_json::from_slice::<LockInfo>(&raw) else {
            out.push(FoundLock {
                key: obj.key,
                info: LockInfo::new("unknown", Vec::new()),
                refreshed: obj.modified,
                stale: Some("unreadable lock object".into()),
            });
            continue;
        };
        let age = obj
            .modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let stale = if info.host == host
            && !std::path::Path::new(&format!("/proc/{}", info.pid)).exists()
        {
            Some(format!(
                "process {} is no longer running on this host",
                info.pid
            ))
        } else if age > STALE_AFTER {
            Some(format!("not refreshed for {} minutes", age.as_secs() / 60))
        } else {
            None
        };
        out.push(FoundLock {
            key: obj.key,
            info,
            refreshed: obj.modified,
            stale,
        });
    }
    Ok(out)
}

/// "backup by pid 123 on host1 since 2026-11-22T03:00:00Z".
pub fn describe(l: &FoundLock) -> String {
    let since = jiff::Timestamp::from_second(l.info.started as i64)
        .map(|t| t.to_string())
        .unwrap_or_default();
    format!(
        "{} by pid {} on {} since {since}{}",
        l.info.kind,
        l.info.pid,
        l.info.host,
        l.stale
            .as_ref()
            .map(|s| format!(" (stale: {s})"))
            .unwrap_or_default()
    )
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
