//! Chunks: named by the BLAKE3 hash of their plaintext, stored zstd-compressed (or
//! as is when compression does not pay), verified on every read.
//!
//! Object layout (`chunks/<2 hex>/<64 hex>`):
//! ```text
//! 0  4  magic "VBC1"
//! 4  1  codec: 0 stored, 1 zstd
//! 5  3  reserved, zero
//! 8  4  plaintext length, little endian
//! 12 …  payload
//! ```

use std::fmt;

use zstd::zstd_safe::CParameter;

use super::config::ZstdSettings;
use crate::error::{Error, Result};

/// The content hash naming a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        Some(ChunkId(bytes.try_into().ok()?))
    }

    /// The backend key of the chunk object.
    pub fn key(&self) -> String {
        let h = self.hex();
        format!("chunks/{}/{h}", &h[..2])
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string, `None` unless it is all hex digits in pairs.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

const MAGIC: &[u8; 4] = b"VBC1";
const HEADER_LEN: usize = 12;
const CODEC_STORED: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Largest chunk a repository may be configured with (and so the largest plaintext a
/// chunk object may claim: a damaged length cannot make us allocate more).
pub const MAX_CHUNK_SIZE: usize = 64 << 20;

/// Encodes a chunk object: compressed when that saves at least 1/32 of the size.
pub fn encode(data: &[u8], zstd: ZstdSettings) -> Result<Vec<u8>> {
    let compressed = compress(data, zstd)?;
    let (codec, payload) = if compressed.len() + data.len() / 32 < data.len() {
        (CODEC_ZSTD, compressed.as_slice())
    } else {
        (CODEC_STORED, data)
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(codec);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// zstd compression with one context per thread and level, reused: a fresh context
/// per chunk (`zstd::bulk::compress`) allocated and cleared megabytes of tables each
/// time, which showed up as a tenth of a backup's CPU (page faults, memset).
fn compress(data: &[u8], zstd: ZstdSettings) -> Result<Vec<u8>> {
    type Slot = Option<(ZstdSettings, zstd::bulk::Compressor<'static>)>;
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Slot> = const { std::cell::RefCell::new(None) };
    }
    let err = |e| Error::io("zstd", "compress a chunk", e);
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(s, _)| *s != zstd) {
            let mut c = zstd::bulk::Compressor::new(zstd.level).map_err(err)?;
            if let Some(t) = zstd.tuning {
                c.set_parameter(CParameter::HashLog(t.hash_log))
                    .map_err(err)?;
                c.set_parameter(CParameter::MinMatch(t.min_match))
                    .map_err(err)?;
            }
            *slot = Some((zstd, c));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        compressor.compress(data).map_err(err)
    })
}

/// zstd decompression with one context per thread, reused: a fresh one per chunk
/// (`zstd::bulk::decompress`) cost ~2% of a cold sequential read through a mount.
fn decompress(payload: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = slot.as_mut().expect("set above");
        // `len` is bounded by MAX_CHUNK_SIZE (checked by the caller).
        d.decompress(payload, len)
    })
}

/// Decodes a chunk object and checks that its plaintext hashes to `id`.
/// `location` names the repository in errors.
pub fn decode(id: &ChunkId, object: &[u8], location: &str) -> Result<Vec<u8>> {
    let damaged = |reason: String| Error::Damaged {
        location: location.to_string(),
        key: id.key(),
        reason,
    };
    if object.len() < HEADER_LEN || &object[..4] != MAGIC {
        return Err(damaged("not a chunk object (bad header)".into()));
    }
    let codec = object[4];
    let len = u32::from_le_bytes([object[8], object[9], object[10], object[11]]) as usize;
    if len > MAX_CHUNK_SIZE {
        return Err(damaged(format!("claims {len} bytes, more than any chunk")));
    }
    let payload = &object[HEADER_LEN..];
    let plain = match codec {
        CODEC_STORED => payload.to_vec(),
        CODEC_ZSTD => decompress(payload, len).map_err(|e| damaged(format!("zstd: {e}")))?,
        other => return Err(damaged(format!("unknown codec {other}"))),
    };
    if plain.len() != len {
        return Err(damaged(format!(
            "holds {} bytes, header says {len}",
            plain.len()
        )));
    }
    let actual = ChunkId::of(&plain);
    if actual != *id {
        return Err(damaged(format!("content hashes to {actual}")));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressed_and_stored() {
        let text = b"abcabcabc".repeat(1000);
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for data in [text, random] {
            let id = ChunkId::of(&data);
            let obj = encode(&data, crate::repo::config::DEFAULT_ZSTD).unwrap();
            assert_eq!(decode(&id, &obj, "r").unwrap(), data);
        }
    }

    #[test]
    fn damage_is_detected() {
        let data = b"hello world".repeat(100);
        let id = ChunkId::of(&data);
        let mut obj = encode(&data, crate::repo::config::DEFAULT_ZSTD).unwrap();
        let last = obj.len() - 1;
        obj[last] ^= 1;
        assert!(matches!(decode(&id, &obj, "r"), Err(Error::Damaged { .. })));
        assert!(decode(&id, b"VBC1\x01\0\0\0\xff\xff\xff\xff", "r").is_err());
        assert!(decode(&id, b"xx", "r").is_err());
    }

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"x");
        assert_eq!(ChunkId::from_hex(&id.hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
        assert!(id.key().starts_with("chunks/"));
    }
}
