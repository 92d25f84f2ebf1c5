//! A small HTTP/1.1 client over `TcpStream` for the `actorbus dlq` commands:
//! plain `http://` only (the gateway listens on loopback unless configured),
//! one request per connection, bodies with `Content-Length` (chunked answers
//! are decoded too). Not a general client: no TLS, no redirects, no
//! keep-alive.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest answer read (a DLQ page of 1000 large envelopes fits).
const MAX_RESPONSE: u64 = 256 << 20;

/// Where the server is: `http://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
    base: String,
}

impl Server {
    /// Parses `http://host[:port][/base]`; `https://` and other schemes are
    /// refused.
    pub fn parse(url: &str) -> Result<Server, String> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(format!(
                    "{url}: https is not supported; the CLI speaks plain HTTP to a server on loopback or a trusted \
                     network (put a TLS proxy in front for anything else)"
                ))
            }
            Some((scheme, _)) => return Err(format!("{url}: unsupported scheme `{scheme}` (use http://host:port)")),
            None => return Err(format!("{url}: not a URL (use http://host:port)")),
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port.parse().map_err(|_| format!("{url}: bad port `{port}`"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("{url}: no host"));
        }
        Ok(Server { host: host.to_owned(), port, base: base.to_owned() })
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends one request and reads the whole answer.
pub fn request(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let host = server.host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, server.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{}: no address", server.host)))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
        server.base, server.host, server.port
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| io::Error::other("the server's answer is not HTTP"))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = raw.get(split + 4..)?;
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        data = data.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = Server::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.base.as_str()), ("127.0.0.1", 8080, ""));
        let s = Server::parse("http://localhost/actorbus/").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.base.as_str()), ("localhost", 80, "/actorbus"));
        let s = Server::parse("http://[::1]:9000").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("[::1]", 9000));
        assert!(Server::parse("https://example.com").unwrap_err().contains("https is not supported"));
        assert!(Server::parse("ftp://x").is_err());
        assert!(Server::parse("127.0.0.1:8080").is_err());
        assert!(Server::parse("http://:80").is_err());
        assert!(Server::parse("http://h:port").is_err());
    }

    #[test]
    fn answers_with_length_or_chunks() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
        let r = parse(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"abcd".as_slice()));
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_none(), "truncated body");
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("queue/orders"), "queue%2Forders");
        assert_eq!(encode("2026-11-23T09:00:00Z"), "2026-11-23T09%3A00%3A00Z");
    }
}
