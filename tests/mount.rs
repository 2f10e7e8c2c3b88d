//! `vmback mount` / `vmback umount` (issue 4/7), with real FUSE mounts: every file of
//! the fixture disks read through a mounted restore point matches the SHA-256 recorded
//! when it was written; `ls -lR` of the mount matches `vmback ls -l --json`; the raw
//! `disk0.img` compares identical to its source with `qemu-img compare`, also through
//! a qcow2 overlay (instant access); an image file mounts the same way; a backup into
//! the mounted repository works and its restore point appears; SIGTERM and
//! `vmback umount` unmount cleanly.
//!
//! Needs /dev/fuse (and fusermount3 when not root): without it each test prints SKIP
//! and passes, except under VMBACK_REQUIRE_FUSE=1 (CI), where it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

// ------------------------------------------------------------------ mounting

/// Whether FUSE can be mounted here; prints SKIP (or fails under
/// VMBACK_REQUIRE_FUSE=1) when not.
fn fuse_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let helper = Command::new("sh")
        .args(["-c", "command -v fusermount3"])
        .output()
        .is_ok_and(|o| o.status.success());
    let why = if !Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else if !root && !helper {
        Some("not root and no fusermount3")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            assert!(
                std::env::var("VMBACK_REQUIRE_FUSE").as_deref() != Ok("1"),
                "FUSE is required (VMBACK_REQUIRE_FUSE=1) but {why}"
            );
            eprintln!("SKIP: cannot mount FUSE: {why}");
            false
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| Path::new(&m.replace("\\040", " ")) == dir)
    })
}

/// A running `vmback mount`; unmounted (SIGTERM, then fusermount3 -u -z) on drop.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Runs `vmback mount SOURCE DIR ARGS…` and waits until DIR is a mount point.
    fn start(source: &Path, dir: &Path, args: &[&str]) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let mut cmd = vmback();
        cmd.arg("mount")
            .arg(source)
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        eprintln!("running {cmd:?}");
        let child = cmd.spawn().unwrap();
        let mut m = Mounted {
            child: Some(child),
            dir: dir.to_path_buf(),
            log,
        };
        let t0 = Instant::now();
        while !is_mounted(dir) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!(
                    "vmback mount exited with {status} before mounting\n--- stderr ---\n{}",
                    m.stderr()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{} not mounted after 60 s\n{}",
                dir.display(),
                m.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> rustix::process::Pid {
        let id = self.child.as_ref().unwrap().id();
        rustix::process::Pid::from_raw(i32::try_from(id).unwrap()).unwrap()
    }

    /// Waits for the mount process to exit (after something unmounted it).
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                t0.elapsed() < within,
                "vmback mount still running {within:?} after unmounting\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: the process unmounts and exits 0, and the mount point is free.
    fn stop(mut self) -> String {
        rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM).unwrap();
        let status = self.wait_exit(Duration::from_secs(30));
        let err = self.stderr();
        assert!(status.success(), "SIGTERM: exit {status}\n{err}");
        assert!(!is_mounted(&self.dir), "still mounted after SIGTERM\n{err}");
        err
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_mounted(&self.dir) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.dir)
                    .status();
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
            let _ = child.kill();
            let _ = child.wait();
            if !std::thread::panicking() {
                eprintln!("--- vmback mount stderr ---\n{}", self.stderr());
            }
        }
    }
}

// ------------------------------------------------------------------ helpers

struct Row {
    disk: String,
    volume: String,
    path: String,
    kind: String,
    sha256: String,
    target: String,
}

fn read_tsv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Builds the raw fixture disks of `fixtures/make-guest-disks.sh` in `out` (SKIP
/// without the tools, like tests/guest_disks.rs).
fn build_guest_disks(out: &Path) -> Option<Vec<Row>> {
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
            return None;
        }
    }
    run_ok(
        Command::new("bash")
            .arg(root().join("fixtures/make-guest-disks.sh"))
            .arg(out)
            .env("GUEST_DISKS_RAW_ONLY", "1"),
    );
    Some(
        read_tsv(&out.join("FILES.tsv"))
            .into_iter()
            .map(|c| Row {
                disk: c[0].clone(),
                volume: c[1].clone(),
                path: c[2].clone(),
                kind: c[3].clone(),
                sha256: c[5].clone(),
                target: c.get(6).cloned().unwrap_or_default(),
            })
            .collect(),
    )
}

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    repo
}

/// Backs up `sources` as VM `vm`; returns the restore point's name.
fn backup(repo: &Path, vm: &str, sources: &[&Path]) -> String {
    let out = run_ok(
        vmback()
            .arg("backup")
            .arg(repo)
            .args(["--vm", vm, "--json"])
            .args(sources),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["name"]
        .as_str()
        .expect("backup report has a name")
        .to_string()
}

fn qemu_compare(args: &[&Path], fmts: &[&str]) {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("compare");
    if let Some(f) = fmts.first() {
        cmd.args(["-f", f]);
    }
    if let Some(f) = fmts.get(1) {
        cmd.args(["-F", f]);
    }
    let out = run_ok(cmd.args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Images are identical"), "{text}");
}

/// Checks every FILES.tsv row of `rows` under `base` (`base/<volume>/<path>`):
/// files by SHA-256, symlinks by target, directories by listing.
fn check_files(base: &Path, rows: &[&Row], volumes_ntfs: &BTreeSet<String>) {
    let mut dirs: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut checked = 0;
    for r in rows {
        let p = base.join(&r.volume).join(r.path.trim_start_matches('/'));
        let parent = p.parent().unwrap().to_path_buf();
        dirs.entry(parent)
            .or_default()
            .insert(p.file_name().unwrap().to_string_lossy().into_owned());
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        match r.kind.as_str() {
            "file" => {
                assert!(m.is_file(), "{} is not a file", p.display());
                assert_eq!(sha256_file(&p), r.sha256, "{}", p.display());
                checked += 1;
            }
            "symlink" => {
                assert!(m.file_type().is_symlink(), "{}", p.display());
                assert_eq!(
                    std::fs::read_link(&p).unwrap(),
                    PathBuf::from(&r.target),
                    "{}",
                    p.display()
                );
            }
            "dir" => {
                assert!(m.is_dir(), "{} is not a directory", p.display());
                dirs.entry(p.clone()).or_default();
            }
            k => panic!("FILES.tsv: unknown type {k}"),
        }
    }
    assert!(checked > 0);
    // Every listed directory holds exactly what was written (NTFS metadata files in
    // the root aside).
    for (dir, want) in &dirs {
        let rel = dir.strip_prefix(base).unwrap();
        let vol = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let is_root = rel.components().count() == 1;
        let got: BTreeSet<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !(is_root && volumes_ntfs.contains(&*vol) && n.starts_with('$')))
            .collect();
        assert_eq!(&got, want, "listing of {}", dir.display());
    }
}

/// One entry of `ls -lRAn --time-style=+%s`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LsRow {
    name: String,
    mode: String,
    nlink: u64,
    uid: Option<u64>,
    gid: Option<u64>,
    size: u64,
    mtime: i64,
    target: Option<String>,
}

/// `ls -lRAn` of `dir`, by directory (relative to `dir`, "" for itself).
fn ls_lr(dir: &Path) -> BTreeMap<String, Vec<LsRow>> {
    let out = run_ok(
        Command::new("ls")
            .args(["-lRAn", "--time-style=+%s"])
            .arg(dir)
            .env("QUOTING_STYLE", "literal")
            .env("LC_ALL", "C.UTF-8"),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut blocks = BTreeMap::new();
    let prefix = format!("{}", dir.display());
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(head) = lines.next() else { continue };
        let head = head.trim_end_matches(':');
        let rel = head
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("ls block {head:?} outside {prefix}"))
            .trim_start_matches('/')
            .to_string();
        let mut rows = Vec::new();
        for l in lines {
            if l.starts_with("total ") {
                continue;
            }
            // mode nlink uid gid size mtime name[ -> target]
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert!(parts.len() >= 7, "ls line {l:?}");
            // The name starts after the sixth field (names may hold spaces).
            let mut rest = l;
            for _ in 0..6 {
                rest = rest.trim_start();
                let end = rest.find(' ').unwrap();
                rest = &rest[end..];
            }
            let rest = &rest[1..];
            let (name, target) = if parts[0].starts_with('l') {
                let (n, t) = rest.split_once(" -> ").unwrap();
                (n.to_string(), Some(t.to_string()))
            } else {
                (rest.to_string(), None)
            };
            rows.push(LsRow {
                name,
                mode: parts[0].trim_end_matches(['.', '+']).to_string(),
                nlink: parts[1].parse().unwrap(),
                uid: parts[2].parse().ok(),
                gid: parts[3].parse().ok(),
                size: parts[4].parse().unwrap(),
                mtime: parts[5].parse().unwrap(),
                target,
            });
        }
        rows.sort();
        blocks.insert(rel, rows);
    }
    blocks
}

/// `vmback ls -l --json SOURCE PATH` as the rows `ls -lRAn` would print.
fn vmback_ls(source: &Path, path: &str, owner: (u64, u64)) -> Vec<LsRow> {
    let out = run_ok(vmback().args(["ls", "-l", "--json"]).arg(source).arg(path));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rows: Vec<LsRow> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let t = e["file_type"].as_str().unwrap();
            let mode = e["mode"].as_u64().unwrap() as u32;
            let mut s = String::from(match t {
                "dir" => "d",
                "symlink" => "l",
                _ => "-",
            });
            for shift in [6, 3, 0] {
                let bits = (mode >> shift) & 7;
                s.push(if bits & 4 != 0 { 'r' } else { '-' });
                s.push(if bits & 2 != 0 { 'w' } else { '-' });
                s.push(if bits & 1 != 0 { 'x' } else { '-' });
            }
            // setuid/setgid/sticky as ls shows them.
            let mut c: Vec<char> = s.chars().collect();
            for (bit, at, on, off) in [
                (0o4000, 3, 's', 'S'),
                (0o2000, 6, 's', 'S'),
                (0o1000, 9, 't', 'T'),
            ] {
                if mode & bit != 0 {
                    c[at] = if c[at] == 'x' { on } else { off };
                }
            }
            LsRow {
                name: e["name"].as_str().unwrap().to_string(),
                mode: c.into_iter().collect(),
                nlink: e["nlink"].as_u64().unwrap().max(1),
                uid: Some(e["uid"].as_u64().unwrap_or(owner.0)),
                gid: Some(e["gid"].as_u64().unwrap_or(owner.1)),
                size: if t == "other" {
                    0
                } else {
                    e["size"].as_u64().unwrap()
                },
                mtime: e["mtime"]["secs"].as_i64().unwrap_or(0),
                target: e["target"].as_str().map(str::to_string),
            }
        })
        .collect();
    rows.sort();
    rows
}

/// `ls -lR` of every volume under `mnt_disk` matches `vmback ls -l` of the same
/// directories, entry by entry (type and mode, links, owner, size, time, target).
fn check_ls_matches(mnt_disk: &Path, repo: &Path, repo_disk: &str, volumes: &BTreeSet<String>) {
    let owner = (
        u64::from(rustix::process::getuid().as_raw()),
        u64::from(rustix::process::getgid().as_raw()),
    );
    for vol in volumes {
        let blocks = ls_lr(&mnt_disk.join(vol));
        assert!(!blocks.is_empty());
        for (rel, got) in &blocks {
            let path = if rel.is_empty() {
                format!("{repo_disk}/{vol}/")
            } else {
                format!("{repo_disk}/{vol}/{rel}")
            };
            let want = vmback_ls(repo, &path, owner);
            assert_eq!(got, &want, "ls -lR of {path} differs from vmback ls -l");
        }
    }
}

// ------------------------------------------------------------------ tests

/// Fixture disks (GPT: FAT32 + NTFS + ext4; MBR: ext4 + logical ext4 + FAT16) backed
/// up as one VM; mounted; every file, listing and the raw disks checked; the same
/// disks mounted as image files.
#[test]
fn fixture_disks_read_through_the_mount_as_written() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fx = dir.path().join("fx");
    let Some(rows) = build_guest_disks(&fx) else {
        return;
    };
    let (gpt, mbr) = (fx.join("gpt.raw"), fx.join("mbr.raw"));
    let repo = init_repo(dir.path());
    let rp = backup(&repo, "guests", &[&gpt, &mbr]);

    let mnt = Mounted::start(&repo, &dir.path().join("mnt"), &[]);
    // The tree of the path grammar.
    let names = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(names(&mnt.dir), BTreeSet::from(["guests".to_string()]));
    assert_eq!(
        names(&mnt.path("guests")),
        BTreeSet::from([rp.clone(), "latest".to_string()])
    );
    assert_eq!(
        std::fs::read_link(mnt.path("guests/latest")).unwrap(),
        PathBuf::from(&rp)
    );
    let rp_dir = mnt.path(&format!("guests/{rp}"));
    assert_eq!(
        names(&rp_dir),
        ["disk0", "disk0.img", "disk1", "disk1.img"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        names(&rp_dir.join("disk0")),
        ["p1", "p2", "p3"].map(String::from).into()
    );
    assert_eq!(
        names(&rp_dir.join("disk1")),
        ["p1", "p5", "p6"].map(String::from).into()
    );

    let ntfs: BTreeSet<String> = BTreeSet::from(["p2".to_string()]);
    let none = BTreeSet::new();
    for (disk, raw) in [("disk0", "gpt.raw"), ("disk1", "mbr.raw")] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.disk == raw).collect();
        let t0 = Instant::now();
        check_files(
            &rp_dir.join(disk),
            &mine,
            if disk == "disk0" { &ntfs } else { &none },
        );
        eprintln!(
            "{disk}: {} entries checked through the mount in {:.1?}",
            mine.len(),
            t0.elapsed()
        );
        let vols: BTreeSet<String> = mine.iter().map(|r| r.volume.clone()).collect();
        let t0 = Instant::now();
        check_ls_matches(
            &rp_dir.join(disk),
            &repo,
            &format!("guests/{rp}/{disk}"),
            &vols,
        );
        eprintln!("{disk}: ls -lR matches vmback ls in {:.1?}", t0.elapsed());
    }
    // Also through `latest` and an id prefix (the grammar's other spellings).
    let hosts = "disk0/p3/etc/hosts";
    let want = std::fs::read(rp_dir.join(hosts)).unwrap();
    assert_eq!(
        std::fs::read(mnt.path("guests/latest").join(hosts)).unwrap(),
        want
    );
    let snaps = run_ok(vmback().arg("snapshots").arg(&repo).arg("--json"));
    let id = serde_json::from_slice::<Value>(&snaps.stdout).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(std::fs::read(mnt.path(&id[..8]).join(hosts)).unwrap(), want);

    // The raw disks read as their sources (qemu-img is the reference reader).
    qemu_compare(&[&rp_dir.join("disk0.img"), &gpt], &["raw", "raw"]);
    qemu_compare(&[&rp_dir.join("disk1.img"), &mbr], &["raw", "raw"]);

    // Instant access: a qcow2 overlay on the mounted disk reads as the source, and
    // writes to it leave the restore point alone.
    let overlay = dir.path().join("overlay.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(rp_dir.join("disk0.img"))
            .arg(&overlay),
    );
    qemu_compare(&[&overlay, &gpt], &["qcow2", "raw"]);
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xab 1M 64k"])
            .arg(&overlay)
            .stdout(Stdio::null()),
    );
    qemu_compare(&[&rp_dir.join("disk0.img"), &gpt], &["raw", "raw"]);
    std::fs::remove_file(&overlay).unwrap();
    let err = mnt.stop();
    assert!(
        !err.contains("vmback mount:"),
        "errors while reading:\n{err}"
    );

    // The same disks as image files (one of them in a container): `disk.img` and
    // `<volume>/…` at the top.
    let qcow = fx.join("mbr.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&mbr)
            .arg(&qcow),
    );
    for (img, raw) in [(&gpt, "gpt.raw"), (&qcow, "mbr.raw")] {
        let m = Mounted::start(img, &dir.path().join("img"), &[]);
        let mine: Vec<&Row> = rows.iter().filter(|r| r.disk == raw).collect();
        let vols: BTreeSet<String> = mine.iter().map(|r| r.volume.clone()).collect();
        let mut want = vols.clone();
        want.insert("disk.img".into());
        assert_eq!(names(&m.dir), want);
        check_files(&m.dir, &mine, if raw == "gpt.raw" { &ntfs } else { &none });
        let source = if raw == "gpt.raw" { &gpt } else { &mbr };
        qemu_compare(&[&m.path("disk.img"), source], &["raw", "raw"]);
        let err = m.stop();
        assert!(
            !err.contains("vmback mount:"),
            "errors while reading:\n{err}"
        );
    }
}

/// A backup into the mounted repository succeeds while files are read through the
/// mount, and its restore point then appears under the mount.
#[test]
fn backup_while_mounted_appears_in_the_mount() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a.raw");
    make_seeded_raw(&disk, 24 << 20, 7);
    let repo = init_repo(dir.path());
    let first = backup(&repo, "vm1", &[&disk]);
    let mnt = Mounted::start(&repo, &dir.path().join("mnt"), &[]);
    let img = mnt.path(&format!("vm1/{first}/disk0.img"));
    let want = sha256_file(&disk);

    // Change the source a little and back it up again while reading the first
    // restore point's disk through the mount.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&seeded_bytes(99, 300_000), 5 << 20).unwrap();
    }
    let b = vmback()
        .arg("backup")
        .arg(&repo)
        .args(["--vm", "vm1", "--json"])
        .arg(&disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            sha256_file(&img),
            want,
            "first restore point read while backing up"
        );
    }
    let out = b.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "backup while mounted failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = serde_json::from_slice::<Value>(&out.stdout).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    // Listing the VM directory again shows it (no remount).
    let t0 = Instant::now();
    loop {
        let names: BTreeSet<String> = std::fs::read_dir(mnt.path("vm1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if names.contains(&second) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{second} not in {names:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_link(mnt.path("vm1/latest")).unwrap(),
        PathBuf::from(&second)
    );
    assert_eq!(
        sha256_file(&mnt.path(&format!("vm1/{second}/disk0.img"))),
        sha256_file(&disk)
    );
    assert_eq!(sha256_file(&img), want);
    mnt.stop();
}

/// SIGTERM and `vmback umount` unmount cleanly (exit 0, mount point free);
/// `vmback umount` refuses what is not a vmback mount; --vm / --snapshot restrict
/// the tree.
#[test]
fn signals_and_umount_unmount_cleanly() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a.raw");
    make_seeded_raw(&disk, 4 << 20, 3);
    let repo = init_repo(dir.path());
    let a1 = backup(&repo, "alpha", &[&disk]);
    let b1 = backup(&repo, "beta", &[&disk]);
    let mnt_dir = dir.path().join("mnt");

    // SIGTERM (checked by stop()).
    let m = Mounted::start(&repo, &mnt_dir, &[]);
    let listed: BTreeSet<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, BTreeSet::from(["alpha".into(), "beta".into()]));
    m.stop();

    // `vmback umount`.
    let mut m = Mounted::start(&repo, &mnt_dir, &["--vm", "beta"]);
    let listed: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec!["beta".to_string()]);
    assert!(m.path(&format!("beta/{b1}/disk0.img")).is_file());
    run_ok(vmback().arg("umount").arg(&m.dir));
    let status = m.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit {status} after vmback umount\n{}",
        m.stderr()
    );
    assert!(!is_mounted(&m.dir));

    // Not a vmback mount: refused.
    let err = run_err(vmback().arg("umount").arg(dir.path()));
    assert!(err.contains("nothing is mounted"), "{err}");
    let err = run_err(vmback().arg("umount").arg("/proc"));
    assert!(err.contains("not a vmback mount"), "{err}");

    // --snapshot: one restore point only.
    let m = Mounted::start(&repo, &mnt_dir, &["--vm", "alpha", "--snapshot", "latest"]);
    let listed: Vec<String> = std::fs::read_dir(m.path("alpha"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(listed, vec![a1.clone(), "latest".to_string()]);
    assert_eq!(
        sha256_file(&m.path(&format!("alpha/{a1}/disk0.img"))),
        sha256_file(&disk)
    );
    // Read-only.
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path(&format!("alpha/{a1}/disk0.img")))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS expected: {e}");
    m.stop();

    // A mount point that is not a directory, or a missing VM: clear errors, no mount.
    let err = run_err(vmback().arg("mount").arg(&repo).arg(&disk));
    assert!(err.contains("must be a directory"), "{err}");
    let err = run_err(
        vmback()
            .arg("mount")
            .arg(&repo)
            .arg(&mnt_dir)
            .args(["--vm", "nope"]),
    );
    assert!(err.contains("no restore point of VM nope"), "{err}");
    assert!(!is_mounted(&mnt_dir));
}

/// A damaged chunk reaches the reader as EIO, and stderr names the file, the offset
/// and the cause; the rest of the mount keeps working.
#[test]
fn damaged_chunk_is_eio_with_a_message() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a.raw");
    make_seeded_raw(&disk, 4 << 20, 5);
    let repo = init_repo(dir.path());
    let rp = backup(&repo, "vm1", &[&disk]);
    // Flip one byte in the middle of every stored chunk.
    let mut damaged = 0;
    for sub in std::fs::read_dir(repo.join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            std::fs::write(&p, b).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let mnt = Mounted::start(&repo, &dir.path().join("mnt"), &[]);
    let img = mnt.path(&format!("vm1/{rp}/disk0.img"));
    let e = std::fs::read(&img).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "EIO expected: {e}");
    // The tree is still there.
    assert!(mnt.path("vm1/latest").symlink_metadata().is_ok());
    let err = mnt.stop();
    assert!(
        err.contains(&format!("vm1/{rp}/disk0.img at offset 0x0")) && err.contains("chunk 0"),
        "stderr should name the file, the offset and the chunk:\n{err}"
    );
}
