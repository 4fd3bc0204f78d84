//! Streaming answers: newline-delimited JSON (pull progress, events) and container logs
//! (8-byte multiplexed frames, or raw bytes for TTY containers). Each is an iterator that
//! never buffers more than one bounded item.

use super::error::{EngineError, Result};
use super::types::PullProgress;
use crate::http::{read_line_limited, Body};
use serde::de::DeserializeOwned;
use std::io::{BufReader, Read};
use std::marker::PhantomData;

/// Longest JSON line accepted from a stream (pull progress and events are a few hundred bytes).
pub const MAX_JSON_LINE: usize = 1024 * 1024;
/// Largest log frame accepted; the engine splits log lines at 16 KiB.
pub const MAX_LOG_FRAME: usize = 1024 * 1024;

/// Reader of a streamed response body.
pub type BodyReader = Body<BufReader<std::os::unix::net::UnixStream>>;

/// Newline-delimited JSON values read one at a time.
pub struct JsonStream<T, R = BodyReader> {
    reader: BufReader<R>,
    done: bool,
    what: &'static str,
    _item: PhantomData<T>,
}

impl<T: DeserializeOwned, R: Read> JsonStream<T, R> {
    pub fn new(body: R, what: &'static str) -> Self {
        JsonStream {
            reader: BufReader::with_capacity(8 * 1024, body),
            done: false,
            what,
            _item: PhantomData,
        }
    }
}

impl<T: DeserializeOwned, R: Read> Iterator for JsonStream<T, R> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        while !self.done {
            let line = match read_line_limited(&mut self.reader, MAX_JSON_LINE) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(EngineError::from_io(e, self.what)));
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(serde_json::from_slice(&line).map_err(|e| {
                self.done = true;
                EngineError::Protocol(format!("{}: bad JSON line: {e}", self.what))
            }));
        }
        None
    }
}

/// Pull progress; an `error` line inside the stream ends it with [`EngineError::Stream`].
pub struct PullStream<R = BodyReader> {
    inner: JsonStream<PullProgress, R>,
    image: String,
    failed: bool,
}

impl<R: Read> PullStream<R> {
    pub fn new(body: R, image: &str) -> Self {
        PullStream {
            inner: JsonStream::new(body, "image pull"),
            image: image.to_string(),
            failed: false,
        }
    }

    /// Consumes the stream, calling `on_progress` for every line; fails on an in-band error.
    pub fn wait(self, mut on_progress: impl FnMut(&PullProgress)) -> Result<()> {
        for item in self {
            on_progress(&item?);
        }
        Ok(())
    }
}

impl<R: Read> Iterator for PullStream<R> {
    type Item = Result<PullProgress>;

    fn next(&mut self) -> Option<Result<PullProgress>> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        match item {
            Ok(p) => match &p.error {
                Some(message) => {
                    self.failed = true;
                    Some(Err(EngineError::Stream {
                        message: format!("pull of {} failed: {message}", self.image),
                    }))
                }
                None => Some(Ok(p)),
            },
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Which of a container's standard streams a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdin,
    Stdout,
    Stderr,
}

/// A piece of container output. Frames are not lines: a line may span frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    pub source: OutputStream,
    pub bytes: Vec<u8>,
}

/// Container logs. Non-TTY containers multiplex stdout/stderr with an 8-byte header per frame
/// (`[stream, 0, 0, 0, size_be32]`); TTY containers send raw bytes, reported as stdout.
pub struct LogStream<R = BodyReader> {
    body: R,
    multiplexed: bool,
    done: bool,
}

impl<R: Read> LogStream<R> {
    pub fn new(body: R, multiplexed: bool) -> Self {
        LogStream {
            body,
            multiplexed,
            done: false,
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.body.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(EngineError::Protocol(
                        "log stream ended inside a frame".to_string(),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EngineError::from_io(e, "container logs")),
            }
        }
        Ok(true)
    }

    fn next_frame(&mut self) -> Result<Option<LogFrame>> {
        if !self.multiplexed {
            let mut buf = vec![0u8; 8 * 1024];
            let n = loop {
                match self.body.read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(EngineError::from_io(e, "container logs")),
                }
            };
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            return Ok(Some(LogFrame {
                source: OutputStream::Stdout,
                bytes: buf,
            }));
        }
        let mut header = [0u8; 8];
        if !self.fill(&mut header)? {
            return Ok(None);
        }
        let source = match header[0] {
            0 => OutputStream::Stdin,
            1 => OutputStream::Stdout,
            2 => OutputStream::Stderr,
            other => {
                return Err(EngineError::Protocol(format!(
                    "log frame with unknown stream type {other}"
                )))
            }
        };
        if header[1..4] != [0, 0, 0] {
            return Err(EngineError::Protocol("malformed log frame header".into()));
        }
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if size > MAX_LOG_FRAME {
            return Err(EngineError::Protocol(format!(
                "log frame of {size} bytes exceeds {MAX_LOG_FRAME}"
            )));
        }
        let mut bytes = vec![0u8; size];
        if size > 0 && !self.fill(&mut bytes)? {
            return Err(EngineError::Protocol(
                "log stream ended inside a frame".into(),
            ));
        }
        Ok(Some(LogFrame { source, bytes }))
    }
}

impl<R: Read> Iterator for LogStream<R> {
    type Item = Result<LogFrame>;

    fn next(&mut self) -> Option<Result<LogFrame>> {
        if self.done {
            return None;
        }
        match self.next_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Splits log frames into lines, keeping which stream each came from; a partial line is held
/// until its end arrives (bounded by `max_line`, past which it is emitted as is).
pub struct LogLines<I> {
    frames: I,
    partial: [Vec<u8>; 2],
    ready: std::collections::VecDeque<(OutputStream, Vec<u8>)>,
    max_line: usize,
    finished: bool,
}

impl<I: Iterator<Item = Result<LogFrame>>> LogLines<I> {
    pub fn new(frames: I, max_line: usize) -> Self {
        LogLines {
            frames,
            partial: [Vec::new(), Vec::new()],
            ready: Default::default(),
            max_line,
            finished: false,
        }
    }
}

impl<I: Iterator<Item = Result<LogFrame>>> Iterator for LogLines<I> {
    type Item = Result<(OutputStream, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(line) = self.ready.pop_front() {
                return Some(Ok(line));
            }
            if self.finished {
                return None;
            }
            match self.frames.next() {
                Some(Ok(frame)) => {
                    let idx = usize::from(frame.source == OutputStream::Stderr);
                    let source = if idx == 1 {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    };
                    for &b in &frame.bytes {
                        if b == b'\n' {
                            let line = std::mem::take(&mut self.partial[idx]);
                            self.ready.push_back((source, line));
                        } else {
                            self.partial[idx].push(b);
                            if self.partial[idx].len() >= self.max_line {
                                let line = std::mem::take(&mut self.partial[idx]);
                                self.ready.push_back((source, line));
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                None => {
                    self.finished = true;
                    for (idx, source) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
                        if !self.partial[idx].is_empty() {
                            let line = std::mem::take(&mut self.partial[idx]);
                            self.ready.push_back((source, line));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::Event;
    use std::io::Cursor;

    fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, 0, 0, 0];
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn multiplexed_frames_are_split_by_stream() {
        let mut raw = frame(1, b"hello\nwor");
        raw.extend(frame(2, b"oops\n"));
        raw.extend(frame(1, b"ld\n"));
        raw.extend(frame(1, b""));
        let frames: Vec<_> = LogStream::new(Cursor::new(raw.clone()), true)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[1].source, OutputStream::Stderr);
        let lines: Vec<_> = LogLines::new(LogStream::new(Cursor::new(raw), true), 1024)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            lines,
            vec![
                (OutputStream::Stdout, b"hello".to_vec()),
                (OutputStream::Stderr, b"oops".to_vec()),
                (OutputStream::Stdout, b"world".to_vec()),
            ]
        );
    }

    #[test]
    fn bad_log_frames_are_errors() {
        let mut truncated = frame(1, b"hello");
        truncated.truncate(10);
        let bad_kind = frame(7, b"x");
        let mut bad_pad = frame(1, b"x");
        bad_pad[2] = 1;
        let mut huge = vec![1, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        for raw in [truncated, bad_kind, bad_pad, huge, vec![1, 0, 0]] {
            let items: Vec<_> = LogStream::new(Cursor::new(raw.clone()), true).collect();
            assert!(
                matches!(items.last(), Some(Err(EngineError::Protocol(_)))),
                "{raw:?} gave {items:?}"
            );
        }
    }

    #[test]
    fn long_partial_lines_are_cut() {
        let raw = frame(1, &[b'a'; 10]);
        let lines: Vec<_> = LogLines::new(LogStream::new(Cursor::new(raw), true), 4)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].1, b"aa");
    }

    #[test]
    fn tty_logs_are_raw() {
        let frames: Vec<_> = LogStream::new(Cursor::new(b"plain text\n".to_vec()), false)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(frames[0].bytes, b"plain text\n");
    }

    #[test]
    fn pull_stream_reports_in_band_errors() {
        let raw = b"{\"status\":\"Pulling from x\",\"id\":\"1\"}\r\n\r\n{\"status\":\"Downloading\",\"progressDetail\":{\"current\":5,\"total\":10},\"id\":\"abc\"}\n{\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\n";
        let items: Vec<_> = PullStream::new(Cursor::new(raw.to_vec()), "x:1").collect();
        assert_eq!(items.len(), 3);
        let p = items[1].as_ref().unwrap();
        assert_eq!(p.progress_detail.as_ref().unwrap().total, Some(10));
        match &items[2] {
            Err(EngineError::Stream { message }) => {
                assert_eq!(message, "pull of x:1 failed: manifest unknown")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_stream_rejects_garbage_and_huge_lines() {
        let items: Vec<Result<Event>> = JsonStream::new(
            Cursor::new(b"{\"Type\":\"container\"}\nnot json\n{}\n".to_vec()),
            "events",
        )
        .collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().kind, "container");
        assert!(matches!(items[1], Err(EngineError::Protocol(_))));

        let mut huge = vec![b'{'; MAX_JSON_LINE + 10];
        huge.push(b'\n');
        let items: Vec<Result<Event>> = JsonStream::new(Cursor::new(huge), "events").collect();
        assert!(matches!(items[..], [Err(EngineError::Protocol(_))]));
    }
}
