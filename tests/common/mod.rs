//! Shared helpers for the integration tests: run the real binary (printing the
//! command and its output on failure), reach the conformance corpus, hash files,
//! and ask `qemu-img` (the reference reader) for its view of an image.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `Command` for the vmback binary under test.
pub fn vmback() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmback"))
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "command: {:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panicking with the command and its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "command failed\n{}",
        describe(cmd, &out)
    );
    out
}

/// Runs `cmd`, panicking unless it fails; returns its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded\n{}",
        describe(cmd, &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// True when `tool` is on PATH. When it is not, prints why the caller skips, or
/// panics when `VMBACK_REQUIRE_TOOLS=1` (CI), where a skip would hide a gap.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("VMBACK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{tool} is required (VMBACK_REQUIRE_TOOLS=1) but missing"
        );
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// `../shared/corpus`, or `None` (with a printed skip message) when absent.
/// With `VMBACK_REQUIRE_CORPUS=1` a missing corpus fails instead.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = root().join("../shared/corpus");
    if dir.join("CATALOG.md").is_file() {
        Some(dir)
    } else {
        assert!(
            std::env::var("VMBACK_REQUIRE_CORPUS").as_deref() != Ok("1"),
            "corpus required but {} is missing",
            dir.display()
        );
        eprintln!("SKIP: conformance corpus not found at {}", dir.display());
        None
    }
}

/// Makes corpus file `rel` available uncompressed in `dir` (decompressing
/// `.zst`, `.bz2`, `.gz`; copying others) and returns its path there.
pub fn corpus_file(corpus: &Path, rel: &str, dir: &Path) -> PathBuf {
    let src = corpus.join(rel);
    let name = Path::new(rel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (stem, tool) = if let Some(s) = name.strip_suffix(".zst") {
        (s.to_string(), Some("zstd"))
    } else if let Some(s) = name.strip_suffix(".bz2") {
        (s.to_string(), Some("bzip2"))
    } else if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Some("gzip"))
    } else {
        (name.clone(), None)
    };
    let dst = dir.join(stem);
    match tool {
        Some(tool) => {
            let out = run_ok(Command::new(tool).arg("-dc").arg(&src));
            std::fs::write(&dst, out.stdout).unwrap();
        }
        None => {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    dst
}

/// `(virtual size, raw sha256)` of `rel` from CATALOG.md.
pub fn catalog_entry(corpus: &Path, rel: &str) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(corpus.join("CATALOG.md")).ok()?;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() > 4 && cols[1] == rel {
            return Some((cols[3].parse().ok()?, cols[4].to_string()));
        }
    }
    None
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> String {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 of the whole virtual disk as `vmback export --format raw` writes it.
pub fn vmback_raw_sha(image: &Path, scratch: &Path) -> String {
    let out = scratch.join("vmback-export.raw");
    run_ok(
        vmback()
            .arg("export")
            .arg(image)
            .arg("--format")
            .arg("raw")
            .arg("-o")
            .arg(&out)
            .arg("--force"),
    );
    let sha = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    sha
}

/// SHA-256 of the whole virtual disk as `qemu-img convert -O raw` reads it
/// (`fmt` forces the input format, e.g. `Some("vpc")`).
pub fn qemu_raw_sha(image: &Path, fmt: Option<&str>, scratch: &Path) -> String {
    let out = scratch.join("qemu-convert.raw");
    let mut cmd = Command::new("qemu-img");
    cmd.arg("convert");
    if let Some(f) = fmt {
        cmd.arg("-f").arg(f);
    }
    run_ok(cmd.arg("-O").arg("raw").arg(image).arg(&out));
    let sha = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    sha
}

/// Deterministic pseudo-random bytes (xorshift64*), so fixtures are reproducible.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a raw disk of `size` bytes at `path` with seeded random data in some
/// regions, all-zero data in others, and holes elsewhere (so every container gets
/// data, zero and unallocated ranges to represent).
pub fn make_seeded_raw(path: &Path, size: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut off = 0u64;
    let mut i = 0u64;
    while off < size {
        // Pattern of 8 slots: data, hole, data (unaligned length), zeros, hole, hole, data, hole.
        let slot = 192 * 1024 + (i % 5) * 64 * 1024 + 4096 * (i % 3);
        let len = slot.min(size - off);
        match i % 8 {
            0 | 2 | 6 => f
                .write_all_at(
                    &seeded_bytes(seed ^ i, (len - (i % 3) * 1000) as usize),
                    off,
                )
                .unwrap(),
            3 => f.write_all_at(&vec![0u8; len as usize], off).unwrap(),
            _ => {}
        }
        off += len;
        i += 1;
    }
}

/// `(total, used, free)` bytes of a filesystem.
pub type Usage = (u64, u64, u64);

/// The number after `key` on the first line of `text` that contains it
/// (`"Free blocks:              20392"` → 20392).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The usage of the filesystem in the file `volume` (the filesystem alone, no
/// partition table) as its own tools count it: `dumpe2fs -h` (ext: "Block count",
/// "Free blocks", "Block size"), `fsck.fat -n -v` (FAT: "used/total clusters",
/// "bytes per cluster"), `ntfsinfo -m` + `ntfscluster` (NTFS: "Volume Size in
/// Clusters", "Cluster Size", "bytes of free space"). `None` (with a skip message)
/// when the tool is missing.
pub fn usage_by_tools(volume: &Path, kind: &str) -> Option<Usage> {
    let text = |cmd: &mut Command| String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned();
    match kind {
        "ext2" | "ext3" | "ext4" => {
            if !have_tool("dumpe2fs") {
                return None;
            }
            let t = text(Command::new("dumpe2fs").arg("-h").arg(volume));
            let bs = number_after(&t, "Block size:")?;
            let total = number_after(&t, "Block count:")? * bs;
            let free = number_after(&t, "Free blocks:")? * bs;
            Some((total, total - free, free))
        }
        "fat12" | "fat16" | "fat32" => {
            if !have_tool("fsck.fat") {
                return None;
            }
            let t = text(Command::new("fsck.fat").arg("-n").arg("-v").arg(volume));
            // "       512 bytes per cluster": the number comes first.
            let cs: u64 = t
                .lines()
                .find(|l| l.contains("bytes per cluster"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            // Last line: "<volume>: 5 files, 4/2847 clusters".
            let last = t.lines().rev().find(|l| l.ends_with(" clusters"))?;
            let frac = last.split_whitespace().rev().nth(1)?;
            let (used, total) = frac.split_once('/')?;
            let (used, total): (u64, u64) = (used.parse().ok()?, total.parse().ok()?);
            Some((total * cs, used * cs, (total - used) * cs))
        }
        "ntfs" => {
            if !have_tool("ntfsinfo") || !have_tool("ntfscluster") {
                return None;
            }
            let info = text(Command::new("ntfsinfo").arg("-m").arg(volume));
            let total = number_after(&info, "Volume Size in Clusters:")?
                * number_after(&info, "Cluster Size:")?;
            let c = text(Command::new("ntfscluster").arg(volume));
            let free = number_after(&c, "bytes of free space")?;
            Some((total, total - free, free))
        }
        _ => None,
    }
}

/// `vmback inspect --json IMAGE`: every volume's name and usage (`None` where the
/// report has none), and the report's warnings.
pub fn inspect_usage(image: &Path) -> (Vec<(String, Option<Usage>)>, Vec<String>) {
    let out = run_ok(vmback().args(["inspect", "--json"]).arg(image));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vols = v["volumes"]["volumes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|vol| {
                    let u = &vol["usage"];
                    let usage = u["total_bytes"].as_u64().map(|t| {
                        (
                            t,
                            u["used_bytes"].as_u64().unwrap(),
                            u["free_bytes"].as_u64().unwrap(),
                        )
                    });
                    (vol["name"].as_str().unwrap().to_string(), usage)
                })
                .collect()
        })
        .unwrap_or_default();
    let warnings = v["warnings"]
        .as_array()
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (vols, warnings)
}

/// Copies bytes `start..start + len` of the raw disk `raw` into a new file `out` (a
/// volume on its own, for the filesystem tools), holes kept sparse.
pub fn cut_volume(raw: &Path, start: u64, len: u64, out: &Path) {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(raw).unwrap();
    let dst = std::fs::File::create(out).unwrap();
    dst.set_len(len).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], start + done).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], done).unwrap();
        }
        done += n as u64;
    }
}

/// `(name, start, len, filesystem)` of every volume in `vmback inspect --json IMAGE`.
pub fn inspect_volumes(image: &Path) -> Vec<(String, u64, u64, Option<String>)> {
    let out = run_ok(vmback().args(["inspect", "--json"]).arg(image));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["volumes"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vol| {
            (
                vol["name"].as_str().unwrap().to_string(),
                vol["start"].as_u64().unwrap(),
                vol["len"].as_u64().unwrap(),
                vol["filesystem"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Waits up to 20 s for `path` to exist (a process under test reaching a point);
/// whether it does.
pub fn wait_for_file(path: &Path) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    path.exists()
}

/// `kill -s SIGNAL pid`.
pub fn send_signal(pid: u32, signal: &str) {
    run_ok(Command::new("kill").args(["-s", signal, &pid.to_string()]));
}

/// Delivers `signal` mid-work: the child is stopped first (asserting it is still
/// running), the signal queued, then the child resumed, so it cannot finish first.
pub fn signal_while_running(child: &mut std::process::Child, signal: &str) {
    send_signal(child.id(), "STOP");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the process ended before it could be stopped"
    );
    send_signal(child.id(), signal);
    send_signal(child.id(), "CONT");
}
