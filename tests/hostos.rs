//! Host OS updates from the target (docs/hostos.md) end to end: a managed tinyvisor against
//! the mock balena API, the real engine and local registry, and the fake systemd on a private
//! dbus-daemon, which really runs the transient `os-update.service`. The updater images are
//! busybox with an `/app/entry.sh` that records its arguments and exits as told — built and
//! pushed here. What is not exercised: a real balenahup and a real reboot into a new OS (the
//! "reboot" is a test writing the new build into os-release and clearing the tmpfs).

mod common;

use common::fake_systemd::FakeSystemd;
use common::mock_api::MockApi;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const DEVICE_KEY: &str = "devicekey0123456789abcdef0123456";
const HOST_APP: &str = "hostappuuid0123456789abcdef01234";
const USER_APP: &str = "userappuuid0123456789abcdef01234";
const OS_IMAGE: &str = "registry2.example.com/v2/hostos@sha256:0123456789abcdef";
const CURRENT_BUILD: &str = "test-board-rev-000";
const TARGET_BUILD: &str = "test-board-rev-123";

/// Pushes an updater image to the local registry: busybox with `/app/entry.sh` running
/// `script` (after writing its arguments to ./args.txt), and removes it from the engine so
/// tinyvisor has to pull it.
fn updater_image(name: &str, script: &str) -> String {
    let reference = format!("{}/tinyvisor/{name}:1", registry());
    let dir = std::env::temp_dir().join(unique("updater"));
    std::fs::create_dir_all(dir.join("app")).unwrap();
    let entry = dir.join("app/entry.sh");
    std::fs::write(
        &entry,
        format!("#!/bin/sh\necho \"$*\" >> ./args.txt\n{script}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    let container = docker(&["create", BUSYBOX, "true"]);
    docker(&[
        "cp",
        &format!("{}/app", dir.display()),
        &format!("{container}:/app"),
    ]);
    docker(&["commit", &container, &reference]);
    docker(&["rm", &container]);
    docker(&["push", &reference]);
    docker(&["rmi", &reference]);
    let _ = std::fs::remove_dir_all(dir);
    reference
}

fn host_app(release: &str, updater: Option<&str>) -> Value {
    let mut labels = json!({"io.balena.image.store": "root"});
    if let Some(u) = updater {
        labels["io.balena.private.updater"] = json!(u);
    }
    json!({"id": 200, "name": "generic-amd64", "is_host": true, "class": "app",
        "releases": {release: {"id": 7, "services": {"hostapp": {
            "id": 3, "image_id": 4, "image": OS_IMAGE, "environment": {}, "labels": labels,
            "composition": {"image": "sha256:0123", "labels": {
                "io.balena.image.class": "hostapp", "io.balena.image.store": "root",
                "io.balena.update.requires-reboot": "1",
                "io.balena.private.hostapp.board-rev": TARGET_BUILD}}}}}}})
}

fn target(host: Option<Value>) -> Value {
    use common::targets::{v3_app, v3_service, v3_target};
    let main = v3_service(1, BUSYBOX, json!({}));
    let user = v3_app(
        4242,
        "userapp",
        "usercommit",
        json!({ "main": main }),
        json!({}),
    );
    let mut apps = json!({ USER_APP: user });
    if let Some(h) = host {
        apps[HOST_APP] = h;
    }
    v3_target(UUID, "hostos-device", apps)
}

/// A provisioned device on the mock with a scratch host root running build `CURRENT_BUILD`,
/// on the fake bus. Not started.
fn device(api: &MockApi, fake_root: &Path, fake: &FakeSystemd) -> Daemon {
    let mut d = Daemon::create();
    d.root = fake_root.display().to_string();
    std::fs::create_dir_all(fake_root.join("etc")).unwrap();
    std::fs::create_dir_all(fake_root.join("tmp")).unwrap();
    set_build(fake_root, CURRENT_BUILD);
    let config = provisioned_config(&api.url, UUID, DEVICE_KEY);
    std::fs::write(d.dir.join("boot/config.json"), config.to_string()).unwrap();
    d.env
        .push(("DBUS_SYSTEM_BUS_ADDRESS".into(), fake.address.clone()));
    d.env
        .push(("TINYVISOR_HOSTOS_RETRY_MS".into(), "300".into()));
    d
}

fn set_build(root: &Path, build: &str) {
    std::fs::write(
        root.join("etc/os-release"),
        format!("PRETTY_NAME=\"balenaOS 6.0.39\"\nBALENA_BOARD_REV=\"{build}\"\n"),
    )
    .unwrap();
}

fn scratch_root() -> PathBuf {
    let root = std::env::temp_dir().join(unique("hostroot"));
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn api_serving(target: Value) -> MockApi {
    let api = MockApi::start();
    api.set(|b| {
        b.target = Some(target);
        b.known_keys = vec![DEVICE_KEY.into()];
    });
    api
}

/// Waits for a report whose host app release has `update_status` and hostapp `status`.
fn wait_host_report(api: &MockApi, release: &str, update_status: &str, status: &str) -> Value {
    let mut found = Value::Null;
    api.wait_for(
        &format!("host release {release} reported {update_status}/{status}"),
        Duration::from_secs(60),
        |rs| {
            rs.iter()
                .filter(|r| r.method == "PATCH" && r.status == 200)
                .any(|r| {
                    let app = &r.json()[UUID]["apps"][HOST_APP];
                    let rel = &app["releases"][release];
                    rel["update_status"] == update_status
                        && rel["services"]["hostapp"]["status"] == status
                })
        },
    );
    for r in api.calls("PATCH", "/device/v3/state") {
        let app = r.json()[UUID]["apps"][HOST_APP].clone();
        if app["releases"][release]["update_status"] == update_status {
            found = app;
        }
    }
    found
}

fn wait_until(what: &str, secs: u64, d: &Daemon, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}\nlog:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_status(d: &Daemon) -> Value {
    d.status()["hostApp"].clone()
}

fn finish(mut d: Daemon, root: PathBuf, updaters: &[&str]) {
    d.kill9();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_container("balenahup", true, true);
    for u in updaters {
        let _ = e.remove_image(u, true);
    }
    let _ = std::fs::remove_dir_all(root);
}

fn api_key(api: &MockApi) -> String {
    api.calls("PATCH", "/device/v3/state")
        .iter()
        .find_map(|r| r.json()[UUID]["api_secret"].as_str().map(String::from))
        .expect("no api_secret reported")
}

#[test]
fn a_host_os_release_is_installed_through_the_updater_and_reported_until_it_runs() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let updater = updater_image("updater-ok", "exit 0");
    let root = scratch_root();
    let fake = FakeSystemd::start_with_root(&[], &root);
    let release = "aabbccddeeff00112233445566778899";
    let api = api_serving(target(Some(host_app(release, Some(&updater)))));
    let mut d = device(&api, &root, &fake);
    d.start();

    // Installed, then waiting for the updater's reboot: aborted / Installing, as helios.
    let report = wait_host_report(&api, release, "aborted", "Installing");
    assert!(report.get("release_uuid").is_none(), "{report}");
    assert_eq!(
        report["releases"][release]["services"]["hostapp"]["image"],
        "registry2.example.com/v2/hostos"
    );
    let breadcrumb = root.join(format!("tmp/balenahup-{release}-breadcrumb"));
    assert!(breadcrumb.exists(), "no breadcrumb\n{}", d.log_text());
    let calls = fake.calls();
    let start: Vec<&Value> = calls
        .iter()
        .filter(|c| c["member"] == "StartTransientUnit")
        .collect();
    assert_eq!(start.len(), 1, "{calls:?}");
    let argv = json!([
        "/tmp/balenahup/entry.sh",
        "--app-uuid",
        HOST_APP,
        "--release-commit",
        release,
        "--target-image-uri",
        OS_IMAGE
    ]);
    assert_eq!(
        start[0]["args"],
        json!(["os-update.service", "fail", {
            "Type": "exec", "ExecStart": [["/tmp/balenahup/entry.sh", argv, false]],
            "RemainAfterExit": false, "CollectMode": "inactive", "WorkingDirectory": "/tmp/balenahup"}, []])
    );
    // A failed run of the name is cleared first.
    let reset = calls
        .iter()
        .position(|c| c["member"] == "ResetFailedUnit")
        .unwrap();
    let started = calls
        .iter()
        .position(|c| c["member"] == "StartTransientUnit")
        .unwrap();
    assert!(reset < started);
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/balenahup/args.txt"))
            .unwrap()
            .trim(),
        format!("--app-uuid {HOST_APP} --release-commit {release} --target-image-uri {OS_IMAGE}")
    );
    // The user app of the same target runs.
    d.key = Some(api_key(&api));
    let status = d.wait_applied(1, 60);
    assert_eq!(status["hostApp"]["updateStatus"], "aborted", "{status}");
    assert_eq!(
        status["hostApp"]["lastError"],
        "update needs a reboot to complete"
    );
    assert_eq!(status["hostApp"]["installAttempts"], 1);
    // The updater container is left created, never started (helios does the same).
    let copy = e.inspect_container("balenahup").unwrap();
    assert!(!copy.state.running);

    // A "reboot" that rolls back: the old OS runs, the tmpfs is empty, meta-balena left its
    // breadcrumb. The release is installed again (attempt 2).
    d.kill9();
    std::fs::remove_file(&breadcrumb).unwrap();
    std::fs::create_dir_all(d.dir.join("state")).unwrap();
    std::fs::write(d.dir.join("state/rollback-health-triggered"), "").unwrap();
    d.start();
    wait_until("installed again after the rollback", 60, &d, || {
        breadcrumb.exists()
    });
    assert_eq!(fake.calls_to("StartTransientUnit").len(), 2);
    assert!(d.log_text().contains(
        "The host OS rolled back after an update (rollback-health-triggered); installing again"
    ));
    wait_until("second attempt counted", 30, &d, || {
        host_status(&d)["installAttempts"] == 2
    });

    // The "reboot": the new OS runs, the tmpfs is empty.
    d.kill9();
    set_build(&root, TARGET_BUILD);
    std::fs::remove_file(&breadcrumb).unwrap();
    let _ = std::fs::remove_dir_all(root.join("tmp/balenahup"));
    d.start();
    let report = wait_host_report(&api, release, "done", "Running");
    assert_eq!(report["release_uuid"], release, "{report}");
    wait_until("hostApp done", 30, &d, || {
        host_status(&d)["updateStatus"] == "done"
    });
    assert_eq!(
        fake.calls_to("StartTransientUnit").len(),
        2,
        "installed again"
    );
    finish(d, root, &[&updater]);
}

#[test]
fn a_failing_updater_is_tried_three_times_and_a_new_release_starts_the_count_again() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let updater = updater_image("updater-fail", "exit 1");
    let root = scratch_root();
    let fake = FakeSystemd::start_with_root(&[], &root);
    let release = "ff00112233445566778899aabbccddee";
    let api = api_serving(target(Some(host_app(release, Some(&updater)))));
    let mut d = device(&api, &root, &fake);
    d.start();
    wait_host_report(&api, release, "aborted", "Installing");
    wait_until("three attempts", 30, &d, || {
        fake.calls_to("exited").len() == 3
    });
    // Given up: no fourth try (the retry interval is 300 ms here).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fake.calls_to("StartTransientUnit").len(), 3);
    for exited in fake.calls_to("exited") {
        assert_eq!(exited["args"], json!(["os-update.service", 1]));
    }
    assert!(!root
        .join(format!("tmp/balenahup-{release}-breadcrumb"))
        .exists());
    d.key = Some(api_key(&api));
    let h = host_status(&d);
    assert_eq!(h["updateStatus"], "aborted", "{h}");
    assert_eq!(h["installAttempts"], 3);
    assert_eq!(h["lastError"], "too many failed installs, check device");
    let log = d.log_text();
    assert!(log.contains("failed: command failed with code: 1"), "{log}");
    assert!(log.contains("given up after 3 failed installs"), "{log}");
    // A restart keeps the count (it is in the database): still nothing.
    d.kill9();
    d.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fake.calls_to("StartTransientUnit").len(), 3);

    // A new release: counted from one again.
    let release2 = "00112233445566778899aabbccddeeff";
    api.set(|b| {
        b.target = Some(target(Some(host_app(release2, Some(&updater)))));
        b.etag = "\"2\"".into();
    });
    assert_eq!(d.request("POST", "/v1/update", Some("{}")).unwrap().0, 204);
    wait_until("a new release is tried", 30, &d, || {
        fake.calls_to("StartTransientUnit").len() == 4
    });
    wait_until("second release attempt counted", 30, &d, || {
        host_status(&d)["releaseUuid"] == release2
            && host_status(&d)["installAttempts"].as_u64() >= Some(1)
    });
    finish(d, root, &[&updater]);
}

#[test]
fn a_rejected_host_app_installs_nothing_and_leaves_the_user_apps_alone() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let root = scratch_root();
    let fake = FakeSystemd::start_with_root(&[], &root);
    let api = api_serving(target(Some(host_app("r1", None))));
    let mut d = device(&api, &root, &fake);
    d.start();
    // The user app is reported done; the host app is not reported at all.
    api.wait_for("user app done", Duration::from_secs(60), |rs| {
        rs.iter().filter(|r| r.method == "PATCH").any(|r| {
            r.json()[UUID]["apps"][USER_APP]["releases"]["usercommit"]["update_status"] == "done"
        })
    });
    for r in api.calls("PATCH", "/device/v3/state") {
        assert!(
            r.json()[UUID]["apps"].get(HOST_APP).is_none(),
            "{}",
            r.json()
        );
    }
    assert!(fake.calls_to("StartTransientUnit").is_empty());
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "Host OS release of app {HOST_APP} rejected: hostapp missing `updater` label"
        )),
        "{log}"
    );
    assert_eq!(
        log.matches("rejected: hostapp missing").count(),
        1,
        "logged once"
    );
    finish(d, root, &[]);
}

#[test]
fn a_daemon_killed_during_an_install_waits_for_the_running_updater() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let updater = updater_image("updater-slow", "sleep 4; exit 0");
    let root = scratch_root();
    let fake = FakeSystemd::start_with_root(&[], &root);
    let release = "5f2a00112233445566778899aabbccdd";
    let api = api_serving(target(Some(host_app(release, Some(&updater)))));
    let mut d = device(&api, &root, &fake);
    d.start();
    fake.wait_for("StartTransientUnit", 60)
        .unwrap_or_else(|| panic!("no install\n{}", d.log_text()));
    d.kill9();
    d.start();
    let breadcrumb = root.join(format!("tmp/balenahup-{release}-breadcrumb"));
    wait_until("the install finishes", 30, &d, || breadcrumb.exists());
    assert_eq!(
        fake.calls_to("StartTransientUnit").len(),
        1,
        "a second unit was started"
    );
    d.key = Some(api_key(&api));
    wait_until("attempt count kept", 30, &d, || {
        host_status(&d)["installAttempts"] == 1 && host_status(&d)["updateStatus"] == "aborted"
    });
    assert!(d
        .log_text()
        .contains("Waiting for the running host OS update"));
    finish(d, root, &[&updater]);
}
