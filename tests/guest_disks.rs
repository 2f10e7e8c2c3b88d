//! The multi-filesystem fixture disks (`fixtures/make-guest-disks.sh`: GPT with FAT32
//! ESP + NTFS + ext4, MBR with primary and logical ext4 + logical FAT16), in every
//! container format, read through `vmback ls` / `vmback cat` and compared with what
//! the script recorded when it wrote the files (FILES.tsv).
//!
//! Building the set needs root (ntfs-3g FUSE mount) and the tools the script names;
//! without them the test skips with a message (and fails under VMBACK_REQUIRE_TOOLS=1).
//! A volume whose filesystem vmback reports as unsupported (NTFS until its adapter
//! lands) is skipped with a printed note, as is an image whose container format is not
//! readable on this branch yet (qcow2 until its reader lands).

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

struct Row {
    disk: String,
    volume: String,
    path: String,
    kind: String,
    sha256: String,
    target: String,
}

fn build(out: &Path) -> bool {
    for tool in [
        "sgdisk",
        "sfdisk",
        "mkfs.vfat",
        "mcopy",
        "mkntfs",
        "ntfs-3g",
        "mke2fs",
        "setfattr",
        "qemu-img",
        "python3",
    ] {
        if !have_tool(tool) {
            return false;
        }
    }
    if !rustix_is_root() {
        assert!(
            std::env::var("VMBACK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "root is required to build the guest disks (VMBACK_REQUIRE_TOOLS=1)"
        );
        eprintln!("SKIP: building the guest disks needs root (ntfs-3g FUSE mount)");
        return false;
    }
    run_ok(
        Command::new("bash")
            .arg(root().join("fixtures/make-guest-disks.sh"))
            .arg(out),
    );
    true
}

fn rustix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn read_tsv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Checks one image against the rows of its disk; returns the volumes skipped.
fn check_image(img: &Path, rows: &[&Row]) -> BTreeSet<String> {
    let mut skipped = BTreeSet::new();
    // A container format not merged into this branch yet (qcow2): note and skip.
    let list = vmback().arg("ls").arg(img).output().unwrap();
    if !list.status.success() && String::from_utf8_lossy(&list.stderr).contains("unsupported") {
        eprintln!(
            "NOTE: {}: skipped, image format not readable on this branch: {}",
            img.display(),
            String::from_utf8_lossy(&list.stderr).trim()
        );
        return skipped;
    }
    let volumes: BTreeSet<&str> = rows.iter().map(|r| r.volume.as_str()).collect();
    for vol in volumes {
        let vrows: Vec<&&Row> = rows.iter().filter(|r| r.volume == vol).collect();
        // Expected listing of every directory (the root included).
        let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        dirs.insert("/".into(), BTreeSet::new());
        for r in &vrows {
            if r.kind == "dir" {
                dirs.entry(r.path.clone()).or_default();
            }
        }
        for r in &vrows {
            let shown = if r.kind == "dir" {
                format!("{}/", name(&r.path))
            } else {
                name(&r.path).to_string()
            };
            dirs.entry(parent(&r.path).to_string())
                .or_default()
                .insert(shown);
        }
        let probe = vmback().arg("ls").arg(img).arg(vol).output().unwrap();
        if !probe.status.success() {
            let err = String::from_utf8_lossy(&probe.stderr);
            if err.contains("unsupported: filesystem") {
                eprintln!(
                    "NOTE: {} {vol}: skipped, not readable on this branch: {}",
                    img.display(),
                    err.trim()
                );
                skipped.insert(vol.to_string());
                continue;
            }
        }
        let is_ntfs = {
            let vols = String::from_utf8(run_ok(vmback().arg("ls").arg(img)).stdout).unwrap();
            vols.lines()
                .any(|l| l.split_whitespace().next() == Some(vol) && l.contains("ntfs"))
        };
        for (dir, want) in &dirs {
            let arg = format!("{vol}{}", if dir == "/" { "" } else { dir });
            let out = run_ok(vmback().arg("ls").arg(img).arg(&arg));
            let got: BTreeSet<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                // NTFS metadata files ($MFT, ...) live in the root but were not written.
                .filter(|l| !(is_ntfs && dir == "/" && l.starts_with('$')))
                .map(str::to_string)
                .collect();
            assert_eq!(&got, want, "{} {arg}: listing differs", img.display());
        }
        // Every file outside the 20,000-entry directory, and three inside it.
        let mut in_many = 0;
        for r in vrows.iter().filter(|r| r.kind == "file") {
            if parent(&r.path) == "/many" {
                in_many += 1;
                if in_many > 3 {
                    continue;
                }
            }
            let arg = format!("{vol}{}", r.path);
            let out = run_ok(vmback().arg("cat").arg(img).arg(&arg));
            assert_eq!(
                format!("{:x}", Sha256::digest(&out.stdout)),
                r.sha256,
                "{} {arg}",
                img.display()
            );
        }
        for r in vrows.iter().filter(|r| r.kind == "symlink") {
            let arg = format!("{vol}{}", r.path);
            let out = run_ok(vmback().args(["ls", "--json"]).arg(img).arg(&arg));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                v[0]["target"].as_str(),
                Some(r.target.as_str()),
                "{} {arg}",
                img.display()
            );
        }
        check_get(img, vol, &vrows, is_ntfs);
    }
    skipped
}

/// Kind of a host path as restored, without following symlinks.
fn host_kind(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

/// Every entry under `dir` as `(guest path, kind)`, guest paths rooted at `prefix`.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, &'static str>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
        let e = e.unwrap();
        let name = e.file_name().into_string().expect("restored name is UTF-8");
        let guest = format!("{prefix}/{name}");
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let kind = host_kind(&m);
        if kind == "dir" {
            walk(&e.path(), &guest, out);
        }
        out.insert(guest, kind);
    }
}

/// `vmback get IMAGE VOL --target T` once, then every recorded entry against the
/// restored tree `T/VOL`: files by SHA-256, symlinks by target, directories by
/// existence, and nothing restored that FILES.tsv does not record (it records the
/// filesystem's own lost+found; NTFS metafiles are not listed by vmback).
///
/// Every image, the whole tree (the 100 MiB NTFS file included: ~0.6 s a volume).
/// The slow part is ext4 /many (20,000 empty files): `vmback get` takes ~1 min
/// per image for it in a debug build.
fn check_get(img: &Path, vol: &str, vrows: &[&&Row], is_ntfs: bool) {
    let tmp = tempfile::tempdir().unwrap();
    run_ok(
        vmback()
            .arg("get")
            .arg(img)
            .arg(vol)
            .arg("--target")
            .arg(tmp.path()),
    );
    let restored = tmp.path().join(vol);
    let mut got = BTreeMap::new();
    walk(&restored, "", &mut got);
    let mut want: BTreeMap<String, &'static str> = BTreeMap::new();
    for r in vrows {
        // FILES.tsv would record an NTFS alternate data stream as "name:stream";
        // `get` restores the main stream only, so such rows are not on the host.
        // (The script reads the tree through ntfs-3g's xattr stream interface, so
        // it records none today.)
        if is_ntfs && name(&r.path).contains(':') {
            continue;
        }
        let kind = match r.kind.as_str() {
            "file" => "file",
            "dir" => "dir",
            "symlink" => "symlink",
            k => panic!("FILES.tsv: unknown type {k}"),
        };
        want.insert(r.path.clone(), kind);
    }
    let extra: Vec<_> = got.iter().filter(|(p, _)| !want.contains_key(*p)).collect();
    let missing: Vec<_> = want.iter().filter(|(p, _)| !got.contains_key(*p)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{} get {vol}: restored tree differs from FILES.tsv\nextra: {extra:?}\nmissing: {missing:?}",
        img.display()
    );
    for r in vrows {
        let Some(&kind) = want.get(&r.path) else {
            continue;
        };
        let host = restored.join(r.path.trim_start_matches('/'));
        assert_eq!(
            got[&r.path],
            kind,
            "{} get {vol}: {} restored as the wrong type",
            img.display(),
            r.path
        );
        match kind {
            "file" => assert_eq!(
                sha256_file(&host),
                r.sha256,
                "{} get {vol}: {} restored with different content",
                img.display(),
                r.path
            ),
            "symlink" => assert_eq!(
                std::fs::read_link(&host).unwrap(),
                PathBuf::from(&r.target),
                "{} get {vol}: {} restored with a different target",
                img.display(),
                r.path
            ),
            _ => {}
        }
    }
}

#[test]
fn guest_disks_in_every_container_list_and_read_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    if !build(&out) {
        return;
    }
    let rows: Vec<Row> = read_tsv(&out.join("FILES.tsv"))
        .into_iter()
        .map(|c| Row {
            disk: c[0].clone(),
            volume: c[1].clone(),
            path: c[2].clone(),
            kind: c[3].clone(),
            sha256: c[5].clone(),
            target: c.get(6).cloned().unwrap_or_default(),
        })
        .collect();
    assert!(
        rows.len() > 20_000,
        "FILES.tsv has only {} rows",
        rows.len()
    );
    let images: Vec<(String, PathBuf)> = read_tsv(&out.join("IMAGES.tsv"))
        .into_iter()
        .map(|c| (c[0].clone(), out.join(&c[2])))
        .collect();
    assert_eq!(images.len(), 12);
    // Two images at a time (the machine has few cores; each check runs many processes).
    let skipped: Vec<BTreeSet<String>> = std::thread::scope(|s| {
        let (a, b): (Vec<_>, Vec<_>) = images.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let rows = &rows;
        let run = move |part: Vec<(usize, &(String, PathBuf))>| {
            part.into_iter()
                .map(|(_, (disk, img))| {
                    let mine: Vec<&Row> = rows.iter().filter(|r| &r.disk == disk).collect();
                    check_image(img, &mine)
                })
                .collect::<Vec<_>>()
        };
        let h = s.spawn(move || run(b));
        let mut v = run(a);
        v.extend(h.join().unwrap());
        v
    });
    // Only NTFS may be skipped (its adapter lands separately): ext4 and FAT must pass.
    for s in skipped {
        for vol in s {
            assert_eq!(vol, "p2", "volume {vol} was skipped but must be readable");
        }
    }
    check_inspect_usage(&images, dir.path());
}

/// `vmback inspect` of every image reports, for each volume, the size, used and free
/// space that the filesystem's own tools (dumpe2fs, fsck.fat, ntfscluster) count on
/// that volume cut out of the raw disk.
fn check_inspect_usage(images: &[(String, PathBuf)], scratch: &Path) {
    for (disk, raw) in images.iter().filter(|(d, p)| p.ends_with(d)) {
        let mut want = Vec::new();
        for (name, start, len, fs) in inspect_volumes(raw) {
            let kind = fs.unwrap_or_else(|| panic!("{disk} {name}: no filesystem detected"));
            let cut = scratch.join(format!("{disk}-{name}.vol"));
            cut_volume(raw, start, len, &cut);
            let usage = usage_by_tools(&cut, &kind);
            std::fs::remove_file(&cut).unwrap();
            let Some(usage) = usage else { return };
            assert!(usage.1 > 0, "{disk} {name}: the tools see an empty {kind}");
            want.push((name, Some(usage)));
        }
        for (_, img) in images.iter().filter(|(d, _)| d == disk) {
            let (got, warnings) = inspect_usage(img);
            assert_eq!(
                got,
                want,
                "{}: inspect usage differs from the tools",
                img.display()
            );
            assert!(warnings.is_empty(), "{}: {warnings:?}", img.display());
        }
    }
}
