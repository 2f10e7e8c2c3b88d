//! `vmback get`: trees restored with metadata, never outside `--target`, never
//! overwriting, with hostile guest names refused (crafted ext4 images).

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Builds an ext4 image of `mib` MiB from `src` with mke2fs -d. `patchable` turns off
/// metadata_csum and dir_index, so directory entries can be patched in place without
/// re-sealing checksums.
fn mkfs_from(src: &Path, img: &Path, mib: u64, patchable: bool) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4"]);
    if patchable {
        cmd.args(["-O", "^metadata_csum,^dir_index"]);
    }
    run_ok(cmd.arg("-d").arg(src).arg(img));
}

/// Replaces every occurrence of `from` with `to` (same length) in the image.
fn patch(img: &Path, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(img).unwrap();
    let mut n = 0;
    for i in 0..b.len().saturating_sub(from.len()) {
        if &b[i..i + from.len()] == from {
            b[i..i + from.len()].copy_from_slice(to);
            n += 1;
        }
    }
    assert!(
        n > 0,
        "pattern {:?} not found",
        String::from_utf8_lossy(from)
    );
    std::fs::write(img, b).unwrap();
}

fn all_paths(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn restores_tree_with_metadata_and_never_overwrites() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    std::fs::write(src.join("a/b/c/deep.txt"), b"deep").unwrap();
    let big = seeded_bytes(5, 3 << 20);
    std::fs::write(src.join("a/random.bin"), &big).unwrap();
    // A sparse file: 1 MiB of data, 8 MiB hole, 1 MiB data.
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[7u8; 1 << 20], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &[9u8; 1 << 20], 9 << 20).unwrap();
    std::os::unix::fs::symlink("../outside/x", src.join("a/link")).unwrap();
    std::fs::set_permissions(
        src.join("a/b/c/deep.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    run_ok(
        Command::new("touch")
            .args(["-d", "2001-02-03 04:05:06 UTC"])
            .arg(src.join("a/b/c/deep.txt")),
    );
    let img = dir.path().join("fs.img");
    mkfs_from(&src, &img, 32, false);

    let target = dir.path().join("restore");
    run_ok(
        vmback()
            .arg("get")
            .arg(&img)
            .args(["whole/a", "whole/sparse.img", "--target"])
            .arg(&target),
    );
    assert_eq!(
        std::fs::read(target.join("a/b/c/deep.txt")).unwrap(),
        b"deep"
    );
    assert_eq!(std::fs::read(target.join("a/random.bin")).unwrap(), big);
    let m = std::fs::metadata(target.join("a/b/c/deep.txt")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o640);
    assert_eq!(m.mtime(), 981_173_106);
    assert_eq!(
        std::fs::read_link(target.join("a/link")).unwrap(),
        Path::new("../outside/x")
    );
    let s = std::fs::metadata(target.join("sparse.img")).unwrap();
    assert_eq!(s.len(), 10 << 20);
    assert!(
        s.blocks() * 512 < 4 << 20,
        "sparse file restored dense: {} blocks",
        s.blocks()
    );
    assert_eq!(
        sha256_file(&target.join("sparse.img")),
        sha256_file(&src.join("sparse.img"))
    );
    // Again: existing files are kept, the run reports them and fails.
    std::fs::write(target.join("a/b/c/deep.txt"), b"mine").unwrap();
    let err = run_err(
        vmback()
            .arg("get")
            .arg(&img)
            .args(["whole/a", "--target"])
            .arg(&target),
    );
    assert!(err.contains("existing files are kept"), "{err}");
    assert_eq!(
        std::fs::read(target.join("a/b/c/deep.txt")).unwrap(),
        b"mine"
    );
}

#[test]
fn hostile_names_never_escape_the_target() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("DUPD1/sub")).unwrap();
    std::fs::write(src.join("DUPD1/PWNED1"), b"x").unwrap();
    // The symlink sorts first under its final name; the directory of the same name
    // (after patching) must not be restored through it.
    std::os::unix::fs::symlink(&outside, src.join("DUPD0")).unwrap();
    std::fs::write(src.join("QQ"), b"dotdot").unwrap();
    std::fs::create_dir_all(src.join("slashdir")).unwrap();
    std::fs::write(src.join("slashdir/SLASH"), b"slash").unwrap();
    std::fs::create_dir_all(src.join("nuldir")).unwrap();
    std::fs::write(src.join("nuldir/NUL_X"), b"nul").unwrap();
    std::fs::write(src.join("ok.txt"), b"fine").unwrap();
    let img = dir.path().join("evil.img");
    mkfs_from(&src, &img, 8, true);
    patch(&img, b"DUPD0", b"DUPD1"); // symlink and directory now share a name
    patch(&img, b"\x02\x01QQ", b"\x02\x01.."); // a file named ".."
    patch(&img, b"SLASH", b"../x/"); // a name with '/' (and "..")
    patch(&img, b"NUL_X", b"NUL\0X");

    let target = dir.path().join("restore");
    let out = vmback()
        .arg("get")
        .arg(&img)
        .args(["whole", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "hostile entries must be reported: {stderr}"
    );
    assert!(
        all_paths(&outside).is_empty(),
        "wrote outside the target: {:?}",
        all_paths(&outside)
    );
    assert!(!dir.path().join("x").exists());
    assert_eq!(std::fs::read(target.join("whole/ok.txt")).unwrap(), b"fine");
    // Every hostile entry is named in the report.
    // (A forged ".." entry is dropped by the filesystem layer like the real one.)
    for what in ["DUPD1", "slashdir", "nuldir"] {
        assert!(stderr.contains(what), "{what} not reported: {stderr}");
    }
    for p in all_paths(&target) {
        assert!(!p.contains(".."), "{p}");
        let f = target.join(&p);
        if f.is_file() {
            assert_ne!(
                std::fs::read(&f).unwrap(),
                b"dotdot",
                "the forged '..' entry was restored as {p}"
            );
        }
    }
}

/// A FAT directory entry whose first cluster is 0 points back at the root: two such
/// entries make an infinitely branching tree. `get` must stop, bounded by depth and
/// by the number of entries the volume could possibly hold.
#[test]
fn cyclic_directories_are_bounded() {
    if !have_tool("mkfs.vfat") || !have_tool("mmd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat12.img");
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "CYCLE"])
            .arg(&img)
            .arg("720"),
    );
    run_ok(
        Command::new("mmd")
            .arg("-i")
            .arg(&img)
            .args(["::SUBA", "::SUBB"]),
    );
    let mut b = std::fs::read(&img).unwrap();
    for name in [b"SUBA       ", b"SUBB       "] {
        let at = b
            .windows(12)
            .position(|w| &w[..11] == name && w[11] == 0x10)
            .expect("directory entry");
        b[at + 26] = 0; // first cluster (low word) = 0: the root directory
        b[at + 27] = 0;
    }
    std::fs::write(&img, &b).unwrap();
    let target = dir.path().join("restore");
    let started = std::time::Instant::now();
    let err = run_err(
        vmback()
            .arg("get")
            .arg(&img)
            .args(["whole", "--target"])
            .arg(&target),
    );
    assert!(
        err.contains("more entries than the volume can hold") || err.contains("deeper than"),
        "{err}"
    );
    // 720 KiB / 32 bytes per entry bounds the work, whatever the fan-out.
    let created = all_paths(&target).len();
    assert!(
        created <= 720 * 1024 / 32 + 16,
        "{created} entries restored from a 720 KiB volume"
    );
    eprintln!("stopped after {created} entries in {:?}", started.elapsed());
}

#[test]
fn a_signal_stops_a_get_and_removes_the_file_it_was_writing() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("big.bin"), vec![0x5a_u8; 96 << 20]).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let img = dir.path().join("fs.img");
    mkfs_from(&src, &img, 128, false);
    let target = dir.path().join("restore");
    let mut child = vmback()
        .arg("get")
        .arg(&img)
        .args(["whole/big.bin", "whole/small.txt", "--target"])
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = target.join("big.bin");
    assert!(wait_for_file(&partial), "the copy did not start");
    signal_while_running(&mut child, "INT");
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    // The half-copied file would look restored: it is gone; nothing after it began.
    assert!(!partial.exists(), "partial file left");
    assert!(!target.join("small.txt").exists());
}
