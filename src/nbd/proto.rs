//! The NBD wire format (NetworkBlockDevice/nbd `doc/proto.md`): constants, and pure
//! encoders and decoders of the structures a read-only client exchanges.
//!
//! Subset: fixed newstyle handshake with `NBD_OPT_STRUCTURED_REPLY`,
//! `NBD_OPT_SET_META_CONTEXT`, `NBD_OPT_GO` (`NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE`)
//! and the `NBD_OPT_EXPORT_NAME` fallback; in transmission, `NBD_CMD_READ`,
//! `NBD_CMD_BLOCK_STATUS` and `NBD_CMD_DISC`, with simple replies and the structured
//! chunks `NONE`, `OFFSET_DATA`, `OFFSET_HOLE`, `BLOCK_STATUS`, `ERROR`, `ERROR_OFFSET`
//! (and any other error chunk). No TLS, no extended headers, no writes.
//!
//! Everything the server sends is untrusted: every length is compared with a cap
//! below before the caller allocates for it, and decoders take the exact payload
//! the header announced (pcap-parser style), so they never read past it.

use nom::number::complete::{be_u16, be_u32, be_u64};
use nom::Parser;

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation; also starts every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The second magic of oldstyle negotiation (unsupported: it cannot name an export).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server, 16 bits).
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags (32 bits).
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags (16 bits).
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Options.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types; errors have bit 31 set.
pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_META_CONTEXT: u32 = 4;
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

/// Information types of `NBD_REP_INFO`.
pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;
/// Command flags.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flags.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;
/// Structured reply types; error chunks have bit 15 set.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
pub const NBD_REPLY_TYPE_ERROR: u16 = NBD_REPLY_TYPE_ERROR_BIT | 1;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_ERROR_BIT | 2;

/// `base:allocation` flags.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
pub const NBD_STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME` flag (QEMU docs/interop/nbd.txt).
pub const NBD_STATE_DIRTY: u32 = 1 << 0;

/// The allocation context every server with block status offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// QEMU's dirty-bitmap contexts are this prefix plus the bitmap's export name.
pub const QEMU_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Size of the server greeting (NBDMAGIC, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Size of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of a request.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header (magic included).
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header (magic included).
pub const CHUNK_HEADER_LEN: usize = 20;
/// Size of the `NBD_OPT_EXPORT_NAME` answer (size + flags) before the optional zeroes.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
/// The zero padding after it, unless `NBD_FLAG_C_NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES: usize = 124;

/// Longest option reply payload accepted: the largest legitimate one is a string
/// (4 KiB), so anything near this is a broken or hostile server.
pub const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Option replies accepted for one option (REP_INFO / REP_META_CONTEXT lists), so a
/// server cannot keep the client in a loop.
pub const MAX_OPTION_REPLIES: usize = 256;
/// Longest NBD string (export names, context names, error messages).
pub const MAX_STRING: usize = 4096;
/// Largest read sent in one request: the payload every server must accept.
pub const MAX_READ_REQUEST: u32 = 32 * 1024 * 1024;
/// Read requests one client call keeps in flight at once: their requests fit the
/// socket's buffer whatever the server does with its replies (no deadlock while the
/// client is still sending), and the server gets enough to read side by side.
pub const MAX_READS_IN_FLIGHT: usize = 32;
/// Structured chunks accepted in the reply to one read (each describes >= 1 byte;
/// servers use >= 512 where they can, so 32 MiB needs at most 65,536 of them).
pub const MAX_READ_CHUNKS: usize = 1 << 17;
/// Largest block status request; the reply may cover less, and we ask again.
pub const MAX_BLOCK_STATUS_REQUEST: u32 = 0xffff_0000;
/// Most descriptors accepted in one block status chunk (the spec's SHOULD bound).
/// The client further bounds it by the requested length: every descriptor is at
/// least one byte and all but the last lie inside the request.
pub const MAX_BLOCK_STATUS_DESCRIPTORS: u32 = 1 << 20;
/// Chunks accepted in the reply to one block status request.
pub const MAX_STATUS_CHUNKS: usize = 64;
/// Longest error chunk payload accepted (a 4 KiB message plus fixed fields, with room
/// for error types we do not know).
pub const MAX_ERROR_CHUNK: u32 = 64 * 1024;

/// What is wrong with bytes the server sent (or with a request we were about to
/// encode); the client adds the URI and the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ProtoError {
    pub what: &'static str,
    pub reason: String,
}

/// Result of a decoder.
pub type PResult<T> = std::result::Result<T, ProtoError>;

fn perr(what: &'static str, reason: impl Into<String>) -> ProtoError {
    ProtoError {
        what,
        reason: reason.into(),
    }
}

/// Runs a nom parser over an exactly-sized structure; nom's errors stay here.
fn run<'a, O>(
    mut parser: impl Parser<&'a [u8], Output = O, Error = nom::error::Error<&'a [u8]>>,
    input: &'a [u8],
    what: &'static str,
) -> PResult<O> {
    match parser.parse(input) {
        Ok((_, out)) => Ok(out),
        Err(_) => Err(perr(what, format!("truncated ({} bytes)", input.len()))),
    }
}

/// Requires `buf.len() == len` (the caller read exactly what the header announced).
fn exact(buf: &[u8], len: usize, what: &'static str) -> PResult<()> {
    if buf.len() == len {
        Ok(())
    } else {
        Err(perr(
            what,
            format!("length {} where {len} is required", buf.len()),
        ))
    }
}

/// A string from the server, made safe to print: invalid UTF-8 replaced, control
/// characters escaped (a server must not be able to drive the user's terminal), and
/// cut at [`MAX_STRING`].
pub fn display_string(bytes: &[u8]) -> String {
    let bytes = bytes.get(..MAX_STRING).unwrap_or(bytes);
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn put_string(out: &mut Vec<u8>, s: &str, what: &'static str) -> PResult<()> {
    if s.len() > MAX_STRING || s.contains('\0') {
        return Err(perr(
            what,
            format!(
                "{} bytes long or contains NUL (NBD strings are at most {MAX_STRING} bytes, without NUL)",
                s.len()
            ),
        ));
    }
    // OK: at most MAX_STRING, checked above.
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

// ---------------------------------------------------------------- handshake

/// Decodes the server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn parse_greeting(buf: &[u8]) -> PResult<u16> {
    const WHAT: &str = "server greeting";
    exact(buf, GREETING_LEN, WHAT)?;
    let (magic, opt_magic, flags) = run((be_u64, be_u64, be_u16), buf, WHAT)?;
    if magic != NBDMAGIC {
        return Err(perr(
            WHAT,
            format!("not an NBD server (magic {magic:#018x}, expected NBDMAGIC)"),
        ));
    }
    if opt_magic == CLISERV_MAGIC {
        return Err(perr(
            WHAT,
            "the server uses oldstyle negotiation, which cannot select an export (unsupported)",
        ));
    }
    if opt_magic != IHAVEOPT {
        return Err(perr(
            WHAT,
            format!("unknown second magic {opt_magic:#018x} (expected IHAVEOPT)"),
        ));
    }
    Ok(flags)
}

/// The client flags sent after the greeting.
pub fn encode_client_flags(flags: u32) -> [u8; 4] {
    flags.to_be_bytes()
}

/// An option request: IHAVEOPT, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> PResult<Vec<u8>> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&l| l <= MAX_OPTION_REPLY)
        .ok_or_else(|| perr("option request", format!("{} bytes of data", data.len())))?;
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Data of `NBD_OPT_GO` / `NBD_OPT_INFO`: export name, then information requests.
pub fn encode_go_data(export: &str, info_requests: &[u16]) -> PResult<Vec<u8>> {
    let mut out = Vec::with_capacity(8 + export.len() + 2 * info_requests.len());
    put_string(&mut out, export, "export name")?;
    let n = u16::try_from(info_requests.len())
        .map_err(|_| perr("NBD_OPT_GO", "too many information requests"))?;
    out.extend_from_slice(&n.to_be_bytes());
    for r in info_requests {
        out.extend_from_slice(&r.to_be_bytes());
    }
    Ok(out)
}

/// Data of `NBD_OPT_SET_META_CONTEXT`: export name, then the context queries.
pub fn encode_meta_context_data(export: &str, queries: &[&str]) -> PResult<Vec<u8>> {
    let mut out = Vec::new();
    put_string(&mut out, export, "export name")?;
    let n = u32::try_from(queries.len())
        .map_err(|_| perr("NBD_OPT_SET_META_CONTEXT", "too many queries"))?;
    out.extend_from_slice(&n.to_be_bytes());
    for q in queries {
        put_string(&mut out, q, "metadata context name")?;
    }
    Ok(out)
}

/// The header of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this answers (must echo the one sent).
    pub option: u32,
    pub reply_type: u32,
    /// Payload length, already checked against [`MAX_OPTION_REPLY`].
    pub length: u32,
}

impl OptionReplyHeader {
    /// True for the error replies (bit 31).
    pub fn is_error(&self) -> bool {
        self.reply_type & NBD_REP_FLAG_ERROR != 0
    }
}

/// Decodes an option reply header; refuses payloads over [`MAX_OPTION_REPLY`]
/// before anyone allocates for them.
pub fn parse_option_reply_header(buf: &[u8]) -> PResult<OptionReplyHeader> {
    const WHAT: &str = "option reply header";
    exact(buf, OPTION_REPLY_HEADER_LEN, WHAT)?;
    let (magic, option, reply_type, length) = run((be_u64, be_u32, be_u32, be_u32), buf, WHAT)?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(perr(
            WHAT,
            format!("bad magic {magic:#018x} (expected {OPTION_REPLY_MAGIC:#x})"),
        ));
    }
    if length > MAX_OPTION_REPLY {
        return Err(perr(
            WHAT,
            format!(
                "payload of {length} bytes exceeds the cap of {MAX_OPTION_REPLY} (MAX_OPTION_REPLY)"
            ),
        ));
    }
    Ok(OptionReplyHeader {
        option,
        reply_type,
        length,
    })
}

/// Size constraints from `NBD_INFO_BLOCK_SIZE` (or the defaults when not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Requests must be aligned to this (a power of two, at most 64 KiB).
    pub minimum: u32,
    pub preferred: u32,
    /// Largest payload the server accepts in one request.
    pub maximum: u32,
}

impl Default for BlockSizes {
    /// What a server without `NBD_INFO_BLOCK_SIZE` must support (spec "Size
    /// constraints"): any alignment, 32 MiB payloads.
    fn default() -> Self {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_READ_REQUEST,
        }
    }
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize(BlockSizes),
    Name(String),
    Description(String),
    /// A type we do not know (the spec says: ignore it).
    Unknown(u16),
}

/// Decodes the payload of an `NBD_REP_INFO` reply.
pub fn parse_info(payload: &[u8]) -> PResult<Info> {
    const WHAT: &str = "NBD_REP_INFO";
    let (rest, kind) = be_u16::<_, nom::error::Error<&[u8]>>(payload).map_err(|_| {
        perr(
            WHAT,
            format!("{} bytes, too short for a type", payload.len()),
        )
    })?;
    match kind {
        NBD_INFO_EXPORT => {
            exact(payload, 12, "NBD_INFO_EXPORT")?;
            let (size, flags) = run((be_u64, be_u16), rest, "NBD_INFO_EXPORT")?;
            Ok(Info::Export { size, flags })
        }
        NBD_INFO_BLOCK_SIZE => {
            const BS: &str = "NBD_INFO_BLOCK_SIZE";
            exact(payload, 14, BS)?;
            let (minimum, preferred, maximum) = run((be_u32, be_u32, be_u32), rest, BS)?;
            if !minimum.is_power_of_two() || minimum > 64 * 1024 {
                return Err(perr(
                    BS,
                    format!("minimum block size {minimum} is not a power of two up to 65536"),
                ));
            }
            if !preferred.is_power_of_two() || preferred < minimum.max(512) {
                return Err(perr(
                    BS,
                    format!(
                        "preferred block size {preferred} is not a power of two >= max(minimum {minimum}, 512)"
                    ),
                ));
            }
            if maximum < preferred {
                return Err(perr(
                    BS,
                    format!(
                        "maximum payload {maximum} is below the preferred block size {preferred}"
                    ),
                ));
            }
            Ok(Info::BlockSize(BlockSizes {
                minimum,
                preferred,
                maximum,
            }))
        }
        NBD_INFO_NAME => Ok(Info::Name(display_string(rest))),
        NBD_INFO_DESCRIPTION => Ok(Info::Description(display_string(rest))),
        other => Ok(Info::Unknown(other)),
    }
}

/// Decodes the payload of an `NBD_REP_META_CONTEXT` reply: (context id, name).
pub fn parse_meta_context(payload: &[u8]) -> PResult<(u32, String)> {
    const WHAT: &str = "NBD_REP_META_CONTEXT";
    let (name, id) = be_u32::<_, nom::error::Error<&[u8]>>(payload)
        .map_err(|_| perr(WHAT, format!("{} bytes, too short", payload.len())))?;
    if name.is_empty() || name.len() > MAX_STRING {
        return Err(perr(
            WHAT,
            format!(
                "context name of {} bytes (expected 1..={MAX_STRING})",
                name.len()
            ),
        ));
    }
    let name = std::str::from_utf8(name)
        .map_err(|_| perr(WHAT, "context name is not UTF-8"))?
        .to_string();
    Ok((id, name))
}

/// Spec name and meaning of an option reply type, for messages.
pub fn reply_type_name(reply_type: u32) -> String {
    let s = match reply_type {
        NBD_REP_ACK => "NBD_REP_ACK",
        NBD_REP_SERVER => "NBD_REP_SERVER",
        NBD_REP_INFO => "NBD_REP_INFO",
        NBD_REP_META_CONTEXT => "NBD_REP_META_CONTEXT",
        NBD_REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP (option not supported)",
        NBD_REP_ERR_POLICY => "NBD_REP_ERR_POLICY (forbidden by server policy)",
        NBD_REP_ERR_INVALID => "NBD_REP_ERR_INVALID (invalid request)",
        NBD_REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM (not supported on the server's platform)",
        NBD_REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD (the server requires TLS)",
        NBD_REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN (no such export)",
        NBD_REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN (the server is shutting down)",
        NBD_REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        NBD_REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG (request or reply too large)",
        other => return format!("reply type {other:#x}"),
    };
    s.to_string()
}

/// Spec name of an option, for messages.
pub fn option_name(option: u32) -> String {
    let s = match option {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        NBD_OPT_ABORT => "NBD_OPT_ABORT",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        other => return format!("option {other}"),
    };
    s.to_string()
}

/// Decodes the answer to `NBD_OPT_EXPORT_NAME`: (size, transmission flags).
pub fn parse_export_name_reply(buf: &[u8]) -> PResult<(u64, u16)> {
    const WHAT: &str = "NBD_OPT_EXPORT_NAME reply";
    exact(buf, EXPORT_NAME_REPLY_LEN, WHAT)?;
    run((be_u64, be_u16), buf, WHAT)
}

// ---------------------------------------------------------------- transmission

/// A request header (no payload: this client never writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

/// Encodes a request.
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    let fields: [&[u8]; 6] = [
        &REQUEST_MAGIC.to_be_bytes(),
        &r.flags.to_be_bytes(),
        &r.command.to_be_bytes(),
        &r.cookie.to_be_bytes(),
        &r.offset.to_be_bytes(),
        &r.length.to_be_bytes(),
    ];
    let mut at = 0;
    for f in fields {
        // OK: the six fields add up to REQUEST_LEN exactly.
        out[at..at + f.len()].copy_from_slice(f);
        at += f.len();
    }
    out
}

/// Which kind of reply a 4-byte magic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Simple,
    Structured,
}

/// Classifies a reply by its magic (so the caller knows how many bytes follow).
pub fn reply_kind(magic: [u8; 4]) -> PResult<ReplyKind> {
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => Ok(ReplyKind::Simple),
        STRUCTURED_REPLY_MAGIC => Ok(ReplyKind::Structured),
        other => Err(perr("reply", format!("bad magic {other:#010x}"))),
    }
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

/// Decodes a simple reply header (magic included).
pub fn parse_simple_reply(buf: &[u8]) -> PResult<SimpleReply> {
    const WHAT: &str = "simple reply";
    exact(buf, SIMPLE_REPLY_LEN, WHAT)?;
    let (magic, error, cookie) = run((be_u32, be_u32, be_u64), buf, WHAT)?;
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(perr(WHAT, format!("bad magic {magic:#010x}")));
    }
    Ok(SimpleReply { error, cookie })
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub chunk_type: u16,
    pub cookie: u64,
    /// Payload length; not yet checked (the cap depends on the chunk type).
    pub length: u32,
}

impl ChunkHeader {
    /// The last chunk of its reply.
    pub fn is_done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }
    /// An error chunk (bit 15), known type or not.
    pub fn is_error(&self) -> bool {
        self.chunk_type & NBD_REPLY_TYPE_ERROR_BIT != 0
    }
}

/// Decodes a structured reply chunk header (magic included).
pub fn parse_chunk_header(buf: &[u8]) -> PResult<ChunkHeader> {
    const WHAT: &str = "structured reply chunk";
    exact(buf, CHUNK_HEADER_LEN, WHAT)?;
    let (magic, flags, chunk_type, cookie, length) =
        run((be_u32, be_u16, be_u16, be_u64, be_u32), buf, WHAT)?;
    if magic != STRUCTURED_REPLY_MAGIC {
        return Err(perr(WHAT, format!("bad magic {magic:#010x}")));
    }
    Ok(ChunkHeader {
        flags,
        chunk_type,
        cookie,
        length,
    })
}

/// Spec name of a chunk type, for messages.
pub fn chunk_type_name(t: u16) -> String {
    let s = match t {
        NBD_REPLY_TYPE_NONE => "NBD_REPLY_TYPE_NONE",
        NBD_REPLY_TYPE_OFFSET_DATA => "NBD_REPLY_TYPE_OFFSET_DATA",
        NBD_REPLY_TYPE_OFFSET_HOLE => "NBD_REPLY_TYPE_OFFSET_HOLE",
        NBD_REPLY_TYPE_BLOCK_STATUS => "NBD_REPLY_TYPE_BLOCK_STATUS",
        NBD_REPLY_TYPE_ERROR => "NBD_REPLY_TYPE_ERROR",
        NBD_REPLY_TYPE_ERROR_OFFSET => "NBD_REPLY_TYPE_ERROR_OFFSET",
        other => return format!("chunk type {other:#06x}"),
    };
    s.to_string()
}

/// Decodes the 8-byte offset that starts an `OFFSET_DATA` payload.
pub fn parse_data_offset(buf: &[u8]) -> PResult<u64> {
    exact(buf, 8, "NBD_REPLY_TYPE_OFFSET_DATA")?;
    run(be_u64, buf, "NBD_REPLY_TYPE_OFFSET_DATA")
}

/// Decodes an `OFFSET_HOLE` payload: (offset, nonzero length).
pub fn parse_offset_hole(buf: &[u8]) -> PResult<(u64, u32)> {
    const WHAT: &str = "NBD_REPLY_TYPE_OFFSET_HOLE";
    exact(buf, 12, WHAT)?;
    let (offset, len) = run((be_u64, be_u32), buf, WHAT)?;
    if len == 0 {
        return Err(perr(
            WHAT,
            format!("zero-length hole at offset {offset:#x}"),
        ));
    }
    Ok((offset, len))
}

/// One block status descriptor as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    /// Nonzero.
    pub length: u32,
    pub flags: u32,
}

/// Checks a `BLOCK_STATUS` payload length (from the chunk header, before reading the
/// payload): 4 + 8 n with 1 <= n <= `max_descriptors`.
pub fn check_block_status_length(length: u32, max_descriptors: u32) -> PResult<()> {
    const WHAT: &str = "NBD_REPLY_TYPE_BLOCK_STATUS";
    let n = length.checked_sub(4).filter(|d| d % 8 == 0).map(|d| d / 8);
    match n {
        Some(n) if (1..=max_descriptors).contains(&n) => Ok(()),
        Some(n) => Err(perr(
            WHAT,
            format!("{n} descriptors (expected 1..={max_descriptors} for this request)"),
        )),
        None => Err(perr(
            WHAT,
            format!("payload length {length} is not 4 + a multiple of 8"),
        )),
    }
}

/// Decodes a `BLOCK_STATUS` payload: (context id, descriptors). Zero-length
/// descriptors are refused: they would let a server stall the client forever.
pub fn parse_block_status(
    buf: &[u8],
    max_descriptors: u32,
) -> PResult<(u32, Vec<BlockDescriptor>)> {
    const WHAT: &str = "NBD_REPLY_TYPE_BLOCK_STATUS";
    let length = u32::try_from(buf.len()).map_err(|_| perr(WHAT, "payload longer than 4 GiB"))?;
    check_block_status_length(length, max_descriptors)?;
    let (rest, context) = be_u32::<_, nom::error::Error<&[u8]>>(buf)
        .map_err(|_| perr(WHAT, format!("{} bytes, too short", buf.len())))?;
    let mut out = Vec::with_capacity(rest.len() / 8);
    for (i, d) in rest.chunks_exact(8).enumerate() {
        let (length, flags) = run((be_u32, be_u32), d, WHAT)?;
        if length == 0 {
            return Err(perr(WHAT, format!("descriptor {i} has length 0")));
        }
        out.push(BlockDescriptor { length, flags });
    }
    Ok((context, out))
}

/// An error chunk, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkError {
    /// NBD error number (nonzero).
    pub error: u32,
    /// The server's message, printable.
    pub message: String,
    /// Where the error happened (`ERROR_OFFSET`).
    pub offset: Option<u64>,
}

/// Decodes an error chunk payload (`ERROR`, `ERROR_OFFSET`, or an unknown type with
/// bit 15 set, which shares the error and message fields).
pub fn parse_error_chunk(chunk_type: u16, buf: &[u8]) -> PResult<ChunkError> {
    const WHAT: &str = "error chunk";
    let tail = if chunk_type == NBD_REPLY_TYPE_ERROR_OFFSET {
        8
    } else {
        0
    };
    let (rest, (error, msg_len)) = (be_u32::<_, nom::error::Error<&[u8]>>, be_u16)
        .parse(buf)
        .map_err(|_| perr(WHAT, format!("{} bytes, too short", buf.len())))?;
    let msg_len = usize::from(msg_len);
    let message = rest
        .get(..msg_len)
        .filter(|_| rest.len() >= msg_len + tail)
        .ok_or_else(|| {
            perr(
                WHAT,
                format!(
                    "message length {msg_len} does not fit the {}-byte payload",
                    buf.len()
                ),
            )
        })?;
    let offset = if tail == 8 {
        let at = rest.get(msg_len..msg_len + 8).unwrap_or_default();
        Some(run(be_u64, at, WHAT)?)
    } else {
        None
    };
    if error == 0 {
        return Err(perr(WHAT, "error chunk with error number 0"));
    }
    Ok(ChunkError {
        error,
        message: display_string(message),
        offset,
    })
}

/// Name and meaning of an NBD error number (spec "Error values"); unknown values are
/// to be treated as `NBD_EINVAL`, but we still show the number.
pub fn errno_name(error: u32) -> String {
    let s = match error {
        1 => "NBD_EPERM (operation not permitted)",
        5 => "NBD_EIO (input/output error)",
        12 => "NBD_ENOMEM (cannot allocate memory)",
        22 => "NBD_EINVAL (invalid argument)",
        28 => "NBD_ENOSPC (no space left on device)",
        75 => "NBD_EOVERFLOW (value too large)",
        95 => "NBD_ENOTSUP (operation not supported)",
        108 => "NBD_ESHUTDOWN (server is shutting down)",
        other => return format!("error {other}"),
    };
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        let mut g = Vec::new();
        g.extend_from_slice(&NBDMAGIC.to_be_bytes());
        g.extend_from_slice(&IHAVEOPT.to_be_bytes());
        g.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_greeting(&g), Ok(3));
        assert!(parse_greeting(&g[..17]).is_err());
        let mut old = g.clone();
        old[8..16].copy_from_slice(&CLISERV_MAGIC.to_be_bytes());
        assert!(parse_greeting(&old)
            .unwrap_err()
            .reason
            .contains("oldstyle"));
        let mut bad = g.clone();
        bad[0] = b'X';
        assert!(parse_greeting(&bad)
            .unwrap_err()
            .reason
            .contains("not an NBD server"));
    }

    #[test]
    fn option_encoding() {
        let o = encode_option(
            NBD_OPT_GO,
            &encode_go_data("disk", &[NBD_INFO_BLOCK_SIZE]).unwrap(),
        )
        .unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(b"IHAVEOPT");
        want.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 12]);
        want.extend_from_slice(&[0, 0, 0, 4]);
        want.extend_from_slice(b"disk");
        want.extend_from_slice(&[0, 1, 0, 3]);
        assert_eq!(o, want);

        let m = encode_meta_context_data("", &["base:allocation"]).unwrap();
        let mut want = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15];
        want.extend_from_slice(b"base:allocation");
        assert_eq!(m, want);
        assert!(encode_go_data(&"x".repeat(MAX_STRING + 1), &[]).is_err());
        assert!(encode_meta_context_data("", &["a\0b"]).is_err());
    }

    fn option_reply_header(option: u32, reply_type: u32, length: u32) -> Vec<u8> {
        let mut h = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&option.to_be_bytes());
        h.extend_from_slice(&reply_type.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    }

    #[test]
    fn option_reply_header_caps_length() {
        let h = parse_option_reply_header(&option_reply_header(7, NBD_REP_ACK, 0)).unwrap();
        assert_eq!((h.option, h.reply_type, h.length), (7, NBD_REP_ACK, 0));
        let e =
            parse_option_reply_header(&option_reply_header(7, NBD_REP_INFO, u32::MAX)).unwrap_err();
        assert!(e.reason.contains("exceeds the cap"), "{e}");
        let mut bad = option_reply_header(7, 1, 0);
        bad[0] ^= 1;
        assert!(parse_option_reply_header(&bad).is_err());
        assert!(parse_option_reply_header(&bad[..19]).is_err());
        assert!(
            parse_option_reply_header(&option_reply_header(7, NBD_REP_ERR_UNKNOWN, 0))
                .unwrap()
                .is_error()
        );
    }

    #[test]
    fn info_items() {
        let mut e = vec![0, 0];
        e.extend_from_slice(&(1u64 << 30).to_be_bytes());
        e.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            parse_info(&e),
            Ok(Info::Export {
                size: 1 << 30,
                flags: 3
            })
        );
        assert!(parse_info(&e[..11]).is_err());
        let bs = |min: u32, pref: u32, max: u32| {
            let mut b = vec![0, 3];
            for v in [min, pref, max] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            parse_info(&b)
        };
        assert_eq!(
            bs(1, 4096, 1 << 25),
            Ok(Info::BlockSize(BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 1 << 25
            }))
        );
        assert!(bs(3, 4096, 1 << 25).is_err());
        assert!(bs(1 << 17, 1 << 17, 1 << 25).is_err());
        assert!(bs(512, 256, 1 << 25).is_err());
        assert!(bs(512, 4096, 1024).is_err());
        assert!(parse_info(&[0]).is_err());
        assert_eq!(parse_info(&[0, 9, 1, 2]), Ok(Info::Unknown(9)));
        assert_eq!(
            parse_info(b"\0\x01ab\x1b"),
            Ok(Info::Name("ab\\u{1b}".into()))
        );
    }

    #[test]
    fn meta_context() {
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"base:allocation");
        assert_eq!(
            parse_meta_context(&p),
            Ok((5, "base:allocation".to_string()))
        );
        assert!(parse_meta_context(&p[..4]).is_err());
        assert!(parse_meta_context(&[0, 0, 0, 1, 0xff]).is_err());
    }

    #[test]
    fn request_layout() {
        let r = encode_request(&Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie: 0x0102_0304_0506_0708,
            offset: 0x1000,
            length: 512,
        });
        assert_eq!(&r[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&r[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&r[16..24], &0x1000u64.to_be_bytes());
        assert_eq!(&r[24..], &512u32.to_be_bytes());
    }

    #[test]
    fn reply_headers() {
        assert_eq!(
            reply_kind(SIMPLE_REPLY_MAGIC.to_be_bytes()),
            Ok(ReplyKind::Simple)
        );
        assert_eq!(
            reply_kind(STRUCTURED_REPLY_MAGIC.to_be_bytes()),
            Ok(ReplyKind::Structured)
        );
        assert!(reply_kind([0; 4]).is_err());
        let mut s = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        s.extend_from_slice(&5u32.to_be_bytes());
        s.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            parse_simple_reply(&s),
            Ok(SimpleReply {
                error: 5,
                cookie: 9
            })
        );
        let mut c = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        c.extend_from_slice(&[0, 1, 0, 5]);
        c.extend_from_slice(&9u64.to_be_bytes());
        c.extend_from_slice(&12u32.to_be_bytes());
        let h = parse_chunk_header(&c).unwrap();
        assert!(h.is_done() && !h.is_error());
        assert_eq!((h.chunk_type, h.cookie, h.length), (5, 9, 12));
    }

    #[test]
    fn holes_and_data() {
        let mut h = 4096u64.to_be_bytes().to_vec();
        h.extend_from_slice(&512u32.to_be_bytes());
        assert_eq!(parse_offset_hole(&h), Ok((4096, 512)));
        h[11] = 0;
        h[10] = 0;
        assert!(parse_offset_hole(&h)
            .unwrap_err()
            .reason
            .contains("zero-length"));
        assert!(parse_offset_hole(&h[..11]).is_err());
        assert_eq!(parse_data_offset(&7u64.to_be_bytes()), Ok(7));
    }

    #[test]
    fn block_status() {
        let mut p = 2u32.to_be_bytes().to_vec();
        for (l, f) in [(4096u32, 0u32), (8192, 3)] {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        let (ctx, d) = parse_block_status(&p, 16).unwrap();
        assert_eq!(ctx, 2);
        assert_eq!(
            d,
            vec![
                BlockDescriptor {
                    length: 4096,
                    flags: 0
                },
                BlockDescriptor {
                    length: 8192,
                    flags: 3
                }
            ]
        );
        assert!(parse_block_status(&p, 1).is_err());
        assert!(parse_block_status(&p[..4], 16).is_err());
        assert!(parse_block_status(&p[..13], 16).is_err());
        let mut zero = p.clone();
        zero[4..8].copy_from_slice(&[0; 4]);
        assert!(parse_block_status(&zero, 16)
            .unwrap_err()
            .reason
            .contains("length 0"));
        assert!(check_block_status_length(u32::MAX - 3, MAX_BLOCK_STATUS_DESCRIPTORS).is_err());
    }

    #[test]
    fn error_chunks() {
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        assert_eq!(
            parse_error_chunk(NBD_REPLY_TYPE_ERROR, &p),
            Ok(ChunkError {
                error: 5,
                message: "bad".into(),
                offset: None
            })
        );
        // ERROR_OFFSET needs 8 more bytes after the message.
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, &p).is_err());
        p.extend_from_slice(&512u64.to_be_bytes());
        assert_eq!(
            parse_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, &p)
                .unwrap()
                .offset,
            Some(512)
        );
        let mut long = 5u32.to_be_bytes().to_vec();
        long.extend_from_slice(&100u16.to_be_bytes());
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR, &long).is_err());
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_error_chunk(NBD_REPLY_TYPE_ERROR, &[0, 0]).is_err());
    }

    #[test]
    fn no_panic_on_any_truncation() {
        let mut bs = 1u32.to_be_bytes().to_vec();
        bs.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 1]);
        let mut err = 22u32.to_be_bytes().to_vec();
        err.extend_from_slice(&[0, 2, b'h', b'i', 0, 0, 0, 0, 0, 0, 0, 1]);
        for n in 0..=bs.len() {
            let _ = parse_block_status(&bs[..n], 4);
        }
        for n in 0..=err.len() {
            let _ = parse_error_chunk(NBD_REPLY_TYPE_ERROR_OFFSET, &err[..n]);
            let _ = parse_error_chunk(NBD_REPLY_TYPE_ERROR, &err[..n]);
            let _ = parse_info(&err[..n]);
            let _ = parse_meta_context(&err[..n]);
        }
    }
}
