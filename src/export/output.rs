//! The output file of a container export: written under `<out>.vmback-partial`,
//! synced and renamed over `<out>` only when complete, and removed on any error
//! (also on a panic, through `Drop`), so a failed export never leaves a
//! plausible-looking disk behind. The same contract as the raw export.
//!
//! Container formats rely on a fresh file reading as zeros where nothing was written
//! (the holes inside allocated blocks), so they refuse block devices and anything else
//! that is not a regular file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::partial_name;
use crate::error::{Error, Result};

/// A container being written. Writes are positional and `&self`, so the pipeline's
/// workers write data in parallel.
pub(super) struct Output {
    file: File,
    out: PathBuf,
    tmp: PathBuf,
    written: AtomicU64,
    behind: WriteBehind,
    done: bool,
}

impl Output {
    /// Creates `<out>.vmback-partial` after checking that `out` may be (re)placed.
    pub fn create(out: &Path, force: bool, format: &str) -> Result<Output> {
        if let Ok(m) = std::fs::metadata(out) {
            if !m.is_file() {
                return Err(Error::Usage(format!(
                    "{}: not a regular file; a {format} export writes a new file (only raw can be written to a device)",
                    out.display()
                )));
            }
            if !force {
                return Err(Error::Usage(format!(
                    "{} already exists; pass --force (or --overwrite) to replace it",
                    out.display()
                )));
            }
        }
        let tmp = partial_name(out);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
        Ok(Output {
            file,
            out: out.to_path_buf(),
            tmp,
            written: AtomicU64::new(0),
            behind: WriteBehind::default(),
            done: false,
        })
    }

    /// The final name (what the user asked for), for messages and descriptors.
    pub fn final_path(&self) -> &Path {
        &self.out
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.behind.write(&self.file, &self.tmp, buf, offset)?;
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Extends (or truncates) the file to `len` bytes; new bytes read as zeros and
    /// take no space.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io(&self.tmp, format!("set length to {len}"), e))
    }

    /// Syncs and renames the file to its final name. Returns the bytes written.
    pub fn finish(mut self) -> Result<u64> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(&self.tmp, "sync", e))?;
        std::fs::rename(&self.tmp, &self.out)
            .map_err(|e| Error::io(&self.out, format!("rename from {}", self.tmp.display()), e))?;
        self.done = true;
        Ok(self.written.load(Ordering::Relaxed))
    }
}

/// Starts the writeback of an output's freshly written pages in batches, so the
/// device writes while the export still reads and the final fsync finds little left
/// (measured 10-20% faster than leaving the whole output to the fsync), and the dirty
/// page cache stays small. `POSIX_FADV_DONTNEED` starts writeback of dirty pages
/// without waiting for it. Batches rather than every write: workers write in nearly
/// ascending order, so a batch is one long range the device takes in large requests.
///
/// It also lets one write into the page cache at a time. A buffered write on ext4
/// holds the inode's lock for the whole copy, and the other writers' tasks spin on
/// it in the kernel (`rwsem_spin_on_owner`: 16% of an export's CPU with 8 workers);
/// waiting on our own lock sleeps instead, and leaves the core to the readers.
#[derive(Default)]
pub(crate) struct WriteBehind {
    pending: Mutex<Pending>,
    writing: Mutex<()>,
}

/// The range written since the last kick, and how much was written in it.
#[derive(Default)]
struct Pending {
    lo: u64,
    hi: u64,
    bytes: u64,
}

/// Largest single write into the page cache. The kernel sizes the page-cache folios
/// of a buffered write by its length, and first touches of large folios were slow
/// on the benchmark machine (a VM whose free memory goes back to its host): a raw
/// export writing 4 MiB at a time spent 5.0-6.0 s of CPU on 2.4 GiB of data (warm
/// cache, 75% of it copying into the page cache), writing 1 MiB at a time 1.4-2.0 s,
/// and 256 KiB no better. Cold, 1 MiB also came out ahead of 4 MiB and 256 KiB.
const MAX_WRITE: usize = 1 << 20;

/// Bytes written between two kicks.
const WRITE_BEHIND_BATCH: u64 = 16 << 20;

impl WriteBehind {
    /// Writes `buf` at `offset` of `file` (named `path` in errors) through the page
    /// cache, kicking the writeback of the batch it completes.
    pub fn write(&self, file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
        {
            let _one_at_a_time = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            let mut at = offset;
            for piece in buf.chunks(MAX_WRITE) {
                file.write_all_at(piece, at).map_err(|e| {
                    Error::io(
                        path,
                        format!("write {} bytes at offset {at:#x}", piece.len()),
                        e,
                    )
                })?;
                at += piece.len() as u64;
            }
        }
        let end = offset.saturating_add(buf.len() as u64);
        let kick = {
            let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.bytes == 0 {
                (p.lo, p.hi) = (offset, end);
            } else {
                (p.lo, p.hi) = (p.lo.min(offset), p.hi.max(end));
            }
            p.bytes += buf.len() as u64;
            (p.bytes >= WRITE_BEHIND_BATCH).then(|| {
                p.bytes = 0;
                (p.lo, p.hi)
            })
        };
        if let Some((lo, hi)) = kick {
            // Advice only: an error here loses nothing (the fsync at the end still runs).
            let _ = rustix::fs::fadvise(
                file,
                lo,
                std::num::NonZeroU64::new(hi - lo),
                rustix::fs::Advice::DontNeed,
            );
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
