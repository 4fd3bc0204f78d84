//! The cloud log stream (docs/contract/cloud-api.md §6): one long-lived chunked POST of gzip NDJSON
//! to `/device/v2/<uuid>/log-stream`, opened when there is something to send, ended after 60 s
//! without messages, re-opened with a cooldown after failures. Messages wait in the bounded log bus
//! meanwhile.

use super::CloudShared;
use crate::balena_api::client::Cloud;
use crate::config::Settings;
use crate::logs::{LogBus, LogMessage};
use flate2::write::GzEncoder;
use log::{debug, warn};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stream with nothing to send for this long is ended (and re-opened on the next message).
pub const IDLE_END: Duration = Duration::from_secs(60);
/// Compressed output is flushed at most this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BATCH: usize = 256;

/// `min(5 s × 2^failures, 300 s)`.
pub fn cooldown(failures: u32) -> Duration {
    (Duration::from_secs(5) * (1u32 << failures.min(7))).min(Duration::from_secs(300))
}

/// The request body: reads messages from the bus and hands out gzip bytes, sync-flushed per
/// batch so the server sees lines promptly.
pub struct StreamBody {
    bus: Arc<LogBus>,
    shared: Arc<CloudShared>,
    encoder: Option<GzEncoder<Vec<u8>>>,
    out: Vec<u8>,
    pos: usize,
    last_message: Instant,
    idle_end: Duration,
}

impl StreamBody {
    pub fn new(
        bus: Arc<LogBus>,
        shared: Arc<CloudShared>,
        first: Vec<LogMessage>,
        idle_end: Duration,
    ) -> Self {
        let mut body = StreamBody {
            bus,
            shared,
            encoder: Some(GzEncoder::new(Vec::new(), flate2::Compression::default())),
            out: Vec::new(),
            pos: 0,
            last_message: Instant::now(),
            idle_end,
        };
        body.encode(&first);
        body
    }

    fn encode(&mut self, batch: &[LogMessage]) {
        let Some(enc) = self.encoder.as_mut() else {
            return;
        };
        for m in batch {
            let mut line = m.to_json().to_string();
            line.push('\n');
            let _ = enc.write_all(line.as_bytes());
        }
        let _ = enc.flush();
        self.out.append(enc.get_mut());
    }

    /// Fills `out` with the next compressed bytes; false when the body is finished.
    fn refill(&mut self) -> bool {
        loop {
            if self.encoder.is_none() {
                return false;
            }
            let idle = self.last_message.elapsed() >= self.idle_end || self.shared.stopping();
            if idle {
                if let Some(enc) = self.encoder.take() {
                    if let Ok(rest) = enc.finish() {
                        self.out.extend_from_slice(&rest);
                    }
                }
                return !self.out.is_empty();
            }
            let wait = self
                .idle_end
                .saturating_sub(self.last_message.elapsed())
                .min(Duration::from_secs(1));
            let mut batch = self.bus.take(BATCH, wait);
            if batch.is_empty() {
                continue;
            }
            // Let a burst gather for up to 100 ms before compressing it.
            std::thread::sleep(FLUSH_EVERY);
            batch.extend(self.bus.take(BATCH, Duration::ZERO));
            self.last_message = Instant::now();
            self.encode(&batch);
            if !self.out.is_empty() {
                return true;
            }
        }
    }
}

impl Read for StreamBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.out.len() {
            self.out.clear();
            self.pos = 0;
            if !self.refill() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub struct Shipper {
    pub cloud: Cloud,
    pub settings: Arc<Settings>,
    pub bus: Arc<LogBus>,
    pub shared: Arc<CloudShared>,
}

impl Shipper {
    /// Ships logs until shut down. The daemon turns queueing on at start, so what happens
    /// while the device provisions (bounded by the bus) is sent once it can be.
    pub fn run(self) {
        while !self.shared.provisioned() {
            if self.shared.stopping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut failures: u32 = 0;
        while !self.shared.stopping() {
            let first = self.bus.take(BATCH, Duration::from_secs(1));
            if first.is_empty() {
                continue;
            }
            let cfg = &self.settings.config_json;
            let uuid = cfg.get_str("uuid").unwrap_or_default();
            let key = cfg.get_str("deviceApiKey").unwrap_or_default();
            let base = cfg
                .get_str("logsEndpoint")
                .filter(|e| !e.is_empty())
                .map(|e| e.trim_end_matches('/').to_string());
            let path = format!("/device/v2/{uuid}/log-stream");
            let url = match base {
                Some(b) => format!("{b}{path}"),
                None => path,
            };
            let body = StreamBody::new(
                Arc::clone(&self.bus),
                Arc::clone(&self.shared),
                first,
                IDLE_END,
            );
            let started = Instant::now();
            let result = self.cloud.post_stream(
                &url,
                &key,
                &[
                    ("Content-Type", "application/x-ndjson"),
                    ("Content-Encoding", "gzip"),
                ],
                body,
            );
            match result {
                Ok(status) if (200..300).contains(&status) => {
                    debug!("log stream ended after {:?}", started.elapsed());
                    failures = 0;
                }
                other => {
                    let why = match other {
                        Ok(status) => format!("answered {status}"),
                        Err(e) => e.to_string(),
                    };
                    let wait = cooldown(failures);
                    failures = failures.saturating_add(1);
                    warn!("Log stream to the cloud failed ({why}); reconnecting in {wait:?}");
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !self.shared.stopping() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn line(text: &str) -> LogMessage {
        LogMessage {
            message: text.into(),
            timestamp: 7,
            service_id: Some(1),
            service_name: None,
            is_system: false,
            is_stderr: false,
        }
    }

    #[test]
    fn cooldown_doubles_from_5_s_up_to_5_min() {
        let got: Vec<u64> = (0..8).map(|n| cooldown(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn the_body_is_gzip_ndjson_and_ends_when_idle() {
        let bus = Arc::new(LogBus::default());
        bus.set_shipping(true);
        let shared = Arc::new(CloudShared::default());
        let body = StreamBody::new(
            Arc::clone(&bus),
            shared,
            vec![line("first")],
            Duration::from_millis(300),
        );
        let b = Arc::clone(&bus);
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            b.push(line("second"));
        });
        let mut text = String::new();
        GzDecoder::new(body).read_to_string(&mut text).unwrap();
        feeder.join().unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "first");
        assert_eq!(lines[1]["message"], "second");
        assert_eq!(lines[1]["serviceId"], 1);
    }
}
