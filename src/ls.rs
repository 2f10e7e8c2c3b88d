//! `vmback ls` and `vmback cat`: browse a guest filesystem without mounting it.
//! Guest names are printed with control characters escaped, so a hostile name
//! cannot drive the terminal.

use std::io::Write;

use serde::Serialize;

use crate::browse::DiskView;
use crate::error::{Error, Result};
use crate::guestfs::{FileType, Metadata};
use crate::inspect::human;

/// One listed entry (JSON form).
#[derive(Debug, Serialize)]
pub struct Listed {
    pub name: String,
    #[serde(flatten)]
    pub meta: Metadata,
    pub target: Option<String>,
}

fn werr(e: std::io::Error) -> Error {
    Error::io("<stdout>", "write", e)
}

/// Escapes control characters and invalid UTF-8 in a guest name for display.
pub fn display_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Lists the volumes of a disk.
pub fn list_volumes(view: &DiskView, json: bool, out: &mut dyn Write) -> Result<()> {
    let t = view.table();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(t).unwrap_or_default()
        )
        .map_err(werr)?;
        return Ok(());
    }
    for v in &t.volumes {
        writeln!(
            out,
            "{:<6} {:>10}  {:<6} {}",
            v.name,
            human(v.len),
            v.filesystem.as_deref().unwrap_or("-"),
            v.fs_label.as_deref().or(v.label.as_deref()).unwrap_or("")
        )
        .map_err(werr)?;
    }
    Ok(())
}

fn type_char(t: FileType) -> char {
    match t {
        FileType::Dir => 'd',
        FileType::Symlink => 'l',
        FileType::File => '-',
        FileType::Other => '?',
    }
}

fn mode_string(m: &Metadata) -> String {
    let mut s = String::new();
    s.push(type_char(m.file_type));
    for shift in [6, 3, 0] {
        let bits = (m.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn time_string(m: &Metadata) -> String {
    m.mtime
        .map(|t| format_utc(t.secs))
        .unwrap_or_else(|| "-".into())
}

/// `YYYY-MM-DD HH:MM` in UTC from Unix seconds (civil-from-days, no time crate needed).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Lists `path` (a directory's entries, or a single file).
pub fn list_path(
    view: &DiskView,
    path: &str,
    long: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let r = view.resolve(path)?;
    let meta = r.fs.metadata(r.node)?;
    let mut rows = Vec::new();
    if meta.file_type == FileType::Dir {
        let mut entries = r.fs.read_dir(r.node)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let m = if long || json {
                r.fs.metadata(e.node)?
            } else {
                placeholder(e.file_type)
            };
            let target = if m.file_type == FileType::Symlink && (long || json) {
                Some(r.fs.read_link(e.node)?)
            } else {
                None
            };
            rows.push(Listed {
                name: display_name(std::os::unix::ffi::OsStrExt::as_bytes(e.name.as_os_str())),
                meta: m,
                target: target
                    .map(|t| display_name(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()))),
            });
        }
    } else {
        let name = r.guest_path.rsplit('/').next().unwrap_or("").to_string();
        let target = if meta.file_type == FileType::Symlink {
            Some(r.fs.read_link(r.node)?)
        } else {
            None
        };
        rows.push(Listed {
            name: display_name(name.as_bytes()),
            meta,
            target: target
                .map(|t| display_name(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()))),
        });
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )
        .map_err(werr)?;
        return Ok(());
    }
    for row in rows {
        if long {
            let owner = match (row.meta.uid, row.meta.gid) {
                (Some(u), Some(g)) => format!("{u:>5} {g:>5}"),
                _ => format!("{:>5} {:>5}", "-", "-"),
            };
            let link = row.target.map(|t| format!(" -> {t}")).unwrap_or_default();
            writeln!(
                out,
                "{} {:>3} {owner} {:>12} {} {}{link}",
                mode_string(&row.meta),
                row.meta.nlink,
                row.meta.size,
                time_string(&row.meta),
                row.name
            )
            .map_err(werr)?;
        } else {
            let suffix = if row.meta.file_type == FileType::Dir {
                "/"
            } else {
                ""
            };
            writeln!(out, "{}{suffix}", row.name).map_err(werr)?;
        }
    }
    Ok(())
}

fn placeholder(file_type: FileType) -> Metadata {
    Metadata {
        file_type,
        size: 0,
        mode: 0,
        uid: None,
        gid: None,
        nlink: 1,
        mtime: None,
        atime: None,
        ctime: None,
        crtime: None,
        attributes: None,
        link_id: None,
    }
}

/// Copies the file at `path` to `out`.
pub fn cat(view: &DiskView, path: &str, out: &mut dyn Write) -> Result<()> {
    let r = view.resolve(path)?;
    let meta = r.fs.metadata(r.node)?;
    if meta.file_type != FileType::File {
        return Err(Error::Usage(format!(
            "{path}: not a regular file ({:?})",
            meta.file_type
        )));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = r.fs.read_at(r.node, off, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(werr)?;
        off += n as u64;
    }
    if off != meta.size {
        return Err(Error::GuestFs {
            fs: format!("{} ", r.volume.name),
            path: path.to_string(),
            source: format!("file is {} bytes but only {off} could be read", meta.size).into(),
        });
    }
    Ok(())
}
