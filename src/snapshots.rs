//! `vmback snapshots`: the restore points of a repository, oldest first.

use serde::Serialize;

use crate::inspect::human;
use crate::repo::manifest::Snapshot;

/// One line of the listing (and one object of `--json`).
#[derive(Debug, Serialize)]
pub struct SnapshotRow<'a> {
    pub id: &'a str,
    pub short_id: &'a str,
    pub vm: &'a str,
    pub name: &'a str,
    pub time: &'a str,
    pub host: Option<&'a str>,
    pub tags: &'a [String],
    pub parent: Option<&'a str>,
    pub disks: Vec<SnapshotDisk<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotDisk<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub virtual_size: u64,
    pub method: &'a str,
    pub bytes_read: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
}

pub fn rows(list: &[Snapshot]) -> Vec<SnapshotRow<'_>> {
    list.iter()
        .map(|s| {
            let m = &s.manifest;
            SnapshotRow {
                id: &s.id,
                short_id: s.short_id(),
                vm: &m.vm.name,
                name: &m.name,
                time: &m.time,
                host: m.host.as_deref(),
                tags: &m.tags,
                parent: m.parent.as_deref(),
                disks: m
                    .disks
                    .iter()
                    .map(|d| SnapshotDisk {
                        name: &d.name,
                        source: &d.source,
                        virtual_size: d.virtual_size,
                        method: &d.change_tracking.method,
                        bytes_read: d.stats.bytes_read,
                        bytes_new: d.stats.bytes_new,
                        bytes_stored: d.stats.bytes_stored,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A table for a terminal.
pub fn render(list: &[Snapshot]) -> String {
    let mut out = format!(
        "{:<8}  {:<20}  {:<22}  {:<6}  {:>10}  {:>10}  {}\n",
        "ID", "VM", "RESTORE POINT", "DISKS", "SIZE", "NEW", "TRACKING / TAGS"
    );
    for r in rows(list) {
        let size: u64 = r.disks.iter().map(|d| d.virtual_size).sum();
        let new: u64 = r.disks.iter().map(|d| d.bytes_stored).sum();
        let mut methods: Vec<&str> = r.disks.iter().map(|d| d.method).collect();
        methods.dedup();
        let mut extra = methods.join(",");
        if !r.tags.is_empty() {
            extra += &format!("  [{}]", r.tags.join(","));
        }
        out += &format!(
            "{:<8}  {:<20}  {:<22}  {:<6}  {:>10}  {:>10}  {}\n",
            r.short_id,
            r.vm,
            r.name,
            r.disks.len(),
            human(size),
            human(new),
            extra
        );
    }
    let n = list.len();
    out += &format!("{n} restore point{}\n", if n == 1 { "" } else { "s" });
    out
}
