//! `--limit-read`: one budget of bytes per second shared by all reader threads, so a
//! backup cannot starve the host's storage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest idle time a limiter remembers as credit for later reads.
pub const MAX_BURST: Duration = Duration::from_secs(1);

/// A shared read-rate limit.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// When the limiter started and how many bytes were granted since.
    state: Mutex<(Instant, u64)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Blocks until reading `bytes` more keeps the average at or below the rate.
    /// Idle time earns at most [`MAX_BURST`] of credit: a limiter shared by the
    /// backups of a long job must not let a burst through after a quiet spell.
    pub fn acquire(&self, bytes: u64) {
        let due = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let budget_end = s.0 + Duration::from_secs_f64(s.1 as f64 / self.bytes_per_sec as f64);
            if budget_end + MAX_BURST < now {
                *s = (now.checked_sub(MAX_BURST).unwrap_or(now), 0);
            }
            s.1 += bytes;
            s.0 + Duration::from_secs_f64(s.1 as f64 / self.bytes_per_sec as f64)
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// Parses sizes and rates with units: `200MiB/s`, `1G`, `512k`, `4096` (bytes).
/// Binary units (KiB, MiB, …) and decimal ones (kB, MB, …); a bare letter is binary.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit, e.g. 200MiB/s"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("200MiB/s"), Ok(200 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("10 MB/s"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("fast").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn limits_rate() {
        let l = RateLimiter::new(10 << 20);
        let t = Instant::now();
        for _ in 0..5 {
            l.acquire(1 << 20);
        }
        // 5 MiB at 10 MiB/s: about half a second.
        assert!(t.elapsed() >= Duration::from_millis(400));
    }

    #[test]
    fn idle_time_earns_at_most_one_second() {
        let l = RateLimiter::new(10 << 20);
        l.acquire(1 << 20);
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        // 1 s of credit (10 MiB) passes at once; the next 5 MiB take half a second.
        for _ in 0..15 {
            l.acquire(1 << 20);
        }
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
