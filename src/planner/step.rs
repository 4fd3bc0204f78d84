//! The steps the planner emits (docs/contract/engine.md (b)).

use super::ImageRef;
use crate::compose::{Network, Service, Volume};
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Step {
    /// Pull (or find and tag) an image.
    Fetch {
        image: ImageRef,
        service_name: String,
    },
    /// Stop and remove a container. `reason` names why (the fields that differ for a recreate).
    Kill {
        current: Box<Service>,
        reason: Vec<String>,
    },
    /// Stop a container and keep it (`running: false`).
    Stop {
        current: Box<Service>,
    },
    /// Remove a dead container.
    Remove {
        current: Box<Service>,
    },
    /// Create (if needed) and start a container.
    Start {
        target: Box<Service>,
    },
    /// Rename a container to its new release (config unchanged).
    UpdateMetadata {
        current: Box<Service>,
        target: Box<Service>,
    },
    /// Record the applied release of an app.
    UpdateCommit {
        app_id: i64,
        commit: String,
    },
    /// Start the new container beside the old one, wait for the handover, kill the old one.
    Handover {
        current: Box<Service>,
        target: Box<Service>,
        timeout_ms: u64,
    },
    RemoveImage {
        image: ImageRef,
    },
    SaveImage {
        image: ImageRef,
    },
    Cleanup,
    CreateNetwork {
        target: Network,
    },
    RemoveNetwork {
        current: Network,
    },
    CreateVolume {
        target: Volume,
    },
    RemoveVolume {
        current: Volume,
    },
    EnsureSupervisorNetwork,
    EnsureExtraFirmwareVolume,
    TakeLock {
        app_id: i64,
        services: Vec<String>,
        force: bool,
    },
    ReleaseLock {
        app_id: i64,
    },
    RequireReboot {
        service_name: String,
    },
    /// A service cannot start: a dependency can never meet its `depends_on` condition (it is
    /// unhealthy, has no healthcheck, or exited with an error). Carried out as a failure, so
    /// the apply reports it and retries with backoff.
    Blocked {
        service_name: String,
        reason: String,
    },
    /// Nothing to do now, but the target is not reached: keep the loop alive.
    Noop,
    /// Reboot the device (a change needs it and nothing else is left to do; docs/contract/engine.md
    /// A.3 4). Run by the state engine itself: it takes every app's locks and stops the loop.
    Reboot,
}

impl Step {
    /// The action name as the real supervisor spells it.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Fetch { .. } => "fetch",
            Step::Kill { .. } => "kill",
            Step::Stop { .. } => "stop",
            Step::Remove { .. } => "remove",
            Step::Start { .. } => "start",
            Step::UpdateMetadata { .. } => "updateMetadata",
            Step::UpdateCommit { .. } => "updateCommit",
            Step::Handover { .. } => "handover",
            Step::RemoveImage { .. } => "removeImage",
            Step::SaveImage { .. } => "saveImage",
            Step::Cleanup => "cleanup",
            Step::CreateNetwork { .. } => "createNetwork",
            Step::RemoveNetwork { .. } => "removeNetwork",
            Step::CreateVolume { .. } => "createVolume",
            Step::RemoveVolume { .. } => "removeVolume",
            Step::EnsureSupervisorNetwork => "ensureSupervisorNetwork",
            Step::EnsureExtraFirmwareVolume => "ensureExtraFirmwareVolume",
            Step::TakeLock { .. } => "takeLock",
            Step::ReleaseLock { .. } => "releaseLock",
            Step::RequireReboot { .. } => "requireReboot",
            Step::Blocked { .. } => "blocked",
            Step::Noop => "noop",
            Step::Reboot => "reboot",
        }
    }

    /// Steps that need the app's update lock (docs/contract/engine.md (e) 11).
    pub fn needs_lock(&self) -> bool {
        matches!(
            self,
            Step::Kill { .. }
                | Step::Stop { .. }
                | Step::UpdateMetadata { .. }
                | Step::Handover { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Fetch {
                image,
                service_name,
            } => write!(f, "fetch {} for {service_name}", image.name),
            Step::Kill { current, reason } if reason.is_empty() => {
                write!(f, "kill {}", current.container_name())
            }
            Step::Kill { current, reason } => {
                write!(
                    f,
                    "kill {} ({})",
                    current.container_name(),
                    reason.join(", ")
                )
            }
            Step::Stop { current } => write!(f, "stop {}", current.container_name()),
            Step::Remove { current } => write!(f, "remove {}", current.container_name()),
            Step::Start { target } => write!(f, "start {}", target.container_name()),
            Step::UpdateMetadata { current, target } => {
                write!(
                    f,
                    "updateMetadata {} -> {}",
                    current.container_name(),
                    target.container_name()
                )
            }
            Step::UpdateCommit { app_id, commit } => {
                write!(f, "updateCommit app {app_id} -> {commit}")
            }
            Step::Handover {
                current,
                target,
                timeout_ms,
            } => write!(
                f,
                "handover {} -> {} (timeout {timeout_ms} ms)",
                current.container_name(),
                target.container_name()
            ),
            Step::RemoveImage { image } => write!(f, "removeImage {}", image.name),
            Step::SaveImage { image } => write!(f, "saveImage {}", image.name),
            Step::Cleanup => write!(f, "cleanup"),
            Step::CreateNetwork { target } => write!(f, "createNetwork {}", target.engine_name()),
            Step::RemoveNetwork { current } => write!(f, "removeNetwork {}", current.name),
            Step::CreateVolume { target } => write!(f, "createVolume {}", target.engine_name()),
            Step::RemoveVolume { current } => write!(f, "removeVolume {}", current.engine_name()),
            Step::EnsureSupervisorNetwork => write!(f, "ensureSupervisorNetwork"),
            Step::EnsureExtraFirmwareVolume => write!(f, "ensureExtraFirmwareVolume"),
            Step::TakeLock {
                app_id,
                services,
                force,
            } => {
                write!(
                    f,
                    "takeLock app {app_id} [{}]{}",
                    services.join(", "),
                    if *force { " (force)" } else { "" }
                )
            }
            Step::ReleaseLock { app_id } => write!(f, "releaseLock app {app_id}"),
            Step::RequireReboot { service_name } => write!(f, "requireReboot for {service_name}"),
            Step::Blocked {
                service_name,
                reason,
            } => write!(f, "blocked {service_name}: {reason}"),
            Step::Noop => write!(f, "noop"),
            Step::Reboot => write!(f, "reboot"),
        }
    }
}
