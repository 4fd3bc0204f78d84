//! One builder for the targets the integration tests send: the local (v2) form that
//! `POST /v2/local/target-state` and `tinyvisor apply` take, and the cloud's v3 form.

use serde_json::{json, Value};

/// A service command that sleeps until stopped and exits 0 on TERM.
pub const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// `extra`'s fields over `base`'s (one level deep; objects in `extra` replace whole).
pub fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    base
}

/// A local (v2) service of the test busybox image that sleeps until stopped.
pub fn local_service(id: u32, name: &str, extra: Value) -> Value {
    let base = json!({
        "serviceName": name, "serviceId": id, "imageId": id, "image": super::BUSYBOX,
        "running": true, "environment": {}, "labels": {}, "init": true,
        "command": ["sh", "-c", SLEEPER]
    });
    merged(base, extra)
}

/// The app a local target holds.
pub struct LocalApp<'a> {
    pub device: &'a str,
    pub id: u32,
    pub name: &'a str,
    pub commit: &'a str,
    pub volumes: Value,
}

/// A local (v2) target of one app with `services` (keyed by their `serviceId`).
pub fn local_target(app: LocalApp, services: Vec<Value>) -> Value {
    let services: serde_json::Map<String, Value> = services
        .into_iter()
        .map(|s| (s["serviceId"].to_string(), s))
        .collect();
    json!({"local": {"name": app.device, "config": {}, "apps": {app.id.to_string(): {
        "name": app.name, "commit": app.commit, "releaseId": 1, "services": services,
        "volumes": app.volumes, "networks": {}}}}})
}

/// A v3 service of `image` that sleeps until stopped (`init`, the sleeper command);
/// `extra`'s fields over these, and `extra.composition`'s over the composition's.
pub fn v3_service(id: u32, image: &str, extra: Value) -> Value {
    let composition = merged(
        json!({"init": true, "command": ["sh", "-c", SLEEPER]}),
        extra.get("composition").cloned().unwrap_or(json!({})),
    );
    let mut s = merged(
        json!({"id": id, "image_id": id, "image": image, "running": true,
            "environment": {}, "labels": {}}),
        extra,
    );
    s["composition"] = composition;
    s
}

/// A fleet app of a v3 document with one release (`services` by name).
pub fn v3_app(id: u32, name: &str, commit: &str, services: Value, volumes: Value) -> Value {
    json!({"id": id, "name": name, "class": "fleet",
        "releases": {commit: {"id": 1, "services": services, "volumes": volumes,
            "networks": {}}}})
}

/// The cloud's v3 document for device `uuid`, `apps` by app uuid.
pub fn v3_target(uuid: &str, device: &str, apps: Value) -> Value {
    json!({uuid: {"name": device, "config": {}, "apps": apps}})
}
