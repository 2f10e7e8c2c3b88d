//! Backup benchmark (issue 4): `vmback backup` against restic and borg, side by side
//! in one run, on a 4 GiB VM disk and its next day; plus the chunk size choice and
//! peak memory on a 100 GiB sparse disk.
//!
//!   cargo bench --bench backup            (or VMBACK_BENCH=1 target/.../backup-*)
//!
//! A program, not a test: it takes 10-20 minutes and ~12 GiB of disk for its disks,
//! plus ~8 GiB per repetition for the repositories it keeps until the end (see
//! `Bench::retire`), so it refuses to run unless started by `cargo bench` (which
//! passes `--bench`) or with VMBACK_BENCH=1. Needs root (ntfs-3g FUSE mount, loop
//! devices), sgdisk, mkntfs, ntfs-3g, mke2fs, losetup, qemu-img, qemu-nbd, python3,
//! restic, borg, /usr/bin/time.
//!
//! The disks (built once, kept in `$VMBACK_BENCH_DIR`, default
//! `<target>/tmp/bench-backup`, rebuilt when [`RECIPE`] changes):
//! - `day0.raw`: 4 GiB sparse raw, GPT (sgdisk) with p1 NTFS (2 GiB, mkntfs -Q, files
//!   written through an ntfs-3g FUSE mount) and p2 ext4 (1900 MiB, mke2fs -d), built
//!   by `support::GptNtfsExt4` from trees that `backup_data.py tree` generates:
//!   text-like, executable-like and random files, a few large ones (a mailbox, a
//!   database, videos, an installer present on both partitions), 6% duplicates.
//!   About 60% of the disk is written, the rest is never written (holes).
//! - `day1.raw`: a copy of day 0 whose filesystems were mounted (ntfs-3g and the
//!   kernel's ext4, each on a loop device over its partition, noatime) and changed by
//!   `backup_data.py day1`: 1-2% of the files appended to, rewritten or new, database
//!   pages rewritten in place, logs appended.
//! - The forms change tracking needs: `changes.json` (the 64 KiB blocks that differ
//!   between day 0 and day 1, as a hypervisor's CBT reports them); `diff.qcow2`
//!   (day 0 frozen under an overlay holding only the day-1 differences: created on
//!   day1.raw, then `qemu-img rebase -b day0.raw`); `live0.qcow2` / `live1.qcow2` (a
//!   qcow2 over day0.raw with the persistent dirty bitmap b0, before and after the
//!   day-1 writes were committed through QEMU's block layer: DESIGN.md's recipe,
//!   exported by `qemu-nbd -B b0`). The overlays keep day0.raw as their base instead
//!   of a converted copy, which saves 5 GiB of disk and gives the same bitmap.
//! - `big.raw` / `big.qcow2`: 100 GiB sparse with a few MiB written (memory).
//!
//! Runs, each timed (wall clock) with its peak RSS (`/usr/bin/time -f %M`), the page
//! cache dropped before each when /proc/sys/vm/drop_caches is writable (the header
//! says which), `VMBACK_BENCH_REPS` times (default 3; medians reported):
//! - vmback (256 KiB chunks, the default): full backup of day0.raw; then, each in a hard-linked copy
//!   of that repository (objects are immutable), the day-1 incremental by
//!   differencing (diff.qcow2), changed extents (day1.raw + changes.json) and the
//!   fallback (day1.raw, no tracking: read everything, store new chunks); the dirty
//!   bitmap in its own repository (full from live0, incremental from live1, both over
//!   NBD, as the bitmap must have been tracking since the full);
//! - restic 0.14 (`--repository-version 2`, default `auto` compression, which is
//!   zstd) and borg 1.2 (`-e none`, `--compression zstd,3` to match vmback's level,
//!   default buzhash chunker): day0 then day1 as the same path (a hard link), so the
//!   second run dedups against the first;
//! - vmback full + differencing incremental with 256 KiB, 512 KiB, 1 MiB and 4 MiB
//!   chunks.
//!
//! Checks (first repetition): every vmback restore point exports to the sha256 of its
//! source; `restic dump` and `borg extract --stdout` of day 1 give day 1's sha256;
//! `vmback verify --read-data` passes. Repository sizes are `du -sb` after both days.
//! `VMBACK_BENCH_PREPARE=1` only builds the disks; `VMBACK_BENCH_WARM=1` keeps the
//! page cache. On a machine shared with other work, wall times stretch; the CPU
//! seconds reported beside them do not, and `nice -n -10 cargo bench ...` (the header
//! shows the nice value; every tool inherits it) gives the tools most of the CPU.

mod support;
use support::*;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bumped whenever the disks' recipe changes (cached images are rebuilt).
const RECIPE: &str = "v1";
const MIB: u64 = 1 << 20;
const DISK_SIZE: &str = "4G";
const NTFS_MIB: u64 = 2048;
const EXT4_MIB: u64 = 1900;
/// File bytes generated per partition (~60% of the disk written in all).
const NTFS_FILES: u64 = 1400 * MIB;
const EXT4_FILES: u64 = 1000 * MIB;
/// The granularity of a hypervisor's changed-block tracking (and of QEMU's bitmaps).
const CBT_BLOCK: usize = 64 << 10;
const VM: &str = "web01";
const DEFAULT_CHUNK: &str = "256KiB";
const CHUNK_SIZES: [&str; 4] = ["256KiB", "512KiB", "1MiB", "4MiB"];
const MEMORY_TARGET: u64 = 256 * MIB;
/// Free disk below which finished repositories are deleted at once (see
/// [`Bench::retire`]); keeping them all takes ~8 GiB per repetition.
const KEEP_FREE: u64 = 4 << 30;

/// One change-tracking method of the incremental.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Method {
    Differencing,
    ChangedExtents,
    DirtyBitmap,
    Fallback,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Differencing => "differencing",
            Method::ChangedExtents => "changed-extents",
            Method::DirtyBitmap => "dirty-bitmap",
            Method::Fallback => "fallback",
        }
    }
}

/// What one timed command did.
struct Run {
    secs: f64,
    /// Peak resident set size, bytes.
    rss: u64,
    /// User + system CPU seconds (unlike wall time, not stretched by other load).
    cpu: f64,
    stdout: Vec<u8>,
}

/// All repetitions of one measurement, plus the figures of the last one.
#[derive(Default)]
struct Samples {
    secs: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<u64>,
    read: Option<u64>,
    new: Option<u64>,
    stored: Option<u64>,
    /// Repository size after each run (du -sb); restic's differ between runs, as
    /// each repository gets its own random chunker polynomial.
    repos: Vec<u64>,
    detail: String,
    check: Option<bool>,
}

impl Samples {
    fn median(&self) -> f64 {
        let mut v = self.secs.clone();
        median(&mut v)
    }
    fn cpu(&self) -> f64 {
        let mut v = self.cpu.clone();
        median(&mut v)
    }
    fn best(&self) -> f64 {
        let mut v = self.secs.clone();
        best_median(&mut v).0
    }
    /// Median repository size.
    fn repo(&self) -> Option<u64> {
        let mut v = self.repos.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
    fn max_rss(&self) -> u64 {
        self.rss.iter().copied().max().unwrap_or(0)
    }
}

struct Bench {
    dir: PathBuf,
    runs: PathBuf,
    vmback: PathBuf,
    cold: bool,
    results: BTreeMap<String, Samples>,
    ok: bool,
    /// Whether little free disk made [`Bench::retire`] delete repositories mid-run.
    deleted_early: bool,
}

fn main() {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("VMBACK_BENCH").as_deref() == Ok("1");
    if !asked {
        eprintln!(
            "backup benchmark skipped: it is a program, not a test (minutes, GiBs of disk); \
             run it with `cargo bench --bench backup`"
        );
        return;
    }
    for tool in [
        "sgdisk", "mkntfs", "ntfs-3g", "mke2fs", "losetup", "qemu-img", "qemu-nbd", "python3",
        "restic", "borg",
    ] {
        if !have(tool) {
            eprintln!("backup benchmark: missing tool {tool}");
            std::process::exit(1);
        }
    }
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("backup benchmark: missing /usr/bin/time (apt-get install time)");
        std::process::exit(1);
    }
    let dir = std::env::var_os("VMBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-backup"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let reps: usize = std::env::var("VMBACK_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let facts = prepare(&dir);
    if std::env::var("VMBACK_BENCH_PREPARE").as_deref() == Ok("1") {
        return;
    }
    let cold = std::env::var("VMBACK_BENCH_WARM").as_deref() != Ok("1") && drop_caches();
    let mut b = Bench {
        runs: dir.join("runs"),
        dir,
        vmback: PathBuf::from(env!("CARGO_BIN_EXE_vmback")),
        cold,
        results: BTreeMap::new(),
        ok: true,
        deleted_early: false,
    };
    let _ = std::fs::remove_dir_all(&b.runs);
    std::fs::create_dir_all(&b.runs).unwrap();
    print_header(&b, &facts, reps);
    for rep in 0..reps {
        let check = rep == 0;
        eprintln!("repetition {}/{reps}", rep + 1);
        for cs in CHUNK_SIZES {
            b.vmback_file_methods(cs, check, &facts);
        }
        b.vmback_bitmap(check, &facts);
        b.restic(check, &facts);
        b.borg(check, &facts);
    }
    b.memory();
    let _ = std::fs::remove_dir_all(&b.runs);
    report(&b, &facts);
    println!("load average at the end {}", load_average());
    if !b.ok {
        eprintln!("backup benchmark: a check failed (see above)");
        std::process::exit(1);
    }
}

/// What the disks are, measured when they were built.
struct Facts {
    sha_day0: String,
    sha_day1: String,
    /// Allocated bytes of day0.raw (its written part).
    allocated: u64,
    /// Bytes in the 64 KiB blocks that differ between day 0 and day 1.
    changed: u64,
    changed_extents: usize,
    /// Bytes the qemu-img rebase overlay holds (should equal `changed`).
    overlay: u64,
    /// Day-0 trees and day-1 changes, as backup_data.py reported them.
    trees: Value,
    day1: Value,
}

/// Builds the disks unless the cached ones match [`RECIPE`]; returns their facts.
fn prepare(dir: &Path) -> Facts {
    let stamp = dir.join("RECIPE");
    let facts_file = dir.join("FACTS.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(RECIPE) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let t = Instant::now();
        let facts = build(dir);
        std::fs::write(&facts_file, serde_json::to_vec_pretty(&facts).unwrap()).unwrap();
        std::fs::write(&stamp, RECIPE).unwrap();
        eprintln!("disks built in {:.0}s", t.elapsed().as_secs_f64());
    }
    let v: Value = serde_json::from_slice(&std::fs::read(&facts_file).unwrap()).unwrap();
    Facts {
        sha_day0: v["sha_day0"].as_str().unwrap().to_string(),
        sha_day1: v["sha_day1"].as_str().unwrap().to_string(),
        allocated: v["allocated"].as_u64().unwrap(),
        changed: v["changed"].as_u64().unwrap(),
        changed_extents: v["changed_extents"].as_u64().unwrap() as usize,
        overlay: v["overlay"].as_u64().unwrap(),
        trees: v["trees"].clone(),
        day1: v["day1"].clone(),
    }
}

fn build(dir: &Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/backup_data.py");
    let day0 = dir.join("day0.raw");
    let day1 = dir.join("day1.raw");

    // Day 0.
    let mut trees = serde_json::Map::new();
    let tree = |name: &str| dir.join(format!("tree-{name}"));
    for (name, seed, bytes) in [("ntfs", 1, NTFS_FILES), ("ext4", 2, EXT4_FILES)] {
        let o = run(Command::new("python3")
            .arg(script)
            .arg("tree")
            .arg(tree(name))
            .args([name, &seed.to_string(), &bytes.to_string()]));
        trees.insert(name.into(), serde_json::from_slice(&o.stdout).unwrap());
    }
    let offsets = GptNtfsExt4 {
        disk: &day0,
        disk_size: DISK_SIZE,
        ntfs_mib: NTFS_MIB,
        ext4_mib: EXT4_MIB,
        ntfs_tree: &tree("ntfs"),
        ext4_tree: &tree("ext4"),
        work: &dir.join("work"),
    }
    .build();
    for name in ["ntfs", "ext4"] {
        std::fs::remove_dir_all(tree(name)).unwrap();
    }
    eprintln!(
        "day0.raw built: {}",
        trees_summary(&Value::Object(trees.clone()))
    );

    // Day 1: the same disk after a day of writes through the guest filesystems.
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&day0)
        .arg(&day1));
    let summary = {
        // noatime: walking the tree to pick files must not write access times; no lazy
        // inode table init, which would write zeroes all over the partition.
        let ntfs = Mounted::partition(
            &day1,
            offsets[0],
            NTFS_MIB * MIB,
            "ntfs",
            "noatime",
            &dir.join("mnt-ntfs"),
        );
        let ext4 = Mounted::partition(
            &day1,
            offsets[1],
            EXT4_MIB * MIB,
            "ext4",
            "noatime,noinit_itable",
            &dir.join("mnt-ext4"),
        );
        let o = run(Command::new("python3")
            .arg(script)
            .args(["day1", "3"])
            .arg(format!("ntfs={}", ntfs.dir.display()))
            .arg(format!("ext4={}", ext4.dir.display())));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let _ = std::fs::remove_dir(dir.join("mnt-ntfs"));
    let _ = std::fs::remove_dir(dir.join("mnt-ext4"));
    run(&mut Command::new("sync"));
    eprintln!("day1.raw built: {summary}");

    let extents = changed_blocks(&day0, &day1);
    let changed: u64 = extents.iter().map(|(_, l)| l).sum();
    let json: Vec<Value> = extents
        .iter()
        .map(|&(o, l)| serde_json::json!({"offset": o, "length": l}))
        .collect();
    std::fs::write(dir.join("changes.json"), Value::Array(json).to_string()).unwrap();

    // Differencing: day 0 frozen under an overlay holding only the day-1 differences.
    let qemu_img = |args: &[&str]| {
        run(Command::new("qemu-img").current_dir(dir).args(args));
    };
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "day1.raw",
        "-F",
        "raw",
        "diff.qcow2",
    ]);
    qemu_img(&["rebase", "-q", "-b", "day0.raw", "-F", "raw", "diff.qcow2"]);
    // Dirty bitmap: a qcow2 tracking writes in b0 since day 0; the day-1 differences
    // committed into it through QEMU's block layer, so b0 records exactly them.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "day0.raw",
        "-F",
        "raw",
        "live0.qcow2",
    ]);
    qemu_img(&["bitmap", "--add", "live0.qcow2", "b0"]);
    std::fs::copy(dir.join("live0.qcow2"), dir.join("live1.qcow2")).unwrap();
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "day1.raw", "-F", "raw", "ov.qcow2",
    ]);
    qemu_img(&[
        "rebase",
        "-q",
        "-b",
        "live1.qcow2",
        "-F",
        "qcow2",
        "ov.qcow2",
    ]);
    qemu_img(&["commit", "-q", "ov.qcow2"]);
    std::fs::remove_file(dir.join("ov.qcow2")).unwrap();
    for (a, b) in [
        ("day1.raw", "diff.qcow2"),
        ("day1.raw", "live1.qcow2"),
        ("day0.raw", "live0.qcow2"),
    ] {
        qemu_img(&["compare", "-q", a, b]);
    }
    let map =
        run(Command::new("qemu-img")
            .current_dir(dir)
            .args(["map", "--output=json", "diff.qcow2"]));
    let overlay: u64 = serde_json::from_slice::<Value>(&map.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();

    // Memory: 100 GiB sparse, a few MiB written at spread offsets.
    let big = dir.join("big.raw");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(100 << 30).unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut buf = vec![0u8; MIB as usize];
    for gib in [0u64, 1, 7, 33, 50, 64, 99] {
        for b in buf.chunks_mut(8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            b.copy_from_slice(&rng.to_le_bytes());
        }
        f.write_all_at(&buf, (gib << 30) + 12345 * 512).unwrap();
    }
    f.sync_all().unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "big.raw",
        "big.qcow2",
    ]);

    serde_json::json!({
        "sha_day0": sha256_file(&day0),
        "sha_day1": sha256_file(&day1),
        "allocated": std::fs::metadata(&day0).unwrap().blocks() * 512,
        "changed": changed,
        "changed_extents": extents.len(),
        "overlay": overlay,
        "trees": Value::Object(trees),
        "day1": summary,
    })
}

fn trees_summary(trees: &Value) -> String {
    ["ntfs", "ext4"]
        .iter()
        .map(|n| {
            format!(
                "{n} {} files {} MiB",
                trees[n]["files"],
                trees[n]["bytes"].as_u64().unwrap_or(0) >> 20
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 64 KiB blocks that differ between `a` and `b` (same size), merged into
/// `(offset, length)` extents.
fn changed_blocks(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let size = fa.metadata().unwrap().len();
    assert_eq!(size, fb.metadata().unwrap().len());
    let step = 16 << 20;
    let (mut ba, mut bb) = (vec![0u8; step], vec![0u8; step]);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(step as u64) as usize;
        fa.read_exact_at(&mut ba[..n], off).unwrap();
        fb.read_exact_at(&mut bb[..n], off).unwrap();
        for (i, (x, y)) in ba[..n]
            .chunks(CBT_BLOCK)
            .zip(bb[..n].chunks(CBT_BLOCK))
            .enumerate()
        {
            if x != y {
                let o = off + (i * CBT_BLOCK) as u64;
                match out.last_mut() {
                    Some((s, l)) if *s + *l == o => *l += x.len() as u64,
                    _ => out.push((o, x.len() as u64)),
                }
            }
        }
        off += n as u64;
    }
    out
}

/// A `qemu-nbd` serving one qcow2 image with a dirty bitmap, killed when dropped.
struct QemuNbd {
    child: std::process::Child,
    uri: String,
}

impl QemuNbd {
    fn start(dir: &Path, image: &Path, bitmap: &str) -> QemuNbd {
        let sock = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "-x", "disk", "-B", bitmap, "-k"])
            .arg(&sock)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-nbd");
        for _ in 0..400 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(sock.exists(), "qemu-nbd did not create {}", sock.display());
        QemuNbd {
            child,
            uri: format!("nbd+unix:///disk?socket={}", sock.display()),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    /// Runs `cmd` under `/usr/bin/time` (peak RSS), after dropping the page cache.
    fn timed(&self, cmd: &Command) -> Run {
        let rss_file = self.runs.join("rss.txt");
        let mut w = Command::new("/usr/bin/time");
        w.args(["-f", "%M %U %S", "-o"])
            .arg(&rss_file)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            w.current_dir(d);
        }
        if self.cold {
            drop_caches();
        }
        let t = Instant::now();
        let o = run(&mut w);
        let secs = t.elapsed().as_secs_f64();
        // The last line (a failing command would add one before it).
        let text = std::fs::read_to_string(&rss_file).unwrap();
        let f: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(f.len(), 3, "/usr/bin/time -f '%M %U %S' wrote {text:?}");
        Run {
            secs,
            rss: f[0] as u64 * 1024,
            cpu: f[1] + f[2],
            stdout: o.stdout,
        }
    }

    fn entry(&mut self, key: &str) -> &mut Samples {
        self.results.entry(key.to_string()).or_default()
    }

    fn vmback(&self) -> Command {
        Command::new(&self.vmback)
    }

    fn init(&self, repo: &Path, chunk: &str) {
        let _ = std::fs::remove_dir_all(repo);
        run(self
            .vmback()
            .arg("init")
            .arg(repo)
            .args(["--chunk-size", chunk]));
    }

    /// A timed `vmback backup --json`; records it under `key` and checks the method.
    fn backup(&mut self, key: &str, repo: &Path, args: &[&str], source: &str, method: &str) {
        let mut cmd = self.vmback();
        cmd.arg("backup")
            .arg(repo)
            .args(["--vm", VM, "--json"])
            .args(args)
            .arg(source);
        let r = self.timed(&cmd);
        let v: Value = serde_json::from_slice(&r.stdout).expect("backup --json");
        let disk = &v["disks"][0];
        let got = disk["method"].as_str().unwrap_or("?").to_string();
        let repo_size = du(repo);
        let s = self.entry(key);
        s.secs.push(r.secs);
        s.cpu.push(r.cpu);
        s.rss.push(r.rss);
        s.read = disk["stats"]["bytes_read"].as_u64();
        s.new = disk["stats"]["bytes_new"].as_u64();
        s.stored = disk["stats"]["bytes_stored"].as_u64();
        s.repos.push(repo_size);
        s.detail = disk["detail"].as_str().unwrap_or("").to_string();
        if got != method {
            s.check = Some(false);
            s.detail = format!("METHOD {got}, expected {method}: {}", s.detail);
            self.ok = false;
        }
    }

    /// `vmback export` of the latest restore point has the sha256 `want`.
    fn check_export(&mut self, key: &str, repo: &Path, want: &str) {
        let out = self.runs.join("export.raw");
        run(self
            .vmback()
            .arg("export")
            .arg(repo)
            .arg(format!("{VM}/latest/disk0"))
            .arg("-o")
            .arg(&out)
            .arg("--force"));
        let same = sha256_file(&out) == want;
        std::fs::remove_file(&out).unwrap();
        self.record_check(key, same);
    }

    fn record_check(&mut self, key: &str, same: bool) {
        let s = self.entry(key);
        s.check = Some(s.check.unwrap_or(true) && same);
        self.ok &= same;
    }

    /// Full backup of day0.raw, then each file-based incremental in a hard-linked copy
    /// of the repository (chunk objects are immutable, so sharing them is safe).
    fn vmback_file_methods(&mut self, cs: &str, check: bool, facts: &Facts) {
        let base = self.runs.join(format!("vmback-{cs}"));
        self.init(&base, cs);
        let day0 = self.dir.join("day0.raw");
        let day1 = self.dir.join("day1.raw");
        let full = format!("vmback {cs} full");
        self.backup(&full, &base, &[], day0.to_str().unwrap(), "full");
        if check {
            self.check_export(&full, &base, &facts.sha_day0);
        }
        let methods: &[Method] = if cs == DEFAULT_CHUNK {
            &[
                Method::Differencing,
                Method::ChangedExtents,
                Method::Fallback,
            ]
        } else {
            &[Method::Differencing]
        };
        let changes = self.dir.join("changes.json");
        for &m in methods {
            let repo = self.runs.join(format!("vmback-{cs}-{}", m.name()));
            let _ = std::fs::remove_dir_all(&repo);
            run(Command::new("cp").arg("-al").arg(&base).arg(&repo));
            let (args, source): (Vec<&str>, PathBuf) = match m {
                Method::Differencing => (vec![], self.dir.join("diff.qcow2")),
                Method::ChangedExtents => (
                    vec!["--changed-extents", changes.to_str().unwrap()],
                    day1.clone(),
                ),
                _ => (vec![], day1.clone()),
            };
            let key = format!("vmback {cs} {}", m.name());
            self.backup(&key, &repo, &args, source.to_str().unwrap(), m.name());
            if check {
                self.check_export(&key, &repo, &facts.sha_day1);
                if cs == DEFAULT_CHUNK && m == Method::Differencing {
                    let o = run(self.vmback().arg("verify").arg(&repo).arg("--read-data"));
                    let ok = String::from_utf8_lossy(&o.stdout).starts_with("ok:");
                    self.record_check(&key, ok);
                }
            }
            std::fs::remove_dir_all(&repo).unwrap();
        }
        self.retire(&base);
    }

    /// Dirty bitmap: full over NBD from live0 (b0 tracking since), incremental from
    /// live1 (the day-1 writes committed, b0 marking them).
    fn vmback_bitmap(&mut self, check: bool, facts: &Facts) {
        let repo = self.runs.join("vmback-bitmap");
        self.init(&repo, DEFAULT_CHUNK);
        let key_full = format!("vmback {DEFAULT_CHUNK} full over NBD");
        let key = format!("vmback {DEFAULT_CHUNK} dirty-bitmap");
        {
            let nbd = QemuNbd::start(&self.runs, &self.dir.join("live0.qcow2"), "b0");
            self.backup(
                &key_full,
                &repo,
                &["--dirty-bitmap", "b0"],
                &nbd.uri,
                "full",
            );
        }
        {
            let nbd = QemuNbd::start(&self.runs, &self.dir.join("live1.qcow2"), "b0");
            self.backup(
                &key,
                &repo,
                &["--dirty-bitmap", "b0"],
                &nbd.uri,
                "dirty-bitmap",
            );
        }
        if check {
            self.check_export(&key, &repo, &facts.sha_day1);
        }
        self.retire(&repo);
    }

    /// Sets a vmback repository aside until the end of the run instead of deleting
    /// it now. On ext4 without a journal (the benchmark machines' root), a file
    /// created within minutes of many deletions scans every recently deleted inode of
    /// its group first (`recently_deleted`, quadratic in the deletions): deleting the
    /// ~6,500 chunk files of one run cost the next full 1-1.5 s of system time, a
    /// cost of the benchmark's own cleanup that no first backup pays. (The peers
    /// write a few hundred files and are not affected.) With less than
    /// [`KEEP_FREE`] left on the disk, repositories are deleted at once, and the
    /// report says so.
    fn retire(&mut self, repo: &Path) {
        let trash = self.runs.join("retired");
        std::fs::create_dir_all(&trash).unwrap();
        let n = std::fs::read_dir(&trash).unwrap().count();
        std::fs::rename(repo, trash.join(n.to_string())).unwrap();
        let free = rustix::fs::statvfs(&trash)
            .map(|v| v.f_bavail * v.f_frsize)
            .unwrap_or(0);
        if free < KEEP_FREE {
            std::fs::remove_dir_all(&trash).unwrap();
            self.deleted_early = true;
        }
    }

    /// The image as the peers see it: one path that holds day 0, then day 1 (a hard
    /// link, so nothing is copied and the peers find their parent by path).
    fn link_source(&self, day: &str) -> PathBuf {
        let src = self.runs.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let p = src.join("disk.raw");
        let _ = std::fs::remove_file(&p);
        std::fs::hard_link(self.dir.join(day), &p).unwrap();
        p
    }

    fn restic(&mut self, check: bool, facts: &Facts) {
        let repo = self.runs.join("restic");
        let cache = self.runs.join("restic-cache");
        let _ = std::fs::remove_dir_all(&repo);
        let _ = std::fs::remove_dir_all(&cache);
        let restic = || {
            let mut c = Command::new("restic");
            c.env("RESTIC_PASSWORD", "bench")
                .env("RESTIC_CACHE_DIR", &cache)
                .arg("-r")
                .arg(&repo);
            c
        };
        run(restic().args(["init", "--repository-version", "2"]));
        for (day, key) in [("day0.raw", "restic full"), ("day1.raw", "restic incr")] {
            let src = self.link_source(day);
            let mut cmd = restic();
            cmd.args(["backup", "--json", "-q"]).arg(&src);
            let r = self.timed(&cmd);
            let summary = String::from_utf8_lossy(&r.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message_type"] == "summary")
                .unwrap_or(Value::Null);
            let size = du(&repo);
            let s = self.entry(key);
            s.secs.push(r.secs);
            s.cpu.push(r.cpu);
            s.rss.push(r.rss);
            s.read = summary["total_bytes_processed"].as_u64();
            s.new = summary["data_added"].as_u64();
            s.repos.push(size);
        }
        if check {
            let src = self.runs.join("src/disk.raw");
            let sha = sha256_stdout(restic().args(["dump", "latest"]).arg(&src));
            self.record_check("restic incr", sha == facts.sha_day1);
        }
        std::fs::remove_dir_all(&repo).unwrap();
        let _ = std::fs::remove_dir_all(&cache);
    }

    fn borg(&mut self, check: bool, facts: &Facts) {
        let repo = self.runs.join("borg");
        let home = self.runs.join("borg-home");
        let _ = std::fs::remove_dir_all(&repo);
        let _ = std::fs::remove_dir_all(&home);
        let src_dir = self.runs.join("src");
        let borg = || {
            let mut c = Command::new("borg");
            c.env("BORG_BASE_DIR", &home)
                .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
                .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
                .current_dir(&src_dir);
            c
        };
        std::fs::create_dir_all(&src_dir).unwrap();
        run(borg().args(["init", "-e", "none"]).arg(&repo));
        for (day, key) in [("day0.raw", "borg full"), ("day1.raw", "borg incr")] {
            self.link_source(day);
            let mut cmd = borg();
            cmd.args(["create", "--json", "--compression", "zstd,3"])
                .arg(format!("{}::{}", repo.display(), &day[..4]))
                .arg("disk.raw");
            let r = self.timed(&cmd);
            let v: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
            let stats = &v["archive"]["stats"];
            let size = du(&repo);
            let s = self.entry(key);
            s.secs.push(r.secs);
            s.cpu.push(r.cpu);
            s.rss.push(r.rss);
            s.read = stats["original_size"].as_u64();
            s.stored = stats["deduplicated_size"].as_u64();
            s.repos.push(size);
        }
        if check {
            let sha = sha256_stdout(
                borg()
                    .args(["extract", "--stdout"])
                    .arg(format!("{}::day1", repo.display()))
                    .arg("disk.raw"),
            );
            self.record_check("borg incr", sha == facts.sha_day1);
        }
        std::fs::remove_dir_all(&repo).unwrap();
        let _ = std::fs::remove_dir_all(&home);
    }

    /// Peak memory of a full backup of a 100 GiB sparse disk (raw and qcow2).
    fn memory(&mut self) {
        for name in ["big.raw", "big.qcow2"] {
            let repo = self.runs.join("vmback-big");
            self.init(&repo, DEFAULT_CHUNK);
            let src = self.dir.join(name);
            self.backup(
                &format!("memory {name}"),
                &repo,
                &[],
                src.to_str().unwrap(),
                "full",
            );
            std::fs::remove_dir_all(&repo).unwrap();
        }
    }
}

/// `du -sb PATH` (apparent bytes; a hard-linked file counts once).
fn du(path: &Path) -> u64 {
    let o = run(Command::new("du").arg("-sb").arg(path));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("du -sb output")
}

fn print_header(b: &Bench, f: &Facts, reps: usize) {
    println!(
        "vmback {} vs {} vs {}; {reps} runs each (median / best seconds), {} cache; {} cores, nice {}, load average at start {}",
        b.vmback.display(),
        tool_version("restic", "version"),
        tool_version("borg", "--version"),
        if b.cold {
            "cold (drop_caches before every run)"
        } else {
            "warm (page cache not dropped)"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nice(),
        load_average()
    );
    println!(
        "disk: {DISK_SIZE} raw, GPT, p1 NTFS {NTFS_MIB} MiB + p2 ext4 {EXT4_MIB} MiB; {} MiB written ({:.0}%): {}",
        f.allocated >> 20,
        100.0 * f.allocated as f64 / (4u64 << 30) as f64,
        trees_summary(&f.trees)
    );
    let d = &f.day1;
    let files: u64 = ["ntfs", "ext4"]
        .iter()
        .map(|n| d[n]["files"].as_u64().unwrap_or(0))
        .sum();
    let changed: u64 = ["ntfs", "ext4"]
        .iter()
        .map(|n| d[n]["changed_files"].as_u64().unwrap_or(0))
        .sum();
    let written: u64 = ["ntfs", "ext4"]
        .iter()
        .map(|n| d[n]["bytes_written"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "day 1: {changed} of {files} files changed ({:.1}%: appended, rewritten, new, database pages, logs), {:.1} MiB of file data written",
        100.0 * changed as f64 / files.max(1) as f64,
        written as f64 / MIB as f64
    );
    println!(
        "changed: {:.1} MiB in {} extents of 64 KiB blocks (changes.json); the qemu-img rebase overlay holds {:.1} MiB",
        f.changed as f64 / MIB as f64,
        f.changed_extents,
        f.overlay as f64 / MIB as f64
    );
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", v as f64 / MIB as f64))
}

fn check_str(c: Option<bool>) -> &'static str {
    match c {
        Some(true) => "ok",
        Some(false) => "FAILED",
        None => "",
    }
}

fn report(b: &Bench, f: &Facts) {
    let r = &b.results;
    let get = |k: &str| r.get(k).unwrap_or_else(|| panic!("no result {k}"));
    let cs = DEFAULT_CHUNK;
    println!();
    if b.deleted_early {
        println!(
            "note: less than {} GiB free, so finished repositories were deleted mid-run; \
             vmback's later runs paid ext4's scan of recently deleted inodes",
            KEEP_FREE >> 30
        );
    }
    println!("1. full and incremental ({cs} chunks for vmback); read/new/stored: what the tool reports; repo: du -sb after the run");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}  {:<5} detail",
        "run",
        "median s",
        "best s",
        "CPU s",
        "read MiB",
        "new MiB",
        "stored",
        "repo MiB",
        "RSS MiB",
        "check"
    );
    let rows: Vec<(String, String)> = vec![
        (format!("vmback {cs} full"), "vmback full (day0.raw)".into()),
        (
            format!("vmback {cs} differencing"),
            "vmback incr differencing".into(),
        ),
        (
            format!("vmback {cs} changed-extents"),
            "vmback incr changed extents".into(),
        ),
        (
            format!("vmback {cs} full over NBD"),
            "vmback full over NBD (bitmap b0)".into(),
        ),
        (
            format!("vmback {cs} dirty-bitmap"),
            "vmback incr dirty bitmap (NBD)".into(),
        ),
        (
            format!("vmback {cs} fallback"),
            "vmback incr fallback (read all)".into(),
        ),
        ("restic full".into(), "restic full".into()),
        ("restic incr".into(), "restic incr".into()),
        ("borg full".into(), "borg full".into()),
        ("borg incr".into(), "borg incr".into()),
    ];
    for (k, label) in &rows {
        let s = get(k);
        println!(
            "{:<34} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>8.0}  {:<5} {}",
            label,
            s.median(),
            s.best(),
            s.cpu(),
            mib(s.read),
            mib(s.new),
            mib(s.stored),
            mib(s.repo()),
            s.max_rss() as f64 / MIB as f64,
            check_str(s.check),
            s.detail
        );
    }
    println!(
        "CPU s = user + system seconds (median), which other load on the machine does not stretch"
    );
    println!("restic: read = total_bytes_processed, new = data_added; borg: read = original_size, stored = deduplicated_size (compressed)");

    let full = get(&format!("vmback {cs} full")).median();
    let restic_full = get("restic full").median();
    let borg_full = get("borg full").median();
    let repo_v = get(&format!("vmback {cs} differencing"))
        .repo()
        .unwrap_or(0);
    let repo_r = get("restic incr").repo().unwrap_or(1);
    let repo_b = get("borg incr").repo().unwrap_or(1);
    println!();
    println!("2. ratios and targets");
    println!(
        "full time vmback/restic {:.3} (restic takes {:.1}x as long; target >= 5x): {}",
        full / restic_full,
        restic_full / full,
        verdict(restic_full / full >= 5.0)
    );
    println!(
        "full time vmback/borg   {:.3} (borg takes {:.1}x as long)",
        full / borg_full,
        borg_full / full
    );
    let cpu = get(&format!("vmback {cs} full")).cpu();
    println!(
        "full CPU  vmback/restic {:.3} ({:.1}x), vmback/borg {:.3} ({:.1}x)",
        cpu / get("restic full").cpu(),
        get("restic full").cpu() / cpu,
        cpu / get("borg full").cpu(),
        get("borg full").cpu() / cpu
    );
    println!(
        "repo after both vmback/restic {:.3} (target <= 1): {};  vmback/borg {:.3}",
        repo_v as f64 / repo_r as f64,
        verdict(repo_v <= repo_r),
        repo_v as f64 / repo_b as f64
    );
    let base_repo = get(&format!("vmback {cs} full")).repo().unwrap_or(0);
    for m in [
        Method::Differencing,
        Method::ChangedExtents,
        Method::DirtyBitmap,
        Method::Fallback,
    ] {
        let s = get(&format!("vmback {cs} {}", m.name()));
        let frac = s.median() / full;
        let stored = s.stored.unwrap_or(0);
        let grown = if m == Method::DirtyBitmap {
            s.repo().unwrap_or(0)
                - get(&format!("vmback {cs} full over NBD"))
                    .repo()
                    .unwrap_or(0)
        } else {
            s.repo().unwrap_or(0) - base_repo
        };
        let cbt = m != Method::Fallback;
        println!(
            "incr {:<16} {:>6.1}% of full time{}  stored/changed {:.2} (repo grew {:.2}x changed){}",
            m.name(),
            100.0 * frac,
            if cbt {
                format!(" (target <= 5%: {})", verdict(frac <= 0.05))
            } else {
                String::new()
            },
            stored as f64 / f.changed as f64,
            grown as f64 / f.changed as f64,
            if cbt {
                format!(" (target <= 2: {})", verdict(stored as f64 <= 2.0 * f.changed as f64))
            } else {
                String::new()
            }
        );
    }
    for (name, full_k, incr_k) in [
        ("restic", "restic full", "restic incr"),
        ("borg", "borg full", "borg incr"),
    ] {
        let grown = get(incr_k).repo().unwrap_or(0) - get(full_k).repo().unwrap_or(0);
        println!(
            "{name:<6} incr {:>6.1}% of its full time; repo grew {:.2}x changed",
            100.0 * get(incr_k).median() / get(full_k).median(),
            grown as f64 / f.changed as f64
        );
    }

    println!();
    println!("3. chunk size (vmback full of day0.raw, then the differencing incremental)");
    println!(
        "{:<7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>11} {:>10} {:>14} {:>9}",
        "chunk",
        "full s",
        "incr s",
        "full CPU",
        "incr CPU",
        "incr/full",
        "repo MiB",
        "incr new",
        "incr stored",
        "repo grew",
        "stored/changed",
        "full RSS"
    );
    for c in CHUNK_SIZES {
        let full = get(&format!("vmback {c} full"));
        let inc = get(&format!("vmback {c} differencing"));
        let grew = inc.repo().unwrap_or(0) - full.repo().unwrap_or(0);
        println!(
            "{:<7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1}% {:>10} {:>9} {:>11} {:>10} {:>14.2} {:>9.0}",
            c,
            full.median(),
            inc.median(),
            full.cpu(),
            inc.cpu(),
            100.0 * inc.median() / full.median(),
            mib(inc.repo()),
            mib(inc.new),
            mib(inc.stored),
            mib(Some(grew)),
            inc.stored.unwrap_or(0) as f64 / f.changed as f64,
            full.max_rss() as f64 / MIB as f64
        );
    }

    println!();
    println!("4. peak memory, vmback full backup of a 100 GiB sparse disk (1 run)");
    for name in ["big.raw", "big.qcow2"] {
        let s = get(&format!("memory {name}"));
        println!(
            "{:<10} {:>8.2} s  read {:>7} MiB  peak RSS {:>6.1} MiB (target < 256 MiB: {})",
            name,
            s.median(),
            mib(s.read),
            s.max_rss() as f64 / MIB as f64,
            verdict(s.max_rss() < MEMORY_TARGET)
        );
    }
}
