//! Steps for one app: update towards its target (docs/contract/engine.md C.3–C.9) or removal
//! (C.10).

use super::images::Index;
use super::{Context, CurrentApp, DesiredApp, ImageRef, Step};
use crate::compose::composition::Condition;
use crate::compose::labels::{
    self, HANDOVER_TIMEOUT, LEGACY_CONTAINER, REQUIRES_REBOOT, SERVICE_ID, UPDATE_STRATEGY,
};
use crate::compose::service::config_differences;
use crate::compose::{Network, Service, ServiceStatus, Volume};
use crate::encoding::rfc3339_seconds;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    DownloadThenKill,
    KillThenDownload,
    DeleteThenDownload,
    HandOver,
}

fn strategy_of(s: &Service) -> Strategy {
    match s.label(UPDATE_STRATEGY).map(String::as_str) {
        Some("kill-then-download") => Strategy::KillThenDownload,
        Some("delete-then-download") => Strategy::DeleteThenDownload,
        Some("hand-over") => Strategy::HandOver,
        _ => Strategy::DownloadThenKill,
    }
}

/// A component (network or volume) that changes: remove, create, or both.
struct Change<'a, T> {
    current: Option<&'a T>,
    target: Option<&'a T>,
}

/// A service pair: remove (target None), install (current None) or update.
#[derive(Clone)]
struct Pair<'a> {
    current: Option<&'a Service>,
    target: Option<&'a Service>,
    /// For an update: the config fields that differ, computed once when pairing.
    differences: Vec<&'static str>,
}

fn network_names(n: &Network) -> [String; 2] {
    [
        format!("{}_{}", n.app_uuid, n.name),
        format!("{}_{}", n.app_id, n.name),
    ]
}

fn uses_network(s: &Service, n: &Network) -> bool {
    let names = network_names(n);
    names
        .iter()
        .any(|name| s.config.networks.contains_key(name) || s.config.network_mode == *name)
}

fn uses_volume(s: &Service, v: &Volume) -> bool {
    s.named_volumes().contains(&v.name)
}

fn compare_networks<'a>(current: &'a [Network], target: &'a [Network]) -> Vec<Change<'a, Network>> {
    let mut out = Vec::new();
    let mut updated = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for t in target {
        if let Some(c) = current
            .iter()
            .find(|c| c.name == t.name && !c.is_equal_config(t))
        {
            out.push(Change {
                current: Some(c),
                target: Some(t),
            });
            updated.insert(t.name.clone());
        }
    }
    for c in current {
        if !target.iter().any(|t| t.name == c.name) {
            out.push(Change {
                current: Some(c),
                target: None,
            });
            removed.insert(c.name.clone());
        }
    }
    // Duplicates (legacy `<appId>_x` next to `<uuid>_x`): keep the first, remove the rest.
    for (i, c) in current.iter().enumerate() {
        let dup = current.iter().position(|x| x.name == c.name) != Some(i);
        if dup && !updated.contains(&c.name) && !removed.contains(&c.name) {
            out.push(Change {
                current: Some(c),
                target: None,
            });
            removed.insert(c.name.clone());
        }
    }
    for t in target {
        if !current.iter().any(|c| c.name == t.name) {
            out.push(Change {
                current: None,
                target: Some(t),
            });
        }
    }
    out
}

fn compare_volumes<'a>(current: &'a [Volume], target: &'a [Volume]) -> Vec<Change<'a, Volume>> {
    // Volumes missing from the target are only removed with the whole app.
    let mut out = Vec::new();
    for t in target {
        match current.iter().find(|c| c.name == t.name) {
            Some(c) if !c.is_equal_config(t) => out.push(Change {
                current: Some(c),
                target: Some(t),
            }),
            Some(_) => {}
            None => out.push(Change {
                current: None,
                target: Some(t),
            }),
        }
    }
    out
}

/// Orders containers by creation time (seconds first: engine timestamps trim trailing zeros).
fn created_key(s: &Service) -> (i64, String) {
    let text = s.created_at.clone().unwrap_or_default();
    (rfc3339_seconds(&text).unwrap_or(0), text)
}

fn is_running(s: &Service) -> bool {
    s.config.running
}

fn created_after_boot(s: &Service, ctx: &Context) -> bool {
    s.created_at
        .as_deref()
        .and_then(rfc3339_seconds)
        .is_some_and(|t| t >= ctx.boot_time)
}

fn userland_proxy_race(current: &Service, target: &Service) -> bool {
    let e = current.exit_error.to_ascii_lowercase();
    current.status == ServiceStatus::Other("exited".into())
        && !current.config.running
        && target.config.running
        && e.contains("userland proxy")
        && e.ends_with("cannot assign requested address")
}

struct AppPlan<'a> {
    index: &'a Index<'a>,
    /// Every target image of the app is on the device.
    images_ready: bool,
    current: &'a CurrentApp,
    ctx: &'a Context,
    container_ids: BTreeMap<&'a str, &'a str>,
    network_changes: Vec<Change<'a, Network>>,
    volume_changes: Vec<Change<'a, Volume>>,
    pairs: Vec<Pair<'a>>,
    /// The app's update lock is ours (taken, or left over from before a restart).
    lock_held: bool,
    /// A step needed the lock while it was not held: `takeLock` comes first.
    lock_wanted: std::cell::Cell<bool>,
}

impl<'a> AppPlan<'a> {
    fn target_images_ready(&self) -> bool {
        self.images_ready
    }

    /// A step that needs the app's update lock: built when the lock is held; otherwise the
    /// lock is asked for and nothing is built (cloning services for a step that waits for
    /// `takeLock` would be thrown away).
    fn under_lock(&self, build: impl FnOnce() -> Step) -> Option<Step> {
        if self.lock_held {
            Some(build())
        } else {
            self.lock_wanted.set(true);
            None
        }
    }

    fn needs_special_kill(&self, s: &Service) -> bool {
        self.volume_changes
            .iter()
            .any(|c| c.current.is_some_and(|v| uses_volume(s, v)))
            || self
                .network_changes
                .iter()
                .any(|c| c.current.is_some_and(|n| uses_network(s, n)))
    }

    fn fetch_deps_met(&self, target: &Service) -> bool {
        // New services can always be fetched; otherwise services whose strategy kills first
        // must be gone before anything of the app downloads.
        if self.pairs.iter().any(|p| {
            p.current.is_none()
                && p.target
                    .is_some_and(|t| t.service_name == target.service_name)
        }) {
            return true;
        }
        !self.pairs.iter().any(|p| {
            let Some(c) = p.current else { return false };
            let strategy = strategy_of(p.target.unwrap_or(c));
            matches!(
                strategy,
                Strategy::KillThenDownload | Strategy::DeleteThenDownload
            ) && is_running(c)
        })
    }

    fn start_deps_met(&self, target: &Service) -> bool {
        // Dependencies created but not started, or still changing, hold the start back.
        let dep_not_running = self.current.services.iter().any(|c| {
            target.depends_on.contains(&c.service_name)
                && matches!(
                    c.status,
                    ServiceStatus::Installing | ServiceStatus::Installed
                )
        });
        if dep_not_running {
            return false;
        }
        let dep_changing = target.depends_on.iter().any(|d| {
            self.pairs
                .iter()
                .any(|p| p.target.is_some_and(|t| &t.service_name == d))
        });
        if dep_changing {
            return false;
        }
        if self
            .network_changes
            .iter()
            .any(|c| c.target.is_some_and(|n| uses_network(target, n)))
        {
            return false;
        }
        if self
            .volume_changes
            .iter()
            .any(|c| c.target.is_some_and(|v| uses_volume(target, v)))
        {
            return false;
        }
        self.target_images_ready()
    }

    fn fetch(&self, target: &Service) -> Step {
        Step::Fetch {
            image: ImageRef::for_service(target),
            service_name: target.service_name.clone(),
        }
    }

    fn kill(&self, current: &Service, reason: Vec<String>) -> Step {
        Step::Kill {
            current: Box::new(current.clone()),
            reason,
        }
    }

    fn recreate_reason(pair: &Pair<'_>, special_kill: bool) -> Vec<String> {
        if pair.target.is_none() {
            return vec!["not in target".into()];
        }
        let mut r: Vec<String> = pair.differences.iter().map(|d| d.to_string()).collect();
        if special_kill {
            r.push("network or volume changes".into());
        }
        r
    }

    /// Steps for one service pair (docs/contract/engine.md C.5).
    fn steps_for_pair(&self, pair: &Pair<'a>) -> Option<Step> {
        if let Some(c) = pair.current {
            if c.status == ServiceStatus::Stopping {
                return Some(Step::Noop);
            }
            if c.status == ServiceStatus::Dead {
                return None;
            }
        }
        let needs_download = pair.target.is_some_and(|t| !self.index.available(t));
        if let Some(t) = pair.target {
            if needs_download && self.ctx.downloading.contains(&t.image_name) {
                return Some(Step::Noop);
            }
        }
        let Some(current) = pair.current else {
            let target = pair.target?;
            return self.fetch_or_start(target, needs_download);
        };
        let special_kill = self.needs_special_kill(current);
        if let Some(t) = pair.target {
            if !special_kill && pair.differences.is_empty() {
                return self.container_step(current, t);
            }
        }
        let (strategy, start_deps) = match pair.target {
            Some(t) => (
                strategy_of(t),
                self.start_deps_met(t) && self.conditions_gate(t) == Gate::Open,
            ),
            None => (strategy_of(current), false),
        };
        let kill_deps = self.target_images_ready();
        let kill =
            || self.under_lock(|| self.kill(current, Self::recreate_reason(pair, special_kill)));
        match strategy {
            Strategy::DownloadThenKill => {
                if needs_download {
                    pair.target.map(|t| self.fetch(t))
                } else if kill_deps {
                    kill()
                } else {
                    Some(Step::Noop)
                }
            }
            Strategy::KillThenDownload | Strategy::DeleteThenDownload => kill(),
            Strategy::HandOver => {
                if needs_download {
                    pair.target.map(|t| self.fetch(t))
                } else if (special_kill || pair.target.is_none()) && kill_deps {
                    kill()
                } else if start_deps {
                    let t = pair.target?;
                    let timeout_ms = t
                        .label(HANDOVER_TIMEOUT)
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|v| *v > 0)
                        .unwrap_or(60_000);
                    self.under_lock(|| Step::Handover {
                        current: Box::new(current.clone()),
                        target: Box::new(t.clone()),
                        timeout_ms,
                    })
                } else {
                    Some(Step::Noop)
                }
            }
        }
    }

    fn fetch_or_start(&self, target: &Service, needs_download: bool) -> Option<Step> {
        if needs_download {
            if self.fetch_deps_met(target) {
                return Some(self.fetch(target));
            }
            return None;
        }
        if !self.start_deps_met(target) {
            return None;
        }
        match self.conditions_gate(target) {
            // The start of a new service waits for the lock too (v19).
            Gate::Open => self.under_lock(|| Step::Start {
                target: Box::new(target.clone()),
            }),
            Gate::Wait => Some(Step::Noop),
            Gate::Blocked(reason) => Some(Step::Blocked {
                service_name: target.service_name.clone(),
                reason,
            }),
        }
    }

    /// The `depends_on` conditions of `target` against the current dependencies (helios's
    /// `evaluate_condition`): `service_started` is `start_deps_met`'s; `service_healthy` wants
    /// a running dependency the engine calls healthy; `service_completed_successfully` one
    /// that exited with 0. Optional dependencies never hold a start back.
    fn conditions_gate(&self, target: &Service) -> Gate {
        for (name, dep) in &target.dependency_conditions {
            if !dep.required || dep.condition == Condition::ServiceStarted {
                continue;
            }
            let current = self
                .current
                .services
                .iter()
                .find(|c| &c.service_name == name);
            let gate = match current {
                None => Gate::Wait,
                Some(c) => condition_gate(name, dep.condition, c),
            };
            if gate != Gate::Open {
                return gate;
            }
        }
        Gate::Open
    }

    /// Same config: only the release or the running state differs (docs/contract/engine.md C.7).
    fn container_step(&self, current: &Service, target: &Service) -> Option<Step> {
        if current.commit != target.commit {
            if strategy_of(target) == Strategy::DownloadThenKill && !self.target_images_ready() {
                return Some(Step::Noop);
            }
            return self.under_lock(|| Step::UpdateMetadata {
                current: Box::new(current.clone()),
                target: Box::new(target.clone()),
            });
        }
        if target.config.running != current.config.running {
            if target.config.running {
                if labels::truthy(target.label(REQUIRES_REBOOT))
                    && created_after_boot(current, self.ctx)
                {
                    return (!self.ctx.reboot_breadcrumb).then(|| Step::RequireReboot {
                        service_name: target.service_name.clone(),
                    });
                }
                return Some(Step::Start {
                    target: Box::new(target.clone()),
                });
            }
            return self.under_lock(|| Step::Stop {
                current: Box::new(current.clone()),
            });
        }
        None
    }
}

/// Whether a dependent may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gate {
    Open,
    /// Not yet: look again (a healthcheck still starting, a job still running).
    Wait,
    /// Never, as things are: the reason.
    Blocked(String),
}

/// One condition against the dependency's current container.
fn condition_gate(name: &str, condition: Condition, dep: &Service) -> Gate {
    let running = dep.status == ServiceStatus::Running;
    match condition {
        Condition::ServiceStarted => Gate::Open,
        Condition::ServiceHealthy => match (running, dep.health.as_deref()) {
            (true, Some("healthy")) => Gate::Open,
            (true, Some("unhealthy")) => Gate::Blocked(format!("dependency '{name}' is unhealthy")),
            (true, None) => Gate::Blocked(format!(
                "dependency '{name}' has no healthcheck, so it can never be healthy"
            )),
            _ => Gate::Wait,
        },
        Condition::ServiceCompletedSuccessfully => match (running, dep.exit_code) {
            (false, Some(0)) if dep.status != ServiceStatus::Installed => Gate::Open,
            (false, Some(code)) if code != 0 => {
                Gate::Blocked(format!("dependency '{name}' exited with code {code}"))
            }
            _ => Gate::Wait,
        },
    }
}

/// Steps for one changing volume or network (docs/contract/engine.md C.3.6): a current component is
/// removed once no container uses it (its users are killed first, unless they are changing anyway
/// or already stopping); a new one is created.
fn component_steps_for<T>(
    change: &Change<'_, T>,
    plan: &AppPlan<'_>,
    changing: &BTreeSet<&str>,
    used_by: impl Fn(&Service, &T) -> bool,
    why: impl Fn(&T) -> String,
    remove: impl Fn(&T) -> Step,
    create: impl Fn(&T) -> Step,
) -> Vec<Step> {
    match (change.current, change.target) {
        (Some(cur), _) => {
            let users: Vec<&Service> = plan
                .current
                .services
                .iter()
                .filter(|s| used_by(s, cur))
                .collect();
            if users.is_empty() {
                return vec![remove(cur)];
            }
            users
                .into_iter()
                .filter(|d| {
                    d.status != ServiceStatus::Stopping
                        && !changing.contains(d.service_name.as_str())
                })
                .filter_map(|d| plan.under_lock(|| plan.kill(d, vec![why(cur)])))
                .collect()
        }
        (None, Some(t)) => vec![create(t)],
        (None, None) => vec![],
    }
}

/// Copies the legacy container's service id to the target so a preloaded legacy app is not
/// restarted (docs/contract/engine.md C.3.1).
fn migrate_legacy(current: &CurrentApp, target: &DesiredApp) -> Option<Vec<Service>> {
    if current.services.len() != 1 || target.services.len() != 1 {
        return None;
    }
    let (c, t) = (&current.services[0], &target.services[0]);
    if c.service_name != t.service_name || !labels::truthy(c.label(LEGACY_CONTAINER)) {
        return None;
    }
    let mut t = t.clone();
    t.config.labels.insert(
        LEGACY_CONTAINER.into(),
        c.label(LEGACY_CONTAINER).cloned().unwrap_or_default(),
    );
    t.config
        .labels
        .insert(SERVICE_ID.into(), c.service_id.to_string());
    t.service_id = c.service_id;
    Some(vec![t])
}

/// Steps that take one app towards its target (C.3), in v19's order: dead containers,
/// service removals, updates and installs, then volume and network changes; the app's lock
/// first when a step needs it; the release recorded once nothing is left.
pub(super) fn update_steps(
    current: &CurrentApp,
    target: &DesiredApp,
    ctx: &Context,
    index: &Index,
) -> Vec<Step> {
    let migrated;
    let target = match migrate_legacy(current, target) {
        Some(services) => {
            migrated = DesiredApp {
                services,
                ..target.clone()
            };
            &migrated
        }
        None => target,
    };
    let mut steps = dead_container_removals(current);
    let newest = newest_by_name(current);
    let mut plan = AppPlan {
        index,
        images_ready: target.services.iter().all(|s| index.available(s)),
        current,
        ctx,
        container_ids: container_ids(current),
        network_changes: compare_networks(&current.networks, &target.networks),
        volume_changes: compare_volumes(&current.volumes, &target.volumes),
        pairs: vec![],
        lock_held: ctx.locks_held.contains(&target.app_id)
            || ctx.leftover_locks.contains(&target.app_id),
        lock_wanted: std::cell::Cell::new(false),
    };
    // The real supervisor's order: removals, updates, installs.
    let updates = updated_pairs(&plan, target, &newest);
    plan.pairs = removed_pairs(current, target, &newest)
        .into_iter()
        .chain(updates)
        .chain(installed_pairs(target, &newest))
        .collect();

    // Service steps, then volumes and networks. Those that need the app's lock are built
    // through `AppPlan::under_lock`: held back (and the lock asked for) until it is ours.
    let planned = plan
        .pairs
        .iter()
        .filter_map(|pair| plan.steps_for_pair(pair));
    for step in planned.chain(component_steps(&plan)) {
        if !steps.contains(&step) {
            steps.push(step);
        }
    }
    debug_assert!(plan.lock_held || !steps.iter().any(Step::needs_lock));
    if plan.lock_wanted.get() {
        steps.insert(0, take_lock_step(current, target, ctx.force));
    }
    if steps.is_empty() {
        steps = converged_steps(current, target, plan.lock_held);
    }
    steps
}

/// Dead containers go first, whatever the target says.
fn dead_container_removals(current: &CurrentApp) -> Vec<Step> {
    current
        .services
        .iter()
        .filter(|s| s.status == ServiceStatus::Dead)
        .map(|s| Step::Remove {
            current: Box::new(s.clone()),
        })
        .collect()
}

/// Engine ids of the current containers by service name (for `service:` network modes).
fn container_ids(current: &CurrentApp) -> BTreeMap<&str, &str> {
    current
        .services
        .iter()
        .filter_map(|s| Some((s.service_name.as_str(), s.container_id.as_deref()?)))
        .collect()
}

/// C.4: services pair by name; of several containers of one service the newest counts.
fn newest_by_name(current: &CurrentApp) -> BTreeMap<&str, &Service> {
    let mut by_name: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in &current.services {
        by_name
            .entry(s.service_name.as_str())
            .and_modify(|kept| {
                if created_key(s) > created_key(kept) {
                    *kept = s;
                }
            })
            .or_insert(s);
    }
    by_name
}

/// Current services the target does not name, and the older duplicates of those it does.
fn removed_pairs<'a>(
    current: &'a CurrentApp,
    target: &DesiredApp,
    newest: &BTreeMap<&str, &Service>,
) -> Vec<Pair<'a>> {
    let in_target = |s: &Service| {
        target
            .services
            .iter()
            .any(|t| t.service_name == s.service_name)
    };
    current
        .services
        .iter()
        .filter(|s| !in_target(s) || !std::ptr::eq(newest[s.service_name.as_str()], *s))
        .map(|s| Pair {
            current: Some(s),
            target: None,
            differences: vec![],
        })
        .collect()
}

/// Target services with no container yet.
fn installed_pairs<'a>(target: &'a DesiredApp, newest: &BTreeMap<&str, &Service>) -> Vec<Pair<'a>> {
    target
        .services
        .iter()
        .filter(|t| !newest.contains_key(t.service_name.as_str()))
        .map(|t| Pair {
            current: None,
            target: Some(t),
            differences: vec![],
        })
        .collect()
}

/// C.4: pairs whose config, release or running state differs (or that must be killed for a
/// changing volume), each with its config differences.
fn updated_pairs<'a>(
    plan: &AppPlan<'a>,
    target: &'a DesiredApp,
    newest: &BTreeMap<&str, &'a Service>,
) -> Vec<Pair<'a>> {
    let mut updates = Vec::new();
    for t in &target.services {
        let Some(c) = newest.get(t.service_name.as_str()).copied() else {
            continue;
        };
        let differences = config_differences(&c.config, &t.config, &plan.container_ids);
        let equal = differences.is_empty();
        if !equal
            || c.commit != t.commit
            || should_start(c, t, equal, plan.ctx)
            || should_stop(c, t)
            || (c.config.running && c.status == ServiceStatus::Stopping)
            || plan.needs_special_kill(c)
        {
            updates.push(Pair {
                current: Some(c),
                target: Some(t),
                differences,
            });
        }
    }
    updates
}

/// A container of the same config and release that is not running but should: never
/// started, lost the userland-proxy race, or stopped by us.
fn should_start(c: &Service, t: &Service, equal: bool, ctx: &Context) -> bool {
    let stopped_by_us = c
        .container_id
        .as_ref()
        .is_some_and(|id| ctx.stopped_by_us.contains(id));
    t.config.running
        && !c.config.running
        && (matches!(
            c.status,
            ServiceStatus::Installing | ServiceStatus::Installed
        ) || userland_proxy_race(c, t)
            || stopped_by_us)
        && equal
        && c.commit == t.commit
}

fn should_stop(c: &Service, t: &Service) -> bool {
    !t.config.running && c.status != ServiceStatus::Other("exited".into()) && c.config.running
}

/// C.3.6: volumes, then networks; a changing component first loses its dependents.
fn component_steps(plan: &AppPlan<'_>) -> Vec<Step> {
    let changing: BTreeSet<&str> = plan
        .pairs
        .iter()
        .filter_map(|p| p.current.map(|c| c.service_name.as_str()))
        .collect();
    let mut steps = Vec::new();
    for c in &plan.volume_changes {
        steps.extend(component_steps_for(
            c,
            plan,
            &changing,
            uses_volume,
            |v| format!("volume {} changes", v.name),
            |v| Step::RemoveVolume { current: v.clone() },
            |v| Step::CreateVolume { target: v.clone() },
        ));
    }
    for c in &plan.network_changes {
        steps.extend(component_steps_for(
            c,
            plan,
            &changing,
            uses_network,
            |n| format!("network {} changes", n.name),
            |n| Step::RemoveNetwork { current: n.clone() },
            |n| Step::CreateNetwork { target: n.clone() },
        ));
    }
    steps
}

/// The app's lock over every service it has or will have.
fn take_lock_step(current: &CurrentApp, target: &DesiredApp, force: bool) -> Step {
    let services: BTreeSet<String> = current
        .services
        .iter()
        .chain(&target.services)
        .map(|s| s.service_name.clone())
        .collect();
    Step::TakeLock {
        app_id: target.app_id,
        services: services.into_iter().collect(),
        force,
    }
}

/// C.3.7: converged: record the release, release the lock.
fn converged_steps(current: &CurrentApp, target: &DesiredApp, locked: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(commit) = &target.commit {
        if current.commit.as_ref() != Some(commit) {
            steps.push(Step::UpdateCommit {
                app_id: target.app_id,
                commit: commit.clone(),
            });
        }
    }
    if locked {
        steps.push(Step::ReleaseLock {
            app_id: target.app_id,
        });
    }
    steps
}

/// Removal of an app that is no longer in the target, one phase per iteration (C.10).
pub(super) fn removal_steps(current: &CurrentApp, ctx: &Context) -> Vec<Step> {
    let locked =
        ctx.locks_held.contains(&current.app_id) || ctx.leftover_locks.contains(&current.app_id);
    if !current.services.is_empty() {
        if !locked {
            let services: BTreeSet<String> = current
                .services
                .iter()
                .map(|s| s.service_name.clone())
                .collect();
            return vec![Step::TakeLock {
                app_id: current.app_id,
                services: services.into_iter().collect(),
                force: ctx.force,
            }];
        }
        return current
            .services
            .iter()
            .map(|s| {
                if s.status == ServiceStatus::Stopping {
                    Step::Noop
                } else {
                    Step::Kill {
                        current: Box::new(s.clone()),
                        reason: vec!["app removed".into()],
                    }
                }
            })
            .collect();
    }
    if !current.networks.is_empty() {
        return current
            .networks
            .iter()
            .map(|n| Step::RemoveNetwork { current: n.clone() })
            .collect();
    }
    if !ctx.keep_volumes && !current.volumes.is_empty() {
        return current
            .volumes
            .iter()
            .map(|v| Step::RemoveVolume { current: v.clone() })
            .collect();
    }
    if locked {
        return vec![Step::ReleaseLock {
            app_id: current.app_id,
        }];
    }
    vec![]
}
