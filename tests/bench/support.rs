//! Helpers shared by the benchmark programs in `tests/bench/`.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// `sync; echo 3 > /proc/sys/vm/drop_caches`; false when not permitted.
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Runs `cmd`; on failure prints it with its output and exits (a benchmark cannot go on).
pub fn run(cmd: &mut Command) -> std::process::Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !o.status.success() {
        eprintln!(
            "command failed: {cmd:?}\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::process::exit(1);
    }
    o
}

/// Best and median of a set of timings.
pub fn best_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// Median of a set of timings.
pub fn median(v: &mut [f64]) -> f64 {
    best_median(v).1
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}
