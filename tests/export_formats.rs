//! Export to every container format (issue 4/7): qcow2, VMDK monolithicSparse and
//! streamOptimized, VHD and VHDX dynamic and fixed, from a generated raw disk, from a
//! qcow2 chain and from a restore point. Each export must pass `qemu-img check` (where
//! the format has one), `qemu-img compare` identical to the source, read back
//! identical through our own reader, and identical through the independent readers:
//! libvhdi (`vhdimount`) for VHD/VHDX, libvmdk (`vmdkmount`) for VMDK. All-zero data
//! must not be written, and the streamOptimized file must have the markers and the
//! footer VMware's import expects.

mod common;
use common::*;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vmback_parsers::vmdk::descriptor::parse_descriptor;
use vmback_parsers::vmdk::marker::{
    parse_footer, parse_grain_marker, parse_metadata_marker, FOOTER_BYTES, MARKER_GD, MARKER_GT,
};
use vmback_parsers::vmdk::sparse_header::{
    parse_sparse_header, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST,
};

const MIB: u64 = 1 << 20;
/// 40 MiB + 12345 sectors: not a whole number of MiB, of VHD's 2 MiB blocks or of
/// 64 KiB grains and clusters, and more than one VHDX block and VMDK grain table.
const SIZE: u64 = 40 * MIB + 12345 * 512;

/// Which independent reader checks a format.
#[derive(Clone, Copy)]
enum Lib {
    Vhdi,
    Vmdk,
    None,
}

struct Fmt {
    format: &'static str,
    subformat: Option<&'static str>,
    /// qemu-img's name.
    qemu: &'static str,
    ext: &'static str,
    /// `qemu-img check` supports the format.
    check: bool,
    lib: Lib,
    /// What `vmback inspect` calls the result.
    inspect: &'static str,
}

const FORMATS: &[Fmt] = &[
    Fmt {
        format: "qcow2",
        subformat: None,
        qemu: "qcow2",
        ext: "qcow2",
        check: true,
        lib: Lib::None,
        inspect: "v3 (compat 1.1), zlib",
    },
    Fmt {
        format: "vmdk",
        subformat: None,
        qemu: "vmdk",
        ext: "vmdk",
        check: true,
        lib: Lib::Vmdk,
        inspect: "monolithicSparse",
    },
    Fmt {
        format: "vmdk",
        subformat: Some("streamOptimized"),
        qemu: "vmdk",
        ext: "stream.vmdk",
        check: true,
        lib: Lib::Vmdk,
        inspect: "streamOptimized",
    },
    Fmt {
        format: "vhd",
        subformat: None,
        qemu: "vpc",
        ext: "vhd",
        check: false,
        lib: Lib::Vhdi,
        inspect: "dynamic",
    },
    Fmt {
        format: "vhd",
        subformat: Some("fixed"),
        qemu: "vpc",
        ext: "fixed.vhd",
        check: false,
        lib: Lib::Vhdi,
        inspect: "fixed",
    },
    Fmt {
        format: "vhdx",
        subformat: None,
        qemu: "vhdx",
        ext: "vhdx",
        check: true,
        lib: Lib::Vhdi,
        inspect: "dynamic",
    },
    Fmt {
        format: "vhdx",
        subformat: Some("fixed"),
        qemu: "vhdx",
        ext: "fixed.vhdx",
        check: true,
        lib: Lib::Vhdi,
        inspect: "fixed",
    },
];

impl Fmt {
    fn name(&self) -> String {
        match self.subformat {
            Some(s) => format!("{} {s}", self.format),
            None => self.format.to_string(),
        }
    }
}

/// `vmback export SOURCE [DISK] --format .. [--subformat ..] -o OUT --json`: the
/// `export` part of the report.
fn export(source: &Path, disk: Option<&str>, f: &Fmt, out: &Path, extra: &[&str]) -> Value {
    let mut cmd = vmback();
    cmd.arg("export").arg(source);
    if let Some(d) = disk {
        cmd.arg(d);
    }
    cmd.args(["--format", f.format]);
    if let Some(s) = f.subformat {
        cmd.args(["--subformat", s]);
    }
    let o = run_ok(cmd.args(extra).arg("-o").arg(out).arg("--json"));
    let v: Value = serde_json::from_slice(&o.stdout).expect("export --json prints JSON");
    v["export"].clone()
}

fn tools() -> bool {
    have_tool("qemu-img") && have_tool("vhdiinfo") && have_tool("vmdkinfo")
}

/// True when FUSE mounts can be tested (required under VMBACK_REQUIRE_FUSE=1).
fn fuse() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    assert!(
        std::env::var("VMBACK_REQUIRE_FUSE").as_deref() != Ok("1"),
        "/dev/fuse is required (VMBACK_REQUIRE_FUSE=1)"
    );
    eprintln!("SKIP: no /dev/fuse, libvhdi / libvmdk mounts not checked");
    false
}

/// Unmounts on drop, so a failing assertion does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    /// The FUSE daemon may still hold the file for a moment after our last read
    /// ("Device or resource busy"): retry, then detach lazily.
    fn drop(&mut self) {
        for _ in 0..50 {
            let unmounted = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status();
            if unmounted.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
    }
}

/// SHA-256 of the disk as libvhdi or libvmdk read it, through their FUSE mounts.
fn library_sha(image: &Path, lib: Lib, dir: &Path) -> Option<String> {
    let (tool, file) = match lib {
        Lib::Vhdi => ("vhdimount", "vhdi1"),
        Lib::Vmdk => ("vmdkmount", "vmdk1"),
        Lib::None => return None,
    };
    // A fresh mount point per image: a mount that is slow to go away never
    // blocks the next one.
    let mnt = tempfile::Builder::new()
        .prefix("mnt")
        .tempdir_in(dir)
        .unwrap()
        .keep();
    run_ok(Command::new(tool).arg(image).arg(&mnt));
    let _guard = Mount(mnt.clone());
    Some(sha256_file(&mnt.join(file)))
}

/// The media size libvhdi / libvmdk report for `image`.
fn library_size(image: &Path, lib: Lib) -> Option<u64> {
    let tool = match lib {
        Lib::Vhdi => "vhdiinfo",
        Lib::Vmdk => "vmdkinfo",
        Lib::None => return None,
    };
    let out = run_ok(Command::new(tool).arg(image));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Media size"))
        .unwrap_or_else(|| panic!("{tool} prints no media size:\n{text}"));
    let bytes = line.split('(').nth(1)?.split(' ').next()?;
    bytes.parse().ok()
}

/// Bytes of `raw` in 64 KiB granules that are not all zero: what any container must
/// at most store as data.
fn nonzero_bytes(raw: &Path) -> u64 {
    let mut f = std::fs::File::open(raw).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = f.read(&mut buf[n..]).unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            return total;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            total += n as u64;
        }
    }
}

/// Every check of one export `out` of the disk whose raw bytes are `reference`.
fn check(out: &Path, f: &Fmt, reference: &Path, stats: &Value, dir: &Path) {
    let name = f.name();
    let size = std::fs::metadata(reference).unwrap().len();
    if f.check {
        let o = run_ok(
            Command::new("qemu-img")
                .args(["check", "-f", f.qemu])
                .arg(out),
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("No errors"),
            "{name}: qemu-img check:\n{text}"
        );
    }
    let o = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", f.qemu])
            .arg(reference)
            .arg(out),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("identical"),
        "{name}: qemu-img compare:\n{text}"
    );

    let want = sha256_file(reference);
    assert_eq!(vmback_raw_sha(out, dir), want, "{name}: our reader");

    let o = run_ok(vmback().arg("inspect").arg("--json").arg(out));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["subformat"], f.inspect, "{name}: {v}");
    assert_eq!(v["virtual_size"], size, "{name}");

    assert_eq!(library_size(out, f.lib).unwrap_or(size), size, "{name}");
    if fuse() {
        if let Some(sha) = library_sha(out, f.lib, dir) {
            assert_eq!(sha, want, "{name}: independent reader ({:?})", f.ext);
        }
    }

    // Zero data is never written: all a container writes is the non-zero data, (for
    // streamOptimized less) plus its tables.
    let written = stats["written_bytes"].as_u64().unwrap();
    let bound = nonzero_bytes(reference) + 4 * MIB;
    assert!(
        written <= bound,
        "{name}: wrote {written} bytes, at most {bound} expected"
    );
    assert_eq!(stats["virtual_size"], size, "{name}");
}

/// Exports `source` (and `disk` of a repository) to every format and checks each
/// against `reference`.
fn every_format(source: &Path, disk: Option<&str>, reference: &Path, dir: &Path) {
    for f in FORMATS {
        let out = dir.join(format!("out.{}", f.ext));
        let stats = export(source, disk, f, &out, &[]);
        check(&out, f, reference, &stats, dir);
        assert!(!dir.join(format!("out.{}.vmback-partial", f.ext)).exists());
        std::fs::remove_file(&out).unwrap();
    }
}

/// A seeded raw disk of [`SIZE`] with data, zeros and holes, plus data in the
/// last, partial grain.
fn seeded(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let raw = dir.join("source.raw");
    make_seeded_raw(&raw, SIZE, 11);
    let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
    f.write_all_at(&[0x5a; 700], SIZE - 700).unwrap();
    raw
}

#[test]
fn generated_raw_to_every_format() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = seeded(dir.path());
    every_format(&raw, None, &raw, dir.path());
}

#[test]
fn qcow2_chain_to_every_format() {
    if !tools() || !have_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = seeded(d);
    let base = d.join("base.qcow2");
    let top = d.join("top.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2"])
            .arg(&top),
    );
    // The overlay: new data at odd offsets, zeros over the base's data, and data
    // straddling a grain table / L2 boundary.
    for cmd in [
        "write -P 0x41 1000448 300k",
        "write -z 0 256k",
        "write -P 0x42 33488896 128k",
        "write -z 12m 3m",
    ] {
        run_ok(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", cmd])
                .arg(&top),
        );
    }
    let reference = d.join("reference.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&top)
            .arg(&reference),
    );
    std::fs::remove_file(&raw).unwrap();
    every_format(&top, None, &reference, d);
}

#[test]
fn restore_point_to_every_format() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = seeded(d);
    let repo = d.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    run_ok(
        vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "web01"])
            .arg(&raw),
    );
    every_format(&repo, Some("web01/latest/disk0"), &raw, d);
}

/// Walks the streamOptimized file as VMware's importer does: header, descriptor,
/// grain markers with zlib grains in ascending order, a grain table after the grains
/// of each 32 MiB, the grain directory, the footer and end-of-stream.
#[test]
fn stream_optimized_has_markers_footer_and_end_of_stream() {
    let dir = tempfile::tempdir().unwrap();
    let raw = seeded(dir.path());
    let out = dir.path().join("disk.vmdk");
    export(&raw, None, &FORMATS[2], &out, &[]);
    let file = std::fs::read(&out).unwrap();
    let source = std::fs::read(&raw).unwrap();

    let head = parse_sparse_header(&file, 0).unwrap();
    assert!(
        head.gd_at_end(),
        "the header defers the directory to the footer"
    );
    assert_eq!(
        head.flags & (FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS),
        FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
    );
    assert!(head.compressed() && head.version == 3);
    assert_eq!(head.capacity_bytes(), SIZE);
    let d = head.descriptor_offset_sectors as usize * 512;
    let text = &file[d..d + head.descriptor_size_sectors as usize * 512];
    let desc = parse_descriptor(text, d as u64).unwrap();
    assert_eq!(desc.create_type, "streamOptimized");
    assert_eq!(desc.ddb("virtualHWVersion"), Some("4"));
    assert!(desc.ddb("adapterType").is_some());
    assert_eq!(desc.total_bytes(), SIZE);

    let end = file.len() - FOOTER_BYTES;
    let footer = parse_footer(&file[end..], end as u64).unwrap();
    assert!(file.len() % 512 == 0);

    // The stream, from the first grain to the footer.
    let mut at = head.overhead_sectors as usize * 512;
    let (mut grains, mut tables, mut last_lba) = (0, 0, None);
    let mut rebuilt = vec![0u8; SIZE as usize];
    let mut gd_at = None;
    while at < end {
        let m = parse_metadata_marker(&file[at..], at as u64).unwrap();
        if m.size != 0 {
            let g = parse_grain_marker(&file[at..], at as u64, 2 * 65536).unwrap();
            assert!(
                last_lba.is_none_or(|l| g.lba > l),
                "grains in ascending order"
            );
            last_lba = Some(g.lba);
            let data = &file[at + 12..at + 12 + g.size as usize];
            let mut grain = Vec::new();
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut grain)
                .unwrap();
            assert_eq!(grain.len(), 65536, "a whole grain per marker");
            assert!(grain.iter().any(|&b| b != 0), "no all-zero grain is stored");
            let off = g.lba as usize * 512;
            let n = grain.len().min(SIZE as usize - off);
            rebuilt[off..off + n].copy_from_slice(&grain[..n]);
            grains += 1;
            at += (12 + g.size as usize).next_multiple_of(512);
        } else {
            match m.kind {
                MARKER_GT => tables += 1,
                MARKER_GD => gd_at = Some(at as u64 / 512 + 1),
                k => panic!("unexpected marker type {k} at {at:#x}"),
            }
            at += 512 * (1 + m.num_sectors as usize);
        }
    }
    assert_eq!(at, end, "the stream ends exactly at the footer");
    assert_eq!(
        gd_at,
        Some(footer.gd_offset_sectors),
        "footer points at the GD"
    );
    assert_eq!(
        tables,
        SIZE.div_ceil(32 * MIB),
        "one grain table per 32 MiB with data"
    );
    assert!(grains > 0);
    assert!(rebuilt == source, "the grains rebuild the disk");
}

#[test]
fn refuses_to_overwrite_and_meaningless_options() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("small.raw");
    make_seeded_raw(&raw, 3 * MIB, 3);
    let out = dir.path().join("out.vhd");
    std::fs::write(&out, b"keep me").unwrap();
    for args in [
        &["--format", "vhd"][..],
        &["--format", "vmdk", "--subformat", "streamOptimized"],
    ] {
        let err = run_err(
            vmback()
                .arg("export")
                .arg(&raw)
                .args(args)
                .arg("-o")
                .arg(&out),
        );
        assert!(err.contains("--force"), "{err}");
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let fresh = dir.path().join("fresh.img");
    for args in [
        &["--format", "qcow2", "--subformat", "fixed"][..],
        &["--format", "vmdk", "--subformat", "dynamic"],
        &["--format", "vhd", "--align"],
        &["--format", "vhdx", "--subformat", "fixed", "--align"],
        &["--format", "raw", "--subformat", "fixed"],
    ] {
        let mut cmd = vmback();
        let o = cmd
            .arg("export")
            .arg(&raw)
            .args(args)
            .arg("-o")
            .arg(&fresh)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(!fresh.exists(), "{args:?} created the output");
    }
    // The subformat names are qemu-img's, in any case.
    run_ok(
        vmback()
            .arg("export")
            .arg(&raw)
            .args(["--format", "vmdk", "--subformat", "STREAMOPTIMIZED", "-o"])
            .arg(&fresh),
    );
}

#[test]
fn align_rounds_a_fixed_vhd_up_to_whole_mib() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = seeded(dir.path());
    let out = dir.path().join("azure.vhd");
    let stats = export(&raw, None, &FORMATS[4], &out, &["--align"]);
    let aligned = SIZE.next_multiple_of(MIB);
    assert_eq!(stats["virtual_size"], aligned);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), aligned + 512);
    assert_eq!(library_size(&out, Lib::Vhdi), Some(aligned));
    // Identical but for the zero tail (qemu-img compare allows a zero tail).
    let o = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vpc"])
            .arg(&raw)
            .arg(&out),
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("identical"));
    let back = dir.path().join("back.raw");
    run_ok(vmback().arg("export").arg(&out).arg("-o").arg(&back));
    let mut want = std::fs::read(&raw).unwrap();
    want.resize(aligned as usize, 0);
    assert!(std::fs::read(&back).unwrap() == want);
}

#[test]
fn a_failure_mid_export_leaves_no_output_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = seeded(d);
    let repo = d.join("repo");
    run_ok(vmback().arg("init").arg(&repo));
    run_ok(
        vmback()
            .arg("backup")
            .arg(&repo)
            .args(["--vm", "vm"])
            .arg(&raw),
    );
    // Lose one chunk from the middle of the sorted list: reading it fails.
    let mut chunks = files(&repo.join("chunks"));
    chunks.sort();
    assert!(chunks.len() > 4, "{chunks:?}");
    std::fs::remove_file(&chunks[chunks.len() / 2]).unwrap();
    for f in FORMATS {
        let out = d.join(format!("out.{}", f.ext));
        std::fs::write(&out, b"previous export").unwrap();
        let mut cmd = vmback();
        cmd.arg("export")
            .arg(&repo)
            .arg("vm/latest/disk0")
            .args(["--format", f.format]);
        if let Some(s) = f.subformat {
            cmd.args(["--subformat", s]);
        }
        let err = run_err(cmd.arg("-o").arg(&out).arg("--force"));
        assert!(
            err.contains("chunk") && err.contains("is missing"),
            "{}: {err}",
            f.name()
        );
        assert!(
            err.contains("hint: run `vmback verify"),
            "{}: {err}",
            f.name()
        );
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"previous export",
            "{}",
            f.name()
        );
        assert!(!d.join(format!("out.{}.vmback-partial", f.ext)).exists());
        std::fs::remove_file(&out).unwrap();
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_signal_stops_an_export_and_removes_its_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    std::fs::write(&src, vec![0x5a_u8; 128 << 20]).unwrap();
    for (format, signal, code) in [("raw", "INT", 130), ("qcow2", "TERM", 143)] {
        let out = dir.path().join(format!("out.{format}"));
        let partial = dir.path().join(format!("out.{format}.vmback-partial"));
        let mut child = vmback()
            .args(["export", "--format", format, "-o"])
            .arg(&out)
            .arg(&src)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_for_file(&partial),
            "{format}: the export did not start"
        );
        signal_while_running(&mut child, signal);
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(code), "{format}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}")),
            "{err}"
        );
        assert!(!partial.exists() && !out.exists(), "{format}: output left");
    }
}
