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
