//! Local mode's engine bookkeeping (docs/contract/engine.md C.14): a snapshot of the engine's
//! objects when local mode begins, and on leaving it the removal of everything created since.

use crate::engine::Engine;
use log::{info, warn};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Names of the real supervisor's own container, never removed.
const SUPERVISOR_CONTAINERS: &[&str] = &["balena_supervisor", "resin_supervisor"];

/// Ids of every container, image and network and the names of every volume on the engine.
pub fn snapshot(engine: &Engine) -> crate::engine::Result<Value> {
    let containers: Vec<String> = engine
        .list_containers(true, &[])?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let images: Vec<String> = engine.list_images()?.into_iter().map(|i| i.id).collect();
    let volumes: Vec<String> = engine
        .list_volumes(&[])?
        .into_iter()
        .map(|v| v.name)
        .collect();
    let networks: Vec<String> = engine
        .list_networks(&[])?
        .into_iter()
        .map(|n| n.id)
        .collect();
    Ok(
        json!({"containers": containers, "images": images, "volumes": volumes, "networks": networks}),
    )
}

fn set_of<'a>(snapshot: &'a Value, key: &str) -> BTreeSet<&'a str> {
    snapshot[key]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Removes what is on the engine now but was not in `before`: containers (with their anonymous
/// volumes), networks, volumes, images, in that order. Errors are logged, not returned.
pub fn cleanup(engine: &Engine, before: &Value) {
    let Ok(now) = snapshot(engine) else {
        warn!("Local mode cleanup: the engine does not answer");
        return;
    };
    // The supervisor's own container and the engine's predefined networks (whose ids change
    // when the engine restarts) are never ours to remove.
    let mut keep: BTreeSet<String> = engine
        .list_containers(true, &[])
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            c.names
                .iter()
                .any(|n| SUPERVISOR_CONTAINERS.contains(&n.trim_start_matches('/')))
        })
        .map(|c| c.id)
        .collect();
    keep.extend(
        engine
            .list_networks(&[])
            .unwrap_or_default()
            .into_iter()
            .filter(|n| matches!(n.name.as_str(), "bridge" | "host" | "none"))
            .map(|n| n.id),
    );
    let mut removed = 0;
    for (key, remove) in [
        (
            "containers",
            &(|id: &str| engine.remove_container(id, true, true))
                as &dyn Fn(&str) -> crate::engine::Result<()>,
        ),
        ("networks", &|id: &str| engine.remove_network(id)),
        ("volumes", &|name: &str| engine.remove_volume(name, true)),
        ("images", &|id: &str| {
            engine.remove_image(id, true).map(drop)
        }),
    ] {
        let old = set_of(before, key);
        for item in set_of(&now, key) {
            if old.contains(item) || keep.contains(item) {
                continue;
            }
            match remove(item) {
                Ok(()) => removed += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => warn!("Local mode cleanup: cannot remove {key} {item}: {e}"),
            }
        }
    }
    info!("Local mode cleanup removed {removed} engine objects");
}
