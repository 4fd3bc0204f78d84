//! Turns a validated target state into the planner's target apps: services built through the
//! compose mapping with the device's context and the engine's image defaults, the implicit
//! `default` network, and the supervisor's own service left out (docs/contract/engine.md C.1,
//! C.13).

use crate::compose::contracts::{self, Universe};
use crate::compose::labels;
use crate::compose::service::{DeviceContext, ImageDefaults, ServiceOrigin};
use crate::compose::target::{is_supervisor, TargetApp, TargetState};
use crate::compose::{Network, Service, Volume};
use crate::planner::DesiredApp;

/// The target apps, and what the contract check had to say about them.
pub struct Targets {
    pub apps: Vec<DesiredApp>,
    /// System-log lines, worded as the real supervisor words them.
    pub messages: Vec<String>,
}

/// Builds the planner's view of every app in `state`. `image_defaults` looks an image up on
/// the engine (None when it is not there yet); `api_key` gives a service's scoped API key.
/// Services whose contract the device does not meet are dropped when optional, and reject
/// their app otherwise (docs/contract/engine.md (g)).
pub fn target_apps(
    state: &TargetState,
    device: &DeviceContext,
    universe: &Universe,
    image_defaults: &dyn Fn(&str) -> Option<ImageDefaults>,
    api_key: &dyn Fn(i64, &str) -> Option<String>,
) -> Targets {
    let mut messages = Vec::new();
    let mut rejected_lines = Vec::new();
    let mut apps = Vec::new();
    for app in state.apps.values() {
        let mut unmet_required = Vec::new();
        let mut unmet_optional = Vec::new();
        for (name, svc) in app.release.iter().flat_map(|r| &r.services) {
            if let Some(c) = &svc.contract {
                if !contracts::satisfied(c, universe) {
                    let optional = labels::truthy(svc.labels.get("io.balena.features.optional"))
                        || labels::truthy(
                            svc.composition.labels.get("io.balena.features.optional"),
                        );
                    if optional {
                        unmet_optional.push(name.clone());
                    } else {
                        unmet_required.push(name.clone());
                    }
                }
            }
        }
        if !unmet_optional.is_empty() {
            messages.push(format!(
                "Not running containers because of contract violations: {}",
                unmet_optional.join(". ")
            ));
        }
        let mut target = target_app(app, device, image_defaults, api_key, &unmet_optional);
        if app.is_host && target.services.is_empty() {
            // Nothing of the host OS release runs on the engine (the host OS step installs
            // it): no app for the planner, so no release is recorded as applied either.
            continue;
        }
        if !unmet_required.is_empty() {
            rejected_lines.push(format!(
                "  {}: Services with unmet requirements: {}",
                app.name,
                unmet_required.join(", ")
            ));
            target.rejected = true;
        }
        apps.push(target);
    }
    if !rejected_lines.is_empty() {
        messages.push(format!(
            "Some releases were rejected due to having unmet requirements:\n{}",
            rejected_lines.join("\n")
        ));
    }
    Targets { apps, messages }
}

/// Host apps run only their data-store service images as containers (v19); the class and
/// store may come in the service's labels (image labels, as the cloud sends them) or in its
/// composition labels (as helios reads the class): either one rules a service out.
fn host_app_runs(svc: &crate::compose::target::TargetService) -> bool {
    [&svc.labels, &svc.composition.labels].iter().all(|labels| {
        let class = labels.get("io.balena.image.class").map(String::as_str);
        let store = labels.get("io.balena.image.store").map(String::as_str);
        matches!(class, None | Some("service")) && matches!(store, None | Some("data"))
    })
}

fn target_app(
    app: &TargetApp,
    device: &DeviceContext,
    image_defaults: &dyn Fn(&str) -> Option<ImageDefaults>,
    api_key: &dyn Fn(i64, &str) -> Option<String>,
    skip: &[String],
) -> DesiredApp {
    let mut services = Vec::new();
    let mut networks = Vec::new();
    let mut volumes = Vec::new();
    if let Some(rel) = &app.release {
        for (name, svc) in &rel.services {
            if is_supervisor(&app.uuid, name) || skip.contains(name) {
                continue;
            }
            if app.is_host && !host_app_runs(svc) {
                continue;
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
    DesiredApp {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::target::parse_device_target;
    use serde_json::{json, Value};

    fn build(apps: Value) -> Targets {
        let state = parse_device_target(&json!({"name": "d", "config": {}, "apps": apps})).unwrap();
        let universe = Universe {
            supervisor_version: crate::SUPERVISOR_VERSION.into(),
            device_type: "raspberrypi3".into(),
            arch: "armv7hf".into(),
            ..Default::default()
        };
        target_apps(
            &state,
            &DeviceContext::default(),
            &universe,
            &|_| None,
            &|_, _| None,
        )
    }

    fn svc(id: i64, extra: Value) -> Value {
        let mut s = json!({"id": id, "image_id": id, "image": format!("img{id}")});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    }

    #[test]
    fn g4_unmet_optional_service_is_dropped_and_the_app_stays_valid() {
        let t = build(
            json!({"u1": {"id": 1, "name": "fleet", "releases": {"c1": {"id": 1, "services": {
            "main": svc(1, json!({})),
            "gpu": svc(2, json!({"labels": {"io.balena.features.optional": "1"},
                "contract": {"requires": [{"type": "hw.device-type", "slug": "jetson-nano"}]}}))}}}}}),
        );
        let app = &t.apps[0];
        assert!(!app.rejected);
        assert_eq!(
            app.services
                .iter()
                .map(|s| s.service_name.as_str())
                .collect::<Vec<_>>(),
            ["main"]
        );
        assert_eq!(
            t.messages,
            ["Not running containers because of contract violations: gpu"]
        );
    }

    #[test]
    fn g5_unmet_required_service_rejects_the_app() {
        let t = build(
            json!({"u1": {"id": 1, "name": "fleet", "releases": {"c1": {"id": 1, "services": {
            "main": svc(1, json!({"contract": {"requires": [{"type": "sw.supervisor", "version": ">=20"}]}})),
            "ok": svc(2, json!({"contract": {"requires": [{"type": "sw.supervisor", "version": "^19"}, {"type": "arch.sw", "slug": "armv7hf"}]}}))}}}}}),
        );
        assert!(t.apps[0].rejected);
        assert_eq!(
            t.messages,
            ["Some releases were rejected due to having unmet requirements:\n  fleet: Services with unmet requirements: main"]
        );
    }

    #[test]
    fn c13_the_supervisor_itself_is_never_managed() {
        let t = build(
            json!({"2e66a95795c149959c69472a8c2f92b8": {"id": 2, "name": "balena-supervisor", "class": "app",
            "releases": {"c9": {"id": 9, "services": {"balena-supervisor": svc(1, json!({}))}}}}}),
        );
        assert!(t.apps[0].services.is_empty());
        // v19's composition: tinyvisor is all three, so none is installed beside it.
        let t = build(
            json!({"52e35121417640b1b28a680504e4039b": {"id": 2, "name": "amd64-supervisor", "class": "app",
            "releases": {"c19": {"id": 9, "services": {
                "core": svc(1, json!({})), "core-next": svc(2, json!({})), "service-relay": svc(3, json!({}))}}}},
            "u1": {"id": 1, "name": "fleet", "releases": {"c1": {"id": 1, "services": {"main": svc(4, json!({}))}}}}}),
        );
        let installed: Vec<&str> = t
            .apps
            .iter()
            .flat_map(|a| &a.services)
            .map(|s| s.service_name.as_str())
            .collect();
        assert_eq!(installed, ["main"]);
    }

    #[test]
    fn j27_default_network_is_config_only_when_every_service_uses_the_host_network() {
        let t = build(
            json!({"u1": {"id": 1, "name": "a", "releases": {"c1": {"id": 1, "services": {
            "main": svc(1, json!({"composition": {"network_mode": "host"}}))}}}}}),
        );
        let net = &t.apps[0].networks[0];
        assert_eq!(net.name, "default");
        assert!(net.config.config_only);
        let t = build(
            json!({"u1": {"id": 1, "name": "a", "releases": {"c1": {"id": 1, "services": {"main": svc(1, json!({}))}}}}}),
        );
        assert!(!t.apps[0].networks[0].config.config_only);
    }

    #[test]
    fn c12_host_apps_run_only_data_store_services() {
        let t = build(
            json!({"h1": {"id": 3, "name": "os", "class": "app", "is_host": true, "releases": {"c1": {"id": 1, "services": {
            "hostos": svc(1, json!({"labels": {"io.balena.image.class": "fileset", "io.balena.image.store": "root"}})),
            "extension": svc(2, json!({"labels": {"io.balena.image.class": "service"}}))}}}}}),
        );
        let names: Vec<_> = t.apps[0]
            .services
            .iter()
            .map(|s| s.service_name.as_str())
            .collect();
        assert_eq!(names, ["extension"]);
    }

    #[test]
    fn c12_a_hostapp_class_in_composition_labels_is_never_a_container() {
        let t = build(
            json!({"h1": {"id": 3, "name": "os", "class": "app", "is_host": true, "releases": {"c1": {"id": 1, "services": {
            "hostapp": svc(1, json!({"labels": {"io.balena.private.updater": "reg/updater"},
                "composition": {"labels": {"io.balena.image.class": "hostapp"}}}))}}}}}),
        );
        assert!(
            t.apps.is_empty(),
            "nothing on the engine for a host-only app"
        );
    }

    #[test]
    fn app_without_release_has_no_services_and_no_commit() {
        let t = build(json!({"u1": {"id": 1, "name": "a", "releases": {}}}));
        assert!(t.apps[0].services.is_empty());
        assert_eq!(t.apps[0].commit, None);
    }
}
