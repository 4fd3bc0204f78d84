//! The OpenAPI document (docs/openapi.json) and the router agree.

use super::server::{Method, Request};
use super::*;
use crate::config::Overrides;
use crate::testutil::TempDir;

fn api(dir: &TempDir) -> Api {
    let root = dir.path().to_path_buf();
    let led = root.join("led").display().to_string();
    let env = move |k: &str| (k == "LED_FILE").then(|| led.clone());
    let settings = Settings::load(
        &env,
        &Overrides {
            boot_mountpoint: Some(root.join("boot")),
            root_mountpoint: Some(root.clone()),
            data_mountpoint: Some(root.join("data")),
            database_path: Some(root.join("db.sqlite")),
            ..Overrides::default()
        },
    )
    .unwrap();
    // Nobody listens: calls that need the state engine answer 503, never "Cannot ...".
    let (state_engine, _) = crossbeam_channel::bounded(1);
    Api {
        settings: Arc::new(settings),
        state_engine,
        status: Arc::default(),
        cloud: None,
        logs: Arc::default(),
    }
}

fn call(api: &Api, method: Method, url: &str) -> Response {
    api.handle(Request {
        method,
        url: url.to_string(),
        headers: Vec::new(),
        body: b"{}".to_vec(),
        upload: None,
    })
}

fn is_unrouted(r: &Response) -> bool {
    r.status == 404
        && matches!(&r.body, server::ResponseBody::Bytes(b) if b.starts_with(b"Cannot "))
}

#[test]
fn every_documented_endpoint_is_routed() {
    let doc: Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    let dir = TempDir::new("openapi");
    let api = api(&dir);
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} documents no answer"
            );
            let method = match method.as_str() {
                "get" => Method::Get,
                "post" => Method::Post,
                "patch" => Method::Patch,
                other => panic!("unexpected method {other}"),
            };
            let url = path.replace("{appId}", "4242");
            let r = call(&api, method.clone(), &url);
            assert!(
                !is_unrouted(&r),
                "{method} {url} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} operations documented");
    // And the other way round for a few that do not exist.
    for (m, url) in [
        (Method::Get, "/v2/nope"),
        (Method::Delete, "/v1/device"),
        (Method::Get, "/v1/update"),
    ] {
        assert!(is_unrouted(&call(&api, m, url)), "{url}");
    }
}

#[test]
fn cross_site_requests_are_refused_and_api_clients_pass() {
    let dir = TempDir::new("csrf");
    let api = api(&dir);
    let with = |method: Method, headers: &[(&str, &str)]| {
        api.handle(Request {
            method,
            url: "/v1/blink".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: b"{}".to_vec(),
            upload: None,
        })
        .status
    };
    // A page elsewhere posting to the device.
    assert_eq!(
        with(Method::Post, &[("Origin", "http://evil.example")]),
        403
    );
    assert_eq!(with(Method::Post, &[("Origin", "null")]), 403);
    assert_eq!(
        with(
            Method::Post,
            &[("Content-Type", "text/plain;charset=UTF-8")]
        ),
        400
    );
    assert_eq!(
        with(
            Method::Post,
            &[("Content-Type", "application/x-www-form-urlencoded")]
        ),
        400
    );
    assert_eq!(
        with(
            Method::Post,
            &[("Content-Type", "multipart/form-data; boundary=x")]
        ),
        400
    );
    // The device's own page, API clients without Origin, JSON or no body type.
    let own = [
        ("Origin", "http://10.0.0.5:48484"),
        ("Host", "10.0.0.5:48484"),
    ];
    assert_eq!(with(Method::Post, &own), 200);
    assert_eq!(
        with(Method::Post, &[("Content-Type", "application/json")]),
        200
    );
    assert_eq!(with(Method::Post, &[]), 200);
    // Reads are not state changes.
    assert_eq!(
        api.handle(Request {
            method: Method::Get,
            url: "/ping".into(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: Vec::new(),
            upload: None,
        })
        .status,
        200
    );
}

#[test]
fn a_scoped_log_stream_shows_only_its_apps_services() {
    use server::StreamBody;
    let bus = LogBus::default();
    let rx = bus.subscribe();
    let mut reader = LinesReader {
        rx,
        buf: Vec::new(),
        pos: 0,
        services: Some([7].into_iter().collect()),
    };
    let line = |message: &str, service_id: Option<i64>| crate::logs::LogMessage {
        message: message.into(),
        timestamp: 1,
        service_id,
        service_name: None,
        is_system: service_id.is_none(),
        is_stderr: false,
    };
    bus.push(line("other app", Some(8)));
    bus.push(line("supervisor event", None));
    bus.push(line("mine", Some(7)));
    let mut out = vec![0u8; 256];
    let n = reader
        .read_wait(&mut out, Duration::from_millis(200))
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_slice(&out[..n]).unwrap();
    assert_eq!(
        (got["message"].as_str(), got["serviceId"].as_i64()),
        (Some("mine"), Some(7))
    );
    assert_eq!(
        reader
            .read_wait(&mut out, Duration::from_millis(50))
            .unwrap(),
        None
    );
}

#[test]
fn while_starting_only_ping_answers_and_the_device_is_not_healthy() {
    let req = |method, url: &str| Request {
        method,
        url: url.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        upload: None,
    };
    assert_eq!(starting(&req(Method::Get, "/ping")).status, 200);
    assert_eq!(starting(&req(Method::Get, "/v1/healthy")).status, 500);
    for (m, url) in [
        (Method::Get, "/v2/state/status"),
        (Method::Post, "/v1/update"),
        (Method::Get, "/v2/local/target-state"),
    ] {
        assert_eq!(starting(&req(m, url)).status, 503, "{url}");
    }
}

#[test]
fn a_request_while_starting_waits_for_the_whole_api() {
    let dir = TempDir::new("early");
    let slot = std::sync::OnceLock::new();
    assert!(wait_ready(&slot, Duration::from_millis(20)).is_none());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| wait_ready(&slot, Duration::from_secs(5)).is_some());
        std::thread::sleep(Duration::from_millis(30));
        let _ = slot.set(api(&dir));
        assert!(waiter.join().unwrap());
    });
}
