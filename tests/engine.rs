//! The engine client against the real dockerd started by scripts/setup-engine.

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tinyvisor::engine::stream::{LogLines, OutputStream};
use tinyvisor::engine::types::{Ipam, NetworkCreate, VolumeCreate};
use tinyvisor::engine::{Engine, EngineError, LogsOptions};

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn ping_version_info() {
    let e = engine();
    let v = e.version().unwrap();
    assert!(!v.version.is_empty());
    assert!(!v.api_version.is_empty());
    let info = e.info().unwrap();
    assert!(info.ncpu > 0);
    assert!(!info.server_version.is_empty());
    let negotiated = e.clone().negotiate().unwrap();
    assert!(!negotiated.api_version().is_empty());
}

#[test]
fn container_lifecycle_with_labels() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("life");
    let tag = unique("label");
    cleanup.containers.push(name.clone());

    let body = busybox_body(
        "echo out-line; echo err-line >&2; trap 'exit 0' TERM; while true; do sleep 0.2; done",
        json!({ TEST_LABEL: tag, "io.example.k": "v" }),
    );
    let created = e.create_container(&name, &body).unwrap();
    assert_eq!(created.id.len(), 64);

    // Same name again: 409 conflict with the engine's message.
    match e.create_container(&name, &body) {
        Err(EngineError::Conflict { message }) => assert!(message.contains(&name), "{message}"),
        other => panic!("expected conflict, got {other:?}"),
    }

    let filter = format!("{TEST_LABEL}={tag}");
    let listed = e.list_containers(true, &[&filter]).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.id);
    assert_eq!(listed[0].labels["io.example.k"], "v");
    assert_eq!(listed[0].names, vec![format!("/{name}")]);
    // Not running yet: a running-only list does not have it.
    assert!(e.list_containers(false, &[&filter]).unwrap().is_empty());

    e.start_container(&name).unwrap();
    // Starting a running container is not an error (304).
    e.start_container(&name).unwrap();
    let inspected = e.inspect_container(&created.id).unwrap();
    assert!(inspected.state.running);
    assert_eq!(inspected.name, format!("/{name}"));
    assert_eq!(inspected.config.labels[TEST_LABEL], tag);
    assert_eq!(inspected.config.image, BUSYBOX);
    assert_eq!(inspected.host_config.init, Some(true));

    // A running container cannot be removed without force.
    assert!(e
        .remove_container(&name, false, false)
        .unwrap_err()
        .is_conflict());

    // Logs (not following) keep stdout and stderr apart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let lines: Vec<_> = LogLines::new(e.container_logs(&name, false, &opts).unwrap(), 4096)
            .collect::<Result<_, _>>()
            .unwrap();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        lines.contains(&(OutputStream::Stdout, b"out-line".to_vec())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&(OutputStream::Stderr, b"err-line".to_vec())),
        "{lines:?}"
    );

    let renamed = unique("renamed");
    cleanup.containers.push(renamed.clone());
    e.rename_container(&name, &renamed).unwrap();
    assert!(e.inspect_container(&name).unwrap_err().is_not_found());
    assert_eq!(e.inspect_container(&renamed).unwrap().id, created.id);

    let before = e.inspect_container(&renamed).unwrap().state.started_at;
    e.restart_container(&renamed, 5).unwrap();
    let after = e.inspect_container(&renamed).unwrap();
    assert!(after.state.running);
    assert_ne!(after.state.started_at, before);

    // Stop answers once the container is down; SIGTERM is honoured, so well under the grace.
    let t = Instant::now();
    e.stop_container(&renamed, 10).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(!e.inspect_container(&renamed).unwrap().state.running);
    // Stopping a stopped container is fine (304).
    e.stop_container(&renamed, 10).unwrap();
    assert_eq!(e.wait_container(&renamed, "not-running", None).unwrap(), 0);

    e.remove_container(&renamed, false, true).unwrap();
    let err = e.inspect_container(&created.id).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("No such container"), "{err}");
    assert!(e
        .remove_container(&renamed, true, false)
        .unwrap_err()
        .is_not_found());
}

#[test]
fn kill_and_wait_report_the_exit_code() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("kill");
    cleanup.containers.push(name.clone());
    let body = json!({
        "Image": BUSYBOX,
        "Cmd": ["sh", "-c", "trap 'exit 3' USR1; while true; do sleep 0.1; done"],
        "Labels": { TEST_LABEL: "kill" },
    });
    e.create_container(&name, &body).unwrap();
    e.start_container(&name).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    e.kill_container(&name, "SIGUSR1").unwrap();
    let code = e
        .wait_container(&name, "not-running", Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(code, 3);
    // Killing a stopped container is a conflict.
    let err = e.kill_container(&name, "SIGKILL").unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
}

#[test]
fn exit_code_of_a_short_container() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("exit");
    cleanup.containers.push(name.clone());
    e.create_container(
        &name,
        &busybox_body("exit 7", json!({ TEST_LABEL: "exit" })),
    )
    .unwrap();
    e.start_container(&name).unwrap();
    assert_eq!(e.wait_container(&name, "not-running", None).unwrap(), 7);
    assert_eq!(e.inspect_container(&name).unwrap().state.exit_code, 7);
}

#[test]
fn follow_logs_stream_frames_as_they_come() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("follow");
    cleanup.containers.push(name.clone());
    let cmd = "for i in 1 2 3 4 5; do echo line-$i; echo warn-$i >&2; sleep 0.1; done";
    e.create_container(&name, &busybox_body(cmd, json!({ TEST_LABEL: "follow" })))
        .unwrap();
    e.start_container(&name).unwrap();
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    // Follow ends when the container exits.
    let lines: Vec<_> = LogLines::new(e.container_logs(&name, false, &opts).unwrap(), 4096)
        .collect::<Result<_, _>>()
        .unwrap();
    let out: Vec<_> = lines
        .iter()
        .filter(|(s, _)| *s == OutputStream::Stdout)
        .map(|(_, l)| String::from_utf8_lossy(l).to_string())
        .collect();
    let err: Vec<_> = lines
        .iter()
        .filter(|(s, _)| *s == OutputStream::Stderr)
        .map(|(_, l)| String::from_utf8_lossy(l).to_string())
        .collect();
    assert_eq!(out, ["line-1", "line-2", "line-3", "line-4", "line-5"]);
    assert_eq!(err, ["warn-1", "warn-2", "warn-3", "warn-4", "warn-5"]);
}

#[test]
fn tty_container_logs_are_raw() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("tty");
    cleanup.containers.push(name.clone());
    let mut body = busybox_body("echo tty-line", json!({ TEST_LABEL: "tty" }));
    body["Tty"] = json!(true);
    e.create_container(&name, &body).unwrap();
    e.start_container(&name).unwrap();
    e.wait_container(&name, "not-running", None).unwrap();
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let lines: Vec<_> = LogLines::new(e.container_logs(&name, true, &opts).unwrap(), 4096)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(lines, vec![(OutputStream::Stdout, b"tty-line\r".to_vec())]);
}

#[test]
fn volume_create_inspect_list_remove() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("vol");
    cleanup.volumes.push(name.clone());
    let mut labels = BTreeMap::new();
    labels.insert(TEST_LABEL.to_string(), name.clone());
    let v = e
        .create_volume(&VolumeCreate {
            name: name.clone(),
            labels,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(v.name, name);
    assert_eq!(v.driver, "local");
    let inspected = e.inspect_volume(&name).unwrap();
    assert_eq!(inspected.labels[TEST_LABEL], name);
    let filter = format!("{TEST_LABEL}={name}");
    let listed = e.list_volumes(&[&filter]).unwrap();
    assert_eq!(listed.len(), 1);

    // In use by a container: removal is a conflict, and the volume stays.
    let c = unique("volc");
    cleanup.containers.push(c.clone());
    let mut body = busybox_body("true", json!({ TEST_LABEL: "vol" }));
    body["HostConfig"]["Binds"] = json!([format!("{name}:/data")]);
    e.create_container(&c, &body).unwrap();
    assert!(e.remove_volume(&name, false).unwrap_err().is_conflict());
    e.remove_container(&c, true, false).unwrap();

    e.remove_volume(&name, false).unwrap();
    assert!(e.inspect_volume(&name).unwrap_err().is_not_found());
    assert!(e.list_volumes(&[&filter]).unwrap().is_empty());
}

#[test]
fn network_create_connect_disconnect_remove() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let net = unique("net");
    cleanup.networks.push(net.clone());
    let mut labels = BTreeMap::new();
    labels.insert(TEST_LABEL.to_string(), net.clone());
    let id = e
        .create_network(&NetworkCreate {
            name: net.clone(),
            check_duplicate: true,
            driver: "bridge".into(),
            ipam: Ipam {
                driver: "default".into(),
                ..Default::default()
            },
            labels,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(id.len(), 64);
    let n = e.inspect_network(&net).unwrap();
    assert_eq!(n.id, id);
    assert_eq!(n.driver, "bridge");
    assert_eq!(n.labels[TEST_LABEL], net);
    let filter = format!("{TEST_LABEL}={net}");
    assert_eq!(e.list_networks(&[&filter]).unwrap().len(), 1);

    let c = unique("netc");
    cleanup.containers.push(c.clone());
    let cid = e
        .create_container(
            &c,
            &busybox_body(
                "trap 'exit 0' TERM; while true; do sleep 0.2; done",
                json!({ TEST_LABEL: "net" }),
            ),
        )
        .unwrap()
        .id;
    e.connect_network(&net, &c, &json!({ "Aliases": ["svc-alias"] }))
        .unwrap();
    e.start_container(&c).unwrap();
    let n = e.inspect_network(&id).unwrap();
    assert!(n.containers.contains_key(&cid), "{:?}", n.containers);
    let ci = e.inspect_container(&c).unwrap();
    let aliases = &ci.network_settings.networks[&net].aliases;
    assert!(aliases.iter().any(|a| a == "svc-alias"), "{aliases:?}");
    // A network with a container attached cannot be removed.
    let err = e.remove_network(&net).unwrap_err();
    assert!(err.status().is_some_and(|s| s >= 400), "{err:?}");

    e.disconnect_network(&net, &c, false).unwrap();
    assert!(e.inspect_network(&id).unwrap().containers.is_empty());
    e.remove_network(&id).unwrap();
    assert!(e.inspect_network(&id).unwrap_err().is_not_found());
}

#[test]
fn image_inspect_tag_list_remove() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let base = e.inspect_image(BUSYBOX).unwrap();
    assert!(base.id.starts_with("sha256:"));
    assert!(base.repo_tags.contains(&BUSYBOX.to_string()));

    let repo = format!("tinyvisor-test/{}", unique("img"));
    let reference = format!("{repo}:v1");
    cleanup.images.push(reference.clone());
    e.tag_image(BUSYBOX, &repo, "v1").unwrap();
    assert_eq!(e.inspect_image(&reference).unwrap().id, base.id);
    let listed = e.list_images().unwrap();
    let entry = listed.iter().find(|i| i.id == base.id).unwrap();
    assert!(
        entry.repo_tags.contains(&reference),
        "{:?}",
        entry.repo_tags
    );

    let removed = e.remove_image(&reference, false).unwrap();
    assert_eq!(removed[0].untagged.as_deref(), Some(reference.as_str()));
    assert!(e.inspect_image(&reference).unwrap_err().is_not_found());
    // The base image is still there: only the tag went.
    assert!(e.inspect_image(BUSYBOX).is_ok());
    assert!(e
        .inspect_image("tinyvisor-test/never-was:1")
        .unwrap_err()
        .is_not_found());
}

#[test]
fn pull_from_local_registry_reports_progress() {
    let e = engine();
    let reference = format!("{}/tinyvisor/busybox:1", registry());
    // Make the pull real: drop our copy of the reference first.
    let _ = e.remove_image(&reference, true);
    let mut statuses = Vec::new();
    e.pull_image(&reference, None)
        .unwrap()
        .wait(|p| statuses.push(p.status.clone()))
        .unwrap();
    assert!(
        statuses.iter().any(|s| s.starts_with("Pulling from")),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().any(|s| s.starts_with("Digest: sha256:")),
        "{statuses:?}"
    );
    assert!(
        statuses.last().unwrap().starts_with("Status: "),
        "{statuses:?}"
    );
    let img = e.inspect_image(&reference).unwrap();
    assert!(img.repo_tags.contains(&reference));
    assert!(img
        .repo_digests
        .iter()
        .any(|d| d.starts_with(&format!("{}/tinyvisor/busybox@sha256:", registry()))));
}

#[test]
fn pull_of_missing_image_is_a_typed_error() {
    let e = engine();
    let reference = format!("{}/tinyvisor/{}:1", registry(), unique("missing"));
    let result = e
        .pull_image(&reference, None)
        .and_then(|stream| stream.wait(|_| {}));
    match result {
        // Engines answer this either with a status or inside the stream.
        Err(EngineError::NotFound { message }) | Err(EngineError::Stream { message }) => {
            assert!(
                message.contains("not found") || message.contains("manifest unknown"),
                "{message}"
            )
        }
        other => panic!("expected a not-found pull error, got {other:?}"),
    }
    // A registry nobody listens on.
    let err = e
        .pull_image("127.0.0.1:1/nothing/here:1", None)
        .and_then(|stream| stream.wait(|_| {}))
        .unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[test]
fn events_stream_delivers_container_events() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    let name = unique("events");
    cleanup.containers.push(name.clone());
    let since = now_secs() - 1;
    let filters = json!({ "type": ["container"], "label": [format!("{TEST_LABEL}={name}")] });
    // `until` makes the stream end by itself even if the test fails.
    let events = e
        .events(Some(&filters), Some(since), Some(now_secs() + 20))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in events {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    let id = e
        .create_container(&name, &busybox_body("exit 0", json!({ TEST_LABEL: name })))
        .unwrap()
        .id;
    e.start_container(&name).unwrap();
    let mut actions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !actions.contains(&"die".to_string()) && Instant::now() < deadline {
        if let Ok(ev) = rx.recv_timeout(Duration::from_millis(500)) {
            let ev = ev.unwrap();
            assert_eq!(ev.kind, "container");
            assert_eq!(ev.actor.id, id);
            assert_eq!(ev.actor.attributes["name"], name);
            actions.push(ev.action);
        }
    }
    assert_eq!(actions[..3], ["create", "start", "die"], "{actions:?}");
}

#[test]
fn missing_socket_is_a_connect_error() {
    let e = Engine::new("/nonexistent/tinyvisor-test.sock");
    match e.ping() {
        Err(EngineError::Connect { socket, .. }) => {
            assert_eq!(socket, "/nonexistent/tinyvisor-test.sock")
        }
        other => panic!("{other:?}"),
    }
}

/// A fake engine on a temp socket: accepts one connection, reads the request head, then
/// runs `answer` on the stream.
fn fake_engine(
    answer: impl FnOnce(&mut std::os::unix::net::UnixStream) + Send + 'static,
) -> (Engine, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique("fake"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("engine.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        answer(&mut stream);
    });
    (Engine::new(&sock), dir)
}

#[test]
fn silent_engine_times_out() {
    let (engine, dir) = fake_engine(|s| {
        std::thread::sleep(Duration::from_secs(3));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
    });
    let engine = engine.with_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let err = engine.ping().unwrap_err();
    assert!(matches!(err, EngineError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn chunked_answer_split_into_tiny_writes_is_decoded() {
    let (engine, dir) = fake_engine(|s| {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\n{\"Ver\r\n1d\r\nsion\":\"20.10.24\",\"ApiVersion\"\r\n8\r\n:\"1.41\"}\r\n0\r\nTrailer: x\r\n\r\n";
        for b in raw.chunks(3) {
            s.write_all(b).unwrap();
            s.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let v = engine.version().unwrap();
    assert_eq!(
        (v.version.as_str(), v.api_version.as_str()),
        ("20.10.24", "1.41")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_answer_is_a_protocol_error_not_a_panic() {
    let (engine, dir) = fake_engine(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n");
    });
    let err = engine.version().unwrap_err();
    assert!(matches!(err, EngineError::Protocol(_)), "{err:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn error_status_keeps_message() {
    let (engine, dir) = fake_engine(|s| {
        let _ = s.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 27\r\n\r\n{\"message\":\"disk is full\"}\n",
        );
    });
    match engine.version() {
        Err(EngineError::Status { status, message }) => {
            assert_eq!((status, message.as_str()), (500, "disk is full"))
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncated_answer_is_an_error() {
    let (engine, dir) = fake_engine(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"Version\":");
    });
    let err = engine.version().unwrap_err();
    assert!(matches!(err, EngineError::Io(_)), "{err:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn request_bytes_are_well_formed() {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = std::env::temp_dir().join(unique("fake"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("engine.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.ends_with(b"{\"Name\":\"v\",\"DriverOpts\":{},\"Labels\":{}}") {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        tx.send(got).unwrap();
        let _ =
            stream.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"Name\":\"v\"}");
    });
    let v = Engine::new(&sock)
        .create_volume(&VolumeCreate {
            name: "v".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(v.name, "v");
    let req = String::from_utf8(rx.recv().unwrap()).unwrap();
    assert!(
        req.starts_with("POST /v1.41/volumes/create HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\nContent-Type: application/json\r\n"));
    assert!(req.contains("\r\nContent-Length: 40\r\n\r\n"), "{req}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A layer that fails verification: the engine answers 200 and reports the error inside the
/// pull stream; the client must turn it into an error.
#[test]
fn corrupt_layer_fails_the_pull() {
    let e = engine();
    let repo = format!("tinyvisor/{}", unique("corrupt"));
    let reference = format!("{}/{repo}:1", registry());
    let dir = std::env::temp_dir().join(unique("layer"));
    std::fs::create_dir_all(&dir).unwrap();
    let noise: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("blob.bin"), noise).unwrap();
    let docker = if std::path::Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let sh = |cmd: String| {
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("DOCKER_HOST", format!("unix://{}", socket()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    sh(format!("cd {} && tar cf layer.tar blob.bin && {docker} import layer.tar {reference} >/dev/null && {docker} push {reference} >/dev/null", dir.display()));
    e.remove_image(&reference, true).unwrap();
    // Flip a byte in the middle of the stored layer, keeping its size.
    let manifest = sh(format!(
        "curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' http://{}/v2/{repo}/manifests/1",
        registry()
    ));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let store = std::env::var("TV_LOG_DIR").unwrap_or_else(|_| "/tmp/tinyvisor-ci".into());
    let blob = format!(
        "{store}/registry/docker/registry/v2/blobs/sha256/{}/{digest}/data",
        &digest[..2]
    );
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let err = e
        .pull_image(&reference, None)
        .and_then(|s| s.wait(|_| {}))
        .unwrap_err();
    match err {
        EngineError::Stream { message } => {
            assert!(message.contains("verification failed"), "{message}")
        }
        other => panic!("expected an in-band pull error, got {other:?}"),
    }
    assert!(e.inspect_image(&reference).unwrap_err().is_not_found());
    let _ = std::fs::remove_dir_all(dir);
}
