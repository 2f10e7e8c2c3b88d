//! NBD (Network Block Device) exports as disk sources.
//!
//! [`uri`] parses NBD URIs, [`proto`] holds the wire format, [`client`] speaks the
//! protocol.

pub mod client;
pub mod proto;
pub mod uri;
