//! The report thread (docs/contract/cloud-api.md §5): builds the v3 current state from the engine's
//! status and the host's facts, and PATCHes only what changed since the last acknowledged report,
//! at most once per 10 s (metrics-only changes once per 5 min). The last acknowledged report is
//! kept on disk so a restart sends a diff, not everything.

use super::CloudShared;
use crate::balena_api::client::{Cloud, CloudError};
use crate::compose::hostapp;
use crate::config::Settings;
use crate::host::{self, Metrics};
use crate::planner::trial;
use crate::protocol::{HostOsStatus, Status};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, warn};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most one report per this interval (`maxReportFrequency`).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Metrics-only changes wait this long (`maxMetricsFrequency`).
pub const METRICS_INTERVAL: Duration = Duration::from_secs(300);
/// Network addresses are re-read this often (v19 polls them every 30 s).
const ADDRESS_INTERVAL: Duration = Duration::from_secs(30);

const METRIC_KEYS: &[&str] = &[
    "cpu_usage",
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "storage_block_device",
    "cpu_temp",
    "cpu_id",
];

/// Device fields that do not come from the engine.
#[derive(Debug, Clone, Default)]
pub struct DeviceFields {
    pub api_port: u16,
    pub api_secret: Option<String>,
    pub ip_address: String,
    pub mac_address: Option<String>,
    pub os_version: Option<String>,
    pub os_variant: Option<String>,
    pub metrics: Option<Metrics>,
    pub is_undervolted: bool,
}

/// `floor(v/bucket)*bucket`-style filtering: keep the last reported value while the new one
/// stays in the same bucket.
fn bucketed(new: Option<u64>, last: Option<&Value>, bucket: u64) -> Option<u64> {
    match (new, last.and_then(Value::as_u64)) {
        (Some(n), Some(l)) if n / bucket == l / bucket => Some(l),
        (n, _) => n,
    }
}

/// The device object of the report (what goes under the uuid), complete.
pub fn current_state(
    status: &Status,
    device: &DeviceFields,
    local_mode: bool,
    last: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    put("api_port", json!(device.api_port));
    put("api_secret", json!(device.api_secret));
    put("ip_address", json!(device.ip_address));
    put("mac_address", json!(device.mac_address));
    put("os_version", json!(device.os_version));
    put("os_variant", json!(device.os_variant));
    put("supervisor_version", json!(crate::SUPERVISOR_VERSION));
    put("provisioning_progress", Value::Null);
    put("provisioning_state", json!(""));
    // A release that failed its trial says so in the device's status text (docs/trials.md).
    let failed_trial = status.trials.iter().find_map(|t| {
        (t.state == "failed").then(|| {
            trial::failure_line(
                &t.commit,
                t.reason.as_deref().unwrap_or_default(),
                t.previous_commit.as_deref(),
            )
        })
    });
    put("status", json!(failed_trial.as_deref().unwrap_or("Idle")));
    put("is_undervolted", json!(device.is_undervolted));
    let m = device.metrics.clone().unwrap_or_default();
    put(
        "cpu_usage",
        json!(bucketed(m.cpu_usage, last.get("cpu_usage"), 20)),
    );
    put(
        "memory_usage",
        json!(bucketed(m.memory_usage, last.get("memory_usage"), 10)),
    );
    put("memory_total", json!(m.memory_total));
    put("storage_usage", json!(m.storage_usage));
    put("storage_total", json!(m.storage_total));
    put("storage_block_device", json!(m.storage_block_device));
    put(
        "cpu_temp",
        json!(bucketed(m.cpu_temp, last.get("cpu_temp"), 5)),
    );
    put("cpu_id", json!(m.cpu_id));
    if let Some(name) = status
        .target
        .as_ref()
        .map(|t| t.name.clone())
        .filter(|n| !n.is_empty())
    {
        put("name", json!(name));
    }
    if !local_mode {
        put("logs_channel", Value::Null);
        if status.apps_known {
            put("apps", Value::Object(apps(status)));
        }
    }
    out
}

/// `apps` of the report: every app of the target, its running release and the target
/// release, each service with its image and status (§5.3).
pub fn apps(status: &Status) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(target) = status.target.as_deref() else {
        return out;
    };
    for app in target.apps.values() {
        if app.is_host {
            // The host OS as helios reports it; a rejected host app is not reported.
            if let Some(h) = status.host_os.as_ref().filter(|h| h.app_uuid == app.uuid) {
                out.insert(app.uuid.clone(), host_app(h));
            }
            continue;
        }
        let mut releases: Map<String, Value> = Map::new();
        let service_of = |releases: &mut Map<String, Value>, commit: &str, name: &str, v: Value| {
            let rel = releases
                .entry(commit.to_string())
                .or_insert_with(|| json!({"services": {}}));
            rel["services"][name] = v;
        };
        for c in status.containers.iter().filter(|c| c.app_id == app.id) {
            let Some(commit) = c.commit.as_deref() else {
                continue;
            };
            service_of(
                &mut releases,
                commit,
                &c.service_name,
                json!({"image": c.image, "status": c.status}),
            );
        }
        if let Some(rel) = &app.release {
            for (name, svc) in &rel.services {
                if crate::compose::target::is_supervisor(&app.uuid, name) {
                    service_of(
                        &mut releases,
                        &rel.commit,
                        name,
                        json!({"image": svc.image, "status": "Running"}),
                    );
                    continue;
                }
                let image = status
                    .images
                    .iter()
                    .find(|i| i.app_id == app.id && &i.service_name == name && i.name == svc.image);
                let progress = status.downloads.get(&svc.image).copied();
                let has_container = releases
                    .get(&rel.commit)
                    .and_then(|r| r["services"].get(name.as_str()))
                    .is_some();
                let entry = match (progress, image) {
                    (Some(p), _) => {
                        json!({"image": svc.image, "status": "Downloading", "download_progress": p})
                    }
                    _ if has_container => continue,
                    (None, Some(i)) if i.status == "Downloaded" => {
                        json!({"image": svc.image, "status": "Downloaded"})
                    }
                    _ => {
                        json!({"image": svc.image, "status": "Downloading", "download_progress": 0})
                    }
                };
                service_of(&mut releases, &rel.commit, name, entry);
            }
            releases
                .entry(rel.commit.clone())
                .or_insert_with(|| json!({"services": {}}));
        }
        for rel in releases.values_mut() {
            let update_status = update_status(&rel["services"]);
            rel["update_status"] = json!(update_status);
        }
        // A release that failed its trial is aborted (its predecessor runs, reported done).
        for t in status
            .trials
            .iter()
            .filter(|t| t.app_uuid == app.uuid && t.state == "failed")
        {
            if let Some(rel) = releases.get_mut(&t.commit) {
                rel["update_status"] = json!("aborted");
            }
        }
        let mut entry = Map::new();
        if let Some(commit) = status.releases.get(&app.id) {
            entry.insert("release_uuid".into(), json!(commit));
        }
        entry.insert("releases".into(), Value::Object(releases));
        out.insert(app.uuid.clone(), Value::Object(entry));
    }
    out
}

/// The host app's report entry: its release with the one pseudo-service `hostapp`, and
/// `release_uuid` once the device runs it (docs/hostos.md §4).
fn host_app(h: &HostOsStatus) -> Value {
    let service = json!({"image": hostapp::repository(&h.image), "status": h.service_status});
    let mut entry = json!({"releases": {&h.release_uuid: {
        "update_status": h.update_status,
        "services": {hostapp::SERVICE_NAME: service},
    }}});
    if h.update_status == "done" {
        entry["release_uuid"] = json!(h.release_uuid);
    }
    entry
}

/// A release's `update_status` from its services (precedence of §5.3).
pub fn update_status(services: &Value) -> &'static str {
    let all: Vec<&Value> = services
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let any_status = |names: &[&str]| {
        all.iter()
            .any(|s| names.contains(&s["status"].as_str().unwrap_or_default()))
    };
    if any_status(&["Aborted"]) {
        "aborted"
    } else if all.iter().any(|s| {
        s.get("download_progress")
            .and_then(Value::as_u64)
            .is_some_and(|p| p != 100)
    }) {
        "downloading"
    } else if any_status(&["Downloaded"]) {
        "downloaded"
    } else if any_status(&["Installing", "Installed", "Awaiting handover"]) {
        "applying changes"
    } else {
        "done"
    }
}

/// The keys of `current` that differ from `last` (top-level device fields; `apps` whole).
pub fn diff(last: &Map<String, Value>, current: &Map<String, Value>) -> Map<String, Value> {
    current
        .iter()
        .filter(|(k, v)| last.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a diff holds nothing but metrics.
pub fn metrics_only(diff: &Map<String, Value>) -> bool {
    !diff.is_empty() && diff.keys().all(|k| METRIC_KEYS.contains(&k.as_str()))
}

pub struct Reporter {
    pub cloud: Cloud,
    pub settings: Arc<Settings>,
    pub status: Arc<Mutex<Status>>,
    pub shared: Arc<CloudShared>,
    /// `<ROOT>/tmp/balena-supervisor/state-report-cache`.
    pub cache_path: PathBuf,
    /// From os-release, read once by the cloud link at start.
    pub os_version: Option<String>,
    pub os_variant: Option<String>,
}

impl Reporter {
    pub fn cache_path(settings: &Settings) -> PathBuf {
        settings
            .paths
            .root_mountpoint
            .join("tmp/balena-supervisor/state-report-cache")
    }

    fn load_cache(&self) -> Map<String, Value> {
        std::fs::read(&self.cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn save_cache(&self, report: &Map<String, Value>) {
        if let Some(dir) = self.cache_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let bytes = serde_json::to_vec(report).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.cache_path, &bytes) {
            warn!("cannot keep the last state report: {e}");
        }
    }

    /// Tags the cloud acknowledged, kept next to the report cache (host /tmp: after a reboot
    /// they are sent once more, which changes nothing).
    fn tags_cache_path(&self) -> PathBuf {
        self.cache_path.with_file_name("tags-report-cache")
    }

    fn load_reported_tags(&self) -> Map<String, Value> {
        std::fs::read(self.tags_cache_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_reported_tags(&self, tags: &Map<String, Value>) {
        let bytes = serde_json::to_vec(tags).unwrap_or_default();
        if let Err(e) = crate::fsutil::write_atomic(&self.tags_cache_path(), &bytes) {
            warn!("cannot keep the reported tags: {e}");
        }
    }

    fn send(&self, body: &Map<String, Value>) -> Result<(), CloudError> {
        super::patch_as_device(&self.cloud, &self.settings, "/device/v3/state", body)
    }

    /// How long to wait after the `failures`-th failed call: the answer's Retry-After, else
    /// the poll backoff.
    fn wait_after(&self, e: &CloudError, failures: u32) -> Duration {
        match e {
            CloudError::Status {
                retry_after: Some(r),
                ..
            } => *r,
            _ => {
                let interval = Duration::from_millis(self.settings.config_json.poll_interval_ms());
                super::poll::backoff(failures, interval)
            }
        }
    }

    /// Reports until shut down: on every status change (at most once per 10 s), and for
    /// address and metric changes found by its own timers.
    pub fn run(self, changes: Receiver<()>) {
        let mut r = ReportLoop::new(&self);
        loop {
            let wake = r.wake_at();
            match changes.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(()) => r.pending = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.shared.stopping() {
                return;
            }
            let now = Instant::now();
            let status = self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            r.refresh_host_facts(&self, &status, now);
            if !r.pending || now < r.not_before || !self.shared.provisioned() {
                continue;
            }
            // Tags set through the local API go first, under the same throttle and backoff.
            if !self.send_tags(&mut r, &status, now) {
                self.send_report(&mut r, &status, now);
            }
        }
    }

    /// Sends the tags set locally that the cloud has not acknowledged; false when there were
    /// none.
    fn send_tags(&self, r: &mut ReportLoop, status: &Status, now: Instant) -> bool {
        let tags = super::tags::unreported(&status.target_tags, &r.reported_tags);
        if tags.is_empty() {
            return false;
        }
        match super::tags::send(&self.cloud, &self.settings, &tags) {
            Ok(()) => {
                r.reported_tags.extend(tags);
                self.save_reported_tags(&r.reported_tags);
                r.sent(now, false);
            }
            Err(e) => {
                let wait = r.failed(self, &e, now);
                warn!(
                    "Non-200 response from the API while reporting tags: {e}; retrying in {wait:?}"
                );
            }
        }
        true
    }

    /// Sends what changed since the last acknowledged report (metrics-only changes at most
    /// every `METRICS_INTERVAL`).
    fn send_report(&self, r: &mut ReportLoop, status: &Status, now: Instant) {
        let local_mode = status.local_mode || self.settings.config_json.unmanaged();
        r.device.api_secret = status.api_secret.clone();
        let current = current_state(status, &r.device, local_mode, &r.last);
        let body = diff(&r.last, &current);
        let recent_metrics = r.last_sent.is_some_and(|t| now < t + METRICS_INTERVAL);
        if body.is_empty() || (metrics_only(&body) && recent_metrics) {
            r.pending = false;
            return;
        }
        match self.send(&body) {
            Ok(()) => {
                debug!(
                    "State report sent: {}",
                    body.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                r.last = current;
                self.save_cache(&r.last);
                r.last_sent = Some(now);
                // Check again once the throttle allows: more may have changed meanwhile.
                r.sent(now, true);
            }
            Err(e) => {
                let wait = r.failed(self, &e, now);
                warn!("Non-200 response from the API while reporting state: {e}; retrying in {wait:?}");
            }
        }
    }
}

/// What the report thread keeps between wake-ups.
struct ReportLoop {
    /// The last report the cloud acknowledged (also kept on disk).
    last: Map<String, Value>,
    reported_tags: Map<String, Value>,
    last_sent: Option<Instant>,
    /// Nothing is sent before this (the throttle, or a failure's backoff).
    not_before: Instant,
    failures: u32,
    device: DeviceFields,
    addresses_read: Instant,
    metrics_read: Option<Instant>,
    /// CPU times at the last metrics read (busy, total), for the usage between reads.
    cpu: Option<(u64, u64)>,
    /// Something may have changed that was not sent yet (deferred by the throttle).
    pending: bool,
}

impl ReportLoop {
    fn new(reporter: &Reporter) -> ReportLoop {
        ReportLoop {
            last: reporter.load_cache(),
            reported_tags: reporter.load_reported_tags(),
            last_sent: None,
            not_before: Instant::now(),
            failures: 0,
            device: DeviceFields {
                api_port: reporter.settings.listen_port,
                os_version: reporter.os_version.clone(),
                os_variant: reporter.os_variant.clone(),
                ..DeviceFields::default()
            },
            addresses_read: Instant::now() - ADDRESS_INTERVAL,
            metrics_read: None,
            cpu: None,
            pending: true,
        }
    }

    /// The next re-read of addresses or metrics, or the throttle's end when something waits.
    fn wake_at(&self) -> Instant {
        let now = Instant::now();
        let next_timer = (self.addresses_read + ADDRESS_INTERVAL)
            .min(self.metrics_read.map_or(now, |t| t + METRICS_INTERVAL));
        if self.pending {
            self.not_before.min(next_timer)
        } else {
            next_timer
        }
    }

    /// Re-reads the addresses and metrics whose interval has passed (metrics at once when
    /// SUPERVISOR_HARDWARE_METRICS was switched).
    fn refresh_host_facts(&mut self, reporter: &Reporter, status: &Status, now: Instant) {
        if now >= self.addresses_read + ADDRESS_INTERVAL {
            self.device.ip_address = host::ip_addresses();
            self.device.mac_address =
                host::mac_addresses(&reporter.settings.paths.mac_address_path);
            self.addresses_read = now;
            self.pending = true;
        }
        let hardware = status
            .target
            .as_deref()
            .and_then(|t| t.flag("SUPERVISOR_HARDWARE_METRICS"))
            != Some(false);
        let switched = hardware != self.device.metrics.is_some();
        if switched
            || self
                .metrics_read
                .is_none_or(|t| now >= t + METRICS_INTERVAL)
        {
            self.device.metrics = hardware.then(|| {
                let m = host::metrics(&reporter.settings.paths.data_mountpoint, self.cpu);
                self.cpu = host::cpu_times();
                m
            });
            self.metrics_read = Some(now);
            self.pending = true;
        }
    }

    /// A call succeeded: the throttle starts again; `pending` says whether to look again.
    fn sent(&mut self, now: Instant, pending: bool) {
        self.failures = 0;
        self.not_before = now + MIN_REPORT_INTERVAL;
        if pending {
            self.pending = true;
        }
    }

    /// A call failed: backoff (or the cloud's Retry-After). Returns the wait.
    fn failed(&mut self, reporter: &Reporter, e: &CloudError, now: Instant) -> Duration {
        self.failures += 1;
        let wait = reporter.wait_after(e, self.failures);
        self.not_before = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::target::{parse_device_target, TargetState};
    use crate::protocol::{ContainerStatus, ImageStatus};

    fn target() -> Arc<TargetState> {
        let doc = json!({"name": "gentle-river", "config": {}, "apps": {"appuuid1": {
            "id": 1234, "name": "myfleet", "class": "fleet",
            "releases": {"newcommit": {"id": 2, "services": {
                "main": {"id": 5511, "image_id": 7722, "image": "reg/main:2", "environment": {}, "labels": {}},
                "side": {"id": 5512, "image_id": 7723, "image": "reg/side:2", "environment": {}, "labels": {}}
            }, "volumes": {}, "networks": {}}}
        }}});
        Arc::new(parse_device_target(&doc).unwrap())
    }

    fn container(name: &str, commit: &str, image: &str, status: &str) -> ContainerStatus {
        ContainerStatus {
            app_id: 1234,
            service_name: name.into(),
            commit: Some(commit.into()),
            release_id: 1,
            image: image.into(),
            environment: Default::default(),
            image_id: 1,
            service_id: 1,
            container_id: "c".into(),
            status: status.into(),
            created_at: String::new(),
            health: None,
            exit_code: None,
            restart_count: 0,
        }
    }

    #[test]
    fn the_host_app_is_reported_with_its_hostapp_service() {
        let doc = json!({"name": "d", "config": {}, "apps": {"hostuuid": {"id": 3, "name": "os",
            "is_host": true, "class": "app", "releases": {"hostrel": {"id": 7, "services": {"hostapp": {
                "id": 1, "image_id": 1, "image": "reg/v2/os:6@sha256:ab", "labels": {}}}}}}}});
        let mut status = Status {
            target: Some(Arc::new(parse_device_target(&doc).unwrap())),
            ..Default::default()
        };
        // Rejected (no published host status): left out, as helios does.
        assert!(apps(&status).is_empty());
        let mut host = HostOsStatus {
            app_uuid: "hostuuid".into(),
            release_uuid: "hostrel".into(),
            image: "reg/v2/os:6@sha256:ab".into(),
            build: "b2".into(),
            current_build: Some("b1".into()),
            update_status: "aborted",
            service_status: "Installing",
            install_attempts: 3,
            last_error: None,
        };
        status.host_os = Some(host.clone());
        assert_eq!(
            Value::Object(apps(&status)),
            json!({"hostuuid": {"releases": {"hostrel": {"update_status": "aborted",
                "services": {"hostapp": {"image": "reg/v2/os", "status": "Installing"}}}}}})
        );
        host.update_status = "done";
        host.service_status = "Running";
        status.host_os = Some(host);
        assert_eq!(
            Value::Object(apps(&status)),
            json!({"hostuuid": {"release_uuid": "hostrel", "releases": {"hostrel": {"update_status": "done",
                "services": {"hostapp": {"image": "reg/v2/os", "status": "Running"}}}}}})
        );
    }

    fn image(name: &str, service: &str, status: &str) -> ImageStatus {
        ImageStatus {
            name: name.into(),
            app_id: 1234,
            service_name: service.into(),
            image_id: 1,
            docker_image_id: None,
            status: status.into(),
            download_progress: None,
        }
    }

    #[test]
    fn an_update_in_progress_shows_both_releases() {
        let mut status = Status {
            target: Some(target()),
            ..Status::default()
        };
        status.releases.insert(1234, "oldcommit".into());
        status.containers = vec![container("main", "oldcommit", "reg/main:1", "Running")];
        status.downloads.insert("reg/main:2".into(), 40);
        let apps = apps(&status);
        let app = &apps["appuuid1"];
        assert_eq!(app["release_uuid"], "oldcommit");
        assert_eq!(app["releases"]["oldcommit"]["update_status"], "done");
        assert_eq!(
            app["releases"]["oldcommit"]["services"]["main"],
            json!({"image": "reg/main:1", "status": "Running"})
        );
        let new = &app["releases"]["newcommit"];
        assert_eq!(new["update_status"], "downloading");
        assert_eq!(
            new["services"]["main"],
            json!({"image": "reg/main:2", "status": "Downloading", "download_progress": 40})
        );
        // No image record yet: reported as starting to download.
        assert_eq!(
            new["services"]["side"],
            json!({"image": "reg/side:2", "status": "Downloading", "download_progress": 0})
        );
    }

    #[test]
    fn release_status_follows_its_services() {
        let mut status = Status {
            target: Some(target()),
            ..Status::default()
        };
        status.images = vec![
            image("reg/main:2", "main", "Downloaded"),
            image("reg/side:2", "side", "Downloaded"),
        ];
        let s = apps(&status);
        assert_eq!(
            s["appuuid1"]["releases"]["newcommit"]["update_status"],
            "downloaded"
        );
        assert!(s["appuuid1"].get("release_uuid").is_none());

        status.containers = vec![
            container("main", "newcommit", "reg/main:2", "Installed"),
            container("side", "newcommit", "reg/side:2", "Running"),
        ];
        let s = apps(&status);
        let rel = &s["appuuid1"]["releases"]["newcommit"];
        assert_eq!(rel["update_status"], "applying changes");
        assert_eq!(rel["services"]["main"]["status"], "Installed");

        status.containers[0].status = "Running".into();
        status.releases.insert(1234, "newcommit".into());
        let s = apps(&status);
        assert_eq!(
            s["appuuid1"]["releases"]["newcommit"]["update_status"],
            "done"
        );
        assert_eq!(s["appuuid1"]["release_uuid"], "newcommit");
    }

    #[test]
    fn update_status_precedence() {
        let cases = [
            (
                json!({"a": {"status": "Aborted"}, "b": {"status": "Downloading", "download_progress": 5}}),
                "aborted",
            ),
            (
                json!({"a": {"status": "Downloaded"}, "b": {"status": "Downloading", "download_progress": 5}}),
                "downloading",
            ),
            (
                json!({"a": {"status": "Downloaded"}, "b": {"status": "Installing"}}),
                "downloaded",
            ),
            (
                json!({"a": {"status": "Running"}, "b": {"status": "Awaiting handover"}}),
                "applying changes",
            ),
            (
                json!({"a": {"status": "Running"}, "b": {"status": "exited"}}),
                "done",
            ),
            (json!({}), "done"),
        ];
        for (services, want) in cases {
            assert_eq!(update_status(&services), want, "{services}");
        }
    }

    #[test]
    fn only_changed_keys_are_sent_and_metrics_wait() {
        let device = DeviceFields {
            api_port: 48484,
            ip_address: "10.0.0.2".into(),
            ..DeviceFields::default()
        };
        let status = Status {
            target: Some(target()),
            ..Status::default()
        };
        let first = current_state(&status, &device, false, &Map::new());
        assert_eq!(diff(&Map::new(), &first).len(), first.len());
        assert!(diff(&first, &first).is_empty());

        let moved = DeviceFields {
            ip_address: "10.0.0.3".into(),
            ..device.clone()
        };
        let second = current_state(&status, &moved, false, &first);
        assert_eq!(
            diff(&first, &second),
            json!({"ip_address": "10.0.0.3"})
                .as_object()
                .unwrap()
                .clone()
        );
        assert!(!metrics_only(&diff(&first, &second)));

        let busy = DeviceFields {
            metrics: Some(Metrics {
                cpu_usage: Some(50),
                ..Metrics::default()
            }),
            ..device.clone()
        };
        let third = current_state(&status, &busy, false, &first);
        let d = diff(&first, &third);
        assert_eq!(d.keys().collect::<Vec<_>>(), ["cpu_usage"]);
        assert!(metrics_only(&d));
        // A small move within the bucket repeats the last value: no diff.
        let calmer = DeviceFields {
            metrics: Some(Metrics {
                cpu_usage: Some(55),
                ..Metrics::default()
            }),
            ..device.clone()
        };
        assert!(diff(&third, &current_state(&status, &calmer, false, &third)).is_empty());
    }

    #[test]
    fn local_mode_leaves_out_apps() {
        let status = Status {
            target: Some(target()),
            ..Status::default()
        };
        let s = current_state(&status, &DeviceFields::default(), true, &Map::new());
        assert!(s.get("apps").is_none() && s.get("logs_channel").is_none());
        assert_eq!(s["name"], "gentle-river");
        assert_eq!(s["status"], "Idle");
        assert_eq!(s["supervisor_version"], crate::SUPERVISOR_VERSION);
    }

    #[test]
    fn apps_are_left_out_until_the_engine_has_been_read() {
        let mut status = Status {
            target: Some(target()),
            ..Status::default()
        };
        let s = current_state(&status, &DeviceFields::default(), false, &Map::new());
        assert!(s.get("apps").is_none(), "{s:?}");
        status.apps_known = true;
        let s = current_state(&status, &DeviceFields::default(), false, &Map::new());
        assert!(
            s["apps"].as_object().is_some_and(|a| !a.is_empty()),
            "{s:?}"
        );
    }
}
