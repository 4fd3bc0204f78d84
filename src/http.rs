//! A small HTTP/1.1 codec shared by the engine client (responses on its Unix socket), the local
//! API's server (requests) and `tinyvisor apply`.
//!
//! Only what the Docker/balenaEngine API needs: status line and headers with hard size
//! limits, and bodies framed by Content-Length, chunked transfer coding (extensions and
//! trailers accepted and ignored) or connection close. Protocol violations are reported as
//! `io::ErrorKind::InvalidData` errors, never panics, so a confused or hostile peer cannot
//! crash the daemon or make it allocate without bound.

use std::io::{self, BufRead, Read, Write};

/// Longest status line, header line or chunk-size line we accept.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines in one response (the engine sends about ten).
pub const MAX_HEADERS: usize = 100;
/// Total bytes of the response head (status line + headers).
pub const MAX_HEAD: usize = 64 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A head over one of the size limits (a server answers 431 rather than 400).
#[derive(Debug)]
struct HeadTooLarge(String);

impl std::fmt::Display for HeadTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HeadTooLarge {}

fn too_large(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, HeadTooLarge(msg))
}

/// Whether a head was refused for its size (a line, the header count or the whole head).
pub fn is_head_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<HeadTooLarge>())
}

/// Most informational (1xx) answers accepted before the real one.
const MAX_INFORMATIONAL: usize = 8;

/// The first value of header `name` (compared case-insensitively) in a head's headers.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The status line and headers of a response.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// An HTTP/1.0 answer: its connection closes unless it says keep-alive.
    pub http10: bool,
    pub reason: String,
    /// Header names are kept as sent; look them up with [`ResponseHead::header`].
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// First value of a header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// Reads one line ending in LF (a preceding CR is dropped) without ever buffering more than
/// `max` bytes. Returns `Ok(None)` on a clean EOF before any byte.
pub fn read_line_limited<R: BufRead>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            ));
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > max + 2 {
            return Err(too_large(format!("line longer than {max} bytes")));
        }
        line.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max {
                return Err(too_large(format!("line longer than {max} bytes")));
            }
            return Ok(Some(line));
        }
    }
}

/// Parses the status line and headers, skipping informational (1xx) answers, a few at most.
/// Leaves the reader at the first body byte.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<ResponseHead> {
    for _ in 0..MAX_INFORMATIONAL {
        let head = read_one_head(r)?;
        // Informational answers (100 Continue) are followed by the real one.
        if !(100..200).contains(&head.status) {
            return Ok(head);
        }
    }
    Err(invalid(format!(
        "more than {MAX_INFORMATIONAL} informational answers"
    )))
}

fn read_one_head<R: BufRead>(r: &mut R) -> io::Result<ResponseHead> {
    let status_line = read_line_limited(r, MAX_LINE)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        )
    })?;
    let status_line =
        String::from_utf8(status_line).map_err(|_| invalid("status line is not UTF-8"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!(
            "not an HTTP/1.x response: {status_line:?}"
        )));
    }
    let code = parts.next().unwrap_or_default();
    let status: u16 = match code.parse() {
        Ok(s) if code.len() == 3 && (100..=599).contains(&s) => s,
        _ => return Err(invalid(format!("bad status code in {status_line:?}"))),
    };
    let reason = parts.next().unwrap_or_default().to_string();

    let headers = read_headers(r, status_line.len())?;
    Ok(ResponseHead {
        status,
        http10: version == "HTTP/1.0",
        reason,
        headers,
    })
}

/// Header lines up to the empty line, with the head's size and count limits; `head_bytes` is
/// what the start line already used.
fn read_headers<R: BufRead>(r: &mut R, mut head_bytes: usize) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line_limited(r, MAX_LINE)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        if line.is_empty() {
            break;
        }
        head_bytes += line.len() + 2;
        if head_bytes > MAX_HEAD {
            return Err(too_large(format!("head larger than {MAX_HEAD} bytes")));
        }
        if headers.len() >= MAX_HEADERS {
            return Err(too_large(format!("more than {MAX_HEADERS} headers")));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(invalid("obsolete header line folding"));
        }
        let line = String::from_utf8(line).map_err(|_| invalid("header is not UTF-8"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header without a colon: {line:?}")))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid(format!("bad header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(headers)
}

/// The request line and headers of a request (the local API's server side).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// `HTTP/1.0` clients close after one answer unless they ask for keep-alive.
    pub http10: bool,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The body framing: chunked or Content-Length (requests are never close-delimited).
    pub fn framing(&self) -> io::Result<Framing> {
        let as_response = ResponseHead {
            status: 200,
            http10: self.http10,
            reason: String::new(),
            headers: self.headers.clone(),
        };
        match framing(&as_response, false)? {
            Framing::UntilClose if self.header("transfer-encoding").is_some() => {
                Err(invalid("unsupported transfer coding"))
            }
            Framing::UntilClose => Ok(Framing::Empty),
            f => Ok(f),
        }
    }
}

/// Reads a request head; `Ok(None)` when the peer closed before sending anything (the end of
/// a keep-alive connection). Empty lines before the request line are skipped (RFC 9112 §2.2).
pub fn read_request_head<R: BufRead>(r: &mut R) -> io::Result<Option<RequestHead>> {
    let line = loop {
        match read_line_limited(r, MAX_LINE)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let line = String::from_utf8(line).map_err(|_| invalid("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {line:?}")));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(invalid(format!("bad method in {line:?}")));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b < b' ' || b == 0x7f) {
        return Err(invalid(format!("bad request target in {line:?}")));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(invalid(format!("unsupported version in {line:?}"))),
    };
    let headers = read_headers(r, line.len())?;
    Ok(Some(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    }))
}

/// How the body of a response is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Decides the body framing from the head; `head_request` is true for answers to HEAD.
pub fn framing(head: &ResponseHead, head_request: bool) -> io::Result<Framing> {
    if head_request || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    let mut chunked = false;
    let mut saw_te = false;
    for (k, v) in &head.headers {
        if k.eq_ignore_ascii_case("transfer-encoding") {
            saw_te = true;
            let last = v.rsplit(',').next().unwrap_or_default().trim();
            chunked = last.eq_ignore_ascii_case("chunked");
        }
    }
    if saw_te {
        // A transfer coding that does not end in chunked is delimited by close.
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for (k, v) in &head.headers {
        if k.eq_ignore_ascii_case("content-length") {
            for piece in v.split(',') {
                let piece = piece.trim();
                if piece.is_empty() || !piece.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(format!("bad Content-Length {v:?}")));
                }
                let n: u64 = piece
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {v:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting Content-Length headers"));
                }
                length = Some(n);
            }
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// A response body as a `Read`er; decodes the framing and reports truncation as an error.
pub struct Body<R> {
    inner: R,
    framing: Framing,
    remaining: u64,
    chunk: ChunkState,
}

impl<R: BufRead> Body<R> {
    pub fn new(inner: R, framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            inner,
            framing,
            remaining,
            chunk: ChunkState::Size,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The underlying reader (for example to change a socket timeout mid-stream).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The underlying reader, positioned after what was read of the body.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the whole body, failing if it exceeds `limit` bytes.
    pub fn read_to_end_limited(&mut self, limit: usize) -> io::Result<Vec<u8>> {
        read_limited(self, limit)
    }

    fn read_chunked(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.chunk {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let line = read_line_limited(&mut self.inner, MAX_LINE)?.ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the last chunk",
                        )
                    })?;
                    let size = parse_chunk_size(&line)?;
                    self.chunk = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed inside a chunk",
                        ));
                    }
                    let left = left - n as u64;
                    self.chunk = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(n);
                }
                ChunkState::DataEnd => {
                    let line = read_line_limited(&mut self.inner, MAX_LINE)?;
                    match line {
                        Some(l) if l.is_empty() => self.chunk = ChunkState::Size,
                        Some(_) => return Err(invalid("chunk data longer than its size")),
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed after chunk data",
                            ))
                        }
                    }
                }
                ChunkState::Trailers => {
                    let mut count = 0;
                    loop {
                        match read_line_limited(&mut self.inner, MAX_LINE)? {
                            // Some servers close right after the last chunk; accept that.
                            None => break,
                            Some(l) if l.is_empty() => break,
                            Some(_) => {
                                count += 1;
                                if count > MAX_HEADERS {
                                    return Err(invalid("too many trailer lines"));
                                }
                            }
                        }
                    }
                    self.chunk = ChunkState::Done;
                }
            }
        }
    }
}

/// Parses `1a3f;ext=value` into the size; extensions are ignored.
pub fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let hex_end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let hex = &line[..hex_end];
    let rest = &line[hex_end..];
    let rest_ok = rest.iter().all(|&b| b == b' ' || b == b'\t')
        || rest.iter().find(|&&b| b != b' ' && b != b'\t') == Some(&b';');
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) || !rest_ok {
        return Err(invalid(format!(
            "bad chunk size line {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let text = std::str::from_utf8(hex).map_err(|_| invalid("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("bad chunk size"))
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => self.inner.read(buf),
            Framing::Chunked => self.read_chunked(buf),
            Framing::Length(_) => {
                if self.remaining == 0 {
                    return Ok(0);
                }
                let want = buf
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("body truncated: {} bytes missing", self.remaining),
                    ));
                }
                self.remaining -= n as u64;
                Ok(n)
            }
        }
    }
}

/// Reads `r` to its end, failing if it gives more than `limit` bytes (a body, or what a
/// decoder makes of one).
pub fn read_limited<R: Read + ?Sized>(r: &mut R, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(invalid(format!("body larger than {limit} bytes")));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Writes a request with a JSON (or empty) body. `path` already carries the query.
pub fn write_request<W: Write>(
    w: &mut W,
    method: &str,
    path: &str,
    extra_headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> io::Result<()> {
    let mut head = request_head(method, path, extra_headers)?;
    match body {
        Some(b) => {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            w.write_all(head.as_bytes())?;
            w.write_all(b)?;
        }
        None => {
            if method == "POST" || method == "PUT" {
                head.push_str("Content-Length: 0\r\n");
            }
            head.push_str("\r\n");
            w.write_all(head.as_bytes())?;
        }
    }
    w.flush()
}

/// Writes the head of a request whose body follows in chunks ([`write_chunk`], then
/// [`write_last_chunk`]): for bodies too large to hold, such as an image archive.
pub fn write_chunked_request_head<W: Write>(
    w: &mut W,
    method: &str,
    path: &str,
    extra_headers: &[(&str, String)],
) -> io::Result<()> {
    let mut headers = extra_headers.to_vec();
    headers.push(("Transfer-Encoding", "chunked".into()));
    write_request_head(w, method, path, &headers)
}

/// Writes the head of a request whose framing the caller gives in `extra_headers` (a
/// Content-Length for a body it then writes itself, from a file for instance).
pub fn write_request_head<W: Write>(
    w: &mut W,
    method: &str,
    path: &str,
    extra_headers: &[(&str, String)],
) -> io::Result<()> {
    let mut head = request_head(method, path, extra_headers)?;
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

/// One chunk of a chunked body (nothing for empty data: an empty chunk ends the body).
pub fn write_chunk<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")
}

/// The last chunk, which ends a chunked body.
pub fn write_last_chunk<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

/// Request line, `Host: docker`, our User-Agent and `extra_headers`; no blank line yet.
fn request_head(method: &str, path: &str, extra_headers: &[(&str, String)]) -> io::Result<String> {
    let agent = concat!("tinyvisor/", env!("CARGO_PKG_VERSION"));
    request_head_for("docker", agent, method, path, extra_headers)
}

/// Request line, Host, User-Agent and `extra_headers`, each line checked; no blank line yet
/// (the cloud client names its own host and the supervisor's User-Agent).
pub fn request_head_for(
    host: &str,
    user_agent: &str,
    method: &str,
    path: &str,
    extra_headers: &[(&str, String)],
) -> io::Result<String> {
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) || !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("request path must be an escaped absolute path: {path:?}"),
        ));
    }
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n");
    for (k, v) in extra_headers {
        if v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("header {k} contains a line break"),
            ));
        }
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    Ok(head)
}

#[cfg(test)]
mod tests;
