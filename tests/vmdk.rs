//! VMDK: corpus images read back byte-identical to their catalogued SHA-256 (and to
//! `qemu-img convert -O raw`), broken and incomplete images fail with errors naming
//! the file and structure, and the ESXi deltas qemu-img cannot create (SESPARSE,
//! COWD) are hand-built by `tests/vmdk/make_esx_deltas.py` and checked against both
//! the generator's expected bytes and qemu-img. qemu-img-made subformats and chains
//! are covered by tests/containers.rs.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmback::image::{DiskImage, RunKind};
use vmback::io::ReadAt;

/// Copies (decompressing) corpus files into `dir`; returns the first one's path.
fn stage(corpus: &Path, rels: &[&str], dir: &Path) -> PathBuf {
    let paths: Vec<PathBuf> = rels.iter().map(|r| corpus_file(corpus, r, dir)).collect();
    paths[0].clone()
}

#[test]
fn corpus_images_match_catalog_and_qemu() {
    let Some(corpus) = corpus_dir() else { return };
    let cases: &[&[&str]] = &[
        &["vmware/monolithicSparse.vmdk.zst"],
        &["vmware/streamOptimized.vmdk"],
        &["vmware/streamOptimizedWithMarkers.vmdk.zst"],
        &[
            "vmware/twoGbMaxExtentSparse.vmdk",
            "vmware/twoGbMaxExtentSparse-s001.vmdk.zst",
        ],
        &["vmware/vmfs_thick.vmdk", "vmware/vmfs_thick-flat.vmdk.zst"],
        &["qemu-made/ext2.vmdk"],
    ];
    for rels in cases {
        let dir = tempfile::tempdir().unwrap();
        let img = stage(&corpus, rels, dir.path());
        let (size, sha) = catalog_entry(&corpus, rels[0]).expect("catalog entry");
        let ours = vmback_raw_sha(&img, dir.path());
        assert_eq!(
            ours, sha,
            "{}: vmback export differs from CATALOG.md",
            rels[0]
        );
        if have_tool("qemu-img") {
            assert_eq!(
                ours,
                qemu_raw_sha(&img, Some("vmdk"), dir.path()),
                "{}: differs from qemu-img",
                rels[0]
            );
        }
        let disk = vmback::image::open(&img).unwrap();
        assert_eq!(disk.size(), size, "{}", rels[0]);
    }
}

/// 16 GiB streamOptimized v3 with the grain directory in the footer: hashed as a
/// stream through the library (no 16 GiB file), unallocated ranges never read.
#[test]
fn iotest_version3_streamed_hash() {
    let Some(corpus) = corpus_dir() else { return };
    let rel = "qemu-samples/iotest-version3.vmdk";
    let dir = tempfile::tempdir().unwrap();
    let img = stage(&corpus, &[rel], dir.path());
    let (size, sha) = catalog_entry(&corpus, rel).unwrap();
    let disk = vmback::image::open(&img).unwrap();
    assert_eq!(disk.size(), size);
    let extents = disk.extents(0..size).unwrap();
    let data: u64 = extents
        .iter()
        .filter(|e| e.kind == RunKind::Data)
        .map(|e| e.len)
        .sum();
    assert!(data > 0 && data < 16 << 20, "data bytes {data}");
    let zeros = vec![0u8; 4 << 20];
    let mut buf = vec![0u8; 4 << 20];
    let mut h = Sha256::new();
    for e in &extents {
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
    assert_eq!(format!("{:x}", h.finalize()), sha);
    // Spot-check the catalogued content: sector i*655360+i*512 holds 0x30+(i%10).
    let mut s = [0u8; 512];
    for i in [0u64, 1, 42, 98] {
        disk.read_exact_at(i * 655_360 + i * 512, &mut s).unwrap();
        assert!(
            s.iter().all(|&b| b == 0x30 + (i % 10) as u8),
            "sector of record {i}"
        );
    }
    assert!(
        disk.bytes_read() < 1 << 20,
        "read {} bytes",
        disk.bytes_read()
    );
}

#[test]
fn fuzzed_header_fails_cleanly() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = stage(&corpus, &["qemu-samples/afl9.vmdk"], dir.path());
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(
        err.contains("afl9.vmdk") && err.contains("VMDK sparse extent header at offset"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn incomplete_descriptors_name_the_missing_extent() {
    let Some(corpus) = corpus_dir() else { return };
    for (desc, missing) in [
        ("monolithicFlat.vmdk", "monolithicFlat-flat.vmdk"),
        ("twoGbMaxExtentFlat.vmdk", "twoGbMaxExtentFlat-f001.vmdk"),
        ("vmfs_thick-000001.vmdk", "vmfs_thick-000001-delta.vmdk"),
    ] {
        let img = corpus.join("vmware/incomplete").join(desc);
        let err = run_err(vmback().arg("inspect").arg(&img));
        assert!(
            err.contains("VMDK extent") && err.contains(missing) && err.contains(desc),
            "{err}"
        );
    }
}

#[test]
fn split_extent_alone_is_refused_with_a_pointer_to_the_descriptor() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = stage(
        &corpus,
        &["vmware/twoGbMaxExtentSparse-s001.vmdk.zst"],
        dir.path(),
    );
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(
        err.contains("without an embedded descriptor") && err.contains("open the descriptor"),
        "{err}"
    );
}

/// Runs the generator; `None` (skip) without python3.
fn esx_deltas(dir: &Path) -> Option<()> {
    if !have_tool("python3") {
        return None;
    }
    run_ok(
        std::process::Command::new("python3")
            .arg(root().join("tests/vmdk/make_esx_deltas.py"))
            .arg(dir),
    );
    Some(())
}

#[test]
fn hand_built_sesparse_cowd_and_zero_extents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if esx_deltas(d).is_none() {
        return;
    }
    for name in ["base", "se", "cowd", "zero"] {
        let img = d.join(format!("{name}.vmdk"));
        let ours = vmback_raw_sha(&img, d);
        assert_eq!(
            ours,
            sha256_file(&d.join(format!("{name}.expected"))),
            "{name}"
        );
        // QEMU skips ZERO extent lines, so it reads zero.vmdk shorter; compare the rest.
        if name != "zero" && have_tool("qemu-img") {
            assert_eq!(
                ours,
                qemu_raw_sha(&img, Some("vmdk"), d),
                "{name} vs qemu-img"
            );
        }
    }
    let o = run_ok(vmback().args(["inspect", "--json"]).arg(d.join("se.vmdk")));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{v}");
    assert_eq!(layers[0]["subformat"], "seSparse");
    assert_eq!(layers[0]["parent"]["expected_identity"], "12345678");
    assert_eq!(layers[1]["identity"], "12345678");
    assert!(
        layers[0]["files"].to_string().contains("se-sesparse.vmdk"),
        "{v}"
    );
}

#[test]
fn sesparse_journal_needing_replay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if esx_deltas(d).is_none() {
        return;
    }
    let f = d.join("se-sesparse.vmdk");
    let mut b = std::fs::read(&f).unwrap();
    b[512 + 0x18] = 1; // volatile header: replay_journal
    std::fs::write(&f, b).unwrap();
    let err = run_err(vmback().arg("inspect").arg(d.join("se.vmdk")));
    assert!(
        err.contains("se-sesparse.vmdk")
            && err.contains("SESPARSE volatile header at offset 0x218"),
        "{err}"
    );
}

#[test]
fn cid_mismatch_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if esx_deltas(d).is_none() {
        return;
    }
    let base = std::fs::read_to_string(d.join("base.vmdk")).unwrap();
    std::fs::write(
        d.join("base.vmdk"),
        base.replace("CID=12345678", "CID=87654321"),
    )
    .unwrap();
    let o = run_ok(vmback().arg("inspect").arg(d.join("cowd.vmdk")));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("87654321") && all.contains("expects 12345678"),
        "{all}"
    );
}

/// A monolithicSparse image with one grain written at 1 MiB, made by qemu-img.
fn qemu_sparse(d: &Path) -> Option<PathBuf> {
    if !have_tool("qemu-img") || !have_tool("qemu-io") {
        return None;
    }
    let img = d.join("s.vmdk");
    run_ok(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk"])
            .arg(&img)
            .arg("8M"),
    );
    run_ok(
        std::process::Command::new("qemu-io")
            .args(["-c", "write -P 0x5a 1M 64k"])
            .arg(&img),
    );
    Some(img)
}

fn le_u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn grain_directory_entry_beyond_eof_names_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = qemu_sparse(dir.path()) else {
        return;
    };
    let mut b = std::fs::read(&img).unwrap();
    let gd = le_u64_at(&b, 0x38) as usize * 512;
    b[gd..gd + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    std::fs::write(&img, b).unwrap();
    let err = run_err(vmback().arg("inspect").arg(&img));
    let want = format!("VMDK grain directory entry at offset {gd:#x}");
    assert!(
        err.contains("s.vmdk") && err.contains(&want) && err.contains("beyond the end"),
        "{err}"
    );
}

#[test]
fn grain_table_entry_beyond_eof_names_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = qemu_sparse(dir.path()) else {
        return;
    };
    let mut b = std::fs::read(&img).unwrap();
    let gd = le_u64_at(&b, 0x38) as usize * 512;
    let gt = u32::from_le_bytes(b[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let entry = gt + 16 * 4; // grain 16 = 1 MiB
    b[entry..entry + 4].copy_from_slice(&0x0fff_ffffu32.to_le_bytes());
    std::fs::write(&img, b).unwrap();
    let out = dir.path().join("o.raw");
    let err = run_err(vmback().arg("export").arg(&img).arg("-o").arg(&out));
    let want = format!("VMDK grain table entry at offset {entry:#x}");
    assert!(
        err.contains(&want) && err.contains("beyond the end"),
        "{err}"
    );
}

#[test]
fn truncated_sparse_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = qemu_sparse(dir.path()) else {
        return;
    };
    let b = std::fs::read(&img).unwrap();
    for len in [600usize, 4096, 0x10000, b.len() - 512] {
        std::fs::write(&img, &b[..len]).unwrap();
        let out = dir.path().join("o.raw");
        let err = run_err(
            vmback()
                .arg("export")
                .arg(&img)
                .arg("-o")
                .arg(&out)
                .arg("--force"),
        );
        assert!(
            err.contains("s.vmdk") && !err.contains("panicked"),
            "len {len}: {err}"
        );
    }
}

#[test]
fn corrupt_compressed_grain_is_an_error() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = stage(&corpus, &["vmware/streamOptimized.vmdk"], dir.path());
    let mut b = std::fs::read(&img).unwrap();
    // The first grain marker sits right after the overhead (overHead sectors at 0x40).
    let first = le_u64_at(&b, 0x40) as usize * 512;
    for x in &mut b[first + 12 + 8..first + 12 + 40] {
        *x ^= 0xa5;
    }
    std::fs::write(&img, b).unwrap();
    let out = dir.path().join("o.raw");
    let err = run_err(vmback().arg("export").arg(&img).arg("-o").arg(&out));
    assert!(
        err.contains("VMDK compressed grain") && err.contains("streamOptimized.vmdk"),
        "{err}"
    );
}
