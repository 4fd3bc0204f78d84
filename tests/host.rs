//! tinyvisor's D-Bus client against a private dbus-daemon with a fake systemd and logind
//! (tests/support/fake_systemd.py, written with dbus-next): the exact methods and arguments.

mod common;

use common::fake_systemd::FakeSystemd;
use common::{engine, reset_engine, serial, Daemon};
use serde_json::json;
use std::time::{Duration, Instant};
use tinyvisor::systemd::{HostControl, SystemBus};

#[test]
fn reboot_and_power_off_call_logind_without_interaction() {
    let fake = FakeSystemd::start(&[]);
    let host = SystemBus::new(&fake.address);
    host.reboot().unwrap();
    host.power_off().unwrap();
    assert_eq!(
        fake.calls(),
        vec![
            json!({"member": "Reboot", "args": [false]}),
            json!({"member": "PowerOff", "args": [false]})
        ]
    );
}

#[test]
fn units_are_started_stopped_restarted_and_read() {
    let fake = FakeSystemd::start(&[
        "openvpn.service",
        "redsocks.service=redsocks-conf.target,other.target",
    ]);
    let host = SystemBus::new(&fake.address);
    assert!(!host.unit_active("openvpn.service").unwrap());
    host.start_unit("openvpn.service").unwrap();
    assert!(host.unit_active("openvpn.service").unwrap());
    host.stop_unit("openvpn.service").unwrap();
    assert!(!host.unit_active("openvpn.service").unwrap());
    host.restart_unit("redsocks.service").unwrap();
    assert_eq!(
        host.unit_part_of("redsocks.service").unwrap(),
        vec!["redsocks-conf.target", "other.target"]
    );
    assert!(host.unit_part_of("openvpn.service").unwrap().is_empty());
    assert_eq!(
        fake.calls(),
        vec![
            json!({"member": "StartUnit", "args": ["openvpn.service", "fail"]}),
            json!({"member": "StopUnit", "args": ["openvpn.service", "fail"]}),
            json!({"member": "RestartUnit", "args": ["redsocks.service", "fail"]}),
        ]
    );
}

#[test]
fn a_unit_that_is_not_loaded_is_inactive_and_jobs_on_it_fail_with_the_bus_error() {
    let fake = FakeSystemd::start(&[]);
    let host = SystemBus::new(&fake.address);
    assert!(!host.unit_active("nope.service").unwrap());
    assert!(host.unit_part_of("nope.service").unwrap().is_empty());
    let err = host.start_unit("nope.service").unwrap_err().to_string();
    assert!(
        err.contains("org.freedesktop.systemd1.NoSuchUnit") && err.contains("nope.service"),
        "{err}"
    );
}

#[test]
fn transient_services_run_and_their_exit_status_is_read() {
    let root = std::env::temp_dir().join(common::unique("transient"));
    std::fs::create_dir_all(root.join("tmp/x")).unwrap();
    let script = root.join("tmp/x/run.sh");
    std::fs::write(&script, "#!/bin/sh\npwd > cwd.txt\nexit \"$1\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = FakeSystemd::start_with_root(&[], &root);
    let host = SystemBus::new(&fake.address);
    let argv = |code: &str| vec!["/tmp/x/run.sh".to_string(), code.to_string()];
    let finished = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = host.service_state("t.service").unwrap();
            if !s.running() || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    host.run_transient_service("t.service", &argv("3"), "/tmp/x")
        .unwrap();
    let s = finished();
    assert_eq!((s.active_state.as_str(), s.exec_main_status), ("failed", 3));
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/x/cwd.txt"))
            .unwrap()
            .trim(),
        root.join("tmp/x").display().to_string()
    );
    // The failed run is reset first, so the name can be used again; a clean exit leaves the
    // unit collected, read as inactive with status 0.
    host.run_transient_service("t.service", &argv("0"), "/tmp/x")
        .unwrap();
    let s = finished();
    assert_eq!(
        (s.active_state.as_str(), s.exec_main_status),
        ("inactive", 0)
    );
    let starts = fake.calls_to("StartTransientUnit");
    assert_eq!(starts.len(), 2);
    assert_eq!(
        starts[0]["args"],
        json!(["t.service", "fail", {"Type": "exec", "ExecStart": [["/tmp/x/run.sh", ["/tmp/x/run.sh", "3"], false]],
            "RemainAfterExit": false, "CollectMode": "inactive", "WorkingDirectory": "/tmp/x"}, []])
    );
    assert_eq!(fake.calls_to("ResetFailedUnit").len(), 2);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn no_bus_is_a_clear_error() {
    let host = SystemBus::new("unix:path=/nonexistent/bus");
    let err = host.reboot().unwrap_err().to_string();
    assert!(err.starts_with("D-Bus:"), "{err}");
}

fn one_service_target(labels: serde_json::Value) -> serde_json::Value {
    use common::targets::{local_service, local_target, LocalApp};
    let app = LocalApp {
        device: "test-device",
        id: 4343,
        name: "hostapp",
        commit: "c1",
        volumes: json!({}),
    };
    local_target(
        app,
        vec![local_service(1, "main", json!({ "labels": labels }))],
    )
}

/// A daemon on the fake bus with a scratch host root (its /tmp holds locks and breadcrumbs).
fn daemon_on(fake: &FakeSystemd) -> Daemon {
    let mut d = Daemon::create();
    d.root = d.dir.join("root").display().to_string();
    d.env
        .push(("DBUS_SYSTEM_BUS_ADDRESS".into(), fake.address.clone()));
    d.start();
    d
}

fn clean_up(d: &Daemon) {
    let (code, _) = d.post_target(
        &json!({"local": {"name": "test-device", "config": {}, "apps": {}}, "force": true}),
    );
    assert_eq!(code, 200);
    reset_engine(&engine());
}

#[test]
fn v1_reboot_waits_for_update_locks_unless_forced_then_calls_logind() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let fake = FakeSystemd::start(&[]);
    let d = daemon_on(&fake);
    assert_eq!(d.post_target(&one_service_target(json!({}))).0, 200);
    d.wait_applied(1, 60);
    // The app holds its own update lock.
    let lock_dir = std::path::Path::new(&d.root).join("tmp/balena-supervisor/services/4343/main");
    std::fs::create_dir_all(&lock_dir).unwrap();
    std::fs::write(lock_dir.join("updates.lock"), "").unwrap();

    let (code, body) = d.request("POST", "/v1/reboot", Some("{}")).unwrap();
    assert_eq!(code, 423, "{body}");
    assert_eq!(
        body,
        json!({"Data": "", "Error": "Lockfile exists for { appId: 4343, service: main }"})
    );
    assert!(
        fake.wait_for("Reboot", 2).is_none(),
        "rebooted despite the lock"
    );

    let (code, body) = d
        .request("POST", "/v1/reboot", Some(r#"{"force": true}"#))
        .unwrap();
    assert_eq!((code, body), (202, json!({"Data": "OK", "Error": null})));
    let asked = Instant::now();
    let call = fake
        .wait_for("Reboot", 10)
        .expect("logind was not asked to reboot");
    assert_eq!(call["args"], json!([false]));
    // The API answered first; the call came about a second later.
    assert!(asked.elapsed() >= Duration::from_millis(500));
    assert!(d.log_text().contains("Rebooting"));
    // Forced: the app's own lock was taken over by the supervisor's.
    let owner = std::fs::metadata(lock_dir.join("updates.lock")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(owner.uid(), 65534);
    assert_eq!(fake.calls_to("Reboot").len(), 1);
    assert!(fake.calls_to("PowerOff").is_empty());
    drop(d);
    reset_engine(&e);
}

#[test]
fn v1_shutdown_powers_off_and_a_host_that_refuses_leaves_the_device_working() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let fake = FakeSystemd::start(&[]);
    let d = daemon_on(&fake);
    let (code, body) = d.request("POST", "/v1/shutdown", None).unwrap();
    assert_eq!((code, body), (202, json!({"Data": "OK", "Error": null})));
    let call = fake
        .wait_for("PowerOff", 10)
        .expect("logind was not asked to power off");
    assert_eq!(call["args"], json!([false]));
    assert!(d.log_text().contains("Shutting down"));
    drop(d);

    // No logind on the bus: the answer is still 202 (the call comes after it); the failure is
    // logged, the locks are given back, and the device goes on applying targets.
    let mut d = Daemon::create();
    d.root = d.dir.join("root").display().to_string();
    d.env.push((
        "DBUS_SYSTEM_BUS_ADDRESS".into(),
        format!("unix:path={}/nobus", d.dir.display()),
    ));
    d.start();
    let (code, _) = d.request("POST", "/v1/reboot", None).unwrap();
    assert_eq!(code, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log_text().contains("Unable to reboot: D-Bus:") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.post_target(&one_service_target(json!({}))).0, 200);
    d.wait_applied(1, 60);
    // A host OS update in progress refuses it (unless forced).
    std::fs::create_dir_all(d.dir.join("state")).unwrap();
    std::fs::write(d.dir.join("state/rollback-health-breadcrumb"), "").unwrap();
    let (code, body) = d.request("POST", "/v1/reboot", None).unwrap();
    assert_eq!(
        (code, body),
        (
            423,
            json!({"Data": "", "Error": "Waiting for Host OS update to finish"})
        )
    );
    clean_up(&d);
}

#[test]
fn a_service_that_requires_a_reboot_reboots_the_device_once_the_rest_is_applied() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let fake = FakeSystemd::start(&[]);
    let d = daemon_on(&fake);
    let t = one_service_target(json!({"io.balena.update.requires-reboot": "1"}));
    assert_eq!(d.post_target(&t).0, 200);
    let call = fake
        .wait_for("Reboot", 60)
        .unwrap_or_else(|| panic!("no reboot: {}", d.log_text()));
    assert_eq!(call["args"], json!([false]));
    let log = d.log_text();
    assert!(
        log.contains("Skipping start of service main until reboot"),
        "{log}"
    );
    assert!(
        log.contains("Reboot has been scheduled to apply changes"),
        "{log}"
    );
    let crumb = std::path::Path::new(&d.root).join("tmp/balena-supervisor/reboot-after-apply");
    assert!(crumb.exists());
    // The container waits for the reboot: created, not started.
    let c = e
        .list_containers(true, &["io.balena.supervised"])
        .unwrap()
        .into_iter()
        .next()
        .expect("the container was created");
    assert_eq!(c.state, "created");
    // Exactly one reboot: after it the loop applies nothing more.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fake.calls_to("Reboot").len(), 1, "{:?}", fake.calls());
    drop(d);
    reset_engine(&e);
}

#[test]
fn host_config_patch_writes_hostname_and_proxy_under_locks_and_restarts_the_proxy_units() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    // An older balenaOS: the legacy proxy unit, and redsocks restarted by its target.
    let fake = FakeSystemd::start(&[
        "resin-proxy-config.service",
        "redsocks.service=redsocks-conf.target",
    ]);
    let d = daemon_on(&fake);
    std::fs::create_dir_all(d.dir.join("root/etc")).unwrap();
    std::fs::write(d.dir.join("root/etc/hostname"), "balena\n").unwrap();
    let (code, body) = d.get("/v1/device/host-config").unwrap();
    assert_eq!(
        (code, body),
        (200, json!({"network": {"hostname": "balena"}}))
    );

    assert_eq!(d.post_target(&one_service_target(json!({}))).0, 200);
    d.wait_applied(1, 60);
    let lock_dir = std::path::Path::new(&d.root).join("tmp/balena-supervisor/services/4343/main");
    std::fs::create_dir_all(&lock_dir).unwrap();
    std::fs::write(lock_dir.join("updates.lock"), "").unwrap();
    let patch = json!({"network": {"hostname": "kiosk", "proxy": {"type": "socks5", "ip": "10.1.2.3",
        "port": 1080, "noProxy": ["192.168.0.0/16"]}}});
    let (code, body) = d
        .request("PATCH", "/v1/device/host-config", Some(&patch.to_string()))
        .unwrap();
    assert_eq!(code, 423, "{body}");
    assert_eq!(
        body,
        json!("Lockfile exists for { appId: 4343, service: main }")
    );
    assert!(!d.dir.join("boot/system-proxy").exists());

    let mut forced = patch.clone();
    forced["force"] = json!(true);
    let (code, body) = d
        .request("PATCH", "/v1/device/host-config", Some(&forced.to_string()))
        .unwrap();
    assert_eq!((code, body), (200, json!("OK")));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.dir.join("boot/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["hostname"], "kiosk");
    let (_, body) = d.get("/v1/device/host-config").unwrap();
    assert_eq!(
        body["network"]["proxy"],
        json!({"type": "socks5", "ip": "10.1.2.3", "port": 1080, "noProxy": ["192.168.0.0/16"]})
    );
    // balena-proxy-config is not there: the legacy unit is restarted; redsocks is left to its
    // target.
    let restarts: Vec<_> = fake
        .calls_to("RestartUnit")
        .into_iter()
        .map(|c| c["args"][0].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        restarts,
        vec!["balena-proxy-config.service", "resin-proxy-config.service"]
    );
    // The supervisor's locks were given back; the app's own was taken over by force.
    assert!(!lock_dir.join("updates.lock").exists());

    // Bad input: 400 with the reason, nothing changed.
    for bad in [
        r#"{"network": {"proxy": {"type": "ftp"}}}"#,
        r#"{"network": {"hostname": "no spaces please"}}"#,
        "not json",
    ] {
        let (code, body) = d
            .request("PATCH", "/v1/device/host-config", Some(bad))
            .unwrap();
        assert_eq!(code, 400, "{bad}");
        assert!(
            body.as_str()
                .unwrap()
                .starts_with("Could not parse host config input to a valid format: "),
            "{body}"
        );
    }
    let (_, after) = d.get("/v1/device/host-config").unwrap();
    assert_eq!(after["network"]["proxy"]["type"], "socks5");
    clean_up(&d);
}

#[test]
fn device_config_is_applied_before_apps_and_a_boot_change_reboots_once_apps_run() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let fake = FakeSystemd::start(&[]);
    let mut d = Daemon::create();
    d.root = d.dir.join("root").display().to_string();
    d.env
        .push(("DBUS_SYSTEM_BUS_ADDRESS".into(), fake.address.clone()));
    std::fs::write(
        d.dir.join("boot/config.json"),
        r#"{"deviceType":"raspberrypi3"}"#,
    )
    .unwrap();
    std::fs::write(
        d.dir.join("boot/device-type.json"),
        r#"{"slug":"raspberrypi3","arch":"amd64"}"#,
    )
    .unwrap();
    std::fs::write(
        d.dir.join("boot/config.txt"),
        "# Set by the OS image\ngpu_mem=16\ndtparam=audio=on\n[pi4]\narm_boost=1\n",
    )
    .unwrap();
    d.start();
    // A forbidden key first: the apply fails with v19's message and nothing changes.
    let mut t = one_service_target(json!({}));
    t["local"]["config"] = json!({"HOST_CONFIG_kernel": "evil.img"});
    assert_eq!(d.post_target(&t).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = d.get("/v2/state/status").unwrap();
        if status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("Attempt to change blacklisted config value kernel"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(d.dir.join("boot/config.txt")).unwrap(),
        "# Set by the OS image\ngpu_mem=16\ndtparam=audio=on\n[pi4]\narm_boost=1\n"
    );
    assert!(e
        .list_containers(true, &["io.balena.supervised"])
        .unwrap()
        .is_empty());

    t["local"]["config"] = json!({
        "HOST_CONFIG_gpu_mem": "64",
        "HOST_CONFIG_dtparam": "\"audio=on\",\"spi=on\"",
        "HOST_CONFIG_arm_boost": "1",
        "SUPERVISOR_PERSISTENT_LOGGING": "true"
    });
    assert_eq!(d.post_target(&t).0, 200);
    let call = fake
        .wait_for("Reboot", 60)
        .unwrap_or_else(|| panic!("no reboot: {}", d.log_text()));
    assert_eq!(call["args"], json!([false]));
    // The app was running before the reboot was asked for.
    assert_eq!(
        e.list_containers(false, &["io.balena.supervised"])
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        std::fs::read_to_string(d.dir.join("boot/config.txt")).unwrap(),
        "# Set by the OS image\ngpu_mem=64\ndtparam=audio=on\ndtparam=spi=on\n[pi4]\narm_boost=1\n"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.dir.join("boot/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["persistentLogging"], true);
    assert_eq!(cfg["deviceType"], "raspberrypi3");
    let log = d.log_text();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no '{what}' in the log:\n{log}"))
    };
    assert!(at("Applied configuration change") < at("Applied boot config"));
    assert!(at("Applied boot config") < at("Installing service"));
    assert!(at("Installing service") < at("Rebooting"));
    assert!(
        log.contains(r#"Reboot has been scheduled to apply changes: {"persistentLogging":"true"}"#)
    );

    drop(d);
    reset_engine(&e);
}

#[test]
fn host_discoverability_starts_and_stops_avahi() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let fake = FakeSystemd::start(&["avahi-daemon.service", "avahi-daemon.socket"]);
    let d = daemon_on(&fake);
    // At start, as stored (default on).
    let started = fake
        .wait_for("StartUnit", 10)
        .expect("avahi not started at start");
    assert_eq!(started["args"], json!(["avahi-daemon.service", "fail"]));
    let mut t = json!({"local": {"name": "test-device", "apps": {},
        "config": {"HOST_DISCOVERABILITY": "false"}}});
    assert_eq!(d.post_target(&t).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake
        .calls()
        .iter()
        .filter(|c| c["member"] == "StopUnit")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            fake.calls(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped: Vec<_> = fake
        .calls_to("StopUnit")
        .into_iter()
        .map(|c| c["args"].clone())
        .collect();
    assert_eq!(
        stopped,
        [
            json!(["avahi-daemon.service", "fail"]),
            json!(["avahi-daemon.socket", "fail"])
        ]
    );
    assert!(d
        .log_text()
        .contains(r#"Applied configuration change {"HOST_DISCOVERABILITY":"false"}"#));
    // Back on.
    t["local"]["config"] = json!({});
    assert_eq!(d.post_target(&t).0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake
        .calls()
        .iter()
        .filter(|c| c["member"] == "StartUnit")
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "{:?}", fake.calls());
        std::thread::sleep(Duration::from_millis(100));
    }
}
