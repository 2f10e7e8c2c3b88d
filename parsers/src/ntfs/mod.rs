//! NTFS structures that vmback checks itself before (or besides) handing a volume to
//! the `ntfs` crate, which does the heavy lifting (MFT records, fixups, attributes,
//! indexes, data runs):
//!
//! - [`boot`]: the boot sector, validated against our caps first, because the crate
//!   allocates one file record buffer sized by it;
//! - [`lznt1`]: the decompressor for compressed files (the crate reads them raw);
//! - [`reparse`]: reparse point buffers (symlinks, junctions) and ntfs-3g's Interix
//!   symlink files, which the crate leaves as raw bytes.
//!
//! Reference: the Windows "NTFS On-Disk Structure" notes as kept by the Linux-NTFS
//! project (flatcap.github.io/linux-ntfs) and [MS-FSCC] 2.1.2 (reparse data buffers).

pub mod boot;
pub mod lznt1;
pub mod reparse;
