//! Conformance of every container subformat qemu can write: `fixtures/make-containers.sh`
//! builds them (once per run of this test binary) with a manifest of what `qemu-img
//! convert -O raw` reads; each image must export to exactly those bytes and `inspect`
//! must report its virtual size, format and chain depth. One test per format family,
//! each listing every failing image rather than stopping at the first.
//!
//! Also the chain rules that only whole chains can show: a missing parent is named,
//! a loop and a chain deeper than 16 are refused promptly.
//!
//! `VMBACK_CONTAINERS=full` builds the full set (adds the >2 GiB multi-extent VMDKs
//! and a few more qcow2 variants); the default is the script's `--quick` set.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One line of MANIFEST.tsv.
#[derive(Debug)]
struct Entry {
    rel: String,
    qemu_format: String,
    virtual_size: u64,
    sha256: String,
    layers: usize,
}

struct Fixtures {
    dir: PathBuf,
    entries: Vec<Entry>,
}

/// Builds the fixtures once per test binary; `None` (skip) when qemu tools are missing.
fn fixtures() -> Option<&'static Fixtures> {
    static FIXTURES: OnceLock<Option<Fixtures>> = OnceLock::new();
    FIXTURES
        .get_or_init(|| {
            if !(have_tool("qemu-img") && have_tool("qemu-io") && have_tool("python3")) {
                return None;
            }
            let dir = fixture_dir();
            let mut cmd = Command::new("bash");
            cmd.arg(root().join("fixtures/make-containers.sh"))
                .arg(&dir);
            if std::env::var("VMBACK_CONTAINERS").as_deref() != Ok("full") {
                cmd.arg("--quick");
            }
            let started = Instant::now();
            run_ok(&mut cmd);
            eprintln!(
                "built container fixtures in {} ({:.1}s)",
                dir.display(),
                started.elapsed().as_secs_f64()
            );
            let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
            let entries = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .map(|l| {
                    let c: Vec<&str> = l.split('\t').collect();
                    assert_eq!(c.len(), 5, "bad manifest line: {l}");
                    Entry {
                        rel: c[0].to_string(),
                        qemu_format: c[1].to_string(),
                        virtual_size: c[2].parse().unwrap(),
                        sha256: c[3].to_string(),
                        layers: c[4].parse().unwrap(),
                    }
                })
                .collect::<Vec<_>>();
            assert!(!entries.is_empty(), "empty manifest");
            Some(Fixtures { dir, entries })
        })
        .as_ref()
}

/// `$CARGO_TARGET_TMPDIR/containers-<pid>`: kept after the run so a failing image can
/// be looked at; directories of earlier runs (whose process is gone) are removed.
fn fixture_dir() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("containers-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = base.join(format!("containers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` with a time limit, killing it when exceeded (a hang is a failure too).
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| e.to_string()),
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {limit:?} (hang?)"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Checks one image; returns a description of each disagreement.
fn check_image(fx: &Fixtures, e: &Entry, scratch: &Path) -> Vec<String> {
    let img = fx.dir.join(&e.rel);
    let mut problems = Vec::new();
    let limit = Duration::from_secs(120);

    // The whole virtual disk, byte for byte.
    let out = scratch.join("export.raw");
    let mut cmd = vmback();
    cmd.arg("export")
        .arg(&img)
        .args(["--format", "raw", "--force", "-o"])
        .arg(&out);
    match output_within(&mut cmd, limit) {
        Err(msg) => problems.push(format!("export: {msg}")),
        Ok(o) if !o.status.success() => problems.push(format!(
            "export failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => {
            let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            if len != e.virtual_size {
                problems.push(format!(
                    "export wrote {len} bytes, qemu's virtual size is {}",
                    e.virtual_size
                ));
            }
            let sha = sha256_file(&out);
            if sha != e.sha256 {
                problems.push(format!("export sha256 {sha} != qemu-img {}", e.sha256));
            }
        }
    }
    let _ = std::fs::remove_file(&out);

    // What inspect says about it.
    let mut cmd = vmback();
    cmd.arg("inspect").arg("--json").arg(&img);
    match output_within(&mut cmd, limit) {
        Err(msg) => problems.push(format!("inspect: {msg}")),
        Ok(o) if !o.status.success() => problems.push(format!(
            "inspect failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(o) => match serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            Err(err) => problems.push(format!("inspect --json is not JSON: {err}")),
            Ok(v) => {
                let want_format = if e.qemu_format == "vpc" {
                    "vhd"
                } else {
                    e.qemu_format.as_str()
                };
                if v["format"].as_str() != Some(want_format) {
                    problems.push(format!("inspect format {} != {want_format}", v["format"]));
                }
                if v["virtual_size"].as_u64() != Some(e.virtual_size) {
                    problems.push(format!(
                        "inspect virtual_size {} != {}",
                        v["virtual_size"], e.virtual_size
                    ));
                }
                let layers = v["layers"].as_array().map(Vec::len);
                if layers != Some(e.layers) {
                    problems.push(format!(
                        "inspect shows {layers:?} layers, the chain has {}",
                        e.layers
                    ));
                }
            }
        },
    }
    problems
}

/// Checks every manifest image of `qemu_format`, reporting all failures at once.
fn check_family(qemu_format: &str) {
    let Some(fx) = fixtures() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let entries: Vec<&Entry> = fx
        .entries
        .iter()
        .filter(|e| e.qemu_format == qemu_format)
        .collect();
    assert!(
        !entries.is_empty(),
        "no {qemu_format} images in the manifest"
    );
    let mut failures = Vec::new();
    for e in &entries {
        let problems = check_image(fx, e, scratch.path());
        if problems.is_empty() {
            eprintln!("ok   {}", e.rel);
        } else {
            eprintln!("FAIL {}", e.rel);
            failures.push(format!(
                "{} ({}):\n    {}",
                fx.dir.join(&e.rel).display(),
                e.qemu_format,
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {qemu_format} images disagree with qemu-img:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

#[test]
fn vmdk_subformats_match_qemu() {
    check_family("vmdk");
}

#[test]
fn vhd_subformats_match_qemu() {
    check_family("vpc");
}

#[test]
fn vhdx_subformats_match_qemu() {
    check_family("vhdx");
}

#[test]
fn qcow2_subformats_match_qemu() {
    check_family("qcow2");
}

/// The manifest itself covers what the brief promises (so a script edit cannot
/// silently drop a subformat).
#[test]
fn manifest_covers_every_subformat() {
    let Some(fx) = fixtures() else { return };
    let rels: Vec<&str> = fx.entries.iter().map(|e| e.rel.as_str()).collect();
    for want in [
        "vmdk/monolithicSparse.vmdk",
        "vmdk/monolithicFlat.vmdk",
        "vmdk/twoGbMaxExtentSparse.vmdk",
        "vmdk/twoGbMaxExtentFlat.vmdk",
        "vmdk/streamOptimized.vmdk",
        "vmdk/chain/child2.vmdk",
        "vhd/dynamic.vhd",
        "vhd/fixed.vhd",
        "vhd/dynamic-force-size.vhd",
        "vhd/fixed-force-size.vhd",
        "vhdx/dynamic-1m.vhdx",
        "vhdx/dynamic-8m.vhdx",
        "vhdx/dynamic-32m.vhdx",
        "vhdx/fixed.vhdx",
        "qcow2/v2-64k.qcow2",
        "qcow2/v3-4k.qcow2",
        "qcow2/v3-64k.qcow2",
        "qcow2/v3-2m.qcow2",
        "qcow2/v3-512.qcow2",
        "qcow2/zlib-64k.qcow2",
        "qcow2/zstd-64k.qcow2",
        "qcow2/extl2.qcow2",
        "qcow2/zero-clusters.qcow2",
        "qcow2/chain/top.qcow2",
        "qcow2/datafile-on.qcow2",
        "qcow2/datafile-off.qcow2",
    ] {
        assert!(rels.contains(&want), "{want} missing from the manifest");
    }
    let deep = fx.entries.iter().filter(|e| e.layers == 3).count();
    assert!(deep >= 2, "expected depth-3 chains of vmdk and qcow2");
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run_ok(Command::new("qemu-img").current_dir(dir).args(args));
}

/// A chain whose parent file is gone: the error names the missing file (and the
/// child that refers to it), for qcow2 and VMDK.
#[test]
fn missing_parent_is_named() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_seeded_raw(&d.join("gone-base.raw"), 1 << 20, 3);
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "gone-base.raw",
            "-F",
            "raw",
            "child.qcow2",
        ],
    );
    qemu_img(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "gone-base.raw",
            "gone-parent.vmdk",
        ],
    );
    qemu_img(
        d,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "gone-parent.vmdk",
            "-F",
            "vmdk",
            "child.vmdk",
        ],
    );
    std::fs::remove_file(d.join("gone-base.raw")).unwrap();
    std::fs::remove_file(d.join("gone-parent.vmdk")).unwrap();
    let mut failures = Vec::new();
    for (child, missing) in [
        ("child.qcow2", "gone-base.raw"),
        ("child.vmdk", "gone-parent.vmdk"),
    ] {
        for sub in ["inspect", "export"] {
            let mut cmd = vmback();
            cmd.arg(sub).arg(d.join(child));
            if sub == "export" {
                cmd.arg("-o").arg(d.join("out.raw"));
            }
            match output_within(&mut cmd, Duration::from_secs(60)) {
                Err(e) => failures.push(format!("{child} {sub}: {e}")),
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    if o.status.success() || !err.contains(missing) || !err.contains(child) {
                        failures.push(format!(
                            "{sub} {child}: expected a failure naming {missing} and {child}; status {}, stderr: {}",
                            o.status,
                            err.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two qcow2 images naming each other as backing file (and one naming itself): a
/// clear "loop" error, promptly, never a hang or a stack overflow.
#[test]
fn chain_loop_is_refused() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["a.qcow2", "b.qcow2", "self.qcow2"] {
        qemu_img(d, &["create", "-q", "-f", "qcow2", name, "1M"]);
    }
    for (img, backing) in [
        ("a.qcow2", "b.qcow2"),
        ("b.qcow2", "a.qcow2"),
        ("self.qcow2", "self.qcow2"),
    ] {
        qemu_img(d, &["rebase", "-u", "-b", backing, "-F", "qcow2", img]);
    }
    let mut failures = Vec::new();
    for img in ["a.qcow2", "self.qcow2"] {
        let mut cmd = vmback();
        cmd.arg("inspect").arg(d.join(img));
        match output_within(&mut cmd, Duration::from_secs(30)) {
            Err(e) => failures.push(format!("{img}: {e}")),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
                if o.status.success() || !err.contains("loop") {
                    failures.push(format!(
                        "{img}: expected a loop error; status {}, stderr: {}",
                        o.status,
                        err.trim()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 16 layers (the limit) open and read like qemu-img reads them; 17 are refused
/// with an error that says why.
#[test]
fn chain_depth_limit_is_16() {
    if !have_tool("qemu-img") || !have_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_seeded_raw(&d.join("l00.raw"), 1 << 20, 5);
    let mut prev = ("l00.raw".to_string(), "raw");
    for i in 1..=16 {
        let name = format!("l{i:02}.qcow2");
        qemu_img(
            d,
            &[
                "create", "-q", "-f", "qcow2", "-b", &prev.0, "-F", prev.1, &name,
            ],
        );
        // Each layer owns a different 4 KiB so every level must be read through.
        run_ok(
            Command::new("qemu-io")
                .current_dir(d)
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -P {} {}k 4k", 0x10 + i, i * 20))
                .arg(&name)
                .stdout(Stdio::null()),
        );
        prev = (name, "qcow2");
    }
    // l15 is a chain of 16 files: allowed.
    let ok = d.join("l15.qcow2");
    assert_eq!(
        vmback_raw_sha(&ok, d),
        qemu_raw_sha(&ok, Some("qcow2"), d),
        "a 16-layer chain must read like qemu-img reads it"
    );
    // l16 is a chain of 17 files: refused.
    let mut cmd = vmback();
    cmd.arg("inspect").arg(d.join("l16.qcow2"));
    let o = output_within(&mut cmd, Duration::from_secs(30)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("16") && err.contains("l16.qcow2"),
        "a 17-layer chain must be refused naming the limit; status {}, stderr: {err}",
        o.status
    );
}
