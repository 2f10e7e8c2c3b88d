#![no_main]
//! LZNT1: any input decompresses to at most one compression unit, or fails; no panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if vmback_parsers::ntfs::lznt1::decompress_lznt1(data, 65536, 0, &mut out).is_ok() {
        assert!(out.len() <= 65536);
    }
});
