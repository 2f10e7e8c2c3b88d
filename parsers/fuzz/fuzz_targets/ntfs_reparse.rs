#![no_main]
//! Reparse point buffers and Interix symlink files: Ok or Err for any bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmback_parsers::ntfs::reparse::parse_reparse(data, 0);
    let _ = vmback_parsers::ntfs::reparse::parse_interix_symlink(data, 0);
});
