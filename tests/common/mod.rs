//! Shared helpers for tests that talk to the real engine started by scripts/setup-engine.
#![allow(dead_code)]

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
