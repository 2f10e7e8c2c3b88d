//! Identities and time stamps that new containers carry: random GUIDs (VHDX), unique
//! ids (VHD), content ids (VMDK), and the creation time.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// `N` random bytes from the kernel. Should /dev/urandom be unreadable (a chroot
/// without /dev), a hash of the time, the process id and a counter still makes ids
/// that differ between exports, which is all the formats need.
pub(super) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out));
    if read.is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = blake3::Hasher::new();
        h.update(&unix_nanos().to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.finalize_xof().fill(&mut out);
    }
    out
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_seconds() -> u64 {
    (unix_nanos() / 1_000_000_000) as u64
}
