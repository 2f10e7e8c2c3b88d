//! Repository and capture (issue 3/7): full and incremental backups of every container
//! format restore byte-identical; each change-tracking method reads only what changed
//! (proved by the bytes the backup reports reading); hooks, vanished sources, a full
//! repository disk and SIGKILL at random moments leave the repository valid.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// The default chunk size (`vmback init` without `--chunk-size`).
const CHUNK: u64 = vmback::repo::config::DEFAULT_CHUNK_SIZE as u64;

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    repo
}

/// Runs `vmback backup --json` and returns its report.
fn backup(repo: &Path, vm: &str, extra: &[&str], sources: &[&Path]) -> Value {
    let out = run_ok(
        vmback()
            .arg("backup")
            .arg(repo)
            .args(["--vm", vm])
            .args(extra)
            .args(sources)
            .arg("--json"),
    );
    serde_json::from_slice(&out.stdout).expect("backup --json prints JSON")
}

/// SHA-256 of `vmback export REPO PATH`.
/// Asserts that disk0 of `vm`'s latest restore point exports to the bytes of `disk`.
fn assert_latest_is(repo: &Path, vm: &str, disk: &Path, scratch: &Path) {
    assert_eq!(
        export_sha(repo, &format!("{vm}/latest/disk0"), scratch),
        sha256_file(disk),
        "{vm}/latest/disk0 against {}",
        disk.display()
    );
}

fn export_sha(repo: &Path, path: &str, scratch: &Path) -> String {
    let out = scratch.join("export.raw");
    run_ok(
        vmback()
            .arg("export")
            .arg(repo)
            .arg(path)
            .arg("-o")
            .arg(&out)
            .arg("--force"),
    );
    let sha = sha256_file(&out);
    std::fs::remove_file(&out).unwrap();
    sha
}

fn verify_clean(repo: &Path) {
    let out = run_ok(vmback().arg("verify").arg(repo).arg("--read-data"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok:"), "{text}");
}

fn snapshot_count(repo: &Path) -> usize {
    let out = run_ok(vmback().arg("snapshots").arg(repo).arg("--json"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

fn qemu_io(image: &Path, fmt: &str, cmd: &str) {
    run_ok(
        Command::new("qemu-io")
            .args(["-f", fmt, "-c", cmd])
            .arg(image)
            .stdout(Stdio::null()),
    );
}

fn qemu_img(args: &[&str]) {
    run_ok(Command::new("qemu-img").args(args));
}

fn disk_stats(report: &Value, disk: usize) -> &Value {
    &report["disks"][disk]["stats"]
}

#[test]
fn every_format_full_and_fifth_incremental_restore_identical() {
    if !have_tool("qemu-img") || !have_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let raw = dir.path().join("seed.raw");
    make_seeded_raw(&raw, 24 * MIB, 7);
    for (fmt, ext) in [
        ("raw", "img"),
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vpc", "vhd"),
        ("vhdx", "vhdx"),
    ] {
        let image = dir.path().join(format!("disk.{ext}"));
        qemu_img(&[
            "convert",
            "-O",
            fmt,
            raw.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let vm = format!("vm-{ext}");
        let full = backup(&repo, &vm, &[], &[&image]);
        assert_eq!(full["disks"][0]["method"], "full", "{full}");
        let want = qemu_raw_sha(&image, Some(fmt), dir.path());
        assert_eq!(
            export_sha(&repo, &format!("{vm}/latest/disk0"), dir.path()),
            want,
            "{fmt} full"
        );
        for round in 1..=5u64 {
            // A day of writes: new data, an overwrite with zeros, a write past the old data.
            let off = round * 3 * MIB + round * 4096;
            qemu_io(
                &image,
                fmt,
                &format!("write -P {} {off} 300k", 0x40 + round),
            );
            qemu_io(&image, fmt, &format!("write -z {} 64k", round * MIB));
            let report = backup(&repo, &vm, &[], &[&image]);
            assert!(report["parent"].is_string(), "{report}");
            let want = qemu_raw_sha(&image, Some(fmt), dir.path());
            let got = export_sha(&repo, &format!("{vm}/latest/disk0"), dir.path());
            assert_eq!(got, want, "{fmt} incremental {round}");
        }
        assert_eq!(
            export_sha(&repo, &format!("{vm}/latest/disk0"), dir.path()),
            qemu_raw_sha(&image, Some(fmt), dir.path())
        );
    }
    verify_clean(&repo);
    assert_eq!(snapshot_count(&repo), 30);
}

#[test]
fn differencing_layers_read_only_what_the_overlay_holds() {
    if !have_tool("qemu-img") || !have_tool("qemu-io") {
        return;
    }
    for fmt in ["qcow2", "vmdk"] {
        let dir = tempfile::tempdir().unwrap();
        let repo = init_repo(dir.path());
        let raw = dir.path().join("seed.raw");
        std::fs::write(&raw, seeded_bytes(11, 48 * MIB as usize)).unwrap();
        let base = dir.path().join(format!("base.{fmt}"));
        qemu_img(&[
            "convert",
            "-O",
            fmt,
            raw.to_str().unwrap(),
            base.to_str().unwrap(),
        ]);
        let full = backup(&repo, "web", &[], &[&base]);
        assert!(disk_stats(&full, 0)["bytes_read"].as_u64().unwrap() >= 48 * MIB);

        // The hypervisor freezes base and writes to an overlay from now on.
        let mut top = base.clone();
        for (level, (off, len)) in [(5 * MIB + 4096, 2 * MIB), (30 * MIB, MIB / 2)]
            .into_iter()
            .enumerate()
        {
            let ov = dir.path().join(format!("ov{level}.{fmt}"));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                fmt,
                "-b",
                top.to_str().unwrap(),
                "-F",
                fmt,
                ov.to_str().unwrap(),
            ]);
            qemu_io(&ov, fmt, &format!("write -P 0x5{level} {off} {len}"));
            let report = backup(&repo, "web", &[], &[&ov]);
            assert_eq!(
                report["disks"][0]["method"], "differencing",
                "{fmt}: {report}"
            );
            let stats = disk_stats(&report, 0);
            let read = stats["bytes_read"].as_u64().unwrap();
            // Only the overlay's clusters/grains (aligned up) plus its metadata are read.
            assert!(
                read <= len + 2 * MIB,
                "{fmt}: read {read} bytes for a {len}-byte change"
            );
            assert!(
                stats["chunks_unchanged"].as_u64().unwrap() >= 44,
                "{report}"
            );
            assert_eq!(
                export_sha(&repo, "web/latest/disk0", dir.path()),
                qemu_raw_sha(&ov, None, dir.path()),
                "{fmt} level {level}"
            );
            top = ov;
        }
        // A base modified after its capture no longer matches: everything is read.
        qemu_io(&base, fmt, "write -P 0x77 0 4k");
        let ov = dir.path().join(format!("again.{fmt}"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            fmt,
            "-b",
            base.to_str().unwrap(),
            "-F",
            fmt,
            ov.to_str().unwrap(),
        ]);
        let report = backup(&repo, "web", &[], &[&ov]);
        assert_eq!(report["disks"][0]["method"], "fallback", "{report}");
        assert_eq!(
            export_sha(&repo, "web/latest/disk0", dir.path()),
            qemu_raw_sha(&ov, None, dir.path())
        );
        verify_clean(&repo);
    }
}

#[test]
fn changed_extents_file_reads_only_listed_chunks() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, seeded_bytes(3, 64 * MIB as usize)).unwrap();
    backup(&repo, "db", &[], &[&disk]);

    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    let changes = [
        (10 * MIB + 100, 5000u64),
        (40 * MIB - 10, 20),
        (63 * MIB, 4096),
    ];
    for (i, (off, len)) in changes.iter().enumerate() {
        f.write_all_at(&vec![0xA0 + i as u8; *len as usize], *off)
            .unwrap();
    }
    // VMware's DiskChangeInfo shape.
    let areas: Vec<String> = changes
        .iter()
        .map(|(o, l)| format!("{{\"start\": {o}, \"length\": {l}}}"))
        .collect();
    let extents = dir.path().join("changes.json");
    std::fs::write(
        &extents,
        format!(
            "{{\"startOffset\": 0, \"length\": {}, \"changedArea\": [{}]}}",
            64 * MIB,
            areas.join(",")
        ),
    )
    .unwrap();
    let arg = format!("--changed-extents={}", extents.display());
    let report = backup(&repo, "db", &[&arg], &[&disk]);
    assert_eq!(report["disks"][0]["method"], "changed-extents", "{report}");
    let read = disk_stats(&report, 0)["bytes_read"].as_u64().unwrap();
    // Four chunks touched (the second change straddles a chunk boundary), plus the
    // few KiB the format probe reads when opening.
    assert!(
        (4 * CHUNK..4 * CHUNK + 64 * 1024).contains(&read),
        "{report}"
    );
    assert_latest_is(&repo, "db", &disk, dir.path());

    // Extents past the end of the disk do not line up: full read, with a warning.
    std::fs::write(
        &extents,
        format!("[{{\"offset\": {}, \"length\": 1}}]", 64 * MIB),
    )
    .unwrap();
    let arg = format!("--changed-extents={}", extents.display());
    let report = backup(&repo, "db", &[&arg], &[&disk]);
    assert_eq!(report["disks"][0]["method"], "fallback", "{report}");
    assert!(
        report["warnings"][0].as_str().unwrap().contains("outside"),
        "{report}"
    );
    assert_latest_is(&repo, "db", &disk, dir.path());

    // A resized disk does not line up either.
    f.set_len(65 * MIB).unwrap();
    let report = backup(&repo, "db", &[&arg], &[&disk]);
    assert_eq!(report["disks"][0]["method"], "fallback", "{report}");
    assert!(
        report["warnings"][0]
            .as_str()
            .unwrap()
            .contains("bytes now"),
        "{report}"
    );
    assert_latest_is(&repo, "db", &disk, dir.path());
    verify_clean(&repo);
}

#[test]
fn hooks_run_around_the_capture_and_a_failing_pre_hook_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    make_seeded_raw(&disk, 8 * MIB, 5);
    let log = dir.path().join("hooks.log");
    let pre = format!(
        "echo \"$VMBACK_PHASE $VMBACK_VM $VMBACK_HOST\" >> {}",
        log.display()
    );
    let post = format!("echo \"$VMBACK_PHASE $VMBACK_STATUS\" >> {}", log.display());
    backup(
        &repo,
        "app",
        &["--host", "hv1", "--pre-hook", &pre, "--post-hook", &post],
        &[&disk],
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre app hv1\npost success\n"
    );

    std::fs::remove_file(&log).unwrap();
    let failing = format!("echo pre >> {}; exit 4", log.display());
    let err = run_err(
        vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "app", "--pre-hook", &failing, "--post-hook", &post])
            .arg(&disk),
    );
    assert!(
        err.contains("pre hook") && err.contains("exit status: 4"),
        "{err}"
    );
    // The post hook ran anyway (a frozen guest is thawed), told of the failure.
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pre\npost failure\n"
    );
    assert_eq!(snapshot_count(&repo), 1);
    verify_clean(&repo);
    backup(&repo, "app", &[], &[&disk]);
    assert_eq!(snapshot_count(&repo), 2);
}

#[test]
fn a_signal_stops_the_backup_cleanly_and_the_post_hook_still_runs() {
    // Ctrl-C or a service stop mid-capture: the guest must not stay frozen.
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let repo = init_repo(dir.path());
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, seeded_bytes(11, 32 * MIB as usize)).unwrap();
        let frozen = dir.path().join("frozen");
        let status = dir.path().join("status");
        let child = vmback()
            .current_dir(dir.path())
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "sig", "--limit-read", "4MiB/s"])
            .args(["--pre-hook", "touch frozen"])
            .args(["--post-hook", "echo \"$VMBACK_STATUS\" > status; rm frozen"])
            .arg(&disk)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_file(&frozen), "the pre hook did not run");
        std::thread::sleep(Duration::from_millis(500));
        send_signal(child.id(), signal);
        let stopped = Instant::now();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // The whole disk takes 8 s at this rate: it stopped at the next chunk.
        assert!(stopped.elapsed() < Duration::from_secs(4), "{err}");
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}")),
            "{err}"
        );
        assert!(!frozen.exists(), "SIG{signal}: the post hook did not run");
        assert_eq!(std::fs::read_to_string(&status).unwrap(), "failure\n");
        assert_eq!(snapshot_count(&repo), 0);
        verify_clean(&repo);
        backup(&repo, "sig", &[], &[&disk]);
        assert_latest_is(&repo, "sig", &disk, dir.path());
    }
}

#[test]
fn a_signal_during_the_pre_hook_abandons_it_and_the_post_hook_runs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    make_seeded_raw(&disk, 4 * MIB, 12);
    let started = dir.path().join("started");
    let child = vmback()
        .current_dir(dir.path())
        .arg("backup")
        .arg(&repo)
        .args([
            "--vm",
            "sig",
            "--pre-hook",
            "touch started; sleep 30; touch late",
        ])
        .args(["--post-hook", "echo \"$VMBACK_STATUS\" > status"])
        .arg(&disk)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_file(&started), "the pre hook did not start");
    let sent = Instant::now();
    send_signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(sent.elapsed() < Duration::from_secs(5), "{err}");
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("status")).unwrap(),
        "failure\n"
    );
    assert!(!dir.path().join("late").exists());
    assert_eq!(snapshot_count(&repo), 0);
}

#[test]
fn a_source_that_disappears_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, seeded_bytes(9, 48 * MIB as usize)).unwrap();
    let child = vmback()
        .arg("backup")
        .arg(&repo)
        .args(["--vm", "gone", "--limit-read", "16MiB/s"])
        .arg(&disk)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // The storage under the VM goes away mid-backup.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "backup of a vanished source succeeded: {err}"
    );
    assert!(err.contains("disk0") && err.contains("offset"), "{err}");
    assert_eq!(snapshot_count(&repo), 0);
    verify_clean(&repo);
    std::fs::write(&disk, seeded_bytes(9, 48 * MIB as usize)).unwrap();
    backup(&repo, "gone", &[], &[&disk]);
    assert_latest_is(&repo, "gone", &disk, dir.path());
}

/// Unmounts a tmpfs when the test ends, whatever happens.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_repository_disk_fails_cleanly_and_the_next_backup_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("VMBACK_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "cannot mount a small tmpfs (root needed) but VMBACK_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: cannot mount a tmpfs here (not root?)");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    let repo = mnt.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, seeded_bytes(21, 24 * MIB as usize)).unwrap();
    let err = run_err(
        vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "big"])
            .arg(&disk),
    );
    assert!(err.contains("full"), "{err}");
    assert_eq!(snapshot_count(&repo), 0);
    verify_clean(&repo);
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&mnt),
    );
    backup(&repo, "big", &[], &[&disk]);
    verify_clean(&repo);
    assert_latest_is(&repo, "big", &disk, dir.path());
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_bad_restore_point() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, seeded_bytes(33, 40 * MIB as usize)).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = x % 1800;
        let mut child = vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "crash", "--limit-read", "32MiB/s"])
            .arg(&disk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // Change the disk a little between runs so later runs store new chunks too.
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(&[round as u8 + 1; 4096], (round as u64 * 3 + 1) * MIB)
            .unwrap();
    }
    verify_clean(&repo);
    backup(&repo, "crash", &[], &[&disk]);
    verify_clean(&repo);
    assert_latest_is(&repo, "crash", &disk, dir.path());
}

#[test]
fn verify_names_damaged_and_missing_chunks_and_their_users() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, seeded_bytes(44, 6 * MIB as usize)).unwrap();
    let first = backup(&repo, "v", &[], &[&disk]);
    backup(&repo, "v", &["--full"], &[&disk]);
    let mut chunks: Vec<PathBuf> = walk(&repo.join("chunks"));
    chunks.sort();
    assert_eq!(chunks.len() as u64, 6 * MIB / CHUNK);
    let mut bytes = std::fs::read(&chunks[0]).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    std::fs::write(&chunks[0], bytes).unwrap();
    std::fs::remove_file(&chunks[1]).unwrap();

    let out = vmback().arg("verify").arg(&repo).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "missing chunk not reported");
    let out = vmback()
        .arg("verify")
        .arg(&repo)
        .arg("--read-data")
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = report["bad_chunks"].as_array().unwrap();
    assert_eq!(bad.len(), 2, "{report}");
    let problems: Vec<&str> = bad.iter().map(|b| b["problem"].as_str().unwrap()).collect();
    assert!(problems.contains(&"missing"), "{report}");
    assert!(
        problems.iter().any(|p| p.starts_with("damaged")),
        "{report}"
    );
    for b in bad {
        let users = b["used_by"].as_array().unwrap();
        assert_eq!(
            users.len(),
            2,
            "both restore points use each chunk: {report}"
        );
        assert_eq!(users[0]["disk"], "disk0");
        assert_eq!(users[0]["vm"], "v");
    }
    let text = String::from_utf8_lossy(
        &vmback()
            .arg("verify")
            .arg(&repo)
            .arg("--read-data")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        text.contains(&first["short_id"].as_str().unwrap().to_string()),
        "{text}"
    );
    // Reading a damaged restore point is an error naming the chunk, never bad data.
    let err = run_err(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("v/latest/disk0")
            .arg("-o")
            .arg(dir.path().join("x.raw")),
    );
    assert!(
        err.contains("chunk") && err.contains("(disk offset"),
        "{err}"
    );
    // It keeps its kind through the reader: the hint to run verify shows.
    assert!(err.contains("hint: run `vmback verify"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn restore_points_by_name_id_prefix_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    std::fs::write(&a, seeded_bytes(1, 3 * MIB as usize)).unwrap();
    std::fs::write(&b, seeded_bytes(2, 2 * MIB as usize + 512)).unwrap();
    let ra = backup(
        &repo,
        "alpha",
        &["--tag", "daily", "--datastore", "ds1"],
        &[&a, &b],
    );
    let rb = backup(&repo, "beta", &[], &[&b]);
    let text =
        String::from_utf8_lossy(&run_ok(vmback().arg("snapshots").arg(&repo)).stdout).into_owned();
    assert!(
        text.contains("alpha") && text.contains("beta") && text.contains("daily"),
        "{text}"
    );
    let out = run_ok(
        vmback()
            .arg("snapshots")
            .arg(&repo)
            .args(["--vm", "beta", "--json"]),
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], rb["snapshot"]);

    let prefix = &ra["snapshot"].as_str().unwrap()[..6];
    assert_eq!(
        export_sha(&repo, &format!("{prefix}/disk1"), dir.path()),
        sha256_file(&b)
    );
    let name = ra["name"].as_str().unwrap();
    assert_eq!(
        export_sha(&repo, &format!("alpha/{name}/disk0"), dir.path()),
        sha256_file(&a)
    );
    let err = run_err(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("latest/disk0")
            .arg("-o")
            .arg(dir.path().join("x")),
    );
    assert!(err.contains("ambiguous") && err.contains("--vm"), "{err}");
    let err = run_err(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("alpha/latest/disk7")
            .arg("-o")
            .arg(dir.path().join("x")),
    );
    assert!(err.contains("disk0, disk1"), "{err}");
    // Not a repository, and a non-empty directory for init.
    let err = run_err(vmback().arg("snapshots").arg(dir.path()));
    assert!(err.contains("not a vmback repository"), "{err}");
    let err = run_err(vmback().arg("init").arg(dir.path()));
    assert!(err.contains("not empty"), "{err}");
}

/// A `qemu-nbd` serving one image on a unix socket, killed when dropped.
struct QemuNbd {
    child: std::process::Child,
    uri: String,
}

impl QemuNbd {
    fn start(dir: &Path, image: &Path, bitmap: &str) -> QemuNbd {
        let sock = dir.join(format!("nbd-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "-x", "disk", "-B", bitmap, "-k"])
            .arg(&sock)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start qemu-nbd");
        for _ in 0..200 {
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

/// `raw` converted to a qcow2 named `name` beside it, with the persistent dirty
/// bitmap `b0` added (tracking from now on, as a running QEMU's would).
fn qcow2_with_bitmap(raw: &Path, name: &str) -> PathBuf {
    let image = raw.with_file_name(name);
    qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    qemu_img(&["bitmap", "--add", image.to_str().unwrap(), "b0"]);
    image
}

/// Over NBD, reads go out several at a time and run ahead along the chunks a step
/// announced: a sparse disk with data at odd offsets (so announced ranges end
/// mid-chunk) must still come back exact, with only its data read.
#[test]
fn nbd_full_of_a_sparse_disk_reads_ahead_exactly() {
    if !have_tool("qemu-nbd") || !have_tool("qemu-img") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let raw = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(96 * MIB).unwrap();
    let bytes = seeded_bytes(77, 24 * MIB as usize);
    let mut used = 0;
    // Runs of 64 KiB to 3 MiB, at offsets that are not chunk- or cluster-aligned.
    for (i, at) in [0, 1, 2, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77, 90]
        .iter()
        .enumerate()
    {
        let len = (64 << 10) * (1 + (i * 7) % 48);
        f.write_all_at(&bytes[used..used + len], at * MIB + 4096 * i as u64 + 512)
            .unwrap();
        used += len;
    }
    drop(f);
    let image = qcow2_with_bitmap(&raw, "sparse.qcow2");
    let map = Command::new("qemu-img")
        .args(["map", "--output=json", image.to_str().unwrap()])
        .output()
        .unwrap();
    let map: Value = serde_json::from_slice(&map.stdout).unwrap();
    let allocated: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    let nbd = QemuNbd::start(dir.path(), &image, "b0");
    let report = backup(&repo, "kvm1", &[], &[Path::new(&nbd.uri)]);
    drop(nbd);
    let read = disk_stats(&report, 0)["bytes_read"].as_u64().unwrap();
    assert!(
        read >= used as u64 && read <= allocated,
        "read {read} bytes for {used} written, {allocated} allocated: {report}"
    );
    assert_eq!(
        export_sha(&repo, "kvm1/latest/disk0", dir.path()),
        sha256_file(&raw)
    );
}

#[test]
fn nbd_dirty_bitmap_reads_only_dirty_chunks() {
    if !have_tool("qemu-nbd") || !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let day0 = dir.path().join("day0.raw");
    std::fs::write(&day0, seeded_bytes(55, 32 * MIB as usize)).unwrap();
    let live = qcow2_with_bitmap(&day0, "live.qcow2");
    {
        let nbd = QemuNbd::start(dir.path(), &live, "b0");
        let full = backup(
            &repo,
            "kvm1",
            &["--dirty-bitmap", "b0"],
            &[Path::new(&nbd.uri)],
        );
        assert_eq!(full["disks"][0]["method"], "full", "{full}");
    }
    assert_eq!(
        export_sha(&repo, "kvm1/latest/disk0", dir.path()),
        sha256_file(&day0)
    );

    // A day of writes landing through QEMU's block layer, so the bitmap records them.
    use std::os::unix::fs::FileExt;
    let day1 = dir.path().join("day1.raw");
    std::fs::copy(&day0, &day1).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&day1).unwrap();
    f.write_all_at(&[0xEE; 70_000], 3 * MIB + 1000).unwrap();
    f.write_all_at(&[0xDD; 4096], 20 * MIB).unwrap();
    let ov = dir.path().join("ov.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        day1.to_str().unwrap(),
        "-F",
        "raw",
        ov.to_str().unwrap(),
    ]);
    qemu_img(&[
        "rebase",
        "-q",
        "-b",
        live.to_str().unwrap(),
        "-F",
        "qcow2",
        ov.to_str().unwrap(),
    ]);
    qemu_img(&["commit", "-q", ov.to_str().unwrap()]);

    let nbd = QemuNbd::start(dir.path(), &live, "b0");
    let report = backup(
        &repo,
        "kvm1",
        &["--dirty-bitmap", "b0"],
        &[Path::new(&nbd.uri)],
    );
    assert_eq!(report["disks"][0]["method"], "dirty-bitmap", "{report}");
    let read = disk_stats(&report, 0)["bytes_read"].as_u64().unwrap();
    // Two dirty chunks; nothing else is read.
    assert!(read <= 2 * CHUNK, "read {read} bytes: {report}");
    assert_eq!(
        disk_stats(&report, 0)["chunks_unchanged"].as_u64(),
        Some(32 * MIB / CHUNK - 2),
        "{report}"
    );
    drop(nbd);
    assert_eq!(
        export_sha(&repo, "kvm1/latest/disk0", dir.path()),
        sha256_file(&day1)
    );

    // Asking for a bitmap the previous restore point was not taken with: full read.
    qemu_img(&["bitmap", "--add", live.to_str().unwrap(), "other"]);
    let nbd = QemuNbd::start(dir.path(), &live, "other");
    let report = backup(
        &repo,
        "kvm1",
        &["--dirty-bitmap", "other"],
        &[Path::new(&nbd.uri)],
    );
    assert_eq!(report["disks"][0]["method"], "fallback", "{report}");
    assert!(disk_stats(&report, 0)["bytes_read"].as_u64().unwrap() >= 32 * MIB);
    drop(nbd);
    assert_eq!(
        export_sha(&repo, "kvm1/latest/disk0", dir.path()),
        sha256_file(&day1)
    );

    // The NBD server going away mid-backup fails the backup cleanly. The disk is
    // larger than what reads ahead of the workers may hold (32 MiB), so the backup
    // still needs the server when it goes.
    let big_raw = dir.path().join("big.raw");
    std::fs::write(&big_raw, seeded_bytes(56, 96 * MIB as usize)).unwrap();
    let big = qcow2_with_bitmap(&big_raw, "big.qcow2");
    let nbd = QemuNbd::start(dir.path(), &big, "b0");
    let child = vmback()
        .arg("backup")
        .arg(&repo)
        .args([
            "--vm",
            "kvm1",
            "--full",
            "--limit-read",
            "16MiB/s",
            &nbd.uri,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    drop(nbd);
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_clean(&repo);
    assert_eq!(snapshot_count(&repo), 3);
}
