//! Job benchmark: `vmback run` on a 12-VM job at max_concurrent 1, 2 and 4, against
//! the same 12 backups one after another from a shell loop of `vmback backup`.
//!
//!   cargo bench --bench jobs            (or VMBACK_BENCH=1 target/.../jobs-*)
//!
//! A program, not a test (GiBs of disk, a minute or more): it refuses to run unless
//! started by `cargo bench` (which passes `--bench`) or with VMBACK_BENCH=1.
//!
//! 12 raw disks of 256 MiB (`VMBACK_BENCH_MIB`), each about three quarters written
//! (half random, half compressible, different per VM so nothing deduplicates across
//! VMs), over 3 hosts and 2 datastores with max_per_host 2 and max_per_datastore 3.
//! Every configuration backs up all 12 into a new repository (a first, full backup:
//! the work is hashing, compressing and storing), `VMBACK_BENCH_REPS` times (default
//! 3), interleaved; the median is shown with the ratio to the shell loop and the
//! CPU used (children's user + system time over wall time: 2.0 = both cores busy).
//! The page cache stays warm (the images are read once before timing). Everything
//! lives in `$VMBACK_BENCH_DIR` (default /tmp/vmback-bench-jobs), removed at the end
//! unless VMBACK_BENCH_KEEP=1. `VMBACK_BENCH_REPO_DIR=/dev/shm/x` puts the repository
//! on another filesystem (tmpfs: the fsyncs of every chunk cost nothing, so the CPU
//! work shows alone).

mod support;
use support::*;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VMS: usize = 12;

/// Fills `path` with `mib` MiB: per 4 MiB stripe, 2 MiB random, 1 MiB text-like,
/// 1 MiB hole.
fn make_disk(path: &Path, mib: u64, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut x = seed | 1;
    let mut random = vec![0u8; 2 << 20];
    let mut text = vec![0u8; 1 << 20];
    for stripe in 0..mib / 4 {
        for b in random.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            b.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        for (i, b) in text.iter_mut().enumerate() {
            *b = b"vmback job benchmark line "[i % 26]
                ^ ((i as u64 / 4096 + seed + stripe) as u8 & 7);
        }
        let off = stripe * (4 << 20);
        f.write_all_at(&random, off).unwrap();
        f.write_all_at(&text, off + (2 << 20)).unwrap();
    }
}

/// User + system seconds of this process's waited-for children (from /proc; clock
/// ticks of 1/100 s, as on Linux everywhere).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(13) + tick(14)) / 100.0
}

struct Config {
    name: String,
    /// `None`: the shell loop.
    max_concurrent: Option<usize>,
    threads: Option<usize>,
}

fn host(i: usize) -> String {
    format!("h{}", i % 3 + 1)
}

fn datastore(i: usize) -> String {
    format!("ds{}", i % 2 + 1)
}

fn job_file(dir: &Path, repo: &Path, disks: &[PathBuf], c: &Config) -> PathBuf {
    let mut t = format!(
        "repository = \"{}\"\n[limits]\nmax_concurrent = {}\nmax_per_host = 2\nmax_per_datastore = 3\n",
        repo.display(),
        c.max_concurrent.unwrap_or(1)
    );
    if let Some(n) = c.threads {
        t += &format!("threads = {n}\n");
    }
    for (i, d) in disks.iter().enumerate() {
        t += &format!(
            "[[vm]]\nname = \"vm{i:02}\"\nhost = \"{}\"\ndatastores = [\"{}\"]\n[[vm.disk]]\nsource = \"{}\"\n",
            host(i),
            datastore(i),
            d.display()
        );
    }
    let p = dir.join(format!("{}.toml", c.name.replace(' ', "-")));
    std::fs::write(&p, t).unwrap();
    p
}

/// One timed run of `c` into a new repository; returns (wall s, CPU s).
fn run_once(vmback: &Path, dir: &Path, disks: &[PathBuf], c: &Config) -> (f64, f64) {
    let repo = std::env::var_os("VMBACK_BENCH_REPO_DIR")
        .map_or_else(|| dir.to_path_buf(), PathBuf::from)
        .join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    run(Command::new(vmback).arg("init").arg(&repo));
    let cpu0 = children_cpu();
    let t = Instant::now();
    match c.max_concurrent {
        None => {
            let mut script = String::from("set -e\n");
            for (i, d) in disks.iter().enumerate() {
                script += &format!(
                    "'{}' backup '{}' --vm vm{i:02} --host {} --datastore {} '{}' >/dev/null 2>&1\n",
                    vmback.display(),
                    repo.display(),
                    host(i),
                    datastore(i),
                    d.display()
                );
            }
            run(Command::new("sh").arg("-c").arg(script));
        }
        Some(_) => {
            let job = job_file(dir, &repo, disks, c);
            run(Command::new(vmback).arg("run").arg(&job));
        }
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    let n = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(n, VMS, "{}: {n} restore points", c.name);
    std::fs::remove_dir_all(&repo).unwrap();
    (wall, cpu)
}

fn main() {
    let asked = std::env::args().any(|a| a == "--bench")
        || std::env::var("VMBACK_BENCH").as_deref() == Ok("1");
    if !asked {
        eprintln!(
            "jobs benchmark skipped: it is a program, not a test (GiBs of disk); \
             run it with `cargo bench --bench jobs`"
        );
        return;
    }
    let vmback = PathBuf::from(env!("CARGO_BIN_EXE_vmback"));
    let dir = std::env::var_os("VMBACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/vmback-bench-jobs"));
    let mib: u64 = std::env::var("VMBACK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .max(4);
    let reps: usize = std::env::var("VMBACK_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    std::fs::create_dir_all(&dir).unwrap();
    let disks: Vec<PathBuf> = (0..VMS)
        .map(|i| {
            let p = dir.join(format!("vm{i:02}-{mib}M.raw"));
            if !p.exists() {
                make_disk(&p, mib, 1000 + i as u64);
            }
            // Warm the page cache: every configuration reads from memory.
            let _ = std::fs::read(&p);
            p
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let configs = [
        Config {
            name: "shell loop of 12 `vmback backup`".into(),
            max_concurrent: None,
            threads: None,
        },
        Config {
            name: "vmback run, max_concurrent 1".into(),
            max_concurrent: Some(1),
            threads: None,
        },
        Config {
            name: "vmback run, max_concurrent 2".into(),
            max_concurrent: Some(2),
            threads: None,
        },
        Config {
            name: "vmback run, max_concurrent 2, threads 1".into(),
            max_concurrent: Some(2),
            threads: Some(1),
        },
        Config {
            name: "vmback run, max_concurrent 4".into(),
            max_concurrent: Some(4),
            threads: None,
        },
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..reps {
        for (i, c) in configs.iter().enumerate() {
            let (w, cpu) = run_once(&vmback, &dir, &disks, c);
            eprintln!("  {}: {w:.2}s wall, {cpu:.1}s CPU", c.name);
            walls[i].push(w);
            cpus[i].push(cpu / w);
        }
    }
    println!(
        "\n12 VMs x {mib} MiB (3/4 written), 3 hosts, 2 datastores, max_per_host 2, max_per_datastore 3; \
         {cores} cores; warm page cache; repository in {}; median of {reps}\n",
        std::env::var("VMBACK_BENCH_REPO_DIR").unwrap_or_else(|_| dir.display().to_string())
    );
    println!("| configuration | wall | ratio to the shell loop | CPU busy (cores) |");
    println!("|---|---|---|---|");
    let base = median(&mut walls[0].clone());
    for (i, c) in configs.iter().enumerate() {
        let w = median(&mut walls[i]);
        let u = median(&mut cpus[i]);
        println!("| {} | {w:.2} s | {:.2} | {u:.2} |", c.name, w / base);
    }
    if std::env::var("VMBACK_BENCH_KEEP").as_deref() != Ok("1") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
