//! Parent chains, once for every format: probe a file by content, open its layer,
//! follow its parent reference (relative to the child, at most
//! [`MAX_CHAIN_DEPTH`] deep, loops refused), and read the stack as one disk where
//! each unallocated range falls through to the layer below.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use vmback_parsers::limits::MAX_CHAIN_DEPTH;
use vmback_parsers::probe::{probe, Probed, PROBE_HEAD_BYTES};

use super::{DiskImage, Extent, Format, Layer, LayerInfo, RunKind};
use crate::error::{Error, Result};
use crate::io::{FileSource, ReadAt};

/// A virtual disk made of a chain of layers, top (the file the user named) first.
pub struct Disk {
    layers: Vec<Box<dyn Layer>>,
    size: u64,
    warnings: Vec<String>,
}

/// Opens the image at `path`, detecting its format by content, with its parents.
pub fn open(path: &Path) -> Result<Disk> {
    open_with_format(path, None)
}

/// Opens `path`, forcing `format` when given (e.g. a fixed VHD a user wants read as raw).
pub fn open_with_format(path: &Path, format: Option<Format>) -> Result<Disk> {
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some((path.to_path_buf(), format));
    while let Some((file, fmt)) = next.take() {
        let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if !seen.insert(canonical) {
            return Err(Error::Chain {
                path: path.to_path_buf(),
                reason: format!("loop: {} is its own ancestor", file.display()),
            });
        }
        if layers.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::Chain {
                path: path.to_path_buf(),
                reason: format!(
                    "more than {MAX_CHAIN_DEPTH} layers (limit MAX_CHAIN_DEPTH); next would be {}",
                    file.display()
                ),
            });
        }
        let layer = open_layer(&file, fmt)?;
        if let Some(child) = layers.last() {
            check_identity(child.info(), layer.info(), &mut warnings);
        }
        if let Some(parent) = &layer.info().parent {
            let found = resolve_parent(&file, &parent.names)?;
            next = Some((found, parent.format));
        }
        layers.push(layer);
    }
    // OK: the loop runs at least once and pushes a layer or returns an error.
    let size = layers.first().map(|l| l.info().virtual_size).unwrap_or(0);
    for l in &layers {
        warnings.extend(
            l.info()
                .warnings
                .iter()
                .map(|w| format!("{}: {w}", l.info().path.display())),
        );
    }
    Ok(Disk {
        layers,
        size,
        warnings,
    })
}

/// Opens one file as a layer, by its content (or as `forced` raw).
fn open_layer(path: &Path, forced: Option<Format>) -> Result<Box<dyn Layer>> {
    let src = FileSource::open(path)?;
    let mut head = vec![0u8; PROBE_HEAD_BYTES];
    let n = src.read_at_most(0, &mut head)?;
    head.truncate(n);
    let mut tail = vec![0u8; 512];
    if src.size() >= 512 {
        src.read_exact_at(src.size() - 512, &mut tail)?;
    } else {
        tail.clear();
    }
    let probed = probe(&head, &tail);
    let detected = match probed {
        Probed::Qcow2 => Format::Qcow2,
        Probed::Vhdx => Format::Vhdx,
        Probed::VhdDynamic | Probed::VhdFixed => Format::Vhd,
        Probed::VmdkSparse | Probed::VmdkCowd | Probed::VmdkDescriptor => Format::Vmdk,
        Probed::Raw => Format::Raw,
    };
    match forced {
        Some(Format::Raw) => return super::raw::open(src),
        Some(f) if f != detected => {
            return Err(Error::Chain {
                path: path.to_path_buf(),
                reason: format!("expected a {f} image here, but the content looks like {detected}"),
            })
        }
        _ => {}
    }
    match detected {
        Format::Qcow2 => super::qcow2::open(src),
        Format::Vhdx => super::vhdx::open(src),
        Format::Vhd => super::vhd::open(src),
        Format::Vmdk => super::vmdk::open(src),
        Format::Raw => super::raw::open(src),
    }
}

/// Finds the parent file: each candidate as stored (backslashes read as separators,
/// relative names against the child's directory), then its bare file name next to
/// the child (images are often moved together, away from their recorded paths).
fn resolve_parent(child: &Path, names: &[String]) -> Result<PathBuf> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut tried = Vec::new();
    for name in names {
        let unixy = name.replace('\\', "/");
        let unixy = unixy.strip_prefix("./").unwrap_or(&unixy).to_string();
        let as_given = Path::new(&unixy);
        let candidate = if as_given.is_absolute() {
            as_given.to_path_buf()
        } else {
            dir.join(as_given)
        };
        tried.push(candidate.clone());
        if let Some(base) = unixy.rsplit('/').next().filter(|b| !b.is_empty()) {
            tried.push(dir.join(base));
        }
    }
    for c in &tried {
        if c.is_file() || c.exists() {
            return Ok(c.clone());
        }
    }
    let first = tried
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("<no name recorded>"));
    Err(Error::Missing {
        what: "parent image",
        missing: first,
        referenced_by: child.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("tried: {}", join_paths(&tried)),
        ),
    })
}

fn join_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_identity(child: &LayerInfo, parent: &LayerInfo, warnings: &mut Vec<String>) {
    let expected = child
        .parent
        .as_ref()
        .and_then(|p| p.expected_identity.as_ref());
    if let (Some(expected), Some(actual)) = (expected, parent.identity.as_ref()) {
        if !expected.eq_ignore_ascii_case(actual) {
            warnings.push(format!(
                "{}: parent {} has identity {actual}, but the child expects {expected} (parent modified after the child was made?)",
                child.path.display(),
                parent.path.display()
            ));
        }
    }
}

impl Disk {
    /// The layers, top first.
    pub fn layers(&self) -> impl Iterator<Item = &LayerInfo> {
        self.layers.iter().map(|l| l.info())
    }

    /// Number of layers in the chain.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Warnings of every layer and of the chain.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The file the user named.
    pub fn path(&self) -> &Path {
        // OK: a Disk always has at least one layer (see `open_with_format`).
        &self.layers[0].info().path
    }

    /// Bytes read from all files of the chain so far.
    pub fn bytes_read(&self) -> u64 {
        self.layers.iter().map(|l| l.bytes_read()).sum()
    }

    /// The extents of layer `level` alone (0 = top): `Unallocated` where that layer
    /// has nothing and reads fall through. Used for change tracking by differencing layer.
    pub fn layer_extents(&self, level: usize, range: Range<u64>) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        if let Some(layer) = self.layers.get(level) {
            let end = range.end.min(layer.info().virtual_size);
            let mut off = range.start;
            while off < end {
                let (kind, n) = checked_run(layer.as_ref(), off, end - off)?;
                push_extent(&mut out, off, n, kind);
                off += n;
            }
        }
        Ok(out)
    }

    fn read_level(&self, level: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(layer) = self.layers.get(level) else {
            buf.fill(0);
            return Ok(());
        };
        let lsize = layer.info().virtual_size;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            if off >= lsize {
                buf[pos..].fill(0);
                break;
            }
            let want = ((buf.len() - pos) as u64).min(lsize - off);
            let (kind, n) = checked_run(layer.as_ref(), off, want)?;
            let piece = &mut buf[pos..pos + n as usize];
            match kind {
                RunKind::Data => layer.read_data(off, piece)?,
                RunKind::Zero => piece.fill(0),
                RunKind::Unallocated => self.read_level(level + 1, off, piece)?,
            }
            pos += n as usize;
        }
        Ok(())
    }

    /// [`Disk::read_level`]'s walk, starting the reads instead of making them.
    fn prefetch_level(&self, level: usize, range: Range<u64>) -> Result<()> {
        let Some(layer) = self.layers.get(level) else {
            return Ok(());
        };
        let end = range.end.min(layer.info().virtual_size);
        let mut off = range.start;
        while off < end {
            let (kind, n) = checked_run(layer.as_ref(), off, end - off)?;
            match kind {
                RunKind::Data => layer.prefetch_data(off, n),
                RunKind::Zero => {}
                RunKind::Unallocated => self.prefetch_level(level + 1, off..off + n)?,
            }
            off += n;
        }
        Ok(())
    }

    fn extents_level(&self, level: usize, range: Range<u64>, out: &mut Vec<Extent>) -> Result<()> {
        let Some(layer) = self.layers.get(level) else {
            push_extent(
                out,
                range.start,
                range.end - range.start,
                RunKind::Unallocated,
            );
            return Ok(());
        };
        let lsize = layer.info().virtual_size;
        let mut off = range.start;
        while off < range.end {
            if off >= lsize {
                push_extent(out, off, range.end - off, RunKind::Unallocated);
                break;
            }
            let want = (range.end - off).min(lsize - off);
            let (kind, n) = checked_run(layer.as_ref(), off, want)?;
            match kind {
                RunKind::Unallocated => self.extents_level(level + 1, off..off + n, out)?,
                k => push_extent(out, off, n, k),
            }
            off += n;
        }
        Ok(())
    }
}

/// `run_at` with its contract enforced, so a buggy or hostile layer cannot make the
/// caller loop forever or overrun a buffer.
fn checked_run(layer: &dyn Layer, off: u64, want: u64) -> Result<(RunKind, u64)> {
    let (kind, n) = layer.run_at(off, want)?;
    if n == 0 || n > want {
        return Err(Error::Chain {
            path: layer.info().path.clone(),
            reason: format!("internal: layer returned a run of {n} bytes at {off:#x} (asked for at most {want})"),
        });
    }
    Ok((kind, n))
}

fn push_extent(out: &mut Vec<Extent>, start: u64, len: u64, kind: RunKind) {
    if let Some(last) = out.last_mut() {
        if last.kind == kind && last.end() == start {
            last.len += len;
            return;
        }
    }
    out.push(Extent { start, len, kind });
}

impl ReadAt for Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(Error::OutOfRange {
                path: self.path().to_path_buf(),
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        self.read_level(0, offset, buf)
    }
}

impl DiskImage for Disk {
    fn format(&self) -> Format {
        // OK: a Disk always has at least one layer.
        self.layers[0].info().format
    }

    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        if range.start < end {
            self.extents_level(0, range.start..end, &mut out)?;
        }
        Ok(out)
    }

    fn prefetch(&self, range: Range<u64>) {
        // A hint: a broken table shows up, with its error, in the read that follows.
        let _ = self.prefetch_level(0, range.start..range.end.min(self.size));
    }

    fn bypass_cache(&self) {
        for l in &self.layers {
            l.bypass_cache();
        }
    }
}
