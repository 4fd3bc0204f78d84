//! A service as the planner sees it: identity, state and a normalised container config that
//! can be built both from the target (compose → config) and from the engine (inspect →
//! config), so the two compare equal exactly when no recreate is needed.

use super::composition::Dependency;
use super::labels;
use crate::engine::types::ImageInspect;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const LOCK_DIR: &str = "/tmp/balena-supervisor/services";
pub const SUPERVISOR_NETWORK: &str = "supervisor0";
pub const SUPERVISOR_GATEWAY: &str = "10.114.104.1";
const DEFAULT_SHM: i64 = 64 * 1024 * 1024;

/// Container status as reported and used by the planner (docs/contract/engine.md (k)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServiceStatus {
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
    pub status: ServiceStatus,
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
/// config), per docs/contract/engine.md C.4.5. `container_ids` maps service names to container ids
/// for `service:<x>` network modes.
pub fn config_differences<K: std::borrow::Borrow<str> + Ord, V: AsRef<str>>(
    current: &ServiceConfig,
    target: &ServiceConfig,
    container_ids: &BTreeMap<K, V>,
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
            .is_some_and(|id| current.network_mode == format!("container:{}", id.as_ref())),
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

mod from_inspect;
mod from_target;
#[cfg(test)]
mod tests;
