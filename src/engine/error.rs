//! Typed engine errors that keep what the engine said.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum EngineError {
    /// The socket could not be reached (missing, refused, permission).
    Connect { socket: String, source: io::Error },
    /// No answer within the read/write timeout.
    Timeout { what: String },
    /// The connection broke while talking.
    Io(io::Error),
    /// The engine answered something that is not valid HTTP or not the JSON we expected.
    Protocol(String),
    /// 404: no such container/image/volume/network.
    NotFound { message: String },
    /// 409: name in use, container running, image in use, ...
    Conflict { message: String },
    /// Any other non-success status, with the engine's message.
    Status { status: u16, message: String },
    /// An error reported inside a streamed answer (for example a pull whose registry fails).
    Stream { message: String },
}

impl EngineError {
    /// Builds the typed error for an HTTP status and the engine's `message`.
    pub fn from_status(status: u16, message: String) -> Self {
        match status {
            404 => EngineError::NotFound { message },
            409 => EngineError::Conflict { message },
            _ => EngineError::Status { status, message },
        }
    }

    /// The HTTP status the engine answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::NotFound { .. } => Some(404),
            EngineError::Conflict { .. } => Some(409),
            EngineError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, EngineError::Conflict { .. })
    }

    /// Maps an I/O error from the socket: timeouts and protocol violations get their own kinds.
    pub(crate) fn from_io(e: io::Error, what: &str) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => EngineError::Timeout {
                what: what.to_string(),
            },
            io::ErrorKind::InvalidData => EngineError::Protocol(format!("{what}: {e}")),
            _ => EngineError::Io(e),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Connect { socket, source } => {
                write!(f, "cannot connect to the engine at {socket}: {source}")
            }
            EngineError::Timeout { what } => write!(f, "engine did not answer in time: {what}"),
            EngineError::Io(e) => write!(f, "engine connection failed: {e}"),
            EngineError::Protocol(m) => write!(f, "bad answer from the engine: {m}"),
            EngineError::NotFound { message } => write!(f, "not found: {message}"),
            EngineError::Conflict { message } => write!(f, "conflict: {message}"),
            EngineError::Status { status, message } => {
                write!(f, "engine error {status}: {message}")
            }
            EngineError::Stream { message } => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Connect { source, .. } => Some(source),
            EngineError::Io(e) => Some(e),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
