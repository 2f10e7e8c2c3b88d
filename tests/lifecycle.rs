//! Lifecycle (issue 5/7): forget and gc, gc beside running backups, SIGKILL of backup
//! and gc at random moments, and every kind of damage detected by verify.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;
/// The default chunk size (`vmback init` without `--chunk-size`).
const CHUNK: usize = vmback::repo::config::DEFAULT_CHUNK_SIZE as usize;

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    repo
}

fn backup(repo: &Path, vm: &str, disk: &Path) -> Value {
    let out = run_ok(
        vmback()
            .arg("backup")
            .arg(repo)
            .args(["--vm", vm, "--json"])
            .arg(disk),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spawn_backup(repo: &Path, vm: &str, disk: &Path, rate: &str) -> Child {
    vmback()
        .arg("backup")
        .arg(repo)
        .args(["--vm", vm, "--limit-read", rate])
        .arg(disk)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn gc(repo: &Path) -> Value {
    let out = run_ok(
        vmback()
            .arg("gc")
            .arg(repo)
            .args(["--grace", "0s", "--json"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn verify_clean(repo: &Path) {
    let out = run_ok(vmback().arg("verify").arg(repo).arg("--read-data"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok:"), "{text}");
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

fn count(repo: &Path, dir: &str) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |it| {
            it.map(|e| {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    1
                }
            })
            .sum()
        })
    }
    walk(&repo.join(dir))
}

#[test]
fn forget_then_gc_reclaims_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    std::fs::write(&a, seeded_bytes(1, 6 * MIB)).unwrap();
    std::fs::write(&b, seeded_bytes(2, 4 * MIB)).unwrap();
    backup(&repo, "va", &a);
    backup(&repo, "vb", &b);
    std::fs::write(&a, seeded_bytes(3, 6 * MIB)).unwrap();
    backup(&repo, "va", &a);
    assert_eq!(count(&repo, "chunks"), 16 * MIB / CHUNK);

    // Dry runs change nothing.
    let out = run_ok(
        vmback()
            .arg("forget")
            .arg(&repo)
            .args(["--keep-last", "1", "--dry-run"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("would remove") && text.contains("last 1"),
        "{text}"
    );
    let r = run_ok(
        vmback()
            .arg("gc")
            .arg(&repo)
            .args(["--grace", "0s", "--dry-run", "--json"]),
    );
    let r: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(r["chunks_removed"], 0);
    assert_eq!(count(&repo, "snapshots"), 3);

    // A policy never removes a VM's last restore point: vb keeps its only one.
    let out = run_ok(vmback().arg("forget").arg(&repo).args(["--keep-last", "1"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 removed"));
    assert_eq!(count(&repo, "snapshots"), 2);
    // The default grace keeps fresh chunks; --grace 0s removes them.
    let r = run_ok(vmback().arg("gc").arg(&repo).arg("--json"));
    let r: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        (r["chunks_removed"].as_u64(), r["kept_young"].as_u64()),
        // The first backup of va: its chunks and its index.
        (Some(0), Some((6 * MIB / CHUNK) as u64 + 1)),
        "{r}"
    );
    let r = gc(&repo);
    assert_eq!(
        r["chunks_removed"].as_u64(),
        Some((6 * MIB / CHUNK) as u64),
        "{r}"
    );
    assert!(r["bytes_reclaimed"].as_u64().unwrap() >= 6 * MIB as u64);
    assert_eq!(count(&repo, "chunks"), 10 * MIB / CHUNK);
    verify_clean(&repo);
    assert_eq!(
        export_sha(&repo, "va/latest/disk0", dir.path()),
        sha256_file(&a)
    );
    assert_eq!(
        export_sha(&repo, "vb/latest/disk0", dir.path()),
        sha256_file(&b)
    );
    // Explicit removal, and --allow-empty.
    run_ok(
        vmback()
            .arg("forget")
            .arg(&repo)
            .args(["--vm", "vb", "latest"]),
    );
    run_ok(
        vmback()
            .arg("forget")
            .arg(&repo)
            .args(["--allow-empty", "--vm", "va"]),
    );
    assert_eq!(count(&repo, "snapshots"), 0);
}

#[test]
fn gc_beside_two_running_backups_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let x = dir.path().join("x.raw");
    let y = dir.path().join("y.raw");
    std::fs::write(&x, seeded_bytes(10, 24 * MIB)).unwrap();
    std::fs::write(&y, seeded_bytes(11, 24 * MIB)).unwrap();
    // Chunks that no restore point uses any more but that the new backups will meet
    // again by content: exactly what a careless gc would delete under them.
    backup(&repo, "old", &x);
    backup(&repo, "old", &y);
    run_ok(
        vmback()
            .arg("forget")
            .arg(&repo)
            .args(["--vm", "old", "--allow-empty"]),
    );
    assert_eq!(count(&repo, "snapshots"), 0);

    let b1 = spawn_backup(&repo, "vm1", &x, "12MiB/s");
    let b2 = spawn_backup(&repo, "vm2", &y, "12MiB/s");
    let mut runs = 0;
    loop {
        gc(&repo);
        runs += 1;
        if runs > 3 && count(&repo, "snapshots") == 2 {
            break;
        }
        assert!(runs < 200, "backups did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    for b in [b1, b2] {
        let out = b.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    verify_clean(&repo);
    assert_eq!(
        export_sha(&repo, "vm1/latest/disk0", dir.path()),
        sha256_file(&x)
    );
    assert_eq!(
        export_sha(&repo, "vm2/latest/disk0", dir.path()),
        sha256_file(&y)
    );
    // And afterwards gc still keeps all of it.
    gc(&repo);
    verify_clean(&repo);
}

#[test]
fn sigkill_of_backup_and_gc_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("d.raw");
    std::fs::write(&disk, seeded_bytes(20, 16 * MIB)).unwrap();
    backup(&repo, "k", &disk);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    for round in 0..10u8 {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(&seeded_bytes(100 + round as u64, MIB), rnd(15) * MIB as u64)
            .unwrap();
        if round % 3 == 0 {
            run_ok(vmback().arg("forget").arg(&repo).args(["--keep-last", "2"]));
        }
        let mut b = spawn_backup(&repo, "k", &disk, "24MiB/s");
        let mut g = vmback()
            .arg("gc")
            .arg(&repo)
            .args(["--grace", "0s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rnd(700)));
        let _ = g.kill();
        std::thread::sleep(Duration::from_millis(rnd(300)));
        let _ = b.kill();
        let _ = b.wait();
        let _ = g.wait();
    }
    verify_clean(&repo);
    backup(&repo, "k", &disk);
    gc(&repo);
    verify_clean(&repo);
    assert_eq!(
        export_sha(&repo, "k/latest/disk0", dir.path()),
        sha256_file(&disk)
    );
}

#[test]
fn every_kind_of_damage_is_detected_and_a_later_backup_repairs_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let disk = dir.path().join("d.raw");
    std::fs::write(&disk, seeded_bytes(30, 5 * MIB)).unwrap();
    let r1 = backup(&repo, "d", &disk);
    let other = dir.path().join("o.raw");
    std::fs::write(&other, seeded_bytes(31, 2 * MIB)).unwrap();
    let r2 = backup(&repo, "o", &other);
    let chunk_of = |offset: usize, file: &Path| {
        let data = std::fs::read(file).unwrap();
        repo.join(vmback::repo::chunk::ChunkId::of(&data[offset..offset + CHUNK]).key())
    };
    let verify = || {
        let out = vmback()
            .arg("verify")
            .arg(&repo)
            .args(["--read-data", "--json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        )
    };
    // A flipped byte, a truncated chunk, a missing chunk.
    let flipped = chunk_of(0, &disk);
    let mut b = std::fs::read(&flipped).unwrap();
    b[20] ^= 1;
    std::fs::write(&flipped, b).unwrap();
    let truncated = chunk_of(CHUNK, &disk);
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::remove_file(chunk_of(2 * CHUNK, &disk)).unwrap();
    let (code, report) = verify();
    assert_eq!(code, Some(3));
    let problems: Vec<String> = report["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["problem"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 3, "{report}");
    assert!(problems.iter().any(|p| p == "missing"), "{problems:?}");
    assert_eq!(
        problems.iter().filter(|p| p.starts_with("damaged")).count(),
        2,
        "{problems:?}"
    );
    for c in report["bad_chunks"].as_array().unwrap() {
        assert_eq!(c["used_by"][0]["vm"], "d", "{report}");
    }
    // The other VM still restores.
    assert_eq!(
        export_sha(&repo, "o/latest/disk0", dir.path()),
        sha256_file(&other)
    );
    // A later good backup writes the damaged and missing chunks again.
    let r = backup(&repo, "d", &disk);
    assert!(
        r["disks"][0]["stats"]["chunks_new"].as_u64().unwrap() >= 3,
        "{r}"
    );
    verify_clean(&repo);
    assert_eq!(
        export_sha(
            &repo,
            &format!("{}/disk0", &r1["short_id"].as_str().unwrap()),
            dir.path()
        ),
        sha256_file(&disk)
    );

    // A damaged index and a damaged manifest.
    let m1 = repo
        .join("snapshots")
        .join(r1["snapshot"].as_str().unwrap());
    let manifest: Value = serde_json::from_slice(&std::fs::read(&m1).unwrap()).unwrap();
    let index = repo
        .join("indexes")
        .join(manifest["disks"][0]["index"].as_str().unwrap());
    let mut b = std::fs::read(&index).unwrap();
    let n = b.len();
    b[n - 3] ^= 0x40;
    std::fs::write(&index, b).unwrap();
    let m2 = repo
        .join("snapshots")
        .join(r2["snapshot"].as_str().unwrap());
    let mut b = std::fs::read(&m2).unwrap();
    b[10] ^= 0x01;
    std::fs::write(&m2, b).unwrap();
    let out = vmback().arg("verify").arg(&repo).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BROKEN indexes/") && text.contains("BROKEN snapshots/"),
        "{text}"
    );
    assert!(text.contains("damaged"), "{text}");
    // gc refuses to delete anything while a restore point cannot be read.
    let err = run_err(vmback().arg("gc").arg(&repo).args(["--grace", "0s"]));
    assert!(err.contains("gc stopped"), "{err}");
}
