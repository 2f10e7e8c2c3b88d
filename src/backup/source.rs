//! What a backup reads: an image file or chain (1/7), a block device, or an NBD
//! export. Each gives bytes, an allocation map, a count of bytes read (the proof of
//! what an incremental did not read), and what change tracking it can offer.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::error::{Error, Result};
use crate::image::{self, Disk, DiskImage, Extent, RunKind};
use crate::io::ReadAt;
use crate::nbd::NbdDisk;
use crate::repo::manifest::LayerRecord;

/// An open source disk.
pub struct Source {
    /// As the user named it (path or URI).
    pub spec: String,
    kind: Kind,
}

enum Kind {
    Image(Arc<Disk>),
    Nbd(Arc<NbdDisk>),
}

/// Whether `spec` names an NBD export rather than a file.
pub fn is_nbd_uri(spec: &str) -> bool {
    spec.starts_with("nbd://") || spec.starts_with("nbd+unix://") || spec.starts_with("nbds")
}

impl Source {
    /// Opens `spec`; `dirty_bitmap` asks an NBD server for that bitmap's meta context.
    pub fn open(spec: &str, dirty_bitmap: Option<&str>) -> Result<Self> {
        let kind = if is_nbd_uri(spec) {
            Kind::Nbd(Arc::new(NbdDisk::connect(spec, dirty_bitmap)?))
        } else {
            if dirty_bitmap.is_some() {
                return Err(Error::Usage(format!(
                    "{spec}: --dirty-bitmap needs an NBD source (nbd://… or nbd+unix://…), e.g. qemu-nbd -B NAME"
                )));
            }
            let disk = image::open(Path::new(spec))?;
            // Each block is read once: keeping it in the host's page cache would
            // only evict what the host's VMs use, and cost CPU the backup needs.
            disk.bypass_cache();
            Kind::Image(Arc::new(disk))
        };
        Ok(Source {
            spec: spec.to_string(),
            kind,
        })
    }

    /// The disk as bytes plus allocation map.
    pub fn disk(&self) -> Arc<dyn DiskImage> {
        match &self.kind {
            Kind::Image(d) => d.clone(),
            Kind::Nbd(d) => d.clone(),
        }
    }

    /// Format name for the manifest.
    pub fn format(&self) -> String {
        match &self.kind {
            Kind::Image(d) => d.format().to_string(),
            Kind::Nbd(_) => "nbd".into(),
        }
    }

    pub fn size(&self) -> u64 {
        self.disk().size()
    }

    /// Bytes read from the source so far (data and metadata).
    pub fn bytes_read(&self) -> u64 {
        match &self.kind {
            Kind::Image(d) => d.bytes_read(),
            Kind::Nbd(d) => d.bytes_read(),
        }
    }

    /// Warnings from opening (e.g. a dirty VHDX log replayed in memory).
    pub fn warnings(&self) -> Vec<String> {
        match &self.kind {
            Kind::Image(d) => d.warnings().to_vec(),
            Kind::Nbd(_) => Vec::new(),
        }
    }

    /// The layers of an image chain, top first, as identities to compare with a later
    /// backup's chain. Empty for NBD exports.
    pub fn layer_records(&self) -> Result<Vec<LayerRecord>> {
        let Kind::Image(disk) = &self.kind else {
            return Ok(Vec::new());
        };
        disk.layers()
            .map(|info| {
                let mut file_bytes = 0u64;
                let mut modified_ns = 0i128;
                for f in &info.files {
                    let meta = std::fs::metadata(f).map_err(|e| Error::io(f, "stat", e))?;
                    file_bytes += meta.len();
                    let m = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as i128);
                    modified_ns = modified_ns.max(m);
                }
                let path = std::fs::canonicalize(&info.path).unwrap_or_else(|_| info.path.clone());
                Ok(LayerRecord {
                    path: path.display().to_string(),
                    format: info.format.to_string(),
                    file_bytes,
                    modified_ns,
                    identity: info.identity.clone(),
                })
            })
            .collect()
    }

    /// Ranges that the top `levels` layers of the chain hold (data or zero), i.e.
    /// everything written since the layer below them was frozen.
    pub fn upper_layer_ranges(&self, levels: usize) -> Result<Vec<Range<u64>>> {
        let Kind::Image(disk) = &self.kind else {
            return Ok(Vec::new());
        };
        let size = disk.size();
        let mut out: Vec<Range<u64>> = Vec::new();
        for level in 0..levels {
            for Extent { start, len, kind } in disk.layer_extents(level, 0..size)? {
                if kind != RunKind::Unallocated {
                    out.push(start..start + len);
                }
            }
        }
        Ok(out)
    }

    /// Dirty ranges of the negotiated bitmap (NBD sources only).
    pub fn dirty_ranges(&self) -> Result<Vec<Range<u64>>> {
        match &self.kind {
            Kind::Nbd(d) => d.dirty_extents(0..d.size()),
            Kind::Image(_) => Err(Error::Usage(format!(
                "{}: a dirty bitmap needs an NBD source",
                self.spec
            ))),
        }
    }
}
