//! The cloud link (docs/contract/cloud-api.md): provisioning, target-state polling, current-state
//! reports. It never touches the engine: targets go to the state engine over its channel, and
//! reports are built from the status the state engine publishes.

pub mod log_stream;
pub mod poll;
pub mod provision;
pub mod report;
pub mod tags;

use crate::balena_api::{client, device_client, os_of};
use crate::config::Settings;
use crate::protocol::{Command, Status};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Stack of each cloud thread; pages are only committed when touched.
const CLOUD_STACK: usize = 1024 * 1024;

/// Requests to the poll thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRequest {
    /// Fetch now (`/v1/update`); `force` overrides update locks for the apply that follows.
    Now {
        force: bool,
    },
    Shutdown,
}

/// What the cloud threads share with the API and with each other.
#[derive(Debug)]
pub struct CloudShared {
    provisioned: AtomicBool,
    stopping: AtomicBool,
    /// The last successful target fetch (200 or 304); starts at process start (v19's grace).
    last_fetch: Mutex<Instant>,
}

impl Default for CloudShared {
    fn default() -> Self {
        CloudShared {
            provisioned: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_fetch: Mutex::new(Instant::now()),
        }
    }
}

impl CloudShared {
    pub fn provisioned(&self) -> bool {
        self.provisioned.load(Ordering::Acquire)
    }

    pub fn set_provisioned(&self) {
        self.provisioned.store(true, Ordering::Release);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn fetched(&self) {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn since_last_fetch(&self) -> Duration {
        self.last_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// `PATCH <path>` with `{"<uuid>": body}` as the device (its API key): state reports and tags.
pub fn patch_as_device(
    cloud: &client::Cloud,
    settings: &Settings,
    path: &str,
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), client::CloudError> {
    let cfg = &settings.config_json;
    let uuid = cfg.get_str("uuid").unwrap_or_default();
    let key = cfg.get_str("deviceApiKey").unwrap_or_default();
    let doc = serde_json::json!({ uuid: body });
    let reply = cloud.call("PATCH", path, client::Auth::Bearer(&key), &[], Some(&doc))?;
    if reply.ok() {
        Ok(())
    } else {
        Err(reply.error())
    }
}

/// The running cloud threads.
pub struct CloudLink {
    pub shared: Arc<CloudShared>,
    pub poll: Sender<PollRequest>,
    report_wake: Sender<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CloudLink {
    /// Starts the poll and report threads of a managed device. `changes` is told about every
    /// status the state engine publishes.
    pub fn start(
        settings: Arc<Settings>,
        state_engine: Sender<Command>,
        status: Arc<Mutex<Status>>,
        changes: (Sender<()>, Receiver<()>),
        logs: Arc<crate::logs::LogBus>,
    ) -> std::io::Result<CloudLink> {
        let (os_version, os_variant) = os_of(&settings);
        let cloud = device_client(&settings);
        let facts = provision::RegisterFacts {
            device_type: settings.device_type.slug.clone(),
            os_version: os_version.clone(),
            os_variant: os_variant.clone(),
            mac_address: crate::host::mac_addresses(&settings.paths.mac_address_path),
        };
        let shared = Arc::new(CloudShared::default());
        let (poll_tx, poll_rx) = crossbeam_channel::bounded(1);
        let poller = poll::Poller::new(
            cloud.clone(),
            Arc::clone(&settings),
            state_engine,
            Arc::clone(&shared),
            facts,
            settings.paths.database_path.clone(),
            Arc::clone(&status),
        );
        let shipper = log_stream::Shipper {
            cloud: cloud.clone(),
            settings: Arc::clone(&settings),
            bus: logs,
            shared: Arc::clone(&shared),
        };
        let reporter = report::Reporter {
            cloud,
            cache_path: report::Reporter::cache_path(&settings),
            settings,
            status,
            shared: Arc::clone(&shared),
            os_version,
            os_variant,
        };
        // TLS handshakes and the deflate compressor (miniz_oxide keeps large tables on the
        // stack in unoptimised builds) need more than our usual 256 KiB.
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .stack_size(CLOUD_STACK)
                .spawn(f)
        };
        let (report_wake, report_rx) = changes;
        let threads = vec![
            spawn("cloud-poll", Box::new(move || poller.run(poll_rx)))?,
            spawn("cloud-report", Box::new(move || reporter.run(report_rx)))?,
            spawn("cloud-logs", Box::new(move || shipper.run()))?,
        ];
        Ok(CloudLink {
            shared,
            poll: poll_tx,
            report_wake,
            threads,
        })
    }

    /// Asks both threads to stop. They are not waited for: a call in flight may take up to
    /// the request timeout, and nothing they do needs finishing (the target is stored by the
    /// state engine, the report cache is written atomically).
    pub fn stop(self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self
            .poll
            .send_timeout(PollRequest::Shutdown, Duration::from_millis(100));
        let _ = self.report_wake.try_send(());
        drop(self.threads);
    }
}
