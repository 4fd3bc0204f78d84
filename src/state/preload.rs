//! apps.json preload (docs/contract/engine.md A.8, docs/contract/cloud-api.md §4.1): on a device
//! with no stored target, a target shipped in `$DATA_MOUNTPOINT/apps.json` (images preloaded into
//! the engine) is stored and applied without downloads, then the file is retired so it is used only
//! once.

use crate::compose::target::{parse_device_target, TargetApp, TargetRelease};
use crate::compose::ImageRef;
use crate::db::Db;
use crate::engine::Engine;
use crate::fsutil::write_atomic;
use log::{info, warn};
use serde_json::{json, Value};
use std::path::Path;

/// `repo` → `repo:latest`; references with a tag or digest are kept.
/// The `image` row of service `name` of a target release, on the engine as `docker_image_id`
/// (a preloaded or bundled image, which no pull recorded).
pub(super) fn image_row(
    app: &TargetApp,
    rel: &TargetRelease,
    name: &str,
    docker_image_id: Option<String>,
) -> ImageRef {
    let svc = &rel.services[name];
    ImageRef {
        name: normalise_image_name(&svc.image),
        app_id: app.id,
        app_uuid: app.uuid.clone(),
        service_id: svc.id,
        service_name: name.to_string(),
        image_id: svc.image_id,
        release_id: rel.id,
        commit: rel.commit.clone(),
        docker_image_id,
    }
}

pub fn normalise_image_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Preloads `apps.json` from `data_dir` into `db` under `source`. Returns whether a target was
/// stored. Missing file: nothing. Invalid file: logged, nothing stored, file left in place.
pub fn preload(data_dir: &Path, db: &mut Db, engine: &Engine, source: &str) -> bool {
    let path = data_dir.join("apps.json");
    if !path.is_file() {
        return false;
    }
    match try_preload(&path, db, engine, source) {
        Ok(stored) => stored,
        Err(e) => {
            warn!("apps.json preload failed: {e}");
            false
        }
    }
}

fn try_preload(path: &Path, db: &mut Db, engine: &Engine, source: &str) -> Result<bool, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_slice(&raw)
        .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    if doc.is_array() {
        return Err("legacy (v1) apps.json is not supported".into());
    }
    let apps = doc.get("apps").cloned().unwrap_or(json!({}));
    let config = doc.get("config").cloned().unwrap_or(json!({}));
    let empty = |v: &Value| v.as_object().is_none_or(|m| m.is_empty());
    if empty(&apps) && empty(&config) {
        return Ok(false);
    }
    if apps
        .as_object()
        .is_some_and(|m| m.keys().all(|k| k.bytes().all(|b| b.is_ascii_digit())))
        && !empty(&apps)
    {
        return Err("Cannot migrate from v2 apps.json without Internet connectivity".into());
    }
    let state = parse_device_target(&json!({"name": "", "config": config, "apps": apps}))
        .map_err(|e| e.to_string())?;
    for (uuid, app) in &state.apps {
        if app.release.is_none() {
            return Err(format!(
                "apps.{uuid}: a preloaded app needs exactly one release"
            ));
        }
    }
    // The images were loaded into the engine with the OS image: record them as present.
    for app in state.apps.values() {
        let Some(rel) = &app.release else { continue };
        for (name, svc) in &rel.services {
            let docker_image_id = engine.inspect_image(&svc.image).ok().map(|i| i.id);
            db.upsert_image(&image_row(app, rel, name, docker_image_id))
                .map_err(|e| e.to_string())?;
        }
    }
    if doc.get("pinDevice").and_then(Value::as_bool) == Some(true) {
        if let Some(app) = state
            .apps
            .values()
            .find(|a| a.class == crate::compose::target::AppClass::Fleet)
        {
            let pin =
                json!({"app": app.id, "commit": app.release.as_ref().map(|r| r.commit.clone())});
            db.config_set("pinDevice", Some(&pin.to_string()))
                .map_err(|e| e.to_string())?;
        }
    }
    db.save_target(&state, source).map_err(|e| e.to_string())?;
    // Used once: renamed, and an empty file left so the OS does not provide it again.
    let preloaded = path.with_file_name("apps.json.preloaded");
    if !preloaded.exists() {
        std::fs::rename(path, &preloaded)
            .map_err(|e| format!("cannot rename {}: {e}", path.display()))?;
        write_atomic(path, b"{}").map_err(|e| e.to_string())?;
    }
    info!(
        "Preloading applications from apps.json: {} app(s)",
        state.apps.len()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn engine() -> Engine {
        // Never reached in these tests' happy paths that need no image ids.
        Engine::new("/nonexistent/engine.sock")
    }

    #[test]
    fn a8_preload_stores_the_target_records_images_and_retires_the_file() {
        let dir = TempDir::new("preload");
        let doc = json!({"config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "600000"}, "pinDevice": true,
            "apps": {"app-uuid": {"id": 1234, "name": "fleet", "class": "fleet", "releases": {"f00d": {"id": 9,
                "services": {"main": {"id": 5, "image_id": 7, "image": "registry/main", "environment": {}, "labels": {}}},
                "volumes": {}, "networks": {}}}}}});
        std::fs::write(dir.path().join("apps.json"), doc.to_string()).unwrap();
        let mut db = Db::open_in_memory().unwrap();
        assert!(preload(dir.path(), &mut db, &engine(), "local"));
        let t = db.load_target("local").unwrap().unwrap();
        assert_eq!(t.apps["app-uuid"].release.as_ref().unwrap().commit, "f00d");
        assert_eq!(t.config["SUPERVISOR_POLL_INTERVAL"], "600000");
        let images = db.images().unwrap();
        assert_eq!(images[0].name, "registry/main:latest");
        assert_eq!(
            db.config_get("pinDevice").unwrap().unwrap(),
            r#"{"app":1234,"commit":"f00d"}"#
        );
        assert!(dir.path().join("apps.json.preloaded").exists());
        assert_eq!(std::fs::read(dir.path().join("apps.json")).unwrap(), b"{}");
        // The emptied file preloads nothing the next time.
        assert!(!preload(dir.path(), &mut db, &engine(), "local"));
    }

    #[test]
    fn a8_bad_or_unsupported_files_store_nothing() {
        for content in [
            "not json".to_string(),
            "[]".to_string(),
            json!({"apps": {"1": {"name": "v2"}}}).to_string(),
            json!({"apps": {"u": {"id": 1, "name": "x", "releases": {}}}}).to_string(),
            json!({"apps": {"u": {"id": "x"}}}).to_string(),
        ] {
            let dir = TempDir::new("preload");
            std::fs::write(dir.path().join("apps.json"), &content).unwrap();
            let mut db = Db::open_in_memory().unwrap();
            assert!(
                !preload(dir.path(), &mut db, &engine(), "local"),
                "{content}"
            );
            assert!(db.load_target("local").unwrap().is_none());
            assert!(dir.path().join("apps.json").exists(), "left in place");
        }
        let dir = TempDir::new("preload");
        let mut db = Db::open_in_memory().unwrap();
        assert!(!preload(dir.path(), &mut db, &engine(), "local"), "no file");
    }

    #[test]
    fn image_names_get_a_tag() {
        assert_eq!(normalise_image_name("busybox"), "busybox:latest");
        assert_eq!(
            normalise_image_name("127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(normalise_image_name("a/b:1"), "a/b:1");
        assert_eq!(normalise_image_name("r/x@sha256:abc"), "r/x@sha256:abc");
    }
}
