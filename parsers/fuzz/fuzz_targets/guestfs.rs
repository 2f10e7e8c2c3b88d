#![no_main]
//! Every GuestFs adapter (ext4, NTFS, FAT) on arbitrary volume bytes: open, list every
//! directory, stat every entry, read links and file heads. Ok or Err, never a panic.
//! The first byte picks the adapter.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmback::guestfs::{self, FileType, NodeId};
use vmback::io::ReadAt;

struct Mem(Vec<u8>);

impl ReadAt for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> vmback::Result<()> {
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| self.0.get(s..s.checked_add(buf.len())?)) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(vmback::Error::OutOfRange {
                path: "fuzz".into(),
                offset,
                len: buf.len() as u64,
                size: self.0.len() as u64,
            }),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let kind = ["ext4", "ntfs", "fat32"][pick as usize % 3];
    let Ok(fs) = guestfs::open(Arc::new(Mem(rest.to_vec())), kind, "fuzz") else {
        return;
    };
    let _ = fs.label();
    let _ = fs.usage();
    let mut buf = vec![0u8; 64 << 10];
    let mut stack: Vec<(NodeId, usize)> = vec![(fs.root(), 0)];
    let mut seen = 0;
    while let Some((node, depth)) = stack.pop() {
        seen += 1;
        if seen > 2000 || depth > 32 {
            break;
        }
        let Ok(meta) = fs.metadata(node) else {
            continue;
        };
        match meta.file_type {
            FileType::Dir => {
                if let Ok(entries) = fs.read_dir(node) {
                    for e in entries {
                        let _ = fs.lookup(node, &e.name);
                        stack.push((e.node, depth + 1));
                    }
                }
            }
            FileType::File => {
                let n = (meta.size as usize).min(buf.len());
                let _ = fs.read_at(node, 0, &mut buf[..n]);
            }
            FileType::Symlink => {
                let _ = fs.read_link(node);
            }
            FileType::Other => {}
        }
    }
});
