#![no_main]
//! The VMDK text descriptor parser must accept or reject any bytes without panicking.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmback_parsers::vmdk::descriptor::parse_descriptor(data, 0);
});
