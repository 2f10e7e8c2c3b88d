//! A log data sector (MS-VHDX 2.3.1.4): 4 KiB in the log carrying one sector to be
//! written to the file. Its first 8 and last 4 bytes hold a signature ("data") and
//! the split sequence number, so the 8 leading and 4 trailing bytes of the payload
//! travel in the data descriptor instead. Reassembly is checked against the
//! descriptor's sequence number, which catches torn or stale sectors.

use nom::number::complete::le_u32;

use super::sig4;
use crate::bytes::{need, run, show_magic};
use crate::error::{ParseError, Result};

/// Bytes of a log sector.
pub const LOG_SECTOR: usize = 4096;
const WHAT: &str = "VHDX log data sector";

/// Reassembles the 4 KiB to write from data sector `buf` (at absolute file offset
/// `base`) and its descriptor's `leading` / `trailing` bytes, checking that both
/// halves of the sector's sequence number equal `sequence`.
pub fn parse_data_sector(
    buf: &[u8],
    base: u64,
    sequence: u64,
    leading: u64,
    trailing: u32,
) -> Result<Box<[u8]>> {
    need(buf, LOG_SECTOR, WHAT, base)?;
    let buf = &buf[..LOG_SECTOR];
    let (signature, high) = run((sig4, le_u32), buf, WHAT, base)?;
    let low = run(le_u32, &buf[LOG_SECTOR - 4..], WHAT, base + 4092)?;
    if &signature != b"data" {
        return Err(ParseError::BadMagic {
            what: WHAT,
            offset: base,
            expected: "\"data\"".into(),
            found: show_magic(&signature),
        });
    }
    let seq = (u64::from(high) << 32) | u64::from(low);
    if seq != sequence {
        return Err(ParseError::corrupt(
            WHAT,
            base + 4,
            format!("sequence number {seq:#x} does not match its entry's {sequence:#x}"),
        ));
    }
    let mut out = vec![0u8; LOG_SECTOR].into_boxed_slice();
    out[..8].copy_from_slice(&leading.to_le_bytes());
    out[8..LOG_SECTOR - 4].copy_from_slice(&buf[8..LOG_SECTOR - 4]);
    out[LOG_SECTOR - 4..].copy_from_slice(&trailing.to_le_bytes());
    Ok(out)
}

/// Builds a data sector for `payload` (tests, fixtures): returns the sector and the
/// leading / trailing bytes its descriptor must carry.
pub fn build_data_sector(payload: &[u8; LOG_SECTOR], sequence: u64) -> (Vec<u8>, u64, u32) {
    let mut s = payload.to_vec();
    let mut lead = [0u8; 8];
    lead.copy_from_slice(&payload[..8]);
    let mut trail = [0u8; 4];
    trail.copy_from_slice(&payload[LOG_SECTOR - 4..]);
    s[..4].copy_from_slice(b"data");
    s[4..8].copy_from_slice(&((sequence >> 32) as u32).to_le_bytes());
    s[LOG_SECTOR - 4..].copy_from_slice(&(sequence as u32).to_le_bytes());
    (s, u64::from_le_bytes(lead), u32::from_le_bytes(trail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> [u8; LOG_SECTOR] {
        let mut p = [0u8; LOG_SECTOR];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        p
    }

    #[test]
    fn round_trip() {
        let p = payload();
        let (s, lead, trail) = build_data_sector(&p, 0x1_0000_0002);
        let out = parse_data_sector(&s, 0x1000, 0x1_0000_0002, lead, trail).unwrap();
        assert_eq!(&out[..], &p[..]);
    }

    #[test]
    fn rule_signature() {
        let (mut s, l, t) = build_data_sector(&payload(), 5);
        s[0] = b'D';
        assert!(matches!(
            parse_data_sector(&s, 0x1000, 5, l, t),
            Err(ParseError::BadMagic { offset: 0x1000, .. })
        ));
    }

    #[test]
    fn rule_sequence_halves() {
        let (s, l, t) = build_data_sector(&payload(), 0x1_0000_0005);
        assert!(matches!(
            parse_data_sector(&s, 0, 0x5, l, t),
            Err(ParseError::Corrupt { offset: 4, .. })
        ));
        assert!(matches!(
            parse_data_sector(&s, 0, 0x1_0000_0006, l, t),
            Err(ParseError::Corrupt { .. })
        ));
    }

    #[test]
    fn no_panic_sweep() {
        let (s, l, t) = build_data_sector(&payload(), 9);
        for n in 0..s.len() {
            assert!(parse_data_sector(&s[..n], 0, 9, l, t).is_err());
        }
        for i in (0..8).chain(LOG_SECTOR - 4..LOG_SECTOR) {
            for bit in 0..8 {
                let mut m = s.clone();
                m[i] ^= 1 << bit;
                assert!(parse_data_sector(&m, 0, 9, l, t).is_err());
            }
        }
    }
}
