//! Backup jobs (issue 7): `vmback run JOBFILE` on 12 VMs over 3 hosts and 2
//! datastores, run twice (fulls, then incrementals). The JSON report's start and end
//! times must show that no limit was exceeded and no slot stayed idle while a VM
//! that fitted waited; the failing VM is reported with its attempts; every other VM
//! gives restore points that verify and export identical to the source. `--dry-run`
//! leaves the repository byte-identical; invalid job files are refused before
//! anything runs, naming file, line and key.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Process scheduling slack when reading recorded times (milliseconds).
const TOLERANCE_MS: i64 = 150;

const MAX_CONCURRENT: usize = 4;
const MAX_PER_HOST: usize = 2;
const MAX_PER_DATASTORE: usize = 3;

/// Every file and directory under `dir` with the SHA-256 of each file.
fn tree_hash(dir: &Path) -> String {
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            let rel = e.strip_prefix(root).unwrap().display().to_string();
            if e.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &e, out);
            } else {
                out.push(format!("{rel} {}", sha256_file(&e)));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.join("\n")
}

fn qemu_img(args: &[&str]) {
    run_ok(Command::new("qemu-img").args(args));
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// One VM of the test job: its name, host, datastores, disks as (job file source,
/// file whose raw content the restore point must equal), and extra TOML lines.
struct TestVm {
    name: &'static str,
    host: &'static str,
    datastores: Vec<&'static str>,
    disks: Vec<(String, PathBuf)>,
    extra: String,
}

/// The 12 VMs, their images made in `dir`.
fn make_vms(dir: &Path) -> Vec<TestVm> {
    let raw = |name: &str, seed: u64| {
        let p = dir.join(format!("{name}.raw"));
        make_seeded_raw(&p, 4 * MIB, seed);
        p
    };
    let disk = |src: &Path| {
        (
            format!(
                "[[vm.disk]]\nsource = \"{}\"\n",
                src.file_name().unwrap().to_str().unwrap()
            ),
            src.to_path_buf(),
        )
    };
    // A qcow2 chain seen through a symlink (as a hypervisor's "current disk"):
    // base <- l1 with writes; the next day a new layer l2 goes on top.
    let chain = |name: &str, seed: u64| {
        let r = raw(&format!("{name}-day0"), seed);
        let base = dir.join(format!("{name}-base.qcow2"));
        qemu_img(&[
            "convert",
            "-O",
            "qcow2",
            r.to_str().unwrap(),
            base.to_str().unwrap(),
        ]);
        std::fs::remove_file(&r).unwrap();
        let l1 = dir.join(format!("{name}-l1.qcow2"));
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            l1.to_str().unwrap(),
        ]);
        run_ok(
            Command::new("qemu-io")
                .args(["-c", "write -P 0x5a 512k 64k"])
                .arg(&l1),
        );
        let link = dir.join(format!("{name}.qcow2"));
        std::os::unix::fs::symlink(&l1, &link).unwrap();
        link
    };
    let changed = |name: &str, seed: u64| {
        let p = raw(name, seed);
        std::fs::write(dir.join(format!("{name}.json")), "[]").unwrap();
        (
            format!(
                "[[vm.disk]]\nsource = \"{name}.raw\"\ntracking = \"changed-extents\"\nchanged_extents = \"{name}.json\"\n"
            ),
            p,
        )
    };
    let corrupt = dir.join("fail01.qcow2");
    let mut bad = b"QFI\xfb\0\0\0\x03".to_vec();
    bad.extend(seeded_bytes(99, 4096));
    std::fs::write(&corrupt, bad).unwrap();
    let marker = dir.join("retry01.marker");
    let vm = |name, host, ds: &[&'static str], disks, extra: &str| TestVm {
        name,
        host,
        datastores: ds.to_vec(),
        disks,
        extra: extra.to_string(),
    };
    vec![
        vm("raw01", "h1", &["ds1"], vec![disk(&raw("raw01", 1))], ""),
        vm("raw02", "h1", &["ds2"], vec![disk(&raw("raw02", 2))], ""),
        vm("qc01", "h2", &["ds1"], vec![disk(&chain("qc01", 3))], ""),
        vm("qc02", "h2", &["ds2"], vec![disk(&chain("qc02", 4))], ""),
        vm("cx01", "h3", &["ds1"], vec![changed("cx01", 5)], ""),
        vm("cx02", "h3", &["ds2"], vec![changed("cx02", 6)], ""),
        vm(
            "span01",
            "h1",
            &["ds1", "ds2"],
            vec![disk(&raw("span01-a", 7)), disk(&raw("span01-b", 8))],
            "",
        ),
        vm(
            "span02",
            "h2",
            &["ds1", "ds2"],
            vec![disk(&raw("span02-a", 9)), disk(&chain("span02-b", 10))],
            "",
        ),
        vm(
            "retry01",
            "h3",
            &["ds1"],
            vec![disk(&raw("retry01", 11))],
            // Fails the first attempt of each run (the test removes the marker).
            &format!(
                "pre_hook = \"test -e {m} || {{ touch {m}; exit 1; }}; sleep 0.3\"\n",
                m = marker.display()
            ),
        ),
        vm("fail01", "h1", &["ds2"], vec![disk(&corrupt)], ""),
        vm("full01", "h2", &["ds1"], vec![disk(&raw("full01", 12))], "full_every = 2\n"),
        vm(
            "raw03",
            "h3",
            &["ds2"],
            vec![disk(&raw("raw03", 13))],
            &format!(
                "keep = {{ last = 1 }}\npost_hook = \"env | grep ^VMBACK_ > {}/env-$VMBACK_VM-$VMBACK_ATTEMPT.txt\"\n",
                dir.display()
            ),
        ),
    ]
}

fn job_text(vms: &[TestVm]) -> String {
    let mut t = format!(
        "repository = \"repo\"\n[limits]\nmax_concurrent = {MAX_CONCURRENT}\nmax_per_host = {MAX_PER_HOST}\nmax_per_datastore = {MAX_PER_DATASTORE}\nlimit_read = \"400MiB/s\"\nthreads = 1\n[defaults]\nretries = 2\nretry_backoff = \"1s\"\nkeep = {{ last = 5 }}\npre_hook = \"sleep 0.3\"\n"
    );
    for v in vms {
        let ds: Vec<String> = v.datastores.iter().map(|d| format!("\"{d}\"")).collect();
        write!(
            t,
            "\n[[vm]]\nname = \"{}\"\nhost = \"{}\"\ndatastores = [{}]\n{}",
            v.name,
            v.host,
            ds.join(", "),
            v.extra
        )
        .unwrap();
        for (d, _) in &v.disks {
            t += d;
        }
    }
    t
}

/// One attempt as recorded in the report.
#[derive(Debug)]
struct Attempt {
    vm: String,
    host: String,
    datastores: Vec<String>,
    ready: i64,
    start: i64,
    end: i64,
}

fn attempts(report: &Value) -> Vec<Attempt> {
    let mut out = Vec::new();
    for v in report["vms"].as_array().unwrap() {
        for a in v["attempts"].as_array().unwrap() {
            out.push(Attempt {
                vm: v["vm"].as_str().unwrap().into(),
                host: v["host"].as_str().unwrap().into(),
                datastores: v["datastores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap().into())
                    .collect(),
                ready: a["ready"]["unix_ms"].as_i64().unwrap(),
                start: a["start"]["unix_ms"].as_i64().unwrap(),
                end: a["end"]["unix_ms"].as_i64().unwrap(),
            });
        }
    }
    out
}

/// From the recorded times: at no instant more than the limits ran, and whenever
/// an attempt was ready but not started, it would not have fitted (the slots were
/// busy), allowing `TOLERANCE_MS` around each start and end for scheduling.
fn check_schedule(report: &Value) {
    let all = attempts(report);
    let mut times: Vec<i64> = all.iter().flat_map(|a| [a.start, a.end]).collect();
    times.extend(all.iter().map(|a| a.ready));
    times.sort();
    times.dedup();
    let mut checked_waits = 0;
    for w in times.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mid = (a + b) as f64 / 2.0;
        let live: Vec<&Attempt> = all
            .iter()
            .filter(|x| (x.start as f64) <= mid && mid < x.end as f64)
            .collect();
        let on_host = |h: &str| live.iter().filter(|x| x.host == h).count();
        let on_ds = |d: &String| live.iter().filter(|x| x.datastores.contains(d)).count();
        let state = || {
            live.iter()
                .map(|x| format!("{}@{}", x.vm, x.host))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(live.len() <= MAX_CONCURRENT, "at {mid}: {}", state());
        for x in &live {
            assert!(
                on_host(&x.host) <= MAX_PER_HOST,
                "host limit at {mid}: {}",
                state()
            );
            for d in &x.datastores {
                assert!(
                    on_ds(d) <= MAX_PER_DATASTORE,
                    "datastore limit at {mid}: {}",
                    state()
                );
            }
        }
        if b - a <= 2 * TOLERANCE_MS {
            continue;
        }
        for x in &all {
            let waiting = x.ready as f64 + (TOLERANCE_MS as f64) <= mid
                && mid + (TOLERANCE_MS as f64) < x.start as f64;
            if waiting {
                checked_waits += 1;
                let blocked = live.len() >= MAX_CONCURRENT
                    || on_host(&x.host) >= MAX_PER_HOST
                    || x.datastores.iter().any(|d| on_ds(d) >= MAX_PER_DATASTORE);
                assert!(
                    blocked,
                    "{} waited at {mid} (ready {}, started {}) while it fitted: running {}",
                    x.vm,
                    x.ready,
                    x.start,
                    state()
                );
            }
        }
    }
    eprintln!(
        "schedule checked: {} attempts, {} waiting intervals, all blocked by a limit",
        all.len(),
        checked_waits
    );
}

/// Staggered fulls: two predicted fulls overlap on one host only when the later one
/// says it started beside a full because nothing else could start.
fn check_fulls_staggered(report: &Value) {
    let mut fulls = Vec::new();
    for v in report["vms"].as_array().unwrap() {
        if v["expected"]["full"] != true {
            continue;
        }
        for a in v["attempts"].as_array().unwrap() {
            fulls.push((
                v["vm"].as_str().unwrap(),
                v["host"].as_str().unwrap(),
                a["start"]["unix_ms"].as_i64().unwrap(),
                a["end"]["unix_ms"].as_i64().unwrap(),
                a["beside_full"].as_bool().unwrap(),
            ));
        }
    }
    for (i, a) in fulls.iter().enumerate() {
        for b in &fulls[i + 1..] {
            let overlap = a.0 != b.0 && a.1 == b.1 && a.2 < b.3 && b.2 < a.3;
            if overlap {
                // The later start is flagged (same millisecond: either).
                let flagged = match a.2.cmp(&b.2) {
                    std::cmp::Ordering::Less => b.4,
                    std::cmp::Ordering::Greater => a.4,
                    std::cmp::Ordering::Equal => a.4 || b.4,
                };
                assert!(
                    flagged,
                    "fulls {} and {} overlap on {} unflagged",
                    a.0, b.0, a.1
                );
            }
        }
    }
}

fn vm<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report"))
}

/// `vmback run JOB --json`: exits 1 (one VM fails on purpose); the report.
fn run_job(dir: &Path) -> Value {
    let mut cmd = vmback();
    cmd.current_dir(dir).args(["run", "job.toml", "--json"]);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{cmd:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `--dry-run` prints the plan and leaves the repository byte-identical.
fn dry_run(dir: &Path) -> Value {
    let repo = dir.join("repo");
    let before = tree_hash(&repo);
    let text = run_ok(
        vmback()
            .current_dir(dir)
            .args(["run", "job.toml", "--dry-run"]),
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains("nothing was run"), "{text}");
    let out = run_ok(
        vmback()
            .current_dir(dir)
            .args(["run", "job.toml", "--dry-run", "--json"]),
    );
    assert_eq!(tree_hash(&repo), before, "--dry-run changed the repository");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["entries"].as_array().unwrap().len(), 12);
    plan
}

fn expected_full(plan: &Value, name: &str) -> bool {
    plan["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["vm"] == name)
        .unwrap()["expected"]["full"]
        .as_bool()
        .unwrap()
}

/// The SHA-256 of the raw content of an image (qemu-img reads qcow2 chains).
fn source_sha(path: &Path, scratch: &Path) -> String {
    if path.extension().is_some_and(|e| e == "qcow2") {
        qemu_raw_sha(path, None, scratch)
    } else {
        sha256_file(path)
    }
}

#[test]
fn twelve_vms_three_hosts_two_datastores() {
    if !have_tool("qemu-img") || !have_tool("qemu-io") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("vmback-jobs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    run_ok(vmback().arg("init").arg(dir.join("repo")));
    let vms = make_vms(dir);
    std::fs::write(dir.join("job.toml"), job_text(&vms)).unwrap();

    // Run 1: everything is a full.
    let plan = dry_run(dir);
    assert!(vms.iter().all(|v| expected_full(&plan, v.name)));
    let r1 = run_job(dir);
    check_schedule(&r1);
    check_fulls_staggered(&r1);
    assert_eq!(
        (r1["succeeded"].as_u64(), r1["failed"].as_u64()),
        (Some(11), Some(1))
    );
    let fail = vm(&r1, "fail01");
    assert_eq!(fail["result"], "failed");
    assert_eq!(fail["attempts"].as_array().unwrap().len(), 3, "{fail:#}");
    let err = fail["error"].as_str().unwrap();
    assert!(err.contains("fail01.qcow2"), "{err}");
    let retry = vm(&r1, "retry01");
    assert_eq!(retry["result"], "ok");
    let tries = retry["attempts"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{retry:#}");
    assert!(
        tries[0]["error"].as_str().unwrap().contains("pre hook"),
        "{retry:#}"
    );
    // The retry waited for its backoff (1 s) after the failed attempt.
    assert!(
        tries[1]["start"]["unix_ms"].as_i64()
            >= tries[0]["end"]["unix_ms"].as_i64().map(|t| t + 1000)
    );
    for v in &vms {
        let r = vm(&r1, v.name);
        if v.name != "fail01" {
            assert_eq!(r["result"], "ok", "{r:#}");
            assert_eq!(r["method"], "full", "{r:#}");
        }
    }
    let env = std::fs::read_to_string(dir.join("env-raw03-1.txt")).unwrap();
    for want in [
        "VMBACK_VM=raw03",
        "VMBACK_HOST=h3",
        "VMBACK_DATASTORES=ds2",
        "VMBACK_PHASE=post",
        "VMBACK_ATTEMPT=1",
        "VMBACK_STATUS=success",
        &format!("VMBACK_JOB={}", dir.join("job.toml").display()),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }

    // The next day: new overlays, changed extents, a changed raw disk.
    for name in ["qc01", "qc02", "span02-b"] {
        let l1 = dir.join(format!("{name}-l1.qcow2"));
        let l2 = dir.join(format!("{name}-l2.qcow2"));
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            l1.to_str().unwrap(),
            l2.to_str().unwrap(),
        ]);
        run_ok(
            Command::new("qemu-io")
                .args(["-c", "write -P 0xa7 1M 128k"])
                .arg(&l2),
        );
        let link = dir.join(format!("{name}.qcow2"));
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&l2, &link).unwrap();
    }
    for name in ["cx01", "cx02"] {
        write_at(
            &dir.join(format!("{name}.raw")),
            MIB,
            &seeded_bytes(77, 65536),
        );
        std::fs::write(
            dir.join(format!("{name}.json")),
            format!("[{{\"offset\": {MIB}, \"length\": 65536}}]"),
        )
        .unwrap();
    }
    write_at(&dir.join("raw02.raw"), 2 * MIB, &seeded_bytes(78, 4096));
    std::fs::remove_file(dir.join("retry01.marker")).unwrap();
    // full01 (full_every = 2) gets an incremental from `vmback backup` in between:
    // its next backup is the second since the last full, so a full.
    let out = run_ok(
        vmback()
            .arg("backup")
            .arg(dir.join("repo"))
            .args(["--vm", "full01", "--json"])
            .arg(dir.join("full01.raw")),
    );
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["disks"][0]["method"], "differencing", "{b:#}");

    // Run 2: incrementals, except where a full is due.
    let plan = dry_run(dir);
    let fulls: Vec<&str> = vms
        .iter()
        .map(|v| v.name)
        .filter(|n| expected_full(&plan, n))
        .collect();
    assert_eq!(fulls, ["raw02", "fail01", "full01"]);
    let r2 = run_job(dir);
    check_schedule(&r2);
    check_fulls_staggered(&r2);
    assert_eq!(
        (r2["succeeded"].as_u64(), r2["failed"].as_u64()),
        (Some(11), Some(1))
    );
    assert_eq!(vm(&r2, "retry01")["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(vm(&r2, "fail01")["attempts"].as_array().unwrap().len(), 3);
    let methods: BTreeMap<&str, &str> = vms
        .iter()
        .filter(|v| v.name != "fail01")
        .map(|v| (v.name, vm(&r2, v.name)["method"].as_str().unwrap()))
        .collect();
    let want: BTreeMap<&str, &str> = [
        ("raw01", "differencing"),
        ("raw02", "fallback"),
        ("qc01", "differencing"),
        ("qc02", "differencing"),
        ("cx01", "changed-extents"),
        ("cx02", "changed-extents"),
        ("span01", "differencing"),
        ("span02", "differencing"),
        ("retry01", "differencing"),
        ("full01", "full"),
        ("raw03", "differencing"),
    ]
    .into_iter()
    .collect();
    assert_eq!(methods, want);
    let forced = &vm(&r2, "full01")["backup"]["disks"][0]["detail"];
    assert!(
        forced.as_str().unwrap().contains("full_every = 2"),
        "{forced}"
    );
    // An incremental reads only what changed.
    assert!(vm(&r2, "cx01")["bytes_read"].as_u64().unwrap() <= MIB);
    // Retention: raw03 keeps its last restore point only.
    let forgotten = r2["forgotten"].as_array().unwrap();
    assert_eq!(forgotten.len(), 1, "{forgotten:?}");
    assert_eq!(forgotten[0]["vm"], "raw03");

    // Every restore point verifies; the latest of each VM exports identical.
    let out = run_ok(
        vmback()
            .arg("verify")
            .arg(dir.join("repo"))
            .arg("--read-data"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ok:"), "{text}");
    let scratch = dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    for v in vms.iter().filter(|v| v.name != "fail01") {
        for (n, (_, src)) in v.disks.iter().enumerate() {
            let out = scratch.join("export.raw");
            run_ok(
                vmback()
                    .arg("export")
                    .arg(dir.join("repo"))
                    .arg(format!("{}/latest/disk{n}", v.name))
                    .arg("-o")
                    .arg(&out)
                    .arg("--force"),
            );
            assert_eq!(
                sha256_file(&out),
                source_sha(src, &scratch),
                "{} disk{n}",
                v.name
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
}

#[test]
fn invalid_job_files_are_refused_before_anything_runs() {
    let tmp = tempfile::Builder::new()
        .prefix("vmback-jobs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    run_ok(vmback().arg("init").arg(dir.join("repo")));
    make_seeded_raw(&dir.join("a.raw"), MIB, 1);
    let marker = dir.join("ran");
    let head = format!(
        "repository = \"repo\"\n[defaults]\npre_hook = \"touch {}\"\n",
        marker.display()
    );
    let vm = |name: &str, src: &str| {
        format!("[[vm]]\nname = \"{name}\"\n[[vm.disk]]\nsource = \"{src}\"\n")
    };
    let cases = [
        (
            format!("{head}[limits]\nmax_per_hots = 2\n{}", vm("a", "a.raw")),
            "job.toml:5:1: max_per_hots: unknown field `max_per_hots`",
        ),
        (
            format!("{head}{}", vm("a", "missing.raw")),
            "job.toml:7:10: vm[0].disk[0].source: ",
        ),
        (
            format!("{head}[limits]\nmax_concurrent = 0\n{}", vm("a", "a.raw")),
            "job.toml:5:18: limits.max_concurrent: must be at least 1",
        ),
        (
            format!("{head}{}{}", vm("a", "a.raw"), vm("a", "a.raw")),
            "job.toml:9:8: vm[1].name: duplicate VM name \"a\" (first at line 5)",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(dir.join("job.toml"), &text).unwrap();
        let mut cmd = vmback();
        cmd.current_dir(dir).args(["run", "job.toml"]);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}\n{stderr}");
        assert!(stderr.contains(want), "{text}\n---\n{stderr}\nwant {want}");
        assert!(!marker.exists(), "a hook ran for an invalid job");
    }
    assert_eq!(
        std::fs::read_dir(dir.join("repo/snapshots"))
            .unwrap()
            .count(),
        0
    );
}

/// `(vm, host, datastores, ready, start, end)`, times in ms.
type FakeAttempt<'a> = (&'a str, &'a str, &'a [&'a str], i64, i64, i64);

/// A report of one attempt per VM.
fn synthetic(list: &[FakeAttempt<'_>]) -> Value {
    let vms: Vec<Value> = list
        .iter()
        .map(|(vm, host, ds, ready, start, end)| {
            serde_json::json!({
                "vm": vm, "host": host, "datastores": ds,
                "attempts": [{
                    "ready": {"unix_ms": ready},
                    "start": {"unix_ms": start},
                    "end": {"unix_ms": end},
                }],
            })
        })
        .collect();
    serde_json::json!({ "vms": vms })
}

/// The checker itself catches what it is for.
#[test]
#[should_panic(expected = "host limit")]
fn checker_sees_a_host_over_its_limit() {
    check_schedule(&synthetic(&[
        ("a", "h1", &["ds1"], 0, 0, 1000),
        ("b", "h1", &["ds2"], 0, 0, 1000),
        ("c", "h1", &["ds2"], 0, 10, 1000),
    ]));
}

#[test]
#[should_panic(expected = "waited")]
fn checker_sees_an_idle_slot() {
    check_schedule(&synthetic(&[
        ("a", "h1", &["ds1"], 0, 0, 1000),
        ("b", "h2", &["ds2"], 0, 1000, 2000),
    ]));
}

/// A job where nothing fails: the text report, exit 0, retention and gc after the
/// run, and one read-rate budget shared by the backups running at once.
#[test]
fn shared_read_limit_retention_and_gc_after() {
    let tmp = tempfile::Builder::new()
        .prefix("vmback-jobs")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    run_ok(vmback().arg("init").arg(dir.join("repo")));
    const RATE: u64 = 8 * MIB;
    let mut text = format!(
        "repository = \"repo\"\n[limits]\nmax_concurrent = 2\nlimit_read = \"{RATE}\"\n[defaults]\nkeep = {{ last = 1 }}\ngc_after = true\ngc_grace = \"0s\"\n"
    );
    for (i, name) in ["a", "b"].iter().enumerate() {
        make_seeded_raw(&dir.join(format!("{name}.raw")), 16 * MIB, 40 + i as u64);
        text += &format!(
            "[[vm]]\nname = \"{name}\"\nhost = \"h{i}\"\n[[vm.disk]]\nsource = \"{name}.raw\"\ntracking = \"full\"\n"
        );
    }
    std::fs::write(dir.join("job.toml"), text).unwrap();
    let mut reports = Vec::new();
    for _ in 0..2 {
        let out = run_ok(
            vmback()
                .current_dir(dir)
                .args(["run", "job.toml", "--json"]),
        );
        reports.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
    }
    let r = &reports[1];
    assert_eq!(r["failed"], 0);
    let removed: Vec<&str> = r["forgotten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["vm"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["a", "b"]);
    // gc ran after the retention (identical disks: nothing to reclaim).
    assert_eq!(r["gc"]["restore_points"], 2, "{:#}", r["gc"]);
    // Both backups ran at once and shared one budget: together they took at least
    // the time their bytes need at the rate (separate budgets would take half).
    let all = attempts(r);
    assert_eq!(all.len(), 2);
    assert!(
        all[0].start < all[1].end && all[1].start < all[0].end,
        "{all:?}"
    );
    let read: u64 = r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["bytes_read"].as_u64().unwrap())
        .sum();
    let span =
        all.iter().map(|a| a.end).max().unwrap() - all.iter().map(|a| a.start).min().unwrap();
    let need = read as f64 / RATE as f64 * 1000.0;
    assert!(
        span as f64 >= need * 0.9,
        "{read} bytes in {span} ms at {RATE} B/s (need {need:.0} ms)"
    );
    // The text report, exit 0, and a clean repository.
    let out = run_ok(vmback().current_dir(dir).args(["run", "job.toml"]));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("vm "), "{table}");
    assert!(table.contains("2 of 2 VMs backed up, 0 failed"), "{table}");
    let out = run_ok(
        vmback()
            .arg("verify")
            .arg(dir.join("repo"))
            .arg("--read-data"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
}

#[test]
fn hooks_of_a_job_run_in_the_job_files_directory() {
    // Relative paths in a job file are the job file's, hooks included: a job started
    // by a timer from another working directory finds its scripts.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("jobs");
    std::fs::create_dir(&dir).unwrap();
    run_ok(vmback().arg("init").arg(dir.join("repo")));
    make_seeded_raw(&dir.join("a.raw"), MIB, 7);
    std::fs::write(
        dir.join("freeze.sh"),
        "#!/bin/sh\necho \"$VMBACK_PHASE\" >> hooks.log\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("+x").arg(dir.join("freeze.sh")));
    std::fs::write(
        dir.join("job.toml"),
        "repository = \"repo\"\n[defaults]\npre_hook = \"./freeze.sh\"\npost_hook = \"./freeze.sh\"\n\
         [[vm]]\nname = \"a\"\n[[vm.disk]]\nsource = \"a.raw\"\n",
    )
    .unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    run_ok(
        vmback()
            .current_dir(&elsewhere)
            .arg("run")
            .arg(dir.join("job.toml")),
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hooks.log")).unwrap(),
        "pre\npost\n"
    );
    assert!(!elsewhere.join("hooks.log").exists());
}

#[test]
fn a_signal_stops_a_job_without_retries_and_runs_the_post_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_ok(vmback().arg("init").arg(dir.join("repo")));
    make_seeded_raw(&dir.join("a.raw"), 32 * MIB, 21);
    make_seeded_raw(&dir.join("b.raw"), 32 * MIB, 22);
    std::fs::write(
        dir.join("job.toml"),
        "repository = \"repo\"\n[limits]\nmax_concurrent = 1\nlimit_read = \"4MiB/s\"\n\
         [defaults]\nretries = 3\nretry_backoff = \"1s\"\nkeep = { last = 1 }\n\
         pre_hook = \"touch frozen-$VMBACK_VM\"\npost_hook = \"rm frozen-$VMBACK_VM\"\n\
         [[vm]]\nname = \"a\"\n[[vm.disk]]\nsource = \"a.raw\"\n\
         [[vm]]\nname = \"b\"\n[[vm.disk]]\nsource = \"b.raw\"\n",
    )
    .unwrap();
    let child = vmback()
        .current_dir(dir)
        .args(["run", "job.toml", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let frozen = dir.join("frozen-a");
    assert!(
        wait_for_file(&frozen),
        "the first VM's pre hook did not run"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    send_signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(!frozen.exists(), "the post hook did not run");
    assert!(!dir.join("frozen-b").exists(), "the second VM started");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = vm(&report, "a");
    assert_eq!(a["attempts"].as_array().unwrap().len(), 1, "{a}");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGTERM"),
        "{a}"
    );
    let b = vm(&report, "b");
    assert_eq!(b["error"], "not started: interrupted by SIGTERM", "{b}");
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .contains("retention and gc skipped"),
        "{report}"
    );
    let verify = vmback()
        .arg("verify")
        .arg(dir.join("repo"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}
