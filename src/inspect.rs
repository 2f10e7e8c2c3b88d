//! `vmback inspect`: what an image is, layer by layer, and what the user should know.

use std::sync::Arc;

use serde::Serialize;

use crate::error::Result;
use crate::guestfs::{self, FsUsage};
use crate::image::{Disk, DiskImage, Format, LayerInfo, ParentRef, RunKind};
use crate::io::{ReadAt, Window};
use crate::volume::{read_volumes, Volume, VolumeTable};

/// The report of one layer.
#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub path: String,
    pub format: Format,
    pub subformat: String,
    pub virtual_size: u64,
    pub files: Vec<String>,
    pub parent: Option<ParentRef>,
    pub identity: Option<String>,
    /// Bytes this layer stores as data.
    pub allocated_bytes: u64,
    /// Bytes this layer marks as explicitly zero.
    pub zero_bytes: u64,
    pub details: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// The report of a whole image.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub path: String,
    pub format: Format,
    pub subformat: String,
    pub virtual_size: u64,
    /// Bytes of the virtual disk backed by data in some layer.
    pub allocated_bytes: u64,
    pub layers: Vec<LayerReport>,
    /// Partitions and filesystems (None when the table could not be read; see warnings).
    pub volumes: Option<VolumeTable>,
    pub warnings: Vec<String>,
}

/// Builds the report: walks the allocation maps and reads the partition table and
/// each filesystem's allocation metadata (superblock, FAT, cluster bitmap), never
/// file data. A filesystem that cannot be read is a warning, not a failure.
pub fn inspect(disk: &Arc<Disk>) -> Result<ImageReport> {
    let mut layers = Vec::new();
    for (level, info) in disk.layers().enumerate() {
        let (mut allocated, mut zero) = (0, 0);
        for e in disk.layer_extents(level, 0..info.virtual_size)? {
            match e.kind {
                RunKind::Data => allocated += e.len,
                RunKind::Zero => zero += e.len,
                RunKind::Unallocated => {}
            }
        }
        layers.push(layer_report(info, allocated, zero));
    }
    let allocated = disk
        .extents(0..disk.size())?
        .iter()
        .filter(|e| e.kind == RunKind::Data)
        .map(|e| e.len)
        .sum();
    let mut warnings = disk.warnings().to_vec();
    let name = disk.path().display().to_string();
    let volumes = match read_volumes(&**disk, &name) {
        Ok(mut v) => {
            warnings.extend(v.warnings.iter().map(|w| format!("partition table: {w}")));
            for vol in &mut v.volumes {
                if let Err(e) = fill_usage(disk.clone(), &name, vol) {
                    warnings.push(format!(
                        "{}: used space unknown: {}",
                        vol.name,
                        crate::error::chain(&e)
                    ));
                }
            }
            Some(v)
        }
        Err(e) => {
            warnings.push(format!(
                "partition table unreadable: {}",
                crate::error::chain(&e)
            ));
            None
        }
    };
    // OK: a Disk has at least one layer.
    let top = &layers[0];
    Ok(ImageReport {
        path: top.path.clone(),
        format: top.format,
        subformat: top.subformat.clone(),
        virtual_size: disk.size(),
        allocated_bytes: allocated,
        warnings,
        volumes,
        layers,
    })
}

/// Opens the filesystem of `vol` (when vmback reads that kind) for its usage and, where
/// the first sectors do not carry it (NTFS), its label.
fn fill_usage(disk: Arc<Disk>, disk_name: &str, vol: &mut Volume) -> Result<()> {
    let Some(kind) = vol.filesystem.clone().filter(|k| guestfs::is_supported(k)) else {
        return Ok(());
    };
    let Some(window) = Window::new(disk as Arc<dyn ReadAt>, vol.start, vol.len) else {
        // Already reported with the partition table (the volume passes the disk's end).
        return Ok(());
    };
    let fs = guestfs::open(
        Arc::new(window),
        &kind,
        &format!("{disk_name} {}", vol.name),
    )?;
    if vol.fs_label.is_none() {
        vol.fs_label = fs.label();
    }
    vol.usage = fs.usage()?;
    Ok(())
}

fn layer_report(info: &LayerInfo, allocated_bytes: u64, zero_bytes: u64) -> LayerReport {
    LayerReport {
        path: info.path.display().to_string(),
        format: info.format,
        subformat: info.subformat.clone(),
        virtual_size: info.virtual_size,
        files: info.files.iter().map(|f| f.display().to_string()).collect(),
        parent: info.parent.clone(),
        identity: info.identity.clone(),
        allocated_bytes,
        zero_bytes,
        details: info.details.clone(),
        warnings: info.warnings.clone(),
    }
}

/// Human-readable rendering.
pub fn render(r: &ImageReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "image:        {}", r.path);
    let _ = writeln!(s, "format:       {} ({})", r.format, r.subformat);
    let _ = writeln!(
        s,
        "virtual size: {} ({} bytes)",
        human(r.virtual_size),
        r.virtual_size
    );
    let _ = writeln!(
        s,
        "allocated:    {} ({} bytes)",
        human(r.allocated_bytes),
        r.allocated_bytes
    );
    let _ = writeln!(s, "chain:        {} layer(s)", r.layers.len());
    for (i, l) in r.layers.iter().enumerate() {
        let _ = writeln!(
            s,
            "  [{i}] {} — {} {} , {} data, {} zero",
            l.path,
            l.format,
            l.subformat,
            human(l.allocated_bytes),
            human(l.zero_bytes)
        );
        for f in l.files.iter().filter(|f| **f != l.path) {
            let _ = writeln!(s, "      file: {f}");
        }
        if let Some(id) = &l.identity {
            let _ = writeln!(s, "      identity: {id}");
        }
        if let Some(p) = &l.parent {
            let _ = writeln!(
                s,
                "      parent: {}{}",
                p.names.join(" | "),
                p.expected_identity
                    .as_ref()
                    .map(|i| format!(" (expects {i})"))
                    .unwrap_or_default()
            );
        }
        for (k, v) in &l.details {
            let _ = writeln!(s, "      {k}: {v}");
        }
    }
    if let Some(v) = &r.volumes {
        let scheme = match &v.table {
            crate::volume::Table::Gpt {
                sector_size,
                disk_guid,
                backup_used,
            } => {
                format!(
                    "GPT ({sector_size}-byte sectors, disk {disk_guid}{})",
                    if *backup_used {
                        ", from backup header"
                    } else {
                        ""
                    }
                )
            }
            crate::volume::Table::Mbr { disk_signature } => {
                format!("MBR (disk signature {disk_signature})")
            }
            crate::volume::Table::None => "none (partitionless disk)".to_string(),
        };
        let _ = writeln!(s, "partitions:   {scheme}");
        for vol in &v.volumes {
            let ty = vol.type_name.clone().unwrap_or_else(|| vol.type_id.clone());
            let fs = vol.filesystem.clone().map(|f| match &vol.fs_label {
                Some(l) => format!("{f} '{l}'"),
                None => f,
            });
            let _ = writeln!(
                s,
                "  {:<6} start {:>14}  size {:>10}  {:<22} {}{}",
                vol.name,
                vol.start,
                human(vol.len),
                ty,
                fs.unwrap_or_else(|| "-".into()),
                vol.label
                    .as_ref()
                    .map(|l| format!("  name '{l}'"))
                    .unwrap_or_default()
            );
            match (&vol.usage, &vol.filesystem) {
                (Some(u), _) => {
                    let _ = writeln!(s, "         {}", usage_line(u));
                }
                (None, Some(k)) if guestfs::is_supported(k) => {
                    let _ = writeln!(s, "         used: ? (see warnings)");
                }
                _ => {}
            }
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

/// "used: 1.2 GiB of 4.0 GiB (30.0%), free: 2.8 GiB".
fn usage_line(u: &FsUsage) -> String {
    let pct = if u.total_bytes == 0 {
        0.0
    } else {
        u.used_bytes as f64 * 100.0 / u.total_bytes as f64
    };
    format!(
        "used: {} of {} ({pct:.1}%), free: {}",
        human(u.used_bytes),
        human(u.total_bytes),
        human(u.free_bytes)
    )
}

/// 1536 -> "1.5 KiB".
pub fn human(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
