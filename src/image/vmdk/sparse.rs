//! Table-mapped VMDK extents: hosted sparse ("KDMV", including streamOptimized with
//! compressed grains), COWD (VMFSSPARSE) and SESPARSE. All three are a grain
//! directory (read whole at open, bounded by `MAX_TABLE_BYTES`) pointing at grain
//! tables (read on demand, cached) pointing at grains; they differ only in entry
//! width and entry meaning, which the parsers decode.
//!
//! Every table offset is checked against the file size at open (directory) or on
//! first use (tables), so a hostile entry gives an error naming the entry's
//! absolute offset, never a read of garbage. Unallocated grains are never read.

use std::io::Read;
use std::sync::Arc;

use vmback_parsers::limits::{MAX_GRAIN_BYTES, MAX_TABLE_BYTES};
use vmback_parsers::vmdk::cowd_header::{parse_cowd_header, COWD_GTES_PER_GT};
use vmback_parsers::vmdk::grain_table::{
    decode_gte, decode_sesparse_gde, decode_sesparse_gte, parse_u32_table, parse_u64_table,
    u32_entry, u64_entry, GrainEntry,
};
use vmback_parsers::vmdk::marker::{
    parse_footer, parse_grain_marker, FOOTER_BYTES, GRAIN_MARKER_BYTES,
};
use vmback_parsers::vmdk::sesparse_header::{
    parse_sesparse_header, parse_sesparse_volatile_header, SESPARSE_GRAIN_SECTORS,
    SESPARSE_GTES_PER_GT, SESPARSE_GT_SECTORS, SESPARSE_HEADER_BYTES,
};
use vmback_parsers::vmdk::sparse_header::{parse_sparse_header, VmdkSparseHeader};
use vmback_parsers::vmdk::SECTOR;
use vmback_parsers::ParseError;

use crate::error::{Error, Result};
use crate::image::cache::BlockCache;
use crate::image::RunKind;
use crate::io::{FileSource, ReadAt};

/// Memory for cached grain tables and decompressed grains, per extent.
const GT_CACHE_BYTES: u64 = 8 << 20;
const GRAIN_CACHE_BYTES: u64 = 32 << 20;

/// How the entries of this extent's tables are encoded.
#[derive(Debug, Clone, Copy)]
enum Entries {
    /// u32 sector numbers; `zeroed`: an entry of 1 is a zero grain.
    U32 { zeroed: bool },
    /// SESPARSE typed u64 entries; grains area at this byte offset.
    SeSparse { grains_area: u64 },
}

/// Compressed grains (streamOptimized): with or without a grain marker in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Deflate { markers: bool },
}

/// One table-mapped extent file.
pub(super) struct SparseExtent {
    src: Arc<FileSource>,
    entries: Entries,
    compression: Compression,
    /// Virtual bytes this extent's tables describe.
    capacity: u64,
    grain: u64,
    gtes_per_gt: u64,
    entry_bytes: u64,
    /// Per grain table: its absolute byte offset in the file, 0 when not allocated.
    gd: Vec<u64>,
    gts: BlockCache,
    grains: BlockCache,
    /// Facts for `inspect`.
    pub details: Vec<(String, String)>,
}

fn perr(src: &FileSource, e: ParseError) -> Error {
    Error::parse(src.path(), e)
}

/// Reads `len` bytes at `offset` after checking that they lie inside the file, so a
/// hostile offset gives an error naming the structure, not a bare EOF.
fn read_struct(src: &FileSource, offset: u64, len: u64, what: &'static str) -> Result<Vec<u8>> {
    let end = offset.checked_add(len);
    if end.is_none_or(|e| e > src.size()) {
        return Err(perr(
            src,
            ParseError::truncated(what, offset, len, src.size().saturating_sub(offset)),
        ));
    }
    // OK: len was bounded by a limit or a validated field before this call.
    src.read_vec_at(offset, len as usize)
}

impl SparseExtent {
    /// Opens a hosted sparse extent whose first sector is `head`.
    pub fn open_kdmv(src: Arc<FileSource>, head: &[u8]) -> Result<(Self, VmdkSparseHeader)> {
        let mut h = parse_sparse_header(head, 0).map_err(|e| perr(&src, e))?;
        let first = h.clone();
        if h.gd_at_end() {
            // streamOptimized: the footer's header copy is the one that counts.
            let size = src.size() / SECTOR * SECTOR;
            let at = size.checked_sub(FOOTER_BYTES as u64).ok_or_else(|| {
                perr(
                    &src,
                    ParseError::truncated(
                        "VMDK streamOptimized footer",
                        0,
                        FOOTER_BYTES as u64,
                        size,
                    ),
                )
            })?;
            let buf = read_struct(&src, at, FOOTER_BYTES as u64, "VMDK streamOptimized footer")?;
            h = parse_footer(&buf, at).map_err(|e| perr(&src, e))?;
        }
        let overhead = h.overhead_sectors.saturating_mul(SECTOR);
        if overhead > src.size() {
            return Err(perr(
                &src,
                ParseError::truncated("VMDK sparse extent (overHead)", 0, overhead, src.size()),
            ));
        }
        let compression = if h.compressed() {
            Compression::Deflate {
                markers: h.has_markers(),
            }
        } else {
            Compression::None
        };
        let gd_at = h.gd_offset_sectors.checked_mul(SECTOR).ok_or_else(|| {
            perr(
                &src,
                ParseError::corrupt(
                    "VMDK sparse extent header",
                    0x38,
                    "grain directory offset overflows",
                ),
            )
        })?;
        let mut ext = Self::with_u32_directory(
            src,
            Entries::U32 {
                zeroed: h.has_zeroed_grain_gte(),
            },
            compression,
            h.capacity_bytes(),
            h.grain_bytes(),
            u64::from(h.gtes_per_gt),
            gd_at,
            h.gd_entries(),
        )?;
        ext.details
            .push(("header version".into(), h.version.to_string()));
        if h.compressed() {
            ext.details.push(("compression".into(), "deflate".into()));
        }
        if h.unclean_shutdown {
            ext.details.push(("unclean shutdown".into(), "yes".into()));
        }
        Ok((ext, first))
    }

    /// Opens a COWD (VMFSSPARSE) extent whose first bytes are `head`.
    pub fn open_cowd(src: Arc<FileSource>, head: &[u8]) -> Result<Self> {
        let h = parse_cowd_header(head, 0).map_err(|e| perr(&src, e))?;
        Self::with_u32_directory(
            src,
            Entries::U32 { zeroed: false },
            Compression::None,
            h.capacity_bytes(),
            h.grain_bytes(),
            COWD_GTES_PER_GT,
            h.gd_offset_sectors * SECTOR,
            h.gd_entries(),
        )
    }

    /// Opens a SESPARSE extent whose first sector is `head`.
    pub fn open_sesparse(src: Arc<FileSource>, head: &[u8]) -> Result<Self> {
        let h = parse_sesparse_header(head, 0).map_err(|e| perr(&src, e))?;
        // OK: offsets times 512 were checked by the parser.
        let vol_at = h.volatile_header_offset_sectors * SECTOR;
        let vol = read_struct(
            &src,
            vol_at,
            SESPARSE_HEADER_BYTES as u64,
            "VMDK SESPARSE volatile header",
        )?;
        parse_sesparse_volatile_header(&vol, vol_at).map_err(|e| perr(&src, e))?;
        let gd_at = h.grain_dir_offset_sectors * SECTOR;
        let n = h.gd_entries();
        let raw = read_struct(&src, gd_at, n * 8, "VMDK SESPARSE grain directory")?;
        let entries = parse_u64_table(&raw, n as usize, "VMDK SESPARSE grain directory", gd_at)
            .map_err(|e| perr(&src, e))?;
        let gt_area = h.grain_tables_offset_sectors * SECTOR;
        let gt_bytes = SESPARSE_GT_SECTORS * SECTOR;
        let mut gd = Vec::with_capacity(entries.len());
        for (i, raw) in entries.into_iter().enumerate() {
            let at = gd_at + i as u64 * 8;
            let off = match decode_sesparse_gde(raw, at).map_err(|e| perr(&src, e))? {
                None => 0,
                Some(index) => index
                    .checked_mul(gt_bytes)
                    .and_then(|b| b.checked_add(gt_area))
                    .ok_or_else(|| {
                        perr(
                            &src,
                            ParseError::corrupt(
                                "VMDK SESPARSE grain directory entry",
                                at,
                                "grain table offset overflows",
                            ),
                        )
                    })?,
            };
            check_table(
                &src,
                off,
                gt_bytes,
                at,
                "VMDK SESPARSE grain directory entry",
            )?;
            gd.push(off);
        }
        let grain = SESPARSE_GRAIN_SECTORS * SECTOR;
        Ok(SparseExtent {
            entries: Entries::SeSparse {
                grains_area: h.grains_offset_sectors * SECTOR,
            },
            compression: Compression::None,
            capacity: h.capacity_bytes(),
            grain,
            gtes_per_gt: SESPARSE_GTES_PER_GT,
            entry_bytes: 8,
            gd,
            gts: BlockCache::with_budget(GT_CACHE_BYTES, gt_bytes),
            grains: BlockCache::new(1),
            details: vec![("grain size".into(), grain.to_string())],
            src,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn with_u32_directory(
        src: Arc<FileSource>,
        entries: Entries,
        compression: Compression,
        capacity: u64,
        grain: u64,
        gtes_per_gt: u64,
        gd_at: u64,
        gd_entries: u64,
    ) -> Result<Self> {
        const WHAT: &str = "VMDK grain directory";
        ParseError::check_limit(
            WHAT,
            gd_at,
            gd_entries.saturating_mul(4),
            MAX_TABLE_BYTES,
            "MAX_TABLE_BYTES",
        )
        .map_err(|e| perr(&src, e))?;
        let raw = read_struct(&src, gd_at, gd_entries * 4, WHAT)?;
        let table =
            parse_u32_table(&raw, gd_entries as usize, WHAT, gd_at).map_err(|e| perr(&src, e))?;
        let gt_bytes = gtes_per_gt * 4;
        let mut gd = Vec::with_capacity(table.len());
        for (i, sector) in table.into_iter().enumerate() {
            let off = u64::from(sector) * SECTOR;
            check_table(
                &src,
                off,
                gt_bytes,
                gd_at + i as u64 * 4,
                "VMDK grain directory entry",
            )?;
            gd.push(off);
        }
        let grain_budget = if compression == Compression::None {
            1
        } else {
            GRAIN_CACHE_BYTES
        };
        Ok(SparseExtent {
            src,
            entries,
            compression,
            capacity,
            grain,
            gtes_per_gt,
            entry_bytes: 4,
            gd,
            gts: BlockCache::with_budget(GT_CACHE_BYTES, gt_bytes),
            grains: BlockCache::with_budget(grain_budget, grain),
            details: vec![("grain size".into(), grain.to_string())],
        })
    }

    /// Virtual bytes described by this extent's own header.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Where grain `g` is. `g` lies below the capacity (callers clamp).
    fn entry(&self, g: u64) -> Result<GrainEntry> {
        let t = g / self.gtes_per_gt;
        let i = g % self.gtes_per_gt;
        let Some(&gt_at) = self.gd.get(t as usize) else {
            return Ok(GrainEntry::Unallocated);
        };
        if gt_at == 0 {
            return Ok(GrainEntry::Unallocated);
        }
        let table_bytes = self.gtes_per_gt * self.entry_bytes;
        let table = self.gts.get_or_load(t, || {
            read_struct(&self.src, gt_at, table_bytes, "VMDK grain table")
        })?;
        let at = gt_at + i * self.entry_bytes;
        let missing = || {
            perr(
                &self.src,
                ParseError::truncated("VMDK grain table entry", at, self.entry_bytes, 0),
            )
        };
        let e = match self.entries {
            Entries::U32 { zeroed } => {
                decode_gte(u32_entry(&table, i).ok_or_else(missing)?, zeroed)
            }
            Entries::SeSparse { grains_area } => {
                let raw = u64_entry(&table, i).ok_or_else(missing)?;
                decode_sesparse_gte(raw, at, grains_area, self.grain)
                    .map_err(|e| perr(&self.src, e))?
            }
        };
        if let GrainEntry::Data(off) = e {
            if off >= self.src.size() {
                return Err(perr(
                    &self.src,
                    ParseError::corrupt(
                        "VMDK grain table entry",
                        at,
                        format!(
                            "grain at {off:#x} is beyond the end of the file ({:#x})",
                            self.src.size()
                        ),
                    ),
                ));
            }
        }
        Ok(e)
    }

    /// Kind of the bytes at `rel` (< capacity) and how many share it, up to `max_len`.
    /// Data grains are coalesced whether or not they are contiguous in the file:
    /// `read_data` looks each grain up again and merges contiguous reads itself.
    pub fn run_at(&self, rel: u64, max_len: u64) -> Result<(RunKind, u64)> {
        let end = rel.saturating_add(max_len).min(self.capacity);
        let coverage = self.grain * self.gtes_per_gt;
        let mut pos = rel;
        let mut first = None;
        while pos < end {
            let g = pos / self.grain;
            let t = g / self.gtes_per_gt;
            let (kind, next) = if self.gd.get(t as usize).is_none_or(|&o| o == 0) {
                (RunKind::Unallocated, (t + 1).saturating_mul(coverage))
            } else {
                let kind = match self.entry(g)? {
                    GrainEntry::Unallocated => RunKind::Unallocated,
                    GrainEntry::Zero => RunKind::Zero,
                    GrainEntry::Data(_) => RunKind::Data,
                };
                (kind, (g + 1) * self.grain)
            };
            match first {
                None => first = Some(kind),
                Some(k) if k != kind => break,
                Some(_) => {}
            }
            pos = next;
        }
        let kind = first.unwrap_or(RunKind::Unallocated);
        Ok((kind, pos.min(end).saturating_sub(rel).max(1).min(max_len)))
    }

    /// Reads `buf.len()` bytes at `rel`: contiguous uncompressed grains in one read,
    /// compressed grains through the decompressed-grain cache.
    pub fn read_data(&self, rel: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = 0usize;
        // (file offset, start in buf, length) of a read not yet issued.
        let mut pending: Option<(u64, usize, usize)> = None;
        while pos < buf.len() {
            let v = rel + pos as u64;
            let g = v / self.grain;
            let within = v % self.grain;
            let n = ((self.grain - within) as usize).min(buf.len() - pos);
            let entry = if v >= self.capacity {
                GrainEntry::Zero
            } else {
                self.entry(g)?
            };
            match (entry, self.compression) {
                (GrainEntry::Data(off), Compression::None) => {
                    let at = off + within;
                    match &mut pending {
                        Some((p_at, p_start, p_len))
                            if *p_at + *p_len as u64 == at && *p_start + *p_len == pos =>
                        {
                            *p_len += n;
                        }
                        _ => {
                            self.flush(&mut pending, buf)?;
                            pending = Some((at, pos, n));
                        }
                    }
                }
                (GrainEntry::Data(off), Compression::Deflate { markers }) => {
                    self.flush(&mut pending, buf)?;
                    let data = self
                        .grains
                        .get_or_load(off, || self.inflate(off, markers))?;
                    let piece =
                        data.get(within as usize..within as usize + n)
                            .ok_or_else(|| {
                                perr(
                                    &self.src,
                                    ParseError::corrupt(
                                        "VMDK compressed grain",
                                        off,
                                        format!(
                                            "holds {} bytes, byte {} of the grain is needed",
                                            data.len(),
                                            within as usize + n
                                        ),
                                    ),
                                )
                            })?;
                    buf[pos..pos + n].copy_from_slice(piece);
                }
                (GrainEntry::Zero | GrainEntry::Unallocated, _) => {
                    self.flush(&mut pending, buf)?;
                    buf[pos..pos + n].fill(0);
                }
            }
            pos += n;
        }
        self.flush(&mut pending, buf)
    }

    fn flush(&self, pending: &mut Option<(u64, usize, usize)>, buf: &mut [u8]) -> Result<()> {
        if let Some((at, start, len)) = pending.take() {
            self.src.read_exact_at(at, &mut buf[start..start + len])?;
        }
        Ok(())
    }

    /// Decompresses the grain whose marker (or stream) starts at `off`.
    fn inflate(&self, off: u64, markers: bool) -> Result<Vec<u8>> {
        const WHAT: &str = "VMDK compressed grain";
        // QEMU accepts compressed data up to twice the grain size; so do we.
        let max = (2 * self.grain).min(2 * MAX_GRAIN_BYTES);
        let (data_at, len) = if markers {
            let head = read_struct(
                &self.src,
                off,
                GRAIN_MARKER_BYTES as u64,
                "VMDK grain marker",
            )?;
            let m = parse_grain_marker(&head, off, max).map_err(|e| perr(&self.src, e))?;
            (off + GRAIN_MARKER_BYTES as u64, u64::from(m.size))
        } else {
            (off, max.min(self.src.size().saturating_sub(off)))
        };
        let compressed = read_struct(&self.src, data_at, len, WHAT)?;
        let mut out = Vec::with_capacity(self.grain as usize);
        flate2::read::ZlibDecoder::new(compressed.as_slice())
            .take(self.grain + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                perr(
                    &self.src,
                    ParseError::corrupt(WHAT, data_at, format!("deflate stream: {e}")),
                )
            })?;
        if out.len() as u64 > self.grain {
            return Err(perr(
                &self.src,
                ParseError::corrupt(
                    WHAT,
                    data_at,
                    format!("inflates to more than the grain size {}", self.grain),
                ),
            ));
        }
        Ok(out)
    }
}

/// A grain table at `off` (0 = none) of `len` bytes must lie inside the file.
fn check_table(
    src: &FileSource,
    off: u64,
    len: u64,
    entry_at: u64,
    what: &'static str,
) -> Result<()> {
    if off != 0 && off.checked_add(len).is_none_or(|e| e > src.size()) {
        return Err(perr(
            src,
            ParseError::corrupt(
                what,
                entry_at,
                format!(
                    "grain table at {off:#x} ({len} bytes) is beyond the end of the file ({:#x})",
                    src.size()
                ),
            ),
        ));
    }
    Ok(())
}
