//! VHDX: corpus images read back with exactly the catalogued SHA-256 (and as
//! `qemu-img convert -O raw` reads them), the dirty-log image is replayed in memory,
//! hand-built differencing children merge with their parent, and damaged files fail
//! with errors that name the file, the structure and the offset.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmback::image::{DiskImage, RunKind};
use vmback::io::ReadAt;

fn corpus_case(rel: &str, qemu_can_read: bool) {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, rel, dir.path());
    let (size, sha) = catalog_entry(&corpus, rel).expect("catalog entry");
    let disk = vmback::image::open(&img).unwrap();
    assert_eq!(disk.size(), size, "{rel}: virtual size");
    assert_eq!(
        vmback_raw_sha(&img, dir.path()),
        sha,
        "{rel}: vmback vs CATALOG.md"
    );
    if qemu_can_read && have_tool("qemu-img") {
        assert_eq!(
            qemu_raw_sha(&img, Some("vhdx"), dir.path()),
            sha,
            "{rel}: qemu-img vs CATALOG.md"
        );
    }
}

#[test]
fn corpus_hyperv_dynamic() {
    corpus_case("hyperv-windows/dynamic.vhdx.zst", true);
}

#[test]
fn corpus_hyperv_fixed() {
    corpus_case("hyperv-windows/fixed.vhdx.zst", true);
}

#[test]
fn corpus_hyperv_dynamic_1g() {
    corpus_case("qemu-samples/iotest-dynamic-1G.vhdx.bz2", true);
}

/// SHA-256 of a whole disk through the library, feeding unallocated and zero runs
/// from a zero buffer (never reading them), so a 10 GiB disk hashes without a file.
fn library_sha(path: &Path) -> (String, Vec<String>) {
    let disk = vmback::image::open(path).unwrap();
    let mut h = Sha256::new();
    let zeros = vec![0u8; 4 << 20];
    let mut buf = vec![0u8; 4 << 20];
    for e in disk.extents(0..disk.size()).unwrap() {
        let mut off = e.start;
        while off < e.end() {
            let n = (e.end() - off).min(buf.len() as u64) as usize;
            if e.kind == RunKind::Data {
                disk.read_exact_at(off, &mut buf[..n]).unwrap();
                h.update(&buf[..n]);
            } else {
                h.update(&zeros[..n]);
            }
            off += n as u64;
        }
    }
    (format!("{:x}", h.finalize()), disk.warnings().to_vec())
}

#[test]
fn corpus_dirty_log_is_replayed_in_memory() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "qemu-samples/iotest-dirtylog-10G-4M.vhdx.zst";
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, rel, dir.path());
    let before = sha256_file(&img);
    let (size, sha) = catalog_entry(&corpus, rel).unwrap();

    let disk = vmback::image::open(&img).unwrap();
    assert_eq!(disk.size(), size);
    // After replay the BAT maps the first 18 MiB (0xA5); without it, nothing.
    let data: u64 = disk
        .extents(0..size)
        .unwrap()
        .iter()
        .filter(|e| e.kind == RunKind::Data)
        .map(|e| e.len)
        .sum();
    assert_eq!(data, 18 << 20);
    let mut b = vec![0u8; 4096];
    disk.read_exact_at((18 << 20) - 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xA5));

    let (got, warnings) = library_sha(&img);
    assert_eq!(got, sha, "dirty-log image vs CATALOG.md (after replay)");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dirty log replayed in memory")),
        "{warnings:?}"
    );
    assert_eq!(
        sha256_file(&img),
        before,
        "the image file must never be written"
    );
}

fn fixture(dir: &Path, name: &str) -> PathBuf {
    corpus_file(
        &root().join("fixtures/vhdx"),
        &format!("{name}.vhdx.zst"),
        dir,
    )
}

#[test]
fn differencing_child_merges_with_parent() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "parent");
    let child = fixture(dir.path(), "child");
    let want = std::fs::read_to_string(root().join("fixtures/vhdx/merged.sha256")).unwrap();
    assert_eq!(vmback_raw_sha(&child, dir.path()), want.trim());
    let disk = vmback::image::open(&child).unwrap();
    assert_eq!(disk.depth(), 2);
    assert!(disk.warnings().is_empty(), "{:?}", disk.warnings());
    let top = disk.layers().next().unwrap();
    assert_eq!(top.subformat, "differencing");
    // Block 5 is NOT_PRESENT in the child: the parent's data shows through; block 3
    // is ZERO: zero even though the parent lies below.
    let layer0 = disk.layer_extents(0, 0..8 << 20).unwrap();
    assert!(layer0
        .iter()
        .any(|e| e.kind == RunKind::Unallocated && e.start <= 5 << 20 && e.end() >= 6 << 20));
    assert!(layer0
        .iter()
        .any(|e| e.kind == RunKind::Zero && e.start <= 3 << 20 && e.end() >= 4 << 20));
    // Partially present blocks are split per sector: many short runs in block 1.
    let runs_in_block1 = layer0
        .iter()
        .filter(|e| e.start >= 1 << 20 && e.end() <= 2 << 20)
        .count();
    assert!(runs_in_block1 > 100, "{runs_in_block1}");
}

#[test]
fn differencing_child_with_missing_parent_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let child = fixture(dir.path(), "child");
    let err = run_err(vmback().arg("inspect").arg(&child));
    assert!(
        err.contains("parent.vhdx") && err.contains("child.vhdx"),
        "{err}"
    );
}

#[test]
fn differencing_child_with_wrong_linkage_warns() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "parent");
    let child = fixture(dir.path(), "child-badlink");
    let out = run_ok(vmback().arg("inspect").arg(&child));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("00000000-1111-4222-8333-444444444444"),
        "{text}"
    );
    assert!(text.contains("warning"), "{text}");
}

/// A copy of the Hyper-V dynamic corpus image with `patch` applied.
fn damaged(dir: &Path, patch: impl FnOnce(&mut Vec<u8>)) -> Option<PathBuf> {
    let corpus = corpus_dir()?;
    let img = corpus_file(&corpus, "hyperv-windows/dynamic.vhdx.zst", dir);
    let mut b = std::fs::read(&img).unwrap();
    patch(&mut b);
    let out = dir.join("damaged.vhdx");
    std::fs::write(&out, b).unwrap();
    Some(out)
}

fn reseal(b: &mut [u8], start: usize, len: usize) {
    b[start + 4..start + 8].fill(0);
    let crc = crc32c_of(&b[start..start + len]);
    b[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn crc32c_of(b: &[u8]) -> u32 {
    vmback_parsers::vhdx::crc32c_zeroed(b, 4)
}

#[test]
fn both_headers_bad_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = damaged(dir.path(), |b| {
        b[0x10000 + 200] ^= 1;
        b[0x20000 + 200] ^= 1;
    }) else {
        return;
    };
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(
        err.contains("damaged.vhdx") && err.contains("VHDX header") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn one_bad_header_falls_back_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Header 2 is current (sequence 15); break it so header 1 must be used.
    let Some(img) = damaged(dir.path(), |b| b[0x20000 + 200] ^= 1) else {
        return;
    };
    let out = run_ok(vmback().arg("inspect").arg(&img));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("header: 1") && text.contains("warning"),
        "{text}"
    );
}

#[test]
fn bat_entry_pointing_outside_the_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(corpus) = corpus_dir() else { return };
    let img = corpus_file(&corpus, "hyperv-windows/dynamic.vhdx.zst", dir.path());
    let disk = vmback::image::open(&img).unwrap();
    drop(disk);
    // Find the BAT from the region table, then point entry 0 far past the end.
    let Some(bad) = damaged(dir.path(), |b| {
        let rt = 0x30000;
        let n = u32::from_le_bytes(b[rt + 8..rt + 12].try_into().unwrap()) as usize;
        let bat_guid = vmback_parsers::vhdx::region::BAT_GUID.0;
        let e = (0..n)
            .map(|i| rt + 16 + 32 * i)
            .find(|&e| b[e..e + 16] == bat_guid)
            .unwrap();
        let bat = u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap()) as usize;
        b[bat..bat + 8].copy_from_slice(&((4000u64 << 20) | 6).to_le_bytes());
    }) else {
        return;
    };
    let err = run_err(vmback().arg("inspect").arg(&bad));
    assert!(
        err.contains("damaged.vhdx")
            && err.contains("VHDX BAT")
            && err.contains("outside the file"),
        "{err}"
    );
}

#[test]
fn unknown_required_region_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = damaged(dir.path(), |b| {
        for rt in [0x30000usize, 0x40000] {
            let n = u32::from_le_bytes(b[rt + 8..rt + 12].try_into().unwrap()) as usize;
            let e = rt + 16 + 32 * n;
            b[e..e + 16].copy_from_slice(&[0x77; 16]);
            b[e + 16..e + 24].copy_from_slice(&(64u64 << 20).to_le_bytes());
            b[e + 24..e + 28].copy_from_slice(&(1u32 << 20).to_le_bytes());
            b[e + 28..e + 32].copy_from_slice(&1u32.to_le_bytes());
            b[rt + 8..rt + 12].copy_from_slice(&(n as u32 + 1).to_le_bytes());
            reseal(b, rt, 0x10000);
        }
    }) else {
        return;
    };
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(
        err.contains("unsupported") && err.contains("77777777-7777-7777-7777-777777777777"),
        "{err}"
    );
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = damaged(dir.path(), |b| b.truncate(0x18000)) else {
        return;
    };
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(err.contains("damaged.vhdx"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
