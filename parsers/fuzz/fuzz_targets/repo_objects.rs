#![no_main]
//! Repository objects read back from storage (a damaged or hostile repository):
//! chunk objects, disk indexes, manifests and locks give Ok or Err, never a panic
//! or an allocation sized by a damaged length.
use libfuzzer_sys::fuzz_target;
use vmback::repo::chunk::{decode, ChunkId};
use vmback::repo::index::DiskIndex;
use vmback::repo::lock::LockInfo;
use vmback::repo::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let _ = decode(&ChunkId::of(data), data, "fuzz");
    let _ = DiskIndex::from_bytes(data, "fuzz", "indexes/x");
    let _ = serde_json::from_slice::<Manifest>(data);
    let _ = serde_json::from_slice::<LockInfo>(data);
});
