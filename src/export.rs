//! Whole-disk export: the virtual disk of an image (later: of a restore point) to a
//! file. A front end over [`DiskImage`], so every source plugs in.
//!
//! Raw export writes a sparse file: unallocated and explicitly-zero ranges are never
//! read and become holes; zero 4 KiB runs inside data are not written either. Blocks
//! are handed out in disk order to a few workers, each with its own page-aligned
//! buffer, so memory stays at `workers × BLOCK` whatever the disk size.
//!
//! Reads and writes go through the page cache, as qemu-img's do. A worker waits for
//! its read most of the time, so there are several workers per thread to keep the
//! device busy (the kernel's readahead does the rest). Writes start their
//! writeback in batches ([`output::WriteBehind`]), so the device writes while the
//! export still reads, and the fsync at the end finds little left to do.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{DiskImage, RunKind};
use crate::io::AlignedBuf;
use crate::progress::bytes_bar;

mod container;
mod ids;
mod output;
mod pipeline;
mod qcow2;
mod vhd;
mod vhdx;
mod vmdk;
mod vmdk_stream;

/// Size of one unit of parallel work.
const BLOCK: u64 = 4 << 20;

/// Zero runs of at least this size inside data are left as holes in a raw file.
const HOLE_GRANULE: u64 = 4096;

/// Workers per thread of the global pool (`--threads`): a worker waits for its read
/// most of the time, so several per thread keep the device busy (measured on the
/// export benchmark: 4 per thread beat 1, 2 and 8).
pub(crate) const WORKERS_PER_THREAD: usize = 4;

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum ExportFormat {
    /// Raw, sparse.
    Raw,
    /// qcow2 v3 (QEMU/KVM).
    Qcow2,
    /// VMDK (VMware): monolithicSparse (default) or streamOptimized.
    Vmdk,
    /// VHD (Virtual PC, Hyper-V, Azure): dynamic (default) or fixed.
    Vhd,
    /// VHDX (Hyper-V): dynamic (default) or fixed.
    Vhdx,
}

impl ExportFormat {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Raw => "raw",
            ExportFormat::Qcow2 => "qcow2",
            ExportFormat::Vmdk => "vmdk",
            ExportFormat::Vhd => "vhd",
            ExportFormat::Vhdx => "vhdx",
        }
    }

    /// The `--subformat` values this format takes, its default first (none: the
    /// format has no variants). `export::container` checks the same combinations.
    pub fn subformats(self) -> &'static [Subformat] {
        match self {
            ExportFormat::Raw | ExportFormat::Qcow2 => &[],
            ExportFormat::Vmdk => &[Subformat::MonolithicSparse, Subformat::StreamOptimized],
            ExportFormat::Vhd | ExportFormat::Vhdx => &[Subformat::Dynamic, Subformat::Fixed],
        }
    }
}

/// Variants of a format, named as `qemu-img create -o subformat=` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Subformat {
    /// VHD / VHDX: blocks allocated as data is met (default).
    #[value(name = "dynamic")]
    Dynamic,
    /// VHD / VHDX: every block present, the file as large as the disk.
    #[value(name = "fixed")]
    Fixed,
    /// VMDK: one sparse file, grains allocated as data is met (default).
    #[value(name = "monolithicSparse")]
    MonolithicSparse,
    /// VMDK: compressed grains in one stream, for OVF/OVA and vSphere import.
    #[value(name = "streamOptimized")]
    StreamOptimized,
}

impl Subformat {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::Dynamic => "dynamic",
            Subformat::Fixed => "fixed",
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
}

/// Options of an export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// The format's variant (None: its default).
    pub subformat: Option<Subformat>,
    /// Round a fixed VHD up to whole MiB.
    pub align: bool,
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
    /// Bytes written to the output (data that was not all zero, plus a container's
    /// metadata; compressed, for streamOptimized).
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
    match container::Target::from_options(opts)? {
        container::Target::Raw => export_raw(disk, out, opts),
        target => container::export(disk, out, target, opts.force),
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
                "{} already exists; pass --force (or --overwrite) to replace it",
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
    let written = AtomicU64::new(0);
    let output = RawOutput {
        file: &file,
        path: target,
        behind: output::WriteBehind::default(),
        device,
    };
    // Workers take blocks in disk order, so reads and writes stay nearly sequential.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = (rayon::current_num_threads() * WORKERS_PER_THREAD).clamp(1, work.len().max(1));
    let worker = || -> Result<()> {
        // Page-aligned: see AlignedBuf.
        let mut block = AlignedBuf::new(BLOCK as usize);
        while !failed.load(Ordering::Relaxed) {
            let Some(&(off, len, is_data)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            block.set_len(len as usize); // len ≤ BLOCK
            let buf = block.as_mut_slice();
            let copied =
                crate::interrupt::check().and_then(|()| output.copy_block(disk, off, buf, is_data));
            match copied {
                Ok(n) => {
                    written.fetch_add(n, Ordering::Relaxed);
                }
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
    file.sync_all().map_err(|e| Error::io(target, "sync", e))?;
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

/// The raw file (or device) an export writes, with its write-behind state.
struct RawOutput<'a> {
    file: &'a File,
    /// For messages: the file being written (the temporary name of a file).
    path: &'a Path,
    behind: output::WriteBehind,
    /// A device gets every byte (it may hold old data); a fresh file keeps holes.
    device: bool,
}

impl RawOutput<'_> {
    /// Copies one block (`buf.len()` bytes at `off`) from the disk to the output: data
    /// is read, zeros are not. On a fresh file only the non-zero 4 KiB granules are
    /// written (the rest stay holes, as `qemu-img convert -S 4k` leaves them); a device
    /// gets every byte. Returns the bytes written.
    fn copy_block(
        &self,
        disk: &(dyn DiskImage + '_),
        off: u64,
        buf: &mut [u8],
        is_data: bool,
    ) -> Result<u64> {
        if is_data {
            disk.read_exact_at(off, buf)?;
        } else {
            buf.fill(0);
        }
        let runs = if self.device {
            std::iter::once(off..off + buf.len() as u64).collect()
        } else {
            pipeline::nonzero_runs(buf, off, HOLE_GRANULE)
        };
        let mut written = 0;
        for r in runs {
            // OK: runs lie inside the block by construction.
            let bytes = &buf[(r.start - off) as usize..(r.end - off) as usize];
            self.behind.write(self.file, self.path, bytes, r.start)?;
            written += bytes.len() as u64;
        }
        Ok(written)
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
