//! The engine's event stream for our containers (`die`, `start`, `health_status`), so the
//! state engine sees a container crash, loop or turn unhealthy when it happens instead of at
//! its next idle look — with no polling: an idle device whose containers do nothing wakes up
//! for nothing (health checks that pass emit no `health_status` event).
//!
//! On these events the state engine refreshes its view (a trial is judged at once, a restart
//! loop shows in the status) and, on an engine that does not restart unhealthy containers
//! itself (Docker, unlike balenaEngine: moby#28400), restarts an `unhealthy` one with a
//! backoff per container (docs/trials.md §3).

use super::apply::StateEngine;
use crate::compose::labels::SUPERVISED;
use crate::engine::Engine;
use crate::logs::event;
use crossbeam_channel::Sender;
use log::warn;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A service opts out of unhealthy restarts with this label set to `false`.
pub const RESTART_UNHEALTHY_LABEL: &str = "io.tinyvisor.restart-unhealthy";
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What happened to one of our containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    /// `die`, `start`, `health_status: unhealthy`, ...
    pub action: String,
}

/// Follows the event stream on a thread of its own; events go to `tx` (bounded: when full, a
/// refresh is already coming, and any event means the same thing — look again).
pub fn spawn(engine: Engine, tx: Sender<ContainerEvent>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("engine-events".into())
        .stack_size(128 * 1024)
        .spawn(move || follow(&engine, &tx))
        .map(drop)
}

fn follow(engine: &Engine, tx: &Sender<ContainerEvent>) {
    let filters = serde_json::json!({"type": ["container"], "label": [SUPERVISED],
        "event": ["die", "start", "health_status"]});
    let mut since: Option<i64> = None;
    let mut pause = Duration::from_secs(1);
    loop {
        match engine.events(Some(&filters), since, None) {
            Ok(stream) => {
                pause = Duration::from_secs(1);
                for ev in stream {
                    let Ok(ev) = ev else { break };
                    since = Some(ev.time);
                    let event = ContainerEvent {
                        container_id: ev.actor.id,
                        action: ev.action,
                    };
                    if let Err(crossbeam_channel::TrySendError::Disconnected(_)) =
                        tx.try_send(event)
                    {
                        return;
                    }
                }
            }
            Err(e) => log::debug!("engine events: {e}"),
        }
        // The engine went away or restarted: follow again from the last event seen.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(60));
        if since.is_none() {
            since = Some(crate::logs::now_ms() / 1000);
        }
    }
}

/// The wait before the next unhealthy restart of a container: 10 s, doubling to 5 min.
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF))
}

/// Unhealthy restarts per container: when the next is allowed and the backoff reached.
#[derive(Debug, Default)]
pub(super) struct UnhealthyRestarts {
    /// container id → (restart allowed from, backoff used last, restart pending).
    by_container: BTreeMap<String, (Instant, Duration, bool)>,
}

impl UnhealthyRestarts {
    /// When a pending restart is due next.
    pub fn due(&self) -> Option<Instant> {
        self.by_container
            .values()
            .filter(|(_, _, pending)| *pending)
            .map(|(at, _, _)| *at)
            .min()
    }
}

impl StateEngine {
    /// A container event: the view is refreshed soon; an unhealthy container is restarted
    /// (now or when its backoff allows) where the engine would not do it.
    pub(super) fn container_event(&mut self, ev: &ContainerEvent) {
        if ev.action.trim() == "health_status: unhealthy" && !self.engine_restarts_unhealthy() {
            let entry = self
                .unhealthy
                .by_container
                .entry(ev.container_id.clone())
                .or_insert((Instant::now(), Duration::ZERO, false));
            entry.2 = true;
        }
        if ev.action.trim() == "health_status: healthy" {
            if let Some(entry) = self.unhealthy.by_container.get_mut(&ev.container_id) {
                entry.2 = false;
            }
        }
    }

    /// Whether the engine restarts unhealthy containers itself (balenaEngine does, Docker does
    /// not); asked once, when first needed.
    fn engine_restarts_unhealthy(&mut self) -> bool {
        if let Some(known) = self.engine_restarts_unhealthy {
            return known;
        }
        match self.engine.version() {
            Ok(v) => *self.engine_restarts_unhealthy.insert(v.is_balena_engine()),
            Err(_) => false,
        }
    }

    /// Restarts the unhealthy containers whose backoff has passed.
    pub(super) fn restart_unhealthy_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unhealthy
            .by_container
            .iter()
            .filter(|(_, (at, _, pending))| *pending && *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let restarted = self.restart_if_unhealthy(&id);
            if let Some(entry) = self.unhealthy.by_container.get_mut(&id) {
                entry.2 = false;
                if restarted {
                    let backoff = next_backoff((!entry.1.is_zero()).then_some(entry.1));
                    *entry = (now + backoff, backoff, false);
                }
            }
        }
        // Containers gone from the engine are forgotten.
        let engine = &self.engine;
        self.unhealthy
            .by_container
            .retain(|id, _| engine.inspect_container(id).is_ok());
    }

    /// Restarts `id` if it is still unhealthy, its restart policy allows restarts and its
    /// service has not opted out. Returns whether it was restarted.
    fn restart_if_unhealthy(&self, id: &str) -> bool {
        let Ok(c) = self.engine.inspect_container(id) else {
            return false;
        };
        let unhealthy = c.state.health_status() == Some("unhealthy");
        let policy = c
            .host_config
            .restart_policy
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or_default();
        let opted_out = c
            .config
            .labels
            .get(RESTART_UNHEALTHY_LABEL)
            .map(String::as_str)
            == Some("false");
        if !unhealthy || opted_out || matches!(policy, "" | "no") || !c.state.running {
            return false;
        }
        let service = c
            .config
            .labels
            .get(crate::compose::labels::SERVICE_NAME)
            .cloned()
            .unwrap_or_else(|| c.name.trim_start_matches('/').to_string());
        event(format!("Restarting unhealthy service '{service}'"), false);
        match self.engine.restart_container(id, 10) {
            Ok(()) => true,
            Err(e) => {
                warn!("Cannot restart unhealthy service '{service}': {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balena_engine_is_told_from_docker_by_its_platform() {
        let version = |v: serde_json::Value| -> crate::engine::types::Version {
            serde_json::from_value(v).unwrap()
        };
        let balena = version(
            serde_json::json!({"Platform": {"Name": "balenaEngine"}, "Version": "20.10.43"}),
        );
        let docker =
            version(serde_json::json!({"Platform": {"Name": "Docker Engine - Community"}}));
        let debian = version(serde_json::json!({"Version": "20.10.24+dfsg1"}));
        assert!(balena.is_balena_engine());
        assert!(!docker.is_balena_engine() && !debian.is_balena_engine());
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let mut b = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let next = next_backoff(b);
            seen.push(next.as_secs());
            b = Some(next);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
    }
}
