//! The client against a scripted in-memory server: the happy path, every protocol
//! rule the client enforces, and no-panic sweeps (every truncation, every bit flip)
//! over a whole session.

use std::io::{Cursor, Read, Write};

use super::*;
use crate::nbd::proto::*;

const URI: &str = "nbd://test.invalid/";

/// Replays `input` as the server's bytes and records what the client sends.
struct Scripted {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Scripted {
    fn new(input: Vec<u8>) -> Self {
        Scripted {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds what a server sends.
#[derive(Default, Clone)]
struct Server(Vec<u8>);

impl Server {
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn greeting(self, flags: u16) -> Self {
        self.raw(&NBDMAGIC.to_be_bytes())
            .raw(&IHAVEOPT.to_be_bytes())
            .raw(&flags.to_be_bytes())
    }
    fn opt(self, option: u32, reply: u32, payload: &[u8]) -> Self {
        self.raw(&OPTION_REPLY_MAGIC.to_be_bytes())
            .raw(&option.to_be_bytes())
            .raw(&reply.to_be_bytes())
            .raw(&(payload.len() as u32).to_be_bytes())
            .raw(payload)
    }
    fn meta(self, id: u32, name: &str) -> Self {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        self.opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, &p)
    }
    fn info_export(self, size: u64, flags: u16) -> Self {
        let mut p = vec![0, 0];
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        self.opt(NBD_OPT_GO, NBD_REP_INFO, &p)
    }
    fn info_block(self, min: u32, pref: u32, max: u32) -> Self {
        let mut p = vec![0, 3];
        for v in [min, pref, max] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        self.opt(NBD_OPT_GO, NBD_REP_INFO, &p)
    }
    fn chunk(self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Self {
        self.raw(&STRUCTURED_REPLY_MAGIC.to_be_bytes())
            .raw(&flags.to_be_bytes())
            .raw(&kind.to_be_bytes())
            .raw(&cookie.to_be_bytes())
            .raw(&(payload.len() as u32).to_be_bytes())
            .raw(payload)
    }
    fn simple(self, error: u32, cookie: u64) -> Self {
        self.raw(&SIMPLE_REPLY_MAGIC.to_be_bytes())
            .raw(&error.to_be_bytes())
            .raw(&cookie.to_be_bytes())
    }
    /// A handshake with a server that refuses structured replies (simple replies
    /// only, no metadata contexts), on a read-only export of `size`.
    fn unstructured(size: u64) -> Self {
        Server::default()
            .greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)
            .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[])
            .info_export(size, 1)
            .opt(NBD_OPT_GO, NBD_REP_ACK, &[])
    }
    /// A full handshake granting base:allocation (id 1) on an export of `size`.
    fn handshake(size: u64, min_block: u32) -> Self {
        Server::default()
            .greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES)
            .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
            .meta(1, BASE_ALLOCATION)
            .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[])
            .info_export(size, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY)
            .info_block(min_block, 4096, 1 << 25)
            .opt(NBD_OPT_GO, NBD_REP_ACK, &[])
    }
}

fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(bytes);
    p
}

fn hole(offset: u64, len: u32) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(&len.to_be_bytes());
    p
}

fn status(context: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let mut p = context.to_be_bytes().to_vec();
    for (len, flags) in descriptors {
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
    }
    p
}

fn error_payload(code: u32, msg: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p
}

fn connect(server: Server) -> Result<NbdClient<Scripted>> {
    NbdClient::handshake(Scripted::new(server.0), URI, "", &[BASE_ALLOCATION])
}

fn err_text(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => crate::error::chain(&e),
    }
}

const DONE: u16 = NBD_REPLY_FLAG_DONE;

#[test]
fn handshake_then_read_with_chunks_in_any_order() {
    let payload: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let server = Server::handshake(1 << 20, 1)
        // Second half first, then a hole for the first half, then NONE.
        .chunk(
            0,
            NBD_REPLY_TYPE_OFFSET_DATA,
            1,
            &data(2048, &payload[2048..]),
        )
        .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 2048))
        .chunk(DONE, NBD_REPLY_TYPE_NONE, 1, &[]);
    let mut c = connect(server).unwrap();
    assert_eq!(c.size(), 1 << 20);
    assert_eq!(c.context_id(BASE_ALLOCATION), Some(1));
    assert!(c.structured_replies());
    let mut buf = vec![0xaa; 4096];
    c.read(0, &mut buf).unwrap();
    assert!(buf[..2048].iter().all(|&b| b == 0));
    assert_eq!(&buf[2048..], &payload[2048..]);
    assert_eq!(c.bytes_read(), 2048);

    // What the client sent: flags with NO_ZEROES, options, then one read request.
    let out = &c.stream.output;
    assert_eq!(
        &out[..4],
        &(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes()
    );
    let read = encode_request(&Request {
        flags: 0,
        command: NBD_CMD_READ,
        cookie: 1,
        offset: 0,
        length: 4096,
    });
    assert!(out.ends_with(&read));
    drop(c);
}

#[test]
fn disconnect_on_drop() {
    let mut sc = Scripted::new(Server::handshake(4096, 1).0);
    let c = NbdClient::handshake(&mut sc, URI, "", &[BASE_ALLOCATION]).unwrap();
    drop(c);
    let disc = encode_request(&Request {
        flags: 0,
        command: NBD_CMD_DISC,
        cookie: 1,
        offset: 0,
        length: 0,
    });
    assert!(sc.output.ends_with(&disc));
}

#[test]
fn read_split_into_max_payload_requests() {
    let size = 3 * 1024 * 1024;
    let server = Server::default()
        .greeting(NBD_FLAG_FIXED_NEWSTYLE)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
        .meta(7, BASE_ALLOCATION)
        .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[])
        .info_export(size, 1)
        .info_block(512, 4096, 1 << 20)
        .opt(NBD_OPT_GO, NBD_REP_ACK, &[])
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 1 << 20))
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_HOLE, 2, &hole(1 << 20, 1 << 20))
        .chunk(
            DONE,
            NBD_REPLY_TYPE_OFFSET_DATA,
            3,
            &data(2 << 20, &[7; 4096]),
        );
    let mut c = connect(server).unwrap();
    let mut buf = vec![1u8; (2 << 20) + 4096];
    c.read(0, &mut buf).unwrap();
    assert!(buf[..2 << 20].iter().all(|&b| b == 0));
    assert!(buf[2 << 20..].iter().all(|&b| b == 7));
    // Without NO_ZEROES offered, the client must not ask for it.
    assert_eq!(
        &c.stream.output[..4],
        &NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes()
    );
}

#[test]
fn unaligned_read_respects_minimum_block_size() {
    let block = |fill: u8| vec![fill; 512];
    let server = Server::handshake(4096, 512)
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &block(1)))
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 2, &data(512, &block(2)))
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 3, &data(1024, &block(3)));
    let mut c = connect(server).unwrap();
    let mut buf = vec![0u8; 1000];
    c.read(100, &mut buf).unwrap();
    assert!(buf[..412].iter().all(|&b| b == 1));
    assert!(buf[412..924].iter().all(|&b| b == 2));
    assert!(buf[924..].iter().all(|&b| b == 3));
    for (cookie, offset) in [(1, 0), (2, 512), (3, 1024)] {
        let req = encode_request(&Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie,
            offset,
            length: 512,
        });
        assert!(
            c.stream.output.windows(REQUEST_LEN).any(|w| w == req),
            "aligned request {cookie} at {offset} not sent"
        );
    }
}

#[test]
fn simple_replies_without_structured_negotiation() {
    let server = Server::unstructured(1024)
        .simple(0, 1)
        .raw(&[9; 16])
        .simple(5, 2);
    let mut c = connect(server).unwrap();
    assert!(!c.structured_replies());
    assert!(c.contexts().is_empty());
    let mut buf = [0u8; 16];
    c.read(8, &mut buf).unwrap();
    assert_eq!(buf, [9; 16]);
    let e = err_text(c.read(0, &mut buf));
    assert!(e.contains("NBD_EIO") && e.contains("offset 0x0"), "{e}");
}

#[test]
fn export_name_fallback() {
    let server = Server::default()
        .greeting(NBD_FLAG_FIXED_NEWSTYLE)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[])
        .opt(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[])
        .raw(&4096u64.to_be_bytes())
        .raw(&1u16.to_be_bytes())
        .raw(&[0; EXPORT_NAME_ZEROES]);
    let c = NbdClient::handshake(Scripted::new(server.0), URI, "disk", &[]).unwrap();
    assert_eq!(c.size(), 4096);

    // An old server closes the connection for an unknown export.
    let server = Server::default()
        .greeting(NBD_FLAG_FIXED_NEWSTYLE)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, &[])
        .opt(NBD_OPT_GO, NBD_REP_ERR_UNSUP, &[]);
    let e = err_text(NbdClient::handshake(
        Scripted::new(server.0),
        URI,
        "disk",
        &[],
    ));
    assert!(
        e.contains("NBD_OPT_EXPORT_NAME") && e.contains("\"disk\""),
        "{e}"
    );
}

#[test]
fn unknown_export_is_named() {
    let server = Server::default()
        .greeting(3)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
        .opt(
            NBD_OPT_SET_META_CONTEXT,
            NBD_REP_ERR_UNKNOWN,
            b"export 'nope' not present",
        );
    let r = NbdClient::handshake(Scripted::new(server.0), URI, "nope", &[BASE_ALLOCATION]);
    let e = err_text(r);
    assert!(
        e.contains(URI)
            && e.contains("export \"nope\" is not available")
            && e.contains("not present"),
        "{e}"
    );
}

#[test]
fn meta_context_refusal_is_not_fatal() {
    let server = Server::default()
        .greeting(3)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
        .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_POLICY, b"no")
        .info_export(4096, 1)
        .opt(NBD_OPT_GO, NBD_REP_ACK, &[]);
    let c = connect(server).unwrap();
    assert!(c.contexts().is_empty());
    assert!(c
        .meta_context_refusal()
        .unwrap()
        .contains("NBD_REP_ERR_POLICY"));
}

#[test]
fn huge_option_reply_length_is_refused_before_allocating() {
    let server = Server::default()
        .greeting(3)
        .raw(&OPTION_REPLY_MAGIC.to_be_bytes())
        .raw(&NBD_OPT_STRUCTURED_REPLY.to_be_bytes())
        .raw(&NBD_REP_ACK.to_be_bytes())
        .raw(&u32::MAX.to_be_bytes());
    let e = err_text(connect(server));
    assert!(
        e.contains("NBD_OPT_STRUCTURED_REPLY") && e.contains("exceeds the cap"),
        "{e}"
    );
}

#[test]
fn handshake_rules() {
    let e = err_text(connect(Server::default().greeting(0)));
    assert!(e.contains("fixed newstyle"), "{e}");
    let e = err_text(connect(
        Server::default().raw(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
    ));
    assert!(e.contains("not an NBD server"), "{e}");
    // A reply to the wrong option.
    let e = err_text(connect(Server::default().greeting(3).opt(
        NBD_OPT_GO,
        NBD_REP_ACK,
        &[],
    )));
    assert!(e.contains("answered NBD_OPT_GO instead"), "{e}");
    // ACK to GO without NBD_INFO_EXPORT.
    let e = err_text(connect(
        Server::default()
            .greeting(3)
            .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
            .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[])
            .opt(NBD_OPT_GO, NBD_REP_ACK, &[]),
    ));
    assert!(e.contains("NBD_INFO_EXPORT"), "{e}");
    // Bad block size info.
    let e = err_text(connect(
        Server::default()
            .greeting(3)
            .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
            .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[])
            .info_block(3, 4096, 1 << 20),
    ));
    assert!(e.contains("NBD_INFO_BLOCK_SIZE"), "{e}");
    // Endless info replies.
    let mut s = Server::default()
        .greeting(3)
        .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
        .opt(NBD_OPT_SET_META_CONTEXT, NBD_REP_ACK, &[]);
    for _ in 0..=MAX_OPTION_REPLIES {
        s = s.opt(NBD_OPT_GO, NBD_REP_INFO, &[0, 9]);
    }
    let e = err_text(connect(s));
    assert!(e.contains("MAX_OPTION_REPLIES"), "{e}");
    // The same context twice.
    let e = err_text(connect(
        Server::default()
            .greeting(3)
            .opt(NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
            .meta(1, BASE_ALLOCATION)
            .meta(1, BASE_ALLOCATION),
    ));
    assert!(e.contains("twice"), "{e}");
    // The client gives up politely: NBD_OPT_ABORT after the last option.
    let mut sc = Scripted::new(Server::default().greeting(3).0);
    let r = NbdClient::handshake(&mut sc, URI, "", &[]).map(|_| ());
    assert!(r.is_err());
    let abort = encode_option(NBD_OPT_ABORT, &[]).unwrap();
    assert!(sc.output.ends_with(&abort));
}

#[test]
fn read_chunk_beyond_the_request() {
    let server = Server::handshake(1 << 20, 1).chunk(
        DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        1,
        &data(4096, &[0; 512]),
    );
    let mut c = connect(server).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = err_text(c.read(0, &mut buf));
    assert!(
        e.contains("outside the request") && e.contains("read of 4096 bytes at offset 0x0"),
        "{e}"
    );
    // The stream position is now unknown: the connection refuses to go on.
    let e = err_text(c.read(0, &mut buf));
    assert!(e.contains("unusable"), "{e}");

    // A huge data chunk length: refused from the header, nothing allocated.
    let server = Server::handshake(1 << 20, 1)
        .raw(&STRUCTURED_REPLY_MAGIC.to_be_bytes())
        .raw(&DONE.to_be_bytes())
        .raw(&NBD_REPLY_TYPE_OFFSET_DATA.to_be_bytes())
        .raw(&1u64.to_be_bytes())
        .raw(&u32::MAX.to_be_bytes())
        .raw(&0u64.to_be_bytes());
    let mut c = connect(server).unwrap();
    let e = err_text(c.read(0, &mut buf));
    assert!(e.contains("outside the request"), "{e}");

    // A hole past the end of the request, and an offset that overflows.
    for (at, len) in [(0u64, 4097u32), (u64::MAX - 10, 100)] {
        let server = Server::handshake(1 << 20, 1).chunk(
            DONE,
            NBD_REPLY_TYPE_OFFSET_HOLE,
            1,
            &hole(at, len),
        );
        let mut c = connect(server).unwrap();
        let e = err_text(c.read(0, &mut buf));
        assert!(e.contains("outside the request"), "{e}");
    }
}

#[test]
fn read_reply_rules() {
    let mut buf = vec![0u8; 4096];
    let run = |server: Server, buf: &mut [u8]| {
        let mut c = connect(server).unwrap();
        err_text(c.read(0, buf))
    };
    // Overlapping chunks.
    let e = run(
        Server::handshake(1 << 20, 1)
            .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 2048))
            .chunk(DONE, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(1024, 3072)),
        &mut buf,
    );
    assert!(e.contains("overlaps"), "{e}");
    // Success without covering the request.
    let e = run(
        Server::handshake(1 << 20, 1).chunk(DONE, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 2048)),
        &mut buf,
    );
    assert!(e.contains("only 2048 of 4096"), "{e}");
    // Wrong cookie.
    let e = run(
        Server::handshake(1 << 20, 1).chunk(DONE, NBD_REPLY_TYPE_OFFSET_HOLE, 9, &hole(0, 4096)),
        &mut buf,
    );
    assert!(e.contains("cookie"), "{e}");
    // Block status chunk in a read reply; unknown non-error chunk type.
    for t in [NBD_REPLY_TYPE_BLOCK_STATUS, 77] {
        let e = run(
            Server::handshake(1 << 20, 1).chunk(DONE, t, 1, &status(1, &[(4096, 0)])),
            &mut buf,
        );
        assert!(e.contains("unexpected"), "{e}");
    }
    // NONE with a payload.
    let e = run(
        Server::handshake(1 << 20, 1).chunk(DONE, NBD_REPLY_TYPE_NONE, 1, &[0]),
        &mut buf,
    );
    assert!(e.contains("NBD_REPLY_TYPE_NONE"), "{e}");
    // Too many chunks.
    let mut s = Server::handshake(1 << 20, 1);
    for _ in 0..=MAX_READ_CHUNKS {
        s = s.chunk(0, 0x8123, 1, &error_payload(5, ""));
    }
    let e = run(s, &mut buf);
    assert!(e.contains("MAX_READ_CHUNKS"), "{e}");
    // A data chunk of length 8 (no data).
    let e = run(
        Server::handshake(1 << 20, 1).chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[])),
        &mut buf,
    );
    assert!(e.contains("at least 9"), "{e}");
    // Huge error chunk.
    let e = run(
        Server::handshake(1 << 20, 1)
            .raw(&STRUCTURED_REPLY_MAGIC.to_be_bytes())
            .raw(&DONE.to_be_bytes())
            .raw(&NBD_REPLY_TYPE_ERROR.to_be_bytes())
            .raw(&1u64.to_be_bytes())
            .raw(&u32::MAX.to_be_bytes()),
        &mut buf,
    );
    assert!(e.contains("MAX_ERROR_CHUNK"), "{e}");
    // Beyond the export.
    let mut c = connect(Server::handshake(4096, 1)).unwrap();
    let e = err_text(c.read(1, &mut buf));
    assert!(e.contains("beyond the export size"), "{e}");
}

#[test]
fn server_errors_carry_their_message_and_keep_the_connection() {
    let mut off_err = error_payload(5, "disk on fire");
    off_err.extend_from_slice(&1024u64.to_be_bytes());
    let server = Server::handshake(1 << 20, 1)
        .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 1024))
        .chunk(DONE, NBD_REPLY_TYPE_ERROR_OFFSET, 1, &off_err)
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 2, &data(0, &[3; 16]));
    let mut c = connect(server).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = err_text(c.read(0, &mut buf));
    assert!(
        e.contains("NBD_EIO") && e.contains("at offset 0x400") && e.contains("disk on fire"),
        "{e}"
    );
    let mut small = [0u8; 16];
    c.read(0, &mut small).unwrap();
    assert_eq!(small, [3; 16]);

    // An unknown error type still reports its message; control characters escaped.
    let server =
        Server::handshake(1 << 20, 1).chunk(DONE, 0x8077, 1, &error_payload(22, "bad\x1b[31m"));
    let mut c = connect(server).unwrap();
    let e = err_text(c.read(0, &mut small));
    assert!(
        e.contains("NBD_EINVAL") && e.contains("bad\\u{1b}[31m"),
        "{e}"
    );
}

#[test]
fn block_status_descriptors() {
    let server = Server::handshake(1 << 20, 1)
        .chunk(
            DONE,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            1,
            &status(1, &[(4096, 0), (8192, 3), (1 << 20, 0)]),
        )
        .chunk(
            DONE,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            2,
            &status(1, &[(512, 3)]),
        );
    let mut c = connect(server).unwrap();
    let got = c.block_status(1, 1000, 20000).unwrap();
    assert_eq!(
        got,
        vec![
            StatusExtent {
                offset: 1000,
                length: 4096,
                flags: 0
            },
            StatusExtent {
                offset: 5096,
                length: 8192,
                flags: 3
            },
            StatusExtent {
                offset: 13288,
                length: 7712,
                flags: 0
            },
        ]
    );
    // Less than asked is fine: the caller asks again from the end.
    let got = c.block_status(1, 0, 4096).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].offset, got[0].length), (0, 512));
}

#[test]
fn hostile_block_status() {
    let run = |payloads: &[Vec<u8>], offset: u64| {
        let mut s = Server::handshake(1 << 20, 1);
        for (i, p) in payloads.iter().enumerate() {
            let flags = if i + 1 == payloads.len() { DONE } else { 0 };
            s = s.chunk(flags, NBD_REPLY_TYPE_BLOCK_STATUS, 1, p);
        }
        let mut c = connect(s).unwrap();
        err_text(c.block_status(1, offset, 8192))
    };
    let e = run(&[status(1, &[(4096, 0), (0, 0), (4096, 0)])], 0);
    assert!(e.contains("length 0"), "{e}");
    // Descriptors before the last running past the request ("beyond").
    let e = run(&[status(1, &[(8192, 0), (4096, 0)])], 0);
    assert!(e.contains("run past the end"), "{e}");
    // More descriptors than the request can hold.
    let e = run(&[status(1, &vec![(1, 0); 8193])], 0);
    assert!(e.contains("descriptors"), "{e}");
    // A context that was not negotiated, or one sent twice.
    let e = run(&[status(9, &[(8192, 0)])], 0);
    assert!(e.contains("context id 9"), "{e}");
    let e = run(&[status(1, &[(8192, 0)]), status(1, &[(8192, 0)])], 0);
    assert!(e.contains("twice"), "{e}");
    // Bad payload lengths.
    let e = run(&[vec![0, 0, 0, 1]], 0);
    assert!(e.contains("descriptors"), "{e}");
    let e = run(&[vec![0, 0, 0, 1, 0, 0]], 0);
    assert!(e.contains("multiple of 8"), "{e}");
    // No status for the context at all.
    let mut c =
        connect(Server::handshake(1 << 20, 1).chunk(DONE, NBD_REPLY_TYPE_NONE, 1, &[])).unwrap();
    let e = err_text(c.block_status(1, 0, 8192));
    assert!(e.contains("no status"), "{e}");
    // Requests outside the export or for unknown contexts never reach the wire.
    let mut c = connect(Server::handshake(4096, 1)).unwrap();
    assert!(err_text(c.block_status(1, 0, 8192)).contains("beyond"));
    assert!(err_text(c.block_status(1, 0, 0)).contains("empty"));
    assert!(err_text(c.block_status(5, 0, 4096)).contains("not negotiated"));
}

#[test]
fn block_status_that_makes_no_progress() {
    // Aligned down to 512, the reply ends before the asked offset.
    let server = Server::handshake(1 << 20, 512).chunk(
        DONE,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        1,
        &status(1, &[(100, 0)]),
    );
    let mut c = connect(server).unwrap();
    let e = err_text(c.block_status(1, 300, 1000));
    assert!(e.contains("no progress"), "{e}");
}

#[test]
fn early_eof_everywhere() {
    let session = session_script();
    assert!(run_session(session.clone()).is_ok());
    for n in 0..session.len() {
        let r = run_session(session[..n].to_vec());
        let e = err_text(r);
        assert!(e.contains("closed the connection"), "cut at {n}: {e}");
    }
}

#[test]
fn bit_flips_never_panic() {
    let session = session_script();
    for i in 0..session.len() {
        for bit in 0..8 {
            let mut s = session.clone();
            s[i] ^= 1 << bit;
            let _ = run_session(s);
        }
    }
}

/// A whole session: handshake, a fragmented read, block status.
fn session_script() -> Vec<u8> {
    Server::handshake(1 << 16, 1)
        .chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(512, &[5; 512]))
        .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 1, &hole(0, 512))
        .chunk(0, NBD_REPLY_TYPE_ERROR_OFFSET, 1, &{
            let mut p = error_payload(5, "x");
            p.extend_from_slice(&0u64.to_be_bytes());
            p
        })
        .chunk(DONE, NBD_REPLY_TYPE_NONE, 1, &[])
        .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 2, &hole(0, 1024))
        .chunk(DONE, NBD_REPLY_TYPE_NONE, 2, &[])
        .chunk(
            DONE,
            NBD_REPLY_TYPE_BLOCK_STATUS,
            3,
            &status(1, &[(512, 0), (512, 3)]),
        )
        .0
}

fn run_session(bytes: Vec<u8>) -> Result<Vec<StatusExtent>> {
    let mut c = NbdClient::handshake(Scripted::new(bytes), URI, "", &[BASE_ALLOCATION])?;
    let mut buf = vec![0u8; 1024];
    // The first read gets a server error (and the connection stays usable).
    match c.read(0, &mut buf) {
        Ok(()) => return Err(c.fail("test", "expected the scripted server error")),
        Err(e) if e.to_string().contains("the server reported") => {}
        Err(e) => return Err(e),
    }
    c.read(0, &mut buf)?;
    let ctx = c
        .context_id(BASE_ALLOCATION)
        .ok_or_else(|| c.fail("test", "no context"))?;
    c.block_status(ctx, 0, 1024)
}

#[test]
fn coverage_merges_and_detects_overlap() {
    let mut c = Coverage::default();
    assert!(c.insert(10, 20));
    assert!(c.insert(30, 40));
    assert!(c.insert(20, 30));
    assert_eq!(c.ranges.len(), 1);
    assert_eq!(c.total, 30);
    assert!(!c.insert(15, 16));
    assert!(!c.insert(5, 11));
    assert!(!c.insert(39, 50));
    assert!(c.insert(0, 10));
    assert!(c.insert(40, 41));
    assert_eq!(c.ranges.len(), 1);
    assert_eq!(c.total, 41);
}

#[test]
fn reads_in_flight_together_take_replies_in_any_order() {
    // Three reads sent at once (cookies 1, 2, 3); the server answers 3 first, then
    // interleaves the chunks of 1 and 2.
    let server = Server::handshake(1 << 20, 512)
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 3, &data(8192, &[3; 512]))
        .chunk(0, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(512, &[1; 512]))
        .chunk(0, NBD_REPLY_TYPE_OFFSET_HOLE, 2, &hole(4096, 1024))
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[9; 512]))
        .chunk(DONE, NBD_REPLY_TYPE_NONE, 2, &[]);
    let mut c = connect(server).unwrap();
    let (mut a, mut b, mut d) = (vec![0xaa; 1024], vec![0xaa; 1024], vec![0xaa; 512]);
    c.read_many(&mut [(0, &mut a), (4096, &mut b), (8192, &mut d)])
        .unwrap();
    assert!(a[..512].iter().all(|&x| x == 9) && a[512..].iter().all(|&x| x == 1));
    assert!(b.iter().all(|&x| x == 0));
    assert!(d.iter().all(|&x| x == 3));
    assert_eq!(c.bytes_read(), 1536);
    // All three requests went out before any reply was read.
    let out = &c.stream.output;
    let req = |cookie, offset, length| {
        encode_request(&Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie,
            offset,
            length,
        })
    };
    let mut tail = req(1, 0, 1024).to_vec();
    tail.extend(req(2, 4096, 1024));
    tail.extend(req(3, 8192, 512));
    assert!(out.ends_with(&tail));
}

#[test]
fn reads_in_flight_together_keep_every_rule() {
    // A reply for a cookie not in flight (or already answered).
    for cookie in [7, 1] {
        let server = Server::handshake(1 << 20, 1)
            .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[1; 16]))
            .chunk(
                DONE,
                NBD_REPLY_TYPE_OFFSET_DATA,
                cookie,
                &data(16, &[2; 16]),
            );
        let mut c = connect(server).unwrap();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        let e = err_text(c.read_many(&mut [(0, &mut a), (16, &mut b)]));
        assert!(
            e.contains(&format!("cookie {cookie:#x}, which is not in flight")),
            "{e}"
        );
        // The stream position is unknown now: the connection refuses more.
        let e = err_text(c.read(0, &mut a));
        assert!(e.contains("unusable"), "{e}");
    }
    // A chunk of one read that lies in another read's range.
    let server = Server::handshake(1 << 20, 1).chunk(
        DONE,
        NBD_REPLY_TYPE_OFFSET_DATA,
        2,
        &data(0, &[1; 16]),
    );
    let mut c = connect(server).unwrap();
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    let e = err_text(c.read_many(&mut [(0, &mut a), (16, &mut b)]));
    assert!(e.contains("outside the request"), "{e}");
    // A server error for one read: the others are still consumed, the error names
    // the read it belongs to, and the connection goes on.
    let server = Server::handshake(1 << 20, 1)
        .chunk(
            DONE,
            NBD_REPLY_TYPE_ERROR,
            2,
            &error_payload(5, "bad sector"),
        )
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 1, &data(0, &[1; 16]))
        .chunk(DONE, NBD_REPLY_TYPE_OFFSET_DATA, 3, &data(0, &[4; 16]));
    let mut c = connect(server).unwrap();
    let e = err_text(c.read_many(&mut [(0, &mut a), (4096, &mut b)]));
    assert!(
        e.contains("at offset 0x1000") && e.contains("bad sector"),
        "{e}"
    );
    c.read(0, &mut a).unwrap();
    assert_eq!(a, [4; 16]);
    // Misaligned, oversized or too many reads are refused before anything is sent.
    let mut c = connect(Server::handshake(1 << 20, 512)).unwrap();
    let sent = c.stream.output.len();
    let mut odd = [0u8; 100];
    assert!(err_text(c.read_many(&mut [(0, &mut odd)])).contains("not aligned"));
    let mut big = vec![0u8; (1 << 25) + 512];
    assert!(err_text(c.read_many(&mut [(0, &mut big)])).contains("too large"));
    let mut bufs = vec![[0u8; 512]; MAX_READS_IN_FLIGHT + 1];
    let mut reads: Vec<(u64, &mut [u8])> = bufs.iter_mut().map(|b| (0, &mut b[..])).collect();
    assert!(err_text(c.read_many(&mut reads)).contains("MAX_READS_IN_FLIGHT"));
    assert_eq!(c.stream.output.len(), sent);
}

#[test]
fn simple_replies_to_reads_in_flight_together() {
    // Out of order, and an error for one read (no payload follows it).
    let server = Server::unstructured(1024)
        .simple(0, 2)
        .raw(&[2; 8])
        .simple(0, 1)
        .raw(&[1; 8])
        .simple(5, 4)
        .simple(0, 3)
        .raw(&[3; 8]);
    let mut c = connect(server).unwrap();
    let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
    c.read_many(&mut [(0, &mut a), (8, &mut b)]).unwrap();
    assert_eq!((a, b), ([1; 8], [2; 8]));
    let e = err_text(c.read_many(&mut [(16, &mut a), (24, &mut b)]));
    assert!(e.contains("NBD_EIO") && e.contains("offset 0x18"), "{e}");
    assert_eq!(a, [3; 8]);
}
