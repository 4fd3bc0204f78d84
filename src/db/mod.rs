//! The database: the only module that speaks SQL. Same file and tables as balena-supervisor
//! v19 (docs/contract/engine.md (f)), so a device can switch between the two; our own state lives
//! in `tv_`-prefixed tables. WAL journal; writes only when a value changes.

use crate::compose::hostapp::{HostApp, HostRecord};
use crate::compose::target::{parse_device_target, TargetState};
use crate::planner::trial::{Trial, TrialState};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};
use std::path::Path;

pub use rusqlite::Error;
pub type Result<T> = std::result::Result<T, Error>;

/// A new key from `new_key`; a random source that fails is an error, so an empty key can
/// never be stored (it would stay the device's key for good).
fn fresh_key(new_key: impl FnOnce() -> std::io::Result<String>) -> Result<String> {
    match new_key() {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err(Error::ToSqlConversionFailure("an empty API key".into())),
        Err(e) => Err(Error::ToSqlConversionFailure(Box::new(e))),
    }
}

/// Our schema version (tables with the `tv_` prefix); bumped by additive migrations.
const TV_SCHEMA_VERSION: i64 = 5;

/// Knex migration names of v19: recorded in a new database so that the Node supervisor, if it
/// runs on this file later, sees its schema as current instead of re-creating tables.
const KNEX_MIGRATIONS: &[&str] = &[
    "20171129013519_legacy.js",
    "20171129064057_multicontainer.js",
    "20171214172530_image_docker_id.js",
    "20180516164000-endpoint-specific-apps.js",
    "20181907164000-endpoint-specific-logschannel.js",
    "20190619152500-engine-snapshot.js",
    "M00000.js",
    "M00001.js",
    "M00002.js",
    "M00003.js",
    "M00004.js",
    "M00005.js",
    "M00006.js",
    "M00007.js",
    "M00008.js",
    "M00009.js",
    "M00010.js",
    "M00011.js",
    "M00012.js",
];

const V19_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS config (key VARCHAR(255) PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS deviceConfig (targetValues TEXT);
CREATE TABLE IF NOT EXISTS app (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(255), releaseId INTEGER, `commit` VARCHAR(255),
  appId INTEGER, services JSON, networks JSON, volumes JSON, source VARCHAR(255),
  uuid VARCHAR(255), class VARCHAR(255) DEFAULT 'fleet', isHost BOOLEAN DEFAULT 0,
  rejected BOOLEAN DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS app_uuid_unique ON app (uuid);
CREATE TABLE IF NOT EXISTS image (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(255), appId INTEGER, serviceId INTEGER,
  serviceName VARCHAR(255), imageId INTEGER, releaseId INTEGER, dockerImageId VARCHAR(255),
  appUuid VARCHAR(255), `commit` VARCHAR(255));
CREATE TABLE IF NOT EXISTS currentCommit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, appId INTEGER NOT NULL UNIQUE, `commit` VARCHAR(255) NOT NULL);
CREATE TABLE IF NOT EXISTS apiSecret (
  id INTEGER PRIMARY KEY AUTOINCREMENT, appId INTEGER, key VARCHAR(255), scopes TEXT,
  serviceName VARCHAR(255), UNIQUE (appId, serviceName));
CREATE TABLE IF NOT EXISTS engineSnapshot (snapshot TEXT, timestamp VARCHAR(255));
CREATE TABLE IF NOT EXISTS logsChannelSecret (backend VARCHAR(255), secret VARCHAR(255));
CREATE TABLE IF NOT EXISTS knex_migrations (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name VARCHAR(255), batch INTEGER, migration_time DATETIME);
CREATE TABLE IF NOT EXISTS knex_migrations_lock (\"index\" INTEGER PRIMARY KEY AUTOINCREMENT, is_locked INTEGER);
CREATE TABLE IF NOT EXISTS tv_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tv_stopped (containerId TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tv_hostapp (
  releaseUuid TEXT PRIMARY KEY, appUuid TEXT NOT NULL, image TEXT NOT NULL, build TEXT NOT NULL,
  updater TEXT NOT NULL, installAttempts INTEGER NOT NULL, attemptedAt INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tv_trial (
  appUuid TEXT PRIMARY KEY, `commit` TEXT NOT NULL, windowMs INTEGER NOT NULL, deadlineMs INTEGER,
  state TEXT NOT NULL, reason TEXT, previousCommit TEXT, previousApp TEXT);
CREATE TABLE IF NOT EXISTS tv_applied (appUuid TEXT PRIMARY KEY, `commit` TEXT NOT NULL, app TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tv_wait (appUuid TEXT PRIMARY KEY, `commit` TEXT NOT NULL, bootId TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tv_bundle (digest TEXT PRIMARY KEY, outcome TEXT NOT NULL, source TEXT NOT NULL, at INTEGER NOT NULL);
";

/// A row of the `image` table is the planner's image record.
use crate::compose::ImageRef;

pub struct Db {
    conn: Connection,
}

impl Drop for Db {
    /// Moves the WAL's pages into the database file before the connection closes, so the file
    /// alone (a copy, a rootfs snapshot, the Node supervisor after a switch back) has every
    /// write; SQLite then removes the `-wal` and `-shm` files with the last connection.
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }
}

impl Db {
    /// Opens (creating if needed) the database, in WAL mode, and brings the schema up to date.
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // A new database holds API keys: readable by its owner only (SQLite gives its WAL and
        // shared-memory files the same mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
        }
        let conn = Connection::open(path)?;
        Db::init(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Db> {
        Db::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Db> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers never block the writer, and a torn write never corrupts the file.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")?;
        let fresh: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'knex_migrations'",
            [],
            |r| r.get::<_, i64>(0),
        )? == 0;
        let db = Db { conn };
        let version: Option<i64> = if fresh {
            None
        } else {
            db.conn
                .query_row(
                    "SELECT value FROM tv_meta WHERE key = 'schema_version'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .unwrap_or(None)
                .and_then(|v| v.parse().ok())
        };
        if version != Some(TV_SCHEMA_VERSION) {
            let tx = db.conn.unchecked_transaction()?;
            tx.execute_batch(V19_SCHEMA)?;
            if fresh {
                // What `datetime('now')` gives; the SQLite we build has no date functions.
                let now = crate::encoding::rfc3339_from_seconds(crate::logs::now_ms() / 1000);
                let now = now.replacen('T', " ", 1).replacen('Z', "", 1);
                for name in KNEX_MIGRATIONS {
                    tx.execute(
                        "INSERT INTO knex_migrations (name, batch, migration_time) VALUES (?1, 1, ?2)",
                        params![name, now],
                    )?;
                }
                tx.execute(
                    "INSERT INTO knex_migrations_lock (is_locked) VALUES (0)",
                    [],
                )?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO tv_meta (key, value) VALUES ('schema_version', ?1)",
                params![TV_SCHEMA_VERSION.to_string()],
            )?;
            tx.commit()?;
        }
        Ok(db)
    }

    // ---- config key/value store ----

    pub fn config_get(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value FROM config WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
    }

    /// Sets (or with None deletes) a key; returns whether anything was written.
    pub fn config_set(&self, key: &str, value: Option<&str>) -> Result<bool> {
        if self.config_get(key)?.as_deref() == value {
            return Ok(false);
        }
        match value {
            Some(v) => self.conn.execute(
                "INSERT OR REPLACE INTO config (key, value) VALUES (?1, ?2)",
                params![key, v],
            )?,
            None => self
                .conn
                .execute("DELETE FROM config WHERE key = ?1", params![key])?,
        };
        Ok(true)
    }

    // ---- target state ----

    /// Stores a target for `source` (the API endpoint, or "local") in one transaction: device
    /// name, device config, every app (apps of the same source missing from it are deleted),
    /// `targetStateSet`. Returns whether anything changed.
    pub fn save_target(&mut self, state: &TargetState, source: &str) -> Result<bool> {
        let state = &state.normalised();
        let before = self.load_target(source)?;
        if before.as_ref() == Some(state) {
            return Ok(false);
        }
        let tx = self.conn.transaction()?;
        let set = |k: &str, v: &str| {
            tx.execute(
                "INSERT OR REPLACE INTO config (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
        };
        set("name", &state.name)?;
        set("targetStateSet", "true")?;
        let device_config: Map<String, Value> = state
            .config
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        tx.execute("DELETE FROM deviceConfig", [])?;
        tx.execute(
            "INSERT INTO deviceConfig (targetValues) VALUES (?1)",
            params![Value::Object(device_config).to_string()],
        )?;
        let uuids: Vec<String> = state.apps.keys().cloned().collect();
        let existing: Vec<String> = {
            let mut stmt = tx.prepare("SELECT uuid FROM app WHERE source = ?1")?;
            let rows = stmt.query_map(params![source], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_>>()?
        };
        for old in existing.iter().filter(|u| !uuids.contains(u)) {
            tx.execute(
                "DELETE FROM app WHERE uuid = ?1 AND source = ?2",
                params![old, source],
            )?;
        }
        for app in state.apps.values() {
            let (release_id, commit, services, networks, volumes) = match &app.release {
                Some(rel) => {
                    let services: Vec<Value> = rel
                        .services
                        .iter()
                        .map(|(name, s)| {
                            json!({
                                "id": s.id, "image_id": s.image_id, "image": s.image,
                                "environment": s.environment, "labels": s.labels, "running": s.running,
                                "contract": s.contract, "composition": s.composition_raw,
                                "appId": app.id, "appUuid": app.uuid, "releaseId": rel.id, "commit": rel.commit,
                                "imageId": s.image_id, "serviceId": s.id, "serviceName": name,
                            })
                        })
                        .collect();
                    (
                        Some(rel.id),
                        Some(rel.commit.clone()),
                        Value::Array(services),
                        json!(rel.networks),
                        json!(rel.volumes),
                    )
                }
                None => (None, None, json!([]), json!({}), json!({})),
            };
            let class = serde_json::to_value(app.class)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "fleet".into());
            // An app that changed uuid but kept its id replaces the old row
            // (docs/contract/engine.md j.54).
            tx.execute(
                "DELETE FROM app WHERE appId = ?1 AND uuid != ?2 AND source = ?3",
                params![app.id, app.uuid, source],
            )?;
            tx.execute(
                "INSERT INTO app (name, releaseId, `commit`, appId, services, networks, volumes, source, uuid, class, isHost, rejected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0)
                 ON CONFLICT(uuid) DO UPDATE SET name=excluded.name, releaseId=excluded.releaseId, `commit`=excluded.`commit`,
                   appId=excluded.appId, services=excluded.services, networks=excluded.networks, volumes=excluded.volumes,
                   source=excluded.source, class=excluded.class, isHost=excluded.isHost, rejected=0",
                params![app.name, release_id, commit, app.id, services.to_string(), networks.to_string(), volumes.to_string(), source, app.uuid, class, app.is_host],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The stored target for `source`, rebuilt and validated like a received one.
    pub fn load_target(&self, source: &str) -> Result<Option<TargetState>> {
        if self.config_get("targetStateSet")?.as_deref() != Some("true") {
            return Ok(None);
        }
        let name = self.config_get("name")?.unwrap_or_else(|| "local".into());
        let config: Map<String, Value> = self
            .conn
            .query_row("SELECT targetValues FROM deviceConfig LIMIT 1", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let mut apps = Map::new();
        let mut stmt = self.conn.prepare(
            "SELECT uuid, appId, name, class, isHost, releaseId, `commit`, services, networks, volumes FROM app WHERE source = ?1 OR class != 'fleet'",
        )?;
        let rows = stmt.query_map(params![source], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<bool>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        for row in rows {
            let (
                uuid,
                app_id,
                name,
                class,
                is_host,
                release_id,
                commit,
                services,
                networks,
                volumes,
            ) = row?;
            let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
            let mut releases = Map::new();
            if let (Some(commit), Some(release_id)) = (commit, release_id) {
                let mut svc_map = Map::new();
                for s in parse(services)
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                {
                    let Some(name) = s
                        .get("serviceName")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                    else {
                        continue;
                    };
                    let mut v3 = Map::new();
                    for k in [
                        "id",
                        "image_id",
                        "image",
                        "environment",
                        "labels",
                        "running",
                        "contract",
                        "composition",
                    ] {
                        if let Some(v) = s.get(k).filter(|v| !v.is_null()) {
                            v3.insert(k.into(), v.clone());
                        }
                    }
                    svc_map.insert(name, Value::Object(v3));
                }
                releases.insert(
                    commit,
                    json!({"id": release_id, "services": svc_map, "networks": parse(networks).unwrap_or(json!({})), "volumes": parse(volumes).unwrap_or(json!({}))}),
                );
            }
            apps.insert(
                uuid,
                json!({"id": app_id, "name": name.unwrap_or_default(), "class": class.unwrap_or_else(|| "fleet".into()), "is_host": is_host.unwrap_or(false), "releases": releases}),
            );
        }
        let config: Map<String, Value> =
            config.into_iter().filter(|(_, v)| v.is_string()).collect();
        let doc = json!({"name": name, "config": config, "apps": apps});
        // What we stored passed validation; a row edited by hand that no longer does is
        // treated as no target rather than crashing the loop.
        Ok(parse_device_target(&doc).ok())
    }

    // ---- images ----

    pub fn images(&self) -> Result<Vec<ImageRef>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, appId, appUuid, serviceId, serviceName, imageId, releaseId, `commit`, dockerImageId FROM image",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ImageRef {
                name: r.get(0)?,
                app_id: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                app_uuid: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                service_id: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                service_name: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                image_id: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                release_id: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                commit: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                docker_image_id: r.get(8)?,
            })
        })?;
        rows.collect()
    }

    /// Inserts the row unless an identical one exists (v19's upsert semantic); fills in the
    /// engine id of a matching row that lacks it.
    pub fn upsert_image(&self, i: &ImageRef) -> Result<bool> {
        let existing = self.images()?;
        if let Some(row) = existing.iter().find(|r| r.same_metadata(i)) {
            if row.docker_image_id == i.docker_image_id {
                return Ok(false);
            }
            self.conn.execute(
                "UPDATE image SET dockerImageId = ?1 WHERE name = ?2 AND appId = ?3 AND serviceName = ?4 AND imageId = ?5 AND releaseId = ?6 AND `commit` = ?7",
                params![i.docker_image_id, i.name, i.app_id, i.service_name, i.image_id, i.release_id, i.commit],
            )?;
            return Ok(true);
        }
        self.conn.execute(
            "INSERT INTO image (name, appId, appUuid, serviceId, serviceName, imageId, releaseId, `commit`, dockerImageId) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![i.name, i.app_id, i.app_uuid, i.service_id, i.service_name, i.image_id, i.release_id, i.commit, i.docker_image_id],
        )?;
        Ok(true)
    }

    pub fn delete_image(&self, i: &ImageRef) -> Result<bool> {
        let n = self.conn.execute(
            "DELETE FROM image WHERE name = ?1 AND appId = ?2 AND serviceName = ?3 AND imageId = ?4 AND releaseId = ?5 AND `commit` = ?6",
            params![i.name, i.app_id, i.service_name, i.image_id, i.release_id, i.commit],
        )?;
        Ok(n > 0)
    }

    // ---- applied release per app ----

    pub fn current_commit(&self, app_id: i64) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT `commit` FROM currentCommit WHERE appId = ?1",
                params![app_id],
                |r| r.get(0),
            )
            .optional()
    }

    pub fn set_current_commit(&self, app_id: i64, commit: &str) -> Result<bool> {
        if self.current_commit(app_id)?.as_deref() == Some(commit) {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO currentCommit (appId, `commit`) VALUES (?1, ?2) ON CONFLICT(appId) DO UPDATE SET `commit` = excluded.`commit`",
            params![app_id, commit],
        )?;
        Ok(true)
    }

    // ---- host OS releases (docs/hostos.md) ----

    /// The record of the host release `release_uuid`, if the device has seen it.
    pub fn host_release(&self, release_uuid: &str) -> Result<Option<HostRecord>> {
        self.conn
            .query_row(
                "SELECT appUuid, image, build, updater, installAttempts, attemptedAt FROM tv_hostapp WHERE releaseUuid = ?1",
                params![release_uuid],
                |r| {
                    Ok(HostRecord {
                        release: HostApp {
                            app_uuid: r.get(0)?,
                            release_uuid: release_uuid.to_string(),
                            image: r.get(1)?,
                            build: r.get(2)?,
                            updater: r.get(3)?,
                        },
                        install_attempts: r.get(4)?,
                        attempted_at: r.get(5)?,
                    })
                },
            )
            .optional()
    }

    /// Stores the record of one host release and forgets every other (only the target's
    /// release is kept). Writes nothing when nothing changed.
    pub fn save_host_release(&self, record: &HostRecord) -> Result<bool> {
        let h = &record.release;
        let others = self.conn.execute(
            "DELETE FROM tv_hostapp WHERE releaseUuid != ?1",
            params![h.release_uuid],
        )?;
        if self.host_release(&h.release_uuid)?.as_ref() == Some(record) {
            return Ok(others > 0);
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO tv_hostapp (releaseUuid, appUuid, image, build, updater, installAttempts, attemptedAt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![h.release_uuid, h.app_uuid, h.image, h.build, h.updater, record.install_attempts, record.attempted_at],
        )?;
        Ok(true)
    }

    // ---- release trials (docs/trials.md) ----

    /// Every stored trial, one per app at most.
    pub fn trials(&self) -> Result<Vec<Trial>> {
        let mut stmt = self.conn.prepare(
            "SELECT appUuid, `commit`, windowMs, deadlineMs, state, reason, previousCommit, previousApp FROM tv_trial ORDER BY appUuid",
        )?;
        let rows = stmt.query_map([], |r| {
            let state: String = r.get(4)?;
            let previous_commit: Option<String> = r.get(6)?;
            let previous_app: Option<String> = r.get(7)?;
            Ok(Trial {
                app_uuid: r.get(0)?,
                commit: r.get(1)?,
                window_ms: r.get(2)?,
                deadline_ms: r.get(3)?,
                // An unknown state (a newer tinyvisor's) counts as failed: the safe side.
                state: TrialState::parse(&state).unwrap_or(TrialState::Failed),
                reason: r.get(5)?,
                previous: previous_commit
                    .zip(previous_app.and_then(|a| serde_json::from_str::<Value>(&a).ok())),
            })
        })?;
        rows.collect()
    }

    /// Stores an app's trial (replacing an earlier one of that app). Writes nothing when
    /// nothing changed.
    pub fn save_trial(&self, t: &Trial) -> Result<bool> {
        if self.trials()?.iter().any(|old| old == t) {
            return Ok(false);
        }
        let (prev_commit, prev_app) = match &t.previous {
            Some((c, app)) => (Some(c.as_str()), Some(app.to_string())),
            None => (None, None),
        };
        self.conn.execute(
            "INSERT OR REPLACE INTO tv_trial (appUuid, `commit`, windowMs, deadlineMs, state, reason, previousCommit, previousApp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![t.app_uuid, t.commit, t.window_ms, t.deadline_ms, t.state.as_str(), t.reason, prev_commit, prev_app],
        )?;
        Ok(true)
    }

    pub fn delete_trial(&self, app_uuid: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM tv_trial WHERE appUuid = ?1", params![app_uuid])?
            > 0)
    }

    /// The release an app last ran to the end (converged, and past its trial if it had one):
    /// its commit and the app as v3 JSON.
    pub fn applied_release(&self, app_uuid: &str) -> Result<Option<(String, Value)>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT `commit`, app FROM tv_applied WHERE appUuid = ?1",
                params![app_uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(c, app)| Some((c, serde_json::from_str(&app).ok()?))))
    }

    /// Records the release an app runs; nothing is written when the commit is the same.
    pub fn set_applied_release(&self, app_uuid: &str, commit: &str, app: &Value) -> Result<bool> {
        if self
            .applied_release(app_uuid)?
            .is_some_and(|(c, _)| c == commit)
        {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO tv_applied (appUuid, `commit`, app) VALUES (?1, ?2, ?3)",
            params![app_uuid, commit, app.to_string()],
        )?;
        Ok(true)
    }

    // ---- releases waiting to switch at the next boot (docs/windows.md) ----

    /// The boot id under which the device first saw `commit` of an app waiting for a reboot;
    /// recorded now (with `boot_id`) when it had not seen it.
    pub fn waiting_since_boot(
        &self,
        app_uuid: &str,
        commit: &str,
        boot_id: &str,
    ) -> Result<String> {
        let seen: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT `commit`, bootId FROM tv_wait WHERE appUuid = ?1",
                params![app_uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match seen {
            Some((c, boot)) if c == commit => Ok(boot),
            _ => {
                self.conn.execute(
                    "INSERT OR REPLACE INTO tv_wait (appUuid, `commit`, bootId) VALUES (?1, ?2, ?3)",
                    params![app_uuid, commit, boot_id],
                )?;
                Ok(boot_id.to_string())
            }
        }
    }

    // ---- offline bundles (docs/bundles.md) ----

    /// Bundles (by manifest digest) that were applied or superseded: a directory scan
    /// leaves them alone.
    pub fn bundles_done(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut stmt = self.conn.prepare("SELECT digest FROM tv_bundle")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    }

    /// Records a bundle as `applied` or `superseded`, with where it came from.
    pub fn record_bundle(
        &self,
        digest: &str,
        outcome: &str,
        source: &str,
        at_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO tv_bundle (digest, outcome, source, at) VALUES (?1, ?2, ?3, ?4)",
            params![digest, outcome, source, at_ms],
        )?;
        Ok(())
    }

    // ---- containers stopped by us (running: false) ----

    pub fn stopped_containers(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut stmt = self.conn.prepare("SELECT containerId FROM tv_stopped")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    }

    pub fn set_stopped(&self, container_id: &str, stopped: bool) -> Result<()> {
        if stopped {
            self.conn.execute(
                "INSERT OR IGNORE INTO tv_stopped (containerId) VALUES (?1)",
                params![container_id],
            )?;
        } else {
            self.conn.execute(
                "DELETE FROM tv_stopped WHERE containerId = ?1",
                params![container_id],
            )?;
        }
        Ok(())
    }

    // ---- local mode ----

    /// Deletes every app row of `source` (leaving local mode deletes the `local` apps).
    pub fn delete_apps(&self, source: &str) -> Result<usize> {
        self.conn
            .execute("DELETE FROM app WHERE source = ?1", params![source])
    }

    /// The engine objects present when local mode began (`engineSnapshot`, v19's table).
    pub fn engine_snapshot(&self) -> Result<Option<Value>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT snapshot FROM engineSnapshot LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Replaces the snapshot (`None` clears it).
    pub fn set_engine_snapshot(&mut self, snapshot: Option<&Value>) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM engineSnapshot", [])?;
        if let Some(s) = snapshot {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            tx.execute(
                "INSERT INTO engineSnapshot (snapshot, timestamp) VALUES (?1, ?2)",
                params![s.to_string(), now.to_string()],
            )?;
        }
        tx.commit()
    }

    // ---- API keys ----

    /// The device's global API key (`appId` 0, no service), created on first use; the cloud
    /// gets it as `api_secret`.
    pub fn global_api_key(
        &self,
        new_key: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<String> {
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT key FROM apiSecret WHERE appId = 0 AND serviceName IS NULL",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(key) = existing {
            return Ok(key);
        }
        let key = fresh_key(new_key)?;
        self.conn.execute(
            "INSERT INTO apiSecret (appId, key, scopes, serviceName) VALUES (0, ?1, ?2, NULL)",
            params![key, r#"[{"type":"global"}]"#],
        )?;
        Ok(key)
    }

    /// Replaces `old` by `new` in place (same app, service and scopes). Returns whether `old`
    /// was the global key; `None` when no such key exists.
    pub fn replace_api_key(&self, old: &str, new: &str) -> Result<Option<bool>> {
        let global: Option<bool> = self
            .conn
            .query_row(
                "SELECT appId = 0 AND serviceName IS NULL FROM apiSecret WHERE key = ?1",
                params![old],
                |r| r.get(0),
            )
            .optional()?;
        if global.is_some() {
            self.conn.execute(
                "UPDATE apiSecret SET key = ?2 WHERE key = ?1",
                params![old, new],
            )?;
        }
        Ok(global)
    }

    /// The scoped key of a service (`io.balena.features.supervisor-api`): the stored one when
    /// its scopes are still `[{"type":"app","appId":<app>}]`, else a new one from `new_key`
    /// (docs/contract/device-api.md §1). Returns the key and whether it was created.
    pub fn service_api_key(
        &self,
        app_id: i64,
        service_name: &str,
        new_key: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<(String, bool)> {
        let scopes = format!(r#"[{{"type":"app","appId":{app_id}}}]"#);
        let existing: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT key, scopes FROM apiSecret WHERE appId = ?1 AND serviceName = ?2",
                params![app_id, service_name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((key, stored)) = &existing {
            let same = serde_json::from_str::<serde_json::Value>(stored).ok()
                == serde_json::from_str::<serde_json::Value>(&scopes).ok();
            if same {
                return Ok((key.clone(), false));
            }
        }
        let key = fresh_key(new_key)?;
        self.conn.execute(
            "INSERT INTO apiSecret (appId, key, scopes, serviceName) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (appId, serviceName) DO UPDATE SET key = excluded.key, scopes = excluded.scopes",
            params![app_id, key, scopes, service_name],
        )?;
        Ok((key, true))
    }

    /// Every API key with its scopes (JSON text as stored).
    pub fn api_keys(&self) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, COALESCE(scopes, '[]') FROM apiSecret WHERE key IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Number of database pages written since open, for the "no writes while idle" checks.
    pub fn total_changes(&self) -> u64 {
        self.conn.total_changes()
    }
}

#[cfg(target_arch = "arm")]
mod arm_barrier;
#[cfg(test)]
mod tests;
