//! The binary as a user runs it: help, version, configuration errors, `plan`.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tinyvisor"));
    c.env_remove("LISTEN_PORT").env_remove("CONFIG_MOUNT_POINT");
    c
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(common::unique("cli"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v19-live-answers")
        .join(name)
}

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--docker-socket") && text.contains("plan"),
        "{text}"
    );
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tinyvisor {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_config_json_is_one_line_naming_file_and_field() {
    let d = scratch();
    let cfg = d.join("config.json");
    for (content, needle) in [
        (r#"{"listenPort": "x"}"#, "field `listenPort`"),
        (r#"{"uuid": 12}"#, "field `uuid`"),
        ("{not json", "invalid JSON"),
    ] {
        std::fs::write(&cfg, content).unwrap();
        let out = bin().arg("--config-path").arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(cfg.to_str().unwrap()) && err.contains(needle),
            "{err}"
        );
    }
    let out = bin().arg("--config-path").arg(&d).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a directory is unreadable as config.json"
    );
    let out = bin()
        .env("LISTEN_PORT", "99999")
        .arg("--config-path")
        .arg(d.join("none.json"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_PORT"));
    let _ = std::fs::remove_dir_all(d);
}

/// `tinyvisor plan --current empty --target <target>` with the scratch config in `d` and
/// `extra` flags.
fn plan_empty(
    d: &std::path::Path,
    extra: &[&str],
    target: &std::path::Path,
) -> std::process::Output {
    bin()
        .args(["--config-path", d.join("config.json").to_str().unwrap()])
        .args(["--boot-mountpoint", d.to_str().unwrap()])
        .args(extra)
        .args([
            "plan",
            "--current",
            "empty",
            "--target",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

#[test]
fn plan_prints_iterations_as_text_and_json() {
    let d = scratch();
    let target = fixture("target-v2-local-initial.json");
    let out = plan_empty(&d, &[], &target);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("iteration 1:\n  fetch local/busybox:1 for h4-one\n"),
        "{text}"
    );
    assert!(text.contains("  start h4-two_12_1_h4commit1\n"), "{text}");
    assert!(text.trim_end().ends_with("releaseLock app 4404"), "{text}");

    let out = bin()
        .args([
            "--config-path",
            d.join("config.json").to_str().unwrap(),
            "--boot-mountpoint",
            d.to_str().unwrap(),
        ])
        .args([
            "plan",
            "--current",
            "empty",
            "--json",
            "--target",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["converged"], true);
    assert_eq!(v["iterations"][0][0]["action"], "fetch");
    assert_eq!(v["iterations"][2][0]["action"], "start");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn plan_rejects_an_invalid_target_with_the_path() {
    let d = scratch();
    let t = d.join("target.json");
    std::fs::write(&t, r#"{"name":"d","config":{},"apps":{"a1":{"id":1,"name":"x","releases":{"c1":{"id":1,"services":{"main":{"id":1,"image_id":1,"image":"i","composition":{"ports":["80","80"]}}}}}}}}"#).unwrap();
    let out = bin()
        .args([
            "--config-path",
            d.join("config.json").to_str().unwrap(),
            "plan",
            "--current",
            "empty",
            "--target",
            t.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apps.a1.releases.c1.services.main.composition.ports[1]: duplicate host port"),
        "{err}"
    );
    std::fs::write(&t, "[1,").unwrap();
    let out = bin()
        .args([
            "--config-path",
            d.join("config.json").to_str().unwrap(),
            "plan",
            "--target",
            t.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid JSON"));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn apply_of_a_target_that_is_not_an_object_is_a_clear_error() {
    let d = scratch();
    let target = d.join("target.json");
    for content in ["[1, 2]", "\"text\"", "42"] {
        std::fs::write(&target, content).unwrap();
        let out = bin()
            .arg("--config-path")
            .arg(d.join("none.json"))
            .arg("--listen-port")
            .arg(common::free_port().to_string())
            .args(["apply", "--force"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{content}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("expected a JSON object"), "{err}");
    }
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn install_lays_out_the_files_and_the_units_command_line_runs() {
    let d = scratch();
    let root = d.join("root");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install");
    let config = d.join("config.json");
    std::fs::write(&config, "[1]").unwrap();
    let install = |extra: &[&std::ffi::OsStr]| {
        Command::new("bash")
            .arg(script)
            .arg("--root")
            .arg(&root)
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_tinyvisor"))
            .args(extra)
            .output()
            .unwrap()
    };
    // A config.json that is not an object is refused before anything is written.
    let out = install(&["--config".as_ref(), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!root.join("usr/local/bin/tinyvisor").exists());
    std::fs::write(&config, r#"{"deviceType":"raspberrypi4-64"}"#).unwrap();
    let out = install(&["--config".as_ref(), config.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/tinyvisor"), 0o755);
    assert_eq!(mode("etc/tinyvisor/config.json"), 0o600);
    assert_eq!(mode("var/lib/tinyvisor"), 0o700);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/tinyvisor.service")).unwrap();
    // The unit's command line, with its environment moved into the scratch root.
    let mut env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = match k {
                "DOCKER_SOCKET" | "LED_FILE" => v.to_string(),
                "ROOT_MOUNTPOINT" => root.display().to_string(),
                _ => format!("{}{v}", root.display()),
            };
            (k.to_string(), v)
        })
        .collect();
    let port = common::free_port();
    env.push(("LISTEN_PORT".into(), port.to_string()));
    env.push(("TINYVISOR_FIREWALL".into(), "off".into()));
    env.push((
        "DBUS_SYSTEM_BUS_ADDRESS".into(),
        "unix:path=/nonexistent".into(),
    ));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert_eq!(exec, "/usr/local/bin/tinyvisor");
    let mut child = Command::new(root.join(exec.trim_start_matches('/')))
        .env_clear()
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answered = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            break text.starts_with("HTTP/1.1 200");
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered,
        "the installed unit's command did not answer /ping"
    );
    assert!(root.join("var/lib/tinyvisor/database.sqlite").exists());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn plan_shows_the_host_os_step() {
    let d = scratch();
    let root = d.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "BALENA_BOARD_REV=\"old-rev\"\n",
    )
    .unwrap();
    let target = d.join("target.json");
    let host_app = |labels: serde_json::Value| {
        serde_json::json!({"name": "dev", "config": {}, "apps": {"hostuuid": {"id": 3, "name": "os",
            "is_host": true, "class": "app", "releases": {"hostrel": {"id": 7, "services": {"hostapp": {
                "id": 1, "image_id": 1, "image": "reg/v2/os@sha256:ab",
                "labels": {"io.balena.private.updater": "reg/updater:1"},
                "composition": {"labels": labels}}}}}}}})
    };
    let plan = |doc: serde_json::Value| {
        std::fs::write(&target, doc.to_string()).unwrap();
        let out = plan_empty(&d, &["--root-mountpoint", root.to_str().unwrap()], &target);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = plan(host_app(
        serde_json::json!({"io.balena.image.class": "hostapp",
        "io.balena.private.hostapp.board-rev": "new-rev"}),
    ));
    assert!(
        text.starts_with(
            "install host OS release hostrel (build new-rev over old-rev): pull reg/updater:1, copy its /app to /tmp/balenahup, \
             run /tmp/balenahup/entry.sh --app-uuid hostuuid --release-commit hostrel --target-image-uri reg/v2/os@sha256:ab \
             as os-update.service (the updater reboots the device)\n"
        ),
        "{text}"
    );
    assert!(text.contains("nothing to do for the apps"), "{text}");
    let text = plan(host_app(
        serde_json::json!({"io.balena.image.class": "hostapp",
        "io.balena.private.hostapp.board-rev": "old-rev"}),
    ));
    assert!(
        text.starts_with("host OS release hostrel (build old-rev) is running\n"),
        "{text}"
    );
    let text = plan(host_app(
        serde_json::json!({"io.balena.image.class": "hostapp"}),
    ));
    assert!(
        text.starts_with(
            "host OS release of app hostuuid rejected: hostapp missing `board_rev` label\n"
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn plan_shows_a_release_trial() {
    let d = scratch();
    let target = d.join("trial.json");
    std::fs::write(
        &target,
        serde_json::json!({"name": "dev", "config": {}, "apps": {"appuuid": {"id": 3, "name": "shop",
            "releases": {"c2": {"id": 7, "services": {"web": {"id": 1, "image_id": 1,
                "image": "local/busybox:1", "labels": {"io.tinyvisor.rollback.window": "90s"}}}}}}}})
        .to_string(),
    )
    .unwrap();
    let out = plan_empty(&d, &[], &target);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "trial: release c2 of shop runs on trial for 90s once all its services run; nothing to roll back to (first install)\n"
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(d);
}
