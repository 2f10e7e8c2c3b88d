#![no_main]
//! Content probing must classify any bytes without panicking.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.len() / 2;
    let _ = vmback_parsers::probe::probe(&data[..split], &data[split..]);
});
