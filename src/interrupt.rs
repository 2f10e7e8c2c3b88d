//! Stopping a backup on SIGINT, SIGTERM or SIGHUP without leaving a guest frozen
//! (and an export, get or restore without leaving a half-written file behind that
//! would look complete).
//!
//! The consistency hooks promise that the post hook (thaw, drop the hypervisor
//! snapshot) runs whatever happens to the capture. A signal's default action would
//! end the process on the spot, post hook or not. So `backup` and `run` (and
//! `export`, `get` and `restore`) [`watch`] for these signals: the first one is only
//! recorded, the workers see it at their next chunk or piece ([`check`]) and fail
//! with [`Error::Interrupted`], the post hook runs (the file being written is
//! removed), and the process exits with 128 + the signal's number. A second signal
//! ends the process at once (the user insists). Nothing is lost either way: a
//! backup that does not finish writes no manifest, so it leaves only unreferenced
//! chunks, which gc removes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::{Error, Result};

/// Signals that stop a backup.
const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Whether a signal arrived (read by the handler of the next one).
static ARRIVED: AtomicBool = AtomicBool::new(false);
/// The number of the signal that arrived last (0: none).
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// From now on, SIGINT, SIGTERM and SIGHUP stop this process's backups through
/// [`check`] instead of killing it; a second one exits at once. Call once, early.
/// A signal we were started with ignored stays ignored (`nohup` ignores SIGHUP, a
/// shell's background job SIGINT): the caller asked for that.
pub fn watch() -> std::io::Result<()> {
    let ignored = ignored_signals();
    for sig in SIGNALS {
        if ignored & (1 << (sig - 1)) != 0 {
            continue;
        }
        // The exit goes first: it acts only when an earlier signal already arrived.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, &ARRIVED)?;
        signal_hook::flag::register_usize(sig, &SIGNAL, sig as usize)?;
        signal_hook::flag::register(sig, &ARRIVED)?;
    }
    Ok(())
}

/// The signals this process ignores, as a mask (bit N-1 for signal N), from the
/// `SigIgn` line of /proc/self/status (0 when it cannot be read).
fn ignored_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap_or(0)
}

/// The signal that asked us to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        // OK: only signal numbers are stored.
        n => Some(n as i32),
    }
}

/// [`Error::Interrupted`] once a watched signal arrived: long work calls this
/// between units (a chunk) so that it stops promptly and cleanly.
pub fn check() -> Result<()> {
    match requested() {
        None => Ok(()),
        Some(signal) => Err(Error::Interrupted { signal }),
    }
}

/// The exit status of a process stopped by `signal`: 128 + its number, as a shell
/// reports a process killed by it.
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(1)
}

/// A signal's name for messages ("SIGINT").
pub fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_signals_are_read_from_proc() {
        // The test harness ignores SIGPIPE (Rust's runtime does): bit 12.
        assert_ne!(ignored_signals() & (1 << 12), 0);
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
    }
}
