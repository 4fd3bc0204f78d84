//! Update windows and switch-at-reboot in the state engine (docs/windows.md): which apps'
//! switches wait now, from the device's local time and boot id. The rules are the planner's
//! (`planner::window`).

use super::apply::StateEngine;
use crate::compose::target::TargetState;
use crate::encoding::rfc3339_from_seconds;
use crate::localtime::Zone;
use crate::logs::event;
use crate::planner::window::{hold, human_duration, pending_switch, Hold, SwitchPolicy};
use crate::planner::CurrentApp;
use crate::protocol::SwitchWait;
use std::collections::BTreeSet;
use std::time::Duration;

/// The apps whose switch waits, when to look again, and what the status shows.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub apps: BTreeSet<i64>,
    pub wake_in: Option<Duration>,
    pub wait: Option<SwitchWait>,
    /// The line to log once the waiting release is downloaded.
    pub message: Option<String>,
}

/// This boot's id (`TINYVISOR_BOOT_ID_PATH` names another file, for tests).
fn boot_id() -> String {
    let path = std::env::var("TINYVISOR_BOOT_ID_PATH")
        .unwrap_or_else(|_| "/proc/sys/kernel/random/boot_id".into());
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl StateEngine {
    /// Which apps of `target` switch releases later: a new release (the app runs another one)
    /// with a window that is closed now, or waiting for a reboot. `force` switches now.
    pub(super) fn held_switches(
        &self,
        target: &TargetState,
        current: &[CurrentApp],
        force: bool,
    ) -> Held {
        let mut held = Held::default();
        if force {
            return held;
        }
        let now = crate::logs::now_ms() / 1000;
        for (uuid, app) in &target.apps {
            let running = current
                .iter()
                .find(|a| &a.app_uuid == uuid)
                .and_then(|a| a.commit.as_deref());
            let Some((policy, commit)) = pending_switch(app, running) else {
                continue;
            };
            let booted_since = matches!(policy, SwitchPolicy::AtReboot) && {
                let boot = boot_id();
                let seen = self.db().waiting_since_boot(uuid, commit, &boot);
                seen.is_ok_and(|seen| seen != boot)
            };
            let second_of_day = match policy {
                SwitchPolicy::Windows(_) => {
                    let zone = Zone::of_host(&self.settings.paths.root_mountpoint);
                    zone.local(now).rem_euclid(86_400) as u32
                }
                SwitchPolicy::AtReboot => 0,
            };
            let (wait, message, wake) = match hold(&policy, second_of_day, booted_since) {
                Hold::Switch => continue,
                Hold::UntilWindow { window, in_secs } => (
                    SwitchWait {
                        commit: commit.to_string(),
                        window: Some(window.to_string()),
                        opens_at: Some(rfc3339_from_seconds(now + i64::from(in_secs))),
                    },
                    format!(
                        "Release {} downloaded; switching in window {window} (in {})",
                        commit,
                        human_duration(in_secs)
                    ),
                    Some(Duration::from_secs(in_secs.into())),
                ),
                Hold::UntilReboot => (
                    SwitchWait {
                        commit: commit.to_string(),
                        window: None,
                        opens_at: None,
                    },
                    format!("Release {} downloaded; switching at the next boot", commit),
                    None,
                ),
            };
            held.apps.insert(app.id);
            held.wake_in = match (held.wake_in, wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            held.wait.get_or_insert(wait);
            held.message.get_or_insert(message);
        }
        held
    }

    /// Logs a waiting release once (per release).
    pub(super) fn note_wait(&mut self, held: &Held) {
        let (Some(wait), Some(message)) = (&held.wait, &held.message) else {
            return;
        };
        if self.noted_wait.as_deref() != Some(wait.commit.as_str()) {
            event(message.clone(), false);
            self.noted_wait = Some(wait.commit.clone());
        }
    }
}
