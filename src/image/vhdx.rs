//! VHDX images (MS-VHDX): dynamic, fixed and differencing disks, with a dirty log
//! replayed in memory.
//!
//! Opening follows the spec's order: file identifier, current header, then — when
//! the header names a log — the log's active sequence is replayed into an overlay
//! *before* anything else is parsed, and every later read (region table, metadata,
//! BAT, sector bitmaps and payload) goes through that overlay. The file is never
//! written. The parsers live in `vmback_parsers::vhdx`; this module does the I/O.
//!
//! Block states map to runs as qemu reads them: FULLY_PRESENT is data, ZERO is zero,
//! NOT_PRESENT / UNDEFINED / UNMAPPED are unallocated (zeros without a parent, the
//! parent's bytes in a differencing disk), and PARTIALLY_PRESENT (differencing only)
//! is split per logical sector by the chunk's sector bitmap.

use vmback_parsers::limits::{MAX_TABLE_BYTES, MAX_VHDX_LOG_BYTES, MAX_VHDX_METADATA_BYTES};
use vmback_parsers::vhdx::bat::{parse_bat, PayloadState, VhdxBat, VhdxBatGeometry};
use vmback_parsers::vhdx::file_id::{parse_file_id, FILE_ID_BYTES};
use vmback_parsers::vhdx::header::{current_header, HEADER_BYTES, HEADER_OFFSETS};
use vmback_parsers::vhdx::log_replay::{replay_log, VhdxLogOverlay};
use vmback_parsers::vhdx::metadata::parse_metadata;
use vmback_parsers::vhdx::region::{parse_region_table, REGION_TABLE_BYTES, REGION_TABLE_OFFSETS};
use vmback_parsers::vhdx::MIB;
use vmback_parsers::ParseError;

use super::cache::BlockCache;
use super::{Format, Layer, LayerInfo, ParentRef, RunKind};
use crate::error::{Error, Result};
use crate::io::{FileSource, ReadAt};

/// The file as it reads after log replay: the bytes on disk patched by the overlay,
/// zeros past the end of the file up to the length the log requires.
struct Replayed {
    file: FileSource,
    overlay: Option<VhdxLogOverlay>,
    len: u64,
}

impl Replayed {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(overlay) = &self.overlay else {
            return self.file.read_exact_at(offset, buf);
        };
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Error::parse(
                self.file.path(),
                ParseError::truncated(
                    "VHDX file (after log replay)",
                    offset,
                    buf.len() as u64,
                    self.len.saturating_sub(offset),
                ),
            ));
        }
        let on_disk = self
            .file
            .size()
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(on_disk);
        self.file.read_exact_at(offset, head)?;
        tail.fill(0);
        overlay.apply(offset, buf);
        Ok(())
    }

    /// Refines a `Data` run at file offset `at`: a hole in the host file reads as
    /// zeros, so it is `Zero` (never `Unallocated`: the parent must not show through)
    /// and is not read. Only without a replayed log, whose overlay may patch holes.
    fn data_or_hole(&self, at: u64, len: u64) -> (RunKind, u64) {
        if self.overlay.is_some() {
            return (RunKind::Data, len);
        }
        match super::raw::file_run(&self.file, at, len) {
            (RunKind::Data, n) => (RunKind::Data, n),
            (_, n) => (RunKind::Zero, n),
        }
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(offset, &mut v)?;
        Ok(v)
    }
}

/// A VHDX layer.
pub struct VhdxLayer {
    src: Replayed,
    info: LayerInfo,
    bat: VhdxBat,
    geo: VhdxBatGeometry,
    virtual_size: u64,
    bitmaps: BlockCache,
}

fn limit(
    path: &FileSource,
    what: &'static str,
    offset: u64,
    value: u64,
    lim: u64,
    name: &'static str,
) -> Result<()> {
    ParseError::check_limit(what, offset, value, lim, name)
        .map_err(|e| Error::parse(path.path(), e))
}

/// Opens a VHDX image.
pub fn open(file: FileSource) -> Result<Box<dyn Layer>> {
    let path = file.path().to_path_buf();
    let perr = |e| Error::parse(&path, e);
    let file_size = file.size();

    let id = parse_file_id(&file.read_vec_at(0, FILE_ID_BYTES)?).map_err(perr)?;
    let h1 = file.read_vec_at(HEADER_OFFSETS[0], HEADER_BYTES)?;
    let h2 = file.read_vec_at(HEADER_OFFSETS[1], HEADER_BYTES)?;
    let (header, bad_header) = current_header(&h1, &h2).map_err(perr)?;
    let mut warnings = Vec::new();
    if let Some(e) = bad_header {
        warnings.push(format!("the other header is invalid and was ignored: {e}"));
    }

    // The log first: everything after it must see the replayed file.
    let mut log_state = "clean (no log GUID)".to_string();
    let mut overlay = None;
    if !header.log_guid.is_zero() {
        let len = u64::from(header.log_length);
        limit(
            &file,
            "VHDX log",
            header.log_offset,
            len,
            MAX_VHDX_LOG_BYTES,
            "MAX_VHDX_LOG_BYTES",
        )?;
        if header
            .log_offset
            .checked_add(len)
            .is_none_or(|e| e > file_size)
        {
            return Err(perr(ParseError::truncated(
                "VHDX log",
                header.log_offset,
                len,
                file_size.saturating_sub(header.log_offset),
            )));
        }
        let log = file.read_vec_at(header.log_offset, len as usize)?;
        match replay_log(&log, header.log_offset, header.log_guid, file_size).map_err(perr)? {
            Some(o) => {
                warnings.push(format!(
                    "dirty log replayed in memory ({} entries)",
                    o.entries
                ));
                log_state = format!(
                    "dirty: replayed {} entries in memory (head sequence {}, {} sectors)",
                    o.entries,
                    o.head_sequence,
                    o.sector_count()
                );
                overlay = Some(o);
            }
            None => log_state = "log GUID set, but no valid sequence: nothing to replay".into(),
        }
    }
    let len = overlay
        .as_ref()
        .map_or(file_size, |o| o.file_len(file_size));
    let src = Replayed { file, overlay, len };

    let regions = match parse_region_table(
        &src.read_vec(REGION_TABLE_OFFSETS[0], REGION_TABLE_BYTES)?,
        0,
    ) {
        Ok(r) => r,
        Err(first) => {
            let r = parse_region_table(
                &src.read_vec(REGION_TABLE_OFFSETS[1], REGION_TABLE_BYTES)?,
                1,
            )
            .map_err(|_| perr(first.clone()))?;
            warnings.push(format!("region table invalid, its copy was used: {first}"));
            r
        }
    };

    let md = regions.metadata;
    limit(
        &src.file,
        "VHDX metadata region",
        md.offset,
        md.length,
        MAX_VHDX_METADATA_BYTES,
        "MAX_VHDX_METADATA_BYTES",
    )?;
    let meta =
        parse_metadata(&src.read_vec(md.offset, md.length as usize)?, md.offset).map_err(perr)?;

    let geo = VhdxBatGeometry::new(&meta);
    let bat_bytes = geo.bat_bytes();
    limit(
        &src.file,
        "VHDX BAT",
        regions.bat.offset,
        bat_bytes,
        MAX_TABLE_BYTES,
        "MAX_TABLE_BYTES",
    )?;
    if bat_bytes > regions.bat.length {
        return Err(perr(ParseError::corrupt(
            "VHDX BAT",
            regions.bat.offset,
            format!(
                "{} entries need {bat_bytes:#x} bytes, but the region is {:#x}",
                geo.total_entries, regions.bat.length
            ),
        )));
    }
    let bat = parse_bat(
        &src.read_vec(regions.bat.offset, bat_bytes as usize)?,
        regions.bat.offset,
        geo,
        src.len,
    )
    .map_err(perr)?;

    let subformat = if meta.has_parent {
        "differencing"
    } else if meta.leave_blocks_allocated {
        "fixed"
    } else {
        "dynamic"
    };
    let mut info = LayerInfo::new(&path, Format::Vhdx, subformat, meta.virtual_size);
    info.identity = Some(header.data_write_guid.to_string());
    if let Some(loc) = &meta.parent_locator {
        let names = [
            &loc.relative_path,
            &loc.absolute_win32_path,
            &loc.volume_path,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        info.parent = Some(ParentRef {
            names,
            format: Some(Format::Vhdx),
            expected_identity: loc.parent_linkage.map(|g| g.to_string()),
        });
    }
    info.warnings = warnings;
    info.details = vec![
        ("block size".into(), meta.block_size.to_string()),
        (
            "logical sector size".into(),
            meta.logical_sector_size.to_string(),
        ),
        (
            "physical sector size".into(),
            meta.physical_sector_size.to_string(),
        ),
        ("chunk ratio".into(), geo.chunk_ratio.to_string()),
        ("log".into(), log_state),
        ("creator".into(), id.creator),
        (
            "header".into(),
            format!("{} (sequence {})", header.index, header.sequence_number),
        ),
    ];
    if let Some(p) = meta.page83 {
        info.details.push(("page 83 id".into(), p.to_string()));
    }
    Ok(Box::new(VhdxLayer {
        src,
        info,
        bat,
        geo,
        virtual_size: meta.virtual_size,
        bitmaps: BlockCache::new(8),
    }))
}

impl VhdxLayer {
    fn corrupt(&self, offset: u64, reason: String) -> Error {
        Error::parse(
            self.src.file.path(),
            ParseError::corrupt("VHDX payload block", offset, reason),
        )
    }

    /// Kind and length (bytes, at most `max`) of the run at `off` inside one block.
    fn piece(&self, off: u64, max: u64) -> Result<(RunKind, u64)> {
        let bs = self.geo.block_size;
        let block = off / bs;
        let within = off % bs;
        let len = (bs - within).min(max).min(self.virtual_size - off);
        let Some(p) = self.bat.payload(block) else {
            return Err(self.corrupt(off, format!("no BAT entry for block {block}")));
        };
        Ok(match p.state {
            PayloadState::FullyPresent => self.src.data_or_hole(p.file_offset + within, len),
            PayloadState::Zero => (RunKind::Zero, len),
            PayloadState::NotPresent | PayloadState::Undefined | PayloadState::Unmapped => {
                (RunKind::Unallocated, len)
            }
            PayloadState::PartiallyPresent => self.partial(off, len)?,
        })
    }

    /// Sector-granular run inside a partially present block, from the sector bitmap.
    fn partial(&self, off: u64, len: u64) -> Result<(RunKind, u64)> {
        let lss = self.geo.logical_sector_size;
        let chunk_bytes = self.geo.chunk_ratio * self.geo.block_size;
        let chunk = off / chunk_bytes;
        let Some(bm_off) = self.bat.bitmap(chunk) else {
            return Err(self.corrupt(
                off,
                format!("partially present block, but chunk {chunk} has no sector bitmap"),
            ));
        };
        let bitmap = self.bitmaps.get_or_load(bm_off, || {
            let mut v = vec![0u8; MIB as usize];
            self.src.read(bm_off, &mut v)?;
            Ok(v)
        })?;
        let first = (off % chunk_bytes) / lss;
        let bit = |s: u64| {
            bitmap
                .get((s / 8) as usize)
                .is_some_and(|b| b & (1 << (s % 8)) != 0)
        };
        let present = bit(first);
        let end = off + len;
        let mut s = first + 1;
        let chunk_base = chunk * chunk_bytes;
        while chunk_base + s * lss < end && bit(s) == present {
            s += 1;
        }
        let run = (chunk_base + s * lss).min(end) - off;
        Ok((
            if present {
                RunKind::Data
            } else {
                RunKind::Unallocated
            },
            run,
        ))
    }
}

impl Layer for VhdxLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn run_at(&self, offset: u64, max_len: u64) -> Result<(RunKind, u64)> {
        let max_len = max_len.min(self.virtual_size.saturating_sub(offset));
        let (kind, mut n) = self.piece(offset, max_len)?;
        while n < max_len {
            let (k, m) = self.piece(offset + n, max_len - n)?;
            if k != kind {
                break;
            }
            n += m;
        }
        Ok((kind, n.max(1)))
    }

    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bs = self.geo.block_size;
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let block = off / bs;
            let within = off % bs;
            let n = ((bs - within) as usize).min(buf.len() - pos);
            match self.bat.payload(block) {
                Some(p)
                    if matches!(
                        p.state,
                        PayloadState::FullyPresent | PayloadState::PartiallyPresent
                    ) =>
                {
                    self.src
                        .read(p.file_offset + within, &mut buf[pos..pos + n])?
                }
                _ => {
                    return Err(
                        self.corrupt(off, format!("read of block {block}, which holds no data"))
                    )
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn prefetch_data(&self, offset: u64, len: u64) {
        let bs = self.geo.block_size;
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let within = pos % bs;
            let n = (end - pos).min(bs - within);
            match self.bat.payload(pos / bs) {
                Some(p)
                    if matches!(
                        p.state,
                        PayloadState::FullyPresent | PayloadState::PartiallyPresent
                    ) =>
                {
                    // The log's replayed sectors are in memory; the file's are read ahead.
                    self.src
                        .file
                        .will_need(p.file_offset.saturating_add(within), n)
                }
                _ => {}
            }
            pos += n;
        }
    }

    fn bytes_read(&self) -> u64 {
        self.src.file.bytes_read()
    }

    /// Payload blocks start on 1 MiB boundaries (the specification requires it), so
    /// a backup's chunk reads are page-aligned and bypass the cache; sector bitmaps
    /// and metadata reads that are not keep it.
    fn bypass_cache(&self) {
        self.src.file.bypass_cache();
    }
}
