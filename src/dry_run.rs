//! `tinyvisor plan`: what a target state would do to this device, without doing it.

use crate::compose::hostapp::{host_target, HostTarget};
use crate::compose::service::ImageDefaults;
use crate::compose::target::{
    parse_device_target, parse_v2_local, parse_v3, TargetError, TargetState,
};
use crate::config::Settings;
use crate::engine::Engine;
use crate::planner::hostos::{decide, HostFacts, HostStep};
use crate::planner::simulate::Simulation;
use crate::planner::{Context, CurrentApp, EngineImage, ImageRef, Step};
use crate::state::device::{device_context, universe};
use crate::state::hostos;
use crate::state::target::target_apps;
use crate::state::EngineSnapshot;
use serde_json::{json, Value};
use std::path::Path;

/// Most iterations shown; a target that needs more is reported as not converging.
const MAX_ITERATIONS: usize = 50;

/// Where the current state comes from.
pub enum CurrentSource<'a> {
    Engine(&'a Engine),
    Empty,
    /// A JSON file: an array of container inspect objects, or
    /// `{"containers": [...], "networks": [...], "volumes": [...]}`.
    File(&'a Path),
}

/// Reads any of the accepted target formats: a v3 document keyed by device uuid, the device
/// object alone, or the v2 local-mode format.
pub fn parse_target(doc: &Value, uuid: Option<&str>) -> Result<TargetState, TargetError> {
    let Some(obj) = doc.as_object() else {
        return parse_device_target(doc);
    };
    if obj.contains_key("local") {
        return parse_v2_local(doc);
    }
    if obj.contains_key("apps") {
        return parse_device_target(doc);
    }
    match uuid {
        Some(u) if obj.contains_key(u) => parse_v3(doc, u),
        _ if obj.len() == 1 => {
            let only = obj.keys().next().cloned().unwrap_or_default();
            parse_v3(doc, &only)
        }
        _ => parse_v3(doc, uuid.unwrap_or_default()),
    }
}

pub struct DryRun {
    pub iterations: Vec<Vec<Step>>,
    pub converged: bool,
    pub warnings: Vec<String>,
    /// What the host OS release of the target would do (none named: `None`).
    pub host_os: Option<HostOsPlan>,
    /// The trial each release labelled `io.tinyvisor.rollback.window` would go through.
    pub trials: Vec<String>,
    /// Releases that would switch only in a window or at the next boot (the iterations show
    /// the switch as it will be done then).
    pub waits: Vec<String>,
}

/// One line per app whose new release waits to switch (docs/windows.md).
fn wait_plans(settings: &Settings, state: &TargetState, current: &[CurrentApp]) -> Vec<String> {
    use crate::planner::window::{hold, human_duration, pending_switch, Hold};
    let now = crate::logs::now_ms() / 1000;
    let zone = crate::localtime::Zone::of_host(&settings.paths.root_mountpoint);
    let second_of_day = zone.local(now).rem_euclid(86_400) as u32;
    let mut out = Vec::new();
    for (uuid, app) in &state.apps {
        let running = current
            .iter()
            .find(|a| &a.app_uuid == uuid)
            .and_then(|a| a.services.iter().find_map(|s| s.commit.as_deref()));
        let Some((p, commit)) = pending_switch(app, running) else {
            continue;
        };
        let when = match hold(&p, second_of_day, false) {
            Hold::Switch => "switches now (its window is open)".to_string(),
            Hold::UntilWindow { window, in_secs } => format!(
                "is downloaded now and switches in window {window} (opens in {})",
                human_duration(in_secs)
            ),
            Hold::UntilReboot => "is downloaded now and switches at the next boot".to_string(),
        };
        out.push(format!("wait: release {} of {} {when}", commit, app.name));
    }
    out
}

/// One line per app whose release asks for a trial: its window and what a failure would put
/// back (the release the app's containers run now).
fn trial_plans(state: &TargetState, current: &[CurrentApp]) -> Vec<String> {
    let mut out = Vec::new();
    for (uuid, app) in &state.apps {
        let (Some(window_ms), Some(rel)) = (crate::planner::trial::window_ms(app), &app.release)
        else {
            continue;
        };
        let running = current
            .iter()
            .find(|a| &a.app_uuid == uuid)
            .and_then(|a| a.services.iter().find_map(|s| s.commit.clone()))
            .filter(|c| c != &rel.commit);
        let fallback = match running {
            Some(c) => format!("a failure rolls back to release {c}"),
            None => "nothing to roll back to (first install)".to_string(),
        };
        out.push(format!(
            "trial: release {} of {} runs on trial for {}s once all its services run; {fallback}",
            rel.commit,
            app.name,
            window_ms / 1000
        ));
    }
    out
}

/// The host OS step of a dry run, with a one-line summary.
pub struct HostOsPlan {
    pub step: &'static str,
    pub summary: String,
}

/// The host OS step the target would cause now (the attempt count, kept in the database, is
/// not read: a first attempt is shown).
fn host_os_plan(settings: &Settings, state: &TargetState) -> Option<HostOsPlan> {
    let host = match host_target(state) {
        HostTarget::None => return None,
        HostTarget::Rejected { app_uuid, reason } => {
            return Some(HostOsPlan {
                step: "rejected",
                summary: format!("host OS release of app {app_uuid} rejected: {reason}"),
            })
        }
        HostTarget::Install(h) => h,
    };
    let build = hostos::current_build(&settings.paths.host_os_version_path);
    let facts = HostFacts {
        current_build: build.as_deref(),
        installed: hostos::breadcrumb(&settings.paths.root_mountpoint, &host.release_uuid).exists(),
        updater_running: false,
        now: 0,
    };
    let release = &host.release_uuid;
    Some(match decide(&host, None, &facts) {
        HostStep::Running => HostOsPlan {
            step: "running",
            summary: format!("host OS release {release} (build {}) is running", host.build),
        },
        HostStep::NoBuild => HostOsPlan {
            step: "noBuild",
            summary: format!(
                "host OS release {release} is not installed: the running OS names no build (no BALENA_BOARD_REV in its os-release)"
            ),
        },
        HostStep::AwaitReboot => HostOsPlan {
            step: "awaitReboot",
            summary: format!("host OS release {release} is installed; waiting for the device to reboot"),
        },
        _ => HostOsPlan {
            step: "install",
            summary: format!(
                "install host OS release {release} (build {} over {}): pull {}, copy its /app to /tmp/balenahup, run {} as {} (the updater reboots the device)",
                host.build,
                build.as_deref().unwrap_or("an unknown build"),
                host.updater,
                hostos::updater_command(&host).join(" "),
                hostos::UNIT,
            ),
        },
    })
}

/// Plans every iteration from the current state to the target on an in-memory copy.
pub fn dry_run(
    settings: &Settings,
    target_doc: &Value,
    current: CurrentSource,
) -> Result<DryRun, String> {
    let uuid = settings.config_json.get_str("uuid");
    let state = parse_target(target_doc, uuid.as_deref())
        .map_err(|e| format!("invalid target state: {e}"))?;
    let mut warnings = Vec::new();
    for app in state.apps.values() {
        for (name, svc) in app.release.iter().flat_map(|r| &r.services) {
            if !svc.composition.ignored.is_empty() {
                warnings.push(format!(
                    "{name}: Ignoring unsupported or unknown compose fields: {}",
                    svc.composition.ignored.join(", ")
                ));
            }
        }
    }
    let device = device_context(settings, &state.name);

    let (snapshot, engine) = match current {
        CurrentSource::Engine(e) => (
            EngineSnapshot::read(e).map_err(|err| format!("cannot read the engine: {err}"))?,
            Some(e),
        ),
        CurrentSource::Empty => (EngineSnapshot::default(), None),
        CurrentSource::File(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: invalid JSON: {e}", p.display()))?;
            // A bare array is a list of container inspects. Parsed again from bytes, as the
            // engine client parses its answers, rather than from the `Value` or a `&str`: the
            // engine types then need one deserializer in the binary, not two (some 60 KB on
            // armv6).
            let bytes = if v.is_array() {
                json!({ "containers": v }).to_string().into_bytes()
            } else {
                bytes
            };
            let snap: EngineSnapshot = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not engine objects: {e}", p.display()))?;
            (snap, None)
        }
    };
    let image_defaults = |name: &str| -> Option<ImageDefaults> {
        engine
            .and_then(|e| e.inspect_image(name).ok())
            .map(|i| ImageDefaults::from_inspect(&i))
    };
    let universe = universe(settings);
    let built = target_apps(&state, &device, &universe, &image_defaults, &|_, _| None);
    warnings.extend(built.messages);
    let targets = built.apps;
    let mut current_apps: Vec<CurrentApp> = snapshot.current_apps();
    let trials = trial_plans(&state, &current_apps);
    let waits = wait_plans(settings, &state, &current_apps);

    // Without the database, images on the engine count as recorded and an app's release is
    // the one its containers are named after.
    for app in &mut current_apps {
        let commits: Vec<&String> = app
            .services
            .iter()
            .filter_map(|s| s.commit.as_ref())
            .collect();
        if !commits.is_empty() && commits.iter().all(|c| *c == commits[0]) {
            app.commit = Some(commits[0].clone());
        }
    }
    let mut ctx = Context {
        supervisor_network_ready: true,
        extra_firmware_ready: true,
        keep_images: settings.config_json.unmanaged(),
        keep_volumes: settings.config_json.unmanaged(),
        engine_images: snapshot.images.clone(),
        ..Default::default()
    };
    for svc in targets.iter().flat_map(|t| &t.services) {
        if let Some(found) = find_image(&snapshot.images, &svc.image_name, &svc.config.image) {
            let mut r = ImageRef::for_service(svc);
            r.docker_image_id = Some(found.id.clone());
            ctx.available_images.push(r);
        }
    }
    for svc in current_apps.iter().flat_map(|a| &a.services) {
        if !ctx
            .available_images
            .iter()
            .any(|i| i.docker_image_id.as_deref() == Some(&svc.config.image))
        {
            let mut r = ImageRef::for_service(svc);
            r.docker_image_id = Some(svc.config.image.clone());
            ctx.available_images.push(r);
        }
    }
    let mut sim = Simulation::new(current_apps, ctx);
    let (iterations, converged) = sim.run(&targets, MAX_ITERATIONS);
    Ok(DryRun {
        iterations,
        converged,
        warnings,
        host_os: host_os_plan(settings, &state),
        trials,
        waits,
    })
}

fn find_image<'a>(images: &'a [EngineImage], name: &str, id: &str) -> Option<&'a EngineImage> {
    let with_tag = if name.contains('@')
        || name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        name.to_string()
    } else {
        format!("{name}:latest")
    };
    images
        .iter()
        .find(|i| i.id == id || i.references.iter().any(|r| *r == name || *r == with_tag))
}

impl DryRun {
    pub fn human(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        if let Some(h) = &self.host_os {
            out.push_str(&format!("{}\n", h.summary));
        }
        for w in &self.waits {
            out.push_str(&format!("{w}\n"));
        }
        if self.iterations.is_empty() {
            let host_pending = self.host_os.as_ref().is_some_and(|h| h.step == "install");
            out.push_str(if host_pending {
                "nothing to do for the apps\n"
            } else {
                "nothing to do: the device already matches the target\n"
            });
        }
        for (i, steps) in self.iterations.iter().enumerate() {
            out.push_str(&format!("iteration {}:\n", i + 1));
            for s in steps {
                out.push_str(&format!("  {s}\n"));
            }
        }
        for t in &self.trials {
            out.push_str(&format!("{t}\n"));
        }
        if !self.converged {
            out.push_str(&format!(
                "not converged after {MAX_ITERATIONS} iterations\n"
            ));
        }
        out
    }

    pub fn json(&self) -> Value {
        let iterations: Vec<Value> = self
            .iterations
            .iter()
            .map(|steps| {
                Value::Array(
                    steps
                        .iter()
                        .map(|s| {
                            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                            v["summary"] = json!(s.to_string());
                            v
                        })
                        .collect(),
                )
            })
            .collect();
        let host_os = self
            .host_os
            .as_ref()
            .map(|h| json!({"step": h.step, "summary": h.summary}));
        json!({ "converged": self.converged, "warnings": self.warnings, "iterations": iterations,
            "hostOS": host_os, "trials": self.trials, "waits": self.waits })
    }
}
