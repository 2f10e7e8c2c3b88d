//! ext2/3/4 guest filesystems through `vmback ls` / `vmback cat`, on the corpus
//! images (made by mkfs + the Linux kernel) and cross-checked with e2fsprogs.

mod common;
use common::*;

use std::process::Command;

fn ls(img: &std::path::Path, path: &str) -> Vec<String> {
    let out = run_ok(vmback().arg("ls").arg(img).arg(path));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn corpus_ext4_lists_and_reads() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, "ext4/test_disk1.bin.zst", dir.path());
    let root = ls(&img, "whole");
    for want in [
        "lost+found/",
        "empty_file",
        "empty_dir/",
        "small_file",
        "owner_file",
        "dir1/",
        "sym_simple",
        "sym_59",
    ] {
        assert!(
            root.iter().any(|l| l == want),
            "{want} missing from {root:?}"
        );
    }
    let out = run_ok(vmback().arg("cat").arg(&img).arg("whole/small_file"));
    assert_eq!(out.stdout, b"hello, world!");
    // htree directory with 1000 entries.
    assert_eq!(ls(&img, "whole/medium_dir").len(), 1000);
    // Symlinks are listed as symlinks, never followed.
    let out = run_ok(
        vmback()
            .args(["ls", "-l"])
            .arg(&img)
            .arg("whole/sym_simple"),
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        line.starts_with('l') && line.contains("-> small_file"),
        "{line}"
    );
    // owner_file is owned by 123:456.
    let out = run_ok(
        vmback()
            .args(["ls", "--json"])
            .arg(&img)
            .arg("whole/owner_file"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v[0]["uid"].as_u64(), v[0]["gid"].as_u64()),
        (Some(123), Some(456))
    );
    // The volume list names the filesystem and its label.
    let vols = ls_volumes(&img);
    assert!(
        vols.contains("ext4") && vols.contains("ext4-view testfs"),
        "{vols}"
    );
}

fn ls_volumes(img: &std::path::Path) -> String {
    String::from_utf8(run_ok(vmback().arg("ls").arg(img)).stdout).unwrap()
}

#[test]
fn ext2_and_ext3_are_detected_and_read() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ext2 = corpus_file(&corpus, "ext4/test_disk_ext2.bin.zst", dir.path());
    assert!(ls_volumes(&ext2).contains("ext2"));
    assert_eq!(
        run_ok(vmback().arg("cat").arg(&ext2).arg("whole/small_file")).stdout,
        b"hello, world!"
    );
    let ext3 = corpus_file(&corpus, "ext4/test_disk_ext3.bin.zst", dir.path());
    assert!(ls_volumes(&ext3).contains("ext3"));
    assert!(ls(&ext3, "whole").contains(&"medium_dir/".to_string()));
}

/// The journal is replayed in memory, exactly as e2fsck replays it on a copy.
/// (The corpus catalog says dir0..dir999; e2fsck and vmback agree on dir0..dir772,
/// the transactions that were committed.)
#[test]
fn journal_replay_matches_e2fsck() {
    let Some(corpus) = corpus_dir() else { return };
    if !have_tool("e2fsck") || !have_tool("debugfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(
        &corpus,
        "ext4/test_disk_4k_block_journal.bin.zst",
        dir.path(),
    );
    let before = std::fs::read(&img).unwrap();
    let mut ours = ls(&img, "whole");
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "the image must never be written"
    );
    let copy = dir.path().join("replayed.bin");
    std::fs::write(&copy, &before).unwrap();
    let _ = Command::new("e2fsck")
        .arg("-fy")
        .arg(&copy)
        .output()
        .unwrap();
    let out = run_ok(Command::new("debugfs").args(["-R", "ls -p"]).arg(&copy));
    let mut theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .map(|n| format!("{n}/"))
        .collect();
    ours.sort();
    theirs.sort();
    assert!(
        ours.len() > 700,
        "journal not replayed: only {} entries",
        ours.len()
    );
    assert_eq!(ours, theirs);
}

/// `vmback inspect` reports each ext filesystem's size, used and free space exactly as
/// `dumpe2fs -h` counts them (ext2, ext3, ext4 with 1 KiB and 4 KiB blocks; the image
/// whose journal needs replay included: both read the superblock as written).
#[test]
fn inspect_used_space_matches_dumpe2fs() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (rel, kind) in [
        ("ext4/test_disk1.bin.zst", "ext4"),
        ("ext4/test_disk_4k_block_journal.bin.zst", "ext4"),
        ("ext4/test_disk_ext2.bin.zst", "ext2"),
        ("ext4/test_disk_ext3.bin.zst", "ext3"),
    ] {
        let img = corpus_file(&corpus, rel, dir.path());
        let Some(want) = usage_by_tools(&img, kind) else {
            return;
        };
        let (vols, warnings) = inspect_usage(&img);
        assert_eq!(vols, [("whole".to_string(), Some(want))], "{rel}");
        assert!(warnings.is_empty(), "{rel}: {warnings:?}");
        let text = String::from_utf8(run_ok(vmback().arg("inspect").arg(&img)).stdout).unwrap();
        assert!(text.contains("used: ") && text.contains("free: "), "{text}");
    }
}

/// A superblock whose free count is impossible: inspect still succeeds, shows
/// "used: ?" and says why in a warning naming the structure and its offset.
#[test]
fn inspect_survives_an_unreadable_usage() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let img = corpus_file(&corpus, "ext4/test_disk_ext2.bin.zst", dir.path());
    let mut b = std::fs::read(&img).unwrap();
    // s_free_blocks_count_lo (superblock + 0x0c) above the block count (ext2: no checksum).
    b[1024 + 0x0c..1024 + 0x10].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&img, &b).unwrap();
    let (vols, warnings) = inspect_usage(&img);
    assert_eq!(vols, [("whole".to_string(), None)]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("whole: used space unknown")
                && w.contains("ext superblock at offset 0x40c")),
        "{warnings:?}"
    );
    let text = String::from_utf8(run_ok(vmback().arg("inspect").arg(&img)).stdout).unwrap();
    assert!(text.contains("used: ?"), "{text}");
    // Browsing does not need the counts.
    assert!(ls(&img, "whole").contains(&"small_file".to_string()));
}

/// Reads of one file in every order a mount makes them (sequential, two
/// interleaved streams as a reader and its readahead make, small gaps, backwards,
/// random, past the end) return its bytes: the per-worker cursors that spare
/// ext4-view's seek from the start must never hand out the wrong position.
#[test]
fn reads_at_any_offset_match_the_file() {
    if !have_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // 6 MiB and a tail that is not a whole block.
    let data = seeded_bytes(7, (6 << 20) + 12_345);
    std::fs::write(tree.join("big.bin"), &data).unwrap();
    let img = dir.path().join("fs.img");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("32M")
        .status()
        .unwrap();
    assert!(st.success());

    let src = vmback::io::FileSource::open(&img).unwrap();
    let fs = vmback::guestfs::open(std::sync::Arc::new(src), "ext4", "test").unwrap();
    let node = fs
        .lookup(fs.root(), std::ffi::OsStr::new("big.bin"))
        .unwrap()
        .unwrap();
    let read = |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let n = fs.read_at(node, offset, &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let want = |offset: u64, len: usize| {
        let start = (offset as usize).min(data.len());
        data[start..(start + len).min(data.len())].to_vec()
    };
    let size = data.len() as u64;
    let blk = 128 << 10;
    let mut offsets: Vec<(u64, usize)> = Vec::new();
    // Sequential, then a reader and a readahead stream 1 MiB ahead, interleaved.
    offsets.extend((0..size).step_by(blk).map(|o| (o, blk)));
    for o in (0..size).step_by(blk) {
        offsets.push((o, blk));
        offsets.push((o + (1 << 20), 64 << 10));
    }
    // Gaps small enough to be read over rather than sought, then larger ones,
    // backwards, unaligned, and past the end.
    offsets.extend((0..size).step_by(8192).map(|o| (o, 4096)));
    offsets.extend((0..40).map(|i| (i * 150_001, 4097)));
    offsets.extend((0..40).rev().map(|i| (i * 150_001 + 3, 10_000)));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.push((x % (size + 8192), (x >> 40) as usize % 300_000));
    }
    offsets.extend([
        (size - 1, 10),
        (size, 10),
        (size + 1, 10),
        (u64::MAX - 5, 4),
    ]);
    for (o, len) in offsets {
        assert!(read(o, len) == want(o, len), "{len} bytes at {o} differ");
    }
}
