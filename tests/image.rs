//! The supervisor image (scripts/build-image) run the way balenaOS v8's start-balena-supervisor
//! runs the Node supervisor's (docs/deploy.md): container `balena_supervisor`, host network,
//! the engine socket, /data, /var/log and the host's root bound in, the same environment —
//! without `--privileged` (these machines refuse it) and `--cidenv` (balenaEngine only). The
//! "host root" is a scratch tree with the boot partition at mnt/boot, as the OS has it.
//! Against a mock cloud it provisions, applies a release, answers /ping and /v1/healthy, and
//! after `docker restart balena_supervisor` adopts its app without restarting it.

mod common;

use common::mock_api::MockApi;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const UUID: &str = "0123456789abcdef0123456789abcdef";
const APP_UUID: &str = "b1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";
const NAME: &str = "balena_supervisor";

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ping(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let status = all.get(9..12)?.parse().ok()?;
    Some((status, all.split("\r\n\r\n").nth(1)?.to_string()))
}

fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}: {}",
            docker(&["logs", "--tail", "30", NAME]).1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn app_container(e: &tinyvisor::engine::Engine) -> Option<(String, String)> {
    let c = e
        .list_containers(false, &["io.balena.supervised"])
        .ok()?
        .into_iter()
        .next()?;
    let i = e.inspect_container(&c.id).ok()?;
    Some((i.id, i.state.started_at))
}

#[test]
fn the_image_runs_as_balenaos_runs_the_supervisor_and_adopts_its_app_after_a_restart() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let _ = docker(&["rm", "-f", NAME]);
    let built = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image"))
        .env("ARCHES", "amd64")
        .status()
        .unwrap();
    assert!(built.success(), "scripts/build-image failed");

    let api = MockApi::start();
    api.set(|b| {
        let main = common::targets::v3_service(1, BUSYBOX, json!({}));
        let app = common::targets::v3_app(4343, "imgapp", "r1", json!({ "main": main }), json!({}));
        b.target = Some(common::targets::v3_target(
            UUID,
            "imaged",
            json!({ APP_UUID: app }),
        ));
    });
    // The device's tree as the OS has it: the boot partition under the host's /mnt/boot.
    let dir = std::env::temp_dir().join(unique("image"));
    let root = dir.join("hostroot");
    for d in ["mnt/boot", "mnt/state", "mnt/data", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in ["resin-data", "log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        root.join("mnt/boot/config.json"),
        json!({"apiEndpoint": api.url, "apiKey": "provisioningkey", "applicationId": 4343,
               "uuid": UUID, "deviceType": "generic-amd64", "bootstrapRetryDelay": 500})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"balenaOS 8.0.2\"\nVERSION_ID=8.0.2\n",
    )
    .unwrap();
    let port = free_port();
    let bind = |src: &std::path::Path, dst: &str| {
        format!("type=bind,source={},target={dst}", src.display())
    };
    let socket = std::path::PathBuf::from(socket());
    let run = [
        "run",
        "-d",
        "--name",
        NAME,
        "--net=host",
        "--mount",
        &bind(&socket, "/var/run/balena-engine.sock"),
        "--mount",
        &bind(&dir.join("resin-data"), "/data"),
        "--mount",
        &bind(&dir.join("log"), "/var/log"),
        "--mount",
        &bind(&root, "/mnt/root"),
        "-e",
        "DOCKER_SOCKET=/var/run/balena-engine.sock",
        "-e",
        "BOOT_MOUNTPOINT=/mnt/boot",
        "-e",
        "MIXPANEL_TOKEN=",
        "-e",
        "DELTA_ENDPOINT=",
        "-e",
        "LED_FILE=/dev/null",
        "-e",
        &format!("LISTEN_PORT={port}"),
        "-e",
        "NODE_EXTRA_CA_CERTS=",
        "-e",
        "SUPERVISOR_IMAGE=tinyvisor:amd64",
        "tinyvisor:amd64",
    ];
    let (ok, out) = docker(&run);
    assert!(ok, "{out}");

    // It finds config.json on the host's boot partition, provisions, applies the release.
    api.wait_for("registration", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.url == "/device/register" && r.status == 201)
    });
    wait_until("the app runs", 60, || app_container(&e).is_some());
    wait_until("/ping", 10, || {
        ping(port, "/ping") == Some((200, "OK".into()))
    });
    wait_until("/v1/healthy", 30, || {
        ping(port, "/v1/healthy") == Some((200, "OK".into()))
    });
    let (ok, out) = docker(&["exec", NAME, "/usr/bin/tinyvisor", "healthcheck"]);
    assert!(ok, "the image's healthcheck: {out}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("mnt/boot/config.json")).unwrap()).unwrap();
    assert!(cfg.get("deviceApiKey").is_some() && cfg.get("apiKey").is_none());
    assert!(
        dir.join("resin-data/database.sqlite").exists(),
        "database in /data"
    );
    assert!(root.join("tmp/balena-supervisor").is_dir(), "host lock dir");

    // A restart of the supervisor container adopts the app as it is.
    let before = app_container(&e).unwrap();
    let (ok, out) = docker(&["restart", NAME]);
    assert!(ok, "{out}");
    wait_until("/ping after restart", 20, || {
        ping(port, "/ping") == Some((200, "OK".into()))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(app_container(&e), Some(before), "the app was restarted");
    assert_eq!(
        api.calls("POST", "/device/register").len(),
        1,
        "registered again"
    );
    // Its own container is nobody's step: still running, never stopped.
    let (_, state) = docker(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.RestartCount}}",
        NAME,
    ]);
    assert_eq!(state, "true 0");
    let (_, logs) = docker(&["logs", NAME]);
    assert!(!logs.contains("Killing service"), "{logs}");

    let _ = docker(&["rm", "-f", NAME]);
    reset_engine(&e);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all("/tmp/balena-supervisor/services/4343");
}
