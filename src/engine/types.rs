//! The subset of the Docker Engine API (1.41) objects tinyvisor reads and writes.
//! Unknown fields are ignored; fields whose shape we pass through untouched stay `Value`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Version {
    /// `{"Name": "balenaEngine"}` on balenaOS; Docker's says "Docker Engine - Community" or
    /// nothing.
    pub platform: Platform,
    pub version: String,
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    pub os: String,
    pub arch: String,
    pub kernel_version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Platform {
    pub name: String,
}

impl Version {
    /// balenaEngine restarts a container whose healthcheck fails; Docker does not.
    pub fn is_balena_engine(&self) -> bool {
        self.platform.name.to_ascii_lowercase().contains("balena")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub containers: u64,
    pub containers_running: u64,
    pub images: u64,
    pub driver: String,
    pub operating_system: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    pub architecture: String,
    #[serde(rename = "NCPU")]
    pub ncpu: u64,
    pub mem_total: u64,
    pub server_version: String,
    pub docker_root_dir: String,
    pub kernel_version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub created: i64,
    pub state: String,
    pub status: String,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub health: Option<Value>,
}

impl ContainerState {
    /// The healthcheck's verdict (`starting`, `healthy`, `unhealthy`); `None` for a container
    /// without a healthcheck.
    pub fn health_status(&self) -> Option<&str> {
        self.health
            .as_ref()
            .and_then(|h| h.get("Status"))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty() && *s != "none")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    pub mac_address: String,
    pub stop_timeout: Option<i64>,
    pub user: String,
    #[serde(deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub image: String,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
    pub working_dir: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub stop_signal: Option<String>,
    pub exposed_ports: Option<Value>,
    pub volumes: Option<Value>,
    pub healthcheck: Option<Value>,
}

/// `GET /containers/{id}/json`: what the compose model reads back into a service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: String,
    pub name: String,
    pub created: String,
    pub image: String,
    pub restart_count: i64,
    pub state: ContainerState,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub network_settings: NetworkSettings,
    #[serde(deserialize_with = "null_as_default")]
    pub mounts: Vec<Mount>,
}

/// One of a container's mounts; `name` is the volume's (empty for binds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
}

/// A container's `HostConfig` as the engine answers it. Every field may be null or missing
/// (engines differ by version): both read as the type's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub binds: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub cap_add: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub cap_drop: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub cgroup_parent: String,
    #[serde(deserialize_with = "null_as_default")]
    pub devices: Vec<DeviceMapping>,
    /// Passed through as the create body sends them.
    #[serde(deserialize_with = "null_as_default")]
    pub device_requests: Vec<Value>,
    #[serde(deserialize_with = "null_as_default")]
    pub dns: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub dns_options: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub dns_search: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub extra_hosts: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub group_add: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub network_mode: String,
    #[serde(deserialize_with = "null_as_default")]
    pub pid_mode: String,
    #[serde(deserialize_with = "null_as_default")]
    pub pids_limit: i64,
    /// Bindings per `port/protocol`; a port may map to null.
    #[serde(deserialize_with = "null_as_default")]
    pub port_bindings: BTreeMap<String, Option<Vec<PortBinding>>>,
    #[serde(deserialize_with = "null_as_default")]
    pub security_opt: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub storage_opt: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub sysctls: BTreeMap<String, String>,
    /// Mount point → options.
    #[serde(deserialize_with = "null_as_default")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub ulimits: Vec<Ulimit>,
    #[serde(deserialize_with = "null_as_default")]
    pub userns_mode: String,
    /// `None` when the engine reports none (v19 then counts it as `always`).
    pub restart_policy: Option<RestartPolicy>,
    #[serde(deserialize_with = "null_as_default")]
    pub cpu_shares: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub cpu_quota: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub nano_cpus: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub cpuset_cpus: String,
    #[serde(deserialize_with = "null_as_default")]
    pub ipc_mode: String,
    #[serde(deserialize_with = "null_as_default")]
    pub memory: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub memory_reservation: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub oom_kill_disable: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub oom_score_adj: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub privileged: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub readonly_rootfs: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub shm_size: i64,
    pub init: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    #[serde(deserialize_with = "null_as_default")]
    pub host_ip: String,
    #[serde(deserialize_with = "null_as_default")]
    pub host_port: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    pub name: Option<String>,
}

/// A container's `NetworkSettings`: its endpoints by network name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    #[serde(deserialize_with = "null_as_default")]
    pub networks: BTreeMap<String, EndpointSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    #[serde(deserialize_with = "null_as_default")]
    pub aliases: Vec<String>,
    #[serde(rename = "IPAMConfig", deserialize_with = "null_as_default")]
    pub ipam_config: EndpointIpam,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EndpointIpam {
    #[serde(rename = "IPv4Address", deserialize_with = "null_as_default")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address", deserialize_with = "null_as_default")]
    pub ipv6_address: String,
    #[serde(rename = "LinkLocalIPs", deserialize_with = "null_as_default")]
    pub link_local_ips: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateResponse {
    pub id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WaitResponse {
    pub status_code: i64,
    pub error: Option<WaitError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WaitError {
    pub message: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub repo_tags: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub repo_digests: Vec<String>,
    pub created: i64,
    pub size: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub user: String,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
    pub exposed_ports: Option<Value>,
    pub volumes: Option<Value>,
    pub healthcheck: Option<Value>,
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageInspect {
    pub id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub repo_tags: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub repo_digests: Vec<String>,
    pub created: String,
    pub architecture: String,
    pub os: String,
    pub size: i64,
    pub config: ImageConfig,
}

/// One entry of `DELETE /images/{name}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageDeleteItem {
    pub untagged: Option<String>,
    pub deleted: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub created_at: String,
    pub scope: String,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
    #[serde(deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct VolumeList {
    #[serde(deserialize_with = "null_as_default")]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeCreate {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auxiliary_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipam {
    pub driver: String,
    #[serde(deserialize_with = "null_as_default")]
    pub config: Vec<IpamConfig>,
    #[serde(deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    pub config_only: bool,
    #[serde(deserialize_with = "null_as_default")]
    pub containers: BTreeMap<String, Value>,
    #[serde(deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCreate {
    pub name: String,
    pub check_duplicate: bool,
    pub driver: String,
    pub internal: bool,
    pub attachable: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub options: BTreeMap<String, String>,
    pub labels: Labels,
    pub config_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct NetworkCreateResponse {
    pub id: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct EventActor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes", deserialize_with = "null_as_default")]
    pub attributes: BTreeMap<String, String>,
}

/// One object of the `/events` stream.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProgressDetail {
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// One line of `POST /images/create` output.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PullProgress {
    pub status: String,
    pub id: Option<String>,
    pub progress: Option<String>,
    #[serde(rename = "progressDetail")]
    pub progress_detail: Option<ProgressDetail>,
    pub error: Option<String>,
}

/// One line of `POST /images/load` output.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoadProgress {
    pub stream: String,
    pub error: Option<String>,
}

/// Engines send `null` for empty lists and maps; treat it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
