#![no_main]
//! qcow2 header + extensions + backing name: any first cluster parses or errs, never panics.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::qcow2::{header_cluster_size, parse_header};

fuzz_target!(|data: &[u8]| {
    let _ = header_cluster_size(data);
    if let Ok(h) = parse_header(data) {
        let _ = h.feature_list();
        let _ = h.l1_entries_needed();
    }
});
