//! Positional, shared, read-only bytes: the one I/O abstraction every layer sees.
//!
//! One handle serves rayon workers and FUSE threads at once, so everything is
//! `&self` + `Send + Sync` and reads are `pread`-style (no shared cursor).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Shared, read-only, positional bytes.
pub trait ReadAt: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past [`ReadAt::size`] is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A file or block device opened read-only, with a count of the bytes read from it
/// (so a backup or an export can prove what it did and did not read).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
    bytes_read: AtomicU64,
}

impl FileSource {
    /// Opens `path` read-only; the size of a block device is found by seeking to its end.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, "find size", e))?;
        Ok(FileSource {
            file,
            path: path.to_path_buf(),
            size,
            bytes_read: AtomicU64::new(0),
        })
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for SEEK_DATA / SEEK_HOLE queries).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// How many bytes were read so far through this handle.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Reads `len` bytes at `offset` into a new buffer. The caller bounds `len`
    /// (by a limit or by an already validated field) before calling.
    pub fn read_vec_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// Reads up to `buf.len()` bytes at `offset`, fewer only at end of file.
    pub fn read_at_most(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        self.read_exact_at(offset, &mut buf[..avail])?;
        Ok(avail)
    }
}

impl ReadAt for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(Error::Io {
                path: self.path.clone(),
                op: format!("read {} bytes at offset {offset:#x}", buf.len()),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file is only {} bytes long (truncated?)", self.size),
                ),
            });
        }
        self.file.read_exact_at(buf, offset).map_err(|e| {
            Error::io(
                &self.path,
                format!("read {} bytes at offset {offset:#x}", buf.len()),
                e,
            )
        })?;
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A window `[start, start + len)` onto another `ReadAt` (a partition, an extent).
pub struct Window<R> {
    inner: R,
    start: u64,
    len: u64,
}

impl<R: ReadAt> Window<R> {
    /// A window; `start + len` must lie within `inner` (checked).
    pub fn new(inner: R, start: u64, len: u64) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= inner.size()).then_some(Window { inner, start, len })
    }
}

impl<R: ReadAt> ReadAt for Window<R> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(Error::OutOfRange {
                path: PathBuf::from("<window>"),
                offset,
                len: buf.len() as u64,
                size: self.len,
            });
        }
        self.inner.read_exact_at(self.start + offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}

/// A `Read + Seek` cursor over a `ReadAt`, for crates that want std I/O traits
/// (ntfs, fatfs). Writes are refused: everything vmback opens is read-only.
pub struct ReadAtCursor {
    inner: std::sync::Arc<dyn ReadAt>,
    pos: u64,
}

impl ReadAtCursor {
    /// A cursor at offset 0.
    pub fn new(inner: std::sync::Arc<dyn ReadAt>) -> Self {
        ReadAtCursor { inner, pos: 0 }
    }
}

impl std::io::Read for ReadAtCursor {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.inner.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.inner
            .read_exact_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for ReadAtCursor {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.inner.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before start")
        })?;
        Ok(self.pos)
    }
}

impl std::io::Write for ReadAtCursor {
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
