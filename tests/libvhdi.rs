//! Independent cross-check of the differencing VHD/VHDX fixtures (built to the
//! specifications by `fixtures/make-vhd*-differencing.py`, since qemu-img cannot
//! write them) against libvhdi (`vhdimount`, FUSE), a reader we did not write.
//!
//! libvhdi 20210425 (Debian's) deviates from the specifications in two documented
//! ways, and the comparison allows exactly those and nothing else:
//! - VHDX PAYLOAD_BLOCK_ZERO over a parent: libvhdi shows the parent, MS-VHDX 2.5.1.1
//!   says zero (we read zero);
//! - VHD partially present sectors: libvhdi extends each present run to the end of
//!   its bitmap byte, so sectors are compared in 8-sector groups that are wholly
//!   present or wholly absent (the bit order and block mapping are what is checked).

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use vmback::image::{open, RunKind};
use vmback::io::ReadAt;

/// Mounts `child` with vhdimount and returns the merged disk (`vhdi2`) bytes.
fn libvhdi_merged(child: &Path, dir: &Path) -> Option<Vec<u8>> {
    if !have_tool("vhdimount") {
        return None;
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(
            std::env::var("VMBACK_REQUIRE_FUSE").as_deref() != Ok("1"),
            "/dev/fuse is required (VMBACK_REQUIRE_FUSE=1)"
        );
        eprintln!("SKIP: no /dev/fuse");
        return None;
    }
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok(Command::new("vhdimount").arg(child).arg(&mnt));
    let data = std::fs::read(mnt.join("vhdi2"));
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let _ = Command::new("umount").arg(&mnt).status();
    Some(data.expect("vhdimount exposes vhdi2 (the merged child)"))
}

fn fixture(dir: &Path, rel: &str) -> std::path::PathBuf {
    let src = root().join("fixtures").join(rel);
    let name = src
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".zst")
        .to_string();
    let dst = dir.join(name);
    let out = run_ok(Command::new("zstd").arg("-dc").arg(&src));
    std::fs::write(&dst, out.stdout).unwrap();
    dst
}

fn read_all(path: &Path) -> (Vec<u8>, Vec<(u64, u64, RunKind)>) {
    let disk = open(path).unwrap();
    let mut buf = vec![0u8; disk.size() as usize];
    disk.read_exact_at(0, &mut buf).unwrap();
    let runs = disk
        .layer_extents(0, 0..disk.size())
        .unwrap()
        .into_iter()
        .map(|e| (e.start, e.len, e.kind))
        .collect();
    (buf, runs)
}

#[test]
fn vhdx_differencing_agrees_with_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    let _parent = fixture(dir.path(), "vhdx/parent.vhdx.zst");
    let child = fixture(dir.path(), "vhdx/child.vhdx.zst");
    let Some(theirs) = libvhdi_merged(&child, dir.path()) else {
        return;
    };
    let (ours, runs) = read_all(&child);
    let (parent, _) = read_all(&dir.path().join("parent.vhdx"));
    assert_eq!(ours.len(), theirs.len());
    let mut expected = ours.clone();
    let mut zero_blocks = 0;
    for (start, len, kind) in &runs {
        if *kind == RunKind::Zero {
            let r = *start as usize..(*start + *len) as usize;
            expected[r.clone()].copy_from_slice(&parent[r]);
            zero_blocks += 1;
        }
    }
    assert!(
        zero_blocks > 0
            && runs.iter().any(|r| r.2 == RunKind::Data)
            && runs.iter().any(|r| r.2 == RunKind::Unallocated)
    );
    assert!(
        expected == theirs,
        "libvhdi's merged VHDX differs from ours outside ZERO blocks"
    );
    // ...and the ZERO block really is where the two readers part (the mount was read).
    assert!(ours != theirs);
}

#[test]
fn vhd_differencing_agrees_with_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    let _parent = fixture(dir.path(), "vhd/parent.vhd.zst");
    let child = fixture(dir.path(), "vhd/child.vhd.zst");
    let Some(theirs) = libvhdi_merged(&child, dir.path()) else {
        return;
    };
    let (ours, runs) = read_all(&child);
    assert_eq!(ours.len(), theirs.len());
    // Kind of every sector in the child layer alone.
    let mut kind = vec![RunKind::Unallocated; ours.len() / 512];
    for (start, len, k) in runs {
        for s in start / 512..(start + len) / 512 {
            kind[s as usize] = k;
        }
    }
    let (mut compared, mut child_groups, mut parent_groups) = (0, 0, 0);
    for g in 0..kind.len() / 8 {
        let ks = &kind[g * 8..g * 8 + 8];
        if ks.iter().all(|k| *k == ks[0]) {
            let r = g * 4096..(g + 1) * 4096;
            assert!(
                ours[r.clone()] == theirs[r],
                "sector group {g} differs from libvhdi ({:?})",
                ks[0]
            );
            compared += 1;
            if ks[0] == RunKind::Data {
                child_groups += 1;
            } else {
                parent_groups += 1;
            }
        }
    }
    assert!(
        child_groups > 0 && parent_groups > 0,
        "fixture must exercise both child and parent sectors"
    );
    assert!(
        compared * 10 >= kind.len() / 8 * 9,
        "only {compared} of {} groups comparable",
        kind.len() / 8
    );
}
