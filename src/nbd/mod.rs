//! NBD (Network Block Device) exports as disk sources.
//!
//! [`uri`] parses NBD URIs and [`proto`] holds the wire format.

pub mod proto;
pub mod uri;
