//! Mount and export benchmark (issue 5): `vmback mount` of a restore point against
//! `restic mount` and `borg mount` of the raw image (The Sleuth Kit's ifind + icat and
//! tsk_recover on the image inside the mount), and `vmback export` to every container
//! format against `qemu-img convert`, side by side in one run.
//!
//!   cargo bench --bench mount            (or VMBACK_BENCH=1 target/.../mount-*)
//!
//! A program, not a test: it takes 20-40 minutes and ~10 GiB of disk, so it refuses to
//! run unless started by `cargo bench` (which passes `--bench`) or with VMBACK_BENCH=1.
//! Needs root (ntfs-3g FUSE mount while building, FUSE mounts), sgdisk, mkntfs,
//! ntfs-3g, mke2fs, qemu-img, python3, restic, borg, ifind, icat, tsk_recover.
//!
//! The disk (built once with its three repositories, kept in `$VMBACK_BENCH_DIR`,
//! default `<target>/tmp/bench-mount`, rebuilt when [`RECIPE`] changes;
//! `VMBACK_BENCH_PREPARE=1` only builds): `source.raw`, 4 GiB sparse raw, GPT with p1
//! NTFS (2 GiB) and p2 ext4 (1900 MiB), built by `support::GptNtfsExt4` (as the backup
//! benchmark's day 0) from `backup_data.py tree` trees of mixed files, plus on both
//! partitions `a/b/.../p/target.bin` (16 directories deep, 1 MiB, different bytes on
//! each), on NTFS `Users/alice/Projects/many/` (10,000 files of 1-32 KiB in 100
//! directories) and on ext4 `srv/data/seq.bin` (1 GiB of mixed random, text-like and
//! mostly-zero pages). About 40% of the disk is never written. It is backed up once
//! into a vmback repository (default 256 KiB chunks), a restic repository (0.14,
//! `--repository-version 2`) and a borg repository (1.2, `-e none`, zstd,3), the last
//! two of the raw image file, as the backup benchmark does.
//!
//! Measured, each 3 times (median; best beside it):
//! 1. Time to first file: from starting the mount command to the bytes of the deep
//!    file read and their sha256 checked. vmback: `vmback mount REPO MNT --vm VM
//!    --snapshot RP`, then `MNT/VM/RP/disk0/pN/a/.../target.bin`. restic / borg: their
//!    mount, then `ifind -n PATH -o SECTOR` and `icat -o SECTOR` on the raw image in
//!    the mount. Readiness is polled (stat every millisecond), never a fixed sleep.
//!    guestmount, when installed, on the source image; otherwise its row says why not.
//! 2. Sequential read of the 1 GiB guest file (vmback: read(2) of the mounted file;
//!    peers: icat of its inode, found beforehand) on a fresh mount with a cold cache,
//!    then warm in the same mount; and `cp -r` of the 10,000-file tree out of the
//!    vmback mount (peers: `tsk_recover -a -d INODE`, their way of copying a directory
//!    out of an image), checked file by file against the tree's sha256s.
//! 3. Export of the restore point (`vmback export REPO VM/RP/disk0`) and of the source
//!    image to vmdk monolithicSparse, vmdk streamOptimized, vhd dynamic, vhdx dynamic
//!    and qcow2, against `qemu-img convert -O FMT -o subformat=...` of the source image
//!    followed by a `sync` of its output (vmback fsyncs before it reports success).
//!    The order of the three alternates between repetitions. The first output of each
//!    is checked with `qemu-img compare` against the source.
//!
//! Cold cache: `drop_caches` before each cold run when /proc/sys/vm/drop_caches is
//! writable; otherwise (a container) every file of the source image and repositories
//! is evicted with posix_fadvise(DONTNEED) after a sync, which empties the page cache
//! of their data but not of directory entries and inodes (the header says which).
//! `VMBACK_BENCH_SMALL=1` runs the same on a 1 GiB disk with small files (for
//! development; default directory `bench-mount-small`). `VMBACK_BENCH_PARTS=1,2,3`
//! picks the parts; `VMBACK_BENCH_EXPORT_REPS=N` repeats each export N times instead
//! of 3 (streamOptimized takes minutes per run on two cores);
//! `VMBACK_BENCH_EXPORT_FORMATS=qcow2,monolithicSparse` limits the exports to those
//! `--format`s or `--subformat`s.

mod support;
use support::*;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bumped whenever the disk's or the repositories' recipe changes (all rebuilt).
const RECIPE: &str = "v2";
const MIB: u64 = 1 << 20;
const VM: &str = "web01";
const REPS: usize = 3;
/// 16 directories deep.
const DEEP: &str = "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/target.bin";
const MANY: &str = "Users/alice/Projects/many";
const SEQ: &str = "srv/data/seq.bin";
/// The restic / borg view of the image: a hard link in this directory.
const PEER_FILE: &str = "disk.raw";
/// Time-to-first-file target (seconds) and the factor over every peer.
const TTFF_TARGET: f64 = 0.1;
const TTFF_FACTOR: f64 = 5.0;

/// Sizes of the generated disk.
struct Scale {
    name: &'static str,
    disk_size: &'static str,
    ntfs_mib: u64,
    ext4_mib: u64,
    ntfs_files: u64,
    ext4_files: u64,
    seq_bytes: u64,
    many_files: usize,
}

const FULL: Scale = Scale {
    name: "full",
    disk_size: "4G",
    ntfs_mib: 2048,
    ext4_mib: 1900,
    ntfs_files: 700 * MIB,
    ext4_files: 420 * MIB,
    seq_bytes: 1 << 30,
    many_files: 10_000,
};

const SMALL: Scale = Scale {
    name: "small",
    disk_size: "1G",
    ntfs_mib: 512,
    ext4_mib: 480,
    ntfs_files: 40 * MIB,
    ext4_files: 30 * MIB,
    seq_bytes: 96 * MIB,
    many_files: 1_000,
};

struct Part {
    vol: &'static str,
    fs: &'static str,
}

const PARTS: [Part; 2] = [
    Part {
        vol: "p1",
        fs: "ntfs",
    },
    Part {
        vol: "p2",
        fs: "ext4",
    },
];

/// An export target: vmback's --format/--subformat and qemu-img's -O/-o.
struct Target {
    label: &'static str,
    format: &'static str,
    subformat: Option<&'static str>,
    qemu_format: &'static str,
    /// Sparse formats: target ratio <= 1.0; streamOptimized: faster than qemu-img.
    stream: bool,
}

const TARGETS: [Target; 5] = [
    Target {
        label: "vmdk monolithicSparse",
        format: "vmdk",
        subformat: Some("monolithicSparse"),
        qemu_format: "vmdk",
        stream: false,
    },
    Target {
        label: "vmdk streamOptimized",
        format: "vmdk",
        subformat: Some("streamOptimized"),
        qemu_format: "vmdk",
        stream: true,
    },
    Target {
        label: "vhd dynamic",
        format: "vhd",
        subformat: Some("dynamic"),
        qemu_format: "vpc",
        stream: false,
    },
    Target {
        label: "vhdx dynamic",
        format: "vhdx",
        subformat: Some("dynamic"),
        qemu_format: "vhdx",
        stream: false,
    },
    Target {
        label: "qcow2",
        format: "qcow2",
        subformat: None,
        qemu_format: "qcow2",
        stream: false,
    },
];

/// What the disk holds, measured when it was built.
struct Facts {
    /// sha256 of `DEEP` on p1 and p2.
    deep: [String; 2],
    seq: String,
    /// sha256 over the sorted (path, sha256) list of the many-file tree.
    many: String,
    many_files: usize,
    many_bytes: u64,
    source_sha: String,
    allocated: u64,
    /// The vmback restore point's name.
    rp: String,
    trees: Value,
}

/// How a cold run starts.
#[derive(Clone, Copy, PartialEq)]
enum Cache {
    Dropped,
    Evicted,
    Warm,
}

struct Bench {
    dir: PathBuf,
    vmback: PathBuf,
    scale: &'static Scale,
    cache: Cache,
    facts: Facts,
    /// Partition offsets, sectors.
    sectors: [u64; 2],
    ok: bool,
}

fn main() {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("VMBACK_BENCH").as_deref() == Ok("1");
    if !asked {
        eprintln!(
            "mount benchmark skipped: it is a program, not a test (minutes, GiBs of disk); \
             run it with `cargo bench --bench mount`"
        );
        return;
    }
    for tool in [
        "sgdisk",
        "mkntfs",
        "ntfs-3g",
        "mke2fs",
        "qemu-img",
        "python3",
        "restic",
        "borg",
        "ifind",
        "icat",
        "tsk_recover",
        "umount",
    ] {
        if !have(tool) {
            eprintln!("mount benchmark: missing tool {tool}");
            std::process::exit(1);
        }
    }
    let small = std::env::var("VMBACK_BENCH_SMALL").as_deref() == Ok("1");
    let scale = if small { &SMALL } else { &FULL };
    let dir = std::env::var_os("VMBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(if small {
                "bench-mount-small"
            } else {
                "bench-mount"
            })
        });
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let vmback = PathBuf::from(env!("CARGO_BIN_EXE_vmback"));
    let facts = prepare(&dir, scale, &vmback);
    if std::env::var("VMBACK_BENCH_PREPARE").as_deref() == Ok("1") {
        return;
    }
    let cache = if std::env::var("VMBACK_BENCH_WARM").as_deref() == Ok("1") {
        Cache::Warm
    } else if drop_caches() {
        Cache::Dropped
    } else {
        Cache::Evicted
    };
    let parts: Vec<u32> = std::env::var("VMBACK_BENCH_PARTS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut b = Bench {
        sectors: partition_first_sectors(&dir.join("source.raw")),
        dir,
        vmback,
        scale,
        cache,
        facts,
        ok: true,
    };
    let _ = std::fs::remove_dir_all(b.dir.join("out"));
    print_header(&b);
    if parts.contains(&1) {
        b.first_file();
    }
    if parts.contains(&2) {
        b.sequential();
        b.copy_tree();
    }
    if parts.contains(&3) {
        b.export();
    }
    let _ = std::fs::remove_dir_all(b.dir.join("out"));
    println!("load average at the end {}", load_average());
    if !b.ok {
        eprintln!("mount benchmark: a check failed (see above)");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------
// The disk and the repositories.

/// Builds the disk and backs it up unless the cached ones match [`RECIPE`] and the
/// scale; returns their facts.
fn prepare(dir: &Path, scale: &Scale, vmback: &Path) -> Facts {
    let stamp = dir.join("RECIPE");
    let want_stamp = format!("{RECIPE} {}", scale.name);
    let facts_file = dir.join("FACTS.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want_stamp.as_str()) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                // A mount point left by a killed run: unmount before deleting.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&p)
                    .stderr(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let t = Instant::now();
        let facts = build(dir, scale, vmback);
        std::fs::write(&facts_file, serde_json::to_vec_pretty(&facts).unwrap()).unwrap();
        std::fs::write(&stamp, &want_stamp).unwrap();
        eprintln!(
            "disk and repositories built in {:.0}s",
            t.elapsed().as_secs_f64()
        );
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&facts_file).unwrap()).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    Facts {
        deep: [s("deep_p1"), s("deep_p2")],
        seq: s("seq"),
        many: s("many"),
        many_files: v["many_files"].as_u64().unwrap() as usize,
        many_bytes: v["many_bytes"].as_u64().unwrap(),
        source_sha: s("source_sha"),
        allocated: v["allocated"].as_u64().unwrap(),
        rp: s("rp"),
        trees: v["trees"].clone(),
    }
}

fn build(dir: &Path, scale: &Scale, vmback: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/backup_data.py");
    let tree = |name: &str| dir.join(format!("tree-{name}"));
    let mut trees = serde_json::Map::new();
    for (name, seed, bytes) in [("ntfs", 1, scale.ntfs_files), ("ext4", 2, scale.ext4_files)] {
        let o = run(Command::new("python3")
            .arg(script)
            .arg("tree")
            .arg(tree(name))
            .args([name, &seed.to_string(), &bytes.to_string()]));
        trees.insert(name.into(), serde_json::from_slice(&o.stdout).unwrap());
    }
    let mut rng = Rng(0x853c_49e6_748f_ea9b);
    let mut deep = Vec::new();
    for name in ["ntfs", "ext4"] {
        let p = tree(name).join(DEEP);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        rng.random(&mut buf);
        std::fs::write(&p, &buf).unwrap();
        deep.push(sha256_bytes(&buf));
    }
    // The many-file tree: 100 directories, sizes 1-32 KiB, half random, half text.
    let many = tree("ntfs").join(MANY);
    let per_dir = scale.many_files.div_ceil(100);
    let mut many_bytes = 0;
    for i in 0..scale.many_files {
        let d = many.join(format!("d{:03}", i / per_dir));
        if i % per_dir == 0 {
            std::fs::create_dir_all(&d).unwrap();
        }
        let size = 1024 + (rng.next() % (31 * 1024)) as usize;
        let mut buf = vec![0u8; size];
        if i % 2 == 0 {
            rng.random(&mut buf);
        } else {
            rng.text(&mut buf);
        }
        std::fs::write(d.join(format!("f{i:05}.dat")), &buf).unwrap();
        many_bytes += size as u64;
    }
    let many_sha = tree_digest(&many);
    // The large file, written 1 MiB at a time.
    let seq = tree("ext4").join(SEQ);
    std::fs::create_dir_all(seq.parent().unwrap()).unwrap();
    {
        let mut f = std::io::BufWriter::new(File::create(&seq).unwrap());
        let mut buf = vec![0u8; MIB as usize];
        for _ in 0..scale.seq_bytes / MIB {
            rng.mixed(&mut buf);
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let seq_sha = sha256_file(&seq);

    let source = dir.join("source.raw");
    GptNtfsExt4 {
        disk: &source,
        disk_size: scale.disk_size,
        ntfs_mib: scale.ntfs_mib,
        ext4_mib: scale.ext4_mib,
        ntfs_tree: &tree("ntfs"),
        ext4_tree: &tree("ext4"),
        work: &dir.join("work"),
    }
    .build();
    for name in ["ntfs", "ext4"] {
        std::fs::remove_dir_all(tree(name)).unwrap();
    }
    run(&mut Command::new("sync"));
    let allocated = std::fs::metadata(&source).unwrap().blocks() * 512;
    eprintln!(
        "source.raw built: {} MiB written; backing up",
        allocated >> 20
    );

    // vmback.
    let repo = dir.join("repo-vmback");
    run(Command::new(vmback).arg("init").arg(&repo));
    let t = Instant::now();
    run(Command::new(vmback)
        .arg("backup")
        .arg(&repo)
        .args(["--vm", VM])
        .arg(&source));
    eprintln!("vmback backup: {:.1}s", t.elapsed().as_secs_f64());
    let o = run(Command::new(vmback)
        .arg("snapshots")
        .arg(&repo)
        .args(["--vm", VM, "--json"]));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rp = list[0]["name"]
        .as_str()
        .expect("a restore point")
        .to_string();

    // The peers back up the image file as a user would: one path, here a hard link.
    let src_dir = dir.join("peer-src");
    std::fs::create_dir_all(&src_dir).unwrap();
    std::fs::hard_link(&source, src_dir.join(PEER_FILE)).unwrap();
    run(restic(dir).args(["init", "--repository-version", "2"]));
    let t = Instant::now();
    run(restic(dir)
        .args(["backup", "-q"])
        .arg(src_dir.join(PEER_FILE)));
    eprintln!("restic backup: {:.1}s", t.elapsed().as_secs_f64());
    run(borg(dir)
        .args(["init", "-e", "none"])
        .arg(dir.join("repo-borg")));
    let t = Instant::now();
    run(borg(dir)
        .args(["create", "--compression", "zstd,3"])
        .arg(format!("{}::disk", dir.join("repo-borg").display()))
        .arg(PEER_FILE));
    eprintln!("borg backup: {:.1}s", t.elapsed().as_secs_f64());

    serde_json::json!({
        "deep_p1": deep[0],
        "deep_p2": deep[1],
        "seq": seq_sha,
        "many": many_sha,
        "many_files": scale.many_files,
        "many_bytes": many_bytes,
        "source_sha": sha256_file(&source),
        "allocated": allocated,
        "rp": rp,
        "trees": Value::Object(trees),
    })
}

fn restic(dir: &Path) -> Command {
    let mut c = Command::new("restic");
    c.env("RESTIC_PASSWORD", "bench")
        .env("RESTIC_CACHE_DIR", dir.join("restic-cache"))
        .arg("-r")
        .arg(dir.join("repo-restic"));
    c
}

fn borg(dir: &Path) -> Command {
    let mut c = Command::new("borg");
    c.env("BORG_BASE_DIR", dir.join("borg-home"))
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .current_dir(dir.join("peer-src"));
    c
}

/// xorshift64: seeded bytes, fast enough for a GiB.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let b = self.next().to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
    fn text(&mut self, buf: &mut [u8]) {
        let mut line = String::new();
        let mut i = 0;
        while i < buf.len() {
            line.clear();
            let n = self.next();
            line.push_str(&format!(
                "{} host{:02} svc[{}]: request {} took {} ms status {}\n",
                1_700_000_000 + (n % 30_000_000),
                n % 12,
                n % 997,
                n % 100_000,
                n % 5000,
                [200, 200, 200, 404, 500][(n % 5) as usize]
            ));
            let k = line.len().min(buf.len() - i);
            buf[i..i + k].copy_from_slice(&line.as_bytes()[..k]);
            i += k;
        }
    }
    /// 4 KiB pages: 40% random, 30% text-like, 15% mostly zero, 15% table records.
    fn mixed(&mut self, buf: &mut [u8]) {
        for page in buf.chunks_mut(4096) {
            match self.next() % 100 {
                0..40 => self.random(page),
                40..70 => self.text(page),
                70..85 => {
                    // Mostly zero, but no all-zero 1 KiB block: mke2fs -d would leave
                    // it a hole, and TSK 4.11's icat fails on ext4 files with holes.
                    page.fill(0);
                    for b in page.iter_mut().step_by(1024) {
                        *b = 0x5a;
                    }
                    for _ in 0..16 {
                        let at = (self.next() % page.len() as u64) as usize;
                        page[at] = self.next() as u8;
                    }
                }
                _ => {
                    let mut rec = [0u8; 16];
                    rec[..8].copy_from_slice(&self.next().to_le_bytes());
                    for (i, r) in page.chunks_mut(16).enumerate() {
                        rec[8..].copy_from_slice(&(i as u64).to_le_bytes());
                        r.copy_from_slice(&rec[..r.len()]);
                    }
                }
            }
        }
    }
}

/// sha256 over the sorted `relative path \0 sha256 \n` lines of every file under
/// `root`, and how many files there are.
fn tree_digest(root: &Path) -> String {
    tree_files(root).0
}

fn tree_files(root: &Path) -> (String, usize) {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_file() {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push(format!("{rel}\0{}\n", sha256_file(&p)));
            }
        }
    }
    let mut lines = Vec::new();
    if root.is_dir() {
        walk(root, root, &mut lines);
    }
    lines.sort();
    (sha256_bytes(lines.concat().as_bytes()), lines.len())
}

// ---------------------------------------------------------------------------------
// Mounts.

/// A FUSE mount served by a child process: unmounted (and the child reaped, killed if
/// it lingers) when dropped, so a panicking benchmark leaves no mount behind.
struct FuseMount {
    dir: PathBuf,
    child: Child,
    log: PathBuf,
}

impl FuseMount {
    /// Starts `cmd` (which must stay in the foreground and mount on `dir`).
    fn start(mut cmd: Command, dir: &Path, log: &Path) -> FuseMount {
        std::fs::create_dir_all(dir).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(log).unwrap()))
            .stderr(Stdio::from(
                File::create(log.with_extension("err")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        FuseMount {
            dir: dir.to_path_buf(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// Polls until `path` exists (stat every millisecond); panics with the mount
    /// command's output when it exits first or after a minute.
    fn wait_for(&mut self, path: &Path) {
        let t = Instant::now();
        loop {
            if path.exists() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "mount command exited ({st}) before {} appeared: {}",
                    path.display(),
                    std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
                );
            }
            if t.elapsed() > Duration::from_secs(120) {
                panic!("{} did not appear within 2 minutes", path.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tools whose mounts are compared.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Vmback,
    Restic,
    Borg,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Vmback => "vmback mount",
            Tool::Restic => "restic mount + TSK",
            Tool::Borg => "borg mount + TSK",
        }
    }
}

const TOOLS: [Tool; 3] = [Tool::Vmback, Tool::Restic, Tool::Borg];

/// Samples of one measurement and its check.
#[derive(Default)]
struct Samples {
    secs: Vec<f64>,
    check: Option<bool>,
}

impl Samples {
    fn median(&self) -> f64 {
        median(&mut self.secs.clone())
    }
    fn best(&self) -> f64 {
        best_median(&mut self.secs.clone()).0
    }
    fn record(&mut self, ok: bool) {
        self.check = Some(self.check.unwrap_or(true) && ok);
    }
}

impl Bench {
    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Where copied trees land: a tmpfs (`/dev/shm`) when it has room for a few
    /// copies, so every tool pays the same small cost to write them and the timing is
    /// of the read side. On ext4, the creates that follow the removal of the previous
    /// copy scan the recently deleted inodes (the kernel's `recently_deleted`), which
    /// made each repetition slower than the last (local `cp -r` of the tree: 0.46,
    /// 0.95, 2.94 s in a row).
    fn copy_out(&self) -> PathBuf {
        let shm = Path::new("/dev/shm");
        let room = rustix::fs::statvfs(shm)
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
            .unwrap_or(0);
        if room > 4 * self.facts.many_bytes {
            shm.join(format!("vmback-bench-copy-{}", std::process::id()))
        } else {
            self.out()
        }
    }

    /// Starts a cold run: drop the page cache, or evict the data files of the source
    /// and the repositories; with VMBACK_BENCH_WARM=1 nothing.
    fn cold(&self) {
        match self.cache {
            Cache::Dropped => {
                drop_caches();
            }
            Cache::Evicted => {
                run(&mut Command::new("sync"));
                for p in [
                    "source.raw",
                    "repo-vmback",
                    "repo-restic",
                    "restic-cache",
                    "repo-borg",
                    "borg-home",
                ] {
                    evict(&self.dir.join(p));
                }
            }
            Cache::Warm => {}
        }
    }

    /// Starts `tool`'s mount on `mnt()`; returns the guard and the path at which the
    /// guest disk (vmback: the restore point directory) appears.
    fn mount(&self, tool: Tool) -> (FuseMount, PathBuf) {
        let mnt = self.mnt();
        let log = self.dir.join("mount.log");
        match tool {
            Tool::Vmback => {
                let mut c = Command::new(&self.vmback);
                c.arg("mount")
                    .arg(self.dir.join("repo-vmback"))
                    .arg(&mnt)
                    .args(["--vm", VM, "--snapshot", &self.facts.rp]);
                let m = FuseMount::start(c, &mnt, &log);
                (m, mnt.join(VM).join(&self.facts.rp).join("disk0"))
            }
            Tool::Restic => {
                let mut c = restic(&self.dir);
                c.arg("mount").arg(&mnt);
                let m = FuseMount::start(c, &mnt, &log);
                let inside = self.dir.join("peer-src").join(PEER_FILE);
                let rel = inside.strip_prefix("/").unwrap();
                (m, mnt.join("snapshots/latest").join(rel))
            }
            Tool::Borg => {
                let mut c = borg(&self.dir);
                c.args(["mount", "-f"])
                    .arg(format!("{}::disk", self.dir.join("repo-borg").display()))
                    .arg(&mnt);
                let m = FuseMount::start(c, &mnt, &log);
                (m, mnt.join(PEER_FILE))
            }
        }
    }

    /// The inode of `path` in partition `part` of `image` (ifind -n).
    fn ifind(&self, image: &Path, part: usize, path: &str) -> String {
        let o = run(Command::new("ifind")
            .args(["-n", path, "-o", &self.sectors[part].to_string()])
            .arg(image));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// 1. Time to first file.
    fn first_file(&mut self) {
        let mut res: Vec<[Samples; 2]> = TOOLS.iter().map(|_| Default::default()).collect();
        for rep in 0..REPS {
            eprintln!("time to first file, repetition {}/{REPS}", rep + 1);
            for (ti, &tool) in TOOLS.iter().enumerate() {
                for (pi, part) in PARTS.iter().enumerate() {
                    self.cold();
                    let t = Instant::now();
                    let (mut m, base) = self.mount(tool);
                    let bytes = match tool {
                        Tool::Vmback => {
                            let p = base.join(part.vol).join(DEEP);
                            m.wait_for(&p);
                            std::fs::read(&p).unwrap()
                        }
                        _ => {
                            m.wait_for(&base);
                            let inode = self.ifind(&base, pi, DEEP);
                            run(Command::new("icat")
                                .args(["-o", &self.sectors[pi].to_string()])
                                .arg(&base)
                                .arg(&inode))
                            .stdout
                        }
                    };
                    let same = sha256_bytes(&bytes) == self.facts.deep[pi];
                    let secs = t.elapsed().as_secs_f64();
                    drop(m);
                    let s = &mut res[ti][pi];
                    s.secs.push(secs);
                    s.record(same);
                    self.ok &= same;
                }
            }
        }
        println!();
        println!("1. time to first file: mount command started -> {DEEP} read and its sha256 checked; seconds, median / best of {REPS}, cold");
        println!(
            "{:<22} {:>17} {:>17} {:>12} {:>12}  check",
            "",
            format!("{} {}", PARTS[0].vol, PARTS[0].fs),
            format!("{} {}", PARTS[1].vol, PARTS[1].fs),
            "vmback/peer",
            "peer/vmback"
        );
        let v: Vec<f64> = res[0].iter().map(Samples::median).collect();
        let mut worst_factor = f64::INFINITY;
        for (ti, &tool) in TOOLS.iter().enumerate() {
            let r = &res[ti];
            let ratio = if tool == Tool::Vmback {
                (String::new(), String::new())
            } else {
                let q: Vec<f64> = (0..2).map(|p| v[p] / r[p].median()).collect();
                let f: Vec<f64> = (0..2).map(|p| r[p].median() / v[p]).collect();
                worst_factor = worst_factor.min(f[0]).min(f[1]);
                (
                    format!("{:.3} {:.3}", q[0], q[1]),
                    format!("{:.0}x {:.0}x", f[0], f[1]),
                )
            };
            let checks = r
                .iter()
                .map(|s| check_str(s.check))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "{:<22} {:>8.3} / {:>6.3} {:>8.3} / {:>6.3} {:>12} {:>12}  sha256 {checks}",
                tool.label(),
                r[0].median(),
                r[0].best(),
                r[1].median(),
                r[1].best(),
                ratio.0,
                ratio.1,
            );
        }
        if let Some(f) = self.guestmount_row(&v) {
            worst_factor = worst_factor.min(f);
        }
        let worst = v[0].max(v[1]);
        println!(
            "target: vmback under {TTFF_TARGET} s ({:.3} s): {};  >= {TTFF_FACTOR:.0}x faster than every peer (slowest factor {:.1}x): {}",
            worst,
            verdict(worst < TTFF_TARGET),
            worst_factor,
            verdict(worst_factor >= TTFF_FACTOR)
        );
    }

    /// guestmount on the source image, when libguestfs is installed; prints its row
    /// against vmback's medians `v` and returns the smaller of its two factors.
    fn guestmount_row(&mut self, v: &[f64]) -> Option<f64> {
        if !have("guestmount") {
            println!(
                "{:<22} skipped: guestmount (libguestfs-tools) is not installed",
                "guestmount"
            );
            return None;
        }
        let mut res: [Samples; 2] = Default::default();
        for _ in 0..REPS {
            for (pi, r) in res.iter_mut().enumerate() {
                self.cold();
                let mnt = self.mnt();
                let t = Instant::now();
                let mut c = Command::new("guestmount");
                c.args(["--ro", "--no-fork", "-a"])
                    .arg(self.dir.join("source.raw"))
                    .args(["-m", &format!("/dev/sda{}", pi + 1)])
                    .arg(&mnt);
                let mut m = FuseMount::start(c, &mnt, &self.dir.join("mount.log"));
                let p = mnt.join(DEEP);
                m.wait_for(&p);
                let same = sha256_bytes(&std::fs::read(&p).unwrap()) == self.facts.deep[pi];
                r.secs.push(t.elapsed().as_secs_f64());
                r.record(same);
                self.ok &= same;
            }
        }
        let m = [res[0].median(), res[1].median()];
        println!(
            "{:<22} {:>8.3} / {:>6.3} {:>8.3} / {:>6.3} {:>12} {:>12}  sha256 {} {}",
            "guestmount (image)",
            m[0],
            res[0].best(),
            m[1],
            res[1].best(),
            format!("{:.3} {:.3}", v[0] / m[0], v[1] / m[1]),
            format!("{:.0}x {:.0}x", m[0] / v[0], m[1] / v[1]),
            check_str(res[0].check),
            check_str(res[1].check),
        );
        Some((m[0] / v[0]).min(m[1] / v[1]))
    }

    /// 2a. Sequential read of the large guest file, cold (fresh mount) and warm.
    fn sequential(&mut self) {
        let size = self.scale.seq_bytes;
        let mut cold: Vec<Samples> = TOOLS.iter().map(|_| Samples::default()).collect();
        let mut warm: Vec<Samples> = TOOLS.iter().map(|_| Samples::default()).collect();
        for rep in 0..REPS {
            eprintln!("sequential read, repetition {}/{REPS}", rep + 1);
            for (ti, &tool) in TOOLS.iter().enumerate() {
                let (mut m, base) = self.mount(tool);
                // Readiness and the inode lookup are not timed here (part 1 times them).
                let read = |hash: bool| -> (f64, u64, Option<String>) {
                    match tool {
                        Tool::Vmback => {
                            let p = base.join("p2").join(SEQ);
                            let t = Instant::now();
                            let n = read_all(&mut File::open(&p).unwrap(), None);
                            let secs = t.elapsed().as_secs_f64();
                            (secs, n, hash.then(|| sha256_file(&p)))
                        }
                        _ => {
                            let inode = self.ifind(&base, 1, SEQ);
                            let t = Instant::now();
                            let mut child = Command::new("icat")
                                .args(["-o", &self.sectors[1].to_string()])
                                .arg(&base)
                                .arg(&inode)
                                .stdout(Stdio::piped())
                                .spawn()
                                .unwrap();
                            let mut h = hash.then(sha2_hasher);
                            let n = read_all(child.stdout.as_mut().unwrap(), h.as_mut());
                            assert!(child.wait().unwrap().success(), "icat failed");
                            let secs = t.elapsed().as_secs_f64();
                            (secs, n, h.map(sha2_finish))
                        }
                    }
                };
                match tool {
                    Tool::Vmback => m.wait_for(&base.join("p2").join(SEQ)),
                    _ => m.wait_for(&base),
                }
                self.cold();
                let (secs, n, _) = read(false);
                cold[ti].secs.push(secs);
                cold[ti].record(n == size);
                let (secs, n, _) = read(false);
                warm[ti].secs.push(secs);
                warm[ti].record(n == size);
                if rep == 0 {
                    // Checked on an extra, untimed pass (hashing would slow the read).
                    let (_, n, sha) = read(true);
                    let same = n == size && sha.as_deref() == Some(self.facts.seq.as_str());
                    warm[ti].record(same);
                    self.ok &= same;
                }
                drop(m);
            }
        }
        println!();
        println!(
            "2. sequential read of p2/{SEQ} ({} MiB): cold = fresh mount + cold cache, warm = again in the same mount; median of {REPS}",
            size >> 20
        );
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13}  check",
            "", "cold s", "cold MB/s", "warm s", "warm MB/s", "cold v/peer", "warm v/peer"
        );
        let mb = size as f64 / 1e6;
        for (ti, &tool) in TOOLS.iter().enumerate() {
            let (c, w) = (cold[ti].median(), warm[ti].median());
            let ratios = if tool == Tool::Vmback {
                (String::new(), String::new())
            } else {
                (
                    format!("{:.3}", cold[0].median() / c),
                    format!("{:.3}", warm[0].median() / w),
                )
            };
            println!(
                "{:<22} {:>9.2} {:>9.0} {:>9.2} {:>9.0} {:>13} {:>13}  {}",
                match tool {
                    Tool::Vmback => "vmback mount: read",
                    Tool::Restic => "restic mount + icat",
                    Tool::Borg => "borg mount + icat",
                },
                c,
                mb / c,
                w,
                mb / w,
                ratios.0,
                ratios.1,
                if cold[ti].check == Some(true) && warm[ti].check == Some(true) {
                    "sha256 ok"
                } else {
                    "FAILED"
                }
            );
        }
    }

    /// 2b. `cp -r` of the many-file tree out of the vmback mount; the peers'
    /// `tsk_recover -a -d INODE` of the same directory from the image in their mount.
    fn copy_tree(&mut self) {
        let n = self.facts.many_files;
        let mut res: Vec<[Samples; 2]> = TOOLS.iter().map(|_| Default::default()).collect();
        for rep in 0..REPS {
            eprintln!("tree copy, repetition {}/{REPS}", rep + 1);
            for (ti, &tool) in TOOLS.iter().enumerate() {
                let (mut m, base) = self.mount(tool);
                let out = self.copy_out();
                let inode = match tool {
                    Tool::Vmback => {
                        m.wait_for(&base.join("p1").join(MANY));
                        None
                    }
                    _ => {
                        m.wait_for(&base);
                        Some(self.ifind(&base, 0, MANY))
                    }
                };
                self.cold();
                for (warm, s) in res[ti].iter_mut().enumerate() {
                    let _ = std::fs::remove_dir_all(&out);
                    std::fs::create_dir_all(&out).unwrap();
                    run(&mut Command::new("sync"));
                    if warm == 0 {
                        self.cold();
                    }
                    let t = Instant::now();
                    let copied = match &inode {
                        None => {
                            run(Command::new("cp")
                                .arg("-r")
                                .arg(base.join("p1").join(MANY))
                                .arg(&out));
                            out.join("many")
                        }
                        Some(inode) => {
                            let dst = out.join("many");
                            run(Command::new("tsk_recover")
                                .args(["-a", "-o", &self.sectors[0].to_string(), "-d", inode])
                                .arg(&base)
                                .arg(&dst));
                            dst
                        }
                    };
                    s.secs.push(t.elapsed().as_secs_f64());
                    if rep == 0 {
                        let (digest, files) = tree_files(&copied);
                        let same = digest == self.facts.many && files == n;
                        if !same {
                            eprintln!(
                                "{}: copied tree differs ({files} files, digest {digest})",
                                tool.label()
                            );
                        }
                        s.record(same);
                        self.ok &= same;
                    }
                }
                let _ = std::fs::remove_dir_all(&out);
                drop(m);
            }
        }
        println!();
        println!(
            "   copy of p1/{MANY} ({n} files, {:.1} MiB) out of the mount into {}: vmback cp -r, peers tsk_recover -a -d INODE (inode found beforehand); median of {REPS}",
            self.facts.many_bytes as f64 / MIB as f64,
            self.copy_out().parent().map_or(String::new(), |p| p.display().to_string())
        );
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13}  check",
            "", "cold s", "files/s", "warm s", "files/s", "cold v/peer", "warm v/peer"
        );
        for (ti, &tool) in TOOLS.iter().enumerate() {
            let r = &res[ti];
            let (c, w) = (r[0].median(), r[1].median());
            let ratios = if tool == Tool::Vmback {
                (String::new(), String::new())
            } else {
                (
                    format!("{:.3}", res[0][0].median() / c),
                    format!("{:.3}", res[0][1].median() / w),
                )
            };
            println!(
                "{:<22} {:>9.2} {:>9.0} {:>9.2} {:>9.0} {:>13} {:>13}  {}",
                match tool {
                    Tool::Vmback => "vmback mount: cp -r",
                    Tool::Restic => "restic + tsk_recover",
                    Tool::Borg => "borg + tsk_recover",
                },
                c,
                n as f64 / c,
                w,
                n as f64 / w,
                ratios.0,
                ratios.1,
                if r[0].check == Some(true) && r[1].check == Some(true) {
                    "every file's sha256 ok"
                } else {
                    "FAILED"
                }
            );
        }
    }

    /// 3. Export to every container format against qemu-img convert.
    fn export(&mut self) {
        let source = self.dir.join("source.raw");
        let repo = self.dir.join("repo-vmback");
        let out = self.out();
        std::fs::create_dir_all(&out).unwrap();
        let reps: usize = std::env::var("VMBACK_BENCH_EXPORT_REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(REPS);
        println!();
        println!("3. export to each format: vmback from the restore point (rp) and from the source image (img) vs qemu-img convert of the source image + sync of its output; seconds, median / best of {reps}, cold; out = allocated MiB of the output");
        println!(
            "{:<22} {:>15} {:>15} {:>15} {:>7} {:>7} {:>6} {:>6} {:>6}  {:<14} target",
            "format",
            "vmback rp",
            "vmback img",
            "qemu-img",
            "rp/q",
            "img/q",
            "out rp",
            "img",
            "q",
            "qemu-img compare"
        );
        let only: Option<Vec<String>> = std::env::var("VMBACK_BENCH_EXPORT_FORMATS")
            .ok()
            .map(|s| s.split(',').map(str::to_string).collect());
        for t in &TARGETS {
            if only.as_ref().is_some_and(|o| {
                !o.iter()
                    .any(|f| f == t.format || Some(f.as_str()) == t.subformat)
            }) {
                continue;
            }
            let mut res: [Samples; 3] = Default::default();
            let mut alloc = [0u64; 3];
            for rep in 0..reps {
                eprintln!("export {}, repetition {}/{reps}", t.label, rep + 1);
                for k in 0..3 {
                    let which = (k + rep) % 3;
                    let file = out.join(format!("out{which}.{}", t.format));
                    let _ = std::fs::remove_file(&file);
                    run(&mut Command::new("sync"));
                    self.cold();
                    let started = Instant::now();
                    match which {
                        0 | 1 => {
                            let mut c = Command::new(&self.vmback);
                            c.arg("export");
                            if which == 0 {
                                c.arg(&repo).arg(format!("{VM}/{}/disk0", self.facts.rp));
                            } else {
                                c.arg(&source);
                            }
                            c.args(["--format", t.format]);
                            if let Some(s) = t.subformat {
                                c.args(["--subformat", s]);
                            }
                            run(c.arg("--force").arg("-o").arg(&file));
                        }
                        _ => {
                            let mut c = Command::new("qemu-img");
                            c.args(["convert", "-f", "raw", "-O", t.qemu_format]);
                            if let Some(s) = t.subformat {
                                c.args(["-o", &format!("subformat={s}")]);
                            }
                            run(c.arg(&source).arg(&file));
                            run(Command::new("sync").arg(&file));
                        }
                    }
                    res[which].secs.push(started.elapsed().as_secs_f64());
                    alloc[which] = std::fs::metadata(&file).unwrap().blocks() * 512;
                    if rep == 0 {
                        let o = Command::new("qemu-img")
                            .args(["compare", "-f", "raw", "-F", t.qemu_format])
                            .arg(&source)
                            .arg(&file)
                            .output()
                            .unwrap();
                        let same = o.status.success();
                        if !same {
                            eprintln!(
                                "qemu-img compare {} {}: {}{}",
                                source.display(),
                                file.display(),
                                String::from_utf8_lossy(&o.stdout),
                                String::from_utf8_lossy(&o.stderr)
                            );
                        }
                        res[which].record(same);
                        self.ok &= same;
                    }
                    let _ = std::fs::remove_file(&file);
                }
            }
            let (rp, img, q) = (res[0].median(), res[1].median(), res[2].median());
            let target = if t.stream {
                format!("faster than qemu-img: {}", verdict(rp < q && img < q))
            } else {
                format!("<= 1.0: {}", verdict(rp / q <= 1.0 && img / q <= 1.0))
            };
            println!(
                "{:<22} {:>7.2} / {:>5.2} {:>7.2} / {:>5.2} {:>7.2} / {:>5.2} {:>7.3} {:>7.3} {:>6} {:>6} {:>6}  {:<16} {target}",
                t.label,
                rp,
                res[0].best(),
                img,
                res[1].best(),
                q,
                res[2].best(),
                rp / q,
                img / q,
                alloc[0] >> 20,
                alloc[1] >> 20,
                alloc[2] >> 20,
                res.iter()
                    .map(|s| check_str(s.check))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
        println!("qemu-img compare: the first output of each (rp img q) against the source image");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Reads `r` to its end in 1 MiB pieces (hashing if asked); returns the byte count.
fn read_all(r: &mut dyn Read, mut h: Option<&mut sha2::Sha256>) -> u64 {
    use sha2::Digest;
    let mut buf = vec![0u8; MIB as usize];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            return n;
        }
        if let Some(h) = h.as_mut() {
            h.update(&buf[..k]);
        }
        n += k as u64;
    }
}

fn sha2_hasher() -> sha2::Sha256 {
    use sha2::Digest;
    sha2::Sha256::new()
}

fn sha2_finish(h: sha2::Sha256) -> String {
    use sha2::Digest;
    format!("{:x}", h.finalize())
}

/// Evicts every regular file under `path` from the page cache (posix_fadvise
/// DONTNEED; clean pages only, so sync first). Symlinks are not followed.
fn evict(path: &Path) {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return;
    };
    if md.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            evict(&e.path());
        }
    } else if md.is_file() {
        if let Ok(f) = File::open(path) {
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

fn print_header(b: &Bench) {
    let s = b.scale;
    println!(
        "{} vs {} vs {} vs {}; TSK {}; {}",
        tool_version(b.vmback.to_str().unwrap(), "--version"),
        tool_version("restic", "version"),
        tool_version("borg", "--version"),
        tool_version("qemu-img", "--version"),
        tool_version("icat", "-V"),
        tool_version("fusermount3", "-V"),
    );
    println!(
        "{} cores, nice {}, load average at start {}; cache: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nice(),
        load_average(),
        match b.cache {
            Cache::Dropped => "cold runs start after drop_caches",
            Cache::Evicted =>
                "drop_caches not permitted here: cold runs start after sync + posix_fadvise(DONTNEED) on every file of the source image and the repositories (dentries and inodes stay cached)",
            Cache::Warm => "warm (VMBACK_BENCH_WARM=1: nothing dropped)",
        }
    );
    let f = &b.facts;
    let tree = |n: &str| {
        format!(
            "{} {} files {} MiB",
            n,
            f.trees[n]["files"],
            f.trees[n]["bytes"].as_u64().unwrap_or(0) >> 20
        )
    };
    println!(
        "disk ({} scale): {} raw, GPT, p1 NTFS {} MiB + p2 ext4 {} MiB, {} MiB written ({:.0}%); {} + {MANY} ({} files), {} + {SEQ} ({} MiB); {DEEP} on both; sha256 {}",
        s.name,
        s.disk_size,
        s.ntfs_mib,
        s.ext4_mib,
        f.allocated >> 20,
        100.0 * f.allocated as f64 / parse_g(s.disk_size) as f64,
        tree("ntfs"),
        f.many_files,
        tree("ext4"),
        s.seq_bytes >> 20,
        &f.source_sha[..16]
    );
    let du = |p: &str| {
        let o = run(Command::new("du").arg("-sb").arg(b.dir.join(p)));
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            >> 20
    };
    println!(
        "repositories (one backup each): vmback {} MiB (restore point {VM}/{}), restic {} MiB, borg {} MiB",
        du("repo-vmback"),
        f.rp,
        du("repo-restic"),
        du("repo-borg")
    );
}

fn parse_g(s: &str) -> u64 {
    s.trim_end_matches('G').parse::<u64>().unwrap_or(1) << 30
}

fn check_str(c: Option<bool>) -> &'static str {
    match c {
        Some(true) => "ok",
        Some(false) => "FAILED",
        None => "-",
    }
}
