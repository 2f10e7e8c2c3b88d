#![no_main]
//! VHDX log: entries, data sectors, active-sequence search and in-memory replay.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::vhdx::{log_entry, log_replay, Guid};

fuzz_target!(|data: &[u8]| {
    let guid = Guid(
        data.get(32..48)
            .and_then(|g| g.try_into().ok())
            .unwrap_or([0; 16]),
    );
    let _ = log_entry::parse_log_entry(data, 0, guid, data.len() as u64);
    let len = data.len() - data.len() % 4096;
    if let Ok(Some(o)) = log_replay::replay_log(&data[..len], 0x100000, guid, u64::MAX) {
        let mut buf = vec![0u8; 8192];
        o.apply(0x1000, &mut buf);
    }
});
