//! NBD exports as disks: an NBD URI becomes a [`DiskImage`] (bytes from
//! `NBD_CMD_READ`, the allocation map from the `base:allocation` context) plus, for
//! changed-block tracking, the dirty ranges of a QEMU dirty bitmap exported as the
//! `qemu:dirty-bitmap:NAME` context (QEMU docs/interop/nbd.txt: flag bit 0 = dirty).
//!
//! [`uri`] parses URIs, [`proto`] holds the wire format, [`client`] speaks the
//! protocol. One connection serves all threads through a mutex (qemu-nbd accepts a
//! single client by default). The thread holding it sends its read together with
//! what [`ahead`] plans along the ranges announced by [`DiskImage::prefetch`], all
//! requests in flight at once, so the server reads them side by side.

pub mod ahead;
pub mod client;
pub mod proto;
pub mod uri;

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::image::{DiskImage, Extent, Format, RunKind};
use crate::io::ReadAt;
use ahead::ReadAhead;
use client::NbdClient;
use uri::NbdAddress;

/// What the NBD client does, as `vmback --version` lists it.
pub const FEATURES: &str = "nbd:// and nbd+unix:// (no TLS), base:allocation, \
     qemu:dirty-bitmap:NAME for changed-block tracking";

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may stay silent (or not take our bytes) before an operation
/// fails: a hung server must not hang a backup forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// The socket under a connection.
enum Connection {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.read(buf),
            Connection::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Unix(s) => s.write(buf),
            Connection::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Unix(s) => s.flush(),
            Connection::Tcp(s) => s.flush(),
        }
    }
}

/// An NBD export, read-only, as a virtual disk.
pub struct NbdDisk {
    uri: String,
    export: String,
    size: u64,
    client: Mutex<NbdClient<Connection>>,
    /// Id of `base:allocation`, when the server offers it.
    allocation: Option<u32>,
    /// Bitmap name and id of its `qemu:dirty-bitmap:` context, when asked for.
    bitmap: Option<(String, u32)>,
    bytes_read: AtomicU64,
    /// The last `base:allocation` answer (consecutive extents), reused by the chunks
    /// it covers: one request per [`STATUS_LOOKAHEAD`] instead of one per chunk
    /// spares a round trip, and a turn at the connection's lock, per chunk (10,000
    /// round trips for a 2.5 GiB full at 256 KiB chunks: seconds over a network).
    allocation_window: Mutex<Vec<client::StatusExtent>>,
    /// Ranges announced by [`DiskImage::prefetch`] and the surplus of reads extended
    /// along them (see [`ahead`]). Never locked while waiting for the connection.
    ahead: Mutex<ReadAhead>,
}

/// How far past the asked range an allocation status request reaches.
const STATUS_LOOKAHEAD: u64 = 64 << 20;

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk")
            .field("uri", &self.uri)
            .field("export", &self.export)
            .field("size", &self.size)
            .field("allocation", &self.allocation)
            .field("bitmap", &self.bitmap)
            .finish_non_exhaustive()
    }
}

impl NbdDisk {
    /// Connects; `dirty_bitmap` = Some(name) also negotiates qemu:dirty-bitmap:NAME
    /// (error naming the bitmap if the server does not offer it).
    pub fn connect(uri: &str, dirty_bitmap: Option<&str>) -> Result<NbdDisk> {
        let parsed = uri::parse_uri(uri)?;
        let bitmap_context = match dirty_bitmap {
            Some("") => {
                return Err(Error::Nbd {
                    uri: uri.to_string(),
                    step: "dirty bitmap".to_string(),
                    reason: "empty bitmap name".to_string(),
                })
            }
            Some(name) => Some(format!("{}{name}", proto::QEMU_DIRTY_BITMAP_PREFIX)),
            None => None,
        };
        let mut wanted = vec![proto::BASE_ALLOCATION];
        wanted.extend(bitmap_context.as_deref());

        let conn = open_connection(uri, &parsed.address)?;
        let client = NbdClient::handshake(conn, uri, &parsed.export, &wanted)?;

        let bitmap = match (dirty_bitmap, bitmap_context.as_deref()) {
            (Some(name), Some(context)) => match client.context_id(context) {
                Some(id) => Some((name.to_string(), id)),
                None => {
                    let why = if !client.structured_replies() {
                        "the server does not support structured replies, which block status needs"
                            .to_string()
                    } else if let Some(refusal) = client.meta_context_refusal() {
                        format!("the server refused metadata contexts: {refusal}")
                    } else {
                        format!(
                            "the server does not offer {context} (is the bitmap exported, e.g. qemu-nbd -B {name}?)"
                        )
                    };
                    return Err(Error::Nbd {
                        uri: uri.to_string(),
                        step: format!("dirty bitmap {name:?}"),
                        reason: why,
                    });
                }
            },
            _ => None,
        };
        Ok(NbdDisk {
            uri: uri.to_string(),
            export: parsed.export,
            size: client.size(),
            allocation: client.context_id(proto::BASE_ALLOCATION),
            bitmap,
            client: Mutex::new(client),
            bytes_read: AtomicU64::new(0),
            allocation_window: Mutex::new(Vec::new()),
            ahead: Mutex::new(ReadAhead::default()),
        })
    }

    /// The URI as given to [`NbdDisk::connect`].
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The export name sent to the server ("" = its default export).
    pub fn export_name(&self) -> &str {
        &self.export
    }

    /// Payload bytes received for READs (holes the server described are free).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The dirty bitmap negotiated at connect time, if any.
    pub fn dirty_bitmap(&self) -> Option<&str> {
        self.bitmap.as_ref().map(|(name, _)| name.as_str())
    }

    /// Whether the server reports allocation (`base:allocation`); without it
    /// [`DiskImage::extents`] calls everything data.
    pub fn has_allocation_map(&self) -> bool {
        self.allocation.is_some()
    }

    /// Dirty ranges of the negotiated bitmap within `range`, coalesced, sorted.
    pub fn dirty_extents(&self, range: Range<u64>) -> Result<Vec<Range<u64>>> {
        let Some((_, id)) = &self.bitmap else {
            return Err(Error::Nbd {
                uri: self.uri.clone(),
                step: "dirty extents".to_string(),
                reason: "no dirty bitmap was negotiated (connect with a bitmap name)".to_string(),
            });
        };
        let mut out: Vec<Range<u64>> = Vec::new();
        self.walk_status(*id, range, |s| {
            if s.flags & proto::NBD_STATE_DIRTY != 0 {
                let end = s.offset + s.length;
                match out.last_mut() {
                    Some(last) if last.end == s.offset => last.end = end,
                    _ => out.push(s.offset..end),
                }
            }
        })?;
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, NbdClient<Connection>> {
        // A panic mid-request leaves the client marked busy, and it then refuses to
        // go on, so a poisoned lock is safe to take over.
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `f` on consecutive status extents covering `range` (clipped to the
    /// export), asking again wherever the server described less than asked.
    fn walk_status(
        &self,
        context: u32,
        range: Range<u64>,
        mut f: impl FnMut(&client::StatusExtent),
    ) -> Result<()> {
        let end = range.end.min(self.size);
        let mut pos = range.start;
        let mut c = self.lock();
        while pos < end {
            for s in &self.status_from(&mut c, context, pos, end - pos)? {
                f(s);
                pos += s.length;
            }
        }
        Ok(())
    }

    /// One BLOCK_STATUS request for `len` bytes at `pos`: a non-empty run of
    /// consecutive extents starting at `pos` and inside the request (the server may
    /// describe less than asked).
    fn status_from(
        &self,
        c: &mut NbdClient<Connection>,
        context: u32,
        pos: u64,
        len: u64,
    ) -> Result<Vec<client::StatusExtent>> {
        let extents = c.block_status(context, pos, len)?;
        let internal = |reason: &str| Error::Nbd {
            uri: self.uri.clone(),
            step: format!("block status at offset {pos:#x}"),
            reason: format!("internal: {reason}"),
        };
        let mut at = pos;
        for s in &extents {
            // The client promises this; a slip here would misplace data silently.
            if s.offset != at || s.length == 0 || s.offset + s.length > pos + len {
                return Err(internal("extents out of order"));
            }
            at += s.length;
        }
        if extents.is_empty() {
            return Err(internal("no extent returned"));
        }
        Ok(extents)
    }
}

/// `base:allocation` flags to a run kind. Only a hole that also reads as zeroes may
/// be skipped; a hole without `NBD_STATE_ZERO` has undefined contents, so it is read
/// like data.
fn allocation_kind(flags: u32) -> RunKind {
    let hole = flags & proto::NBD_STATE_HOLE != 0;
    let zero = flags & proto::NBD_STATE_ZERO != 0;
    match (hole, zero) {
        (true, true) => RunKind::Unallocated,
        (false, true) => RunKind::Zero,
        _ => RunKind::Data,
    }
}

fn push_extent(out: &mut Vec<Extent>, start: u64, len: u64, kind: RunKind) {
    match out.last_mut() {
        Some(last) if last.kind == kind && last.end() == start => last.len += len,
        _ => out.push(Extent { start, len, kind }),
    }
}

impl ReadAt for NbdDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() && offset <= self.size {
            return Ok(());
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            // Bytes an extended read of another worker brought along.
            let n = self.ahead().take(pos, &mut buf[done..]);
            if n > 0 {
                done += n;
                continue;
            }
            let mut c = self.lock();
            // They may have arrived while this worker waited for the connection.
            let n = self.ahead().take(pos, &mut buf[done..]);
            if n > 0 {
                done += n;
                continue;
            }
            let want = buf.len() - done;
            let align = c.min_block();
            let plan = self.ahead().fetch_plan(
                pos,
                want as u64,
                align,
                c.max_read(),
                proto::MAX_READS_IN_FLIGHT - 1,
            );
            // Bounded: at most ahead::MAX_FETCH bytes in all.
            let mut pieces: Vec<(u64, Vec<u8>)> = plan
                .iter()
                .map(|r| (r.start, vec![0u8; (r.end - r.start) as usize]))
                .collect();
            let own = &mut buf[done..];
            let batched =
                pos % align == 0 && want as u64 % align == 0 && want as u64 <= c.max_read();
            let mut reads: Vec<(u64, &mut [u8])> = pieces
                .iter_mut()
                .map(|(at, v)| (*at, v.as_mut_slice()))
                .collect();
            let r = if batched {
                reads.insert(0, (pos, own));
                c.read_many(&mut reads)
            } else {
                // An unaligned or oversized read splits itself; the pieces follow.
                c.read(pos, own).and_then(|()| c.read_many(&mut reads))
            };
            if r.is_ok() {
                let mut ahead = self.ahead();
                for (at, data) in pieces {
                    ahead.hold(at, data);
                }
            }
            self.bytes_read.store(c.bytes_read(), Ordering::Relaxed);
            r?;
            done = buf.len();
        }
        Ok(())
    }
}

impl DiskImage for NbdDisk {
    fn format(&self) -> Format {
        Format::Raw
    }

    /// Announces the data under `range` to the read-ahead (no request is sent for
    /// it now: the connection serves one request at a time, and the reads to come
    /// are extended along it instead).
    fn prefetch(&self, range: Range<u64>) {
        let Ok(extents) = self.extents(range) else {
            return;
        };
        let mut ahead = self.ahead();
        for e in extents.iter().filter(|e| e.kind == RunKind::Data) {
            ahead.plan(e.start..e.end());
        }
    }

    fn extents(&self, range: Range<u64>) -> Result<Vec<Extent>> {
        let end = range.end.min(self.size);
        let mut out = Vec::new();
        if range.start >= end {
            return Ok(out);
        }
        match self.allocation {
            None => push_extent(&mut out, range.start, end - range.start, RunKind::Data),
            Some(id) => {
                let mut pos = range.start;
                while pos < end {
                    let s = match self.cached_allocation(pos) {
                        Some(s) => s,
                        None => self.refill_allocation(id, pos, end)?,
                    };
                    let n = (s.offset + s.length).min(end) - pos;
                    push_extent(&mut out, pos, n, allocation_kind(s.flags));
                    pos += n;
                }
            }
        }
        Ok(out)
    }
}

impl NbdDisk {
    fn ahead(&self) -> MutexGuard<'_, ReadAhead> {
        // Every update leaves the read-ahead consistent, so a poisoned lock is fine.
        self.ahead.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached allocation extent holding `pos`, if any.
    fn cached_allocation(&self, pos: u64) -> Option<client::StatusExtent> {
        let window = self
            .allocation_window
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let i = window.partition_point(|s| s.offset + s.length <= pos);
        window.get(i).filter(|s| s.offset <= pos).copied()
    }

    /// Asks for the allocation from `pos` to [`STATUS_LOOKAHEAD`] past `end` (the
    /// server may describe less), keeps the answer, and returns its first extent.
    fn refill_allocation(&self, id: u32, pos: u64, end: u64) -> Result<client::StatusExtent> {
        let want = end
            .saturating_add(STATUS_LOOKAHEAD)
            .min(self.size)
            .saturating_sub(pos);
        let extents = self.status_from(&mut self.lock(), id, pos, want)?;
        let first = extents[0];
        *self
            .allocation_window
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = extents;
        Ok(first)
    }
}

/// Connects the socket a URI names, with timeouts (and TCP_NODELAY: requests are
/// small and each waits for its reply).
fn open_connection(uri: &str, address: &NbdAddress) -> Result<Connection> {
    let io = |step: String| {
        move |source: std::io::Error| Error::NbdIo {
            uri: uri.to_string(),
            step,
            source,
        }
    };
    let conn = match address {
        NbdAddress::Unix(path) => Connection::Unix(
            UnixStream::connect(path)
                .map_err(io(format!("connect to socket {}", path.display())))?,
        ),
        NbdAddress::UnixAbstract(name) => {
            Connection::Unix(connect_abstract(name).map_err(io(format!(
                "connect to abstract socket {:?}",
                String::from_utf8_lossy(name)
            )))?)
        }
        NbdAddress::Tcp { host, port } => {
            let step = format!("connect to {host} port {port}");
            let addrs: Vec<_> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(io(format!("resolve {host}")))?
                .collect();
            let mut last = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            );
            let mut stream = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let s = stream.ok_or(last).map_err(io(step.clone()))?;
            s.set_nodelay(true).map_err(io(step))?;
            Connection::Tcp(s)
        }
    };
    let r = match &conn {
        Connection::Unix(s) => s
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT))),
        Connection::Tcp(s) => s
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT))),
    };
    r.map_err(io("set socket timeouts".to_string()))?;
    Ok(conn)
}

#[cfg(target_os = "linux")]
fn connect_abstract(name: &[u8]) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    UnixStream::connect_addr(&addr)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_name: &[u8]) -> std::io::Result<UnixStream> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract Unix sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_flags() {
        assert_eq!(allocation_kind(0), RunKind::Data);
        assert_eq!(allocation_kind(proto::NBD_STATE_HOLE), RunKind::Data);
        assert_eq!(allocation_kind(proto::NBD_STATE_ZERO), RunKind::Zero);
        assert_eq!(
            allocation_kind(proto::NBD_STATE_HOLE | proto::NBD_STATE_ZERO),
            RunKind::Unallocated
        );
        // Unknown bits are ignored, as the spec requires.
        assert_eq!(allocation_kind(0xffff_fffc), RunKind::Data);
    }

    #[test]
    fn bad_uri_and_refused_connection() {
        let e = NbdDisk::connect("nbds://h/x", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS"), "{e}");
        let dir = std::env::temp_dir().join(format!("vmback-nbd-none-{}", std::process::id()));
        let uri = format!("nbd+unix:///x?socket={}", dir.join("no.sock").display());
        let e = NbdDisk::connect(&uri, None).unwrap_err();
        let msg = crate::error::chain(&e);
        assert!(
            msg.contains("connect to socket") && msg.contains(&uri),
            "{msg}"
        );
        let e = NbdDisk::connect(&uri, Some("")).unwrap_err().to_string();
        assert!(e.contains("empty bitmap name"), "{e}");
    }
}
