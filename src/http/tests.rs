use super::*;
use std::io::{BufReader, Cursor};

/// A reader that hands out at most `step` bytes per read, to exercise split reads.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Parses a whole response with reads of `step` bytes through a `cap`-byte buffer.
fn parse(raw: &[u8], step: usize, cap: usize) -> io::Result<(ResponseHead, Vec<u8>)> {
    let mut r = BufReader::with_capacity(cap, Trickle { data: raw, step });
    let head = read_head(&mut r)?;
    let f = framing(&head, false)?;
    let mut body = Body::new(r, f);
    let bytes = body.read_to_end_limited(1 << 20)?;
    Ok((head, bytes))
}

fn parse_all_splits(raw: &[u8]) -> io::Result<(ResponseHead, Vec<u8>)> {
    let first = parse(raw, raw.len().max(1), 8192);
    for step in [1, 2, 3, 5, 7, 64] {
        for cap in [1, 4, 16, 8192] {
            let other = parse(raw, step, cap);
            match (&first, &other) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.1, b.1, "step {step} cap {cap}");
                    assert_eq!(a.0.status, b.0.status);
                }
                (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "step {step} cap {cap}"),
                _ => panic!("split reads changed the outcome (step {step} cap {cap}): {first:?} vs {other:?}"),
            }
        }
    }
    first
}

#[test]
fn content_length_body() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"bcd\"}";
    let (head, body) = parse_all_splits(raw).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.reason, "OK");
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(body, b"{\"a\":\"bcd\"}");
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        4;name=value\r\nWiki\r\n5 ; ext\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\nOther: 2\r\n\r\n";
    let (_, body) = parse_all_splits(raw).unwrap();
    assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
}

#[test]
fn chunked_body_bare_lf_and_uppercase_hex() {
    let raw = b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\nA\n0123456789\n0\n\n";
    let (_, body) = parse_all_splits(raw).unwrap();
    assert_eq!(body, b"0123456789");
}

#[test]
fn chunked_body_closed_after_last_chunk_is_accepted() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n";
    let (_, body) = parse_all_splits(raw).unwrap();
    assert_eq!(body, b"abc");
}

#[test]
fn close_delimited_body() {
    let raw = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil the end";
    let (_, body) = parse_all_splits(raw).unwrap();
    assert_eq!(body, b"until the end");
}

#[test]
fn no_body_for_204_and_304() {
    for raw in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"[..],
        &b"HTTP/1.1 304 Not Modified\r\n\r\n"[..],
    ] {
        let (_, body) = parse_all_splits(raw).unwrap();
        assert!(body.is_empty());
    }
}

#[test]
fn informational_response_is_skipped() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}";
    let (head, body) = parse_all_splits(raw).unwrap();
    assert_eq!(head.status, 201);
    assert_eq!(body, b"{}");
}

#[test]
fn bad_chunk_sizes_are_errors() {
    for size in [
        "zz",
        "",
        "-1",
        "0x10",
        "1 2",
        "ffffffffffffffffff",
        "+5",
        "12 x",
    ] {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc\r\n0\r\n\r\n"
        );
        let err = parse_all_splits(raw.as_bytes());
        assert!(err.is_err(), "size line {size:?} was accepted: {err:?}");
    }
}

#[test]
fn chunk_size_lines() {
    for (line, want) in [
        ("0", 0),
        ("a", 10),
        ("FF", 255),
        ("10;x=y", 16),
        ("3 ;ext", 3),
        ("7\t", 7),
    ] {
        assert_eq!(parse_chunk_size(line.as_bytes()).unwrap(), want, "{line:?}");
    }
    for line in [
        "",
        "g",
        "-1",
        "0x1",
        " 1",
        "1 2",
        "1x",
        "+1",
        "1234567890abcdef0",
        ";x",
    ] {
        assert!(
            parse_chunk_size(line.as_bytes()).is_err(),
            "{line:?} accepted"
        );
    }
}

#[test]
fn chunk_longer_than_declared_is_an_error() {
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n";
    let err = parse_all_splits(raw).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn huge_chunk_size_is_not_allocated() {
    // Declares ~1 EiB; we must fail on EOF, not try to allocate it.
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\nabc";
    let err = parse_all_splits(raw).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn truncated_bodies_are_errors() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-"[..],
        &b""[..],
    ] {
        let err = parse_all_splits(raw).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{raw:?}");
    }
}

#[test]
fn body_limit_is_enforced() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789";
    let mut r = BufReader::new(Cursor::new(&raw[..]));
    let head = read_head(&mut r).unwrap();
    let mut body = Body::new(r, framing(&head, false).unwrap());
    assert!(body.read_to_end_limited(10).is_err());
}

#[test]
fn huge_headers_are_rejected() {
    let long = "a".repeat(MAX_LINE + 1);
    let raw = format!("HTTP/1.1 200 OK\r\nX-Long: {long}\r\n\r\n");
    assert_eq!(
        parse_all_splits(raw.as_bytes()).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );

    let mut many = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(
        parse_all_splits(many.as_bytes()).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );

    let mut big = String::from("HTTP/1.1 200 OK\r\n");
    let value = "v".repeat(MAX_LINE - 10);
    for i in 0..(MAX_HEAD / MAX_LINE + 2) {
        big.push_str(&format!("X-{i}: {value}\r\n"));
    }
    big.push_str("\r\n");
    assert_eq!(
        parse_all_splits(big.as_bytes()).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

#[test]
fn malformed_heads_are_errors() {
    for raw in [
        "HTTP/2 200 OK\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        let err = parse_all_splits(raw.as_bytes());
        assert!(
            matches!(&err, Err(e) if e.kind() == io::ErrorKind::InvalidData),
            "{raw:?}: {err:?}"
        );
    }
}

#[test]
fn repeated_equal_content_length_is_fine() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc";
    assert_eq!(parse_all_splits(raw).unwrap().1, b"abc");
}

#[test]
fn random_garbage_never_panics() {
    // A tiny deterministic generator is enough to shake out panics in the state machine.
    let mut rng = crate::testutil::Rng(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.next();
    let alphabet: &[u8] =
        b"0123456789abcdefXYZ;: \r\n\tHTTP/1.1 200OKContent-Length:Transfer-Encoding:chunked";
    for _ in 0..3000 {
        let len = (next() % 200) as usize;
        let mut raw: Vec<u8> = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..len {
            raw.push(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let _ = parse(&raw, 1 + (next() % 7) as usize, 1 + (next() % 32) as usize);
    }
}

#[test]
fn request_is_written_with_length_and_rejects_injection() {
    let mut out = Vec::new();
    write_request(
        &mut out,
        "POST",
        "/v1.41/containers/create?name=a",
        &[],
        Some(b"{}"),
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("POST /v1.41/containers/create?name=a HTTP/1.1\r\nHost: docker\r\n"));
    assert!(text.ends_with("Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"));

    let mut out = Vec::new();
    assert!(write_request(&mut out, "GET", "/a b", &[], None).is_err());
    assert!(write_request(&mut out, "GET", "/a\r\nX: y", &[], None).is_err());
    assert!(write_request(
        &mut out,
        "GET",
        "/a",
        &[("X-Registry-Auth", "a\r\nb".into())],
        None
    )
    .is_err());
}

#[test]
fn endless_informational_answers_are_an_error_not_a_stack_overflow() {
    let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100_000);
    raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let err = read_head(&mut BufReader::new(Cursor::new(raw))).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A few are fine.
    let raw =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    assert_eq!(
        read_head(&mut BufReader::new(&raw[..])).unwrap().status,
        200
    );
}
