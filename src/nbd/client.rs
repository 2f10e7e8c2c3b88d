//! A small synchronous NBD client (NetworkBlockDevice/nbd `doc/proto.md`) over any
//! `Read + Write` stream: fixed newstyle handshake, structured replies, metadata
//! contexts, `NBD_OPT_GO`, then reads and block status queries, one request at a
//! time.
//!
//! The server is untrusted. Every reply is checked against the request it answers
//! (cookie, offsets inside the request, no overlapping chunks, full coverage before
//! success, descriptors that advance) and every length against a cap in
//! [`super::proto`] before anything is allocated. A reply that breaks the protocol
//! leaves the stream at an unknown position, so the client then refuses further
//! requests instead of misreading the next reply. Errors name the URI, the step and
//! what the server sent.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};

use super::proto::{
    self, BlockDescriptor, BlockSizes, ChunkError, ChunkHeader, Info, OptionReplyHeader,
    ProtoError, ReplyKind, Request, SimpleReply,
};
use crate::error::{Error, Result};

/// A metadata context the server selected for this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// The server's id for it (opaque, valid for this connection only).
    pub id: u32,
    pub name: String,
}

/// Status flags of the byte range `[offset, offset + length)` in one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusExtent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// One reply header, of either kind.
enum Reply {
    Simple(SimpleReply),
    Chunk(ChunkHeader),
}

/// An NBD connection in transmission phase (after [`NbdClient::handshake`]).
pub struct NbdClient<S: Read + Write> {
    stream: S,
    uri: String,
    export: String,
    size: u64,
    transmission_flags: u16,
    block_sizes: BlockSizes,
    structured: bool,
    contexts: Vec<MetaContext>,
    /// Why the server refused `NBD_OPT_SET_META_CONTEXT`, when it did.
    meta_refusal: Option<String>,
    next_cookie: u64,
    payload_bytes: u64,
    /// Option haggling has started (so an `NBD_OPT_ABORT` makes sense on failure).
    in_options: bool,
    in_transmission: bool,
    /// Set while a reply is not fully consumed. Still set when the next request
    /// starts means a protocol error (or a panic) cut an exchange short and the
    /// stream position is unknown: the connection must not be used again.
    busy: bool,
}

impl<S: Read + Write> NbdClient<S> {
    /// Negotiates with the server on `stream` and enters transmission on `export`.
    /// `contexts` are the metadata contexts to select (e.g. `base:allocation`); the
    /// server may grant fewer, see [`NbdClient::context_id`]. `uri` only names the
    /// server in errors.
    pub fn handshake(stream: S, uri: &str, export: &str, contexts: &[&str]) -> Result<Self> {
        let mut c = NbdClient {
            stream,
            uri: uri.to_string(),
            export: export.to_string(),
            size: 0,
            transmission_flags: 0,
            block_sizes: BlockSizes::default(),
            structured: false,
            contexts: Vec::new(),
            meta_refusal: None,
            next_cookie: 1,
            payload_bytes: 0,
            in_options: false,
            in_transmission: false,
            busy: true,
        };
        match c.negotiate(contexts) {
            Ok(()) => {
                c.busy = false;
                c.in_transmission = true;
                Ok(c)
            }
            Err(e) => {
                c.abort();
                Err(e)
            }
        }
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export name sent to the server.
    pub fn export(&self) -> &str {
        &self.export
    }

    /// Transmission flags (`NBD_FLAG_READ_ONLY`, ...).
    pub fn transmission_flags(&self) -> u16 {
        self.transmission_flags
    }

    /// The server's size constraints (defaults when it sent none).
    pub fn block_sizes(&self) -> BlockSizes {
        self.block_sizes
    }

    /// Whether structured replies were negotiated (needed for block status).
    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// The metadata contexts the server selected.
    pub fn contexts(&self) -> &[MetaContext] {
        &self.contexts
    }

    /// The id of a selected context, by name.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|c| c.name == name).map(|c| c.id)
    }

    /// The server's reason for refusing `NBD_OPT_SET_META_CONTEXT`, if it did.
    pub fn meta_context_refusal(&self) -> Option<&str> {
        self.meta_refusal.as_deref()
    }

    /// Payload bytes received for reads so far (holes the server described without
    /// data do not count).
    pub fn bytes_read(&self) -> u64 {
        self.payload_bytes
    }

    // ------------------------------------------------------------ errors and I/O

    fn fail(&self, step: &str, reason: impl Into<String>) -> Error {
        Error::Nbd {
            uri: self.uri.clone(),
            step: step.to_string(),
            reason: reason.into(),
        }
    }

    fn proto_fail(&self, step: &str, e: ProtoError) -> Error {
        self.fail(step, format!("bad {e}"))
    }

    fn io_fail(&self, step: &str, e: std::io::Error) -> Error {
        match e.kind() {
            ErrorKind::UnexpectedEof => self.fail(step, "the server closed the connection"),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                self.fail(step, format!("the server closed the connection ({e})"))
            }
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                self.fail(step, "no answer from the server (timed out)")
            }
            _ => Error::NbdIo {
                uri: self.uri.clone(),
                step: step.to_string(),
                source: e,
            },
        }
    }

    fn recv(&mut self, buf: &mut [u8], step: &str) -> Result<()> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io_fail(step, e)),
        }
    }

    fn send(&mut self, bytes: &[u8], step: &str) -> Result<()> {
        let r = self
            .stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush());
        r.map_err(|e| self.io_fail(step, e))
    }

    /// Best-effort soft disconnect during option haggling (spec: a client that gives
    /// up MUST use `NBD_OPT_ABORT`). The reply is not awaited.
    fn abort(&mut self) {
        if self.in_options {
            if let Ok(bytes) = proto::encode_option(proto::NBD_OPT_ABORT, &[]) {
                let _ = self.stream.write_all(&bytes);
                let _ = self.stream.flush();
            }
            self.in_options = false;
        }
    }

    // ------------------------------------------------------------ handshake

    fn negotiate(&mut self, contexts: &[&str]) -> Result<()> {
        let step = "handshake";
        let mut greeting = [0u8; proto::GREETING_LEN];
        self.recv(&mut greeting, step)?;
        let flags = proto::parse_greeting(&greeting).map_err(|e| self.proto_fail(step, e))?;
        if flags & proto::NBD_FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.fail(
                step,
                "the server does not offer fixed newstyle negotiation (too old for NBD_OPT_GO)",
            ));
        }
        let no_zeroes = flags & proto::NBD_FLAG_NO_ZEROES != 0;
        let mut client_flags = proto::NBD_FLAG_C_FIXED_NEWSTYLE;
        if no_zeroes {
            client_flags |= proto::NBD_FLAG_C_NO_ZEROES;
        }
        self.send(&proto::encode_client_flags(client_flags), step)?;
        self.in_options = true;

        self.structured = self.negotiate_structured_replies()?;
        if self.structured && !contexts.is_empty() {
            self.negotiate_meta_contexts(contexts)?;
        }
        self.go(no_zeroes)
    }

    fn option_step(&self, option: u32) -> String {
        format!("option {}", proto::option_name(option))
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let step = self.option_step(option);
        let bytes = proto::encode_option(option, data).map_err(|e| self.proto_fail(&step, e))?;
        self.send(&bytes, &step)
    }

    /// Reads one reply to `option`: magic, echoed option and payload cap checked
    /// before the payload is read.
    fn option_reply(&mut self, option: u32) -> Result<(OptionReplyHeader, Vec<u8>)> {
        let step = self.option_step(option);
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        self.recv(&mut h, &step)?;
        let hdr = proto::parse_option_reply_header(&h).map_err(|e| self.proto_fail(&step, e))?;
        if hdr.option != option {
            return Err(self.fail(
                &step,
                format!(
                    "the server answered {} instead",
                    proto::option_name(hdr.option)
                ),
            ));
        }
        // OK: the length is at most MAX_OPTION_REPLY (checked by the parser).
        let mut payload = vec![0u8; hdr.length as usize];
        self.recv(&mut payload, &step)?;
        Ok((hdr, payload))
    }

    /// The error for an error reply, with the server's message.
    fn refusal(&self, option: u32, hdr: &OptionReplyHeader, payload: &[u8]) -> Error {
        let mut reason = if hdr.reply_type == proto::NBD_REP_ERR_UNKNOWN {
            format!("export {:?} is not available: ", self.export)
        } else {
            "the server refused: ".to_string()
        };
        reason.push_str(&proto::reply_type_name(hdr.reply_type));
        if !payload.is_empty() {
            reason.push_str(": ");
            reason.push_str(&proto::display_string(payload));
        }
        self.fail(&self.option_step(option), reason)
    }

    fn unexpected_reply(&self, option: u32, hdr: &OptionReplyHeader) -> Error {
        self.fail(
            &self.option_step(option),
            format!(
                "unexpected reply {}",
                proto::reply_type_name(hdr.reply_type)
            ),
        )
    }

    /// Asks for structured replies; an old server that refuses still serves reads
    /// with simple replies (but offers no block status).
    fn negotiate_structured_replies(&mut self) -> Result<bool> {
        let opt = proto::NBD_OPT_STRUCTURED_REPLY;
        self.send_option(opt, &[])?;
        let (hdr, _) = self.option_reply(opt)?;
        match hdr.reply_type {
            proto::NBD_REP_ACK => Ok(true),
            _ if hdr.is_error() => Ok(false),
            _ => Err(self.unexpected_reply(opt, &hdr)),
        }
    }

    fn negotiate_meta_contexts(&mut self, wanted: &[&str]) -> Result<()> {
        let opt = proto::NBD_OPT_SET_META_CONTEXT;
        let data = proto::encode_meta_context_data(&self.export, wanted)
            .map_err(|e| self.proto_fail(&self.option_step(opt), e))?;
        self.send_option(opt, &data)?;
        let mut got: Vec<MetaContext> = Vec::new();
        for _ in 0..proto::MAX_OPTION_REPLIES {
            let (hdr, payload) = self.option_reply(opt)?;
            match hdr.reply_type {
                proto::NBD_REP_META_CONTEXT => {
                    let (id, name) = proto::parse_meta_context(&payload)
                        .map_err(|e| self.proto_fail(&self.option_step(opt), e))?;
                    if got.iter().any(|c| c.id == id || c.name == name) {
                        return Err(self.fail(
                            &self.option_step(opt),
                            format!("context {name:?} (id {id}) selected twice"),
                        ));
                    }
                    // A context nobody asked for cannot be used: ignore it.
                    if wanted.contains(&name.as_str()) {
                        got.push(MetaContext { id, name });
                    }
                }
                proto::NBD_REP_ACK => {
                    self.contexts = got;
                    return Ok(());
                }
                // No such export, TLS or shutdown: going on cannot succeed.
                proto::NBD_REP_ERR_UNKNOWN
                | proto::NBD_REP_ERR_TLS_REQD
                | proto::NBD_REP_ERR_SHUTDOWN => return Err(self.refusal(opt, &hdr, &payload)),
                // Anything else: carry on without block status, and keep the reason
                // for whoever needed a context.
                _ if hdr.is_error() => {
                    let mut why = proto::reply_type_name(hdr.reply_type);
                    if !payload.is_empty() {
                        why.push_str(": ");
                        why.push_str(&proto::display_string(&payload));
                    }
                    self.meta_refusal = Some(why);
                    return Ok(());
                }
                _ => return Err(self.unexpected_reply(opt, &hdr)),
            }
        }
        Err(self.fail(
            &self.option_step(opt),
            format!(
                "more than {} replies (MAX_OPTION_REPLIES)",
                proto::MAX_OPTION_REPLIES
            ),
        ))
    }

    /// `NBD_OPT_GO` with a block size request (so we promise to honour the server's
    /// alignment), falling back to `NBD_OPT_EXPORT_NAME` on servers without it.
    fn go(&mut self, no_zeroes: bool) -> Result<()> {
        let opt = proto::NBD_OPT_GO;
        let step = self.option_step(opt);
        let data = proto::encode_go_data(&self.export, &[proto::NBD_INFO_BLOCK_SIZE])
            .map_err(|e| self.proto_fail(&step, e))?;
        self.send_option(opt, &data)?;
        let mut export_info = None;
        let mut block_sizes = None;
        for _ in 0..proto::MAX_OPTION_REPLIES {
            let (hdr, payload) = self.option_reply(opt)?;
            match hdr.reply_type {
                proto::NBD_REP_INFO => {
                    match proto::parse_info(&payload).map_err(|e| self.proto_fail(&step, e))? {
                        Info::Export { size, flags } => export_info = Some((size, flags)),
                        Info::BlockSize(b) => block_sizes = Some(b),
                        Info::Name(_) | Info::Description(_) | Info::Unknown(_) => {}
                    }
                }
                proto::NBD_REP_ACK => {
                    let (size, flags) = export_info.ok_or_else(|| {
                        self.fail(&step, "the server accepted without sending NBD_INFO_EXPORT")
                    })?;
                    self.size = size;
                    self.transmission_flags = flags;
                    self.block_sizes = block_sizes.unwrap_or_default();
                    self.in_options = false;
                    return Ok(());
                }
                proto::NBD_REP_ERR_UNSUP => return self.export_name(no_zeroes),
                _ if hdr.is_error() => return Err(self.refusal(opt, &hdr, &payload)),
                _ => return Err(self.unexpected_reply(opt, &hdr)),
            }
        }
        Err(self.fail(
            &step,
            format!(
                "more than {} replies (MAX_OPTION_REPLIES)",
                proto::MAX_OPTION_REPLIES
            ),
        ))
    }

    /// The pre-`NBD_OPT_GO` way in: a server that does not know the export just
    /// closes the connection, so that is what the error says.
    fn export_name(&mut self, no_zeroes: bool) -> Result<()> {
        let opt = proto::NBD_OPT_EXPORT_NAME;
        let step = self.option_step(opt);
        let name = self.export.clone();
        self.send_option(opt, name.as_bytes())?;
        let mut reply = [0u8; proto::EXPORT_NAME_REPLY_LEN];
        self.stream.read_exact(&mut reply).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                self.fail(
                    &step,
                    format!("the server closed the connection (no export {name:?}?)"),
                )
            } else {
                self.io_fail(&step, e)
            }
        })?;
        let (size, flags) =
            proto::parse_export_name_reply(&reply).map_err(|e| self.proto_fail(&step, e))?;
        if !no_zeroes {
            let mut zeroes = [0u8; proto::EXPORT_NAME_ZEROES];
            self.recv(&mut zeroes, &step)?;
        }
        self.size = size;
        self.transmission_flags = flags;
        self.block_sizes = BlockSizes::default();
        self.in_options = false;
        Ok(())
    }

    // ------------------------------------------------------------ transmission

    /// Sends a request and marks the connection busy until its reply is consumed.
    fn start_request(&mut self, command: u16, offset: u64, length: u32, step: &str) -> Result<u64> {
        self.check_usable(step)?;
        self.busy = true;
        self.send_request(command, offset, length, step)
    }

    /// Fails unless a new exchange may start.
    fn check_usable(&self, step: &str) -> Result<()> {
        if !self.in_transmission {
            return Err(self.fail(step, "not connected"));
        }
        if self.busy {
            return Err(self.fail(
                step,
                "the connection is unusable after an earlier protocol error",
            ));
        }
        Ok(())
    }

    /// Sends one request under a fresh cookie and returns the cookie.
    fn send_request(&mut self, command: u16, offset: u64, length: u32, step: &str) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = proto::encode_request(&Request {
            flags: 0,
            command,
            cookie,
            offset,
            length,
        });
        self.send(&req, step)?;
        Ok(cookie)
    }

    /// Reads the next reply header, which must carry `cookie`.
    fn recv_reply(&mut self, cookie: u64, step: &str) -> Result<Reply> {
        let (got, reply) = self.recv_any_reply(step)?;
        if got != cookie {
            return Err(self.fail(
                step,
                format!("reply for cookie {got:#x}, but the only request in flight is {cookie:#x}"),
            ));
        }
        Ok(reply)
    }

    /// Reads the next reply header, whatever its cookie; returns the cookie with it.
    fn recv_any_reply(&mut self, step: &str) -> Result<(u64, Reply)> {
        let mut magic = [0u8; 4];
        self.recv(&mut magic, step)?;
        let reply = match proto::reply_kind(magic).map_err(|e| self.proto_fail(step, e))? {
            ReplyKind::Simple => {
                let mut b = [0u8; proto::SIMPLE_REPLY_LEN];
                b[..4].copy_from_slice(&magic);
                self.recv(&mut b[4..], step)?;
                Reply::Simple(proto::parse_simple_reply(&b).map_err(|e| self.proto_fail(step, e))?)
            }
            ReplyKind::Structured if !self.structured => {
                return Err(self.fail(
                    step,
                    "structured reply chunk although structured replies were not negotiated",
                ))
            }
            ReplyKind::Structured => {
                let mut b = [0u8; proto::CHUNK_HEADER_LEN];
                b[..4].copy_from_slice(&magic);
                self.recv(&mut b[4..], step)?;
                Reply::Chunk(proto::parse_chunk_header(&b).map_err(|e| self.proto_fail(step, e))?)
            }
        };
        let got = match &reply {
            Reply::Simple(r) => r.cookie,
            Reply::Chunk(h) => h.cookie,
        };
        Ok((got, reply))
    }

    /// Reads and decodes an error chunk's payload (bounded by [`proto::MAX_ERROR_CHUNK`]).
    fn recv_error_chunk(&mut self, h: &ChunkHeader, step: &str) -> Result<ChunkError> {
        if h.length > proto::MAX_ERROR_CHUNK {
            return Err(self.fail(
                step,
                format!(
                    "{} of {} bytes exceeds the cap of {} (MAX_ERROR_CHUNK)",
                    proto::chunk_type_name(h.chunk_type),
                    h.length,
                    proto::MAX_ERROR_CHUNK
                ),
            ));
        }
        // OK: at most MAX_ERROR_CHUNK.
        let mut payload = vec![0u8; h.length as usize];
        self.recv(&mut payload, step)?;
        proto::parse_error_chunk(h.chunk_type, &payload).map_err(|e| self.proto_fail(step, e))
    }

    fn server_error(&self, step: &str, e: &ChunkError) -> Error {
        let mut reason = format!("the server reported {}", proto::errno_name(e.error));
        if let Some(off) = e.offset {
            reason.push_str(&format!(" at offset {off:#x}"));
        }
        if !e.message.is_empty() {
            reason.push_str(": ");
            reason.push_str(&e.message);
        }
        self.fail(step, reason)
    }

    /// Checks that the chunk `[at, at + len)` lies inside the request
    /// `[start, end)`; returns its position in the request buffer.
    fn place(
        &self,
        at: u64,
        len: u64,
        start: u64,
        end: u64,
        step: &str,
        what: &str,
    ) -> Result<usize> {
        match at.checked_add(len) {
            Some(e) if at >= start && e <= end => usize::try_from(at - start)
                .map_err(|_| self.fail(step, "offset does not fit in memory")),
            _ => Err(self.fail(
                step,
                format!(
                    "{what} chunk of {len} bytes at offset {at:#x} lies outside the request [{start:#x}, {end:#x})"
                ),
            )),
        }
    }

    /// The server's minimum block size: reads [`NbdClient::read_many`] sends must be
    /// aligned to it.
    pub fn min_block(&self) -> u64 {
        u64::from(self.block_sizes.minimum.max(1))
    }

    /// The largest read request: the server's maximum payload (at most
    /// [`proto::MAX_READ_REQUEST`]) rounded down to its minimum block size.
    pub fn max_read(&self) -> u64 {
        let min = u64::from(self.block_sizes.minimum.max(1));
        let max = u64::from(self.block_sizes.maximum.min(proto::MAX_READ_REQUEST));
        (max - max % min).max(min)
    }

    /// Reads `buf.len()` bytes at `offset`: split into requests of at most the
    /// server's maximum payload, aligned to its minimum block size (unaligned head
    /// and tail go through a small bounce buffer).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let total = buf.len();
        let step = || format!("read of {total} bytes at offset {offset:#x}");
        let len = total as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(self.fail(&step(), format!("beyond the export size {:#x}", self.size)));
        }
        let min = u64::from(self.block_sizes.minimum.max(1));
        let max = self.max_read();
        let mut pos = 0usize;
        while pos < buf.len() {
            let off = offset + pos as u64;
            let remaining = (buf.len() - pos) as u64;
            let head = off % min;
            if head != 0 || remaining < min {
                // One aligned block around `off`, clipped to the export.
                let block_start = off - head;
                let block_len = min.min(self.size - block_start);
                // OK: block_len <= minimum block size <= 64 KiB.
                let mut bounce = vec![0u8; block_len as usize];
                self.read_request(block_start, &mut bounce)?;
                let n = (block_len - head).min(remaining) as usize;
                let src = bounce.get(head as usize..head as usize + n);
                let dst = buf.get_mut(pos..pos + n);
                match (src, dst) {
                    (Some(s), Some(d)) => d.copy_from_slice(s),
                    _ => return Err(self.fail(&step(), "internal: bounce buffer bounds")),
                }
                pos += n;
            } else {
                let n = (remaining - remaining % min).min(max) as usize;
                let Some(dst) = buf.get_mut(pos..pos + n) else {
                    return Err(self.fail(&step(), "internal: read buffer bounds"));
                };
                self.read_request(off, dst)?;
                pos += n;
            }
        }
        Ok(())
    }

    /// One `NBD_CMD_READ` of at most [`proto::MAX_READ_REQUEST`] bytes.
    fn read_request(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_many(&mut [(offset, buf)])
    }

    /// Reads several ranges with all their requests in flight at once, so the server
    /// can serve them side by side (one at a time, each waits for the disk under the
    /// server in turn). Each range must be at most [`NbdClient::max_read`] bytes, and
    /// offset and length multiples of the minimum block size. Replies may come in any
    /// order, their chunks interleaved; each goes to the range its cookie names.
    /// All replies are consumed before an error is returned (the connection stays
    /// usable after a server error), except on protocol errors.
    pub fn read_many(&mut self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        if reads.len() > proto::MAX_READS_IN_FLIGHT {
            return Err(self.fail(
                "read",
                format!(
                    "internal: {} reads at once, more than {} (MAX_READS_IN_FLIGHT)",
                    reads.len(),
                    proto::MAX_READS_IN_FLIGHT
                ),
            ));
        }
        let min = u64::from(self.block_sizes.minimum.max(1));
        let max = self.max_read();
        let mut flights = Vec::with_capacity(reads.len());
        for (offset, buf) in reads.iter_mut() {
            let offset = *offset;
            let step = format!("read of {} bytes at offset {offset:#x}", buf.len());
            let len = buf.len() as u64;
            if len == 0 || len > max || offset % min != 0 || len % min != 0 {
                return Err(self.fail(&step, "internal: read not aligned or too large"));
            }
            if offset.checked_add(len).is_none_or(|e| e > self.size) {
                return Err(self.fail(&step, format!("beyond the export size {:#x}", self.size)));
            }
            flights.push(ReadInFlight {
                cookie: 0,
                offset,
                buf,
                step,
                covered: Coverage::default(),
                error: None,
                chunks: 0,
                done: false,
            });
        }
        if flights.is_empty() {
            return Ok(());
        }
        let first = flights[0].step.clone();
        self.check_usable(&first)?;
        self.busy = true;
        for f in flights.iter_mut() {
            // OK: len <= max_read <= MAX_READ_REQUEST, a u32.
            let length = f.buf.len() as u32;
            f.cookie = self.send_request(proto::NBD_CMD_READ, f.offset, length, &f.step)?;
        }
        let mut open = flights.len();
        while open > 0 {
            let (cookie, reply) = self.recv_any_reply(&first)?;
            let Some(f) = flights.iter_mut().find(|f| f.cookie == cookie && !f.done) else {
                let in_flight: Vec<String> = flights
                    .iter()
                    .filter(|f| !f.done)
                    .map(|f| format!("{:#x}", f.cookie))
                    .collect();
                return Err(self.fail(
                    &first,
                    format!(
                        "reply for cookie {cookie:#x}, which is not in flight (in flight: {})",
                        in_flight.join(", ")
                    ),
                ));
            };
            self.read_reply(f, reply)?;
            if f.done {
                open -= 1;
            }
        }
        self.busy = false;
        for f in &flights {
            if let Some(e) = &f.error {
                return Err(self.server_error(&f.step, e));
            }
            if f.covered.total != f.buf.len() as u64 {
                return Err(self.fail(
                    &f.step,
                    format!(
                        "the server reported success but described only {} of {} bytes",
                        f.covered.total,
                        f.buf.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Consumes one reply (or reply chunk) of the read `f`.
    fn read_reply(&mut self, f: &mut ReadInFlight<'_>, reply: Reply) -> Result<()> {
        // Owned: the chunk handlers below borrow `f` mutably.
        let step_name = f.step.clone();
        let step = step_name.as_str();
        if !self.structured {
            return match reply {
                Reply::Simple(r) if r.error != 0 => {
                    // A simple error reply carries no payload: the stream goes on.
                    f.error = Some(ChunkError {
                        error: r.error,
                        offset: None,
                        message: String::new(),
                    });
                    f.covered.total = f.buf.len() as u64;
                    f.done = true;
                    Ok(())
                }
                Reply::Simple(_) => {
                    self.recv(f.buf, step)?;
                    self.payload_bytes += f.buf.len() as u64;
                    f.covered.total = f.buf.len() as u64;
                    f.done = true;
                    Ok(())
                }
                Reply::Chunk(_) => {
                    Err(self.fail(step, "internal: chunk without structured replies"))
                }
            };
        }
        let h = match reply {
            Reply::Simple(r) if r.error != 0 => {
                // Not allowed for reads with structured replies, but unambiguous.
                f.error = Some(ChunkError {
                    error: r.error,
                    offset: None,
                    message: String::new(),
                });
                f.done = true;
                return Ok(());
            }
            Reply::Simple(_) => {
                return Err(self.fail(
                    step,
                    "simple reply to a read although structured replies were negotiated",
                ))
            }
            Reply::Chunk(h) => h,
        };
        f.chunks += 1;
        if f.chunks > proto::MAX_READ_CHUNKS {
            return Err(self.fail(
                step,
                format!(
                    "more than {} chunks (MAX_READ_CHUNKS)",
                    proto::MAX_READ_CHUNKS
                ),
            ));
        }
        match h.chunk_type {
            proto::NBD_REPLY_TYPE_NONE => {
                if h.length != 0 || !h.is_done() {
                    return Err(self.fail(
                        step,
                        format!(
                            "NBD_REPLY_TYPE_NONE with length {} and flags {:#x} (must be 0 and DONE)",
                            h.length, h.flags
                        ),
                    ));
                }
            }
            proto::NBD_REPLY_TYPE_OFFSET_DATA => {
                let data_len = h.length.checked_sub(8).filter(|&n| n > 0).ok_or_else(|| {
                    self.fail(
                        step,
                        format!(
                            "NBD_REPLY_TYPE_OFFSET_DATA of length {} (at least 9)",
                            h.length
                        ),
                    )
                })?;
                let mut o = [0u8; 8];
                self.recv(&mut o, step)?;
                let at = proto::parse_data_offset(&o).map_err(|e| self.proto_fail(step, e))?;
                let n = u64::from(data_len);
                let dst = self.claim(f, at, n, "data")?;
                self.recv(dst, step)?;
                self.payload_bytes += n;
            }
            proto::NBD_REPLY_TYPE_OFFSET_HOLE => {
                if h.length != 12 {
                    return Err(self.fail(
                        step,
                        format!(
                            "NBD_REPLY_TYPE_OFFSET_HOLE of length {} (must be 12)",
                            h.length
                        ),
                    ));
                }
                let mut p = [0u8; 12];
                self.recv(&mut p, step)?;
                let (at, hole) =
                    proto::parse_offset_hole(&p).map_err(|e| self.proto_fail(step, e))?;
                self.claim(f, at, u64::from(hole), "hole")?.fill(0);
            }
            _ if h.is_error() => {
                let e = self.recv_error_chunk(&h, step)?;
                f.error.get_or_insert(e);
            }
            t => {
                return Err(self.fail(
                    step,
                    format!(
                        "unexpected {} in the reply to a read",
                        proto::chunk_type_name(t)
                    ),
                ))
            }
        }
        f.done = h.is_done();
        Ok(())
    }

    /// The part of `f`'s buffer that a `what` chunk of `len` bytes at `at` fills,
    /// once it is checked to lie inside the request and to overlap no earlier chunk.
    fn claim<'f>(
        &self,
        f: &'f mut ReadInFlight<'_>,
        at: u64,
        len: u64,
        what: &str,
    ) -> Result<&'f mut [u8]> {
        let end = f.offset + f.buf.len() as u64;
        let rel = self.place(at, len, f.offset, end, &f.step, what)?;
        if !f.covered.insert(at, at + len) {
            return Err(self.overlap(&f.step, what, at, len));
        }
        // OK: inside the buffer, checked by place.
        let n = len as usize;
        let step = &f.step;
        match f.buf.get_mut(rel..rel + n) {
            Some(dst) => Ok(dst),
            None => Err(self.fail(step, format!("internal: {what} chunk bounds"))),
        }
    }

    fn overlap(&self, step: &str, what: &str, at: u64, len: u64) -> Error {
        self.fail(
            step,
            format!("{what} chunk of {len} bytes at offset {at:#x} overlaps an earlier chunk"),
        )
    }

    /// Block status of `[offset, offset + length)` in context `context` (an id from
    /// [`NbdClient::context_id`]). Returns consecutive extents starting exactly at
    /// `offset`, clipped to the range, covering at least one byte of it: the server
    /// may describe less than asked, so callers loop from the end of the last one.
    pub fn block_status(
        &mut self,
        context: u32,
        offset: u64,
        length: u64,
    ) -> Result<Vec<StatusExtent>> {
        let name = self
            .contexts
            .iter()
            .find(|c| c.id == context)
            .map(|c| c.name.clone());
        let step = format!(
            "block status ({}) of {length} bytes at offset {offset:#x}",
            name.as_deref().unwrap_or("?")
        );
        if name.is_none() {
            return Err(self.fail(&step, format!("context id {context} was not negotiated")));
        }
        let want_end = offset
            .checked_add(length)
            .filter(|&e| e <= self.size && length > 0)
            .ok_or_else(|| {
                self.fail(
                    &step,
                    format!("empty or beyond the export size {:#x}", self.size),
                )
            })?;

        // Aligned to the minimum block size (which we promised to honour).
        let min = u64::from(self.block_sizes.minimum.max(1));
        let start = offset - offset % min;
        let end = want_end
            .checked_next_multiple_of(min)
            .unwrap_or(u64::MAX)
            .min(self.size);
        let cap = u64::from(proto::MAX_BLOCK_STATUS_REQUEST);
        let cap = cap - cap % min;
        // OK: at most MAX_BLOCK_STATUS_REQUEST, a u32.
        let req_len = (end - start).min(cap) as u32;
        // Every descriptor is >= 1 byte and all but the last lie inside the request.
        let max_descriptors = proto::MAX_BLOCK_STATUS_DESCRIPTORS.min(req_len);

        let cookie = self.start_request(proto::NBD_CMD_BLOCK_STATUS, start, req_len, &step)?;
        let mut seen: Vec<u32> = Vec::new();
        let mut found: Option<Vec<BlockDescriptor>> = None;
        let mut error: Option<ChunkError> = None;
        let mut chunks = 0usize;
        loop {
            let h = match self.recv_reply(cookie, &step)? {
                Reply::Simple(r) if r.error != 0 => {
                    self.busy = false;
                    return Err(self.fail(
                        &step,
                        format!("the server reported {}", proto::errno_name(r.error)),
                    ));
                }
                Reply::Simple(_) => {
                    return Err(self.fail(
                        &step,
                        "simple reply without status to a block status request",
                    ))
                }
                Reply::Chunk(h) => h,
            };
            chunks += 1;
            if chunks > proto::MAX_STATUS_CHUNKS {
                return Err(self.fail(
                    &step,
                    format!(
                        "more than {} chunks (MAX_STATUS_CHUNKS)",
                        proto::MAX_STATUS_CHUNKS
                    ),
                ));
            }
            match h.chunk_type {
                proto::NBD_REPLY_TYPE_NONE => {
                    if h.length != 0 || !h.is_done() {
                        return Err(
                            self.fail(&step, "NBD_REPLY_TYPE_NONE with a payload or without DONE")
                        );
                    }
                }
                proto::NBD_REPLY_TYPE_BLOCK_STATUS => {
                    proto::check_block_status_length(h.length, max_descriptors)
                        .map_err(|e| self.proto_fail(&step, e))?;
                    // OK: at most 4 + 8 * MAX_BLOCK_STATUS_DESCRIPTORS (8 MiB).
                    let mut payload = vec![0u8; h.length as usize];
                    self.recv(&mut payload, &step)?;
                    let (ctx, descriptors) = proto::parse_block_status(&payload, max_descriptors)
                        .map_err(|e| self.proto_fail(&step, e))?;
                    if !self.contexts.iter().any(|c| c.id == ctx) || seen.contains(&ctx) {
                        return Err(self.fail(
                            &step,
                            format!("status for context id {ctx}, which was not negotiated or came twice"),
                        ));
                    }
                    seen.push(ctx);
                    // All descriptors but the last must end inside the request.
                    let inner: u64 = descriptors
                        .iter()
                        .rev()
                        .skip(1)
                        .map(|d| u64::from(d.length))
                        .sum();
                    if inner >= u64::from(req_len) {
                        return Err(self.fail(
                            &step,
                            format!(
                                "{} descriptors run past the end of the {req_len}-byte request",
                                descriptors.len()
                            ),
                        ));
                    }
                    if ctx == context {
                        found = Some(descriptors);
                    }
                }
                _ if h.is_error() => {
                    let e = self.recv_error_chunk(&h, &step)?;
                    error.get_or_insert(e);
                }
                t => {
                    return Err(self.fail(
                        &step,
                        format!(
                            "unexpected {} in the reply to block status",
                            proto::chunk_type_name(t)
                        ),
                    ))
                }
            }
            if h.is_done() {
                break;
            }
        }
        self.busy = false;
        if let Some(e) = error {
            return Err(self.server_error(&step, &e));
        }
        let descriptors =
            found.ok_or_else(|| self.fail(&step, "the reply has no status for this context"))?;

        let mut out = Vec::new();
        let mut pos = start;
        for d in descriptors {
            let d_end = pos.saturating_add(u64::from(d.length));
            let (s, e) = (pos.max(offset), d_end.min(want_end));
            if s < e {
                out.push(StatusExtent {
                    offset: s,
                    length: e - s,
                    flags: d.flags,
                });
            }
            pos = d_end;
            if pos >= want_end {
                break;
            }
        }
        if out.is_empty() {
            return Err(self.fail(
                &step,
                "the reply ends before the requested offset (no progress)",
            ));
        }
        Ok(out)
    }
}

impl<S: Read + Write> std::fmt::Debug for NbdClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("uri", &self.uri)
            .field("export", &self.export)
            .field("size", &self.size)
            .field("transmission_flags", &self.transmission_flags)
            .field("block_sizes", &self.block_sizes)
            .field("structured", &self.structured)
            .field("contexts", &self.contexts)
            .finish_non_exhaustive()
    }
}

impl<S: Read + Write> Drop for NbdClient<S> {
    /// Soft disconnect (`NBD_CMD_DISC`) when the connection is in a clean state.
    fn drop(&mut self) {
        if self.in_transmission && !self.busy {
            let req = proto::encode_request(&Request {
                flags: 0,
                command: proto::NBD_CMD_DISC,
                cookie: self.next_cookie,
                offset: 0,
                length: 0,
            });
            let _ = self.stream.write_all(&req);
            let _ = self.stream.flush();
        }
        self.abort();
    }
}

/// A read request sent and not yet fully answered.
struct ReadInFlight<'b> {
    cookie: u64,
    offset: u64,
    buf: &'b mut [u8],
    /// Names the request in errors.
    step: String,
    covered: Coverage,
    /// The first error the server reported for it.
    error: Option<ChunkError>,
    chunks: usize,
    /// Its last reply chunk (or its simple reply) was consumed.
    done: bool,
}

/// The byte ranges the chunks of one read reply have described so far, merged, so
/// overlaps are caught and full coverage is a sum.
#[derive(Default)]
struct Coverage {
    ranges: BTreeMap<u64, u64>,
    total: u64,
}

impl Coverage {
    /// Adds `[start, end)` (non-empty); false when it overlaps a range already there.
    fn insert(&mut self, start: u64, end: u64) -> bool {
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.ranges.range(..=start).next_back() {
            if pe > start {
                return false;
            }
            if pe == start {
                s = ps;
            }
        }
        if let Some((&ns, &ne)) = self.ranges.range(start..).next() {
            if ns < end {
                return false;
            }
            if ns == end {
                e = ne;
                self.ranges.remove(&ns);
            }
        }
        self.ranges.insert(s, e);
        self.total += end - start;
        true
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
