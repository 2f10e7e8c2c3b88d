//! The repository as the top of the mounted tree: `<vm>/` directories holding one
//! `<restore point>/` directory per restore point (named by the restore point's name,
//! as in the path grammar of DESIGN.md), plus a `latest` symlink per VM.
//!
//! Restore points are listed at mount time and again whenever the root or a VM
//! directory is listed (or a name there is not found), so that backups finishing
//! after the mount appear. Manifests are immutable, so each is read once. A manifest
//! that cannot be read is reported once on stderr and left out: one damaged restore
//! point must not hide the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{chain, Result};
use crate::repo::manifest::Snapshot;
use crate::repo::Repository;

/// How often a lookup of an unknown name may list the repository again.
const MISS_REFRESH: Duration = Duration::from_secs(1);

/// What a name in the root or in a VM directory stands for.
pub enum Found {
    Vm(Arc<str>),
    Snapshot(Arc<Snapshot>),
    /// A symlink (`latest`, or a restore point id or id prefix) and its target.
    Alias(String),
}

/// Restore points of a repository, grouped by VM.
pub struct RepoView {
    repo: Arc<Repository>,
    vm_filter: Option<String>,
    /// `--snapshot`: the one restore point shown (never refreshed).
    fixed: Option<Arc<Snapshot>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_id: HashMap<String, Arc<Snapshot>>,
    /// Ids whose manifest could not be read (reported once).
    bad: HashSet<String>,
    /// VM name → its restore points, oldest first, with usable, unique names.
    vms: BTreeMap<Arc<str>, Vec<Arc<Snapshot>>>,
    last_refresh: Option<Instant>,
}

/// Whether a name from a manifest can be a directory entry as it is (no '/', no NUL,
/// not "." or ".."). Others are left out of the tree, with a message.
pub fn usable_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// An RFC 3339 time from a manifest as a `SystemTime` (the epoch when unreadable).
pub fn manifest_time(s: &str) -> SystemTime {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl RepoView {
    /// Lists the restore points of `repo`, restricted to VM `vm` and to the one
    /// restore point `snapshot` (name, id prefix or `latest`) when given.
    pub fn open(repo: Arc<Repository>, vm: Option<String>, snapshot: Option<&str>) -> Result<Self> {
        let fixed = match snapshot {
            Some(spec) => Some(Arc::new(repo.find_snapshot(spec, vm.as_deref())?)),
            None => None,
        };
        let view = RepoView {
            repo,
            vm_filter: vm,
            fixed,
            state: Mutex::new(State::default()),
        };
        view.refresh()?;
        if let Some(vm) = &view.vm_filter {
            if !view.lock().vms.contains_key(vm.as_str()) {
                return Err(crate::Error::Usage(format!(
                    "the repository has no restore point of VM {vm} (list them with `vmback snapshots`)"
                )));
            }
        }
        Ok(view)
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists the repository again and reads the manifests not seen yet. Fails only
    /// when the listing itself fails (the previous state is kept then).
    pub fn refresh(&self) -> Result<()> {
        let snaps: Vec<Arc<Snapshot>> = match &self.fixed {
            Some(s) => vec![s.clone()],
            None => {
                let ids = self.repo.snapshot_ids()?;
                let known: HashMap<String, Arc<Snapshot>> = {
                    let st = self.lock();
                    ids.iter()
                        .filter_map(|id| st.by_id.get(id).map(|s| (id.clone(), s.clone())))
                        .collect()
                };
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(s) = known.get(&id) {
                        out.push(s.clone());
                        continue;
                    }
                    match self.repo.load_manifest(&id) {
                        Ok(manifest) => out.push(Arc::new(Snapshot { id, manifest })),
                        Err(e) => {
                            if self.lock().bad.insert(id.clone()) {
                                eprintln!(
                                    "vmback mount: restore point {id} left out: {}",
                                    chain(&e)
                                );
                            }
                        }
                    }
                }
                out
            }
        };
        let mut vms: BTreeMap<Arc<str>, Vec<Arc<Snapshot>>> = BTreeMap::new();
        for s in &snaps {
            let vm = &s.manifest.vm.name;
            if self.vm_filter.as_ref().is_some_and(|f| f != vm) {
                continue;
            }
            if !usable_name(vm) || !usable_name(&s.manifest.name) {
                self.complain_once(
                    &s.id,
                    format!(
                        "restore point {} left out: VM name {vm:?} or restore point name {:?} cannot be a file name",
                        s.short_id(),
                        s.manifest.name
                    ),
                );
                continue;
            }
            vms.entry(Arc::from(vm.as_str()))
                .or_default()
                .push(s.clone());
        }
        for list in vms.values_mut() {
            list.sort_by(|a, b| {
                (a.manifest.time.as_str(), a.id.as_str())
                    .cmp(&(b.manifest.time.as_str(), b.id.as_str()))
            });
            let mut seen = HashSet::new();
            list.retain(|s| {
                let fresh = seen.insert(s.manifest.name.clone());
                if !fresh {
                    self.complain_once(
                        &s.id,
                        format!(
                            "restore point {} left out: another restore point of VM {} is also named {}",
                            s.short_id(),
                            s.manifest.vm.name,
                            s.manifest.name
                        ),
                    );
                }
                fresh
            });
        }
        let mut st = self.lock();
        st.by_id = snaps.into_iter().map(|s| (s.id.clone(), s)).collect();
        st.vms = vms;
        st.last_refresh = Some(Instant::now());
        Ok(())
    }

    fn complain_once(&self, id: &str, text: String) {
        if self.lock().bad.insert(id.to_string()) {
            eprintln!("vmback mount: {text}");
        }
    }

    /// Refreshes unless that happened less than a second ago (for lookups of names
    /// that are not there: a shell completing names must not list the repository on
    /// every keystroke).
    fn refresh_after_miss(&self) {
        let stale = self
            .lock()
            .last_refresh
            .is_none_or(|t| t.elapsed() >= MISS_REFRESH);
        if stale {
            self.refresh_logged();
        }
    }

    /// Refreshes; a failure is reported and the previous listing kept.
    pub fn refresh_logged(&self) {
        if let Err(e) = self.refresh() {
            eprintln!(
                "vmback mount: listing restore points of {}: {}",
                self.repo.location(),
                chain(&e)
            );
        }
    }

    /// The VMs with their newest restore point's time.
    pub fn vms(&self) -> Vec<(Arc<str>, SystemTime)> {
        self.lock()
            .vms
            .iter()
            .map(|(vm, list)| {
                let t = list
                    .last()
                    .map(|s| manifest_time(&s.manifest.end_time))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (vm.clone(), t)
            })
            .collect()
    }

    /// The restore points of `vm`, oldest first (`None`: no such VM now).
    pub fn snapshots_of(&self, vm: &str) -> Option<Vec<Arc<Snapshot>>> {
        self.lock().vms.get(vm).cloned()
    }

    /// A restore point by id (also one no longer listed, once seen).
    pub fn snapshot(&self, id: &str) -> Option<Arc<Snapshot>> {
        if let Some(s) = self.fixed.as_ref().filter(|s| s.id == id) {
            return Some(s.clone());
        }
        self.lock().by_id.get(id).cloned()
    }

    /// What `name` stands for in the root: a VM, or a restore point id (prefix).
    pub fn find_at_root(&self, name: &str) -> Option<Found> {
        for attempt in 0..2 {
            if attempt == 1 {
                self.refresh_after_miss();
            }
            if let Some((vm, _)) = self.lock().vms.get_key_value(name) {
                return Some(Found::Vm(vm.clone()));
            }
            if let Some(target) = self.alias_target("", name) {
                return Some(Found::Alias(target));
            }
        }
        None
    }

    /// What `name` stands for in the directory of `vm`.
    pub fn find_in_vm(&self, vm: &str, name: &str) -> Option<Found> {
        for attempt in 0..2 {
            if attempt == 1 {
                self.refresh_after_miss();
            }
            let hit = self
                .lock()
                .vms
                .get(vm)
                .and_then(|list| list.iter().find(|s| s.manifest.name == name).cloned());
            if let Some(s) = hit {
                return Some(Found::Snapshot(s));
            }
            if let Some(target) = self.alias_target(vm, name) {
                return Some(Found::Alias(target));
            }
        }
        None
    }

    /// The target of symlink `name` in directory `dir` (a VM, or "" for the root):
    /// `latest` → the newest restore point's name; a restore point id or unique id
    /// prefix (4+ hex digits) → its name (`<vm>/<name>` from the root).
    pub fn alias_target(&self, dir: &str, name: &str) -> Option<String> {
        let st = self.lock();
        if !dir.is_empty() && name == "latest" {
            return st
                .vms
                .get(dir)
                .and_then(|l| l.last())
                .map(|s| s.manifest.name.clone());
        }
        let prefix = name.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut hits = st
            .vms
            .iter()
            .filter(|(vm, _)| dir.is_empty() || &***vm == dir)
            .flat_map(|(_, l)| l.iter())
            .filter(|s| s.id.starts_with(&prefix));
        let s = hits.next()?;
        if hits.next().is_some() {
            return None;
        }
        Some(if dir.is_empty() {
            format!("{}/{}", s.manifest.vm.name, s.manifest.name)
        } else {
            s.manifest.name.clone()
        })
    }
}
