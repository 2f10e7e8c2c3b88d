//! Whole-disk export: the virtual disk of an image (later: of a restore point) to a
//! file. A front end over [`DiskImage`], so every source plugs in.
//!
//! Raw export writes a sparse file: unallocated and explicitly-zero ranges are never
//! read and become holes; data blocks that turn out to be all zero are not written
//! either. Blocks are handed out in disk order to a few workers, each with its own
//! buffer, so memory stays at `workers × BLOCK` whatever the disk size.
//!
//! The data streams once through memory, so it bypasses the page cache on both sides
//! where the filesystems allow (O_DIRECT; see [`crate::io::FileSource`] for reads
//! and [`Output`] for writes): filling the cache with a disk that is read once and
//! written once evicts the host's working set, and copying every byte in and out of
//! it costs more CPU than the rest of the export. Direct I/O waits for the device, so
//! there are twice as many workers as threads, to keep requests in flight.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use vmback_parsers::bytes::is_zero;

use crate::error::{Error, Result};
use crate::image::{DiskImage, RunKind};
use crate::progress::bytes_bar;

/// Size of one unit of parallel work.
const BLOCK: u64 = 4 << 20;

/// Alignment of the work buffers (a page: what direct I/O asks of memory at most).
const BUF_ALIGN: usize = 4096;

/// Alignment of offsets and lengths written around the page cache: at least the
/// filesystem block, so ext4 never takes its slow path for partial-block direct writes.
const MIN_DIRECT_WRITE_ALIGN: u64 = 4096;

/// Workers per thread of the global pool (`--threads`): half of them wait on the
/// device at any time with direct I/O.
const WORKERS_PER_THREAD: usize = 2;

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum ExportFormat {
    /// Raw, sparse.
    Raw,
}

/// Options of an export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// Replace an existing output file.
    pub force: bool,
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportStats {
    pub output: PathBuf,
    pub virtual_size: u64,
    /// Bytes of the virtual disk stored as data in the source chain.
    pub data_bytes: u64,
    /// Bytes written to the output (data that was not all zero).
    pub written_bytes: u64,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Writes the whole virtual disk of `disk` to `out`.
pub fn export(
    disk: &(dyn DiskImage + '_),
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportStats> {
    match opts.format {
        ExportFormat::Raw => export_raw(disk, out, opts),
    }
}

fn export_raw(
    disk: &(dyn DiskImage + '_),
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportStats> {
    let started = Instant::now();
    let size = disk.size();
    let device = std::fs::metadata(out)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    // A regular file is written under a temporary name and renamed at the end, so a
    // failed or interrupted export never leaves a plausible-looking partial disk.
    let (file, tmp) = if device {
        let f = OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| Error::io(out, "open for writing", e))?;
        (f, None)
    } else {
        if out.exists() && !opts.force {
            return Err(Error::Usage(format!(
                "{} already exists; pass --force to replace it",
                out.display()
            )));
        }
        let tmp = partial_name(out);
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
        f.set_len(size)
            .map_err(|e| Error::io(&tmp, format!("set length to {size}"), e))?;
        (f, Some(tmp))
    };
    let target = tmp.as_deref().unwrap_or(out);

    let extents = disk.extents(0..size)?;
    // On a device every byte must be written (it may hold old data); on a fresh
    // sparse file only data needs writing.
    let mut work = Vec::new();
    let mut data_bytes = 0;
    for e in &extents {
        let is_data = e.kind == RunKind::Data;
        if is_data {
            data_bytes += e.len;
        }
        if is_data || device {
            let mut off = e.start;
            while off < e.end() {
                let len = (BLOCK - off % BLOCK).min(e.end() - off);
                work.push((off, len, is_data));
                off += len;
            }
        }
    }
    let bar = bytes_bar(work.iter().map(|w| w.1).sum(), "export");
    let output = Output::new(file, target);
    let written = AtomicU64::new(0);
    // Workers take blocks in disk order, so reads and writes stay nearly sequential.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = (rayon::current_num_threads() * WORKERS_PER_THREAD).clamp(1, work.len().max(1));
    let worker = || -> Result<()> {
        let mut mem = vec![0u8; BLOCK as usize + BUF_ALIGN];
        // OK: align_offset < BUF_ALIGN for a byte pointer; min() keeps it in bounds anyway.
        let at = mem.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN);
        let block = &mut mem[at..at + BLOCK as usize];
        while !failed.load(Ordering::Relaxed) {
            let Some(&(off, len, is_data)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let buf = &mut block[..len as usize]; // OK: len ≤ BLOCK
            match copy_block(disk, &output, off, buf, is_data, device) {
                Ok(true) => {
                    written.fetch_add(len, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            bar.inc(len);
        }
        Ok(())
    };
    let result = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let h = std::thread::Builder::new()
                .name(format!("vmback-export-{i}"))
                .spawn_scoped(s, worker);
            match h {
                Ok(h) => handles.push(h),
                // Fewer workers is slower, not wrong; none at all is an error.
                Err(e) if handles.is_empty() => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(Error::io(target, "start export worker thread", e));
                }
                Err(_) => break,
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold(Ok(()), Result::and)
    });
    bar.finish_and_clear();
    if let Err(e) = result {
        if let Some(tmp) = &tmp {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    output
        .file
        .sync_all()
        .map_err(|e| Error::io(target, "sync", e))?;
    if let Some(tmp) = &tmp {
        std::fs::rename(tmp, out)
            .map_err(|e| Error::io(out, format!("rename from {}", tmp.display()), e))?;
    }
    Ok(ExportStats {
        output: out.to_path_buf(),
        virtual_size: size,
        data_bytes,
        written_bytes: written.into_inner(),
        duration: started.elapsed(),
    })
}

/// Copies one block (`buf.len()` bytes at `off`) from the disk to the output: data is
/// read, zeros are not; all-zero blocks stay holes unless the output is a device.
/// Returns whether it was written.
fn copy_block(
    disk: &(dyn DiskImage + '_),
    output: &Output<'_>,
    off: u64,
    buf: &mut [u8],
    is_data: bool,
    device: bool,
) -> Result<bool> {
    if is_data {
        disk.read_exact_at(off, buf)?;
    } else {
        buf.fill(0);
    }
    if device || !is_zero(buf) {
        output.write_all_at(buf, off)?;
        return Ok(true);
    }
    Ok(false)
}

/// The output file, with an O_DIRECT twin for writes that meet its alignment.
struct Output<'a> {
    file: File,
    path: &'a Path,
    /// The direct descriptor and the alignment of offsets, lengths and buffers it
    /// needs; `None` where the filesystem has no direct I/O (tmpfs, some FUSE).
    direct: Option<(File, u64)>,
}

impl<'a> Output<'a> {
    fn new(file: File, path: &'a Path) -> Self {
        use rustix::fs::{statx, AtFlags, OFlags, StatxFlags};
        let direct = statx(&file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)
            .ok()
            .filter(|st| {
                StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN)
                    && st.stx_dio_offset_align != 0
                    && st.stx_dio_mem_align != 0
            })
            .and_then(|st| {
                let align = u64::from(st.stx_dio_offset_align.max(st.stx_dio_mem_align))
                    .max(MIN_DIRECT_WRITE_ALIGN);
                // Opened by path right after we created it (or the device we were given).
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(OFlags::DIRECT.bits() as i32)
                    .open(path)
                    .ok()?;
                Some((f, align))
            });
        Output { file, path, direct }
    }

    fn write_all_at(&self, buf: &[u8], off: u64) -> Result<()> {
        let len = buf.len() as u64;
        let direct = self.direct.as_ref().filter(|(_, a)| {
            off % a == 0 && len % a == 0 && (buf.as_ptr() as usize as u64) % a == 0
        });
        let res = match direct.map(|(f, _)| f.write_all_at(buf, off)) {
            // EINVAL: the filesystem refused this direct write after all.
            Some(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.file.write_all_at(buf, off)
            }
            Some(r) => r,
            None => self.file.write_all_at(buf, off),
        };
        res.map_err(|e| {
            Error::io(
                self.path,
                format!("write {len} bytes at offset {off:#x}"),
                e,
            )
        })
    }
}

fn partial_name(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".vmback-partial");
    out.with_file_name(name)
}
