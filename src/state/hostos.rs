//! Host OS updates from the target (docs/hostos.md): the state engine's side of what helios
//! does in v19. The decision is the planner's (`planner::hostos`); here are the facts it
//! needs, the record kept in the database, the status, and the install itself, which runs on
//! a thread of its own (an updater runs for minutes) and reports back over a channel, so the
//! state engine keeps serving the API and applying the user apps meanwhile.

use super::apply::StateEngine;
use crate::compose::hostapp::{self, HostApp, HostRecord, HostTarget};
use crate::compose::target::TargetState;
use crate::engine::Engine;
use crate::logs::event;
use crate::planner::hostos::{
    attempts, decide, HostFacts, HostStep, ATTEMPTS_EXPIRE_SECS, MAX_ATTEMPTS,
};
use crate::protocol::HostOsStatus;
use crate::systemd::HostControl;
use crossbeam_channel::{Receiver, Sender};
use log::warn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The transient unit the updater runs as (v19 streams this unit's journal to the cloud).
pub const UNIT: &str = "os-update.service";
/// The host's runtime directory as the host sees it (a tmpfs): the updater's scripts and the
/// breadcrumbs go there, under ROOT_MOUNTPOINT for us.
const HOST_RUNTIME_DIR: &str = "/tmp";
/// The temporary container the updater's files are copied out of (helios's name).
const COPY_CONTAINER: &str = "balenahup";
/// One wait for the updater; a longer run is waited for again (`Resume`), not counted.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The host OS side of the state engine: the install in flight, the retry time, and what was
/// last logged (each state is logged once, not at every look).
pub(super) struct HostOs {
    /// When the host OS step should run next (`None`: only on a new target or a finished
    /// install).
    pub due: Option<Instant>,
    /// Finished installs: (release, result). The state engine waits on it with its commands.
    pub done: Receiver<(String, Result<(), String>)>,
    done_tx: Sender<(String, Result<(), String>)>,
    installing: Option<String>,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    noted: Option<String>,
}

impl HostOs {
    pub fn new() -> HostOs {
        let (done_tx, done) = crossbeam_channel::bounded(1);
        HostOs {
            due: Some(Instant::now()),
            done,
            done_tx,
            installing: None,
            retry_at: None,
            last_error: None,
            noted: None,
        }
    }

    /// Logs `message` unless it was the last thing logged.
    fn note(&mut self, message: String, is_error: bool) {
        if self.noted.as_ref() != Some(&message) {
            event(message.clone(), is_error);
            self.noted = Some(message);
        }
    }
}

fn unix_now() -> i64 {
    crate::logs::now_ms() / 1000
}

/// Where the updater's scripts go and where a finished install leaves its breadcrumb, under
/// the host root we see.
fn updater_dir(root: &Path) -> PathBuf {
    root.join(HOST_RUNTIME_DIR.trim_start_matches('/'))
        .join("balenahup")
}

pub fn breadcrumb(root: &Path, release_uuid: &str) -> PathBuf {
    root.join(HOST_RUNTIME_DIR.trim_start_matches('/'))
        .join(format!("balenahup-{release_uuid}-breadcrumb"))
}

/// The updater's directory as the host sees it (the unit's working directory).
fn updater_host_dir() -> String {
    format!("{HOST_RUNTIME_DIR}/balenahup")
}

/// The command line of `os-update.service` (helios's, without `--no-reboot`: the updater
/// reboots the device once the new OS is installed).
pub fn updater_command(h: &HostApp) -> Vec<String> {
    vec![
        format!("{}/entry.sh", updater_host_dir()),
        "--app-uuid".into(),
        h.app_uuid.clone(),
        "--release-commit".into(),
        h.release_uuid.clone(),
        "--target-image-uri".into(),
        h.image.clone(),
    ]
}

/// The running OS's build: `BALENA_BOARD_REV`, else `RESIN_BOARD_REV`, of os-release.
pub fn current_build(os_release: &Path) -> Option<String> {
    let fields = crate::host::os_release(os_release);
    ["BALENA_BOARD_REV", "RESIN_BOARD_REV"]
        .iter()
        .find_map(|k| fields.get(*k).filter(|v| !v.is_empty()).cloned())
}

impl StateEngine {
    /// An install finished: note the result; the next host OS step decides what follows.
    pub(super) fn host_os_finished(&mut self, release: String, result: Result<(), String>) {
        self.host_os.installing = None;
        self.host_os.due = Some(Instant::now());
        match result {
            Ok(()) => {
                self.host_os.last_error = None;
                event(
                    format!("Host OS release {release} installed; the updater reboots the device"),
                    false,
                );
            }
            Err(e) => {
                let wait = self.settings.hostos_retry;
                self.host_os.retry_at = Some(Instant::now() + wait);
                event(
                    format!(
                        "Host OS update to release {release} failed: {e}; retrying in {wait:?}"
                    ),
                    true,
                );
                self.host_os.last_error = Some(e);
            }
        }
    }

    /// Looks at the host OS release of the target and starts what it needs. Returns when to
    /// look again (`None`: on the next target or finished install).
    pub(super) fn step_host_os(&mut self, target: Option<&TargetState>) -> Option<Instant> {
        let host = match target.map(hostapp::host_target) {
            Some(HostTarget::Install(h)) => h,
            Some(HostTarget::Rejected { app_uuid, reason }) => {
                self.host_os.note(
                    format!("Host OS release of app {app_uuid} rejected: {reason}"),
                    true,
                );
                self.set_status(|s| s.host_os = None);
                return None;
            }
            _ => {
                self.set_status(|s| s.host_os = None);
                return None;
            }
        };
        let build = current_build(&self.settings.paths.host_os_version_path);
        if self.host_os.installing.is_some() {
            let attempts = self.stored_attempts(&host);
            self.publish_host_os(&host, HostStep::Resume, attempts, build);
            return None;
        }
        if let Some(at) = self.host_os.retry_at.filter(|at| *at > Instant::now()) {
            let attempts = self.stored_attempts(&host);
            let next = HostStep::Install {
                attempt: attempts + 1,
            };
            self.publish_host_os(&host, next, attempts, build);
            return Some(at);
        }
        self.host_os.retry_at = None;
        let root = self.settings.paths.root_mountpoint.clone();
        let installed = breadcrumb(&root, &host.release_uuid).exists();
        let running_build = build.as_deref() == Some(host.build.as_str());
        // Only ask systemd when it matters: an idle device with its OS current makes no call.
        let updater_running = build.is_some()
            && !running_build
            && !installed
            && self.host.service_state(UNIT).is_ok_and(|s| s.running());
        let now = unix_now();
        let facts = HostFacts {
            current_build: build.as_deref(),
            installed,
            updater_running,
            now,
        };
        let record = self.db().host_release(&host.release_uuid).ok().flatten();
        let step = decide(&host, record.as_ref(), &facts);
        let counted = attempts(&host, record.as_ref(), now);
        let wake = match step {
            HostStep::Install { attempt } => self.start_install(&host, attempt, now, false),
            HostStep::Resume => self.start_install(&host, counted, now, true),
            other => {
                self.keep_record(&host, record.as_ref(), counted, now);
                self.note_host_step(&host, other, record.as_ref(), now)
            }
        };
        // An install that started has counted its attempt; everything else keeps the count.
        let attempts = match step {
            HostStep::Install { attempt } if self.host_os.installing.is_some() => attempt,
            _ => counted,
        };
        self.publish_host_os(&host, step, attempts, build);
        self.host_os.due = None;
        wake
    }

    fn stored_attempts(&self, host: &HostApp) -> u32 {
        let record = self.db().host_release(&host.release_uuid).ok().flatten();
        attempts(host, record.as_ref(), unix_now())
    }

    /// Stores the target's release as seen (a new release forgets the old one and its count;
    /// a running release takes the updater the cloud names now).
    fn keep_record(&self, host: &HostApp, record: Option<&HostRecord>, counted: u32, now: i64) {
        let record = HostRecord {
            release: host.clone(),
            install_attempts: counted,
            // Kept as stored, so that looking again writes nothing.
            attempted_at: record
                .filter(|r| r.release.release_uuid == host.release_uuid)
                .map_or(now, |r| r.attempted_at),
        };
        if let Err(e) = self.db().save_host_release(&record) {
            warn!("Cannot store the host OS release: {e}");
        }
    }

    /// Logs a step that starts nothing, once; returns when to look again.
    fn note_host_step(
        &mut self,
        host: &HostApp,
        step: HostStep,
        record: Option<&HostRecord>,
        now: i64,
    ) -> Option<Instant> {
        let release = &host.release_uuid;
        match step {
            HostStep::Running => {
                self.host_os.last_error = None;
                self.host_os
                    .note(format!("Host OS release {release} is running"), false);
                None
            }
            HostStep::AwaitReboot => {
                self.host_os.last_error = Some("update needs a reboot to complete".into());
                self.host_os.note(
                    format!(
                        "Host OS release {release} installed; waiting for the device to reboot"
                    ),
                    false,
                );
                None
            }
            HostStep::NoBuild => {
                self.host_os.last_error =
                    Some("the running OS names no build (BALENA_BOARD_REV in os-release)".into());
                self.host_os.note(
                    format!("Host OS release {release} not installed: the running OS names no build (no BALENA_BOARD_REV in its os-release), so it is not a balenaOS this updater can replace"),
                    true,
                );
                None
            }
            _ => {
                self.host_os.last_error = Some("too many failed installs, check device".into());
                self.host_os.note(
                    format!("Host OS update to release {release} given up after {MAX_ATTEMPTS} failed installs, check device; trying again in a day"),
                    true,
                );
                // The count expires a day after the last attempt: look again then.
                let since = now - record.map_or(now, |r| r.attempted_at);
                let left = (ATTEMPTS_EXPIRE_SECS - since).max(1) as u64;
                Some(Instant::now() + Duration::from_secs(left))
            }
        }
    }

    /// Counts the attempt in the database (before anything else: a crash still counts it),
    /// then starts the installer's thread. `resume`: an updater is already running; only
    /// wait for it.
    fn start_install(
        &mut self,
        host: &HostApp,
        attempt: u32,
        now: i64,
        resume: bool,
    ) -> Option<Instant> {
        if !resume {
            let record = HostRecord {
                release: host.clone(),
                install_attempts: attempt,
                attempted_at: now,
            };
            let saved = self.db().save_host_release(&record);
            if let Err(e) = saved {
                let wait = self.settings.hostos_retry;
                self.host_os.last_error = Some(format!("cannot count the install attempt: {e}"));
                self.host_os.retry_at = Some(Instant::now() + wait);
                return self.host_os.retry_at;
            }
            self.note_rollback();
            self.host_os.note(
                format!(
                    "Installing host OS release {} (attempt {attempt} of {MAX_ATTEMPTS})",
                    host.release_uuid
                ),
                false,
            );
        } else {
            self.host_os.note(
                format!("Waiting for the running host OS update ({UNIT})"),
                false,
            );
        }
        let installer = Installer {
            engine: Engine::new(&self.settings.paths.docker_socket),
            host: self.host.clone(),
            root: self.settings.paths.root_mountpoint.clone(),
        };
        let (tx, target) = (self.host_os.done_tx.clone(), host.clone());
        let spawned = std::thread::Builder::new()
            .name("hostos-update".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let result = if resume {
                    installer.wait()
                } else {
                    installer.install(&target)
                }
                .and_then(|()| installer.leave_breadcrumb(&target));
                let _ = tx.send((target.release_uuid, result));
            });
        match spawned {
            Ok(_) => self.host_os.installing = Some(host.release_uuid.clone()),
            Err(e) => self.host_os_finished(
                host.release_uuid.clone(),
                Err(format!("cannot start the installer: {e}")),
            ),
        }
        self.host_os.retry_at
    }

    /// After an OS rollback (meta-balena leaves `*-triggered` on the state partition) the
    /// release is simply tried again; say why.
    fn note_rollback(&mut self) {
        let state = &self.settings.paths.state_mountpoint;
        let found: Vec<&str> = [
            "rollback-health-triggered",
            "rollback-altboot-triggered",
            "rollback-health-failed",
        ]
        .into_iter()
        .filter(|f| state.join(f).exists())
        .collect();
        if !found.is_empty() {
            self.host_os.note(
                format!(
                    "The host OS rolled back after an update ({}); installing again",
                    found.join(", ")
                ),
                true,
            );
        }
    }

    fn publish_host_os(
        &self,
        host: &HostApp,
        step: HostStep,
        attempts: u32,
        current_build: Option<String>,
    ) {
        let (update_status, service_status) = step.report();
        let status = HostOsStatus {
            app_uuid: host.app_uuid.clone(),
            release_uuid: host.release_uuid.clone(),
            image: host.image.clone(),
            build: host.build.clone(),
            current_build,
            update_status,
            service_status,
            install_attempts: attempts,
            last_error: self.host_os.last_error.clone(),
        };
        let unchanged = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .host_os
            .as_ref()
            == Some(&status);
        if !unchanged {
            self.set_status(|s| s.host_os = Some(status));
        }
    }
}

/// The install itself (helios's `install_hostapp_release`), on the installer's thread.
struct Installer {
    engine: Engine,
    host: Arc<dyn HostControl>,
    root: PathBuf,
}

impl Installer {
    fn install(&self, h: &HostApp) -> Result<(), String> {
        self.copy_updater(h)?;
        self.host
            .run_transient_service(UNIT, &updater_command(h), &updater_host_dir())
            .map_err(|e| format!("cannot start {UNIT}: {e}"))?;
        self.wait()
    }

    /// Pulls the updater image (no registry credentials, as helios) and copies its `/app` to
    /// the host's runtime directory through a created, never started, container.
    fn copy_updater(&self, h: &HostApp) -> Result<(), String> {
        let engine_error = |what: &str| {
            let what = what.to_string();
            move |e: crate::engine::EngineError| format!("{what}: {e}")
        };
        match self.engine.remove_container(COPY_CONTAINER, true, true) {
            Err(e) if !e.is_not_found() => {
                return Err(engine_error("cannot remove the old updater container")(e))
            }
            _ => {}
        }
        self.engine
            .pull_image(&h.updater, None)
            .and_then(|pull| pull.wait(|_| {}))
            .map_err(engine_error(&format!(
                "cannot pull the updater {}",
                h.updater
            )))?;
        let body = serde_json::json!({"Image": h.updater, "Cmd": ["/bin/false"]});
        self.engine
            .create_container(COPY_CONTAINER, &body)
            .map_err(engine_error("cannot create the updater container"))?;
        let archive = self
            .engine
            .container_archive(COPY_CONTAINER, "/app")
            .map_err(engine_error("cannot read the updater's /app"))?;
        let dir = updater_dir(&self.root);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let unpacked = crate::tar::unpack_under(archive, "app", &dir)
            .map_err(|e| format!("cannot copy the updater's /app: {e}"))?;
        if unpacked.files == 0 {
            return Err("the updater image has no files in /app".into());
        }
        Ok(())
    }

    /// Waits for the updater to finish: looks at the unit with a back-off from 100 ms to 5 s
    /// (a run takes minutes; no busy polling), for at most `MAX_WAIT`.
    fn wait(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let state = self
                .host
                .service_state(UNIT)
                .map_err(|e| format!("cannot read {UNIT}: {e}"))?;
            if !state.running() {
                return match (state.active_state.as_str(), state.exec_main_status) {
                    ("inactive", 0) => Ok(()),
                    (_, code) => Err(format!("command failed with code: {code}")),
                };
            }
            if started.elapsed() > MAX_WAIT {
                return Err(format!("{UNIT} still running after {MAX_WAIT:?}"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The tmpfs breadcrumb of a finished install: gone after the reboot (or a rollback).
    fn leave_breadcrumb(&self, h: &HostApp) -> Result<(), String> {
        let path = breadcrumb(&self.root, &h.release_uuid);
        std::fs::write(&path, b"").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn the_build_is_the_board_rev_of_os_release() {
        let dir = TempDir::new("osrel");
        let path = dir.path().join("os-release");
        for (text, want) in [
            (
                "BALENA_BOARD_REV=\"abc\"\nRESIN_BOARD_REV=\"old\"\n",
                Some("abc"),
            ),
            ("RESIN_BOARD_REV=old\n", Some("old")),
            ("BALENA_BOARD_REV=\"\"\nRESIN_BOARD_REV=old\n", Some("old")),
            ("PRETTY_NAME=\"balenaOS 6.0.39\"\n", None),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(current_build(&path).as_deref(), want, "{text}");
        }
    }

    #[test]
    fn runtime_paths_are_under_the_host_root() {
        let root = Path::new("/mnt/root");
        assert_eq!(updater_dir(root), Path::new("/mnt/root/tmp/balenahup"));
        assert_eq!(
            breadcrumb(root, "r1"),
            Path::new("/mnt/root/tmp/balenahup-r1-breadcrumb")
        );
    }
}
