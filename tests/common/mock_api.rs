//! A mock balena API (docs/contract/cloud-api.md §8) on loopback: answers provisioning,
//! target-state, report and log-stream calls the way the real API does, and records every request
//! with its size.

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
    /// Bytes of the request and of the answer, as sent on the wire (head and body).
    pub bytes_in: usize,
    pub bytes_out: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn bearer(&self) -> Option<&str> {
        self.header("Authorization")?.strip_prefix("Bearer ")
    }
}

/// How the mock answers; tests change it while the daemon runs.
#[derive(Debug)]
pub struct Behaviour {
    pub register_status: u16,
    pub device_id: i64,
    /// Keys the API knows the device by (device lookups with other keys find nothing).
    pub known_keys: Vec<String>,
    pub device_key_status: u16,
    /// The v3 target document (`{uuid: {...}}`) and its ETag.
    pub target: Option<Value>,
    pub etag: String,
    /// A raw body to send instead of the target (garbage tests).
    pub raw_target: Option<Vec<u8>>,
    pub target_status: u16,
    pub report_status: u16,
    pub retry_after: Option<u64>,
    /// The delta server (`/api/v3/delta`): its status and, for 200, the delta image name.
    pub delta_status: u16,
    pub delta_name: String,
    /// `/v7/device_tag` rows (`{"id", "tag_key", "value"}`).
    pub tags: Vec<Value>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            register_status: 201,
            device_id: 42,
            known_keys: Vec::new(),
            device_key_status: 200,
            target: None,
            etag: "\"1\"".into(),
            raw_target: None,
            target_status: 200,
            report_status: 200,
            retry_after: None,
            delta_status: 200,
            delta_name: String::new(),
            tags: Vec::new(),
        }
    }
}

pub struct MockApi {
    pub url: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Lines received on log streams, decoded, in arrival order.
    pub logs: Arc<Mutex<Vec<Value>>>,
    server: Arc<tiny_http::Server>,
}

impl MockApi {
    pub fn start() -> MockApi {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let (server, behaviour, requests, logs) = (
                server.clone(),
                behaviour.clone(),
                requests.clone(),
                logs.clone(),
            );
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    if req.url().ends_with("/log-stream") {
                        log_stream(req, &requests, &logs);
                    } else {
                        handle(req, &behaviour, &requests);
                    }
                }
            });
        }
        MockApi {
            url: format!("http://127.0.0.1:{port}"),
            behaviour,
            requests,
            logs,
            server,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose method and path (before `?`) match.
    pub fn calls(&self, method: &str, path_prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.url.starts_with(path_prefix))
            .collect()
    }

    /// Waits until `f` holds for the recorded requests.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&[Recorded]) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.requests()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let seen: Vec<String> = self
            .requests()
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.url, r.status))
            .collect();
        panic!("mock API: {what} did not happen within {timeout:?}; saw {seen:#?}");
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn handle(mut req: tiny_http::Request, b: &Mutex<Behaviour>, log: &Mutex<Vec<Recorded>>) {
    let method = req.method().to_string();
    let url = req.url().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| (h.field.to_string(), h.value.to_string()))
        .collect();
    let mut body = Vec::new();
    let _ = req.as_reader().read_to_end(&mut body);
    let bearer = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let path = url.split('?').next().unwrap_or_default().to_string();
    let mut extra: Vec<(&str, String)> = Vec::new();
    let (status, answer): (u16, Vec<u8>) = {
        let mut b = b.lock().unwrap();
        match (method.as_str(), path.as_str()) {
            ("POST", "/device/register") => {
                let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if b.register_status == 201 {
                    if let Some(k) = sent["api_key"].as_str() {
                        b.known_keys.push(k.to_string());
                    }
                    let id = b.device_id;
                    (
                        201,
                        json!({"id": id, "uuid": sent["uuid"], "api_key": sent["api_key"]})
                            .to_string()
                            .into_bytes(),
                    )
                } else if b.register_status == 409 {
                    (409, b"\"uuid\" must be unique.".to_vec())
                } else {
                    (b.register_status, b"error".to_vec())
                }
            }
            ("GET", "/v7/device") => {
                let d = if b.known_keys.contains(&bearer) {
                    json!([{"id": b.device_id}])
                } else {
                    json!([])
                };
                (200, json!({ "d": d }).to_string().into_bytes())
            }
            ("POST", p) if p.starts_with("/api-key/device/") && p.ends_with("/device-key") => {
                if b.device_key_status == 200 && b.known_keys.contains(&bearer) {
                    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Some(k) = sent["apiKey"].as_str() {
                        b.known_keys.push(k.to_string());
                    }
                    (200, b"OK".to_vec())
                } else {
                    (b.device_key_status.max(401), b"Unauthorized".to_vec())
                }
            }
            ("GET", p) if p.starts_with("/device/v3/") && p.ends_with("/state") => {
                let inm = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
                    .map(|(_, v)| v.clone());
                if !b.known_keys.contains(&bearer) {
                    (401, b"Unauthorized".to_vec())
                } else if b.target_status != 200 {
                    (b.target_status, b"error".to_vec())
                } else if let Some(raw) = &b.raw_target {
                    (200, raw.clone())
                } else if inm.as_deref() == Some(b.etag.as_str()) {
                    (304, Vec::new())
                } else {
                    extra.push(("ETag", b.etag.clone()));
                    (
                        200,
                        b.target
                            .clone()
                            .unwrap_or(json!({}))
                            .to_string()
                            .into_bytes(),
                    )
                }
            }
            ("GET", "/auth/v1/token") => {
                let basic = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .and_then(|(_, v)| v.strip_prefix("Basic "))
                    .unwrap_or_default()
                    .to_string();
                let allowed = b.known_keys.iter().any(|k| {
                    let plain = format!("d_0123456789abcdef0123456789abcdef:{k}");
                    tinyvisor::encoding::base64(plain.as_bytes()) == basic
                });
                if allowed {
                    (200, br#"{"token":"delta-token-1"}"#.to_vec())
                } else {
                    (401, b"Unauthorized".to_vec())
                }
            }
            ("GET", "/api/v3/delta") => {
                if bearer != "delta-token-1" {
                    (401, b"Unauthorized".to_vec())
                } else if b.delta_status == 200 {
                    (200, json!({"name": b.delta_name}).to_string().into_bytes())
                } else {
                    (b.delta_status, b"no delta".to_vec())
                }
            }
            ("PATCH", p) if p.starts_with("/v7/device(") => {
                if b.known_keys.contains(&bearer) {
                    (200, b"OK".to_vec())
                } else {
                    (401, b"Unauthorized".to_vec())
                }
            }
            ("GET", "/v7/device_tag") => {
                let filter = format!("device%20eq%20{}", b.device_id);
                if !b.known_keys.contains(&bearer) {
                    (401, b"Unauthorized".to_vec())
                } else if !url.contains(&filter) {
                    (400, b"bad filter".to_vec())
                } else {
                    (200, json!({"d": b.tags}).to_string().into_bytes())
                }
            }
            ("PATCH", "/device/v3/tags") => {
                if b.known_keys.contains(&bearer) {
                    (200, b"OK".to_vec())
                } else {
                    (401, b"Unauthorized".to_vec())
                }
            }
            ("PATCH", "/device/v3/state") => {
                if b.report_status != 200 {
                    if let Some(r) = b.retry_after {
                        extra.push(("Retry-After", r.to_string()));
                    }
                }
                (b.report_status, b"OK".to_vec())
            }
            _ => (404, b"Not found".to_vec()),
        }
    };
    let bytes_in = method.len()
        + url.len()
        + 11
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
        + 2
        + body.len();
    let mut response = tiny_http::Response::from_data(answer.clone()).with_status_code(status);
    for (k, v) in &extra {
        response = response.with_header(tiny_http::Header::from_bytes(*k, v.as_bytes()).unwrap());
    }
    // Status line, Server/Date/Content-Length headers (~100 bytes), extras, blank line, body.
    let bytes_out = 17
        + 100
        + extra
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
        + 2
        + answer.len();
    log.lock().unwrap().push(Recorded {
        at: Instant::now(),
        method,
        url,
        headers,
        body,
        status,
        bytes_in,
        bytes_out,
    });
    let _ = req.respond(response);
}

/// A log stream: recorded when it opens, its gzip NDJSON decoded line by line as it arrives,
/// answered 200 when the device ends it.
fn log_stream(mut req: tiny_http::Request, log: &Mutex<Vec<Recorded>>, logs: &Mutex<Vec<Value>>) {
    use std::io::BufRead;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|h| (h.field.to_string(), h.value.to_string()))
        .collect();
    log.lock().unwrap().push(Recorded {
        at: Instant::now(),
        method: req.method().to_string(),
        url: req.url().to_string(),
        headers,
        body: Vec::new(),
        status: 200,
        bytes_in: 0,
        bytes_out: 0,
    });
    let decoder = flate2::read::GzDecoder::new(req.as_reader());
    for line in std::io::BufReader::new(decoder).lines() {
        let Ok(line) = line else { break };
        if let Ok(v) = serde_json::from_str(&line) {
            logs.lock().unwrap().push(v);
        }
    }
    let _ = req.respond(tiny_http::Response::from_string("OK"));
}
