//! The executor: carries out the planner's steps on the engine, the database and the lock
//! files. Every step is idempotent, so a restart at any instant converges.

pub use super::step_error::{Failure, StepError};
use crate::compose::labels::{self, REQUIRES_REBOOT};
use crate::compose::service::{SUPERVISOR_GATEWAY, SUPERVISOR_NETWORK};
use crate::compose::{Service, Volume};
use crate::config::ConfigJson;
use crate::db::Db;
use crate::engine::types::{Ipam, IpamConfig, NetworkCreate, VolumeCreate};
use crate::engine::Engine;
use crate::locks::Locks;
use crate::logs::event;
use crate::planner::{ImageRef, Step};
use log::{info, warn};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const EXTRA_FIRMWARE_VOLUME: &str = "extra-firmware";
pub const SUPERVISOR_SUBNET: &str = "10.114.104.0/25";

/// Everything a step may touch.
pub struct Executor<'a> {
    pub engine: &'a Engine,
    pub db: &'a Mutex<Db>,
    pub locks: &'a Locks,
    pub config_json: &'a ConfigJson,
    /// Host root as tinyvisor sees it (breadcrumbs, handover files).
    pub root: PathBuf,
    pub device_name: String,
    /// Engine ids of the current containers by service name, per app (for `service:` modes).
    pub container_ids: BTreeMap<i64, BTreeMap<String, String>>,
    /// Download progress per image name, 0–100, for the status.
    pub progress: &'a Mutex<BTreeMap<String, u8>>,
    /// Boot time, Unix seconds: containers created later wait for a reboot when asked to.
    pub boot_time: i64,
    /// Deltas, when the target turns them on (`SUPERVISOR_DELTA`) on a managed device.
    pub delta: Option<DeltaContext>,
}

/// What a delta fetch needs: a client of the API (for the token) and where deltas come from.
pub struct DeltaContext {
    pub cloud: crate::balena_api::client::Cloud,
    pub settings: crate::balena_api::delta::DeltaSettings,
}

/// Delta pulls are tried this often before falling back to a regular pull.
const DELTA_ATTEMPTS: u32 = 3;

fn ignore_not_found(r: crate::engine::Result<()>) -> crate::engine::Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

impl Executor<'_> {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one step; the error names the step.
    pub fn execute(&self, step: &Step) -> Result<(), StepError> {
        let name = match step {
            // Said as the start it holds back (`start <svc>: dependency ...`).
            Step::Blocked { service_name, .. } => format!("start {service_name}"),
            other => other.to_string(),
        };
        self.run_step(step)
            .map_err(|failure| StepError::new(name, failure))
    }

    fn run_step(&self, step: &Step) -> Result<(), Failure> {
        match step {
            Step::Noop => Ok(()),
            // It stops the loop and needs the host: the state engine runs it, never a worker.
            Step::Reboot => Err(Failure::Refused("reboot is run by the state engine".into())),
            Step::Fetch { image, .. } => self.fetch(image),
            Step::SaveImage { image } => self.record_image(image, image.docker_image_id.clone()),
            Step::RemoveImage { image } => self.remove_image(image),
            Step::Cleanup => {
                self.cleanup_images();
                Ok(())
            }
            Step::Kill { current, reason } => self.kill(current, reason),
            Step::Stop { current } => self.stop(current),
            Step::Remove { current } => {
                let id = current.container_id.clone().unwrap_or_default();
                Ok(ignore_not_found(
                    self.engine.remove_container(&id, true, true),
                )?)
            }
            Step::Start { target } => self.start(target).inspect_err(|e| {
                let object = service_object(target);
                event(
                    format!("Failed to start service {object} due to '{e}'"),
                    true,
                );
            }),
            Step::UpdateMetadata { current, target } => {
                let id = current.container_id.clone().unwrap_or_default();
                Ok(ignore_not_found(
                    self.engine.rename_container(&id, &target.container_name()),
                )?)
            }
            Step::UpdateCommit { app_id, commit } => {
                self.db().set_current_commit(*app_id, commit)?;
                Ok(())
            }
            Step::Handover {
                current,
                target,
                timeout_ms,
            } => self.handover(current, target, *timeout_ms),
            Step::CreateNetwork { target } => match self.engine.create_network(&target.to_create())
            {
                Err(e) if !e.is_conflict() => Err(e.into()),
                _ => Ok(()),
            },
            Step::RemoveNetwork { current } => {
                // Both the uuid and the legacy id form of the name (docs/contract/engine.md (b)).
                for name in [
                    format!("{}_{}", current.app_uuid, current.name),
                    format!("{}_{}", current.app_id, current.name),
                ] {
                    ignore_not_found(self.engine.remove_network(&name))?;
                }
                Ok(())
            }
            Step::CreateVolume { target } => self.create_volume(target),
            Step::RemoveVolume { current } => {
                let name = current.engine_name();
                if let Err(e) = ignore_not_found(self.engine.remove_volume(&name, false)) {
                    warn!("Failed to remove volume {name}: {e}");
                }
                Ok(())
            }
            Step::EnsureSupervisorNetwork => Ok(self.ensure_supervisor_network()?),
            Step::EnsureExtraFirmwareVolume => self.ensure_extra_firmware(),
            Step::TakeLock {
                app_id,
                services,
                force,
            } => Ok(self.locks.take(*app_id, services, *force)?),
            Step::ReleaseLock { app_id } => Ok(self.locks.release(*app_id)?),
            Step::Blocked { reason, .. } => Err(Failure::Refused(reason.clone())),
            Step::RequireReboot { service_name } => {
                Ok(super::device_config::set_reboot_breadcrumb(
                    &self.root,
                    &format!("{{\"serviceName\":\"{service_name}\"}}"),
                )?)
            }
        }
    }

    /// Removes an image and its row. Another release may use the same name (a tag reused
    /// across releases): then only this row goes, the engine image stays for the other (v19
    /// would untag it and leave the new release without its image).
    fn remove_image(&self, image: &ImageRef) -> Result<(), Failure> {
        let shared = self
            .db()
            .images()?
            .iter()
            .any(|other| other.name == image.name && !other.same_metadata(image));
        if !shared {
            ignore_not_found(self.engine.remove_image(&image.name, false).map(drop))?;
        }
        self.db().delete_image(image)?;
        event(format!("Deleted image '{}'", image.name), false);
        Ok(())
    }

    fn kill(&self, current: &Service, reason: &[String]) -> Result<(), Failure> {
        let id = current.container_id.clone().unwrap_or_default();
        let object = service_object(current);
        event(format!("Killing service {object}"), false);
        log::debug!("kill reason: {}", reason.join(", "));
        let killed = ignore_not_found(self.engine.stop_container(&id, grace(current)))
            .and_then(|_| ignore_not_found(self.engine.remove_container(&id, false, true)));
        if let Err(e) = killed {
            event(
                format!("Failed to kill service {object} due to '{e}'"),
                true,
            );
            return Err(e.into());
        }
        event(format!("Killed service {object}"), false);
        Ok(())
    }

    fn stop(&self, current: &Service) -> Result<(), Failure> {
        let id = current.container_id.clone().unwrap_or_default();
        // Recorded first: a crash after the stop must still know it was ours.
        self.db().set_stopped(&id, true)?;
        ignore_not_found(self.engine.stop_container(&id, grace(current)))?;
        event(
            format!("Stopped service {}", service_object(current)),
            false,
        );
        Ok(())
    }

    fn record_image(&self, image: &ImageRef, docker_id: Option<String>) -> Result<(), Failure> {
        self.db().upsert_image(&ImageRef {
            docker_image_id: docker_id,
            ..image.clone()
        })?;
        Ok(())
    }

    /// Finds the image on the engine, or fetches it (a delta when on and possible, else a
    /// regular pull) with progress, then records it.
    fn fetch(&self, image: &ImageRef) -> Result<(), Failure> {
        if let Ok(found) = self.engine.inspect_image(&image.name) {
            return self.record_image(image, Some(found.id));
        }
        if let Some(delta) = &self.delta {
            if let Some(source) = self.delta_source(image) {
                if let Some(id) = self.fetch_delta(delta, image, &source)? {
                    event(format!("Downloaded image '{}'", image.name), false);
                    return self.record_image(image, Some(id));
                }
            }
        }
        event(format!("Downloading image '{}'", image.name), false);
        let auth = self.registry_auth(&image.name);
        self.pull_with_progress(&image.name, &image.name, auth.as_deref())
            .map_err(|e| download_failed(image, "image", e))?;
        let found = self.engine.inspect_image(&image.name)?;
        event(format!("Downloaded image '{}'", image.name), false);
        self.record_image(image, Some(found.id))
    }

    /// Pulls `reference`, publishing progress under `progress_key` while it runs.
    fn pull_with_progress(
        &self,
        reference: &str,
        progress_key: &str,
        auth: Option<&str>,
    ) -> crate::engine::Result<()> {
        let set = |p: u8| {
            self.progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(progress_key.to_string(), p);
        };
        set(0);
        let mut layers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let result = self.engine.pull_image(reference, auth).and_then(|stream| {
            stream.wait(|p| {
                if let (Some(id), Some(d)) = (&p.id, &p.progress_detail) {
                    if let (Some(cur), Some(total)) = (d.current, d.total) {
                        if p.status == "Downloading" {
                            layers.insert(id.clone(), (cur, total));
                        }
                    }
                }
                let (cur, total) = layers.values().fold((0, 0), |a, (c, t)| (a.0 + c, a.1 + t));
                if let Some(pct) = (cur * 100).checked_div(total) {
                    set(pct.min(99) as u8);
                }
            })
        });
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(progress_key);
        result
    }

    /// A delta source (docs/contract/engine.md (h) 2): an image of the same app and service that is
    /// on the engine.
    fn delta_source(&self, image: &ImageRef) -> Option<String> {
        let rows = self.db().images().ok()?;
        rows.into_iter()
            .filter(|r| {
                r.app_id == image.app_id
                    && r.service_name == image.service_name
                    && r.name != image.name
            })
            .find(|r| self.engine.inspect_image(&r.name).is_ok())
            .map(|r| r.name)
    }

    /// Fetches `image` as a delta from `source`. `Ok(None)` means "pull it in full instead".
    fn fetch_delta(
        &self,
        delta: &DeltaContext,
        image: &ImageRef,
        source: &str,
    ) -> Result<Option<String>, Failure> {
        event(
            format!("Downloading delta for image '{}'", image.name),
            false,
        );
        let uuid = self.config_json.get_str("uuid").unwrap_or_default();
        let key = self
            .config_json
            .get_str("apiKey")
            .or_else(|| self.config_json.get_str("deviceApiKey"))
            .unwrap_or_default();
        let answer = crate::balena_api::delta::request(
            &delta.cloud,
            &delta.settings,
            &uuid,
            &key,
            source,
            &image.name,
        )
        .map_err(|e| download_failed(image, "delta for image", e))?;
        use crate::balena_api::delta::DeltaAnswer;
        let (name, token) = match answer {
            DeltaAnswer::Image { name, token } => (name, token),
            DeltaAnswer::StillProcessing => {
                event("Delta still processing remotely. Will retry...", false);
                let why = format!("delta for image '{}' still processing", image.name);
                return Err(Failure::Refused(why));
            }
            DeltaAnswer::Fallback(why) => {
                info!(
                    "No delta for image '{}' ({why}); pulling it in full",
                    image.name
                );
                return Ok(None);
            }
        };
        let auth = crate::engine::registry_token_auth(&token);
        let mut last = String::new();
        for _ in 0..DELTA_ATTEMPTS {
            match self.pull_with_progress(&name, &image.name, Some(&auth)) {
                Ok(()) => {
                    let id = self.engine.inspect_image(&name)?.id;
                    // The delta image is the target: give it the target's name (a digest
                    // reference cannot be a tag; the row's image id finds it then).
                    if !image.name.contains('@') {
                        let (repo, tag) = crate::engine::split_reference(&image.name);
                        self.engine.tag_image(&id, repo, tag)?;
                    }
                    return Ok(Some(id));
                }
                Err(e) => last = e.to_string(),
            }
        }
        info!(
            "Delta for image '{}' failed {DELTA_ATTEMPTS} times ({last}); pulling it in full",
            image.name
        );
        Ok(None)
    }

    /// Credentials for images on a registry host (docs/contract/engine.md (i)): `d_<uuid>` and the
    /// API key (the provisioning key while it is still there). Unmanaged devices pull anonymously.
    fn registry_auth(&self, image: &str) -> Option<String> {
        let server = registry_host(image)?;
        let cfg = self.config_json;
        let key = cfg
            .get_str("apiKey")
            .or_else(|| cfg.get_str("deviceApiKey"))
            .filter(|k| !k.is_empty())?;
        let uuid = cfg.get_str("uuid")?;
        Some(crate::engine::registry_auth(
            &format!("d_{uuid}"),
            &key,
            server,
        ))
    }

    /// Creates the container if needed (reusing an equal one left by an interrupted start),
    /// connects its other networks and starts it unless it should not run.
    fn start(&self, target: &Service) -> Result<(), Failure> {
        let name = target.container_name();
        let ids = self
            .container_ids
            .get(&target.app_id)
            .cloned()
            .unwrap_or_default();
        let (id, created_at) = match self.engine.inspect_container(&name) {
            Ok(existing) => match Service::from_inspect(&existing) {
                Some(s)
                    if crate::compose::service::config_differences(
                        &s.config,
                        &target.config,
                        &ids,
                    )
                    .is_empty() =>
                {
                    (
                        existing.id,
                        crate::encoding::rfc3339_seconds(&existing.created).unwrap_or(0),
                    )
                }
                _ => {
                    // Same name, different config (a half-done earlier attempt): replace it.
                    ignore_not_found(self.engine.remove_container(&existing.id, true, true))?;
                    (self.create(target, &name, &ids)?, i64::MAX)
                }
            },
            Err(e) if e.is_not_found() => (self.create(target, &name, &ids)?, i64::MAX),
            Err(e) => return Err(e.into()),
        };
        if !target.config.running {
            return Ok(());
        }
        if labels::truthy(target.label(REQUIRES_REBOOT)) && created_at >= self.boot_time {
            info!(
                "Skipping start of service {} until reboot",
                target.service_name
            );
            return Ok(());
        }
        event(
            format!("Starting service {}", service_object(target)),
            false,
        );
        match self.engine.start_container(&id) {
            Ok(()) => {
                let _ = self.db().set_stopped(&id, false);
                event(format!("Started service {}", service_object(target)), false);
                Ok(())
            }
            Err(e) if e.to_string().contains("exec format error") => {
                Err(Failure::Refused(format!(
                    "Application architecture incompatible with {}: exec format error",
                    self.config_json.get_str("deviceType").unwrap_or_default()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn create(
        &self,
        target: &Service,
        name: &str,
        ids: &BTreeMap<String, String>,
    ) -> Result<String, Failure> {
        if self.device_name.contains('\n') {
            return Err(Failure::Refused("device name contains a newline".into()));
        }
        event(
            format!("Installing service {}", service_object(target)),
            false,
        );
        let body = target.create_body(&self.device_name, ids);
        let id = self.engine.create_container(name, &body)?.id;
        for (net, endpoint) in target.extra_networks() {
            match self.engine.connect_network(&net, &id, &endpoint) {
                Ok(()) => {}
                Err(e) if e.status() == Some(403) || e.is_conflict() => {}
                Err(e) => {
                    let why = format!("cannot connect {name} to {net}: {e}");
                    return Err(Failure::Refused(why));
                }
            }
        }
        event(
            format!("Installed service {}", service_object(target)),
            false,
        );
        Ok(id)
    }

    fn handover(
        &self,
        current: &Service,
        target: &Service,
        timeout_ms: u64,
    ) -> Result<(), Failure> {
        let old_id = current.container_id.clone().unwrap_or_default();
        let old_name = format!("old_{}", current.container_name());
        ignore_not_found(self.engine.update_container(
            &old_id,
            &json!({"RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}}),
        ))?;
        match self.engine.rename_container(&old_id, &old_name) {
            Err(e) if !e.is_not_found() && !e.is_conflict() => return Err(e.into()),
            _ => {}
        }
        self.start(target)?;
        // Wait for the new container to say the old one may go (or the timeout).
        let dir = self.root.join(format!(
            "tmp/balena-supervisor/services/{}/{}",
            current.app_id, current.service_name
        ));
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let marker = ["handover-complete", "resin-kill-me"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists());
            if let Some(p) = marker {
                let _ = std::fs::remove_file(p);
                break;
            }
            if Instant::now() >= deadline {
                info!(
                    "Handover timeout has passed, assuming handover was completed for service {}",
                    current.service_name
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ignore_not_found(self.engine.stop_container(&old_id, grace(current)))?;
        Ok(ignore_not_found(
            self.engine.remove_container(&old_id, false, true),
        )?)
    }

    fn create_volume(&self, target: &Volume) -> Result<(), Failure> {
        match self.engine.inspect_volume(&target.engine_name()) {
            Ok(existing) => match Volume::from_engine(&existing) {
                Some(v) if v.is_equal_config(target) => Ok(()),
                _ => Err(Failure::Refused(format!(
                    "volume {} exists with a different configuration",
                    target.engine_name()
                ))),
            },
            Err(e) if e.is_not_found() => {
                self.engine.create_volume(&target.to_create())?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn ensure_supervisor_network(&self) -> crate::engine::Result<()> {
        if let Ok(n) = self.engine.inspect_network(SUPERVISOR_NETWORK) {
            if supervisor_network_ok(&n) {
                return Ok(());
            }
            // Wrong configuration: remove it; the next iteration creates it again.
            return self.engine.remove_network(SUPERVISOR_NETWORK);
        }
        let mut options = BTreeMap::new();
        options.insert(
            "com.docker.network.bridge.name".to_string(),
            SUPERVISOR_NETWORK.to_string(),
        );
        self.engine
            .create_network(&NetworkCreate {
                name: SUPERVISOR_NETWORK.into(),
                check_duplicate: true,
                driver: "bridge".into(),
                ipam: Ipam {
                    driver: "default".into(),
                    config: vec![IpamConfig {
                        subnet: Some(SUPERVISOR_SUBNET.into()),
                        gateway: Some(SUPERVISOR_GATEWAY.into()),
                        ..Default::default()
                    }],
                    options: BTreeMap::new(),
                },
                options,
                ..Default::default()
            })
            .map(drop)
    }

    fn ensure_extra_firmware(&self) -> Result<(), Failure> {
        match self.engine.inspect_volume(EXTRA_FIRMWARE_VOLUME) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                self.engine.create_volume(&VolumeCreate {
                    name: EXTRA_FIRMWARE_VOLUME.into(),
                    ..Default::default()
                })?;
            }
            Err(e) => return Err(e.into()),
        }
        let mut os = self
            .config_json
            .snapshot()
            .get("os")
            .cloned()
            .unwrap_or(json!({}));
        if !os.is_object() {
            os = json!({});
        }
        if !os["kernel"].is_object() {
            os["kernel"] = json!({});
        }
        os["kernel"]["extraFirmwareVol"] = json!(EXTRA_FIRMWARE_VOLUME);
        self.config_json.update(&[("os", Some(os))])?;
        Ok(())
    }

    /// Removes untagged images nothing records; failures are only logged.
    fn cleanup_images(&self) {
        let recorded: Vec<String> = self
            .db()
            .images()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.docker_image_id)
            .collect();
        for img in self.engine.list_images().unwrap_or_default() {
            let dangling = img.repo_tags.iter().all(|t| t == "<none>:<none>")
                && img.repo_digests.iter().all(|d| d == "<none>@<none>");
            if dangling && !recorded.contains(&img.id) {
                if let Err(e) = self.engine.remove_image(&img.id, true) {
                    warn!("Image cleanup error: {e}");
                }
            }
        }
    }
}

/// The registry part of an image reference: a first path component with a dot or a colon,
/// or `localhost`.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, rest) = image.split_once('/')?;
    (!rest.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost"))
        .then_some(first)
}

/// `supervisor0` exists with the bridge name, subnet and gateway the real supervisor uses.
pub fn supervisor_network_ok(n: &crate::engine::types::Network) -> bool {
    n.options
        .get("com.docker.network.bridge.name")
        .map(String::as_str)
        == Some(SUPERVISOR_NETWORK)
        && n.ipam.config.iter().any(|c| {
            c.subnet.as_deref() == Some(SUPERVISOR_SUBNET)
                && c.gateway.as_deref() == Some(SUPERVISOR_GATEWAY)
        })
}

/// Logs v19's `Failed to download image` event and returns the step's failure.
fn download_failed(image: &ImageRef, what: &str, e: impl std::fmt::Display) -> Failure {
    event(
        format!("Failed to download image '{}' due to '{e}'", image.name),
        true,
    );
    Failure::Download(format!("Failed to download {what} '{}': {e}", image.name))
}

/// How long a service's container is given to stop before it is killed.
fn grace(s: &Service) -> u32 {
    u32::try_from(s.config.stop_grace_period).unwrap_or(10)
}

/// How v19 names a service in its events: `'<service> <image>'`.
fn service_object(s: &Service) -> String {
    format!("'{} {}'", s.service_name, s.image_name)
}

#[cfg(test)]
mod tests {
    use super::registry_host;

    #[test]
    fn i1_registry_part_of_image_names() {
        assert_eq!(
            registry_host("registry2.balena-cloud.com/v2/abc@sha256:1"),
            Some("registry2.balena-cloud.com")
        );
        assert_eq!(
            registry_host("127.0.0.1:5858/tinyvisor/busybox:1"),
            Some("127.0.0.1:5858")
        );
        assert_eq!(registry_host("localhost/x"), Some("localhost"));
        assert_eq!(registry_host("library/busybox"), None);
        assert_eq!(registry_host("busybox:1"), None);
    }
}
