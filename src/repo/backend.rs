//! Where repository objects live. The pipeline sees only [`Backend`] (get / put /
//! list / delete / range reads), so object storage can be added without touching it.
//! [`LocalBackend`] is the embedded default: a directory on a local or network
//! filesystem.
//!
//! Keys are `/`-separated relative names (`config`, `chunks/ab/ab12…`,
//! `indexes/…`, `snapshots/…`). Every `put` is atomic: a reader sees the whole
//! object or nothing, whatever moment a crash or a full disk strikes.
//!
//! Durability comes in two kinds. [`Backend::put`] is durable when it returns (the
//! file and its directory entry are fsynced). [`Backend::put_batched`], for chunks,
//! defers it: an fsync per object costs a journal commit (~15 ms each on the 2-core
//! benchmark machine, two per chunk: most of a backup's time), so batched objects are
//! written to `tmp/` without syncing, the batch is made durable with one `syncfs`
//! (on a background thread, one batch at a time, while the workers go on), and only
//! then renamed into place; a final [`Backend::sync`] waits for that and makes the
//! renames durable. So a visible object name always has durable content (a crash leaves
//! only garbage in `tmp/`, never a named, empty chunk that a later backup could
//! deduplicate against), and after `sync` every object put or seen is durable:
//! the repository calls it before writing anything that refers to chunks.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Storage of immutable, named objects.
pub trait Backend: Send + Sync {
    /// The whole object. A missing object is [`Error::NotInRepository`].
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// `len` bytes from `offset` of the object.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Stores an object atomically. An existing object of the same name is replaced
    /// (callers name objects by content, so a replacement holds the same bytes).
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Stores an object atomically unless the name is taken; `Ok(false)` when it was.
    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// Stores an object like [`put`](Backend::put), durable only after the next
    /// [`sync`](Backend::sync); it may become visible earlier, but never before its
    /// content is durable. For the many chunks of a backup.
    fn put_batched(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put(key, data)
    }
    /// Makes every object stored so far, and every object this process has seen
    /// exist, durable and visible. Called with no `put_batched` in flight.
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Whether the object exists.
    fn exists(&self, key: &str) -> Result<bool>;
    /// Keys under `prefix` (a "directory" such as `snapshots/`), recursively, unsorted.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Removes an object; removing a missing one is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// A human name for messages ("/srv/backup", "s3://bucket/prefix").
    fn location(&self) -> String;
    /// Sets the object's modification time to now; `Ok(false)` when it does not exist.
    /// A backup that reuses an object it did not write touches it first, so that a
    /// concurrent gc sees it as young (see `gc.rs`).
    fn touch(&self, key: &str) -> Result<bool>;
    /// Removes the object only if it was last modified before `cutoff`, atomically
    /// with respect to [`Backend::touch`]: the object is first moved aside, then its
    /// time is checked, then it is deleted or moved back. Returns the bytes freed.
    fn remove_if_older(&self, key: &str, cutoff: SystemTime) -> Result<Option<u64>>;
    /// Moves back objects an interrupted [`Backend::remove_if_older`] left aside;
    /// returns how many.
    fn recover_aside(&self) -> Result<usize>;
    /// Reads an object that an interrupted removal left aside, if there is one.
    fn get_aside(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Prepares for many lookups of objects under `prefix` (a hint, errors ignored;
    /// the default does nothing).
    fn warm_up(&self, _prefix: &str) {}
    /// Hints that the object will be read soon, so that fetching it can start now,
    /// alongside others (a hint, errors ignored; the default does nothing).
    fn will_need(&self, _key: &str) {}
}

/// A listed object.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// A repository in a local directory.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    /// Distinguishes temporary files of concurrent writers in this process.
    tmp_counter: AtomicU64,
    /// Batched objects written to `tmp/`, not yet synced nor renamed into place.
    pending: Mutex<Pending>,
    /// The batch being committed in the background, if any.
    committing: Mutex<Option<JoinHandle<Result<()>>>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// (temporary file, final path)
    files: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

/// A batch is synced and renamed into place once it holds this much (bounds the
/// dirty page cache and the work lost to a crash; a syncfs costs about one fsync).
const BATCH_BYTES: u64 = 128 << 20;
const BATCH_FILES: usize = 1024;

/// Directory for objects being written (a crash leaves garbage only here).
const TMP_DIR: &str = "tmp";
/// Objects gc moved aside while deciding whether to delete them.
const ASIDE_DIR: &str = "aside";

/// The name of `key` while set aside (one flat directory).
fn aside_name(key: &str) -> String {
    key.replace('/', "!")
}

impl LocalBackend {
    /// A backend rooted at `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        LocalBackend {
            root: root.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            committing: Mutex::new(None),
        }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        // Keys are made by us, but a hostile manifest could name `../x`: refuse.
        let ok = !key.is_empty()
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !ok {
            return Err(Error::Repository {
                location: self.location(),
                reason: format!("invalid object name {key:?}"),
            });
        }
        Ok(self.root.join(key))
    }

    /// Writes `data` to a fresh temporary file; fsyncs it when `sync`.
    fn write_tmp(&self, data: &[u8], sync: bool) -> Result<PathBuf> {
        let dir = self.root.join(TMP_DIR);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{}-{}-{n}", process_id(), unique_suffix()));
        let create = || OpenOptions::new().write(true).create_new(true).open(&tmp);
        // The directory exists but for the first object: made only when missing (a
        // mkdir per chunk is a syscall and a directory lock each).
        let mut file = create();
        if file
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::NotFound)
        {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create directory", e))?;
            file = create();
        }
        let result = (|| {
            let mut f = file?;
            f.write_all(data)?;
            if sync {
                f.sync_all()?;
            } else {
                // Starts the writeback now (POSIX_FADV_DONTNEED on dirty pages does,
                // without waiting): the device writes while the backup reads and
                // compresses, so the syncfs that makes the batch durable finds little
                // left (incremental of 90 MiB: 0.565 s -> 0.515 s median, cold), and
                // the host's dirty page cache stays small during a long full.
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, write_op(&e), e));
        }
        Ok(tmp)
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, "create directory", e))?;
        }
        Ok(())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The result of a background commit, once it is done.
    fn joined(&self, commit: Option<JoinHandle<Result<()>>>) -> Result<()> {
        match commit.map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Repository {
                location: self.location(),
                reason: "the thread syncing chunks panicked".into(),
            }),
        }
    }

    /// Waits for the batch being committed in the background; its result.
    fn wait_commit(&self) -> Result<()> {
        let running = self
            .committing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.joined(running)
    }

    /// Commits a full batch on a background thread, after the previous one is done
    /// (one in flight bounds the unsynced data; its error, if any, is returned here).
    fn commit_in_background(&self, files: Vec<(PathBuf, PathBuf)>) -> Result<()> {
        let mut slot = self.committing.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.joined(slot.take()) {
            discard(&files);
            return Err(e);
        }
        let root = self.root.clone();
        *slot = Some(std::thread::spawn(move || commit(&root, files)));
        Ok(())
    }
}

/// Makes a batch's content durable, then renames it into place (the renames are made
/// durable by the next [`Backend::sync`]). On error the batch's temporary files are
/// removed.
fn commit(root: &Path, files: Vec<(PathBuf, PathBuf)>) -> Result<()> {
    let result = sync_filesystem(root).and_then(|()| {
        files
            .iter()
            .try_for_each(|(tmp, path)| rename_making_parent(tmp, path))
    });
    if result.is_err() {
        discard(&files);
    }
    result
}

/// Renames `tmp` to `path`, creating `path`'s directory when it is missing (only
/// the first object of each chunk directory pays for it).
fn rename_making_parent(tmp: &Path, path: &Path) -> Result<()> {
    let mut result = fs::rename(tmp, path);
    if result
        .as_ref()
        .is_err_and(|e| e.kind() == ErrorKind::NotFound)
    {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, "create directory", e))?;
        }
        result = fs::rename(tmp, path);
    }
    result.map_err(|e| Error::io(path, "rename into place", e))
}

fn discard(files: &[(PathBuf, PathBuf)]) {
    for (tmp, _) in files {
        let _ = fs::remove_file(tmp);
    }
}

/// `syncfs` of the filesystem holding `root`: every file written there (by any
/// process), with its metadata, is durable when it returns — one journal commit
/// instead of one per file.
fn sync_filesystem(root: &Path) -> Result<()> {
    let dir = File::open(root).map_err(|e| Error::io(root, "open", e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io(root, "sync the filesystem (syncfs)", e.into()))
}

impl Drop for LocalBackend {
    /// Batched objects never synced (the backup failed) are garbage: remove them.
    fn drop(&mut self) {
        let _ = self.wait_commit();
        discard(&std::mem::take(&mut self.lock_pending().files));
    }
}

/// Names the operation so a full disk reads as what it is.
fn write_op(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(28) {
        "write (the repository's filesystem is full)"
    } else {
        "write"
    }
}

/// This process's id, asked of the kernel once (getpid is a syscall each time).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Nanoseconds of the clock: enough to keep temp names of several processes apart
/// together with the pid.
fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Makes a rename durable: the directory entry itself is fsynced.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "sync directory", e))
}

impl Backend for LocalBackend {
    /// Looks up a missing name in each directory under `prefix`: that reads the
    /// directories' blocks (or, for a large hashed directory, its index) into memory.
    /// Done up front by one thread, it spares the capture workers a cold directory
    /// read each for their first chunk in a directory, which they would otherwise
    /// wait for behind the source's reads (measured: 0.28 s of workers' time in an
    /// incremental of 580 chunks into 256 directories).
    fn warm_up(&self, prefix: &str) {
        let Ok(dirs) = fs::read_dir(self.root.join(prefix)) else {
            return;
        };
        for d in dirs.flatten() {
            let _ = fs::symlink_metadata(d.path().join(".warm-up"));
        }
    }

    /// POSIX_FADV_WILLNEED on the object's file: the kernel starts reading it
    /// without waiting, so the chunks a reader will want next come from the device
    /// together instead of one synchronous read at a time.
    fn will_need(&self, key: &str) {
        let Ok(path) = self.path(key) else {
            return;
        };
        if let Ok(f) = File::open(path) {
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        fs::read(&path).map_err(|e| missing_or_io(&self.location(), key, &path, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let mut f =
            File::open(&path).map_err(|e| missing_or_io(&self.location(), key, &path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&path, "seek", e))?;
        let mut buf = Vec::new();
        f.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&path, "read", e))?;
        if buf.len() != len {
            return Err(Error::Repository {
                location: self.location(),
                reason: format!(
                    "{key}: short object ({} bytes at {offset}, wanted {len})",
                    buf.len()
                ),
            });
        }
        Ok(buf)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        self.ensure_parent(&path)?;
        let tmp = self.write_tmp(data, true)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&path, "rename into place", e));
        }
        // OK: path was built from root.join(key) and key is not empty.
        sync_dir(path.parent().unwrap_or(&self.root))
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        let path = self.path(key)?;
        self.ensure_parent(&path)?;
        let tmp = self.write_tmp(data, true)?;
        // A hard link fails if the name exists: an atomic "create if absent".
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(path.parent().unwrap_or(&self.root))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&path, "link into place", e)),
        }
    }

    fn put_batched(&self, key: &str, data: &[u8]) -> Result<()> {
        // Its directory is made when the batch is renamed into place, if missing.
        let path = self.path(key)?;
        let tmp = self.write_tmp(data, false)?;
        let full = {
            let mut p = self.lock_pending();
            p.files.push((tmp, path));
            p.bytes += data.len() as u64;
            if p.bytes >= BATCH_BYTES || p.files.len() >= BATCH_FILES {
                p.bytes = 0;
                Some(std::mem::take(&mut p.files))
            } else {
                None
            }
        };
        match full {
            Some(files) => self.commit_in_background(files),
            None => Ok(()),
        }
    }

    fn sync(&self) -> Result<()> {
        let files = {
            let mut p = self.lock_pending();
            p.bytes = 0;
            std::mem::take(&mut p.files)
        };
        if let Err(e) = self.wait_commit() {
            discard(&files);
            return Err(e);
        }
        if !files.is_empty() {
            commit(&self.root, files)?;
        }
        // The renames (ours and those of batches committed earlier), and objects of
        // other writers this process deduplicated against.
        sync_filesystem(&self.root)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, "stat", e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = prefix.trim_end_matches('/');
        let dir = self.path(prefix)?;
        let mut out = Vec::new();
        let mut stack = vec![(dir, prefix.to_string())];
        while let Some((dir, key)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(it) => it,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, "list", e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, "list", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry
                    .metadata()
                    .map_err(|e| Error::io(entry.path(), "stat", e))?;
                let child_key = format!("{key}/{name}");
                if meta.is_dir() {
                    stack.push((entry.path(), child_key));
                } else if meta.is_file() {
                    out.push(ObjectInfo {
                        key: child_key,
                        size: meta.len(),
                        modified: meta.modified().ok(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, "remove", e)),
        }
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn touch(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match File::open(&path) {
            Ok(f) => {
                f.set_modified(SystemTime::now())
                    .map_err(|e| Error::io(&path, "touch", e))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, "open", e)),
        }
    }

    fn remove_if_older(&self, key: &str, cutoff: SystemTime) -> Result<Option<u64>> {
        let path = self.path(key)?;
        let dir = self.root.join(ASIDE_DIR);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create directory", e))?;
        let aside = dir.join(aside_name(key));
        match fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, "move aside", e)),
        }
        // A touch before the rename shows here (same inode); a touch after it failed
        // with "not found" and its caller wrote the object again.
        let meta = fs::metadata(&aside).map_err(|e| Error::io(&aside, "stat", e))?;
        let young = meta.modified().map_or(true, |m| m >= cutoff);
        if young {
            put_back(&aside, &path)?;
            return Ok(None);
        }
        fs::remove_file(&aside).map_err(|e| Error::io(&aside, "remove", e))?;
        Ok(Some(meta.len()))
    }

    fn recover_aside(&self) -> Result<usize> {
        let dir = self.root.join(ASIDE_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(it) => it,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&dir, "list", e)),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, "list", e))?;
            let key = entry.file_name().to_string_lossy().replace('!', "/");
            let path = self.path(&key)?;
            self.ensure_parent(&path)?;
            put_back(&entry.path(), &path)?;
            n += 1;
        }
        Ok(n)
    }

    fn get_aside(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.path(key)?;
        let aside = self.root.join(ASIDE_DIR).join(aside_name(key));
        match fs::read(&aside) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&aside, "read", e)),
        }
    }
}

/// Moves an object set aside back to its name. If a writer stored it again
/// meanwhile (same name, same content), the copy set aside is dropped.
fn put_back(aside: &Path, path: &Path) -> Result<()> {
    match fs::hard_link(aside, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(path, "move back", e)),
    }
    fs::remove_file(aside).map_err(|e| Error::io(aside, "remove", e))
}

fn missing_or_io(location: &str, key: &str, path: &Path, e: std::io::Error) -> Error {
    if e.kind() == ErrorKind::NotFound {
        Error::NotInRepository {
            location: location.to_string(),
            key: key.to_string(),
        }
    } else {
        Error::io(path, "read", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("chunks/ab/abcd", b"hello").unwrap();
        assert!(b.exists("chunks/ab/abcd").unwrap());
        assert_eq!(b.get("chunks/ab/abcd").unwrap(), b"hello");
        assert_eq!(b.get_range("chunks/ab/abcd", 1, 3).unwrap(), b"ell");
        assert!(!b.put_new("chunks/ab/abcd", b"other").unwrap());
        assert_eq!(b.get("chunks/ab/abcd").unwrap(), b"hello");
        assert!(b.put_new("snapshots/x", b"m").unwrap());
        let keys: Vec<_> = b
            .list("chunks")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["chunks/ab/abcd".to_string()]);
        b.delete("chunks/ab/abcd").unwrap();
        b.delete("chunks/ab/abcd").unwrap();
        assert!(matches!(
            b.get("chunks/ab/abcd"),
            Err(Error::NotInRepository { .. })
        ));
        // Nothing is left behind in tmp/.
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn batched_objects_appear_only_when_durable_and_unsynced_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put_batched("chunks/ab/ab01", b"one").unwrap();
        assert!(!b.exists("chunks/ab/ab01").unwrap(), "named before synced");
        b.sync().unwrap();
        assert_eq!(b.get("chunks/ab/ab01").unwrap(), b"one");
        // A full batch is committed without waiting for sync.
        for i in 0..BATCH_FILES {
            b.put_batched(&format!("chunks/cd/{i:04}"), b"x").unwrap();
        }
        b.wait_commit().unwrap();
        assert!(b.exists("chunks/cd/0000").unwrap());
        assert!(b
            .exists(&format!("chunks/cd/{:04}", BATCH_FILES - 1))
            .unwrap());
        // A backup that fails before sync leaves nothing behind.
        b.put_batched("chunks/ef/ef01", b"lost").unwrap();
        drop(b);
        let b = LocalBackend::new(dir.path());
        assert!(!b.exists("chunks/ef/ef01").unwrap());
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn batched_objects_recreate_directories_removed_under_them() {
        // Directories are made only when an object meets them missing; one removed
        // meanwhile (gc drops empty ones) is made again, never an error.
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put_batched("chunks/ab/ab01", b"one").unwrap();
        b.sync().unwrap();
        fs::remove_file(dir.path().join("chunks/ab/ab01")).unwrap();
        fs::remove_dir(dir.path().join("chunks/ab")).unwrap();
        fs::remove_dir(dir.path().join(TMP_DIR)).unwrap();
        b.put_batched("chunks/ab/ab02", b"two").unwrap();
        b.put_batched("chunks/cd/cd01", b"three").unwrap();
        b.sync().unwrap();
        assert_eq!(b.get("chunks/ab/ab02").unwrap(), b"two");
        assert_eq!(b.get("chunks/cd/cd01").unwrap(), b"three");
    }

    #[test]
    fn refuses_escaping_keys() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        for key in ["../x", "a//b", "/abs", "", "a/./b"] {
            assert!(b.get(key).is_err(), "{key}");
            assert!(b.put(key, b"x").is_err(), "{key}");
        }
    }
}
