//! The local API's HTTP/1.1 server. One poll thread owns the listener and every connection
//! that is waiting for its next request (`poll(2)` on all of them, so an idle or silent client
//! costs a file descriptor, not a thread); a connection with a request arriving goes to one of
//! a fixed number of workers, which serves that one request and hands the connection back.
//! So a few workers serve many kept-alive clients in turn, and none waits on a quiet one.
//! Deadlines on every read and write (a slow client cannot hold a worker for long), bounded
//! heads, bodies and connections, streamed (chunked) answers on their own threads, at most a
//! few at once. It replaced tiny_http 0.12, which grows one thread per open connection, has no
//! timeouts and buffers streamed answers (see ARCHITECTURE.md).

use crate::engine::http::{self, Body, Framing};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
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
    /// Open connections (idle or being served); beyond it new ones get a 503 at once.
    pub max_connections: usize,
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
            max_connections: 64,
            request_deadline: Duration::from_secs(15),
            idle: Duration::from_secs(5),
            write_timeout: Duration::from_secs(15),
            max_body: crate::compose::target::MAX_TARGET_BYTES,
            max_streams: 4,
        }
    }
}

pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// The running server; [`Server::stop`] ends the poll loop and the workers.
pub struct Server {
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    waker: UnixStream,
}

/// A connection between requests, with what it already sent of the next one.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Server {
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        // Never more in flight than connections allowed, so the poll thread never blocks.
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Conn>(limits.max_connections);
        let (back_tx, back_rx) = crossbeam_channel::bounded::<Option<Conn>>(limits.max_connections);
        let (waker, wake_rx) = UnixStream::pair()?;
        waker.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let streams = Arc::new(AtomicUsize::new(0));
        let limits = Arc::new(limits);
        for i in 0..limits.workers {
            let (rx, back, handler, limits, streams) = (
                ready_rx.clone(),
                back_tx.clone(),
                Arc::clone(&handler),
                Arc::clone(&limits),
                Arc::clone(&streams),
            );
            let waker = waker.try_clone()?;
            std::thread::Builder::new()
                .name(format!("api-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    for conn in rx {
                        let kept = serve_one(conn, &handler, &limits, &streams);
                        let _ = back.try_send(kept);
                        let _ = (&waker).write(&[1]);
                    }
                })?;
        }
        let poll_stop = Arc::clone(&stop);
        let poll_limits = Arc::clone(&limits);
        std::thread::Builder::new()
            .name("api-poll".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                poll_loop(
                    &listener,
                    &wake_rx,
                    &ready_tx,
                    &back_rx,
                    &poll_limits,
                    &poll_stop,
                );
                // Dropping the sender ends the workers.
            })?;
        Ok(Server { stop, addr, waker })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&self.waker).write(&[1]);
    }
}

/// Accepts connections, waits for requests on idle ones, hands ready ones to the workers and
/// takes them back; closes connections idle for longer than `limits.idle`.
fn poll_loop(
    listener: &TcpListener,
    wake: &UnixStream,
    ready: &crossbeam_channel::Sender<Conn>,
    back: &crossbeam_channel::Receiver<Option<Conn>>,
    limits: &Limits,
    stop: &AtomicBool,
) {
    use std::os::fd::AsRawFd;
    let mut idle: Vec<(Conn, Instant)> = Vec::new();
    let mut in_service = 0usize;
    let dispatch = |conn: Conn, in_service: &mut usize| {
        if ready.try_send(conn).is_ok() {
            *in_service += 1;
        }
    };
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        while let Ok(returned) = back.try_recv() {
            in_service = in_service.saturating_sub(1);
            match returned {
                // A pipelined request is already here: no need to wait for the socket.
                Some(c) if !c.pending.is_empty() => dispatch(c, &mut in_service),
                Some(c) => idle.push((c, Instant::now())),
                None => {}
            }
        }
        // Dropping an expired connection closes it.
        idle.retain(|(_, since)| since.elapsed() < limits.idle);
        // Sleep until the next idle connection expires; with none, until something happens
        // (a stop, a returned connection and a new one all wake the poll).
        let next_expiry = idle
            .iter()
            .map(|(_, since)| limits.idle.saturating_sub(since.elapsed()))
            .min();
        fds.clear();
        fds.push(libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(idle.iter().map(|(c, _)| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let timeout = next_expiry.map_or(-1, |d| d.as_millis().clamp(1, 60_000) as libc::c_int);
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            // EINTR; anything else would repeat, so pause a little.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[1].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(k) if k > 0) {}
        }
        // Ready idle connections, highest index first so removal keeps the others' places.
        for i in (0..idle.len()).rev() {
            if fds[i + 2].revents != 0 {
                let (conn, _) = idle.swap_remove(i);
                dispatch(conn, &mut in_service);
            }
        }
        if fds[0].revents != 0 {
            loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_nodelay(true);
                        if idle.len() + in_service >= limits.max_connections {
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                            refuse(&mut stream, 503, "Too many connections");
                            continue;
                        }
                        idle.push((
                            Conn {
                                stream,
                                pending: Vec::new(),
                            },
                            Instant::now(),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // EMFILE and the like: back off instead of spinning.
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
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
/// Reads what the connection already sent (`pending`), then the socket, all within a deadline.
struct ConnReader {
    pending: Vec<u8>,
    pos: usize,
    conn: TcpStream,
    deadline: Instant,
}

impl Read for ConnReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.pending.len() {
            let n = buf.len().min(self.pending.len() - self.pos);
            buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
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

/// Serves one request of a connection that has one arriving; gives the connection back when
/// it stays open (kept alive, with any bytes of the next request already read).
fn serve_one(
    conn: Conn,
    handler: &Arc<Handler>,
    limits: &Limits,
    streams: &Arc<AtomicUsize>,
) -> Option<Conn> {
    let read_half = conn.stream.try_clone().ok()?;
    let mut out = conn.stream;
    let _ = out.set_write_timeout(Some(limits.write_timeout));
    // The whole request must arrive within `request_deadline`.
    let mut reader = BufReader::with_capacity(
        8 * 1024,
        ConnReader {
            pending: conn.pending,
            pos: 0,
            conn: read_half,
            deadline: Instant::now() + limits.request_deadline,
        },
    );
    if reader.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
        return None;
    }
    let head = match http::read_request_head(&mut reader) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(e) => {
            if e.kind() == io::ErrorKind::InvalidData {
                refuse(&mut out, 400, &format!("bad request: {e}"));
            }
            return None;
        }
    };
    let framing = match head.framing() {
        Ok(f) => f,
        Err(e) => {
            refuse(&mut out, 400, &format!("bad request: {e}"));
            return None;
        }
    };
    if let Framing::Length(n) = framing {
        if n > limits.max_body as u64 {
            // Not 413: balena-cli takes only 400 and 503 as failures (device-api.md §0).
            refuse(&mut out, 400, "request body too large");
            return None;
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
            return None;
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
                return None;
            }
            // Bytes of the next request read along with this one travel with the connection.
            let mut pending = reader.buffer().to_vec();
            let rest = reader.into_inner();
            pending.extend_from_slice(&rest.pending[rest.pos..]);
            Some(Conn {
                stream: out,
                pending,
            })
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
            None
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
