#![no_main]
//! VHDX metadata region (table, items, parent locator) and the BAT it sizes.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::vhdx::{bat, metadata, parent_locator};

fuzz_target!(|data: &[u8]| {
    let _ = parent_locator::parse_parent_locator(data, 0);
    if let Ok(m) = metadata::parse_metadata(data, 0) {
        let g = bat::VhdxBatGeometry::new(&m);
        if let Ok(b) = bat::parse_bat(data, 0, g, data.len() as u64) {
            for i in 0..16 {
                let _ = b.payload(i);
                let _ = b.bitmap(i);
            }
        }
    }
});
