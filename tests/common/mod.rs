//! Shared helpers for tests that talk to the real engine started by scripts/setup-engine.
#![allow(dead_code)]

pub mod fake_systemd;
pub mod mock_api;
#[path = "../../src/testutil/rng.rs"]
pub mod rng;
pub mod targets;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tinyvisor::engine::Engine;

/// Label every test object carries so a crashed run can be cleaned up by hand:
/// `docker rm -f $(docker ps -aq -f label=tinyvisor.test)`.
pub const TEST_LABEL: &str = "tinyvisor.test";
pub const BUSYBOX: &str = "local/busybox:1";

pub fn socket() -> String {
    std::env::var("DOCKER_SOCKET").unwrap_or_else(|_| "/var/run/docker.sock".into())
}

pub fn registry() -> String {
    format!(
        "127.0.0.1:{}",
        std::env::var("TV_REGISTRY_PORT").unwrap_or_else(|_| "5858".into())
    )
}

/// The engine, which must answer: these tests are meant to fail, not skip, without one.
pub fn engine() -> Engine {
    let e = Engine::new(socket());
    if let Err(err) = e.ping() {
        panic!(
            "no engine on {}: {err}. Run scripts/setup-engine first.",
            socket()
        );
    }
    e
}

/// A name no other test (or earlier run) uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "tvtest-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A create body for a busybox container that exits promptly on SIGTERM.
pub fn busybox_body(cmd: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "Image": BUSYBOX,
        "Cmd": ["sh", "-c", cmd],
        "Labels": labels,
        "HostConfig": { "Init": true },
    })
}

/// Removes containers, volumes and networks named here when dropped, even if a test panics.
pub struct Cleanup {
    pub engine: Engine,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    pub images: Vec<String>,
}

impl Cleanup {
    pub fn new(engine: &Engine) -> Self {
        Cleanup {
            engine: engine.clone(),
            containers: vec![],
            volumes: vec![],
            networks: vec![],
            images: vec![],
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.engine.remove_container(c, true, true);
        }
        for n in &self.networks {
            let _ = self.engine.remove_network(n);
        }
        for v in &self.volumes {
            let _ = self.engine.remove_volume(v, true);
        }
        for i in &self.images {
            let _ = self.engine.remove_image(i, true);
        }
    }
}

/// A tinyvisor daemon with its own scratch directories and port, killed on drop.
pub struct Daemon {
    pub dir: std::path::PathBuf,
    pub port: u16,
    pub child: Option<std::process::Child>,
    pub log: std::path::PathBuf,
    /// API key sent with every request (managed devices require one).
    pub key: Option<String>,
    /// Extra environment of the daemon process.
    pub env: Vec<(String, String)>,
    /// `--root-mountpoint`: "/" (this host) unless a test gives it a scratch root.
    pub root: String,
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub fn new() -> Daemon {
        let mut d = Daemon::create();
        d.start();
        d
    }

    /// Scratch directories and config, not started yet.
    pub fn create() -> Daemon {
        let dir = std::env::temp_dir().join(unique("daemon"));
        for d in ["boot", "root", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("boot/config.json"), "{}").unwrap();
        std::fs::write(
            dir.join("boot/device-type.json"),
            r#"{"slug":"generic-amd64","arch":"amd64"}"#,
        )
        .unwrap();
        let log = dir.join("tinyvisor.log");
        // With the host root at "/" the default bus would be this machine's: a test daemon must
        // never reboot it or switch its units. Tests of the D-Bus path set their own bus.
        let no_bus = format!("unix:path={}/no-system-bus", dir.display());
        Daemon {
            dir,
            port: free_port(),
            child: None,
            log,
            key: None,
            // Nor may it install the balena firewall in this machine's iptables.
            env: vec![
                ("DBUS_SYSTEM_BUS_ADDRESS".into(), no_bus),
                ("TINYVISOR_FIREWALL".into(), "off".into()),
            ],
            root: "/".into(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let p = |s: &str| self.dir.join(s).display().to_string();
        vec![
            "--docker-socket".into(),
            socket(),
            "--boot-mountpoint".into(),
            p("boot"),
            // The engine binds host paths (lock directories): tinyvisor runs on this host, so
            // the host root is "/".
            "--root-mountpoint".into(),
            self.root.clone(),
            "--data-mountpoint".into(),
            p("data"),
            "--state-mountpoint".into(),
            p("state"),
            "--database-path".into(),
            p("data/database.sqlite"),
            "--listen-port".into(),
            self.port.to_string(),
        ]
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tinyvisor"))
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.get("/ping").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("daemon did not answer /ping: {}", self.log_text());
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe_kill_term(c.id());
        c.wait().ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, serde_json::Value)> {
        use tinyvisor::http;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let mut headers = vec![("Connection", "close".to_string())];
        if let Some(k) = &self.key {
            headers.push(("Authorization", format!("Bearer {k}")));
        }
        http::write_request(&mut stream, method, path, &headers, body.map(str::as_bytes))?;
        let mut reader = std::io::BufReader::new(stream);
        let head = http::read_head(&mut reader)?;
        let framing = http::framing(&head, false)?;
        let raw = http::Body::new(reader, framing).read_to_end_limited(1 << 22)?;
        let v = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&raw).into(),
        ));
        Ok((head.status, v))
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, serde_json::Value)> {
        self.request("GET", path, None)
    }

    pub fn post_target(&self, target: &serde_json::Value) -> (u16, serde_json::Value) {
        self.request("POST", "/v2/local/target-state", Some(&target.to_string()))
            .unwrap()
    }

    /// `GET /v2/state/status`, or null when the daemon does not answer.
    pub fn status(&self) -> serde_json::Value {
        self.get("/v2/state/status")
            .map(|(_, v)| v)
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits up to `secs` for a status that satisfies `f`; fails naming `what` with the last
    /// status and the log.
    pub fn wait_status(
        &self,
        what: &str,
        secs: u64,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {s}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits until the daemon reports `applied` with `expect` containers running, all of
    /// `commit` when given.
    pub fn wait_applied(&self, expect: usize, timeout_s: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
        let mut last = serde_json::Value::Null;
        while std::time::Instant::now() < deadline {
            if let Ok((200, v)) = self.get("/v2/state/status") {
                let n = v["containers"].as_array().map(|a| a.len()).unwrap_or(0);
                let running = v["containers"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|c| c["status"] == "Running"));
                if v["appState"] == "applied" && n == expect && running {
                    return v;
                }
                last = v;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "not applied within {timeout_s} s; last status {last}\nlog:\n{}",
            self.log_text()
        );
    }
}

fn unsafe_kill_term(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The value of environment variable `key` in container `id` (empty when it has none or the
/// container is gone).
pub fn container_env_var(e: &Engine, id: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    e.inspect_container(id)
        .ok()
        .and_then(|i| {
            i.config
                .env
                .iter()
                .find_map(|v| v.strip_prefix(&prefix).map(String::from))
        })
        .unwrap_or_default()
}

/// config.json of a device already provisioned against `api_url` with `device_key`.
pub fn provisioned_config(api_url: &str, uuid: &str, device_key: &str) -> serde_json::Value {
    serde_json::json!({"apiEndpoint": api_url, "uuid": uuid, "deviceType": "generic-amd64",
        "registered_at": 1_700_000_000_000u64, "deviceId": 42, "deviceApiKey": device_key})
}

/// Daemon tests own every supervised container on the engine: run them one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes everything supervised from the engine (between daemon tests).
pub fn reset_engine(e: &tinyvisor::engine::Engine) {
    for c in e
        .list_containers(true, &["io.balena.supervised"])
        .unwrap_or_default()
    {
        let _ = e.remove_container(&c.id, true, true);
    }
    for n in e
        .list_networks(&["io.balena.supervised"])
        .unwrap_or_default()
    {
        let _ = e.remove_network(&n.id);
    }
    // Lock files left by an earlier test's app (tests run tinyvisor with host root "/").
    let _ = std::fs::remove_dir_all("/tmp/balena-supervisor/services/4242");
}

/// `docker <args>` against the test engine (DOCKER_HOST); its trimmed output. Fails the test
/// when the command fails.
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
