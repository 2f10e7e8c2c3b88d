//! `vmback mount` and `vmback umount`: restore points of a repository, or an image
//! file, as a read-only FUSE filesystem (the kernel protocol through `fuser`, mounted
//! without libfuse), in the path grammar of DESIGN.md. See [`fs`] for the tree.
//!
//! - [`inodes`]: inode numbers ↔ nodes of the tree;
//! - [`repo_view`]: VMs and restore points of the repository, refreshed as backups
//!   finish;
//! - [`disks`]: disks and volumes, opened on first visit;
//! - [`readahead`]: loads the next chunks for sequential readers;
//! - [`fs`]: the FUSE requests.
//!
//! The mount runs in the foreground. SIGINT, SIGTERM and SIGHUP unmount it (a second
//! signal while it is busy detaches it lazily); `vmback umount` or `fusermount3 -u`
//! from elsewhere end it too. Either way the process exits 0 once the kernel has let
//! go of it.

pub mod disks;
pub mod fs;
pub mod inodes;
pub mod readahead;
pub mod repo_view;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;

use fuser::{Config, MountOption, Session, SessionACL};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::repo::reader::ChunkCache;
use crate::repo::{self};
use disks::DiskSlot;
use fs::{FsOptions, MountFs, Top};
use repo_view::RepoView;

/// Default memory for decompressed chunks, shared by every disk of the mount.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;
/// Threads that read ahead for sequential readers.
const READAHEAD_THREADS: usize = 2;

/// What `vmback mount` was asked for.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Only this VM's restore points.
    pub vm: Option<String>,
    /// Only this restore point (name, id prefix or `latest`).
    pub snapshot: Option<String>,
    /// Only the newest restore point at or before this time (`--at`).
    pub at: Option<jiff::Timestamp>,
    /// Memory budget for decompressed chunks.
    pub cache_bytes: u64,
    /// Let other users in (the guest's owners and modes are then enforced).
    pub allow_other: bool,
    /// Threads serving FUSE requests (default: 4, at least twice the cores).
    pub threads: Option<usize>,
}

/// Mounts `source` (a repository or an image file) on `mountpoint` and serves it
/// until it is unmounted.
pub fn mount(source: &Path, mountpoint: &Path, opts: &MountOptions) -> Result<()> {
    let meta =
        std::fs::metadata(mountpoint).map_err(|e| Error::io(mountpoint, "mount point", e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{}: the mount point must be a directory",
            mountpoint.display()
        )));
    }
    // Held while mounted: gc keeps the data of the restore points shown at mount time
    // even if they are forgotten meanwhile.
    let mut _lock = None;
    let (top, image) = if repo::is_repository(source) {
        let repo = repo::open_shared(source)?;
        let indexes = repo
            .snapshots()?
            .iter()
            .filter(|s| opts.vm.as_deref().is_none_or(|v| s.manifest.vm.name == v))
            .flat_map(|s| s.manifest.disks.iter().map(|d| d.index.clone()))
            .collect();
        _lock = Some(repo::lock::shared(&repo, "mount", indexes)?);
        let at_id = match opts.at {
            Some(at) => Some(repo.find_at(at, opts.vm.as_deref())?.id),
            None => None,
        };
        let snapshot = at_id.as_deref().or(opts.snapshot.as_deref());
        let view = RepoView::open(repo.clone(), opts.vm.clone(), snapshot)?;
        let cache = Arc::new(ChunkCache::new(opts.cache_bytes, repo.config().chunk_size));
        (Top::Repo { view, cache }, None)
    } else {
        if opts.vm.is_some() || opts.snapshot.is_some() || opts.at.is_some() {
            return Err(Error::Usage(format!(
                "{} is an image file: --vm, --snapshot and --at are only for repositories",
                source.display()
            )));
        }
        (Top::Image, Some(DiskSlot::open_image(source)?))
    };
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let threads = opts.threads.unwrap_or((2 * cores).max(4)).max(1);
    let fs = MountFs::new(
        top,
        image,
        FsOptions {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            readahead_threads: READAHEAD_THREADS,
        },
    )
    .map_err(|e| Error::io("vmback", "start readahead threads", e))?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(fs_name(source)),
        MountOption::Subtype("vmback".into()),
    ];
    if opts.allow_other {
        // Other users see the guest's owners and modes, and the kernel enforces
        // them: without this, everyone could read every guest file.
        config.acl = SessionACL::All;
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.n_threads = Some(threads);
    config.clone_fd = true;

    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::io("vmback", "install signal handlers", e))?;
    let session = Session::new(fs, mountpoint, &config).map_err(|e| {
        Error::io(
            mountpoint,
            "mount (FUSE; needs /dev/fuse, and fusermount3 when not root)",
            e,
        )
    })?;
    let at = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    eprintln!(
        "vmback: mounted {} on {} (read-only); Ctrl-C, `vmback umount {}` or `fusermount3 -u {}` unmounts",
        source.display(),
        at.display(),
        at.display(),
        at.display()
    );
    let handle = signals.handle();
    let watcher = {
        let at = at.clone();
        thread::Builder::new()
            .name("vmback-signals".into())
            .spawn(move || on_signals(signals, &at))
            .map_err(|e| Error::io("vmback", "start signal thread", e))?
    };
    let served = session.run();
    handle.close();
    let _ = watcher.join();
    served.map_err(|e| Error::io(&at, "serve FUSE requests", e))?;
    eprintln!("vmback: unmounted {}", at.display());
    Ok(())
}

/// Unmounts on each signal: first normally (the mount stays if something still has
/// files open there, and that is said), then lazily.
fn on_signals(mut signals: Signals, at: &Path) {
    let mut tries = 0;
    for sig in signals.forever() {
        tries += 1;
        let lazy = tries > 1;
        let name = match sig {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        match unmount_path(at, lazy) {
            Ok(()) if lazy => eprintln!(
                "vmback: {name}: detached {}; files still open there keep working until closed",
                at.display()
            ),
            Ok(()) => eprintln!("vmback: {name}: unmounting {}", at.display()),
            Err(e) => eprintln!(
                "vmback: {name}: cannot unmount: {} (close what is open there, or signal again to detach it)",
                crate::error::chain(&e)
            ),
        }
    }
}

/// The mount source shown by `mount` and in /proc/self/mountinfo ("vmback:<path>";
/// commas and blanks would break the option string fusermount is given).
fn fs_name(source: &Path) -> String {
    let s: String = source
        .display()
        .to_string()
        .chars()
        .map(|c| {
            if c == ',' || c.is_whitespace() || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("vmback:{s}")
}

/// `vmback umount`: unmounts the vmback mount at `mountpoint` (refusing anything
/// else), lazily when asked.
pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let at = absolute(mountpoint);
    match find_mount(&at)? {
        None => Err(Error::Usage(format!(
            "{}: nothing is mounted there",
            at.display()
        ))),
        Some(m) if !(m.fstype.starts_with("fuse") && m.source.starts_with("vmback")) => {
            Err(Error::Usage(format!(
                "{}: not a vmback mount (it is {} from {})",
                at.display(),
                m.fstype,
                m.source
            )))
        }
        Some(_) => unmount_path(&at, lazy),
    }
}

/// Unmounts `at`: umount(2) as root, `fusermount3 -u` otherwise.
fn unmount_path(at: &Path, lazy: bool) -> Result<()> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    match rustix::mount::unmount(at, flags) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => {
            let mut last = None;
            for tool in ["fusermount3", "fusermount"] {
                let mut cmd = Command::new(tool);
                cmd.arg("-u");
                if lazy {
                    cmd.arg("-z");
                }
                match cmd.arg("--").arg(at).output() {
                    Ok(out) if out.status.success() => return Ok(()),
                    Ok(out) => {
                        return Err(Error::io(
                            at,
                            format!("{tool} -u"),
                            std::io::Error::other(
                                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                            ),
                        ))
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::io(
                at,
                "unmount (not root, and no fusermount3)",
                last.unwrap_or_else(|| std::io::Error::other("not found")),
            ))
        }
        Err(e) => Err(Error::io(at, "unmount", e.into())),
    }
}

/// `path` made absolute without touching a possibly dead FUSE mount (whose stat
/// fails with ENOTCONN): the parent is resolved, the last component kept.
fn absolute(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let name = path.file_name();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match (parent.canonicalize(), name) {
        (Ok(p), Some(n)) => p.join(n),
        _ => path.to_path_buf(),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mount at exactly `at` (the last one, if mounted over).
pub fn find_mount(at: &Path) -> Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("/proc/self/mountinfo", "read", e))?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rfind(|m| m.mountpoint == at))
}

/// Parses mountinfo (proc(5)): field 5 is the mount point, and after the " - "
/// separator come the filesystem type and the source. Octal escapes (`\040`) are
/// undone.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mountpoint = head.split(' ').nth(4)?;
            let mut rest = tail.split(' ');
            let fstype = rest.next()?;
            let source = rest.next().unwrap_or("");
            Some(MountEntry {
                mountpoint: PathBuf::from(OsString::from_vec(unescape(mountpoint))),
                fstype: fstype.to_string(),
                source: String::from_utf8_lossy(&unescape(source)).into_owned(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            let v = (u32::from(d[0] - b'0') << 6)
                | (u32::from(d[1] - b'0') << 3)
                | u32::from(d[2] - b'0');
            // OK: mountinfo escapes bytes (at most \377); a larger value keeps its low byte.
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 / /mnt/my\\040dir rw,noatime master:1 - fuse vmback:/srv/repo rw,user_id=0\n\
                    37 35 98:0 / /other rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/my dir"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].source, "vmback:/srv/repo");
        assert_eq!(m[1].fstype, "ext4");
    }

    #[test]
    fn fs_name_has_no_option_separators() {
        assert_eq!(fs_name(Path::new("/a b,c")), "vmback:/a_b_c");
    }
}
