//! A minimal D-Bus client: one connection to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, a
//! `unix:path=` or `unix:abstract=` address), SASL EXTERNAL authentication, `Hello`, and
//! blocking method calls with the few argument types systemd and logind need.
//!
//! Written by hand like the engine client: the supervisor makes a handful of calls in its life
//! (reboot, power off, start/stop/restart a unit, read two unit properties), and the smallest
//! D-Bus crates bring an async runtime or libdbus. Only the little-endian wire format is sent;
//! replies in either byte order are read.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long one call may take (systemd answers at once; a hung bus must not hang us).
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// Largest message we accept (the spec's limit is 128 MiB; our replies are tiny).
const MAX_MESSAGE: usize = 1 << 20;

/// A value in a message body, as far as we send or read them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    Str(String),
    ObjectPath(String),
    Signature(String),
    Variant(Box<Value>),
    Array(Vec<Value>),
    Struct(Vec<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            Value::Variant(v) => v.as_str(),
            _ => None,
        }
    }

    /// The strings of an `as` (or a variant holding one).
    pub fn as_strings(&self) -> Option<Vec<String>> {
        match self {
            Value::Array(items) => items.iter().map(|v| v.as_str().map(String::from)).collect(),
            Value::Variant(v) => v.as_strings(),
            _ => None,
        }
    }
}

/// What went wrong with a call: the bus could not be reached or spoke nonsense, or the callee
/// answered with a D-Bus error (name and message, e.g. `org.freedesktop.systemd1.NoSuchUnit`).
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Protocol(String),
    Remote { name: String, message: String },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "D-Bus: {e}"),
            Error::Protocol(m) => write!(f, "D-Bus protocol error: {m}"),
            Error::Remote { name, message } => write!(f, "{name}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

fn protocol(m: impl Into<String>) -> Error {
    Error::Protocol(m.into())
}

/// One method call.
pub struct Call<'a> {
    pub destination: &'a str,
    pub path: &'a str,
    pub interface: &'a str,
    pub member: &'a str,
    /// Signature of `args`, e.g. `"ss"`; empty for none.
    pub signature: &'a str,
    pub args: Vec<Value>,
}

/// An authenticated connection to a bus.
pub struct Connection {
    stream: UnixStream,
    serial: u32,
}

impl Connection {
    /// Connects to a bus address (the first usable `unix:` entry of a `;`-separated list).
    pub fn open(address: &str) -> Result<Connection, Error> {
        let stream = connect(address)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut conn = Connection { stream, serial: 0 };
        conn.authenticate()?;
        conn.call(&Call {
            destination: "org.freedesktop.DBus",
            path: "/org/freedesktop/DBus",
            interface: "org.freedesktop.DBus",
            member: "Hello",
            signature: "",
            args: vec![],
        })?;
        Ok(conn)
    }

    fn authenticate(&mut self) -> Result<(), Error> {
        // SASL EXTERNAL: the server checks our uid on the socket; we send it as hex of its digits.
        let uid = unsafe { libc::geteuid() }.to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        self.stream.write_all(b"\0")?;
        self.stream
            .write_all(format!("AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let line = self.read_auth_line()?;
        if !line.starts_with("OK ") {
            return Err(protocol(format!("authentication refused: {line}")));
        }
        self.stream.write_all(b"BEGIN\r\n")?;
        Ok(())
    }

    fn read_auth_line(&mut self) -> Result<String, Error> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() > 512 {
                return Err(protocol("authentication line too long"));
            }
            self.stream.read_exact(&mut byte)?;
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Sends a call and waits for its reply (signals and other traffic are skipped).
    pub fn call(&mut self, call: &Call) -> Result<Vec<Value>, Error> {
        self.serial = self.serial.wrapping_add(1).max(1);
        let serial = self.serial;
        self.stream.write_all(&encode_call(call, serial)?)?;
        loop {
            let msg = read_message(&mut self.stream)?;
            if msg.reply_serial != Some(serial) {
                continue;
            }
            return match msg.kind {
                MSG_METHOD_RETURN => Ok(msg.body),
                MSG_ERROR => Err(Error::Remote {
                    name: msg.error_name.unwrap_or_default(),
                    message: msg
                        .body
                        .first()
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                }),
                other => Err(protocol(format!("unexpected reply type {other}"))),
            };
        }
    }
}

fn connect(address: &str) -> Result<UnixStream, Error> {
    for entry in address.split(';') {
        let Some(params) = entry.strip_prefix("unix:") else {
            continue;
        };
        for kv in params.split(',') {
            if let Some(path) = kv.strip_prefix("path=") {
                return Ok(UnixStream::connect(unescape(path))?);
            }
            if let Some(name) = kv.strip_prefix("abstract=") {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(unescape(name))?;
                return Ok(UnixStream::connect_addr(&addr)?);
            }
        }
    }
    Err(protocol(format!("no usable unix address in '{address}'")))
}

/// Undoes the %XX escaping of D-Bus addresses.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const MSG_METHOD_CALL: u8 = 1;
const MSG_METHOD_RETURN: u8 = 2;
const MSG_ERROR: u8 = 3;

/// Little-endian marshalling into a buffer whose offset 0 is the message start (alignment is
/// relative to it).
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self, align: usize) {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
    }
    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }

    fn value(&mut self, sig: &[u8], v: &Value) -> Result<usize, Error> {
        let bad = || protocol(format!("value {v:?} does not match signature"));
        match (sig.first().copied().ok_or_else(bad)?, v) {
            (b'y', Value::Byte(b)) => self.buf.push(*b),
            (b'b', Value::Bool(b)) => self.u32(*b as u32),
            (b'u', Value::U32(n)) => self.u32(*n),
            (b'i', Value::I32(n)) => self.u32(*n as u32),
            (b't', Value::U64(n)) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            (b'x', Value::I64(n)) => {
                self.pad(8);
                self.buf.extend_from_slice(&n.to_le_bytes());
            }
            (b's', Value::Str(s)) | (b'o', Value::ObjectPath(s)) => self.string(s),
            (b'g', Value::Signature(s)) => self.signature(s),
            (b'v', Value::Variant(inner)) => {
                let inner_sig = signature_of(inner);
                self.signature(&inner_sig);
                self.value(inner_sig.as_bytes(), inner)?;
            }
            (b'a', Value::Array(items)) => {
                let elem_len = single_type_len(&sig[1..])?;
                let elem = &sig[1..1 + elem_len];
                self.u32(0);
                let len_at = self.buf.len() - 4;
                self.pad(alignment(elem[0]));
                let start = self.buf.len();
                for item in items {
                    self.value(elem, item)?;
                }
                let len = (self.buf.len() - start) as u32;
                self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
                return Ok(1 + elem_len);
            }
            (b'(', Value::Struct(fields)) => {
                let len = single_type_len(sig)?;
                self.pad(8);
                let mut inner = &sig[1..len - 1];
                for f in fields {
                    let used = self.value(inner, f)?;
                    inner = &inner[used..];
                }
                return Ok(len);
            }
            _ => return Err(bad()),
        }
        Ok(1)
    }
}

fn signature_of(v: &Value) -> String {
    match v {
        Value::Byte(_) => "y".into(),
        Value::Bool(_) => "b".into(),
        Value::U32(_) => "u".into(),
        Value::I32(_) => "i".into(),
        Value::U64(_) => "t".into(),
        Value::I64(_) => "x".into(),
        Value::Str(_) => "s".into(),
        Value::ObjectPath(_) => "o".into(),
        Value::Signature(_) => "g".into(),
        Value::Variant(_) => "v".into(),
        // Only string arrays are sent as variants by us; an empty array defaults to `as`.
        Value::Array(items) => format!(
            "a{}",
            items
                .first()
                .map(signature_of)
                .unwrap_or_else(|| "s".into())
        ),
        Value::Struct(f) => format!("({})", f.iter().map(signature_of).collect::<String>()),
    }
}

fn alignment(code: u8) -> usize {
    match code {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b't' | b'x' | b'd' | b'(' | b'{' => 8,
        _ => 4,
    }
}

/// Length in bytes of the first complete type in a signature.
fn single_type_len(sig: &[u8]) -> Result<usize, Error> {
    match sig.first() {
        None => Err(protocol("truncated signature")),
        Some(b'a') => Ok(1 + single_type_len(&sig[1..])?),
        Some(&open @ (b'(' | b'{')) => {
            let close = if open == b'(' { b')' } else { b'}' };
            if sig.get(1) == Some(&close) {
                return Err(protocol("empty struct in signature"));
            }
            let mut i = 1;
            while sig.get(i) != Some(&close) {
                if i >= sig.len() {
                    return Err(protocol("unterminated struct in signature"));
                }
                i += single_type_len(&sig[i..])?;
            }
            Ok(i + 1)
        }
        Some(_) => Ok(1),
    }
}

fn encode_call(call: &Call, serial: u32) -> Result<Vec<u8>, Error> {
    let mut body = Writer { buf: Vec::new() };
    let mut sig = call.signature.as_bytes();
    for arg in &call.args {
        let used = body.value(sig, arg)?;
        sig = &sig[used..];
    }
    if !sig.is_empty() {
        return Err(protocol("fewer arguments than the signature names"));
    }
    let mut fields = vec![
        Value::Struct(vec![
            Value::Byte(1),
            Value::Variant(Box::new(Value::ObjectPath(call.path.into()))),
        ]),
        Value::Struct(vec![
            Value::Byte(2),
            Value::Variant(Box::new(Value::Str(call.interface.into()))),
        ]),
        Value::Struct(vec![
            Value::Byte(3),
            Value::Variant(Box::new(Value::Str(call.member.into()))),
        ]),
        Value::Struct(vec![
            Value::Byte(6),
            Value::Variant(Box::new(Value::Str(call.destination.into()))),
        ]),
    ];
    if !call.signature.is_empty() {
        fields.push(Value::Struct(vec![
            Value::Byte(8),
            Value::Variant(Box::new(Value::Signature(call.signature.into()))),
        ]));
    }
    let mut msg = Writer {
        buf: vec![b'l', MSG_METHOD_CALL, 0, 1],
    };
    msg.u32(body.buf.len() as u32);
    msg.u32(serial);
    msg.value(b"a(yv)", &Value::Array(fields))?;
    msg.pad(8);
    msg.buf.extend_from_slice(&body.buf);
    Ok(msg.buf)
}

/// A received message, reduced to what a caller needs.
#[derive(Debug)]
struct Message {
    kind: u8,
    reply_serial: Option<u32>,
    error_name: Option<String>,
    body: Vec<Value>,
}

fn read_message(stream: &mut impl Read) -> Result<Message, Error> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed)?;
    let little = match fixed[0] {
        b'l' => true,
        b'B' => false,
        other => return Err(protocol(format!("bad endianness byte {other}"))),
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let body_len = u32_at(&fixed[4..8]) as usize;
    let fields_len = u32_at(&fixed[12..16]) as usize;
    let header_len = (16 + fields_len).div_ceil(8) * 8;
    if header_len + body_len > MAX_MESSAGE {
        return Err(protocol("message too large"));
    }
    let mut buf = vec![0u8; header_len + body_len];
    buf[..16].copy_from_slice(&fixed);
    stream.read_exact(&mut buf[16..])?;

    let mut r = Reader {
        buf: &buf[..16 + fields_len],
        pos: 12,
        little,
        depth: 0,
    };
    let fields = r.value(b"a(yv)")?;
    let mut msg = Message {
        kind: fixed[1],
        reply_serial: None,
        error_name: None,
        body: Vec::new(),
    };
    let mut signature = String::new();
    for f in match fields {
        Value::Array(f) => f,
        _ => Vec::new(),
    } {
        let Value::Struct(pair) = f else { continue };
        let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (pair.first(), pair.get(1)) else {
            continue;
        };
        match (code, v.as_ref()) {
            (4, Value::Str(s)) => msg.error_name = Some(s.clone()),
            (5, Value::U32(n)) => msg.reply_serial = Some(*n),
            (8, Value::Signature(s)) => signature = s.clone(),
            _ => {}
        }
    }
    let mut r = Reader {
        buf: &buf,
        pos: header_len,
        little,
        depth: 0,
    };
    let mut sig = signature.as_bytes();
    while !sig.is_empty() {
        let len = single_type_len(sig)?;
        msg.body.push(r.value(&sig[..len])?);
        sig = &sig[len..];
    }
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    little: bool,
    /// Containers (arrays, structs, variants) open around the value being read.
    depth: usize,
}

/// The D-Bus specification's bound on nesting: 32 arrays and 32 structs; variants count too.
const MAX_DEPTH: usize = 64;

impl Reader<'_> {
    fn align(&mut self, a: usize) -> Result<(), Error> {
        self.pos = self.pos.div_ceil(a) * a;
        if self.pos > self.buf.len() {
            return Err(protocol("truncated message"));
        }
        Ok(())
    }
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| protocol("truncated message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Error> {
        self.align(4)?;
        let b = self.take(4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }
    fn u64(&mut self) -> Result<u64, Error> {
        self.align(8)?;
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    }
    fn text(&mut self, len: usize) -> Result<String, Error> {
        let s = String::from_utf8(self.take(len)?.to_vec()).map_err(|_| protocol("bad UTF-8"))?;
        self.take(1)?;
        Ok(s)
    }

    /// One value of the single complete type `sig`, at most [`MAX_DEPTH`] containers deep.
    fn value(&mut self, sig: &[u8]) -> Result<Value, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(protocol("values nested too deep"));
        }
        self.depth += 1;
        let value = self.value_inner(sig);
        self.depth -= 1;
        value
    }

    fn value_inner(&mut self, sig: &[u8]) -> Result<Value, Error> {
        Ok(match sig.first() {
            Some(b'y') => Value::Byte(self.take(1)?[0]),
            Some(b'b') => Value::Bool(self.u32()? != 0),
            Some(b'u') => Value::U32(self.u32()?),
            Some(b'i') => Value::I32(self.u32()? as i32),
            Some(b't') => Value::U64(self.u64()?),
            Some(b'x') => Value::I64(self.u64()? as i64),
            Some(b's') => {
                let n = self.u32()? as usize;
                Value::Str(self.text(n)?)
            }
            Some(b'o') => {
                let n = self.u32()? as usize;
                Value::ObjectPath(self.text(n)?)
            }
            Some(b'g') => {
                let n = self.take(1)?[0] as usize;
                Value::Signature(self.text(n)?)
            }
            Some(b'v') => {
                let n = self.take(1)?[0] as usize;
                let inner = self.text(n)?;
                if single_type_len(inner.as_bytes())? != inner.len() {
                    return Err(protocol("variant signature is not one type"));
                }
                Value::Variant(Box::new(self.value(inner.as_bytes())?))
            }
            Some(b'a') => {
                let n = self.u32()? as usize;
                let elem_len = single_type_len(&sig[1..])?;
                let elem = &sig[1..1 + elem_len];
                self.align(alignment(elem[0]))?;
                let end = self
                    .pos
                    .checked_add(n)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or_else(|| protocol("array runs past the message"))?;
                let mut items = Vec::new();
                while self.pos < end {
                    let before = self.pos;
                    items.push(self.value(elem)?);
                    // Every valid element takes bytes; one that does not would loop for ever.
                    if self.pos == before {
                        return Err(protocol("array element of no size"));
                    }
                }
                Value::Array(items)
            }
            Some(b'(' | b'{') => {
                let len = single_type_len(sig)?;
                self.align(8)?;
                let mut inner = &sig[1..len - 1];
                let mut fields = Vec::new();
                while !inner.is_empty() {
                    let l = single_type_len(inner)?;
                    fields.push(self.value(&inner[..l])?);
                    inner = &inner[l..];
                }
                Value::Struct(fields)
            }
            other => return Err(protocol(format!("unsupported type {other:?}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A method return of `body` with signature `sig` in little-endian order.
    fn reply_with(sig: &str, body: &[u8]) -> Vec<u8> {
        let mut fields = Vec::new();
        // REPLY_SERIAL (5) = 1, SIGNATURE (8) = sig.
        fields.extend_from_slice(&[5, 1, b'u', 0]);
        fields.extend_from_slice(&1u32.to_le_bytes());
        fields.extend_from_slice(&[8, 1, b'g', 0, sig.len() as u8]);
        fields.extend_from_slice(sig.as_bytes());
        fields.push(0);
        let mut m = vec![b'l', MSG_METHOD_RETURN, 0, 1];
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        m.extend_from_slice(&fields);
        while !m.len().is_multiple_of(8) {
            m.push(0);
        }
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn hostile_replies_are_errors_not_hangs_or_overflows() {
        // `a()`: a huge array of empty structs would loop for ever.
        let mut body = 8u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 12]);
        assert!(read_message(&mut &reply_with("a()", &body)[..]).is_err());
        // Variants in variants, 10 000 deep: refused before the stack runs out.
        let mut body = Vec::new();
        for _ in 0..10_000 {
            body.extend_from_slice(&[1, b'v', 0]);
        }
        body.extend_from_slice(&[1, b'y', 0, 7]);
        assert!(read_message(&mut &reply_with("v", &body)[..]).is_err());
        // A few levels are fine.
        let ok = [1, b'v', 0, 1, b'y', 0, 7];
        let parsed = read_message(&mut &reply_with("v", &ok)[..]).unwrap();
        assert_eq!(
            parsed.body,
            vec![Value::Variant(Box::new(Value::Variant(Box::new(
                Value::Byte(7)
            ))))]
        );
    }

    #[test]
    fn call_encodes_as_the_spec_says() {
        let msg = encode_call(
            &Call {
                destination: "org.freedesktop.login1",
                path: "/org/freedesktop/login1",
                interface: "org.freedesktop.login1.Manager",
                member: "Reboot",
                signature: "b",
                args: vec![Value::Bool(false)],
            },
            7,
        )
        .unwrap();
        assert_eq!(&msg[..4], &[b'l', 1, 0, 1]);
        assert_eq!(u32::from_le_bytes(msg[4..8].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(msg[8..12].try_into().unwrap()), 7);
        // Body starts 8-aligned after the header fields and is one false boolean.
        assert_eq!(msg.len() % 8, 4);
        assert_eq!(&msg[msg.len() - 4..], &[0, 0, 0, 0]);
        // Our own reader parses what we wrote (as a stand-in for a reply).
        let mut reply = msg.clone();
        reply[1] = MSG_METHOD_RETURN;
        let parsed = read_message(&mut &reply[..]).unwrap();
        assert_eq!(parsed.body, vec![Value::Bool(false)]);
    }

    #[test]
    fn reads_a_big_endian_error_reply() {
        // Error reply, serial 3, reply_serial 9, error name, signature "s", body "no".
        let mut fields = Vec::new();
        let push_field = |f: &mut Vec<u8>, code: u8, sig: &str, val: &[u8]| {
            while !f.len().is_multiple_of(8) {
                f.push(0)
            }
            f.push(code);
            f.push(sig.len() as u8);
            f.extend_from_slice(sig.as_bytes());
            f.push(0);
            f.extend_from_slice(val);
        };
        let mut s = Vec::new();
        s.extend_from_slice(&(3u32).to_be_bytes());
        s.extend_from_slice(b"a.B\0");
        push_field(&mut fields, 4, "s", &s);
        // Offset in whole message = 16 + len; align value to 4 relative to message start.
        let mut rs = Vec::new();
        rs.extend_from_slice(&9u32.to_be_bytes());
        while !(16 + fields.len()).is_multiple_of(8) {
            fields.push(0)
        }
        fields.extend_from_slice(&[5, 1, b'u', 0]);
        fields.extend_from_slice(&rs);
        while !(16 + fields.len()).is_multiple_of(8) {
            fields.push(0)
        }
        fields.extend_from_slice(&[8, 1, b'g', 0, 1, b's', 0]);
        let fields_len = fields.len();
        let mut msg = vec![b'B', MSG_ERROR, 0, 1];
        let body: Vec<u8> = [&2u32.to_be_bytes()[..], b"no\0"].concat();
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
        msg.extend_from_slice(&3u32.to_be_bytes());
        msg.extend_from_slice(&(fields_len as u32).to_be_bytes());
        msg.extend_from_slice(&fields);
        while !msg.len().is_multiple_of(8) {
            msg.push(0)
        }
        msg.extend_from_slice(&body);
        let m = read_message(&mut &msg[..]).unwrap();
        assert_eq!(m.kind, MSG_ERROR);
        assert_eq!(m.reply_serial, Some(9));
        assert_eq!(m.error_name.as_deref(), Some("a.B"));
        assert_eq!(m.body, vec![Value::Str("no".into())]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200usize {
            let mut bytes = vec![b'l', 2, 0, 1];
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                bytes.push((seed >> 16) as u8);
            }
            let _ = read_message(&mut &bytes[..]);
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(unescape("/run/dbus%2dx"), "/run/dbus-x");
        assert!(connect("tcp:host=x").is_err());
    }
}
