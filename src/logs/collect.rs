//! Container log collection behind a small trait with two sources (spec decision 4): the
//! engine's logs API (any log driver that can be read back; plain Docker, tests) and the host
//! journal (balenaOS runs the engine with the journald driver, as v19 reads it).

use super::{LogBus, LogMessage};
use crate::engine::{Engine, LogsOptions};
use crate::protocol::Status;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, warn};
use serde_json::Value;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One line of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub text: String,
    pub timestamp_ms: i64,
    pub is_stderr: bool,
}

/// Where container output comes from.
pub trait LogSource: Send + Sync {
    /// Follows one container's output after `since_ms`, calling `line` for each line, until
    /// the container stops or the stream breaks.
    fn follow(
        &self,
        container_id: &str,
        since_ms: i64,
        line: &mut dyn FnMut(LogLine),
    ) -> Result<(), String>;
}

/// Milliseconds of an RFC 3339 timestamp with an optional fraction.
pub fn rfc3339_ms(s: &str) -> Option<i64> {
    let secs = crate::encoding::rfc3339_seconds(s)?;
    let frac = s
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map_or(0, |f| {
            let digits: String = f.chars().take_while(char::is_ascii_digit).take(3).collect();
            format!("{digits:0<3}").parse::<i64>().unwrap_or(0)
        });
    Some(secs * 1000 + frac)
}

/// The engine's logs API, with timestamps.
pub struct EngineLogs {
    pub engine: Engine,
}

impl LogSource for EngineLogs {
    fn follow(
        &self,
        container_id: &str,
        since_ms: i64,
        line: &mut dyn FnMut(LogLine),
    ) -> Result<(), String> {
        let tty = self
            .engine
            .inspect_container(container_id)
            .map_err(|e| e.to_string())?
            .config
            .tty;
        let opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since: Some(format!("{}.{:03}", since_ms / 1000, since_ms % 1000)),
            tail: None,
        };
        let stream = self
            .engine
            .container_logs(container_id, tty, &opts)
            .map_err(|e| e.to_string())?;
        for item in crate::engine::stream::LogLines::new(stream, super::MAX_MESSAGE_CHARS * 4) {
            let (source, bytes) = item.map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&bytes);
            let (stamp, text) = text.split_once(' ').unwrap_or((&text, ""));
            let Some(timestamp_ms) = rfc3339_ms(stamp) else {
                continue;
            };
            // `since` is in whole seconds for some engines: skip what was already forwarded.
            if timestamp_ms <= since_ms {
                continue;
            }
            line(LogLine {
                text: text.trim_end_matches('\r').to_string(),
                timestamp_ms,
                is_stderr: source == crate::engine::stream::OutputStream::Stderr,
            });
        }
        Ok(())
    }
}

/// The host journal through `journalctl -o json` (balenaOS: the engine logs to journald).
pub struct Journal {
    /// The journalctl program (a path, so tests can put a fake one in).
    pub program: String,
}

/// A journal row as JSON: `MESSAGE` (string or byte array), `PRIORITY`, `__REALTIME_TIMESTAMP`.
pub fn journal_row(row: &Value) -> Option<LogLine> {
    let text = match row.get("MESSAGE")? {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => {
            let b: Vec<u8> = bytes
                .iter()
                .filter_map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return None,
    };
    let num = |k: &str| -> Option<i64> {
        match row.get(k)? {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    };
    Some(LogLine {
        text,
        timestamp_ms: num("__REALTIME_TIMESTAMP")? / 1000,
        is_stderr: num("PRIORITY").is_some_and(|p| p <= 3),
    })
}

impl LogSource for Journal {
    fn follow(
        &self,
        container_id: &str,
        since_ms: i64,
        line: &mut dyn FnMut(LogLine),
    ) -> Result<(), String> {
        let mut child = std::process::Command::new(&self.program)
            .args([
                "-a",
                "--follow",
                "-o",
                "json",
                "-S",
                &format!("@{}", since_ms / 1000),
                &format!("CONTAINER_ID_FULL={container_id}"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let out = child.stdout.take().ok_or("no journalctl output")?;
        let reader = std::io::BufReader::with_capacity(16 * 1024, out);
        for row in reader.split(b'\n') {
            let row = row.map_err(|e| e.to_string())?;
            let Ok(v) = serde_json::from_slice::<Value>(&row) else {
                continue;
            };
            if let Some(l) = journal_row(&v).filter(|l| l.timestamp_ms > since_ms) {
                line(l);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }
}

/// What a service's `BALENA_LOGS_LEVEL` lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    None,
    ErrorsOnly,
    All,
}

pub fn level(value: Option<&str>) -> Level {
    match value.map(str::to_ascii_lowercase).as_deref() {
        Some("none") => Level::None,
        Some("err") | Some("error") => Level::ErrorsOnly,
        _ => Level::All,
    }
}

/// Follows every running supervised container, one small thread each, and restarts a
/// follower when its container runs again. Woken by the state engine's status changes.
pub struct Collector {
    pub source: Arc<dyn LogSource>,
    pub bus: Arc<LogBus>,
    pub status: Arc<Mutex<Status>>,
    pub stop: Arc<AtomicBool>,
}

impl Collector {
    pub fn run(self, changes: Receiver<()>) {
        let started_ms = super::now_ms();
        // Last forwarded timestamp per container, so a re-attached follower does not repeat.
        let last_seen: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        let mut followers: HashMap<String, std::thread::JoinHandle<()>> = HashMap::new();
        loop {
            match changes.recv_timeout(Duration::from_secs(30)) {
                Err(RecvTimeoutError::Disconnected) => return,
                _ if self.stop.load(Ordering::Acquire) => return,
                _ => {}
            }
            followers.retain(|_, h| !h.is_finished());
            let status = self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for c in status.containers.iter().filter(|c| c.status == "Running") {
                if followers.contains_key(&c.container_id) {
                    continue;
                }
                let env_level = status
                    .target
                    .as_deref()
                    .and_then(|t| t.apps.values().find(|a| a.id == c.app_id))
                    .and_then(|a| a.release.as_ref())
                    .and_then(|r| r.services.get(&c.service_name))
                    .and_then(|s| s.environment.get("BALENA_LOGS_LEVEL").map(String::as_str));
                let level = level(env_level);
                if level == Level::None {
                    continue;
                }
                let (source, bus, seen) = (
                    Arc::clone(&self.source),
                    Arc::clone(&self.bus),
                    Arc::clone(&last_seen),
                );
                let (id, service_id) = (c.container_id.clone(), c.service_id);
                let service_name = c.service_name.clone();
                let since = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .copied()
                    .unwrap_or(started_ms);
                let spawned = std::thread::Builder::new()
                    .name("logs-follow".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let mut last = since;
                        let result = source.follow(&id, since, &mut |l: LogLine| {
                            last = last.max(l.timestamp_ms);
                            if level == Level::ErrorsOnly && !l.is_stderr {
                                return;
                            }
                            bus.push(LogMessage {
                                message: super::truncate(l.text),
                                timestamp: l.timestamp_ms,
                                service_id: Some(service_id),
                                service_name: Some(service_name.clone()),
                                is_system: false,
                                is_stderr: l.is_stderr,
                            });
                        });
                        if let Err(e) = result {
                            debug!("log stream of {id} ended: {e}");
                        }
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id, last);
                    });
                match spawned {
                    Ok(h) => {
                        followers.insert(c.container_id.clone(), h);
                    }
                    Err(e) => warn!("cannot follow the logs of {}: {e}", c.service_name),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_timestamps_keep_milliseconds() {
        assert_eq!(
            rfc3339_ms("2026-11-25T17:00:24.123456789Z"),
            Some(1_795_626_024_123)
        );
        assert_eq!(rfc3339_ms("2026-11-25T17:00:24Z"), Some(1_795_626_024_000));
        assert_eq!(
            rfc3339_ms("2026-11-25T17:00:24.5Z"),
            Some(1_795_626_024_500)
        );
        assert_eq!(rfc3339_ms("garbage"), None);
    }

    #[test]
    fn journal_rows_as_v19_reads_them() {
        let row = json!({"MESSAGE": "hello", "PRIORITY": "6", "__REALTIME_TIMESTAMP": "1732530000123456",
                         "CONTAINER_ID_FULL": "abc"});
        assert_eq!(
            journal_row(&row),
            Some(LogLine {
                text: "hello".into(),
                timestamp_ms: 1_732_530_000_123,
                is_stderr: false
            })
        );
        let bytes =
            json!({"MESSAGE": [104, 105, 255], "PRIORITY": "3", "__REALTIME_TIMESTAMP": "1000"});
        let l = journal_row(&bytes).unwrap();
        assert_eq!(l.text, "hi\u{fffd}");
        assert!(l.is_stderr);
        assert_eq!(journal_row(&json!({"PRIORITY": "3"})), None);
        assert_eq!(journal_row(&json!({"MESSAGE": "x"})), None);
    }

    #[test]
    fn log_levels() {
        assert_eq!(level(None), Level::All);
        assert_eq!(level(Some("NONE")), Level::None);
        assert_eq!(level(Some("err")), Level::ErrorsOnly);
        assert_eq!(level(Some("error")), Level::ErrorsOnly);
        assert_eq!(level(Some("info")), Level::All);
    }

    #[test]
    fn the_journal_source_runs_journalctl_and_parses_its_rows() {
        let dir = crate::testutil::TempDir::new("journal");
        let fake = dir.path().join("journalctl");
        let args_file = dir.path().join("args");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\n\
                 echo '{{\"MESSAGE\":\"old\",\"PRIORITY\":\"6\",\"__REALTIME_TIMESTAMP\":\"1000000\"}}'\n\
                 echo 'not json'\n\
                 echo '{{\"MESSAGE\":\"new\",\"PRIORITY\":\"2\",\"__REALTIME_TIMESTAMP\":\"9000000\"}}'\n",
                args_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let j = Journal {
            program: fake.display().to_string(),
        };
        let mut got = Vec::new();
        j.follow("cid", 5000, &mut |l| got.push(l)).unwrap();
        assert_eq!(
            got,
            [LogLine {
                text: "new".into(),
                timestamp_ms: 9000,
                is_stderr: true
            }]
        );
        assert_eq!(
            std::fs::read_to_string(&args_file).unwrap().trim(),
            "-a --follow -o json -S @5 CONTAINER_ID_FULL=cid"
        );
    }
}
