//! HTTP/1.1 to the balena API and the delta server, over TCP or TLS (rustls with ring): the
//! call's URL, connecting within the call's deadline, and up to two idle connections kept for
//! the next calls, so the poll and the report reuse one TLS session instead of a handshake each
//! (about 0.1 s of a Pi Zero's CPU). Requests and answers go through our own codec
//! (`crate::http`); docs/decisions.md says why this replaced ureq.

use crate::http::{self, Framing, ResponseHead};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Idle connections kept (the poll's, the report's).
const MAX_IDLE: usize = 2;
/// An idle connection older than this is closed rather than reused: load balancers drop idle
/// connections after about a minute, and a reused dead one costs a failed write first.
const MAX_IDLE_AGE: Duration = Duration::from_secs(45);
/// What is drained of a body nobody reads (after a gzip stream's end) to keep its connection.
const MAX_DRAIN: u64 = 64 * 1024;

/// Where a call goes: `http[s]://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// Without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("invalid URL {url:?}: {why}");
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("not http:// or https://"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = match path.split('#').next().unwrap_or_default() {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if authority.contains('@') {
            return Err(bad("credentials in URLs are not supported"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("bad host"));
        }
        Ok(Url {
            tls,
            host: host.to_string(),
            port: port.unwrap_or(if tls { 443 } else { 80 }),
            path,
        })
    }

    /// The `Host` header: the port only when it is not the scheme's.
    fn authority(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// Which idle connections can carry a call to this URL.
    fn origin(&self) -> (bool, &str, u16) {
        (self.tls, &self.host, self.port)
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':').map(Some).unwrap_or(None))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => None,
    };
    Some((host, port))
}

/// How long a connection's reads and writes may take.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// The whole call ends by then (apiRequestTimeout).
    Deadline(Instant),
    /// Each read or write on its own (the log stream, which has no end).
    EachIo(Duration),
}

impl Bound {
    /// How long the next connect, read or write may wait.
    fn left(self) -> Duration {
        match self {
            Bound::EachIo(d) => d,
            Bound::Deadline(at) => at.saturating_duration_since(Instant::now()),
        }
    }
}

enum Socket {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// One connection and the bound of the call using it: every read and write first sets the
/// socket's timeout to what is left, so a call's whole time is bounded, not each read.
struct Conn {
    socket: Socket,
    bound: Bound,
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match &self.socket {
            Socket::Plain(s) => s,
            Socket::Tls(s) => &s.sock,
        }
    }

    fn arm(&self) -> io::Result<()> {
        let left = self.bound.left();
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        self.tcp().set_read_timeout(Some(left))?;
        self.tcp().set_write_timeout(Some(left))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        match &mut self.socket {
            Socket::Plain(s) => s.read(buf),
            Socket::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        match &mut self.socket {
            Socket::Plain(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.arm()?;
        match &mut self.socket {
            Socket::Plain(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
        }
    }
}

struct Idle {
    origin: (bool, String, u16),
    since: Instant,
    reader: BufReader<Conn>,
}

/// Which roots a TLS connection trusts.
pub enum Roots {
    /// The web PKI roots compiled in.
    WebPki,
    /// These certificates only (the custom CAs and the host's bundle).
    These(Vec<CertificateDer<'static>>),
}

/// An answer read whole.
pub struct Answer {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// Connections to any origin, with the User-Agent and trusted roots of every call.
pub struct Transport {
    user_agent: String,
    roots: Roots,
    /// Built at the first TLS connection: an unmanaged device never builds it.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<Idle>>,
}

impl Transport {
    pub fn new(user_agent: &str, roots: Roots) -> Transport {
        Transport {
            user_agent: user_agent.to_string(),
            roots,
            tls: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends one request and reads its answer whole (decoding gzip), within `deadline`;
    /// a body over `limit` bytes is an error. A kept connection the server has closed
    /// meanwhile is replaced by a new one once, before anything of the answer was read.
    pub fn exchange(
        &self,
        url: &Url,
        method: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        deadline: Instant,
        limit: usize,
    ) -> io::Result<Answer> {
        let bound = Bound::Deadline(deadline);
        let head = self.head(url, method, headers, body)?;
        if let Some(mut kept) = self.take_idle(url, bound) {
            if send(&mut kept, &head, body).is_ok() && answer_started(&mut kept) {
                return self.read_answer(url, kept, method, limit);
            }
        }
        let mut reader = self.connect(url, bound)?;
        send(&mut reader, &head, body)?;
        self.read_answer(url, reader, method, limit)
    }

    /// The answer's head and body; the connection is kept when it can carry another call.
    fn read_answer(
        &self,
        url: &Url,
        mut reader: BufReader<Conn>,
        method: &str,
        limit: usize,
    ) -> io::Result<Answer> {
        let head = http::read_head(&mut reader)?;
        let (body, reusable) = read_body(reader, &head, method == "HEAD", limit)?;
        if let Some(reader) = reusable {
            self.keep(url, reader);
        }
        Ok(Answer { head, body })
    }

    /// A POST whose body is `source`, sent in chunks as it produces them (the log stream),
    /// each read and write bounded by `each_io`; returns the answer's status.
    pub fn stream(
        &self,
        url: &Url,
        headers: &[(&str, String)],
        mut source: impl Read,
        each_io: Duration,
    ) -> io::Result<u16> {
        let mut with_framing = headers.to_vec();
        with_framing.push(("Transfer-Encoding", "chunked".into()));
        let head = self.head(url, "POST", &with_framing, None)?;
        let mut reader = self.connect(url, Bound::EachIo(each_io))?;
        reader.get_mut().write_all(head.as_bytes())?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            http::write_chunk(reader.get_mut(), &buf[..n])?;
            reader.get_mut().flush()?;
        }
        http::write_last_chunk(reader.get_mut())?;
        Ok(http::read_head(&mut reader)?.status)
    }

    /// The request's head up to its blank line: Host, User-Agent, gzip accepted, the caller's
    /// headers and the body's framing.
    fn head(
        &self,
        url: &Url,
        method: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> io::Result<String> {
        let mut all = Vec::with_capacity(headers.len() + 2);
        all.push(("Accept-Encoding", "gzip".to_string()));
        all.extend(headers.iter().cloned());
        match body {
            Some(b) => all.push(("Content-Length", b.len().to_string())),
            None if method != "GET" && method != "HEAD" && method != "DELETE" => {
                all.push(("Content-Length", "0".to_string()))
            }
            None => {}
        }
        let mut head =
            http::request_head_for(&url.authority(), &self.user_agent, method, &url.path, &all)?;
        head.push_str("\r\n");
        Ok(head)
    }

    /// A new connection: each resolved address in turn, within the bound; TLS when asked.
    fn connect(&self, url: &Url, bound: Bound) -> io::Result<BufReader<Conn>> {
        let addresses = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {}: {e}", url.host)))?;
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address for {}", url.host),
        );
        for address in addresses {
            let left = bound.left();
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out connecting",
                ));
            }
            match TcpStream::connect_timeout(&address, left) {
                Ok(tcp) => return self.wrap(url, tcp, bound),
                Err(e) => last = io::Error::new(e.kind(), format!("connecting to {address}: {e}")),
            }
        }
        Err(last)
    }

    fn wrap(&self, url: &Url, tcp: TcpStream, bound: Bound) -> io::Result<BufReader<Conn>> {
        tcp.set_nodelay(true)?;
        let socket = if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let session = rustls::ClientConnection::new(Arc::clone(self.tls_config()?), name)
                .map_err(io::Error::other)?;
            Socket::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
        } else {
            Socket::Plain(tcp)
        };
        Ok(BufReader::new(Conn { socket, bound }))
    }

    fn tls_config(&self) -> io::Result<&Arc<rustls::ClientConfig>> {
        if let Some(config) = self.tls.get() {
            return Ok(config);
        }
        let mut store = rustls::RootCertStore::empty();
        match &self.roots {
            Roots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::These(certs) => {
                store.add_parsable_certificates(certs.iter().cloned());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(self.tls.get_or_init(|| Arc::new(config)))
    }

    fn take_idle(&self, url: &Url, bound: Bound) -> Option<BufReader<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|kept| kept.since.elapsed() < MAX_IDLE_AGE);
        let at = idle.iter().position(|kept| {
            let (tls, host, port) = &kept.origin;
            (*tls, host.as_str(), *port) == url.origin()
        })?;
        let mut reader = idle.swap_remove(at).reader;
        reader.get_mut().bound = bound;
        Some(reader)
    }

    fn keep(&self, url: &Url, reader: BufReader<Conn>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        let (tls, host, port) = url.origin();
        idle.push(Idle {
            origin: (tls, host.to_string(), port),
            since: Instant::now(),
            reader,
        });
    }
}

/// Whether a kept connection answers at all: a server that closed it while it was idle
/// shows as an end or a reset before the first byte, and the call then goes on a new one.
fn answer_started(reader: &mut BufReader<Conn>) -> bool {
    matches!(reader.fill_buf(), Ok(bytes) if !bytes.is_empty())
}

fn send(reader: &mut BufReader<Conn>, head: &str, body: Option<&[u8]>) -> io::Result<()> {
    let conn = reader.get_mut();
    conn.write_all(head.as_bytes())?;
    if let Some(body) = body {
        conn.write_all(body)?;
    }
    conn.flush()
}

/// The body, decoded and bounded, and the connection when it can carry another call: the
/// body's end was known (not close-delimited), all of it was read, and neither side closes.
fn read_body(
    reader: BufReader<Conn>,
    head: &ResponseHead,
    head_request: bool,
    limit: usize,
) -> io::Result<(Vec<u8>, Option<BufReader<Conn>>)> {
    let framing = http::framing(head, head_request)?;
    let mut body = http::Body::new(reader, framing);
    let gzip = head
        .header("content-encoding")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let bytes = if gzip && framing != Framing::Empty {
        http::read_limited(&mut flate2::read::GzDecoder::new(&mut body), limit)?
    } else {
        body.read_to_end_limited(limit)?
    };
    let drained = io::copy(&mut (&mut body).take(MAX_DRAIN + 1), &mut io::sink())?;
    let closes = head
        .header("connection")
        .map(|v| v.to_ascii_lowercase())
        .map_or(head.http10, |v| {
            v.contains("close") || (head.http10 && !v.contains("keep-alive"))
        });
    let reusable = framing != Framing::UntilClose && drained <= MAX_DRAIN && !closes;
    let reader = body.into_inner();
    Ok((
        bytes,
        (reusable && reader.buffer().is_empty()).then_some(reader),
    ))
}

/// The certificates of PEM text, skipping whatever is not one.
pub fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_scheme_host_port_and_path() {
        let u = Url::parse("https://api.balena-cloud.com/device/v3/x/state?a=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "api.balena-cloud.com", 443, "/device/v3/x/state?a=1")
        );
        assert_eq!(u.authority(), "api.balena-cloud.com");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/"));
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = Url::parse("https://[::1]:4443?x#frag").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 4443, "/?x")
        );
        assert_eq!(u.authority(), "[::1]:4443");
        for bad in [
            "ftp://x",
            "https://",
            "https://u:p@host/",
            "https://host:0/",
            "https://host:99999/",
            "https://ho st/",
            "https://[::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    /// A server that answers requests from `answers` in order, on as many connections as it
    /// is given (`CLOSE` drops the connection instead of answering), and returns how many
    /// connections it accepted.
    fn serve(answers: Vec<&'static [u8]>) -> (String, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            let mut connections = 0;
            while answers.len() > 0 {
                let (stream, _) = listener.accept().unwrap();
                connections += 1;
                let mut reader = BufReader::new(stream);
                while answers.len() > 0 {
                    if http::read_request_head(&mut reader)
                        .ok()
                        .flatten()
                        .is_none()
                    {
                        break;
                    }
                    let answer = answers.next().unwrap();
                    if answer == b"CLOSE" {
                        break;
                    }
                    reader.get_mut().write_all(answer).unwrap();
                    if answer.windows(17).any(|w| w == b"Connection: close") {
                        break;
                    }
                }
            }
            connections
        });
        (url, handle)
    }

    fn get(t: &Transport, url: &str) -> io::Result<Answer> {
        let deadline = Instant::now() + Duration::from_secs(5);
        t.exchange(&Url::parse(url).unwrap(), "GET", &[], None, deadline, 1024)
    }

    #[test]
    fn a_connection_is_kept_for_the_next_call_unless_the_server_closes_it() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\ncd\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nef",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ]);
        let t = Transport::new("t", Roots::WebPki);
        let bodies: Vec<_> = (0..4).map(|_| get(&t, &url).unwrap()).collect();
        assert_eq!(bodies[0].body, b"ab");
        assert_eq!(bodies[1].body, b"cd");
        assert_eq!(bodies[2].body, b"ef");
        assert_eq!(bodies[3].head.status, 404);
        assert_eq!(
            server.join().unwrap(),
            2,
            "one connection until the close, then one more"
        );
    }

    #[test]
    fn a_kept_connection_the_server_dropped_is_replaced_once() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab",
            b"CLOSE",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\ncd",
        ]);
        let t = Transport::new("t", Roots::WebPki);
        assert_eq!(get(&t, &url).unwrap().body, b"ab");
        assert_eq!(get(&t, &url).unwrap().body, b"cd");
        assert_eq!(server.join().unwrap(), 2);
    }

    #[test]
    fn gzip_answers_are_decoded_and_bounded() {
        use flate2::write::GzEncoder;
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[b'x'; 2000]).unwrap();
        let packed = gz.finish().unwrap();
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            packed.len()
        )
        .into_bytes();
        answer.extend_from_slice(&packed);
        let answer: &'static [u8] = Box::leak(answer.into_boxed_slice());
        let (url, _server) = serve(vec![answer, answer]);
        let t = Transport::new("t", Roots::WebPki);
        let deadline = Instant::now() + Duration::from_secs(5);
        let u = Url::parse(&url).unwrap();
        let whole = t.exchange(&u, "GET", &[], None, deadline, 4096).unwrap();
        assert_eq!(whole.body, vec![b'x'; 2000]);
        let err = t
            .exchange(&u, "GET", &[], None, deadline, 1000)
            .err()
            .unwrap();
        assert!(err.to_string().contains("larger than 1000"), "{err}");
    }

    #[test]
    fn a_deadline_bounds_the_whole_call_not_each_read() {
        // Answers one byte every 100 ms: each read is quick, the call is not.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(100));
                if s.write_all(b"x").is_err() {
                    break;
                }
            }
        });
        let t = Transport::new("t", Roots::WebPki);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(500);
        let r = t.exchange(&Url::parse(&url).unwrap(), "GET", &[], None, deadline, 1024);
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
