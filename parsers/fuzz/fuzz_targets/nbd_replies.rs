#![no_main]
//! Everything an NBD server sends is decoded by these: Ok or Err, never a panic.
use libfuzzer_sys::fuzz_target;
use vmback::nbd::proto;

fuzz_target!(|data: &[u8]| {
    let _ = proto::parse_greeting(data);
    let _ = proto::parse_option_reply_header(data);
    let _ = proto::parse_info(data);
    let _ = proto::parse_meta_context(data);
    let _ = proto::parse_export_name_reply(data);
    let _ = proto::parse_simple_reply(data);
    let _ = proto::parse_chunk_header(data);
    let _ = proto::parse_data_offset(data);
    let _ = proto::parse_offset_hole(data);
    let _ = proto::parse_block_status(data, 1 << 16);
    if let Some((&t, rest)) = data.split_first() {
        let _ = proto::parse_error_chunk(0x8000 | t as u16, rest);
    }
    let _ = proto::display_string(data);
});
