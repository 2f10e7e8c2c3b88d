//! Raw images (files and block devices): the file is the disk. Holes of a sparse
//! file are reported as unallocated (SEEK_DATA / SEEK_HOLE), so they are never read.

use std::path::Path;

use super::{Format, Layer, LayerInfo, RunKind};
use crate::error::Result;
use crate::io::{FileSource, ReadAt};

/// A raw image layer.
pub struct RawLayer {
    src: FileSource,
    info: LayerInfo,
}

/// Opens a raw image (the whole file is the virtual disk).
pub fn open(src: FileSource) -> Result<Box<dyn Layer>> {
    let kind = if is_block_device(src.path()) {
        "block device"
    } else {
        "file"
    };
    let info = LayerInfo::new(src.path(), Format::Raw, kind, src.size());
    Ok(Box::new(RawLayer { src, info }))
}

fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Classifies `[offset, offset + max_len)` of a plain file as data or hole, using
/// SEEK_DATA / SEEK_HOLE where the filesystem supports them (everything is data
/// otherwise). Shared by every format whose payload is a flat file region.
pub fn file_run(src: &FileSource, offset: u64, max_len: u64) -> (RunKind, u64) {
    match src.span_at(offset) {
        Some((true, end)) => (RunKind::Data, (end - offset).clamp(1, max_len)),
        Some((false, end)) => (RunKind::Unallocated, (end - offset).clamp(1, max_len)),
        // Not supported, or anything odd: treat as data (correct, just slower).
        None => (RunKind::Data, max_len),
    }
}

impl Layer for RawLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)> {
        Ok(file_run(&self.src, offset, max_len))
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.src.read_exact_at(offset, buf)
    }

    fn prefetch_data(&self, offset: u64, len: u64) {
        self.src.will_need(offset, len);
    }

    fn bypass_cache(&self) {
        self.src.bypass_cache();
    }

    fn bytes_read(&self) -> u64 {
        self.src.bytes_read()
    }
}
