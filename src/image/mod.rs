//! Disk images: open any container a hypervisor writes, resolve its parent chain and
//! present the whole as one virtual disk ([`Disk`]): positional bytes plus an
//! allocation map, so later stages skip what holds no data.
//!
//! Each container format implements [`Layer`] for one file (or one descriptor with its
//! extents): it classifies byte ranges as data, zero or unallocated and reads its own
//! data. Everything about chains (probing parents, depth and loop limits, falling
//! through to the parent for unallocated ranges, identity checks) lives once, in
//! [`chain`], for all formats.

pub mod cache;
pub mod chain;
pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::io::ReadAt;

pub use chain::{open, open_with_format, Disk};

/// Container formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Vhd,
    Vhdx,
    Vmdk,
    Qcow2,
}

impl Format {
    /// Every container format read, in the order `vmback --version` lists them.
    pub const ALL: [Format; 5] = [
        Format::Raw,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Qcow2,
    ];

    /// The variants of this format that are read (with their parent chains), as
    /// `vmback --version` lists them; the format modules' doc comments give details.
    pub fn read_variants(self) -> &'static str {
        match self {
            Format::Raw => "files and block devices",
            Format::Vmdk => {
                "monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtent \
                 sparse/flat, ESXi VMFS flat/RDM, vmfsSparse (COWD), SESPARSE"
            }
            Format::Vhd => "fixed, dynamic, differencing",
            Format::Vhdx => "fixed, dynamic, differencing (log replayed in memory)",
            Format::Qcow2 => "v2 and v3 (deflate/zstd clusters, backing files, external data file)",
        }
    }

    /// The name `qemu-img` uses for this format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a format name as users and qcow2 backing-format fields spell it.
    pub fn from_name(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "raw" | "file" | "host_device" => Some(Format::Raw),
            "vpc" | "vhd" => Some(Format::Vhd),
            "vhdx" => Some(Format::Vhdx),
            "vmdk" => Some(Format::Vmdk),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vmdk => "vmdk",
            Format::Qcow2 => "qcow2",
        })
    }
}

/// What a range of a layer (or of a whole disk) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// Bytes stored in this layer (may still happen to be zero).
    Data,
    /// Explicitly zero (a zero cluster / zero grain / unmapped-but-zeroed block).
    Zero,
    /// Not stored here: read through to the parent, or zero when there is none.
    Unallocated,
}

/// A classified range of a virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub kind: RunKind,
}

impl Extent {
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// A reference from a child layer to its parent, as stored in the child.
#[derive(Debug, Clone, Serialize)]
pub struct ParentRef {
    /// Candidate file names in order of preference (as stored: absolute, or relative
    /// to the directory of the child). The first that exists is opened.
    pub names: Vec<String>,
    /// The parent's format when the child states it (qcow2 backing format).
    pub format: Option<Format>,
    /// The parent's identity as recorded in the child (VMDK parent CID, VHD parent
    /// unique id, VHDX parent DataWriteGuid), compared with [`LayerInfo::identity`].
    pub expected_identity: Option<String>,
}

/// Facts about one layer, for `inspect` and for chain resolution.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// The file that was opened (descriptor, or the container itself).
    pub path: PathBuf,
    pub format: Format,
    /// e.g. "dynamic", "fixed", "differencing", "monolithicSparse", "streamOptimized", "v3".
    pub subformat: String,
    pub virtual_size: u64,
    /// Every file this layer reads (the descriptor and its extents).
    pub files: Vec<PathBuf>,
    pub parent: Option<ParentRef>,
    /// What a child refers to this layer by (see [`ParentRef::expected_identity`]).
    pub identity: Option<String>,
    /// Things the user should know (dirty log replayed, CID mismatch, ...).
    pub warnings: Vec<String>,
    /// Format-specific facts for `inspect` (block size, cluster size, snapshots, ...).
    pub details: Vec<(String, String)>,
}

impl LayerInfo {
    /// A minimal info; formats fill in the rest.
    pub fn new(
        path: &Path,
        format: Format,
        subformat: impl Into<String>,
        virtual_size: u64,
    ) -> Self {
        LayerInfo {
            path: path.to_path_buf(),
            format,
            subformat: subformat.into(),
            virtual_size,
            files: vec![path.to_path_buf()],
            parent: None,
            identity: None,
            warnings: Vec::new(),
            details: Vec::new(),
        }
    }
}

/// One file (or descriptor + extents) of a chain, as its format sees it.
///
/// Contract: `offset < virtual_size` for every call; `run_at` returns a length in
/// `1..=max_len` (coalescing neighbouring table entries of the same kind where that
/// is cheap, so callers make few calls); `read_data` is called only for a range that
/// one `run_at` call reported as `Data`.
pub trait Layer: Send + Sync {
    /// Facts about this layer.
    fn info(&self) -> &LayerInfo;
    /// Classifies the bytes at `offset`: their kind and how many bytes share it.
    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)>;
    /// Reads bytes of a `Data` run.
    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Bytes read from the underlying files so far (for "what did we read" reports).
    fn bytes_read(&self) -> u64;
    /// Starts reading a range that one `run_at` call reported as `Data`, without
    /// waiting (a hint ahead of [`Layer::read_data`]; the default does nothing).
    fn prefetch_data(&self, _offset: u64, _len: u64) {}
    /// Lets aligned reads of the layer's data bypass the page cache (see
    /// [`crate::io::FileSource::bypass_cache`]); the default keeps it.
    fn bypass_cache(&self) {}
}

/// A virtual disk: bytes plus which ranges hold data.
pub trait DiskImage: ReadAt {
    /// Format of the top layer.
    fn format(&self) -> Format;
    /// Classifies `range` into coalesced extents covering it exactly.
    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>>;
    /// Starts reading the data under `range` in the background, so that reads of
    /// it soon after find it in memory (a hint: the default does nothing, and
    /// errors are left to the real read).
    fn prefetch(&self, _range: Range<u64>) {}
    /// Lets the reads of data that is read once (a backup) bypass the host's page
    /// cache where the format allows it; the default keeps it.
    fn bypass_cache(&self) {}
}
