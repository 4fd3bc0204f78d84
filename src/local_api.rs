//! The command line's client of the running daemon's API on loopback (`tinyvisor apply`,
//! `healthcheck`, `bundle apply`): one request per connection, the answer read whole (at
//! most 1 MiB).

use crate::http;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What a request sends.
pub enum Body<'a> {
    None,
    Json(&'a [u8]),
    /// Read as it is sent (a bundle file): `len` bytes of `content_type`.
    Stream {
        data: &'a mut dyn Read,
        len: u64,
        content_type: &'a str,
    },
}

/// Sends one request to the daemon on `port`; its answer's status and body. `send` bounds
/// the connect and each write, `wait` each read of the answer. A daemon that answers before
/// taking the whole body (a refusal) is heard: the answer is read whatever the sending did.
pub fn call(
    port: u16,
    method: &str,
    path: &str,
    api_key: Option<&str>,
    body: Body,
    (send, wait): (Duration, Duration),
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), send)?;
    stream.set_write_timeout(Some(send))?;
    stream.set_read_timeout(Some(wait))?;
    let mut headers = vec![("Connection", "close".to_string())];
    if let Some(key) = api_key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    let sent = match body {
        Body::None => http::write_request(&mut stream, method, path, &headers, None),
        Body::Json(bytes) => http::write_request(&mut stream, method, path, &headers, Some(bytes)),
        Body::Stream {
            data,
            len,
            content_type,
        } => {
            headers.push(("Content-Type", content_type.to_string()));
            headers.push(("Content-Length", len.to_string()));
            http::write_request_head(&mut stream, method, path, &headers)
                .and_then(|()| io::copy(&mut data.take(len), &mut stream).map(drop))
        }
    };
    let mut reader = io::BufReader::new(stream);
    let head = match http::read_head(&mut reader) {
        Ok(head) => head,
        Err(e) => return Err(sent.err().unwrap_or(e)),
    };
    let framing = http::framing(&head, false)?;
    let raw = http::Body::new(reader, framing).read_to_end_limited(1 << 20)?;
    Ok((head.status, raw))
}

/// The `message` of a JSON answer, else the answer as text.
pub fn message(raw: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
}
