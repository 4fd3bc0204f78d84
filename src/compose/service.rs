//! A service as the planner sees it: identity, state and a normalised container config that
//! can be built both from the target (compose → config) and from the engine (inspect →
//! config), so the two compare equal exactly when no recreate is needed.

use super::composition::{Composition, Dependency, VolumeSpec};
use super::labels::{self, APP_ID, APP_UUID, SERVICE_ID, SERVICE_NAME, SUPERVISED};
use super::target::TargetService;
use crate::engine::types::{ContainerInspect, ImageInspect};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const LOCK_DIR: &str = "/tmp/balena-supervisor/services";
pub const SUPERVISOR_NETWORK: &str = "supervisor0";
pub const SUPERVISOR_GATEWAY: &str = "10.114.104.1";
const DEFAULT_SHM: i64 = 64 * 1024 * 1024;

/// Container status as reported and used by the planner (engine.md (k)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Status {
    Installing,
    Installed,
    Starting,
    Running,
    Stopping,
    Dead,
    /// Any other engine state (`exited`, `paused`, `restarting`, `removing`).
    Other(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Device {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub retries: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub link_local_ips: Vec<String>,
}

/// The container configuration, normalised on both sides.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub image: String,
    pub command: Vec<String>,
    pub entrypoint: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub cgroup_parent: String,
    pub devices: Vec<Device>,
    pub device_requests: Vec<Value>,
    pub dns: Vec<String>,
    pub dns_opt: Vec<String>,
    pub dns_search: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub group_add: Vec<String>,
    pub healthcheck: Healthcheck,
    pub network_mode: String,
    /// Engine network name → endpoint settings.
    pub networks: BTreeMap<String, Endpoint>,
    pub pid: String,
    pub pids_limit: i64,
    /// `"<port>/<proto>"` → sorted `(host_ip, host_port)` bindings.
    pub ports: BTreeMap<String, Vec<(String, String)>>,
    pub security_opt: Vec<String>,
    pub stop_grace_period: i64,
    pub stop_signal: String,
    pub storage_opt: BTreeMap<String, String>,
    pub sysctls: BTreeMap<String, String>,
    pub tmpfs: Vec<String>,
    pub ulimits: BTreeMap<String, (i64, i64)>,
    pub userns_mode: String,
    /// Binds (`source:target[:mode]`) and anonymous volumes (`/target`).
    pub volumes: Vec<String>,
    pub restart: String,
    pub cpu_shares: i64,
    pub cpu_quota: i64,
    pub nano_cpus: i64,
    pub cpuset: String,
    pub domainname: String,
    pub hostname: String,
    pub ipc: String,
    pub mac_address: String,
    pub mem_limit: i64,
    pub mem_reservation: i64,
    pub oom_kill_disable: bool,
    pub oom_score_adj: i64,
    pub privileged: bool,
    pub read_only: bool,
    pub shm_size: i64,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub init: Option<bool>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub app_id: i64,
    pub app_uuid: String,
    pub service_name: String,
    pub service_id: i64,
    pub image_id: i64,
    pub release_id: i64,
    pub commit: Option<String>,
    /// The image reference from the target (current side: what the container runs).
    pub image_name: String,
    pub container_id: Option<String>,
    pub created_at: Option<String>,
    pub status: Status,
    /// Engine error text of an exited container (for the userland-proxy restart rule).
    pub exit_error: String,
    /// The engine healthcheck's verdict of a current container (`starting`, `healthy`,
    /// `unhealthy`); `None` without a healthcheck.
    pub health: Option<String>,
    /// A current container that is not running: how its process last exited.
    pub exit_code: Option<i64>,
    /// How often the engine restarted a current container.
    pub restart_count: i64,
    pub depends_on: Vec<String>,
    /// Target side: what a dependency must reach before this service starts (names in
    /// `depends_on` without an entry wait for `service_started`).
    pub dependency_conditions: BTreeMap<String, Dependency>,
    pub config: ServiceConfig,
}

/// What the device knows that goes into every container (injected env, feature binds).
#[derive(Debug, Clone, Default)]
pub struct DeviceContext {
    pub uuid: String,
    pub device_type: String,
    pub device_arch: String,
    pub os_version: String,
    pub device_name: String,
    pub hostname: String,
    pub listen_port: u16,
    pub api_endpoint: String,
    pub device_api_key: String,
    pub docker_socket: String,
    pub board_rev: Option<String>,
    /// Host paths that exist (for kernel-modules/firmware feature binds).
    pub host_lib_modules: bool,
    pub host_lib_firmware: bool,
}

/// Where a target service sits: its app and release.
#[derive(Debug, Clone, Default)]
pub struct ServiceOrigin {
    pub app_id: i64,
    pub app_uuid: String,
    pub app_name: String,
    pub release_id: i64,
    pub commit: String,
    pub service_name: String,
    /// The scoped supervisor API key for this service, if it has the supervisor-api feature.
    pub api_key: Option<String>,
}

/// What the engine image says (defaults for command, env, labels, ...).
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    pub id: String,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub user: String,
    pub working_dir: String,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Value>,
}

impl ImageDefaults {
    pub fn from_inspect(i: &ImageInspect) -> ImageDefaults {
        ImageDefaults {
            id: i.id.clone(),
            cmd: i.config.cmd.clone().unwrap_or_default(),
            entrypoint: i.config.entrypoint.clone().unwrap_or_default(),
            env: env_map(&i.config.env),
            labels: i.config.labels.clone(),
            user: i.config.user.clone(),
            working_dir: i.config.working_dir.clone(),
            stop_signal: i.config.stop_signal.clone(),
            healthcheck: i.config.healthcheck.clone(),
        }
    }
}

fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .collect()
}

fn feature(labels: &BTreeMap<String, String>, name: &str) -> bool {
    labels::truthy(labels.get(&format!("{}{name}", labels::FEATURE_PREFIX)))
}

/// A restart policy name as the supervisor normalises it.
pub fn normalise_restart(r: Option<&str>) -> String {
    match r.map(|s| s.to_ascii_lowercase()) {
        Some(s)
            if matches!(
                s.as_str(),
                "no" | "always" | "on-failure" | "unless-stopped"
            ) =>
        {
            s
        }
        _ => "always".into(),
    }
}

fn is_selinux_label(opt: &str) -> bool {
    opt.starts_with("label=") || opt.starts_with("label:")
}

fn healthcheck_from_value(v: Option<&Value>) -> Healthcheck {
    let Some(v) = v.filter(|v| v.is_object()) else {
        return Healthcheck {
            test: vec!["NONE".into()],
            ..Default::default()
        };
    };
    let n = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let test: Vec<String> = v
        .get("Test")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Healthcheck {
        test: if test.is_empty() {
            vec!["NONE".into()]
        } else {
            test
        },
        interval: n("Interval"),
        timeout: n("Timeout"),
        start_period: n("StartPeriod"),
        retries: n("Retries"),
    }
}

fn parse_device(d: &str) -> Device {
    let parts: Vec<&str> = d.split(':').collect();
    let host = parts[0].to_string();
    Device {
        path_in_container: parts
            .get(1)
            .map(|s| s.to_string())
            .unwrap_or_else(|| host.clone()),
        cgroup_permissions: parts
            .get(2)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "rwm".into()),
        path_on_host: host,
    }
}

impl Service {
    /// Builds the target service: composition merged with injected env, labels, feature
    /// binds and image defaults (engine.md C.0, config.md §4–6).
    pub fn from_target(
        t: &TargetService,
        origin: &ServiceOrigin,
        device: &DeviceContext,
        image: Option<&ImageDefaults>,
    ) -> Service {
        let c: &Composition = &t.composition;
        let img = image.cloned().unwrap_or_default();
        let name = &origin.service_name;

        // Labels: image labels as defaults (normalised like the container's: an image built by
        // balena push carries io.resin.local.*), then composition, then target, then ours.
        let mut labels_map = labels::normalise_labels(&img.labels);
        labels_map.extend(labels::normalise_labels(&c.labels));
        labels_map.extend(labels::normalise_labels(&t.labels));
        labels_map.insert(SUPERVISED.into(), "true".into());
        labels_map.insert(APP_ID.into(), origin.app_id.to_string());
        labels_map.insert(APP_UUID.into(), origin.app_uuid.clone());
        labels_map.insert(SERVICE_ID.into(), t.id.to_string());
        labels_map.insert(SERVICE_NAME.into(), name.clone());

        // Network mode and networks.
        let uuid_prefixed = |n: &str| format!("{}_{n}", origin.app_uuid);
        let mut network_mode = match c.network_mode.as_deref() {
            Some(m) => m.to_string(),
            None => c
                .networks
                .first()
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| "default".into()),
        };
        let special = |m: &str| {
            matches!(m, "host" | "bridge" | "none")
                || m.starts_with("service:")
                || m.starts_with("container:")
        };
        let mut networks = BTreeMap::new();
        if !special(&network_mode) {
            network_mode = uuid_prefixed(&network_mode);
            for (n, a) in c.networks.iter() {
                if n == SUPERVISOR_NETWORK {
                    continue;
                }
                let mut aliases = vec![name.clone()];
                aliases.extend(a.aliases.iter().filter(|x| *x != name).cloned());
                networks.insert(
                    uuid_prefixed(n),
                    Endpoint {
                        aliases,
                        ipv4_address: a.ipv4_address.clone(),
                        ipv6_address: a.ipv6_address.clone(),
                        link_local_ips: a.link_local_ips.clone(),
                    },
                );
            }
            networks
                .entry(network_mode.clone())
                .or_insert_with(|| Endpoint {
                    aliases: vec![name.clone()],
                    ..Default::default()
                });
        }
        let host_network = network_mode == "host";
        let supervisor_api = feature(&labels_map, "supervisor-api");
        if supervisor_api && !host_network && !special(&network_mode) {
            networks.insert(SUPERVISOR_NETWORK.into(), Endpoint::default());
        }

        // Environment: image env < supervisor defaults < composition < target; then features.
        let mut env = img.env.clone();
        for prefix in ["BALENA", "RESIN"] {
            for (k, v) in [
                ("APP_ID", origin.app_id.to_string()),
                ("APP_UUID", origin.app_uuid.clone()),
                ("APP_NAME", origin.app_name.clone()),
                ("SERVICE_NAME", name.clone()),
                ("DEVICE_UUID", device.uuid.clone()),
                ("DEVICE_TYPE", device.device_type.clone()),
                ("DEVICE_ARCH", device.device_arch.clone()),
                ("HOST_OS_VERSION", device.os_version.clone()),
                ("APP_LOCK_PATH", "/tmp/balena/updates.lock".into()),
            ] {
                env.insert(format!("{prefix}_{k}"), v);
            }
            env.insert(prefix.into(), "1".into());
        }
        env.insert(
            "RESIN_SERVICE_KILL_ME_PATH".into(),
            "/tmp/balena/handover-complete".into(),
        );
        env.insert(
            "BALENA_SERVICE_HANDOVER_COMPLETE_PATH".into(),
            "/tmp/balena/handover-complete".into(),
        );
        env.insert("USER".into(), "root".into());
        env.extend(c.environment.clone());
        env.extend(t.environment.clone());
        env.retain(|k, _| !k.ends_with("_DEVICE_NAME_AT_INIT"));
        if supervisor_api {
            let host = if host_network {
                "127.0.0.1"
            } else {
                SUPERVISOR_GATEWAY
            };
            for prefix in ["BALENA", "RESIN"] {
                if let Some(key) = &origin.api_key {
                    env.insert(format!("{prefix}_SUPERVISOR_API_KEY"), key.clone());
                }
                env.insert(
                    format!("{prefix}_SUPERVISOR_PORT"),
                    device.listen_port.to_string(),
                );
                env.insert(format!("{prefix}_SUPERVISOR_HOST"), host.into());
                env.insert(
                    format!("{prefix}_SUPERVISOR_ADDRESS"),
                    format!("http://{host}:{}", device.listen_port),
                );
            }
        }
        if feature(&labels_map, "balena-api") {
            for prefix in ["BALENA", "RESIN"] {
                env.insert(format!("{prefix}_API_KEY"), device.device_api_key.clone());
                env.insert(format!("{prefix}_API_URL"), device.api_endpoint.clone());
            }
        }
        if feature(&labels_map, "host-os.board-rev") {
            if let Some(rev) = &device.board_rev {
                for prefix in ["BALENA", "RESIN"] {
                    env.insert(format!("{prefix}_HOST_OS_BOARD_REV"), rev.clone());
                }
            }
        }

        // Volumes: named volumes namespaced by app id, anonymous ones kept, binds dropped.
        let mut volumes = Vec::new();
        let mut tmpfs: Vec<String> = c.tmpfs.clone();
        for v in &c.volumes {
            match v {
                VolumeSpec::Named {
                    name: vol,
                    target,
                    mode,
                } => volumes.push(match mode {
                    Some(m) => format!("{}_{vol}:{target}:{m}", origin.app_id),
                    None => format!("{}_{vol}:{target}", origin.app_id),
                }),
                VolumeSpec::Anonymous { target } => volumes.push(target.clone()),
                VolumeSpec::Tmpfs { target } => tmpfs.push(target.clone()),
                VolumeSpec::Bind { .. } => {}
            }
        }
        let lock_dir = format!("{LOCK_DIR}/{}/{name}", origin.app_id);
        volumes.push(format!("{lock_dir}:/tmp/resin"));
        volumes.push(format!("{lock_dir}:/tmp/balena"));
        if feature(&labels_map, "balena-socket") {
            let sock = &device.docker_socket;
            volumes.push(format!("{sock}:/host/run/balena-engine.sock"));
            volumes.push(format!("{sock}:{sock}"));
            if sock != "/var/run/balena.sock" {
                volumes.push(format!("{sock}:/var/run/balena.sock"));
            }
            env.entry("DOCKER_HOST".into())
                .or_insert_with(|| "unix:///host/run/balena-engine.sock".into());
        }
        if feature(&labels_map, "dbus") {
            volumes.push("/run/dbus:/host/run/dbus".into());
        }
        if feature(&labels_map, "kernel-modules") && device.host_lib_modules {
            volumes.push("/lib/modules:/lib/modules".into());
        }
        if feature(&labels_map, "firmware") && device.host_lib_firmware {
            volumes.push("/lib/firmware:/lib/firmware".into());
        }
        if feature(&labels_map, "sysfs") {
            volumes.push("/sys:/sys".into());
        }
        if feature(&labels_map, "procfs") {
            volumes.push("/proc:/proc".into());
        }
        if feature(&labels_map, "journal-logs") {
            volumes.push("/var/log/journal:/var/log/journal:ro".into());
            volumes.push("/run/log/journal:/run/log/journal:ro".into());
            volumes.push("/etc/machine-id:/etc/machine-id:ro".into());
        }
        if feature(&labels_map, "extra-firmware") {
            volumes.push("extra-firmware:/extra-firmware".into());
        }
        let mut device_requests = Vec::new();
        if feature(&labels_map, "gpu") {
            device_requests.push(json!({"Driver": "", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}));
        }

        // Ports.
        let mut ports: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for p in &c.ports {
            for (internal, external) in p.pairs() {
                ports
                    .entry(format!("{internal}/{}", p.protocol))
                    .or_default()
                    .push((p.host_ip.clone(), external.to_string()));
            }
        }
        for b in ports.values_mut() {
            b.sort();
        }

        // Healthcheck: image's, overridden field by field by the composition's.
        let mut healthcheck = healthcheck_from_value(img.healthcheck.as_ref());
        if let Some(h) = &c.healthcheck {
            if !h.test.is_empty() {
                healthcheck.test = h.test.clone();
            }
            healthcheck.interval = h.interval.unwrap_or(healthcheck.interval);
            healthcheck.timeout = h.timeout.unwrap_or(healthcheck.timeout);
            healthcheck.start_period = h.start_period.unwrap_or(healthcheck.start_period);
            healthcheck.retries = h.retries.unwrap_or(healthcheck.retries);
        }

        let mut depends_on = c.depends_on.clone();
        if let Some(x) = network_mode.strip_prefix("service:") {
            if !depends_on.iter().any(|d| d == x) {
                depends_on.push(x.to_string());
            }
        }
        let hostname = match &c.hostname {
            Some(h) => h.clone(),
            None if host_network => device.hostname.clone(),
            None => String::new(),
        };
        let running = t.running && c.running.unwrap_or(true);
        let config = ServiceConfig {
            image: if img.id.is_empty() {
                t.image.clone()
            } else {
                img.id.clone()
            },
            command: c.command.clone().unwrap_or(img.cmd.clone()),
            entrypoint: c.entrypoint.clone().unwrap_or(img.entrypoint.clone()),
            environment: env,
            labels: labels_map,
            cap_add: c.cap_add.clone(),
            cap_drop: c.cap_drop.clone(),
            cgroup_parent: c.cgroup_parent.clone().unwrap_or_default(),
            devices: c.devices.iter().map(|d| parse_device(d)).collect(),
            device_requests,
            dns: c.dns.clone(),
            dns_opt: c.dns_opt.clone(),
            dns_search: c.dns_search.clone(),
            extra_hosts: c
                .extra_hosts
                .iter()
                .map(|h| h.replacen('=', ":", 1))
                .collect(),
            group_add: c.group_add.clone(),
            healthcheck,
            network_mode,
            networks,
            pid: c.pid.clone().unwrap_or_default(),
            pids_limit: c.pids_limit.unwrap_or(0),
            ports,
            security_opt: c
                .security_opt
                .iter()
                .filter(|o| !is_selinux_label(o))
                .cloned()
                .collect(),
            stop_grace_period: c.stop_grace_period.unwrap_or(10),
            stop_signal: c
                .stop_signal
                .clone()
                .or(img.stop_signal.clone())
                .unwrap_or_else(|| "SIGTERM".into()),
            storage_opt: c.storage_opt.clone(),
            sysctls: c.sysctls.clone(),
            tmpfs,
            ulimits: c.ulimits.clone(),
            userns_mode: c.userns_mode.clone().unwrap_or_default(),
            volumes,
            restart: normalise_restart(c.restart.as_deref()),
            cpu_shares: c.cpu_shares.unwrap_or(0),
            cpu_quota: c.cpu_quota.unwrap_or(0),
            nano_cpus: c.cpus.map(|f| (f * 1e9) as i64).unwrap_or(0),
            cpuset: c.cpuset.clone().unwrap_or_default(),
            domainname: c.domainname.clone().unwrap_or_default(),
            hostname,
            ipc: c.ipc.clone().unwrap_or_else(|| "shareable".into()),
            mac_address: c.mac_address.clone().unwrap_or_default(),
            mem_limit: c.mem_limit.unwrap_or(0),
            mem_reservation: c.mem_reservation.unwrap_or(0),
            oom_kill_disable: c.oom_kill_disable.unwrap_or(false),
            oom_score_adj: c.oom_score_adj.unwrap_or(0),
            privileged: c.privileged.unwrap_or(false),
            read_only: c.read_only.unwrap_or(false),
            shm_size: c.shm_size.unwrap_or(DEFAULT_SHM),
            user: c.user.clone().unwrap_or(img.user.clone()),
            working_dir: trim_dir(c.working_dir.as_deref().unwrap_or(&img.working_dir)),
            tty: c.tty.unwrap_or(true),
            init: c.init,
            running,
        };
        Service {
            app_id: origin.app_id,
            app_uuid: origin.app_uuid.clone(),
            service_name: name.clone(),
            service_id: t.id,
            image_id: t.image_id,
            release_id: origin.release_id,
            commit: Some(origin.commit.clone()),
            image_name: t.image.clone(),
            container_id: None,
            created_at: None,
            status: Status::Installing,
            exit_error: String::new(),
            health: None,
            exit_code: None,
            restart_count: 0,
            depends_on,
            dependency_conditions: c.dependency_conditions.clone(),
            config,
        }
    }

    /// Reads a supervised container back into a service. None for containers that are not
    /// ours or whose bookkeeping labels/name cannot be parsed.
    pub fn from_inspect(ci: &ContainerInspect) -> Option<Service> {
        let labels_map = labels::normalise_labels(&ci.config.labels);
        if !labels::is_supervised(&labels_map) {
            return None;
        }
        let app_id: i64 = labels_map.get(APP_ID)?.parse().ok()?;
        let service_id: i64 = labels_map.get(SERVICE_ID)?.parse().ok()?;
        let (image_id, release_id, commit) = labels::parse_container_name(&ci.name)?;
        let service_name = labels_map.get(SERVICE_NAME).cloned()?;
        let app_uuid = labels_map.get(APP_UUID).cloned().unwrap_or_default();
        let hc = &ci.host_config;
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let i = |v: &Value, k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
        let b = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let list = |v: &Value, k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let map = |v: &Value, k: &str| -> BTreeMap<String, String> {
            v.get(k)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };

        let mut env = env_map(&ci.config.env);
        env.retain(|k, _| !k.ends_with("_DEVICE_NAME_AT_INIT"));

        let mut volumes = list(hc, "Binds");
        if let Some(anon) = ci.config.volumes.as_ref().and_then(Value::as_object) {
            volumes.extend(anon.keys().cloned());
        }
        let mut networks = BTreeMap::new();
        if let Some(nets) = ci
            .network_settings
            .get("Networks")
            .and_then(Value::as_object)
        {
            for (name, ep) in nets {
                let ipam = ep.get("IPAMConfig").cloned().unwrap_or(Value::Null);
                let opt = |k: &str| {
                    ipam.get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                networks.insert(
                    name.clone(),
                    Endpoint {
                        aliases: list(ep, "Aliases"),
                        ipv4_address: opt("IPv4Address"),
                        ipv6_address: opt("IPv6Address"),
                        link_local_ips: list(&ipam, "LinkLocalIPs"),
                    },
                );
            }
        }
        let mut ports: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        if let Some(pb) = hc.get("PortBindings").and_then(Value::as_object) {
            for (port, bindings) in pb {
                let mut v: Vec<(String, String)> = bindings
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| (s(x, "HostIp"), s(x, "HostPort")))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                ports.insert(port.clone(), v);
            }
        }
        let devices = hc
            .get("Devices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|d| Device {
                        path_on_host: s(d, "PathOnHost"),
                        path_in_container: s(d, "PathInContainer"),
                        cgroup_permissions: s(d, "CgroupPermissions"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ulimits = hc
            .get("Ulimits")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|u| (s(u, "Name"), (i(u, "Soft"), i(u, "Hard"))))
                    .collect()
            })
            .unwrap_or_default();
        let tmpfs = hc
            .get("Tmpfs")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let restart = match hc.pointer("/RestartPolicy/Name").and_then(Value::as_str) {
            // The engine's "" means no restart, as "no" does.
            Some("") => "no".to_string(),
            Some(r) => normalise_restart(Some(r)),
            None => "always".to_string(),
        };
        let short_id: String = ci.id.chars().take(12).collect();
        let hostname = if ci.config.hostname == short_id {
            String::new()
        } else {
            ci.config.hostname.clone()
        };
        let status = match ci.state.status.as_str() {
            "running" => Status::Running,
            "created" => Status::Installed,
            "dead" => Status::Dead,
            other => Status::Other(other.to_string()),
        };
        let stop_timeout = ci.config.stop_timeout.unwrap_or(10);
        let config = ServiceConfig {
            image: ci.image.clone(),
            command: ci.config.cmd.clone().unwrap_or_default(),
            entrypoint: ci.config.entrypoint.clone().unwrap_or_default(),
            environment: env,
            labels: labels_map,
            cap_add: list(hc, "CapAdd"),
            cap_drop: list(hc, "CapDrop"),
            cgroup_parent: s(hc, "CgroupParent"),
            devices,
            device_requests: hc
                .get("DeviceRequests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            dns: list(hc, "Dns"),
            dns_opt: list(hc, "DnsOptions"),
            dns_search: list(hc, "DnsSearch"),
            extra_hosts: list(hc, "ExtraHosts"),
            group_add: list(hc, "GroupAdd"),
            healthcheck: healthcheck_from_value(ci.config.healthcheck.as_ref()),
            network_mode: s(hc, "NetworkMode"),
            networks,
            pid: s(hc, "PidMode"),
            pids_limit: i(hc, "PidsLimit"),
            ports,
            security_opt: list(hc, "SecurityOpt")
                .into_iter()
                .filter(|o| !is_selinux_label(o))
                .collect(),
            stop_grace_period: stop_timeout,
            stop_signal: ci
                .config
                .stop_signal
                .clone()
                .unwrap_or_else(|| "SIGTERM".into()),
            storage_opt: map(hc, "StorageOpt"),
            sysctls: map(hc, "Sysctls"),
            tmpfs,
            ulimits,
            userns_mode: s(hc, "UsernsMode"),
            volumes,
            restart,
            cpu_shares: i(hc, "CpuShares"),
            cpu_quota: i(hc, "CpuQuota"),
            nano_cpus: i(hc, "NanoCpus"),
            cpuset: s(hc, "CpusetCpus"),
            domainname: ci.config.domainname.clone(),
            hostname,
            ipc: s(hc, "IpcMode"),
            mac_address: ci.config.mac_address.clone(),
            mem_limit: i(hc, "Memory"),
            mem_reservation: i(hc, "MemoryReservation"),
            oom_kill_disable: b(hc, "OomKillDisable"),
            oom_score_adj: i(hc, "OomScoreAdj"),
            privileged: b(hc, "Privileged"),
            read_only: b(hc, "ReadonlyRootfs"),
            shm_size: match i(hc, "ShmSize") {
                0 => DEFAULT_SHM,
                n => n,
            },
            user: ci.config.user.clone(),
            working_dir: trim_dir(&ci.config.working_dir),
            tty: ci.config.tty,
            init: hc.get("Init").and_then(Value::as_bool),
            running: ci.state.running,
        };
        Some(Service {
            app_id,
            app_uuid,
            service_name,
            service_id,
            image_id,
            release_id,
            commit,
            image_name: ci.config.image.clone(),
            container_id: Some(ci.id.clone()),
            created_at: Some(ci.created.clone()),
            exit_code: (status != Status::Running).then_some(ci.state.exit_code),
            restart_count: ci.restart_count,
            status,
            exit_error: ci.state.error.clone(),
            health: ci.state.health_status().map(String::from),
            depends_on: vec![],
            dependency_conditions: BTreeMap::new(),
            config,
        })
    }

    pub fn container_name(&self) -> String {
        labels::container_name(
            &self.service_name,
            self.image_id,
            self.release_id,
            self.commit.as_deref().unwrap_or_default(),
        )
    }

    pub fn label(&self, key: &str) -> Option<&String> {
        self.config.labels.get(key)
    }

    /// Named app volumes (compose names) this service mounts.
    pub fn named_volumes(&self) -> BTreeSet<String> {
        let prefix = format!("{}_", self.app_id);
        self.config
            .volumes
            .iter()
            .filter_map(|v| v.split(':').next())
            .filter_map(|src| src.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    }

    /// The container create body. `container_ids` resolves `service:<x>` network modes;
    /// `device_name` becomes `*_DEVICE_NAME_AT_INIT`. Extra networks are connected after
    /// create, so only the main network is in `NetworkingConfig`.
    pub fn create_body(
        &self,
        device_name: &str,
        container_ids: &BTreeMap<String, String>,
    ) -> Value {
        let c = &self.config;
        let mut env: Vec<String> = vec![
            format!("RESIN_DEVICE_NAME_AT_INIT={device_name}"),
            format!("BALENA_DEVICE_NAME_AT_INIT={device_name}"),
        ];
        env.extend(c.environment.iter().map(|(k, v)| format!("{k}={v}")));
        let network_mode = match c.network_mode.strip_prefix("service:") {
            Some(x) => format!(
                "container:{}",
                container_ids.get(x).cloned().unwrap_or_default()
            ),
            None => c.network_mode.clone(),
        };
        let mut endpoints = serde_json::Map::new();
        if let Some(ep) = c.networks.get(&c.network_mode) {
            endpoints.insert(c.network_mode.clone(), endpoint_json(ep));
        }
        let (binds, anonymous): (Vec<&String>, Vec<&String>) =
            c.volumes.iter().partition(|v| v.contains(':'));
        let anon: serde_json::Map<String, Value> = anonymous
            .iter()
            .map(|v| (v.to_string(), json!({})))
            .collect();
        let exposed: serde_json::Map<String, Value> =
            c.ports.keys().map(|p| (p.clone(), json!({}))).collect();
        let port_bindings: serde_json::Map<String, Value> = c
            .ports
            .iter()
            .map(|(p, b)| {
                (
                    p.clone(),
                    Value::Array(
                        b.iter()
                            .map(|(ip, port)| json!({"HostIp": ip, "HostPort": port}))
                            .collect(),
                    ),
                )
            })
            .collect();
        let tmpfs: serde_json::Map<String, Value> =
            c.tmpfs.iter().map(|t| (t.clone(), json!(""))).collect();
        let ulimits: Vec<Value> = c
            .ulimits
            .iter()
            .map(|(n, (soft, hard))| json!({"Name": n, "Soft": soft, "Hard": hard}))
            .collect();
        let devices: Vec<Value> = c
            .devices
            .iter()
            .map(|d| json!({"PathOnHost": d.path_on_host, "PathInContainer": d.path_in_container, "CgroupPermissions": d.cgroup_permissions}))
            .collect();
        let h = &c.healthcheck;
        let mut healthcheck = json!({ "Test": h.test });
        for (k, v) in [
            ("Interval", h.interval),
            ("Timeout", h.timeout),
            ("StartPeriod", h.start_period),
            ("Retries", h.retries),
        ] {
            if v != 0 {
                healthcheck[k] = json!(v);
            }
        }
        let mut host_config = json!({
            "CapAdd": c.cap_add, "CapDrop": c.cap_drop, "Binds": binds, "Mounts": [],
            "CgroupParent": c.cgroup_parent, "Devices": devices, "DeviceRequests": c.device_requests,
            "Dns": c.dns, "DnsOptions": c.dns_opt, "DnsSearch": c.dns_search,
            "PortBindings": port_bindings, "ExtraHosts": c.extra_hosts, "GroupAdd": c.group_add,
            "NetworkMode": network_mode, "PidMode": c.pid, "PidsLimit": c.pids_limit,
            "SecurityOpt": c.security_opt, "Sysctls": c.sysctls, "Ulimits": ulimits,
            "RestartPolicy": {"Name": c.restart, "MaximumRetryCount": 0},
            "CpuShares": c.cpu_shares, "CpuQuota": c.cpu_quota, "CpusetCpus": c.cpuset,
            "Memory": c.mem_limit, "MemoryReservation": c.mem_reservation,
            "OomKillDisable": c.oom_kill_disable, "OomScoreAdj": c.oom_score_adj,
            "Privileged": c.privileged, "ReadonlyRootfs": c.read_only, "ShmSize": c.shm_size,
            "Tmpfs": tmpfs, "UsernsMode": c.userns_mode, "NanoCpus": c.nano_cpus, "IpcMode": c.ipc,
        });
        if !c.storage_opt.is_empty() {
            host_config["StorageOpt"] = json!(c.storage_opt);
        }
        if let Some(init) = c.init {
            host_config["Init"] = json!(init);
        }
        json!({
            "Tty": c.tty, "Cmd": c.command, "Volumes": anon, "Env": env, "ExposedPorts": exposed,
            "Image": c.image, "Labels": c.labels,
            "NetworkingConfig": {"EndpointsConfig": endpoints},
            "StopSignal": c.stop_signal, "Domainname": c.domainname, "Hostname": c.hostname,
            "MacAddress": c.mac_address, "User": c.user, "WorkingDir": c.working_dir,
            "HostConfig": host_config, "Healthcheck": healthcheck, "StopTimeout": c.stop_grace_period,
            // Always sent, as v19 does (the image's when the service names none): the engine
            // then stores `[]` rather than null, as it does for v19's containers.
            "Entrypoint": c.entrypoint,
        })
    }

    /// Networks to connect after create (all but the main one).
    pub fn extra_networks(&self) -> Vec<(String, Value)> {
        self.config
            .networks
            .iter()
            .filter(|(n, _)| **n != self.config.network_mode)
            .map(|(n, ep)| (n.clone(), endpoint_json(ep)))
            .collect()
    }
}

fn endpoint_json(ep: &Endpoint) -> Value {
    let mut ipam = serde_json::Map::new();
    if let Some(a) = &ep.ipv4_address {
        ipam.insert("IPv4Address".into(), json!(a));
    }
    if let Some(a) = &ep.ipv6_address {
        ipam.insert("IPv6Address".into(), json!(a));
    }
    if !ep.link_local_ips.is_empty() {
        ipam.insert("LinkLocalIPs".into(), json!(ep.link_local_ips));
    }
    let mut v = json!({ "IPAMConfig": ipam });
    if !ep.aliases.is_empty() {
        v["Aliases"] = json!(ep.aliases);
    }
    v
}

fn trim_dir(d: &str) -> String {
    if d.len() > 1 {
        d.trim_end_matches('/').to_string()
    } else {
        d.to_string()
    }
}

fn as_set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
    v.iter().cloned().collect()
}

/// The same elements, in any order (lists in the same order, the common case, need no sets).
fn same_set<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    a == b || as_set(a) == as_set(b)
}

/// The config fields in which `current` differs from `target` (empty = same container
/// config), per engine.md C.4.5. `container_ids` maps service names to container ids for
/// `service:<x>` network modes.
pub fn config_differences(
    current: &ServiceConfig,
    target: &ServiceConfig,
    container_ids: &BTreeMap<String, String>,
) -> Vec<&'static str> {
    let mut d = Vec::new();
    macro_rules! eq {
        ($($f:ident),*) => { $( if current.$f != target.$f { d.push(stringify!($f)); } )* };
    }
    macro_rules! set_eq {
        ($($f:ident),*) => { $( if !same_set(&current.$f, &target.$f) { d.push(stringify!($f)); } )* };
    }
    eq!(
        image,
        command,
        entrypoint,
        environment,
        labels,
        cgroup_parent,
        device_requests,
        dns,
        dns_search,
        healthcheck,
        pid,
        pids_limit,
        ports,
        stop_grace_period,
        stop_signal,
        storage_opt,
        sysctls,
        ulimits,
        userns_mode,
        restart,
        cpu_shares,
        cpu_quota,
        cpuset,
        domainname,
        ipc,
        mac_address,
        mem_limit,
        mem_reservation,
        oom_kill_disable,
        oom_score_adj,
        privileged,
        read_only,
        shm_size,
        user,
        working_dir,
        tty
    );
    set_eq!(
        volumes,
        devices,
        cap_add,
        cap_drop,
        dns_opt,
        tmpfs,
        extra_hosts,
        group_add,
        security_opt
    );
    if target.init.is_some() && current.init != target.init {
        d.push("init");
    }
    // Networks: every target network present; target aliases a subset; addresses equal.
    let networks_ok = target.networks.iter().all(|(name, t)| {
        current.networks.get(name).is_some_and(|c| {
            t.aliases.iter().all(|a| c.aliases.contains(a))
                && (t.ipv4_address.is_none() || t.ipv4_address == c.ipv4_address)
                && (t.ipv6_address.is_none() || t.ipv6_address == c.ipv6_address)
                && (t.link_local_ips.is_empty() || same_set(&t.link_local_ips, &c.link_local_ips))
        })
    });
    if !networks_ok {
        d.push("networks");
    }
    let mode_equal = match target.network_mode.strip_prefix("service:") {
        Some(x) => container_ids
            .get(x)
            .is_some_and(|id| current.network_mode == format!("container:{id}")),
        None => current.network_mode == target.network_mode,
    };
    if !mode_equal {
        d.push("network_mode");
    }
    if !target.network_mode.starts_with("service:") && current.hostname != target.hostname {
        d.push("hostname");
    }
    d
}

#[cfg(test)]
mod tests;
