//! Granular restore benchmark (issue 3): `vmback get` / `vmback ls` against The
//! Sleuth Kit (ifind + icat, fls) and 7-Zip, side by side in one run, on a 4 GiB GPT
//! disk with an NTFS and an ext4 partition, as qcow2 and vhdx.
//!
//!   cargo bench --bench get            (or VMBACK_BENCH=1 target/.../get-*)
//!
//! A program, not a test: it takes minutes and GiBs of disk, so it refuses to run
//! unless started by `cargo bench` (which passes `--bench`) or with VMBACK_BENCH=1.
//!
//! The source disk (4 GiB sparse raw, GPT by sgdisk): p1 NTFS (mkntfs -Q, tree
//! written through an ntfs-3g FUSE mount: needs root and /dev/fuse), p2 ext4
//! (mke2fs -d). Both hold `a/b/.../p/target.bin` (16 directories deep, 1 MiB of
//! seeded random data) and `big/` (20,000 empty files). Partitions are built as
//! separate files and spliced in with dd conv=notrunc,sparse. The disk is converted
//! with qemu-img to qcow2 and vhdx (dynamic).
//!
//! Peers, as a user would run them on those images:
//! - TSK cannot open qcow2 or vhdx (`ifind -i list`), so it runs on the raw disk;
//!   the `qemu-img convert -O raw` it needs first is timed on its own row.
//! - 7-Zip opens qcow2/vhdx and the GPT inside, but cannot open a filesystem nested
//!   in a GPT holding several partitions (`-tntfs.gpt.qcow`: E_NOTIMPL), so the
//!   partition is first extracted to a file (`7z e IMAGE "0.Basic data.ntfs"`,
//!   timed once on its own row) and the file or listing taken from that.
//!
//! Every run is timed 3 times (median); the page cache is dropped before every run
//! when /proc/sys/vm/drop_caches is writable (the header says which).
//! Every extracted file must have the sha256 of the source; every listing must
//! show 20,000 entries. Images are kept in `$VMBACK_BENCH_DIR` (default
//! `<target>/tmp/bench-get`) for the next run. `VMBACK_BENCH_FORMATS=qcow2` limits
//! the formats; `VMBACK_BENCH_WARM=1` keeps the cache warm;
//! `VMBACK_BENCH_PREPARE=1` only builds the images.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const REPS: usize = 3;
/// Bumped whenever the source disk's recipe changes (cached images are rebuilt).
const RECIPE: &str = "v1";
/// 16 directories deep.
const DEEP: &str = "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/target.bin";
const BIG_ENTRIES: usize = 20_000;

/// Writes the tree both partitions hold into `$1` and keeps a copy of the deep file
/// as `$2` (its sha256 is the expected one).
const MAKE_TREE: &str = r#"
set -euo pipefail
python3 - "$1" <<'PY'
import os, random, sys
root = sys.argv[1]
d = os.path.join(root, *"abcdefghijklmnop")
os.makedirs(d)
with open(os.path.join(d, "target.bin"), "wb") as f:
    f.write(random.Random(3).randbytes(1 << 20))
big = os.path.join(root, "big")
os.makedirs(big)
for i in range(20000):
    open(os.path.join(big, "f%05d" % i), "w").close()
PY
cp "$1/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/target.bin" "$2"
"#;

struct Format {
    name: &'static str,
    qemu_format: &'static str,
    args: &'static [&'static str],
}

const FORMATS: &[Format] = &[
    Format {
        name: "qcow2",
        qemu_format: "qcow2",
        args: &[],
    },
    Format {
        name: "vhdx",
        qemu_format: "vhdx",
        args: &["-o", "subformat=dynamic"],
    },
];

struct Part {
    /// vmback's volume name.
    vol: &'static str,
    fs: &'static str,
    /// The partition's name in `7z l IMAGE`.
    seven_name: &'static str,
}

const PARTS: &[Part] = &[
    Part {
        vol: "p1",
        fs: "ntfs",
        seven_name: "0.Basic data.ntfs",
    },
    Part {
        vol: "p2",
        fs: "ext4",
        seven_name: "1.Linux data.img",
    },
];

fn main() {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("VMBACK_BENCH").as_deref() == Ok("1");
    if !asked {
        eprintln!(
            "get benchmark skipped: it is a program, not a test (minutes, GiBs of disk); \
             run it with `cargo bench --bench get`"
        );
        return;
    }
    for tool in [
        "sgdisk", "mkntfs", "ntfs-3g", "mke2fs", "qemu-img", "python3",
    ] {
        if !have(tool) {
            eprintln!("get benchmark: missing tool {tool}");
            std::process::exit(1);
        }
    }
    for tool in ["ifind", "icat", "fls"] {
        if !have(tool) {
            eprintln!("get benchmark: missing {tool} (apt-get install sleuthkit)");
            std::process::exit(1);
        }
    }
    let seven = ["7zz", "7z"]
        .into_iter()
        .find(|t| have(t))
        .unwrap_or_else(|| {
            eprintln!("get benchmark: missing 7-Zip (apt-get install 7zip)");
            std::process::exit(1);
        });
    let dir = std::env::var_os("VMBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-get"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let vmback = PathBuf::from(env!("CARGO_BIN_EXE_vmback"));
    let only: Option<Vec<String>> = std::env::var("VMBACK_BENCH_FORMATS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let prepare_only = std::env::var("VMBACK_BENCH_PREPARE").as_deref() == Ok("1");
    let cold = std::env::var("VMBACK_BENCH_WARM").as_deref() != Ok("1") && drop_caches();

    let src = dir.join("source.raw");
    let stamp = dir.join("RECIPE");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(RECIPE) {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let t = Instant::now();
        let tree = dir.join("tree");
        run(Command::new("bash")
            .args(["-c", MAKE_TREE, "make-tree"])
            .arg(&tree)
            .arg(dir.join("target.bin")));
        GptNtfsExt4 {
            disk: &src,
            disk_size: "4G",
            ntfs_mib: 1900,
            ext4_mib: 1900,
            ntfs_tree: &tree,
            ext4_tree: &tree,
            work: &dir.join("work"),
        }
        .build();
        std::fs::remove_dir_all(&tree).unwrap();
        eprintln!(
            "source: {} built in {:.1}s",
            src.display(),
            t.elapsed().as_secs_f64()
        );
        std::fs::write(&stamp, RECIPE).unwrap();
    }
    let want = sha256_bytes(&std::fs::read(dir.join("target.bin")).unwrap());
    // In sectors, as TSK's -o wants them.
    let offsets = partition_first_sectors(&src);
    let formats: Vec<&Format> = FORMATS
        .iter()
        .filter(|f| only.as_ref().is_none_or(|o| o.iter().any(|n| n == f.name)))
        .collect();
    for f in &formats {
        let img = dir.join(format!("disk.{}", f.name));
        if !img.exists() {
            let tm = Instant::now();
            let tmp = dir.join(format!("disk.{}.partial", f.name));
            run(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", f.qemu_format])
                .args(f.args)
                .arg(&src)
                .arg(&tmp));
            std::fs::rename(&tmp, &img).unwrap();
            eprintln!(
                "built {} in {:.1}s",
                img.display(),
                tm.elapsed().as_secs_f64()
            );
        }
    }
    if prepare_only {
        return;
    }

    println!(
        "vmback {} vs TSK (ifind+icat / fls) vs 7-Zip ({seven}); {REPS} runs each, median seconds, {} cache",
        vmback.display(),
        if cold {
            "cold (drop_caches before every run)"
        } else {
            "warm (page cache not dropped)"
        }
    );
    println!("TSK has no qcow2/vhdx support: it runs on the raw disk; 7-Zip runs on the partition it extracted first (both prerequisites timed below)");
    println!(
        "{:<6} {:<5} {:<14} {:>9} {:>9} {:>7} {:>9} {:>7}  check",
        "image", "part", "operation", "vmback", "TSK(raw)", "v/TSK", "7z(part)", "v/7z"
    );
    let mut all_ok = true;
    let scratch = dir.join("scratch");
    for f in &formats {
        let img = dir.join(format!("disk.{}", f.name));
        for (part, &off) in PARTS.iter().zip(&offsets) {
            // 7-Zip prerequisite: the partition as a file.
            let part_file = scratch.join(part.seven_name);
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch).unwrap();
            if cold {
                drop_caches();
            }
            let t = Instant::now();
            run(Command::new(seven)
                .args(["e", "-y", "-bd"])
                .arg(format!("-o{}", scratch.display()))
                .arg(&img)
                .arg(part.seven_name));
            let seven_extract = t.elapsed().as_secs_f64();

            // get the deep file.
            let (mut tv, mut tt, mut ts) = (Vec::new(), Vec::new(), Vec::new());
            let mut checks = Vec::new();
            let out_v = dir.join("out-vmback");
            for rep in 0..REPS {
                let _ = std::fs::remove_dir_all(&out_v);
                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                run(Command::new(&vmback)
                    .arg("get")
                    .arg(&img)
                    .arg(format!("{}/{DEEP}", part.vol))
                    .arg("--target")
                    .arg(&out_v));
                tv.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    checks.push(("vmback", find_sha(&out_v, "target.bin")));
                }

                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let o = run(Command::new("ifind")
                    .args(["-n", DEEP, "-o", &off.to_string()])
                    .arg(&src));
                let inode = String::from_utf8_lossy(&o.stdout).trim().to_string();
                let o = run(Command::new("icat")
                    .args(["-o", &off.to_string()])
                    .arg(&src)
                    .arg(&inode));
                tt.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    checks.push(("tsk", Some(sha256_bytes(&o.stdout))));
                }

                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let o = run(Command::new(seven)
                    .args(["e", "-so"])
                    .arg(&part_file)
                    .arg(DEEP));
                ts.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    checks.push(("7z", Some(sha256_bytes(&o.stdout))));
                }
            }
            let _ = std::fs::remove_dir_all(&out_v);
            let bad: Vec<&str> = checks
                .iter()
                .filter(|(_, s)| s.as_deref() != Some(want.as_str()))
                .map(|(n, _)| *n)
                .collect();
            all_ok &= bad.is_empty();
            row(
                f.name,
                part,
                "get deep file",
                &mut tv,
                &mut tt,
                &mut ts,
                if bad.is_empty() {
                    "sha256 same (3 tools)".to_string()
                } else {
                    format!("sha256 DIFFERENT: {}", bad.join(","))
                },
            );

            // list the 20,000-entry directory.
            let (mut tv, mut tt, mut ts) = (Vec::new(), Vec::new(), Vec::new());
            let mut counts = Vec::new();
            for rep in 0..REPS {
                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let o = run(Command::new(&vmback)
                    .arg("ls")
                    .arg(&img)
                    .arg(format!("{}/big", part.vol)));
                tv.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    let n = String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.starts_with('f'))
                        .count();
                    counts.push(("vmback", n));
                }

                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let o = run(Command::new("ifind")
                    .args(["-n", "big", "-o", &off.to_string()])
                    .arg(&src));
                let inode = String::from_utf8_lossy(&o.stdout).trim().to_string();
                let o = run(Command::new("fls")
                    .args(["-o", &off.to_string()])
                    .arg(&src)
                    .arg(&inode));
                tt.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    let n = String::from_utf8_lossy(&o.stdout).lines().count();
                    counts.push(("tsk", n));
                }

                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let o = run(Command::new(seven)
                    .args(["l", "-ba"])
                    .arg(&part_file)
                    .arg("big/*"));
                ts.push(t.elapsed().as_secs_f64());
                if rep == 0 {
                    let n = String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.contains("big/f"))
                        .count();
                    counts.push(("7z", n));
                }
            }
            let bad: Vec<String> = counts
                .iter()
                .filter(|(_, n)| *n != BIG_ENTRIES)
                .map(|(t, n)| format!("{t}={n}"))
                .collect();
            all_ok &= bad.is_empty();
            row(
                f.name,
                part,
                "ls 20k dir",
                &mut tv,
                &mut tt,
                &mut ts,
                if bad.is_empty() {
                    format!("{BIG_ENTRIES} entries (3 tools)")
                } else {
                    format!("WRONG COUNT: {}", bad.join(" "))
                },
            );
            println!(
                "{:<6} {:<5} {:<14} {:>9} {:>9} {:>7} {:>9.2} {:>7}  1 run: 7z e IMAGE \"{}\"",
                f.name, part.fs, "7z: partition", "-", "-", "", seven_extract, "", part.seven_name
            );
            let _ = std::fs::remove_dir_all(&scratch);
        }

        // TSK prerequisite: the container converted to raw.
        let raw = dir.join("converted.raw");
        let mut tq = Vec::new();
        for _ in 0..REPS {
            let _ = std::fs::remove_file(&raw);
            if cold {
                drop_caches();
            }
            let t = Instant::now();
            run(Command::new("qemu-img")
                .args(["convert", "-f", f.qemu_format, "-O", "raw"])
                .arg(&img)
                .arg(&raw));
            tq.push(t.elapsed().as_secs_f64());
        }
        let _ = std::fs::remove_file(&raw);
        println!(
            "{:<6} {:<5} {:<14} {:>9} {:>9.2} {:>7} {:>9} {:>7}  qemu-img convert -O raw (median of {REPS})",
            f.name,
            "disk",
            "TSK: to raw",
            "-",
            median(&mut tq),
            "",
            "-",
            ""
        );
    }
    println!("ratio = vmback median / peer median (below 1: vmback is faster); TSK and 7z times exclude their prerequisite rows");
    if !all_ok {
        eprintln!("get benchmark: a tool's output differs from the source (see above)");
        std::process::exit(1);
    }
}

fn row(
    image: &str,
    part: &Part,
    op: &str,
    tv: &mut [f64],
    tt: &mut [f64],
    ts: &mut [f64],
    check: String,
) {
    let (v, t, s) = (median(tv), median(tt), median(ts));
    println!(
        "{:<6} {:<5} {:<14} {:>9.3} {:>9.3} {:>7.2} {:>9.3} {:>7.2}  {}",
        image,
        part.fs,
        op,
        v,
        t,
        v / t,
        s,
        v / s,
        check
    );
}

/// The sha256 of the first file named `name` under `dir`.
fn find_sha(dir: &Path, name: &str) -> Option<String> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(s) = find_sha(&p, name) {
                return Some(s);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(sha256_file(&p));
        }
    }
    None
}
