//! Reboot and shutdown (device-config.md §4.4, device-api.md 3.6): refused while a host OS
//! update is rolling back, then every current app's update locks are taken, the event is
//! logged, and after a second (so the API can answer first) logind is asked over D-Bus.

use super::actions::ActionError;
use crate::locks::{LockError, Locks};
use crate::systemd::HostControl;
use std::collections::BTreeSet;
use std::path::Path;

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
