//! The inode table of the mount: which FUSE inode number names which node of the
//! tree, in both directions, stable for the life of the mount (a restore point never
//! changes, so a number never has to be reused or forgotten).
//!
//! Guest nodes, the bulk of any walk, are not stored: their number is derived from
//! the volume slot and the guest's own node id (`1 << 63 | slot << 40 | node`), so a
//! walk over millions of guest files costs no memory here. Only the few synthetic
//! nodes (VMs, restore points, disks, volumes, aliases) and guest ids too large to
//! pack (an NTFS alternate data stream) are kept in a table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::guestfs::NodeId;

/// The root directory of the mount (FUSE's fixed root inode).
pub const ROOT: u64 = 1;

const GUEST_BIT: u64 = 1 << 63;
const NODE_BITS: u32 = 40;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
/// Volume slots that fit between the guest bit and the node bits.
const SLOT_LIMIT: u64 = 1 << (63 - NODE_BITS);

/// A node of the mounted tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// `<vm>/`: the restore points of one VM.
    Vm(Arc<str>),
    /// `<vm>/<restore point>/`, by restore point id.
    Snapshot(Arc<str>),
    /// A symlink: `<vm>/latest`, or a restore point id (prefix) standing for its
    /// name. `dir` is the VM ("" at the root), `name` the link's name. The target
    /// is part of the identity: when `latest` moves on, it becomes a new inode, so
    /// the kernel's cached link (FUSE_CACHE_SYMLINKS) is never stale.
    Alias {
        dir: Arc<str>,
        name: Arc<str>,
        target: Arc<str>,
    },
    /// `<disk>.img`: the raw virtual disk of disk slot N.
    DiskImage(usize),
    /// `<disk>/`: the volumes of disk slot N.
    DiskDir(usize),
    /// `<disk>/<volume>/`: the root of the filesystem of volume slot N.
    Volume(usize),
    /// A node inside the filesystem of volume slot N (never its root: that is
    /// [`Node::Volume`]).
    Guest(usize, NodeId),
}

/// Inode numbers ↔ nodes.
#[derive(Default)]
pub struct Inodes {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_node: HashMap<Node, u64>,
    /// Node of inode `i + 2`.
    nodes: Vec<Node>,
}

impl Inodes {
    /// The inode number of `node`, assigned on first use.
    pub fn ino(&self, node: &Node) -> u64 {
        match node {
            Node::Root => return ROOT,
            Node::Guest(slot, id) if (*slot as u64) < SLOT_LIMIT && *id <= NODE_MASK => {
                return GUEST_BIT | (*slot as u64) << NODE_BITS | id;
            }
            _ => {}
        }
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&ino) = t.by_node.get(node) {
            return ino;
        }
        let ino = t.nodes.len() as u64 + 2;
        t.nodes.push(node.clone());
        t.by_node.insert(node.clone(), ino);
        ino
    }

    /// The node of inode `ino`, if this mount ever handed that number out.
    pub fn node(&self, ino: u64) -> Option<Node> {
        if ino == ROOT {
            return Some(Node::Root);
        }
        if ino & GUEST_BIT != 0 {
            let slot = usize::try_from((ino & !GUEST_BIT) >> NODE_BITS).ok()?;
            return Some(Node::Guest(slot, ino & NODE_MASK));
        }
        let i = usize::try_from(ino.checked_sub(2)?).ok()?;
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.nodes.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_stay_stable() {
        let t = Inodes::default();
        let nodes = [
            Node::Root,
            Node::Vm("web01".into()),
            Node::Snapshot("ab".into()),
            Node::DiskImage(0),
            Node::DiskDir(0),
            Node::Volume(3),
            Node::Guest(3, 12),
            Node::Guest(3, NODE_MASK + 1),
            Node::Guest(SLOT_LIMIT as usize, 1),
            Node::Alias {
                dir: "web01".into(),
                name: "latest".into(),
                target: "2026-11-21T030000Z".into(),
            },
        ];
        let inos: Vec<u64> = nodes.iter().map(|n| t.ino(n)).collect();
        for (n, &i) in nodes.iter().zip(&inos) {
            assert_eq!(t.node(i).as_ref(), Some(n));
            assert_eq!(t.ino(n), i, "stable");
        }
        let mut unique = inos.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), inos.len());
        assert_eq!(t.node(0), None);
        assert_eq!(t.node(1000), None);
    }
}
