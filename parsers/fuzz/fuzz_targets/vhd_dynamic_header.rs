#![no_main]
//! The VHD dynamic header parser (and its cross-checks) must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = vmback_parsers::vhd::parse_dynamic_header(data, 512) {
        let _ = h.bat_entries_for(10 << 20, 1 << 30);
        for l in &h.parent_locators {
            let _ = l.check(1 << 20);
        }
    }
});
