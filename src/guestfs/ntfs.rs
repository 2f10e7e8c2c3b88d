//! NTFS through the `ntfs` crate (MFT records with fixups, attribute lists, index
//! root + allocation B-trees, resident / non-resident / sparse data runs, the $UpCase
//! table for Windows' case-insensitive names).
//!
//! What this adapter adds on top of the crate:
//! - a pre-check of the boot sector against our caps ([`vmback_parsers::ntfs::boot`]),
//!   because the crate allocates record buffers sized by it;
//! - a read budget per request ([`MAX_NTFS_METADATA_READ_PER_OP`]): the crate walks
//!   index B-trees and attribute lists without cycle detection, so a corrupt index that
//!   points at itself would loop forever; every such loop reads, and the budget turns it
//!   into an error;
//! - panics inside the crate are caught on the worker and reported as errors naming the
//!   node, so a hostile image never takes the worker (or the process) down;
//! - symlinks: `IO_REPARSE_TAG_SYMLINK` and `IO_REPARSE_TAG_MOUNT_POINT` (junctions)
//!   reparse points, and ntfs-3g's Interix symlink files (SYSTEM attribute, content
//!   "IntxLNK\1" + UTF-16 target), as [`FileType::Symlink`];
//! - alternate data streams as nodes of their own, reachable by `name:stream`;
//! - zeros past the valid data length (initialized size) of non-resident data, which
//!   the crate reads from the clusters as they are;
//! - LZNT1-compressed files (the crate would return the compressed clusters as they
//!   are): decompressed per compression unit ([`vmback_parsers::ntfs::lznt1`]);
//! - used space ([`GuestFs::usage`]): the set bits of the cluster bitmap (`$Bitmap`,
//!   MFT record 6), which the crate does not count, read in pieces.
//!
//! **NodeId encoding**: bits 0..48 are the MFT record number (NTFS file references
//! have a 48-bit record number), bits 48..64 the stream: 0 is the file itself (its
//! unnamed `$DATA`, or the directory), k ≥ 1 the k-th named `$DATA` attribute in
//! attribute order. Hard links therefore share a NodeId, and `link_id` is the record
//! number.
//!
//! Not supported (reported as errors naming the file, never as wrong data): EFS
//! encrypted data, compressed files whose runs sit in an attribute list, compression
//! units other than 16 clusters.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileName, NtfsFileNamespace};
use ntfs::{
    Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek, NtfsTime,
    UpcaseOrd,
};
use vmback_parsers::limits::{
    MAX_NTFS_DIR_ENTRIES, MAX_NTFS_METADATA_READ_PER_OP, MAX_NTFS_REPARSE_BYTES,
};
use vmback_parsers::ntfs::boot::{parse_ntfs_boot, NtfsBoot};
use vmback_parsers::ntfs::lznt1::decompress_lznt1;
use vmback_parsers::ntfs::reparse::{
    parse_interix_symlink, parse_reparse, NtfsReparse, INTERIX_SYMLINK_MAGIC,
};

use super::confined::Confined;
use super::{DirEntry, FileType, FsUsage, GuestFs, Metadata, NodeId, Timestamp};
use crate::error::{Error, Result};
use crate::io::{ReadAt, ReadAtCursor};

/// Worker threads per NTFS volume (each holds its own `Ntfs` and its 128 KiB upcase
/// table; two let a FUSE reader and a restore run side by side on 2-core machines).
const WORKERS: usize = 2;

/// Record number of the root directory.
const ROOT_RECORD: u64 = 5;
/// Record number of the cluster bitmap ($Bitmap).
const BITMAP_RECORD: u64 = 6;
/// Bytes of $Bitmap read at a time (8 M clusters: 32 GiB of a 4 KiB-cluster volume).
const BITMAP_PIECE: u64 = 1 << 20;
/// Records below this number are reserved for metafiles ($MFT .. $Extend and spares).
const FIRST_USER_RECORD: u64 = 24;
const RECORD_MASK: u64 = (1 << 48) - 1;

/// An NTFS filesystem on a volume.
pub struct NtfsFs {
    pool: Confined<Worker>,
    name: String,
    label: Option<String>,
    /// The boot sector, for the volume's cluster count.
    boot: NtfsBoot,
    /// Bytes of the volume (the partition) the filesystem lives in.
    volume_size: u64,
    /// The first guest path each node was seen under, for error messages.
    paths: Mutex<HashMap<NodeId, String>>,
}

/// One worker's state: the crate's filesystem object and its reader.
struct Worker {
    ntfs: Ntfs,
    io: Budgeted,
    /// The volume, for the raw cluster reads of compressed files.
    vol: Arc<dyn ReadAt>,
}

/// A reader over the volume that fails once a request has read more than its budget.
struct Budgeted {
    cur: ReadAtCursor,
    left: u64,
}

impl Budgeted {
    fn reset(&mut self, extra: u64) {
        self.left = MAX_NTFS_METADATA_READ_PER_OP.saturating_add(extra);
    }
}

impl Read for Budgeted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other(format!(
                "more than {MAX_NTFS_METADATA_READ_PER_OP} bytes of metadata read for one \
                 request (a cycle in a corrupt index or attribute list?)"
            )));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let got = self.cur.read(&mut buf[..n])?;
        self.left = self.left.saturating_sub(got as u64);
        Ok(got)
    }
}

impl Seek for Budgeted {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.cur.seek(to)
    }
}

/// Why a request failed inside a worker: the crate's error, or our own words.
#[derive(Debug)]
enum Fail {
    Ntfs(NtfsError),
    Msg(String),
    Parse(vmback_parsers::ParseError),
}

impl From<NtfsError> for Fail {
    fn from(e: NtfsError) -> Self {
        Fail::Ntfs(e)
    }
}

type WResult<T> = std::result::Result<T, Fail>;

fn split_node(node: NodeId) -> (u64, u16) {
    (node & RECORD_MASK, (node >> 48) as u16)
}

fn make_node(record: u64, stream: u16) -> NodeId {
    (record & RECORD_MASK) | (u64::from(stream) << 48)
}

/// FILETIME (100 ns ticks since 1601-01-01 UTC) → Unix seconds + nanoseconds.
fn ts(t: NtfsTime) -> Timestamp {
    const EPOCH_DIFF_SECS: i64 = 11_644_473_600;
    let ticks = t.nt_timestamp();
    // OK: u64 / 10^7 < 2^41, fits i64.
    let secs = (ticks / 10_000_000) as i64 - EPOCH_DIFF_SECS;
    Timestamp {
        secs,
        nanos: (ticks % 10_000_000) as u32 * 100,
    }
}

/// What a record is, as far as listing and reading care.
enum Kind {
    Dir,
    File,
    /// A symlink, junction or Interix link with its target as stored.
    Link(String),
}

/// The reparse point of `file`, if it has one.
fn reparse_of<T: Read + Seek>(file: &NtfsFile, io: &mut T) -> WResult<Option<NtfsReparse>> {
    let mut attrs = file.attributes();
    while let Some(item) = attrs.next(io) {
        let item = item?;
        let attr = item.to_attribute()?;
        if attr.ty()? != NtfsAttributeType::ReparsePoint {
            continue;
        }
        let len = attr.value_length();
        if len > MAX_NTFS_REPARSE_BYTES {
            return Err(Fail::Msg(format!(
                "reparse point at byte position {:#x} is {len} bytes, over the cap of \
                 {MAX_NTFS_REPARSE_BYTES} (MAX_NTFS_REPARSE_BYTES)",
                attr.position().value().map_or(0, |p| p.get())
            )));
        }
        let mut value = attr.value(io)?;
        let pos = value.data_position().value().map_or(0, |p| p.get());
        // OK: len ≤ MAX_NTFS_REPARSE_BYTES (16 KiB).
        let mut buf = vec![0u8; len as usize];
        read_full(&mut value, io, &mut buf)?;
        return parse_reparse(&buf, pos).map(Some).map_err(Fail::Parse);
    }
    Ok(None)
}

fn read_full<T: Read + Seek>(
    value: &mut impl NtfsReadSeek,
    io: &mut T,
    buf: &mut [u8],
) -> WResult<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = value.read(io, &mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Classifies `file`: directory, file, or link (reparse point / Interix symlink).
fn kind_of<T: Read + Seek>(file: &NtfsFile, io: &mut T) -> WResult<Kind> {
    let attrs = file.info()?.file_attributes();
    if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
        if let Some(NtfsReparse::Link { target, .. }) = reparse_of(file, io)? {
            return Ok(Kind::Link(target));
        }
    }
    if file.is_directory() {
        return Ok(Kind::Dir);
    }
    if attrs.contains(NtfsFileAttributeFlags::SYSTEM) {
        if let Some(target) = interix_target(file, io)? {
            return Ok(Kind::Link(target));
        }
    }
    Ok(Kind::File)
}

/// The target of an Interix symlink file (small unnamed $DATA starting with the magic).
fn interix_target<T: Read + Seek>(file: &NtfsFile, io: &mut T) -> WResult<Option<String>> {
    let Some(item) = file.data(io, "") else {
        return Ok(None);
    };
    let item = item?;
    let attr = item.to_attribute()?;
    let len = attr.value_length();
    if len < INTERIX_SYMLINK_MAGIC.len() as u64 || len > MAX_NTFS_REPARSE_BYTES {
        return Ok(None);
    }
    if attr
        .flags()
        .intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED)
    {
        return Ok(None);
    }
    let mut value = attr.value(io)?;
    let pos = value.data_position().value().map_or(0, |p| p.get());
    // OK: len ≤ MAX_NTFS_REPARSE_BYTES.
    let mut buf = vec![0u8; len as usize];
    let n = read_full(&mut value, io, &mut buf)?;
    buf.truncate(n);
    parse_interix_symlink(&buf, pos).map_err(Fail::Parse)
}

/// The `stream`-th named $DATA attribute (1-based) or the unnamed one (0): its
/// length and attribute flags.
fn find_stream<'n, 'f, T: Read + Seek>(
    file: &'f NtfsFile<'n>,
    io: &mut T,
    stream: u16,
) -> WResult<Option<ntfs::NtfsAttributeItem<'n, 'f>>> {
    if stream == 0 {
        return match file.data(io, "") {
            Some(item) => Ok(Some(item?)),
            None => Ok(None),
        };
    }
    let mut k = 0u16;
    let mut attrs = file.attributes();
    while let Some(item) = attrs.next(io) {
        let item = item?;
        let attr = item.to_attribute()?;
        if attr.ty()? != NtfsAttributeType::Data || attr.name_length() == 0 {
            continue;
        }
        k = k.saturating_add(1);
        if k == stream {
            return Ok(Some(item));
        }
    }
    Ok(None)
}

/// The initialized size (valid data length) of a non-resident attribute when it is
/// below `size`. The crate does not expose it, so it is read from the attribute header
/// (+0x38) on the volume; records are 512-byte aligned and fixups replace the last two
/// bytes of every 512-byte stride, so a field overlapping those bytes is not trusted
/// (and the whole value is then read as stored).
fn initialized_size(vol: &dyn ReadAt, attr: &ntfs::NtfsAttribute, size: u64) -> Option<u64> {
    if attr.is_resident() {
        return None;
    }
    let at = attr.position().value()?.get().checked_add(0x38)?;
    if at % 512 > 502 {
        return None;
    }
    let mut b = [0u8; 8];
    vol.read_exact_at(at, &mut b).ok()?;
    Some(u64::from_le_bytes(b)).filter(|&init| init < size)
}

/// Clusters per compression unit (compression unit exponent 4): the only size
/// Windows and ntfs-3g write.
const CU_CLUSTERS: u64 = 16;
/// Data runs accepted for one compressed attribute (a run takes ≥ 2 bytes of a file
/// record, so a 64 KiB record holds fewer).
const MAX_COMPRESSED_RUNS: usize = 32 * 1024;

/// One data run: first VCN, cluster count, absolute byte position (None = sparse).
struct Run {
    vcn: u64,
    clusters: u64,
    pos: Option<u64>,
}

/// Reads `want` bytes at `offset` of an LZNT1-compressed non-resident attribute: per
/// compression unit of 16 clusters, all clusters allocated = stored as is, none =
/// zeros, some followed by sparse ones = LZNT1 data ([MS-XCA] 2.5; the rule ntfs-3g
/// and Windows read by).
fn read_compressed<T: Read + Seek>(
    ntfs: &Ntfs,
    vol: &dyn ReadAt,
    attr: &ntfs::NtfsAttribute,
    io: &mut T,
    offset: u64,
    want: usize,
) -> WResult<Vec<u8>> {
    let at = attr.position().value().map_or(0, |p| p.get());
    let cluster = u64::from(ntfs.cluster_size());
    // The compression unit exponent (attribute header +0x22) is not exposed by the
    // crate; read it from the volume. Should it sit on a fixup position (the last two
    // bytes of a 512-byte stride) the stored byte is not the field: refuse.
    let mut exp = [0u8; 1];
    let exp_at = at.saturating_add(0x22);
    vol.read_exact_at(exp_at, &mut exp)
        .map_err(|e| Fail::Msg(format!("reading the compression unit at {at:#x}: {e}")))?;
    if exp[0] != 4 || cluster > 4096 || exp_at % 512 >= 510 {
        return Err(Fail::Msg(format!(
            "not supported: NTFS compressed file with compression unit 2^{} of {cluster}-byte              clusters (attribute at byte position {at:#x})",
            exp[0]
        )));
    }
    let ntfs::attribute_value::NtfsAttributeValue::NonResident(value) = attr.value(io)? else {
        return Err(Fail::Msg(
            "not supported: NTFS compressed file described by an attribute list".into(),
        ));
    };
    let mut runs = Vec::new();
    let mut vcn = 0u64;
    for run in value.data_runs() {
        let run = run?;
        if runs.len() >= MAX_COMPRESSED_RUNS {
            return Err(Fail::Msg(format!(
                "compressed attribute at {at:#x} has more than {MAX_COMPRESSED_RUNS} data runs"
            )));
        }
        let clusters = run.allocated_size() / cluster;
        runs.push(Run {
            vcn,
            clusters,
            pos: run.data_position().value().map(|p| p.get()),
        });
        vcn = vcn.saturating_add(clusters);
    }
    let unit = CU_CLUSTERS * cluster;
    let mut out = Vec::with_capacity(want);
    let end = offset.saturating_add(want as u64);
    let mut pos = offset;
    let mut cached: Option<(u64, Vec<u8>)> = None;
    while pos < end {
        let u = pos / unit;
        if cached.as_ref().map(|c| c.0) != Some(u) {
            cached = Some((u, read_unit(vol, &runs, cluster, u)?));
        }
        let Some((_, data)) = cached.as_ref() else {
            break;
        };
        let from = (pos - u * unit) as usize; // OK: < unit ≤ 64 KiB
        let take = (unit - from as u64).min(end - pos) as usize;
        let chunk = data.get(from..from + take).ok_or_else(|| {
            Fail::Msg(format!(
                "compression unit {u} of the attribute at {at:#x} is short"
            ))
        })?;
        out.extend_from_slice(chunk);
        pos += take as u64;
    }
    Ok(out)
}

/// The `unit_no`-th compression unit, decompressed to exactly 16 clusters.
fn read_unit(vol: &dyn ReadAt, runs: &[Run], cluster: u64, unit_no: u64) -> WResult<Vec<u8>> {
    let unit = (CU_CLUSTERS * cluster) as usize; // OK: ≤ 64 KiB
    let first = unit_no.saturating_mul(CU_CLUSTERS);
    // Allocated clusters of the unit, in VCN order, merged into extents.
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut allocated = 0u64;
    let mut hole_seen = false;
    for vcn in first..first.saturating_add(CU_CLUSTERS) {
        let i = runs.partition_point(|r| r.vcn <= vcn);
        let lcn_pos = i
            .checked_sub(1)
            .and_then(|i| runs.get(i))
            .filter(|r| vcn < r.vcn.saturating_add(r.clusters))
            .and_then(|r| {
                r.pos
                    .and_then(|p| p.checked_add((vcn - r.vcn).checked_mul(cluster)?))
            });
        match lcn_pos {
            None => hole_seen = true,
            Some(_) if hole_seen => {
                return Err(Fail::Msg(format!(
                    "compression unit {unit_no}: allocated cluster after a sparse one"
                )))
            }
            Some(p) => {
                allocated += 1;
                match extents.last_mut() {
                    Some((start, len)) if *start + *len == p => *len += cluster,
                    _ => extents.push((p, cluster)),
                }
            }
        }
    }
    let mut raw = Vec::with_capacity(unit);
    for &(p, len) in &extents {
        let old = raw.len();
        raw.resize(old + len as usize, 0);
        vol.read_exact_at(p, &mut raw[old..])
            .map_err(|e| Fail::Msg(format!("reading compressed clusters at {p:#x}: {e}")))?;
    }
    if allocated == CU_CLUSTERS {
        return Ok(raw); // stored uncompressed
    }
    let mut out = Vec::with_capacity(unit);
    if let Some(&(base, _)) = extents.first() {
        decompress_lznt1(&raw, unit, base, &mut out).map_err(Fail::Parse)?;
    }
    out.resize(unit, 0);
    Ok(out)
}

/// Set bits among the first `limit` bits of `bytes` (bit 0 of byte 0 first).
fn count_set_bits(bytes: &[u8], limit: u64) -> u64 {
    let whole = usize::try_from(limit / 8)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let mut n: u64 = bytes[..whole]
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let rest = limit % 8;
    if rest != 0 {
        if let Some(b) = bytes.get(whole) {
            n += u64::from((b & ((1u8 << rest) - 1)).count_ones());
        }
    }
    n
}

fn name_string(name: &NtfsFileName) -> String {
    name.name().to_string_lossy()
}

impl NtfsFs {
    /// Checks the boot sector, loads the filesystem and its $UpCase table.
    pub fn open(volume: Arc<dyn ReadAt>, name: &str) -> Result<Self> {
        let fs_name = format!("{name} (ntfs)");
        let mut head = [0u8; 512];
        if volume.size() < 512 {
            return Err(guest_err(
                &fs_name,
                "boot sector",
                Fail::Msg(format!("volume of {} bytes is too small", volume.size())),
            ));
        }
        volume.read_exact_at(0, &mut head)?;
        let boot = parse_ntfs_boot(&head, volume.size())
            .map_err(|e| guest_err(&fs_name, "boot sector", Fail::Parse(e)))?;
        let err_name = fs_name.clone();
        let vol = volume.clone();
        let pool = Confined::start(WORKERS, name, move || {
            let mut io = Budgeted {
                cur: ReadAtCursor::new(vol.clone()),
                left: 0,
            };
            io.reset(0);
            let opened = catch_unwind(AssertUnwindSafe(|| -> WResult<Ntfs> {
                let mut ntfs = Ntfs::new(&mut io)?;
                io.reset(0);
                ntfs.read_upcase_table(&mut io)?;
                Ok(ntfs)
            }))
            .unwrap_or_else(|p| Err(panic_fail(p)))
            .map_err(|e| guest_err(&err_name, "boot sector / $MFT / $UpCase", e))?;
            Ok(Worker {
                ntfs: opened,
                io,
                vol: vol.clone(),
            })
        })?;
        let label = pool
            .run(|w| {
                w.io.reset(0);
                catch_unwind(AssertUnwindSafe(|| {
                    w.ntfs
                        .volume_name(&mut w.io)
                        .and_then(|r| r.ok())
                        .map(|n| n.name().to_string_lossy())
                }))
                .ok()
                .flatten()
            })?
            .filter(|l| !l.is_empty());
        let mut paths = HashMap::new();
        paths.insert(make_node(ROOT_RECORD, 0), "/".to_string());
        Ok(NtfsFs {
            pool,
            name: fs_name,
            label,
            boot,
            volume_size: volume.size(),
            paths: Mutex::new(paths),
        })
    }

    fn path_of(&self, node: NodeId) -> String {
        let (record, stream) = split_node(node);
        let known = self
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned();
        match known {
            Some(p) => format!("{p} (MFT record {record})"),
            None if stream == 0 => format!("<MFT record {record}>"),
            None => format!("<MFT record {record}, stream {stream}>"),
        }
    }

    fn remember(&self, node: NodeId, dir: NodeId, name: &str) {
        let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        if paths.contains_key(&node) {
            return;
        }
        let parent = paths.get(&dir).cloned().unwrap_or_default();
        let path = if parent.ends_with('/') {
            format!("{parent}{name}")
        } else {
            format!("{parent}/{name}")
        };
        paths.insert(node, path);
    }

    /// Runs `f` on a worker with a fresh read budget (`extra` bytes on top of the
    /// metadata budget), catching panics of the crate, and names `node` in errors.
    fn run<R: Send + 'static>(
        &self,
        node: NodeId,
        extra: u64,
        f: impl FnOnce(&mut Worker) -> WResult<R> + Send + 'static,
    ) -> Result<R> {
        let res = self.pool.run(move |w| {
            w.io.reset(extra);
            catch_unwind(AssertUnwindSafe(|| f(w))).unwrap_or_else(|p| Err(panic_fail(p)))
        })?;
        res.map_err(|e| guest_err(&self.name, &self.path_of(node), e))
    }
}

fn panic_fail(p: Box<dyn std::any::Any + Send>) -> Fail {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Fail::Msg(format!(
        "the ntfs crate failed on a corrupt structure ({msg})"
    ))
}

fn guest_err(fs: &str, path: &str, e: Fail) -> Error {
    let source: Box<dyn std::error::Error + Send + Sync> = match e {
        Fail::Ntfs(e) => Box::new(e),
        Fail::Parse(e) => Box::new(e),
        Fail::Msg(m) => m.into(),
    };
    Error::GuestFs {
        fs: fs.to_string(),
        path: path.to_string(),
        source,
    }
}

impl GuestFs for NtfsFs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn label(&self) -> Option<String> {
        self.label.clone()
    }

    fn root(&self) -> NodeId {
        make_node(ROOT_RECORD, 0)
    }

    fn lookup(&self, dir: NodeId, name: &OsStr) -> Result<Option<NodeId>> {
        let Some(name) = name.to_str() else {
            return Ok(None); // NTFS names are UTF-16: a non-UTF-8 name cannot match
        };
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Ok(None);
        }
        if split_node(dir).1 != 0 {
            return Ok(None);
        }
        // "file:stream" or "file:stream:$DATA" names an alternate data stream;
        // "file::$DATA" the unnamed one.
        let (base, stream) = match name.split_once(':') {
            None => (name.to_string(), None),
            Some((b, s)) => {
                let s = s
                    .strip_suffix(":$DATA")
                    .or_else(|| s.strip_suffix(":$data"))
                    .unwrap_or(s);
                (b.to_string(), Some(s.to_string()))
            }
        };
        if base.is_empty() {
            return Ok(None);
        }
        let dir_record = split_node(dir).0;
        let found = self.run(dir, 0, move |w| -> WResult<Option<NodeId>> {
            let Worker { ntfs, io, .. } = w;
            let dir_file = ntfs.file(io, dir_record)?;
            if !dir_file.is_directory() {
                return Ok(None);
            }
            let index = dir_file.directory_index(io)?;
            let mut finder = index.finder();
            let record = match ntfs::indexes::NtfsFileNameIndex::find(&mut finder, ntfs, io, &base)
            {
                None => return Ok(None),
                Some(entry) => entry?.file_reference().file_record_number(),
            };
            let Some(stream) = stream else {
                return Ok(Some(make_node(record, 0)));
            };
            if stream.is_empty() {
                return Ok(Some(make_node(record, 0)));
            }
            let file = ntfs.file(io, record)?;
            let mut k = 0u16;
            let mut attrs = file.attributes();
            while let Some(item) = attrs.next(io) {
                let item = item?;
                let attr = item.to_attribute()?;
                if attr.ty()? != NtfsAttributeType::Data || attr.name_length() == 0 {
                    continue;
                }
                k = k.saturating_add(1);
                if attr.name()?.upcase_cmp(ntfs, &stream.as_str()) == std::cmp::Ordering::Equal {
                    return Ok(Some(make_node(record, k)));
                }
            }
            Ok(None)
        })?;
        if let Some(node) = found {
            self.remember(node, dir, name);
        }
        Ok(found)
    }

    fn metadata(&self, node: NodeId) -> Result<Metadata> {
        let (record, stream) = split_node(node);
        self.run(node, 0, move |w| {
            let Worker { ntfs, io, .. } = w;
            let file = ntfs.file(io, record)?;
            let info = file.info()?;
            let attributes = info.file_attributes();
            let (file_type, size) = if stream != 0 {
                let item = find_stream(&file, io, stream)?.ok_or_else(|| {
                    Fail::Msg(format!("stream {stream} of the file no longer exists"))
                })?;
                (FileType::File, item.to_attribute()?.value_length())
            } else {
                match kind_of(&file, io)? {
                    Kind::Dir => (FileType::Dir, 0),
                    Kind::Link(t) => (FileType::Symlink, t.len() as u64),
                    Kind::File => {
                        let size = match find_stream(&file, io, 0)? {
                            Some(item) => item.to_attribute()?.value_length(),
                            None => 0,
                        };
                        (FileType::File, size)
                    }
                }
            };
            // Hard links: every $FILE_NAME except the DOS 8.3 alias of a long name.
            let mut nlink = 0u32;
            let mut attrs = file.attributes();
            while let Some(item) = attrs.next(io) {
                let item = item?;
                let attr = item.to_attribute()?;
                if attr.ty()? != NtfsAttributeType::FileName {
                    continue;
                }
                let fname = attr.structured_value::<_, NtfsFileName>(io)?;
                if fname.namespace() != NtfsFileNamespace::Dos {
                    nlink = nlink.saturating_add(1);
                }
            }
            let read_only = attributes.contains(NtfsFileAttributeFlags::READ_ONLY);
            let mode = match file_type {
                FileType::Dir => 0o755,
                FileType::Symlink => 0o777,
                _ if read_only => 0o444,
                _ => 0o644,
            };
            Ok(Metadata {
                file_type,
                size,
                mode,
                uid: None,
                gid: None,
                nlink: nlink.max(1),
                mtime: Some(ts(info.modification_time())),
                atime: Some(ts(info.access_time())),
                ctime: Some(ts(info.mft_record_modification_time())),
                crtime: Some(ts(info.creation_time())),
                attributes: Some(attributes.bits()),
                link_id: Some(record),
            })
        })
    }

    fn read_dir(&self, dir: NodeId) -> Result<Vec<DirEntry>> {
        let (dir_record, stream) = split_node(dir);
        if stream != 0 {
            return Err(guest_err(
                &self.name,
                &self.path_of(dir),
                Fail::Msg("not a directory (an alternate data stream)".into()),
            ));
        }
        let entries = self.run(dir, 0, move |w| -> WResult<Vec<(String, u64, FileType)>> {
            let Worker { ntfs, io, .. } = w;
            let dir_file = ntfs.file(io, dir_record)?;
            let index = dir_file.directory_index(io)?;
            let mut iter = index.entries();
            let mut raw = Vec::new();
            while let Some(entry) = iter.next(io) {
                let entry = entry?;
                if raw.len() >= MAX_NTFS_DIR_ENTRIES {
                    return Err(Fail::Msg(format!(
                        "directory has more than {MAX_NTFS_DIR_ENTRIES} entries \
                         (MAX_NTFS_DIR_ENTRIES)"
                    )));
                }
                let Some(key) = entry.key() else { continue };
                let key = key?;
                if key.namespace() == NtfsFileNamespace::Dos {
                    continue; // the 8.3 alias of a long name listed on its own
                }
                let record = entry.file_reference().file_record_number();
                let name = name_string(&key);
                if name == "." {
                    continue;
                }
                if dir_record == ROOT_RECORD && record < FIRST_USER_RECORD && name.starts_with('$')
                {
                    continue; // metafiles: reachable by lookup, not listed
                }
                let flags = key.file_attributes();
                let guess = if key.is_directory() {
                    FileType::Dir
                } else {
                    FileType::File
                };
                raw.push((name, record, guess, flags));
            }
            drop(iter);
            let mut out = Vec::with_capacity(raw.len());
            for (name, record, guess, flags) in raw {
                // Links are rare: only open the records the index marks as possible ones.
                let ty = if flags.intersects(
                    NtfsFileAttributeFlags::REPARSE_POINT | NtfsFileAttributeFlags::SYSTEM,
                ) {
                    let file = ntfs.file(io, record)?;
                    match kind_of(&file, io)? {
                        Kind::Dir => FileType::Dir,
                        Kind::File => FileType::File,
                        Kind::Link(_) => FileType::Symlink,
                    }
                } else {
                    guess
                };
                out.push((name, record, ty));
            }
            Ok(out)
        })?;
        Ok(entries
            .into_iter()
            .map(|(name, record, file_type)| {
                let node = make_node(record, 0);
                self.remember(node, dir, &name);
                DirEntry {
                    name: OsString::from(name),
                    node,
                    file_type,
                }
            })
            .collect())
    }

    fn read_at(&self, file: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (record, stream) = split_node(file);
        let len = buf.len();
        let data = self.run(file, len as u64, move |w| -> WResult<Vec<u8>> {
            let Worker { ntfs, io, vol } = w;
            let f = ntfs.file(io, record)?;
            if stream == 0 && f.is_directory() {
                return Err(Fail::Msg("is a directory".into()));
            }
            let Some(item) = find_stream(&f, io, stream)? else {
                return Ok(Vec::new()); // no $DATA at all: an empty file
            };
            let attr = item.to_attribute()?;
            let flags = attr.flags();
            if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
                return Err(Fail::Msg("not supported: NTFS encrypted file (EFS)".into()));
            }
            let size = attr.value_length();
            if offset >= size {
                return Ok(Vec::new());
            }
            let want = usize::try_from((size - offset).min(len as u64)).unwrap_or(len);
            if flags.contains(NtfsAttributeFlags::COMPRESSED) && !attr.is_resident() {
                return read_compressed(ntfs, &**vol, &attr, io, offset, want);
            }
            let mut value = attr.value(io)?;
            value.seek(io, SeekFrom::Start(offset))?;
            let mut out = vec![0u8; want];
            let got = read_full(&mut value, io, &mut out)?;
            out.truncate(got);
            // Past the valid data length Windows returns zeros, whatever the clusters hold.
            if let Some(init) = initialized_size(&**vol, &attr, size) {
                let keep = usize::try_from(init.saturating_sub(offset)).unwrap_or(usize::MAX);
                if let Some(tail) = out.get_mut(keep..) {
                    tail.fill(0);
                }
            }
            Ok(out)
        })?;
        // OK: data.len() ≤ len = buf.len().
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    fn read_link(&self, node: NodeId) -> Result<OsString> {
        let (record, _) = split_node(node);
        self.run(node, 0, move |w| {
            let Worker { ntfs, io, .. } = w;
            let file = ntfs.file(io, record)?;
            match kind_of(&file, io)? {
                Kind::Link(t) => Ok(OsString::from(t)),
                _ => Err(Fail::Msg("not a symbolic link".into())),
            }
        })
    }

    /// Clusters of the volume (the boot sector's sector count, whole clusters only:
    /// the backup boot sector after them is not part of any) and the set bits of
    /// $Bitmap among them, as ntfs-3g counts them (`ntfscluster`, `ntfsresize
    /// --info`, and df on an ntfs-3g mount). Bitmap bits past the last cluster are
    /// padding and are ignored.
    fn usage(&self) -> Result<Option<FsUsage>> {
        let cluster = u64::from(self.boot.cluster_size);
        // A boot sector claiming more than the partition would have us count a bitmap
        // (possibly sparse, so read without end) for clusters that do not exist.
        if self.boot.volume_bytes > self.volume_size {
            return Err(guest_err(
                &self.name,
                "boot sector",
                Fail::Msg(format!(
                    "the boot sector states {} bytes (offset 0x28), the volume has only {} \
                     (truncated image or shrunk partition?)",
                    self.boot.volume_bytes, self.volume_size
                )),
            ));
        }
        let clusters = self.boot.volume_bytes / cluster;
        let bytes = clusters.div_ceil(8);
        let node = make_node(BITMAP_RECORD, 0);
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node)
            .or_insert_with(|| "/$Bitmap".into());
        let used = self.run(node, bytes, move |w| -> WResult<u64> {
            let Worker { ntfs, io, .. } = w;
            let file = ntfs.file(io, BITMAP_RECORD)?;
            let item = file
                .data(io, "")
                .ok_or_else(|| Fail::Msg("the cluster bitmap has no $DATA attribute".into()))??;
            let attr = item.to_attribute()?;
            if attr.value_length() < bytes {
                return Err(Fail::Msg(format!(
                    "the cluster bitmap has {} bytes, too few for {clusters} clusters",
                    attr.value_length()
                )));
            }
            let mut value = attr.value(io)?;
            // OK: ≤ BITMAP_PIECE (1 MiB).
            let mut buf = vec![0u8; BITMAP_PIECE.min(bytes) as usize];
            let (mut done, mut set) = (0u64, 0u64);
            while done < bytes {
                let n = BITMAP_PIECE.min(bytes - done) as usize; // OK: ≤ BITMAP_PIECE
                let got = read_full(&mut value, io, &mut buf[..n])?;
                if got < n {
                    return Err(Fail::Msg(format!(
                        "the cluster bitmap ends after {} of {bytes} bytes",
                        done + got as u64
                    )));
                }
                set += count_set_bits(&buf[..n], clusters - done * 8);
                done += n as u64;
            }
            Ok(set)
        })?;
        Ok(Some(FsUsage::from_units(
            cluster,
            clusters,
            clusters.saturating_sub(used),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::count_set_bits;

    #[test]
    fn bitmap_bits_past_the_limit_are_ignored() {
        assert_eq!(count_set_bits(&[0xff, 0xff], 16), 16);
        assert_eq!(count_set_bits(&[0xff, 0xff], 12), 12);
        assert_eq!(count_set_bits(&[0x0f, 0xf0], 12), 4);
        assert_eq!(count_set_bits(&[0x01], 100), 1);
        assert_eq!(count_set_bits(&[], 5), 0);
        assert_eq!(count_set_bits(&[0xff], 0), 0);
    }
}
