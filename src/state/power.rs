//! Reboot and shutdown (docs/contract/device-config.md §4.4, docs/contract/device-api.md 3.6):
//! refused while a host OS update is rolling back, then every current app's update locks are taken,
//! the event is logged, and after a second (so the API can answer first) logind is asked over
//! D-Bus.

use super::actions::ActionError;
use super::apply::StateEngine;
use super::snapshot::EngineSnapshot;
use crate::locks::{LockError, Locks};
use crate::systemd::HostControl;
use log::warn;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

pub use crate::protocol::PowerAction;

impl PowerAction {
    /// The system message logged before the call (v19's wording).
    pub fn event(self) -> &'static str {
        match self {
            PowerAction::Reboot => "Rebooting",
            PowerAction::Shutdown => "Shutting down",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            PowerAction::Reboot => "reboot",
            PowerAction::Shutdown => "shutdown",
        }
    }

    /// Asks logind; a failure is described as v19 logs it (`Unable to reboot: …`).
    pub fn call(self, host: &dyn HostControl) -> Result<(), String> {
        match self {
            PowerAction::Reboot => host.reboot(),
            PowerAction::Shutdown => host.power_off(),
        }
        .map_err(|e| format!("Unable to {}: {e}", self.verb()))
    }
}

pub const HOST_OS_UPDATE: &str = "Waiting for Host OS update to finish";

/// A host OS update is in progress (or rolling back): its breadcrumbs are on the state partition.
pub fn host_os_update_pending(state_mountpoint: &Path) -> bool {
    ["rollback-health-breadcrumb", "rollback-altboot-breadcrumb"]
        .iter()
        .any(|f| state_mountpoint.join(f).exists())
}

/// Takes the update locks of every app in `apps` (id and service names) that the apply loop
/// does not already hold. Returns the apps locked here; on failure nothing stays locked.
pub fn lock_all_apps(
    apps: &[(i64, Vec<String>)],
    locks: &Locks,
    held: &BTreeSet<i64>,
    force: bool,
) -> Result<Vec<i64>, ActionError> {
    let mut taken = Vec::new();
    for (app_id, services) in apps.iter().filter(|(id, _)| !held.contains(id)) {
        if let Err(e) = locks.take(*app_id, services, force) {
            for id in &taken {
                let _ = locks.release(*id);
            }
            return Err(match e {
                LockError::Held { .. } => ActionError::Locked(e.to_string()),
                other => ActionError::Failed(other.to_string()),
            });
        }
        taken.push(*app_id);
    }
    Ok(taken)
}

impl StateEngine {
    /// Reboots or powers off the host (docs/contract/device-config.md §4.4): refused during a host
    /// OS update unless forced; takes every current app's locks (those the loop holds stay as they
    /// are); logs the event; tells `ready` (the API answers then); a second later asks logind. If
    /// the host refuses, the locks taken here are given back and applying goes on (v19 would stay
    /// "shutting down" for good).
    pub(super) fn power(
        &mut self,
        action: PowerAction,
        force: bool,
        ready: impl FnOnce(Result<(), ActionError>),
    ) -> Result<(), ActionError> {
        let prepared = if !force && host_os_update_pending(&self.settings.paths.state_mountpoint) {
            Err(ActionError::Locked(HOST_OS_UPDATE.into()))
        } else {
            self.lock_every_app(force)
        };
        let taken = match prepared {
            Ok(t) => t,
            Err(e) => {
                warn!("{} refused: {e:?}", action.event());
                ready(Err(e.clone()));
                return Err(e);
            }
        };
        crate::logs::event(action.event(), false);
        ready(Ok(()));
        std::thread::sleep(Duration::from_secs(1));
        match action.call(self.host.as_ref()) {
            Ok(()) => {
                self.shutting_down = true;
                Ok(())
            }
            Err(message) => {
                crate::logs::event(message.clone(), true);
                for app_id in taken {
                    let _ = self.locks.release(app_id);
                }
                Err(ActionError::Failed(message))
            }
        }
    }

    /// Takes the update locks of every app on the engine that the loop does not hold already;
    /// returns the apps locked here.
    pub(super) fn lock_every_app(&self, force: bool) -> Result<Vec<i64>, ActionError> {
        let snapshot =
            EngineSnapshot::read(&self.engine).map_err(|e| ActionError::Failed(e.to_string()))?;
        let apps: Vec<(i64, Vec<String>)> = snapshot
            .current_apps()
            .iter()
            .map(|a| {
                let names = a.services.iter().map(|s| s.service_name.clone()).collect();
                (a.app_id, names)
            })
            .collect();
        lock_all_apps(&apps, &self.locks, &self.locks_held, force)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_all_or_nothing() {
        let root = crate::testutil::TempDir::new("power-locks");
        let locks = Locks::new(root.path());
        // App 2's service holds its own lock.
        let dir = locks.service_dir(2, "b");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("updates.lock"), "").unwrap();
        let apps = vec![(1, vec!["a".to_string()]), (2, vec!["b".to_string()])];
        let err = lock_all_apps(&apps, &locks, &BTreeSet::new(), false).unwrap_err();
        assert_eq!(
            err,
            ActionError::Locked("Lockfile exists for { appId: 2, service: b }".into())
        );
        // App 1's lock taken on the way was given back.
        assert!(!locks.service_dir(1, "a").join("updates.lock").exists());
        // Force takes both; an app the loop holds is left to the loop.
        let held = BTreeSet::from([1]);
        assert_eq!(lock_all_apps(&apps, &locks, &held, true).unwrap(), vec![2]);
        assert!(!locks.service_dir(1, "a").join("updates.lock").exists());
    }

    #[test]
    fn rollback_breadcrumbs_mean_a_host_update_is_pending() {
        let state = crate::testutil::TempDir::new("power-hup");
        assert!(!host_os_update_pending(state.path()));
        std::fs::write(state.path().join("rollback-altboot-breadcrumb"), "").unwrap();
        assert!(host_os_update_pending(state.path()));
    }
}
