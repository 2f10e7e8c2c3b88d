//! vmback: image-level backup of virtual machine disks and granular restore.
//!
//! Layers, bottom up (see DESIGN.md): [`io`] (positional reads), [`image`] (disk image
//! containers and their parent chains, as one virtual disk), and the front ends
//! ([`export`], [`inspect`]). Parsing of on-disk structures lives in the pure
//! `vmback-parsers` crate; this crate does the I/O around it.

pub mod backup;
pub mod browse;
pub mod cli;
pub mod error;
pub mod export;
pub mod forget;
pub mod get;
pub mod guestfs;
pub mod image;
pub mod inspect;
pub mod interrupt;
pub mod io;
pub mod job;
pub mod location;
pub mod ls;
pub mod mount;
pub mod nbd;
pub mod progress;
pub mod repo;
pub mod snapshots;
pub mod verify;
pub mod verify_fs;
pub mod version;
pub mod volume;

pub use error::{Error, Result};
