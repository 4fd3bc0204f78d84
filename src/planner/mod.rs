//! The planner: a pure function from (current state, target state, context) to the steps of
//! the next iteration (docs/contract/engine.md (b), (c)). No I/O, no clocks, no randomness:
//! everything it needs is in its arguments, so every rule is a table-driven test.

mod app;
pub mod boot_keys;
pub mod device_config;
mod fast_hash;
pub mod hostos;
mod images;
pub mod simulate;
mod step;
pub mod trial;
pub mod window;

pub use crate::compose::image::ImageRef;
pub use step::Step;

use crate::compose::{Network, Service, Volume};
use fast_hash::{FastMap, FastSet};
use serde::Serialize;
use std::collections::BTreeSet;

/// An image present on the engine: its id and every tag and digest reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineImage {
    pub id: String,
    pub references: Vec<String>,
}

/// What the device runs, per app (grouped by uuid, or by id for legacy objects).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CurrentApp {
    pub app_id: i64,
    pub app_uuid: String,
    /// The release the device considers applied (`currentCommit` table).
    pub commit: Option<String>,
    pub services: Vec<Service>,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
}

/// What the device should run, per app.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DesiredApp {
    pub app_id: i64,
    pub app_uuid: String,
    pub name: String,
    pub commit: Option<String>,
    pub services: Vec<Service>,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    /// Rejected by contract: neither installed, changed nor removed.
    pub rejected: bool,
}

/// Everything else the planner looks at.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Managed images that exist on the engine.
    pub available_images: Vec<ImageRef>,
    /// All images on the engine (to find target images that only need recording).
    pub engine_images: Vec<EngineImage>,
    /// Image names with a pull in flight.
    pub downloading: BTreeSet<String>,
    /// Apps whose update locks we hold.
    pub locks_held: BTreeSet<i64>,
    /// Apps with supervisor-owned lock files left from before a restart.
    pub leftover_locks: BTreeSet<i64>,
    /// Override user locks (`force` of the apply, or the lockOverride config).
    pub force: bool,
    /// Never remove images (local mode, intermediate targets).
    pub keep_images: bool,
    /// Never remove volumes (local mode).
    pub keep_volumes: bool,
    /// Deltas on: at most three downloads for apps that already have images.
    pub delta: bool,
    pub supervisor_network_ready: bool,
    pub extra_firmware_ready: bool,
    /// Dangling images exist that `cleanup` would remove.
    pub dangling_images: bool,
    /// The reboot breadcrumb is set.
    pub reboot_breadcrumb: bool,
    /// Boot time, Unix seconds (containers created later were created since boot).
    pub boot_time: i64,
    /// Containers tinyvisor itself stopped for `running: false`; they are started again when
    /// the target wants them running (a container that exited on its own is left to its
    /// restart policy, docs/contract/engine.md j.1).
    pub stopped_by_us: BTreeSet<String>,
    /// Image names kept although no target or container uses them: the images of the release
    /// an open trial would go back to (docs/trials.md).
    pub retained_images: BTreeSet<String>,
}

/// At most this many concurrent downloads when deltas are on (docs/contract/engine.md C.2.5).
pub const MAX_DELTA_DOWNLOADS: usize = 3;

/// Plans the next iteration. An empty list means the target is reached.
pub fn plan(current: &[CurrentApp], target: &[DesiredApp], ctx: &Context) -> Vec<Step> {
    let mut steps = plan_apps(current, target, ctx);
    // A.3 rule 4: a pending reboot happens once only waiting is left (or nothing at all).
    if ctx.reboot_breadcrumb && steps.iter().all(|s| matches!(s, Step::Noop)) {
        steps.push(Step::Reboot);
    }
    steps
}

fn plan_apps(current: &[CurrentApp], target: &[DesiredApp], ctx: &Context) -> Vec<Step> {
    // C.2.1: the supervisor network comes first; services using the API are stopped first.
    if !ctx.supervisor_network_ready {
        let mut kills = Vec::new();
        for s in current.iter().flat_map(|a| &a.services) {
            if crate::compose::labels::truthy(s.label("io.balena.features.supervisor-api")) {
                kills.push(if s.status == crate::compose::ServiceStatus::Stopping {
                    Step::Noop
                } else {
                    Step::Kill {
                        current: Box::new(s.clone()),
                        reason: vec!["supervisor network is being recreated".into()],
                    }
                });
            }
        }
        if kills.is_empty() {
            return vec![Step::EnsureSupervisorNetwork];
        }
        return kills;
    }
    // C.2.2
    if !ctx.extra_firmware_ready {
        return vec![Step::EnsureExtraFirmwareVolume];
    }
    // C.2.3: image bookkeeping before anything else, while nothing downloads.
    let index = images::Index::new(ctx);
    if ctx.downloading.is_empty() {
        let image_steps = images::save_and_remove(current, target, ctx, &index);
        if !image_steps.is_empty() {
            return image_steps;
        }
    }
    // C.2.4: per-app steps.
    let mut steps = Vec::new();
    let empty = CurrentApp::default();
    let pairing = AppPairing::new(current, target);
    for t in target.iter().filter(|t| !t.rejected) {
        let cur = pairing.current_of(t);
        let mut app_steps = match cur {
            Some(c) => app::update_steps(c, t, ctx, &index),
            None => {
                let blank = CurrentApp {
                    app_id: t.app_id,
                    app_uuid: t.app_uuid.clone(),
                    ..empty.clone()
                };
                app::update_steps(&blank, t, ctx, &index)
            }
        };
        steps.append(&mut app_steps);
    }
    for c in current {
        if !pairing.in_target(c) {
            steps.extend(app::removal_steps(c, ctx));
        }
    }
    // Locks of apps that no longer exist anywhere are released (a fix over v19, which kept
    // them until reboot).
    for app_id in ctx.locks_held.union(&ctx.leftover_locks) {
        let known = current.iter().any(|c| c.app_id == *app_id)
            || target.iter().any(|t| t.app_id == *app_id);
        if !known {
            steps.push(Step::ReleaseLock { app_id: *app_id });
        }
    }
    // C.2.5: throttle downloads when deltas are on.
    if ctx.delta {
        steps = throttle_fetches(steps, ctx);
    }
    // C.2.6
    if steps.is_empty() && !ctx.downloading.is_empty() {
        steps.push(Step::Noop);
    }
    steps
}

/// Which current app is which target app: the same uuid, or the same id for legacy objects
/// (a current app without a uuid). Looked up by hash so pairing stays linear in the number of
/// apps.
struct AppPairing<'a> {
    current: &'a [CurrentApp],
    /// Position in `current` by uuid, and of the uuid-less ones by id (the first of each).
    by_uuid: FastMap<&'a str, usize>,
    legacy_by_id: FastMap<i64, usize>,
    target_uuids: FastSet<&'a str>,
    target_ids: FastSet<i64>,
}

impl<'a> AppPairing<'a> {
    fn new(current: &'a [CurrentApp], target: &'a [DesiredApp]) -> AppPairing<'a> {
        let mut by_uuid = FastMap::default();
        let mut legacy_by_id = FastMap::default();
        for (i, c) in current.iter().enumerate() {
            if c.app_uuid.is_empty() {
                legacy_by_id.entry(c.app_id).or_insert(i);
            } else {
                by_uuid.entry(c.app_uuid.as_str()).or_insert(i);
            }
        }
        AppPairing {
            current,
            by_uuid,
            legacy_by_id,
            target_uuids: target.iter().map(|t| t.app_uuid.as_str()).collect(),
            target_ids: target.iter().map(|t| t.app_id).collect(),
        }
    }

    /// The first current app that is `t`.
    fn current_of(&self, t: &DesiredApp) -> Option<&'a CurrentApp> {
        let by_uuid = self.by_uuid.get(t.app_uuid.as_str());
        let by_id = self.legacy_by_id.get(&t.app_id);
        let first = match (by_uuid, by_id) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first.map(|i| &self.current[*i])
    }

    /// Some target app is `c`.
    fn in_target(&self, c: &CurrentApp) -> bool {
        if c.app_uuid.is_empty() {
            self.target_ids.contains(&c.app_id)
        } else {
            self.target_uuids.contains(c.app_uuid.as_str())
        }
    }
}

fn throttle_fetches(steps: Vec<Step>, ctx: &Context) -> Vec<Step> {
    let mut in_flight = ctx.downloading.len();
    let has_images = |app_id: i64| ctx.available_images.iter().any(|i| i.app_id == app_id);
    steps
        .into_iter()
        .filter(|s| match s {
            Step::Fetch { image, .. } => {
                // First installs download everything at once.
                if !has_images(image.app_id) {
                    return true;
                }
                if in_flight < MAX_DELTA_DOWNLOADS {
                    in_flight += 1;
                    true
                } else {
                    false
                }
            }
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod tests;
