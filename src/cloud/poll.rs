//! The poll thread (docs/contract/cloud-api.md §2, §3): provisions the device, then fetches the v3
//! target state with ETags, validates it, and hands it to the state engine (which stores it before
//! applying). `/v1/update` asks for an immediate fetch over a bounded channel.

use super::provision::{self, RegisterFacts};
use super::{CloudShared, PollRequest};
use crate::balena_api::client::{Auth, Cloud, CloudError};
use crate::compose::target::{parse_v3, TargetState};
use crate::config::Settings;
use crate::protocol::{Command, Status};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{error, info, warn};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the engine may take to store a target.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(60);

/// `min(interval, 15 s × 2^n)` after the n-th consecutive failure (n from 0).
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let n = failures.saturating_sub(1).min(16);
    (Duration::from_secs(15) * (1u32 << n)).min(interval)
}

/// The poll interval: the target's `SUPERVISOR_POLL_INTERVAL`, else config.json's.
pub fn poll_interval(target: Option<&TargetState>, cfg: &crate::config::ConfigJson) -> Duration {
    let ms = target
        .and_then(|t| t.var("SUPERVISOR_POLL_INTERVAL"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| cfg.poll_interval_ms());
    Duration::from_millis(ms.max(1))
}

/// `SUPERVISOR_INSTANT_UPDATE_TRIGGER`, on unless the target turns it off.
pub fn instant_updates(target: Option<&TargetState>) -> bool {
    target.and_then(|t| t.flag("SUPERVISOR_INSTANT_UPDATE_TRIGGER")) != Some(false)
}

/// When the next scheduled fetch comes after one that just ended, or None to keep the current
/// schedule. A successful fetch asked for by the API does not move the timer (v19); a failure
/// schedules the backoff retry it announces, whatever triggered the fetch.
fn next_wait(from_api: bool, failures: u32, interval: Duration) -> Option<Duration> {
    match failures {
        0 if from_api => None,
        0 => Some(interval + jitter()),
        n => Some(backoff(n, interval)),
    }
}

/// What a fetch found.
#[derive(Debug)]
pub enum Fetched {
    New(Box<TargetState>),
    Unchanged,
}

pub struct Poller {
    pub cloud: Cloud,
    pub settings: Arc<Settings>,
    /// The state engine's channel: targets go there to be stored and applied.
    pub state_engine: Sender<Command>,
    pub shared: Arc<CloudShared>,
    pub facts: RegisterFacts,
    /// The database, opened for the cloud's own bookkeeping (`initialConfigReported`) only
    /// while it is needed: a connection held by this thread would keep the WAL open at exit.
    pub db_path: std::path::PathBuf,
    /// ETag of the last valid target; memory only, so a restart fetches in full.
    etag: Option<String>,
    /// The last valid target received, for re-applying after a 304 asked for by the API.
    last: Option<TargetState>,
    /// The target stored before this start, for its settings until the first fetch.
    stored: Option<TargetState>,
    /// The state engine's status: how many offline bundles set the target.
    status: Arc<Mutex<Status>>,
    /// The bundle count at the last fetch.
    bundles_seen: u64,
}

impl Poller {
    pub fn new(
        cloud: Cloud,
        settings: Arc<Settings>,
        state_engine: Sender<Command>,
        shared: Arc<CloudShared>,
        facts: RegisterFacts,
        db_path: std::path::PathBuf,
        status: Arc<Mutex<Status>>,
    ) -> Poller {
        Poller {
            cloud,
            settings,
            state_engine,
            shared,
            facts,
            db_path,
            etag: None,
            last: None,
            stored: None,
            status,
            bundles_seen: 0,
        }
    }

    /// The target whose settings apply: the last fetched, else the one stored before.
    fn settings_source(&self) -> Option<&TargetState> {
        self.last.as_ref().or(self.stored.as_ref())
    }

    fn interval(&self) -> Duration {
        poll_interval(self.settings_source(), &self.settings.config_json)
    }

    fn instant_updates(&self) -> bool {
        instant_updates(self.settings_source())
    }

    /// Provisions (retrying every `bootstrapRetryDelay`), then polls until shut down.
    pub fn run(mut self, rx: Receiver<PollRequest>) {
        let retry = Duration::from_millis(
            self.settings
                .config_json
                .get_int("bootstrapRetryDelay")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(30_000),
        );
        while provision::needed(&self.settings.config_json) {
            match provision::provision(&self.cloud, &self.settings.config_json, &self.facts) {
                Ok(()) => break,
                Err(e) => {
                    error!("Error provisioning device: {e}; retrying in {retry:?}");
                    match rx.recv_timeout(retry) {
                        Ok(PollRequest::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                        _ => {}
                    }
                }
            }
        }
        self.shared.set_provisioned();
        self.initial_config_report();
        // The target stored before a restart decides the first interval and trigger setting.
        self.stored = self.stored_target();
        let mut due = if self.instant_updates() {
            Instant::now()
        } else {
            Instant::now() + self.interval()
        };
        let mut failures: u32 = 0;
        loop {
            let (from_api, force) =
                match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(PollRequest::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(PollRequest::Now { force }) => (true, force),
                    Err(RecvTimeoutError::Timeout) => (false, false),
                };
            if self.shared.stopping() {
                return;
            }
            let result = self
                .fetch()
                .and_then(|f| self.hand_over(f, from_api, force));
            match result {
                Ok(()) => {
                    failures = 0;
                    self.shared.fetched();
                }
                Err(e) => {
                    failures += 1;
                    error!(
                        "Failed to get target state for device: {e}; retrying in {:?}",
                        backoff(failures, self.interval())
                    );
                }
            }
            if let Some(wait) = next_wait(from_api, failures, self.interval()) {
                due = Instant::now() + wait;
            }
        }
    }

    /// The one-shot calls after provisioning (docs/contract/cloud-api.md §2.5): the
    /// `initialDeviceName` of config.json becomes the device's name, once per API endpoint. Device
    /// config variables that differ from their defaults would be posted here too; tinyvisor has
    /// none of its own until the device-config backends exist, so none are sent.
    fn initial_config_report(&self) {
        let endpoint = self.cloud.endpoint().to_string();
        let db = match crate::db::Db::open(&self.db_path) {
            Ok(db) => db,
            Err(e) => {
                warn!("cannot open the database for the initial config report: {e}");
                return;
            }
        };
        if db
            .config_get("initialConfigReported")
            .ok()
            .flatten()
            .as_deref()
            == Some(endpoint.as_str())
        {
            return;
        }
        let cfg = &self.settings.config_json;
        if let (Some(name), Some(id)) = (
            cfg.get_str("initialDeviceName").filter(|n| !n.is_empty()),
            cfg.get_int("deviceId"),
        ) {
            let key = cfg.get_str("deviceApiKey").unwrap_or_default();
            let result = self.cloud.call(
                "PATCH",
                &format!("/v7/device({id})"),
                Auth::Bearer(&key),
                &[],
                Some(&serde_json::json!({"device_name": name})),
            );
            match result {
                Ok(r) if r.ok() => info!("Device name set to {name:?}"),
                Ok(r) => warn!("Could not set the initial device name: {}", r.error()),
                Err(e) => warn!("Could not set the initial device name: {e}"),
            }
        }
        if let Err(e) = db.config_set("initialConfigReported", Some(&endpoint)) {
            warn!("cannot record the initial config report: {e}");
        }
    }

    fn stored_target(&self) -> Option<TargetState> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.state_engine
            .send_timeout(Command::GetTarget { reply: tx }, ENGINE_TIMEOUT)
            .ok()?;
        rx.recv_timeout(ENGINE_TIMEOUT).ok().flatten()
    }

    /// GET the target with If-None-Match; a new body is validated here.
    pub fn fetch(&mut self) -> Result<Fetched, CloudError> {
        let uuid = self
            .settings
            .config_json
            .get_str("uuid")
            .unwrap_or_default();
        let key = self
            .settings
            .config_json
            .get_str("deviceApiKey")
            .unwrap_or_default();
        // A bundle set the target since the last fetch: the cloud's whole answer decides (a
        // 304 would only say that the cloud's target has not changed; docs/bundles.md).
        let bundles = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bundles_applied;
        if bundles != self.bundles_seen {
            self.bundles_seen = bundles;
            self.etag = None;
        }
        let etag = self.etag.clone();
        let headers: Vec<(&str, &str)> = etag
            .as_deref()
            .map(|e| vec![("If-None-Match", e)])
            .unwrap_or_default();
        let reply = self.cloud.call(
            "GET",
            &format!("/device/v3/{uuid}/state"),
            Auth::Bearer(&key),
            &headers,
            None,
        )?;
        match reply.status {
            304 if etag.is_some() => Ok(Fetched::Unchanged),
            200..=299 => {
                let large = reply.body.len() > 64 * 1024;
                let parsed = reply
                    .json()
                    .map_err(|e| self.rejected(e.to_string()))
                    .and_then(|doc| {
                        parse_v3(&doc, &uuid).map_err(|e| self.rejected(e.to_string()))
                    });
                if large {
                    crate::host::give_back_memory();
                }
                let state = parsed?;
                self.etag = reply.etag;
                Ok(Fetched::New(Box::new(state)))
            }
            _ => Err(reply.error()),
        }
    }

    fn rejected(&self, reason: String) -> CloudError {
        crate::logs::event(format!("Could not move to new release: {reason}"), true);
        CloudError::Invalid(format!("Could not move to new release: {reason}"))
    }

    /// Gives a new target to the engine; after a 304 asked for by the API the last target is
    /// applied again with the caller's `force` (the engine stores nothing unchanged).
    fn hand_over(
        &mut self,
        fetched: Fetched,
        from_api: bool,
        force: bool,
    ) -> Result<(), CloudError> {
        let state = match fetched {
            Fetched::New(state) => *state,
            Fetched::Unchanged if from_api => match &self.last {
                Some(last) => last.clone(),
                None => return Ok(()),
            },
            Fetched::Unchanged => return Ok(()),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = Command::SetTarget {
            state: state.clone(),
            source: self.cloud.endpoint().to_string(),
            force,
            reply: tx,
        };
        let unavailable = || CloudError::Invalid("state engine is not answering".into());
        self.state_engine
            .send_timeout(cmd, ENGINE_TIMEOUT)
            .map_err(|_| unavailable())?;
        match rx.recv_timeout(ENGINE_TIMEOUT) {
            Ok(Ok(())) => {
                if self.last.as_ref() != Some(&state) {
                    info!("New target state received");
                }
                self.last = Some(state);
                Ok(())
            }
            Ok(Err(e)) => {
                // Not stored: fetch it in full next time.
                self.etag = None;
                Err(CloudError::Invalid(e.to_string()))
            }
            Err(_) => {
                self.etag = None;
                Err(unavailable())
            }
        }
    }
}

/// Random delay in [0, 60 s) added to each interval, so a fleet does not poll in step.
fn jitter() -> Duration {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    Duration::from_millis(u64::from(u32::from_le_bytes(b)) % 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_15_s_and_stops_at_the_interval() {
        let interval = Duration::from_secs(900);
        let got: Vec<u64> = (1..=9).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(got, [15, 30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(
            backoff(40, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_failed_fetch_schedules_its_retry_whoever_asked_for_it() {
        let interval = Duration::from_secs(900);
        assert_eq!(next_wait(true, 0, interval), None, "API fetch, success");
        let scheduled = next_wait(false, 0, interval).unwrap();
        assert!(scheduled >= interval && scheduled < interval + Duration::from_secs(60));
        for from_api in [true, false] {
            assert_eq!(
                next_wait(from_api, 1, interval),
                Some(Duration::from_secs(15))
            );
            assert_eq!(
                next_wait(from_api, 2, interval),
                Some(Duration::from_secs(30))
            );
        }
    }

    #[test]
    fn jitter_stays_under_a_minute() {
        for _ in 0..100 {
            assert!(jitter() < Duration::from_secs(60));
        }
    }

    #[test]
    fn config_booleans_read_like_v19() {
        let with = |v: &str| {
            let mut t = crate::compose::target::parse_device_target(
                &serde_json::json!({"name": "", "config": {}, "apps": {}}),
            )
            .unwrap();
            t.config
                .insert("SUPERVISOR_INSTANT_UPDATE_TRIGGER".into(), v.into());
            t
        };
        assert!(instant_updates(None));
        assert!(instant_updates(Some(&with("1"))));
        assert!(!instant_updates(Some(&with("False"))));
        assert!(instant_updates(Some(&with("maybe"))));
    }
}
