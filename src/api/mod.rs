//! The Supervisor API on :48484 (served by [`server`]): routing, auth (docs/contract/device-api.md
//! §1) and the app and service endpoints here, device endpoints in [`device`]. It never calls the
//! engine: it asks the state engine over its channel and reads the status it publishes.

use crate::cloud::{poll, CloudShared, PollRequest};
use crate::compose::target::TargetState;
use crate::compose::target::{parse_local_or_device, MAX_TARGET_BYTES};
use crate::config::Settings;
use crate::logs::LogBus;
use crate::protocol::{
    ActionError, AppAction, AppState, BundleError, Command, KeyScope, PowerAction, ServiceAction,
    ServiceRef, Status, TargetNotSet,
};
use crossbeam_channel::Sender;
use log::info;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
mod device;
mod host;
pub mod server;

use server::{Limits, Method, Request, Response, Server};

/// How long a request waits for the state engine.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);
/// `POST /v2/local/bundle` (its body is streamed to the state engine's import).
const BUNDLE_PATH: &str = "/v2/local/bundle";
/// How long an upload waits for its bundle to be imported: hundreds of MB on an SD card.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// What a request answers when the state engine does not take or answer it.
const NOT_ANSWERING: &str = "state engine is not answering";

pub struct Api {
    pub settings: Arc<Settings>,
    /// The state engine's channel (never the engine client: the API only asks).
    pub state_engine: Sender<Command>,
    pub status: Arc<Mutex<Status>>,
    /// The cloud link of a managed device.
    pub cloud: Option<CloudHandle>,
    pub logs: Arc<LogBus>,
}

/// NDJSON lines from a log bus subscription; with `services`, only container lines of those
/// services (an app-scoped key sees its own apps' output and nothing else).
struct LinesReader {
    rx: crossbeam_channel::Receiver<Arc<str>>,
    buf: Vec<u8>,
    pos: usize,
    services: Option<std::collections::BTreeSet<i64>>,
}

impl LinesReader {
    fn shown(&self, line: &str) -> bool {
        let Some(services) = &self.services else {
            return true;
        };
        serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("serviceId").and_then(Value::as_i64))
            .is_some_and(|id| services.contains(&id))
    }
}

impl server::StreamBody for LinesReader {
    fn read_wait(&mut self, out: &mut [u8], wait: Duration) -> std::io::Result<Option<usize>> {
        let until = std::time::Instant::now() + wait;
        while self.pos >= self.buf.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let line = match self.rx.recv_timeout(left) {
                Ok(line) => line,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Ok(None),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(Some(0)),
            };
            if !self.shown(&line) {
                continue;
            }
            self.buf.clear();
            self.buf.extend_from_slice(line.as_bytes());
            self.buf.push(b'\n');
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(Some(n))
    }
}

/// Deepest nesting a request body may have: far beyond any target (about 12 levels), far
/// below what the parser's recursion could take on a worker's stack.
const MAX_JSON_DEPTH: usize = 64;

/// A request body as JSON, or why not (too deep for the parser's recursion, or invalid).
pub(super) fn json_of(body: &[u8]) -> Result<Value, String> {
    if crate::encoding::json_depth(body) > MAX_JSON_DEPTH {
        return Err(format!(
            "invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels"
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
}

/// A request body as JSON; too deep or invalid is a 400.
pub(super) fn parse_json(body: &[u8]) -> Result<Value, Response> {
    json_of(body).map_err(|e| failed(400, e))
}

/// Refuses what a web page the device's owner opens could send to the API behind their back
/// (in local mode it has no key): a request whose `Origin` is another site, and a state-changing
/// request with a body type a page may send without asking (`text/plain`, form data). API
/// clients (balena-cli, curl, containers) send no Origin, and JSON or no Content-Type.
fn cross_site(req: &Request) -> Option<Response> {
    if let Some(origin) = req.header("origin") {
        // "null" (a sandboxed page, a file) is never the device's own page.
        let origin_host = origin.split_once("://").map(|(_, h)| h);
        if origin_host.is_none() || origin_host != req.header("host") {
            return Some(failed(403, "Cross-site requests are not allowed"));
        }
    }
    let changes_state = matches!(
        req.method,
        Method::Post | Method::Put | Method::Patch | Method::Delete
    );
    let content_type = req.header("content-type").map(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    match content_type.as_deref() {
        Some("text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
            if changes_state =>
        {
            Some(failed(400, "Content-Type must be application/json"))
        }
        _ => None,
    }
}

/// What the API needs of the cloud link: health and a way to ask for a fetch.
pub struct CloudHandle {
    pub shared: Arc<CloudShared>,
    pub poll: Sender<PollRequest>,
    /// For `GET /v2/device/tags`.
    pub client: crate::balena_api::client::Cloud,
}

/// Binds the port and starts the server; returns it so the caller can stop it.
pub fn start(api: Api) -> std::io::Result<Server> {
    Ok(listen(api.settings.listen_port)?.ready(api))
}

/// The API listening before the rest of the daemon has started (the database, the engine,
/// the cloud link): `/ping` answers at once; every other request waits for `ready` to hand
/// over the whole API (10 s at most; then `/v1/healthy` says unhealthy and the rest 503), so a
/// client that pings first and then asks is served as if the daemon had been up.
pub struct EarlyApi {
    server: Server,
    api: Arc<std::sync::OnceLock<Api>>,
}

impl EarlyApi {
    /// Every route from now on; returns the server so the caller can stop it.
    pub fn ready(self, api: Api) -> Server {
        let _ = self.api.set(api);
        self.server
    }
}

/// Binds the port and answers what can be answered before start-up is over.
pub fn listen(port: u16) -> std::io::Result<EarlyApi> {
    let addr = format!("0.0.0.0:{port}");
    let listener = std::net::TcpListener::bind(&addr)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {addr}: {e}")))?;
    let api: Arc<std::sync::OnceLock<Api>> = Arc::new(std::sync::OnceLock::new());
    let handler = Arc::clone(&api);
    let server = Server::start(
        listener,
        Limits {
            uploads: &[BUNDLE_PATH],
            ..Limits::default()
        },
        Arc::new(move |req| match handler.get() {
            Some(api) => api.handle(req),
            None if req.path() == "/ping" => starting(&req),
            None => match wait_ready(&handler, Duration::from_secs(10)) {
                Some(api) => api.handle(req),
                None => starting(&req),
            },
        }),
    )?;
    info!("Supervisor API listening on {addr}");
    Ok(EarlyApi { server, api })
}

/// The whole API once start-up hands it over, waiting at most `limit` (start-up takes
/// milliseconds; this only runs then).
fn wait_ready(api: &std::sync::OnceLock<Api>, limit: Duration) -> Option<&Api> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(api) = api.get() {
            return Some(api);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Answers while the daemon starts: alive, not yet healthy, nothing else yet.
fn starting(req: &Request) -> Response {
    let response = match (&req.method, req.path()) {
        (Method::Get | Method::Head, "/ping") => Response::text(200, "OK"),
        (_, "/v1/healthy") => Response::text(500, "Unhealthy"),
        _ => failed(503, "Supervisor is starting"),
    };
    info!(
        "{} {} {} - starting",
        req.method,
        req.path(),
        response.status
    );
    response
}

fn json_response(status: u16, body: Value) -> Response {
    Response::json(status, &body)
}

fn failed(status: u16, message: impl Into<String>) -> Response {
    json_response(
        status,
        json!({"status": "failed", "message": message.into()}),
    )
}

/// The API key of a request: `?apikey=` first, then `Authorization: Bearer|ApiKey <key>`;
/// keys are word characters only.
fn request_key(req: &Request) -> Option<String> {
    let from_header = || {
        let (scheme, key) = req.header("Authorization")?.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey"))
            .then(|| key.trim().to_string())
    };
    req.query("apikey")
        .map(str::to_string)
        .or_else(from_header)
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Integer parameters: JSON numbers or strings like `12`, `"12"`, `"12.0"`
/// (docs/contract/device-api.md §0).
fn int_param(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            let (int, frac) = s.split_once('.').unwrap_or((s, ""));
            if !frac.bytes().all(|b| b == b'0') {
                return None;
            }
            int.parse().ok()
        }
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "on"),
        _ => false,
    }
}

impl Api {
    fn handle(&self, req: Request) -> Response {
        let started = std::time::Instant::now();
        let method = req.method.clone();
        let path = req.path().to_string();
        let open = matches!(path.as_str(), "/ping" | "/v1/healthy");
        let scope = if open {
            Some(KeyScope::GLOBAL)
        } else {
            self.key_scope(&req)
        };
        let response = match (cross_site(&req), scope) {
            (Some(refusal), _) => refusal,
            (None, None) => Response::text(401, "Unauthorized"),
            (None, Some(scope)) => self.route(&method, &path, &req, &scope),
        };

        info!(
            "{method} {path} {} - {} ms",
            response.status,
            started.elapsed().as_millis()
        );
        response
    }

    fn route(&self, method: &Method, path: &str, req: &Request, scope: &KeyScope) -> Response {
        match (method, path) {
            (Method::Post, "/v1/update") => self.update(req),
            (Method::Get | Method::Head, "/ping") => Response::text(200, "OK"),
            (Method::Get, "/v2/local/logs") => self.stream_logs(scope),
            (Method::Get, "/v1/device") => self.v1_device(),
            (Method::Get, "/v2/device/vpn") => self.vpn(),
            (Method::Get, "/v2/cleanup-volumes") => self.cleanup_volumes(),
            (Method::Post, "/v1/regenerate-api-key") => self.regenerate_api_key(req),
            (Method::Post, "/v1/blink") => self.blink(),
            (Method::Get, "/v2/device/tags") => self.get_tags(),
            (Method::Patch, "/v2/device/tags") => self.patch_tags(req),
            (Method::Get, "/v1/device/host-config") => self.host_config(),
            (Method::Patch, "/v1/device/host-config") => self.patch_host_config(req),
            (Method::Post, "/v1/reboot") => self.power(PowerAction::Reboot, req),
            (Method::Post, "/v1/shutdown") => self.power(PowerAction::Shutdown, req),
            (Method::Post, "/v2/journal-logs") => self.journal_logs(req),
            (Method::Post, p) if p.starts_with("/v1/apps/") => self.v1_app_action(p, req, scope),
            (Method::Get, p) if p.starts_with("/v1/apps/") => self.v1_app(p, scope),
            (Method::Get, p)
                if p.starts_with("/v2/applications/")
                    && p.ends_with("/state")
                    && p != "/v2/applications/state" =>
            {
                self.v2_app_state(p, scope)
            }
            (Method::Get, "/v2/version") => json_response(
                200,
                json!({"status": "success", "version": crate::SUPERVISOR_VERSION}),
            ),
            (Method::Get, "/v2/local/device-info") => json_response(
                200,
                json!({"status": "success", "info": {"arch": self.settings.device_type.arch, "deviceType": self.settings.device_type.slug}}),
            ),
            (Method::Get, "/v2/local/target-state") => self.get_target(),
            (Method::Post, "/v2/local/target-state") => self.post_target(req),
            (Method::Post, BUNDLE_PATH) => self.post_bundle(req, scope),
            (Method::Get, "/v2/state/status") => self.state_status(scope),
            (Method::Get | Method::Head, "/v1/healthy") => self.healthy(),
            (Method::Get, "/v2/applications/state") => self.applications_state(scope),
            (Method::Get, "/v2/containerId") => self.container_id(&req.url, scope),
            (Method::Get, "/v2/device/name") => {
                let name = self
                    .target()
                    .ok()
                    .flatten()
                    .map(|t| t.name)
                    .filter(|n| !n.is_empty());
                json_response(
                    200,
                    json!({"status": "success", "deviceName": name.unwrap_or_else(|| "local".into())}),
                )
            }
            (Method::Post, p) if p.starts_with("/v2/applications/") && p.ends_with("-service") => {
                self.service_action(p, req, scope)
            }
            (Method::Post, "/v1/restart") => self.app_action_v1(AppAction::Restart, req, scope),
            (Method::Post, "/v1/purge") => self.app_action_v1(AppAction::Purge, req, scope),
            (Method::Post, p)
                if p.starts_with("/v2/applications/")
                    && (p.ends_with("/restart") || p.ends_with("/purge")) =>
            {
                self.app_action_v2(p, req, scope)
            }
            (m, p) => Response::text(404, format!("Cannot {m} {p}")),
        }
    }

    /// Device API auth (docs/contract/device-api.md §1): off when unmanaged or in local mode
    /// (everything is allowed); otherwise the key from `?apikey=` or `Authorization: Bearer|ApiKey
    /// <key>` must be one the state engine published, and its scope is what the request may touch.
    fn key_scope(&self, req: &Request) -> Option<KeyScope> {
        if self.local_mode() {
            return Some(KeyScope::GLOBAL);
        }
        let key = request_key(req)?;
        let keys = Arc::clone(
            &self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .api_keys,
        );
        keys.get(&key).cloned()
    }

    /// `POST /v1/regenerate-api-key`: replaces the key of this request (the global key when
    /// none was given, as in local mode) and answers the new one.
    fn regenerate_api_key(&self, req: &Request) -> Response {
        let old = request_key(req);
        match self.ask(
            |reply| Command::RegenerateApiKey { old, reply },
            ENGINE_TIMEOUT,
        ) {
            Some(Ok(key)) => Response::text(200, key),
            Some(Err(e)) => failed(503, e),
            None => failed(503, NOT_ANSWERING),
        }
    }

    /// Sends the command `make` builds around a reply channel and waits up to `wait` for the
    /// reply; `None` when the state engine neither takes nor answers it in time.
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command, wait: Duration) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.state_engine
            .send_timeout(make(tx), ENGINE_TIMEOUT)
            .ok()?;
        rx.recv_timeout(wait).ok()
    }

    /// `POST /v1/update`: an immediate fetch when instant updates are on or `force` is set.
    fn update(&self, req: &Request) -> Response {
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let force = truthy(doc.get("force"));
        // Bundles copied into the data partition are looked for at every update request.
        let _ = self.state_engine.try_send(Command::ScanBundles);
        if !force && !poll::instant_updates(self.current_target().as_deref()) {
            return Response::text(202, "Accepted");
        }
        if let Some(cloud) = &self.cloud {
            // A full queue means a fetch is already on its way.
            let _ = cloud.poll.try_send(PollRequest::Now { force });
        }
        Response::empty(204)
    }

    /// `GET /v2/local/logs`: NDJSON, chunked, never ends by itself (the server streams it on
    /// its own thread, a few at most).
    fn stream_logs(&self, scope: &KeyScope) -> Response {
        let services = (!scope.global).then(|| self.services_in(scope));
        let rx = self.logs.subscribe();
        let first = json!({"message": "Streaming logs", "isSystem": true}).to_string() + "\n";
        Response::stream(
            "application/x-ndjson",
            LinesReader {
                rx,
                buf: first.into_bytes(),
                pos: 0,
                services,
            },
        )
    }

    /// Service ids of the apps a key may see: those of the target and of running containers.
    fn services_in(&self, scope: &KeyScope) -> std::collections::BTreeSet<i64> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let running = s
            .containers
            .iter()
            .filter(|c| scope.allows(c.app_id))
            .map(|c| c.service_id);
        let targeted = s.target.iter().flat_map(|t| {
            t.apps
                .values()
                .filter(|a| scope.allows(a.id))
                .flat_map(|a| a.release.iter().flat_map(|r| r.services.values()))
                .map(|svc| svc.id)
        });
        running.chain(targeted).collect()
    }

    /// The stored target, asked of the state engine.
    fn target(&self) -> Result<Option<TargetState>, ()> {
        self.ask(|reply| Command::GetTarget { reply }, ENGINE_TIMEOUT)
            .ok_or(())
    }

    /// A target's config, or (none given yet) the device's current values as v19 shows them.
    fn config_or_current(&self, config: &BTreeMap<String, String>) -> Value {
        if !config.is_empty() {
            return json!(config);
        }
        self.ask(|reply| Command::CurrentConfig { reply }, ENGINE_TIMEOUT)
            .map(Value::Object)
            .unwrap_or_else(|| json!({}))
    }

    fn get_target(&self) -> Response {
        let Ok(state) = self.target() else {
            return failed(503, "state engine is not answering");
        };
        let local = match state {
            Some(s) => {
                let apps: serde_json::Map<String, Value> = s
                    .apps
                    .values()
                    .map(|a| {
                        let services: Vec<Value> = a
                            .release
                            .iter()
                            .flat_map(|r| r.services.iter().map(move |(n, svc)| (r, n, svc)))
                            .map(|(r, n, svc)| {
                                json!({"appId": a.id, "appUuid": a.uuid, "serviceName": n, "serviceId": svc.id, "imageId": svc.image_id,
                                       "releaseId": r.id, "commit": r.commit, "imageName": svc.image,
                                       "config": {"image": svc.image, "environment": svc.environment, "labels": svc.labels, "running": svc.running}})
                            })
                            .collect();
                        (a.id.to_string(), json!({"appId": a.id, "appUuid": a.uuid, "appName": a.name,
                            "commit": a.release.as_ref().map(|r| r.commit.clone()), "source": "local", "isHost": a.is_host,
                            "isTargetState": true, "services": services}))
                    })
                    .collect();
                json!({"name": s.name, "config": self.config_or_current(&s.config), "apps": apps})
            }
            None => {
                json!({"name": "local", "config": self.config_or_current(&Default::default()), "apps": {}})
            }
        };
        json_response(200, json!({"status": "success", "state": {"local": local}}))
    }

    fn post_target(&self, req: &Request) -> Response {
        if !self.local_mode() {
            return failed(
                400,
                "Target state can only set when device is in local mode",
            );
        }
        let body = &req.body;
        if body.len() > MAX_TARGET_BYTES {
            return failed(
                400,
                format!("request body larger than {MAX_TARGET_BYTES} bytes"),
            );
        }
        let doc: Value = match parse_json(body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let state = match parse_local_or_device(&doc) {
            Ok(s) => s,
            Err(e) => return failed(400, e.to_string()),
        };
        let set = |reply| Command::SetTarget {
            state,
            source: crate::protocol::LOCAL_SOURCE.to_string(),
            force: truthy(doc.get("force")),
            reply,
        };
        match self.ask(set, ENGINE_TIMEOUT) {
            Some(Ok(())) => json_response(200, json!({"status": "success", "message": "OK"})),
            Some(Err(TargetNotSet::Refused(e))) => failed(400, e),
            Some(Err(TargetNotSet::Storage(e))) => failed(503, e),
            None => failed(503, NOT_ANSWERING),
        }
    }

    /// `POST /v2/local/bundle`: an offline bundle as the body, read as it arrives; answers
    /// once the bundle is applied or refused (docs/bundles.md). Device-wide: the global key.
    fn post_bundle(&self, req: &Request, scope: &KeyScope) -> Response {
        if !scope.global {
            return failed(401, "Unauthorized: bundles need the device's API key");
        }
        let Some(body) = req.upload.as_ref().and_then(server::UploadBody::take) else {
            return failed(400, "the bundle is sent as the request body");
        };
        let import = |reply| Command::ImportBundle { body, reply };
        match self.ask(import, BUNDLE_TIMEOUT) {
            Some(Ok(applied)) => json_response(
                200,
                json!({"status": "success", "bundle": applied.digest,
                       "releases": applied.releases, "imagesLoaded": applied.loaded}),
            ),
            Some(Err(BundleError::Refused(m))) => failed(400, m),
            Some(Err(e @ (BundleError::Busy | BundleError::Failed(_)))) => {
                failed(503, e.to_string())
            }
            None => failed(503, NOT_ANSWERING),
        }
    }

    /// Unmanaged, or local mode switched on by the cloud target (the state engine decides).
    fn local_mode(&self) -> bool {
        self.settings.config_json.unmanaged()
            || self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .local_mode
    }

    /// The target being applied, without copying the rest of the status.
    fn current_target(&self) -> Option<Arc<TargetState>> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .target
            .clone()
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Unhealthy when an apply has been busy (not downloading) for twice the poll interval.
    fn healthy(&self) -> Response {
        let s = self.status();
        let limit = 2 * poll::poll_interval(s.target.as_deref(), &self.settings.config_json);
        let stuck =
            s.downloads.is_empty() && s.applying_since.is_some_and(|t| t.elapsed() >= limit);
        let poll_stale = self
            .cloud
            .as_ref()
            .is_some_and(|c| c.shared.since_last_fetch() >= limit);
        if stuck || poll_stale {
            Response::text(500, "Unhealthy")
        } else {
            Response::text(200, "OK")
        }
    }

    fn applications_state(&self, scope: &KeyScope) -> Response {
        let Ok(target) = self.target() else {
            return failed(503, "state engine is not answering");
        };
        let s = self.status();
        let mut out = serde_json::Map::new();
        for app in target
            .iter()
            .flat_map(|t| t.apps.values())
            .filter(|a| scope.allows(a.id))
        {
            let Some(rel) = &app.release else { continue };
            let applied = s.releases.get(&app.id) == Some(&rel.commit);
            let mut services = serde_json::Map::new();
            let mut downloading = false;
            for (name, svc) in &rel.services {
                let progress = s.downloads.get(&svc.image).copied();
                downloading |= progress.is_some();
                let container = s
                    .containers
                    .iter()
                    .find(|c| c.app_id == app.id && &c.service_name == name);
                let status = match (progress, container) {
                    (Some(_), _) => "Downloading".to_string(),
                    (None, Some(c)) => c.status.clone(),
                    (None, None) => "Downloaded".to_string(),
                };
                services.insert(
                    name.clone(),
                    json!({"status": status, "image": svc.image, "downloadProgress": progress, "releaseId": rel.id}),
                );
            }
            let update_status = if downloading {
                "downloading"
            } else if !applied || s.app_state == AppState::Applying {
                "applying changes"
            } else {
                "done"
            };
            out.insert(
                app.name.clone(),
                json!({"appId": app.id, "appUuid": app.uuid, "commit": rel.commit, "updateStatus": update_status, "services": services}),
            );
        }
        json_response(200, Value::Object(out))
    }

    fn container_id(&self, url: &str, scope: &KeyScope) -> Response {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let wanted = query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            matches!(k, "serviceName" | "service").then(|| v.to_string())
        });
        let s = self.status();
        let scoped = || s.containers.iter().filter(|c| scope.allows(c.app_id));
        match wanted {
            Some(name) => match scoped().find(|c| c.service_name == name) {
                Some(c) => json_response(
                    200,
                    json!({"status": "success", "containerId": c.container_id}),
                ),
                None => failed(503, "Could not find service with that name"),
            },
            None => {
                let services: serde_json::Map<String, Value> = scoped()
                    .map(|c| (c.service_name.clone(), json!(c.container_id)))
                    .collect();
                json_response(200, json!({"status": "success", "services": services}))
            }
        }
    }

    fn read_json_body(req: &Request) -> Result<Value, Response> {
        let body = &req.body;
        if body.len() > MAX_TARGET_BYTES {
            return Err(failed(400, "could not read the request body"));
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        parse_json(body)
    }

    fn run_app_action(&self, app_id: i64, action: AppAction, force: bool) -> Result<(), Response> {
        let cmd = |reply| Command::AppAction {
            app_id,
            action,
            force,
            reply,
        };
        match self.ask(cmd, ENGINE_TIMEOUT * 4) {
            Some(Ok(())) => Ok(()),
            Some(Err(ActionError::Locked(m))) => Err(failed(423, m)),
            Some(Err(ActionError::Failed(m))) => Err(failed(503, m)),
            Some(Err(ActionError::NotFound(t))) => Err(failed(503, t)),
            None => Err(failed(503, NOT_ANSWERING)),
        }
    }

    /// `POST /v1/restart`, `POST /v1/purge` with `{"appId", "force"}` (docs/contract/device-api.md
    /// 3.7, 3.8).
    fn app_action_v1(&self, action: AppAction, req: &Request, scope: &KeyScope) -> Response {
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let missing = match action {
            AppAction::Restart => "Missing app id",
            AppAction::Purge => "Invalid or missing appId",
        };
        let Some(app_id) = doc.get("appId").and_then(int_param).filter(|id| *id > 0) else {
            return Response::text(400, missing);
        };
        if !scope.allows(app_id) {
            return failed(401, "Unauthorized");
        }
        match (
            self.run_app_action(app_id, action, truthy(doc.get("force"))),
            action,
        ) {
            (Ok(()), AppAction::Restart) => Response::text(200, "OK"),
            (Ok(()), AppAction::Purge) => json_response(200, json!({"Data": "OK", "Error": ""})),
            (Err(r), _) => r,
        }
    }

    /// `POST /v2/applications/:appId/restart|purge` with `{"force"}`.
    fn app_action_v2(&self, path: &str, req: &Request, scope: &KeyScope) -> Response {
        let rest = path.trim_start_matches("/v2/applications/");
        let (app_param, action) = match rest.split_once('/') {
            Some((a, "restart")) => (a, AppAction::Restart),
            Some((a, "purge")) => (a, AppAction::Purge),
            _ => return Response::text(404, format!("Cannot POST {path}")),
        };
        let Some(app_id) = int_param(&Value::String(app_param.to_string())).filter(|id| *id > 0)
        else {
            return failed(400, "Missing app id");
        };
        if !scope.allows(app_id) {
            return failed(401, "Unauthorized");
        }
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        match self.run_app_action(app_id, action, truthy(doc.get("force"))) {
            Ok(()) => Response::text(200, "OK"),
            Err(r) => r,
        }
    }

    /// `POST /v2/applications/:appId/{restart,stop,start}-service` (docs/contract/device-api.md
    /// 3.9).
    fn service_action(&self, path: &str, req: &Request, scope: &KeyScope) -> Response {
        let mut parts = path.trim_start_matches("/v2/applications/").splitn(2, '/');
        let app_param = parts.next().unwrap_or_default();
        let action = match parts.next() {
            Some("restart-service") => ServiceAction::Restart,
            Some("stop-service") => ServiceAction::Stop,
            Some("start-service") => ServiceAction::Start,
            _ => return Response::text(404, format!("Cannot POST {path}")),
        };
        let app_id = match int_param(&Value::String(app_param.to_string())) {
            Some(id) if id > 0 => id,
            _ => return failed(400, "Invalid app id"),
        };
        if !scope.allows(app_id) {
            return failed(401, "Unauthorized");
        }
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let which = ServiceRef {
            service_name: doc
                .get("serviceName")
                .and_then(Value::as_str)
                .map(str::to_string),
            image_id: doc.get("imageId").and_then(int_param),
        };
        if which.service_name.is_none() && which.image_id.is_none() {
            return Response::text(400, device::MULTI_CONTAINER);
        }
        match self.ask_service_action(app_id, which, action, truthy(doc.get("force"))) {
            Ok(Ok(())) => Response::text(200, "OK"),
            Ok(Err(ActionError::NotFound(text))) => Response::text(404, text),
            Ok(Err(ActionError::Locked(m))) => failed(423, m),
            Ok(Err(ActionError::Failed(m))) => failed(503, m),
            Err(unanswered) => unanswered,
        }
    }

    /// Asks the state engine to run a service action; `Err` is the 503 to answer when it does
    /// not take or answer the request.
    fn ask_service_action(
        &self,
        app_id: i64,
        which: ServiceRef,
        action: ServiceAction,
        force: bool,
    ) -> Result<Result<(), ActionError>, Response> {
        let cmd = |reply| Command::ServiceAction {
            app_id,
            which,
            action,
            force,
            reply,
        };
        // A stop waits for the container's grace period: allow for it.
        self.ask(cmd, ENGINE_TIMEOUT * 4)
            .ok_or_else(|| failed(503, NOT_ANSWERING))
    }

    fn state_status(&self, scope: &KeyScope) -> Response {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let downloading: Vec<u8> = s.downloads.values().copied().collect();
        let overall = (!downloading.is_empty()).then(|| {
            downloading.iter().map(|p| u64::from(*p)).sum::<u64>() / downloading.len() as u64
        });
        let first_app = s
            .containers
            .iter()
            .map(|c| c.app_id)
            .find(|a| scope.allows(*a))
            .or_else(|| s.images.iter().map(|i| i.app_id).find(|a| scope.allows(*a)));
        let containers: Vec<Value> = s
            .containers
            .iter()
            .filter(|c| Some(c.app_id) == first_app)
            .map(|c| {
                let mut v = json!({"status": c.status, "serviceName": c.service_name, "appId": c.app_id, "imageId": c.image_id,
                            "serviceId": c.service_id, "containerId": c.container_id, "createdAt": c.created_at});
                // Our additions (helios shows both in its local state): only when known.
                if let Some(h) = &c.health {
                    v["health"] = json!(h);
                }
                if let Some(code) = c.exit_code {
                    v["exitCode"] = json!(code);
                }
                if c.restart_count > 0 {
                    v["restartCount"] = json!(c.restart_count);
                }
                v
            })
            .collect();
        let images: Vec<Value> = s
            .images
            .iter()
            .filter(|i| Some(i.app_id) == first_app)
            .map(|i| json!({"name": i.name, "appId": i.app_id, "serviceName": i.service_name, "imageId": i.image_id,
                            "dockerImageId": i.docker_image_id, "status": i.status, "downloadProgress": i.download_progress}))
            .collect();
        let mut body = json!({"status": "success", "appState": s.app_state.as_str(),
            "overallDownloadProgress": overall, "containers": containers, "images": images});
        if let Some(release) = first_app.and_then(|a| s.releases.get(&a)) {
            body["release"] = json!(release);
        }
        // Our addition: why the last iteration failed (a held lock names its app and service).
        if let Some(e) = &s.last_error {
            body["lastError"] = json!(e);
        }
        // Our addition: what a downloaded release waits for (docs/windows.md).
        if let Some(w) = s
            .switch_wait
            .as_ref()
            .filter(|_| s.app_state == AppState::Waiting)
        {
            body["waitingRelease"] = json!(w.commit);
            body["waitingFor"] = json!(if w.window.is_some() {
                "window"
            } else {
                "reboot"
            });
            if let Some(window) = &w.window {
                body["window"] = json!(window);
                body["nextWindow"] = json!(w.opens_at);
            }
        }
        // Our addition: the trial of the app shown (docs/trials.md); a failure is the last
        // error while the release it rolled back from is still the target's.
        let trial = s
            .trials
            .iter()
            .filter(|t| scope.allows(t.app_id))
            .find(|t| Some(t.app_id) == first_app)
            .or_else(|| s.trials.iter().find(|t| scope.allows(t.app_id)));
        if let Some(t) = trial {
            body["trial"] = json!({"commit": t.commit, "state": t.state, "deadline": t.deadline,
                "reason": t.reason, "previousCommit": t.previous_commit, "rolledBack": t.rolled_back});
            if t.state == "failed" && body.get("lastError").is_none() {
                let line = crate::planner::trial::failure_line(
                    &t.commit,
                    t.reason.as_deref().unwrap_or_default(),
                    t.previous_commit.as_deref(),
                );
                body["lastError"] = json!(line);
            }
        }
        // Our addition: the host OS release of the target and its install (docs/hostos.md).
        if let Some(h) = s.host_os.as_ref().filter(|_| scope.global) {
            body["hostApp"] = json!({"appUuid": h.app_uuid, "releaseUuid": h.release_uuid,
                "image": h.image, "build": h.build, "currentBuild": h.current_build,
                "updateStatus": h.update_status, "status": h.service_status,
                "installAttempts": h.install_attempts, "lastError": h.last_error});
        }
        json_response(200, body)
    }
}

#[cfg(test)]
mod tests;
