//! The text of `vmback --version`: the version, then what this build reads and
//! writes. Every list comes from the constant or enum the code itself uses (image
//! formats, export formats and subformats, partition tables, filesystems, NBD,
//! repository limits), so the text cannot drift from the code.

use clap::ValueEnum;

use crate::export::ExportFormat;
use crate::image::Format;
use crate::repo::chunk::MAX_CHUNK_SIZE;
use crate::repo::config::{DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD, MIN_CHUNK_SIZE};

/// `0.1.0` followed by one line per capability (clap prints `vmback ` before it).
pub fn long_version() -> String {
    let read: String = Format::ALL
        .iter()
        .map(|f| format!("\n  {:<6} {}", f.to_string(), f.read_variants()))
        .collect();
    let written: Vec<String> = ExportFormat::value_variants()
        .iter()
        .map(|f| match f.subformats() {
            [] => f.name().to_string(),
            subs => format!(
                "{} ({})",
                f.name(),
                subs.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
            ),
        })
        .collect();
    let size = |b: u64| match b.trailing_zeros() {
        20.. => format!("{}MiB", b >> 20),
        _ => format!("{}KiB", b >> 10),
    };
    format!(
        "{version}
containers read (parent chains followed):{read}
containers written (export, restore of a whole disk):
  {written}
partition tables:  {tables}
guest filesystems: {fs} (files, directories, symlinks, metadata)
NBD:               {nbd}
repository:        BLAKE3 chunk ids, {level} by default (levels 1-22), chunks of \
{min}-{max} (default {default})",
        version = env!("CARGO_PKG_VERSION"),
        written = written.join(", "),
        tables = crate::volume::TABLES,
        fs = crate::guestfs::SUPPORTED.join(", "),
        nbd = crate::nbd::FEATURES,
        level = DEFAULT_ZSTD,
        min = size(u64::from(MIN_CHUNK_SIZE)),
        max = size(MAX_CHUNK_SIZE as u64),
        default = size(u64::from(DEFAULT_CHUNK_SIZE)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_format() {
        let v = long_version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        for f in [
            "qcow2  v2 and v3",
            "vhdx   fixed",
            "SESPARSE",
            "streamOptimized",
            "ntfs",
            "GPT",
            "chunks of 64KiB-64MiB (default 256KiB)",
            "zstd level 1 (hash log 16, min match 5) by default",
        ] {
            assert!(v.contains(f), "{f} missing from\n{v}");
        }
        for f in ExportFormat::value_variants() {
            assert!(v.contains(f.name()), "{} missing from\n{v}", f.name());
        }
    }
}
