//! Raw images: a sparse raw file reads back identical, and its holes are not read.

mod common;
use common::*;

#[test]
fn sparse_raw_exports_identical_and_skips_holes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    make_seeded_raw(&img, 24 << 20, 7);
    assert_eq!(vmback_raw_sha(&img, dir.path()), sha256_file(&img));
    let out = dir.path().join("copy.raw");
    let o = run_ok(
        vmback()
            .args(["export", "--json", "-o"])
            .arg(&out)
            .arg(&img),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let read = v["source_bytes_read"].as_u64().unwrap();
    assert!(
        read < 24 << 20,
        "holes must not be read, but {read} bytes were"
    );
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn export_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    make_seeded_raw(&img, 1 << 20, 1);
    let out = dir.path().join("exists.raw");
    std::fs::write(&out, b"keep me").unwrap();
    let err = run_err(vmback().arg("export").arg(&img).arg("-o").arg(&out));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}
