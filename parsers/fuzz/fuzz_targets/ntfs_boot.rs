#![no_main]
//! The NTFS boot sector pre-check must return Ok or Err for any bytes, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = data.len() as u64 * 4096;
    let _ = vmback_parsers::ntfs::boot::parse_ntfs_boot(data, size);
});
