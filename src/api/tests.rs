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
    let (engine, _) = crossbeam_channel::bounded(1);
    Api {
        settings: Arc::new(settings),
        engine,
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
