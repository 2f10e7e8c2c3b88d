#![no_main]
//! qcow2 L1 table, L2 entries (standard and extended) and compressed descriptors:
//! any bytes parse or err, never panic, and mappings always make progress.
use libfuzzer_sys::fuzz_target;
use vmback_parsers::qcow2::{parse_l1_table, Qcow2L2Format};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let cluster_bits = 9 + u32::from(sel % 13);
    let _ = parse_l1_table(rest, 0x10000, rest.len() / 8, cluster_bits);
    let fmt = Qcow2L2Format {
        cluster_bits: cluster_bits.max(14),
        version: 2 + u32::from(sel >> 7),
        extended: sel & 0x40 != 0,
        external_data: sel & 0x20 != 0,
    };
    let per = fmt.entries_per_table().min(64);
    for i in 0..per {
        if let Ok(e) = fmt.entry(rest, i, 0x30000) {
            let mut pos = 0u64;
            while pos < 1u64 << fmt.cluster_bits {
                let (_, len) = e.map(pos, fmt.cluster_bits);
                assert!(len > 0);
                pos += len;
            }
        }
    }
});
