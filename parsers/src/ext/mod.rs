//! ext2/3/4 structures that vmback reads itself, beside the `ext4-view` crate (which
//! browses the filesystem but keeps its superblock private):
//!
//! - [`superblock`]: the block counts, for the used / free space `inspect` reports.
//!
//! Reference: the Linux kernel's Documentation/filesystems/ext4 (on-disk layout).

pub mod superblock;
