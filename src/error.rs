//! The application error: the parser's cause plus the context a user acts on
//! (which file, which layer of a chain, which operation).

use std::path::PathBuf;

use vmback_parsers::ParseError;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong outside the parsers, with enough context to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: String,
        #[source]
        source: std::io::Error,
    },

    /// A structure inside an image file is invalid or unsupported.
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },

    /// A file that an image refers to (extent, parent, backing file) is not there.
    #[error("{what} {missing} (referenced by {referenced_by}) cannot be opened")]
    Missing {
        what: &'static str,
        missing: PathBuf,
        referenced_by: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A parent chain is too deep, loops, or does not fit together.
    #[error("{path}: parent chain: {reason}")]
    Chain { path: PathBuf, reason: String },

    /// A read beyond the end of a virtual disk (a caller bug or a bad request).
    #[error(
        "{path}: read of {len} bytes at offset {offset:#x} is beyond the virtual size {size:#x}"
    )]
    OutOfRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        size: u64,
    },

    /// Valid input that vmback does not handle (yet).
    #[error("{path}: unsupported: {feature}")]
    Unsupported { path: PathBuf, feature: String },

    /// A guest filesystem structure could not be read (corrupt, unsupported, I/O).
    #[error("{fs}: {path}")]
    GuestFs {
        fs: String,
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A guest path does not exist.
    #[error("{fs}: {path}: no such file or directory")]
    NotFound { fs: String, path: String },

    /// An NBD server refused a request or broke the protocol, or the URI is unusable.
    /// `step` names what vmback was doing (handshake, an option, a read at an offset).
    #[error("{uri}: {step}: {reason}")]
    Nbd {
        uri: String,
        step: String,
        reason: String,
    },

    /// The connection to an NBD server failed (connect, send, receive).
    #[error("{uri}: {step}")]
    NbdIo {
        uri: String,
        step: String,
        #[source]
        source: std::io::Error,
    },

    /// Bad command-line usage detected after parsing (exit code 2).
    #[error("{0}")]
    Usage(String),

    /// A repository that cannot be used as asked (not a repository, bad config, ...).
    #[error("repository {location}: {reason}")]
    Repository { location: String, reason: String },

    /// An object the repository should hold is missing.
    #[error("repository {location}: {key} is missing")]
    NotInRepository { location: String, key: String },

    /// Reading a source disk failed during a backup (it vanished, an I/O error, ...).
    #[error("{disk}: {reason}")]
    Capture { disk: String, reason: String },

    /// A signal asked the work to stop (see `interrupt`); exits with 128 + signal.
    #[error("interrupted by {}", crate::interrupt::signal_name(*signal))]
    Interrupted { signal: i32 },

    /// A consistency hook failed.
    #[error("{phase} hook `{command}` {reason}")]
    Hook {
        phase: String,
        command: String,
        reason: String,
    },

    /// Stored data does not match its name or its format: damage (exit code 3).
    #[error("repository {location}: {key} is damaged: {reason}")]
    Damaged {
        location: String,
        key: String,
        reason: String,
    },
}

impl Error {
    /// An I/O error on `path` during `op` (e.g. "read 512 bytes at offset 0x200").
    pub fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op: op.into(),
            source,
        }
    }

    /// What the user can do next, where the message itself does not say it (printed
    /// by the binary after the error).
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                "check the permissions of that file or device (reading disks usually needs root)"
                    .into()
            }
            Error::Missing {
                missing,
                referenced_by,
                ..
            } => format!(
                "put {} where {} expects it (paths are relative to the referencing file's \
                 directory), or fix the reference",
                missing.display(),
                referenced_by.display()
            ),
            Error::Unsupported { .. } => {
                "`vmback inspect` shows what the image holds; `qemu-img convert -O raw` can \
                 turn a container vmback does not read into one it does"
                    .into()
            }
            Error::Nbd { .. } | Error::NbdIo { .. } => {
                "check that the NBD server runs and exports that name (qemu-nbd -x NAME ...), \
                 and the URI form: nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT"
                    .into()
            }
            Error::Hook { command, .. } => {
                format!("run `{command}` by hand to see why it fails")
            }
            Error::NotInRepository { location, .. } | Error::Damaged { location, .. } => format!(
                "run `vmback verify {location} --read-data` to list the restore points that use \
                 it; the next backup of the same data stores it again"
            ),
            _ => return None,
        })
    }

    /// A parse error of a structure inside `path`.
    pub fn parse(path: impl Into<PathBuf>, source: ParseError) -> Self {
        Error::Parse {
            path: path.into(),
            source,
        }
    }
}

/// The error and all its causes on one line ("a: b: c"), for warnings and reports
/// that carry an error as text.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
