#![no_main]
//! VHDX file identifier, headers (and current-header choice) and region tables.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::vhdx::{file_id, header, region};

fuzz_target!(|data: &[u8]| {
    let _ = file_id::parse_file_id(data);
    let _ = header::parse_header(data, 1);
    let half = data.len() / 2;
    let _ = header::current_header(&data[..half], &data[half..]);
    let _ = region::parse_region_table(data, 0);
});
