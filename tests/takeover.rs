//! Taking over a device the real balena-supervisor v19.0.5 left behind (tests/fixtures/
//! v19-takeover): its containers rebuilt on the real engine from the create requests v19 sent,
//! its database and config.json in place, a mock cloud serving its release. tinyvisor must
//! adopt everything without recreating or restarting a container, register nothing, keep the
//! API keys, leave the database as v19 would, and never take the app down when the image's
//! tag has gone.

mod common;

use common::mock_api::MockApi;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const UUID: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9f";
const APP_UUID: &str = "7e57a0aa00000000000000000000cafe";
const DEVICE_KEY: &str = "tkodevicekey0000000000000000abcd";
const GLOBAL_KEY: &str = "d807bfef96a449c286539e7eea378c14";
const SCOPED_KEY: &str = "6cf9d2276af7402e89fa97e958e74f62";
const REL1: &str = "1e1e1e1e000000000000000000000001";
const REL2: &str = "1e1e1e1e000000000000000000000002";
/// The image id on the machine v19 was recorded on; ours is whatever `local/busybox:1` is here.
const RECORDED_IMAGE: &str =
    "sha256:3ae8af36c3e76cf1c4674fd161b3da66174ab4a0dee7522ee4253467206441d5";
const V19_TABLES: &[&str] = &[
    "apiSecret",
    "app",
    "config",
    "currentCommit",
    "deviceConfig",
    "engineSnapshot",
    "image",
    "knex_migrations",
    "knex_migrations_lock",
    "logsChannelSecret",
];

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v19-takeover")
        .join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

/// Rebuilds v19's engine state: the image as `local/tko:1`, then every network, volume and
/// container create, start and connect v19 sent, in order, with our image id. Returns the
/// container id of each service.
fn replay_v19(e: &tinyvisor::engine::Engine, image: &str) -> BTreeMap<String, String> {
    e.tag_image(image, "local/tko", "1").unwrap();
    let recorded: Vec<Value> =
        serde_json::from_value(fixture_json("engine/containers.inspect.json")).unwrap();
    let name_of = |id: &str| -> String {
        recorded
            .iter()
            .find(|c| c["Id"] == id)
            .map(|c| {
                c["Name"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .to_string()
            })
            .unwrap()
    };
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let writes = std::fs::read_to_string(fixture("engine/v19-engine-writes.jsonl")).unwrap();
    for line in writes.lines() {
        let w: Value = serde_json::from_str(line).unwrap();
        let path = w["path"].as_str().unwrap();
        let body = serde_json::to_string(&w["body"])
            .unwrap()
            .replace(RECORDED_IMAGE, image);
        let body: Value = serde_json::from_str(&body).unwrap();
        let route = path.split('?').next().unwrap();
        let send = |method: &str, p: &str, b: Option<&Value>| {
            let text = b.map(|b| b.to_string());
            let headers = [("Content-Type", "application/json".to_string())];
            e.send(
                method,
                p,
                &headers,
                text.as_deref().map(str::as_bytes),
                None,
            )
        };
        if route == "/networks/create" || route == "/volumes/create" {
            // supervisor0 may be left from an earlier run: a conflict is fine.
            drop(send("POST", route, Some(&body)));
        } else if route == "/containers/create" {
            let name = path
                .split_once("name=")
                .unwrap()
                .1
                .split('&')
                .next()
                .unwrap()
                .to_string();
            let _ = e.remove_container(&name, true, false);
            let created = e.create_container(&name, &body).unwrap();
            ids.insert(name, created.id);
        } else if let Some(old) = route
            .strip_prefix("/containers/")
            .and_then(|r| r.strip_suffix("/start"))
        {
            e.start_container(&ids[&name_of(old)]).unwrap();
        } else if route == "/networks/supervisor0/connect" {
            let old = body["Container"].as_str().unwrap();
            e.connect_network("supervisor0", &ids[&name_of(old)], &json!({}))
                .unwrap();
        }
        // Image tags: done above with our image.
    }
    ids
}

/// Container id and start time of every supervised container, by name.
fn containers(e: &tinyvisor::engine::Engine) -> BTreeMap<String, (String, String)> {
    e.list_containers(true, &["io.balena.supervised"])
        .unwrap()
        .iter()
        .map(|c| {
            let i = e.inspect_container(&c.id).unwrap();
            (
                i.name.trim_start_matches('/').to_string(),
                (i.id.clone(), i.state.started_at.clone()),
            )
        })
        .collect()
}

fn sql_rows(db: &std::path::Path, query: &str) -> Vec<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare(query).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default()
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Each v19 table's columns (name, type, default, primary key).
fn schema(db: &std::path::Path) -> BTreeMap<String, Vec<Vec<String>>> {
    V19_TABLES
        .iter()
        .map(|t| {
            (
                t.to_string(),
                sql_rows(
                    db,
                    &format!("SELECT name, type, dflt_value, pk FROM pragma_table_info('{t}')"),
                ),
            )
        })
        .collect()
}

fn wait_done(api: &MockApi, commit: &str) {
    api.wait_for(&format!("{commit} done"), Duration::from_secs(90), |rs| {
        rs.iter()
            .filter(|r| r.method == "PATCH" && r.status == 200)
            .any(|r| {
                let app = &r.json()[UUID]["apps"][APP_UUID];
                app["release_uuid"] == commit && app["releases"][commit]["update_status"] == "done"
            })
    });
}

fn cleanup(e: &tinyvisor::engine::Engine) {
    reset_engine(e);
    let _ = e.remove_volume("7321_data", true);
    let _ = e.remove_image("local/tko:1", false);
    let _ = std::fs::remove_dir_all("/tmp/balena-supervisor/services/7321");
}

#[test]
fn a_device_left_by_v19_is_taken_over_without_a_restart_and_left_as_v19_would() {
    let _serial = serial();
    let e = engine();
    cleanup(&e);
    let image = e.inspect_image(BUSYBOX).unwrap().id;
    let replayed = replay_v19(&e, &image);
    assert_eq!(replayed.len(), 3);
    let before = containers(&e);

    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(fixture_json("target-rel1.json"));
        b.known_keys = vec![DEVICE_KEY.into()];
    });
    let mut d = Daemon::create();
    // v19's port: the api service's environment names it (BALENA_SUPERVISOR_PORT, ...).
    d.port = 48481;
    let mut config = fixture_json("config.json");
    config["apiEndpoint"] = json!(api.url);
    std::fs::write(d.dir.join("boot/config.json"), config.to_string()).unwrap();
    // The device v19 ran on: a Raspberry Pi 3 type on amd64, balenaOS 6.0.0.
    std::fs::write(
        d.dir.join("boot/device-type.json"),
        r#"{"slug":"raspberrypi3","arch":"amd64"}"#,
    )
    .unwrap();
    let os_release = d.dir.join("os-release");
    std::fs::write(
        &os_release,
        "PRETTY_NAME=\"balenaOS 6.0.0\"\nVERSION_ID=6.0.0\n",
    )
    .unwrap();
    d.env.push((
        "HOST_OS_VERSION_PATH".into(),
        os_release.display().to_string(),
    ));
    let db = d.dir.join("data/database.sqlite");
    std::fs::copy(fixture("database.sqlite"), &db).unwrap();
    {
        // The image rows name the recording machine's image id: point them at ours.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("UPDATE image SET dockerImageId = ?1", [&image])
            .unwrap();
        // And its API endpoint is this mock's (v19 keys cloud apps by their endpoint).
        conn.execute("UPDATE app SET source = ?1", [&api.url])
            .unwrap();
        conn.execute("UPDATE logsChannelSecret SET backend = ?1", [&api.url])
            .unwrap();
        conn.execute(
            "UPDATE config SET value = ?1 WHERE key = 'initialConfigReported'",
            [&api.url],
        )
        .unwrap();
    }
    let v19_schema = schema(&db);
    let v19_secrets = sql_rows(
        &db,
        "SELECT appId, key, scopes, serviceName FROM apiSecret ORDER BY id",
    );
    let _ = std::fs::remove_file("/tmp/balena-supervisor/state-report-cache");
    d.key = Some(GLOBAL_KEY.into());
    d.start();
    wait_done(&api, REL1);

    // Adopted: the same containers, never restarted; no registration; keys kept.
    assert_eq!(containers(&e), before, "{}", d.log_text());
    assert!(api.calls("POST", "/device/register").is_empty());
    let reports: Vec<Value> = api
        .calls("PATCH", "/device/v3/state")
        .iter()
        .map(|r| r.json()[UUID].clone())
        .collect();
    assert_eq!(reports[0]["api_secret"], GLOBAL_KEY);
    for r in &reports {
        assert!(
            r.get("apps")
                .is_none_or(|a| a.as_object().is_some_and(|m| !m.is_empty())),
            "a report sent apps before they were known: {r}"
        );
    }
    assert_eq!(d.get("/v2/state/status").unwrap().0, 200, "global key kept");
    let api_env = e
        .inspect_container(&before["api_103_1_1e1e1e1e000000000000000000000001"].0)
        .unwrap()
        .config
        .env;
    assert!(api_env.contains(&format!("BALENA_SUPERVISOR_API_KEY={SCOPED_KEY}")));

    // Release 2 changes store's environment: only store is recreated.
    api.set(|b| {
        b.target = Some(fixture_json("target-rel2.json"));
        b.etag = "\"2\"".into();
    });
    assert_eq!(d.request("POST", "/v1/update", Some("{}")).unwrap().0, 204);
    wait_done(&api, REL2);
    let after = containers(&e);
    let started: Vec<&(String, String)> = after.values().collect();
    let kept: Vec<&(String, String)> = before.values().filter(|c| started.contains(c)).collect();
    assert_eq!(kept.len(), 2, "web and api untouched: {after:?}");
    assert!(!after
        .keys()
        .any(|n| n.starts_with("store_") && n.ends_with(REL1)));

    // The database as v19 leaves it: its tables unchanged in shape, release 1's image rows
    // gone once release 2 runs, the keys as they were; the WAL folded in on a clean exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let old_rows = format!("SELECT 1 FROM image WHERE `commit` = '{REL1}'");
    while !sql_rows(&db, &old_rows).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "release 1's image rows stayed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.stop();
    assert!(
        !d.dir.join("data/database.sqlite-wal").exists(),
        "WAL left after a clean exit"
    );
    assert_eq!(schema(&db), v19_schema);
    assert_eq!(
        sql_rows(
            &db,
            "SELECT appId, key, scopes, serviceName FROM apiSecret ORDER BY id"
        ),
        v19_secrets
    );
    let images = sql_rows(
        &db,
        "SELECT serviceName, releaseId, `commit` FROM image ORDER BY serviceName",
    );
    assert_eq!(images.len(), 3, "{images:?}");
    assert!(images.iter().all(|r| r[2].contains(REL2)), "{images:?}");
    let tables = sql_rows(&db, "SELECT name FROM sqlite_master WHERE type = 'table'");
    for t in tables
        .iter()
        .map(|r| r[0].trim_matches(|c| c == '"' || c == ' ').to_string())
    {
        let t = t
            .trim_start_matches("Text(")
            .trim_end_matches(')')
            .trim_matches('"')
            .to_string();
        assert!(
            V19_TABLES.contains(&t.as_str()) || t.starts_with("tv_") || t == "sqlite_sequence",
            "a table v19 does not know: {t}"
        );
    }

    // The tag goes (a handback to v19 untagging it, a user's `docker rmi`): on the next start
    // nothing is touched, and the tag is put back from the image table.
    let running = containers(&e);
    e.remove_image("local/tko:1", false).unwrap();
    assert!(e.inspect_image("local/tko:1").is_err());
    d.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.inspect_image("local/tko:1").is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "tag not restored: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(containers(&e), running, "{}", d.log_text());
    let log = d.log_text();
    let since_restart = &log[log.rfind("starting:").unwrap()..];
    assert!(!since_restart.contains("Applying step"), "{since_restart}");
    d.kill9();
    cleanup(&e);
}
