//! Which mode the state engine is in and what follows from it: the source its target is
//! stored under (`local` in local mode, else the API endpoint), local mode switched by the
//! cloud target (`SUPERVISOR_LOCAL_MODE`, with the engine snapshot and the cleanup of
//! `local_mode.rs`), and whether logs may go to the cloud (`SUPERVISOR_LOG_CONTROL`).

use super::apply::StateEngine;
use crate::compose::target::TargetState;
use crate::protocol::LOCAL_SOURCE;
use log::{error, warn};

impl StateEngine {
    /// Where the target being applied is stored: `local` in local mode, else the API endpoint.
    pub(super) fn source(&self) -> String {
        if self.local_mode {
            LOCAL_SOURCE.to_string()
        } else {
            self.settings.config_json.api_endpoint()
        }
    }

    /// The stored target of the current mode.
    pub(super) fn effective_target(&self) -> Option<TargetState> {
        match self.db().load_target(&self.source()) {
            Ok(t) => t.map(|t| t.normalised()),
            Err(e) => {
                error!("cannot read the stored target: {e}");
                None
            }
        }
    }

    pub(super) fn publish_mode(&self) {
        let local = self.local_mode;
        self.set_status(|s| s.local_mode = local);
        if !self.settings.config_json.unmanaged() {
            // Logs go to the cloud only outside local mode, and unless the target says not to.
            if let Some(bus) = crate::logs::bus() {
                bus.set_shipping(!local && self.log_control);
            }
        }
    }

    /// `SUPERVISOR_LOG_CONTROL=false` in the cloud target stops sending logs to the cloud.
    pub(super) fn follow_log_control(&mut self, cloud: &TargetState) {
        let wanted = cloud.flag("SUPERVISOR_LOG_CONTROL") != Some(false);
        if wanted != self.log_control {
            self.log_control = wanted;
            self.publish_mode();
        }
    }

    /// A cloud target's `SUPERVISOR_LOCAL_MODE` switches local mode on or off
    /// (docs/contract/engine.md C.14).
    pub(super) fn follow_local_mode_setting(&mut self, cloud: &TargetState) {
        if self.settings.config_json.unmanaged() {
            return;
        }
        let wanted = cloud.flag("SUPERVISOR_LOCAL_MODE") == Some(true);
        if wanted == self.local_mode {
            return;
        }
        if wanted {
            match super::local_mode::snapshot(&self.engine) {
                Ok(snap) => {
                    if let Err(e) = self.db().set_engine_snapshot(Some(&snap)) {
                        warn!("cannot store the engine snapshot: {e}");
                    }
                }
                Err(e) => warn!("cannot take the engine snapshot: {e}"),
            }
            crate::logs::event("Entering local mode", false);
        } else {
            let snapshot = self.db().engine_snapshot().ok().flatten();
            crate::logs::event("Leaving local mode", false);
            if let Some(before) = snapshot {
                self.leave_local_mode(&before);
            }
        }
        self.local_mode = wanted;
        let value = if wanted { "true" } else { "false" };
        if let Err(e) = self.db().config_set("localMode", Some(value)) {
            warn!("cannot record local mode: {e}");
        }
        self.publish_mode();
    }

    /// Removes what local mode created and its apps, then forgets the snapshot.
    pub(super) fn leave_local_mode(&self, before: &serde_json::Value) {
        super::local_mode::cleanup(&self.engine, before);
        let mut db = self.db();
        if let Err(e) = db.delete_apps(LOCAL_SOURCE) {
            warn!("cannot delete the local apps: {e}");
        }
        if let Err(e) = db.set_engine_snapshot(None) {
            warn!("cannot clear the engine snapshot: {e}");
        }
    }
}
