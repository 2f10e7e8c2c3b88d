//! Guest filesystems, read-only, behind one trait: NTFS (the `ntfs` crate), ext2/3/4
//! (`ext4-view`) and FAT12/16/32 (`fatfs`). Every filesystem is opened on a volume,
//! which is just a [`ReadAt`], so the same code serves an image file and a restore
//! point.
//!
//! The crates underneath are not `Sync` (ext4-view holds an `Rc`, `ntfs` and `fatfs`
//! want `&mut (Read + Seek)`), so each adapter keeps its filesystem objects on worker
//! threads ([`confined`]) and the [`GuestFs`] facade stays `Send + Sync` for rayon
//! workers and FUSE threads.

pub mod confined;
pub mod ext4;
pub mod fat;
pub mod ntfs;

use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use serde::Serialize;

use crate::error::Result;
use crate::io::ReadAt;

/// Identifies a node within one filesystem instance (meaning is adapter-specific:
/// an MFT record, an index into an interned path table, ...).
pub type NodeId = u64;

/// Kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs, sockets: listed, never restored as data.
    Other,
}

/// A point in time as seconds + nanoseconds since the Unix epoch (may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// Metadata of a node, as far as the guest filesystem records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub file_type: FileType,
    pub size: u64,
    /// Unix permission bits (ext); synthesised from attributes for NTFS/FAT.
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub nlink: u32,
    pub mtime: Option<Timestamp>,
    pub atime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
    pub crtime: Option<Timestamp>,
    /// Windows file attributes (NTFS, FAT), e.g. 0x20 archive, 0x02 hidden.
    pub attributes: Option<u32>,
    /// An identity shared by hard links of the same file (NTFS file record, ext inode),
    /// when the filesystem layer can tell.
    pub link_id: Option<u64>,
}

/// How full a filesystem is, from its own allocation structures (the numbers the
/// guest's tools report; see each adapter for which tool it matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FsUsage {
    /// Space the filesystem manages (its allocation units times their size).
    pub total_bytes: u64,
    /// Allocated space, the filesystem's own metadata included.
    pub used_bytes: u64,
    /// `total_bytes - used_bytes`.
    pub free_bytes: u64,
}

impl FsUsage {
    /// From a count of allocation units and how many of them are free (`free <= total`
    /// is the caller's checked invariant; a larger `free` is clamped).
    pub fn from_units(unit_bytes: u64, total: u64, free: u64) -> Self {
        let free = free.min(total);
        FsUsage {
            total_bytes: total.saturating_mul(unit_bytes),
            used_bytes: (total - free).saturating_mul(unit_bytes),
            free_bytes: free.saturating_mul(unit_bytes),
        }
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name exactly as the guest stores it (never trusted as a host path).
    pub name: OsString,
    pub node: NodeId,
    pub file_type: FileType,
}

/// A guest filesystem, read-only.
pub trait GuestFs: Send + Sync {
    /// "ntfs", "ext4", "fat32", ...
    fn kind(&self) -> &'static str;
    /// Volume label, where the filesystem has one.
    fn label(&self) -> Option<String>;
    /// The root directory.
    fn root(&self) -> NodeId;
    /// Looks `name` up in directory `dir` (case-insensitively where the guest does).
    fn lookup(&self, dir: NodeId, name: &OsStr) -> Result<Option<NodeId>>;
    /// Metadata of a node.
    fn metadata(&self, node: NodeId) -> Result<Metadata>;
    /// The entries of a directory, without "." and "..".
    fn read_dir(&self, dir: NodeId) -> Result<Vec<DirEntry>>;
    /// Reads file data at `offset`; returns bytes read (0 at end of file).
    fn read_at(&self, file: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// The target of a symlink, as stored (bytes; never resolved against the host).
    fn read_link(&self, node: NodeId) -> Result<OsString>;
    /// Total, used and free space (`None` where the filesystem cannot tell). Reads
    /// allocation metadata only, never file data.
    fn usage(&self) -> Result<Option<FsUsage>>;
}

/// Whether [`open`] has an adapter for a filesystem `kind` (as named by
/// [`vmback_parsers::fsprobe`]).
pub fn is_supported(kind: &str) -> bool {
    SUPPORTED.contains(&kind)
}

/// The filesystems [`open`] reads (as [`vmback_parsers::fsprobe`] names them).
pub const SUPPORTED: &[&str] = &["ntfs", "ext2", "ext3", "ext4", "fat12", "fat16", "fat32"];

/// Opens the filesystem on `volume`, choosing the adapter by `kind` (as detected by
/// [`vmback_parsers::fsprobe`]). `name` labels errors (e.g. "disk.vmdk p2").
pub fn open(volume: Arc<dyn ReadAt>, kind: &str, name: &str) -> Result<Arc<dyn GuestFs>> {
    match kind {
        "ext2" | "ext3" | "ext4" => Ok(Arc::new(ext4::Ext4Fs::open(volume, name)?)),
        "fat12" | "fat16" | "fat32" => Ok(Arc::new(fat::FatFs::open(volume, name)?)),
        "ntfs" => Ok(Arc::new(ntfs::NtfsFs::open(volume, name)?)),
        other => Err(crate::Error::Unsupported {
            path: name.into(),
            feature: format!("filesystem {other} (supported: {})", SUPPORTED.join(", ")),
        }),
    }
}
