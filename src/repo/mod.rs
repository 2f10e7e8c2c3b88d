//! The repository: content-addressed chunks, one fixed index per disk per restore
//! point, one manifest per restore point (see DESIGN.md, "Repository invariants").
//!
//! ```text
//! config                      format version, chunk size, hash, compression
//! chunks/<2 hex>/<64 hex>     chunk objects (chunk.rs)
//! indexes/<64 hex>            disk indexes (index.rs)
//! snapshots/<64 hex>          manifests (manifest.rs): a restore point exists iff this does
//! tmp/                        objects being written; garbage after a crash
//! ```
//!
//! Nothing is rewritten in place: chunks and indexes are named by their content and
//! manifests by the hash of their JSON, so concurrent writers (several backups, from
//! several proxies) can only ever write the same bytes under the same name.

pub mod backend;
pub mod chunk;
pub mod config;
pub mod gc;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod reader;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use backend::{Backend, LocalBackend};
use chunk::{hex, ChunkId};
use config::RepoConfig;
use index::{DiskIndex, MAX_ENTRIES};
use manifest::{Manifest, Snapshot, MAX_MANIFEST_BYTES};

use crate::error::{Error, Result};

use jiff::Timestamp;

/// An open repository.
pub struct Repository {
    backend: Box<dyn Backend>,
    config: RepoConfig,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.backend.location())
            .field("config", &self.config)
            .finish()
    }
}

/// Whether `path` looks like a vmback repository (a directory with a `config`).
pub fn is_repository(path: &Path) -> bool {
    path.is_dir() && path.join("config").is_file()
}

impl Repository {
    /// Creates a repository in `path` (created if missing; it must be empty).
    pub fn init(path: &Path, config: RepoConfig) -> Result<Self> {
        let location = path.display().to_string();
        if path.exists() {
            let mut entries = std::fs::read_dir(path).map_err(|e| Error::io(path, "list", e))?;
            if entries.next().is_some() {
                return Err(Error::Repository {
                    location,
                    reason: if path.join("config").exists() {
                        "already a repository".into()
                    } else {
                        "directory is not empty (choose an empty or new directory)".into()
                    },
                });
            }
        } else {
            std::fs::create_dir_all(path).map_err(|e| Error::io(path, "create directory", e))?;
        }
        let backend = LocalBackend::new(path);
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::Repository {
            location: location.clone(),
            reason: format!("encoding config: {e}"),
        })?;
        if !backend.put_new("config", &json)? {
            return Err(Error::Repository {
                location,
                reason: "already a repository (config appeared while creating it)".into(),
            });
        }
        for dir in ["chunks", "indexes", "snapshots"] {
            let d = path.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, "create directory", e))?;
        }
        Ok(Repository {
            backend: Box::new(backend),
            config,
        })
    }

    /// Opens the repository in `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        if !path.is_dir() {
            return Err(Error::Repository {
                location,
                reason: "no such directory (create a repository with `vmback init`)".into(),
            });
        }
        let backend = LocalBackend::new(path);
        let raw = match backend.get("config") {
            Ok(raw) => raw,
            Err(Error::NotInRepository { .. }) => {
                return Err(Error::Repository {
                    location,
                    reason: "not a vmback repository: no config (create one with `vmback init`)"
                        .into(),
                })
            }
            Err(e) => return Err(e),
        };
        let config: RepoConfig = serde_json::from_slice(&raw).map_err(|e| Error::Repository {
            location: location.clone(),
            reason: format!("config is not valid: {e}"),
        })?;
        config.validate(&location)?;
        Ok(Repository {
            backend: Box::new(backend),
            config,
        })
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Whether the repository holds chunk `id`.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.backend.exists(&id.key())
    }

    /// Stores a chunk already encoded with [`chunk::encode`]. It is durable (and
    /// readable) only after [`Repository::sync`], which saving an index or a
    /// manifest does first.
    pub fn put_chunk_object(&self, id: &ChunkId, object: &[u8]) -> Result<()> {
        self.backend.put_batched(&id.key(), object)
    }

    /// Makes every chunk stored so far, and every chunk seen to exist, durable: the
    /// invariant that a manifest is only written when every chunk it references is.
    pub fn sync(&self) -> Result<()> {
        self.backend.sync()
    }

    /// Hints that chunk `id` will be read soon (see [`Backend::will_need`]).
    pub fn will_need_chunk(&self, id: &ChunkId) {
        self.backend.will_need(&id.key());
    }

    /// Reads, decompresses and verifies chunk `id` (also from where an interrupted gc
    /// left it aside).
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let object = match self.backend.get(&id.key()) {
            Err(Error::NotInRepository { location, key }) => match self.backend.get_aside(&key)? {
                Some(o) => o,
                None => return Err(Error::NotInRepository { location, key }),
            },
            other => other?,
        };
        chunk::decode(id, &object, &self.location())
    }

    /// Whether chunk `id` exists, refreshing its time so a concurrent gc keeps it
    /// (see gc.rs). A chunk marked damaged by verify counts as absent, so that the
    /// backup stores it again.
    pub fn claim_chunk(&self, id: &ChunkId, damaged: &HashSet<ChunkId>) -> Result<bool> {
        if damaged.contains(id) {
            return Ok(false);
        }
        self.backend.touch(&id.key())
    }

    /// Chunks `verify --read-data` found damaged (`damaged/<id>` markers).
    pub fn damaged_chunks(&self) -> Result<HashSet<ChunkId>> {
        Ok(self
            .backend
            .list("damaged")?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("damaged/").and_then(ChunkId::from_hex))
            .collect())
    }

    /// Records that chunk `id` is damaged, so the next backup holding its content
    /// writes it again.
    pub fn mark_damaged(&self, id: &ChunkId) -> Result<()> {
        self.backend.put(&format!("damaged/{}", id.hex()), b"")
    }

    /// Stores a chunk that was marked damaged again, and drops the marker.
    pub fn repair_chunk(&self, id: &ChunkId, object: &[u8]) -> Result<()> {
        self.backend.put(&id.key(), object)?;
        self.backend.delete(&format!("damaged/{}", id.hex()))
    }

    /// Stores an index (after making the chunks durable and in place); returns its id.
    pub fn save_index(&self, index: &DiskIndex) -> Result<String> {
        self.sync()?;
        let plain = index.to_bytes();
        let id = hex(blake3::hash(&plain).as_bytes());
        let key = format!("indexes/{id}");
        if !self.backend.touch(&key)? {
            let packed = zstd::bulk::compress(&plain, 3)
                .map_err(|e| Error::io("zstd", "compress an index", e))?;
            self.backend.put(&key, &packed)?;
        }
        Ok(id)
    }

    /// Loads and verifies index `id`.
    pub fn load_index(&self, id: &str) -> Result<DiskIndex> {
        let key = object_key("indexes", id, &self.location())?;
        let packed = self.backend.get(&key)?;
        let cap = 24 + MAX_ENTRIES * 32;
        let plain = decompress_capped(&packed, cap).map_err(|reason| self.damaged(&key, reason))?;
        if hex(blake3::hash(&plain).as_bytes()) != id {
            return Err(self.damaged(&key, "content does not match its name".into()));
        }
        DiskIndex::from_bytes(&plain, &self.location(), &key)
    }

    /// Writes a manifest (the last step of a backup), after a [`Repository::sync`];
    /// returns the restore point's id.
    pub fn save_manifest(&self, manifest: &Manifest) -> Result<String> {
        self.sync()?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Repository {
            location: self.location(),
            reason: format!("encoding manifest: {e}"),
        })?;
        let id = hex(blake3::hash(&json).as_bytes());
        self.backend.put_new(&format!("snapshots/{id}"), &json)?;
        Ok(id)
    }

    /// Loads and verifies manifest `id`.
    pub fn load_manifest(&self, id: &str) -> Result<Manifest> {
        let key = object_key("snapshots", id, &self.location())?;
        let json = self.backend.get(&key)?;
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(self.damaged(
                &key,
                format!("{} bytes, too large for a manifest", json.len()),
            ));
        }
        if hex(blake3::hash(&json).as_bytes()) != id {
            return Err(self.damaged(&key, "content does not match its name".into()));
        }
        serde_json::from_slice(&json)
            .map_err(|e| self.damaged(&key, format!("not a manifest: {e}")))
    }

    /// Ids of all restore points (unsorted, unverified).
    pub fn snapshot_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list("snapshots")?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("snapshots/").map(str::to_string))
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect())
    }

    /// All restore points, oldest first. A manifest that cannot be read is an error:
    /// a listing must not silently omit a restore point.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for id in self.snapshot_ids()? {
            let manifest = self.load_manifest(&id)?;
            out.push(Snapshot { id, manifest });
        }
        out.sort_by(|a, b| {
            (a.manifest.time.as_str(), a.id.as_str())
                .cmp(&(b.manifest.time.as_str(), b.id.as_str()))
        });
        Ok(out)
    }

    /// Finds one restore point by `spec`: a full id, a unique id prefix (4+ hex digits),
    /// `latest`, or the restore point's name; `vm` narrows the search.
    pub fn find_snapshot(&self, spec: &str, vm: Option<&str>) -> Result<Snapshot> {
        let all: Vec<Snapshot> = self
            .snapshots()?
            .into_iter()
            .filter(|s| vm.is_none_or(|v| s.manifest.vm.name == v))
            .collect();
        let location = self.location();
        let not_found = |what: String| Error::Repository {
            location: location.clone(),
            reason: what,
        };
        if spec == "latest" {
            let vms: std::collections::BTreeSet<&str> =
                all.iter().map(|s| s.manifest.vm.name.as_str()).collect();
            if vms.len() > 1 {
                return Err(Error::Usage(format!(
                    "`latest` is ambiguous: the repository holds {} VMs ({}); name one with --vm",
                    vms.len(),
                    vms.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            return all.last().cloned().ok_or_else(|| {
                not_found(match vm {
                    Some(v) => format!("no restore point of VM {v}"),
                    None => "no restore points yet".into(),
                })
            });
        }
        let by_name: Vec<&Snapshot> = all.iter().filter(|s| s.manifest.name == spec).collect();
        if by_name.len() == 1 {
            return Ok(by_name[0].clone());
        }
        let spec_l = spec.to_ascii_lowercase();
        if spec_l.len() >= 4 && spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&Snapshot> = all.iter().filter(|s| s.id.starts_with(&spec_l)).collect();
            match hits.len() {
                1 => return Ok(hits[0].clone()),
                0 => {}
                n => {
                    return Err(Error::Usage(format!(
                    "restore point id prefix {spec} matches {n} restore points; give more digits"
                )))
                }
            }
        }
        if by_name.len() > 1 {
            return Err(Error::Usage(format!(
                "{} restore points are named {spec} (of different VMs); name the VM with --vm",
                by_name.len()
            )));
        }
        Err(not_found(format!(
            "no restore point {spec}{} (list them with `vmback snapshots`)",
            vm.map(|v| format!(" of VM {v}")).unwrap_or_default()
        )))
    }

    /// The names of the VMs that have restore points.
    pub fn vm_names(&self) -> Result<std::collections::BTreeSet<String>> {
        Ok(self
            .snapshots()?
            .into_iter()
            .map(|s| s.manifest.vm.name)
            .collect())
    }

    /// Finds the restore point of `--at TIME`: the newest whose capture started at or
    /// before `at` (ties: the higher id). Without `vm` the repository must hold one VM.
    pub fn find_at(&self, at: Timestamp, vm: Option<&str>) -> Result<Snapshot> {
        let all: Vec<Snapshot> = self
            .snapshots()?
            .into_iter()
            .filter(|s| vm.is_none_or(|v| s.manifest.vm.name == v))
            .collect();
        if vm.is_none() {
            let vms: std::collections::BTreeSet<&str> =
                all.iter().map(|s| s.manifest.vm.name.as_str()).collect();
            if vms.len() > 1 {
                return Err(Error::Usage(format!(
                    "--at is ambiguous: the repository holds {} VMs ({}); name one with --vm",
                    vms.len(),
                    vms.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut timed = Vec::with_capacity(all.len());
        for s in all {
            let t = s.manifest.time.parse::<Timestamp>().map_err(|e| {
                self.damaged(
                    &format!("snapshots/{}", s.id),
                    format!("time {:?} is not RFC 3339: {e}", s.manifest.time),
                )
            })?;
            timed.push((t, s));
        }
        timed.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        let of_vm = vm.map(|v| format!(" of VM {v}")).unwrap_or_default();
        let Some((oldest_t, oldest)) = timed.first() else {
            return Err(Error::Repository {
                location: self.location(),
                reason: format!("no restore point{of_vm} yet"),
            });
        };
        let Some((_, found)) = timed.iter().rev().find(|(t, _)| *t <= at) else {
            return Err(Error::Repository {
                location: self.location(),
                reason: format!(
                    "no restore point{of_vm} at or before {}: the oldest is {}/{} ({}, id {}); \
                     give a later --at",
                    local_time(at),
                    oldest.manifest.vm.name,
                    oldest.manifest.name,
                    local_time(*oldest_t),
                    oldest.short_id()
                ),
            });
        };
        Ok(found.clone())
    }

    /// [`Repository::resolve_path`], or with `--at` (`at`): the path leaves the restore
    /// point out (`[<vm>/]<disk>/…`; `<vm>/` is left out too with `vm` or in a
    /// repository of one VM) and `at` picks it, as [`Repository::find_at`].
    pub fn resolve_path_at<'p>(
        &self,
        path: &'p str,
        vm: Option<&str>,
        at: Option<Timestamp>,
    ) -> Result<(Snapshot, Vec<&'p str>)> {
        let Some(at) = at else {
            return self.resolve_path(path, vm);
        };
        let mut parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let named = match parts.first() {
            Some(first) if vm.is_none_or(|v| v == *first) && self.vm_names()?.contains(*first) => {
                Some(parts.remove(0))
            }
            _ => None,
        };
        let snap = self.find_at(at, named.or(vm))?;
        Ok((snap, parts))
    }

    /// Resolves the start of a path in the path grammar to a restore point:
    /// `<vm>/<restore point>/…` (restore point by name, id prefix or `latest`) or
    /// `<restore point id or prefix>/…` or `latest/…` (with `vm` when given).
    /// Returns the restore point and the remaining components.
    pub fn resolve_path<'p>(
        &self,
        path: &'p str,
        vm: Option<&str>,
    ) -> Result<(Snapshot, Vec<&'p str>)> {
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let Some(first) = parts.first().copied() else {
            return Err(Error::Usage(
                "name a restore point: <vm>/<restore point>/… or <id>/… (see `vmback snapshots`)"
                    .into(),
            ));
        };
        let is_vm = vm.is_none()
            && parts.len() >= 2
            && self
                .snapshots()?
                .iter()
                .any(|s| s.manifest.vm.name == first);
        if is_vm {
            let snap = self.find_snapshot(parts[1], Some(first))?;
            return Ok((snap, parts[2..].to_vec()));
        }
        let snap = self.find_snapshot(first, vm)?;
        Ok((snap, parts[1..].to_vec()))
    }

    /// Opens disk `disk` (`disk0`, …) of a restore point for reading.
    pub fn open_disk(
        self: &Arc<Self>,
        snap: &Snapshot,
        disk: &str,
        cache_bytes: u64,
    ) -> Result<reader::RestorePointDisk> {
        let Some(rec) = snap.manifest.disks.iter().find(|d| d.name == disk) else {
            return Err(Error::Usage(format!(
                "restore point {} has no disk {disk:?} (it has {})",
                snap.short_id(),
                snap.manifest
                    .disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let index = self.load_index(&rec.index)?;
        let name = format!("{}/{}/{disk}", snap.manifest.vm.name, snap.manifest.name);
        Ok(reader::RestorePointDisk::new(
            self.clone(),
            index,
            name,
            cache_bytes,
        ))
    }

    fn damaged(&self, key: &str, reason: String) -> Error {
        Error::Damaged {
            location: self.location(),
            key: key.to_string(),
            reason,
        }
    }
}

/// Parses the time of `--at`: `2026-11-20 03:00`, `2026-11-20T03:00:00` (local time
/// zone) or RFC 3339 with `Z` or an offset (`2026-11-20T03:00:00+01:00`). A date
/// alone is refused: whether it means the start or the end of the day is a guess.
pub fn parse_at(text: &str) -> std::result::Result<Timestamp, String> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Ok(ts);
    }
    if t.parse::<jiff::civil::Date>().is_ok() && !t.contains([' ', 'T', 't', ':']) {
        return Err(format!(
            "{text:?} is a date without a time: say which time of that day, e.g. \
             \"{t} 23:59\" for its last restore point"
        ));
    }
    let dt = t.parse::<jiff::civil::DateTime>().map_err(|e| {
        format!(
            "{text:?}: expected a time such as \"2026-11-20 03:00\" (local time) or \
             2026-11-20T03:00:00Z ({e})"
        )
    })?;
    dt.to_zoned(jiff::tz::TimeZone::system())
        .map(|z| z.timestamp())
        .map_err(|e| format!("{text:?}: {e}"))
}

/// `at` in the local time zone, for messages: `2026-11-20 03:00:00 +01:00`.
fn local_time(at: Timestamp) -> String {
    at.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

/// Opens a repository for sharing between threads.
pub fn open_shared(path: &Path) -> Result<Arc<Repository>> {
    Repository::open(path).map(Arc::new)
}

/// `dir/id` after checking that `id` is a 64-digit hex name (ids come from manifests,
/// which a damaged repository could fill with anything).
fn object_key(dir: &str, id: &str, location: &str) -> Result<String> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Repository {
            location: location.to_string(),
            reason: format!("{id:?} is not a valid object id"),
        });
    }
    Ok(format!("{dir}/{}", id.to_ascii_lowercase()))
}

/// Decompresses zstd data, refusing more than `cap` bytes of output.
fn decompress_capped(data: &[u8], cap: u64) -> std::result::Result<Vec<u8>, String> {
    let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::new();
    decoder
        .take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    if out.len() as u64 > cap {
        return Err(format!("decompresses to more than {cap} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::VmIdentity;

    fn manifest(vm: &str, time: &str) -> Manifest {
        Manifest {
            version: manifest::MANIFEST_VERSION,
            vm: VmIdentity {
                name: vm.into(),
                uuid: None,
            },
            host: None,
            datastores: vec![],
            tags: vec![],
            time: time.into(),
            end_time: time.into(),
            name: time.replace(':', ""),
            parent: None,
            proxy: None,
            chunk_size: 1 << 20,
            disks: vec![],
            warnings: vec![],
            program: "test".into(),
        }
    }

    /// A repository with restore points of `web01` on three nights and one of `db1`.
    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let repo = Repository::init(
            &path,
            RepoConfig::new(1 << 20, config::DEFAULT_ZSTD).unwrap(),
        )
        .unwrap();
        for (vm, t) in [
            ("web01", "2026-11-19T03:00:00Z"),
            ("web01", "2026-11-20T03:00:00Z"),
            ("web01", "2026-11-21T03:00:00Z"),
            ("db1", "2026-11-20T01:00:00Z"),
        ] {
            repo.save_manifest(&manifest(vm, t)).unwrap();
        }
        (dir, repo)
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn at_picks_the_newest_at_or_before() {
        let (_d, r) = repo();
        let pick = |t: &str| r.find_at(at(t), Some("web01")).unwrap().manifest.time;
        assert_eq!(pick("2026-11-20T03:00:00Z"), "2026-11-20T03:00:00Z");
        assert_eq!(pick("2026-11-20T02:59:59Z"), "2026-11-19T03:00:00Z");
        assert_eq!(pick("2030-01-01T00:00:00Z"), "2026-11-21T03:00:00Z");
        let db = r.find_at(at("2026-11-25T00:00:00Z"), Some("db1")).unwrap();
        assert_eq!(db.manifest.vm.name, "db1");
    }

    #[test]
    fn at_without_vm_is_ambiguous_across_vms() {
        let (_d, r) = repo();
        let e = r.find_at(at("2026-11-21T00:00:00Z"), None).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        let e = e.to_string();
        assert!(e.contains("db1, web01") && e.contains("--vm"), "{e}");
    }

    #[test]
    fn at_before_everything_names_the_oldest() {
        let (_d, r) = repo();
        let e = r
            .find_at(at("2026-11-01T00:00:00Z"), Some("web01"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("web01/2026-11-19T030000Z"), "{e}");
        assert!(e.contains("at or before"), "{e}");
        let e = r
            .find_at(at("2026-11-01T00:00:00Z"), Some("nosuchvm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no restore point of VM nosuchvm"), "{e}");
    }

    #[test]
    fn at_in_paths_leaves_the_restore_point_out() {
        let (_d, r) = repo();
        let t = Some(at("2026-11-20T12:00:00Z"));
        let (s, rest) = r.resolve_path_at("web01/disk0/p1/etc", None, t).unwrap();
        assert_eq!(s.manifest.time, "2026-11-20T03:00:00Z");
        assert_eq!(rest, ["disk0", "p1", "etc"]);
        let (s, rest) = r.resolve_path_at("disk0/p1", Some("db1"), t).unwrap();
        assert_eq!(s.manifest.vm.name, "db1");
        assert_eq!(rest, ["disk0", "p1"]);
        let (s, rest) = r.resolve_path_at("web01", Some("web01"), t).unwrap();
        assert_eq!((s.manifest.vm.name.as_str(), rest.len()), ("web01", 0));
        assert!(matches!(
            r.resolve_path_at("disk0", None, t),
            Err(Error::Usage(_))
        ));
        // Without --at, the path grammar as before.
        let (s, rest) = r.resolve_path_at("web01/latest/disk0", None, None).unwrap();
        assert_eq!(s.manifest.time, "2026-11-21T03:00:00Z");
        assert_eq!(rest, ["disk0"]);
    }

    #[test]
    fn at_parses_local_and_offset_times() {
        assert_eq!(
            parse_at("2026-11-20T03:00:00Z").unwrap(),
            at("2026-11-20T03:00:00Z")
        );
        assert_eq!(
            parse_at("2026-11-20T03:00+01:00").unwrap(),
            at("2026-11-20T02:00:00Z")
        );
        // Local time: whatever the zone, the same civil time as a local timestamp.
        let local = jiff::civil::date(2026, 11, 20)
            .at(3, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::system())
            .unwrap()
            .timestamp();
        assert_eq!(parse_at("2026-11-20 03:00").unwrap(), local);
        assert_eq!(parse_at("2026-11-20T03:00:00").unwrap(), local);
        let e = parse_at("2026-11-20").unwrap_err();
        assert!(e.contains("23:59"), "{e}");
        assert!(parse_at("yesterday").is_err());
    }
}
