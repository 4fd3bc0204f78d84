//! Update windows and switch-at-reboot (docs/windows.md) on the real engine, local mode: a
//! release labelled `io.tinyvisor.update.window` is downloaded and waits while the old one
//! runs, and switches when its window opens (a window starting a few seconds ahead, in the
//! device's local time); `force` switches at once; a newer target replaces the waiting one;
//! `io.tinyvisor.update.at: reboot` waits for another boot id (a file standing in for
//! /proc/sys/kernel/random/boot_id).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn target(commit: &str, image: &str, labels: Value, force: bool) -> Value {
    use common::targets::{local_service, local_target, LocalApp};
    let extra = json!({"image": image, "environment": {"VERSION": commit}, "labels": labels});
    let app = LocalApp {
        device: "window-device",
        id: 4545,
        name: "winapp",
        commit,
        volumes: json!({}),
    };
    let mut t = local_target(app, vec![local_service(1, "web", extra)]);
    t["force"] = json!(force);
    t
}

/// A window of local time opening `from_s` seconds from now and lasting `len_s`.
fn window_ahead(from_s: i64, len_s: i64) -> String {
    let zone = tinyvisor::localtime::Zone::of_host(std::path::Path::new("/"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sod = |t: i64| zone.local(t).rem_euclid(86_400);
    // As tinyvisor prints windows: seconds only when there are some.
    let hms = |s: i64| match s % 60 {
        0 => format!("{:02}:{:02}", s / 3600, s % 3600 / 60),
        sec => format!("{:02}:{:02}:{sec:02}", s / 3600, s % 3600 / 60),
    };
    format!(
        "{}-{}",
        hms(sod(now + from_s)),
        hms(sod(now + from_s + len_s))
    )
}

fn version(e: &tinyvisor::engine::Engine, s: &Value) -> String {
    let id = s["containers"][0]["containerId"]
        .as_str()
        .unwrap_or_default();
    container_env_var(e, id, "VERSION")
}

fn runs(e: &tinyvisor::engine::Engine, s: &Value, commit: &str) -> bool {
    s["appState"] == "applied"
        && s["containers"].as_array().is_some_and(|c| c.len() == 1)
        && version(e, s) == commit
}

#[test]
fn a_release_waits_for_its_window_and_switches_when_it_opens() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let reg = registry();
    let new_image = format!("{reg}/tinyvisor/busybox:2");
    let _ = e.remove_image(&new_image, true);
    let d = Daemon::new();
    assert_eq!(
        d.post_target(&target("c1", BUSYBOX, json!({}), false)).0,
        200
    );
    d.wait_status("c1 runs", 60, |s| runs(&e, s, "c1"));

    // A window far ahead: downloaded, waiting, c1 still running.
    let far = window_ahead(3 * 3600, 600);
    let labels = json!({"io.tinyvisor.update.window": far});
    // `tinyvisor plan` against the engine says so first.
    let file = d.dir.join("c2.json");
    std::fs::write(
        &file,
        target("c2", &new_image, labels.clone(), false).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tinyvisor"))
        .args(["--docker-socket", &socket(), "--root-mountpoint", "/"])
        .args(["--boot-mountpoint", d.dir.join("boot").to_str().unwrap()])
        .args([
            "plan",
            "--current",
            "engine",
            "--target",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Three hours ahead, give or take the seconds this took.
    let about_3h = |line: &str| ["2h59m", "3h00m"].iter().any(|t| line.contains(t));
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "wait: release c2 of winapp is downloaded now and switches in window {far} (opens in "
        )) && about_3h(first),
        "{text}"
    );
    assert_eq!(
        d.post_target(&target("c2", &new_image, labels, false)).0,
        200
    );
    let s = d.wait_status("c2 waits", 60, |s| s["appState"] == "waiting");
    assert_eq!(s["waitingRelease"], "c2");
    assert_eq!(s["waitingFor"], "window");
    assert_eq!(s["window"], far);
    assert!(
        s["nextWindow"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    assert_eq!(version(&e, &s), "c1");
    assert!(
        e.inspect_image(&new_image).is_ok(),
        "the new image was not downloaded"
    );
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Release c2 downloaded; switching in window"))
        .unwrap_or_default();
    assert!(line.contains(&far) && about_3h(line), "{log}");

    // A newer target replaces the waiting one; it opens 4 s from now.
    let soon = window_ahead(4, 600);
    let labels = json!({"io.tinyvisor.update.window": soon});
    assert_eq!(
        d.post_target(&target("c3", &new_image, labels, false)).0,
        200
    );
    let s = d.wait_status("c3 waits", 30, |s| s["waitingRelease"] == "c3");
    assert_eq!(version(&e, &s), "c1");
    let waiting_since = Instant::now();
    d.wait_status("c3 switches in its window", 30, |s| runs(&e, s, "c3"));
    assert!(
        waiting_since.elapsed() >= Duration::from_secs(2),
        "switched before the window"
    );

    // Forced: switches at once whatever the window.
    let labels = json!({"io.tinyvisor.update.window": far});
    assert_eq!(d.post_target(&target("c4", BUSYBOX, labels, true)).0, 200);
    d.wait_status("c4 forced", 30, |s| runs(&e, s, "c4"));
    d.post_target(&json!({"local": {"name": "d", "config": {}, "apps": {}}, "force": true}));
    reset_engine(&e);
}

#[test]
fn a_release_for_the_next_boot_waits_for_another_boot_id() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let mut d = Daemon::create();
    let boot = d.dir.join("boot_id");
    std::fs::write(&boot, "boot-one\n").unwrap();
    d.env
        .push(("TINYVISOR_BOOT_ID_PATH".into(), boot.display().to_string()));
    d.start();
    assert_eq!(
        d.post_target(&target("c1", BUSYBOX, json!({}), false)).0,
        200
    );
    d.wait_status("c1 runs", 60, |s| runs(&e, s, "c1"));
    let labels = json!({"io.tinyvisor.update.at": "reboot"});
    assert_eq!(d.post_target(&target("c2", BUSYBOX, labels, false)).0, 200);
    let s = d.wait_status("c2 waits for a boot", 30, |s| s["appState"] == "waiting");
    assert_eq!(s["waitingFor"], "reboot");
    assert!(d
        .log_text()
        .contains("Release c2 downloaded; switching at the next boot"));
    // A restart of tinyvisor is not a boot.
    d.kill9();
    d.start();
    let s = d.wait_status("still waiting", 30, |s| s["appState"] == "waiting");
    assert_eq!(version(&e, &s), "c1");
    // The device boots: another boot id.
    d.kill9();
    std::fs::write(&boot, "boot-two\n").unwrap();
    d.start();
    d.wait_status("c2 after the boot", 30, |s| runs(&e, s, "c2"));
    d.post_target(&json!({"local": {"name": "d", "config": {}, "apps": {}}, "force": true}));
    reset_engine(&e);
}
