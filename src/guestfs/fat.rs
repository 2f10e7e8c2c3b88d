//! FAT12/16/32 through the `fatfs` crate (0.3), read-only, with VFAT long names.
//!
//! Specification: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103),
//! sections 3 (boot sector / BPB), 4 (FAT) and 6–7 (directory entries, long names).
//!
//! How the crate is used, and why:
//! - `fatfs::FileSystem` is `!Sync` (a `RefCell` around the disk) and its `Dir` and
//!   `File` borrow it, so instances live on worker threads ([`Confined`]) and a
//!   [`NodeId`] indexes a table of interned guest paths (root = 0). Each request walks
//!   its path from the root; directory sectors come from a small block cache, so a walk
//!   costs memory copies, not disk reads.
//! - The disk handed to fatfs ([`FatDisk`]) refuses writes (nothing is ever written to
//!   a guest) and caches 64 KiB blocks, because fatfs reads directory entries and FAT
//!   cells a few bytes at a time.
//! - fatfs trusts cluster chains. A chain that loops makes a directory endless (files
//!   are bounded by their size). So every request runs under a read budget charged on
//!   [`FatDisk`]: a directory scan may read at most [`MAX_FAT_DIR_ENTRIES`] slots (the
//!   spec's own limit) plus its FAT cells, and a file read at most the bytes asked for
//!   plus `size / cluster_size + 1` clusters' worth of FAT cells. A budget overrun is
//!   reported as a corrupt structure, never a hang.
//! - Cluster arithmetic inside fatfs is unchecked; a hostile cluster number can make
//!   it panic (overflow checks in debug builds). Every request is therefore run under
//!   `catch_unwind`, and a panic becomes an error naming the volume and guest path.
//!
//! - Used space ([`GuestFs::usage`]) is counted from the FAT itself
//!   ([`vmback_parsers::fat`]), read in pieces, not taken from FAT32's FSInfo (a hint
//!   that fatfs would return as is).
//!
//! Semantics: FAT stores local time without a zone; vmback reports it as if it were
//! UTC (the only choice that does not depend on the host). Creation time (10 ms
//! resolution) and last-access date are reported where set (a zero date means "never
//! set" and is reported as absent). Modes are synthesised: 0o755 for directories,
//! 0o644 for files, 0o444 for files with the read-only attribute; nlink is 1; there
//! are no owners, links or symlinks. Lookup is case-insensitive against the long and
//! the short name, as Windows does.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use fatfs::{FatType, FileSystem, FsOptions};
use vmback_parsers::fat::boot::parse_fat_boot;
use vmback_parsers::fat::table::count_free_entries;
use vmback_parsers::limits::MAX_FAT_DIR_ENTRIES;

use super::confined::Confined;
use super::{DirEntry, FileType, FsUsage, GuestFs, Metadata, NodeId, Timestamp};
use crate::error::{Error, Result};
use crate::io::ReadAt;

/// Worker threads per FAT filesystem (opening is cheap: one boot sector).
const WORKERS: usize = 2;

/// Cache block: large enough that a directory or a FAT region is one read.
const BLOCK: u64 = 64 * 1024;

/// Cached blocks per worker (2 MiB).
const CACHE_BLOCKS: usize = 32;

/// Bytes one directory scan may read: every slot the spec allows, plus the FAT cells
/// of its cluster chain (at most one 4-byte cell per 512-byte cluster) with slack.
const DIR_SCAN_BUDGET: u64 = MAX_FAT_DIR_ENTRIES * 32 + MAX_FAT_DIR_ENTRIES / 16 * 4 + 64 * 1024;

/// Bytes opening the filesystem may read (boot sector, FSInfo) and the root scan for
/// the volume label.
const OPEN_BUDGET: u64 = 64 * 1024;

/// Bytes of the FAT read at a time when counting free clusters: a multiple of 3
/// (FAT12 pairs) and of 4 (FAT32 entries), so every piece starts on a whole entry.
const FAT_PIECE: u64 = 768 * 1024;

type Fs = FileSystem<FatDisk>;
type FatEntry<'a> = fatfs::DirEntry<'a, FatDisk>;

/// A FAT12/16/32 filesystem on a volume.
pub struct FatFs {
    pool: Confined<Worker>,
    nodes: Mutex<Nodes>,
    name: String,
    kind: &'static str,
    label: Option<String>,
    /// The volume, for counting the FAT.
    volume: Arc<dyn ReadAt>,
}

/// One worker's filesystem and the read budget its disk charges.
struct Worker {
    fs: Fs,
    budget: Rc<Cell<u64>>,
    cluster_size: u64,
}

/// Interned paths (components as the guest spells them) with the metadata seen when
/// the node was listed or looked up (the filesystem is immutable, so it stays true).
#[derive(Default)]
struct Nodes {
    paths: Vec<(Vec<String>, Metadata)>,
    ids: HashMap<Vec<String>, NodeId>,
}

impl Nodes {
    fn intern(&mut self, path: Vec<String>, meta: Metadata) -> NodeId {
        if let Some(&id) = self.ids.get(&path) {
            return id;
        }
        let id = self.paths.len() as NodeId;
        self.paths.push((path.clone(), meta));
        self.ids.insert(path, id);
        id
    }
}

/// The disk as fatfs sees it: a cursor over the volume with a block cache, a read
/// budget, and writes refused.
struct FatDisk {
    vol: Arc<dyn ReadAt>,
    pos: u64,
    /// Most recently used first: (block number, bytes).
    cache: Vec<(u64, Vec<u8>)>,
    budget: Rc<Cell<u64>>,
}

impl FatDisk {
    fn block(&mut self, no: u64) -> std::io::Result<&[u8]> {
        if let Some(i) = self.cache.iter().position(|(n, _)| *n == no) {
            let hit = self.cache.remove(i);
            self.cache.insert(0, hit);
        } else {
            let start = no.saturating_mul(BLOCK);
            let len = BLOCK.min(self.vol.size().saturating_sub(start));
            // OK: len <= BLOCK (64 KiB), a constant.
            let mut buf = vec![0u8; len as usize];
            self.vol
                .read_exact_at(start, &mut buf)
                .map_err(std::io::Error::other)?;
            self.cache.truncate(CACHE_BLOCKS - 1);
            self.cache.insert(0, (no, buf));
        }
        Ok(self.cache.first().map(|(_, b)| b.as_slice()).unwrap_or(&[]))
    }
}

impl Read for FatDisk {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .vol
            .size()
            .saturating_sub(self.pos)
            .min(buf.len() as u64);
        let left = self.budget.get();
        if n > left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "read budget of this request exhausted at volume offset {:#x} \
                     (cyclic or overlong cluster chain?)",
                    self.pos
                ),
            ));
        }
        self.budget.set(left - n);
        // OK: n <= buf.len().
        let out = &mut buf[..n as usize];
        if n >= BLOCK {
            // File data in big pieces: straight from the volume, not through the cache.
            self.vol
                .read_exact_at(self.pos, out)
                .map_err(std::io::Error::other)?;
        } else {
            let mut done = 0usize;
            while done < out.len() {
                let at = self.pos + done as u64;
                let within = (at % BLOCK) as usize;
                let block = self.block(at / BLOCK)?;
                let avail = block.len().saturating_sub(within);
                let take = avail.min(out.len() - done);
                if take == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("volume ends at {:#x}", self.vol.size()),
                    ));
                }
                out[done..done + take].copy_from_slice(&block[within..within + take]);
                done += take;
            }
        }
        self.pos += n;
        Ok(n as usize)
    }
}

impl Seek for FatDisk {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.vol.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start")
        })?;
        Ok(self.pos)
    }
}

impl Write for FatDisk {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only: vmback never writes to a guest filesystem",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a path led.
enum Found<'a> {
    Root,
    Entry(FatEntry<'a>),
    Missing,
}

fn upper(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_uppercase)
}

/// FAT names compare case-insensitively, against the long and the short name.
fn name_matches(e: &FatEntry<'_>, name: &str) -> bool {
    upper(&e.file_name()).eq(upper(name)) || upper(&e.short_file_name()).eq(upper(name))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Scans one directory under a fresh budget, calling `f` for each entry except "."
/// and "..", until `f` returns `Some`.
fn scan<'a, R>(
    dir: &fatfs::Dir<'a, FatDisk>,
    budget: &Cell<u64>,
    mut f: impl FnMut(FatEntry<'a>) -> Option<R>,
) -> std::io::Result<Option<R>> {
    budget.set(DIR_SCAN_BUDGET);
    let mut count = 0u64;
    for e in dir.iter() {
        let e = e?;
        count += 1;
        if count > MAX_FAT_DIR_ENTRIES {
            return Err(invalid(format!(
                "directory has more than {MAX_FAT_DIR_ENTRIES} entries (cyclic cluster chain?)"
            )));
        }
        let n = e.short_file_name_as_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if let Some(r) = f(e) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Walks `comps` from the root.
fn find<'a>(fs: &'a Fs, budget: &Cell<u64>, comps: &[String]) -> std::io::Result<Found<'a>> {
    let mut cur: Option<FatEntry<'a>> = None;
    for comp in comps {
        let dir = match &cur {
            None => fs.root_dir(),
            Some(e) if e.is_dir() => e.to_dir(),
            Some(_) => return Ok(Found::Missing),
        };
        match scan(&dir, budget, |e| name_matches(&e, comp).then_some(e))? {
            Some(e) => cur = Some(e),
            None => return Ok(Found::Missing),
        }
    }
    Ok(cur.map_or(Found::Root, Found::Entry))
}

fn date_secs(d: fatfs::Date) -> Option<i64> {
    // A zero date field decodes as 1980-00-00: "never set".
    if !(1..=12).contains(&d.month) || d.day == 0 {
        return None;
    }
    // Days from civil (proleptic Gregorian), all in i64 from 16-bit fields.
    let (y, m, dd) = (i64::from(d.year), i64::from(d.month), i64::from(d.day));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

fn date_ts(d: fatfs::Date) -> Option<Timestamp> {
    date_secs(d).map(|secs| Timestamp { secs, nanos: 0 })
}

fn datetime_ts(t: fatfs::DateTime) -> Option<Timestamp> {
    let day = date_secs(t.date)?;
    let tm = t.time;
    if tm.hour > 23 || tm.min > 59 || tm.sec > 59 || tm.millis > 999 {
        return None;
    }
    Some(Timestamp {
        secs: day + i64::from(tm.hour) * 3600 + i64::from(tm.min) * 60 + i64::from(tm.sec),
        nanos: u32::from(tm.millis) * 1_000_000,
    })
}

fn entry_meta(e: &FatEntry<'_>) -> Metadata {
    let attrs = e.attributes();
    let dir = e.is_dir();
    let mode = if dir {
        0o755
    } else if attrs.contains(fatfs::FileAttributes::READ_ONLY) {
        0o444
    } else {
        0o644
    };
    Metadata {
        file_type: if dir { FileType::Dir } else { FileType::File },
        size: if dir { 0 } else { e.len() },
        mode,
        uid: None,
        gid: None,
        nlink: 1,
        mtime: datetime_ts(e.modified()),
        atime: date_ts(e.accessed()),
        ctime: None,
        crtime: datetime_ts(e.created()),
        attributes: Some(u32::from(attrs.bits())),
        link_id: None,
    }
}

fn root_meta() -> Metadata {
    Metadata {
        file_type: FileType::Dir,
        size: 0,
        mode: 0o755,
        uid: None,
        gid: None,
        nlink: 1,
        mtime: None,
        atime: None,
        ctime: None,
        crtime: None,
        attributes: Some(0x10),
        link_id: None,
    }
}

fn guest_path(comps: &[String]) -> String {
    if comps.is_empty() {
        "/".into()
    } else {
        comps.iter().map(|c| format!("/{c}")).collect()
    }
}

impl FatFs {
    /// Reads the boot sector (and FSInfo on FAT32) and the volume label.
    pub fn open(volume: Arc<dyn ReadAt>, name: &str) -> Result<Self> {
        let fs_name = format!("{name} (fat)");
        let err_name = fs_name.clone();
        let vol = volume.clone();
        let pool = Confined::start(WORKERS, name, move || {
            let budget = Rc::new(Cell::new(OPEN_BUDGET));
            let disk = FatDisk {
                vol: vol.clone(),
                pos: 0,
                cache: Vec::new(),
                budget: budget.clone(),
            };
            let fs = catch_unwind(AssertUnwindSafe(|| FileSystem::new(disk, FsOptions::new())))
                .map_err(|_| panicked(&err_name, "/ (boot sector)"))?
                .map_err(|e| io_error(&err_name, "/ (boot sector)", e))?;
            let cluster_size = u64::from(fs.cluster_size());
            Ok(Worker {
                fs,
                budget,
                cluster_size,
            })
        })?;
        let n = fs_name.clone();
        let (kind, label) = pool.run(move |w| {
            let kind = match w.fs.fat_type() {
                FatType::Fat12 => "fat12",
                FatType::Fat16 => "fat16",
                FatType::Fat32 => "fat32",
            };
            w.budget.set(DIR_SCAN_BUDGET);
            let root_label =
                catch_unwind(AssertUnwindSafe(|| w.fs.read_volume_label_from_root_dir()))
                    .map_err(|_| panicked(&n, "/ (volume label)"))?
                    .map_err(|e| io_error(&n, "/ (volume label)", e))?;
            let clean = |s: String| {
                let s = s.trim_end().to_string();
                (!s.is_empty() && s != "NO NAME").then_some(s)
            };
            let label = root_label
                .and_then(clean)
                .or_else(|| clean(w.fs.volume_label()));
            Ok::<_, Error>((kind, label))
        })??;
        let mut nodes = Nodes::default();
        nodes.intern(Vec::new(), root_meta());
        Ok(FatFs {
            pool,
            nodes: Mutex::new(nodes),
            name: fs_name,
            kind,
            label,
            volume,
        })
    }

    fn node(&self, node: NodeId) -> Result<(Vec<String>, Metadata)> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        usize::try_from(node)
            .ok()
            .and_then(|i| nodes.paths.get(i))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                fs: self.name.clone(),
                path: format!("<node {node}>"),
            })
    }

    fn intern(&self, path: Vec<String>, meta: Metadata) -> NodeId {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .intern(path, meta)
    }

    /// Runs `f` on a worker, turning a panic inside fatfs into an error for `path`.
    fn run<R: Send + 'static>(
        &self,
        path: &[String],
        f: impl FnOnce(&mut Worker) -> std::io::Result<R> + Send + 'static,
    ) -> Result<R> {
        let fs_name = self.name.clone();
        let gp = guest_path(path);
        self.pool
            .run(move |w| match catch_unwind(AssertUnwindSafe(|| f(w))) {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(io_error(&fs_name, &gp, e)),
                Err(_) => Err(panicked(&fs_name, &gp)),
            })?
    }
}

fn io_error(fs: &str, path: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        return Error::NotFound {
            fs: fs.to_string(),
            path: path.to_string(),
        };
    }
    Error::GuestFs {
        fs: fs.to_string(),
        path: path.to_string(),
        source: Box::new(e),
    }
}

fn panicked(fs: &str, path: &str) -> Error {
    Error::GuestFs {
        fs: fs.to_string(),
        path: path.to_string(),
        source: "corrupt FAT structure (cluster number out of range)".into(),
    }
}

impl GuestFs for FatFs {
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
        let Some(name) = name.to_str() else {
            return Ok(None); // FAT names are Unicode; a non-UTF-8 name cannot exist
        };
        if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
            return Ok(None);
        }
        let (mut path, _) = self.node(dir)?;
        let dir_path = path.clone();
        let want = name.to_string();
        let found = self.run(&path, move |w| {
            let dir = match find(&w.fs, &w.budget, &dir_path)? {
                Found::Root => w.fs.root_dir(),
                Found::Entry(e) if e.is_dir() => e.to_dir(),
                _ => return Ok(None),
            };
            scan(&dir, &w.budget, |e| {
                name_matches(&e, &want).then(|| (e.file_name(), entry_meta(&e)))
            })
        })?;
        Ok(found.map(|(stored, meta)| {
            path.push(stored);
            self.intern(path, meta)
        }))
    }

    fn metadata(&self, node: NodeId) -> Result<Metadata> {
        Ok(self.node(node)?.1)
    }

    fn read_dir(&self, dir: NodeId) -> Result<Vec<DirEntry>> {
        let (path, meta) = self.node(dir)?;
        if meta.file_type != FileType::Dir {
            return Err(Error::GuestFs {
                fs: self.name.clone(),
                path: guest_path(&path),
                source: "not a directory".into(),
            });
        }
        let p = path.clone();
        let entries = self.run(&path, move |w| {
            let dir = match find(&w.fs, &w.budget, &p)? {
                Found::Root => w.fs.root_dir(),
                Found::Entry(e) if e.is_dir() => e.to_dir(),
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "directory vanished",
                    ))
                }
            };
            let mut out = Vec::new();
            scan(&dir, &w.budget, |e| {
                out.push((e.file_name(), entry_meta(&e)));
                None::<()>
            })?;
            Ok(out)
        })?;
        Ok(entries
            .into_iter()
            .map(|(name, meta)| {
                let file_type = meta.file_type;
                let mut child = path.clone();
                child.push(name.clone());
                DirEntry {
                    name: OsString::from(name),
                    node: self.intern(child, meta),
                    file_type,
                }
            })
            .collect())
    }

    fn read_at(&self, file: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (path, meta) = self.node(file)?;
        if meta.file_type != FileType::File {
            return Err(Error::GuestFs {
                fs: self.name.clone(),
                path: guest_path(&path),
                source: "not a regular file".into(),
            });
        }
        if offset >= meta.size || buf.is_empty() {
            return Ok(0);
        }
        // OK: bounded by buf.len().
        let len = (meta.size - offset).min(buf.len() as u64) as usize;
        let p = path.clone();
        let data = self.run(&path, move |w| {
            let Found::Entry(e) = find(&w.fs, &w.budget, &p)? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "file vanished",
                ));
            };
            if e.is_dir() {
                return Err(invalid("became a directory".into()));
            }
            // The cap on a cyclic chain: the clusters this file can have (size /
            // cluster size + 1), each costing one FAT cell of at most 4 bytes when
            // seeking and once more when reading, plus the data asked for.
            let clusters = e.len() / w.cluster_size.max(1) + 1;
            w.budget.set(
                (len as u64)
                    .saturating_add(clusters.saturating_mul(8))
                    .saturating_add(w.cluster_size.saturating_mul(2)),
            );
            let mut f = e.to_file();
            let at = f.seek(SeekFrom::Start(offset))?;
            if at != offset {
                return Err(invalid(format!(
                    "cluster chain ends at byte {at}, before offset {offset} of a {}-byte file",
                    e.len()
                )));
            }
            let mut out = vec![0u8; len];
            let mut got = 0;
            while got < len {
                // OK: got < len = out.len().
                let n = f.read(&mut out[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            out.truncate(got);
            Ok(out)
        })?;
        // OK: data.len() <= len <= buf.len().
        buf[..data.len()].copy_from_slice(&data);
        if data.len() < len {
            return Err(Error::GuestFs {
                fs: self.name.clone(),
                path: guest_path(&path),
                source: format!(
                    "cluster chain ends early: {} of {len} bytes at offset {offset} readable",
                    data.len()
                )
                .into(),
            });
        }
        Ok(data.len())
    }

    fn read_link(&self, node: NodeId) -> Result<OsString> {
        let (path, _) = self.node(node)?;
        Err(Error::GuestFs {
            fs: self.name.clone(),
            path: guest_path(&path),
            source: "FAT has no symbolic links".into(),
        })
    }

    /// Clusters of the data area and the free ones among them, counted in the FAT in
    /// use: what `fsck.fat -v` reports ("used/total clusters") and, times the cluster
    /// size, the Linux vfat driver's statfs (`df`).
    fn usage(&self) -> Result<Option<FsUsage>> {
        let mut head = [0u8; 512];
        self.volume.read_exact_at(0, &mut head)?;
        let g = parse_fat_boot(&head).map_err(|e| Error::parse(&self.name, e))?;
        let entries = g.clusters + 2;
        // OK: parse_fat_boot checked that the FAT holds every entry, so no overflow.
        let needed = (entries * g.kind.bits()).div_ceil(8);
        if g.fat_offset.saturating_add(needed) > self.volume.size() {
            return Err(Error::GuestFs {
                fs: self.name.clone(),
                path: "/ (FAT)".into(),
                source: format!(
                    "the FAT ({needed} bytes at {:#x}) extends past the end of the volume \
                     ({} bytes)",
                    g.fat_offset,
                    self.volume.size()
                )
                .into(),
            });
        }
        let mut piece = vec![0u8; FAT_PIECE.min(needed) as usize];
        let mut free = 0u64;
        let mut done = 0u64;
        while done < needed {
            let n = FAT_PIECE.min(needed - done) as usize; // OK: ≤ FAT_PIECE
            let buf = &mut piece[..n];
            self.volume.read_exact_at(g.fat_offset + done, buf)?;
            let first = done * 8 / g.kind.bits();
            free += count_free_entries(g.kind, buf, first, 2..entries);
            done += n as u64;
        }
        Ok(Some(FsUsage::from_units(
            u64::from(g.cluster_size),
            g.clusters,
            free,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_dates_as_utc() {
        let d = |year, month, day| fatfs::Date { year, month, day };
        assert_eq!(date_secs(d(1980, 1, 1)), Some(315_532_800));
        assert_eq!(date_secs(d(2024, 2, 29)), Some(1_709_164_800));
        assert_eq!(date_secs(d(1980, 0, 0)), None);
        assert_eq!(date_secs(d(2107, 15, 31)), None);
        let t = fatfs::DateTime {
            date: d(2000, 3, 1),
            time: fatfs::Time {
                hour: 23,
                min: 59,
                sec: 58,
                millis: 990,
            },
        };
        let ts = datetime_ts(t).unwrap();
        assert_eq!((ts.secs, ts.nanos), (951_868_800 + 86_398, 990_000_000));
        let bad = fatfs::DateTime {
            time: fatfs::Time { hour: 31, ..t.time },
            ..t
        };
        assert_eq!(datetime_ts(bad), None);
    }
}
