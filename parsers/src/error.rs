//! The one error type of the parsers: what failed, where (absolute byte offset in the
//! file the bytes came from), and why. "Corrupt" (the bytes break the spec) is kept
//! apart from "Unsupported" (valid, but a feature we do not implement).

/// Result of a parser.
pub type Result<T> = std::result::Result<T, ParseError>;

/// Why a structure could not be parsed. `what` names the structure (e.g.
/// "VHDX header 1", "qcow2 L2 table"), `offset` is its absolute byte offset in the
/// file (or the offset of the offending field where that is more precise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error(
        "{what} at offset {offset:#x}: truncated (need {needed} bytes, only {available} available)"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error("{what} at offset {offset:#x}: bad signature (expected {expected}, found {found})")]
    BadMagic {
        what: &'static str,
        offset: u64,
        expected: String,
        found: String,
    },

    #[error("{what} at offset {offset:#x}: checksum mismatch (stored {stored:#x}, computed {computed:#x})")]
    Checksum {
        what: &'static str,
        offset: u64,
        stored: u64,
        computed: u64,
    },

    #[error("{what} at offset {offset:#x}: corrupt: {reason}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        reason: String,
    },

    #[error("{what} at offset {offset:#x}: unsupported: {feature}")]
    Unsupported {
        what: &'static str,
        offset: u64,
        feature: String,
    },

    #[error("{what} at offset {offset:#x}: {value} exceeds the limit of {limit} ({name}, see limits.rs)")]
    LimitExceeded {
        what: &'static str,
        offset: u64,
        value: u64,
        limit: u64,
        name: &'static str,
    },
}

impl ParseError {
    /// Shorthand for [`ParseError::Corrupt`].
    pub fn corrupt(what: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        ParseError::Corrupt {
            what,
            offset,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`ParseError::Unsupported`].
    pub fn unsupported(what: &'static str, offset: u64, feature: impl Into<String>) -> Self {
        ParseError::Unsupported {
            what,
            offset,
            feature: feature.into(),
        }
    }

    /// Shorthand for [`ParseError::Truncated`].
    pub fn truncated(what: &'static str, offset: u64, needed: u64, available: u64) -> Self {
        ParseError::Truncated {
            what,
            offset,
            needed,
            available,
        }
    }

    /// Fails with [`ParseError::LimitExceeded`] when `value > limit`.
    pub fn check_limit(
        what: &'static str,
        offset: u64,
        value: u64,
        limit: u64,
        name: &'static str,
    ) -> Result<()> {
        if value > limit {
            Err(ParseError::LimitExceeded {
                what,
                offset,
                value,
                limit,
                name,
            })
        } else {
            Ok(())
        }
    }

    /// Fails with [`ParseError::Checksum`] when the stored and computed checksums differ.
    pub fn check_checksum(
        what: &'static str,
        offset: u64,
        stored: u32,
        computed: u32,
    ) -> Result<()> {
        if stored != computed {
            Err(ParseError::Checksum {
                what,
                offset,
                stored: stored.into(),
                computed: computed.into(),
            })
        } else {
            Ok(())
        }
    }

    /// The absolute offset the error refers to.
    pub fn offset(&self) -> u64 {
        match self {
            ParseError::Truncated { offset, .. }
            | ParseError::BadMagic { offset, .. }
            | ParseError::Checksum { offset, .. }
            | ParseError::Corrupt { offset, .. }
            | ParseError::Unsupported { offset, .. }
            | ParseError::LimitExceeded { offset, .. } => *offset,
        }
    }
}
