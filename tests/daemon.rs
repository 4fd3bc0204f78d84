//! The daemon on the real engine: install, update, remove, locks, running:false, and
//! kill -9 at random moments of an update. One test at a time (they own every supervised
//! container).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use common::targets::{local_service, local_target, merged, LocalApp};

fn service(id: u32, name: &str, env: &str, extra: Value) -> Value {
    local_service(
        id,
        name,
        merged(json!({"environment": {"VERSION": env}}), extra),
    )
}

fn target(commit: &str, services: Vec<Value>) -> Value {
    let app = LocalApp {
        device: "test-device",
        id: 4242,
        name: "testapp",
        commit,
        volumes: json!({"data": {}}),
    };
    local_target(app, services)
}

fn container_ids(status: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["serviceName"].as_str().unwrap().to_string(),
                c["containerId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn cleanup(d: &Daemon) {
    // Forced: a test app may still hold its own update lock.
    let (code, _) = d.post_target(
        &json!({"local": {"name": "test-device", "config": {}, "apps": {}}, "force": true}),
    );
    assert_eq!(code, 200);
    d.wait_applied(0, 60);
    let e = engine();
    reset_engine(&e);
    let _ = e.remove_volume("4242_data", true);
}

#[test]
fn install_update_and_remove_an_app() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    let v1 = target(
        "c1",
        vec![
            service(1, "web", "1", json!({})),
            service(
                2,
                "worker",
                "1",
                json!({"volumes": ["data:/data"], "depends_on": ["web"]}),
            ),
        ],
    );
    let (code, body) = d.post_target(&v1);
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("success")),
        "{body}"
    );
    let s1 = d.wait_applied(2, 60);
    assert_eq!(s1["release"], "c1");
    let ids1 = container_ids(&s1);
    // Containers are named and labelled like the real supervisor's.
    let web = e.inspect_container("web_1_1_c1").unwrap();
    assert_eq!(web.config.labels["io.balena.app-id"], "4242");
    assert_eq!(web.config.labels["io.balena.supervised"], "true");
    // depends_on: the worker was created after the web service started.
    let worker = e.inspect_container("worker_2_1_c1").unwrap();
    assert!(
        worker.created > web.state.started_at,
        "worker {} before web start {}",
        worker.created,
        web.state.started_at
    );

    // Update: only web's environment changes; worker is renamed to the new release.
    let v2 = target(
        "c2",
        vec![
            service(1, "web", "2", json!({})),
            service(
                2,
                "worker",
                "1",
                json!({"volumes": ["data:/data"], "depends_on": ["web"]}),
            ),
        ],
    );
    assert_eq!(d.post_target(&v2).0, 200);
    let s2 = d.wait_applied(2, 60);
    assert_eq!(s2["release"], "c2");
    let ids2 = container_ids(&s2);
    assert_ne!(ids1[0].1, ids2[0].1, "web recreated");
    assert_eq!(ids1[1].1, ids2[1].1, "worker kept (renamed only)");
    assert!(e.inspect_container("worker_2_1_c2").is_ok());
    assert!(
        d.log_text().contains("kill web_1_1_c1 (environment)"),
        "{}",
        d.log_text()
    );

    // The same target again changes nothing.
    assert_eq!(d.post_target(&v2).0, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(container_ids(&d.wait_applied(2, 10)), ids2);

    // A target that fails validation is refused and the running one stays.
    let bad = target(
        "c3",
        vec![service(1, "web", "3", json!({"ports": ["80", "80"]}))],
    );
    let (code, body) = d.post_target(&bad);
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("duplicate host port"),
        "{body}"
    );
    assert_eq!(container_ids(&d.wait_applied(2, 10)), ids2);

    // Removal: containers go, the volume stays (local mode keeps volumes).
    cleanup_keep_volume(&d);
    assert!(e.inspect_volume("4242_data").is_ok());
    let _ = e.remove_volume("4242_data", true);
}

fn cleanup_keep_volume(d: &Daemon) {
    assert_eq!(
        d.post_target(&json!({"local": {"name": "test-device", "config": {}, "apps": {}}}))
            .0,
        200
    );
    d.wait_applied(0, 60);
}

#[test]
fn restart_adopts_the_running_app_without_changes() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let mut d = Daemon::new();
    let v1 = target(
        "c1",
        vec![
            service(1, "main", "1", json!({})),
            service(2, "side", "1", json!({})),
        ],
    );
    assert_eq!(d.post_target(&v1).0, 200);
    let before = container_ids(&d.wait_applied(2, 60));
    let status = d.stop().unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    // Containers keep running while tinyvisor is down.
    assert!(e.inspect_container("main_1_1_c1").unwrap().state.running);
    d.start();
    let after = container_ids(&d.wait_applied(2, 30));
    assert_eq!(before, after);
    cleanup(&d);
}

#[test]
fn running_false_stops_and_keeps_the_container() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    assert_eq!(
        d.post_target(&target("c1", vec![service(1, "main", "1", json!({}))]))
            .0,
        200
    );
    let ids = container_ids(&d.wait_applied(1, 60));
    assert_eq!(
        d.post_target(&target(
            "c1",
            vec![service(1, "main", "1", json!({"running": false}))]
        ))
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = e.inspect_container(&ids[0].1).unwrap();
        if !c.state.running {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d.post_target(&target("c1", vec![service(1, "main", "1", json!({}))]))
            .0,
        200
    );
    let again = container_ids(&d.wait_applied(1, 60));
    assert_eq!(again, ids, "the same container is started again");
    cleanup(&d);
}

#[test]
fn an_app_lock_blocks_the_update_until_forced() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    // The service takes its own update lock, as an app does with `lockfile`.
    // Like `lockfile`: create the lock exclusively, retrying while tinyvisor holds it.
    let locking = json!({"command": ["sh", "-c", "trap 'exit 0' TERM; until (set -C; : > /tmp/balena/updates.lock) 2>/dev/null; do sleep 0.2; done; while true; do sleep 0.2; done"]});
    assert_eq!(
        d.post_target(&target(
            "c1",
            vec![service(1, "main", "1", locking.clone())]
        ))
        .0,
        200
    );
    let ids = container_ids(&d.wait_applied(1, 60));
    let lockfile =
        std::path::PathBuf::from("/tmp/balena-supervisor/services/4242/main/updates.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lockfile.exists() {
        assert!(
            Instant::now() < deadline,
            "the service did not create its lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.post_target(&target(
            "c2",
            vec![service(1, "main", "2", locking.clone())]
        ))
        .0,
        200
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, status) = d.get("/v2/state/status").unwrap();
    assert_eq!(status["appState"], "applying");
    assert_eq!(
        container_ids(&status),
        ids,
        "the locked service was not touched"
    );
    // The status names the lock that blocks.
    assert!(
        status["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("Lockfile exists for { appId: 4242, service: main }")),
        "{status}"
    );
    assert!(
        d.log_text().contains("Updates are locked"),
        "{}",
        d.log_text()
    );
    assert!(d
        .log_text()
        .contains("Lockfile exists for { appId: 4242, service: main }"));

    let mut forced = target("c2", vec![service(1, "main", "2", locking)]);
    forced["force"] = json!(true);
    assert_eq!(d.post_target(&forced).0, 200);
    let after = container_ids(&d.wait_applied(1, 60));
    assert_ne!(after, ids);
    cleanup(&d);
}

#[test]
fn kill_9_at_random_moments_of_an_update_always_converges() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let mut d = Daemon::new();
    let trials: u64 = std::env::var("TV_CHAOS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("TV_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7e57_5eed);
    // Fixed per run so a failure can be replayed (TV_CHAOS_SEED).
    let mut rng = common::rng::Rng(seed);
    let spec = |version: u64| {
        target(
            &format!("c{version}"),
            vec![
                service(
                    1,
                    "alpha",
                    &version.to_string(),
                    json!({"volumes": ["data:/data"]}),
                ),
                service(
                    2,
                    "beta",
                    &version.to_string(),
                    json!({"depends_on": ["alpha"]}),
                ),
                // Every third release is on a short trial (docs/trials.md): cuts land
                // during trials too, and a healthy release must still win.
                service(
                    3,
                    "gamma",
                    &version.to_string(),
                    if version % 3 == 2 {
                        json!({"labels": {"io.tinyvisor.rollback.window": "2s"}})
                    } else {
                        json!({})
                    },
                ),
            ],
        )
    };
    assert_eq!(d.post_target(&spec(0)).0, 200);
    d.wait_applied(3, 60);
    // Data in the volume must survive every crash.
    let mountpoint = e.inspect_volume("4242_data").unwrap().mountpoint;
    std::fs::write(
        std::path::Path::new(&mountpoint).join("precious"),
        b"keep me",
    )
    .unwrap();

    for trial in 1..=trials {
        assert_eq!(d.post_target(&spec(trial)).0, 200);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        d.kill9();
        d.start();
        let status = d.wait_applied(3, 90);
        assert_eq!(status["release"], format!("c{trial}"), "trial {trial}");
        // Exactly one container per service, all of this release, with this release's env.
        let supervised = e.list_containers(true, &["io.balena.supervised"]).unwrap();
        assert_eq!(
            supervised.len(),
            3,
            "trial {trial}: {:?}",
            supervised.iter().map(|c| &c.names).collect::<Vec<_>>()
        );
        for c in &supervised {
            let i = e.inspect_container(&c.id).unwrap();
            assert!(
                i.name.ends_with(&format!("_c{trial}")),
                "trial {trial}: {}",
                i.name
            );
            assert!(
                i.config.env.contains(&format!("VERSION={trial}")),
                "trial {trial}: {:?}",
                i.config.env
            );
        }
        assert_eq!(
            std::fs::read(std::path::Path::new(&mountpoint).join("precious")).unwrap(),
            b"keep me",
            "trial {trial}"
        );
    }
    cleanup(&d);
}

#[test]
fn images_are_pulled_from_the_registry_and_a_missing_one_is_retried() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    let image = format!("{}/tinyvisor/busybox:1", registry());
    let _ = e.remove_image(&image, true);
    let mut svc = service(1, "main", "1", json!({}));
    svc["image"] = json!(image);
    assert_eq!(d.post_target(&target("c1", vec![svc])).0, 200);
    let status = d.wait_applied(1, 90);
    let pulled = e.inspect_image(&image).expect("pulled through the engine");
    assert_eq!(status["images"][0]["status"], "Downloaded");
    assert_eq!(status["images"][0]["dockerImageId"], json!(pulled.id));
    assert!(
        d.log_text()
            .contains(&format!("Downloading image '{image}'")),
        "{}",
        d.log_text()
    );

    // An image the registry does not have: the apply fails, retries with backoff, and the
    // running release stays.
    let missing = format!("{}/tinyvisor/{}:1", registry(), unique("absent"));
    let mut bad = service(1, "main", "2", json!({}));
    bad["image"] = json!(missing);
    assert_eq!(d.post_target(&target("c2", vec![bad])).0, 200);
    std::thread::sleep(Duration::from_secs(3));
    let (_, s) = d.get("/v2/state/status").unwrap();
    assert_eq!(s["appState"], "applying");
    assert_eq!(s["release"], "c1");
    let log = d.log_text();
    assert!(
        log.matches("Failed to download image").count() >= 2,
        "retried: {log}"
    );
    cleanup(&d);
    let _ = e.remove_image(&image, true);
}

#[test]
fn a_preloaded_apps_json_is_applied_on_first_start() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let mut d = Daemon::create();
    let main = common::targets::v3_service(1, BUSYBOX, json!({}));
    let mut app = common::targets::v3_app(
        4242,
        "preloaded",
        "pre1",
        json!({ "main": main }),
        json!({}),
    );
    app["releases"]["pre1"]["id"] = json!(3);
    let apps = json!({"config": {}, "apps": {"preload-uuid": app}});
    std::fs::write(d.dir.join("data/apps.json"), apps.to_string()).unwrap();
    d.start();
    let s = d.wait_applied(1, 60);
    assert_eq!(s["release"], "pre1");
    assert!(d.dir.join("data/apps.json.preloaded").exists());
    assert_eq!(std::fs::read(d.dir.join("data/apps.json")).unwrap(), b"{}");
    assert!(
        !d.log_text().contains("Downloading image"),
        "preloaded images are not pulled"
    );
    cleanup(&d);
}

/// Stops the engine and starts it again with the project's own script, which stops only the
/// dockerd it started (by its pid file) and waits for it to go.
fn restart_dockerd() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-engine");
    let status = std::process::Command::new("bash")
        .args([script, "restart"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "engine did not restart: {status}");
}

#[test]
fn an_engine_restart_in_the_middle_of_an_update_converges() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    let spec = |v: &str| {
        target(
            &format!("c{v}"),
            vec![
                service(1, "one", v, json!({})),
                service(2, "two", v, json!({})),
            ],
        )
    };
    assert_eq!(d.post_target(&spec("1")).0, 200);
    d.wait_applied(2, 60);
    assert_eq!(d.post_target(&spec("2")).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    restart_dockerd();
    let s = d.wait_applied(2, 120);
    assert_eq!(s["release"], "c2");
    let e = engine();
    let names: Vec<String> = e
        .list_containers(true, &["io.balena.supervised"])
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with("_c2")), "{names:?}");
    cleanup(&d);
}

#[test]
fn local_logs_stream_container_output_and_events() {
    use std::io::{BufRead, Write};
    use tinyvisor::http;
    let _serial = serial();
    reset_engine(&engine());
    let d = Daemon::new();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET /v2/local/logs HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(conn);
    let head = http::read_head(&mut reader).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/x-ndjson"));
    let mut lines = std::io::BufReader::new(http::Body::new(reader, http::Framing::Chunked));
    let mut next = || -> Value {
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    };
    assert_eq!(
        next(),
        json!({"message": "Streaming logs", "isSystem": true})
    );
    let svc = service(
        1,
        "talker",
        "a",
        json!({"command": ["sh", "-c", "echo hello-local; trap 'exit 0' TERM; while true; do sleep 0.2; done"]}),
    );
    assert_eq!(d.post_target(&target("c1", vec![svc])).0, 200);
    let (mut saw_event, mut saw_output) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(saw_event && saw_output) && Instant::now() < deadline {
        let l = next();
        saw_event |=
            l["isSystem"] == true && l["message"] == format!("Started service 'talker {BUSYBOX}'");
        saw_output |=
            l["message"] == "hello-local" && l["serviceId"] == 1 && l["serviceName"] == "talker";
    }
    assert!(saw_event && saw_output, "log: {}", d.log_text());
    cleanup(&d);
}

/// The `depends_on` conditions helios added (docs/hostos.md §5) on the real engine: a
/// dependent of `service_healthy` starts only once the engine calls its dependency healthy;
/// one of `service_completed_successfully` only after a clean exit; a dependency that exits
/// with an error blocks its dependent with an error naming both, instead of waiting for ever.
#[test]
fn depends_on_conditions_hold_dependents_until_they_are_met() {
    let _serial = serial();
    let e = engine();
    reset_engine(&e);
    let d = Daemon::new();
    let sleeper = common::targets::SLEEPER;
    let healthcheck = json!({"test": ["CMD", "test", "-f", "/tmp/ready"], "interval": "1s", "timeout": "1s", "retries": 30});
    let services = vec![
        service(
            1,
            "db",
            "1",
            json!({"healthcheck": healthcheck,
            "command": ["sh", "-c", format!("sleep 3; touch /tmp/ready; {sleeper}")]}),
        ),
        service(
            2,
            "web",
            "1",
            json!({"depends_on": {"db": {"condition": "service_healthy"}}}),
        ),
        service(
            3,
            "migrate",
            "1",
            json!({"restart": "no", "command": ["sh", "-c", "sleep 1; exit 0"]}),
        ),
        service(
            4,
            "api",
            "1",
            json!({"depends_on": {"migrate": {"condition": "service_completed_successfully"}}}),
        ),
        service(
            5,
            "broken",
            "1",
            json!({"restart": "no", "command": ["sh", "-c", "exit 3"]}),
        ),
        service(
            6,
            "after",
            "1",
            json!({"depends_on": {"broken": {"condition": "service_completed_successfully"}}}),
        ),
        service(
            7,
            "extra",
            "1",
            json!({"depends_on": {"broken": {"condition": "service_completed_successfully", "required": false}}}),
        ),
    ];
    assert_eq!(d.post_target(&target("c1", services)).0, 200);
    let started_at = |s: &Value, name: &str| -> Option<String> {
        let c = s["containers"]
            .as_array()?
            .iter()
            .find(|c| c["serviceName"] == name)?;
        let id = c["containerId"].as_str()?;
        Some(e.inspect_container(id).ok()?.state.started_at)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let (_, s) = d.get("/v2/state/status").unwrap();
        let names: Vec<&str> = s["containers"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["serviceName"].as_str()).collect())
            .unwrap_or_default();
        if ["web", "api", "extra"].iter().all(|n| names.contains(n))
            && s["lastError"]
                .as_str()
                .is_some_and(|m| m.starts_with("start after"))
        {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    let find = |name: &str| {
        status["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["serviceName"] == name)
            .cloned()
    };
    // web started after db had become healthy (3 s after db started).
    let db_started = started_at(&status, "db").unwrap();
    let web_started = started_at(&status, "web").unwrap();
    assert!(web_started > db_started, "{db_started} {web_started}");
    let db = e
        .inspect_container(find("db").unwrap()["containerId"].as_str().unwrap())
        .unwrap();
    let health = db.state.health.as_ref().unwrap();
    let healthy_since = health["Log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ExitCode"] == 0)
        .and_then(|l| l["End"].as_str())
        .unwrap()
        .to_string();
    assert!(
        web_started.as_str() >= &healthy_since[..19],
        "{web_started} < {healthy_since}"
    );
    assert_eq!(find("db").unwrap()["health"], "healthy");
    // api after migrate's clean exit; migrate shows its exit code.
    assert_eq!(find("migrate").unwrap()["exitCode"], 0);
    assert!(started_at(&status, "api").unwrap() > started_at(&status, "migrate").unwrap());
    // broken exited 3: after never starts and the error says why; the optional one runs.
    assert_eq!(find("broken").unwrap()["exitCode"], 3);
    assert!(find("after").is_none(), "{status}");
    assert_eq!(
        status["lastError"],
        "start after: dependency 'broken' exited with code 3"
    );
    cleanup(&d);
}
