//! vmback-parsers: pure parsers (and, later, writers) for the on-disk structures of
//! virtual disk containers and partition tables.
//!
//! Every function here is a pure function of bytes: no files, no threads, no global
//! state. Bytes come from disk images, which are hostile input, so every parser
//! checks sizes, offsets and counts against the caps in [`limits`] and returns a
//! [`ParseError`] naming the structure and its absolute offset instead of panicking.
//!
//! Layout: one module per container (`vhd`, `vhdx/`, `vmdk/`, `qcow2/`), one file per
//! on-disk structure inside it.

pub mod bytes;
pub mod error;
pub mod limits;
pub mod probe;

pub mod ext;
pub mod fat;
pub mod fsprobe;
pub mod gpt;
pub mod mbr;
pub mod ntfs;

pub mod qcow2;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

pub use error::{ParseError, Result};
