//! VHD images: corpus files read back as `qemu-img convert` and the catalog say, a
//! differencing chain built to the spec (fixtures/make-vhd-differencing.py) reads back
//! as its generator computed, and damaged or hostile files fail (or warn) clearly.
//! The sweep over every qemu-img-made subformat lives in tests/containers.rs.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use vmback_parsers::vhd::checksum;

fn inspect_json(image: &Path) -> serde_json::Value {
    let o = run_ok(vmback().arg("inspect").arg("--json").arg(image));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}

/// The committed differencing fixture, decompressed into `dir`: (child, parent, expected).
fn diff_fixture(dir: &Path) -> (PathBuf, PathBuf, serde_json::Value) {
    let src = root().join("fixtures/vhd");
    let child = corpus_file(&src, "child.vhd.zst", dir);
    let parent = corpus_file(&src, "parent.vhd.zst", dir);
    let expected = serde_json::from_slice(&std::fs::read(src.join("expected.json")).unwrap())
        .expect("expected.json");
    (child, parent, expected)
}

/// Rewrites the footer at `at` of `img` with `edit` applied, re-sealing its checksum.
fn edit_footer(img: &mut [u8], at: usize, edit: impl Fn(&mut [u8])) {
    let f = &mut img[at..at + 512];
    edit(f);
    let c = checksum(f, 0x40);
    f[0x40..0x44].copy_from_slice(&c.to_be_bytes());
}

fn corpus_vs_catalog_and_qemu(rel: &str) {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, rel, dir.path());
    let (size, sha) = catalog_entry(&corpus, rel).expect("catalog entry");
    let ours = vmback_raw_sha(&img, dir.path());
    assert_eq!(ours, sha, "{rel}: differs from CATALOG.md");
    assert_eq!(
        ours,
        qemu_raw_sha(&img, Some("vpc"), dir.path()),
        "{rel}: differs from qemu-img"
    );
    let v = inspect_json(&img);
    assert_eq!(v["virtual_size"].as_u64(), Some(size), "{rel}");
    assert_eq!(v["format"], "vhd");
}

#[test]
fn corpus_hyperv_dynamic() {
    corpus_vs_catalog_and_qemu("hyperv-windows/dynamic.vhd.zst");
}

#[test]
fn corpus_qemu_made_ext2_sized_by_chs() {
    // Creator "qemu": the virtual size comes from the CHS geometry (4212736), not from
    // Current Size.
    corpus_vs_catalog_and_qemu("qemu-made/ext2.vhd.zst");
}

#[test]
fn corpus_hyperv_fixed_read_as_fixed_vhd() {
    // qemu-img probes this file as raw (the catalog's sha is of the whole file); we
    // probe it as a fixed VHD, so we compare with `qemu-img convert -f vpc`.
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, "hyperv-windows/fixed.vhd.zst", dir.path());
    assert_eq!(
        vmback_raw_sha(&img, dir.path()),
        qemu_raw_sha(&img, Some("vpc"), dir.path())
    );
    let v = inspect_json(&img);
    assert_eq!(v["virtual_size"].as_u64(), Some(10_485_760));
    assert_eq!(v["subformat"], "fixed");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 10_485_760 + 512);
}

#[test]
fn corpus_afl5_fails_cleanly() {
    let Some(corpus) = corpus_dir() else { return };
    let img = corpus.join("qemu-samples/afl5.img");
    let err = run_err(vmback().arg("inspect").arg(&img));
    assert!(err.contains("afl5.img") && err.contains("VHD"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn differencing_chain_reads_as_generated() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _parent, want) = diff_fixture(dir.path());
    assert_eq!(
        vmback_raw_sha(&child, dir.path()),
        want["merged_sha256"].as_str().unwrap()
    );
    let v = inspect_json(&child);
    assert_eq!(v["virtual_size"], want["virtual_size"]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{v:#}");
    assert_eq!(layers[0]["subformat"], "differencing");
    assert_eq!(layers[0]["identity"], want["child_unique_id"]);
    assert_eq!(
        layers[0]["parent"]["expected_identity"],
        want["parent_unique_id"]
    );
    assert_eq!(layers[1]["identity"], want["parent_unique_id"]);
    // The child's data is exactly its present sectors: the bitmaps were honoured.
    assert_eq!(
        layers[0]["allocated_bytes"], want["child_present_bytes"],
        "{v:#}"
    );
    let names: Vec<&str> = layers[0]["parent"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names, [".\\parent.vhd", "C:\\vms\\parent.vhd"]);
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn differencing_without_its_parent_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let (child, parent, _) = diff_fixture(dir.path());
    std::fs::remove_file(parent).unwrap();
    let err = run_err(vmback().arg("inspect").arg(&child));
    assert!(
        err.contains("parent.vhd") && err.contains("child.vhd"),
        "{err}"
    );
}

#[test]
fn differencing_parent_with_other_unique_id_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (child, parent, want) = diff_fixture(dir.path());
    let mut p = std::fs::read(&parent).unwrap();
    let end = p.len() - 512;
    for at in [0, end] {
        edit_footer(&mut p, at, |f| f[0x44] ^= 0xff);
    }
    std::fs::write(&parent, &p).unwrap();
    let v = inspect_json(&child);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains(want["parent_unique_id"].as_str().unwrap()),
        "{v:#}"
    );
    let o = run_ok(vmback().arg("inspect").arg(&child));
    assert!(String::from_utf8_lossy(&o.stdout).contains("warning:"));
}

#[test]
fn damaged_trailing_footer_falls_back_to_the_copy_at_zero() {
    // qemu reads the copy at offset 0 first, so it still reads the disk right.
    let dir = tempfile::tempdir().unwrap();
    let (_, parent, want) = diff_fixture(dir.path());
    let mut p = std::fs::read(&parent).unwrap();
    let end = p.len() - 512;
    p[end + 0x30] ^= 1; // breaks the checksum
    std::fs::write(&parent, &p).unwrap();
    assert_eq!(
        vmback_raw_sha(&parent, dir.path()),
        want["parent_sha256"].as_str().unwrap()
    );
    let v = inspect_json(&parent);
    assert!(
        v["warnings"]
            .to_string()
            .contains("trailing footer is damaged"),
        "{v:#}"
    );
}

#[test]
fn truncated_dynamic_vhd_fails_naming_the_bat() {
    let dir = tempfile::tempdir().unwrap();
    let (_, parent, _) = diff_fixture(dir.path());
    let p = std::fs::read(&parent).unwrap();
    std::fs::write(&parent, &p[..p.len() - 4096]).unwrap();
    let err = run_err(vmback().arg("inspect").arg(&parent));
    assert!(
        err.contains("parent.vhd") && err.contains("VHD BAT") && err.contains("past the end"),
        "{err}"
    );
}

/// A fixed VHD of `data` with a footer from `creator` stating `current_size` and CHS
/// `c/h/s`; `old` writes the 511-byte footer of old Virtual PC versions.
fn fixed_vhd(
    data: &[u8],
    creator: &[u8; 4],
    current_size: u64,
    chs: (u16, u8, u8),
    old: bool,
) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[0x08..0x0c].copy_from_slice(&2u32.to_be_bytes());
    f[0x0c..0x10].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[0x10..0x18].copy_from_slice(&u64::MAX.to_be_bytes());
    f[0x1c..0x20].copy_from_slice(creator);
    f[0x24..0x28].copy_from_slice(b"Wi2k");
    f[0x28..0x30].copy_from_slice(&current_size.to_be_bytes());
    f[0x30..0x38].copy_from_slice(&current_size.to_be_bytes());
    f[0x38..0x3a].copy_from_slice(&chs.0.to_be_bytes());
    f[0x3a] = chs.1;
    f[0x3b] = chs.2;
    f[0x3c..0x40].copy_from_slice(&2u32.to_be_bytes());
    f[0x44..0x54].copy_from_slice(&[7; 16]);
    let c = checksum(&f, 0x40);
    f[0x40..0x44].copy_from_slice(&c.to_be_bytes());
    let mut img = data.to_vec();
    img.extend_from_slice(if old { &f[..511] } else { &f });
    img
}

#[test]
fn virtual_pc_fixed_disk_is_sized_by_chs_like_qemu() {
    // Creator "vpc ": Current Size (1 MiB + 64 KiB) is larger than the geometry's
    // 32*4*16 sectors (1 MiB); qemu-img and we both show 1 MiB.
    let dir = tempfile::tempdir().unwrap();
    let data = seeded_bytes(11, (1 << 20) + (64 << 10));
    let img = dir.path().join("vpc-fixed.vhd");
    std::fs::write(
        &img,
        fixed_vhd(&data, b"vpc ", data.len() as u64, (32, 4, 16), false),
    )
    .unwrap();
    assert_eq!(
        vmback_raw_sha(&img, dir.path()),
        qemu_raw_sha(&img, Some("vpc"), dir.path())
    );
    assert_eq!(inspect_json(&img)["virtual_size"].as_u64(), Some(1 << 20));
}

#[test]
fn old_virtual_pc_511_byte_footer() {
    // qemu-img cannot read these (it looks for 512 bytes), so the reference is the data.
    let dir = tempfile::tempdir().unwrap();
    let data = seeded_bytes(12, 1 << 20);
    let img = dir.path().join("old.vhd");
    std::fs::write(&img, fixed_vhd(&data, b"vpc ", 1 << 20, (32, 4, 16), true)).unwrap();
    let raw = dir.path().join("data.raw");
    std::fs::write(&raw, &data).unwrap();
    assert_eq!(vmback_raw_sha(&img, dir.path()), sha256_file(&raw));
    let v = inspect_json(&img);
    assert_eq!(v["subformat"], "fixed");
    assert_eq!(v["virtual_size"].as_u64(), Some(1 << 20));
}

#[test]
fn fixed_vhd_holes_are_not_read() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    make_seeded_raw(&raw, 16 << 20, 3);
    let img = dir.path().join("fixed.vhd");
    run_ok(
        std::process::Command::new("qemu-img")
            .args([
                "convert",
                "-O",
                "vpc",
                "-o",
                "subformat=fixed,force_size=on",
            ])
            .arg(&raw)
            .arg(&img),
    );
    let out = dir.path().join("out.raw");
    let o = run_ok(
        vmback()
            .args(["export", "--json", "-o"])
            .arg(&out)
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let read = v["source_bytes_read"].as_u64().unwrap();
    assert!(
        read < 16 << 20,
        "holes must not be read, but {read} bytes were"
    );
    assert_eq!(sha256_file(&out), sha256_file(&raw));
}
