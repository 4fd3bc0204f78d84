//! The local API's HTTP/1.1 server: a fixed number of worker threads behind a bounded queue
//! of accepted connections, deadlines on every read and write (a slow client cannot hold a
//! worker), keep-alive, bounded heads and bodies, and streamed (chunked) answers on their own
//! threads, at most a few at once. It replaced tiny_http 0.12, which grows one thread per open
//! connection, has no timeouts and buffers streamed answers (see ARCHITECTURE.md).

use crate::engine::http::{self, Body, Framing};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other(m) => m,
        })
    }
}

/// A request with its whole body read.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or_default()
    }

    /// The value of query parameter `name` (exact, case-sensitive name; no decoding).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.url
            .split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

pub enum ResponseBody {
    Bytes(Vec<u8>),
    /// Sent chunked, each read flushed at once; ends when the reader does.
    Stream(Box<dyn Read + Send>),
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ResponseBody,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: ResponseBody::Bytes(body),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.into().into_bytes(),
        )
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::new(
            status,
            "application/json; charset=utf-8",
            body.to_string().into_bytes(),
        )
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: ResponseBody::Bytes(Vec::new()),
        }
    }

    pub fn stream(content_type: &str, body: impl Read + Send + 'static) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: ResponseBody::Stream(Box::new(body)),
        }
    }
}

/// Limits of the server; the defaults suit a device API with a handful of clients.
#[derive(Debug, Clone)]
pub struct Limits {
    pub workers: usize,
    /// Accepted connections waiting for a worker; beyond it new ones get a 503 at once.
    pub queue: usize,
    /// Whole request (head and body) must arrive within this.
    pub request_deadline: Duration,
    /// A kept-alive connection with no new request for this long is closed.
    pub idle: Duration,
    /// Each write of an answer must finish within this.
    pub write_timeout: Duration,
    pub max_body: usize,
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 2,
            queue: 16,
            request_deadline: Duration::from_secs(15),
            idle: Duration::from_secs(5),
            write_timeout: Duration::from_secs(15),
            max_body: crate::compose::target::MAX_TARGET_BYTES,
            max_streams: 4,
        }
    }
}

pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// The running server; [`Server::stop`] ends the accept loop and the workers.
pub struct Server {
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Server {
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(limits.queue);
        let streams = Arc::new(AtomicUsize::new(0));
        let limits = Arc::new(limits);
        for i in 0..limits.workers {
            let (rx, handler, limits, streams) = (
                rx.clone(),
                Arc::clone(&handler),
                Arc::clone(&limits),
                Arc::clone(&streams),
            );
            std::thread::Builder::new()
                .name(format!("api-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    for conn in rx {
                        serve_connection(conn, &handler, &limits, &streams);
                    }
                })?;
        }
        let accept_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("api-accept".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for conn in listener.incoming() {
                    if accept_stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else {
                        // EMFILE and the like: back off instead of spinning.
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let _ = conn.set_nodelay(true);
                    if let Err(crossbeam_channel::TrySendError::Full(mut conn)) = tx.try_send(conn)
                    {
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                        refuse(&mut conn, 503, "Too many connections");
                    }
                }
                // Dropping the sender ends the workers once the queue is drained.
            })?;
        Ok(Server { stop, addr })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let ip = if self.addr.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            self.addr.ip()
        };
        let _ = TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, self.addr.port()),
            Duration::from_millis(200),
        );
    }
}

fn json_type() -> Vec<(String, String)> {
    vec![(
        "Content-Type".into(),
        "application/json; charset=utf-8".into(),
    )]
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        423 => "Locked",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_head(
    w: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    length: Option<usize>,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match length {
        // 204 and 304 carry no body and no length (RFC 9110 §8.6).
        Some(_) if status == 204 || status == 304 => {}
        Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    w.write_all(head.as_bytes())
}

/// A socket reader that fails once `deadline` has passed, however slowly bytes trickle in.
struct Deadline {
    conn: TcpStream,
    deadline: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        self.conn.set_read_timeout(Some(left))?;
        self.conn.read(buf)
    }
}

/// Answers with the spec's failure body (`{"status":"failed","message":…}`); the caller closes.
fn refuse(out: &mut TcpStream, status: u16, message: &str) {
    let body = failed_body(message);
    let _ = write_head(out, status, &json_type(), Some(body.len()), false);
    let _ = out.write_all(&body);
}

fn failed_body(message: &str) -> Vec<u8> {
    serde_json::json!({"status": "failed", "message": message})
        .to_string()
        .into_bytes()
}

/// Serves requests on one connection until it closes, errs, idles or asks to close.
fn serve_connection(
    conn: TcpStream,
    handler: &Arc<Handler>,
    limits: &Limits,
    streams: &Arc<AtomicUsize>,
) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut out = conn;
    let _ = out.set_write_timeout(Some(limits.write_timeout));
    let mut reader = BufReader::with_capacity(
        8 * 1024,
        Deadline {
            conn: read_half,
            deadline: Instant::now() + limits.idle,
        },
    );
    loop {
        // Each request must begin within `idle` (a connection that says nothing is dropped
        // quickly) and arrive whole within `request_deadline`.
        reader.get_mut().deadline = Instant::now() + limits.idle;
        if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            return;
        }
        reader.get_mut().deadline = Instant::now() + limits.request_deadline;
        let head = match http::read_request_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    refuse(&mut out, 400, &format!("bad request: {e}"));
                }
                return;
            }
        };
        let framing = match head.framing() {
            Ok(f) => f,
            Err(e) => {
                refuse(&mut out, 400, &format!("bad request: {e}"));
                return;
            }
        };
        if let Framing::Length(n) = framing {
            if n > limits.max_body as u64 {
                // Not 413: balena-cli takes only 400 and 503 as failures (device-api.md §0).
                refuse(&mut out, 400, "request body too large");
                return;
            }
        }
        if framing != Framing::Empty
            && head
                .header("expect")
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let body = match Body::new(&mut reader, framing).read_to_end_limited(limits.max_body) {
            Ok(b) => b,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    refuse(&mut out, 400, &format!("bad request body: {e}"));
                }
                return;
            }
        };
        let connection = head
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let keep_alive = if head.http10 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let method = Method::parse(&head.method);
        let is_head = method == Method::Head;
        let response = handler(Request {
            method,
            url: head.target,
            headers: head.headers,
            body,
        });
        match response.body {
            ResponseBody::Bytes(bytes) => {
                let sent = write_head(
                    &mut out,
                    response.status,
                    &response.headers,
                    Some(bytes.len()),
                    keep_alive,
                )
                .and_then(|_| {
                    if is_head {
                        Ok(())
                    } else {
                        out.write_all(&bytes)
                    }
                });
                if sent.is_err() || !keep_alive {
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
            ResponseBody::Stream(body) => {
                start_stream(
                    out,
                    response.status,
                    response.headers,
                    body,
                    streams,
                    limits,
                );
                return;
            }
        }
    }
}

/// Streams an answer on its own thread so the worker is free again.
fn start_stream(
    mut out: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    mut body: Box<dyn Read + Send>,
    streams: &Arc<AtomicUsize>,
    limits: &Limits,
) {
    if streams.fetch_add(1, Ordering::AcqRel) >= limits.max_streams {
        streams.fetch_sub(1, Ordering::AcqRel);
        refuse(&mut out, 503, "too many open streams");
        return;
    }
    let counter = Arc::clone(streams);
    let spawned = std::thread::Builder::new()
        .name("api-stream".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let result = (|| -> io::Result<()> {
                write_head(&mut out, status, &headers, None, false)?;
                let mut buf = vec![0u8; 8 * 1024];
                loop {
                    let n = body.read(&mut buf)?;
                    if n == 0 {
                        return out.write_all(b"0\r\n\r\n");
                    }
                    out.write_all(format!("{n:x}\r\n").as_bytes())?;
                    out.write_all(&buf[..n])?;
                    out.write_all(b"\r\n")?;
                    out.flush()?;
                }
            })();
            drop(result);
            let _ = out.shutdown(Shutdown::Both);
            counter.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        // The closure (and its counter decrement) never ran.
        streams.fetch_sub(1, Ordering::AcqRel);
        log::warn!("cannot start a streamed answer: {e}");
    }
}

#[cfg(test)]
mod tests;
