//! The cloud link end to end: a managed tinyvisor against the mock balena API (cloud-api.md §8)
//! and the real engine. Provisioning (success, conflict, bad key, retries), polling with ETags,
//! rejected targets, diffed reports and their cache across restarts. One test at a time (they
//! own every supervised container).

mod common;

use common::mock_api::{MockApi, Recorded};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const APP_UUID: &str = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";

fn v3_target(commit: &str, version: &str) -> Value {
    json!({ UUID: {"name": "cloud-device", "config": {}, "apps": {APP_UUID: {
        "id": 4242, "name": "testapp", "class": "fleet",
        "releases": {commit: {"id": 1, "services": {"main": {
            "id": 1, "image_id": 1, "image": BUSYBOX, "running": true,
            "environment": {"VERSION": version}, "labels": {},
            "composition": {"init": true, "tty": false,
                "command": ["sh", "-c", "echo hello-from-$VERSION; echo oops >&2; trap 'exit 0' TERM; while true; do sleep 0.2; done"]}
        }}, "volumes": {"data": {}}, "networks": {}}}
    }}}})
}

/// A daemon whose config.json points at the mock, with a provisioning key.
fn managed(api: &MockApi, extra: Value) -> Daemon {
    let _ = std::fs::remove_file("/tmp/balena-supervisor/state-report-cache");
    let d = Daemon::create();
    let mut cfg = json!({
        "apiEndpoint": api.url, "apiKey": "provisioningkey", "applicationId": 1234,
        "uuid": UUID, "bootstrapRetryDelay": 200, "deviceType": "generic-amd64",
        "os": {"sshKeys": ["ssh-ed25519 AAAA keep"]}, "installer": {"secureboot": false}
    });
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    std::fs::write(d.dir.join("boot/config.json"), cfg.to_string()).unwrap();
    d
}

fn config_json(d: &Daemon) -> Value {
    serde_json::from_slice(&std::fs::read(d.dir.join("boot/config.json")).unwrap()).unwrap()
}

fn reports(api: &MockApi) -> Vec<Value> {
    api.calls("PATCH", "/device/v3/state")
        .iter()
        .map(|r| r.json()[UUID].clone())
        .collect()
}

/// The first report (after `from`) in which the app's `commit` release is `done`.
fn wait_release_done(api: &MockApi, commit: &str, from: usize) {
    api.wait_for(
        &format!("report of {commit} done"),
        Duration::from_secs(90),
        |rs| {
            rs.iter()
                .filter(|r| r.method == "PATCH" && r.status == 200)
                .skip(from)
                .any(|r| {
                    let app = &r.json()[UUID]["apps"][APP_UUID];
                    app["release_uuid"] == commit
                        && app["releases"][commit]["update_status"] == "done"
                })
        },
    );
}

fn running_version(e: &tinyvisor::engine::Engine) -> Vec<String> {
    e.list_containers(false, &["io.balena.supervised"])
        .unwrap()
        .iter()
        .map(|c| {
            let i = e.inspect_container(&c.id).unwrap();
            i.config
                .env
                .iter()
                .filter_map(|v| v.strip_prefix("VERSION=").map(str::to_string))
                .collect::<String>()
        })
        .collect()
}

fn finish(mut d: Daemon) {
    d.kill9();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4242_data", true);
}

/// Size and modification time of the database and its WAL.
fn db_files(d: &Daemon) -> Vec<(u64, std::time::SystemTime)> {
    ["database.sqlite", "database.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(d.dir.join("data").join(f)).ok())
        .map(|m| (m.len(), m.modified().unwrap()))
        .collect()
}

fn update(d: &Daemon) -> u16 {
    d.request("POST", "/v1/update", Some("{}")).unwrap().0
}

#[test]
fn provision_poll_converge_report_and_follow_new_releases() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let api = MockApi::start();
    api.set(|b| b.target = Some(v3_target("commit1", "a")));
    let mut d = managed(&api, json!({}));
    d.start();

    // Registration: the exact request of §2.3.
    api.wait_for("register", Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.url == "/device/register")
    });
    let reg = &api.calls("POST", "/device/register")[0];
    assert_eq!(reg.bearer(), Some("provisioningkey"));
    assert!(reg
        .header("User-Agent")
        .unwrap()
        .starts_with("Supervisor/19.0.5"));
    let body = reg.json();
    assert_eq!(body["application"], 1234);
    assert_eq!(body["uuid"], UUID);
    assert_eq!(body["device_type"], "generic-amd64");
    assert!(body["supervisor_version"]
        .as_str()
        .unwrap()
        .starts_with("19.0.5"));

    wait_release_done(&api, "commit1", 0);
    let cfg = config_json(&d);
    let device_key = cfg["deviceApiKey"].as_str().unwrap().to_string();
    assert_eq!(body["api_key"], device_key.as_str());
    assert_eq!(cfg["deviceId"], 42);
    assert!(cfg["registered_at"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(
        cfg.get("apiKey").is_none(),
        "provisioning key must be removed: {cfg}"
    );
    assert_eq!(cfg["os"]["sshKeys"], json!(["ssh-ed25519 AAAA keep"]));
    assert_eq!(cfg["installer"], json!({"secureboot": false}));

    // Polls use the device key; the first has no ETag.
    let polls = api.calls("GET", &format!("/device/v3/{UUID}/state"));
    assert!(polls
        .iter()
        .all(|p| p.bearer() == Some(device_key.as_str())));
    assert_eq!(polls[0].header("If-None-Match"), None);
    assert_eq!(running_version(&e), ["a"]);

    // The first report carries everything, later ones only what changed.
    let rs = reports(&api);
    assert_eq!(rs[0]["api_port"], d.port);
    assert_eq!(rs[0]["status"], "Idle");
    assert_eq!(rs[0]["provisioning_state"], "");
    let secret = rs[0]["api_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32);
    for later in &rs[1..] {
        for fixed in [
            "api_port",
            "api_secret",
            "supervisor_version",
            "os_version",
            "status",
        ] {
            assert!(later.get(fixed).is_none(), "{fixed} re-sent in {later}");
        }
    }
    let patches = api.calls("PATCH", "/device/v3/state");
    for pair in patches.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(9_500), "reports {gap:?} apart");
    }

    // Logs: container output and supervisor events on one gzip NDJSON stream.
    let wait_log = |what: &str, f: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if api.logs.lock().unwrap().iter().any(f) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no log line {what}; got {:#?}", api.logs.lock().unwrap());
    };
    wait_log("hello-from-a", &|l| {
        l == &json!({"message": "hello-from-a", "timestamp": l["timestamp"], "serviceId": 1, "isStdErr": false})
    });
    // Not a TTY (compose's default is one), so the engine keeps stderr apart.
    wait_log("oops on stderr", &|l| {
        l["message"] == "oops" && l["isStdErr"] == true
    });
    wait_log("Installed service", &|l| {
        l["message"] == format!("Installed service 'main {BUSYBOX}'") && l["isSystem"] == true
    });
    let stream = &api.calls("POST", &format!("/device/v2/{UUID}/log-stream"))[0];
    assert_eq!(stream.bearer(), Some(device_key.as_str()));
    assert_eq!(stream.header("Content-Encoding"), Some("gzip"));
    assert_eq!(stream.header("Content-Type"), Some("application/x-ndjson"));

    // The local API now wants the key the cloud was given.
    assert_eq!(d.get("/v2/state/status").unwrap().0, 401);
    assert_eq!(d.get("/ping").unwrap().0, 200);
    d.key = Some(secret.clone());
    assert_eq!(d.get("/v2/state/status").unwrap().0, 200);
    assert_eq!(
        d.get(&format!("/v2/state/status?apikey={secret}"))
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        d.request("POST", "/v2/local/target-state", Some("{}"))
            .unwrap(),
        (
            400,
            json!({"status": "failed", "message": "Target state can only set when device is in local mode"})
        )
    );

    // /v1/update: a conditional fetch, 304, nothing re-created and nothing written.
    let ids_before = container_names(&e);
    let db_before = db_files(&d);
    let n = api.requests().len();
    assert_eq!(update(&d), 204);
    api.wait_for("conditional poll", Duration::from_secs(10), |rs| {
        rs[n..].iter().any(|r| r.status == 304)
    });
    let poll = api.requests()[n..]
        .iter()
        .find(|r| r.status == 304)
        .cloned()
        .unwrap();
    assert_eq!(poll.header("If-None-Match"), Some("\"1\""));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(container_names(&e), ids_before);
    assert_eq!(db_files(&d), db_before, "a 304 must not write the database");

    // A new release is fetched in full and applied.
    api.set(|b| {
        b.target = Some(v3_target("commit2", "b"));
        b.etag = "\"2\"".into();
    });
    let from = api.calls("PATCH", "/device/v3/state").len();
    assert_eq!(update(&d), 204);
    wait_release_done(&api, "commit2", from);
    assert_eq!(running_version(&e), ["b"]);

    // Garbage and invalid targets are rejected; the release keeps running.
    for bad in [
        b"{not json".to_vec(),
        json!({ UUID: {"name": "x", "config": {}, "apps": {APP_UUID: {"id": 4242, "name": "t",
            "releases": {"commit3": {"id": 3, "services": {"bad name!": {"id": 1, "image_id": 1,
            "image": BUSYBOX, "environment": {}, "labels": {}}}}}}}}})
        .to_string()
        .into_bytes(),
        json!({"someone-else": {"name": "x", "config": {}, "apps": {}}})
            .to_string()
            .into_bytes(),
    ] {
        api.set(|b| b.raw_target = Some(bad.clone()));
        let n = api.requests().len();
        assert_eq!(update(&d), 204);
        api.wait_for("poll of a bad target", Duration::from_secs(10), |rs| {
            rs[n..].iter().any(|r| r.method == "GET")
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(d.log_text().contains("Could not move to new release"));
        assert_eq!(running_version(&e), ["b"]);
    }
    let (_, status) = d.get("/v2/state/status").unwrap();
    assert_eq!(status["release"], "commit2", "{status}");

    // After a restart the cached report means nothing is sent again in full.
    api.set(|b| b.raw_target = None);
    d.stop();
    let n = api.requests().len();
    d.start();
    api.wait_for("poll after restart", Duration::from_secs(10), |rs| {
        rs[n..].iter().any(|r| r.method == "GET")
    });
    let first = api.requests()[n..]
        .iter()
        .find(|r| r.method == "GET")
        .cloned()
        .unwrap();
    assert_eq!(first.header("If-None-Match"), None, "ETags are memory only");
    assert!(
        api.calls("POST", "/device/register").len() == 1,
        "registered once"
    );
    std::thread::sleep(Duration::from_secs(3));
    for r in &api.requests()[n..] {
        if r.method == "PATCH" {
            assert!(
                r.json()[UUID].get("api_port").is_none(),
                "full report after restart"
            );
        }
    }
    finish(d);
}

fn container_names(e: &tinyvisor::engine::Engine) -> Vec<String> {
    let mut v: Vec<String> = e
        .list_containers(true, &["io.balena.supervised"])
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    v.sort();
    v
}

#[test]
fn a_registered_uuid_exchanges_keys() {
    let _serial = serial();
    let api = MockApi::start();
    api.set(|b| {
        b.register_status = 409;
        b.known_keys = vec!["provisioningkey".into()];
    });
    let mut d = managed(&api, json!({}));
    d.start();
    api.wait_for("key exchange", Duration::from_secs(10), |rs| {
        rs.iter()
            .any(|r| r.url == "/api-key/device/42/device-key" && r.status == 200)
    });
    let cfg = config_json(&d);
    let device_key = cfg["deviceApiKey"].as_str().unwrap();
    let lookups = api.calls("GET", "/v7/device");
    assert_eq!(
        lookups[0].url,
        format!("/v7/device?$select=id&$filter=uuid%20eq%20'{UUID}'")
    );
    // First with the device key (unknown), then with the provisioning key.
    assert_eq!(lookups[0].bearer(), Some(device_key));
    assert_eq!(lookups[1].bearer(), Some("provisioningkey"));
    let exchange = &api.calls("POST", "/api-key/device/")[0];
    assert_eq!(exchange.bearer(), Some("provisioningkey"));
    assert_eq!(exchange.json(), json!({"apiKey": device_key}));
    api.wait_for("config.json written", Duration::from_secs(5), |_| {
        config_json(&d).get("apiKey").is_none()
    });
    let cfg = config_json(&d);
    assert_eq!(cfg["deviceId"], 42);
    assert_eq!(cfg["uuid"], UUID);
    api.wait_for("poll with the device key", Duration::from_secs(10), |rs| {
        rs.iter()
            .any(|r| r.url.ends_with("/state") && r.bearer() == Some(device_key))
    });
    finish(d);
}

#[test]
fn bad_keys_and_server_errors_are_retried_and_change_nothing() {
    let _serial = serial();
    let api = MockApi::start();
    api.set(|b| b.register_status = 401);
    let mut d = managed(&api, json!({}));
    let before = std::fs::read(d.dir.join("boot/config.json")).unwrap();
    d.start();
    api.wait_for(
        "three refused registrations",
        Duration::from_secs(10),
        |rs| rs.iter().filter(|r| r.url == "/device/register").count() >= 3,
    );
    // Only the generated device key was added; the provisioning key stays.
    let cfg = config_json(&d);
    assert_eq!(cfg["apiKey"], "provisioningkey");
    assert!(cfg.get("registered_at").is_none());
    let mut was: Value = serde_json::from_slice(&before).unwrap();
    was["deviceApiKey"] = cfg["deviceApiKey"].clone();
    assert_eq!(cfg, was);
    // No poll before provisioning.
    assert!(api.calls("GET", "/device/v3/").is_empty());
    let regs = api.calls("POST", "/device/register");
    let gap = regs[2].at - regs[1].at;
    assert!(
        gap >= Duration::from_millis(150),
        "bootstrapRetryDelay not honoured: {gap:?}"
    );

    api.set(|b| b.register_status = 500);
    let n = regs.len();
    api.wait_for("retries after 500", Duration::from_secs(10), |rs| {
        rs.iter().filter(|r| r.url == "/device/register").count() >= n + 2
    });
    api.set(|b| b.register_status = 201);
    api.wait_for("poll after provisioning", Duration::from_secs(10), |rs| {
        rs.iter()
            .any(|r| r.url.ends_with("/state") && r.method == "GET")
    });
    assert!(config_json(&d).get("apiKey").is_none());
    finish(d);
}

#[test]
fn a_refused_report_is_retried_after_retry_after_seconds() {
    let _serial = serial();
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(json!({UUID: {"name": "cloud-device", "config": {}, "apps": {}}}));
        b.report_status = 503;
        b.retry_after = Some(2);
    });
    let mut d = managed(&api, json!({}));
    d.start();
    api.wait_for("two refused reports", Duration::from_secs(20), |rs| {
        rs.iter().filter(|r| r.method == "PATCH").count() >= 2
    });
    let patches: Vec<Recorded> = api.calls("PATCH", "/device/v3/state");
    let gap = patches[1].at - patches[0].at;
    assert!(
        gap >= Duration::from_millis(1_900) && gap < Duration::from_secs(9),
        "Retry-After: 2 means 2 s, got {gap:?}"
    );
    // The refused report is sent again whole (nothing was acknowledged).
    assert_eq!(patches[1].json()[UUID]["api_port"], d.port);
    api.set(|b| b.report_status = 200);
    let start = Instant::now();
    api.wait_for("accepted report", Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.method == "PATCH" && r.status == 200)
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    finish(d);
}
