//! Hostile input through the real entry point: small images of every format, made by
//! qemu-img, are truncated at interesting lengths, have single bits flipped in their
//! headers and tables, and have header words set to extreme values. Each damaged file
//! goes through `vmback::image::open`, `DiskImage::extents` and reads of the virtual
//! disk via `ReadAt`, in-process. Every case must end in `Ok` or `Err`: never a panic
//! (caught per case), never a hang (each case runs on its own thread with a time
//! limit) and never a huge allocation (peak RSS is reset and checked per case via
//! /proc/self/clear_refs and VmHWM; peak virtual size is checked too, which catches
//! large allocations that are never touched).
//!
//! The header regions are located the way a reader would (region tables, GD/L1
//! offsets) by small helpers here, so bit flips land in tables, not only in the
//! first sector. Cases are sampled deterministically to keep the run short.

mod common;
use common::*;

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmback::image::DiskImage;
use vmback::io::ReadAt;

/// The sweeps measure the whole process's memory per case, so they must not run at
/// the same time as each other.
static SWEEP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Peak RSS any single case may reach.
const MAX_CASE_RSS: u64 = 1 << 30;
/// Most the peak virtual size of the process may rise during one case (a new
/// thread's stack and malloc arena fit easily; a multi-GiB `vec![0; n]` sized by a
/// disk value does not, even when its pages are never touched and RSS stays low).
const MAX_CASE_VM_RISE: u64 = 1 << 30;
/// Time one case may take before it counts as a hang.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(20);
/// Most bytes of the virtual disk one case reads (a mutated header may claim TiBs).
const READ_CAP: u64 = 8 << 20;
/// Largest range whose extents one case asks for.
const EXTENTS_CAP: u64 = 1 << 40;
/// Most bit-flip cases per image (sampled with a fixed stride beyond that).
const MAX_FLIPS: usize = 1000;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

const CASE_THREAD: &str = "malformed-case";

/// Silences panics of case threads (they are collected and reported instead).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(CASE_THREAD) {
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
            } else {
                default(info);
            }
        }));
    });
}

/// What one case does: everything a user command would do with the image.
fn exercise(path: &Path) -> Result<(), String> {
    let disk = vmback::image::open(path).map_err(|e| e.to_string())?;
    let size = disk.size();
    let _ = disk.layers().count();
    let ext = disk
        .extents(0..size.min(EXTENTS_CAP))
        .map_err(|e| e.to_string())?;
    let mut covered = 0u64;
    for e in &ext {
        covered = covered.saturating_add(e.len);
    }
    if covered != size.min(EXTENTS_CAP) {
        return Err(format!(
            "extents cover {covered} of {} bytes",
            size.min(EXTENTS_CAP)
        ));
    }
    // A backup's read-ahead hint walks the same tables: it must not panic either.
    disk.prefetch(0..size.min(EXTENTS_CAP));
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    let head_end = size.min(READ_CAP);
    while off < head_end {
        let n = (head_end - off).min(buf.len() as u64) as usize;
        disk.read_exact_at(off, &mut buf[..n])
            .map_err(|e| e.to_string())?;
        off += n as u64;
    }
    if size > READ_CAP {
        let n = (64 << 10).min(size - READ_CAP);
        disk.read_exact_at(size - n, &mut buf[..n as usize])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs one case on its own thread; returns a failure description, if any.
fn run_case(path: &Path, exercise: Exercise) -> Option<String> {
    let p = path.to_path_buf();
    run_guarded(move || exercise(&p), CASE_TIME_LIMIT)
}

/// What a case does with a damaged file.
type Exercise = fn(&Path) -> Result<(), String>;

/// Entries one guest-filesystem case visits at most.
const FS_ENTRY_CAP: usize = 5000;

/// What a guest-filesystem case does: everything `ls -R` and `get` would do —
/// partition table, filesystem open, every directory listed, metadata of every
/// entry, symlinks read, the first MiB of every file read.
fn exercise_fs(path: &Path) -> Result<(), String> {
    use vmback::guestfs::{FileType, NodeId};
    let disk = std::sync::Arc::new(vmback::image::open(path).map_err(|e| e.to_string())?);
    let view = vmback::browse::DiskView::new(disk, "case").map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    for v in view.table().volumes.clone() {
        if v.filesystem.is_none() {
            continue;
        }
        let Ok((_, fs)) = view.filesystem(&v.name) else {
            continue;
        };
        let _ = fs.label();
        let _ = fs.usage();
        let mut stack: Vec<(NodeId, usize)> = vec![(fs.root(), 0)];
        let mut seen = 0usize;
        while let Some((node, depth)) = stack.pop() {
            seen += 1;
            if seen > FS_ENTRY_CAP || depth > 64 {
                break;
            }
            let Ok(meta) = fs.metadata(node) else {
                continue;
            };
            match meta.file_type {
                FileType::Dir => {
                    if let Ok(entries) = fs.read_dir(node) {
                        for e in entries {
                            let _ = fs.lookup(node, &e.name);
                            stack.push((e.node, depth + 1));
                        }
                    }
                }
                FileType::File => {
                    let n = (meta.size as usize).min(buf.len());
                    let _ = fs.read_at(node, 0, &mut buf[..n]);
                }
                FileType::Symlink => {
                    let _ = fs.read_link(node);
                }
                FileType::Other => {}
            }
        }
    }
    Ok(())
}

/// Runs `f` on its own thread under the case rules: a panic, not finishing within
/// `limit`, a peak RSS above [`MAX_CASE_RSS`] or a rise of the process's peak
/// virtual size by more than [`MAX_CASE_VM_RISE`] is a failure (described).
fn run_guarded<F>(f: F, limit: Duration) -> Option<String>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM
    let vm_before = status_kib("VmPeak:") * 1024;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(CASE_THREAD.into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let msg = match r {
                Ok(_) => None,
                Err(payload) => Some(LAST_PANIC.with(|l| l.borrow_mut().take()).unwrap_or_else(
                    || {
                        payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into())
                    },
                )),
            };
            let _ = tx.send(msg);
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(Some(panic)) => Some(format!("PANIC: {}", panic.replace('\n', " "))),
        Ok(None) => {
            let hwm = status_kib("VmHWM:") * 1024;
            let vm_rise = (status_kib("VmPeak:") * 1024).saturating_sub(vm_before);
            if hwm > MAX_CASE_RSS {
                Some(format!("HUGE ALLOCATION: peak RSS {} MiB", hwm >> 20))
            } else if vm_rise > MAX_CASE_VM_RISE {
                Some(format!(
                    "HUGE ALLOCATION: peak virtual size rose by {} MiB",
                    vm_rise >> 20
                ))
            } else {
                None
            }
        }
        Err(_) => Some(format!("HANG: no result within {limit:?}")),
    }
}

/// A generated image and the byte ranges of its on-disk structures.
struct Subject {
    name: &'static str,
    /// The file that is damaged (other files of the image sit next to it).
    path: PathBuf,
    /// (label, start, len) of every header / table worth damaging.
    regions: Vec<(String, u64, u64)>,
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run_ok(Command::new("qemu-img").current_dir(dir).args(args));
}

/// Builds the subjects from one small seeded raw disk.
fn subjects(dir: &Path) -> Vec<Subject> {
    let raw = dir.join("src.raw");
    make_seeded_raw(&raw, (640 << 10) + 1536, 11);
    let mut out = Vec::new();
    let conv = |name: &str, fmt: &str, opts: &str, extra: &[&str]| -> PathBuf {
        let mut args = vec!["convert", "-f", "raw", "-O", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(extra);
        args.extend(["src.raw", name]);
        qemu_img(dir, &args);
        dir.join(name)
    };

    // qcow2: header cluster, L1 table, first L2 table, refcount table.
    for (name, extra) in [("q.qcow2", &[][..]), ("qc.qcow2", &["-c"][..])] {
        let path = conv(
            name,
            "qcow2",
            "cluster_size=4k,compression_type=zlib",
            extra,
        );
        let b = std::fs::read(&path).unwrap();
        let l1_size = be_u32(&b, 0x24) as u64;
        let l1 = be_u64(&b, 0x28);
        let rt = be_u64(&b, 0x30);
        let l2 = be_u64(&b, l1 as usize) & 0x00ff_ffff_ffff_fe00;
        let mut regions = vec![
            ("header cluster".into(), 0, 4096),
            ("L1 table".into(), l1, (l1_size * 8).max(8)),
            ("refcount table".into(), rt, 64),
        ];
        if l2 != 0 {
            regions.push(("first L2 table".into(), l2, 512));
        }
        out.push(Subject {
            name: if extra.is_empty() {
                "qcow2"
            } else {
                "qcow2 compressed"
            },
            path,
            regions,
        });
    }

    // VHD dynamic: footer copy, dynamic header, BAT, footer; fixed: footer.
    let path = conv("d.vhd", "vpc", "subformat=dynamic", &[]);
    let b = std::fs::read(&path).unwrap();
    let bat = be_u64(&b, 512 + 0x10);
    let len = b.len() as u64;
    out.push(Subject {
        name: "vhd dynamic",
        path,
        regions: vec![
            ("footer copy".into(), 0, 512),
            ("dynamic header".into(), 512, 1024),
            ("BAT".into(), bat, 512),
            ("footer".into(), len - 512, 512),
        ],
    });
    let path = conv("f.vhd", "vpc", "subformat=fixed", &[]);
    let len = std::fs::metadata(&path).unwrap().len();
    out.push(Subject {
        name: "vhd fixed",
        path,
        regions: vec![("footer".into(), len - 512, 512)],
    });

    // VHDX: file identifier, both headers, both region tables, metadata table and
    // items, BAT.
    let path = conv("x.vhdx", "vhdx", "block_size=1M", &[]);
    let b = std::fs::read(&path).unwrap();
    let mut regions: Vec<(String, u64, u64)> = vec![
        ("file identifier".into(), 0, 512),
        ("header 1".into(), 64 << 10, 4096),
        ("header 2".into(), 128 << 10, 4096),
        ("region table 1".into(), 192 << 10, 4096),
        ("region table 2".into(), 256 << 10, 512),
    ];
    let rt = 192 << 10;
    let count = le_u32(&b, rt + 8) as usize;
    for i in 0..count.min(8) {
        let e = rt + 16 + i * 32;
        let guid0 = le_u32(&b, e);
        let off = le_u64(&b, e + 16);
        // 2DC27766-... = BAT, 8B7CA206-... = metadata region.
        if guid0 == 0x2dc2_7766 {
            regions.push(("BAT".into(), off, 512));
        } else if guid0 == 0x8b7c_a206 {
            regions.push(("metadata table".into(), off, 32 + 32 * 6));
            let n = le_u32(&b, off as usize + 10) as usize;
            for j in 0..(n & 0xffff).min(8) {
                let me = off as usize + 32 + j * 32;
                let item_off = le_u32(&b, me + 16) as u64;
                let item_len = le_u32(&b, me + 20) as u64;
                regions.push((
                    format!("metadata item {j}"),
                    off + item_off,
                    item_len.clamp(1, 64),
                ));
            }
        }
    }
    out.push(Subject {
        name: "vhdx dynamic",
        path,
        regions,
    });

    // VMDK sparse: header, embedded descriptor, grain directory (+ redundant), first GT.
    let path = conv("s.vmdk", "vmdk", "subformat=monolithicSparse", &[]);
    let b = std::fs::read(&path).unwrap();
    let rgd = le_u64(&b, 0x30) * 512;
    let gd = le_u64(&b, 0x38) * 512;
    let gt0 = le_u32(&b, gd as usize) as u64 * 512;
    out.push(Subject {
        name: "vmdk monolithicSparse",
        path,
        regions: vec![
            ("sparse header".into(), 0, 512),
            ("descriptor".into(), 512, 1024),
            ("grain directory".into(), gd, 64),
            ("redundant grain directory".into(), rgd, 64),
            ("first grain table".into(), gt0, 512),
        ],
    });
    let path = conv("so.vmdk", "vmdk", "subformat=streamOptimized", &[]);
    let len = std::fs::metadata(&path).unwrap().len();
    out.push(Subject {
        name: "vmdk streamOptimized",
        path,
        regions: vec![
            ("sparse header".into(), 0, 512),
            ("descriptor".into(), 512, 512),
            ("footer and end-of-stream".into(), len - 1536, 1536),
        ],
    });
    let path = conv("fl.vmdk", "vmdk", "subformat=monolithicFlat", &[]);
    let len = std::fs::metadata(&path).unwrap().len();
    out.push(Subject {
        name: "vmdk descriptor (monolithicFlat)",
        path,
        regions: vec![("descriptor text".into(), 0, len)],
    });
    out
}

/// Bit positions to flip in a region: every bit of the first 64 bytes (magic,
/// versions, sizes, offsets live there), one rotating bit per byte beyond.
fn flips(start: u64, len: u64) -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    for i in 0..len {
        if i < 64 {
            v.extend((0..8).map(|bit| (start + i, bit)));
        } else {
            v.push((start + i, ((i * 5) % 8) as u8));
        }
    }
    v
}

/// Runs the whole sweep for one subject, returning failures.
fn sweep(s: &Subject, exercise: Exercise) -> (usize, Vec<String>) {
    let pristine = std::fs::read(&s.path).unwrap();
    let mut failures = Vec::new();
    let file_len = pristine.len() as u64;
    let mut cases = 0usize;
    // Work on a copy next to the original so relative extent names still resolve.
    let target = s.path.with_file_name(format!(
        "damaged-{}",
        s.path.file_name().unwrap().to_string_lossy()
    ));
    let write_whole = |bytes: &[u8]| std::fs::write(&target, bytes).unwrap();
    // The pristine file itself must open and read (else the sweep tests nothing).
    write_whole(&pristine);
    // The undamaged file must open and read, or the sweep would only exercise the
    // first error path. A format whose reader has not landed is noted, not failed.
    if let Err(e) = exercise(&target) {
        if e.contains("not implemented yet") {
            eprintln!(
                "note: {}: no reader yet ({e}); only checking for panics",
                s.name
            );
        } else {
            failures.push(format!("{}: the undamaged image fails: {e}", s.name));
        }
    }
    // Truncations.
    let mut lens: Vec<u64> = vec![0, 1, 511, 512, 513, file_len / 2, file_len - 1];
    for (_, start, len) in &s.regions {
        for edge in [*start, start + len] {
            lens.extend([edge.saturating_sub(1), edge, edge + 1]);
        }
    }
    lens.extend((1..=16).map(|k| k * 512));
    lens.retain(|&l| l < file_len);
    lens.sort_unstable();
    lens.dedup();
    for l in lens {
        write_whole(&pristine[..l as usize]);
        cases += 1;
        if let Some(f) = run_case(&target, exercise) {
            failures.push(format!("{}: truncated to {l} bytes: {f}", s.name));
        }
    }
    write_whole(&pristine);

    // Single-bit flips, done in place and undone after each case.
    let file = OpenOptions::new().write(true).open(&target).unwrap();
    let mut all: Vec<(String, u64, u8)> = Vec::new();
    for (label, start, len) in &s.regions {
        let len = (*len).min(file_len.saturating_sub(*start));
        all.extend(
            flips(*start, len)
                .into_iter()
                .map(|(o, b)| (label.clone(), o, b)),
        );
    }
    let stride = all.len().div_ceil(MAX_FLIPS).max(1);
    for (label, off, bit) in all.iter().step_by(stride) {
        let orig = pristine[*off as usize];
        file.write_all_at(&[orig ^ (1 << bit)], *off).unwrap();
        cases += 1;
        if let Some(f) = run_case(&target, exercise) {
            failures.push(format!(
                "{}: bit {bit} of byte {off:#x} ({label}) flipped: {f}",
                s.name
            ));
        }
        file.write_all_at(&[orig], *off).unwrap();
    }

    // Extreme values in every aligned 32-bit word of the first 128 bytes of each region.
    for (label, start, len) in &s.regions {
        let len = (*len).min(128).min(file_len.saturating_sub(*start));
        for w in (0..len / 4).map(|i| start + i * 4) {
            let orig = &pristine[w as usize..w as usize + 4];
            for v in [
                [0xff; 4],
                [0x7f, 0xff, 0xff, 0xff],
                [0xff, 0xff, 0xff, 0x7f],
            ] {
                file.write_all_at(&v, w).unwrap();
                cases += 1;
                if let Some(f) = run_case(&target, exercise) {
                    failures.push(format!(
                        "{}: word at {w:#x} ({label}) set to {v:02x?}: {f}",
                        s.name
                    ));
                }
            }
            file.write_all_at(orig, w).unwrap();
        }
    }
    (cases, failures)
}

/// The guard must notice a panic and a hang (run before the sweep).
fn harness_catches_panics_and_hangs() {
    let limit = Duration::from_millis(500);
    let panic = run_guarded(|| panic!("deliberate"), limit);
    assert!(
        panic
            .as_deref()
            .is_some_and(|m| m.contains("PANIC") && m.contains("deliberate")),
        "{panic:?}"
    );
    let hang = run_guarded(
        || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        },
        limit,
    );
    assert!(
        hang.as_deref().is_some_and(|m| m.contains("HANG")),
        "{hang:?}"
    );
    assert_eq!(run_guarded(|| Err("fine".into()), limit), None);
}

/// The guard must notice a touched and an untouched huge allocation. Run after the
/// sweep, in the same test: peaks are per process, and raising the peak first would
/// hide smaller huge allocations of the sweep.
fn harness_catches_huge_allocations() {
    let touched = run_guarded(
        || {
            let v = vec![1u8; (MAX_CASE_RSS + (64 << 20)) as usize];
            std::hint::black_box(&v);
            Ok(())
        },
        Duration::from_secs(60),
    );
    assert!(
        touched.as_deref().is_some_and(|m| m.contains("HUGE")),
        "{touched:?}"
    );
    let untouched = run_guarded(
        || {
            let v = vec![0u8; 3 << 30];
            std::hint::black_box(&v);
            Ok(())
        },
        Duration::from_secs(60),
    );
    assert!(
        untouched.as_deref().is_some_and(|m| m.contains("HUGE")),
        "{untouched:?}"
    );
}

#[test]
fn damaged_images_give_errors_not_panics_hangs_or_huge_allocations() {
    if !have_tool("qemu-img") {
        return;
    }
    let _serial = SWEEP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    install_panic_hook();
    harness_catches_panics_and_hangs();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut total = 0;
    for s in subjects(dir.path()) {
        let t = Instant::now();
        let (cases, f) = sweep(&s, exercise);
        eprintln!(
            "{}: {cases} cases, {} failures, {:.1}s",
            s.name,
            f.len(),
            t.elapsed().as_secs_f64()
        );
        total += cases;
        failures.extend(f);
    }
    eprintln!(
        "{total} cases in {:.1}s; process VmPeak {} MiB",
        started.elapsed().as_secs_f64(),
        status_kib("VmPeak:") >> 10
    );
    harness_catches_huge_allocations();
    let shown: Vec<&String> = failures.iter().take(60).collect();
    assert!(
        failures.is_empty(),
        "{} of {total} damaged images misbehaved (first {} shown):\n{}",
        failures.len(),
        shown.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The fuzzer-found cases in the corpus fail cleanly, naming the file.
#[test]
fn corpus_afl_cases_fail_cleanly() {
    let Some(corpus) = corpus_dir() else { return };
    install_panic_hook();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for rel in ["qemu-samples/afl5.img", "qemu-samples/afl9.vmdk"] {
        let img = corpus_file(&corpus, rel, dir.path());
        let name = img.file_name().unwrap().to_string_lossy().into_owned();
        match std::panic::catch_unwind(|| exercise(&img)) {
            Err(_) => failures.push(format!("{rel}: panicked in-process")),
            Ok(Ok(())) => failures.push(format!("{rel}: opened and read without error")),
            Ok(Err(msg)) if !msg.contains(&name) => {
                failures.push(format!("{rel}: the error does not name the file: {msg}"))
            }
            Ok(Err(_)) => {}
        }
        for sub in ["inspect", "export"] {
            let mut cmd = vmback();
            cmd.arg(sub).arg(&img);
            if sub == "export" {
                cmd.arg("-o").arg(dir.path().join("out.raw"));
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() || !err.contains(&name) || err.contains("panicked") {
                failures.push(format!(
                    "vmback {sub} {rel}: want a clean error naming {name}; status {}, stderr: {}",
                    out.status,
                    err.trim()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Small guest filesystems made by the real tools, with the regions worth damaging.
fn fs_subjects(dir: &Path) -> Vec<Subject> {
    let mut out = Vec::new();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    for i in 0..40 {
        std::fs::write(
            tree.join(format!("a/file{i}.txt")),
            format!("file {i}\n").repeat(i * 50),
        )
        .unwrap();
    }
    std::fs::write(tree.join("a/b/c/deep.bin"), seeded_bytes(5, 300_000)).unwrap();
    std::os::unix::fs::symlink("../a/file1.txt", tree.join("a/b/link")).unwrap();
    if have_tool("mke2fs") {
        let img = dir.join("ext4.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        run_ok(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-d"])
                .arg(&tree)
                .arg(&img),
        );
        out.push(Subject {
            name: "ext4",
            path: img,
            // Superblock, group descriptors, bitmaps, inode table, first directories.
            regions: vec![("metadata".into(), 1024, 300 << 10)],
        });
    }
    if have_tool("mkfs.vfat") && have_tool("mcopy") {
        let img = dir.join("fat.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        run_ok(
            Command::new("mkfs.vfat")
                .args(["-F", "12", "-n", "SWEEP"])
                .arg(&img)
                .stdout(std::process::Stdio::null()),
        );
        // (mcopy cannot copy the symlink: the directories and files only.)
        let mut cmd = Command::new("mcopy");
        cmd.args(["-s", "-i"]).arg(&img).arg(tree.join("a/b/c"));
        for i in 0..40 {
            cmd.arg(tree.join(format!("a/file{i}.txt")));
        }
        run_ok(cmd.arg("::/"));
        out.push(Subject {
            name: "fat12",
            path: img,
            // Boot sector, both FATs, root directory, first clusters.
            regions: vec![("metadata".into(), 0, 96 << 10)],
        });
    }
    if have_tool("zstd") {
        let img = dir.join("ntfs.img");
        run_ok(
            Command::new("zstd")
                .args(["-q", "-d", "-f", "-o"])
                .arg(&img)
                .arg(root().join("fixtures/ntfs/sample.ntfs.zst")),
        );
        let boot = std::fs::read(&img).unwrap();
        let cluster = le_u32(&boot, 0x0b) as u64 & 0xffff;
        let cluster = cluster * boot[0x0d] as u64;
        let mft = le_u64(&boot, 0x30) * cluster;
        out.push(Subject {
            name: "ntfs",
            path: img,
            regions: vec![
                ("boot sector".into(), 0, 512),
                ("MFT".into(), mft, 64 << 10),
            ],
        });
    }
    out
}

#[test]
fn damaged_guest_filesystems_give_errors_not_panics_hangs_or_huge_allocations() {
    let _serial = SWEEP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    install_panic_hook();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for s in fs_subjects(dir.path()) {
        let t = Instant::now();
        let (cases, f) = sweep(&s, exercise_fs);
        eprintln!(
            "{}: {cases} cases, {} failures, {:.1}s",
            s.name,
            f.len(),
            t.elapsed().as_secs_f64()
        );
        total += cases;
        failures.extend(f);
    }
    eprintln!("after the sweep: VmRSS {} MiB", status_kib("VmRSS:") >> 10);
    let shown: Vec<&str> = failures.iter().take(60).map(|s| s.as_str()).collect();
    assert!(
        failures.is_empty(),
        "{} of {total} damaged filesystems misbehaved (first {} shown):\n{}",
        failures.len(),
        shown.len(),
        shown.join("\n")
    );
}
