//! Disks and volumes of the mounted tree, opened on first visit and then kept for
//! the life of the mount: a disk slot loads its index (or opens its image) when its
//! `.img` is opened or its directory listed, reads the partition table when its
//! directory is listed, and a volume slot opens its filesystem when the volume is
//! visited. Each is opened exactly once (under the slot's own lock), so the node ids
//! a filesystem hands out always belong to the one instance the mount uses.
//!
//! Slots are numbered in the order they are first visited; inode numbers are
//! derived from those numbers (see `inodes.rs`).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::browse::DiskView;
use crate::error::Result;
use crate::guestfs::{GuestFs, NodeId};
use crate::image::{self, DiskImage, Extent};
use crate::io::ReadAt;
use crate::repo::manifest::Snapshot;
use crate::repo::reader::{ChunkCache, RestorePointDisk};
use crate::repo::Repository;

/// Where a disk's bytes come from.
pub enum DiskSource {
    /// Disk `disk` of a restore point; chunks go through the mount's shared cache.
    Repo {
        repo: Arc<Repository>,
        snap: Arc<Snapshot>,
        disk: String,
        cache: Arc<ChunkCache>,
    },
    /// An image file, already opened (its chain resolved) at mount time.
    Image(Arc<image::Disk>),
}

/// The raw bytes of an opened disk.
#[derive(Clone)]
pub enum RawDisk {
    Repo(Arc<RestorePointDisk>),
    Image(Arc<image::Disk>),
}

impl RawDisk {
    pub fn size(&self) -> u64 {
        match self {
            RawDisk::Repo(d) => d.size(),
            RawDisk::Image(d) => d.size(),
        }
    }

    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            RawDisk::Repo(d) => d.read_exact_at(offset, buf),
            RawDisk::Image(d) => d.read_exact_at(offset, buf),
        }
    }

    pub fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        match self {
            RawDisk::Repo(d) => d.extents(range),
            RawDisk::Image(d) => d.extents(range),
        }
    }

    /// Warms the chunk cache for `range` (readahead). Image files are read through
    /// the host's page cache, which does its own readahead: nothing to do.
    pub fn prefetch(&self, range: Range<u64>) -> Result<()> {
        match self {
            RawDisk::Repo(d) => d.preload(range),
            RawDisk::Image(_) => Ok(()),
        }
    }

    /// Unit in which readahead is worth doing: whole chunks, at least 1 MiB (with
    /// 256 KiB chunks, a one-chunk unit kept only 1 MiB in flight ahead of a
    /// sequential reader); 1 MiB for images.
    pub fn unit(&self) -> u64 {
        match self {
            RawDisk::Repo(d) => u64::from(d.index().chunk_size).max(1 << 20),
            RawDisk::Image(_) => 1 << 20,
        }
    }

    fn as_read_at(&self) -> Arc<dyn ReadAt> {
        match self {
            RawDisk::Repo(d) => d.clone(),
            RawDisk::Image(d) => d.clone(),
        }
    }
}

/// One disk of the tree.
pub struct DiskSlot {
    /// `<vm>/<restore point>/<disk>` or the image path: names the disk in messages.
    pub label: String,
    /// Virtual size, known without opening anything (from the manifest).
    pub size: u64,
    /// Modification time shown for the disk's entries.
    pub mtime: SystemTime,
    source: DiskSource,
    raw: Mutex<Option<RawDisk>>,
    view: Mutex<Option<Arc<DiskView>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskSlot {
    pub fn new(label: String, size: u64, mtime: SystemTime, source: DiskSource) -> Self {
        DiskSlot {
            label,
            size,
            mtime,
            source,
            raw: Mutex::new(None),
            view: Mutex::new(None),
        }
    }

    /// Opens image file `path` (its parent chain resolved) as the one disk of an
    /// image mount; warnings about the image go to stderr.
    pub fn open_image(path: &Path) -> Result<Self> {
        let disk = image::open(path)?;
        for w in disk.warnings() {
            eprintln!("vmback: warning: {w}");
        }
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(DiskSlot::new(
            path.display().to_string(),
            disk.size(),
            mtime,
            DiskSource::Image(Arc::new(disk)),
        ))
    }

    /// The disk's bytes (loads the index of a restore point's disk on first use).
    pub fn raw(&self) -> Result<RawDisk> {
        let mut raw = lock(&self.raw);
        if let Some(r) = raw.as_ref() {
            return Ok(r.clone());
        }
        let opened = match &self.source {
            DiskSource::Repo {
                repo,
                snap,
                disk,
                cache,
            } => {
                let rec = snap.manifest.disks.iter().find(|d| &d.name == disk);
                let index = match rec {
                    Some(rec) => repo.load_index(&rec.index)?,
                    None => {
                        return Err(crate::Error::NotFound {
                            fs: self.label.clone(),
                            path: disk.clone(),
                        })
                    }
                };
                RawDisk::Repo(Arc::new(RestorePointDisk::with_cache(
                    repo.clone(),
                    index,
                    self.label.clone(),
                    cache.clone(),
                )))
            }
            DiskSource::Image(d) => RawDisk::Image(d.clone()),
        };
        *raw = Some(opened.clone());
        Ok(opened)
    }

    /// The disk's volumes (reads the partition table on first use).
    pub fn view(&self) -> Result<Arc<DiskView>> {
        let mut view = lock(&self.view);
        if let Some(v) = view.as_ref() {
            return Ok(v.clone());
        }
        let raw = self.raw()?;
        let v = Arc::new(DiskView::new(raw.as_read_at(), &self.label)?);
        *view = Some(v.clone());
        Ok(v)
    }
}

/// One volume of a disk, and its filesystem once opened.
pub struct VolumeSlot {
    pub disk: Arc<DiskSlot>,
    /// `p1`, `p2`, … or `whole`.
    pub name: String,
    /// `<disk label>/<volume>`, for messages.
    pub label: String,
    fs: Mutex<Option<(Arc<dyn GuestFs>, NodeId)>>,
}

impl VolumeSlot {
    /// The filesystem and its root node (opened on first use).
    pub fn fs(&self) -> Result<(Arc<dyn GuestFs>, NodeId)> {
        let mut fs = lock(&self.fs);
        if let Some((f, root)) = fs.as_ref() {
            return Ok((f.clone(), *root));
        }
        let (_, opened) = self.disk.view()?.filesystem(&self.name)?;
        let root = opened.root();
        *fs = Some((opened.clone(), root));
        Ok((opened, root))
    }

    /// The filesystem if it is open already (never opens it).
    pub fn fs_if_open(&self) -> Option<(Arc<dyn GuestFs>, NodeId)> {
        lock(&self.fs).clone()
    }
}

/// Key of a disk slot: (restore point id, disk name); ("", "") for an image.
type DiskKey = (String, String);

/// All disk and volume slots, numbered in the order of first visit.
#[derive(Default)]
pub struct Slots {
    disks: Mutex<Numbered<DiskKey, DiskSlot>>,
    volumes: Mutex<Numbered<(usize, String), VolumeSlot>>,
}

struct Numbered<K, V> {
    index: HashMap<K, usize>,
    items: Vec<Arc<V>>,
}

impl<K, V> Default for Numbered<K, V> {
    fn default() -> Self {
        Numbered {
            index: HashMap::new(),
            items: Vec::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Numbered<K, V> {
    fn get_or_insert(&mut self, key: K, make: impl FnOnce() -> V) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.items.len();
        self.items.push(Arc::new(make()));
        self.index.insert(key, i);
        i
    }
}

impl Slots {
    /// The slot number of disk `disk` of restore point `snap_id`, creating the slot
    /// with `make` on first use.
    pub fn disk_slot(&self, snap_id: &str, disk: &str, make: impl FnOnce() -> DiskSlot) -> usize {
        lock(&self.disks).get_or_insert((snap_id.to_string(), disk.to_string()), make)
    }

    pub fn disk(&self, slot: usize) -> Option<Arc<DiskSlot>> {
        lock(&self.disks).items.get(slot).cloned()
    }

    /// The slot number of volume `name` of disk slot `disk`.
    pub fn volume_slot(&self, disk: usize, name: &str) -> Option<usize> {
        let d = self.disk(disk)?;
        Some(
            lock(&self.volumes).get_or_insert((disk, name.to_string()), || VolumeSlot {
                label: format!("{}/{name}", d.label),
                disk: d,
                name: name.to_string(),
                fs: Mutex::new(None),
            }),
        )
    }

    pub fn volume(&self, slot: usize) -> Option<Arc<VolumeSlot>> {
        lock(&self.volumes).items.get(slot).cloned()
    }
}
