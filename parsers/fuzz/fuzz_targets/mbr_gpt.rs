#![no_main]
//! Partition tables: MBR/EBR sectors, GPT headers and entry arrays (with any header
//! the bytes happen to hold) give Ok or Err, never a panic.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::{gpt, mbr};

fuzz_target!(|data: &[u8]| {
    let _ = mbr::has_boot_signature(data);
    let _ = mbr::parse_mbr(data, 0);
    if let Ok(h) = gpt::parse_gpt_header(data, 512) {
        let rest = data.get(92..).unwrap_or(&[]);
        let _ = gpt::parse_gpt_entries(rest, &h, 1024);
    }
});
