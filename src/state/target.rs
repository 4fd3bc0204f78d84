//! Turns a validated target state into the planner's target apps: services built through the
//! compose mapping with the device's context and the engine's image defaults, the implicit
//! `default` network, and the supervisor's own service left out (engine.md C.1, C.13).

use crate::compose::labels;
use crate::compose::service::{DeviceContext, ImageDefaults, ServiceOrigin};
use crate::compose::target::{TargetApp as TargetSpec, TargetState};
use crate::compose::{Network, Service, Volume};
use crate::planner::TargetApp;

/// The real supervisor's own app uuids (per architecture) and service names.
const SUPERVISOR_APP_UUIDS: &[&str] = &[
    "52e35121417640b1b28a680504e4039b",
    "900de4f3cbac4b9bbd232885a35e407b",
    "2e66a95795c149959c69472a8c2f92b8",
    "531b357e155c480cbec0fdd33041a1f5",
    "6822565f766e413e96d9bebe2227cdcc",
];

pub fn is_supervisor(app_uuid: &str, service_name: &str) -> bool {
    SUPERVISOR_APP_UUIDS.contains(&app_uuid)
        && matches!(service_name, "main" | "balena-supervisor" | "core")
}

/// Builds the planner's view of every app in `state`. `image_defaults` looks an image up on
/// the engine (None when it is not there yet); `api_key` gives a service's scoped API key.
pub fn target_apps(
    state: &TargetState,
    device: &DeviceContext,
    image_defaults: &dyn Fn(&str) -> Option<ImageDefaults>,
    api_key: &dyn Fn(i64, &str) -> Option<String>,
) -> Vec<TargetApp> {
    state
        .apps
        .values()
        .map(|app| target_app(app, device, image_defaults, api_key))
        .collect()
}

fn target_app(
    app: &TargetSpec,
    device: &DeviceContext,
    image_defaults: &dyn Fn(&str) -> Option<ImageDefaults>,
    api_key: &dyn Fn(i64, &str) -> Option<String>,
) -> TargetApp {
    let mut services = Vec::new();
    let mut networks = Vec::new();
    let mut volumes = Vec::new();
    if let Some(rel) = &app.release {
        for (name, svc) in &rel.services {
            if is_supervisor(&app.uuid, name) {
                continue;
            }
            if app.is_host {
                // Host apps run only their data-store service images.
                let class = svc.labels.get("io.balena.image.class").map(String::as_str);
                let store = svc.labels.get("io.balena.image.store").map(String::as_str);
                if !matches!(class, None | Some("service")) || !matches!(store, None | Some("data"))
                {
                    continue;
                }
            }
            let with_api = labels::truthy(svc.labels.get("io.balena.features.supervisor-api"))
                || labels::truthy(
                    svc.composition
                        .labels
                        .get("io.balena.features.supervisor-api"),
                );
            let origin = ServiceOrigin {
                app_id: app.id,
                app_uuid: app.uuid.clone(),
                app_name: app.name.clone(),
                release_id: rel.id,
                commit: rel.commit.clone(),
                service_name: name.clone(),
                api_key: if with_api {
                    api_key(app.id, name)
                } else {
                    None
                },
            };
            let image = image_defaults(&svc.image);
            services.push(Service::from_target(svc, &origin, device, image.as_ref()));
        }
        for (name, spec) in &rel.networks {
            // Specs were validated when the target was parsed.
            if let Ok(n) = Network::from_target(name, spec, app.id, &app.uuid) {
                networks.push(n);
            }
        }
        for (name, spec) in &rel.volumes {
            if let Ok(v) = Volume::from_target(name, spec, app.id, &app.uuid, name) {
                volumes.push(v);
            }
        }
    }
    if !networks.iter().any(|n: &Network| n.name == "default") {
        let all_host = services
            .iter()
            .all(|s: &Service| s.config.network_mode == "host");
        networks.push(Network::default_for(app.id, &app.uuid, all_host));
    }
    TargetApp {
        app_id: app.id,
        app_uuid: app.uuid.clone(),
        name: app.name.clone(),
        commit: app.release.as_ref().map(|r| r.commit.clone()),
        services,
        networks,
        volumes,
        rejected: false,
    }
}
