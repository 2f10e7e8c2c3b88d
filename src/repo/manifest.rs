//! The manifest of a restore point: which VM, when, its disks (each with its index),
//! how changes were tracked, and what the backup cost. A restore point exists exactly
//! when its manifest exists; it is written last, atomically, as
//! `snapshots/<BLAKE3 of the JSON>`, so a restore point's id is also its checksum.

use serde::{Deserialize, Serialize};

/// Format version of manifests this build writes.
pub const MANIFEST_VERSION: u32 = 1;

/// Largest manifest read (a damaged or hostile file cannot exhaust memory).
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub version: u32,
    pub vm: VmIdentity,
    /// Host the VM ran on at backup time: metadata only, so a VM that moved between
    /// hosts keeps one history.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub datastores: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Start of the capture, RFC 3339 UTC.
    pub time: String,
    /// End of the capture, RFC 3339 UTC.
    pub end_time: String,
    /// The restore point's name in paths (`2026-11-21T030000Z`), unique per VM.
    pub name: String,
    /// The restore point this one was made incrementally from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Machine vmback ran on (the backup proxy or the host).
    #[serde(default)]
    pub proxy: Option<String>,
    pub chunk_size: u32,
    pub disks: Vec<DiskRecord>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The vmback version that wrote this restore point.
    pub program: String,
}

/// Which VM a restore point belongs to. History is kept by name (and UUID when given).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmIdentity {
    pub name: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

/// One captured disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskRecord {
    /// `disk0`, `disk1`, … in capture order.
    pub name: String,
    /// What was read: an image path or an NBD URI.
    pub source: String,
    /// Container format of the source (raw, vmdk, vhd, vhdx, qcow2; nbd).
    pub format: String,
    pub virtual_size: u64,
    /// Id of the disk's index object (`indexes/<id>`).
    pub index: String,
    /// The layers of the source chain, top first (for differencing-layer tracking).
    #[serde(default)]
    pub layers: Vec<LayerRecord>,
    pub change_tracking: ChangeTracking,
    /// Partitions and filesystems found at backup time.
    #[serde(default)]
    pub volumes: Vec<VolumeRecord>,
    pub stats: DiskStats,
}

/// What identifies a layer file across backups: if all of it is unchanged, the layer
/// holds the same bytes it held when last captured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Canonical path of the layer's main file.
    pub path: String,
    pub format: String,
    /// Total size in bytes of the layer's files.
    pub file_bytes: u64,
    /// Latest modification time of the layer's files, in nanoseconds since the epoch.
    pub modified_ns: i128,
    /// The format's own identity (VMDK CID, VHD unique id, VHDX DataWriteGuid).
    #[serde(default)]
    pub identity: Option<String>,
}

/// How the changes of a disk were found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChangeTracking {
    /// `full` (no usable parent), `dirty-bitmap`, `changed-extents`, `differencing`,
    /// or `fallback` (read everything, store only new chunks).
    pub method: String,
    /// The dirty bitmap this disk is tracked with (kept so the next backup can check
    /// it tracks against this restore point).
    #[serde(default)]
    pub bitmap: Option<String>,
    /// What the method said, e.g. "12 extents, 3.1 MiB" or the reason for a fallback.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A partition / filesystem seen at backup time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    #[serde(default)]
    pub filesystem: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

/// What a disk's capture cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskStats {
    /// Bytes read from the source files or export (data and metadata).
    pub bytes_read: u64,
    /// Bytes of chunks examined (read and hashed).
    pub bytes_scanned: u64,
    /// Chunks of the disk.
    pub chunks: u64,
    /// Chunks taken over from the parent without reading.
    pub chunks_unchanged: u64,
    /// Chunks found all-zero or unallocated (never stored).
    pub chunks_zero: u64,
    /// Chunks read whose content the repository already held.
    pub chunks_deduplicated: u64,
    /// Chunks newly stored.
    pub chunks_new: u64,
    /// Plaintext bytes of new chunks.
    pub bytes_new: u64,
    /// Bytes of new chunk objects as stored (after compression).
    pub bytes_stored: u64,
    pub duration_secs: f64,
}

/// A restore point as listed: its id and manifest.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub manifest: Manifest,
}

impl Snapshot {
    /// The first 8 hex digits of the id, as shown in lists.
    pub fn short_id(&self) -> &str {
        self.id.get(..8).unwrap_or(&self.id)
    }
}
