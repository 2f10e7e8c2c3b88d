//! The FUSE filesystem: kernel requests → the tree of DESIGN.md's path grammar.
//!
//! ```text
//! repository:  <vm>/<restore point>/<disk>.img            the raw virtual disk
//!              <vm>/<restore point>/<disk>/<volume>/…     the guest's files
//!              <vm>/latest -> <newest restore point>      (symlink)
//! image file:  disk.img  and  <volume>/…                  (the grammar of `vmback ls IMAGE`)
//! ```
//!
//! Everything is read-only and, below a restore point, immutable: attributes and
//! directory entries are given to the kernel with long timeouts, and files and
//! directories are opened with `FOPEN_KEEP_CACHE` (and `FOPEN_CACHE_DIR`), so the
//! kernel's page cache keeps what was read. Only the root and the VM directories
//! change (backups finishing), so they get short timeouts and are listed afresh.
//!
//! Guest names are passed through as the bytes the guest stores; on Linux any byte
//! but '/' and NUL is fine in a name. Entries whose name holds '/' or NUL (or is
//! empty, "." or "..") cannot be shown and are left out, with a message.
//!
//! Errors: "not found" is `ENOENT`; anything else is `EIO` with one line on stderr
//! naming the path and the cause (the kernel only passes the errno on).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, Request,
};

use super::disks::{DiskSlot, DiskSource, RawDisk, Slots, VolumeSlot};
use super::inodes::{Inodes, Node};
use super::readahead::{Readahead, Sequential};
use super::repo_view::{manifest_time, usable_name, Found, RepoView};
use crate::error::{chain, Error};
use crate::guestfs::{self, GuestFs, Metadata, NodeId};
use crate::image::RunKind;
use crate::repo::manifest::Snapshot;
use crate::repo::reader::ChunkCache;

/// Timeout of attributes and entries that can change: the root, VM directories,
/// `latest` (a backup finishing adds a restore point).
const TTL_LIVE: Duration = Duration::from_secs(1);
/// Timeout of everything inside a restore point or an image (never changes).
const TTL_FIXED: Duration = Duration::from_secs(24 * 3600);
/// Largest read served at once (the kernel asks for at most 1 MiB with max_pages).
const MAX_READ: u32 = 16 << 20;
/// Directory listings whose names are kept for lookups, counted in entries: a
/// lookup after a listing then costs no path walk in the guest filesystem.
const NAME_CACHE_ENTRIES: usize = 1 << 18;
/// Guest paths remembered for error messages.
const PATH_HINTS: usize = 1 << 16;
/// Handles kept per inode when the kernel opens files by itself (each a few
/// hundred bytes plus its readahead state).
const INODE_HANDLES: usize = 4096;
/// Lookups in a guest directory after which it is listed (and its names cached).
const LIST_AFTER_MISSES: u32 = 8;
/// `lseek` whence values (Linux).
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;
/// How far `SEEK_DATA` / `SEEK_HOLE` look per step of the allocation map.
const SEEK_STEP: u64 = 1 << 30;

/// The name of the raw disk of a mounted image file.
pub const IMAGE_DISK_FILE: &str = "disk.img";

/// What the mount shows at its root.
pub enum Top {
    /// A repository: `<vm>/<restore point>/…`; one chunk cache for every disk.
    Repo {
        view: RepoView,
        cache: Arc<ChunkCache>,
    },
    /// An image file: `disk.img` and `<volume>/…` (disk slot 0).
    Image,
}

/// Settings of [`MountFs`].
pub struct FsOptions {
    /// Owner shown for synthetic entries and guest files without one.
    pub uid: u32,
    pub gid: u32,
    /// Threads that run readahead.
    pub readahead_threads: usize,
}

/// One entry of a directory listing.
struct Item {
    name: OsString,
    node: Node,
    kind: FileType,
}

/// An open file or directory.
enum Handle {
    Dir(Arc<Vec<Item>>),
    Disk {
        raw: RawDisk,
        seq: Sequential,
    },
    Guest {
        vol: Arc<VolumeSlot>,
        fs: Arc<dyn GuestFs>,
        node: NodeId,
        size: u64,
        seq: Sequential,
    },
}

/// The names of one listed guest directory, for lookups.
struct Names {
    names: HashMap<OsString, NodeId>,
    /// Whether a name missing here is surely absent (ext2/3/4; NTFS and FAT look
    /// names up case-insensitively, so their own lookup has the last word).
    case_sensitive: bool,
}

struct NameCache {
    lru: lru::LruCache<(usize, NodeId), Arc<Names>>,
    entries: usize,
}

/// The mounted filesystem.
pub struct MountFs {
    top: Top,
    inodes: Inodes,
    slots: Slots,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// Whether the kernel opens files without asking (see [`MountFs::open`]); then
    /// reads carry no handle and find theirs here, one per inode.
    no_open: bool,
    by_inode: Mutex<lru::LruCache<u64, Arc<Handle>>>,
    names: Mutex<NameCache>,
    /// Lookups per guest directory not listed yet (see `lookup_guest`).
    misses: Mutex<lru::LruCache<(usize, NodeId), u32>>,
    paths: Mutex<lru::LruCache<(usize, NodeId), Arc<str>>>,
    readahead: Readahead,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors are answered with an errno; the message was logged where it happened.
type Answer<T> = std::result::Result<T, Errno>;

fn kind_of(t: guestfs::FileType) -> FileType {
    match t {
        guestfs::FileType::Dir => FileType::Directory,
        guestfs::FileType::Symlink => FileType::Symlink,
        // Devices, FIFOs, sockets: ext4-view does not say which, so they are shown
        // as empty regular files (never as a device a host could open).
        guestfs::FileType::File | guestfs::FileType::Other => FileType::RegularFile,
    }
}

fn time(t: Option<guestfs::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    if t.secs >= 0 {
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(t.secs.unsigned_abs()))?
            .checked_add(nanos)
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.secs.unsigned_abs()))?
            .checked_add(nanos)
    }
}

/// Whether a guest name can be a FUSE directory entry as it is.
fn usable_guest_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl MountFs {
    /// A filesystem over `top`; for [`Top::Image`], `image` is the image's disk slot.
    pub fn new(top: Top, image: Option<DiskSlot>, opts: FsOptions) -> std::io::Result<Self> {
        let fs = MountFs {
            top,
            inodes: Inodes::default(),
            slots: Slots::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            no_open: false,
            by_inode: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(INODE_HANDLES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            names: Mutex::new(NameCache {
                lru: lru::LruCache::unbounded(),
                entries: 0,
            }),
            misses: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(1024).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            paths: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(PATH_HINTS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            readahead: Readahead::start(opts.readahead_threads)?,
            uid: opts.uid,
            gid: opts.gid,
            started: SystemTime::now(),
        };
        if let Some(slot) = image {
            fs.slots.disk_slot("", "", || slot);
        }
        Ok(fs)
    }

    // ------------------------------------------------------------ errors, names

    /// Logs `e` for `what` and returns its errno (ENOENT for "not found", else EIO).
    fn fail(&self, what: &str, e: &Error) -> Errno {
        match e {
            Error::NotFound { .. } => Errno::ENOENT,
            _ => {
                eprintln!("vmback mount: {what}: {}", chain(e));
                Errno::EIO
            }
        }
    }

    /// The path of `node` under the mount point, for messages.
    fn path_of(&self, node: &Node) -> String {
        match node {
            Node::Root => "/".into(),
            Node::Vm(vm) => vm.to_string(),
            Node::Snapshot(id) => self
                .repo_view()
                .and_then(|v| v.snapshot(id))
                .map(|s| format!("{}/{}", s.manifest.vm.name, s.manifest.name))
                .unwrap_or_else(|| format!("restore point {id}")),
            Node::Alias { dir, name, .. } => format!("{dir}/{name}"),
            Node::DiskImage(d) => self
                .slots
                .disk(*d)
                .map(|s| format!("{}.img", s.label))
                .unwrap_or_default(),
            Node::DiskDir(d) => self
                .slots
                .disk(*d)
                .map(|s| s.label.clone())
                .unwrap_or_default(),
            Node::Volume(v) => self
                .slots
                .volume(*v)
                .map(|s| s.label.clone())
                .unwrap_or_default(),
            Node::Guest(v, n) => {
                let vol = self
                    .slots
                    .volume(*v)
                    .map(|s| s.label.clone())
                    .unwrap_or_default();
                match lock(&self.paths).get(&(*v, *n)) {
                    Some(p) => format!("{vol}{p}"),
                    None => format!("{vol} (guest node {n})"),
                }
            }
        }
    }

    fn remember_path(&self, v: usize, parent: &Node, child: NodeId, name: &[u8]) {
        let base: Arc<str> = match parent {
            Node::Guest(pv, pn) => lock(&self.paths)
                .get(&(*pv, *pn))
                .cloned()
                .unwrap_or_default(),
            _ => Arc::from(""),
        };
        let path = format!("{base}/{}", crate::ls::display_name(name));
        lock(&self.paths).put((v, child), Arc::from(path));
    }

    fn repo_view(&self) -> Option<&RepoView> {
        match &self.top {
            Top::Repo { view, .. } => Some(view),
            Top::Image => None,
        }
    }

    fn ino(&self, node: &Node) -> INodeNo {
        INodeNo(self.inodes.ino(node))
    }

    fn node(&self, ino: INodeNo) -> Answer<Node> {
        self.inodes.node(ino.0).ok_or(Errno::ENOENT)
    }

    /// The node for guest node `n` of volume slot `v` (its root is the volume).
    fn guest_node(v: usize, n: NodeId, root: NodeId) -> Node {
        if n == root {
            Node::Volume(v)
        } else {
            Node::Guest(v, n)
        }
    }

    fn volume(&self, v: usize) -> Answer<Arc<VolumeSlot>> {
        self.slots.volume(v).ok_or(Errno::ENOENT)
    }

    fn open_fs(&self, vol: &VolumeSlot) -> Answer<(Arc<dyn GuestFs>, NodeId)> {
        vol.fs().map_err(|e| self.fail(&vol.label, &e))
    }

    /// The disk slot of disk `disk` of restore point `snap`.
    fn disk_slot(&self, snap: &Arc<Snapshot>, disk: &str) -> Option<usize> {
        let Top::Repo { view, cache } = &self.top else {
            return None;
        };
        let rec = snap
            .manifest
            .disks
            .iter()
            .find(|d| d.name == disk && usable_name(&d.name))?;
        Some(self.slots.disk_slot(&snap.id, disk, || {
            DiskSlot::new(
                format!("{}/{}/{disk}", snap.manifest.vm.name, snap.manifest.name),
                rec.virtual_size,
                manifest_time(&snap.manifest.end_time),
                DiskSource::Repo {
                    repo: view.repo().clone(),
                    snap: snap.clone(),
                    disk: disk.to_string(),
                    cache: cache.clone(),
                },
            )
        }))
    }

    // ------------------------------------------------------------ attributes

    fn dir_attr(&self, node: &Node, mtime: SystemTime, nlink: u32) -> FileAttr {
        FileAttr {
            ino: self.ino(node),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: nlink.max(2),
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 65536,
        }
    }

    fn file_attr(&self, node: &Node, kind: FileType, size: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            size,
            blocks: size.div_ceil(512),
            kind,
            perm: if kind == FileType::Symlink {
                0o777
            } else {
                0o444
            },
            nlink: 1,
            ..self.dir_attr(node, mtime, 2)
        }
    }

    fn guest_attr(&self, node: &Node, m: &Metadata) -> FileAttr {
        let mtime = time(m.mtime).unwrap_or(SystemTime::UNIX_EPOCH);
        let kind = kind_of(m.file_type);
        let size = if m.file_type == guestfs::FileType::Other {
            0
        } else {
            m.size
        };
        FileAttr {
            ino: self.ino(node),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime).unwrap_or(mtime),
            mtime,
            ctime: time(m.ctime).unwrap_or(mtime),
            crtime: time(m.crtime).unwrap_or(mtime),
            kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: m.nlink.max(1),
            uid: m.uid.unwrap_or(self.uid),
            gid: m.gid.unwrap_or(self.gid),
            rdev: 0,
            flags: 0,
            blksize: 65536,
        }
    }

    /// Attributes of `node` and how long the kernel may keep them.
    fn attr(&self, node: &Node) -> Answer<(FileAttr, Duration)> {
        match node {
            Node::Root => match self.repo_view() {
                Some(view) => {
                    let vms = view.vms();
                    let newest = vms.iter().map(|(_, t)| *t).max().unwrap_or(self.started);
                    Ok((self.dir_attr(node, newest, 2 + vms.len() as u32), TTL_LIVE))
                }
                None => {
                    let disk = self.slots.disk(0).ok_or(Errno::EIO)?;
                    Ok((self.dir_attr(node, disk.mtime, 2), TTL_FIXED))
                }
            },
            Node::Vm(vm) => {
                let view = self.repo_view().ok_or(Errno::ENOENT)?;
                let list = view.snapshots_of(vm).ok_or(Errno::ENOENT)?;
                let t = list
                    .last()
                    .map(|s| manifest_time(&s.manifest.end_time))
                    .unwrap_or(self.started);
                Ok((self.dir_attr(node, t, 2 + list.len() as u32), TTL_LIVE))
            }
            Node::Snapshot(id) => {
                let view = self.repo_view().ok_or(Errno::ENOENT)?;
                let s = view.snapshot(id).ok_or(Errno::ENOENT)?;
                let t = manifest_time(&s.manifest.end_time);
                let n = s.manifest.disks.len() as u32;
                Ok((self.dir_attr(node, t, 2 + n), TTL_FIXED))
            }
            Node::Alias { target, .. } => {
                let attr =
                    self.file_attr(node, FileType::Symlink, target.len() as u64, self.started);
                Ok((attr, TTL_LIVE))
            }
            Node::DiskImage(d) => {
                let disk = self.slots.disk(*d).ok_or(Errno::ENOENT)?;
                let attr = self.file_attr(node, FileType::RegularFile, disk.size, disk.mtime);
                Ok((attr, TTL_FIXED))
            }
            Node::DiskDir(d) => {
                let disk = self.slots.disk(*d).ok_or(Errno::ENOENT)?;
                Ok((self.dir_attr(node, disk.mtime, 2), TTL_FIXED))
            }
            Node::Volume(v) | Node::Guest(v, _) => {
                let vol = self.volume(*v)?;
                let (fs, root) = self.open_fs(&vol)?;
                let id = match node {
                    Node::Guest(_, n) => *n,
                    _ => root,
                };
                let m = fs
                    .metadata(id)
                    .map_err(|e| self.fail(&self.path_of(node), &e))?;
                Ok((self.guest_attr(node, &m), TTL_FIXED))
            }
        }
    }

    // ------------------------------------------------------------ lookups

    /// The child `name` of directory `parent`, if there is one.
    fn lookup_node(&self, parent: &Node, name: &OsStr) -> Answer<Option<Node>> {
        let text = name.to_str();
        match parent {
            Node::Root => match (&self.top, text) {
                (Top::Repo { view, .. }, Some(name)) => Ok(match view.find_at_root(name) {
                    Some(Found::Vm(vm)) => Some(Node::Vm(vm)),
                    Some(Found::Alias(target)) => Some(Node::Alias {
                        dir: Arc::from(""),
                        name: Arc::from(name),
                        target: Arc::from(target),
                    }),
                    Some(Found::Snapshot(_)) | None => None,
                }),
                (Top::Repo { .. }, None) => Ok(None),
                (Top::Image, _) if name == IMAGE_DISK_FILE => Ok(Some(Node::DiskImage(0))),
                (Top::Image, _) => self.lookup_volume(0, name),
            },
            Node::Vm(vm) => {
                let (Some(view), Some(name)) = (self.repo_view(), text) else {
                    return Ok(None);
                };
                Ok(match view.find_in_vm(vm, name) {
                    Some(Found::Snapshot(s)) => Some(Node::Snapshot(Arc::from(s.id.as_str()))),
                    Some(Found::Alias(target)) => Some(Node::Alias {
                        dir: vm.clone(),
                        name: Arc::from(name),
                        target: Arc::from(target),
                    }),
                    Some(Found::Vm(_)) | None => None,
                })
            }
            Node::Snapshot(id) => {
                let (Some(view), Some(name)) = (self.repo_view(), text) else {
                    return Ok(None);
                };
                let snap = view.snapshot(id).ok_or(Errno::ENOENT)?;
                if let Some(slot) = self.disk_slot(&snap, name) {
                    return Ok(Some(Node::DiskDir(slot)));
                }
                Ok(name
                    .strip_suffix(".img")
                    .and_then(|disk| self.disk_slot(&snap, disk))
                    .map(Node::DiskImage))
            }
            Node::DiskDir(d) => self.lookup_volume(*d, name),
            Node::Volume(v) | Node::Guest(v, _) => self.lookup_guest(*v, parent, name),
            Node::Alias { .. } | Node::DiskImage(_) => Err(Errno::ENOTDIR),
        }
    }

    /// Volume `name` of disk slot `d` (only volumes with a recognised filesystem).
    fn lookup_volume(&self, d: usize, name: &OsStr) -> Answer<Option<Node>> {
        let disk = self.slots.disk(d).ok_or(Errno::ENOENT)?;
        let view = disk.view().map_err(|e| self.fail(&disk.label, &e))?;
        let Some(name) = name.to_str() else {
            return Ok(None);
        };
        let Some(vol) = view.table().get(name) else {
            return Ok(None);
        };
        if vol.filesystem.is_none() {
            return Ok(None);
        }
        Ok(self.slots.volume_slot(d, name).map(Node::Volume))
    }

    fn lookup_guest(&self, v: usize, parent: &Node, name: &OsStr) -> Answer<Option<Node>> {
        if !usable_guest_name(name.as_bytes()) {
            return Ok(None);
        }
        let vol = self.volume(v)?;
        let (fs, root) = self.open_fs(&vol)?;
        let dir = match parent {
            Node::Guest(_, n) => *n,
            _ => root,
        };
        // Names of a listed directory answer at once. A directory looked up in again
        // and again without being listed (a program opening many files by name) is
        // listed once: one walk of the directory instead of a path walk per name.
        let mut listed = self.cached_name(v, dir, name);
        if listed.is_none() && self.count_miss(v, dir) == LIST_AFTER_MISSES {
            self.guest_items(v, parent)?;
            listed = self.cached_name(v, dir, name);
        }
        let found = match listed {
            Some(hit) => hit,
            None => fs.lookup(dir, name).map_err(|e| {
                self.fail(
                    &format!("{}/{}", self.path_of(parent), name.to_string_lossy()),
                    &e,
                )
            })?,
        };
        Ok(found.map(|n| {
            if n != root {
                self.remember_path(v, parent, n, name.as_bytes());
            }
            Self::guest_node(v, n, root)
        }))
    }

    /// `name` in the cached listing of guest directory `dir`: `Some(Some(node))`
    /// found, `Some(None)` surely absent (a case-sensitive filesystem whose listing
    /// lacks it), `None` unknown (not listed, or a case-insensitive filesystem).
    fn cached_name(&self, v: usize, dir: NodeId, name: &OsStr) -> Option<Option<NodeId>> {
        let mut cache = lock(&self.names);
        let names = cache.lru.get(&(v, dir))?;
        match names.names.get(name) {
            Some(&n) => Some(Some(n)),
            None if names.case_sensitive => Some(None),
            None => None,
        }
    }

    /// Counts a lookup in a directory that was not listed; returns the count.
    fn count_miss(&self, v: usize, dir: NodeId) -> u32 {
        let mut misses = lock(&self.misses);
        let n = misses
            .get(&(v, dir))
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        misses.put((v, dir), n);
        n
    }

    // ------------------------------------------------------------ listings

    /// The entries of directory `node` (with "." and "..").
    fn listing(&self, node: &Node) -> Answer<Vec<Item>> {
        let me = node.clone();
        let mut items = vec![
            Item {
                name: ".".into(),
                node: me.clone(),
                kind: FileType::Directory,
            },
            Item {
                name: "..".into(),
                node: Node::Root,
                kind: FileType::Directory,
            },
        ];
        let dir = |name: &str, node: Node| Item {
            name: name.into(),
            node,
            kind: FileType::Directory,
        };
        match node {
            Node::Root => match &self.top {
                Top::Repo { view, .. } => {
                    view.refresh_logged();
                    for (vm, _) in view.vms() {
                        items.push(dir(&vm, Node::Vm(vm.clone())));
                    }
                }
                Top::Image => {
                    items.push(Item {
                        name: IMAGE_DISK_FILE.into(),
                        node: Node::DiskImage(0),
                        kind: FileType::RegularFile,
                    });
                    items.extend(self.volume_items(0)?);
                }
            },
            Node::Vm(vm) => {
                let view = self.repo_view().ok_or(Errno::ENOENT)?;
                view.refresh_logged();
                let list = view.snapshots_of(vm).ok_or(Errno::ENOENT)?;
                for s in &list {
                    items.push(dir(
                        &s.manifest.name,
                        Node::Snapshot(Arc::from(s.id.as_str())),
                    ));
                }
                let newest = list.last().map(|s| s.manifest.name.as_str());
                if let Some(target) =
                    newest.filter(|_| !list.iter().any(|s| s.manifest.name == "latest"))
                {
                    items.push(Item {
                        name: "latest".into(),
                        node: Node::Alias {
                            dir: vm.clone(),
                            name: Arc::from("latest"),
                            target: Arc::from(target),
                        },
                        kind: FileType::Symlink,
                    });
                }
            }
            Node::Snapshot(id) => {
                let view = self.repo_view().ok_or(Errno::ENOENT)?;
                let snap = view.snapshot(id).ok_or(Errno::ENOENT)?;
                for d in &snap.manifest.disks {
                    let Some(slot) = self.disk_slot(&snap, &d.name) else {
                        continue;
                    };
                    items.push(Item {
                        name: format!("{}.img", d.name).into(),
                        node: Node::DiskImage(slot),
                        kind: FileType::RegularFile,
                    });
                    items.push(dir(&d.name, Node::DiskDir(slot)));
                }
            }
            Node::DiskDir(d) => items.extend(self.volume_items(*d)?),
            Node::Volume(v) | Node::Guest(v, _) => items.extend(self.guest_items(*v, node)?),
            Node::Alias { .. } | Node::DiskImage(_) => return Err(Errno::ENOTDIR),
        }
        Ok(items)
    }

    fn volume_items(&self, d: usize) -> Answer<Vec<Item>> {
        let disk = self.slots.disk(d).ok_or(Errno::ENOENT)?;
        let view = disk.view().map_err(|e| self.fail(&disk.label, &e))?;
        Ok(view
            .table()
            .volumes
            .iter()
            .filter(|v| v.filesystem.is_some())
            .filter_map(|v| {
                let slot = self.slots.volume_slot(d, &v.name)?;
                Some(Item {
                    name: v.name.clone().into(),
                    node: Node::Volume(slot),
                    kind: FileType::Directory,
                })
            })
            .collect())
    }

    fn guest_items(&self, v: usize, node: &Node) -> Answer<Vec<Item>> {
        let vol = self.volume(v)?;
        let (fs, root) = self.open_fs(&vol)?;
        let dir = match node {
            Node::Guest(_, n) => *n,
            _ => root,
        };
        let entries = fs
            .read_dir(dir)
            .map_err(|e| self.fail(&self.path_of(node), &e))?;
        let mut items = Vec::with_capacity(entries.len());
        let mut names = HashMap::with_capacity(entries.len());
        let mut hidden = 0usize;
        for e in entries {
            let bytes = e.name.as_bytes();
            if !usable_guest_name(bytes) {
                hidden += 1;
                continue;
            }
            self.remember_path(v, node, e.node, bytes);
            names.insert(e.name.clone(), e.node);
            items.push(Item {
                node: Self::guest_node(v, e.node, root),
                kind: kind_of(e.file_type),
                name: e.name,
            });
        }
        if hidden > 0 {
            eprintln!(
                "vmback mount: {}: {hidden} entries not shown: their names hold '/' or NUL (or are empty, \".\" or \"..\")",
                self.path_of(node)
            );
        }
        let names = Names {
            names,
            case_sensitive: fs.kind().starts_with("ext"),
        };
        let mut cache = lock(&self.names);
        cache.entries += names.names.len();
        if let Some(old) = cache.lru.put((v, dir), Arc::new(names)) {
            cache.entries -= old.names.len();
        }
        while cache.entries > NAME_CACHE_ENTRIES {
            match cache.lru.pop_lru() {
                Some((_, old)) => cache.entries -= old.names.len(),
                None => break,
            }
        }
        Ok(items)
    }

    /// Whether the listing of `node` never changes (so the kernel may cache it).
    fn fixed(node: &Node) -> bool {
        !matches!(node, Node::Root | Node::Vm(_) | Node::Alias { .. })
    }

    // ------------------------------------------------------------ handles

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn handle(&self, fh: FileHandle) -> Answer<Arc<Handle>> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The handle a read or seek of `ino` comes with: its open's, or, when the
    /// kernel opened the file without asking (`fh` 0), the inode's own.
    fn handle_of(&self, ino: INodeNo, fh: FileHandle) -> Answer<Arc<Handle>> {
        if fh.0 != 0 || !self.no_open {
            return self.handle(fh);
        }
        if let Some(h) = lock(&self.by_inode).get(&ino.0) {
            return Ok(h.clone());
        }
        let h = Arc::new(self.open_file(&self.node(ino)?)?);
        lock(&self.by_inode).put(ino.0, h.clone());
        Ok(h)
    }

    fn open_file(&self, node: &Node) -> Answer<Handle> {
        match node {
            Node::DiskImage(d) => {
                let disk = self.slots.disk(*d).ok_or(Errno::ENOENT)?;
                let raw = disk.raw().map_err(|e| self.fail(&self.path_of(node), &e))?;
                Ok(Handle::Disk {
                    raw,
                    seq: Sequential::default(),
                })
            }
            Node::Volume(_) => Err(Errno::EISDIR),
            Node::Guest(v, n) => {
                let vol = self.volume(*v)?;
                let (fs, _) = self.open_fs(&vol)?;
                let m = fs
                    .metadata(*n)
                    .map_err(|e| self.fail(&self.path_of(node), &e))?;
                let size = match m.file_type {
                    guestfs::FileType::File => m.size,
                    guestfs::FileType::Other => 0,
                    guestfs::FileType::Dir => return Err(Errno::EISDIR),
                    guestfs::FileType::Symlink => return Err(Errno::ELOOP),
                };
                Ok(Handle::Guest {
                    vol,
                    fs,
                    node: *n,
                    size,
                    seq: Sequential::default(),
                })
            }
            Node::Alias { .. } => Err(Errno::ELOOP),
            _ => Err(Errno::EISDIR),
        }
    }

    /// Reads `size` bytes at `offset` of an open file (fewer only at its end).
    fn read_handle(
        &self,
        h: &Arc<Handle>,
        ino: INodeNo,
        offset: u64,
        size: u32,
    ) -> Answer<Vec<u8>> {
        let size = size.min(MAX_READ);
        match &**h {
            Handle::Dir(_) => Err(Errno::EISDIR),
            Handle::Disk { raw, seq } => {
                let total = raw.size();
                let len = total.saturating_sub(offset).min(u64::from(size)) as usize;
                let mut buf = vec![0u8; len];
                raw.read_exact_at(offset, &mut buf).map_err(|e| {
                    let node = self.inodes.node(ino.0).unwrap_or(Node::Root);
                    self.fail(
                        &format!("{} at offset {offset:#x}", self.path_of(&node)),
                        &e,
                    )
                })?;
                if let Some(range) = seq.on_read(offset, len as u64, total, raw.unit()) {
                    let raw = raw.clone();
                    self.readahead.submit(move || {
                        let _ = raw.prefetch(range);
                    });
                }
                Ok(buf)
            }
            Handle::Guest {
                vol,
                fs,
                node,
                size: file_size,
                seq,
            } => {
                let len = file_size.saturating_sub(offset).min(u64::from(size)) as usize;
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = fs
                        .read_at(*node, offset + got as u64, &mut buf[got..])
                        .map_err(|e| {
                            let node = self.inodes.node(ino.0).unwrap_or(Node::Root);
                            self.fail(
                                &format!("{} at offset {offset:#x}", self.path_of(&node)),
                                &e,
                            )
                        })?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                if got < len {
                    let node = self.inodes.node(ino.0).unwrap_or(Node::Root);
                    eprintln!(
                        "vmback mount: {}: file is {file_size} bytes but reading stopped at {}",
                        self.path_of(&node),
                        offset + got as u64
                    );
                    return Err(Errno::EIO);
                }
                let unit = vol.disk.raw().map(|r| r.unit()).unwrap_or(1 << 20);
                if let Some(range) = seq.on_read(offset, len as u64, *file_size, unit) {
                    let (fs, node) = (fs.clone(), *node);
                    self.readahead
                        .submit(move || prefetch_guest(&*fs, node, range));
                }
                Ok(buf)
            }
        }
    }

    /// `SEEK_DATA` / `SEEK_HOLE` on an open file: from the allocation map of a raw
    /// disk (so `qemu-img` and `cp --sparse` skip what was never stored); a guest
    /// file is all data.
    fn seek(&self, h: &Handle, offset: u64, whence: i32) -> Answer<u64> {
        let (size, raw) = match h {
            Handle::Disk { raw, .. } => (raw.size(), Some(raw)),
            Handle::Guest { size, .. } => (*size, None),
            Handle::Dir(_) => return Err(Errno::EINVAL),
        };
        if offset >= size {
            return Err(Errno::ENXIO);
        }
        let Some(raw) = raw else {
            return Ok(if whence == SEEK_DATA { offset } else { size });
        };
        let mut pos = offset;
        while pos < size {
            let end = pos.saturating_add(SEEK_STEP).min(size);
            let extents = raw.extents(pos..end).map_err(|e| self.fail("seek", &e))?;
            for x in extents {
                let data = x.kind == RunKind::Data;
                if data == (whence == SEEK_DATA) {
                    return Ok(x.start.max(offset));
                }
            }
            pos = end;
        }
        if whence == SEEK_DATA {
            Err(Errno::ENXIO)
        } else {
            Ok(size)
        }
    }
}

/// Reads a guest file range into a scratch buffer: the chunks under it land in the
/// chunk cache, ahead of the reader.
fn prefetch_guest(fs: &dyn GuestFs, node: NodeId, range: std::ops::Range<u64>) {
    let mut buf = vec![0u8; (range.end - range.start).min(1 << 20) as usize];
    let mut pos = range.start;
    while pos < range.end {
        let want = ((range.end - pos) as usize).min(buf.len());
        match fs.read_at(node, pos, &mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => pos += n as u64,
        }
    }
}

impl Filesystem for MountFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is only an improvement: a kernel without one still works.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_max_write(1 << 20);
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let answer = (|| {
            let parent = self.node(parent)?;
            let child = self.lookup_node(&parent, name)?.ok_or(Errno::ENOENT)?;
            self.attr(&child)
        })();
        match answer {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.attr(&n)) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let answer = (|| -> Answer<Vec<u8>> {
            match self.node(ino)? {
                Node::Alias { target, .. } => Ok(target.as_bytes().to_vec()),
                node @ Node::Guest(v, n) => {
                    let vol = self.volume(v)?;
                    let (fs, _) = self.open_fs(&vol)?;
                    let t = fs
                        .read_link(n)
                        .map_err(|e| self.fail(&self.path_of(&node), &e))?;
                    Ok(t.into_vec())
                }
                _ => Err(Errno::EINVAL),
            }
        })();
        match answer {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    /// Where the kernel supports it, the first open answers ENOSYS: from then on
    /// the kernel opens files by itself, keeping their page cache (a restore point
    /// never changes), and the round trip per open is gone (`cp -r` of 10,000 small
    /// files spent most of its time, warm, in opens: 77 µs each).
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        if self.no_open {
            reply.error(Errno::ENOSYS);
            return;
        }
        match self.node(ino).and_then(|n| self.open_file(&n)) {
            Ok(h) => reply.opened(self.add_handle(h), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self
            .handle_of(ino, fh)
            .and_then(|h| self.read_handle(&h, ino, offset, size))
        {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let answer = self.node(ino).and_then(|n| Ok((self.listing(&n)?, n)));
        match answer {
            Ok((items, node)) => {
                let flags = if Self::fixed(&node) {
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
                } else {
                    FopenFlags::empty()
                };
                reply.opened(self.add_handle(Handle::Dir(Arc::new(items))), flags);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.handle(fh).map(|h| match &*h {
            Handle::Dir(items) => Some(items.clone()),
            _ => None,
        }) {
            Ok(Some(items)) => items,
            Ok(None) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, item) in items.iter().enumerate().skip(start) {
            if reply.add(self.ino(&item.node), i as u64 + 1, item.kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.handle(fh).map(|h| match &*h {
            Handle::Dir(items) => Some(items.clone()),
            _ => None,
        }) {
            Ok(Some(items)) => items,
            Ok(None) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, item) in items.iter().enumerate().skip(start) {
            // A volume whose filesystem is not open yet is not opened for a
            // listing: its entry goes out with stand-in attributes that expire at
            // once, so the first real visit opens it. The same for an entry whose
            // metadata cannot be read: the error comes when it is visited.
            let lazy = matches!(item.node, Node::Volume(v)
                if self.slots.volume(v).is_some_and(|s| s.fs_if_open().is_none()));
            let (attr, ttl) = if lazy || item.name == "." || item.name == ".." {
                (self.stand_in(item), Duration::ZERO)
            } else {
                self.attr(&item.node)
                    .unwrap_or_else(|_| (self.stand_in(item), Duration::ZERO))
            };
            if reply.add(
                self.ino(&item.node),
                i as u64 + 1,
                &item.name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            // The kernel handles SEEK_SET/CUR/END itself.
            return reply.error(Errno::EINVAL);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self
            .handle_of(ino, fh)
            .and_then(|h| self.seek(&h, offset, whence))
        {
            Ok(pos) => reply.offset(i64::try_from(pos).unwrap_or(i64::MAX)),
            Err(e) => reply.error(e),
        }
    }
}

impl MountFs {
    /// Attributes for a listed entry that are not known (yet): its type only.
    fn stand_in(&self, item: &Item) -> FileAttr {
        if item.kind == FileType::Directory {
            self.dir_attr(&item.node, self.started, 2)
        } else {
            self.file_attr(&item.node, item.kind, 0, self.started)
        }
    }
}
