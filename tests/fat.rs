//! FAT12/16/32 guest filesystems through `vmback ls` / `vmback cat` and the library,
//! cross-checked with mtools (`mcopy`, an independent reader) on the corpus volumes
//! and on volumes made here with `mkfs.vfat` + `mcopy` (long and Unicode names,
//! nested directories), plus hand-damaged volumes (cyclic cluster chains, bit flips).

mod common;
use common::*;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use vmback::guestfs::{fat::FatFs, FileType, GuestFs, NodeId};
use vmback::io::ReadAt;

fn ls(img: &Path, path: &str) -> Vec<String> {
    let out = run_ok(vmback().arg("ls").arg(img).arg(path));
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The file as mtools reads it.
fn mcopy(img: &Path, guest: &str) -> Vec<u8> {
    run_ok(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(img)
            .arg(format!("::{guest}"))
            .arg("-"),
    )
    .stdout
}

fn vcat(img: &Path, guest: &str) -> Vec<u8> {
    run_ok(vmback().arg("cat").arg(img).arg(format!("whole{guest}"))).stdout
}

#[test]
fn corpus_fat12_16_32_list_and_read_like_mtools() {
    let Some(corpus) = corpus_dir() else { return };
    if !have_tool("mcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (rel, kind, label) in [
        ("fat/fat12.bin.zst", "fat12", "VOLLAB1"),
        ("fat/fat16.bin.zst", "fat16", "LABFAT16"),
        ("fat/fat32.bin.gz", "fat32", "LABFAT32"),
    ] {
        let img = corpus_file(&corpus, rel, dir.path());
        let (size, want) = catalog_entry(&corpus, rel).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
        assert_eq!(
            sha256_file(&img),
            want,
            "{rel}: corpus file differs from CATALOG.md"
        );
        let vols = String::from_utf8(run_ok(vmback().arg("ls").arg(&img)).stdout).unwrap();
        assert!(vols.contains(kind) && vols.contains(label), "{rel}: {vols}");
        assert_eq!(
            ls(&img, "whole"),
            ["file1.txt", "file2.txt", "subdir1/"],
            "{rel}"
        );
        assert_eq!(ls(&img, "whole/subdir1"), ["file3.txt"], "{rel}");
        for f in ["/file1.txt", "/file2.txt", "/subdir1/file3.txt"] {
            let ours = vcat(&img, f);
            assert!(!ours.is_empty(), "{rel}{f}");
            assert_eq!(sha(&ours), sha(&mcopy(&img, f)), "{rel}{f}");
        }
        // Case-insensitive, by long or short name.
        assert_eq!(
            vcat(&img, "/SUBDIR1/FILE3.TXT"),
            vcat(&img, "/subdir1/file3.txt")
        );
        // Metadata: sizes, modes, the archive attribute, timestamps as mdir shows them.
        let out = run_ok(
            vmback()
                .args(["ls", "--json"])
                .arg(&img)
                .arg("whole/file1.txt"),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["size"].as_u64(), Some(20), "{rel}");
        assert_eq!(v[0]["mode"].as_u64(), Some(0o644), "{rel}");
        assert_eq!(v[0]["nlink"].as_u64(), Some(1), "{rel}");
        assert!(
            v[0]["mtime"]["secs"].as_i64().unwrap() > 1_626_307_200,
            "{rel}: {v}"
        ); // 2021-07-15
    }
}

/// A FAT32 volume made with the real tools: long names, Unicode, nested directories,
/// files spanning many clusters, an empty file, a read-only file.
#[test]
fn mkfs_vfat_long_unicode_names_nested_match_mtools() {
    if !have_tool("mkfs.vfat") || !have_tool("mcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let deep = src.join("Long Directory Name Here/nested ünïcode dir/deeper");
    std::fs::create_dir_all(&deep).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "/A file with a rather long name.txt",
            b"hello long name\n".to_vec(),
        ),
        ("/Grüße – 日本語.bin", seeded_bytes(1, 300_000)),
        ("/empty file", Vec::new()),
        ("/Long Directory Name Here/MixedCase.TxT", b"x".to_vec()),
        (
            "/Long Directory Name Here/nested ünïcode dir/deeper/big data file.dat",
            seeded_bytes(2, 1_234_567),
        ),
        (
            "/Long Directory Name Here/nested ünïcode dir/deeper/SHORT.TXT",
            b"short\n".to_vec(),
        ),
    ];
    for (p, data) in &files {
        std::fs::write(src.join(&p[1..]), data).unwrap();
    }
    let img = dir.path().join("lfn32.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-s", "1", "-n", "LFNTEST"])
            .arg(&img),
    );
    let mut cmd = Command::new("mcopy");
    cmd.arg("-s").arg("-i").arg(&img);
    for e in std::fs::read_dir(&src).unwrap() {
        cmd.arg(e.unwrap().path());
    }
    run_ok(cmd.arg("::/"));
    run_ok(
        Command::new("mattrib")
            .arg("-i")
            .arg(&img)
            .arg("+r")
            .arg("::/Long Directory Name Here/MixedCase.TxT"),
    );

    let vols = String::from_utf8(run_ok(vmback().arg("ls").arg(&img)).stdout).unwrap();
    assert!(vols.contains("fat32") && vols.contains("LFNTEST"), "{vols}");
    assert_eq!(
        ls(&img, "whole"),
        [
            "A file with a rather long name.txt",
            "Grüße – 日本語.bin",
            "Long Directory Name Here/",
            "empty file"
        ]
    );
    assert_eq!(
        ls(&img, "whole/long directory name here/NESTED~1"),
        ["deeper/"]
    );
    for (p, data) in &files {
        let ours = vcat(&img, p);
        assert_eq!(sha(&ours), sha(data), "{p}");
        assert_eq!(sha(&ours), sha(&mcopy(&img, p)), "{p} differs from mcopy");
    }
    let out = run_ok(
        vmback()
            .args(["ls", "--json"])
            .arg(&img)
            .arg("whole/Long Directory Name Here/mixedcase.txt"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["mode"].as_u64(),
        Some(0o444),
        "read-only attribute: {v}"
    );
    assert_eq!(v[0]["attributes"].as_u64().unwrap() & 1, 1, "{v}");
    // A missing name is reported as such, naming the path.
    let err = run_err(
        vmback()
            .arg("cat")
            .arg(&img)
            .arg("whole/Long Directory Name Here/nope"),
    );
    assert!(
        err.contains("nope") && err.contains("no such file"),
        "{err}"
    );
}

/// An in-memory volume for the library-level tests.
struct Mem(Vec<u8>);

impl ReadAt for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> vmback::Result<()> {
        let s = usize::try_from(offset)
            .ok()
            .filter(|&s| s.checked_add(buf.len()).is_some_and(|e| e <= self.0.len()));
        match s {
            Some(s) => {
                buf.copy_from_slice(&self.0[s..s + buf.len()]);
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

/// Walks the whole tree, reading every file; returns how many nodes failed.
fn walk(fs: &dyn GuestFs, node: NodeId, depth: usize, errors: &mut usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = fs.read_dir(node) else {
        *errors += 1;
        return;
    };
    for e in entries.iter().take(64) {
        match e.file_type {
            FileType::Dir => walk(fs, e.node, depth + 1, errors),
            _ => {
                let mut buf = vec![0u8; 64 * 1024];
                let mut off = 0u64;
                while let Ok(n) = fs.read_at(e.node, off, &mut buf) {
                    if n == 0 || off > 1 << 22 {
                        break;
                    }
                    off += n as u64;
                }
                let _ = fs.metadata(e.node);
                let _ = fs.lookup(node, &e.name);
            }
        }
    }
}

/// A FAT16 volume with 512-byte clusters and a directory `SUB` of 40 entries, so its
/// chain spans several clusters. Returns (image, FAT offsets, SUB's first cluster).
fn fat16_with_long_dir(dir: &Path) -> Option<(PathBuf, Vec<usize>, usize)> {
    if !have_tool("mkfs.vfat") || !have_tool("mcopy") {
        return None;
    }
    let img = dir.join("f16.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-F", "16", "-s", "1"])
            .arg(&img),
    );
    run_ok(Command::new("mmd").arg("-i").arg(&img).arg("::/SUB"));
    let src = dir.join("n");
    std::fs::create_dir_all(&src).unwrap();
    let mut cmd = Command::new("mcopy");
    cmd.arg("-i").arg(&img);
    for i in 0..40 {
        let p = src.join(format!("F{i:02}.TXT"));
        std::fs::write(&p, format!("file {i}\n")).unwrap();
        cmd.arg(p);
    }
    run_ok(cmd.arg("::/SUB/"));
    let b = std::fs::read(&img).unwrap();
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let bps = u16at(0x0B);
    let reserved = u16at(0x0E);
    let nfats = b[0x10] as usize;
    let root_entries = u16at(0x11);
    let fat_sectors = u16at(0x16);
    let fats: Vec<usize> = (0..nfats)
        .map(|i| (reserved + i * fat_sectors) * bps)
        .collect();
    let root = (reserved + nfats * fat_sectors) * bps;
    let sub = (0..root_entries)
        .map(|i| root + 32 * i)
        .find(|&o| &b[o..o + 11] == b"SUB        ")?;
    Some((img, fats, u16at(sub + 0x1A)))
}

fn set_fat16(b: &mut [u8], fats: &[usize], cluster: usize, value: u16) {
    for &f in fats {
        b[f + 2 * cluster..f + 2 * cluster + 2].copy_from_slice(&value.to_le_bytes());
    }
}

fn open_mem(bytes: Vec<u8>) -> vmback::Result<FatFs> {
    FatFs::open(Arc::new(Mem(bytes)), "test.img whole")
}

/// A directory whose cluster chain loops back on itself is endless; listing it must
/// fail (naming the directory), not hang or grow without bound.
#[test]
fn cyclic_directory_chain_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let Some((img, fats, first)) = fat16_with_long_dir(dir.path()) else {
        return;
    };
    let mut b = std::fs::read(&img).unwrap();
    // Sanity: intact, SUB lists 40 files.
    let fs = open_mem(b.clone()).unwrap();
    let sub = fs.lookup(fs.root(), OsStr::new("sub")).unwrap().unwrap();
    assert_eq!(fs.read_dir(sub).unwrap().len(), 40);
    // SUB's chain, and where each of its clusters lies.
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let mut chain = vec![first];
    while let n @ 2..=0xFFEF = u16at(&b, fats[0] + 2 * chain[chain.len() - 1]) {
        chain.push(n);
    }
    assert!(chain.len() > 1, "SUB should span several clusters");
    let cs = 512usize;
    let data_start =
        (u16at(&b, 0x0E) + b[0x10] as usize * u16at(&b, 0x16)) * 512 + u16at(&b, 0x11) * 32;
    let slots: Vec<usize> = chain
        .iter()
        .flat_map(|c| (0..cs / 32).map(move |i| data_start + (c - 2) * cs + 32 * i))
        .collect();
    // No end-of-directory marker (free slots become deleted ones), and the last
    // cluster points back at the first: the entries repeat for ever.
    for &s in &slots {
        if b[s] == 0 {
            b[s] = 0xE5;
        }
    }
    set_fat16(&mut b, &fats, chain[chain.len() - 1], first as u16);
    let fs = open_mem(b.clone()).unwrap();
    let sub = fs.lookup(fs.root(), OsStr::new("SUB")).unwrap().unwrap();
    let err = vmback::error::chain(&fs.read_dir(sub).unwrap_err());
    assert!(
        err.contains("/SUB") && (err.contains("budget") || err.contains("65536 entries")),
        "{err}"
    );
    // The same with every slot deleted: fatfs skips deleted slots without yielding,
    // so only the read budget stops it.
    for &s in &slots {
        b[s] = 0xE5;
    }
    let fs = open_mem(b).unwrap();
    let sub = fs.lookup(fs.root(), OsStr::new("SUB")).unwrap().unwrap();
    let err = vmback::error::chain(&fs.read_dir(sub).unwrap_err());
    assert!(err.contains("/SUB") && err.contains("budget"), "{err}");
}

/// A file whose chain ends before its stated size is an error, not short data; one
/// whose chain loops is cut off by its size (and the cluster cap), never endless.
#[test]
fn broken_file_chains_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let Some((img, fats, _)) = fat16_with_long_dir(dir.path()) else {
        return;
    };
    let big = dir.path().join("BIG.BIN");
    std::fs::write(&big, seeded_bytes(7, 20_000)).unwrap();
    run_ok(
        Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&big)
            .arg("::/BIG.BIN"),
    );
    let mut b = std::fs::read(&img).unwrap();
    let fs = open_mem(b.clone()).unwrap();
    let node = fs
        .lookup(fs.root(), OsStr::new("big.bin"))
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; 30_000];
    assert_eq!(fs.read_at(node, 0, &mut buf).unwrap(), 20_000);
    assert_eq!(&buf[..20_000], &seeded_bytes(7, 20_000)[..]);
    // Find BIG.BIN's first cluster in the root directory and end its chain at once.
    let u = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let root = (u(0x0E) + b[0x10] as usize * u(0x16)) * 512;
    let entry = (0..u(0x11))
        .map(|i| root + 32 * i)
        .find(|&o| &b[o..o + 11] == b"BIG     BIN")
        .unwrap();
    let first = u(entry + 0x1A);
    set_fat16(&mut b, &fats, first, 0xFFFF);
    let fs = open_mem(b.clone()).unwrap();
    let node = fs
        .lookup(fs.root(), OsStr::new("BIG.BIN"))
        .unwrap()
        .unwrap();
    let err = vmback::error::chain(&fs.read_at(node, 0, &mut buf).unwrap_err());
    assert!(
        err.contains("/BIG.BIN") && err.contains("chain ends early"),
        "{err}"
    );
    // Seeking past the end of the chain.
    let err = vmback::error::chain(&fs.read_at(node, 10_000, &mut buf).unwrap_err());
    assert!(err.contains("/BIG.BIN"), "{err}");
    // A chain that loops onto itself: reads stop at the file size.
    set_fat16(&mut b, &fats, first, first as u16);
    let fs = open_mem(b).unwrap();
    let node = fs
        .lookup(fs.root(), OsStr::new("BIG.BIN"))
        .unwrap()
        .unwrap();
    let mut total = 0u64;
    while let Ok(n) = fs.read_at(node, total, &mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, 20_000);
}

/// Every single-bit flip of the boot sector's BPB, the first FAT sector and the
/// first root directory entries gives an error or a readable tree, never a panic
/// (a panic would kill the worker and surface as "worker stopped") or a hang.
#[test]
fn bit_flips_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let Some((img, fats, _)) = fat16_with_long_dir(dir.path()) else {
        return;
    };
    let b = std::fs::read(&img).unwrap();
    let root = fats[fats.len() - 1] + (fats[1] - fats[0]);
    let regions = [(0usize, 0x40usize), (fats[0], 64), (root, 128)];
    let mut opened = 0;
    for (start, len) in regions {
        for byte in start..start + len {
            for bit in 0..8 {
                let mut m = b.clone();
                m[byte] ^= 1 << bit;
                if let Ok(fs) = open_mem(m) {
                    opened += 1;
                    let mut errors = 0;
                    walk(&fs, fs.root(), 0, &mut errors);
                    let dead = fs
                        .read_dir(fs.root())
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    assert!(
                        !dead.contains("worker stopped"),
                        "flip {byte:#x}.{bit}: {dead}"
                    );
                }
            }
        }
    }
    assert!(opened > 1000, "only {opened} variants opened");
}

/// `vmback inspect` counts used and free clusters exactly as `fsck.fat -v` does: on
/// the corpus FAT12/16/32 volumes and on FAT16/FAT32 volumes made by mkfs.vfat and
/// filled by mcopy. FAT32's FSInfo free count is only a hint: set wrong, it must not
/// change the answer.
#[test]
fn inspect_used_space_matches_fsck_fat() {
    if !have_tool("fsck.fat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vols: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(corpus) = corpus_dir() {
        for (rel, kind) in [
            ("fat/fat12.bin.zst", "fat12"),
            ("fat/fat16.bin.zst", "fat16"),
            ("fat/fat32.bin.gz", "fat32"),
        ] {
            vols.push((corpus_file(&corpus, rel, dir.path()), kind));
        }
    }
    if have_tool("mkfs.vfat") && have_tool("mcopy") {
        for (fat, kind, mib, cluster) in [("16", "fat16", 40, "4"), ("32", "fat32", 80, "1")] {
            let img = dir.path().join(format!("filled{fat}.img"));
            std::fs::File::create(&img)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            run_ok(
                Command::new("mkfs.vfat")
                    .args(["-F", fat, "-s", cluster])
                    .arg(&img),
            );
            let src = dir.path().join(format!("files{fat}"));
            std::fs::create_dir_all(&src).unwrap();
            let mut cmd = Command::new("mcopy");
            cmd.arg("-i").arg(&img);
            for i in 0..7u64 {
                let p = src.join(format!("file {i}.bin"));
                std::fs::write(&p, seeded_bytes(i + 1, 700_000 * i as usize + 123)).unwrap();
                cmd.arg(p);
            }
            run_ok(cmd.arg("::/"));
            vols.push((img, kind));
        }
    }
    for (img, kind) in &vols {
        let want = usage_by_tools(img, kind).unwrap();
        let (got, warnings) = inspect_usage(img);
        assert_eq!(
            got,
            [("whole".to_string(), Some(want))],
            "{}",
            img.display()
        );
        assert!(warnings.is_empty(), "{}: {warnings:?}", img.display());
        if *kind == "fat32" {
            // FSInfo (sector number at BPB 0x30): free count at +488, next free at +492.
            let mut b = std::fs::read(img).unwrap();
            let fsinfo = u16::from_le_bytes([b[0x30], b[0x31]]) as usize * 512;
            assert_eq!(&b[fsinfo..fsinfo + 4], b"RRaA", "{}", img.display());
            b[fsinfo + 488..fsinfo + 492].copy_from_slice(&7u32.to_le_bytes());
            let hinted = img.with_extension("hint.img");
            std::fs::write(&hinted, &b).unwrap();
            assert_eq!(
                inspect_usage(&hinted).0,
                [("whole".to_string(), Some(want))],
                "{}: a wrong FSInfo free count changed the answer",
                img.display()
            );
        }
    }
}
