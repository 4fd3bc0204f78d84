//! Release trials and rollback (docs/trials.md) on the real engine: a release labelled
//! `io.tinyvisor.rollback.window` that turns unhealthy, exits in a loop or cannot start is
//! replaced by the release before it; one that runs well is kept and the old images go.
//! Managed (mock cloud: the report) and local mode; kill -9 during a trial and a rollback.

mod common;

use common::mock_api::MockApi;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const APP_UUID: &str = "c1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";
const DEVICE_KEY: &str = "devicekey0123456789abcdef0123456";
use common::targets::SLEEPER;

fn image(tag: &str) -> String {
    format!("{}/tinyvisor/busybox:{tag}", registry())
}

/// One service `web` writing `marker` into the `data` volume once, healthy while
/// `/data/sick` is absent; `labels` on the service.
fn release_services(commit: &str, image: &str, labels: Value, command: Option<&str>) -> Value {
    let script = format!("[ -f /data/marker ] || echo {commit} > /data/marker; {SLEEPER}");
    json!({"web": {"id": 1, "image_id": 1, "image": image, "running": true,
        "environment": {"VERSION": commit}, "labels": labels,
        "composition": {"init": true, "volumes": ["data:/data"],
            "command": ["sh", "-c", command.unwrap_or(&script)],
            "healthcheck": {"test": ["CMD", "sh", "-c", "! test -f /data/sick"],
                "interval": "1s", "timeout": "1s", "retries": 1}}}})
}

fn v3(commit: &str, services: Value) -> Value {
    use common::targets::{v3_app, v3_target};
    let app = v3_app(4343, "trialapp", commit, services, json!({"data": {}}));
    v3_target(UUID, "trial-device", json!({ APP_UUID: app }))
}

fn on_trial(window: &str) -> Value {
    json!({"io.tinyvisor.rollback.window": window})
}

/// A provisioned device on the mock, started, with the API key it reported.
fn managed_device(api: &MockApi) -> Daemon {
    let _ = std::fs::remove_file("/tmp/balena-supervisor/state-report-cache");
    let mut d = Daemon::create();
    let config = provisioned_config(&api.url, UUID, DEVICE_KEY);
    std::fs::write(d.dir.join("boot/config.json"), config.to_string()).unwrap();
    d.start();
    api.wait_for("a report", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.method == "PATCH" && r.json()[UUID]["api_secret"].is_string())
    });
    d.key = last_report(api)["api_secret"].as_str().map(String::from);
    d
}

/// The release running: every container Running with `VERSION=commit`, applied.
fn runs(s: &Value, commit: &str) -> bool {
    s["appState"] == "applied"
        && s["containers"].as_array().is_some_and(|cs| {
            !cs.is_empty()
                && cs.iter().all(|c| {
                    c["status"] == "Running" && running_version(&c["containerId"]) == commit
                })
        })
}

fn running_version(id: &Value) -> String {
    container_env_var(&engine(), id.as_str().unwrap_or_default(), "VERSION")
}

fn web_id(s: &Value) -> String {
    s["containers"][0]["containerId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `cmd` in container `id`, again while the container is briefly not running (an
/// unhealthy one is restarted on Docker), for up to 10 s.
fn exec(id: &str, cmd: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new("docker")
            .args(["exec", id, "sh", "-c", cmd])
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn serve(api: &MockApi, target: Value, etag: &str) {
    api.set(|b| {
        b.target = Some(target);
        b.etag = format!("\"{etag}\"");
    });
}

fn update(d: &Daemon, force: bool) {
    let body = json!({"force": force}).to_string();
    assert_eq!(d.request("POST", "/v1/update", Some(&body)).unwrap().0, 204);
}

fn last_report(api: &MockApi) -> Value {
    api.calls("PATCH", "/device/v3/state")
        .iter()
        .filter(|r| r.status == 200)
        .fold(json!({}), |mut acc, r| {
            for (k, v) in r.json()[UUID].as_object().cloned().unwrap_or_default() {
                acc[k] = v;
            }
            acc
        })
}

fn finish(mut d: Daemon) {
    d.kill9();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4343_data", true);
}

#[test]
fn an_unhealthy_release_is_rolled_back_and_a_good_one_is_kept() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4343_data", true);
    let (old, new) = (image("1"), image("2"));
    for i in [&old, &new] {
        let _ = e.remove_image(i, true);
    }
    let api = MockApi::start();
    api.set(|b| b.known_keys = vec![DEVICE_KEY.into()]);
    serve(
        &api,
        v3("c1", release_services("c1", &old, json!({}), None)),
        "1",
    );
    let d = managed_device(&api);
    let before = d.wait_status("c1 runs", 60, |s| runs(s, "c1"));
    let old_config = e.inspect_container(&web_id(&before)).unwrap().config;

    // c2 on trial for 10 s; it turns unhealthy inside the window.
    serve(
        &api,
        v3("c2", release_services("c2", &new, on_trial("10s"), None)),
        "2",
    );
    update(&d, false);
    let s = d.wait_status("c2 on trial", 60, |s| s["trial"]["state"] == "running");
    assert_eq!(s["trial"]["commit"], "c2");
    assert_eq!(s["trial"]["previousCommit"], "c1");
    assert!(s["trial"]["deadline"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    exec(&web_id(&s), "touch /data/sick");
    let s = d.wait_status("c2 failed, c1 back", 60, |s| {
        s["trial"]["state"] == "failed" && runs(s, "c1")
    });
    // The volume is shared: c1 would turn unhealthy too.
    exec(&web_id(&s), "rm -f /data/sick");
    let line = s["lastError"].as_str().unwrap().to_string();
    assert!(
        line.starts_with("Release c2 failed its trial: web unhealthy after ")
            && line.ends_with("; rolling back to c1"),
        "{line}"
    );
    assert!(d.log_text().contains(&line));
    // c1 exactly as it was (a new container of the same config), its data intact.
    let back = e.inspect_container(&web_id(&s)).unwrap();
    assert_eq!(back.config.env, old_config.env);
    assert_eq!(back.config.cmd, old_config.cmd);
    assert_eq!(back.config.image, old_config.image);
    assert_eq!(exec(&back.id, "cat /data/marker"), "c1");
    // The report: c2 aborted, c1 done and running, the reason in the status text.
    api.wait_for("c2 aborted in a report", Duration::from_secs(30), |_| {
        let r = last_report(&api);
        r["apps"][APP_UUID]["releases"]["c2"]["update_status"] == "aborted"
            && r["apps"][APP_UUID]["release_uuid"] == "c1"
            && r["apps"][APP_UUID]["releases"]["c1"]["update_status"] == "done"
    });
    assert_eq!(last_report(&api)["status"], line);
    // Not tried again on the next poll...
    update(&d, false);
    std::thread::sleep(Duration::from_secs(3));
    let s = d.status();
    assert!(runs(&s, "c1") && s["trial"]["state"] == "failed", "{s}");
    // ... but when forced; now healthy, it passes and c1's image goes.
    update(&d, true);
    d.wait_status("c2 passes", 60, |s| {
        s["trial"]["state"] == "passed" && runs(s, "c2")
    });
    assert!(d.log_text().contains("Release c2 passed its trial"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while e.inspect_image(&old).is_ok() {
        assert!(
            Instant::now() < deadline,
            "c1's image was kept after the trial"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(e.inspect_image(&new).is_ok());
    finish(d);
}

#[test]
fn restart_loops_and_start_failures_roll_back_in_local_mode() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4343_data", true);
    let d = Daemon::new();
    let local = |commit: &str, services: Value| {
        let services: serde_json::Map<String, Value> = services
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, s)| {
                let mut svc = s["composition"].clone();
                svc["serviceName"] = json!(name);
                svc["serviceId"] = json!(1);
                svc["imageId"] = json!(1);
                svc["image"] = s["image"].clone();
                svc["environment"] = s["environment"].clone();
                svc["labels"] = s["labels"].clone();
                svc["running"] = json!(true);
                ("1".to_string(), svc)
            })
            .collect();
        json!({"local": {"name": "trial-device", "config": {}, "apps": {"4343": {
            "name": "trialapp", "commit": commit, "releaseId": 1, "services": services,
            "volumes": {"data": {}}, "networks": {}}}}})
    };
    assert_eq!(
        d.post_target(&local(
            "c1",
            release_services("c1", BUSYBOX, json!({}), None)
        ))
        .0,
        200
    );
    d.wait_status("c1 runs", 60, |s| runs(s, "c1"));

    // A release whose service exits 1 over and over (no healthcheck: the exits fail it).
    let mut crashing = release_services("c2", BUSYBOX, on_trial("30s"), Some("exit 1"));
    crashing["web"]["composition"]
        .as_object_mut()
        .unwrap()
        .remove("healthcheck");
    assert_eq!(d.post_target(&local("c2", crashing)).0, 200);
    let s = d.wait_status("c2 fails, c1 back", 60, |s| {
        s["trial"]["state"] == "failed" && runs(s, "c1")
    });
    let reason = s["trial"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("web exited with code 1") || reason.starts_with("web restarted"),
        "{reason}"
    );

    // A release that cannot start: its port is taken on the host.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut blocked = release_services("c3", BUSYBOX, on_trial("30s"), None);
    blocked["web"]["composition"]["ports"] = json!([format!("{port}:80")]);
    assert_eq!(d.post_target(&local("c3", blocked)).0, 200);
    let s = d.wait_status("c3 fails, c1 back", 60, |s| {
        s["trial"]["commit"] == "c3" && s["trial"]["state"] == "failed" && runs(s, "c1")
    });
    let reason = s["trial"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("web could not be started: "), "{reason}");
    drop(taken);
    d.post_target(
        &json!({"local": {"name": "trial-device", "config": {}, "apps": {}}, "force": true}),
    );
    finish(d);
}

#[test]
fn a_daemon_cut_during_a_trial_or_a_rollback_converges_to_one_release() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4343_data", true);
    let api = MockApi::start();
    api.set(|b| b.known_keys = vec![DEVICE_KEY.into()]);
    serve(
        &api,
        v3("c1", release_services("c1", BUSYBOX, json!({}), None)),
        "1",
    );
    let mut d = managed_device(&api);
    d.wait_status("c1 runs", 60, |s| runs(s, "c1"));

    // Cut during the trial: after the restart the trial goes on and passes.
    serve(
        &api,
        v3("c2", release_services("c2", BUSYBOX, on_trial("6s"), None)),
        "2",
    );
    update(&d, false);
    d.wait_status("c2 on trial", 60, |s| s["trial"]["state"] == "running");
    d.kill9();
    d.start();
    d.wait_status("c2 passes after the cut", 60, |s| {
        s["trial"]["state"] == "passed" && runs(s, "c2")
    });

    // Cut during the rollback: c3 crashes, the daemon dies while putting c2 back.
    serve(
        &api,
        v3(
            "c3",
            release_services("c3", BUSYBOX, on_trial("30s"), Some("exit 1")),
        ),
        "3",
    );
    update(&d, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log_text().contains("Release c3 failed its trial") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    d.start();
    let s = d.wait_status("c2 back after the cut", 60, |s| runs(s, "c2"));
    assert_eq!(s["trial"]["state"], "failed");
    // Exactly one release: c2's one container, nothing of c3.
    let containers = e.list_containers(true, &["io.balena.supervised"]).unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    finish(d);
}

#[test]
fn a_restart_looping_release_is_replaced_by_a_good_one() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    let target = |commit: &str, cmd: &str| {
        json!({"local": {"name": "trial-device", "config": {}, "apps": {"4343": {
            "name": "trialapp", "commit": commit, "releaseId": 1, "volumes": {}, "networks": {},
            "services": {"1": {"serviceName": "web", "serviceId": 1, "imageId": 1, "image": BUSYBOX,
                "running": true, "init": true, "environment": {"VERSION": commit}, "labels": {},
                "command": ["sh", "-c", cmd]}}}}}})
    };
    assert_eq!(d.post_target(&target("c1", "sleep 0.3; exit 1")).0, 200);
    // The loop shows: raw `restarting` (v19's spelling) or `exited`, and the restart count.
    let s = d.wait_status("a restart loop", 60, |s| {
        s["containers"][0]["restartCount"].as_i64() >= Some(2)
    });
    assert!(
        s["containers"][0]["exitCode"] == 1 || s["containers"][0]["status"] == "Running",
        "{s}"
    );
    let started = Instant::now();
    assert_eq!(d.post_target(&target("c2", SLEEPER)).0, 200);
    d.wait_status("c2 replaces the looping c1", 60, |s| runs(s, "c2"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    finish(d);
}

#[test]
fn unhealthy_containers_are_restarted_on_docker_with_a_backoff_unless_opted_out() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    // Healthy while /tmp/sick (inside the container, lost on restart) is absent.
    let svc = |id: u32, name: &str, labels: Value| {
        json!({"serviceName": name, "serviceId": id, "imageId": id, "image": BUSYBOX, "running": true,
            "init": true, "environment": {}, "labels": labels,
            "command": ["sh", "-c", SLEEPER],
            "healthcheck": {"test": ["CMD", "sh", "-c", "! test -f /tmp/sick"],
                "interval": "1s", "timeout": "1s", "retries": 1}})
    };
    let target = json!({"local": {"name": "d", "config": {}, "apps": {"4343": {
        "name": "app", "commit": "c1", "releaseId": 1, "volumes": {}, "networks": {},
        "services": {"1": svc(1, "web", json!({})),
            "2": svc(2, "optout", json!({"io.tinyvisor.restart-unhealthy": "false"}))}}}}});
    assert_eq!(d.post_target(&target).0, 200);
    let s = d.wait_status("both healthy", 60, |s| {
        s["containers"]
            .as_array()
            .is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c["health"] == "healthy"))
    });
    let id = |name: &str| -> String {
        s["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serviceName"] == name)
            .unwrap()["containerId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (web, optout) = (id("web"), id("optout"));
    let restarts = |id: &str| e.inspect_container(id).unwrap().state.started_at;
    let web_started = restarts(&web);
    exec(&web, "touch /tmp/sick");
    exec(&optout, "touch /tmp/sick");
    let deadline = Instant::now() + Duration::from_secs(30);
    while restarts(&web) == web_started {
        assert!(Instant::now() < deadline, "not restarted\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_restart = Instant::now();
    assert!(d.log_text().contains("Restarting unhealthy service 'web'"));
    // Sick again at once: the next restart waits for the 10 s backoff.
    let second_started = restarts(&web);
    exec(&web, "touch /tmp/sick");
    while restarts(&web) == second_started {
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        first_restart.elapsed() >= Duration::from_secs(9),
        "restarted again after {:?}",
        first_restart.elapsed()
    );
    // The opted-out service stays unhealthy and is left alone.
    let c = e.inspect_container(&optout).unwrap();
    assert_eq!(c.state.health.unwrap()["Status"], "unhealthy");
    assert!(!d
        .log_text()
        .contains("Restarting unhealthy service 'optout'"));
    finish(d);
}
