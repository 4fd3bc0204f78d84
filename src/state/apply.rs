//! The state engine thread: the apply loop (docs/contract/engine.md (a)). It owns the engine client
//! for changes and the database handle for state; other threads talk to it over a channel.

use super::actions::Actions;
use super::device::{device_context, universe};
use super::executor::{supervisor_network_ok, Executor, EXTRA_FIRMWARE_VOLUME};
use super::power::PowerAction;
use super::step_error::{Failure, StepError};

use super::snapshot::EngineSnapshot;
use super::target::target_apps;
use crate::compose::service::ImageDefaults;
use crate::compose::target::TargetState;
use crate::config::Settings;
use crate::db::Db;
use crate::engine::Engine;
use crate::locks::Locks;
use crate::planner::{plan, Context, CurrentApp, ImageRef, Step};
pub use crate::protocol::{
    ActionError, AppAction, AppState, Command, ContainerStatus, ImageStatus, KeyScope,
    ServiceAction, ServiceRef, Status, TargetNotSet, LOCAL_SOURCE,
};
use crate::systemd::HostControl;
use crossbeam_channel::Sender;
use log::{info, warn};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct StateEngine {
    pub(super) settings: Arc<Settings>,
    pub(super) engine: Engine,
    db: Mutex<Db>,
    pub(super) locks: Locks,
    pub(super) status: Arc<Mutex<Status>>,
    /// Told (without blocking) whenever the status is published: the report thread, the
    /// log collector.
    changes: Vec<Sender<()>>,
    /// A client of the API for delta tokens (managed devices only).
    delta_cloud: Option<crate::balena_api::client::Cloud>,
    /// Unmanaged, or `SUPERVISOR_LOCAL_MODE` on (kept in the DB as v19's `localMode`).
    pub(super) local_mode: bool,
    progress: Mutex<BTreeMap<String, u8>>,
    pub(super) locks_held: BTreeSet<i64>,
    boot_time: i64,
    /// The host's systemd and logind.
    pub(super) host: Arc<dyn HostControl>,
    /// When the VPN was last started or stopped (one attempt an hour).
    pub(super) vpn_tried_at: Option<Instant>,
    /// A reboot or shutdown was asked of the host: no more steps run.
    pub(super) shutting_down: bool,
    /// `SUPERVISOR_LOG_CONTROL` of the cloud target: logs may go to the cloud.
    pub(super) log_control: bool,
    /// The firewall settings last installed (or tried).
    pub(super) firewall_tried: Option<crate::firewall::Settings>,
    /// The host OS update of the target: install in flight, retry time.
    pub(super) host_os: super::hostos::HostOs,
    /// What this iteration's open trials ask of the rest of it (docs/trials.md).
    pub(super) open_trials: crate::planner::trial::OpenTrials,
    /// The engine restarts unhealthy containers itself (balenaEngine); else we do. Asked of
    /// the engine when first needed.
    pub(super) engine_restarts_unhealthy: Option<bool>,
    pub(super) unhealthy: super::events::UnhealthyRestarts,
    /// The waiting release last logged (docs/windows.md).
    pub(super) noted_wait: Option<String>,
    /// Offline bundle imports (docs/bundles.md).
    pub(super) bundles: super::bundle::Bundles,
}

/// Where v19 keeps `SUPERVISOR_API_REQUEST_TIMEOUT` (DB config).
pub(super) const API_REQUEST_TIMEOUT_KEY: &str = "apiRequestTimeout";

/// Unix seconds of the last boot, from /proc/stat.
pub fn boot_time() -> i64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// An error of the iteration itself rather than of one of its steps.
fn internal(failure: impl Into<Failure>) -> StepError {
    StepError::new("read state", failure.into())
}

/// Starts the state engine thread. The returned sender is the only way in.
pub fn spawn(
    settings: Arc<Settings>,
    db: Db,
    status: Arc<Mutex<Status>>,
    changes: Vec<Sender<()>>,
    host: Arc<dyn HostControl>,
) -> std::io::Result<(Sender<Command>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(16);
    let engine = Engine::new(&settings.paths.docker_socket);
    let locks = Locks::new(&settings.paths.root_mountpoint);
    let delta_cloud =
        (!settings.config_json.unmanaged()).then(|| crate::balena_api::device_client(&settings));
    if let Ok(Some(ms)) = db.config_get(API_REQUEST_TIMEOUT_KEY) {
        crate::balena_api::client::follow_api_request_timeout(&ms);
    }
    let handle = std::thread::Builder::new()
        .name("state-engine".into())
        .stack_size(512 * 1024)
        .spawn(move || {
            let mut se = StateEngine {
                settings,
                engine,
                db: Mutex::new(db),
                locks,
                status,
                changes,
                delta_cloud,
                local_mode: false,
                progress: Mutex::new(BTreeMap::new()),
                locks_held: BTreeSet::new(),
                boot_time: boot_time(),
                host,
                vpn_tried_at: None,
                shutting_down: false,
                log_control: true,
                firewall_tried: None,
                host_os: super::hostos::HostOs::new(),
                open_trials: Default::default(),
                engine_restarts_unhealthy: None,
                unhealthy: Default::default(),
                noted_wait: None,
                bundles: super::bundle::Bundles::new(),
            };
            se.run(rx);
        })?;
    Ok((tx, handle))
}

pub(super) enum Outcome {
    Converged,
    /// Steps ran; `all_noop` when nothing but waiting happened.
    Progress {
        all_noop: bool,
    },
    /// Everything else is applied; a downloaded release waits for its window (look again in
    /// `wake_in`) or for the next boot (`None`).
    Waiting {
        wake_in: Option<Duration>,
    },
}

impl StateEngine {
    pub(super) fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
        for tx in &self.changes {
            let _ = tx.try_send(());
        }
    }

    /// Runs an API action between iterations. The status turns to `applying` until the
    /// iteration that follows has refreshed it (and recreated what the action removed).
    pub(super) fn run_action(
        &self,
        app_id: i64,
        what: &str,
        f: impl FnOnce(&Actions, bool) -> Result<(), ActionError>,
    ) -> Result<(), ActionError> {
        let api_key = |app_id: i64, service: &str| self.service_api_key(app_id, service);
        let actions = Actions {
            settings: &self.settings,
            engine: &self.engine,
            locks: &self.locks,
            api_key: &api_key,
        };
        let result = f(&actions, self.locks_held.contains(&app_id));
        if let Err(e) = &result {
            warn!("{what} on app {app_id} failed: {e:?}");
        }
        self.set_status(|s| s.app_state = AppState::Applying);
        result
    }

    /// One iteration: read the device, plan, execute every step concurrently.
    pub(super) fn iterate(
        &mut self,
        target: &TargetState,
        force: bool,
    ) -> Result<Outcome, StepError> {
        // Device configuration comes first and runs alone (docs/contract/device-config.md §1.3).
        if self.apply_device_config(target)?.is_some() {
            self.set_status(|s| s.iterations += 1);
            return Ok(Outcome::Progress { all_noop: false });
        }
        self.apply_firewall(Some(target));
        let (snapshot, current) = self.read_current()?;
        // Releases on trial are judged; a failed one is replaced by the release before it.
        let effective = self.trial_target(target, &current);
        let target = &effective;
        // The image table, read once: tags, the planner's context and the status all use it.
        let rows = self.db().images().unwrap_or_default();
        let steps = self.planned_steps(target, &current, &snapshot, &rows, force);
        self.publish(&snapshot, &rows, &current);
        // Releases that switch only in a window or at the next boot: downloads go on, the
        // switch waits.
        let held = self.held_switches(target, &current, force);
        let (steps, withheld) = crate::planner::window::withhold(steps, &held.apps);
        let wait = held.wait.clone().filter(|_| withheld);
        self.set_status(|s| s.switch_wait = wait);
        if steps.is_empty() && withheld {
            self.note_wait(&held);
            return Ok(Outcome::Waiting {
                wake_in: held.wake_in,
            });
        }
        if steps.is_empty() {
            self.record_applied_releases(target);
            return Ok(Outcome::Converged);
        }
        self.set_status(|s| s.iterations += 1);
        if steps.iter().any(|s| matches!(s, Step::Reboot)) {
            // Only noops besides it: the reboot is all this iteration does.
            return self.reboot_step(target, force);
        }
        let all_noop = steps.iter().all(|s| matches!(s, Step::Noop));
        let results = self.execute_steps(target, &current, &steps);
        match self.take_results(&steps, results) {
            Some(e) => Err(e),
            None => Ok(Outcome::Progress { all_noop }),
        }
    }

    /// The engine's objects and the apps they make, with each app's current commit.
    fn read_current(&self) -> Result<(EngineSnapshot, Vec<CurrentApp>), StepError> {
        let snapshot = EngineSnapshot::read(&self.engine).map_err(internal)?;
        let mut current = snapshot.current_apps();
        let db = self.db();
        for app in &mut current {
            app.commit = db.current_commit(app.app_id).ok().flatten();
        }
        drop(db);
        Ok((snapshot, current))
    }

    /// The planner's steps from here to `target` (the target's services built against the
    /// device and the engine's images first).
    fn planned_steps(
        &self,
        target: &TargetState,
        current: &[CurrentApp],
        snapshot: &EngineSnapshot,
        rows: &[ImageRef],
        force: bool,
    ) -> Vec<Step> {
        let device = device_context(&self.settings, &target.name);
        let universe = universe(&self.settings);
        let recorded_ids = self.restore_image_tags(snapshot, rows);
        let engine = &self.engine;
        // By name, else (a tag gone, a digest the engine no longer lists) by the engine id the
        // image table recorded: a missing name is not a changed image.
        let image_defaults = |name: &str| {
            engine
                .inspect_image(name)
                .or_else(|e| match recorded_ids.get(name) {
                    Some(id) => engine.inspect_image(id),
                    None => Err(e),
                })
                .ok()
                .map(|i| ImageDefaults::from_inspect(&i))
        };
        let api_key = |app_id: i64, service: &str| self.service_api_key(app_id, service);
        let built = target_apps(target, &device, &universe, &image_defaults, &api_key);
        for m in &built.messages {
            warn!("{m}");
        }
        let ctx = self.context(snapshot, rows, target, force);
        plan(current, &built.apps, &ctx)
    }

    /// The planner's reboot step: under the apps' locks (overridden by force or the target's
    /// lock override), as `/v1/reboot` does.
    fn reboot_step(&mut self, target: &TargetState, force: bool) -> Result<Outcome, StepError> {
        info!("Applying step: reboot");
        let force = force || super::lock_override(target);
        match self.power(PowerAction::Reboot, force, |_| {}) {
            Ok(()) => Ok(Outcome::Progress { all_noop: true }),
            Err(e) => Err(StepError::new(
                "reboot",
                match e {
                    ActionError::Locked(m) => Failure::Locked(m),
                    ActionError::Failed(m) => Failure::Host(m),
                    ActionError::NotFound(m) => Failure::Refused(m.to_string()),
                },
            )),
        }
    }

    /// Carries out the steps of one iteration, each on its own scoped thread; the results in
    /// step order.
    fn execute_steps(
        &self,
        target: &TargetState,
        current: &[CurrentApp],
        steps: &[Step],
    ) -> Vec<Result<(), StepError>> {
        let container_ids = current
            .iter()
            .map(|a| {
                (
                    a.app_id,
                    a.services
                        .iter()
                        .filter_map(|s| Some((s.service_name.clone(), s.container_id.clone()?)))
                        .collect(),
                )
            })
            .collect();
        let exec = Executor {
            engine: &self.engine,
            db: &self.db,
            locks: &self.locks,
            config_json: &self.settings.config_json,
            root: self.settings.paths.root_mountpoint.clone(),
            device_name: target.name.clone(),
            container_ids,
            progress: &self.progress,
            boot_time: self.boot_time,
            delta: self.delta_settings(target).and_then(|settings| {
                Some(super::executor::DeltaContext {
                    cloud: self.delta_cloud.clone()?,
                    settings,
                })
            }),
        };
        for s in steps {
            if !matches!(s, Step::Noop) {
                info!("Applying step: {s}");
            }
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = steps
                .iter()
                .map(|step| {
                    let exec = &exec;
                    std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn_scoped(scope, move || exec.execute(step))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(internal(Failure::Host("step panicked".into())))),
                    Err(e) => Err(internal(Failure::Host(format!(
                        "cannot start a step thread: {e}"
                    )))),
                })
                .collect()
        })
    }

    /// Keeps what the steps changed that the loop tracks (locks held, failed trials); the
    /// first error, if any.
    fn take_results(
        &mut self,
        steps: &[Step],
        results: Vec<Result<(), StepError>>,
    ) -> Option<StepError> {
        let mut first_error = None;
        for (step, result) in steps.iter().zip(results) {
            match (step, result) {
                (Step::TakeLock { app_id, .. }, Ok(())) => {
                    self.locks_held.insert(*app_id);
                }
                (Step::ReleaseLock { app_id }, Ok(())) => {
                    self.locks_held.remove(app_id);
                }
                (Step::Start { target }, Err(e)) => {
                    // A service of a release on trial that cannot start fails the trial.
                    if let Some(commit) = &target.commit {
                        self.fail_trial_of(
                            &target.app_uuid,
                            commit,
                            &target.service_name,
                            &e.failure.to_string(),
                        );
                    }
                    first_error.get_or_insert(e);
                }
                (_, Err(e)) => {
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
        first_error
    }

    /// Tags again, from the image table, an image still on the engine whose recorded name no
    /// longer points at it (v19 does the same), so that containers are created from the name
    /// and the image is not fetched again. Returns the recorded engine id of every name whose
    /// image is on the engine.
    fn restore_image_tags(
        &self,
        snapshot: &EngineSnapshot,
        rows: &[ImageRef],
    ) -> BTreeMap<String, String> {
        let engine_ids: BTreeSet<&str> = snapshot.images.iter().map(|i| i.id.as_str()).collect();
        let references: BTreeSet<&str> = snapshot
            .images
            .iter()
            .flat_map(|i| &i.references)
            .map(String::as_str)
            .collect();
        let mut ids = BTreeMap::new();
        for row in rows {
            let Some(id) = row.docker_image_id.as_deref() else {
                continue;
            };
            if !engine_ids.contains(id) {
                continue;
            }
            let (repo, tag) = crate::engine::split_reference(&row.name);
            let full = format!("{repo}:{tag}");
            // Rows of several services often share a name: one tag serves them all. A name
            // that points at another image now (a rebuild by balena push, a new pull) is left
            // as it is: only a name that points nowhere is put back.
            let tagged = ids.contains_key(&row.name)
                || references.contains(row.name.as_str())
                || references.contains(full.as_str());
            if !tagged && !row.name.contains('@') {
                match self.engine.tag_image(id, repo, tag) {
                    Ok(()) => info!("Image {} was untagged: tagged again from {id}", row.name),
                    Err(e) => warn!("Cannot tag {id} as {}: {e}", row.name),
                }
            }
            ids.insert(row.name.clone(), id.to_string());
        }
        ids
    }

    fn context(
        &self,
        snapshot: &EngineSnapshot,
        rows: &[ImageRef],
        target: &TargetState,
        force: bool,
    ) -> Context {
        let engine_ids: BTreeSet<&str> = snapshot.images.iter().map(|i| i.id.as_str()).collect();
        let available_images: Vec<ImageRef> = rows
            .iter()
            .filter(|r| {
                r.docker_image_id
                    .as_deref()
                    .is_some_and(|id| engine_ids.contains(id))
            })
            .cloned()
            .collect();
        let recorded: BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r.docker_image_id.as_deref())
            .collect();
        let dangling_images = snapshot
            .images
            .iter()
            .any(|i| i.references.is_empty() && !recorded.contains(i.id.as_str()));
        let leftover_locks: BTreeSet<i64> = self
            .locks
            .leftover_apps()
            .into_iter()
            .filter(|a| !self.locks_held.contains(a))
            .collect();
        let local = self.local_mode;
        let lock_override = super::lock_override(target);
        let extra_firmware_ready = self.engine.inspect_volume(EXTRA_FIRMWARE_VOLUME).is_ok()
            && self
                .settings
                .config_json
                .snapshot()
                .get("os")
                .and_then(|o| o.pointer("/kernel/extraFirmwareVol"))
                .and_then(|v| v.as_str())
                == Some(EXTRA_FIRMWARE_VOLUME);
        let breadcrumb =
            super::device_config::reboot_breadcrumb(&self.settings.paths.root_mountpoint);
        let reboot_breadcrumb = std::fs::metadata(&breadcrumb)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|t| t.as_secs() as i64 > self.boot_time);
        let stopped_by_us = self.db().stopped_containers().unwrap_or_default();
        Context {
            stopped_by_us,
            available_images,
            engine_images: snapshot.images.clone(),
            downloading: BTreeSet::new(),
            locks_held: self.locks_held.clone(),
            leftover_locks,
            force: force || lock_override,
            keep_images: local,
            keep_volumes: local,
            delta: self.delta_settings(target).is_some(),
            supervisor_network_ready: self
                .engine
                .inspect_network(crate::compose::service::SUPERVISOR_NETWORK)
                .is_ok_and(|n| supervisor_network_ok(&n)),
            extra_firmware_ready,
            dangling_images: !local && dangling_images,
            reboot_breadcrumb,
            boot_time: self.boot_time,
            retained_images: self.open_trials.retained_images.clone(),
        }
    }

    /// Delta settings when the target turns deltas on (`SUPERVISOR_DELTA`) on a managed device.
    fn delta_settings(
        &self,
        target: &TargetState,
    ) -> Option<crate::balena_api::delta::DeltaSettings> {
        if target.flag("SUPERVISOR_DELTA") != Some(true) || self.delta_cloud.is_none() {
            return None;
        }
        let endpoint = self
            .settings
            .config_json
            .get_str("deltaEndpoint")
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://delta.balena-cloud.com".into());
        Some(crate::balena_api::delta::DeltaSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            version: target
                .var("SUPERVISOR_DELTA_VERSION")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(2),
        })
    }

    /// Refreshes the status with what the engine shows now.
    fn publish(
        &self,
        snapshot: &EngineSnapshot,
        rows: &[ImageRef],
        current: &[crate::planner::CurrentApp],
    ) {
        let downloads = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let containers = current
            .iter()
            .flat_map(|a| &a.services)
            .map(|s| ContainerStatus {
                app_id: s.app_id,
                service_name: s.service_name.clone(),
                commit: s.commit.clone(),
                release_id: s.release_id,
                // The engine knows the image by id; the image's name is in its row.
                image: rows
                    .iter()
                    .find(|r| {
                        r.app_id == s.app_id
                            && r.service_name == s.service_name
                            && r.image_id == s.image_id
                    })
                    .map_or_else(|| s.image_name.clone(), |r| r.name.clone()),
                environment: s.config.environment.clone(),
                image_id: s.image_id,
                service_id: s.service_id,
                container_id: s.container_id.clone().unwrap_or_default(),
                status: match &s.status {
                    crate::compose::ServiceStatus::Other(o) => o.clone(),
                    other => format!("{other:?}"),
                },
                created_at: s.created_at.clone().unwrap_or_default(),
                health: s.health.clone(),
                exit_code: s.exit_code,
                restart_count: s.restart_count,
            })
            .collect();
        let engine_ids: BTreeSet<&str> = snapshot.images.iter().map(|i| i.id.as_str()).collect();
        let images = rows
            .iter()
            .cloned()
            .map(|r| ImageStatus {
                status: if r
                    .docker_image_id
                    .as_deref()
                    .is_some_and(|i| engine_ids.contains(i))
                {
                    "Downloaded".into()
                } else {
                    "Downloading".into()
                },
                download_progress: downloads.get(&r.name).copied(),
                name: r.name,
                app_id: r.app_id,
                service_name: r.service_name,
                image_id: r.image_id,
                docker_image_id: r.docker_image_id,
            })
            .collect();
        let releases = current
            .iter()
            .filter_map(|a| Some((a.app_id, a.commit.clone()?)))
            .collect();
        self.set_status(|s| {
            s.downloads = downloads;
            s.containers = containers;
            s.images = images;
            s.releases = releases;
            s.apps_known = true;
        });
    }
}
