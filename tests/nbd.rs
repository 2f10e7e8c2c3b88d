//! NBD exports as disks, against a real `qemu-nbd`: reads agree byte for byte with
//! `qemu-img convert -O raw`, the allocation map with `qemu-img map`, and the dirty
//! bitmap of DESIGN.md's changed-block-tracking workflow both with `qemu-img map
//! x-dirty-bitmap` and with the ranges the test changed. Over a Unix socket and over
//! TCP. Plus hostile fake servers (a thread on a Unix socket) that must produce
//! errors, never a panic, a hang or a huge allocation.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::ops::Range;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmback::image::{DiskImage, RunKind};
use vmback::io::ReadAt;
use vmback::nbd::proto::*;
use vmback::nbd::NbdDisk;

const MIB: u64 = 1024 * 1024;
/// qemu's default dirty bitmap granularity (and the qcow2 cluster size here).
const GRANULARITY: u64 = 64 * 1024;

// ---------------------------------------------------------------------------
// qemu-nbd as a child process

/// A running `qemu-nbd`, killed when dropped.
struct QemuNbd {
    child: Child,
    uri: String,
    log: PathBuf,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl QemuNbd {
    /// The server's stderr so far (for failure messages).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `qemu-nbd -r -t -e 2 ARGS IMAGE` (read-only, persistent, two clients at a
/// time so `qemu-img` can look while we are connected) and waits until it listens.
fn spawn_qemu_nbd(dir: &Path, args: &[&str], image: &Path, uri: String) -> QemuNbd {
    let log = dir.join("qemu-nbd.log");
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-r", "-t", "-e", "2"]).args(args).arg(image);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut server = QemuNbd { child, uri, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("{cmd:?} exited with {status}:\n{}", server.log());
        }
        if listening(args) {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not start listening:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True once the socket named in qemu-nbd's arguments accepts connections.
fn listening(args: &[&str]) -> bool {
    let arg = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    if let Some(sock) = arg("-k") {
        return UnixStream::connect(sock).is_ok();
    }
    let port = arg("-p").unwrap_or("10809");
    std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok()
}

/// Exports `image` (format `fmt`) on a Unix socket in `dir`.
fn serve_unix(dir: &Path, image: &Path, fmt: &str, extra: &[&str]) -> QemuNbd {
    let sock = dir.join("nbd.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let mut args = vec!["-k", sock_s.as_str(), "-f", fmt];
    args.extend_from_slice(extra);
    let uri = format!("nbd+unix:///?socket={sock_s}");
    spawn_qemu_nbd(dir, &args, image, uri)
}

fn connect(server: &QemuNbd, bitmap: Option<&str>) -> NbdDisk {
    NbdDisk::connect(&server.uri, bitmap).unwrap_or_else(|e| {
        panic!(
            "connect {}: {}\n{}",
            server.uri,
            vmback::error::chain(&e),
            server.log()
        )
    })
}

fn qemu_img(args: &[&str]) -> Vec<u8> {
    run_ok(Command::new("qemu-img").args(args)).stdout
}

/// `qemu-img map --output=json` entries as (start, length, data, zero, present).
fn qemu_map(args: &[&str]) -> Vec<(u64, u64, bool, bool, bool)> {
    let mut all = vec!["map", "--output=json"];
    all.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_slice(&qemu_img(&all)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
                e["present"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Appends `r` to sorted `out`, merging with the last range when they touch.
fn push_range(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}

/// A whole-disk comparison of `disk` with a raw reference file, in reads of odd
/// sizes at odd offsets (so unaligned heads and tails are exercised).
fn assert_same_bytes(disk: &NbdDisk, reference: &Path) {
    let want = std::fs::read(reference).unwrap();
    assert_eq!(disk.size(), want.len() as u64, "size");
    let mut off = 0usize;
    let mut step = 0usize;
    while off < want.len() {
        let len = [1 << 20, 12_345, 511, 3 << 20][step % 4].min(want.len() - off);
        let mut buf = vec![0xa5u8; len];
        disk.read_exact_at(off as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read at {off}: {}", vmback::error::chain(&e)));
        assert!(
            buf == want[off..off + len],
            "bytes differ in [{off}, +{len})"
        );
        off += len;
        step += 1;
    }
}

// ---------------------------------------------------------------------------
// 1. qcow2 with data, holes and zero clusters, over a Unix socket

#[test]
fn qcow2_reads_and_extents_agree_with_qemu_img() {
    if !have_tool("qemu-nbd") || !have_tool("qemu-img") || !have_tool("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("src.raw");
    make_seeded_raw(&raw, 24 * MIB + 4096, 42);
    let img = d.join("disk.qcow2");
    let img_s = img.to_str().unwrap();
    qemu_img(&["convert", "-O", "qcow2", raw.to_str().unwrap(), img_s]);
    // Explicit zero clusters over data, and a freshly written cluster in a hole.
    run_ok(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -z 0 128k",
        "-c",
        "write -P 0x5a 20M 64k",
        img_s,
    ]));
    let reference = d.join("ref.raw");
    qemu_img(&["convert", "-O", "raw", img_s, reference.to_str().unwrap()]);

    let server = serve_unix(d, &img, "qcow2", &[]);
    let disk = connect(&server, None);
    assert_eq!(disk.uri(), server.uri);
    assert_eq!(disk.export_name(), "");
    assert_eq!(disk.format(), vmback::image::Format::Raw);
    assert!(disk.has_allocation_map());
    assert_same_bytes(&disk, &reference);
    let size = disk.size();
    // Holes come as OFFSET_HOLE chunks: far less than the disk crosses the wire.
    assert!(
        disk.bytes_read() > 0 && disk.bytes_read() < size,
        "bytes_read {} of {size}",
        disk.bytes_read()
    );

    // Extents: hole (data:false) -> Unallocated, data that reads as zero -> Zero,
    // data -> Data, exactly as qemu-img map classifies the same image.
    let mut want: Vec<(u64, u64, RunKind)> = Vec::new();
    for (start, len, data, zero, _) in qemu_map(&[img_s]) {
        let kind = match (data, zero) {
            (false, _) => RunKind::Unallocated,
            (true, true) => RunKind::Zero,
            (true, false) => RunKind::Data,
        };
        match want.last_mut() {
            Some(l) if l.2 == kind && l.0 + l.1 == start => l.1 += len,
            _ => want.push((start, len, kind)),
        }
    }
    let got: Vec<(u64, u64, RunKind)> = disk
        .extents(0..size)
        .unwrap()
        .into_iter()
        .map(|e| (e.start, e.len, e.kind))
        .collect();
    assert_eq!(got, want, "extents differ from qemu-img map");
    // Chunk by chunk, in an order that jumps back and forth as capture workers ask,
    // the reused allocation answers classify the disk the same way.
    let piece = 256 * 1024;
    let chunks = size.div_ceil(piece);
    let mut order: Vec<u64> = (0..chunks).collect();
    order.sort_by_key(|&i| (i % 3, std::cmp::Reverse(i)));
    let mut by_chunk = vec![Vec::new(); chunks as usize];
    for i in order {
        let range = i * piece..((i + 1) * piece).min(size);
        by_chunk[i as usize] = disk.extents(range).unwrap();
    }
    let mut merged: Vec<(u64, u64, RunKind)> = Vec::new();
    for e in by_chunk.into_iter().flatten() {
        match merged.last_mut() {
            Some(l) if l.2 == e.kind && l.0 + l.1 == e.start => l.1 += e.len,
            _ => merged.push((e.start, e.len, e.kind)),
        }
    }
    assert_eq!(
        merged, want,
        "chunk-by-chunk extents differ from qemu-img map"
    );
    assert!(got.iter().any(|e| e.2 == RunKind::Data));
    assert!(got.iter().any(|e| e.2 == RunKind::Unallocated));

    // A sub-range is clipped exactly; a range past the end is clipped to the disk.
    let sub = disk.extents(100_000..5 * MIB + 3).unwrap();
    assert_eq!(sub.first().map(|e| e.start), Some(100_000));
    assert_eq!(sub.last().map(|e| e.end()), Some(5 * MIB + 3));
    assert_eq!(
        disk.extents(size - 10..size + 100)
            .unwrap()
            .last()
            .map(|e| e.end()),
        Some(size)
    );
    assert!(disk.extents(size..size + 1).unwrap().is_empty());

    // Reads past the end fail and say where.
    let mut buf = [0u8; 2];
    let e = disk
        .read_exact_at(size - 1, &mut buf)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&server.uri) && e.contains("beyond the export size"),
        "{e}"
    );

    // The export front end works on an NBD disk as on any image (parallel reads
    // share the one connection).
    let out = d.join("export.raw");
    vmback::export::export(
        &disk,
        &out,
        &vmback::export::ExportOptions {
            format: vmback::export::ExportFormat::Raw,
            subformat: None,
            align: false,
            force: false,
        },
    )
    .unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&reference));
}

// ---------------------------------------------------------------------------
// 2. Changed-block tracking through a persistent dirty bitmap

/// The DESIGN.md workflow: day0 in live.qcow2 with bitmap b0, day1's differences
/// committed through QEMU's block layer, then exported with -B b0.
#[test]
fn dirty_bitmap_matches_qemu_and_the_changes() {
    if !have_tool("qemu-nbd") || !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 16 * MIB;
    let day0 = d.join("day0.raw");
    make_seeded_raw(&day0, size, 7);
    let day1 = d.join("day1.raw");
    std::fs::copy(&day0, &day1).unwrap();
    let day0_bytes = std::fs::read(&day0).unwrap();
    // 8 KiB of data past 9 MiB, to overwrite with zeroes: both ends hold nonzero
    // bytes, and the seeded disk has no zero run shorter than 192 KiB in between.
    let nonzero = |r: Range<u64>| {
        day0_bytes[r.start as usize..r.end as usize]
            .iter()
            .any(|&b| b != 0)
    };
    let data_at = (9 * MIB..size - 8192)
        .step_by(4096)
        .find(|&p| nonzero(p..p + 512) && nonzero(p + 8192 - 512..p + 8192))
        .unwrap();

    // A day of writes: inside data, across a cluster boundary, in a hole, one byte,
    // zeroes over data, and a run spanning several clusters.
    let changes: &[(u64, u64, u8)] = &[
        (200_000, 5_000, 0x11),
        (GRANULARITY * 20 - 100, 300, 0x22),
        (3 * MIB + 4096, 70_000, 0x33),
        (7 * MIB + 12_345, 1, 0x44),
        (data_at, 8 * 1024, 0x00),
        (12 * MIB + 1000, 300_000, 0x55),
    ];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&day1).unwrap();
        for &(off, len, byte) in changes {
            f.write_all_at(&vec![byte; len as usize], off).unwrap();
        }
    }
    // Every write must really change something for the test to mean anything.
    for &(off, len, byte) in changes {
        let old = &day0_bytes[off as usize..(off + len) as usize];
        assert!(
            old.iter().any(|&b| b != byte),
            "change at {off} changes nothing"
        );
    }
    let mut expected: Vec<Range<u64>> = Vec::new();
    for &(off, len, _) in changes {
        let start = off / GRANULARITY * GRANULARITY;
        let end = (off + len).div_ceil(GRANULARITY) * GRANULARITY;
        push_range(&mut expected, start..end.min(size));
    }

    let live = d.join("live.qcow2");
    let ov = d.join("ov.qcow2");
    let (live_s, ov_s) = (live.to_str().unwrap(), ov.to_str().unwrap());
    qemu_img(&["convert", "-O", "qcow2", day0.to_str().unwrap(), live_s]);
    qemu_img(&["bitmap", "--add", live_s, "b0"]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        day1.to_str().unwrap(),
        "-F",
        "raw",
        ov_s,
    ]);
    qemu_img(&["rebase", "-b", live_s, "-F", "qcow2", ov_s]);
    qemu_img(&["commit", ov_s]);

    let server = serve_unix(d, &live, "qcow2", &["-B", "b0"]);
    let disk = connect(&server, Some("b0"));
    assert_eq!(disk.dirty_bitmap(), Some("b0"));
    let dirty = disk.dirty_extents(0..size).unwrap();
    assert_eq!(dirty, expected, "dirty ranges differ from the changes made");

    // qemu's own NBD client shows dirty ranges as "present": false.
    let sock = d.join("nbd.sock");
    let opts = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:b0",
        sock.display()
    );
    let mut qemu_dirty: Vec<Range<u64>> = Vec::new();
    for (start, len, _, _, present) in qemu_map(&["--image-opts", &opts]) {
        if !present {
            push_range(&mut qemu_dirty, start..start + len);
        }
    }
    assert_eq!(dirty, qemu_dirty, "dirty ranges differ from qemu-img map");

    // A sub-range is clipped; a clean range has no dirty extents.
    let third = &expected[2];
    let probe = third.start + 10..third.start + 20;
    assert_eq!(disk.dirty_extents(probe.clone()).unwrap(), vec![probe]);
    assert!(disk.dirty_extents(5 * MIB..6 * MIB).unwrap().is_empty());

    // The export itself now holds day1, and base:allocation still works beside
    // the bitmap.
    assert_same_bytes(&disk, &day1);
    let ext = disk.extents(0..size).unwrap();
    assert_eq!(ext.last().map(|e| e.end()), Some(size));
}

// ---------------------------------------------------------------------------
// 3. TCP, with a named export

#[test]
fn tcp_with_export_name() {
    if !have_tool("qemu-nbd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    make_seeded_raw(&raw, 4 * MIB + 512, 3);
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let uri = format!("nbd://127.0.0.1:{port}/web01-disk0");
    let server = spawn_qemu_nbd(
        d,
        &[
            "-b",
            "127.0.0.1",
            "-p",
            &port,
            "-x",
            "web01-disk0",
            "-f",
            "raw",
        ],
        &raw,
        uri,
    );
    let disk = connect(&server, None);
    assert_eq!(disk.export_name(), "web01-disk0");
    assert_same_bytes(&disk, &raw);
    let ext = disk.extents(0..disk.size()).unwrap();
    assert!(ext.iter().any(|e| e.kind == RunKind::Data));
    assert!(ext.iter().any(|e| e.kind != RunKind::Data), "{ext:?}");
    drop(disk);

    // 4b. Unknown export: the error names it and the URI.
    let bad = format!("nbd://127.0.0.1:{port}/nope");
    let e = vmback::error::chain(&NbdDisk::connect(&bad, None).unwrap_err());
    assert!(
        e.contains(&bad) && e.contains("export \"nope\" is not available"),
        "{e}"
    );
    // The server is still fine afterwards.
    drop(connect(&server, None));
}

// ---------------------------------------------------------------------------
// 4. Unknown bitmap; dirty extents without a bitmap

#[test]
fn unknown_bitmap_is_a_clear_error() {
    if !have_tool("qemu-nbd") || !have_tool("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("disk.qcow2");
    let img_s = img.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", img_s, "8M"]);
    qemu_img(&["bitmap", "--add", img_s, "b0"]);
    let server = serve_unix(d, &img, "qcow2", &["-B", "b0"]);

    let e = vmback::error::chain(&NbdDisk::connect(&server.uri, Some("b9")).unwrap_err());
    assert!(
        e.contains(&server.uri) && e.contains("\"b9\"") && e.contains("qemu:dirty-bitmap:b9"),
        "{e}"
    );
    let disk = connect(&server, None);
    let e = disk.dirty_extents(0..4096).unwrap_err().to_string();
    assert!(e.contains("no dirty bitmap"), "{e}");
    // A fresh bitmap has nothing dirty.
    drop(disk);
    let disk = connect(&server, Some("b0"));
    assert!(disk.dirty_extents(0..disk.size()).unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// 5. Hostile fake servers

/// Runs `serve` on the first connection to a fresh Unix socket; returns the URI.
fn fake_server(
    dir: &Path,
    serve: impl FnOnce(UnixStream) + Send + 'static,
) -> (String, std::thread::JoinHandle<()>) {
    let sock = dir.join("fake.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handle = std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            serve(s);
        }
    });
    (format!("nbd+unix:///?socket={}", sock.display()), handle)
}

fn opt_reply(s: &mut UnixStream, option: u32, reply: u32, payload: &[u8]) {
    let mut b = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    let _ = s.write_all(&b);
}

/// Reads one option from the client: (option, data).
fn read_option(s: &mut UnixStream) -> Option<(u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).ok()?;
    Some((option, data))
}

fn greet(s: &mut UnixStream) {
    let mut g = NBDMAGIC.to_be_bytes().to_vec();
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&g).unwrap();
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).unwrap();
}

/// A well-behaved negotiation: structured replies, base:allocation as id 1, a
/// 1 MiB export. Returns once in transmission.
fn negotiate(s: &mut UnixStream) {
    greet(s);
    while let Some((option, _)) = read_option(s) {
        match option {
            NBD_OPT_STRUCTURED_REPLY => opt_reply(s, option, NBD_REP_ACK, &[]),
            NBD_OPT_SET_META_CONTEXT => {
                let mut p = 1u32.to_be_bytes().to_vec();
                p.extend_from_slice(BASE_ALLOCATION.as_bytes());
                opt_reply(s, option, NBD_REP_META_CONTEXT, &p);
                opt_reply(s, option, NBD_REP_ACK, &[]);
            }
            NBD_OPT_GO => {
                let mut p = vec![0, 0];
                p.extend_from_slice(&MIB.to_be_bytes());
                p.extend_from_slice(&1u16.to_be_bytes());
                opt_reply(s, option, NBD_REP_INFO, &p);
                opt_reply(s, option, NBD_REP_ACK, &[]);
                return;
            }
            _ => opt_reply(s, option, NBD_REP_ERR_UNSUP, &[]),
        }
    }
}

/// Reads one request: (cookie, offset, length).
fn read_request(s: &mut UnixStream) -> (u64, u64, u32) {
    let mut r = [0u8; 28];
    s.read_exact(&mut r).unwrap();
    (
        u64::from_be_bytes(r[8..16].try_into().unwrap()),
        u64::from_be_bytes(r[16..24].try_into().unwrap()),
        u32::from_be_bytes(r[24..28].try_into().unwrap()),
    )
}

fn chunk(s: &mut UnixStream, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
    let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    let _ = s.write_all(&b);
}

fn hostile(
    serve: impl FnOnce(UnixStream) + Send + 'static,
    act: impl FnOnce(&str) -> String,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (uri, handle) = fake_server(dir.path(), serve);
    let msg = act(&uri);
    handle.join().unwrap();
    assert!(msg.contains(&uri), "error does not name the URI: {msg}");
    msg
}

fn connect_err(uri: &str) -> String {
    vmback::error::chain(&NbdDisk::connect(uri, None).unwrap_err())
}

#[test]
fn hostile_huge_option_reply() {
    let e = hostile(
        |mut s| {
            greet(&mut s);
            let _ = read_option(&mut s);
            let mut b = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
            b.extend_from_slice(&NBD_OPT_STRUCTURED_REPLY.to_be_bytes());
            b.extend_from_slice(&NBD_REP_ACK.to_be_bytes());
            b.extend_from_slice(&u32::MAX.to_be_bytes());
            let _ = s.write_all(&b);
        },
        connect_err,
    );
    assert!(e.contains("exceeds the cap"), "{e}");
}

#[test]
fn hostile_early_eof() {
    let e = hostile(|mut s| greet(&mut s), connect_err);
    assert!(e.contains("closed the connection"), "{e}");
    // Closing in the middle of a read reply.
    let e = hostile(
        |mut s| {
            negotiate(&mut s);
            let (cookie, off, _) = read_request(&mut s);
            let mut p = off.to_be_bytes().to_vec();
            p.extend_from_slice(&[1; 100]);
            // Announce 4096 bytes of data, send 100, hang up.
            let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
            b.extend_from_slice(&NBD_REPLY_FLAG_DONE.to_be_bytes());
            b.extend_from_slice(&NBD_REPLY_TYPE_OFFSET_DATA.to_be_bytes());
            b.extend_from_slice(&cookie.to_be_bytes());
            b.extend_from_slice(&(8u32 + 4096).to_be_bytes());
            b.extend_from_slice(&p);
            let _ = s.write_all(&b);
        },
        |uri| {
            let disk = NbdDisk::connect(uri, None).unwrap();
            let mut buf = vec![0u8; 4096];
            let e = disk.read_exact_at(0, &mut buf).unwrap_err();
            vmback::error::chain(&e)
        },
    );
    assert!(
        e.contains("closed the connection") && e.contains("read of 4096 bytes"),
        "{e}"
    );
}

#[test]
fn hostile_read_chunk_beyond_request() {
    let e = hostile(
        |mut s| {
            negotiate(&mut s);
            let (cookie, off, len) = read_request(&mut s);
            let mut p = (off + u64::from(len)).to_be_bytes().to_vec();
            p.extend_from_slice(&[9; 512]);
            chunk(
                &mut s,
                NBD_REPLY_FLAG_DONE,
                NBD_REPLY_TYPE_OFFSET_DATA,
                cookie,
                &p,
            );
        },
        |uri| {
            let disk = NbdDisk::connect(uri, None).unwrap();
            let mut buf = vec![0u8; 4096];
            let e = disk.read_exact_at(8192, &mut buf).unwrap_err();
            let first = vmback::error::chain(&e);
            // The connection is now refused rather than misread.
            let again = disk.read_exact_at(0, &mut buf).unwrap_err().to_string();
            assert!(again.contains("unusable"), "{again}");
            first
        },
    );
    assert!(
        e.contains("outside the request") && e.contains("offset 0x2000"),
        "{e}"
    );
}

#[test]
fn hostile_block_status() {
    let status = |descriptors: &[(u32, u32)]| {
        let mut p = 1u32.to_be_bytes().to_vec();
        for (len, flags) in descriptors {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        p
    };
    for (descriptors, want) in [
        (vec![(4096u32, 0u32), (0, 3)], "length 0"),
        // All but the last must end inside the request: these run past it.
        (vec![(MIB as u32, 0), (4096, 3)], "run past the end"),
    ] {
        let payload = status(&descriptors);
        let e = hostile(
            move |mut s| {
                negotiate(&mut s);
                let (cookie, _, _) = read_request(&mut s);
                chunk(
                    &mut s,
                    NBD_REPLY_FLAG_DONE,
                    NBD_REPLY_TYPE_BLOCK_STATUS,
                    cookie,
                    &payload,
                );
            },
            |uri| {
                let disk = NbdDisk::connect(uri, None).unwrap();
                vmback::error::chain(&disk.extents(0..MIB).unwrap_err())
            },
        );
        assert!(
            e.contains(want) && e.contains("block status (base:allocation)"),
            "{e}"
        );
    }

    // A server that describes only a little at a time is asked again from where it
    // stopped, and the extents still cover the range exactly.
    let dir = tempfile::tempdir().unwrap();
    let (uri, handle) = fake_server(dir.path(), |mut s| {
        negotiate(&mut s);
        for i in 0..4u32 {
            let (cookie, off, len) = read_request(&mut s);
            assert_eq!(off, u64::from(i) * 256 * 1024);
            assert_eq!(u64::from(len), MIB - off);
            let p = {
                let mut p = 1u32.to_be_bytes().to_vec();
                p.extend_from_slice(&(256u32 * 1024).to_be_bytes());
                p.extend_from_slice(&(if i % 2 == 0 { 0u32 } else { 3 }).to_be_bytes());
                p
            };
            chunk(
                &mut s,
                NBD_REPLY_FLAG_DONE,
                NBD_REPLY_TYPE_BLOCK_STATUS,
                cookie,
                &p,
            );
        }
    });
    let disk = NbdDisk::connect(&uri, None).unwrap();
    let ext = disk.extents(0..MIB).unwrap();
    let kinds: Vec<_> = ext.iter().map(|e| (e.start, e.len, e.kind)).collect();
    let q = 256 * 1024;
    assert_eq!(
        kinds,
        vec![
            (0, q, RunKind::Data),
            (q, q, RunKind::Unallocated),
            (2 * q, q, RunKind::Data),
            (3 * q, q, RunKind::Unallocated)
        ]
    );
    drop(disk);
    handle.join().unwrap();
}
