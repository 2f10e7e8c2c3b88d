//! VHD images (Virtual PC / Hyper-V, `qemu-img` format "vpc"): fixed, dynamic and
//! differencing disks. Structures are parsed by `vmback_parsers::vhd`; this module
//! reads them from the file, picks the footer copy to trust, and maps virtual offsets
//! to file offsets.
//!
//! - Fixed: the virtual disk is the file before its footer; holes in the file are
//!   reported as unallocated (SEEK_DATA), so they are never read.
//! - Dynamic: an allocated block reads whole from the file, whatever its sector bitmap
//!   says (QEMU does the same, and we must match `qemu-img convert`); an unallocated
//!   block is `Unallocated` (zero, there is no parent).
//! - Differencing: inside an allocated block, sectors whose bitmap bit is clear are
//!   `Unallocated` and fall through to the parent; bitmaps are cached per block.
//!
//! The virtual size follows QEMU's rule (CHS geometry for Virtual PC and old QEMU
//! images, Current Size for everyone else; see `vhd::footer::virtual_size`).

use std::path::Path;

use vmback_parsers::vhd::{
    bitmap_run, decode_locator, parse_bat, parse_dynamic_header, parse_footer, VhdBat, VhdDiskType,
    VhdDynamicHeader, VhdFooter, VhdPlatform, VhdSizeSource, DYNAMIC_HEADER_BYTES, FOOTER_BYTES,
    OLD_FOOTER_BYTES,
};
use vmback_parsers::ParseError;

use super::cache::BlockCache;
use super::raw::file_run;
use super::{Format, Layer, LayerInfo, ParentRef, RunKind};
use crate::error::{Error, Result};
use crate::io::{FileSource, ReadAt};

/// Memory for cached sector bitmaps of a differencing disk.
const BITMAP_CACHE_BYTES: u64 = 4 << 20;

/// A VHD file as one layer of a chain.
pub struct VhdLayer {
    src: FileSource,
    info: LayerInfo,
    kind: Kind,
}

enum Kind {
    /// Virtual bytes `[0, data_end)` are file bytes; the rest (if the footer claims a
    /// larger disk than the file holds) reads as zero.
    Fixed {
        data_end: u64,
    },
    Sparse(Sparse),
}

struct Sparse {
    bat: VhdBat,
    block_size: u64,
    bitmap_bytes: u64,
    differencing: bool,
    bitmaps: BlockCache,
}

/// Opens a VHD image.
pub fn open(src: FileSource) -> Result<Box<dyn Layer>> {
    let path = src.path().to_path_buf();
    let perr = |e: ParseError| Error::parse(&path, e);
    let size = src.size();
    let mut warnings = Vec::new();

    let (footer, footer_len) = pick_footer(&src, &mut warnings)?;
    let vsize = footer.virtual_size;
    let mut info = LayerInfo::new(&path, Format::Vhd, footer.disk_type.name(), vsize);
    info.identity = Some(footer.unique_id_hex());
    describe_footer(&footer, &mut info);

    let kind = match footer.disk_type {
        VhdDiskType::Fixed => {
            // OK: pick_footer found a footer of `footer_len` bytes at the end of the file.
            let data_end = size - footer_len;
            if vsize > data_end {
                warnings.push(format!(
                    "the footer states {vsize} bytes but the file holds only {data_end} before the footer; the rest reads as zero"
                ));
            }
            Kind::Fixed {
                data_end: data_end.min(vsize),
            }
        }
        VhdDiskType::Dynamic | VhdDiskType::Differencing => {
            let hoff = footer.dynamic_header_offset(size).map_err(perr)?;
            let hbuf = src.read_vec_at(hoff, DYNAMIC_HEADER_BYTES)?;
            let header = parse_dynamic_header(&hbuf, hoff).map_err(perr)?;
            let entries = header.bat_entries_for(vsize, size).map_err(perr)?;
            // Bounded: entries <= MAX_VHD_BAT_ENTRIES (checked by the header parser).
            let tbuf = src.read_vec_at(header.table_offset, entries as usize * 4)?;
            let bitmap_bytes = header.bitmap_bytes();
            let bat = parse_bat(
                &tbuf,
                header.table_offset,
                entries,
                header.block_size,
                bitmap_bytes,
                size,
            )
            .map_err(perr)?;
            let differencing = footer.disk_type == VhdDiskType::Differencing;
            describe_header(&header, &bat, &mut info);
            if differencing {
                info.parent = Some(parent_ref(&src, &header, &mut warnings, &mut info)?);
            }
            Kind::Sparse(Sparse {
                block_size: header.block_size.into(),
                bitmap_bytes,
                differencing,
                bitmaps: BlockCache::with_budget(BITMAP_CACHE_BYTES, bitmap_bytes),
                bat,
            })
        }
    };
    info.warnings = warnings;
    Ok(Box::new(VhdLayer { src, info, kind }))
}

/// The footer to trust: the trailing one (512 bytes, or the 511 of old Virtual PC
/// fixed disks); for dynamic and differencing disks the copy at offset 0 stands in
/// for a damaged trailing one, with a warning. Returns the footer and its length at
/// the end of the file (0 when the copy at 0 was used).
fn pick_footer(src: &FileSource, warnings: &mut Vec<String>) -> Result<(VhdFooter, u64)> {
    let path = src.path();
    let size = src.size();
    if size < OLD_FOOTER_BYTES as u64 {
        return Err(Error::parse(
            path,
            ParseError::truncated("VHD footer", 0, FOOTER_BYTES as u64, size),
        ));
    }
    let tail_len = (FOOTER_BYTES as u64).min(size);
    let mut tail = vec![0u8; tail_len as usize];
    src.read_exact_at(size - tail_len, &mut tail)?;
    let mut trailing = parse_footer(&tail, size - tail_len).map(|f| (f, tail_len));
    if trailing.is_err() && tail.get(1..9) == Some(b"conectix".as_slice()) {
        // Old Virtual PC: a 511-byte footer.
        let old = tail.get(1..).unwrap_or_default();
        trailing =
            parse_footer(old, size - OLD_FOOTER_BYTES as u64).map(|f| (f, OLD_FOOTER_BYTES as u64));
    }
    let head = if size >= FOOTER_BYTES as u64 {
        let mut h = vec![0u8; FOOTER_BYTES];
        src.read_exact_at(0, &mut h)?;
        Some(parse_footer(&h, 0))
    } else {
        None
    };
    match (trailing, head) {
        (Ok((f, len)), head) => {
            if f.disk_type != VhdDiskType::Fixed {
                match head {
                    Some(Ok(h)) if h != VhdFooter { offset: 0, ..f.clone() } => warnings.push(
                        "the footer copy at offset 0 differs from the trailing footer; using the trailing one".into(),
                    ),
                    Some(Err(e)) => warnings.push(format!(
                        "the footer copy at offset 0 is damaged ({e}); using the trailing footer"
                    )),
                    _ => {}
                }
            }
            Ok((f, len))
        }
        (Err(te), Some(Ok(h))) if h.disk_type != VhdDiskType::Fixed => {
            warnings.push(format!(
                "the trailing footer is damaged ({te}); using the copy at offset 0"
            ));
            Ok((h, 0))
        }
        (Err(te), _) => Err(Error::parse(path, te)),
    }
}

/// Parent names in order of preference (W2ru, W2ku, MacX, then the Unicode name), and
/// the parent's expected unique id. A locator that cannot be read or decoded is
/// skipped with a warning: the others may still find the parent.
fn parent_ref(
    src: &FileSource,
    header: &VhdDynamicHeader,
    warnings: &mut Vec<String>,
    info: &mut LayerInfo,
) -> Result<ParentRef> {
    let mut names: Vec<String> = Vec::new();
    for want in [VhdPlatform::W2ru, VhdPlatform::W2ku, VhdPlatform::MacX] {
        for loc in header.parent_locators.iter().filter(|l| l.platform == want) {
            let decoded = loc.check(src.size()).and_then(|()| {
                // Bounded by check(): at most MAX_PARENT_NAME_BYTES, inside the file.
                let data = src
                    .read_vec_at(loc.platform_data_offset, loc.platform_data_length as usize)
                    .map_err(|e| {
                        ParseError::corrupt("VHD parent locator", loc.entry_offset, e.to_string())
                    })?;
                decode_locator(loc.platform, &data, loc.platform_data_offset)
            });
            match decoded {
                Ok(Some(name)) => {
                    info.details
                        .push((format!("parent locator {want:?}"), name.clone()));
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Ok(None) => {}
                Err(e) => warnings.push(format!("parent locator skipped: {e}")),
            }
        }
    }
    let unicode = header.parent_unicode_name.clone();
    if !unicode.is_empty() && !names.contains(&unicode) {
        names.push(unicode);
    }
    Ok(ParentRef {
        names,
        format: Some(Format::Vhd),
        expected_identity: Some(vmback_parsers::bytes::hex(&header.parent_unique_id)),
    })
}

fn describe_footer(f: &VhdFooter, info: &mut LayerInfo) {
    let d = &mut info.details;
    d.push(("disk type".into(), f.disk_type.name().into()));
    d.push((
        "creator".into(),
        format!(
            "{:?} {}.{} on {:?}",
            f.creator_application_text(),
            f.creator_version >> 16,
            f.creator_version & 0xffff,
            f.creator_host_os_text()
        ),
    ));
    d.push((
        "geometry (C/H/S)".into(),
        format!(
            "{}/{}/{}",
            f.geometry.cylinders, f.geometry.heads, f.geometry.sectors_per_track
        ),
    ));
    d.push(("current size".into(), f.current_size.to_string()));
    d.push((
        "virtual size from".into(),
        match f.size_source {
            VhdSizeSource::Geometry => "CHS geometry (Virtual PC / old QEMU rule)",
            VhdSizeSource::CurrentSize => "current size",
        }
        .into(),
    ));
    d.push(("footer at".into(), format!("{:#x}", f.offset)));
    if f.saved_state {
        d.push(("saved state".into(), "yes".into()));
    }
}

fn describe_header(h: &VhdDynamicHeader, bat: &VhdBat, info: &mut LayerInfo) {
    let d = &mut info.details;
    d.push(("block size".into(), h.block_size.to_string()));
    d.push((
        "BAT entries used".into(),
        format!(
            "{} of {} (max table entries {})",
            bat.allocated(),
            bat.len(),
            h.max_table_entries
        ),
    ));
    d.push(("BAT at".into(), format!("{:#x}", h.table_offset)));
    if info.subformat == "differencing" {
        d.push(("parent name".into(), h.parent_unicode_name.clone()));
        d.push(("parent time stamp".into(), h.parent_time_stamp.to_string()));
    }
}

impl VhdLayer {
    fn path(&self) -> &Path {
        self.src.path()
    }
}

impl Sparse {
    /// Kind and length of the run at `pos`, within one block.
    fn block_run(&self, src: &FileSource, pos: u64, max: u64) -> Result<(RunKind, u64)> {
        let idx = pos / self.block_size;
        let in_block = pos % self.block_size;
        let avail = max.min(self.block_size - in_block);
        let Some(bitmap_at) = self.bat.bitmap_offset(idx) else {
            return Ok((RunKind::Unallocated, avail));
        };
        if !self.differencing {
            return Ok(self.data_or_hole(src, idx, in_block, avail));
        }
        // Bounded: bitmap_bytes <= 64 KiB (block size capped by MAX_VHD_BLOCK_BYTES).
        let bitmap = self.bitmaps.get_or_load(idx, || {
            src.read_vec_at(bitmap_at, self.bitmap_bytes as usize)
        })?;
        let within = in_block % 512;
        let sectors = (within + avail).div_ceil(512);
        let (present, n) = bitmap_run(&bitmap, in_block / 512, sectors);
        let len = (n * 512 - within).min(avail);
        if present {
            Ok(self.data_or_hole(src, idx, in_block, len))
        } else {
            Ok((RunKind::Unallocated, len))
        }
    }

    /// Refines a `Data` run of block `idx`: a hole in the host file reads as zeros, so
    /// it is `Zero` (never `Unallocated`: the parent must not show through) and is
    /// not read. qemu-img leaves the unwritten parts of allocated blocks as holes.
    fn data_or_hole(&self, src: &FileSource, idx: u64, in_block: u64, len: u64) -> (RunKind, u64) {
        let Some(at) = self
            .bat
            .data_offset(idx)
            .and_then(|d| d.checked_add(in_block))
        else {
            return (RunKind::Data, len);
        };
        match file_run(src, at, len) {
            (RunKind::Data, n) => (RunKind::Data, n),
            (_, n) => (RunKind::Zero, n),
        }
    }
}

impl Layer for VhdLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)> {
        match &self.kind {
            Kind::Fixed { data_end } => {
                if offset >= *data_end {
                    Ok((RunKind::Zero, max_len))
                } else {
                    Ok(file_run(&self.src, offset, max_len.min(data_end - offset)))
                }
            }
            Kind::Sparse(s) => {
                // Coalesce neighbouring blocks (and bitmap runs) of the same kind.
                let end = offset.saturating_add(max_len);
                let (kind, mut pos) = {
                    let (k, n) = s.block_run(&self.src, offset, max_len)?;
                    (k, offset + n)
                };
                while pos < end {
                    let (k, n) = s.block_run(&self.src, pos, end - pos)?;
                    if k != kind {
                        break;
                    }
                    pos += n;
                }
                Ok((kind, pos - offset))
            }
        }
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.kind {
            Kind::Fixed { .. } => self.src.read_exact_at(offset, buf),
            Kind::Sparse(s) => {
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let idx = pos / s.block_size;
                    let in_block = pos % s.block_size;
                    let n = ((buf.len() - done) as u64).min(s.block_size - in_block) as usize;
                    let Some(at) = s.bat.data_offset(idx) else {
                        return Err(Error::Chain {
                            path: self.path().to_path_buf(),
                            reason: format!(
                                "internal: data read at {pos:#x} in unallocated block {idx}"
                            ),
                        });
                    };
                    self.src
                        .read_exact_at(at + in_block, &mut buf[done..done + n])?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    fn prefetch_data(&self, offset: u64, len: u64) {
        match &self.kind {
            Kind::Fixed { .. } => self.src.will_need(offset, len),
            Kind::Sparse(s) => {
                let mut pos = offset;
                let end = offset.saturating_add(len);
                while pos < end {
                    let in_block = pos % s.block_size;
                    let n = (end - pos).min(s.block_size - in_block);
                    if let Some(at) = s.bat.data_offset(pos / s.block_size) {
                        self.src.will_need(at.saturating_add(in_block), n);
                    }
                    pos += n;
                }
            }
        }
    }

    fn bytes_read(&self) -> u64 {
        self.src.bytes_read()
    }
}
