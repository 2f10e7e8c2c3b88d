//! The command line as a user meets it: every subcommand's help has examples and
//! every flag a help line, the man pages render without warnings, the bash
//! completion loads, `--version` lists the formats, and `--at` picks restore points
//! by time in every command that takes one.

mod common;

use std::path::Path;

use clap::CommandFactory;
use common::*;
use vmback::cli::Cli;

/// Every command, the top one included, with its path (`vmback restore`).
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        let name = format!("{prefix}{}", cmd.get_name());
        out.push((name.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            walk(&format!("{name} "), sub, out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk("", &cmd, &mut out);
    out
}

#[test]
fn every_command_has_examples_and_every_argument_help() {
    let mut missing = Vec::new();
    for (name, cmd) in commands() {
        if name == "vmback help" || name.starts_with("vmback help ") {
            continue; // clap's own `help` subcommand
        }
        let after = cmd
            .get_after_long_help()
            .or(cmd.get_after_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        if !after.contains("\nExamples:\n") && !after.starts_with("Examples:\n") {
            missing.push(format!("{name}: no \"Examples:\" in its after_help"));
        }
        if cmd.get_about().is_none() {
            missing.push(format!("{name}: no about line"));
        }
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            let help = arg
                .get_help()
                .or(arg.get_long_help())
                .map(|h| h.to_string());
            if help.is_none_or(|h| h.trim().is_empty()) {
                missing.push(format!("{name}: argument {} has no help", arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn exit_codes_are_documented_in_the_top_help() {
    let out = run_ok(vmback().arg("--help"));
    let help = String::from_utf8_lossy(&out.stdout);
    for code in [
        "0  success",
        "1  failure",
        "2  usage error",
        "3  integrity problem",
    ] {
        assert!(
            help.contains(code),
            "{code:?} missing from vmback --help:\n{help}"
        );
    }
    // A usage error detected by clap exits with 2, like ours.
    let out = vmback().arg("restore").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_lists_the_supported_formats() {
    for flag in ["--version", "-V"] {
        let out = run_ok(vmback().arg(flag));
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            concat!("vmback ", env!("CARGO_PKG_VERSION")),
            "{text}"
        );
        for what in [
            "containers read",
            "containers written",
            "partition tables:",
            "guest filesystems:",
            "NBD:",
            "qcow2  v2 and v3",
            "streamOptimized",
            "vhdx (dynamic, fixed)",
            "SESPARSE",
            "zstd",
        ] {
            assert!(text.contains(what), "{flag}: {what:?} missing:\n{text}");
        }
    }
}

/// `groff -man -ww -z` on every page: no warnings (bad escapes, unknown macros).
#[test]
fn man_pages_render_without_warnings() {
    if !have_tool("groff") {
        return;
    }
    let dir = root().join("man");
    let mut pages: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    assert!(pages.len() > 10, "{pages:?}");
    for page in &pages {
        let out = run_ok(
            std::process::Command::new("groff")
                .args(["-man", "-ww", "-z", "-Tutf8"])
                .arg(page),
        );
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.is_empty(), "{}: {warnings}", page.display());
        let text = std::fs::read_to_string(page).unwrap();
        assert!(
            text.contains(".SH EXAMPLES"),
            "{}: no EXAMPLES",
            page.display()
        );
    }
    let top = std::fs::read_to_string(dir.join("vmback.1")).unwrap();
    assert!(
        top.contains(".SH \"EXIT STATUS\""),
        "vmback.1 has no EXIT STATUS"
    );
}

#[test]
fn bash_completion_loads() {
    if !have_tool("bash") {
        return;
    }
    let script = root().join("man/completions/vmback.bash");
    let out = run_ok(std::process::Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p vmback",
        script.display()
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vmback"), "{text}");
}

// --at: restore points picked by time, end to end.

const MIB: usize = 1 << 20;

fn backup(repo: &Path, vm: &str, disk: &Path) {
    run_ok(
        vmback()
            .arg("backup")
            .arg(repo)
            .args(["--vm", vm, "--json"])
            .arg(disk),
    );
}

/// A raw disk whose every byte is `fill`.
fn disk(path: &Path, fill: u8) {
    std::fs::write(path, vec![fill; 4 * MIB]).unwrap();
}

#[test]
fn at_picks_restore_points_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    let img = dir.path().join("web01.raw");
    disk(&img, 1);
    backup(&repo, "web01", &img);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = jiff::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    disk(&img, 2);
    backup(&repo, "web01", &img);

    // export: DISK is <vm>/<disk> with --at, <disk> with --vm too.
    let out1 = dir.path().join("at1.raw");
    run_ok(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("web01/disk0")
            .args(["--at", &between, "-o"])
            .arg(&out1),
    );
    assert_eq!(std::fs::read(&out1).unwrap(), vec![1u8; 4 * MIB]);
    let out2 = dir.path().join("at2.raw");
    run_ok(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("disk0")
            .args(["--vm", "web01", "--at", "2100-01-01 00:00", "-o"])
            .arg(&out2),
    );
    assert_eq!(std::fs::read(&out2).unwrap(), vec![2u8; 4 * MIB]);

    // restore: SNAPSHOT is the VM with --at.
    let r = dir.path().join("restored.raw");
    run_ok(
        vmback()
            .arg("restore")
            .arg(&repo)
            .args(["web01", "disk0", "--at", &between, "--target"])
            .arg(&r),
    );
    assert_eq!(std::fs::read(&r).unwrap(), vec![1u8; 4 * MIB]);
    // ... and a restore point named beside --at is a usage error that says what to do.
    let out = vmback()
        .arg("restore")
        .arg(&repo)
        .args(["web01/latest", "disk0", "--at", &between, "--target"])
        .arg(dir.path().join("r2.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("name the VM alone (web01)"), "{err}");

    // ls: the disks of the restore point picked.
    let out = run_ok(
        vmback()
            .arg("ls")
            .arg(&repo)
            .args(["web01", "--at", &between, "--json"]),
    );
    let disks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(disks[0]["name"], "disk0", "{disks}");

    // verify: one restore point.
    run_ok(
        vmback()
            .arg("verify")
            .arg(&repo)
            .args(["--vm", "web01", "--at", &between]),
    );

    // Before the oldest: an error naming the oldest restore point.
    let err = run_err(
        vmback()
            .arg("export")
            .arg(&repo)
            .arg("web01/disk0")
            .args(["--at", "2000-01-01T00:00:00Z", "-o"])
            .arg(dir.path().join("none.raw")),
    );
    assert!(
        err.contains("at or before") && err.contains("the oldest is web01/"),
        "{err}"
    );

    // Two VMs and no --vm: a usage error (exit 2) naming both.
    let img2 = dir.path().join("db1.raw");
    disk(&img2, 3);
    backup(&repo, "db1", &img2);
    let out = vmback()
        .arg("export")
        .arg(&repo)
        .arg("disk0")
        .args(["--at", &between, "-o"])
        .arg(dir.path().join("amb.raw"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("db1, web01") && err.contains("--vm"), "{err}");

    // A date alone is refused with what to write instead.
    let err = run_err(vmback().arg("ls").arg(&repo).args(["--at", "2026-11-20"]));
    assert!(err.contains("23:59"), "{err}");

    // --at with an image file is a usage error.
    let out = vmback()
        .arg("ls")
        .arg(&img)
        .args(["--at", &between])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
