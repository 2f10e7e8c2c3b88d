//! `vmback restore` from restore points (issue 4/7): trees byte-identical with their
//! metadata, whole disks, `--overwrite` semantics, hostile guest names confined to the
//! target, and a damaged chunk failing only the files that use it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;

/// An 16 MiB partitionless ext4 disk made by mke2fs -d from `src` (4 KiB blocks).
fn ext4_disk(src: &Path, img: &Path) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run_ok(
        Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-O",
                "^metadata_csum,^dir_index",
                "-d",
            ])
            .arg(src)
            .arg(img),
    );
}

fn init_and_backup(dir: &Path, vm: &str, img: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    if !repo.exists() {
        run_ok(vmback().arg("init").arg(&repo));
    }
    let out = run_ok(
        vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", vm, "--json"])
            .arg(img),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (repo, report["snapshot"].as_str().unwrap().to_string())
}

fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("docs/deep/er")).unwrap();
    std::fs::write(src.join("docs/a.bin"), seeded_bytes(1, 3 * MIB)).unwrap();
    std::fs::write(src.join("docs/b.bin"), seeded_bytes(2, 2 * MIB + 17)).unwrap();
    std::fs::write(src.join("docs/deep/er/note.txt"), b"deep note\n").unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", src.join("docs/link")).unwrap();
    std::fs::hard_link(src.join("docs/deep/er/note.txt"), src.join("docs/hard.txt")).unwrap();
}

#[test]
fn restores_trees_and_whole_disks_identical() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("disk.img");
    ext4_disk(&src, &img);
    let (repo, id) = init_and_backup(dir.path(), "files", &img);

    let target = dir.path().join("r");
    run_ok(
        vmback()
            .arg("restore")
            .arg(&repo)
            .arg(&id[..8])
            .arg("disk0/whole/docs")
            .arg("--target")
            .arg(&target),
    );
    for f in ["a.bin", "b.bin", "deep/er/note.txt", "hard.txt"] {
        assert_eq!(
            sha256_file(&target.join("docs").join(f)),
            sha256_file(&src.join("docs").join(f)),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_link(target.join("docs/link")).unwrap(),
        Path::new("../../etc/passwd")
    );
    // (ext4-view exposes no inode numbers, so an ext4 hard link comes back as a copy;
    // NTFS hard links are kept, see tests/get.rs.)
    use std::os::unix::fs::MetadataExt;
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().mtime();
    assert_eq!(
        mtime(&target.join("docs/a.bin")),
        mtime(&src.join("docs/a.bin"))
    );

    // Existing files are kept unless --overwrite; a symlink in the way is replaced,
    // never followed.
    std::fs::write(target.join("docs/b.bin"), b"local edit").unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"keep me").unwrap();
    std::fs::remove_file(target.join("docs/a.bin")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("docs/a.bin")).unwrap();
    let restore = |extra: &[&str]| {
        vmback()
            .arg("restore")
            .arg(&repo)
            .arg("files/latest")
            .arg("disk0/whole/docs")
            .arg("--target")
            .arg(&target)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = restore(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--overwrite"));
    assert_eq!(
        std::fs::read(target.join("docs/b.bin")).unwrap(),
        b"local edit"
    );
    let out = restore(&["--overwrite"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_file(&target.join("docs/b.bin")),
        sha256_file(&src.join("docs/b.bin"))
    );
    assert!(!std::fs::symlink_metadata(target.join("docs/a.bin"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");

    // The whole disk, as a sparse raw image.
    let raw = dir.path().join("disk0.raw");
    run_ok(
        vmback()
            .arg("restore")
            .arg(&repo)
            .arg("latest")
            .arg("disk0")
            .arg("--target")
            .arg(&raw),
    );
    assert_eq!(sha256_file(&raw), sha256_file(&img));
    let err = run_err(
        vmback()
            .arg("restore")
            .arg(&repo)
            .arg("latest")
            .arg("disk0")
            .arg("--target")
            .arg(&raw),
    );
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn a_damaged_chunk_fails_only_the_files_that_use_it() {
    if !have_tool("mke2fs") || !have_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("disk.img");
    ext4_disk(&src, &img);
    let (repo, _) = init_and_backup(dir.path(), "dmg", &img);

    // The chunk holding the middle of a.bin (3 MiB, contiguous under mke2fs -d).
    let out = run_ok(
        Command::new("debugfs")
            .args(["-R", "bmap /docs/a.bin 384"])
            .arg(&img),
    );
    let block: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let chunk = u64::from(vmback::repo::config::DEFAULT_CHUNK_SIZE);
    let chunk_start = block * 4096 / chunk * chunk;
    let mut data = vec![0u8; chunk as usize];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut data, chunk_start)
        .unwrap();
    let key = vmback::repo::chunk::ChunkId::of(&data).key();
    let object = repo.join(&key);
    let mut bytes = std::fs::read(&object).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&object, bytes).unwrap();

    let target = dir.path().join("r");
    let out = vmback()
        .arg("restore")
        .arg(&repo)
        .arg("dmg/latest")
        .arg("disk0/whole/docs")
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The failing file is named, with the chunk; it is not left half-written.
    assert!(err.contains("docs/a.bin") && err.contains(&key), "{err}");
    assert!(!target.join("docs/a.bin").exists());
    // Everything else is restored.
    assert_eq!(
        sha256_file(&target.join("docs/b.bin")),
        sha256_file(&src.join("docs/b.bin"))
    );
    assert_eq!(
        std::fs::read(target.join("docs/deep/er/note.txt")).unwrap(),
        b"deep note\n"
    );
}

#[test]
fn hostile_names_in_a_restore_point_stay_inside_the_target() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("DUPD1/sub")).unwrap();
    std::fs::write(src.join("DUPD1/PWNED1"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("DUPD0")).unwrap();
    std::fs::create_dir_all(src.join("slashdir")).unwrap();
    std::fs::write(src.join("slashdir/SLASH"), b"slash").unwrap();
    std::fs::write(src.join("ok.txt"), b"fine").unwrap();
    let img = dir.path().join("evil.img");
    ext4_disk(&src, &img);
    let mut b = std::fs::read(&img).unwrap();
    for (from, to) in [(&b"DUPD0"[..], &b"DUPD1"[..]), (b"SLASH", b"../x/")] {
        let mut hit = false;
        for i in 0..b.len() - from.len() {
            if &b[i..i + from.len()] == from {
                b[i..i + from.len()].copy_from_slice(to);
                hit = true;
            }
        }
        assert!(hit);
    }
    std::fs::write(&img, b).unwrap();
    let (repo, _) = init_and_backup(dir.path(), "evil", &img);
    let target = dir.path().join("r");
    let out = vmback()
        .arg("restore")
        .arg(&repo)
        .arg("evil/latest")
        .arg("disk0/whole")
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("DUPD1") && err.contains("slashdir"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the target"
    );
    assert!(!dir.path().join("x").exists());
    assert_eq!(std::fs::read(target.join("whole/ok.txt")).unwrap(), b"fine");
}

#[test]
fn verify_filesystems_walks_every_volume_and_reports_unreadable_ones() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("disk.img");
    ext4_disk(&src, &img);
    let (repo, _) = init_and_backup(dir.path(), "fsok", &img);
    let out = run_ok(
        vmback()
            .arg("verify")
            .arg(&repo)
            .args(["--filesystems", "--json"]),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let fs = &report["filesystems"][0];
    assert_eq!(fs["filesystem"], "ext4", "{report}");
    // root, lost+found, docs, deep, er, note, a, b, link, hard
    assert!(fs["entries"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(fs["error_count"], 0);

    // Chunks intact, filesystem not: the group descriptors zeroed before the backup.
    let bad = dir.path().join("bad.img");
    std::fs::copy(&img, &bad).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .unwrap()
        .write_all_at(&[0u8; 4096], 4096)
        .unwrap();
    init_and_backup(dir.path(), "fsbad", &bad);
    let out = vmback()
        .arg("verify")
        .arg(&repo)
        .arg("--filesystems")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("FS BAD") && text.contains("fsbad"), "{text}");
    assert!(text.contains("fs ok") && text.contains("fsok"), "{text}");
}
