#![no_main]
//! Every binary VMDK structure parser (KDMV header, footer, markers, COWD, SESPARSE
//! headers, grain table entries) on the same bytes: Err or Ok, never a panic.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::vmdk::{cowd_header, grain_table, marker, sesparse_header, sparse_header};

fuzz_target!(|data: &[u8]| {
    let _ = sparse_header::parse_sparse_header(data, 0);
    let _ = marker::parse_footer(data, 0);
    let _ = marker::parse_grain_marker(data, 0, 1 << 17);
    let _ = marker::parse_metadata_marker(data, 0);
    let _ = cowd_header::parse_cowd_header(data, 0);
    let _ = sesparse_header::parse_sesparse_header(data, 0);
    let _ = sesparse_header::parse_sesparse_volatile_header(data, 0);
    let n = data.len() / 8;
    if let Ok(t) = grain_table::parse_u64_table(data, n, "fuzz", 0) {
        for (i, raw) in t.into_iter().enumerate() {
            let _ = grain_table::decode_sesparse_gde(raw, i as u64);
            let _ = grain_table::decode_sesparse_gte(raw, i as u64, u64::MAX / 2, 4096);
        }
    }
    let _ = grain_table::parse_u32_table(data, data.len() / 4, "fuzz", 0);
});
