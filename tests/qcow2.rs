//! qcow2 images: the corpus reads back with the catalogued SHA-256 and identical to
//! `qemu-img convert -O raw`; hand-built images (per qcow2.txt) cover what qemu-img
//! does not make on request (zero clusters with a stale host offset, compressed data
//! cut by the end of the file, host-discontiguous clusters, subclusters in every
//! state, hostile fields), and malformed images fail with errors that name the
//! structure and the offset.

mod common;
use common::*;

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Corpus

const CORPUS: &[&str] = &[
    "hyperv-windows/basic.qcow2",
    "hyperv-windows/backing-chain-1.qcow2",
    "hyperv-windows/backing-chain-2.qcow2",
    "hyperv-windows/backing-chain-3.qcow2",
    "qemu-made/ext2.qcow2",
];

#[test]
fn corpus_images_match_catalog_and_qemu() {
    let Some(corpus) = corpus_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The chain files must sit side by side (relative backing names).
    let files: Vec<_> = CORPUS
        .iter()
        .map(|rel| (rel, corpus_file(&corpus, rel, dir.path())))
        .collect();
    let qemu = have_tool("qemu-img");
    for (rel, img) in &files {
        let (size, sha) =
            catalog_entry(&corpus, rel).unwrap_or_else(|| panic!("{rel} not in CATALOG.md"));
        let ours = vmback_raw_sha(img, dir.path());
        assert_eq!(ours, sha, "{rel}: export differs from CATALOG.md");
        if qemu {
            assert_eq!(
                ours,
                qemu_raw_sha(img, Some("qcow2"), dir.path()),
                "{rel}: differs from qemu-img"
            );
        }
        let out = run_ok(vmback().arg("inspect").arg("--json").arg(img));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["virtual_size"].as_u64(), Some(size), "{rel}");
        assert_eq!(v["format"], "qcow2", "{rel}");
    }
    // The top of the chain really has three layers.
    let out = run_ok(vmback().arg("inspect").arg("--json").arg(&files[1].1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["layers"].as_array().map(|a| a.len()), Some(3));
}

// ---------------------------------------------------------------------------
// A minimal qcow2 writer, straight from qcow2.txt: header in cluster 0, an empty
// refcount table in cluster 1, L1 in cluster 2, one L2 table in cluster 3, data
// clusters from cluster 4 on, compressed data packed byte by byte at the end (the
// file ends inside the last compressed cluster's last sector).

#[derive(Clone)]
enum Entry {
    Unallocated,
    /// A data cluster; `gap` puts a garbage cluster before it on the host, so it
    /// is not host-contiguous with the previous one.
    Data {
        bytes: Vec<u8>,
        gap: bool,
    },
    /// v3 zero flag; with `stale`, the entry also points at a garbage cluster.
    Zero {
        stale: bool,
    },
    /// Compressed with the image's compression type.
    Compressed(Vec<u8>),
    /// Extended L2: data for allocated subclusters (others in `bytes` ignored).
    Sub {
        bytes: Vec<u8>,
        alloc: u32,
        zero: u32,
    },
}

#[derive(Clone)]
struct Img {
    version: u32,
    cluster_bits: u32,
    size: u64,
    extended: bool,
    zstd: bool,
    incompat_extra: u64,
    crypt_method: u32,
    feature_table: Vec<(u8, u8, &'static str)>,
    backing: Option<(&'static str, &'static str)>,
    data_file: Option<&'static str>,
    entries: Vec<Entry>,
}

struct Built {
    bytes: Vec<u8>,
    /// The virtual disk as the spec says it reads (no backing file).
    expected: Vec<u8>,
    /// Offsets of the L1 table and of the L2 table.
    l1_at: u64,
    l2_at: u64,
    /// Guest data of the external data file, when the image has one.
    data_file: Option<Vec<u8>>,
}

const GARBAGE: u8 = 0xa5;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    seeded_bytes(seed, len)
}

/// Compressible but not trivial cluster content.
fn text_cluster(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"qcow2 cluster "[i % 14].wrapping_add(seed.wrapping_mul((i / 97) as u8)))
        .collect()
}

impl Img {
    fn v3(cluster_bits: u32, entries: Vec<Entry>) -> Img {
        let cs = 1u64 << cluster_bits;
        Img {
            version: 3,
            cluster_bits,
            size: cs * entries.len() as u64,
            extended: false,
            zstd: false,
            incompat_extra: 0,
            crypt_method: 0,
            feature_table: Vec::new(),
            backing: None,
            data_file: None,
            entries,
        }
    }

    fn build(&self) -> Built {
        let cs = 1usize << self.cluster_bits;
        let mut file = vec![0u8; 4 * cs];
        let mut expected = vec![0u8; self.size as usize];
        let mut data_file = self.data_file.map(|_| vec![0u8; self.size as usize]);
        let esize = if self.extended { 16 } else { 8 };
        let mut l2 = vec![0u8; cs];
        let mut compressed = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let guest = i * cs;
            let vis = (self.size as usize).saturating_sub(guest).min(cs);
            let (word, bitmap): (u64, u64) = match e {
                Entry::Unallocated => (0, 0),
                Entry::Data { bytes, gap } => {
                    expected[guest..guest + vis].copy_from_slice(&bytes[..vis]);
                    if let Some(df) = &mut data_file {
                        df[guest..guest + vis].copy_from_slice(&bytes[..vis]);
                        (
                            1 << 63 | guest as u64,
                            if self.extended { u32::MAX as u64 } else { 0 },
                        )
                    } else {
                        if *gap {
                            file.extend(std::iter::repeat_n(GARBAGE, cs));
                        }
                        let host = file.len() as u64;
                        file.extend_from_slice(bytes);
                        (
                            1 << 63 | host,
                            if self.extended { u32::MAX as u64 } else { 0 },
                        )
                    }
                }
                Entry::Zero { stale } => {
                    let host = if *stale {
                        let h = file.len() as u64;
                        file.extend(std::iter::repeat_n(GARBAGE, cs));
                        h
                    } else {
                        0
                    };
                    (host | 1, 0)
                }
                Entry::Compressed(bytes) => {
                    expected[guest..guest + vis].copy_from_slice(&bytes[..vis]);
                    compressed.push((i, self.compress(bytes)));
                    continue;
                }
                Entry::Sub { bytes, alloc, zero } => {
                    let sc = cs / 32;
                    let host = file.len() as u64;
                    file.extend_from_slice(bytes);
                    for s in 0..32 {
                        let r = guest + s * sc..guest + (s + 1) * sc;
                        if r.start >= self.size as usize {
                            break;
                        }
                        if alloc >> s & 1 != 0 {
                            expected[r.clone()].copy_from_slice(&bytes[s * sc..(s + 1) * sc]);
                        }
                    }
                    (host, (u64::from(*zero) << 32) | u64::from(*alloc))
                }
            };
            l2[i * esize..i * esize + 8].copy_from_slice(&word.to_be_bytes());
            if self.extended {
                l2[i * esize + 8..i * esize + 16].copy_from_slice(&bitmap.to_be_bytes());
            }
        }
        // Compressed clusters, packed: the first starts mid-sector on purpose.
        file.extend_from_slice(&[GARBAGE; 100]);
        let x = 62 - (self.cluster_bits - 8);
        for (i, data) in compressed {
            let host = file.len() as u64;
            file.extend_from_slice(&data);
            let end = file.len() as u64 - 1;
            let sectors = (end >> 9) - (host >> 9);
            let word = 1u64 << 62 | sectors << x | host;
            l2[i * esize..i * esize + 8].copy_from_slice(&word.to_be_bytes());
        }
        let (l1_at, l2_at) = (2 * cs, 3 * cs);
        file[l1_at..l1_at + 8].copy_from_slice(&(1u64 << 63 | l2_at as u64).to_be_bytes());
        file[l2_at..l2_at + cs].copy_from_slice(&l2);
        let header = self.header(cs);
        file[..header.len()].copy_from_slice(&header);
        Built {
            bytes: file,
            expected,
            l1_at: l1_at as u64,
            l2_at: l2_at as u64,
            data_file,
        }
    }

    fn compress(&self, data: &[u8]) -> Vec<u8> {
        if self.zstd {
            zstd::bulk::compress(data, 3).unwrap()
        } else {
            let mut c = flate2::Compress::new(flate2::Compression::default(), false);
            let mut out = Vec::with_capacity(data.len() * 2 + 64);
            c.compress_vec(data, &mut out, flate2::FlushCompress::Finish)
                .unwrap();
            out
        }
    }

    fn header(&self, cs: usize) -> Vec<u8> {
        let mut incompat = self.incompat_extra;
        if self.extended {
            incompat |= 1 << 4;
        }
        if self.zstd {
            incompat |= 1 << 3;
        }
        if self.data_file.is_some() {
            incompat |= 1 << 2;
        }
        let mut h = Vec::new();
        h.extend_from_slice(b"QFI\xfb");
        h.extend_from_slice(&self.version.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset, patched below
        h.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size, patched below
        h.extend_from_slice(&self.cluster_bits.to_be_bytes());
        h.extend_from_slice(&self.size.to_be_bytes());
        h.extend_from_slice(&self.crypt_method.to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes()); // l1_size
        h.extend_from_slice(&(2 * cs as u64).to_be_bytes()); // l1_table_offset
        h.extend_from_slice(&(cs as u64).to_be_bytes()); // refcount_table_offset
        h.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
        h.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
        if self.version >= 3 {
            h.extend_from_slice(&incompat.to_be_bytes());
            h.extend_from_slice(&0u64.to_be_bytes());
            h.extend_from_slice(&0u64.to_be_bytes());
            h.extend_from_slice(&4u32.to_be_bytes());
            h.extend_from_slice(&112u32.to_be_bytes());
            h.push(u8::from(self.zstd));
            h.resize(112, 0);
        }
        let ext = |h: &mut Vec<u8>, t: u32, d: &[u8]| {
            h.extend_from_slice(&t.to_be_bytes());
            h.extend_from_slice(&(d.len() as u32).to_be_bytes());
            h.extend_from_slice(d);
            h.resize(h.len().div_ceil(8) * 8, 0);
        };
        if let Some((_, fmt)) = self.backing {
            ext(&mut h, 0xe279_2aca, fmt.as_bytes());
        }
        if let Some(name) = self.data_file {
            ext(&mut h, 0x4441_5441, name.as_bytes());
        }
        if !self.feature_table.is_empty() {
            let mut t = Vec::new();
            for (kind, bit, name) in &self.feature_table {
                let mut e = vec![*kind, *bit];
                e.extend_from_slice(name.as_bytes());
                e.resize(48, 0);
                t.extend_from_slice(&e);
            }
            ext(&mut h, 0x6803_f857, &t);
        }
        h.extend_from_slice(&[0; 8]);
        if let Some((name, _)) = self.backing {
            let off = h.len() as u64;
            h[8..16].copy_from_slice(&off.to_be_bytes());
            h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            h.extend_from_slice(name.as_bytes());
        }
        h
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

/// Writes `bytes`, leaving every all-zero 4 KiB block as a hole.
fn write_sparse(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(bytes.len() as u64).unwrap();
    for (i, block) in bytes.chunks(4096).enumerate() {
        if block.iter().any(|&x| x != 0) {
            f.write_all_at(block, (i * 4096) as u64).unwrap();
        }
    }
    p
}

fn sha(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// Exports `img` and compares with `expected`, and with qemu-img when installed.
fn check_reads_as(img: &Path, expected: &[u8], dir: &Path) {
    let ours = vmback_raw_sha(img, dir);
    assert_eq!(
        ours,
        sha(expected),
        "{}: export differs from the spec's reading",
        img.display()
    );
    if have_tool("qemu-img") {
        assert_eq!(
            ours,
            qemu_raw_sha(img, Some("qcow2"), dir),
            "{}: export differs from qemu-img",
            img.display()
        );
    }
}

/// Every kind of standard entry, 4 KiB clusters.
fn mixed_entries(cs: usize) -> Vec<Entry> {
    vec![
        Entry::Data {
            bytes: pattern(1, cs),
            gap: false,
        },
        Entry::Data {
            bytes: pattern(2, cs),
            gap: false,
        }, // host-contiguous with the previous
        Entry::Zero { stale: true },
        Entry::Data {
            bytes: pattern(3, cs),
            gap: true,
        },
        Entry::Unallocated,
        Entry::Compressed(text_cluster(1, cs)),
        Entry::Zero { stale: false },
        Entry::Compressed(text_cluster(2, cs)), // shares a sector with the previous one
        Entry::Data {
            bytes: pattern(4, cs),
            gap: true,
        },
        Entry::Unallocated,
        Entry::Unallocated,
        Entry::Compressed(pattern(5, cs)), // incompressible; ends the file mid-sector
    ]
}

#[test]
fn hand_built_v3_zlib_reads_per_spec() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = Img::v3(12, mixed_entries(4096));
    img.size -= 1536; // the last cluster is partial
    let b = img.build();
    assert_ne!(b.bytes.len() % 512, 0, "the file must end mid-sector");
    let p = write(dir.path(), "mixed.qcow2", &b.bytes);
    check_reads_as(&p, &b.expected, dir.path());
}

#[test]
fn hand_built_v3_zstd_reads_per_spec() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = Img::v3(16, mixed_entries(65536));
    img.zstd = true;
    let b = img.build();
    let p = write(dir.path(), "zstd.qcow2", &b.bytes);
    check_reads_as(&p, &b.expected, dir.path());
    let out = run_ok(vmback().arg("inspect").arg(&p));
    assert!(String::from_utf8_lossy(&out.stdout).contains("zstd"));
}

#[test]
fn hand_built_v2_reads_per_spec() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Entry> = mixed_entries(512)
        .into_iter()
        .filter(|e| !matches!(e, Entry::Zero { .. }))
        .collect();
    let mut img = Img::v3(9, entries);
    img.version = 2;
    let b = img.build();
    let p = write(dir.path(), "v2.qcow2", &b.bytes);
    check_reads_as(&p, &b.expected, dir.path());
}

#[test]
fn extended_l2_subclusters_fall_through_to_backing() {
    let dir = tempfile::tempdir().unwrap();
    let cs = 1usize << 14; // 16 KiB clusters, 512-byte subclusters
    let entries = vec![
        Entry::Sub {
            bytes: pattern(7, cs),
            alloc: 0x0000_00f1,
            zero: 0x0f00_0f00,
        },
        Entry::Sub {
            bytes: pattern(8, cs),
            alloc: 0xffff_0000,
            zero: 0x0000_00ff,
        },
        Entry::Sub {
            bytes: vec![GARBAGE; cs],
            alloc: 0,
            zero: 0,
        }, // host set, nothing allocated
        Entry::Compressed(text_cluster(3, cs)),
        Entry::Unallocated,
        Entry::Data {
            bytes: pattern(9, cs),
            gap: true,
        },
    ];
    let mut img = Img::v3(14, entries);
    img.extended = true;
    img.backing = Some(("base.raw", "raw"));
    let b = img.build();
    // The backing file shows through every unallocated subcluster; zero ones hide it.
    let base = pattern(99, b.expected.len());
    write(dir.path(), "base.raw", &base);
    let mut expected = b.expected.clone();
    for (i, e) in img.entries.iter().enumerate() {
        for s in 0..32 {
            let r = i * cs + s * 512..i * cs + (s + 1) * 512;
            let through = match e {
                Entry::Unallocated => true,
                Entry::Sub { alloc, zero, .. } => (alloc | zero) >> s & 1 == 0,
                _ => false,
            };
            if through {
                expected[r.clone()].copy_from_slice(&base[r]);
            }
        }
    }
    let p = write(dir.path(), "ext.qcow2", &b.bytes);
    check_reads_as(&p, &expected, dir.path());
}

#[test]
fn external_data_file_holds_the_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let cs = 4096;
    let entries = vec![
        Entry::Data {
            bytes: pattern(11, cs),
            gap: false,
        },
        Entry::Unallocated,
        Entry::Zero { stale: false },
        Entry::Data {
            bytes: pattern(12, cs),
            gap: false,
        },
    ];
    let mut img = Img::v3(12, entries);
    img.data_file = Some("disk.data");
    let b = img.build();
    let p = write(dir.path(), "ext-data.qcow2", &b.bytes);
    let data = b.data_file.clone().unwrap();
    // Garbage where the metadata says "unallocated" or "zero": must not be read.
    let mut on_disk = data.clone();
    on_disk[cs..3 * cs].fill(GARBAGE);
    write(dir.path(), "disk.data", &on_disk);
    // vmback resolves a relative data file name against the image's directory;
    // QEMU resolves it against its working directory, so run it from there.
    assert_eq!(vmback_raw_sha(&p, dir.path()), sha(&b.expected));
    if have_tool("qemu-img") {
        run_ok(
            std::process::Command::new("qemu-img")
                .current_dir(dir.path())
                .args([
                    "convert",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    "ext-data.qcow2",
                    "q.raw",
                ]),
        );
        assert_eq!(sha256_file(&dir.path().join("q.raw")), sha(&b.expected));
    }
    // Without the data file: an error naming it.
    std::fs::remove_file(dir.path().join("disk.data")).unwrap();
    let err = run_err(vmback().arg("inspect").arg(&p));
    assert!(
        err.contains("external data file") && err.contains("disk.data"),
        "{err}"
    );
}

#[test]
fn unallocated_and_zero_clusters_are_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let cs = 65536;
    let mut entries = vec![Entry::Unallocated; 4096]; // 256 MiB
    entries[17] = Entry::Data {
        bytes: pattern(1, cs),
        gap: false,
    };
    for e in entries.iter_mut().skip(1000).take(1000) {
        *e = Entry::Zero { stale: true };
    }
    // Allocated clusters whose host bytes are a hole in the file (what
    // preallocation=metadata leaves): they read as zeros and are not read either.
    for e in entries.iter_mut().skip(2000).take(1000) {
        *e = Entry::Data {
            bytes: vec![0; cs],
            gap: false,
        };
    }
    let b = Img::v3(16, entries).build();
    let p = write_sparse(dir.path(), "sparse.qcow2", &b.bytes);
    let out = dir.path().join("out.raw");
    let o = run_ok(vmback().args(["export", "--json", "-o"]).arg(&out).arg(&p));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let read = v["source_bytes_read"].as_u64().unwrap();
    assert!(
        read < 1 << 20,
        "only metadata and one cluster should be read, not {read} bytes"
    );
    assert_eq!(sha256_file(&out), sha(&b.expected));
}

// ---------------------------------------------------------------------------
// Malformed and unsupported images

fn small() -> (Img, Built) {
    let img = Img::v3(12, mixed_entries(4096));
    let b = img.build();
    (img, b)
}

fn export_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = write(dir, name, bytes);
    run_err(
        vmback()
            .arg("export")
            .arg(&p)
            .arg("-o")
            .arg(dir.join(format!("{name}.raw")))
            .arg("--force"),
    )
}

#[test]
fn l1_table_past_end_of_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, b) = small();
    let err = export_err(dir.path(), "cut.qcow2", &b.bytes[..b.l1_at as usize + 4]);
    assert!(
        err.contains("qcow2 L1 table") && err.contains("0x2000"),
        "{err}"
    );
}

#[test]
fn l2_table_past_end_of_file_names_l1_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut b) = small();
    let l1 = b.l1_at as usize;
    b.bytes[l1..l1 + 8].copy_from_slice(&0x4000_0000u64.to_be_bytes());
    let err = export_err(dir.path(), "l2.qcow2", &b.bytes);
    assert!(
        err.contains("L1 index 0") && err.contains("0x40000000"),
        "{err}"
    );
}

#[test]
fn data_cluster_past_end_of_file_names_l2_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut b) = small();
    let at = b.l2_at as usize + 3 * 8;
    b.bytes[at..at + 8].copy_from_slice(&(1u64 << 63 | 0x10_0000_0000).to_be_bytes());
    let err = export_err(dir.path(), "data.qcow2", &b.bytes);
    assert!(
        err.contains("L2 index 3") && err.contains(&format!("{:#x}", at)),
        "{err}"
    );
}

#[test]
fn unaligned_data_cluster_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut b) = small();
    let at = b.l2_at as usize;
    let word = u64::from_be_bytes(b.bytes[at..at + 8].try_into().unwrap());
    b.bytes[at..at + 8].copy_from_slice(&(word + 512).to_be_bytes());
    let err = export_err(dir.path(), "unaligned.qcow2", &b.bytes);
    assert!(
        err.contains("not aligned") && err.contains("index 0"),
        "{err}"
    );
}

#[test]
fn garbage_compressed_data_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut b) = small();
    // Overwrite all compressed payloads (they follow the 100 garbage bytes).
    let n = b.bytes.len();
    let start = n - (n - 4 * 4096) / 2;
    b.bytes[start..].fill(0xff);
    let err = export_err(dir.path(), "zbad.qcow2", &b.bytes);
    assert!(err.contains("qcow2 compressed cluster"), "{err}");
}

#[test]
fn unknown_incompatible_feature_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut img, _) = small();
    img.incompat_extra = 1 << 9;
    img.feature_table = vec![(0, 9, "teleportation")];
    let err = export_err(dir.path(), "feat.qcow2", &img.build().bytes);
    assert!(
        err.contains("bit 9 (teleportation)") && err.contains("0x48"),
        "{err}"
    );
}

#[test]
fn encrypted_image_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut img, _) = small();
    img.crypt_method = 1;
    let err = export_err(dir.path(), "aes.qcow2", &img.build().bytes);
    assert!(err.contains("unsupported") && err.contains("AES"), "{err}");
}

#[test]
fn zero_flag_in_v2_image_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = Img::v3(12, vec![Entry::Zero { stale: false }, Entry::Unallocated]);
    img.version = 2;
    let err = export_err(dir.path(), "v2zero.qcow2", &img.build().bytes);
    assert!(err.contains("version 2"), "{err}");
}

#[test]
fn subcluster_both_allocated_and_zero_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut img = Img::v3(
        14,
        vec![Entry::Sub {
            bytes: pattern(1, 16384),
            alloc: 3,
            zero: 2,
        }],
    );
    img.extended = true;
    let err = export_err(dir.path(), "sub.qcow2", &img.build().bytes);
    assert!(err.contains("both allocated and zero"), "{err}");
}

#[test]
fn missing_backing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut img, _) = small();
    img.backing = Some(("gone.qcow2", "qcow2"));
    let err = export_err(dir.path(), "orphan.qcow2", &img.build().bytes);
    assert!(err.contains("gone.qcow2"), "{err}");
}

#[test]
fn dirty_and_corrupt_bits_warn_but_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut img, b) = small();
    img.incompat_extra = 0b11;
    let p = write(dir.path(), "dirty.qcow2", &img.build().bytes);
    let out = run_ok(vmback().arg("inspect").arg("--json").arg(&p));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not closed cleanly"), "{text}");
    assert!(text.contains("marked this image corrupt"), "{text}");
    assert_eq!(vmback_raw_sha(&p, dir.path()), sha(&b.expected));
}
