//! qcow2 layer: one qcow2 file (plus its external data file, if any) as a [`Layer`].
//!
//! The parsers (`vmback_parsers::qcow2`) validate every structure; this module does
//! the I/O around them: it reads the first cluster and the active L1 table at open,
//! L2 tables on demand (kept in a [`BlockCache`]), and data clusters, decompressing
//! compressed ones (raw deflate or zstd, exactly one cluster each, also cached).
//!
//! Mapping a guest offset: L1 → L2 → cluster (or subcluster with extended L2).
//! Unallocated clusters report [`RunKind::Unallocated`] so the generic chain code
//! reads the backing file there; zero clusters report [`RunKind::Zero`] and are
//! never read. Neighbouring clusters of the same kind are coalesced into one run,
//! and `read_data` merges host-contiguous clusters into one `pread`, and reads the
//! data of consecutive whole compressed clusters (which QEMU packs back to back)
//! with one `pread` too, so exporting a large image costs few calls.
//!
//! Every host offset is checked against the size of the file it points into before
//! it is read; errors name the structure (L1 index, L2 table and index) and offset.
//! Refcounts are never read: a reader does not need them, which is why a dirty image
//! is read as is (with a warning).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmback_parsers::limits::MAX_QCOW2_SNAPSHOT_TABLE_BYTES;
use vmback_parsers::qcow2::header::Qcow2Header;
use vmback_parsers::qcow2::l2::Qcow2Mapping;
use vmback_parsers::qcow2::snapshot::SNAPSHOT_FIXED_LEN;
use vmback_parsers::qcow2::{
    header_cluster_size, parse_header, parse_l1_table, parse_snapshot_entry, snapshot_entry_len,
    Qcow2CompressedDescriptor, Qcow2Compression, Qcow2L1Table, Qcow2L2Format, Qcow2Snapshot,
};
use vmback_parsers::ParseError;

use super::cache::BlockCache;
use super::{Format, Layer, LayerInfo, ParentRef, RunKind};
use crate::error::{Error, Result};
use crate::io::{AlignedBuf, FileSource, ReadAt};

/// Memory for cached L2 tables (one cluster each): 32 MiB maps 256 GiB of guest
/// disk at the default 64 KiB clusters.
const L2_CACHE_BYTES: u64 = 32 << 20;
/// Memory for decompressed clusters.
const CLUSTER_CACHE_BYTES: u64 = 16 << 20;
/// Widest file range read at once for a run of compressed clusters.
const MAX_COMPRESSED_RUN_BYTES: u64 = 8 << 20;
/// Unused bytes tolerated between the data of two compressed clusters of one run.
const COMPRESSED_RUN_GAP: u64 = 64 << 10;
/// Alignment the read of a compressed run is widened to (whole pages copy fastest
/// out of the page cache, see `crate::io::AlignedBuf`).
const RUN_ALIGN: u64 = 4096;

thread_local! {
    /// The buffer compressed runs are read into, one per thread, reused.
    static RUN_BUF: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// Snapshots listed one by one in `details` (the rest are counted).
const SNAPSHOTS_LISTED: usize = 64;

/// One qcow2 image file as a layer.
pub struct Qcow2Layer {
    src: FileSource,
    /// The external data file, when the image has one (guest clusters live there).
    data: Option<FileSource>,
    info: LayerInfo,
    fmt: Qcow2L2Format,
    cluster_bits: u32,
    l2_bits: u32,
    compression: Qcow2Compression,
    l1_table_offset: u64,
    l1: Qcow2L1Table,
    l2_cache: BlockCache,
    clusters: BlockCache,
}

/// The L2 table last used by a walk over neighbouring clusters, so a run of
/// clusters does not look the table up in the cache once per cluster.
#[derive(Default)]
struct Cursor {
    l1_index: Option<u64>,
    table: Option<(Arc<[u8]>, u64)>,
}

/// Opens a qcow2 image: header, extensions, L1 table, external data file, snapshots.
pub fn open(src: FileSource) -> Result<Box<dyn Layer>> {
    Ok(Box::new(Qcow2Layer::open(src)?))
}

impl Qcow2Layer {
    fn open(src: FileSource) -> Result<Self> {
        let path = src.path().to_path_buf();
        let perr = |e: ParseError| Error::parse(&path, e);

        let mut head = [0u8; 24];
        let n = src.read_at_most(0, &mut head)?;
        let cluster_size = header_cluster_size(&head[..n]).map_err(perr)?;
        // OK: cluster_size ≤ 2 MiB (validated), so the first cluster is a bounded read.
        let first = src.read_vec_at(0, cluster_size.min(src.size()) as usize)?;
        let header = parse_header(&first).map_err(perr)?;

        let l1_entries = header.l1_entries_needed();
        // OK: l1_entries ≤ l1_size, whose byte size the header checked against MAX_TABLE_BYTES.
        let l1_bytes = l1_entries * 8;
        if header
            .l1_table_offset
            .checked_add(l1_bytes)
            .is_none_or(|e| e > src.size())
        {
            return Err(perr(ParseError::corrupt(
                "qcow2 L1 table",
                header.l1_table_offset,
                format!(
                    "{l1_entries} entries ({l1_bytes} bytes) run past the end of the file ({} bytes)",
                    src.size()
                ),
            )));
        }
        let l1_buf = src.read_vec_at(header.l1_table_offset, l1_bytes as usize)?;
        let l1 = parse_l1_table(
            &l1_buf,
            header.l1_table_offset,
            l1_entries as usize,
            header.cluster_bits,
        )
        .map_err(perr)?;

        let mut info = LayerInfo::new(
            &path,
            Format::Qcow2,
            subformat(&header),
            header.virtual_size,
        );

        let data = match &header.extensions.data_file {
            Some(name) if header.has_data_file() => {
                let dpath = resolve_beside(&path, name);
                if let Err(e) = std::fs::File::open(&dpath) {
                    return Err(Error::Missing {
                        what: "external data file",
                        missing: dpath,
                        referenced_by: path.clone(),
                        source: e,
                    });
                }
                let d = FileSource::open(&dpath)?;
                info.files.push(dpath);
                Some(d)
            }
            _ => None,
        };

        if let Some(name) = &header.backing_file {
            let fmt_name = header.extensions.backing_format.as_deref();
            let format = fmt_name.and_then(Format::from_name);
            if let (Some(f), None) = (fmt_name, format) {
                info.warnings.push(format!(
                    "backing format {f:?} is not one vmback reads; the backing file is probed by its content"
                ));
            }
            info.parent = Some(ParentRef {
                names: vec![name.clone()],
                format,
                expected_identity: None,
            });
        }
        if header.is_dirty() {
            info.warnings.push(
                "image was not closed cleanly; refcounts may be stale, data is read as is".into(),
            );
        }
        if header.is_corrupt() {
            info.warnings.push(
                "QEMU marked this image corrupt (incompatible feature bit 1); it is read as is, read-only, as QEMU itself allows"
                    .into(),
            );
        }
        details(&header, &mut info);
        list_snapshots(&src, &header, &mut info);

        Ok(Qcow2Layer {
            fmt: Qcow2L2Format::from_header(&header),
            cluster_bits: header.cluster_bits,
            l2_bits: header.l2_bits(),
            compression: header.compression,
            l1_table_offset: header.l1_table_offset,
            l1,
            l2_cache: BlockCache::with_budget(L2_CACHE_BYTES, cluster_size),
            clusters: BlockCache::with_budget(CLUSTER_CACHE_BYTES, cluster_size),
            src,
            data,
            info,
        })
    }

    fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    fn perr(&self, e: ParseError) -> Error {
        Error::parse(&self.info.path, e)
    }

    /// The file guest data clusters live in.
    fn data_src(&self) -> &FileSource {
        self.data.as_ref().unwrap_or(&self.src)
    }

    /// The L2 table for `l1_index` and its offset, or `None` when unallocated.
    fn l2_table(&self, l1_index: u64) -> Result<Option<(Arc<[u8]>, u64)>> {
        let Some(off) = self.l1.l2_offset(l1_index) else {
            return Ok(None);
        };
        let cs = self.cluster_size();
        if off.checked_add(cs).is_none_or(|e| e > self.src.size()) {
            return Err(self.perr(ParseError::corrupt(
                "qcow2 L1 table",
                self.l1_table_offset.saturating_add(l1_index.saturating_mul(8)),
                format!(
                    "L1 index {l1_index}: L2 table at {off:#x} lies beyond the end of the file ({} bytes)",
                    self.src.size()
                ),
            )));
        }
        let table = self
            .l2_cache
            // OK: cs ≤ 2 MiB.
            .get_or_load(off, || self.src.read_vec_at(off, cs as usize))?;
        Ok(Some((table, off)))
    }

    /// What guest byte `guest` maps to and how many bytes from it map alike
    /// (contiguously), to the end of its cluster or of an unallocated L2 range.
    fn mapping(&self, guest: u64, cur: &mut Cursor) -> Result<(Qcow2Mapping, u64)> {
        let cluster = guest >> self.cluster_bits;
        let l1_index = cluster >> self.l2_bits;
        let l2_index = cluster & ((1u64 << self.l2_bits) - 1);
        if cur.l1_index != Some(l1_index) {
            cur.table = self.l2_table(l1_index)?;
            cur.l1_index = Some(l1_index);
        }
        let Some((table, table_off)) = &cur.table else {
            let span_end = (l1_index + 1) << (self.cluster_bits + self.l2_bits);
            return Ok((Qcow2Mapping::Unallocated, span_end - guest));
        };
        let entry = self
            .fmt
            .entry(table, l2_index, *table_off)
            .map_err(|e| self.perr(with_l1_index(e, l1_index)))?;
        let pos = guest & (self.cluster_size() - 1);
        let (m, len) = entry.map(pos, self.cluster_bits);
        let at = table_off.saturating_add(l2_index * self.fmt.entry_size() as u64);
        match m {
            Qcow2Mapping::Data { host } if host >= self.data_src().size() => {
                Err(self.perr(ParseError::corrupt(
                    "qcow2 L2 entry",
                    at,
                    format!(
                        "L1 index {l1_index}, L2 index {l2_index}: host offset {host:#x} lies beyond the end of {} ({} bytes)",
                        self.data_src().path().display(),
                        self.data_src().size()
                    ),
                )))
            }
            Qcow2Mapping::Compressed(d) if d.host_offset >= self.src.size() => {
                Err(self.perr(ParseError::corrupt(
                    "qcow2 L2 entry",
                    at,
                    format!(
                        "L1 index {l1_index}, L2 index {l2_index}: compressed cluster at {:#x} lies beyond the end of the file ({} bytes)",
                        d.host_offset,
                        self.src.size()
                    ),
                )))
            }
            _ => Ok((m, len)),
        }
    }

    /// The decompressed cluster described by `d` (cached by its host offset).
    fn decompressed(&self, d: Qcow2CompressedDescriptor) -> Result<Arc<[u8]>> {
        self.clusters.get_or_load(d.host_offset, || {
            // The data may end inside its last sector, and that sector may be cut by
            // the end of the file: read what is there.
            let avail = self.src.size().saturating_sub(d.host_offset);
            // OK: max_compressed_len ≤ 2 × cluster size ≤ 4 MiB.
            let len = d.max_compressed_len().min(avail) as usize;
            let input = self.src.read_vec_at(d.host_offset, len)?;
            let mut out = vec![0u8; self.cluster_size() as usize];
            self.inflate_into(d, &input, &mut out)?;
            Ok(out)
        })
    }

    /// Decompresses the cluster `d` from `input` (its data, possibly followed by
    /// other bytes) into `out`, which must come out exactly full.
    fn inflate_into(
        &self,
        d: Qcow2CompressedDescriptor,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let produced = match self.compression {
            Qcow2Compression::Zlib => inflate_raw(input, out),
            Qcow2Compression::Zstd => unzstd(input, out),
        };
        let len = input.len();
        match produced {
            Ok(n) if n == out.len() => Ok(()),
            Ok(n) => Err(self.perr(ParseError::corrupt(
                "qcow2 compressed cluster",
                d.host_offset,
                format!(
                    "{} data ({len} bytes) decompresses to {n} bytes, expected one cluster of {}",
                    self.compression.name(),
                    out.len()
                ),
            ))),
            Err(reason) => Err(self.perr(ParseError::corrupt(
                "qcow2 compressed cluster",
                d.host_offset,
                format!("{} data ({len} bytes): {reason}", self.compression.name()),
            ))),
        }
    }

    /// Reads whole compressed clusters starting at `buf[pos..]` (the first, `first`,
    /// already mapped) whose data lies back to back in the file, with one read, and
    /// decompresses each straight into `buf`. Returns the bytes of `buf` filled (at
    /// least one cluster). A bulk read (export) thus costs one system call per few
    /// MiB instead of one per cluster, and never goes through the cluster cache.
    fn read_compressed_run(
        &self,
        offset: u64,
        buf: &mut [u8],
        pos: usize,
        first: Qcow2CompressedDescriptor,
        cur: &mut Cursor,
    ) -> Result<usize> {
        let cs = self.cluster_size() as usize;
        let mut run = vec![(pos, first)];
        let start = first.host_offset;
        let mut end = start.saturating_add(first.max_compressed_len());
        let mut last = start;
        let mut next = pos + cs;
        while next + cs <= buf.len() {
            let (m, _) = self.mapping(offset + next as u64, cur)?;
            let Qcow2Mapping::Compressed(d) = m else {
                break;
            };
            let d_end = d.host_offset.saturating_add(d.max_compressed_len());
            // Consecutive in the file (QEMU packs them; they may share a sector).
            if d.host_offset < last
                || d.host_offset > end.saturating_add(COMPRESSED_RUN_GAP)
                || d_end.max(end) - start > MAX_COMPRESSED_RUN_BYTES
            {
                break;
            }
            end = end.max(d_end);
            last = d.host_offset;
            run.push((next, d));
            next += cs;
        }
        if run.len() == 1 {
            let cluster = self.decompressed(first)?;
            buf[pos..pos + cs].copy_from_slice(&cluster[..cs]);
            return Ok(cs);
        }
        // The data may end inside the last sector, cut by the end of the file. The
        // read is widened to whole pages, into a page-aligned buffer.
        let end = end.min(self.src.size());
        let read_start = start & !(RUN_ALIGN - 1);
        let read_end = end.next_multiple_of(RUN_ALIGN).min(self.src.size());
        // OK: read_end - read_start ≤ MAX_COMPRESSED_RUN_BYTES + 2 × RUN_ALIGN.
        let len = (read_end - read_start) as usize;
        RUN_BUF.with(|cell| -> Result<()> {
            let mut slot = cell.borrow_mut();
            let data = AlignedBuf::reuse(&mut slot, len);
            self.src.read_exact_at(read_start, data)?;
            for &(p, d) in &run {
                let from = (d.host_offset - read_start) as usize;
                let to = (d.host_offset.saturating_add(d.max_compressed_len()) - read_start)
                    .min(len as u64) as usize;
                self.inflate_into(d, &data[from..to], &mut buf[p..p + cs])?;
            }
            Ok(())
        })?;
        Ok(run.len() * cs)
    }

    /// The run of uncompressed data starting at guest `offset` (host `host`, first
    /// piece `first` bytes): the host-contiguous stretch, split where the host file
    /// has holes. A hole inside an allocated cluster reads as zeros (it never falls
    /// through to the backing file), so it is reported as `Zero` and never read:
    /// this keeps preallocated images (`preallocation=metadata`, raw external data
    /// files) as cheap to export as QEMU makes them.
    fn data_stretch(
        &self,
        offset: u64,
        host: u64,
        first: u64,
        max_len: u64,
        cur: &mut Cursor,
    ) -> Result<(RunKind, u64)> {
        let mut stretch = first;
        while stretch < max_len {
            match self.mapping(offset + stretch, cur)? {
                (Qcow2Mapping::Data { host: h }, l) if host.checked_add(stretch) == Some(h) => {
                    stretch += l.min(max_len - stretch)
                }
                _ => break,
            }
        }
        Ok(match super::raw::file_run(self.data_src(), host, stretch) {
            (RunKind::Unallocated, n) => (RunKind::Zero, n),
            (_, n) => (RunKind::Data, n),
        })
    }

    /// Reads `buf.len()` bytes of the data file at `host` for guest offset `guest`.
    fn read_host(&self, host: u64, guest: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.data_src();
        if host
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > f.size())
        {
            return Err(self.perr(ParseError::corrupt(
                "qcow2 data cluster",
                host,
                format!(
                    "guest offset {guest:#x} maps to {} bytes at {host:#x}, past the end of {} ({} bytes)",
                    buf.len(),
                    f.path().display(),
                    f.size()
                ),
            )));
        }
        f.read_exact_at(host, buf)
    }
}

fn with_l1_index(e: ParseError, l1_index: u64) -> ParseError {
    match e {
        ParseError::Corrupt {
            what,
            offset,
            reason,
        } => ParseError::Corrupt {
            what,
            offset,
            reason: format!("L1 index {l1_index}, {reason}"),
        },
        other => other,
    }
}

fn kind_of(m: &Qcow2Mapping) -> RunKind {
    match m {
        Qcow2Mapping::Unallocated => RunKind::Unallocated,
        Qcow2Mapping::Zero => RunKind::Zero,
        Qcow2Mapping::Data { .. } | Qcow2Mapping::Compressed(_) => RunKind::Data,
    }
}

/// Raw deflate (no zlib header), as QEMU writes compressed clusters. Returns the
/// bytes produced; stops when `out` is full, as QEMU does.
fn inflate_raw(input: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    let mut d = flate2::Decompress::new(false);
    d.decompress(input, out, flate2::FlushDecompress::Finish)
        .map_err(|e| format!("deflate error: {e}"))?;
    Ok(d.total_out() as usize)
}

/// One zstd frame, streamed so trailing bytes of the next cluster (sharing the last
/// sector) are ignored, as QEMU does. Returns the bytes produced.
fn unzstd(input: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let mut dec = Decoder::new().map_err(|e| format!("zstd init: {e}"))?;
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    loop {
        let before = (inb.pos(), outb.pos());
        let hint = dec
            .run(&mut inb, &mut outb)
            .map_err(|e| format!("zstd error: {e}"))?;
        if hint == 0 || outb.pos() == outb.capacity() || before == (inb.pos(), outb.pos()) {
            break;
        }
    }
    Ok(outb.pos())
}

/// `name` as stored, resolved against the directory of `image` when relative.
fn resolve_beside(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn subformat(h: &Qcow2Header) -> String {
    let compat = if h.version == 2 { "0.10" } else { "1.1" };
    format!("v{} (compat {compat}), {}", h.version, h.compression.name())
}

fn details(h: &Qcow2Header, info: &mut LayerInfo) {
    let d = &mut info.details;
    d.push(("cluster size".into(), h.cluster_size().to_string()));
    d.push((
        "L1 size".into(),
        format!("{} entries at {:#x}", h.l1_size, h.l1_table_offset),
    ));
    d.push((
        "refcount order".into(),
        format!(
            "{} ({}-bit refcounts)",
            h.refcount_order,
            1u32 << h.refcount_order
        ),
    ));
    let features = h.feature_list();
    d.push((
        "features".into(),
        if features.is_empty() {
            "none".into()
        } else {
            features.join(", ")
        },
    ));
    d.push(("compression".into(), h.compression.name().into()));
    if let Some(b) = &h.backing_file {
        d.push(("backing file".into(), b.clone()));
    }
    if let Some(f) = &h.extensions.backing_format {
        d.push(("backing format".into(), f.clone()));
    }
    if let Some(f) = &h.extensions.data_file {
        let raw = if h.data_file_raw() { " (raw)" } else { "" };
        d.push(("data file".into(), format!("{f}{raw}")));
    }
    if let Some(b) = &h.extensions.bitmaps {
        let state = if h.autoclear_features & 1 != 0 {
            "consistent"
        } else {
            "inconsistent: autoclear bit clear"
        };
        d.push(("bitmaps".into(), format!("{} ({state})", b.nb_bitmaps)));
    }
    d.push(("snapshots".into(), h.nb_snapshots.to_string()));
}

/// Lists the internal snapshots in `details`. A snapshot table that cannot be read
/// does not stop reading the disk (snapshots are never needed for it): it becomes a
/// warning.
fn list_snapshots(src: &FileSource, h: &Qcow2Header, info: &mut LayerInfo) {
    if h.nb_snapshots == 0 {
        return;
    }
    match read_snapshots(src, h) {
        Ok(snaps) => {
            for s in snaps.iter().take(SNAPSHOTS_LISTED) {
                info.details.push((
                    format!("snapshot {}", s.id),
                    format!(
                        "name {:?}, VM state {} bytes, taken {}",
                        s.name,
                        s.vm_state_size,
                        utc(s.date_sec)
                    ),
                ));
            }
            if snaps.len() > SNAPSHOTS_LISTED {
                info.details.push((
                    "snapshots not listed".into(),
                    (snaps.len() - SNAPSHOTS_LISTED).to_string(),
                ));
            }
        }
        Err(e) => info.warnings.push(format!(
            "snapshot table unreadable (the current disk is not affected): {e}"
        )),
    }
}

fn read_snapshots(
    src: &FileSource,
    h: &Qcow2Header,
) -> std::result::Result<Vec<Qcow2Snapshot>, ParseError> {
    let mut out = Vec::new();
    let mut pos = h.snapshots_offset;
    let mut total = 0u64;
    for _ in 0..h.nb_snapshots {
        let mut fixed = [0u8; SNAPSHOT_FIXED_LEN];
        let n = src.read_at_most(pos, &mut fixed).unwrap_or(0);
        let len = snapshot_entry_len(&fixed[..n], pos)?;
        // The whole table, not only each entry, is bounded: a hostile count of
        // maximal entries must not make us read gigabytes for a listing.
        total = total.saturating_add(len as u64);
        ParseError::check_limit(
            "qcow2 snapshot table",
            h.snapshots_offset,
            total,
            MAX_QCOW2_SNAPSHOT_TABLE_BYTES,
            "MAX_QCOW2_SNAPSHOT_TABLE_BYTES",
        )?;
        let mut buf = vec![0u8; len];
        let n = src.read_at_most(pos, &mut buf).unwrap_or(0);
        let (snap, used) = parse_snapshot_entry(&buf[..n], pos)?;
        out.push(snap);
        pos = pos.saturating_add(used as u64);
    }
    Ok(out)
}

/// "YYYY-MM-DD HH:MM:SS UTC" for seconds since the Epoch (civil-from-days).
fn utc(secs: u32) -> String {
    let secs = u64::from(secs);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Layer for Qcow2Layer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)> {
        let mut cur = Cursor::default();
        let (m, len) = self.mapping(offset, &mut cur)?;
        if let Qcow2Mapping::Data { host } = m {
            return self.data_stretch(offset, host, len.min(max_len), max_len, &mut cur);
        }
        let kind = kind_of(&m);
        let mut total = len.min(max_len);
        while total < max_len {
            let (m, len) = self.mapping(offset + total, &mut cur)?;
            if kind_of(&m) != kind {
                break;
            }
            total += len.min(max_len - total);
        }
        Ok((kind, total))
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut cur = Cursor::default();
        // A pending host-contiguous stretch: (host, start in buf, length).
        let mut pending: Option<(u64, usize, usize)> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let (m, len) = self.mapping(guest, &mut cur)?;
            // OK: len ≤ cluster size or an L2 span; bounded by what remains of buf.
            let n = len.min((buf.len() - pos) as u64) as usize;
            match m {
                Qcow2Mapping::Data { host } => match &mut pending {
                    Some((h, _, l)) if h.checked_add(*l as u64) == Some(host) => *l += n,
                    _ => {
                        if let Some((h, start, l)) = pending.take() {
                            self.read_host(h, offset + start as u64, &mut buf[start..start + l])?;
                        }
                        pending = Some((host, pos, n));
                    }
                },
                other => {
                    if let Some((h, start, l)) = pending.take() {
                        self.read_host(h, offset + start as u64, &mut buf[start..start + l])?;
                    }
                    match other {
                        Qcow2Mapping::Compressed(d) => {
                            let in_cluster = (guest & (self.cluster_size() - 1)) as usize;
                            if in_cluster == 0 && n as u64 == self.cluster_size() {
                                pos += self.read_compressed_run(offset, buf, pos, d, &mut cur)?;
                                continue;
                            }
                            let cluster = self.decompressed(d)?;
                            let piece =
                                cluster.get(in_cluster..in_cluster + n).ok_or_else(|| {
                                    self.perr(ParseError::corrupt(
                                        "qcow2 compressed cluster",
                                        d.host_offset,
                                        "decompressed cluster shorter than expected",
                                    ))
                                })?;
                            buf[pos..pos + n].copy_from_slice(piece);
                        }
                        Qcow2Mapping::Zero => buf[pos..pos + n].fill(0),
                        _ => {
                            return Err(Error::Chain {
                                path: self.info.path.clone(),
                                reason: format!(
                                    "internal: read_data at {guest:#x} on a range that is not data"
                                ),
                            })
                        }
                    }
                }
            }
            pos += n;
        }
        if let Some((h, start, l)) = pending.take() {
            self.read_host(h, offset + start as u64, &mut buf[start..start + l])?;
        }
        Ok(())
    }

    fn bypass_cache(&self) {
        self.src.bypass_cache();
        if let Some(d) = &self.data {
            d.bypass_cache();
        }
    }

    fn prefetch_data(&self, offset: u64, len: u64) {
        // The host-contiguous stretches of uncompressed clusters (compressed ones
        // are read whole, through the cluster cache, when decompressed).
        let mut cur = Cursor::default();
        let mut pending: Option<(u64, u64)> = None;
        let mut pos = 0;
        while pos < len {
            let Ok((m, n)) = self.mapping(offset + pos, &mut cur) else {
                break;
            };
            let n = n.min(len - pos);
            match (m, &mut pending) {
                (Qcow2Mapping::Data { host }, Some((h, l))) if h.checked_add(*l) == Some(host) => {
                    *l += n
                }
                (m, _) => {
                    if let Some((h, l)) = pending.take() {
                        self.data_src().will_need(h, l);
                    }
                    if let Qcow2Mapping::Data { host } = m {
                        pending = Some((host, n));
                    }
                }
            }
            pos += n;
        }
        if let Some((h, l)) = pending {
            self.data_src().will_need(h, l);
        }
    }

    fn bytes_read(&self) -> u64 {
        self.src.bytes_read() + self.data.as_ref().map_or(0, |d| d.bytes_read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn decompression_stops_at_one_cluster_and_ignores_trailing_bytes() {
        let cluster: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut z = Vec::with_capacity(8192);
        flate2::Compress::new(flate2::Compression::default(), false)
            .compress_vec(&cluster, &mut z, flate2::FlushCompress::Finish)
            .unwrap();
        z.extend_from_slice(&[0xa5; 300]); // the next cluster's bytes in the same sector
        let mut out = vec![0u8; 4096];
        assert_eq!(inflate_raw(&z, &mut out), Ok(4096));
        assert_eq!(out, cluster);
        // Cut short: fewer bytes than a cluster, reported as such.
        let mut out = vec![0u8; 4096];
        assert!(inflate_raw(&z[..z.len() / 4], &mut out).is_ok_and(|n| n < 4096));

        let mut s = zstd::bulk::compress(&cluster, 3).unwrap();
        s.extend_from_slice(&[0xa5; 300]);
        let mut out = vec![0u8; 4096];
        assert_eq!(unzstd(&s, &mut out), Ok(4096));
        assert_eq!(out, cluster);
        assert!(unzstd(&[0xff; 64], &mut out).is_err());
    }
}
