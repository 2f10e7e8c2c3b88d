//! Partition tables: real tables from the corpus, tables made by sfdisk/sgdisk, and
//! damaged ones (backup GPT fallback, EBR loops) — seen through `vmback inspect --json`.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

fn volumes(img: &Path) -> serde_json::Value {
    let out = run_ok(vmback().args(["inspect", "--json"]).arg(img));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn starts(v: &serde_json::Value) -> Vec<(String, u64)> {
    v["volumes"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["start"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn corpus_partition_tables() {
    let Some(corpus) = corpus_dir() else { return };
    let v = volumes(&corpus.join("partitions/gpt.bin"));
    assert_eq!(v["volumes"]["table"]["scheme"], "gpt");
    assert_eq!(starts(&v), [("p1".into(), 20480), ("p2".into(), 210763776)]);
    assert_eq!(
        v["volumes"]["volumes"][0]["type_id"],
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    let v = volumes(&corpus.join("partitions/gpt_4k.bin"));
    assert_eq!(v["volumes"]["table"]["sector_size"], 4096);
    assert_eq!(
        starts(&v),
        [
            ("p1".into(), 1048576),
            ("p2".into(), 3145728),
            ("p3".into(), 5242880)
        ]
    );
    let v = volumes(&corpus.join("partitions/mbr.bin"));
    assert_eq!(v["volumes"]["table"]["scheme"], "mbr");
    assert_eq!(
        starts(&v),
        [("p1".into(), 1048576), ("p2".into(), 525336576)]
    );
    assert_eq!(v["volumes"]["volumes"][0]["type_id"], "0x07");
}

#[test]
fn mbr_with_logical_partitions_from_sfdisk() {
    if !have_tool("sfdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mbr.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let script = "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=100000, type=5\nstart=24576, size=8192, type=7\nstart=34816, size=8192, type=c\n";
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let v = volumes(&img);
    assert_eq!(
        starts(&v),
        [
            ("p1".into(), 2048 * 512),
            ("p5".into(), 24576 * 512),
            ("p6".into(), 34816 * 512)
        ]
    );
    assert_eq!(v["volumes"]["volumes"][2]["type_id"], "0x0c");
}

#[test]
fn gpt_falls_back_to_backup_header() {
    if !have_tool("sgdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("gpt.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run_ok(
        Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+8M",
                "-t",
                "1:ef00",
                "-c",
                "1:ESP",
                "-n",
                "2:0:0",
                "-t",
                "2:8300",
            ])
            .arg(&img),
    );
    let good = volumes(&img);
    assert_eq!(
        starts(&good),
        [("p1".into(), 1 << 20), ("p2".into(), 9 << 20)]
    );
    assert_eq!(good["volumes"]["volumes"][0]["label"], "ESP");
    // Damage one byte of the primary header: its CRC no longer matches.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[512 + 0x28] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let v = volumes(&img);
    assert_eq!(v["volumes"]["table"]["backup_used"], true);
    assert_eq!(starts(&v), starts(&good));
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("backup header") && warnings.contains("checksum"),
        "{warnings}"
    );
}

#[test]
fn ebr_loop_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("loop.raw");
    let mut d = vec![0u8; 4 << 20];
    let entry = |d: &mut Vec<u8>, sector: usize, slot: usize, ty: u8, lba: u32, n: u32| {
        let at = sector * 512 + 0x1be + 16 * slot;
        d[at + 4] = ty;
        d[at + 8..at + 12].copy_from_slice(&lba.to_le_bytes());
        d[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        d[sector * 512 + 510] = 0x55;
        d[sector * 512 + 511] = 0xaa;
    };
    entry(&mut d, 0, 0, 0x05, 100, 4000);
    // EBR at 100: a logical partition, and a "next" link pointing back at itself.
    entry(&mut d, 100, 0, 0x83, 10, 50);
    entry(&mut d, 100, 1, 0x05, 0, 4000);
    std::fs::write(&img, &d).unwrap();
    let v = volumes(&img);
    assert_eq!(starts(&v), [("p5".into(), 110 * 512)]);
    assert!(
        v["warnings"].to_string().contains("loops"),
        "{}",
        v["warnings"]
    );
}
