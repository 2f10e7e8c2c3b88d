//! Every cap on an allocation, a count or a recursion that a hostile image could
//! otherwise inflate. Parsers compare values read from disk with these before they
//! allocate or loop; the error names the constant. Values are chosen so that any
//! real image (up to the formats' own maxima for realistic sizes) fits.

/// Deepest parent/backing chain we follow (a child plus 15 ancestors).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// Largest virtual disk we accept: 64 TiB (VHDX's own maximum; qcow2 and VMDK can
/// state more, but no hypervisor creates such disks and the tables would be huge).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Largest single metadata table (BAT, L1, grain directory, ...) read into memory:
/// 256 MiB. A 64 TiB VHDX with 1 MiB blocks needs a 512 MiB BAT... but with the
/// default 32 MiB blocks only 16 MiB; qcow2 L1 for 64 TiB at 64 KiB clusters is 8 MiB.
pub const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Largest text descriptor (VMDK) or metadata blob we read whole: 1 MiB.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// Most extents in one VMDK descriptor (twoGbMaxExtent* of a 64 TiB disk is 32768).
pub const MAX_VMDK_EXTENTS: usize = 65_536;

/// Largest grain / cluster / block we decompress into memory: 2 MiB for qcow2
/// clusters and VMDK grains (their formats' maxima); VHDX blocks are not buffered.
pub const MAX_GRAIN_BYTES: u64 = 2 << 20;

/// Most entries in the VHDX log replayed in memory, and most bytes they may carry.
pub const MAX_VHDX_LOG_ENTRIES: usize = 65_536;
pub const MAX_VHDX_LOG_BYTES: u64 = 1 << 30;

/// Most VHDX metadata items / region table entries (the spec caps both at 2047).
pub const MAX_VHDX_TABLE_ENTRIES: u32 = 2047;

/// Most qcow2 internal snapshots listed, and the largest snapshot table read.
pub const MAX_QCOW2_SNAPSHOTS: u32 = 65_536;

/// Longest parent / backing file name stored in a header (bytes).
pub const MAX_PARENT_NAME_BYTES: u64 = 64 * 1024;

/// Most GPT partition entries we read (the spec's minimum array is 128; tools create
/// 128; some create up to 256). 4096 entries of 128 bytes = 512 KiB.
pub const MAX_GPT_ENTRIES: u32 = 4096;

/// Largest GPT partition entry we accept (the spec allows 128 × 2^n).
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;

/// Most logical partitions followed through an MBR extended-partition (EBR) chain.
pub const MAX_EBR_CHAIN: usize = 128;

/// Largest VHD virtual disk: 2040 GiB (0xFF000000 sectors), the format's own maximum
/// per the VHD specification and the size `qemu-img` refuses to exceed (EFBIG).
pub const MAX_VHD_VIRTUAL_SIZE: u64 = 0xFF00_0000 * 512;

/// Most VHD BAT entries read into memory: 2^24 (a 64 MiB table). A 2040 GiB disk needs
/// about 1 M entries with the default 2 MiB blocks and 4 M with Hyper-V's 512 KiB
/// blocks, so every real disk fits; fuzzed headers stating 2^30 entries do not.
pub const MAX_VHD_BAT_ENTRIES: u32 = 1 << 24;

/// Largest VHD block: 256 MiB. Writers use 512 KiB (Hyper-V) or 2 MiB (the default);
/// the cap bounds the sector bitmap we cache per block (at most 64 KiB).
pub const MAX_VHD_BLOCK_BYTES: u32 = 256 << 20;

/// Largest VHDX metadata region read whole (the table plus its items). Hyper-V and
/// qemu make it 1 MiB; the spec allows more, but items are small, so 16 MiB is ample.
pub const MAX_VHDX_METADATA_BYTES: u64 = 16 << 20;

/// Most key/value pairs in a VHDX parent locator (five are defined; writers add few).
pub const MAX_VHDX_LOCATOR_ENTRIES: u16 = 256;

/// Longest qcow2 backing file name: 1023 bytes (the spec's own maximum).
pub const MAX_QCOW2_BACKING_NAME_BYTES: u64 = 1023;

/// Largest extra data of one qcow2 snapshot table entry: 1 KiB (QEMU's own limit;
/// the spec defines 24 bytes of it today).
pub const MAX_QCOW2_SNAPSHOT_EXTRA_BYTES: u64 = 1024;

/// Most bytes of a qcow2 snapshot table read to list the snapshots: 16 MiB (a
/// thousand snapshots with long names fit many times over).
pub const MAX_QCOW2_SNAPSHOT_TABLE_BYTES: u64 = 16 << 20;
