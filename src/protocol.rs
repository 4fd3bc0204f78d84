//! What the threads say to the state engine and what it publishes: the `Command` protocol of
//! its channel (each request with its reply channel) and the `Status` it shares with the API,
//! the cloud link and the log collector. Its own module so that those threads name neither the
//! state engine's internals nor each other (ARCHITECTURE.md, "Layering").

use crate::compose::target::TargetState;
use crate::compose::Service;
use crossbeam_channel::Sender;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

/// The source name of targets set in local mode.
pub const LOCAL_SOURCE: &str = "local";

/// Why the state engine did not take a target: the request's fault, or its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetNotSet {
    /// Not acceptable now (a local target outside local mode): a 4xx for the API.
    Refused(String),
    /// It could not be stored (the database): a 5xx, worth trying again.
    Storage(String),
}

impl std::fmt::Display for TargetNotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetNotSet::Refused(m) | TargetNotSet::Storage(m) => f.write_str(m),
        }
    }
}

/// Why an offline bundle was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// The bundle's fault (signature, digests, target, size, a cut file): a 4xx.
    Refused(String),
    /// Another bundle is being imported.
    Busy,
    /// Ours: the engine, the disk or the database failed (a 5xx, worth trying again).
    Failed(String),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::Refused(m) | BundleError::Failed(m) => f.write_str(m),
            BundleError::Busy => f.write_str("another bundle is being imported"),
        }
    }
}

/// An applied bundle: its name (the manifest's digest) and the releases it set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleApplied {
    pub digest: String,
    /// Commit per app uuid.
    pub releases: BTreeMap<String, String>,
    /// Images loaded into the engine (the others were there already).
    pub loaded: usize,
}

/// The body of an upload, read as it arrives.
pub type Upload = Box<dyn std::io::Read + Send>;

/// Requests to the state engine.
pub enum Command {
    /// Store and apply a new target (validated by the sender).
    SetTarget {
        state: TargetState,
        /// Where it came from: the API endpoint for cloud targets, [`LOCAL_SOURCE`] for local mode.
        source: String,
        force: bool,
        reply: Sender<Result<(), TargetNotSet>>,
    },
    /// The stored target, if any.
    GetTarget {
        reply: Sender<Option<TargetState>>,
    },
    /// The device's config variables as a target would hold them (`GET
    /// /v2/local/target-state` before any target set them).
    CurrentConfig {
        reply: Sender<serde_json::Map<String, serde_json::Value>>,
    },
    /// Restart or purge a whole app (API).
    AppAction {
        app_id: i64,
        action: AppAction,
        force: bool,
        reply: Sender<Result<(), ActionError>>,
    },
    /// Stop, start or restart one service (API service actions).
    ServiceAction {
        app_id: i64,
        which: ServiceRef,
        action: ServiceAction,
        force: bool,
        reply: Sender<Result<(), ActionError>>,
    },
    /// Replace an API key (`/v1/regenerate-api-key`); `None` means the global key. Replies with
    /// the new key.
    RegenerateApiKey {
        old: Option<String>,
        reply: Sender<Result<String, String>>,
    },
    /// Remove volumes no container mounts and no target app names (`/v2/cleanup-volumes`).
    CleanupVolumes {
        reply: Sender<Result<usize, String>>,
    },
    /// Write the hostname and proxy settings (`PATCH /v1/device/host-config`) under every
    /// app's locks; the host's proxy units are restarted after a proxy change.
    HostConfig {
        patch: crate::host_config::Patch,
        force: bool,
        reply: Sender<Result<(), ActionError>>,
    },
    /// Tags to set on the device in the cloud (`PATCH /v2/device/tags`): kept in the DB and
    /// published for the report thread.
    SetTags {
        tags: BTreeMap<String, String>,
        reply: Sender<Result<(), String>>,
    },
    /// Reboot or power off the device (`/v1/reboot`, `/v1/shutdown`). The reply comes once
    /// the locks are taken; the host is asked a second later.
    Power {
        action: PowerAction,
        force: bool,
        reply: Sender<Result<(), ActionError>>,
    },
    /// Import an offline bundle read from `body` (`POST /v2/local/bundle`, `tinyvisor bundle
    /// apply`); the reply comes once it is applied or refused.
    ImportBundle {
        body: Upload,
        reply: Sender<Result<BundleApplied, BundleError>>,
    },
    /// Look for new bundles in `$DATA_MOUNTPOINT/bundles/` (`POST /v1/update`).
    ScanBundles,
    Shutdown,
}

/// What the state engine is doing, for the API and the cloud report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub app_state: AppState,
    pub last_error: Option<String>,
    pub failures: u32,
    pub iterations: u64,
    /// Download progress per image name.
    pub downloads: BTreeMap<String, u8>,
    /// Current containers: (app id, service name, image id, service id, container id, status, created).
    pub containers: Vec<ContainerStatus>,
    pub images: Vec<ImageStatus>,
    /// Applied release per app id.
    pub releases: BTreeMap<i64, String>,
    /// Since when an apply has had work left (for `/v1/healthy`).
    #[serde(skip)]
    pub applying_since: Option<Instant>,
    /// The target being applied (for the cloud report: which apps and services to report).
    #[serde(skip)]
    pub target: Option<Arc<TargetState>>,
    /// Local mode: API auth off, apps left out of reports, logs not sent to the cloud.
    pub local_mode: bool,
    /// The engine has been read once: until then reports carry no `apps` (v19 sends none
    /// before it knows them; an empty object would say the device runs nothing).
    #[serde(skip)]
    pub apps_known: bool,
    /// The global API key (`apiSecret` appId 0): the report sends it to the cloud.
    #[serde(skip)]
    pub api_secret: Option<String>,
    /// Every API key the API accepts (global and per-service), with what it may act on.
    #[serde(skip)]
    pub api_keys: Arc<BTreeMap<String, KeyScope>>,
    /// Device tags set locally, for the report thread to send (DB `targetTags`).
    #[serde(skip)]
    pub target_tags: Arc<BTreeMap<String, String>>,
    /// The host OS release of the target and where its install stands (none when the target
    /// names no host app, or names one that was rejected).
    pub host_os: Option<HostOsStatus>,
    /// Release trials (docs/trials.md), one per app that has one.
    pub trials: Vec<TrialStatus>,
    /// A downloaded release waiting to switch (`app_state` is `Waiting`; docs/windows.md).
    pub switch_wait: Option<SwitchWait>,
    /// How many offline bundles set the target since start: the poll thread then fetches
    /// the cloud's target in full, so the cloud's answer decides (docs/bundles.md).
    #[serde(skip)]
    pub bundles_applied: u64,
}

/// Where the apply stands (`appState` of `/v2/state/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// An apply has work left (also before the first one ran).
    #[default]
    Applying,
    /// The device runs its target.
    Applied,
    /// A downloaded release waits for its update window or a reboot (docs/windows.md).
    Waiting,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Applying => "applying",
            AppState::Applied => "applied",
            AppState::Waiting => "waiting",
        }
    }
}

/// What a waiting release waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchWait {
    pub commit: String,
    /// The window it waits for (`02:00-04:30`) and when that opens (RFC 3339), or neither
    /// when it waits for the next boot.
    pub window: Option<String>,
    pub opens_at: Option<String>,
}

/// A release on trial, or judged (docs/trials.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialStatus {
    pub app_uuid: String,
    pub app_id: i64,
    pub commit: String,
    /// `pending`, `running`, `passed` or `failed`.
    pub state: &'static str,
    /// When the window closes (RFC 3339), once it is open.
    pub deadline: Option<String>,
    pub reason: Option<String>,
    /// The release a failure goes back to.
    pub previous_commit: Option<String>,
    /// The failed release is still the one the target names, so the previous one runs.
    pub rolled_back: bool,
}

/// Where the host OS release of the target stands (docs/hostos.md §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostOsStatus {
    pub app_uuid: String,
    pub release_uuid: String,
    /// The host OS image URI of the target.
    pub image: String,
    /// The build the target names; the running OS's build is `current_build`.
    pub build: String,
    pub current_build: Option<String>,
    /// v3 release `update_status`: `done`, `applying changes` or `aborted`.
    pub update_status: &'static str,
    /// The `hostapp` pseudo-service's status: `Running` or `Installing`.
    pub service_status: &'static str,
    pub install_attempts: u32,
    /// Why the last attempt failed, or why the apply stopped (given up, awaiting reboot).
    pub last_error: Option<String>,
}

/// What an API key may act on (docs/contract/device-api.md §1): everything, or some apps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    pub global: bool,
    pub apps: BTreeSet<i64>,
}

impl KeyScope {
    pub const GLOBAL: KeyScope = KeyScope {
        global: true,
        apps: BTreeSet::new(),
    };

    /// From the `scopes` column: `[{"type":"global"}]`, `[{"type":"app","appId":1}]`, ...
    pub fn from_json(scopes: &str) -> KeyScope {
        let mut scope = KeyScope::default();
        let parsed: Vec<serde_json::Value> = serde_json::from_str(scopes).unwrap_or_default();
        for s in parsed {
            match s.get("type").and_then(|t| t.as_str()) {
                Some("global") => scope.global = true,
                Some("app") => {
                    if let Some(id) = s.get("appId").and_then(|a| a.as_i64()) {
                        scope.apps.insert(id);
                    }
                }
                _ => {}
            }
        }
        scope
    }

    pub fn allows(&self, app_id: i64) -> bool {
        self.global || self.apps.contains(&app_id)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    pub app_id: i64,
    pub service_name: String,
    pub commit: Option<String>,
    pub release_id: i64,
    pub image: String,
    /// The container's environment (`GET /v1/apps/:appId`).
    pub environment: BTreeMap<String, String>,
    pub image_id: i64,
    pub service_id: i64,
    pub container_id: String,
    pub status: String,
    pub created_at: String,
    /// The engine healthcheck's verdict, for containers that have one.
    pub health: Option<String>,
    /// How a container that is not running last exited.
    pub exit_code: Option<i64>,
    /// How often the engine restarted the container (a restart loop shows here).
    pub restart_count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageStatus {
    pub name: String,
    pub app_id: i64,
    pub service_name: String,
    pub image_id: i64,
    pub docker_image_id: Option<String>,
    pub status: String,
    pub download_progress: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

/// Which service: by name or by image id (the API accepts either).
#[derive(Debug, Clone, Default)]
pub struct ServiceRef {
    pub service_name: Option<String>,
    pub image_id: Option<i64>,
}

impl ServiceRef {
    pub(crate) fn matches(&self, s: &Service) -> bool {
        self.service_name.as_deref() == Some(s.service_name.as_str())
            || self.image_id == Some(s.image_id)
    }
}

/// An action's failure, with the status and body the real supervisor answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// Plain-text 404 bodies (their exact texts are part of the API).
    NotFound(&'static str),
    /// 423: an update lock is held.
    Locked(String),
    /// 503: anything else.
    Failed(String),
}

pub const APP_NOT_FOUND: &str = "App not found: an app needs to be installed for this endpoint to work.\n\tIf you've recently moved this device from another app,\n\tplease push an app and wait for it to be installed first.";
pub const SERVICE_NOT_FOUND: &str =
    "Service not found, a container must exist for this endpoint to work";
pub const NOT_IN_TARGET: &str = "Service does not exist in target release";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppAction {
    /// Stop and remove every container of the app; the apply loop creates them again.
    Restart,
    /// The same, and the app's volumes are emptied (removed, then created again by the loop).
    Purge,
}

/// Reboot or power off (`/v1/reboot`, `/v1/shutdown`, a reboot step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Shutdown,
}
