//! The Supervisor API of a running daemon on the real engine.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use common::targets::{local_service as service, local_target, LocalApp};

fn target(services: Vec<Value>) -> Value {
    let app = LocalApp {
        device: "api-device",
        id: 4242,
        name: "apiapp",
        commit: "a1",
        volumes: json!({}),
    };
    local_target(app, services)
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, Some(&body.to_string())).unwrap()
}

fn running(id: &str) -> bool {
    engine()
        .inspect_container(id)
        .map(|c| c.state.running)
        .unwrap_or(false)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(d: &Daemon) {
    let empty = json!({"local": {"name": "api-device", "config": {}, "apps": {}}, "force": true});
    assert_eq!(d.post_target(&empty).0, 200);
    d.wait_applied(0, 60);
    reset_engine(&engine());
}

#[test]
fn read_endpoints_answer_like_the_real_supervisor() {
    let _serial = serial();
    reset_engine(&engine());
    let d = Daemon::new();
    assert_eq!(d.get("/ping").unwrap(), (200, json!("OK")));
    assert_eq!(d.get("/v1/healthy").unwrap(), (200, json!("OK")));
    // A fresh device's local target holds its current config, as v19's (balena-cli sends it
    // back with every push).
    let (code, fresh) = d.get("/v2/local/target-state").unwrap();
    assert_eq!(code, 200);
    let config = &fresh["state"]["local"]["config"];
    assert_eq!(config["SUPERVISOR_POLL_INTERVAL"], "900000", "{fresh}");
    assert_eq!(config["SUPERVISOR_LOCAL_MODE"], "true");
    assert_eq!(config["SUPERVISOR_VPN_CONTROL"], "false");
    assert_eq!(config.as_object().unwrap().len(), 18);
    let (code, v) = d.get("/v2/version").unwrap();
    assert_eq!(code, 200);
    assert!(v["version"].as_str().unwrap().starts_with("19.0.5"), "{v}");
    assert_eq!(
        d.get("/v2/local/device-info").unwrap().1,
        json!({"status": "success", "info": {"arch": "amd64", "deviceType": "generic-amd64"}})
    );
    assert_eq!(d.get("/v2/device/name").unwrap().1["deviceName"], "local");

    assert_eq!(
        d.post_target(&target(vec![
            service(1, "main", json!({})),
            service(2, "side", json!({}))
        ]))
        .0,
        200
    );
    let status = d.wait_applied(2, 60);
    assert_eq!(
        d.get("/v2/device/name").unwrap().1["deviceName"],
        "api-device"
    );
    let (code, apps) = d.get("/v2/applications/state").unwrap();
    assert_eq!(code, 200);
    let app = &apps["apiapp"];
    assert_eq!(
        (
            app["appId"].as_i64(),
            app["commit"].as_str(),
            app["updateStatus"].as_str()
        ),
        (Some(4242), Some("a1"), Some("done")),
        "{apps}"
    );
    assert_eq!(app["services"]["main"]["status"], "Running");
    assert_eq!(app["services"]["main"]["releaseId"], 1);

    let main_id = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serviceName"] == "main")
        .unwrap()["containerId"]
        .clone();
    assert_eq!(
        d.get("/v2/containerId?serviceName=main").unwrap().1,
        json!({"status": "success", "containerId": main_id})
    );
    assert_eq!(
        d.get("/v2/containerId?service=main").unwrap().1["containerId"],
        main_id
    );
    assert_eq!(
        d.get("/v2/containerId").unwrap().1["services"]["main"],
        main_id
    );
    assert_eq!(
        d.get("/v2/containerId?serviceName=nope").unwrap(),
        (
            503,
            json!({"status": "failed", "message": "Could not find service with that name"})
        )
    );
    let (code, local) = d.get("/v2/local/target-state").unwrap();
    assert_eq!(code, 200);
    assert_eq!(local["state"]["local"]["name"], "api-device");
    assert!(local["state"]["local"]["apps"]["4242"]["services"].is_array());

    assert_eq!(
        d.get("/nothing/here").unwrap(),
        (404, json!("Cannot GET /nothing/here"))
    );
    let (code, v) = d
        .request("POST", "/v2/local/target-state", Some("{not json"))
        .unwrap();
    assert_eq!((code, v["status"].as_str()), (400, Some("failed")));
    finish(&d);
}

#[test]
fn service_actions_stop_start_and_restart_one_service() {
    let _serial = serial();
    reset_engine(&engine());
    let d = Daemon::new();
    assert_eq!(
        d.post_target(&target(vec![
            service(1, "main", json!({})),
            service(2, "side", json!({}))
        ]))
        .0,
        200
    );
    let status = d.wait_applied(2, 60);
    let id_of = |s: &Value, n: &str| {
        s["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serviceName"] == n)
            .unwrap()["containerId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let main = id_of(&status, "main");

    assert_eq!(
        post(
            &d,
            "/v2/applications/4242/stop-service",
            json!({"serviceName": "main"})
        ),
        (200, json!("OK"))
    );
    assert!(!running(&main));
    // It stays stopped: the state engine does not start containers it did not stop itself.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!running(&main), "restarted behind the API's back");

    assert_eq!(
        post(
            &d,
            "/v2/applications/4242/start-service",
            json!({"imageId": "1"})
        ),
        (200, json!("OK"))
    );
    wait_for("main running", || running(&main));

    assert_eq!(
        post(
            &d,
            "/v2/applications/4242/restart-service",
            json!({"serviceName": "main", "force": true})
        ),
        (200, json!("OK"))
    );
    let after = d.wait_applied(2, 30);
    let new_main = id_of(&after, "main");
    assert_ne!(new_main, main, "restart recreates the container");
    assert!(running(&new_main));
    assert_eq!(
        id_of(&after, "side"),
        id_of(&status, "side"),
        "other services untouched"
    );

    // Errors, with the real supervisor's statuses and texts.
    assert_eq!(
        post(
            &d,
            "/v2/applications/abc/stop-service",
            json!({"serviceName": "main"})
        ),
        (
            400,
            json!({"status": "failed", "message": "Invalid app id"})
        )
    );
    let (code, text) = post(&d, "/v2/applications/4242/stop-service", json!({}));
    assert_eq!(code, 400);
    assert!(text
        .as_str()
        .unwrap()
        .starts_with("serviceName or imageId parameters were not provided"));
    assert_eq!(
        post(
            &d,
            "/v2/applications/4242/stop-service",
            json!({"serviceName": "ghost"})
        ),
        (
            404,
            json!("Service not found, a container must exist for this endpoint to work")
        )
    );
    let (code, text) = post(
        &d,
        "/v2/applications/999/stop-service",
        json!({"serviceName": "main"}),
    );
    assert_eq!(code, 404);
    assert!(text
        .as_str()
        .unwrap()
        .starts_with("App not found: an app needs to be installed"));
    finish(&d);
}

#[test]
fn a_held_lock_answers_423_and_force_overrides() {
    let _serial = serial();
    reset_engine(&engine());
    let d = Daemon::new();
    let locking = json!({"command": ["sh", "-c", "trap 'exit 0' TERM; until (set -C; : > /tmp/balena/updates.lock) 2>/dev/null; do sleep 0.2; done; while true; do sleep 0.2; done"]});
    assert_eq!(
        d.post_target(&target(vec![service(1, "main", locking)])).0,
        200
    );
    d.wait_applied(1, 60);
    wait_for("the app's lock", || {
        std::path::Path::new("/tmp/balena-supervisor/services/4242/main/updates.lock").exists()
    });
    let (code, v) = post(
        &d,
        "/v2/applications/4242/restart-service",
        json!({"serviceName": "main"}),
    );
    assert_eq!(code, 423, "{v}");
    assert_eq!(
        v["message"],
        "Lockfile exists for { appId: 4242, service: main }"
    );
    assert_eq!(
        post(
            &d,
            "/v2/applications/4242/restart-service",
            json!({"serviceName": "main", "force": true})
        )
        .0,
        200
    );
    finish(&d);
}

#[test]
fn restart_recreates_containers_and_purge_empties_volumes() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4242_data", true);
    let d = Daemon::new();
    let mut t = target(vec![service(1, "main", json!({"volumes": ["data:/data"]}))]);
    t["local"]["apps"]["4242"]["volumes"] = json!({"data": {}});
    assert_eq!(d.post_target(&t).0, 200);
    let ids = |s: &Value| {
        s["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["containerId"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let first = ids(&d.wait_applied(1, 60));
    let data =
        std::path::PathBuf::from(e.inspect_volume("4242_data").unwrap().mountpoint).join("kept");
    std::fs::write(&data, b"x").unwrap();

    assert_eq!(
        post(&d, "/v1/restart", json!({"appId": 4242})),
        (200, json!("OK"))
    );
    let second = ids(&d.wait_applied(1, 60));
    assert_ne!(first, second, "restart recreates");
    assert!(data.exists(), "restart keeps volume data");

    assert_eq!(
        post(&d, "/v2/applications/4242/purge", json!({"force": true})),
        (200, json!("OK"))
    );
    let third = ids(&d.wait_applied(1, 60));
    assert_ne!(second, third);
    let data =
        std::path::PathBuf::from(e.inspect_volume("4242_data").unwrap().mountpoint).join("kept");
    assert!(!data.exists(), "purge empties the volume");

    assert_eq!(
        post(&d, "/v1/purge", json!({"appId": 4242})),
        (200, json!({"Data": "OK", "Error": ""}))
    );
    d.wait_applied(1, 60);
    assert_eq!(
        post(&d, "/v1/restart", json!({})),
        (400, json!("Missing app id"))
    );
    assert_eq!(
        post(&d, "/v1/purge", json!({"appId": "x"})),
        (400, json!("Invalid or missing appId"))
    );
    assert_eq!(
        post(&d, "/v2/applications/0/restart", json!({})),
        (
            400,
            json!({"status": "failed", "message": "Missing app id"})
        )
    );
    assert_eq!(
        post(&d, "/v2/applications/999/restart", json!({})),
        (
            503,
            json!({"status": "failed", "message": "Application with ID 999 is not in the current state"})
        )
    );
    finish(&d);
    let _ = e.remove_volume("4242_data", true);
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn idle_and_slow_clients_cannot_grow_threads_or_hold_the_api() {
    use std::io::{Read, Write};
    let _serial = serial();
    let d = Daemon::new();
    let pid = d.child.as_ref().unwrap().id();
    let before = threads(pid);
    // Far more connections than workers: none says anything.
    let idle: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    // A slow client: one byte every 300 ms.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let slow_writer = std::thread::spawn(move || {
        for b in b"GET /v2/version HTTP/1.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
            if slow.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        threads(pid) <= before,
        "threads grew from {before} to {}",
        threads(pid)
    );
    // Silent connections wait in the poll set, not in a worker: the API answers at once.
    let asked = Instant::now();
    assert_eq!(d.get("/ping").unwrap().0, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // One peer address holds at most 64 connections: ten more make room by closing its
    // longest-waiting ones, and are served.
    let more: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    for mut c in more {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }
    let evicted = idle
        .iter()
        .filter(|c| {
            let mut r: &std::net::TcpStream = c;
            r.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            matches!(r.read(&mut [0u8; 8]), Ok(0))
        })
        .count();
    assert!(evicted >= 7, "only {evicted} idle connections made room");
    // The idle ones are dropped after the idle limit.
    let mut closed = 0;
    std::thread::sleep(Duration::from_secs(6));
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 8];
        closed += usize::from(matches!(c.read(&mut buf), Ok(0)));
    }
    assert_eq!(closed, 60);
    assert!(
        slow_writer.join().unwrap(),
        "the slow client was never cut off"
    );
    assert!(threads(pid) <= before);
}

#[test]
fn device_endpoints_v1_app_actions_and_journal_logs() {
    use std::io::Read;
    let _serial = serial();
    reset_engine(&engine());
    let mut d = Daemon::create();
    // A fake journalctl first in PATH, and an LED file of our own.
    let bin = d.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("journalctl"),
        "#!/bin/sh\necho \"journalctl $*\"\necho second line\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("journalctl"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let led = d.dir.join("led");
    std::fs::write(&led, "0").unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    d.env = vec![
        ("PATH".into(), path),
        ("LED_FILE".into(), led.display().to_string()),
        (
            "VPN_STATUS_PATH".into(),
            d.dir.join("vpn").display().to_string(),
        ),
    ];
    d.start();
    assert_eq!(
        d.post_target(&target(vec![service(1, "main", json!({}))]))
            .0,
        200
    );
    let status = d.wait_applied(1, 60);
    let cid = status["containers"][0]["containerId"]
        .as_str()
        .unwrap()
        .to_string();

    // GET /v1/device
    let (code, dev) = d.get("/v1/device").unwrap();
    assert_eq!(code, 200);
    assert_eq!(dev["api_port"], d.port);
    assert_eq!(dev["supervisor_version"], tinyvisor::SUPERVISOR_VERSION);
    assert_eq!(dev["update_pending"], false);
    assert_eq!(dev["update_failed"], false);
    assert_eq!(dev["commit"], "a1");
    assert_eq!(dev["status"], "Idle");
    assert!(dev["ip_address"].is_string());

    // GET /v2/device/vpn: not connected until the status file says so.
    assert_eq!(
        d.get("/v2/device/vpn").unwrap().1,
        json!({"status": "success", "vpn": {"enabled": true, "connected": false}})
    );
    std::fs::create_dir_all(d.dir.join("vpn/active")).unwrap();
    assert_eq!(d.get("/v2/device/vpn").unwrap().1["vpn"]["connected"], true);

    // GET /v2/applications/:appId/state
    let (code, st) = d.get("/v2/applications/4242/state").unwrap();
    assert_eq!(code, 200);
    assert_eq!(st["commit"], "a1");
    assert_eq!(st["local"]["4242"]["services"]["1"]["status"], "Running");
    assert_eq!(st["local"]["4242"]["services"]["1"]["releaseId"], 1);
    assert_eq!(
        d.get("/v2/applications/abc/state").unwrap(),
        (
            400,
            json!({"status": "failed", "message": "Invalid application ID: abc"})
        )
    );
    assert_eq!(
        d.get("/v2/applications/99/state").unwrap(),
        (
            409,
            json!({"status": "failed", "message": "Application ID does not exist: 99"})
        )
    );

    // GET /v1/apps/:appId
    let (code, app) = d.get("/v1/apps/4242").unwrap();
    assert_eq!(code, 200);
    assert_eq!(app["containerId"], cid.as_str());
    assert_eq!(app["commit"], "a1");
    assert_eq!(app["imageId"], BUSYBOX);
    assert_eq!(app["releaseId"], 1);
    assert_eq!(app["env"]["BALENA_SERVICE_NAME"], "main");
    assert!(app["env"].get("BALENA_SUPERVISOR_API_KEY").is_none());
    assert_eq!(
        d.get("/v1/apps/0").unwrap(),
        (400, Value::String("Missing app id".into()))
    );

    // POST /v1/apps/:appId/stop and start on the single-container app.
    assert_eq!(
        post(&d, "/v1/apps/4242/stop", json!({})),
        (200, json!({"containerId": cid}))
    );
    assert!(!running(&cid));
    assert_eq!(post(&d, "/v1/apps/4242/start", json!({})).0, 200);
    wait_for("start", || running(&cid));
    assert_eq!(
        post(&d, "/v1/apps/x/stop", json!({})),
        (400, Value::String("Invalid app id".into()))
    );
    assert_eq!(post(&d, "/v1/apps/77/stop", json!({})).0, 400);

    // GET /v2/cleanup-volumes: an unused volume goes, the app's stays.
    let e = engine();
    let stray = unique("stray");
    let volume = |name: &str| tinyvisor::engine::types::VolumeCreate {
        name: name.into(),
        ..Default::default()
    };
    e.create_volume(&volume(&stray)).unwrap();
    let app_volume = "4242_keep";
    e.create_volume(&volume(app_volume)).unwrap();
    assert_eq!(
        d.get("/v2/cleanup-volumes").unwrap(),
        (200, json!({"status": "success"}))
    );
    assert!(e.inspect_volume(&stray).is_err(), "unused volume kept");
    // Not in the target either: also gone. The OS's extra-firmware volume stays.
    assert!(e.inspect_volume(app_volume).is_err());
    assert!(e.inspect_volume("extra-firmware").is_ok());

    // POST /v1/blink: answers at once, the LED file blinks.
    assert_eq!(post(&d, "/v1/blink", json!({})).0, 200);
    wait_for("the LED on", || {
        std::fs::read_to_string(&led).unwrap() == "1"
    });

    // POST /v2/journal-logs: journalctl's output, streamed.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = json!({"follow": false, "count": 5, "unit": "balena.service"}).to_string();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "POST /v2/journal-logs HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(conn);
    let head = tinyvisor::http::read_head(&mut reader).unwrap();
    assert_eq!(head.status, 200);
    let mut text = String::new();
    tinyvisor::http::Body::new(reader, tinyvisor::http::Framing::Chunked)
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        text,
        "journalctl -n 5 -u balena.service -o short\nsecond line\n"
    );
    finish(&d);
}
