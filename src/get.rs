//! `vmback get`: copy files and directory trees out of a guest filesystem into a
//! host directory, with their metadata, safely.
//!
//! Guest names are hostile. The rules that keep every write inside `--target`:
//! - a name is one path component: empty, ".", "..", and names containing '/' or NUL
//!   are refused (reported, skipped); nothing from the guest is ever joined as a path;
//! - files are created with `create_new` (O_CREAT|O_EXCL), which never follows a
//!   symlink and never replaces an existing file; with `--overwrite` they are created
//!   under a fresh temporary name the same way and renamed over the old entry
//!   (rename replaces a symlink itself, never what it points at);
//! - we only descend into a host directory that we just created or that is a real
//!   directory (checked with `symlink_metadata`, never following links);
//! - symlinks are recreated as symlinks and never followed, whatever they point at.
//!
//! Hard links (same `link_id`) are recreated as hard links; runs of zeros are left
//! as holes; mode, owner (when running as root) and times are applied after a
//! directory's contents, so a read-only directory does not block its own restore.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use vmback_parsers::bytes::is_zero;

use crate::browse::DiskView;
use crate::error::{chain, Error, Result};
use crate::guestfs::{FileType, GuestFs, Metadata, NodeId, Timestamp};
use crate::progress::bytes_bar;

/// Granularity of hole detection when writing files.
const HOLE_BLOCK: usize = 64 << 10;
/// Read size per call into the guest filesystem.
const READ_CHUNK: usize = 4 << 20;
/// Deepest directory nesting followed. Real trees stay far below; a corrupt
/// directory that points back at an ancestor would otherwise nest without end.
const MAX_DEPTH: usize = 256;
/// No filesystem stores an entry in fewer bytes than this (a FAT slot); a volume of
/// N bytes therefore cannot hold more than N / 32 entries, whatever its directories
/// claim. Restoring more means the tree is cyclic or corrupt.
const MIN_ENTRY_BYTES: u64 = 32;

/// What `get` did.
#[derive(Debug, Default, Serialize)]
pub struct GetReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// One line per failed or refused entry: guest path and reason.
    pub errors: Vec<String>,
}

/// Options of `get`.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Apply guest owner ids (only effective when running as root).
    pub owner: bool,
    /// Replace existing files and symlinks (atomically: the new one is written under a
    /// temporary name and renamed over the old). Directories are merged either way.
    pub overwrite: bool,
}

struct Ctx<'a> {
    fs: &'a dyn GuestFs,
    label: String,
    links: HashMap<u64, PathBuf>,
    report: GetReport,
    bar: indicatif::ProgressBar,
    opts: GetOptions,
    is_root: bool,
    /// Identities (`link_id`) of the directories being restored, root to current:
    /// a directory that is its own ancestor is a cycle.
    ancestors: Vec<u64>,
    /// Entries still allowed (see [`MIN_ENTRY_BYTES`]).
    budget: u64,
    /// One read buffer for all files (allocated on first use).
    buf: Vec<u8>,
}

/// Restores each of `paths` (path grammar `<volume>/<guest path>`) into `target`.
pub fn get(
    view: &DiskView,
    paths: &[String],
    target: &Path,
    opts: &GetOptions,
) -> Result<GetReport> {
    fs::create_dir_all(target).map_err(|e| Error::io(target, "create target directory", e))?;
    let meta = fs::symlink_metadata(target).map_err(|e| Error::io(target, "stat", e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "--target {} is not a directory",
            target.display()
        )));
    }
    let mut total = GetReport::default();
    let bar = bytes_bar(0, "get");
    for p in paths {
        let r = view.resolve(p)?;
        let name = match r.guest_path.rsplit('/').find(|c| !c.is_empty()) {
            Some(n) => n.to_string(),
            None => r.volume.name.clone(),
        };
        let mut ctx = Ctx {
            fs: &*r.fs,
            label: r.volume.name.clone(),
            links: HashMap::new(),
            report: GetReport::default(),
            bar: bar.clone(),
            opts: opts.clone(),
            is_root: rustix::process::geteuid().is_root(),
            ancestors: Vec::new(),
            budget: (r.volume.len / MIN_ENTRY_BYTES).max(1024),
            buf: Vec::new(),
        };
        let guest = r.guest_path.trim_end_matches('/').to_string();
        restore_node(
            &mut ctx,
            r.node,
            OsStr::from_bytes(name.as_bytes()),
            &guest,
            target,
            0,
        );
        let rep = ctx.report;
        total.files += rep.files;
        total.dirs += rep.dirs;
        total.symlinks += rep.symlinks;
        total.hardlinks += rep.hardlinks;
        total.bytes += rep.bytes;
        total.skipped += rep.skipped;
        total.errors.extend(rep.errors);
        // Stopped by a signal: the file being copied was removed, nothing more is
        // written (see `interrupt`).
        crate::interrupt::check()?;
    }
    bar.finish_and_clear();
    Ok(total)
}

/// Whether `name` is safe as a single path component on this host.
fn valid_component(name: &OsStr) -> std::result::Result<(), &'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        Err("empty name")
    } else if b == b"." || b == b".." {
        Err("name is '.' or '..'")
    } else if b.contains(&b'/') {
        Err("name contains '/'")
    } else if b.contains(&0) {
        Err("name contains NUL")
    } else if b.len() > 255 {
        Err("name longer than 255 bytes")
    } else {
        Ok(())
    }
}

impl Ctx<'_> {
    fn fail(&mut self, guest: &str, why: String) {
        self.report.skipped += 1;
        self.report
            .errors
            .push(format!("{}{guest}: {why}", self.label));
    }
}

fn restore_node(
    ctx: &mut Ctx<'_>,
    node: NodeId,
    name: &OsStr,
    guest: &str,
    parent: &Path,
    depth: usize,
) {
    if crate::interrupt::requested().is_some() {
        return;
    }
    if let Err(why) = valid_component(name) {
        let shown = crate::ls::display_name(name.as_bytes());
        ctx.fail(&format!("{guest} [{shown}]"), format!("refused: {why}"));
        return;
    }
    if ctx.budget == 0 {
        if ctx
            .report
            .errors
            .last()
            .is_none_or(|e| !e.contains("more entries than the volume can hold"))
        {
            ctx.fail(
                guest,
                "stopped: more entries than the volume can hold (cyclic or corrupt directories)"
                    .into(),
            );
        }
        return;
    }
    ctx.budget -= 1;
    let host = parent.join(name);
    let meta = match ctx.fs.metadata(node) {
        Ok(m) => m,
        Err(e) => return ctx.fail(guest, chain(&e)),
    };
    let result = match meta.file_type {
        FileType::Dir => restore_dir(ctx, node, guest, &host, &meta, depth),
        FileType::File => restore_file(ctx, node, guest, &host, &meta),
        FileType::Symlink => restore_symlink(ctx, node, &host, &meta),
        FileType::Other => Err(Error::Unsupported {
            path: guest.into(),
            feature: "special file (device, FIFO or socket) not restored".into(),
        }),
    };
    if let Err(e) = result {
        ctx.fail(guest, chain(&e));
    }
}

fn restore_dir(
    ctx: &mut Ctx<'_>,
    node: NodeId,
    guest: &str,
    host: &Path,
    meta: &Metadata,
    depth: usize,
) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(Error::Unsupported {
            path: guest.into(),
            feature: format!("directory nesting deeper than {MAX_DEPTH}"),
        });
    }
    match fs::create_dir(host) {
        Ok(()) => ctx.report.dirs += 1,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Merge into an existing real directory; never through a symlink.
            let m = fs::symlink_metadata(host).map_err(|e| Error::io(host, "stat", e))?;
            if !m.is_dir() {
                return Err(Error::io(
                    host,
                    "create directory",
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a directory (kept)",
                    ),
                ));
            }
        }
        Err(e) => return Err(Error::io(host, "create directory", e)),
    }
    let mut entries = ctx.fs.read_dir(node)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    ctx.ancestors.extend(meta.link_id);
    for e in entries {
        let child_guest = format!("{guest}/{}", crate::ls::display_name(e.name.as_bytes()));
        restore_node(ctx, e.node, &e.name, &child_guest, host, depth + 1);
    }
    if meta.link_id.is_some() {
        ctx.ancestors.pop();
    }
    apply_metadata(ctx, host, meta, false)
}

fn restore_file(
    ctx: &mut Ctx<'_>,
    node: NodeId,
    guest: &str,
    host: &Path,
    meta: &Metadata,
) -> Result<()> {
    if let Some(id) = meta.link_id.filter(|_| meta.nlink > 1) {
        if let Some(first) = ctx.links.get(&id).cloned() {
            let at = creation_path(ctx, host);
            fs::hard_link(&first, &at)
                .map_err(|e| Error::io(host, format!("hard link to {}", first.display()), e))?;
            replace_with(&at, host)?;
            ctx.report.hardlinks += 1;
            return Ok(());
        }
    }
    let at = creation_path(ctx, host);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&at)
        .map_err(|e| {
            Error::io(
                host,
                "create (existing files are kept; --overwrite replaces them)",
                e,
            )
        })?;
    let written = copy_sparse(ctx, node, guest, &mut out, meta.size);
    if let Err(e) = written {
        drop(out);
        // A partial file would look restored: remove it.
        let _ = fs::remove_file(&at);
        return Err(e);
    }
    replace_with(&at, host)?;
    ctx.report.files += 1;
    if let Some(id) = meta.link_id.filter(|_| meta.nlink > 1) {
        ctx.links.insert(id, host.to_path_buf());
    }
    drop(out);
    apply_metadata(ctx, host, meta, false)
}

/// Where to create an entry: its own name, or with `--overwrite` a fresh temporary
/// name beside it (see [`replace_with`]).
fn creation_path(ctx: &Ctx<'_>, host: &Path) -> PathBuf {
    if !ctx.opts.overwrite {
        return host.to_path_buf();
    }
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let short: String = name.chars().take(64).collect();
    host.with_file_name(format!(".{short}.vmback-{}", std::process::id()))
}

/// Moves an entry created at `at` to `host` (a no-op when they are the same),
/// replacing a file or symlink there; a directory in the way is an error.
fn replace_with(at: &Path, host: &Path) -> Result<()> {
    if at == host {
        return Ok(());
    }
    if let Err(e) = fs::rename(at, host) {
        let _ = fs::remove_file(at);
        return Err(Error::io(host, "replace existing entry", e));
    }
    Ok(())
}

/// Copies file data, leaving all-zero blocks as holes, and checks the length.
fn copy_sparse(
    ctx: &mut Ctx<'_>,
    node: NodeId,
    guest: &str,
    out: &mut File,
    size: u64,
) -> Result<()> {
    if size > 0 && ctx.buf.is_empty() {
        ctx.buf = vec![0u8; READ_CHUNK];
    }
    let mut buf = std::mem::take(&mut ctx.buf);
    let result = copy_into(ctx, node, guest, out, size, &mut buf);
    ctx.buf = buf;
    result
}

fn copy_into(
    ctx: &mut Ctx<'_>,
    node: NodeId,
    guest: &str,
    out: &mut File,
    size: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut off = 0u64;
    while off < size {
        crate::interrupt::check()?;
        let want = ((size - off) as usize).min(READ_CHUNK);
        let n = ctx.fs.read_at(node, off, &mut buf[..want])?;
        if n == 0 {
            return Err(Error::GuestFs {
                fs: ctx.label.clone(),
                path: guest.to_string(),
                source: format!("file is {size} bytes but reading stopped at {off}").into(),
            });
        }
        for block in buf[..n].chunks(HOLE_BLOCK) {
            if is_zero(block) {
                out.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(|e| Error::io(guest, "seek", e))?;
            } else {
                out.write_all(block)
                    .map_err(|e| Error::io(guest, "write", e))?;
            }
        }
        off += n as u64;
        ctx.report.bytes += n as u64;
        ctx.bar.inc(n as u64);
    }
    out.set_len(size)
        .map_err(|e| Error::io(guest, "set length", e))
}

fn restore_symlink(ctx: &mut Ctx<'_>, node: NodeId, host: &Path, meta: &Metadata) -> Result<()> {
    let target = ctx.fs.read_link(node)?;
    if target.as_bytes().contains(&0) || target.is_empty() {
        return Err(Error::Unsupported {
            path: host.into(),
            feature: "symlink target empty or contains NUL".into(),
        });
    }
    // The link is created as is and never followed: where it points does not matter
    // to the restore, and it cannot redirect later writes (see module doc).
    let at = creation_path(ctx, host);
    std::os::unix::fs::symlink(&target, &at).map_err(|e| Error::io(host, "create symlink", e))?;
    replace_with(&at, host)?;
    ctx.report.symlinks += 1;
    apply_metadata(ctx, host, meta, true)
}

fn system_time(t: Timestamp) -> Option<SystemTime> {
    if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(t.secs as u64, t.nanos.min(999_999_999)))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
    }
}

fn apply_metadata(ctx: &Ctx<'_>, host: &Path, meta: &Metadata, is_link: bool) -> Result<()> {
    if ctx.opts.owner && ctx.is_root {
        if let (Some(uid), Some(gid)) = (meta.uid, meta.gid) {
            std::os::unix::fs::lchown(host, Some(uid), Some(gid))
                .map_err(|e| Error::io(host, "change owner", e))?;
        }
    }
    if is_link {
        let to_ts = |t: Option<Timestamp>| {
            t.map(|t| rustix::fs::Timespec {
                tv_sec: t.secs,
                tv_nsec: t.nanos.into(),
            })
            .unwrap_or(rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            })
        };
        let times = rustix::fs::Timestamps {
            last_access: to_ts(meta.atime.or(meta.mtime)),
            last_modification: to_ts(meta.mtime),
        };
        // Best effort: some filesystems refuse times on symlinks.
        let _ = rustix::fs::utimensat(
            rustix::fs::CWD,
            host,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
        return Ok(());
    }
    // setuid/setgid are dropped: a restored copy must not grant privileges.
    let mode = meta.mode & 0o1777;
    fs::set_permissions(host, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(host, "set permissions", e))?;
    let mut times = FileTimes::new();
    if let Some(t) = meta.mtime.and_then(system_time) {
        times = times.set_modified(t);
    }
    if let Some(t) = meta.atime.or(meta.mtime).and_then(system_time) {
        times = times.set_accessed(t);
    }
    // Opening read-only works for directories too, and for files whose new mode
    // denies writing (we are the owner; futimens needs no write access then).
    let f = File::open(host).map_err(|e| Error::io(host, "open to set times", e))?;
    f.set_times(times)
        .map_err(|e| Error::io(host, "set times", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_rules() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/",
            b"a\0b",
            &[b'x'; 256][..],
        ] {
            assert!(valid_component(OsStr::from_bytes(bad)).is_err(), "{bad:?}");
        }
        for ok in [
            &b"a"[..],
            b"...",
            b"a\\..\\b",
            b"..x",
            "dé".as_bytes(),
            &[b'x'; 255][..],
        ] {
            assert!(valid_component(OsStr::from_bytes(ok)).is_ok(), "{ok:?}");
        }
    }
}
