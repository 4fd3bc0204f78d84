//! A private system bus (Debian's dbus-daemon) with the fake systemd/logind of
//! tests/support/fake_systemd.py on it; both are killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct FakeSystemd {
    pub dir: PathBuf,
    /// The bus address to give tinyvisor as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    calls: PathBuf,
    daemon: Child,
    service: Child,
}

impl FakeSystemd {
    /// Starts the bus and the fake; `units` are loaded (inactive) units, each optionally
    /// `name=partof1,partof2`.
    pub fn start(units: &[&str]) -> FakeSystemd {
        FakeSystemd::start_with_root(units, std::path::Path::new(""))
    }

    /// Like `start`, with transient services run under `root` (the test's host root).
    pub fn start_with_root(units: &[&str], root: &std::path::Path) -> FakeSystemd {
        let dir = std::env::temp_dir().join(super::unique("dbus"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("system_bus_socket");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dbus-daemon.log")).unwrap())
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon) must be installed");
        let address = format!("unix:path={}", socket.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let calls = dir.join("calls.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake_systemd.py");
        let service = Command::new("python3")
            .arg(script)
            .arg(&address)
            .arg(&calls)
            .args(units)
            .env("FAKE_SYSTEMD_ROOT", root)
            .stderr(std::fs::File::create(dir.join("fake.log")).unwrap())
            .spawn()
            .expect("python3 with dbus-next (pip install dbus-next) must be installed");
        let fake = FakeSystemd {
            dir,
            address,
            calls,
            daemon,
            service,
        };
        while !fake.raw_calls().iter().any(|c| c["member"] == "ready") {
            assert!(Instant::now() < deadline, "the fake systemd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        fake
    }

    fn raw_calls(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The calls received so far, as `{"member", "args"}`.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        self.raw_calls()
            .into_iter()
            .filter(|c| c["member"] != "ready")
            .collect()
    }

    /// The calls to one method.
    pub fn calls_to(&self, member: &str) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["member"] == member)
            .collect()
    }

    /// Waits up to `secs` for a call to `member`.
    pub fn wait_for(&self, member: &str, secs: u64) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(c) = self.calls().into_iter().find(|c| c["member"] == member) {
                return Some(c);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
