//! Logs (docs/contract/cloud-api.md §6): container output and tinyvisor's own events, as the NDJSON
//! messages the cloud log stream and `/v2/local/logs` carry. One bounded bus: collectors push,
//! the cloud shipper takes in batches, local listeners get a copy.

pub mod collect;
pub mod console;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Longest message kept, in characters; longer ones are cut and end in `[...]`.
pub const MAX_MESSAGE_CHARS: usize = 10_000;
/// Messages waiting for the cloud, in bytes of text; past it the oldest are dropped.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// Local listeners (`/v2/local/logs`) each get a queue this long; a slow one misses lines.
const LISTENER_QUEUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogMessage {
    pub message: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Set for container output.
    pub service_id: Option<i64>,
    /// The service's name: local listeners get it, the cloud does not (v19).
    pub service_name: Option<String>,
    pub is_system: bool,
    pub is_stderr: bool,
}

impl LogMessage {
    pub fn system(message: impl Into<String>, is_stderr: bool) -> LogMessage {
        LogMessage {
            message: truncate(message.into()),
            timestamp: now_ms(),
            service_id: None,
            service_name: None,
            is_system: true,
            is_stderr,
        }
    }

    /// The wire form: `{"message","timestamp","serviceId","isStdErr"}` or, for system lines,
    /// `{"message","timestamp","isSystem":true[,"isStdErr":true]}`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"message": self.message, "timestamp": self.timestamp});
        if self.is_system {
            v["isSystem"] = json!(true);
            if self.is_stderr {
                v["isStdErr"] = json!(true);
            }
        } else {
            v["serviceId"] = json!(self.service_id);
            v["isStdErr"] = json!(self.is_stderr);
        }
        v
    }

    /// The local form (`/v2/local/logs`): the cloud's plus `serviceName` for container lines.
    pub fn to_local_json(&self) -> Value {
        let mut v = self.to_json();
        if let Some(name) = &self.service_name {
            v["serviceName"] = json!(name);
        }
        v
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`] characters, marking the cut.
pub fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(i);
        s.push_str("[...]");
    }
    s
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<LogMessage>,
    bytes: usize,
    dropped: u64,
    shipping: bool,
    listeners: Vec<Sender<Arc<str>>>,
}

/// The log bus. Cheap when nobody listens: messages are queued only while shipping is on.
#[derive(Default)]
pub struct LogBus {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl LogBus {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue messages for the cloud from now on (managed, provisioned, logging enabled).
    pub fn set_shipping(&self, on: bool) {
        let mut inner = self.lock();
        inner.shipping = on;
        if !on {
            inner.queue.clear();
            inner.bytes = 0;
        }
    }

    pub fn push(&self, msg: LogMessage) {
        if !msg.is_system && msg.service_id.is_none() {
            return;
        }
        let mut inner = self.lock();
        if !inner.listeners.is_empty() {
            let line: Arc<str> = Arc::from(msg.to_local_json().to_string());
            inner.listeners.retain(|l| {
                !matches!(
                    l.try_send(Arc::clone(&line)),
                    Err(crossbeam_channel::TrySendError::Disconnected(_))
                )
            });
        }
        if !inner.shipping {
            return;
        }
        inner.bytes += msg.message.len();
        inner.queue.push_back(msg);
        while inner.bytes > MAX_PENDING_BYTES {
            let Some(old) = inner.queue.pop_front() else {
                break;
            };
            inner.bytes -= old.message.len();
            inner.dropped += 1;
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// Up to `max` messages, waiting up to `timeout` for the first. After drops, the batch
    /// starts with v19's `Suppressed N message(s)` warning.
    pub fn take(&self, max: usize, timeout: Duration) -> Vec<LogMessage> {
        let mut inner = self.lock();
        if inner.queue.is_empty() {
            inner = self
                .ready
                .wait_timeout_while(inner, timeout, |i| i.queue.is_empty())
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let mut out = Vec::new();
        if inner.dropped > 0 && !inner.queue.is_empty() {
            out.push(LogMessage::system(
                format!(
                    "Warning: Suppressed {} message(s) due to high load",
                    inner.dropped
                ),
                true,
            ));
            inner.dropped = 0;
        }
        for _ in 0..max {
            let Some(m) = inner.queue.pop_front() else {
                break;
            };
            inner.bytes -= m.message.len();
            out.push(m);
        }
        out
    }

    /// A copy of every message from now on, as NDJSON lines.
    pub fn subscribe(&self) -> Receiver<Arc<str>> {
        let (tx, rx) = crossbeam_channel::bounded(LISTENER_QUEUE);
        self.lock().listeners.push(tx);
        rx
    }

    pub fn pending(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.queue.len(), inner.dropped)
    }
}

static BUS: OnceLock<Arc<LogBus>> = OnceLock::new();

/// Makes `bus` the process's bus (the daemon does this once at start).
pub fn install(bus: Arc<LogBus>) {
    let _ = BUS.set(bus);
}

pub fn bus() -> Option<&'static Arc<LogBus>> {
    BUS.get()
}

/// A supervisor event: logged locally and sent as a system message.
pub fn event(message: impl Into<String>, is_error: bool) {
    let message = message.into();
    if is_error {
        log::error!("{message}");
    } else {
        log::info!("{message}");
    }
    if let Some(bus) = bus() {
        bus.push(LogMessage::system(message, is_error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_line(text: &str) -> LogMessage {
        LogMessage {
            message: text.into(),
            timestamp: 1,
            service_id: Some(5),
            service_name: Some("main".into()),
            is_system: false,
            is_stderr: false,
        }
    }

    #[test]
    fn wire_format_of_service_and_system_lines() {
        assert_eq!(
            service_line("hello").to_json(),
            json!({"message": "hello", "timestamp": 1, "serviceId": 5, "isStdErr": false})
        );
        let mut sys = LogMessage::system("Supervisor starting", false);
        sys.timestamp = 2;
        assert_eq!(
            sys.to_json(),
            json!({"message": "Supervisor starting", "timestamp": 2, "isSystem": true})
        );
        let mut err = LogMessage::system("Failed", true);
        err.timestamp = 3;
        assert_eq!(err.to_json()["isStdErr"], true);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_MESSAGE_CHARS + 5);
        let t = truncate(s);
        assert_eq!(t.chars().count(), MAX_MESSAGE_CHARS + 5);
        assert!(t.ends_with("[...]"));
        assert_eq!(truncate("short".into()), "short");
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_are_announced() {
        let bus = LogBus::default();
        bus.push(service_line("not shipping yet"));
        assert_eq!(bus.pending(), (0, 0));
        bus.set_shipping(true);
        let line = "x".repeat(1000);
        for _ in 0..300 {
            bus.push(service_line(&line));
        }
        let (queued, dropped) = bus.pending();
        assert_eq!(queued, MAX_PENDING_BYTES / 1000);
        assert_eq!(dropped, 300 - queued as u64);
        let batch = bus.take(10, Duration::ZERO);
        assert_eq!(
            batch[0].message,
            format!("Warning: Suppressed {dropped} message(s) due to high load")
        );
        assert!(batch[0].is_system && batch[0].is_stderr);
        assert_eq!(batch.len(), 11);
        assert_eq!(bus.pending(), (queued - 10, 0));
    }

    #[test]
    fn lines_without_a_source_are_dropped_and_listeners_get_copies() {
        let bus = LogBus::default();
        let rx = bus.subscribe();
        bus.push(LogMessage {
            service_id: None,
            ..service_line("orphan")
        });
        bus.push(service_line("kept"));
        let got: Vec<Arc<str>> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        let v: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(
            v,
            json!({"message": "kept", "timestamp": 1, "serviceId": 5, "serviceName": "main", "isStdErr": false})
        );
        drop(rx);
        bus.push(service_line("after"));
        assert!(bus.lock().listeners.is_empty());
    }

    #[test]
    fn take_waits_for_the_first_message() {
        let bus = Arc::new(LogBus::default());
        bus.set_shipping(true);
        let b = Arc::clone(&bus);
        let t = std::thread::spawn(move || b.take(5, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        bus.push(service_line("late"));
        assert_eq!(t.join().unwrap().len(), 1);
        assert!(bus.take(5, Duration::from_millis(10)).is_empty());
    }
}
