//! Export to a container format (qcow2, VMDK, VHD, VHDX): which writer the options
//! select, and the frame every writer runs in (output file, statistics).
//!
//! Sizes: every container counts the disk in 512-byte sectors, so a virtual size that
//! is not a multiple of 512 is rounded up (the tail reads as zeros), as `qemu-img
//! convert` does. Formats that need more (VHD fixed with `--align`) say so in their
//! module.

use std::path::Path;
use std::time::Instant;

use super::output::Output;
use super::{qcow2, vhd, vhdx, vmdk, vmdk_stream};
use super::{ExportFormat, ExportOptions, ExportStats, Subformat};
use crate::error::{Error, Result};
use crate::image::DiskImage;

/// Bytes per sector of every container's size fields.
pub(super) const SECTOR: u64 = 512;

/// What the options ask for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Raw,
    Qcow2,
    VmdkSparse,
    VmdkStream,
    VhdDynamic,
    VhdFixed { align: bool },
    VhdxDynamic,
    VhdxFixed,
}

impl Target {
    /// Resolves `--format`, `--subformat` and `--align`, refusing combinations that
    /// mean nothing (before any file is touched).
    pub fn from_options(opts: &ExportOptions) -> Result<Target> {
        use ExportFormat as F;
        use Subformat as S;
        let target = match (opts.format, opts.subformat) {
            (F::Raw, None) => Target::Raw,
            (F::Qcow2, None) => Target::Qcow2,
            (F::Vmdk, None | Some(S::MonolithicSparse)) => Target::VmdkSparse,
            (F::Vmdk, Some(S::StreamOptimized)) => Target::VmdkStream,
            (F::Vhd, None | Some(S::Dynamic)) => Target::VhdDynamic,
            (F::Vhd, Some(S::Fixed)) => Target::VhdFixed { align: opts.align },
            (F::Vhdx, None | Some(S::Dynamic)) => Target::VhdxDynamic,
            (F::Vhdx, Some(S::Fixed)) => Target::VhdxFixed,
            (f, Some(s)) => {
                return Err(Error::Usage(format!(
                    "--subformat {} does not apply to --format {}; {}",
                    s.name(),
                    f.name(),
                    match f {
                        F::Vmdk => "vmdk takes monolithicSparse or streamOptimized",
                        F::Vhd | F::Vhdx => "vhd and vhdx take dynamic or fixed",
                        F::Raw | F::Qcow2 => "raw and qcow2 take none",
                    }
                )))
            }
        };
        if opts.align && !matches!(target, Target::VhdFixed { .. }) {
            return Err(Error::Usage(
                "--align applies only to --format vhd --subformat fixed (cloud imports want \
                 fixed VHDs of whole MiB)"
                    .into(),
            ));
        }
        Ok(target)
    }

    fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Qcow2 => "qcow2",
            Target::VmdkSparse => "VMDK monolithicSparse",
            Target::VmdkStream => "VMDK streamOptimized",
            Target::VhdDynamic => "VHD dynamic",
            Target::VhdFixed { .. } => "VHD fixed",
            Target::VhdxDynamic => "VHDX dynamic",
            Target::VhdxFixed => "VHDX fixed",
        }
    }
}

/// What a format writer reports back.
pub(super) struct Written {
    /// The container's virtual size (the disk's, rounded as the format needs).
    pub virtual_size: u64,
    /// Bytes the source reported as data.
    pub data_bytes: u64,
}

/// Writes the whole disk as `target` (anything but raw) to `out`.
pub(super) fn export(
    disk: &(dyn DiskImage + '_),
    out: &Path,
    target: Target,
    force: bool,
) -> Result<ExportStats> {
    let started = Instant::now();
    if disk.size() == 0 {
        return Err(Error::Usage(format!(
            "the disk is empty (0 bytes): a {} image cannot hold it",
            target.name()
        )));
    }
    let output = Output::create(out, force, target.name())?;
    let w = match target {
        Target::Raw => unreachable_raw()?,
        Target::Qcow2 => qcow2::write(disk, &output)?,
        Target::VmdkSparse => vmdk::write(disk, &output)?,
        Target::VmdkStream => vmdk_stream::write(disk, &output)?,
        Target::VhdDynamic => vhd::write(disk, &output, false, false)?,
        Target::VhdFixed { align } => vhd::write(disk, &output, true, align)?,
        Target::VhdxDynamic => vhdx::write(disk, &output, false)?,
        Target::VhdxFixed => vhdx::write(disk, &output, true)?,
    };
    let written_bytes = output.finish()?;
    Ok(ExportStats {
        output: out.to_path_buf(),
        virtual_size: w.virtual_size,
        data_bytes: w.data_bytes,
        written_bytes,
        duration: started.elapsed(),
    })
}

/// Raw export has its own path (it also writes devices); reaching here is a bug in
/// the dispatch, reported as an error rather than a panic.
fn unreachable_raw() -> Result<Written> {
    Err(Error::Usage(
        "internal: raw export dispatched to the container writer".into(),
    ))
}

/// The error for a disk the chosen format cannot represent.
pub(super) fn too_large(out: &Output, format: &str, size: u64, max: u64, hint: &str) -> Error {
    Error::Unsupported {
        path: out.final_path().to_path_buf(),
        feature: format!("a {size}-byte disk: {format} holds at most {max} bytes{hint}"),
    }
}

/// `size` rounded up to whole sectors.
pub(super) fn sector_size(size: u64) -> u64 {
    size.div_ceil(SECTOR) * SECTOR
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// `ExportFormat::subformats` (what `vmback --version` lists) and the combinations
    /// `from_options` accepts are the same, so the two cannot drift apart.
    #[test]
    fn subformats_listed_are_the_ones_accepted() {
        for &format in ExportFormat::value_variants() {
            for &sub in Subformat::value_variants() {
                let opts = ExportOptions {
                    format,
                    subformat: Some(sub),
                    align: false,
                    force: false,
                };
                assert_eq!(
                    Target::from_options(&opts).is_ok(),
                    format.subformats().contains(&sub),
                    "{} {}",
                    format.name(),
                    sub.name()
                );
            }
        }
    }
}
