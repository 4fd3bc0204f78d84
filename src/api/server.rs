//! The local API's HTTP/1.1 server. One poll thread owns the listener and every connection
//! that is waiting for its next request (`poll(2)` on all of them, so an idle or silent client
//! costs a file descriptor, not a thread); a connection with a request arriving goes to one of
//! a fixed number of workers, which serves that one request and hands the connection back.
//! So a few workers serve many kept-alive clients in turn, and none waits on a quiet one.
//! Deadlines on every read and write (a slow client cannot hold a worker for long), bounded
//! heads, bodies and connections, streamed (chunked) answers on their own threads, at most a
//! few at once. It replaced tiny_http 0.12, which grows one thread per open connection, has no
//! timeouts and buffers streamed answers (see ARCHITECTURE.md).

use crate::http::{self, Body, Framing};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
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

/// A request with its whole body read (or, for an upload, its body to read).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query as sent.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body of an upload ([`Limits::uploads`]), read as it arrives; `body` is empty.
    pub upload: Option<UploadBody>,
}

/// An upload's body: taken once by the handler. Reads fail after [`UPLOAD_SILENCE`] without
/// data, and at a body that ends before its framing says.
#[derive(Clone)]
pub struct UploadBody(Arc<std::sync::Mutex<Option<Box<dyn Read + Send>>>>);

impl UploadBody {
    fn new(body: impl Read + Send + 'static) -> UploadBody {
        UploadBody(Arc::new(std::sync::Mutex::new(Some(Box::new(body)))))
    }

    pub fn take(&self) -> Option<Box<dyn Read + Send>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadBody")
    }
}

/// How long an upload may send nothing before its read fails.
const UPLOAD_SILENCE: Duration = Duration::from_secs(60);

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header_value(&self.headers, name)
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

/// The body of a streamed answer: waits a bounded time for more, so the thread sending it can
/// notice a client that has gone while nothing is being sent.
pub trait StreamBody: Send {
    /// Up to `wait` for more: `Some(n)` bytes read into `buf` (`Some(0)` at the end), `None`
    /// when nothing came in time.
    fn read_wait(&mut self, buf: &mut [u8], wait: Duration) -> io::Result<Option<usize>>;
}

/// How often a stream with nothing to send checks that its client is still there.
const STREAM_CHECK: Duration = Duration::from_secs(2);

/// Whether the peer of `out` has closed or reset the connection (without blocking).
fn peer_gone(out: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let revents = poll_one(out.as_raw_fd(), libc::POLLRDHUP, Duration::ZERO);
    revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Waits up to `wait` (at most a minute) for `events` on one descriptor; what happened, or 0.
pub(super) fn poll_one(
    fd: std::os::fd::RawFd,
    events: libc::c_short,
    wait: Duration,
) -> libc::c_short {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = wait.as_millis().min(60_000) as libc::c_int;
    // SAFETY: one valid, initialised pollfd.
    if unsafe { libc::poll(&mut pfd, 1, ms) } > 0 {
        pfd.revents
    } else {
        0
    }
}

pub enum ResponseBody {
    Bytes(Vec<u8>),
    /// Sent chunked, each read flushed at once; ends when the body does or the client goes.
    Stream(Box<dyn StreamBody>),
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

    pub fn stream(content_type: &str, body: impl StreamBody + 'static) -> Response {
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
    /// Open connections (waiting, being served or lingering). When full, the connection that
    /// has waited longest without a whole request is closed to make room; only when every
    /// connection is being served does a new one get a 503.
    pub max_connections: usize,
    /// Connections one peer address may hold; its oldest waiting one makes room for a new one.
    pub max_per_peer: usize,
    /// Whole request (head and body) must arrive within this.
    pub request_deadline: Duration,
    /// A kept-alive connection with no new request for this long is closed.
    pub idle: Duration,
    /// Each write of an answer must finish within this.
    pub write_timeout: Duration,
    pub max_body: usize,
    pub max_streams: usize,
    /// Paths whose POST bodies are not read by the server but handed to the handler as a
    /// stream ([`Request::upload`]), served one at a time on their own thread.
    pub uploads: &'static [&'static str],
    /// Largest upload body.
    pub max_upload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 2,
            max_connections: 256,
            max_per_peer: 64,
            request_deadline: Duration::from_secs(15),
            idle: Duration::from_secs(5),
            write_timeout: Duration::from_secs(15),
            max_body: crate::compose::target::MAX_TARGET_BYTES,
            max_streams: 4,
            uploads: &[],
            max_upload: 64 << 30,
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

/// A connection with what it sent of its next request (the poll thread reads it; a worker
/// gets the connection only once the whole request is here).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    peer: IpAddr,
    /// Since when it has been waiting: for a request to begin, or for the rest of one.
    since: Instant,
    /// `100 Continue` was sent for the request in `buf`.
    continued: bool,
    /// How far the request in `buf` has been looked at.
    progress: Progress,
}

/// What a worker gives back: the connection kept alive, or the address of a closed one.
type Returned = Result<Conn, IpAddr>;

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
        let (back_tx, back_rx) = crossbeam_channel::bounded::<Returned>(limits.max_connections);
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
                        let peer = conn.peer;
                        let kept = serve_one(conn, &handler, &limits, &streams).ok_or(peer);
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
                let mut conns = Conns::new(&poll_limits, ready_tx);
                conns.run(&listener, &wake_rx, &back_rx, &poll_stop);
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

/// How long a refused connection may go on sending (its answer is already out) before it is
/// closed, and how much of it is read and thrown away meanwhile.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// What the bytes a connection sent so far amount to.
#[derive(Debug, PartialEq, Eq)]
enum Examined {
    /// Not a whole request yet; `continue_now` when the client waits for `100 Continue`.
    Incomplete {
        continue_now: bool,
    },
    Whole,
    /// A request that will never be served: answer this and close.
    Refuse(u16, String),
}

/// How far the poll thread has looked at a connection's request, so that every byte is looked
/// at about once however slowly it trickles in (parsing the whole buffer again after each read
/// would be quadratic): where the search for the end of the head stopped, the head once it is
/// whole, and how far a chunked body's chunks have been checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    searched: usize,
    /// Length of the head, its body framing, and whether it waits for `100 Continue`.
    head: Option<(usize, Framing, bool)>,
    /// Offset (in the body) of the next chunk-size line, and the chunk data so far.
    chunk_next: usize,
    chunk_data: u64,
    /// The request is an upload: whole once its head is.
    upload: bool,
}

fn invalid_body(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The end (exclusive) of the line starting at `from`, without its CR LF; `Err` when the line
/// is already longer than any line may be.
fn line_at(buf: &[u8], from: usize) -> io::Result<Option<(&[u8], usize)>> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest
        .iter()
        .take(http::MAX_LINE + 2)
        .position(|&b| b == b'\n')
    {
        Some(i) => {
            let line = &rest[..i];
            Ok(Some((
                line.strip_suffix(b"\r").unwrap_or(line),
                from + i + 1,
            )))
        }
        None if rest.len() > http::MAX_LINE + 1 => Err(invalid_body("chunk line too long")),
        None => Ok(None),
    }
}

/// Checks the chunks of `body` from where `p` stopped: `Ok(true)` when the last chunk and its
/// trailers are there, `Ok(false)` when more must come.
fn scan_chunks(body: &[u8], p: &mut Progress, max_body: usize) -> io::Result<bool> {
    loop {
        let Some((size_line, data_at)) = line_at(body, p.chunk_next)? else {
            return Ok(false);
        };
        let size = http::parse_chunk_size(size_line)?;
        if size == 0 {
            // Trailer lines (few and short: bounded like header lines) up to an empty one.
            let mut at = data_at;
            for _ in 0..=http::MAX_HEADERS {
                match line_at(body, at)? {
                    None => return Ok(false),
                    Some((&[], _)) => return Ok(true),
                    Some((_, next)) => at = next,
                }
            }
            return Err(invalid_body("too many trailer lines"));
        }
        if p.chunk_data + size > max_body as u64 {
            return Err(invalid_body(format!("body larger than {max_body} bytes")));
        }
        let data_end = data_at + size as usize;
        let after = body.get(data_end..).unwrap_or_default();
        let next = match after {
            [b'\n', ..] => data_end + 1,
            [b'\r', b'\n', ..] => data_end + 2,
            [] | [b'\r'] => return Ok(false),
            _ => return Err(invalid_body("chunk data longer than its size")),
        };
        p.chunk_data += size;
        p.chunk_next = next;
    }
}

/// Where the head of `buf` ends (after its empty line), searching on from `p.searched`.
fn head_end(buf: &[u8], p: &mut Progress) -> Option<usize> {
    let from = p.searched.saturating_sub(2);
    let found = (from..buf.len()).find(|&i| {
        buf[i] == b'\n'
            && (buf.get(i + 1) == Some(&b'\n')
                || (buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n')))
    });
    if found.is_none() {
        p.searched = buf.len();
    }
    found
}

/// Whether `buf` holds a whole request (head and body), under the server's limits. `p` carries
/// what earlier calls found, so the poll thread can ask after every read.
fn examine(buf: &[u8], limits: &Limits, p: &mut Progress) -> Examined {
    let max_body = limits.max_body;
    let incomplete = Examined::Incomplete {
        continue_now: false,
    };
    if p.head.is_none() {
        let first_line = &buf[..buf.len().min(http::MAX_LINE + 2)];
        if !first_line.contains(&b'\n') && buf.len() > http::MAX_LINE + 1 {
            return Examined::Refuse(414, "request line too long".into());
        }
        if head_end(buf, p).is_none() {
            return if buf.len() > http::MAX_HEAD {
                Examined::Refuse(431, "request header fields too large".into())
            } else {
                incomplete
            };
        }
        let mut rest = buf;
        let head = match http::read_request_head(&mut rest) {
            Ok(Some(h)) => h,
            // Only blank lines so far (allowed before a request line), or the end found was
            // theirs: search on from here.
            Ok(None) => {
                p.searched = buf.len();
                return incomplete;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                p.searched = buf.len();
                return incomplete;
            }
            Err(e) if http::is_head_too_large(&e) => return Examined::Refuse(431, e.to_string()),
            Err(e) => return Examined::Refuse(400, format!("bad request: {e}")),
        };
        let framing = match head.framing() {
            Ok(f) => f,
            Err(e) => return Examined::Refuse(400, format!("bad request: {e}")),
        };
        let expects_continue = head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        p.head = Some((buf.len() - rest.len(), framing, expects_continue));
        p.upload = head.method == "POST"
            && limits
                .uploads
                .contains(&head.target.split('?').next().unwrap_or_default());
    }
    if p.upload {
        return match p.head {
            Some((_, Framing::Length(n), _)) if n > limits.max_upload => {
                Examined::Refuse(400, "upload too large".into())
            }
            _ => Examined::Whole,
        };
    }
    let Some((head_len, framing, expects_continue)) = p.head else {
        return incomplete;
    };
    let body = &buf[head_len..];
    let waiting = Examined::Incomplete {
        continue_now: expects_continue && body.is_empty(),
    };
    match framing {
        Framing::Empty | Framing::UntilClose => Examined::Whole,
        // Not 413: balena-cli takes only 400 and 503 as failures (docs/contract/device-api.md §0).
        Framing::Length(n) if n > max_body as u64 => {
            Examined::Refuse(400, "request body too large".into())
        }
        Framing::Length(n) if (body.len() as u64) < n => waiting,
        Framing::Length(_) => Examined::Whole,
        Framing::Chunked => match scan_chunks(body, p, max_body) {
            Ok(true) => Examined::Whole,
            Ok(false) => waiting,
            Err(e) => Examined::Refuse(400, format!("bad request body: {e}")),
        },
    }
}

/// The poll thread's connections: waiting for (the rest of) a request, being served by a
/// worker, or lingering after a refusal.
struct Conns<'a> {
    limits: &'a Limits,
    ready: crossbeam_channel::Sender<Conn>,
    waiting: Vec<Conn>,
    /// Refused connections read to their end (or the linger bound) so the client sees its
    /// answer instead of a reset: (stream, peer, until, bytes left to throw away).
    lingering: Vec<(TcpStream, IpAddr, Instant, usize)>,
    in_service: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl<'a> Conns<'a> {
    fn new(limits: &'a Limits, ready: crossbeam_channel::Sender<Conn>) -> Conns<'a> {
        Conns {
            limits,
            ready,
            waiting: Vec::new(),
            lingering: Vec::new(),
            in_service: 0,
            per_peer: HashMap::new(),
        }
    }

    fn open(&self) -> usize {
        self.waiting.len() + self.in_service + self.lingering.len()
    }

    fn closed(&mut self, peer: IpAddr) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Closes waiting connection `i` (dropping the stream closes it).
    fn drop_waiting(&mut self, i: usize) {
        let conn = self.waiting.swap_remove(i);
        self.closed(conn.peer);
    }

    /// The waiting connection (of `peer`, or any) that has waited longest.
    fn oldest_waiting(&self, peer: Option<IpAddr>) -> Option<usize> {
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, c)| peer.is_none_or(|p| c.peer == p))
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
    }

    fn run(
        &mut self,
        listener: &TcpListener,
        wake: &UnixStream,
        back: &crossbeam_channel::Receiver<Returned>,
        stop: &AtomicBool,
    ) {
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pollin = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        while !stop.load(Ordering::Acquire) {
            while let Ok(returned) = back.try_recv() {
                self.in_service = self.in_service.saturating_sub(1);
                match returned {
                    Ok(mut conn) => {
                        conn.since = Instant::now();
                        conn.continued = false;
                        conn.progress = Progress::default();
                        // A pipelined request may already be whole.
                        self.settle(conn);
                    }
                    Err(peer) => self.closed(peer),
                }
            }
            self.expire();
            fds.clear();
            fds.push(pollin(listener.as_raw_fd()));
            fds.push(pollin(wake.as_raw_fd()));
            fds.extend(self.waiting.iter().map(|c| pollin(c.stream.as_raw_fd())));
            fds.extend(self.lingering.iter().map(|l| pollin(l.0.as_raw_fd())));
            let timeout = self
                .next_expiry()
                .map_or(-1, |d| d.as_millis().clamp(1, 60_000) as libc::c_int);
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
            let waiting = self.waiting.len();
            // Highest index first so removals keep the others' places.
            for i in (0..self.lingering.len()).rev() {
                if fds[2 + waiting + i].revents != 0 {
                    self.drain_lingering(i);
                }
            }
            for i in (0..waiting).rev() {
                if fds[2 + i].revents != 0 {
                    let conn = self.waiting.swap_remove(i);
                    self.read_more(conn);
                }
            }
            if fds[0].revents != 0 {
                self.accept_all(listener);
            }
        }
    }

    /// When the next waiting or lingering connection runs out of time.
    fn next_expiry(&self) -> Option<Duration> {
        let waiting = self.waiting.iter().map(|c| {
            let limit = if c.buf.is_empty() {
                self.limits.idle
            } else {
                self.limits.request_deadline
            };
            limit.saturating_sub(c.since.elapsed())
        });
        let lingering = self
            .lingering
            .iter()
            .map(|l| l.2.saturating_duration_since(Instant::now()));
        waiting.chain(lingering).min()
    }

    /// Closes connections idle past `idle`, requests unfinished past `request_deadline`, and
    /// lingering ones past their time.
    fn expire(&mut self) {
        for i in (0..self.waiting.len()).rev() {
            let c = &self.waiting[i];
            let limit = if c.buf.is_empty() {
                self.limits.idle
            } else {
                self.limits.request_deadline
            };
            if c.since.elapsed() >= limit {
                self.drop_waiting(i);
            }
        }
        let now = Instant::now();
        for i in (0..self.lingering.len()).rev() {
            if now >= self.lingering[i].2 {
                let (_, peer, _, _) = self.lingering.swap_remove(i);
                self.closed(peer);
            }
        }
    }

    fn accept_all(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr.ip()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // EMFILE and the like: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }

    /// Makes room for a new connection (closing the longest-waiting one of its peer, or of
    /// all, when a bound is reached) or refuses it when every connection is being served.
    fn admit(&mut self, mut stream: TcpStream, peer: IpAddr) {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_nonblocking(true);
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
            match self.oldest_waiting(Some(peer)) {
                Some(i) => self.drop_waiting(i),
                None => return refuse(&mut stream, 503, "Too many connections"),
            }
        }
        if self.open() >= self.limits.max_connections {
            if let Some(i) = self.lingering.len().checked_sub(1) {
                let (_, old_peer, _, _) = self.lingering.swap_remove(i);
                self.closed(old_peer);
            } else {
                match self.oldest_waiting(None) {
                    Some(i) => self.drop_waiting(i),
                    None => return refuse(&mut stream, 503, "Too many connections"),
                }
            }
        }
        *self.per_peer.entry(peer).or_insert(0) += 1;
        // The request has usually arrived with the connection: read it now, before a flood
        // of newer connections could push this one out.
        self.read_more(Conn {
            stream,
            buf: Vec::new(),
            peer,
            since: Instant::now(),
            continued: false,
            progress: Progress::default(),
        });
    }

    /// Reads what the connection has sent (without blocking), then settles it.
    fn read_more(&mut self, mut conn: Conn) {
        let cap = http::MAX_HEAD + self.limits.max_body + 2 * http::MAX_LINE;
        let mut chunk = [0u8; 16 * 1024];
        // At most this much per call: the rest is read when poll says so again. An upload
        // is handed over once its head is here, with at most this much of its body.
        let mut budget: usize = 64 * 1024;
        while budget > 0 {
            match (&conn.stream).read(&mut chunk) {
                Ok(0) => return self.closed(conn.peer),
                Ok(n) => {
                    if conn.buf.is_empty() {
                        conn.since = Instant::now();
                    }
                    conn.buf.extend_from_slice(&chunk[..n]);
                    budget = budget.saturating_sub(n);
                    if conn.buf.len() > cap {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.closed(conn.peer),
            }
        }
        self.settle(conn);
    }

    /// Hands a connection with a whole request to a worker, refuses a bad one, or keeps it
    /// waiting for the rest.
    fn settle(&mut self, mut conn: Conn) {
        if conn.buf.is_empty() {
            return self.waiting.push(conn);
        }
        match examine(&conn.buf, self.limits, &mut conn.progress) {
            Examined::Whole => {
                let _ = conn.stream.set_nonblocking(false);
                match self.ready.try_send(conn) {
                    Ok(()) => self.in_service += 1,
                    Err(e) => self.closed(e.into_inner().peer),
                }
            }
            Examined::Incomplete { continue_now } => {
                if continue_now && !conn.continued {
                    conn.continued = true;
                    let _ = (&conn.stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.waiting.push(conn);
            }
            Examined::Refuse(status, message) => {
                refuse(&mut conn.stream, status, &message);
                // The client may still be sending: read and discard until it is done, so it
                // gets the answer rather than a reset.
                let _ = conn.stream.shutdown(Shutdown::Write);
                self.lingering.push((
                    conn.stream,
                    conn.peer,
                    Instant::now() + LINGER,
                    LINGER_BYTES,
                ));
            }
        }
    }

    fn drain_lingering(&mut self, i: usize) {
        let mut sink = [0u8; 16 * 1024];
        let entry = &mut self.lingering[i];
        let done = loop {
            match (&entry.0).read(&mut sink) {
                Ok(0) => break true,
                Ok(n) if n >= entry.3 => break true,
                Ok(n) => entry.3 -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if done {
            let (_, peer, _, _) = self.lingering.swap_remove(i);
            self.closed(peer);
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
        414 => "URI Too Long",
        423 => "Locked",
        431 => "Request Header Fields Too Large",
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

/// A request past which the heap is trimmed once it has been served: a JSON document takes
/// some 30 times its size once parsed, so even a 64 KiB one leaves megabytes freed but kept.
const LARGE_REQUEST: usize = 64 * 1024;

/// Serves the whole request a connection has sent; gives the connection back when it stays
/// open (kept alive, with any bytes of the next request already read).
fn serve_one(
    conn: Conn,
    handler: &Arc<Handler>,
    limits: &Limits,
    streams: &Arc<AtomicUsize>,
) -> Option<Conn> {
    let large = conn.buf.len() > LARGE_REQUEST;
    let kept = serve_request(conn, handler, limits, streams);
    if large {
        // Its buffers, body and parsed document are freed by now.
        crate::host::give_back_memory();
    }
    kept
}

fn serve_request(
    conn: Conn,
    handler: &Arc<Handler>,
    limits: &Limits,
    streams: &Arc<AtomicUsize>,
) -> Option<Conn> {
    if conn.progress.upload {
        start_upload(conn, handler, limits, streams);
        return None;
    }
    let mut out = conn.stream;
    let _ = out.set_write_timeout(Some(limits.write_timeout));
    // The poll thread checked the request is whole and well-formed: this only decodes it.
    let mut rest: &[u8] = &conn.buf;
    let head = http::read_request_head(&mut rest).ok()??;
    let framing = head.framing().ok()?;
    let mut body_reader = Body::new(rest, framing);
    let body = body_reader.read_to_end_limited(limits.max_body).ok()?;
    let pending = body_reader.into_inner().to_vec();
    drop(conn.buf);
    let connection = head
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Both framings at once: answer, then close (RFC 9112 §6.1), whatever else was sent.
    let ambiguous =
        head.header("transfer-encoding").is_some() && head.header("content-length").is_some();
    let keep_alive = !ambiguous
        && if head.http10 {
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
        upload: None,
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
            let _ = out.set_nonblocking(true);
            Some(Conn {
                stream: out,
                buf: pending,
                peer: conn.peer,
                since: Instant::now(),
                continued: false,
                progress: Progress::default(),
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

/// The one upload at a time, holding a place among the streamed answers; both are given back
/// when it is dropped.
struct UploadSlot {
    streams: Arc<AtomicUsize>,
}

static UPLOADING: AtomicBool = AtomicBool::new(false);

impl UploadSlot {
    /// The slot, or why there is none.
    fn take(streams: &Arc<AtomicUsize>, limits: &Limits) -> Result<UploadSlot, &'static str> {
        if UPLOADING.swap(true, Ordering::AcqRel) {
            return Err("another upload is in progress");
        }
        // From here on, dropping the slot gives back both.
        let slot = UploadSlot {
            streams: Arc::clone(streams),
        };
        if streams.fetch_add(1, Ordering::AcqRel) >= limits.max_streams {
            return Err("too many open streams");
        }
        Ok(slot)
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
        UPLOADING.store(false, Ordering::Release);
    }
}

/// Serves an upload on its own thread (one at a time, counted with the streamed answers):
/// the handler reads the body from the connection as it arrives, then its answer is sent
/// and the connection closed.
fn start_upload(conn: Conn, handler: &Arc<Handler>, limits: &Limits, streams: &Arc<AtomicUsize>) {
    let mut out = conn.stream;
    let slot = match UploadSlot::take(streams, limits) {
        Ok(slot) => slot,
        Err(why) => return refuse(&mut out, 503, why),
    };
    let handler = Arc::clone(handler);
    let write_timeout = limits.write_timeout;
    // A thread that cannot start drops the closure, and with it the slot.
    let spawned = std::thread::Builder::new()
        .name("api-upload".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Ok(out) = serve_upload(out, conn.buf, &handler, write_timeout, slot) {
                linger(out);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start an upload: {e}");
    }
}

/// Hands the upload to the handler, gives the slot back once it has answered (before the
/// answer goes out, so the client's next upload finds it free), sends the answer; returns the
/// connection.
fn serve_upload(
    mut out: TcpStream,
    buf: Vec<u8>,
    handler: &Arc<Handler>,
    write_timeout: Duration,
    slot: UploadSlot,
) -> io::Result<TcpStream> {
    let mut rest: &[u8] = &buf;
    let head = http::read_request_head(&mut rest)?.ok_or_else(|| invalid_body("no request"))?;
    let framing = head.framing()?;
    let already = io::Cursor::new(rest.to_vec());
    drop(buf);
    out.set_nonblocking(false)?;
    out.set_read_timeout(Some(UPLOAD_SILENCE))?;
    out.set_write_timeout(Some(write_timeout))?;
    if head
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let socket = io::BufReader::with_capacity(64 * 1024, already.chain(out.try_clone()?));
    let response = handler(Request {
        method: Method::parse(&head.method),
        url: head.target,
        headers: head.headers,
        body: Vec::new(),
        upload: Some(UploadBody::new(Body::new(socket, framing))),
    });
    drop(slot);
    let (status, headers, bytes) = match response.body {
        ResponseBody::Bytes(bytes) => (response.status, response.headers, bytes),
        ResponseBody::Stream(_) => (500, json_type(), failed_body("no streamed answer here")),
    };
    write_head(&mut out, status, &headers, Some(bytes.len()), false)?;
    out.write_all(&bytes)?;
    out.shutdown(Shutdown::Write)?;
    Ok(out)
}

/// A refused upload may still be sending: read and discard a while (as for a refused
/// request), so the client gets the answer rather than a reset.
fn linger(mut out: TcpStream) {
    let until = Instant::now() + LINGER;
    let _ = out.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    while Instant::now() < until && left > 0 {
        match out.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => left = left.saturating_sub(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// Streams an answer on its own thread so the worker is free again.
fn start_stream(
    mut out: TcpStream,
    status: u16,
    headers: Vec<(String, String)>,
    mut body: Box<dyn StreamBody>,
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
                    let n = match body.read_wait(&mut buf, STREAM_CHECK)? {
                        Some(n) => n,
                        // Nothing to send: free the slot if the client has gone.
                        None if peer_gone(&out) => return Ok(()),
                        None => continue,
                    };
                    if n == 0 {
                        return http::write_last_chunk(&mut out);
                    }
                    http::write_chunk(&mut out, &buf[..n])?;
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
