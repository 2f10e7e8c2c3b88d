//! Helpers shared by the benchmark programs in `tests/bench/`.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// `sync; echo 3 > /proc/sys/vm/drop_caches`; false when not permitted.
pub fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Runs `cmd`; on failure prints it with its output and panics (a benchmark cannot go
/// on; unwinding unmounts what a [`Mounted`] guard holds).
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
        panic!("command failed: {:?}", cmd.get_program());
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

/// SHA-256 of a byte slice.
pub fn sha256_bytes(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// SHA-256 of everything `cmd` writes to stdout, streamed (a 4 GiB restore need not
/// fit in memory); panics like [`run`] when the command fails.
pub fn sha256_stdout(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let o = child.wait_with_output().unwrap();
    if !o.status.success() {
        eprintln!(
            "command failed: {cmd:?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        panic!("command failed: {:?}", cmd.get_program());
    }
    format!("{:x}", h.finalize())
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A mounted filesystem (and the loop device under it, if any), unmounted and
/// detached when dropped, so a failing benchmark leaves no mount behind.
pub struct Mounted {
    pub dir: PathBuf,
    loop_dev: Option<String>,
}

impl Mounted {
    /// `ntfs-3g SOURCE DIR` (SOURCE: a partition image file or a block device).
    pub fn ntfs(source: &Path, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("ntfs-3g").arg(source).arg(dir));
        Mounted {
            dir: dir.to_path_buf(),
            loop_dev: None,
        }
    }

    /// The partition `offset..offset + len` of the disk image `disk`, through a loop
    /// device, mounted as `fs` with options `opts` (`ntfs`: by ntfs-3g; otherwise by
    /// the kernel, `mount -t fs`).
    pub fn partition(
        disk: &Path,
        offset: u64,
        len: u64,
        fs: &str,
        opts: &str,
        dir: &Path,
    ) -> Mounted {
        let o = run(Command::new("losetup")
            .args(["--find", "--show", "--offset", &offset.to_string()])
            .args(["--sizelimit", &len.to_string()])
            .arg(disk));
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        std::fs::create_dir_all(dir).unwrap();
        let mut m = Mounted {
            dir: PathBuf::new(),
            loop_dev: Some(dev.clone()),
        };
        if fs == "ntfs" {
            run(Command::new("ntfs-3g").args(["-o", opts, &dev]).arg(dir));
        } else {
            run(Command::new("mount")
                .args(["-t", fs, "-o", opts, &dev])
                .arg(dir));
        }
        m.dir = dir.to_path_buf();
        m
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let ok = Command::new("umount").arg(&self.dir).status();
            if !ok.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// A GPT disk image with an NTFS partition (p1, "Basic data", label NTFSDATA) and an
/// ext4 partition (p2, "Linux data", label linuxdata), each filled with a tree, made
/// by the real tools: sgdisk, mkntfs + an ntfs-3g FUSE mount (root, /dev/fuse),
/// mke2fs -d. Partitions are built as separate files and spliced in with dd
/// conv=notrunc,sparse, so never-written ranges stay holes of the raw file.
pub struct GptNtfsExt4<'a> {
    pub disk: &'a Path,
    pub disk_size: &'a str,
    pub ntfs_mib: u64,
    pub ext4_mib: u64,
    pub ntfs_tree: &'a Path,
    pub ext4_tree: &'a Path,
    /// Scratch directory (partition images, mount point); removed afterwards.
    pub work: &'a Path,
}

impl GptNtfsExt4<'_> {
    /// Builds the disk; returns the byte offsets of p1 and p2.
    pub fn build(&self) -> [u64; 2] {
        let disk = self.disk;
        let _ = std::fs::remove_file(disk);
        std::fs::create_dir_all(self.work).unwrap();
        run(Command::new("truncate")
            .args(["-s", self.disk_size])
            .arg(disk));
        run(Command::new("sgdisk")
            .args(["-o", "-n", &format!("1:2048:+{}M", self.ntfs_mib)])
            .args(["-t", "1:0700", "-c", "1:Basic data"])
            .args(["-n", &format!("2:0:+{}M", self.ext4_mib)])
            .args(["-t", "2:8300", "-c", "2:Linux data"])
            .arg(disk));
        let [s1, s2] = partition_first_sectors(disk);

        let ntfs = self.work.join("ntfs.img");
        run(Command::new("truncate")
            .args(["-s", &format!("{}M", self.ntfs_mib)])
            .arg(&ntfs));
        run(Command::new("mkntfs")
            .args(["-q", "-Q", "-F", "-L", "NTFSDATA", "-p", &s1.to_string()])
            .args(["-H", "255", "-S", "63", "-c", "4096"])
            .arg(&ntfs));
        {
            let m = Mounted::ntfs(&ntfs, &self.work.join("mnt"));
            run(Command::new("cp")
                .arg("-a")
                .arg(self.ntfs_tree.join("."))
                .arg(&m.dir));
        }
        splice(&ntfs, disk, s1 * 512);
        let _ = std::fs::remove_file(&ntfs);

        let ext4 = self.work.join("ext4.img");
        run(Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "linuxdata", "-d"])
            .arg(self.ext4_tree)
            .arg(&ext4)
            .arg(format!("{}M", self.ext4_mib)));
        splice(&ext4, disk, s2 * 512);
        let _ = std::fs::remove_file(&ext4);
        let _ = std::fs::remove_dir_all(self.work);
        [s1 * 512, s2 * 512]
    }
}

/// First sectors of partitions 1 and 2 of a GPT disk, as sgdisk reports them.
pub fn partition_first_sectors(disk: &Path) -> [u64; 2] {
    [1, 2].map(|n: u32| {
        let o = run(Command::new("sgdisk")
            .args(["-i", &n.to_string()])
            .arg(disk));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("First sector: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .expect("sgdisk -i: no first sector")
    })
}

/// Writes `part` into `disk` at byte `offset` (a MiB multiple), keeping holes.
fn splice(part: &Path, disk: &Path, offset: u64) {
    assert_eq!(offset % (1 << 20), 0, "partitions start on a MiB boundary");
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", &format!("seek={}", offset >> 20)])
        .args(["conv=notrunc,sparse", "status=none"]));
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// This process's nice value (field 19 of /proc/self/stat).
pub fn nice() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .unwrap_or("?")
        .to_string()
}

/// The first line a tool prints for `arg` (stdout, or stderr when stdout is empty).
pub fn tool_version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "holds"
    } else {
        "MISSED"
    }
}
