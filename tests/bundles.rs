//! Signed offline bundles (docs/bundles.md) on the real engine: `tinyvisor bundle keygen`,
//! `create` from images the engine has, the images removed, then `bundle apply` (streamed to
//! `POST /v2/local/bundle`) or a copy in `$DATA_MOUNTPOINT/bundles/` brings the release; every
//! kind of bad bundle is refused and changes nothing (no image left behind); kill -9 in the
//! middle of an import leaves nothing half applied; a managed device keeps a bundle's release
//! until the cloud answers, and the cloud decides.

mod common;

use common::mock_api::MockApi;
use common::targets::{local_service, local_target, v3_app, v3_service, v3_target, LocalApp};
use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tinyvisor::bundle::{ImageEntry, Manifest};

/// An image of its own (busybox and a file no other image has): its reference and id.
fn unique_image(name: &str) -> (String, String) {
    let reference = format!("tvb-test/{name}:{}", unique("t"));
    let dir = std::env::temp_dir().join(unique("stamp"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stamp"), unique("content")).unwrap();
    let container = docker(&["create", BUSYBOX, "true"]);
    docker(&[
        "cp",
        &dir.join("stamp").display().to_string(),
        &format!("{container}:/stamp"),
    ]);
    docker(&["commit", &container, &reference]);
    docker(&["rm", &container]);
    let _ = std::fs::remove_dir_all(dir);
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    (reference, id)
}

fn image_present(id: &str) -> bool {
    engine().inspect_image(id).is_ok()
}

/// A local-mode target: app 4646 with one service per image, `VERSION=commit`.
fn target(commit: &str, images: &[&str]) -> Value {
    let services = (1u32..)
        .zip(images)
        .map(|(n, image)| {
            let extra = json!({"image": image, "environment": {"VERSION": commit}});
            local_service(n, &format!("s{n}"), extra)
        })
        .collect();
    let app = LocalApp {
        device: "bundle-device",
        id: 4646,
        name: "bundleapp",
        commit,
        volumes: json!({}),
    };
    local_target(app, services)
}

/// Every container runs `commit` (and there are `n`).
fn runs(s: &Value, commit: &str, n: usize) -> bool {
    s["appState"] == "applied"
        && s["containers"].as_array().is_some_and(|cs| {
            cs.len() == n
                && cs.iter().all(|c| {
                    c["status"] == "Running"
                        && container_env_var(
                            &engine(),
                            c["containerId"].as_str().unwrap_or_default(),
                            "VERSION",
                        ) == commit
                })
        })
}

fn container_ids(s: &Value) -> Vec<String> {
    s["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["containerId"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `tinyvisor <args>`: (success, stdout + stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tinyvisor"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A signing key made by `tinyvisor bundle keygen`: (private key file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let base = dir.join(name);
    let (ok, out) = cli(&["bundle", "keygen", "-o", &base.display().to_string()]);
    assert!(ok, "{out}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    assert!(out.contains(public.trim()), "{out}");
    (dir.join(format!("{name}.key")), public.trim().to_string())
}

/// `tinyvisor bundle create` of `doc` into `<dir>/<name>.tvb`.
fn create(dir: &Path, name: &str, doc: &Value, key: &Path) -> PathBuf {
    let target = dir.join(format!("{name}.json"));
    std::fs::write(&target, doc.to_string()).unwrap();
    let out = dir.join(format!("{name}.tvb"));
    let (ok, text) = cli(&[
        "--docker-socket",
        &socket(),
        "bundle",
        "create",
        "--target",
        &target.display().to_string(),
        "--key",
        &key.display().to_string(),
        "-o",
        &out.display().to_string(),
    ]);
    assert!(ok, "{text}");
    out
}

/// A daemon (local mode) that trusts `public`.
fn daemon_trusting(public: &str) -> Daemon {
    let mut d = Daemon::create();
    let config = json!({ "tinyvisorBundleKeys": [public] });
    std::fs::write(d.dir.join("boot/config.json"), config.to_string()).unwrap();
    d.start();
    d
}

/// `POST /v2/local/bundle` of raw bytes: the status and the answer's message.
fn upload(d: &Daemon, bytes: &[u8]) -> (u16, String) {
    use tinyvisor::local_api;
    let body = local_api::Body::Stream {
        data: &mut &bytes[..],
        len: bytes.len() as u64,
        content_type: "application/octet-stream",
    };
    let timeouts = (Duration::from_secs(60), Duration::from_secs(120));
    let (status, raw) = local_api::call(
        d.port,
        "POST",
        "/v2/local/bundle",
        d.key.as_deref(),
        body,
        timeouts,
    )
    .unwrap();
    (status, local_api::message(&raw))
}

/// The entries of a bundle file: (name, offset of its data, size).
fn entries(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|b| *b != 0) {
        let h = &bytes[at..at + 512];
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_text = String::from_utf8_lossy(&h[124..135]).to_string();
        let size = usize::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap();
        out.push((name, at + 512, size));
        at += 512 + size.next_multiple_of(512);
    }
    out
}

/// A bundle made by hand: `manifest` signed with the key in `key_file`, then `archives`.
fn signed(key_file: &Path, manifest: &Manifest, archives: &[&[u8]]) -> Vec<u8> {
    let raw = serde_json::to_vec(manifest).unwrap();
    let key = std::fs::read_to_string(key_file).unwrap();
    let sig = tinyvisor::bundle::sign(&key, &raw).unwrap();
    let mut out = Vec::new();
    let mut files: Vec<(String, &[u8])> = vec![
        (tinyvisor::bundle::MANIFEST.into(), &raw),
        (tinyvisor::bundle::SIGNATURE.into(), &sig),
    ];
    for (i, a) in archives.iter().enumerate() {
        files.push((format!("images/{i}.tar"), a));
    }
    for (name, data) in files {
        tinyvisor::tar::write_header(&mut out, &name, data.len() as u64).unwrap();
        out.extend_from_slice(data);
        tinyvisor::tar::write_padding(&mut out, data.len() as u64).unwrap();
    }
    tinyvisor::tar::write_end(&mut out).unwrap();
    out
}

fn manifest_of(bytes: &[u8]) -> Manifest {
    let (_, at, size) = entries(bytes)[0].clone();
    serde_json::from_slice(&bytes[at..at + size]).unwrap()
}

/// A test's scratch: the engine to itself, a work directory, a signing key made by `bundle
/// keygen` and images of its own. Dropped last (declare it first): the engine is reset, the
/// images and the directory removed.
struct Scratch {
    _serial: std::sync::MutexGuard<'static, ()>,
    work: PathBuf,
    key: PathBuf,
    public: String,
    /// (reference, id) of each image.
    images: Vec<(String, String)>,
}

impl Scratch {
    fn new(name: &str, images: usize) -> Scratch {
        let serial = serial();
        reset_engine(&engine());
        let work = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&work).unwrap();
        let (key, public) = keygen(&work, "signing");
        let images = (0..images)
            .map(|i| unique_image(&format!("i{i}")))
            .collect();
        Scratch {
            _serial: serial,
            work,
            key,
            public,
            images,
        }
    }

    fn image(&self, i: usize) -> &str {
        &self.images[i].0
    }

    fn id(&self, i: usize) -> &str {
        &self.images[i].1
    }

    /// `tinyvisor bundle create` of `doc` into `<work>/<name>.tvb`.
    fn create(&self, name: &str, doc: &Value) -> PathBuf {
        create(&self.work, name, doc, &self.key)
    }

    /// Removes the test's images from the engine (the bundles carry them).
    fn remove_images(&self) {
        for (reference, id) in &self.images {
            docker(&["rmi", reference]);
            assert!(!image_present(id));
        }
    }

    /// A local-mode daemon trusting the key, running release c0 (busybox).
    fn daemon_running_c0(&self) -> (Daemon, Vec<String>) {
        let d = daemon_trusting(&self.public);
        assert_eq!(d.post_target(&target("c0", &[BUSYBOX])).0, 200);
        let running = container_ids(&d.wait_status("c0 runs", 60, |s| runs(s, "c0", 1)));
        (d, running)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let e = engine();
        reset_engine(&e);
        for (_, id) in &self.images {
            let _ = e.remove_image(id, true);
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

#[test]
fn a_bundle_brings_a_release_whose_images_the_device_lacks() {
    let t = Scratch::new("bundles", 2);
    let first = t.create("c1", &target("c1", &[t.image(0), BUSYBOX]));
    let second = t.create("c2", &target("c2", &[t.image(1)]));
    t.remove_images();
    let (mut d, _) = t.daemon_running_c0();

    // The CLI streams it to the daemon and returns once it is applied.
    let port = d.port.to_string();
    let (ok, out) = cli(&[
        "--listen-port",
        &port,
        "bundle",
        "apply",
        &first.display().to_string(),
    ]);
    assert!(ok, "{out}\n{}", d.log_text());
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["releases"], json!({"4646": "c1"}));
    assert_eq!(answer["imagesLoaded"], 1, "busybox was there already");
    d.wait_status("c1 from the bundle runs", 60, |s| runs(s, "c1", 2));
    assert!(image_present(t.id(0)));
    let (_, stored) = d.get("/v2/local/target-state").unwrap();
    assert_eq!(stored["state"]["local"]["apps"]["4646"]["commit"], "c1");

    // A copy in the data partition's bundles directory, found on /v1/update.
    let dir = d.dir.join("data/bundles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&second, dir.join("c2.tvb")).unwrap();
    std::fs::copy(&first, dir.join("c1-again.tvb")).unwrap();
    assert_eq!(d.request("POST", "/v1/update", Some("{}")).unwrap().0, 204);
    let s = d.wait_status("c2 from the directory runs", 60, |s| runs(s, "c2", 1));
    let c2_container = container_ids(&s);
    assert!(image_present(t.id(1)));
    // c1 was applied already: not applied again, on the update or after a restart.
    assert_eq!(d.request("POST", "/v1/update", Some("{}")).unwrap().0, 204);
    d.stop();
    d.start();
    std::thread::sleep(Duration::from_secs(2));
    let s = d.wait_status("c2 still runs", 30, |s| runs(s, "c2", 1));
    assert_eq!(container_ids(&s), c2_container);
    let log = d.log_text();
    assert_eq!(log.matches("Applied bundle").count(), 2, "{log}");
    assert!(log.contains("(upload): app 4646 release c1"), "{log}");
    assert!(log.contains("c2.tvb): app 4646 release c2"), "{log}");
}

#[test]
fn bad_bundles_are_refused_and_change_nothing() {
    let t = Scratch::new("badbundles", 2);
    let (other_key, _) = keygen(&t.work, "other");
    let doc = target("c1", &[t.image(0), t.image(1)]);
    let good = std::fs::read(t.create("c1", &doc)).unwrap();
    let by_other = std::fs::read(create(&t.work, "other", &doc, &other_key)).unwrap();
    t.remove_images();
    let (d, before) = t.daemon_running_c0();

    let files = entries(&good);
    let (_, b_at, b_size) = files[3].clone();
    let manifest = manifest_of(&good);
    let archive = |i: usize| {
        let (_, at, size) = files[2 + i].clone();
        good[at..at + size].to_vec()
    };
    let with = |f: &dyn Fn(&mut Manifest)| {
        let mut m = manifest.clone();
        f(&mut m);
        signed(&t.key, &m, &[&archive(0), &archive(1)])
    };
    let mut tampered_manifest = good.clone();
    let (_, m_at, _) = files[0];
    let at = m_at
        + tampered_manifest[m_at..]
            .iter()
            .position(|b| *b == b'c')
            .unwrap();
    tampered_manifest[at] = b'd';
    let mut tampered_b = good.clone();
    tampered_b[b_at + b_size / 2] ^= 0xff;
    let cut_in_b = good[..b_at + b_size / 2].to_vec();
    let huge = ImageEntry {
        size: 1 << 50,
        ..manifest.images[0].clone()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not a bundle",
            b"hello, this is not a tar".repeat(40),
            "not a bundle",
        ),
        ("signed by another key", by_other, "unknown key"),
        (
            "manifest changed",
            tampered_manifest,
            "signature does not match",
        ),
        ("second archive changed", tampered_b, "SHA-256"),
        ("cut in the second archive", cut_in_b, "cut short"),
        (
            "invalid target",
            with(&|m| m.target["local"]["apps"]["4646"]["services"] = json!(5)),
            "target is invalid",
        ),
        (
            "image neither in the bundle nor on the engine",
            with(&|m| {
                m.target["local"]["apps"]["4646"]["services"]["1"]["image"] =
                    json!("tvb-test/missing:1")
            }),
            "tvb-test/missing:1 is neither in the bundle nor on the engine",
        ),
        (
            "larger than the free space",
            with(&|m| m.images[0] = huge.clone()),
            "MB free on the engine's data root",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (status, message) = upload(&d, &bytes);
        assert_eq!(status, 400, "{what}: {message}");
        assert!(message.contains(expected), "{what}: {message}");
        // Nothing changed: no image of the bundle (the first archive of the damaged ones
        // was loaded, then removed), the same containers, the same target.
        assert!(
            !image_present(t.id(0)) && !image_present(t.id(1)),
            "{what}: images left\n{}",
            d.log_text()
        );
        let s = d.status();
        assert!(runs(&s, "c0", 1), "{what}: {s}");
        assert_eq!(container_ids(&s), before, "{what}");
        let (_, stored) = d.get("/v2/local/target-state").unwrap();
        assert_eq!(stored["state"]["local"]["apps"]["4646"]["commit"], "c0");
    }
    // The whole bundle, unchanged, is applied.
    let (status, message) = upload(&d, &good);
    assert_eq!(status, 200, "{message}\n{}", d.log_text());
    d.wait_status("c1 runs", 60, |s| runs(s, "c1", 2));
}

#[test]
fn an_import_cut_by_kill_9_leaves_nothing_half_applied() {
    let t = Scratch::new("killbundle", 2);
    let file = t.create("c1", &target("c1", &[t.image(0), t.image(1)]));
    let good = std::fs::read(&file).unwrap();
    t.remove_images();
    let (mut d, before) = t.daemon_running_c0();

    // Upload everything up to the middle of the second archive, wait for the first image
    // to be loaded, then kill the daemon.
    let (_, b_at, b_size) = entries(&good)[3].clone();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    let headers = [("Content-Length", good.len().to_string())];
    tinyvisor::http::write_request_head(&mut stream, "POST", "/v2/local/bundle", &headers).unwrap();
    stream.write_all(&good[..b_at + b_size / 2]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !image_present(t.id(0)) {
        assert!(Instant::now() < deadline, "A not loaded: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    drop(stream);
    assert!(image_present(t.id(0)) && !image_present(t.id(1)));

    // After the restart: what the import loaded is gone, the old release runs untouched.
    d.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while image_present(t.id(0)) {
        assert!(Instant::now() < deadline, "A left: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = d.wait_status("c0 runs", 30, |s| runs(s, "c0", 1));
    assert_eq!(container_ids(&s), before);
    assert!(d.log_text().contains("A bundle import was cut short"));

    // The bundle itself is fine: a copy in the directory is applied at the next start.
    std::fs::create_dir_all(d.dir.join("data/bundles")).unwrap();
    std::fs::copy(&file, d.dir.join("data/bundles/c1.tvb")).unwrap();
    d.kill9();
    d.start();
    d.wait_status("c1 runs", 60, |s| runs(s, "c1", 2));
}

const UUID: &str = "0123456789abcdef0123456789abcdef";
const APP_UUID: &str = "d1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4";
const DEVICE_KEY: &str = "devicekey0123456789abcdef0123456";

/// The cloud's (v3) form of a one-service release.
fn v3(commit: &str, image: &str) -> Value {
    let web = v3_service(1, image, json!({"environment": {"VERSION": commit}}));
    let app = v3_app(4747, "cloudapp", commit, json!({ "web": web }), json!({}));
    v3_target(UUID, "bundle-device", json!({ APP_UUID: app }))
}

#[test]
fn a_managed_device_keeps_a_bundle_until_the_cloud_answers() {
    let t = Scratch::new("cloudbundle", 1);
    // As the cloud names images: by registry digest. A load does not restore that name; the
    // image row the import writes is how the device finds it.
    let pushed = format!("{}/{}", registry(), t.image(0));
    docker(&["tag", t.image(0), &pushed]);
    docker(&["push", "-q", &pushed]);
    let by_digest = docker(&["inspect", "-f", "{{index .RepoDigests 0}}", &pushed]);
    assert!(by_digest.contains("@sha256:"), "{by_digest}");
    let c1 = t.create("c1", &v3("c1", &by_digest));
    let c2 = t.create("c2", &v3("c2", BUSYBOX));
    docker(&["rmi", &pushed]);
    t.remove_images();

    let api = MockApi::start();
    api.set(|b| {
        b.known_keys = vec![DEVICE_KEY.into()];
        b.target = Some(v3("c0", BUSYBOX));
    });
    let _ = std::fs::remove_file("/tmp/balena-supervisor/state-report-cache");
    let mut d = Daemon::create();
    let mut config = provisioned_config(&api.url, UUID, DEVICE_KEY);
    config["tinyvisorBundleKeys"] = json!([t.public]);
    std::fs::write(d.dir.join("boot/config.json"), config.to_string()).unwrap();
    d.start();
    api.wait_for("a report", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.method == "PATCH" && r.json()[UUID]["api_secret"].is_string())
    });
    // Without the device's key the API refuses a bundle.
    assert_eq!(upload(&d, &std::fs::read(&c1).unwrap()).0, 401);
    d.key = api
        .calls("PATCH", "/device/v3/state")
        .iter()
        .find_map(|r| r.json()[UUID]["api_secret"].as_str().map(String::from));
    d.wait_status("c0 from the cloud runs", 60, |s| runs(s, "c0", 1));
    api.set(|b| b.target_status = 503);

    // Offline: the bundle's release runs.
    let port = d.port.to_string();
    let api_key = d.key.clone().unwrap();
    let (ok, out) = cli(&[
        "--listen-port",
        &port,
        "bundle",
        "apply",
        "--api-key",
        &api_key,
        &c1.display().to_string(),
    ]);
    assert!(ok, "{out}");
    let s = d.wait_status("c1 from the bundle runs", 60, |s| runs(s, "c1", 1));
    let c1_containers = container_ids(&s);
    assert!(
        !d.log_text().contains("Downloading image"),
        "the bundle's image was pulled instead: {}",
        d.log_text()
    );
    // A failed fetch changes nothing.
    assert_eq!(
        d.request("POST", "/v1/update", Some("{\"force\":true}"))
            .unwrap()
            .0,
        204
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(runs(&d.status(), "c1", 1));

    // The cloud answers with the same release: nothing changes (its ETag did not change
    // since the last fetch, yet it is fetched in full).
    api.set(|b| {
        b.target_status = 200;
        b.target = Some(v3("c1", &by_digest));
    });
    assert_eq!(
        d.request("POST", "/v1/update", Some("{\"force\":true}"))
            .unwrap()
            .0,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log_text().contains("has the releases of bundle") {
        assert!(Instant::now() < deadline, "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = d.wait_status("c1 still runs", 30, |s| runs(s, "c1", 1));
    assert_eq!(container_ids(&s), c1_containers);

    // Offline again, another bundle; then the cloud answers with its own release: the
    // cloud wins.
    api.set(|b| b.target_status = 503);
    assert_eq!(upload(&d, &std::fs::read(&c2).unwrap()).0, 200);
    d.wait_status("c2 from the bundle runs", 60, |s| runs(s, "c2", 1));
    api.set(|b| {
        b.target_status = 200;
        b.target = Some(v3("c3", BUSYBOX));
    });
    assert_eq!(
        d.request("POST", "/v1/update", Some("{\"force\":true}"))
            .unwrap()
            .0,
        204
    );
    d.wait_status("the cloud's c3 runs", 60, |s| runs(s, "c3", 1));
    assert!(d
        .log_text()
        .contains("The new target replaces the releases of bundle"));
}
