#![no_main]
//! The VHD footer parser must return Ok or Err for any bytes, never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = vmback_parsers::vhd::parse_footer(data, 0) {
        let _ = f.dynamic_header_offset(data.len() as u64);
    }
});
