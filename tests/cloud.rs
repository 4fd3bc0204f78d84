//! The cloud link end to end: a managed tinyvisor against the mock balena API
//! (docs/contract/cloud-api.md §8) and the real engine. Provisioning (success, conflict, bad key,
//! retries), polling with ETags, rejected targets, diffed reports and their cache across restarts.
//! One test at a time (they own every supervised container).

mod common;

use common::mock_api::{MockApi, Recorded};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const APP_UUID: &str = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";

fn v3_target(commit: &str, version: &str) -> Value {
    v3_target_with(commit, version, BUSYBOX)
}

fn v3_target_with(commit: &str, version: &str, image: &str) -> Value {
    use common::targets::{v3_app, v3_service, SLEEPER};
    let command = format!("echo hello-from-$VERSION; echo oops >&2; {SLEEPER}");
    let main = v3_service(
        1,
        image,
        json!({"environment": {"VERSION": version},
            "composition": {"tty": false, "command": ["sh", "-c", command]}}),
    );
    let app = v3_app(
        4242,
        "testapp",
        commit,
        json!({ "main": main }),
        json!({"data": {}}),
    );
    common::targets::v3_target(UUID, "cloud-device", json!({ APP_UUID: app }))
}

/// The device key the password-protected registry of scripts/setup-engine accepts (user
/// `d_<UUID>`).
const DEVICE_KEY: &str = "devicekey0123456789abcdef0123456";
const PRIVATE_IMAGE: &str = "127.0.0.1:5859/tinyvisor/private:1";

/// Config of a device that is already provisioned with `key`.
fn provisioned_with(key: &str) -> Value {
    json!({"apiKey": null, "registered_at": 1_700_000_000_000u64, "deviceId": 42, "deviceApiKey": key})
}

/// A daemon whose config.json points at the mock, with a provisioning key.
fn managed(api: &MockApi, extra: Value) -> Daemon {
    let _ = std::fs::remove_file("/tmp/balena-supervisor/state-report-cache");
    let _ = std::fs::remove_file("/tmp/balena-supervisor/tags-report-cache");
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

/// The mock API serving `target` and a started device already provisioned with DEVICE_KEY.
fn provisioned_device(target: Value) -> (MockApi, Daemon) {
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(target);
        b.known_keys = vec![DEVICE_KEY.into()];
    });
    let mut d = managed(&api, provisioned_with(DEVICE_KEY));
    d.start();
    (api, d)
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
    let mut d = managed(&api, json!({"initialDeviceName": "kitchen-pi"}));
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
    // The initial device name, once, with the device key.
    let named = api.calls("PATCH", "/v7/device(42)");
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].json(), json!({"device_name": "kitchen-pi"}));
    assert_eq!(named[0].bearer(), Some(device_key.as_str()));

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
    let with_apps = rs.iter().rev().find(|r| r.get("apps").is_some()).unwrap();
    assert_eq!(
        with_apps["apps"][APP_UUID]["releases"]["commit1"]["services"]["main"],
        json!({"image": BUSYBOX, "status": "Running"}),
        "services are reported by image name"
    );
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

/// Traffic of an idle, converged device against an API that answers 304 (run by
/// `scripts/bench-cloud`, which prints the numbers; `TV_IDLE_SECONDS` sets the length).
/// Fails if anything beyond the polls exceeds 2 KiB per hour.
#[test]
#[ignore]
fn idle_traffic_per_hour() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let api = MockApi::start();
    // TV_HARDWARE_METRICS=0 turns metrics off in the target (SUPERVISOR_HARDWARE_METRICS).
    let metrics = std::env::var("TV_HARDWARE_METRICS").map_or(true, |v| v != "0");
    let mut target = v3_target("commit1", "a");
    if !metrics {
        target[UUID]["config"] = json!({"SUPERVISOR_HARDWARE_METRICS": "false"});
    }
    api.set(|b| {
        b.target = Some(target);
        b.known_keys = vec![DEVICE_KEY.into()];
    });
    let interval_ms: u64 = 30_000;
    let mut config = provisioned_with(DEVICE_KEY);
    config["appUpdatePollInterval"] = json!(interval_ms);
    let mut d = managed(&api, config);
    d.start();
    wait_release_done(&api, "commit1", 0);
    // Let the last deferred report go out, and the first metrics interval pass: the readings
    // taken while converging differ from idle ones and are sent once.
    std::thread::sleep(Duration::from_secs(
        std::env::var("TV_SETTLE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(320),
    ));
    let seconds: u64 = std::env::var("TV_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let from = api.requests().len();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = started.elapsed().as_secs_f64();
    let window: Vec<Recorded> = api.requests()[from..].to_vec();
    let polls: Vec<&Recorded> = window.iter().filter(|r| r.method == "GET").collect();
    let others: Vec<&Recorded> = window.iter().filter(|r| r.method != "GET").collect();
    let bytes = |rs: &[&Recorded]| -> usize { rs.iter().map(|r| r.bytes_in + r.bytes_out).sum() };
    let per_poll = bytes(&polls) as f64 / polls.len().max(1) as f64;
    let other_per_hour = bytes(&others) as f64 * 3600.0 / elapsed;
    // A real device polls every 900 s plus up to 60 s of jitter: about 3.9 polls an hour.
    let polls_per_hour_default = 3600.0 / 930.0;
    println!(
        "idle for {elapsed:.0} s (poll interval {interval_ms} ms + jitter, hardware metrics {}):",
        if metrics { "on" } else { "off" }
    );
    println!(
        "  polls: {} (all 304: {}), {per_poll:.0} bytes each (request + answer)",
        polls.len(),
        polls.iter().all(|p| p.status == 304)
    );
    println!(
        "  other calls: {} ({:?}), {:.0} bytes → {other_per_hour:.0} bytes/hour",
        others.len(),
        others
            .iter()
            .map(|r| format!(
                "{} {} {:?}",
                r.method,
                r.url,
                r.json()[UUID]
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>())
            ))
            .collect::<Vec<_>>(),
        bytes(&others) as f64
    );
    println!(
        "  per idle hour at the default interval: {:.0} bytes of polls + {other_per_hour:.0} bytes other",
        per_poll * polls_per_hour_default
    );
    assert!(polls.iter().all(|p| p.status == 304));
    assert!(
        other_per_hour <= 2048.0,
        "{other_per_hour:.0} bytes/hour beyond polls"
    );
    finish(d);
}

#[test]
fn private_images_are_pulled_with_the_device_credentials() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_image(PRIVATE_IMAGE, true);
    let wrong = "wrongkey0123456789abcdef01234567";
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(v3_target_with("commit1", "a", PRIVATE_IMAGE));
        b.known_keys = vec![DEVICE_KEY.into(), wrong.into()];
    });

    // A wrong password: the registry refuses, the pull is retried with backoff, nothing runs.
    let mut d = managed(&api, provisioned_with(wrong));
    d.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.log_text().matches("Failed to download image").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no retried failure: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = d.log_text();
    assert!(
        log.contains("unauthorized")
            || log.contains("authentication required")
            || log.contains("no basic auth"),
        "{log}"
    );
    assert!(e.inspect_image(PRIVATE_IMAGE).is_err());
    assert!(running_version(&e).is_empty());
    d.kill9();

    // The right one: pulled and running.
    let mut d = managed(&api, provisioned_with(DEVICE_KEY));
    d.start();
    wait_release_done(&api, "commit1", 0);
    assert_eq!(running_version(&e), ["a"]);
    assert!(e.inspect_image(PRIVATE_IMAGE).is_ok());
    finish(d);
    let _ = e.remove_image(PRIVATE_IMAGE, true);
}

#[test]
fn deltas_are_pulled_with_a_token_and_fall_back_to_a_regular_pull() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let reg = registry();
    let (r1, r2, delta) = (
        format!("{reg}/tinyvisor/busybox:1"),
        format!("{reg}/tinyvisor/busybox:2"),
        format!("{reg}/tinyvisor/delta:1"),
    );
    for i in [&r1, &r2, &delta] {
        let _ = e.remove_image(i, true);
    }
    let with_delta = |commit: &str, image: &str| {
        let mut t = v3_target_with(commit, commit, image);
        t[UUID]["config"] = json!({"SUPERVISOR_DELTA": "1", "SUPERVISOR_DELTA_VERSION": "3"});
        t
    };
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(with_delta("c1", &r1));
        b.known_keys = vec![DEVICE_KEY.into()];
        b.delta_name = delta.clone();
    });
    let mut config = provisioned_with(DEVICE_KEY);
    config["deltaEndpoint"] = json!(api.url);
    let mut d = managed(&api, config);
    d.start();
    // Nothing to diff against yet: a regular pull, no delta request.
    wait_release_done(&api, "c1", 0);
    assert!(api.calls("GET", "/api/v3/delta").is_empty());
    let secret = reports(&api)[0]["api_secret"].as_str().unwrap().to_string();
    d.key = Some(secret);

    // Release 2: a delta from release 1's image, pulled with the token and named as the target.
    api.set(|b| {
        b.target = Some(with_delta("c2", &r2));
        b.etag = "\"2\"".into();
    });
    let from = api.calls("PATCH", "/device/v3/state").len();
    assert_eq!(update(&d), 204);
    wait_release_done(&api, "c2", from);
    assert_eq!(running_version(&e), ["c2"]);
    let token = &api.calls("GET", "/auth/v1/token")[0];
    assert_eq!(
        token.url,
        "/auth/v1/token?service=127.0.0.1%3A5858&scope=repository%3Atinyvisor%2Fbusybox%3Apull&scope=repository%3Atinyvisor%2Fbusybox%3Apull"
    );
    let asked = &api.calls("GET", "/api/v3/delta")[0];
    assert_eq!(asked.bearer(), Some("delta-token-1"));
    assert_eq!(
        asked.url,
        format!(
            "/api/v3/delta?src={}&dest={}",
            r1.replace(':', "%3A").replace('/', "%2F"),
            r2.replace(':', "%3A").replace('/', "%2F")
        )
    );
    assert!(
        e.inspect_image(&delta).is_ok(),
        "the delta image was pulled"
    );
    assert_eq!(
        e.inspect_image(&r2).unwrap().id,
        e.inspect_image(&delta).unwrap().id
    );
    assert!(d.log_text().contains("Downloading delta for image"));

    // Release 3: the server is still computing (retried later, not a failure), then has no
    // delta for it (4xx): a regular pull.
    api.set(|b| {
        b.target = Some(with_delta("c3", &r1));
        b.etag = "\"3\"".into();
        b.delta_status = 504;
    });
    let from = api.calls("PATCH", "/device/v3/state").len();
    assert_eq!(update(&d), 204);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .log_text()
        .contains("Delta still processing remotely. Will retry...")
    {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    api.set(|b| b.delta_status = 400);
    wait_release_done(&api, "c3", from);
    assert_eq!(running_version(&e), ["c3"]);
    assert!(d.log_text().contains("pulling it in full"));
    finish(d);
    for i in [&r1, &r2, &delta] {
        let _ = e.remove_image(i, true);
    }
}

#[test]
fn local_mode_switched_by_the_cloud_keeps_local_apps_apart_and_cleans_up() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4343_scratch", true);
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(v3_target("c1", "a"));
        b.known_keys = vec![DEVICE_KEY.into()];
    });
    let mut d = managed(&api, provisioned_with(DEVICE_KEY));
    d.start();
    wait_release_done(&api, "c1", 0);
    let secret = reports(&api)[0]["api_secret"].as_str().unwrap().to_string();
    d.key = Some(secret.clone());
    assert_eq!(
        d.request("POST", "/v2/local/target-state", Some("{}"))
            .unwrap()
            .0,
        400
    );

    // The cloud turns local mode on: the cloud app goes (its volume stays), auth is off.
    let mut local_on = v3_target("c1", "a");
    local_on[UUID]["config"] = json!({"SUPERVISOR_LOCAL_MODE": "1"});
    api.set(|b| {
        b.target = Some(local_on);
        b.etag = "\"2\"".into();
    });
    let entered_at = api.calls("PATCH", "/device/v3/state").len();
    assert_eq!(update(&d), 204);
    d.key = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running_version(&e).is_empty() || d.get("/v2/state/status").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(e.inspect_volume("4242_data").is_ok());

    // A local target (balena push to a local device) runs beside nothing else.
    let app = common::targets::LocalApp {
        device: "local-device",
        id: 4343,
        name: "localapp",
        commit: "l1",
        volumes: json!({"scratch": {}}),
    };
    let service = json!({"environment": {"VERSION": "local"}});
    let service = common::targets::local_service(1, "local", service);
    let local = common::targets::local_target(app, vec![service]);
    assert_eq!(d.post_target(&local).0, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_version(&e) != ["local"] {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(e.inspect_volume("4343_scratch").is_ok());
    std::thread::sleep(Duration::from_secs(11));
    for r in &reports(&api)[entered_at..] {
        assert!(r.get("apps").is_none(), "apps reported in local mode: {r}");
    }

    // The cloud turns it off again: what local mode made is removed, the cloud app returns.
    api.set(|b| {
        b.target = Some(v3_target("c1", "a"));
        b.etag = "\"3\"".into();
    });
    assert_eq!(update(&d), 204);
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_version(&e) != ["a"] {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        e.inspect_volume("4343_scratch").is_err(),
        "local volume left behind"
    );
    assert!(e.inspect_volume("4242_data").is_ok(), "cloud volume lost");
    assert_eq!(d.get("/v2/state/status").unwrap().0, 401, "auth is back");
    d.key = Some(secret);
    assert_eq!(d.get("/v2/state/status").unwrap().0, 200);
    finish(d);
}

#[test]
fn failed_polls_back_off_instead_of_waiting_for_the_next_interval() {
    let _serial = serial();
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(v3_target("c1", "a"));
        b.known_keys = vec![DEVICE_KEY.into()];
        b.target_status = 500;
    });
    // Backoff is min(interval, 15 s × 2^n): with a 2 s interval every retry comes after 2 s,
    // where a successful poll would wait the interval plus up to 60 s of jitter.
    let mut config = provisioned_with(DEVICE_KEY);
    config["appUpdatePollInterval"] = json!(2000);
    let mut d = managed(&api, config);
    d.start();
    api.wait_for("three failed polls", Duration::from_secs(15), |rs| {
        rs.iter()
            .filter(|r| r.url.ends_with("/state") && r.status == 500)
            .count()
            >= 3
    });
    let polls = api.calls("GET", &format!("/device/v3/{UUID}/state"));
    for pair in polls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(1_900), "retried after {gap:?}");
    }
    assert!(d
        .log_text()
        .contains("Failed to get target state for device: Error from the API: 500"));
    // Recovery: the next retry gets the target and applies it.
    api.set(|b| b.target_status = 200);
    wait_release_done(&api, "c1", 0);
    finish(d);
}

#[test]
fn a_failed_fetch_asked_for_by_the_api_is_retried_after_its_backoff() {
    let _serial = serial();
    let (api, d) = {
        let api = MockApi::start();
        api.set(|b| {
            b.target = Some(v3_target("c1", "a"));
            b.known_keys = vec![DEVICE_KEY.into()];
        });
        // An hour between scheduled polls: only a retry can fetch within the test.
        let mut config = provisioned_with(DEVICE_KEY);
        config["appUpdatePollInterval"] = json!(3_600_000);
        let mut d = managed(&api, config);
        d.start();
        (api, d)
    };
    let mut d = d;
    wait_release_done(&api, "c1", 0);
    d.key = Some(reports(&api)[0]["api_secret"].as_str().unwrap().to_string());
    api.set(|b| b.target_status = 500);
    assert_eq!(update(&d), 204);
    api.wait_for("the failed fetch", Duration::from_secs(10), |rs| {
        rs.iter()
            .any(|r| r.url.ends_with("/state") && r.status == 500)
    });
    let failed_at = Instant::now();
    api.set(|b| {
        b.target_status = 200;
        b.target = Some(v3_target("c2", "b"));
        b.etag = "\"2\"".into();
    });
    // backoff(1) = 15 s: the announced retry fetches the new release.
    wait_release_done(&api, "c2", 0);
    assert!(failed_at.elapsed() < Duration::from_secs(40));
    assert!(d.log_text().contains("retrying in 15s"));
    finish(d);
}

/// The environment variable `name` of the running container of `service`.
fn container_env(e: &tinyvisor::engine::Engine, service: &str, name: &str) -> Option<String> {
    let c = e
        .list_containers(false, &[&format!("io.balena.service-name={service}")])
        .unwrap()
        .into_iter()
        .next()?;
    let env = e.inspect_container(&c.id).unwrap().config.env;
    env.iter()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(String::from))
}

#[test]
fn scoped_service_keys_act_only_on_their_own_app() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let svc = |id: u32, labels: Value| {
        common::targets::v3_service(id, BUSYBOX, json!({ "labels": labels }))
    };
    let other_app = "b1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";
    let target = json!({ UUID: {"name": "cloud-device", "config": {}, "apps": {
        APP_UUID: {"id": 4242, "name": "testapp", "class": "fleet", "releases": {"c1": {"id": 1,
            "services": {"main": svc(1, json!({"io.balena.features.supervisor-api": "1"})),
                         "helper": svc(2, json!({}))}, "volumes": {}, "networks": {}}}},
        other_app: {"id": 5353, "name": "otherapp", "class": "fleet", "releases": {"c2": {"id": 2,
            "services": {"other": svc(3, json!({}))}, "volumes": {}, "networks": {}}}}
    }}});
    let (api, mut d) = provisioned_device(target);
    wait_release_done(&api, "c1", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while e
        .list_containers(false, &["io.balena.supervised"])
        .unwrap()
        .len()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let global = reports(&api)[0]["api_secret"].as_str().unwrap().to_string();

    // Only the service with the supervisor-api feature has a key, under both prefixes.
    let scoped = container_env(&e, "main", "BALENA_SUPERVISOR_API_KEY").expect("no scoped key");
    assert_eq!(scoped.len(), 32);
    assert_ne!(scoped, global);
    assert_eq!(
        container_env(&e, "main", "RESIN_SUPERVISOR_API_KEY").as_deref(),
        Some(scoped.as_str())
    );
    assert_eq!(
        container_env(&e, "helper", "BALENA_SUPERVISOR_API_KEY"),
        None
    );

    let mut call = |key: Option<&str>, method: &str, path: &str, body: Option<&str>| {
        d.key = key.map(String::from);
        d.request(method, path, body).unwrap()
    };
    let s = Some(scoped.as_str());
    let g = Some(global.as_str());
    // Who gets in.
    assert_eq!(call(None, "GET", "/v2/version", None).0, 401);
    assert_eq!(
        call(Some("0000deadbeef"), "GET", "/v2/version", None).0,
        401
    );
    assert_eq!(call(s, "GET", "/v2/version", None).0, 200);
    assert_eq!(call(g, "GET", "/v2/version", None).0, 200);
    // What a scoped key may touch: its own app only.
    let unauthorized = json!({"status": "failed", "message": "Unauthorized"});
    let restart_other = r#"{"serviceName": "other"}"#;
    assert_eq!(
        call(
            s,
            "POST",
            "/v2/applications/5353/restart-service",
            Some(restart_other)
        ),
        (401, unauthorized.clone())
    );
    assert_eq!(
        call(s, "POST", "/v1/restart", Some(r#"{"appId": 5353}"#)),
        (401, unauthorized.clone())
    );
    assert_eq!(
        call(s, "POST", "/v2/applications/5353/purge", Some("{}")),
        (401, unauthorized)
    );
    assert_eq!(
        call(s, "GET", "/v1/apps/5353", None),
        (
            401,
            json!({"status": "failed", "message": "Application is not available"})
        )
    );
    assert_eq!(
        call(s, "GET", "/v2/applications/5353/state", None),
        (
            409,
            json!({"status": "failed", "message": "Application ID does not exist: 5353"})
        )
    );
    let (_, ids) = call(s, "GET", "/v2/containerId", None);
    let mut names: Vec<_> = ids["services"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    names.sort();
    assert_eq!(names, ["helper", "main"]);
    let (_, ids) = call(g, "GET", "/v2/containerId", None);
    assert_eq!(ids["services"].as_object().unwrap().len(), 3);
    let (_, apps) = call(s, "GET", "/v2/applications/state", None);
    assert_eq!(
        apps.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["testapp"]
    );
    let (_, status) = call(s, "GET", "/v2/state/status", None);
    assert!(status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["appId"] == 4242));
    // ... and acting on its own app works.
    let id_of = |e: &tinyvisor::engine::Engine, service: &str| {
        e.list_containers(false, &[&format!("io.balena.service-name={service}")])
            .unwrap()
            .first()
            .map(|c| c.id.clone())
    };
    let before = id_of(&e, "helper");
    assert_eq!(
        call(
            s,
            "POST",
            "/v2/applications/4242/restart-service",
            Some(r#"{"serviceName": "helper"}"#)
        ),
        (200, json!("OK"))
    );
    let after = id_of(&e, "helper");
    assert!(after.is_some() && after != before, "not recreated");
    // The global key acts on any app.
    assert_eq!(
        call(
            g,
            "POST",
            "/v2/applications/5353/restart-service",
            Some(restart_other)
        )
        .0,
        200
    );

    // Regenerating the scoped key: the old one stops working at once, the service gets the
    // new one when its container is recreated (which the next apply does: its env changed).
    let (code, new) = call(s, "POST", "/v1/regenerate-api-key", None);
    assert_eq!(code, 200);
    let new = new.as_str().unwrap().to_string();
    assert!(new.len() == 32 && new != scoped);
    assert_eq!(call(s, "GET", "/v2/version", None).0, 401);
    assert_eq!(call(Some(&new), "GET", "/v2/version", None).0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while container_env(&e, "main", "BALENA_SUPERVISOR_API_KEY").as_deref() != Some(new.as_str()) {
        assert!(Instant::now() < deadline, "main never got the new key");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A restart keeps the keys: nothing is recreated.
    d.key = Some(global.clone());
    d.wait_applied(2, 60);
    let id = id_of(&e, "main");
    d.kill9();
    d.start();
    std::thread::sleep(Duration::from_secs(3));
    d.wait_applied(2, 60);
    assert_eq!(id_of(&e, "main"), id);
    finish(d);
}

#[test]
fn device_tags_are_read_from_the_cloud_and_local_changes_are_sent_to_it() {
    let _serial = serial();
    reset_engine(&engine());
    let (api, mut d) =
        provisioned_device(json!({ UUID: {"name": "cloud-device", "config": {}, "apps": {}}}));
    api.set(|b| {
        b.tags = vec![json!({"id": 188303, "tag_key": "DeviceLocation", "value": "warehouse #3"})];
    });
    api.wait_for("first report", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.method == "PATCH" && r.url == "/device/v3/state")
    });
    d.key = reports(&api)[0]["api_secret"].as_str().map(String::from);
    assert_eq!(
        d.get("/v2/device/tags").unwrap(),
        (
            200,
            json!({"status": "success", "tags": [{"id": 188303, "name": "DeviceLocation", "value": "warehouse #3"}]})
        )
    );
    // Bad bodies (T30), nothing sent.
    for (body, message) in [
        (r#"{"a b": "x"}"#, "Tag keys cannot contain whitespace"),
        (
            r#"{"a": 1}"#,
            "Invalid tags body, must be an object like `{[tagKey: string]: string}`",
        ),
        (
            "[]",
            "Invalid tags body, must be an object like `{[tagKey: string]: string}`",
        ),
    ] {
        assert_eq!(
            d.request("PATCH", "/v2/device/tags", Some(body)).unwrap(),
            (400, json!({"status": "failed", "message": message})),
            "{body}"
        );
    }
    assert_eq!(
        d.request(
            "PATCH",
            "/v2/device/tags",
            Some(r#"{"rack": "b7", "floor": "2"}"#)
        )
        .unwrap(),
        (202, json!({"status": "success"}))
    );
    api.wait_for("tags sent", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.method == "PATCH" && r.url == "/device/v3/tags")
    });
    let sent = api.calls("PATCH", "/device/v3/tags");
    assert_eq!(
        sent[0].json(),
        json!({ UUID: {"rack": "b7", "floor": "2"} })
    );
    assert_eq!(sent[0].bearer(), Some(DEVICE_KEY));
    // Only changes go out; a restart sends nothing already acknowledged.
    assert_eq!(
        d.request(
            "PATCH",
            "/v2/device/tags",
            Some(r#"{"rack": "b8", "floor": "2"}"#)
        )
        .unwrap()
        .0,
        202
    );
    api.wait_for("second tags", Duration::from_secs(30), |rs| {
        rs.iter()
            .filter(|r| r.method == "PATCH" && r.url == "/device/v3/tags")
            .count()
            == 2
    });
    assert_eq!(
        api.calls("PATCH", "/device/v3/tags")[1].json(),
        json!({ UUID: {"rack": "b8"} })
    );
    // The mock has seen the call; the device counts it as sent once the answer is back and
    // recorded (a cut before that sends it again, rightly).
    let recorded = std::path::Path::new("/tmp/balena-supervisor/tags-report-cache");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(recorded).is_ok_and(|t| t.contains("b8")) {
        assert!(Instant::now() < deadline, "tags never recorded as sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    d.start();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.calls("PATCH", "/device/v3/tags").len(), 2);
    // The cloud unreachable: 500 with the reason.
    api.set(|b| b.known_keys.clear());
    let (code, body) = d.get("/v2/device/tags").unwrap();
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["status"], "failed");
    finish(d);
}

#[test]
fn log_control_off_keeps_logs_on_the_device() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let mut target = v3_target("c1", "quiet");
    target[UUID]["config"] = json!({"RESIN_SUPERVISOR_LOG_CONTROL": "false"});
    let (api, mut d) = provisioned_device(target);
    wait_release_done(&api, "c1", 0);
    std::thread::sleep(Duration::from_secs(3));
    let shipped = |what: &str| {
        api.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains(what)))
    };
    assert!(
        !shipped("hello-from-quiet"),
        "{:#?}",
        api.logs.lock().unwrap()
    );
    // Switched back on: the next release's output goes to the cloud.
    api.set(|b| {
        b.target = Some(v3_target("c2", "loud"));
        b.etag = "\"2\"".into();
    });
    d.key = reports(&api)[0]["api_secret"].as_str().map(String::from);
    assert_eq!(update(&d), 204);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shipped("hello-from-loud") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!shipped("hello-from-quiet"));
    finish(d);
}

/// An HTTPS front for the mock API: a CA and a server certificate for 127.0.0.1 made now with
/// `openssl`, and `socat` terminating TLS in front of the plain mock. Stopped on drop.
struct TlsFront {
    url: String,
    ca_pem: String,
    dir: std::path::PathBuf,
    socat: std::process::Child,
}

impl TlsFront {
    fn start(api: &MockApi) -> TlsFront {
        let dir = std::env::temp_dir().join(unique("tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=tinyvisor test CA' \
              -keyout ca.key -out ca.pem 2>/dev/null && \
            openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' -keyout server.key \
              -out server.csr 2>/dev/null && \
            printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext && \
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
              -extfile ext -out server.pem 2>/dev/null",
        );
        let port = free_port();
        let backend = api.url.trim_start_matches("http://");
        let socat = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={0}/server.pem,key={0}/server.key,verify=0",
                dir.display()
            ))
            .arg(format!("TCP:{backend}"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsFront {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
            dir,
            socat,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A device of an API behind `front`, its CA handed over by `how` (or not at all).
fn tls_device(api: &MockApi, front: &TlsFront, how: &str) -> Daemon {
    let mut d = managed(api, json!({"apiEndpoint": front.url}));
    d.root = d.dir.join("root").display().to_string();
    match how {
        "config.json" => {
            let mut cfg = config_json(&d);
            cfg["balenaRootCA"] = json!(tinyvisor::encoding::base64(front.ca_pem.as_bytes()));
            std::fs::write(d.dir.join("boot/config.json"), cfg.to_string()).unwrap();
        }
        "BALENA_ROOT_CA" => d.env.push(("BALENA_ROOT_CA".into(), front.ca_pem.clone())),
        "NODE_EXTRA_CA_CERTS" => {
            let path = d.dir.join("extra-ca.pem");
            std::fs::write(&path, &front.ca_pem).unwrap();
            d.env
                .push(("NODE_EXTRA_CA_CERTS".into(), path.display().to_string()));
        }
        "host file" => {
            let path = d
                .dir
                .join("root/usr/share/ca-certificates/balena/balenaRootCA.crt");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &front.ca_pem).unwrap();
        }
        _ => {}
    }
    d.start();
    d
}

#[test]
fn an_api_with_a_custom_root_ca_is_trusted_only_with_that_ca() {
    let _serial = serial();
    let api = MockApi::start();
    let front = TlsFront::start(&api);
    // Without the CA: refused as an unknown issuer, retried, config.json untouched.
    let d = tls_device(&api, &front, "none");
    let deadline = Instant::now() + Duration::from_secs(10);
    let failures = |n: usize| {
        while d.log_text().matches("Error provisioning device").count() < n {
            assert!(Instant::now() < deadline, "{}", d.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // After the first failure: the daemon has written the identity it makes at start (uuid,
    // device key) while /ping already answered; from then on nothing may change.
    failures(1);
    let before = config_json(&d);
    failures(2);
    assert!(
        d.log_text().to_lowercase().contains("unknownissuer")
            || d.log_text().to_lowercase().contains("unknown issuer"),
        "{}",
        d.log_text()
    );
    assert!(api.calls("POST", "/device/register").is_empty());
    assert_eq!(config_json(&d), before);
    assert_eq!(d.get("/ping").unwrap().0, 200, "still answering");
    finish(d);
    // Each way balenaOS hands the CA over: registration over TLS succeeds.
    for how in [
        "config.json",
        "BALENA_ROOT_CA",
        "NODE_EXTRA_CA_CERTS",
        "host file",
    ] {
        api.requests.lock().unwrap().clear();
        let d = tls_device(&api, &front, how);
        api.wait_for(
            &format!("registered ({how})"),
            Duration::from_secs(15),
            |rs| {
                rs.iter()
                    .any(|r| r.url == "/device/register" && r.status == 201)
            },
        );
        api.wait_for("a poll over TLS", Duration::from_secs(10), |rs| {
            rs.iter().any(|r| r.url.ends_with("/state"))
        });
        assert!(config_json(&d).get("deviceApiKey").is_some());
        finish(d);
    }
}
