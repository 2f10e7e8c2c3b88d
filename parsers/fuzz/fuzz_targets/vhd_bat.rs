#![no_main]
//! The VHD BAT, sector bitmap and parent locator decoders must never panic.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::vhd::{bitmap_run, decode_locator, parse_bat, VhdPlatform};

fuzz_target!(|data: &[u8]| {
    let entries = (data.len() / 4) as u32;
    if let Ok(bat) = parse_bat(data, 1536, entries, 1 << 21, 512, 1 << 30) {
        for i in 0..=u64::from(entries) {
            let _ = bat.data_offset(i);
        }
    }
    for first in [0u64, 1, 7, 8, 4095] {
        let _ = bitmap_run(data, first, 4096);
    }
    for p in [VhdPlatform::W2ru, VhdPlatform::W2ku, VhdPlatform::MacX] {
        let _ = decode_locator(p, data, 0);
    }
});
