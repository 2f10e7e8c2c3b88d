//! qcow2 (QEMU copy-on-write v2), versions 2 ("compat 0.10") and 3 ("compat 1.1").
//!
//! Spec: QEMU `docs/interop/qcow2.txt`. One file per on-disk structure:
//!
//! - [`header`]: the fixed header (v2: 72 bytes, v3: `header_length` bytes) and the
//!   feature bits, validated together with
//! - [`extensions`]: the header extensions after it (backing format, feature name
//!   table, external data file name, bitmaps, full disk encryption) and the backing
//!   file name, all inside the first cluster;
//! - [`l1`]: the active L1 table (guest → L2 table);
//! - [`l2`]: L2 entries, standard (64-bit) and extended (128-bit, 32 subclusters);
//! - [`compressed`]: the compressed cluster descriptor inside an L2 entry;
//! - [`snapshot`]: the internal snapshot table (listed for `inspect`, never read from).
//!
//! Supported: everything a reader needs except encryption (`crypt_method` ≠ 0 and the
//! encryption header extension are `Unsupported`). Refcounts are never consulted:
//! a reader does not need them, which is also why a dirty image is readable as is.
//!
//! Invariants: every value that leaves these modules is validated (alignment, ranges,
//! caps from [`crate::limits`]); offsets inside the image file are checked against
//! the file size by the caller, which knows it (`src/image/qcow2.rs`).

pub mod compressed;
pub mod extensions;
pub mod header;
pub mod l1;
pub mod l2;
pub mod snapshot;
pub mod write;

pub use compressed::Qcow2CompressedDescriptor;
pub use extensions::{Qcow2Bitmaps, Qcow2Extensions, Qcow2FeatureName, Qcow2FeatureType};
pub use header::{header_cluster_size, parse_header, Qcow2Compression, Qcow2Header};
pub use l1::{parse_l1_table, Qcow2L1Table};
pub use l2::{Qcow2L2Entry, Qcow2L2Format};
pub use snapshot::{parse_snapshot_entry, snapshot_entry_len, Qcow2Snapshot};

/// "QFI\xfb" at offset 0.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Subclusters per cluster with extended L2 entries.
pub const QCOW2_SUBCLUSTERS: u32 = 32;
