//! Export benchmark: `vmback export --format raw` against `qemu-img convert -O raw`,
//! side by side in one run, on the same 4 GiB sparse disk in every container format.
//!
//!   cargo bench --bench export            (or VMBACK_BENCH=1 target/.../export-*)
//!
//! A program, not a test: it takes minutes and GiBs of disk, so it refuses to run
//! unless started by `cargo bench` (which passes `--bench`) or with VMBACK_BENCH=1.
//!
//! The source disk: 4 GiB virtual, about 40% written (random and compressible data
//! mixed, in extents that start at odd offsets), the rest never written. It is
//! converted with qemu-img to vmdk (monolithicSparse), vhdx (dynamic), vpc (dynamic),
//! qcow2 and qcow2 -c. For each, both tools export it 5 times (interleaved, the tool
//! that goes first alternating; the page cache is dropped before every run when
//! /proc/sys/vm/drop_caches is writable, which the table header says); both outputs
//! must have the same sha256. qemu-img is timed with a `sync` of its output, since
//! vmback fsyncs before it reports success (same durability for both). Images are
//! kept in `$VMBACK_BENCH_DIR` (default `<target>/tmp/bench-export`) for the next run.
//! `VMBACK_BENCH_FORMATS=vmdk,qcow2` limits the formats; `VMBACK_BENCH_WARM=1` keeps
//! the cache warm; `VMBACK_BENCH_PREPARE=1` only builds the images.

mod support;
use support::*;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VIRTUAL_SIZE: u64 = 4 << 30;
const STRIPE: u64 = 8 << 20;
const REPS: usize = 5;
/// Bumped whenever the source disk's recipe changes (cached images are rebuilt).
const RECIPE: &str = "v1";

struct Target {
    name: &'static str,
    qemu_format: &'static str,
    args: &'static [&'static str],
}

const TARGETS: &[Target] = &[
    Target {
        name: "vmdk",
        qemu_format: "vmdk",
        args: &["-o", "subformat=monolithicSparse"],
    },
    Target {
        name: "vhdx",
        qemu_format: "vhdx",
        args: &["-o", "subformat=dynamic"],
    },
    Target {
        name: "vpc",
        qemu_format: "vpc",
        args: &["-o", "subformat=dynamic"],
    },
    Target {
        name: "qcow2",
        qemu_format: "qcow2",
        args: &[],
    },
    Target {
        name: "qcow2-c",
        qemu_format: "qcow2",
        args: &["-c"],
    },
];

fn main() {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("VMBACK_BENCH").as_deref() == Ok("1");
    if !asked {
        eprintln!(
            "export benchmark skipped: it is a program, not a test (minutes, GiBs of disk); \
             run it with `cargo bench --bench export`"
        );
        return;
    }
    let dir = std::env::var_os("VMBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-export"));
    std::fs::create_dir_all(&dir).unwrap();
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
            let _ = std::fs::remove_file(e.path());
        }
        let t = Instant::now();
        let data = make_source(&src);
        eprintln!(
            "source: {} GiB virtual, {} MiB written, in {:.1}s",
            VIRTUAL_SIZE >> 30,
            data >> 20,
            t.elapsed().as_secs_f64()
        );
        std::fs::write(&stamp, RECIPE).unwrap();
    }

    println!(
        "vmback {} vs qemu-img convert -O raw; {REPS} runs each, {} cache; best / median seconds",
        vmback.display(),
        if cold {
            "cold (drop_caches before every run)"
        } else {
            "warm (page cache not dropped)"
        }
    );
    println!(
        "{:<8} {:>16} {:>16} {:>7} {:>12} {:>12} {:>12}  sha256",
        "format", "vmback s", "qemu-img s", "ratio", "read MiB", "file MiB", "data MiB"
    );
    let mut all_same = true;
    for t in TARGETS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == t.name))
        {
            continue;
        }
        let img = dir.join(format!("disk.{}", t.name));
        if !img.exists() {
            let tm = Instant::now();
            let tmp = dir.join(format!("disk.{}.partial", t.name));
            run(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", t.qemu_format])
                .args(t.args)
                .arg(&src)
                .arg(&tmp));
            std::fs::rename(&tmp, &img).unwrap();
            eprintln!(
                "built {} in {:.1}s",
                img.display(),
                tm.elapsed().as_secs_f64()
            );
        }
        if prepare_only {
            continue;
        }
        let file_alloc = std::fs::metadata(&img).unwrap().blocks() * 512;
        let data = inspect_allocated(&vmback, &img);
        let out_v = dir.join("out-vmback.raw");
        let out_q = dir.join("out-qemu.raw");
        let (mut tv, mut tq) = (Vec::new(), Vec::new());
        let mut read = None;
        let mut vmback_failed = None;
        let (mut sha_v, mut sha_q) = (String::new(), String::new());
        for rep in 0..REPS {
            // Alternate which tool goes first, so neither always inherits the other's
            // leftovers (writeback, the discards of the deleted outputs).
            let order = if rep % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_vmback in order {
                if cold {
                    drop_caches();
                }
                let started = Instant::now();
                if is_vmback {
                    let o = Command::new(&vmback)
                        .args(["export", "--json", "--force", "--format", "raw", "-o"])
                        .arg(&out_v)
                        .arg(&img)
                        .output()
                        .unwrap();
                    tv.push(started.elapsed().as_secs_f64());
                    if !o.status.success() {
                        vmback_failed = Some(String::from_utf8_lossy(&o.stderr).trim().to_string());
                        break;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
                    read = v["source_bytes_read"].as_u64();
                } else {
                    let _ = std::fs::remove_file(&out_q);
                    run(Command::new("qemu-img")
                        .args(["convert", "-f", t.qemu_format, "-O", "raw"])
                        .arg(&img)
                        .arg(&out_q));
                    // vmback export fsyncs its output before reporting success; qemu-img
                    // convert leaves the data in the page cache. Same durability: sync it.
                    run(Command::new("sync").arg(&out_q));
                    tq.push(started.elapsed().as_secs_f64());
                }
            }
            if vmback_failed.is_some() {
                break;
            }
            if rep == 0 {
                sha_v = sha256_file(&out_v);
                sha_q = sha256_file(&out_q);
            }
            let _ = std::fs::remove_file(&out_v);
            let _ = std::fs::remove_file(&out_q);
            // Let the deletions (and their discards) finish outside the timed runs.
            let _ = Command::new("sync").status();
        }
        if let Some(msg) = vmback_failed {
            println!("{:<8} vmback export failed: {msg}", t.name);
            all_same = false;
            continue;
        }
        let same = sha_v == sha_q;
        all_same &= same;
        let (bv, mv) = best_median(&mut tv);
        let (bq, mq) = best_median(&mut tq);
        println!(
            "{:<8} {:>7.2} / {:>6.2} {:>7.2} / {:>6.2} {:>7.2} {:>12} {:>12} {:>12}  {}",
            t.name,
            bv,
            mv,
            bq,
            mq,
            mv / mq,
            read.map(|r| (r >> 20).to_string()).unwrap_or("?".into()),
            file_alloc >> 20,
            data.map(|d| (d >> 20).to_string()).unwrap_or("?".into()),
            if same {
                "same".to_string()
            } else {
                format!("DIFFERENT vmback {sha_v} qemu {sha_q}")
            }
        );
    }
    println!("ratio = vmback median / qemu-img median (below 1: vmback is faster); read = bytes vmback read from the image files; file = the image file's allocated bytes; data = allocated_bytes from vmback inspect");
    if !all_same {
        eprintln!("export benchmark: an export failed or outputs differ (see above)");
        std::process::exit(1);
    }
}

/// Writes the source disk: in every 8 MiB stripe, ~40% written at an odd offset,
/// alternating random and compressible 64 KiB pieces. Returns the bytes written.
fn make_source(path: &Path) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(VIRTUAL_SIZE).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut stripe = 0u64;
    while stripe * STRIPE < VIRTUAL_SIZE {
        let base = stripe * STRIPE;
        // 35..45% of the stripe, starting 0..1 MiB in at a 512-byte boundary.
        let len = STRIPE * (35 + stripe % 11) / 100;
        let start = base + (stripe * 7919 * 512) % (1 << 20);
        let end = (start + len).min(VIRTUAL_SIZE);
        let mut off = start;
        let mut piece = 0u64;
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            if (piece + stripe) % 2 == 0 {
                for chunk in buf[..n].chunks_mut(8) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let b = rng.to_le_bytes();
                    chunk.copy_from_slice(&b[..chunk.len()]);
                }
            } else {
                let line = format!("stripe {stripe:08} piece {piece:06} compressible text; ");
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            }
            f.write_all_at(&buf[..n], off).unwrap();
            written += n as u64;
            off += n as u64;
            piece += 1;
        }
        stripe += 1;
    }
    f.sync_all().unwrap();
    written
}

fn inspect_allocated(vmback: &Path, img: &Path) -> Option<u64> {
    let o = Command::new(vmback)
        .args(["inspect", "--json"])
        .arg(img)
        .output()
        .ok()?;
    if !o.status.success() {
        eprintln!(
            "vmback inspect {}: {}",
            img.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["allocated_bytes"].as_u64()
}
