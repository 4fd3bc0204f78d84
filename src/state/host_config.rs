//! `PATCH /v1/device/host-config` on the state engine's thread: hostname and proxy written
//! under every app's update locks (`host_config.rs` reads, checks and writes the files).

use super::actions::ActionError;
use super::apply::StateEngine;
use log::{info, warn};

impl StateEngine {
    pub(super) fn host_config(
        &self,
        patch: &crate::host_config::Patch,
        force: bool,
    ) -> Result<(), ActionError> {
        let taken = self.lock_every_app(force)?;
        let result = crate::host_config::apply(
            patch,
            &self.settings.paths.boot_mountpoint,
            &self.settings.config_json,
        );
        match &result {
            Ok(applied) => {
                if let Some(h) = &applied.hostname {
                    info!("Hostname set to {h} (config.json)");
                }
                if applied.proxy_changed {
                    info!("Proxy settings changed");
                    crate::host_config::restart_proxy_units(self.host.as_ref());
                }
            }
            Err(e) => warn!("Host config not applied: {e}"),
        }
        for app_id in taken {
            let _ = self.locks.release(app_id);
        }
        result.map(drop).map_err(ActionError::Failed)
    }
}
