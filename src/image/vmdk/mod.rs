//! VMDK layers: a descriptor (a text file, or embedded in a monolithic sparse file)
//! and its extents, concatenated into one virtual disk.
//!
//! Supported: monolithicSparse, streamOptimized (compressed grains, footer), split
//! sparse and flat (twoGbMaxExtent*), monolithicFlat, ESXi vmfs / vmfsSparse (COWD)
//! / seSparse, ZERO extents; VMFSRDM / VMFSRAW extents are read as flat files (the
//! referenced file or device holds the disk bytes from offset 0); NOACCESS extents
//! read as zeros, with a warning. Snapshot deltas name their parent through
//! `parentFileNameHint` and `parentCID`; the generic chain code resolves and checks them.
//!
//! A sparse extent opened on its own, without an embedded descriptor (e.g.
//! `disk-s001.vmdk` of a twoGbMaxExtentSparse disk) or a bare COWD delta, is refused
//! with a message pointing at the descriptor, as QEMU refuses it: on its own it has
//! no CID and may be only one slice of the disk.
//!
//! Extent file names are relative to the descriptor's directory; a missing one is an
//! [`Error::Missing`] naming it. A sparse extent's own header capacity is what its
//! tables cover; where it is smaller than the descriptor's extent size, the rest
//! reads as zeros (with a warning).

mod sparse;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmback_parsers::limits::MAX_DESCRIPTOR_BYTES;
use vmback_parsers::vmdk::cowd_header::COWD_MAGIC;
use vmback_parsers::vmdk::descriptor::{
    parse_descriptor, VmdkAccess, VmdkDescriptor, VmdkExtentType,
};
use vmback_parsers::vmdk::sesparse_header::SESPARSE_CONST_MAGIC;
use vmback_parsers::vmdk::sparse_header::KDMV_MAGIC;
use vmback_parsers::vmdk::SECTOR;
use vmback_parsers::ParseError;

use self::sparse::SparseExtent;
use super::raw::file_run;
use super::{Format, Layer, LayerInfo, ParentRef, RunKind};
use crate::error::{Error, Result};
use crate::io::{FileSource, ReadAt};

/// How one extent's bytes are found.
enum ExtentReader {
    Zero,
    Flat { src: Arc<FileSource>, start: u64 },
    Sparse(Box<SparseExtent>),
}

/// One extent at its place in the virtual disk.
struct Slot {
    start: u64,
    len: u64,
    reader: ExtentReader,
}

/// A VMDK descriptor with its extents.
pub struct VmdkLayer {
    info: LayerInfo,
    slots: Vec<Slot>,
    /// Every file read (descriptor included), for `bytes_read`.
    sources: Vec<Arc<FileSource>>,
}

/// Bytes of a sparse header we read to identify and parse an extent.
const HEAD_BYTES: u64 = 512;

/// Opens a VMDK image: a text descriptor, or a monolithic sparse / streamOptimized file.
pub fn open(src: FileSource) -> Result<Box<dyn Layer>> {
    let mut head = vec![0u8; HEAD_BYTES as usize];
    let n = src.read_at_most(0, &mut head)?;
    head.truncate(n);
    let path = src.path().to_path_buf();
    if head.starts_with(KDMV_MAGIC) {
        open_monolithic(Arc::new(src), &head)
    } else if head.starts_with(COWD_MAGIC) {
        Err(Error::Unsupported {
            path,
            feature: "a COWD (VMFSSPARSE) delta extent on its own: open the descriptor .vmdk that references it".into(),
        })
    } else {
        ParseError::check_limit(
            "VMDK descriptor",
            0,
            src.size(),
            MAX_DESCRIPTOR_BYTES,
            "MAX_DESCRIPTOR_BYTES",
        )
        .map_err(|e| Error::parse(&path, e))?;
        // OK: size bounded just above.
        let text = src.read_vec_at(0, src.size() as usize)?;
        let desc = parse_descriptor(&text, 0).map_err(|e| Error::parse(&path, e))?;
        let src = Arc::new(src);
        let mut layer = VmdkLayer::new(&path, &desc, src.clone())?;
        layer.add_descriptor_extents(&path, &desc)?;
        Ok(Box::new(layer))
    }
}

/// A sparse file with its descriptor inside: the file itself is the one extent (its
/// embedded descriptor's extent line names the file itself; QEMU ignores it too).
fn open_monolithic(src: Arc<FileSource>, head: &[u8]) -> Result<Box<dyn Layer>> {
    let path = src.path().to_path_buf();
    let (extent, header) = SparseExtent::open_kdmv(src.clone(), head)?;
    if header.descriptor_offset_sectors == 0 {
        return Err(Error::Unsupported {
            path,
            feature: "a sparse extent without an embedded descriptor (one extent of a split twoGbMaxExtentSparse disk?): open the descriptor .vmdk that references it".into(),
        });
    }
    let at = header
        .descriptor_offset_sectors
        .checked_mul(SECTOR)
        .ok_or_else(|| {
            Error::parse(
                &path,
                ParseError::corrupt(
                    "VMDK sparse extent header",
                    0x1C,
                    "descriptor offset overflows",
                ),
            )
        })?;
    // OK: the parser capped the descriptor size at MAX_DESCRIPTOR_BYTES.
    let len = header.descriptor_size_sectors * SECTOR;
    if at.checked_add(len).is_none_or(|e| e > src.size()) {
        return Err(Error::parse(
            &path,
            ParseError::truncated(
                "VMDK embedded descriptor",
                at,
                len,
                src.size().saturating_sub(at),
            ),
        ));
    }
    let text = src.read_vec_at(at, len as usize)?;
    let desc = parse_descriptor(&text, at).map_err(|e| Error::parse(&path, e))?;
    let mut layer = VmdkLayer::new(&path, &desc, src.clone())?;
    let cap = extent.capacity();
    layer.info.virtual_size = cap;
    layer.info.files = vec![path.clone()];
    layer.info.details.extend(extent.details.iter().cloned());
    if desc.total_bytes() != cap {
        layer.info.warnings.push(format!(
            "embedded descriptor describes {} bytes, the sparse header {cap}; the header is used",
            desc.total_bytes()
        ));
    }
    if layer.info.subformat.is_empty() {
        layer.info.subformat = "monolithicSparse".into();
    }
    layer.slots.push(Slot {
        start: 0,
        len: cap,
        reader: ExtentReader::Sparse(Box::new(extent)),
    });
    Ok(Box::new(layer))
}

impl VmdkLayer {
    /// The layer's facts from its descriptor; extents are added by the caller.
    fn new(path: &Path, desc: &VmdkDescriptor, src: Arc<FileSource>) -> Result<Self> {
        let mut info = LayerInfo::new(path, Format::Vmdk, desc.create_type.clone(), 0);
        info.identity = desc.cid.map(|c| format!("{c:08x}"));
        if let Some(hint) = &desc.parent_file_name_hint {
            info.parent = Some(ParentRef {
                names: vec![hint.clone()],
                format: Some(Format::Vmdk),
                expected_identity: desc.parent_cid.map(|c| format!("{c:08x}")),
            });
        }
        let hex = |c: Option<u32>| c.map_or("ffffffff (none)".to_string(), |c| format!("{c:08x}"));
        let d = &mut info.details;
        d.push(("descriptor version".into(), desc.version.to_string()));
        d.push(("CID".into(), hex(desc.cid)));
        d.push(("parentCID".into(), hex(desc.parent_cid)));
        d.push(("createType".into(), desc.create_type.clone()));
        for e in &desc.extents {
            let access = match e.access {
                VmdkAccess::ReadWrite => "RW",
                VmdkAccess::ReadOnly => "RDONLY",
                VmdkAccess::NoAccess => "NOACCESS",
            };
            let file = e
                .file
                .as_deref()
                .map(|f| format!(" \"{f}\""))
                .unwrap_or_default();
            d.push((
                "extent".into(),
                format!(
                    "{access} {} {}{file} {}",
                    e.sectors,
                    e.kind.name(),
                    e.offset_sectors
                ),
            ));
        }
        for (key, label) in [
            ("adapterType", "adapter type"),
            ("uuid", "uuid"),
            ("geometry.cylinders", "geometry cylinders"),
            ("geometry.heads", "geometry heads"),
            ("geometry.sectors", "geometry sectors"),
        ] {
            if let Some(v) = desc.ddb(key) {
                d.push((label.into(), v.to_string()));
            }
        }
        Ok(VmdkLayer {
            info,
            slots: Vec::new(),
            sources: vec![src],
        })
    }

    /// Opens every extent of a standalone descriptor at `path`, in order.
    fn add_descriptor_extents(&mut self, path: &Path, desc: &VmdkDescriptor) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut start = 0u64;
        for line in &desc.extents {
            let len = line.bytes();
            let reader = match (line.kind, line.file.as_deref()) {
                (VmdkExtentType::Zero, _) | (_, None) => ExtentReader::Zero,
                _ if line.access == VmdkAccess::NoAccess => {
                    self.info.warnings.push(format!(
                        "NOACCESS extent at line offset {:#x} reads as zeros",
                        line.line_offset
                    ));
                    ExtentReader::Zero
                }
                (kind, Some(name)) => {
                    let file = extent_path(dir, name);
                    let src = Arc::new(open_extent(&file, path)?);
                    self.info.files.push(file.clone());
                    self.sources.push(src.clone());
                    // OK: the parser checked that offset * 512 fits a u64.
                    self.open_extent_reader(kind, src, len, line.offset_sectors * SECTOR)?
                }
            };
            self.slots.push(Slot { start, len, reader });
            // OK: the parser capped the sum of extent sizes at MAX_VIRTUAL_SIZE.
            start += len;
        }
        self.info.virtual_size = start;
        Ok(())
    }

    fn open_extent_reader(
        &mut self,
        kind: VmdkExtentType,
        src: Arc<FileSource>,
        len: u64,
        start: u64,
    ) -> Result<ExtentReader> {
        use VmdkExtentType as T;
        let reader = match kind {
            T::Flat | T::Vmfs | T::VmfsRdm | T::VmfsRaw => {
                if start.checked_add(len).is_none_or(|e| e > src.size()) && !is_device(src.path()) {
                    self.info.warnings.push(format!(
                        "{}: flat extent file is shorter than its extent ({} bytes from {start}); the rest reads as zeros",
                        src.path().display(),
                        len
                    ));
                }
                return Ok(ExtentReader::Flat { src, start });
            }
            T::Zero => return Ok(ExtentReader::Zero),
            T::Sparse | T::VmfsSparse | T::SeSparse => {
                let mut head = vec![0u8; HEAD_BYTES as usize];
                let n = src.read_at_most(0, &mut head)?;
                head.truncate(n);
                if kind == T::SeSparse {
                    SparseExtent::open_sesparse(src.clone(), &head)?
                } else if head.starts_with(KDMV_MAGIC) {
                    SparseExtent::open_kdmv(src.clone(), &head)?.0
                } else if head.starts_with(COWD_MAGIC) {
                    SparseExtent::open_cowd(src.clone(), &head)?
                } else {
                    let what = if head.starts_with(&SESPARSE_CONST_MAGIC.to_le_bytes()) {
                        "a SESPARSE file"
                    } else {
                        "neither KDMV nor COWD"
                    };
                    return Err(Error::parse(
                        src.path(),
                        ParseError::BadMagic {
                            what: "VMDK sparse extent header",
                            offset: 0,
                            expected: "\"KDMV\" or \"COWD\"".into(),
                            found: what.into(),
                        },
                    ));
                }
            }
        };
        if reader.capacity() != len {
            self.info.warnings.push(format!(
                "{}: sparse header capacity {} differs from the descriptor's extent size {len}{}",
                src.path().display(),
                reader.capacity(),
                if reader.capacity() < len {
                    " (the rest reads as zeros)"
                } else {
                    ""
                }
            ));
        }
        if !self.info.details.iter().any(|(k, _)| k == "grain size") {
            self.info.details.extend(reader.details.iter().cloned());
        }
        Ok(ExtentReader::Sparse(Box::new(reader)))
    }

    fn slot_index(&self, offset: u64) -> Result<usize> {
        let i = self.slots.partition_point(|s| s.start + s.len <= offset);
        if i < self.slots.len() {
            Ok(i)
        } else {
            Err(Error::OutOfRange {
                path: self.info.path.clone(),
                offset,
                len: 1,
                size: self.info.virtual_size,
            })
        }
    }
}

/// An extent name from a descriptor, against the descriptor's directory.
fn extent_path(dir: &Path, name: &str) -> PathBuf {
    let unixy = name.replace('\\', "/");
    let p = Path::new(&unixy);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn is_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

fn open_extent(file: &Path, descriptor: &Path) -> Result<FileSource> {
    match FileSource::open(file) {
        Err(Error::Io { source, .. }) => Err(Error::Missing {
            what: "VMDK extent",
            missing: file.to_path_buf(),
            referenced_by: descriptor.to_path_buf(),
            source,
        }),
        other => other,
    }
}

impl Layer for VmdkLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)> {
        let slot = &self.slots[self.slot_index(offset)?];
        let rel = offset - slot.start;
        let max = max_len.min(slot.len - rel).max(1);
        Ok(match &slot.reader {
            ExtentReader::Zero => (RunKind::Zero, max),
            ExtentReader::Flat { src, start } => match file_run(src, start + rel, max) {
                // A hole in a flat extent is zeros of this layer, not a window onto the parent.
                (RunKind::Data, n) => (RunKind::Data, n),
                (_, n) => (RunKind::Zero, n),
            },
            ExtentReader::Sparse(e) if rel >= e.capacity() => (RunKind::Zero, max),
            ExtentReader::Sparse(e) => e.run_at(rel, max.min(e.capacity() - rel))?,
        })
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let slot = &self.slots[self.slot_index(off)?];
            let rel = off - slot.start;
            let n = ((slot.len - rel).min((buf.len() - done) as u64)) as usize;
            let piece = &mut buf[done..done + n];
            match &slot.reader {
                ExtentReader::Zero => piece.fill(0),
                ExtentReader::Flat { src, start } => src.read_exact_at(start + rel, piece)?,
                ExtentReader::Sparse(e) => e.read_data(rel, piece)?,
            }
            done += n;
        }
        Ok(())
    }

    fn prefetch_data(&self, offset: u64, len: u64) {
        // Flat extents only (a sparse extent's grains are found through its tables
        // when read).
        let mut done = 0;
        while done < len {
            let off = offset + done;
            let Some(slot) = self.slot_index(off).ok().and_then(|i| self.slots.get(i)) else {
                break;
            };
            let rel = off - slot.start;
            let n = (slot.len - rel).min(len - done).max(1);
            if let ExtentReader::Flat { src, start } = &slot.reader {
                src.will_need(start.saturating_add(rel), n);
            }
            done += n;
        }
    }

    fn bytes_read(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes_read()).sum()
    }
}
