use super::*;
use std::io::{BufRead, BufReader};

fn serve(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let handler: Arc<Handler> = Arc::new(|req: Request| match req.path() {
        "/echo" => Response::new(200, "application/octet-stream", req.body),
        "/slow" => {
            std::thread::sleep(Duration::from_millis(300));
            Response::text(200, "slow")
        }
        "/stream" => {
            let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(4);
            std::thread::spawn(move || {
                for i in 0..3 {
                    let _ = tx.send(format!("line {i}\n").into_bytes());
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            struct R(crossbeam_channel::Receiver<Vec<u8>>);
            impl Read for R {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    match self.0.recv() {
                        Ok(b) => {
                            buf[..b.len()].copy_from_slice(&b);
                            Ok(b.len())
                        }
                        Err(_) => Ok(0),
                    }
                }
            }
            Response::stream("application/x-ndjson", R(rx))
        }
        _ => Response::text(200, format!("{} {}", req.method, req.url)),
    });
    Server::start(listener, limits, handler).unwrap()
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Reads one answer: status, headers, body (Content-Length or chunked).
fn answer(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let head = http::read_head(r).unwrap();
    let framing = http::framing(&head, false).unwrap();
    let body = Body::new(r, framing).read_to_end_limited(1 << 20).unwrap();
    (head.status, head.headers, body)
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = serve(Limits::default());
    let mut c = connect(&s);
    c.write_all(b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(answer(&mut r).2, b"GET /a?x=1");
    assert_eq!(answer(&mut r).2, b"hello");
    // Chunked request bodies too.
    c.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
        .unwrap();
    let (status, headers, body) = answer(&mut r);
    assert_eq!((status, body.as_slice()), (200, &b"abcde"[..]));
    assert!(headers.contains(&("Connection".into(), "close".into())));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after Connection: close");
    s.stop();
}

#[test]
fn head_answers_have_no_body_and_http10_closes() {
    let s = serve(Limits::default());
    let mut c = connect(&s);
    c.write_all(b"HEAD /x HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Length: 7\r\n") && text.ends_with("\r\n\r\n"));
}

#[test]
fn bad_requests_get_a_400_and_the_connection_closes() {
    let s = serve(Limits {
        max_body: 10,
        ..Limits::default()
    });
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        // 32 bytes in chunks over a 10-byte limit.
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n0123456789abcdef0123456789abcdef\r\n0\r\n\r\n",
    ] {
        let mut c = connect(&s);
        c.write_all(raw).unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with("HTTP/1.1 400 ") && text.contains("\"status\":\"failed\""),
            "{:?} -> {text}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn a_slow_client_is_cut_off_at_the_deadline() {
    let s = serve(Limits {
        request_deadline: Duration::from_millis(400),
        ..Limits::default()
    });
    let mut c = connect(&s);
    let started = Instant::now();
    // One byte every 100 ms would hold a per-read timeout forever; the deadline does not.
    for b in b"GET /slowloris HTTP/1.1\r\n" {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        rest.is_empty(),
        "no answer to a request that never finished"
    );
    // The worker is free again.
    let mut c = connect(&s);
    c.write_all(b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 200);
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let s = serve(Limits {
        idle: Duration::from_millis(200),
        ..Limits::default()
    });
    let mut c = connect(&s);
    c.write_all(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(answer(&mut r).0, 200);
    let started = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn too_many_connections_get_a_503_at_once() {
    let s = serve(Limits {
        workers: 1,
        max_connections: 2,
        ..Limits::default()
    });
    // One connection busy in the worker, one idle.
    let mut busy = connect(&s);
    busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n").unwrap();
    let _idle = connect(&s);
    std::thread::sleep(Duration::from_millis(50));
    let mut third = connect(&s);
    let mut all = Vec::new();
    third.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Too many connections"));
    assert_eq!(answer(&mut BufReader::new(busy)).0, 200);
}

#[test]
fn one_worker_serves_many_kept_alive_clients_in_turn() {
    let s = serve(Limits {
        workers: 1,
        ..Limits::default()
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let mut c = connect(&s);
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                for n in 0..5 {
                    c.write_all(format!("GET /c{i}/{n} HTTP/1.1\r\n\r\n").as_bytes())
                        .unwrap();
                    let (status, _, body) = answer(&mut r);
                    assert_eq!((status, body), (200, format!("GET /c{i}/{n}").into_bytes()));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Kept-alive clients do not wait for each other to go idle (5 s each).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn silent_connections_hold_no_worker() {
    let s = serve(Limits {
        workers: 1,
        ..Limits::default()
    });
    let _silent: Vec<TcpStream> = (0..30).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let mut c = connect(&s);
    c.write_all(b"GET /now HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn streamed_answers_arrive_line_by_line_and_are_bounded() {
    let s = serve(Limits {
        max_streams: 1,
        ..Limits::default()
    });
    let mut c = connect(&s);
    c.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    let head = http::read_head(&mut r).unwrap();
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let mut body = BufReader::new(Body::new(r, http::Framing::Chunked));
    let started = Instant::now();
    let mut line = String::new();
    body.read_line(&mut line).unwrap();
    assert_eq!(line, "line 0\n");
    // The first line came before the stream ended (it takes 600 ms).
    assert!(started.elapsed() < Duration::from_millis(400));

    // A second stream at the same time is refused; ordinary requests still work.
    let mut other = connect(&s);
    other.write_all(b"GET /stream HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(answer(&mut BufReader::new(other)).0, 503);
    let mut rest = String::new();
    body.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "line 1\nline 2\n");
    s.stop();
}
