//! VMDK (VMware virtual disk) on-disk structures, one file per structure.
//!
//! Specs: VMware "Virtual Disk Format 1.1" (hosted sparse extents, descriptor,
//! streamOptimized markers), libyal's libvmdk documentation (COWD / VMFSSPARSE), and
//! QEMU's block/vmdk.c as the de-facto description of SESPARSE (VMware never published
//! it). Supported subset: descriptor text (embedded or standalone), hosted sparse
//! ("KDMV") headers v1-v3 with their footer copy, COWD headers, SESPARSE constant and
//! volatile headers, grain directory / grain table entries of all three, and
//! streamOptimized grain / metadata markers. Everything here is read-only and pure.
//!
//! Units: the formats count in 512-byte sectors; the validated types keep sector
//! counts in fields named `*_sectors` and give byte values through methods whose
//! arithmetic was already checked at parse time.

pub mod cowd_header;
pub mod descriptor;
pub mod grain_table;
pub mod marker;
pub mod sesparse_header;
pub mod sparse_header;
pub mod write;

/// Bytes per sector in every VMDK structure.
pub const SECTOR: u64 = 512;

/// Ceiling division for counts derived from validated, non-zero divisors.
pub(crate) fn div_ceil(a: u64, b: u64) -> u64 {
    a.checked_div(b).map_or(0, |q| q + u64::from(a % b != 0))
}

#[cfg(test)]
pub(crate) mod sweep {
    //! The no-panic sweep shared by the header tests: every truncation and every
    //! single-bit flip of a buffer goes through `parse`, which may fail but not panic.

    pub fn no_panic<T>(buf: &[u8], parse: impl Fn(&[u8]) -> crate::Result<T>) {
        for len in 0..buf.len() {
            let _ = parse(&buf[..len]);
        }
        let mut b = buf.to_vec();
        for i in 0..b.len() * 8 {
            b[i / 8] ^= 1 << (i % 8);
            let _ = parse(&b);
            b[i / 8] ^= 1 << (i % 8);
        }
    }
}
