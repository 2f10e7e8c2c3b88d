//! NTFS guest filesystems through `vmback ls` / `vmback cat` and the library:
//! the ntfs crate's own test volume (mkntfs + ntfs-3g), the Windows-made volumes inside
//! the Hyper-V and VMware corpus images, and `fixtures/ntfs/sample.ntfs.zst` (made by
//! `fixtures/make-ntfs-sample.sh` with mkntfs + ntfs-3g; its `sample.sha256` holds the
//! SHA-256 of every file as ntfs-3g read it back). The sample is committed rather
//! than generated here so the test needs neither FUSE nor root.

mod common;
use common::*;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vmback::guestfs::{self, FileType, GuestFs, NodeId};
use vmback::io::ReadAt;

fn ls(img: &Path, path: &str) -> Vec<String> {
    let out = run_ok(vmback().arg("ls").arg(img).arg(path));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn cat(img: &Path, path: &str) -> Vec<u8> {
    run_ok(vmback().arg("cat").arg(img).arg(path)).stdout
}

fn json(img: &Path, path: &str) -> serde_json::Value {
    let out = run_ok(vmback().args(["ls", "--json"]).arg(img).arg(path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

fn hex_sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A volume held in memory (so tests can damage it without touching files).
struct Mem(Vec<u8>);

impl ReadAt for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> vmback::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size());
        match end {
            Some(end) => {
                buf.copy_from_slice(&self.0[offset as usize..end as usize]);
                Ok(())
            }
            None => Err(vmback::Error::OutOfRange {
                path: "mem".into(),
                offset,
                len: buf.len() as u64,
                size: self.size(),
            }),
        }
    }
}

fn open_mem(bytes: Vec<u8>) -> vmback::Result<Arc<dyn GuestFs>> {
    guestfs::open(Arc::new(Mem(bytes)), "ntfs", "mem whole")
}

fn resolve(fs: &dyn GuestFs, path: &str) -> NodeId {
    let mut node = fs.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        node = fs
            .lookup(node, OsStr::new(c))
            .unwrap()
            .unwrap_or_else(|| panic!("{c} of {path} not found"));
    }
    node
}

fn read_all(fs: &dyn GuestFs, node: NodeId) -> vmback::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    loop {
        let n = fs.read_at(node, out.len() as u64, &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn testfs1(dir: &Path) -> Option<PathBuf> {
    let corpus = corpus_dir()?;
    Some(corpus_file(&corpus, "ntfs/testfs1.zst", dir))
}

#[test]
fn corpus_testfs1_lists_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = testfs1(dir.path()) else {
        return;
    };
    assert_eq!(
        ls(&img, "whole"),
        [
            "1000-bytes-file",
            "empty-file",
            "file-with-12345",
            "many_subdirs/",
            "sparse-file"
        ]
    );
    let subdirs = ls(&img, "whole/many_subdirs");
    assert_eq!(subdirs.len(), 512, "index root + allocation");
    for i in 1..=512 {
        assert!(subdirs.contains(&format!("{i}/")), "{i}/ missing");
    }
    assert_eq!(cat(&img, "whole/file-with-12345"), b"12345");
    assert_eq!(cat(&img, "whole/1000-bytes-file"), b"12345".repeat(200));
    assert_eq!(cat(&img, "whole/empty-file"), b"");
    // Data at 0 and at 500000, a hole between that reads as zeros.
    let sparse = cat(&img, "whole/sparse-file");
    assert_eq!(sparse.len(), 500_005);
    assert_eq!(&sparse[..5], b"12345");
    assert_eq!(&sparse[500_000..], b"11111");
    assert!(sparse[5..500_000].iter().all(|&b| b == 0));
    // Case-insensitive lookup, as Windows does it.
    assert_eq!(cat(&img, "whole/FILE-WITH-12345"), b"12345");
    // `touch -m -t 202101011337` in CET when the crate author made the image.
    let v = json(&img, "whole/empty-file");
    assert_eq!(v["mtime"]["secs"], 1_609_504_620);
    assert_eq!(v["mode"], 0o644);
    let out = run_ok(vmback().args(["ls", "--json"]).arg(&img).arg("whole"));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sub = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "many_subdirs")
        .unwrap();
    assert_eq!(
        (&sub["file_type"], &sub["mode"]),
        (&"dir".into(), &0o755.into())
    );
    // One record in this image (many_subdirs/187, MFT record 255) has a bad update
    // sequence in its second sector (bytes in use end in the first): reported, with
    // the record and the absolute position, not read as if it were fine.
    let err = run_err(
        vmback()
            .args(["ls", "-l"])
            .arg(&img)
            .arg("whole/many_subdirs/187"),
    );
    assert!(
        err.contains("/many_subdirs/187 (MFT record 255)") && err.contains("0x43c34"),
        "{err}"
    );
    // Metafiles are hidden from the listing but can be looked up.
    let v = json(&img, "whole/$MFT");
    assert!(v["size"].as_u64().unwrap() > 0);
    let fs = open_mem(std::fs::read(&img).unwrap()).unwrap();
    assert_eq!(fs.label().as_deref(), Some("mylabel"));
    assert_eq!(fs.kind(), "ntfs");
}

fn windows_fs(img: &Path) -> Arc<dyn GuestFs> {
    let disk = vmback::image::chain::open(img).unwrap();
    let view = vmback::browse::DiskView::new(Arc::new(disk), "corpus").unwrap();
    view.filesystem("p1").unwrap().1
}

#[test]
fn corpus_windows_made_volumes() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "hyperv-windows/dynamic.vhd.zst",
        "hyperv-windows/fixed.vhdx.zst",
    ] {
        let img = corpus_file(&corpus, rel, dir.path());
        // Formatted by Windows and left empty: only metafiles, which are hidden.
        assert_eq!(ls(&img, "p1"), Vec::<String>::new(), "{rel}");
        assert_eq!(
            windows_fs(&img).label().as_deref(),
            Some("New Volume"),
            "{rel}"
        );
        assert!(json(&img, "p1/$Volume")["size"].is_u64(), "{rel}");
    }
    let img = corpus_file(&corpus, "vmware/monolithicSparse.vmdk.zst", dir.path());
    assert_eq!(
        ls(&img, "p1"),
        ["System Volume Information/", "partition_type.rs", "vmdk/"]
    );
    assert_eq!(windows_fs(&img).label().as_deref(), Some("test_disk"));
    // Reference hashes from ntfscat (ntfs-3g) on the same volume.
    assert_eq!(
        hex_sha(&cat(&img, "p1/partition_type.rs")),
        "866f56d0a773ab4e484f1234ed8a669144b992e5ceafce0d9efb96904f668d28"
    );
    assert_eq!(
        hex_sha(&cat(&img, "p1/System Volume Information/WPSettings.dat")),
        "ad3279f1af8ec7cfd7d55aaaeb19d9fb973c8032c755ee66fc45a3d8ea603256"
    );
    assert_eq!(
        ls(&img, "p1/vmdk"),
        ["VMWare Virtual Disk Format (VMDK).asciidoc"]
    );
}

fn sample(dir: &Path) -> PathBuf {
    let src = root().join("fixtures/ntfs/sample.ntfs.zst");
    let bytes = zstd::decode_all(std::fs::File::open(&src).unwrap()).unwrap();
    let img = dir.join("sample.ntfs");
    std::fs::write(&img, bytes).unwrap();
    img
}

fn manifest() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("fixtures/ntfs/sample.sha256"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .collect()
}

#[test]
fn sample_every_file_matches_ntfs3g() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let fs = open_mem(std::fs::read(&img).unwrap()).unwrap();
    let m = manifest();
    assert!(m.len() > 300, "manifest too short: {}", m.len());
    for (sha, path) in &m {
        let node = resolve(&*fs, path);
        let data = read_all(&*fs, node).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&hex_sha(&data), sha, "{path}");
    }
    // The same through the binary, for a few (unicode name, ADS, deep path).
    let want: std::collections::HashMap<_, _> =
        m.iter().map(|(h, p)| (p.as_str(), h.as_str())).collect();
    for p in [
        "Ünïcødé-名前.txt",
        "ads.txt:secret",
        "deep/a/b/c/d/e/f/g/h/deep.txt",
        "sparse.bin",
    ] {
        assert_eq!(hex_sha(&cat(&img, &format!("whole/{p}"))), want[p], "{p}");
    }
    // LZNT1: compressed units, an incompressible unit stored as is, an all-sparse unit.
    for p in ["cdir/compressed.txt", "cdir/random.bin", "cdir/sparse.bin"] {
        assert_eq!(hex_sha(&cat(&img, &format!("whole/{p}"))), want[p], "{p}");
    }
    let v = json(&img, "whole/cdir/compressed.txt");
    assert_eq!(
        v["attributes"].as_u64().unwrap() & 0x800,
        0x800,
        "compressed attribute"
    );
}

#[test]
fn sample_metadata_links_streams() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let root = ls(&img, "whole");
    assert_eq!(
        root,
        [
            "ads.txt",
            "big.bin",
            "cdir/",
            "deep/",
            "dir1/",
            "file-with-12345",
            "interix-symlink",
            "junction",
            "many/",
            "readonly.txt",
            "sparse.bin",
            "symlink-to-12345",
            "Ünïcødé-名前.txt",
        ]
    );
    assert_eq!(ls(&img, "whole/many").len(), 300);
    // Hard links: one record, two names in two directories.
    let a = json(&img, "whole/big.bin");
    let b = json(&img, "whole/dir1/big-hardlink.bin");
    assert_eq!(a["link_id"], b["link_id"]);
    assert!(a["link_id"].is_u64());
    assert_eq!(
        (a["nlink"].as_u64(), b["nlink"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(json(&img, "whole/ads.txt")["nlink"], 1);
    // Alternate data streams: by name (case-insensitively), not listed.
    assert_eq!(cat(&img, "whole/ads.txt"), b"main data");
    assert_eq!(cat(&img, "whole/ADS.TXT:SECRET"), b"the secret stream");
    assert_eq!(
        cat(&img, "whole/ads.txt:secret:$DATA"),
        b"the secret stream"
    );
    assert_eq!(json(&img, "whole/ads.txt:big")["size"], 5000);
    let err = run_err(vmback().arg("cat").arg(&img).arg("whole/ads.txt:nope"));
    assert!(err.contains("ads.txt:nope"), "{err}");
    // Case-insensitive lookup.
    assert_eq!(cat(&img, "whole/FILE-WITH-12345"), b"12345");
    // Timestamps: `touch -m -d '2021-01-01 13:37:00.1234567'` (UTC), FILETIME precision.
    let v = json(&img, "whole/file-with-12345");
    assert_eq!(
        (v["mtime"]["secs"].as_i64(), v["mtime"]["nanos"].as_u64()),
        (Some(1_609_508_220), Some(123_456_700))
    );
    for t in ["atime", "ctime", "crtime"] {
        assert!(v[t]["secs"].as_i64().unwrap() > 1_700_000_000, "{t}: {v}");
    }
    assert_eq!(v["attributes"].as_u64().unwrap() & 0x20, 0x20, "archive");
    // Read-only attribute → 0o444; directories 0o755.
    let v = json(&img, "whole/readonly.txt");
    assert_eq!(
        (v["mode"].as_u64(), v["attributes"].as_u64().map(|a| a & 1)),
        (Some(0o444), Some(1))
    );
    assert_eq!(json(&img, "whole/deep")["mode"], 0o755);
    // Symlinks: Windows reparse point, Interix (ntfs-3g `ln -s`), junction.
    let long = String::from_utf8(run_ok(vmback().args(["ls", "-l"]).arg(&img).arg("whole")).stdout)
        .unwrap();
    for (name, target) in [
        ("symlink-to-12345", "file-with-12345"),
        ("interix-symlink", "file-with-12345"),
        ("junction", "\\??\\C:\\Windows"),
    ] {
        let line = long.lines().find(|l| l.contains(name)).unwrap();
        assert!(
            line.starts_with('l') && line.ends_with(&format!("{name} -> {target}")),
            "{line}"
        );
    }
    // Sparse: data, a 3 MiB hole, data, a trailing hole.
    let s = cat(&img, "whole/sparse.bin");
    assert_eq!(s.len(), 4 << 20);
    assert_eq!(&s[..5], b"start");
    assert_eq!(&s[3 << 20..(3 << 20) + 13], b"end-of-sparse");
    // Metafiles hidden from the root listing, yet reachable.
    assert!(!root.iter().any(|n| n.starts_with('$')));
    assert!(json(&img, "whole/$UpCase")["size"].as_u64().unwrap() >= 128 * 1024);
    let fs = open_mem(std::fs::read(&img).unwrap()).unwrap();
    assert_eq!(fs.label().as_deref(), Some("vmback-sample"));
    let node = resolve(&*fs, "ads.txt:secret");
    assert_ne!(node, resolve(&*fs, "ads.txt"));
    assert_eq!(fs.metadata(node).unwrap().file_type, FileType::File);
    assert!(fs.read_dir(node).is_err());
}

/// Offset of MFT record `n` of a partitionless NTFS image (from its boot sector).
fn mft_record(img: &[u8], n: u64) -> usize {
    let b = vmback_parsers::ntfs::boot::parse_ntfs_boot(&img[..512], img.len() as u64).unwrap();
    (b.mft_offset + n * u64::from(b.file_record_size)) as usize
}

#[test]
fn corrupt_root_record_and_index_block() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = testfs1(dir.path()) else {
        return;
    };
    let good = std::fs::read(&img).unwrap();
    // The root directory's record loses its "FILE" signature.
    let mut bad = good.clone();
    let root = mft_record(&bad, 5);
    assert_eq!(&bad[root..root + 4], b"FILE");
    bad[root] = b'X';
    let path = dir.path().join("bad-root.img");
    std::fs::write(&path, &bad).unwrap();
    let err = run_err(vmback().arg("ls").arg(&path).arg("whole"));
    assert!(
        err.contains("whole (ntfs)") && err.contains("MFT record 5"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{root:#x}")),
        "absolute position missing: {err}"
    );
    assert!(!err.contains("panic"), "{err}");
    // Every index block (INDX) of many_subdirs (not the root's, which name $MFT) gets
    // a broken update sequence.
    let mut bad = good.clone();
    let mut n = 0;
    let mft_name: Vec<u8> = "$MFT".encode_utf16().flat_map(u16::to_le_bytes).collect();
    for at in (0..bad.len() - 4096).step_by(512) {
        let block = &bad[at..at + 4096];
        if &block[..4] == b"INDX" && !block.windows(8).any(|w| w == mft_name) {
            bad[at + 510] ^= 0xff; // the fixup check of sector 1 fails
            n += 1;
        }
    }
    assert!(n > 0, "no index blocks found");
    let path = dir.path().join("bad-indx.img");
    std::fs::write(&path, &bad).unwrap();
    let err = run_err(vmback().arg("ls").arg(&path).arg("whole/many_subdirs"));
    assert!(
        err.contains("whole (ntfs)") && err.contains("/many_subdirs"),
        "{err}"
    );
    assert!(err.contains("0x"), "{err}");
    // Not NTFS at all / a boot sector over our caps: refused before the crate sees it.
    let mut bad = good.clone();
    bad[0x40] = 0xee; // 256 KiB file records
    let e = open_mem(bad).err().unwrap();
    let msg = vmback::error::chain(&e);
    assert!(
        msg.contains("MAX_NTFS_RECORD_BYTES") && msg.contains("boot sector"),
        "{msg}"
    );
}

/// Single-bit flips in the first MFT records (the metafiles and the root) and in the
/// root's index: every open / list / read returns Ok or Err; no panic escapes and no
/// worker dies. Bounded in time.
#[test]
fn bit_flip_sweep_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = testfs1(dir.path()) else {
        return;
    };
    let good = std::fs::read(&img).unwrap();
    let first = mft_record(&good, 0);
    let span = 12 * 1024; // records 0..12 (1 KiB each): $MFT .. $UpCase, root = 5
    let start = std::time::Instant::now();
    let (mut tried, mut errors) = (0, 0);
    let mut bit = 0usize;
    while start.elapsed() < std::time::Duration::from_secs(15) && bit < span * 8 {
        let mut bad = good.clone();
        bad[first + bit / 8] ^= 1 << (bit % 8);
        bit += 37; // a stride coprime with 8 walks over every bit position in turn
        tried += 1;
        let outcome = std::panic::catch_unwind(|| -> vmback::Result<()> {
            let fs = open_mem(bad)?;
            for e in fs.read_dir(fs.root())? {
                let m = fs.metadata(e.node)?;
                if m.file_type == FileType::File {
                    read_all(&*fs, e.node)?;
                }
            }
            Ok(())
        });
        match outcome {
            Err(_) => panic!("panic escaped at bit {}", bit - 37),
            Ok(Err(e)) => {
                errors += 1;
                let msg = vmback::error::chain(&e);
                assert!(!msg.contains("worker stopped"), "bit {}: {msg}", bit - 37);
            }
            Ok(Ok(())) => {}
        }
    }
    eprintln!("{tried} flips, {errors} errors, {:?}", start.elapsed());
    assert!(tried > 50 && errors > 0, "{tried} flips, {errors} errors");
}

/// Makes the last entry of one index block of `many_subdirs` point at the block itself
/// (undoing and redoing the update sequence fixups so the block stays valid): listing
/// and lookups must fail on the read budget instead of looping forever.
#[test]
fn index_cycle_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = testfs1(dir.path()) else {
        return;
    };
    let mut bytes = std::fs::read(&img).unwrap();
    let mft_name: Vec<u8> = "$MFT".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let at = (0..bytes.len() - 4096)
        .step_by(512)
        .find(|&a| {
            &bytes[a..a + 4] == b"INDX" && !bytes[a..a + 4096].windows(8).any(|w| w == mft_name)
        })
        .expect("an index block of many_subdirs");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let mut block = bytes[at..at + 4096].to_vec();
    let (usa, count) = (u16_at(&block, 4), u16_at(&block, 6));
    let usn = [block[usa], block[usa + 1]];
    for i in 1..count {
        let (end, saved) = (i * 512 - 2, usa + 2 * i);
        let orig = [block[saved], block[saved + 1]];
        block[end..end + 2].copy_from_slice(&orig);
    }
    let vcn = block[0x10..0x18].to_vec();
    let mut e = 0x18 + u32_at(&block, 0x18);
    let mut last_key = String::new();
    while block[e + 12] & 2 == 0 {
        // The key is a $FILE_NAME: name length at +0x40, UTF-16 name at +0x42.
        let (len, name) = (block[e + 0x10 + 0x40] as usize, e + 0x10 + 0x42);
        let units: Vec<u16> = (0..len)
            .map(|i| u16_at(&block, name + 2 * i) as u16)
            .collect();
        last_key = String::from_utf16(&units).unwrap();
        e += u16_at(&block, e + 8);
    }
    assert_eq!(u16_at(&block, e + 8), 0x10, "a leaf block's end entry");
    block[e + 8..e + 10].copy_from_slice(&0x18u16.to_le_bytes());
    block[e + 12] |= 1; // has a subnode ...
    block[e + 0x10..e + 0x18].copy_from_slice(&vcn); // ... which is this very block
    let used = u32_at(&block, 0x1c) + 8;
    block[0x1c..0x20].copy_from_slice(&(used as u32).to_le_bytes());
    block[0x24] |= 1;
    for i in 1..count {
        let (end, saved) = (i * 512 - 2, usa + 2 * i);
        let orig = [block[end], block[end + 1]];
        block[saved..saved + 2].copy_from_slice(&orig);
        block[end..end + 2].copy_from_slice(&usn);
    }
    bytes[at..at + 4096].copy_from_slice(&block);
    let path = dir.path().join("cycle.img");
    std::fs::write(&path, &bytes).unwrap();
    let start = std::time::Instant::now();
    let err = run_err(vmback().arg("ls").arg(&path).arg("whole/many_subdirs"));
    assert!(
        err.contains("/many_subdirs") && err.contains("metadata read for one request"),
        "{err}"
    );
    // A name just after the block's last key: the search ends in the cyclic entry.
    let probe = format!("whole/many_subdirs/{last_key} ");
    let err = run_err(vmback().arg("cat").arg(&path).arg(&probe));
    assert!(err.contains("metadata read for one request"), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    // The rest of the volume still reads.
    assert_eq!(cat(&path, "whole/file-with-12345"), b"12345");
}

/// Hand-built: big.bin's valid data length (initialized size, attribute header +0x38)
/// set to 10 000 of its 40 000 bytes; past it Windows reads zeros, whatever the
/// clusters hold.
#[test]
fn initialized_size_reads_zeros_beyond() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let good = std::fs::read(&img).unwrap();
    let fs = open_mem(good.clone()).unwrap();
    let node = resolve(&*fs, "big.bin");
    let data = read_all(&*fs, node).unwrap();
    assert_eq!(data.len(), 40_000);
    // Find big.bin's non-resident $DATA header in its MFT record: type 0x80, non-resident,
    // data size 40 000 at +0x30, initialized size 40 000 at +0x38.
    let record = mft_record(&good, fs.metadata(node).unwrap().link_id.unwrap());
    let rec = &good[record..record + 1024];
    let attr = (0..1024 - 0x40)
        .find(|&a| {
            rec[a..a + 4] == 0x80u32.to_le_bytes()
                && rec[a + 8] == 1
                && rec[a + 0x30..a + 0x38] == 40_000u64.to_le_bytes()
                && rec[a + 0x38..a + 0x40] == 40_000u64.to_le_bytes()
        })
        .expect("$DATA attribute of big.bin");
    let mut bad = good.clone();
    let at = record + attr + 0x38;
    assert!(at % 512 <= 502, "field overlaps a fixup position");
    bad[at..at + 8].copy_from_slice(&10_000u64.to_le_bytes());
    let fs = open_mem(bad).unwrap();
    let got = read_all(&*fs, node).unwrap();
    assert_eq!(got.len(), 40_000);
    assert_eq!(got[..10_000], data[..10_000]);
    assert!(got[10_000..].iter().all(|&b| b == 0));
    assert!(data[10_000..].iter().any(|&b| b != 0));
    // A read that starts past the valid data length.
    let mut buf = [0xffu8; 100];
    assert_eq!(fs.read_at(node, 20_000, &mut buf).unwrap(), 100);
    assert_eq!(buf, [0u8; 100]);
}

/// `vmback inspect` counts used and free clusters exactly as ntfs-3g does
/// (`ntfscluster`, with the cluster count from `ntfsinfo -m`): on the ntfs crate's
/// volume, on the committed sample, and on Windows-made volumes inside VHD, VHDX and
/// VMDK images (cut out of qemu-img's raw conversion for the tools).
#[test]
fn inspect_used_space_matches_ntfs3g() {
    if !have_tool("ntfscluster") || !have_tool("ntfsinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = sample(dir.path());
    let want = usage_by_tools(&img, "ntfs").unwrap();
    assert_eq!(inspect_usage(&img).0, [("whole".to_string(), Some(want))]);
    // A boot sector claiming more sectors than the volume has: no count, a warning.
    let mut b = std::fs::read(&img).unwrap();
    b[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let big = dir.path().join("big.ntfs");
    std::fs::write(&big, &b).unwrap();
    let (vols, warnings) = inspect_usage(&big);
    assert_eq!(vols, [("whole".to_string(), None)]);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("whole: used space unknown") && w.contains("boot sector")),
        "{warnings:?}"
    );
    let Some(corpus) = corpus_dir() else { return };
    let img = corpus_file(&corpus, "ntfs/testfs1.zst", dir.path());
    let want = usage_by_tools(&img, "ntfs").unwrap();
    assert_eq!(inspect_usage(&img).0, [("whole".to_string(), Some(want))]);
    if !have_tool("qemu-img") {
        return;
    }
    for rel in [
        "hyperv-windows/dynamic.vhd.zst",
        "hyperv-windows/dynamic.vhdx.zst",
        "vmware/monolithicSparse.vmdk.zst",
    ] {
        let img = corpus_file(&corpus, rel, dir.path());
        let raw = dir.path().join("disk.raw");
        run_ok(
            std::process::Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(&img)
                .arg(&raw),
        );
        let vols = inspect_volumes(&img);
        let (name, start, len, fs) = &vols[0];
        assert_eq!(fs.as_deref(), Some("ntfs"), "{rel}");
        let part = dir.path().join("p1.ntfs");
        cut_volume(&raw, *start, *len, &part);
        let want = usage_by_tools(&part, "ntfs").unwrap();
        let (got, warnings) = inspect_usage(&img);
        assert_eq!(got, [(name.clone(), Some(want))], "{rel}");
        assert!(warnings.is_empty(), "{rel}: {warnings:?}");
    }
}
