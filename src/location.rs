//! Where `ls`, `cat` and `get` read from: an image file (paths `<volume>/<path>`) or a
//! repository (paths `<vm>/<restore point>/<disk>/<volume>/<path>`, see DESIGN.md).
//! Both end in a [`DiskView`] plus a `<volume>/<path>` inside it, so the browsing
//! code is the same for both.

use std::path::Path;
use std::sync::Arc;

use crate::browse::DiskView;
use crate::error::{Error, Result};
use crate::repo::manifest::Snapshot;
use crate::repo::reader::DEFAULT_CACHE_BYTES;
use crate::repo::{self, Repository};

/// How `--vm` and `--at` narrow the choice of a restore point.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// Only restore points of this VM.
    pub vm: Option<&'a str>,
    /// The newest restore point at or before this time.
    pub at: Option<jiff::Timestamp>,
}

/// What a path given with a repository names.
pub enum RepoPlace {
    /// Nothing (or a VM name): list restore points (of that VM).
    Snapshots(Option<String>),
    /// A restore point: list its disks.
    Disks(Snapshot),
    /// A disk and a `<volume>/<path>` inside it (empty: its volumes).
    Inside { view: DiskView, inner: String },
}

/// Resolves `path` in repository `repo`. With `vm` (`--vm`) the path starts at the
/// restore point; with `at` (`--at`) it leaves the restore point out, which `at`
/// picks ([`Repository::resolve_path_at`]).
pub fn resolve_repo(repo: &Arc<Repository>, path: Option<&str>, pick: Pick) -> Result<RepoPlace> {
    let Pick { vm, at } = pick;
    let path = path.unwrap_or("").trim_matches('/');
    if at.is_none() {
        if path.is_empty() {
            return Ok(RepoPlace::Snapshots(vm.map(str::to_string)));
        }
        if vm.is_none() && !path.contains('/') && repo.vm_names()?.contains(path) {
            return Ok(RepoPlace::Snapshots(Some(path.to_string())));
        }
    }
    let (snap, rest) = repo.resolve_path_at(path, vm, at)?;
    let Some((disk, inner)) = rest.split_first() else {
        return Ok(RepoPlace::Disks(snap));
    };
    let rpd = repo.open_disk(&snap, disk, DEFAULT_CACHE_BYTES)?;
    let name = rpd.name().to_string();
    let view = DiskView::new(Arc::new(rpd), &name)?;
    Ok(RepoPlace::Inside {
        view,
        inner: inner.join("/"),
    })
}

/// A disk view and the `<volume>/<path>` inside it for `source` + `path`, where
/// `source` is an image file or a repository (then `path` starts with the restore
/// point and disk; `vm` and `at` as in [`resolve_repo`]).
pub fn open_view(source: &Path, path: &str, pick: Pick) -> Result<(DiskView, String)> {
    if repo::is_repository(source) {
        let repo = repo::open_shared(source)?;
        match resolve_repo(&repo, Some(path), pick)? {
            RepoPlace::Inside { view, inner } => Ok((view, inner)),
            _ => Err(Error::Usage(format!(
                "{path}: name a file inside a disk: <vm>/<restore point>/<disk>/<volume>/<path>"
            ))),
        }
    } else {
        only_for_repositories(source, pick)?;
        let disk = Arc::new(crate::image::open(source)?);
        let view = DiskView::new(disk, &source.display().to_string())?;
        Ok((view, path.to_string()))
    }
}

/// Refuses `--vm` and `--at` with an image file: they pick restore points.
pub fn only_for_repositories(source: &Path, pick: Pick) -> Result<()> {
    if pick.vm.is_some() || pick.at.is_some() {
        return Err(Error::Usage(format!(
            "{} is an image file: --vm and --at pick restore points in a repository; \
             drop them",
            source.display()
        )));
    }
    Ok(())
}
