//! Device endpoints that need no change of state (docs/contract/device-api.md §3.3,
//! 3.10–3.12, 3.16, 3.27, 3.29): `/v1/device`, `/v1/apps/:appId` stop/start,
//! `/v2/applications/:appId/state`, `/v2/device/vpn`, `/v1/blink`, `/v2/journal-logs`,
//! `GET /v1/apps/:appId`, `/v2/cleanup-volumes`.

use super::server::{Request, Response};
use super::{failed, int_param, json_response, truthy, Api, ENGINE_TIMEOUT, NOT_ANSWERING};
use crate::protocol::{ActionError, AppState, Command, KeyScope, ServiceAction, ServiceRef};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The v1 texts for apps that are not single-container (docs/contract/device-api.md §3.9, 3.10).
const APP_NOT_FOUND: &str = "App not found: an app needs to be installed for this endpoint to work.\n\tIf you've recently moved this device from another app,\n\tplease push an app and wait for it to be installed first.";
pub(super) const MULTI_CONTAINER: &str = "serviceName or imageId parameters were not provided or the app is multi-container. Use the v2 service action endpoints.";

/// Keys `GET /v1/apps/:appId` never shows.
const PRIVATE_ENV: &[&str] = &[
    "RESIN_SUPERVISOR_API_KEY",
    "RESIN_API_KEY",
    "BALENA_SUPERVISOR_API_KEY",
    "BALENA_API_KEY",
];

/// How long `/v1/blink` blinks, and how fast.
const BLINK_FOR: Duration = Duration::from_secs(15);
const BLINK_HALF_PERIOD: Duration = Duration::from_millis(200);

impl Api {
    /// `GET /v1/device`: the legacy device state.
    pub(super) fn v1_device(&self) -> Response {
        let s = self.status();
        let (os_version, _) = crate::host::os_version_and_variant(
            &self.settings.paths.host_os_version_path,
            self.settings.config_json.get_bool("developmentMode"),
        );
        let applying = s.app_state != AppState::Applied;
        let mut out = Map::new();
        out.insert("api_port".into(), json!(self.settings.listen_port));
        out.insert("ip_address".into(), json!(crate::host::ip_addresses()));
        if let Some(v) = os_version {
            out.insert("os_version".into(), json!(v));
        }
        if let Some(mac) = crate::host::mac_addresses(&self.settings.paths.mac_address_path) {
            out.insert("mac_address".into(), json!(mac));
        }
        out.insert(
            "supervisor_version".into(),
            json!(crate::SUPERVISOR_VERSION),
        );
        out.insert("update_pending".into(), json!(applying));
        out.insert(
            "update_failed".into(),
            json!(applying && s.last_error.is_some()),
        );
        out.insert(
            "update_downloaded".into(),
            json!(applying && s.images.iter().any(|i| i.status == "Downloaded")),
        );
        let first = s.containers.first();
        if let Some(c) = first {
            if !applying {
                if let Some(commit) = s.releases.get(&c.app_id) {
                    out.insert("commit".into(), json!(commit));
                }
            }
            let status = if c.status == "Running" {
                "Idle"
            } else {
                c.status.as_str()
            };
            out.insert("status".into(), json!(status));
            out.insert(
                "download_progress".into(),
                json!(s.downloads.get(&c.image).copied()),
            );
        }
        json_response(200, Value::Object(out))
    }

    /// `GET /v1/apps/:appId`: the single-container app's container.
    pub(super) fn v1_app(&self, path: &str, scope: &KeyScope) -> Response {
        let param = path.trim_start_matches("/v1/apps/");
        let Some(app_id) = int_param(&Value::String(param.into())).filter(|id| *id > 0) else {
            return Response::text(400, "Missing app id");
        };
        if !scope.allows(app_id) {
            return failed(401, "Application is not available");
        }
        let s = self.status();
        let services: Vec<_> = s.containers.iter().filter(|c| c.app_id == app_id).collect();
        let c = match services.as_slice() {
            [] => return Response::text(400, "App not found"),
            [one] => *one,
            _ => {
                return Response::text(
                    400,
                    "Some v1 endpoints are only allowed on single-container apps",
                )
            }
        };
        let env: Map<String, Value> = c
            .environment
            .iter()
            .filter(|(k, _)| !PRIVATE_ENV.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json_response(
            200,
            json!({"appId": app_id, "commit": c.commit, "containerId": c.container_id,
                   "env": env, "imageId": c.image, "releaseId": c.release_id}),
        )
    }

    /// `POST /v1/apps/:appId/stop` and `/start`: the service action on a single-container app.
    pub(super) fn v1_app_action(&self, path: &str, req: &Request, scope: &KeyScope) -> Response {
        let rest = path.trim_start_matches("/v1/apps/");
        let (app_param, verb) = rest.split_once('/').unwrap_or((rest, ""));
        let action = match verb {
            "stop" => ServiceAction::Stop,
            "start" => ServiceAction::Start,
            _ => return Response::text(404, format!("Cannot POST {path}")),
        };
        let Some(app_id) = int_param(&Value::String(app_param.into())).filter(|id| *id > 0) else {
            return Response::text(400, "Invalid app id");
        };
        if !scope.allows(app_id) {
            return Response::text(401, "Unauthorized");
        }
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let services: Vec<_> = self
            .status()
            .containers
            .into_iter()
            .filter(|c| c.app_id == app_id)
            .collect();
        let service = match services.as_slice() {
            [] => return Response::text(400, APP_NOT_FOUND),
            [one] => one.clone(),
            _ => return Response::text(400, MULTI_CONTAINER),
        };
        let which = ServiceRef {
            service_name: Some(service.service_name.clone()),
            image_id: None,
        };
        match self.ask_service_action(app_id, which, action, truthy(doc.get("force"))) {
            Ok(Ok(())) => json_response(200, json!({"containerId": service.container_id})),
            Ok(Err(ActionError::NotFound(text)))
                if text == "Service does not exist in target release" =>
            {
                Response::text(404, text)
            }
            Ok(Err(ActionError::NotFound(text))) => Response::text(400, text),
            Ok(Err(ActionError::Locked(m))) => failed(423, m),
            Ok(Err(ActionError::Failed(m))) => failed(503, m),
            Err(unanswered) => unanswered,
        }
    }

    /// `GET /v2/applications/:appId/state`: the legacy per-app state, keyed by image id.
    pub(super) fn v2_app_state(&self, path: &str, scope: &KeyScope) -> Response {
        let param = path
            .trim_start_matches("/v2/applications/")
            .trim_end_matches("/state");
        let Some(app_id) = int_param(&Value::String(param.into())).filter(|id| *id > 0) else {
            return failed(400, format!("Invalid application ID: {param}"));
        };
        let s = self.status();
        let Some(target_app) = s
            .target
            .as_deref()
            .and_then(|t| t.apps.values().find(|a| a.id == app_id))
            .filter(|_| scope.allows(app_id))
        else {
            return failed(409, format!("Application ID does not exist: {app_id}"));
        };
        let mut services = Map::new();
        for c in s.containers.iter().filter(|c| c.app_id == app_id) {
            let release_id = target_app
                .release
                .as_ref()
                .filter(|r| Some(&r.commit) == c.commit.as_ref())
                .map(|r| r.id);
            services.insert(
                c.image_id.to_string(),
                json!({"status": c.status, "releaseId": release_id,
                       "download_progress": s.downloads.get(&c.image).copied()}),
            );
        }
        let mut body = json!({"local": {app_id.to_string(): {"services": services}}});
        if let Some(commit) = s.releases.get(&app_id) {
            body["commit"] = json!(commit);
        }
        json_response(200, body)
    }

    /// `GET /v2/cleanup-volumes`: the state engine removes volumes nothing uses.
    pub(super) fn cleanup_volumes(&self) -> Response {
        match self.ask(
            |reply| Command::CleanupVolumes { reply },
            ENGINE_TIMEOUT * 4,
        ) {
            Some(Ok(_)) => json_response(200, json!({"status": "success"})),
            Some(Err(e)) => failed(503, e),
            None => failed(503, NOT_ANSWERING),
        }
    }

    /// `GET /v2/device/vpn`: whether the VPN is enabled and connected.
    pub(super) fn vpn(&self) -> Response {
        let enabled = self.current_target().is_none_or(|t| {
            t.var("SUPERVISOR_VPN_CONTROL").is_none()
                || t.flag("SUPERVISOR_VPN_CONTROL") == Some(true)
        });
        let connected = self.settings.paths.vpn_status_path.join("active").exists();
        json_response(
            200,
            json!({"status": "success", "vpn": {"enabled": enabled, "connected": connected}}),
        )
    }

    /// `POST /v1/blink`: blinks the identification LED for 15 s, answering at once. One blink
    /// at a time: a request while blinking extends it to 15 s from now.
    pub(super) fn blink(&self) -> Response {
        match blink_for(&self.settings.paths.led_file, BLINK_FOR, BLINK_HALF_PERIOD) {
            Ok(()) => Response::text(200, "OK"),
            Err(e) => failed(503, format!("cannot blink: {e}")),
        }
    }

    /// `POST /v2/journal-logs`: `journalctl` with the body's options, streamed.
    pub(super) fn journal_logs(&self, req: &Request) -> Response {
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let args = journal_args(&doc);
        let child = std::process::Command::new("journalctl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => match child.stdout.take() {
                Some(out) => {
                    Response::stream("text/plain; charset=utf-8", ChildOutput { child, out })
                }
                None => failed(503, "journalctl gave no output"),
            },
            Err(e) => failed(503, format!("cannot run journalctl: {e}")),
        }
    }
}

/// Until when the LED blinks; `Some` while the one blink thread runs (the device has one LED).
static BLINK_UNTIL: Mutex<Option<Instant>> = Mutex::new(None);

fn blink_until() -> std::sync::MutexGuard<'static, Option<Instant>> {
    BLINK_UNTIL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Blinks `led` until `duration` from now: extends a running blink, or starts its thread.
pub fn blink_for(
    led: &std::path::Path,
    duration: Duration,
    half_period: Duration,
) -> std::io::Result<()> {
    let mut until = blink_until();
    let running = until.is_some();
    *until = Some(Instant::now() + duration);
    if running {
        return Ok(());
    }
    let led = led.to_path_buf();
    let started = std::thread::Builder::new()
        .name("blink".into())
        .stack_size(64 * 1024)
        .spawn(move || blink(&led, half_period));
    if started.is_err() {
        *until = None;
    }
    started.map(drop)
}

/// Writes 1 and 0 to the LED file in turn until the blink's end, then 0. Errors end the
/// blinking. The end is read and cleared under the same lock as [`blink_for`] extends it, so
/// no request is lost between the last check and the thread's exit.
fn blink(led: &std::path::Path, half_period: Duration) {
    let mut on = true;
    loop {
        {
            let mut until = blink_until();
            let over = until.is_none_or(|u| Instant::now() >= u);
            if over || std::fs::write(led, if on { "1" } else { "0" }).is_err() {
                *until = None;
                break;
            }
        }
        on = !on;
        std::thread::sleep(half_period);
    }
    let _ = std::fs::write(led, "0");
}

/// `journalctl` arguments for a `/v2/journal-logs` body (docs/contract/device-api.md §3.29).
pub fn journal_args(doc: &Value) -> Vec<String> {
    let mut args = Vec::new();
    if truthy(doc.get("all")) {
        args.push("-a".to_string());
    }
    if truthy(doc.get("follow")) {
        args.push("--follow".to_string());
    }
    if let Some(n) = doc.get("count").and_then(int_param).filter(|n| *n > 0) {
        args.extend(["-n".to_string(), n.to_string()]);
    }
    for (key, flag) in [
        ("unit", "-u"),
        ("containerId", "-t"),
        ("since", "-S"),
        ("until", "-U"),
    ] {
        if let Some(v) = doc.get(key).and_then(Value::as_str) {
            args.extend([flag.to_string(), v.to_string()]);
        }
    }
    let format = doc.get("format").and_then(Value::as_str).unwrap_or("short");
    args.extend(["-o".to_string(), format.to_string()]);
    args
}

/// A child's stdout as a response body; the child is killed when the response ends (the
/// client went away or journalctl finished).
struct ChildOutput {
    child: std::process::Child,
    out: std::process::ChildStdout,
}

impl super::server::StreamBody for ChildOutput {
    fn read_wait(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        use std::os::fd::AsRawFd;
        if super::server::poll_one(self.out.as_raw_fd(), libc::POLLIN, wait) == 0 {
            return Ok(None);
        }
        self.out.read(buf).map(Some)
    }
}

impl Drop for ChildOutput {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_arguments_follow_the_body() {
        assert_eq!(journal_args(&json!({})), ["-o", "short"]);
        assert_eq!(
            journal_args(
                &json!({"all": true, "follow": "1", "count": 10, "unit": "balena.service",
                "containerId": "abc", "since": "2024-01-01", "until": "now", "format": "json"})
            ),
            [
                "-a",
                "--follow",
                "-n",
                "10",
                "-u",
                "balena.service",
                "-t",
                "abc",
                "-S",
                "2024-01-01",
                "-U",
                "now",
                "-o",
                "json"
            ]
        );
        // A count that is not a positive integer is left out.
        assert_eq!(journal_args(&json!({"count": -3})), ["-o", "short"]);
        assert_eq!(journal_args(&json!({"count": "x"})), ["-o", "short"]);
    }
}

#[cfg(test)]
mod blink_tests {
    use super::*;

    fn blink_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "blink")
            .count()
    }

    #[test]
    fn one_blink_at_a_time_and_a_request_extends_it() {
        let dir = crate::testutil::TempDir::new("blink");
        let led = dir.path().join("brightness");
        let half = Duration::from_millis(20);
        for _ in 0..500 {
            blink_for(&led, Duration::from_millis(300), half).unwrap();
        }
        // The thread names itself once it runs.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(blink_threads(), 1);
        let mut seen = std::collections::BTreeSet::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            seen.insert(std::fs::read_to_string(&led).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen.contains("1") && seen.contains("0"), "{seen:?}");
        // Extended: still blinking past the first request's end.
        blink_for(&led, Duration::from_millis(300), half).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(blink_threads(), 1, "still blinking after 400 ms");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(blink_threads(), 0);
        assert_eq!(std::fs::read_to_string(&led).unwrap(), "0");
    }
}
