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
        "/quiet" => {
            struct Quiet;
            impl StreamBody for Quiet {
                fn read_wait(&mut self, _: &mut [u8], wait: Duration) -> io::Result<Option<usize>> {
                    std::thread::sleep(wait);
                    Ok(None)
                }
            }
            Response::stream("application/x-ndjson", Quiet)
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
            impl StreamBody for R {
                fn read_wait(
                    &mut self,
                    buf: &mut [u8],
                    wait: Duration,
                ) -> io::Result<Option<usize>> {
                    match self.0.recv_timeout(wait) {
                        Ok(b) => {
                            buf[..b.len()].copy_from_slice(&b);
                            Ok(Some(b.len()))
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
                        Err(_) => Ok(Some(0)),
                    }
                }
            }
            Response::stream("application/x-ndjson", R(rx))
        }
        "/upload" => {
            let mut body = req.upload.and_then(|u| u.take()).unwrap();
            let mut buf = [0u8; 4096];
            let mut n = 0usize;
            loop {
                match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Response::text(400, e.to_string()),
                }
            }
            Response::text(200, n.to_string())
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
fn when_full_the_longest_waiting_connection_makes_room() {
    let s = serve(Limits {
        workers: 1,
        max_connections: 2,
        ..Limits::default()
    });
    // One connection busy in the worker, one silent.
    let mut busy = connect(&s);
    busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n").unwrap();
    let mut silent = connect(&s);
    std::thread::sleep(Duration::from_millis(50));
    // A third is served: the silent one is closed to make room.
    let mut third = connect(&s);
    third
        .write_all(b"GET /third HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    silent.read_to_end(&mut all).unwrap();
    assert!(all.is_empty(), "the silent connection was closed");
    assert_eq!(answer(&mut BufReader::new(third)).0, 200);
    assert_eq!(answer(&mut BufReader::new(busy)).0, 200);
}

#[test]
fn only_when_every_connection_is_being_served_is_a_new_one_refused() {
    let s = serve(Limits {
        workers: 1,
        max_connections: 1,
        ..Limits::default()
    });
    let mut busy = connect(&s);
    busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut second = connect(&s);
    let mut all = Vec::new();
    second.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Too many connections"));
    assert_eq!(answer(&mut BufReader::new(busy)).0, 200);
}

#[test]
fn trickling_clients_hold_no_worker() {
    let s = serve(Limits {
        workers: 1,
        ..Limits::default()
    });
    // Requests begun and never finished: they wait in the poll set, not in a worker.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = connect(&s);
            c.write_all(b"G").unwrap();
            c
        })
        .collect();
    let mut body = connect(&s);
    body.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut c = connect(&s);
    c.write_all(b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
}

#[test]
fn one_peer_cannot_hold_more_than_its_share() {
    let s = serve(Limits {
        max_per_peer: 3,
        ..Limits::default()
    });
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut c = connect(&s);
    c.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 200);
    // The peer's oldest waiting connection made room.
    let mut all = Vec::new();
    held[0].read_to_end(&mut all).unwrap();
    assert!(all.is_empty());
    held.clear();
}

#[test]
fn over_long_lines_get_414_and_large_heads_431() {
    let s = serve(Limits::default());
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(http::MAX_LINE + 10));
    let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(200));
    let big_header = format!("GET / HTTP/1.1\r\nX-A: {}\r\n\r\n", "b".repeat(9000));
    for (raw, status) in [(long_target, 414), (many_headers, 431), (big_header, 431)] {
        let mut c = connect(&s);
        c.write_all(raw.as_bytes()).unwrap();
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    }
}

#[test]
fn a_body_over_the_limit_gets_its_400_while_the_client_is_still_sending() {
    let s = serve(Limits {
        max_body: 1024 * 1024,
        ..Limits::default()
    });
    let mut c = connect(&s);
    let size = 4 * 1024 * 1024;
    c.write_all(format!("POST /echo HTTP/1.1\r\nContent-Length: {size}\r\n\r\n").as_bytes())
        .unwrap();
    // Sends the whole body, as curl does, before reading the answer.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..size / chunk.len() {
        c.write_all(&chunk).expect("no reset while sending");
    }
    let mut all = Vec::new();
    c.read_to_end(&mut all).expect("no reset while reading");
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 400 ") && text.contains("request body too large"),
        "{text}"
    );
}

#[test]
fn both_framings_close_the_connection_after_the_answer() {
    let s = serve(Limits::default());
    let mut c = connect(&s);
    c.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let (status, headers, body) = answer(&mut r);
    assert_eq!((status, body.as_slice()), (200, &b"ab"[..]));
    assert!(headers.contains(&("Connection".into(), "close".into())));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the smuggled request was not served");
}

#[test]
fn expect_continue_gets_a_100_before_the_body() {
    let s = serve(Limits::default());
    let mut c = connect(&s);
    c.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    r.read_line(&mut line).unwrap();
    c.write_all(b"ok").unwrap();
    assert_eq!(answer(&mut r).2, b"ok");
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

#[test]
fn a_stream_slot_is_freed_when_its_client_goes() {
    let s = serve(Limits {
        max_streams: 1,
        ..Limits::default()
    });
    let mut c = connect(&s);
    c.write_all(b"GET /quiet HTTP/1.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(http::read_head(&mut r).unwrap().status, 200);
    drop(r);
    drop(c);
    // Nothing is ever sent on it: the thread notices the client left within a check period.
    let deadline = Instant::now() + STREAM_CHECK * 3;
    loop {
        let mut other = connect(&s);
        other.write_all(b"GET /quiet HTTP/1.1\r\n\r\n").unwrap();
        let status = http::read_head(&mut BufReader::new(other)).unwrap().status;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot stayed taken");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_request_trickling_in_is_scanned_once_and_served_whole() {
    // Unit: the scan resumes where it stopped, across every split of a chunked request.
    let raw = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
    for split in 1..raw.len() {
        let mut p = Progress::default();
        let first = examine(&raw[..split], &small_limits(), &mut p);
        assert!(
            matches!(first, Examined::Incomplete { .. }),
            "{split}: {first:?}"
        );
        assert_eq!(
            examine(raw, &small_limits(), &mut p),
            Examined::Whole,
            "split at {split}"
        );
    }
    let mut p = Progress::default();
    let bad = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n";
    assert!(matches!(
        examine(bad, &small_limits(), &mut p),
        Examined::Refuse(400, _)
    ));
    let mut p = Progress::default();
    let big = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n";
    assert!(matches!(
        examine(big, &small_limits(), &mut p),
        Examined::Refuse(400, _)
    ));

    // Served: one byte at a time over the network.
    let s = serve(Limits::default());
    let mut c = connect(&s);
    for b in raw.iter() {
        c.write_all(&[*b]).unwrap();
    }
    assert_eq!(answer(&mut BufReader::new(c)).2, b"abcde");
}

#[test]
fn a_head_trickled_byte_by_byte_costs_linear_time() {
    // 60 KiB of headers, one byte per examine: each call only looks at what is new.
    let mut raw = b"GET /x HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        raw.extend_from_slice(format!("X-H{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let mut p = Progress::default();
    for end in 1..raw.len() {
        let _ = examine(&raw[..end], &small_limits(), &mut p);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

fn upload_limits() -> Limits {
    Limits {
        uploads: &["/upload"],
        ..Limits::default()
    }
}

#[test]
fn uploads_are_streamed_to_the_handler_while_other_requests_are_served() {
    let s = serve(upload_limits());
    // Larger than any whole body the server would take.
    let size = 24 << 20;
    let mut c = connect(&s);
    c.write_all(format!("POST /upload HTTP/1.1\r\nContent-Length: {size}\r\n\r\n").as_bytes())
        .unwrap();
    let block = vec![7u8; 1 << 20];
    for i in 0..24 {
        c.write_all(&block).unwrap();
        if i == 12 {
            // Mid-upload: the API answers, and a second upload is refused.
            let mut other = connect(&s);
            other.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(answer(&mut BufReader::new(other)).0, 200);
            let mut second = connect(&s);
            second
                .write_all(b"POST /upload HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
                .unwrap();
            assert_eq!(answer(&mut BufReader::new(second)).0, 503);
        }
    }
    let (status, _, body) = answer(&mut BufReader::new(c));
    assert_eq!((status, body), (200, size.to_string().into_bytes()));

    // Chunked, and a body cut short (the handler sees a read error).
    let mut c = connect(&s);
    c.write_all(b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).2, b"5");
    let mut c = connect(&s);
    c.write_all(b"POST /upload HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 400);
    // Not an upload path: the whole-body limit holds.
    let mut c = connect(&s);
    c.write_all(format!("POST /echo HTTP/1.1\r\nContent-Length: {size}\r\n\r\n").as_bytes())
        .unwrap();
    assert_eq!(answer(&mut BufReader::new(c)).0, 400);
}

fn small_limits() -> Limits {
    Limits {
        max_body: 1024,
        ..Limits::default()
    }
}
