//! The path grammar of DESIGN.md over one disk: `<volume>/<path in the guest fs>`
//! (`p2/Windows/System32`, `whole/etc/hosts`). Resolves a path to a filesystem node
//! and lists directories, for `ls`, `cat` and `get`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::guestfs::{self, FileType, GuestFs, NodeId};
use crate::io::{ReadAt, Window};
use crate::volume::{read_volumes, Volume, VolumeTable};

/// Symlink hops followed while resolving a path (only for intermediate directories
/// when asked; `ls`/`get` never follow the last component).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// One disk, its volumes, and the filesystems opened on them so far (lazily: nothing
/// is parsed until a path inside the volume is visited).
pub struct DiskView {
    disk: Arc<dyn ReadAt>,
    name: String,
    table: VolumeTable,
    open: Mutex<HashMap<String, Arc<dyn GuestFs>>>,
}

/// A resolved path: the volume, its filesystem and the node.
pub struct Resolved {
    pub volume: Volume,
    pub fs: Arc<dyn GuestFs>,
    pub node: NodeId,
    /// The guest path inside the volume, normalised ("/" for the root).
    pub guest_path: String,
}

impl DiskView {
    /// Reads the partition table of `disk` (`name` labels errors).
    pub fn new(disk: Arc<dyn ReadAt>, name: &str) -> Result<Self> {
        let table = read_volumes(&*disk, name)?;
        Ok(DiskView {
            disk,
            name: name.to_string(),
            table,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The disk's name as given at opening (for messages and grouping).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The volumes.
    pub fn table(&self) -> &VolumeTable {
        &self.table
    }

    /// The filesystem of volume `name`, opened on first use.
    pub fn filesystem(&self, name: &str) -> Result<(Volume, Arc<dyn GuestFs>)> {
        let volume = self
            .table
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                fs: self.name.clone(),
                path: format!(
                    "{name} (volumes: {})",
                    self.table
                        .volumes
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if let Some(fs) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok((volume, fs.clone()));
        }
        let label = format!("{} {}", self.name, volume.name);
        let kind = volume
            .filesystem
            .clone()
            .ok_or_else(|| Error::Unsupported {
                path: label.clone().into(),
                feature: "no recognised filesystem on this volume".into(),
            })?;
        let window = Window::new(self.disk.clone(), volume.start, volume.len).ok_or_else(|| {
            Error::Unsupported {
                path: label.clone().into(),
                feature: format!(
                    "volume extends beyond the disk ({} + {} > {})",
                    volume.start,
                    volume.len,
                    self.disk.size()
                ),
            }
        })?;
        let fs = guestfs::open(Arc::new(window), &kind, &label)?;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), fs.clone());
        Ok((volume, fs))
    }

    /// Resolves `path` (`<volume>[/<guest path>]`). Symlinks are not followed.
    pub fn resolve(&self, path: &str) -> Result<Resolved> {
        let trimmed = path.trim_matches('/');
        let (vol, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let (volume, fs) = self.filesystem(vol)?;
        let mut node = fs.root();
        let mut guest = String::new();
        for comp in rest.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(Error::Usage(format!(
                    "{path}: '..' is not allowed in guest paths"
                )));
            }
            let meta = fs.metadata(node)?;
            if meta.file_type != FileType::Dir {
                return Err(Error::NotFound {
                    fs: format!("{} {}", self.name, volume.name),
                    path: format!("{guest}/{comp} (a parent is not a directory)"),
                });
            }
            guest.push('/');
            guest.push_str(comp);
            node = fs
                .lookup(node, OsStr::from_bytes(comp.as_bytes()))?
                .ok_or_else(|| Error::NotFound {
                    fs: format!("{} {}", self.name, volume.name),
                    path: guest.clone(),
                })?;
        }
        if guest.is_empty() {
            guest.push('/');
        }
        Ok(Resolved {
            volume,
            fs,
            node,
            guest_path: guest,
        })
    }
}
