#![no_main]
//! qcow2 snapshot table entries: any bytes parse or err, never panic.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::qcow2::{parse_snapshot_entry, snapshot_entry_len};

fuzz_target!(|data: &[u8]| {
    let _ = snapshot_entry_len(data, 0);
    let _ = parse_snapshot_entry(data, 0);
});
