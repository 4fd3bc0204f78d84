//! Actions on one service asked for through the API (docs/contract/device-api.md 3.9): stop, start,
//! restart. They run on the state engine thread between iterations, so they never race an
//! apply; stop and restart hold the app's update locks while they work
//! (docs/contract/engine.md (e) 15).

use super::device::{device_context, universe};
use super::snapshot::EngineSnapshot;
use super::target::target_apps;
use crate::compose::service::ImageDefaults;
use crate::compose::target::TargetState;
use crate::config::Settings;
use crate::engine::Engine;
use crate::locks::{LockError, Locks};
use std::collections::BTreeMap;

pub use crate::protocol::{
    ActionError, AppAction, ServiceAction, ServiceRef, APP_NOT_FOUND, NOT_IN_TARGET,
    SERVICE_NOT_FOUND,
};

pub struct Actions<'a> {
    pub settings: &'a Settings,
    pub engine: &'a Engine,
    pub locks: &'a Locks,
    /// A service's scoped API key (so a restarted container gets the same environment).
    pub api_key: &'a dyn Fn(i64, &str) -> Option<String>,
}

impl Actions<'_> {
    pub fn run(
        &self,
        app_id: i64,
        which: &ServiceRef,
        action: ServiceAction,
        force: bool,
        target: Option<&TargetState>,
        lock_already_held: bool,
    ) -> Result<(), ActionError> {
        let failed = |e: &dyn std::fmt::Display| ActionError::Failed(e.to_string());
        let snapshot = EngineSnapshot::read(self.engine).map_err(|e| failed(&e))?;
        let apps = snapshot.current_apps();
        let app = apps
            .iter()
            .find(|a| a.app_id == app_id && !a.services.is_empty())
            .ok_or(ActionError::NotFound(APP_NOT_FOUND))?;
        let current = app
            .services
            .iter()
            .find(|s| which.matches(s))
            .ok_or(ActionError::NotFound(SERVICE_NOT_FOUND))?;
        // The service must also be in the target release (docs/contract/device-api.md 3.9).
        let state = target.ok_or(ActionError::NotFound(NOT_IN_TARGET))?;
        let device = device_context(self.settings, &state.name);
        let engine = self.engine;
        let defaults = |name: &str| {
            engine
                .inspect_image(name)
                .ok()
                .map(|i| ImageDefaults::from_inspect(&i))
        };
        let built = target_apps(
            state,
            &device,
            &universe(self.settings),
            &defaults,
            self.api_key,
        );
        let target = built
            .apps
            .iter()
            .filter(|a| a.app_id == app_id)
            .flat_map(|a| &a.services)
            .find(|s| which.matches(s))
            .ok_or(ActionError::NotFound(NOT_IN_TARGET))?;
        let id = current.container_id.clone().unwrap_or_default();
        let grace = u32::try_from(current.config.stop_grace_period).unwrap_or(10);
        if action == ServiceAction::Start {
            return self.engine.start_container(&id).map_err(|e| failed(&e));
        }
        let names = vec![current.service_name.clone()];
        self.with_locks(
            app_id,
            &names,
            force || super::lock_override(state),
            lock_already_held,
            || {
                self.engine
                    .stop_container(&id, grace)
                    .map_err(|e| failed(&e))?;
                if action == ServiceAction::Restart {
                    self.engine
                        .remove_container(&id, false, true)
                        .map_err(|e| failed(&e))?;
                    let ids: BTreeMap<String, String> = app
                        .services
                        .iter()
                        .filter_map(|s| Some((s.service_name.clone(), s.container_id.clone()?)))
                        .collect();
                    let body = target.create_body(&state.name, &ids);
                    let new_id = self
                        .engine
                        .create_container(&target.container_name(), &body)
                        .map_err(|e| failed(&e))?
                        .id;
                    for (net, endpoint) in target.extra_networks() {
                        self.engine
                            .connect_network(&net, &new_id, &endpoint)
                            .map_err(|e| failed(&e))?;
                    }
                    self.engine
                        .start_container(&new_id)
                        .map_err(|e| failed(&e))?;
                }
                Ok(())
            },
        )
    }

    /// Runs `f` holding the update locks of `services` (taken with `force` overriding the
    /// app's own), released again afterwards whatever happened — unless the apply loop already
    /// holds them for an update.
    fn with_locks(
        &self,
        app_id: i64,
        services: &[String],
        force: bool,
        lock_already_held: bool,
        f: impl FnOnce() -> Result<(), ActionError>,
    ) -> Result<(), ActionError> {
        if !lock_already_held {
            self.locks
                .take(app_id, services, force)
                .map_err(|e| match e {
                    LockError::Held { .. } => ActionError::Locked(e.to_string()),
                    other => ActionError::Failed(other.to_string()),
                })?;
        }
        let result = f();
        if !lock_already_held {
            let _ = self.locks.release(app_id);
        }
        result
    }
}

impl Actions<'_> {
    /// Restart or purge a whole app (docs/contract/device-api.md 3.7, 3.8). The containers (and for
    /// a purge the volumes) are removed here under the app's update locks; the apply loop that runs
    /// right after recreates them from the target.
    pub fn run_app(
        &self,
        app_id: i64,
        action: AppAction,
        force: bool,
        target: Option<&TargetState>,
        lock_already_held: bool,
    ) -> Result<(), ActionError> {
        let failed = |e: &dyn std::fmt::Display| ActionError::Failed(e.to_string());
        let snapshot = EngineSnapshot::read(self.engine).map_err(|e| failed(&e))?;
        let apps = snapshot.current_apps();
        let app = apps.iter().find(|a| a.app_id == app_id).ok_or_else(|| {
            ActionError::Failed(format!(
                "Application with ID {app_id} is not in the current state"
            ))
        })?;
        let names: Vec<String> = app
            .services
            .iter()
            .map(|s| s.service_name.clone())
            .collect();
        let force = force || target.is_some_and(super::lock_override);
        self.with_locks(app_id, &names, force, lock_already_held, || {
            for s in &app.services {
                let id = s.container_id.clone().unwrap_or_default();
                let grace = u32::try_from(s.config.stop_grace_period).unwrap_or(10);
                match self.engine.stop_container(&id, grace) {
                    Err(e) if !e.is_not_found() => return Err(failed(&e)),
                    _ => {}
                }
                match self.engine.remove_container(&id, false, true) {
                    Err(e) if !e.is_not_found() => return Err(failed(&e)),
                    _ => {}
                }
            }
            if action == AppAction::Purge {
                log::info!("Purging data for app {app_id}");
                for v in &app.volumes {
                    match self.engine.remove_volume(&v.engine_name(), false) {
                        Err(e) if !e.is_not_found() => return Err(failed(&e)),
                        _ => {}
                    }
                }
                log::info!("Purged data");
            }
            Ok(())
        })
    }
}
