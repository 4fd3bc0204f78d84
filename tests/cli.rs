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
        .join("../shared/fixtures/v19-live-answers")
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

#[test]
fn plan_prints_iterations_as_text_and_json() {
    let d = scratch();
    let target = fixture("target-v2-local-initial.json");
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
            "--target",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
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
