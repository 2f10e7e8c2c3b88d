//! Whether a VM's next backup will be a full read, and why: what the planner
//! staggers, and what `--dry-run` shows. Reads the repository's restore points and
//! the sources' headers; writes nothing.
//!
//! The reasons mirror the decisions of `backup::cbt::plan` (a prediction; the
//! backup itself decides again and records what it did):
//! - no restore point of the VM in the repository;
//! - `full_every = N` reached: N restore points since the last full (this one is
//!   then forced: `BackupOptions::full_reason`);
//! - a disk with `tracking = "full"`, a disk the previous restore point does not
//!   have, or one whose size changed;
//! - change tracking that cannot be used: a dirty bitmap other than the one the
//!   previous restore point was taken with, or (auto / differencing) a source whose
//!   chain does not sit on the layers the previous restore point captured.

use serde::Serialize;

use super::validate::VmJob;
use crate::backup::cbt::Tracking;
use crate::backup::source::{is_nbd_uri, Source};
use crate::repo::manifest::Snapshot;

/// The prediction for one VM.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Prediction {
    pub full: bool,
    pub reason: String,
    /// Set when the backup must be forced to a full (`full_every`).
    #[serde(skip)]
    pub force: Option<String>,
    /// Bytes the backup is expected to read (virtual sizes for a full, a tenth of
    /// them for an incremental): for the dry-run's time estimate only.
    pub expected_bytes: u64,
}

/// Whether a restore point read every disk in full.
pub fn is_full(s: &Snapshot) -> bool {
    s.manifest
        .disks
        .iter()
        .all(|d| matches!(d.change_tracking.method.as_str(), "full" | "fallback"))
}

/// Predicts `vm`'s next backup given all restore points of the repository (oldest
/// first, as `Repository::snapshots` returns them).
pub fn predict(vm: &VmJob, history: &[Snapshot]) -> Prediction {
    let mine: Vec<&Snapshot> = history
        .iter()
        .filter(|s| crate::backup::same_vm(&s.manifest.vm, &vm.vm))
        .collect();
    let sizes: Vec<Option<u64>> = vm.sources.iter().map(|s| source_size(&s.spec)).collect();
    let total: u64 = sizes.iter().flatten().sum();
    let full = |reason: String| Prediction {
        full: true,
        reason,
        force: None,
        expected_bytes: total,
    };
    let Some(parent) = mine.last() else {
        return full("no restore point of this VM in the repository".into());
    };
    if let Some(n) = vm.full_every {
        let since = mine.iter().rev().take_while(|s| !is_full(s)).count() + 1;
        if since >= n as usize {
            let why = format!(
                "full_every = {n}: {since} restore point{} since the last full",
                if since == 1 { "" } else { "s" }
            );
            let mut p = full(why.clone());
            p.force = Some(why);
            return p;
        }
    }
    for (n, (spec, size)) in vm.sources.iter().zip(&sizes).enumerate() {
        let disk = format!("disk{n}");
        let Some(rec) = parent.manifest.disks.get(n) else {
            return full(format!("{disk}: not in the previous restore point"));
        };
        if let Some(size) = size {
            if *size != rec.virtual_size {
                return full(format!(
                    "{disk}: {size} bytes now, {} in the previous restore point",
                    rec.virtual_size
                ));
            }
        }
        match &spec.tracking {
            Tracking::FullRead => return full(format!("{disk}: tracking = \"full\"")),
            Tracking::DirtyBitmap(name) => {
                if rec.change_tracking.bitmap.as_deref() != Some(name.as_str()) {
                    return full(format!(
                        "{disk}: the previous restore point was not taken with dirty bitmap {name}"
                    ));
                }
            }
            Tracking::ChangedExtents(_) => {}
            Tracking::Auto => {
                if is_nbd_uri(&spec.spec) {
                    return full(format!(
                        "{disk}: an NBD export without a dirty bitmap has no change tracking"
                    ));
                }
                let current = match Source::open(&spec.spec, None).and_then(|s| s.layer_records()) {
                    Ok(c) => c,
                    Err(e) => return full(format!("{disk}: cannot read the source: {e}")),
                };
                let base = &rec.layers;
                let on_top = !base.is_empty()
                    && current.len() >= base.len()
                    && current[current.len() - base.len()..] == base[..];
                if !on_top {
                    return full(format!(
                        "{disk}: no change tracking (the chain does not sit on the layers the previous restore point captured)"
                    ));
                }
            }
        }
    }
    Prediction {
        full: false,
        reason: format!("incremental on {}", parent.short_id()),
        force: None,
        expected_bytes: total / 10,
    }
}

/// The virtual size of an image file (`None` for NBD or when it cannot be read).
fn source_size(spec: &str) -> Option<u64> {
    if is_nbd_uri(spec) {
        return None;
    }
    Source::open(spec, None).ok().map(|s| s.size())
}
