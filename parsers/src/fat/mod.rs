//! FAT12/16/32 structures that vmback reads itself, beside the `fatfs` crate (which
//! browses directories and files but trusts FAT32's FSInfo free count):
//!
//! - [`boot`]: the BIOS parameter block: FAT position, width and cluster count;
//! - [`table`]: counting the free entries of the FAT, piece by piece.
//!
//! Reference: Microsoft "FAT: General Overview of On-Disk Format" (fatgen103).

pub mod boot;
pub mod table;
