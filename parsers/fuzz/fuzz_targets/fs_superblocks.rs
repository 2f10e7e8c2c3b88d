#![no_main]
//! Filesystem signatures and the superblock / boot sector fields read for `inspect`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmback_parsers::fsprobe::probe_fs(data);
    let _ = vmback_parsers::ext::superblock::parse_ext_superblock(data);
    if let Ok(boot) = vmback_parsers::fat::boot::parse_fat_boot(data) {
        let _ = vmback_parsers::fat::table::count_free_entries(boot.kind, data, 0, 2..4096);
    }
});
