use super::*;
use crate::testutil::TempDir;

fn target() -> TargetState {
    parse_device_target(&json!({
        "name": "dev-name",
        "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "600000", "BALENA_HOST_CONFIG_gpu_mem": "64"},
        "apps": {"uuid1": {"id": 1, "name": "fleet", "releases": {"c1": {"id": 9,
            "services": {"main": {"id": 3, "image_id": 4, "image": "reg/img:1", "environment": {"A": "1"},
                "labels": {"x": "y"}, "running": false,
                "composition": {"ports": ["80"], "networks": ["backend", "default"], "volumes": ["data:/data"]},
                "contract": {"requires": [{"type": "sw.supervisor", "version": ">=1"}]}}},
            "volumes": {"data": {"driver": "local"}}, "networks": {"backend": {"internal": true}}}}},
          "uuid2": {"id": 2, "name": "empty", "class": "app", "releases": {}}}
    }))
    .unwrap()
}

#[test]
fn target_round_trips_through_the_v19_tables() {
    let mut db = Db::open_in_memory().unwrap();
    assert_eq!(
        db.load_target("local").unwrap(),
        None,
        "nothing before a target is set"
    );
    let t = target();
    assert!(db.save_target(&t, "local").unwrap());
    assert_eq!(db.load_target("local").unwrap(), Some(t.normalised()));
    // Same target again: nothing written.
    let changes = db.total_changes();
    assert!(!db.save_target(&t, "local").unwrap());
    assert_eq!(db.total_changes(), changes);
    // Device config is stored without prefixes, as v19 does (docs/contract/engine.md j.51).
    let raw: String = db
        .conn
        .query_row("SELECT targetValues FROM deviceConfig", [], |r| r.get(0))
        .unwrap();
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["HOST_CONFIG_gpu_mem"], "64");
    assert_eq!(v["SUPERVISOR_POLL_INTERVAL"], "600000");
    // The services column has the v19 fields.
    let services: String = db
        .conn
        .query_row("SELECT services FROM app WHERE uuid = 'uuid1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let s: Value = serde_json::from_str(&services).unwrap();
    assert_eq!(s[0]["serviceName"], "main");
    assert_eq!(s[0]["serviceId"], 3);
    assert_eq!(s[0]["imageId"], 4);
    assert_eq!(s[0]["commit"], "c1");
    assert_eq!(db.config_get("name").unwrap().as_deref(), Some("dev-name"));
}

#[test]
fn apps_missing_from_a_new_target_are_deleted_for_that_source_only() {
    let mut db = Db::open_in_memory().unwrap();
    db.save_target(&target(), "https://api.example").unwrap();
    let mut t = target();
    t.apps.remove("uuid1");
    db.save_target(&t, "https://api.example").unwrap();
    let loaded = db.load_target("https://api.example").unwrap().unwrap();
    assert!(!loaded.apps.contains_key("uuid1"));
    assert!(loaded.apps.contains_key("uuid2"));
}

#[test]
fn images_upsert_and_delete() {
    let db = Db::open_in_memory().unwrap();
    let mut row = ImageRef {
        name: "reg/img:1".into(),
        app_id: 1,
        app_uuid: "u".into(),
        service_id: 2,
        service_name: "main".into(),
        image_id: 3,
        release_id: 4,
        commit: "c".into(),
        docker_image_id: None,
    };
    assert!(db.upsert_image(&row).unwrap());
    assert!(!db.upsert_image(&row).unwrap(), "identical row: no write");
    row.docker_image_id = Some("sha256:x".into());
    assert!(db.upsert_image(&row).unwrap());
    assert_eq!(db.images().unwrap(), vec![row.clone()]);
    assert!(db.delete_image(&row).unwrap());
    assert!(db.images().unwrap().is_empty());
}

#[test]
fn current_commit_and_config_write_only_on_change() {
    let db = Db::open_in_memory().unwrap();
    assert_eq!(db.current_commit(1).unwrap(), None);
    assert!(db.set_current_commit(1, "c1").unwrap());
    assert!(!db.set_current_commit(1, "c1").unwrap());
    assert!(db.set_current_commit(1, "c2").unwrap());
    assert_eq!(db.current_commit(1).unwrap().as_deref(), Some("c2"));
    assert!(db.config_set("localMode", Some("true")).unwrap());
    assert!(!db.config_set("localMode", Some("true")).unwrap());
    assert!(db.config_set("localMode", None).unwrap());
    assert_eq!(db.config_get("localMode").unwrap(), None);
}

#[test]
fn file_database_is_wal_with_v19_tables_and_knex_records() {
    let dir = TempDir::new("db");
    let path = dir.path().join("data").join("database.sqlite");
    {
        let mut db = Db::open(&path).unwrap();
        db.save_target(&target(), "local").unwrap();
    }
    let db = Db::open(&path).unwrap();
    let mode: String = db
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for table in [
        "config",
        "deviceConfig",
        "app",
        "image",
        "currentCommit",
        "apiSecret",
        "engineSnapshot",
        "logsChannelSecret",
        "knex_migrations",
        "tv_meta",
    ] {
        let n: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{table}");
    }
    let migrations: i64 = db
        .conn
        .query_row("SELECT count(*) FROM knex_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(migrations, 19, "recorded once, not again on reopen");
    // Knex's migration time, as SQLite's datetime('now') writes it: "2026-12-03 12:15:13".
    let time: String = db
        .conn
        .query_row(
            "SELECT migration_time FROM knex_migrations LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let shape: String = time
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999-99-99 99:99:99", "{time}");
    assert!(time.as_str() > "2026-01-01", "{time}");
    assert!(
        db.load_target("local").unwrap().is_some(),
        "the target survives a restart"
    );
}

#[test]
fn an_existing_v19_database_is_adopted_without_touching_its_rows() {
    let dir = TempDir::new("db");
    let path = dir.path().join("database.sqlite");
    {
        // What the Node supervisor leaves: its tables and migration records, no tv_ tables.
        let c = Connection::open(&path).unwrap();
        c.execute_batch(V19_SCHEMA.replace("CREATE TABLE IF NOT EXISTS tv_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);", "").as_str()).unwrap();
        c.execute(
            "INSERT INTO knex_migrations (name, batch) VALUES ('M00012.js', 1)",
            [],
        )
        .unwrap();
        c.execute("INSERT INTO apiSecret (appId, key, scopes, serviceName) VALUES (0, 'globalkey', '[]', NULL)", []).unwrap();
    }
    let db = Db::open(&path).unwrap();
    let key: String = db
        .conn
        .query_row("SELECT key FROM apiSecret WHERE appId = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(key, "globalkey");
    let migrations: i64 = db
        .conn
        .query_row("SELECT count(*) FROM knex_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        migrations, 1,
        "the Node supervisor's records are left as they are"
    );
}

#[test]
fn the_global_api_key_is_made_once_and_kept() {
    let db = Db::open_in_memory().unwrap();
    let key = db.global_api_key(|| Ok("k1".into())).unwrap();
    assert_eq!(key, "k1");
    assert_eq!(db.global_api_key(|| Ok("k2".into())).unwrap(), "k1");
}

#[test]
fn engine_snapshots_are_kept_until_cleared() {
    let mut db = Db::open_in_memory().unwrap();
    assert_eq!(db.engine_snapshot().unwrap(), None);
    let snap =
        serde_json::json!({"containers": ["a"], "images": [], "volumes": ["v"], "networks": []});
    db.set_engine_snapshot(Some(&snap)).unwrap();
    db.set_engine_snapshot(Some(&snap)).unwrap();
    assert_eq!(db.engine_snapshot().unwrap(), Some(snap));
    db.set_engine_snapshot(None).unwrap();
    assert_eq!(db.engine_snapshot().unwrap(), None);
}

#[test]
fn api_keys_are_replaced_in_place() {
    let db = Db::open_in_memory().unwrap();
    let key = db.global_api_key(|| Ok("k1".into())).unwrap();
    assert_eq!(db.replace_api_key(&key, "k2").unwrap(), Some(true));
    assert_eq!(db.global_api_key(|| Ok("k3".into())).unwrap(), "k2");
    assert_eq!(db.replace_api_key("unknown", "k4").unwrap(), None);
}

#[test]
fn service_keys_are_made_once_per_service_and_renewed_when_their_scope_changed() {
    let db = Db::open_in_memory().unwrap();
    db.global_api_key(|| Ok("g".into())).unwrap();
    assert_eq!(
        db.service_api_key(7, "main", || Ok("s1".into())).unwrap(),
        ("s1".to_string(), true)
    );
    assert_eq!(
        db.service_api_key(7, "main", || Ok("s2".into())).unwrap(),
        ("s1".to_string(), false)
    );
    assert_eq!(
        db.service_api_key(7, "other", || Ok("s3".into()))
            .unwrap()
            .0,
        "s3"
    );
    // A row the Node supervisor left with other scopes is given a new key.
    db.conn
        .execute(
            "UPDATE apiSecret SET scopes = '[{\"type\":\"app\",\"appId\":8}]' WHERE key = 's1'",
            [],
        )
        .unwrap();
    assert_eq!(
        db.service_api_key(7, "main", || Ok("s4".into())).unwrap(),
        ("s4".to_string(), true)
    );
    let mut keys = db.api_keys().unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            ("g".to_string(), r#"[{"type":"global"}]"#.to_string()),
            (
                "s3".to_string(),
                r#"[{"type":"app","appId":7}]"#.to_string()
            ),
            (
                "s4".to_string(),
                r#"[{"type":"app","appId":7}]"#.to_string()
            ),
        ]
    );
    // Regenerating a scoped key keeps its service and scope.
    assert_eq!(db.replace_api_key("s4", "s5").unwrap(), Some(false));
    assert_eq!(
        db.service_api_key(7, "main", || Ok("s6".into())).unwrap().0,
        "s5"
    );
}

#[test]
fn a_new_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::testutil::TempDir::new("dbmode");
    let path = dir.path().join("data/database.sqlite");
    let db = Db::open(&path).unwrap();
    db.config_set("x", Some("1")).unwrap();
    for f in ["database.sqlite", "database.sqlite-wal"] {
        let mode = std::fs::metadata(dir.path().join("data").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn closing_the_database_leaves_the_file_whole_and_no_wal() {
    let dir = crate::testutil::TempDir::new("dbclose");
    let path = dir.path().join("database.sqlite");
    let db = Db::open(&path).unwrap();
    db.config_set("written", Some("before close")).unwrap();
    assert!(dir.path().join("database.sqlite-wal").exists());
    drop(db);
    assert!(!dir.path().join("database.sqlite-wal").exists());
    assert!(!dir.path().join("database.sqlite-shm").exists());
    // The file alone holds the write.
    let copy = dir.path().join("copy.sqlite");
    std::fs::copy(&path, &copy).unwrap();
    let reopened = Db::open(&copy).unwrap();
    assert_eq!(
        reopened.config_get("written").unwrap().as_deref(),
        Some("before close")
    );
}

#[test]
fn a_failing_random_source_stores_no_key() {
    let db = Db::open_in_memory().unwrap();
    let broken = || Err(std::io::Error::other("no entropy"));
    assert!(db.global_api_key(broken).is_err());
    assert!(db.global_api_key(|| Ok(String::new())).is_err());
    assert!(db.service_api_key(7, "main", broken).is_err());
    // Nothing was stored: the next good source makes the key.
    assert_eq!(db.global_api_key(|| Ok("k".into())).unwrap(), "k");
}

#[test]
fn host_releases_are_kept_one_at_a_time_and_survive_a_reopen() {
    use crate::compose::hostapp::{HostApp, HostRecord};
    let dir = crate::testutil::TempDir::new("dbhost");
    let path = dir.path().join("database.sqlite");
    let record = |release: &str, attempts: u32| HostRecord {
        release: HostApp {
            app_uuid: "hostapp".into(),
            release_uuid: release.into(),
            image: "reg/os@sha256:1".into(),
            build: "b1".into(),
            updater: "reg/updater:1".into(),
        },
        install_attempts: attempts,
        attempted_at: 1_800_000_000,
    };
    let db = Db::open(&path).unwrap();
    assert_eq!(db.host_release("r1").unwrap(), None);
    assert!(db.save_host_release(&record("r1", 1)).unwrap());
    let changes = db.total_changes();
    assert!(!db.save_host_release(&record("r1", 1)).unwrap());
    assert_eq!(
        db.total_changes(),
        changes,
        "an unchanged record is not written"
    );
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.host_release("r1").unwrap(), Some(record("r1", 1)));
    db.save_host_release(&record("r2", 0)).unwrap();
    assert_eq!(
        db.host_release("r1").unwrap(),
        None,
        "older releases are forgotten"
    );
    assert_eq!(db.host_release("r2").unwrap(), Some(record("r2", 0)));
}

#[test]
fn trials_and_applied_releases_are_stored() {
    use crate::planner::trial::{Trial, TrialState};
    let db = Db::open_in_memory().unwrap();
    let mut t = Trial {
        app_uuid: "app".into(),
        commit: "c2".into(),
        window_ms: 10_000,
        deadline_ms: Some(5),
        state: TrialState::Failed,
        reason: Some("web unhealthy".into()),
        previous: Some(("c1".into(), json!({"id": 1, "releases": {}}))),
    };
    assert!(db.save_trial(&t).unwrap());
    assert!(!db.save_trial(&t).unwrap(), "unchanged: not written");
    assert_eq!(db.trials().unwrap(), vec![t.clone()]);
    t.state = TrialState::Pending;
    t.deadline_ms = None;
    t.reason = None;
    assert!(db.save_trial(&t).unwrap());
    assert_eq!(db.trials().unwrap(), vec![t.clone()]);
    assert!(db.delete_trial("app").unwrap());
    assert!(db.trials().unwrap().is_empty());
    assert_eq!(db.applied_release("app").unwrap(), None);
    assert!(db
        .set_applied_release("app", "c1", &json!({"a": 1}))
        .unwrap());
    assert!(!db
        .set_applied_release("app", "c1", &json!({"a": 2}))
        .unwrap());
    assert_eq!(
        db.applied_release("app").unwrap(),
        Some(("c1".into(), json!({"a": 1})))
    );
}

#[test]
fn a_waiting_release_keeps_the_boot_it_was_first_seen_in() {
    let db = Db::open_in_memory().unwrap();
    assert_eq!(
        db.waiting_since_boot("app", "c2", "boot1").unwrap(),
        "boot1"
    );
    assert_eq!(
        db.waiting_since_boot("app", "c2", "boot2").unwrap(),
        "boot1"
    );
    let changes = db.total_changes();
    db.waiting_since_boot("app", "c2", "boot3").unwrap();
    assert_eq!(db.total_changes(), changes, "no write while it waits");
    assert_eq!(
        db.waiting_since_boot("app", "c3", "boot2").unwrap(),
        "boot2",
        "a new release"
    );
}
