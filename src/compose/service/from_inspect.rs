//! A supervised container read back into a [`Service`] (v19's `Service.fromDockerContainer`),
//! so the planner compares like with like: what the target builds against what runs.

use super::{
    env_map, healthcheck_from_value, is_selinux_label, normalise_restart, trim_dir, Device,
    Endpoint, Service, ServiceConfig, ServiceStatus, DEFAULT_SHM,
};
use crate::compose::labels::{self, APP_ID, APP_UUID, SERVICE_ID, SERVICE_NAME};
use crate::engine::types::{ContainerInspect, EndpointSettings, HostConfig};
use std::collections::BTreeMap;

impl Service {
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
        let status = match ci.state.status.as_str() {
            "running" => ServiceStatus::Running,
            "created" => ServiceStatus::Installed,
            "dead" => ServiceStatus::Dead,
            other => ServiceStatus::Other(other.to_string()),
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
            exit_code: (status != ServiceStatus::Running).then_some(ci.state.exit_code),
            restart_count: ci.restart_count,
            status,
            exit_error: ci.state.error.clone(),
            health: ci.state.health_status().map(String::from),
            depends_on: vec![],
            dependency_conditions: BTreeMap::new(),
            config: config_of(ci, labels_map),
        })
    }
}

/// The container's configuration in the form the target builds (names, defaults and
/// orderings normalised the same way).
fn config_of(ci: &ContainerInspect, labels: BTreeMap<String, String>) -> ServiceConfig {
    let hc = &ci.host_config;
    let mut environment = env_map(&ci.config.env);
    environment.retain(|k, _| !k.ends_with("_DEVICE_NAME_AT_INIT"));
    ServiceConfig {
        image: ci.image.clone(),
        command: ci.config.cmd.clone().unwrap_or_default(),
        entrypoint: ci.config.entrypoint.clone().unwrap_or_default(),
        environment,
        labels,
        cap_add: hc.cap_add.clone(),
        cap_drop: hc.cap_drop.clone(),
        cgroup_parent: hc.cgroup_parent.clone(),
        devices: devices(hc),
        device_requests: hc.device_requests.clone(),
        dns: hc.dns.clone(),
        dns_opt: hc.dns_options.clone(),
        dns_search: hc.dns_search.clone(),
        extra_hosts: hc.extra_hosts.clone(),
        group_add: hc.group_add.clone(),
        healthcheck: healthcheck_from_value(ci.config.healthcheck.as_ref()),
        network_mode: hc.network_mode.clone(),
        networks: networks(&ci.network_settings.networks),
        pid: hc.pid_mode.clone(),
        pids_limit: hc.pids_limit,
        ports: ports(hc),
        security_opt: hc
            .security_opt
            .iter()
            .filter(|o| !is_selinux_label(o))
            .cloned()
            .collect(),
        stop_grace_period: ci.config.stop_timeout.unwrap_or(10),
        stop_signal: ci
            .config
            .stop_signal
            .clone()
            .unwrap_or_else(|| "SIGTERM".into()),
        storage_opt: hc.storage_opt.clone(),
        sysctls: hc.sysctls.clone(),
        tmpfs: hc.tmpfs.keys().cloned().collect(),
        ulimits: hc
            .ulimits
            .iter()
            .map(|u| (u.name.clone(), (u.soft, u.hard)))
            .collect(),
        userns_mode: hc.userns_mode.clone(),
        volumes: volumes(ci),
        restart: restart_policy(hc),
        cpu_shares: hc.cpu_shares,
        cpu_quota: hc.cpu_quota,
        nano_cpus: hc.nano_cpus,
        cpuset: hc.cpuset_cpus.clone(),
        domainname: ci.config.domainname.clone(),
        hostname: hostname(ci),
        ipc: hc.ipc_mode.clone(),
        mac_address: ci.config.mac_address.clone(),
        mem_limit: hc.memory,
        mem_reservation: hc.memory_reservation,
        oom_kill_disable: hc.oom_kill_disable,
        oom_score_adj: hc.oom_score_adj,
        privileged: hc.privileged,
        read_only: hc.readonly_rootfs,
        shm_size: match hc.shm_size {
            0 => DEFAULT_SHM,
            n => n,
        },
        user: ci.config.user.clone(),
        working_dir: trim_dir(&ci.config.working_dir),
        tty: ci.config.tty,
        init: hc.init,
        running: ci.state.running,
    }
}

/// Binds, then anonymous volumes (the image's and the service's, as `Config.Volumes` keys).
fn volumes(ci: &ContainerInspect) -> Vec<String> {
    let mut volumes = ci.host_config.binds.clone();
    if let Some(anon) = ci.config.volumes.as_ref().and_then(|v| v.as_object()) {
        volumes.extend(anon.keys().cloned());
    }
    volumes
}

fn networks(endpoints: &BTreeMap<String, EndpointSettings>) -> BTreeMap<String, Endpoint> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    endpoints
        .iter()
        .map(|(name, ep)| {
            let ipam = &ep.ipam_config;
            let endpoint = Endpoint {
                aliases: ep.aliases.clone(),
                ipv4_address: non_empty(&ipam.ipv4_address),
                ipv6_address: non_empty(&ipam.ipv6_address),
                link_local_ips: ipam.link_local_ips.clone(),
            };
            (name.clone(), endpoint)
        })
        .collect()
}

/// Bindings per `port/protocol`, sorted as the target's are.
fn ports(hc: &HostConfig) -> BTreeMap<String, Vec<(String, String)>> {
    hc.port_bindings
        .iter()
        .map(|(port, bindings)| {
            let mut pairs: Vec<(String, String)> = bindings
                .iter()
                .flatten()
                .map(|b| (b.host_ip.clone(), b.host_port.clone()))
                .collect();
            pairs.sort();
            (port.clone(), pairs)
        })
        .collect()
}

fn devices(hc: &HostConfig) -> Vec<Device> {
    hc.devices
        .iter()
        .map(|d| Device {
            path_on_host: d.path_on_host.clone(),
            path_in_container: d.path_in_container.clone(),
            cgroup_permissions: d.cgroup_permissions.clone(),
        })
        .collect()
}

fn restart_policy(hc: &HostConfig) -> String {
    match hc.restart_policy.as_ref().and_then(|p| p.name.as_deref()) {
        // The engine's "" means no restart, as "no" does.
        Some("") => "no".to_string(),
        Some(r) => normalise_restart(Some(r)),
        None => "always".to_string(),
    }
}

/// The engine names a container without a hostname by its short id: that is no hostname.
fn hostname(ci: &ContainerInspect) -> String {
    let short_id: String = ci.id.chars().take(12).collect();
    if ci.config.hostname == short_id {
        String::new()
    } else {
        ci.config.hostname.clone()
    }
}
