//! ext2/3/4 through `ext4-view` (journal replayed in memory, metadata checksums
//! verified, extents, htree directories, fast and slow symlinks).
//!
//! ext4-view's API is by path and its `Ext4` is `!Send`, so: instances live on
//! worker threads ([`Confined`]), and a [`NodeId`] is an index into a table of
//! interned guest paths (root = 0). Not exposed by ext4-view 1.0, hence not
//! available here: inode numbers (so hard links restore as separate files), link
//! counts and extended attributes.
//!
//! Used space ([`GuestFs::usage`]) comes from the superblock, parsed here
//! ([`vmback_parsers::ext::superblock`]) because ext4-view keeps it private.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex};

use ext4_view::{Ext4, Ext4Error, Ext4Read};
use vmback_parsers::ext::superblock::{
    parse_ext_superblock, EXT_SUPERBLOCK_BYTES, EXT_SUPERBLOCK_OFFSET,
};

use super::confined::Confined;
use super::{DirEntry, FileType, FsUsage, GuestFs, Metadata, NodeId, Timestamp};
use crate::error::{Error, Result};
use crate::io::ReadAt;

/// Worker threads per ext4 filesystem (each loads its own `Ext4`; loading replays
/// the journal, so more would cost start-up time for little gain on 2–4 cores).
const WORKERS: usize = 2;

/// Entries of the metadata cache (a few MiB at most).
const META_CACHE_ENTRIES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(65_536) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

/// An ext2/3/4 filesystem on a volume.
pub struct Ext4Fs {
    pool: Confined<Worker>,
    nodes: Mutex<Interner>,
    /// Metadata read with each directory listing (by inode, no path walk), so that
    /// walking a tree does not resolve every path from the root again.
    meta_cache: Mutex<lru::LruCache<NodeId, Metadata>>,
    name: String,
    kind: &'static str,
    label: Option<String>,
    /// The volume, for the superblock's block counts.
    volume: Arc<dyn ReadAt>,
}

/// One worker's state: the filesystem and its open files ([`Cursors`]).
struct Worker {
    fs: Ext4,
    cursors: Cursors,
}

/// Open files a worker keeps, most recently used first, each where its last read
/// ended. ext4-view's `seek_to` walks the file's blocks from its start, so a seek
/// costs time in proportion to the offset: reading a 1 GiB file through the mount in
/// 128 KiB requests spent 48% of the CPU there. A read that continues a cursor
/// needs no seek (a sequential reader, and the readahead running ahead of it, each
/// continue their own), and a short gap ahead of a cursor is read over when that
/// is cheaper than seeking from the start.
#[derive(Default)]
struct Cursors(std::collections::VecDeque<(NodeId, ext4_view::File)>);

/// Cursors per worker, and per file within them.
const CURSORS: usize = 8;
const CURSORS_PER_FILE: usize = 3;
/// Reading a block costs about this many times what stepping over one does in a
/// seek (a chunk-cache lookup and a copy against an iterator step); measured ~250.
const READ_OVER_STEP: u64 = 256;
/// Never read over more than this to reach an offset.
const MAX_READ_OVER: u64 = 2 << 20;

impl Cursors {
    /// Takes a cursor on `file` at `offset` out of the set: one that is there
    /// already, one a short gap behind read forward, a new one (`open`), or the
    /// oldest of the file's sought, whichever is cheapest. Give it back with
    /// [`Cursors::put`].
    fn take(
        &mut self,
        file: NodeId,
        offset: u64,
        open: impl FnOnce() -> std::result::Result<ext4_view::File, Ext4Error>,
    ) -> std::result::Result<ext4_view::File, Ext4Error> {
        let mine = |c: &(NodeId, ext4_view::File)| c.0 == file;
        let found = self
            .0
            .iter()
            .position(|c| mine(c) && c.1.position() == offset)
            .or_else(|| {
                self.0
                    .iter()
                    .position(|c| mine(c) && read_over_pays(c.1.position(), offset))
            });
        let taken = match found {
            Some(i) => self.0.remove(i),
            None if self.0.iter().filter(|c| mine(c)).count() >= CURSORS_PER_FILE => {
                self.0.iter().rposition(mine).and_then(|i| self.0.remove(i))
            }
            None => None,
        };
        let mut f = match taken {
            Some((_, f)) => f,
            None => open()?,
        };
        let pos = f.position();
        if read_over_pays(pos, offset) {
            read_full(&mut f, &mut vec![0u8; (offset - pos) as usize])?; // ≤ MAX_READ_OVER
        }
        // Past the end there is nothing to read (and a seek would walk that far).
        if f.position() != offset && offset < f.metadata().len() {
            f.seek_to(offset)?;
        }
        Ok(f)
    }

    /// Returns a cursor taken with [`Cursors::take`], as the most recent.
    fn put(&mut self, file: NodeId, f: ext4_view::File) {
        if self.0.len() >= CURSORS {
            self.0.pop_back();
        }
        self.0.push_front((file, f));
    }
}

/// Reads from `f` until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut ext4_view::File, buf: &mut [u8]) -> std::result::Result<usize, Ext4Error> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_bytes(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Whether reading from `pos` up to `offset` is cheaper than seeking to `offset`.
fn read_over_pays(pos: u64, offset: u64) -> bool {
    pos < offset && offset - pos <= MAX_READ_OVER && (offset - pos) * READ_OVER_STEP < offset
}

#[derive(Default)]
struct Interner {
    paths: Vec<Vec<u8>>,
    ids: HashMap<Vec<u8>, NodeId>,
}

impl Interner {
    fn intern(&mut self, path: Vec<u8>) -> NodeId {
        if let Some(&id) = self.ids.get(&path) {
            return id;
        }
        let id = self.paths.len() as NodeId;
        self.paths.push(path.clone());
        self.ids.insert(path, id);
        id
    }
}

/// `ReadAt` as ext4-view's reader.
struct VolumeReader(Arc<dyn ReadAt>);

impl Ext4Read for VolumeReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_exact_at(start_byte, dst)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    }
}

impl Ext4Fs {
    /// Loads the filesystem (superblock, group descriptors, journal replay).
    pub fn open(volume: Arc<dyn ReadAt>, name: &str) -> Result<Self> {
        let fs_name = format!("{name} (ext)");
        let err_name = fs_name.clone();
        let vol = volume.clone();
        let pool = Confined::start(WORKERS, name, move || {
            let fs = Ext4::load(Box::new(VolumeReader(vol.clone())))
                .map_err(|e| fs_error(&err_name, "superblock / journal", e))?;
            Ok(Worker {
                fs,
                cursors: Cursors::default(),
            })
        })?;
        let label = pool
            .run(|w| w.fs.label().to_str().ok().map(str::to_string))?
            .filter(|l| !l.is_empty());
        let mut head = vec![0u8; 4096.min(volume.size() as usize)];
        volume.read_exact_at(0, &mut head)?;
        let kind = vmback_parsers::fsprobe::probe_fs(&head)
            .map(|s| s.kind.name())
            .unwrap_or("ext4");
        let mut nodes = Interner::default();
        nodes.intern(b"/".to_vec());
        Ok(Ext4Fs {
            pool,
            nodes: Mutex::new(nodes),
            meta_cache: Mutex::new(lru::LruCache::new(META_CACHE_ENTRIES)),
            name: fs_name,
            kind,
            label,
            volume,
        })
    }

    fn path_of(&self, node: NodeId) -> Result<Vec<u8>> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .paths
            .get(node as usize)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                fs: self.name.clone(),
                path: format!("<node {node}>"),
            })
    }

    fn intern(&self, path: Vec<u8>) -> NodeId {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .intern(path)
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn fs_error(fs: &str, path: &str, e: Ext4Error) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound {
            fs: fs.to_string(),
            path: path.to_string(),
        },
        e => Error::GuestFs {
            fs: fs.to_string(),
            path: path.to_string(),
            source: Box::new(e),
        },
    }
}

fn ts(t: ext4_view::Timestamp) -> Timestamp {
    Timestamp {
        secs: t.seconds(),
        nanos: t.nanoseconds(),
    }
}

fn file_type(t: ext4_view::FileType) -> FileType {
    if t.is_dir() {
        FileType::Dir
    } else if t.is_regular_file() {
        FileType::File
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Other
    }
}

fn metadata(m: &ext4_view::Metadata) -> Metadata {
    Metadata {
        file_type: file_type(m.file_type()),
        size: m.len(),
        mode: u32::from(m.mode()) & 0o7777,
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        nlink: 1,
        mtime: Some(ts(m.modified())),
        atime: Some(ts(m.accessed())),
        ctime: None,
        crtime: m.created().map(ts),
        attributes: None,
        link_id: None,
    }
}

impl GuestFs for Ext4Fs {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn root(&self) -> NodeId {
        0
    }

    fn lookup(&self, dir: NodeId, name: &OsStr) -> Result<Option<NodeId>> {
        let name = name.as_bytes();
        if name.is_empty()
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            return Ok(None);
        }
        let path = join(&self.path_of(dir)?, name);
        let p = path.clone();
        let fs_name = self.name.clone();
        let found = self
            .pool
            .run(move |w| match w.fs.symlink_metadata(p.as_slice()) {
                Ok(_) => Ok(true),
                Err(Ext4Error::NotFound) => Ok(false),
                Err(e) => Err(fs_error(&fs_name, &String::from_utf8_lossy(&p), e)),
            })??;
        Ok(found.then(|| self.intern(path)))
    }

    fn metadata(&self, node: NodeId) -> Result<Metadata> {
        if let Some(m) = self
            .meta_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
        {
            return Ok(m.clone());
        }
        let path = self.path_of(node)?;
        let fs_name = self.name.clone();
        self.pool.run(move |w| {
            w.fs.symlink_metadata(path.as_slice())
                .map(|m| metadata(&m))
                .map_err(|e| fs_error(&fs_name, &String::from_utf8_lossy(&path), e))
        })?
    }

    fn read_dir(&self, dir: NodeId) -> Result<Vec<DirEntry>> {
        let path = self.path_of(dir)?;
        let fs_name = self.name.clone();
        let p = path.clone();
        type Listed = Vec<(Vec<u8>, FileType, Option<Metadata>)>;
        let entries: Listed = self.pool.run(move |w| -> Result<Listed> {
            let err = |e| fs_error(&fs_name, &String::from_utf8_lossy(&p), e);
            let mut out = Vec::new();
            for entry in w.fs.read_dir(p.as_slice()).map_err(err)? {
                let entry = entry.map_err(err)?;
                let name = entry.file_name().as_ref().to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                // By inode: no path resolution (a damaged inode just leaves it uncached).
                let meta = entry.metadata().ok().map(|m| metadata(&m));
                out.push((name, file_type(entry.file_type().map_err(err)?), meta));
            }
            Ok(out)
        })??;
        Ok(entries
            .into_iter()
            .map(|(name, file_type, meta)| {
                let node = self.intern(join(&path, &name));
                if let Some(m) = meta {
                    self.meta_cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .put(node, m);
                }
                DirEntry {
                    name: OsString::from_vec(name),
                    node,
                    file_type,
                }
            })
            .collect())
    }

    fn read_at(&self, file: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let path = self.path_of(file)?;
        let fs_name = self.name.clone();
        let len = buf.len();
        let data = self.pool.run(move |w| -> Result<Vec<u8>> {
            let err = |e| fs_error(&fs_name, &String::from_utf8_lossy(&path), e);
            let Worker { fs, cursors } = w;
            let mut f = cursors
                .take(file, offset, || fs.open(path.as_slice()))
                .map_err(err)?;
            let size = f.metadata().len();
            if offset >= size {
                return Ok(Vec::new());
            }
            let mut out = vec![0u8; len.min((size - offset) as usize)];
            let got = read_full(&mut f, &mut out).map_err(err)?;
            out.truncate(got);
            cursors.put(file, f);
            Ok(out)
        })??;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    fn read_link(&self, node: NodeId) -> Result<OsString> {
        let path = self.path_of(node)?;
        let fs_name = self.name.clone();
        self.pool.run(move |w| {
            w.fs.read_link(path.as_slice())
                .map(|t| OsString::from_vec(t.as_ref().to_vec()))
                .map_err(|e| fs_error(&fs_name, &String::from_utf8_lossy(&path), e))
        })?
    }

    /// `dumpe2fs -h` semantics: total = "Block count", free = "Free blocks" (blocks
    /// reserved for root count as free: statfs's f_bfree, not df's "Avail"), used =
    /// the difference, so the filesystem's own metadata (inode tables, bitmaps, the
    /// journal) counts as used, as `df` shows it with the minixdf mount option (by
    /// default df subtracts that overhead from the size instead). The superblock's
    /// free count is the one the kernel writes at unmount and at freeze; the journal
    /// is not replayed for it (dumpe2fs does not replay either).
    fn usage(&self) -> Result<Option<FsUsage>> {
        let mut sb = vec![0u8; EXT_SUPERBLOCK_BYTES];
        self.volume.read_exact_at(EXT_SUPERBLOCK_OFFSET, &mut sb)?;
        let s = parse_ext_superblock(&sb).map_err(|e| Error::parse(&self.name, e))?;
        Ok(Some(FsUsage::from_units(
            u64::from(s.block_size),
            s.blocks,
            s.free_blocks,
        )))
    }
}
