//! NBD URIs, as NetworkBlockDevice/nbd `doc/uri.md` defines them (on RFC 3986):
//!
//! ```text
//! nbd://HOST[:PORT]/EXPORT                 TCP, port 10809 by default
//! nbd+unix:///EXPORT?socket=/path/to.sock  Unix domain socket
//! ```
//!
//! The export name is the path without its leading `/`, percent-decoded (so
//! `nbd://h/` and `nbd://h` both name the default export ""). TLS schemes (`nbds`,
//! `nbds+unix`) and TLS query parameters are recognised and refused as unsupported,
//! rather than silently connecting in the clear; unknown query parameters are errors,
//! as the URI spec asks, so a typo never goes unnoticed.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The IANA port for NBD, used when a `nbd://` URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// The longest export name the NBD protocol allows (its limit on any string).
pub const MAX_EXPORT_NAME: usize = 4096;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// `host` is a name or an IP address (an IPv6 literal without its brackets).
    Tcp { host: String, port: u16 },
    /// A Unix domain socket in the filesystem.
    Unix(PathBuf),
    /// A Linux abstract socket (`socket=%00name`): the name without its leading NUL.
    UnixAbstract(Vec<u8>),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub address: NbdAddress,
    /// The export name sent to the server ("" = the server's default export).
    pub export: String,
}

/// Parses `uri`; errors name the URI and say what is wrong with it.
pub fn parse_uri(uri: &str) -> Result<NbdUri> {
    let bad = |reason: String| Error::Nbd {
        uri: uri.to_string(),
        step: "parse URI".to_string(),
        reason,
    };
    if let Some(c) = uri.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "contains the control character {c:?} (percent-encode it)"
        )));
    }
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
        bad(
            "not an NBD URI (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
                .to_string(),
        )
    })?;
    let unix = match scheme.to_ascii_lowercase().as_str() {
        "nbd" => false,
        "nbd+unix" => true,
        "nbds" | "nbds+unix" => {
            return Err(bad(format!(
                "TLS ({scheme}://) is not supported; use nbd:// or nbd+unix:// on a trusted network"
            )))
        }
        other => {
            return Err(bad(format!(
                "unsupported scheme {other:?} (expected nbd or nbd+unix)"
            )))
        }
    };
    if rest.contains('#') {
        return Err(bad(
            "fragments (#...) have no meaning in an NBD URI".to_string()
        ));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let export_bytes = percent_decode(path.strip_prefix('/').unwrap_or(path))
        .map_err(|e| bad(format!("export name: {e}")))?;
    let export = String::from_utf8(export_bytes)
        .map_err(|_| bad("export name is not valid UTF-8".to_string()))?;
    if export.contains('\0') {
        return Err(bad("export name contains NUL".to_string()));
    }
    if export.len() > MAX_EXPORT_NAME {
        return Err(bad(format!(
            "export name is {} bytes long (the NBD limit is {MAX_EXPORT_NAME})",
            export.len()
        )));
    }

    let mut socket: Option<Vec<u8>> = None;
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = String::from_utf8(percent_decode(key).map_err(|e| bad(format!("query: {e}")))?)
            .map_err(|_| bad("query parameter name is not valid UTF-8".to_string()))?;
        let value = percent_decode(value).map_err(|e| bad(format!("query {key}: {e}")))?;
        match key.as_str() {
            "socket" if !unix => {
                return Err(bad(
                    "socket= belongs to nbd+unix:// URIs, not nbd:// (TCP)".to_string()
                ))
            }
            "socket" if socket.is_some() => {
                return Err(bad("socket= is given more than once".to_string()))
            }
            "socket" if value.is_empty() => return Err(bad("socket= is empty".to_string())),
            "socket" => socket = Some(value),
            k if k.starts_with("tls-") => {
                return Err(bad(format!("query parameter {k}: TLS is not supported")))
            }
            k => return Err(bad(format!("unknown query parameter {k:?}"))),
        }
    }

    let address = if unix {
        if !authority.is_empty() {
            return Err(bad(format!(
                "nbd+unix:// takes no host (found {authority:?}); write nbd+unix:///EXPORT?socket=PATH"
            )));
        }
        let socket = socket.ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH".to_string()))?;
        match socket.strip_prefix(b"\0") {
            Some(name) => NbdAddress::UnixAbstract(name.to_vec()),
            None => NbdAddress::Unix(PathBuf::from(OsString::from_vec(socket))),
        }
    } else {
        let (host, port) = parse_authority(authority).map_err(bad)?;
        NbdAddress::Tcp { host, port }
    };
    Ok(NbdUri { address, export })
}

/// `host[:port]` or `[v6]:port`; user names are refused (they only serve TLS).
fn parse_authority(authority: &str) -> std::result::Result<(String, u16), String> {
    if authority.is_empty() {
        return Err("nbd:// needs a host (nbd://HOST[:PORT]/EXPORT)".to_string());
    }
    if authority.contains('@') {
        return Err(
            "user names in the URI are only used for TLS, which is not supported".to_string(),
        );
    }
    if authority.matches(':').count() > 1 && !authority.starts_with('[') {
        return Err(format!(
            "{authority:?}: write IPv6 addresses in brackets ([::1]:10809)"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 literal in {authority:?}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after the IPv6 literal"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("nbd:// needs a host (nbd://HOST[:PORT]/EXPORT)".to_string());
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => Some(p)
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&n| n != 0)
            .ok_or_else(|| format!("bad port {p:?} (expected 1-65535)"))?,
    };
    Ok((host.to_string(), port))
}

/// RFC 3986 percent-decoding (`+` stays `+`: that rule belongs to HTML forms).
fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape at byte {i} of {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(uri: &str) -> NbdUri {
        parse_uri(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    fn err(uri: &str) -> String {
        match parse_uri(uri) {
            Ok(u) => panic!("{uri} parsed as {u:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn tcp(host: &str, port: u16) -> NbdAddress {
        NbdAddress::Tcp {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn export_names_from_the_spec_table() {
        for (uri, export) in [
            ("nbd://example.com/disk", "disk"),
            ("nbd://example.com/", ""),
            ("nbd://example.com", ""),
            ("nbd://example.com//disk", "/disk"),
            ("nbd://example.com/hello%20world", "hello world"),
            ("nbd://example.com/a+b", "a+b"),
        ] {
            let u = ok(uri);
            assert_eq!(u.export, export, "{uri}");
            assert_eq!(u.address, tcp("example.com", DEFAULT_PORT), "{uri}");
        }
        let u = ok("nbd+unix:///disk?socket=sock");
        assert_eq!(u.export, "disk");
        assert_eq!(u.address, NbdAddress::Unix(PathBuf::from("sock")));
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            ok("nbd://127.0.0.1:10810/x").address,
            tcp("127.0.0.1", 10810)
        );
        assert_eq!(ok("nbd://h:/x").address, tcp("h", DEFAULT_PORT));
        assert_eq!(ok("nbd://[::1]:1234/x").address, tcp("::1", 1234));
        assert_eq!(ok("nbd://[fe80::1]").address, tcp("fe80::1", DEFAULT_PORT));
        assert_eq!(ok("NBD://H/x").address, tcp("H", DEFAULT_PORT));
    }

    #[test]
    fn unix_sockets() {
        let u = ok("nbd+unix:///?socket=/tmp/a%20b.sock");
        assert_eq!(u.export, "");
        assert_eq!(u.address, NbdAddress::Unix(PathBuf::from("/tmp/a b.sock")));
        let u = ok("nbd+unix:///e?socket=%00abstract");
        assert_eq!(u.address, NbdAddress::UnixAbstract(b"abstract".to_vec()));
        assert_eq!(ok("nbd+unix:///e?&socket=/s&").export, "e");
    }

    #[test]
    fn refusals_say_why() {
        assert!(err("nbds://h/x").contains("TLS"));
        assert!(err("nbds+unix:///x?socket=/s").contains("TLS"));
        assert!(err("nbd+unix:///x?socket=/s&tls-type=anon").contains("TLS"));
        assert!(err("nbd://user@h/x").contains("user"));
        assert!(err("nbd+unix:///x").contains("socket"));
        assert!(err("nbd+unix:///x?socket=").contains("empty"));
        assert!(err("nbd+unix:///x?socket=/a&socket=/b").contains("more than once"));
        assert!(err("nbd+unix://host/x?socket=/s").contains("no host"));
        assert!(err("nbd://h/x?socket=/s").contains("nbd+unix"));
        assert!(err("nbd://h/x?foo=1").contains("unknown query parameter"));
        assert!(err("nbd:///x").contains("needs a host"));
        assert!(err("nbd://h:0/x").contains("bad port"));
        assert!(err("nbd://h:99999/x").contains("bad port"));
        assert!(err("nbd://h:+80/x").contains("bad port"));
        assert!(err("nbd://::1/x").contains("brackets"));
        assert!(err("nbd://[::1/x").contains("IPv6"));
        assert!(err("nbd://h/x%zz").contains("percent"));
        assert!(err("nbd://h/x%2").contains("percent"));
        assert!(err("nbd://h/x%00y").contains("NUL"));
        assert!(err("nbd://h/%ff").contains("UTF-8"));
        assert!(err("nbd://h/x#frag").contains("fragment"));
        assert!(err("http://h/x").contains("scheme"));
        assert!(err("/dev/nbd0").contains("not an NBD URI"));
        assert!(err("nbd://h/a\nb").contains("control"));
        let long = format!("nbd://h/{}", "a".repeat(MAX_EXPORT_NAME + 1));
        assert!(err(&long).contains("limit"));
    }

    #[test]
    fn errors_name_the_uri() {
        let e = err("nbds://h/x");
        assert!(e.starts_with("nbds://h/x: parse URI: "), "{e}");
    }
}
