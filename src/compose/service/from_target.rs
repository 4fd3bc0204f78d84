//! A target service built into the [`Service`] its container should be (v19's
//! `Service.fromComposeObject`): the composition with the image's defaults under it, the
//! supervisor's labels, injected environment and feature binds on top.

use super::{
    feature, healthcheck_from_value, is_selinux_label, normalise_restart, parse_device, trim_dir,
    DeviceContext, Endpoint, Healthcheck, ImageDefaults, Service, ServiceConfig, ServiceOrigin,
    ServiceStatus, DEFAULT_SHM, LOCK_DIR, SUPERVISOR_GATEWAY, SUPERVISOR_NETWORK,
};
use crate::compose::composition::{Composition, VolumeSpec};
use crate::compose::labels::{self, APP_ID, APP_UUID, SERVICE_ID, SERVICE_NAME, SUPERVISED};
use crate::compose::target::TargetService;
use serde_json::json;
use std::collections::BTreeMap;

type Labels = BTreeMap<String, String>;

impl Service {
    /// The service `t` of `origin`'s release as its container should be on this device;
    /// `image` is the engine's image when it is there (its defaults fill what `t` leaves).
    pub fn from_target(
        t: &TargetService,
        origin: &ServiceOrigin,
        device: &DeviceContext,
        image: Option<&ImageDefaults>,
    ) -> Service {
        let c: &Composition = &t.composition;
        let img = image.cloned().unwrap_or_default();
        let labels = service_labels(t, origin, &img);
        let (network_mode, networks) = networking(c, origin, &labels);
        let mut environment = environment(t, origin, device, &img);
        add_feature_environment(&mut environment, &labels, origin, device, &network_mode);
        let (volumes, tmpfs) = mounts(c, origin, device, &labels, &mut environment);
        let mut depends_on = c.depends_on.clone();
        if let Some(x) = network_mode.strip_prefix("service:") {
            if !depends_on.iter().any(|d| d == x) {
                depends_on.push(x.to_string());
            }
        }
        let built = Built {
            environment,
            device_requests: device_requests(&labels),
            labels,
            network_mode,
            networks,
            volumes,
            tmpfs,
        };
        Service {
            app_id: origin.app_id,
            app_uuid: origin.app_uuid.clone(),
            service_name: origin.service_name.clone(),
            service_id: t.id,
            image_id: t.image_id,
            release_id: origin.release_id,
            commit: Some(origin.commit.clone()),
            image_name: t.image.clone(),
            container_id: None,
            created_at: None,
            status: ServiceStatus::Installing,
            exit_error: String::new(),
            health: None,
            exit_code: None,
            restart_count: 0,
            depends_on,
            dependency_conditions: c.dependency_conditions.clone(),
            config: config_of(t, device, &img, built),
        }
    }
}

/// What [`Service::from_target`] works out before the plain fields are copied.
struct Built {
    environment: BTreeMap<String, String>,
    labels: Labels,
    device_requests: Vec<serde_json::Value>,
    network_mode: String,
    networks: BTreeMap<String, Endpoint>,
    volumes: Vec<String>,
    tmpfs: Vec<String>,
}

/// Image labels as defaults (normalised like the container's: an image built by balena push
/// carries io.resin.local.*), then the composition's, then the target's, then ours.
fn service_labels(t: &TargetService, origin: &ServiceOrigin, img: &ImageDefaults) -> Labels {
    let mut labels = labels::normalise_labels(&img.labels);
    labels.extend(labels::normalise_labels(&t.composition.labels));
    labels.extend(labels::normalise_labels(&t.labels));
    labels.insert(SUPERVISED.into(), "true".into());
    labels.insert(APP_ID.into(), origin.app_id.to_string());
    labels.insert(APP_UUID.into(), origin.app_uuid.clone());
    labels.insert(SERVICE_ID.into(), t.id.to_string());
    labels.insert(SERVICE_NAME.into(), origin.service_name.clone());
    labels
}

/// Modes the engine knows by themselves: no app network to prefix.
fn is_special_network_mode(mode: &str) -> bool {
    matches!(mode, "host" | "bridge" | "none")
        || mode.starts_with("service:")
        || mode.starts_with("container:")
}

/// The network mode (the first network when none is given) and the endpoints, app networks
/// named `<app uuid>_<name>`, each with the service name as an alias; `supervisor0` for
/// services with the supervisor-api feature.
fn networking(
    c: &Composition,
    origin: &ServiceOrigin,
    labels: &Labels,
) -> (String, BTreeMap<String, Endpoint>) {
    let name = &origin.service_name;
    let uuid_prefixed = |n: &str| format!("{}_{n}", origin.app_uuid);
    let mut network_mode = match c.network_mode.as_deref() {
        Some(m) => m.to_string(),
        None => c
            .networks
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| "default".into()),
    };
    let mut networks = BTreeMap::new();
    if is_special_network_mode(&network_mode) {
        return (network_mode, networks);
    }
    network_mode = uuid_prefixed(&network_mode);
    for (n, a) in c.networks.iter().filter(|(n, _)| n != SUPERVISOR_NETWORK) {
        let mut aliases = vec![name.clone()];
        aliases.extend(a.aliases.iter().filter(|x| *x != name).cloned());
        let endpoint = Endpoint {
            aliases,
            ipv4_address: a.ipv4_address.clone(),
            ipv6_address: a.ipv6_address.clone(),
            link_local_ips: a.link_local_ips.clone(),
        };
        networks.insert(uuid_prefixed(n), endpoint);
    }
    networks
        .entry(network_mode.clone())
        .or_insert_with(|| Endpoint {
            aliases: vec![name.clone()],
            ..Default::default()
        });
    if feature(labels, "supervisor-api") {
        networks.insert(SUPERVISOR_NETWORK.into(), Endpoint::default());
    }
    (network_mode, networks)
}

/// Image env < supervisor defaults < composition < target.
fn environment(
    t: &TargetService,
    origin: &ServiceOrigin,
    device: &DeviceContext,
    img: &ImageDefaults,
) -> BTreeMap<String, String> {
    let mut env = img.env.clone();
    for prefix in ["BALENA", "RESIN"] {
        for (k, v) in [
            ("APP_ID", origin.app_id.to_string()),
            ("APP_UUID", origin.app_uuid.clone()),
            ("APP_NAME", origin.app_name.clone()),
            ("SERVICE_NAME", origin.service_name.clone()),
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
    let handover = "/tmp/balena/handover-complete";
    env.insert("RESIN_SERVICE_KILL_ME_PATH".into(), handover.into());
    env.insert(
        "BALENA_SERVICE_HANDOVER_COMPLETE_PATH".into(),
        handover.into(),
    );
    env.insert("USER".into(), "root".into());
    env.extend(t.composition.environment.clone());
    env.extend(t.environment.clone());
    env.retain(|k, _| !k.ends_with("_DEVICE_NAME_AT_INIT"));
    env
}

/// The variables the supervisor-api, balena-api and board-rev features inject, both prefixes.
fn add_feature_environment(
    env: &mut BTreeMap<String, String>,
    labels: &Labels,
    origin: &ServiceOrigin,
    device: &DeviceContext,
    network_mode: &str,
) {
    for prefix in ["BALENA", "RESIN"] {
        let mut set = |k: &str, v: String| {
            env.insert(format!("{prefix}_{k}"), v);
        };
        if feature(labels, "supervisor-api") {
            let host = if network_mode == "host" {
                "127.0.0.1"
            } else {
                SUPERVISOR_GATEWAY
            };
            if let Some(key) = &origin.api_key {
                set("SUPERVISOR_API_KEY", key.clone());
            }
            set("SUPERVISOR_PORT", device.listen_port.to_string());
            set("SUPERVISOR_HOST", host.into());
            let address = format!("http://{host}:{}", device.listen_port);
            set("SUPERVISOR_ADDRESS", address);
        }
        if feature(labels, "balena-api") {
            set("API_KEY", device.device_api_key.clone());
            set("API_URL", device.api_endpoint.clone());
        }
        if let Some(rev) = device.board_rev.as_ref() {
            if feature(labels, "host-os.board-rev") {
                set("HOST_OS_BOARD_REV", rev.clone());
            }
        }
    }
}

/// Volumes and tmpfs mounts: named volumes namespaced by app id, anonymous ones kept, binds
/// dropped; the lock directory; the binds of the features the labels ask for. The
/// balena-socket feature also points `DOCKER_HOST` at the socket unless the service sets it.
fn mounts(
    c: &Composition,
    origin: &ServiceOrigin,
    device: &DeviceContext,
    labels: &Labels,
    env: &mut BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let mut volumes = Vec::new();
    let mut tmpfs: Vec<String> = c.tmpfs.clone();
    for v in &c.volumes {
        match v {
            VolumeSpec::Named { name, target, mode } => volumes.push(match mode {
                Some(m) => format!("{}_{name}:{target}:{m}", origin.app_id),
                None => format!("{}_{name}:{target}", origin.app_id),
            }),
            VolumeSpec::Anonymous { target } => volumes.push(target.clone()),
            VolumeSpec::Tmpfs { target } => tmpfs.push(target.clone()),
            VolumeSpec::Bind { .. } => {}
        }
    }
    let lock_dir = format!("{LOCK_DIR}/{}/{}", origin.app_id, origin.service_name);
    volumes.push(format!("{lock_dir}:/tmp/resin"));
    volumes.push(format!("{lock_dir}:/tmp/balena"));
    if feature(labels, "balena-socket") {
        let sock = &device.docker_socket;
        volumes.push(format!("{sock}:/host/run/balena-engine.sock"));
        volumes.push(format!("{sock}:{sock}"));
        if sock != "/var/run/balena.sock" {
            volumes.push(format!("{sock}:/var/run/balena.sock"));
        }
        env.entry("DOCKER_HOST".into())
            .or_insert_with(|| "unix:///host/run/balena-engine.sock".into());
    }
    volumes.extend(feature_binds(labels, device));
    (volumes, tmpfs)
}

/// Host paths the dbus, kernel-modules, firmware, sysfs, procfs, journal-logs and
/// extra-firmware features bind in (modules and firmware only where the host has them).
fn feature_binds(labels: &Labels, device: &DeviceContext) -> Vec<String> {
    let binds: [(&str, bool, &[&str]); 7] = [
        ("dbus", true, &["/run/dbus:/host/run/dbus"]),
        (
            "kernel-modules",
            device.host_lib_modules,
            &["/lib/modules:/lib/modules"],
        ),
        (
            "firmware",
            device.host_lib_firmware,
            &["/lib/firmware:/lib/firmware"],
        ),
        ("sysfs", true, &["/sys:/sys"]),
        ("procfs", true, &["/proc:/proc"]),
        (
            "journal-logs",
            true,
            &[
                "/var/log/journal:/var/log/journal:ro",
                "/run/log/journal:/run/log/journal:ro",
                "/etc/machine-id:/etc/machine-id:ro",
            ],
        ),
        ("extra-firmware", true, &["extra-firmware:/extra-firmware"]),
    ];
    binds
        .iter()
        .filter(|(name, host_has, _)| *host_has && feature(labels, name))
        .flat_map(|(_, _, paths)| paths.iter().map(|p| p.to_string()))
        .collect()
}

fn device_requests(labels: &Labels) -> Vec<serde_json::Value> {
    if !feature(labels, "gpu") {
        return Vec::new();
    }
    vec![
        json!({"Driver": "", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}),
    ]
}

/// Bindings per `port/protocol`, sorted.
fn ports(c: &Composition) -> BTreeMap<String, Vec<(String, String)>> {
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
    ports
}

/// The image's healthcheck, overridden field by field by the composition's.
fn healthcheck(c: &Composition, img: &ImageDefaults) -> Healthcheck {
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
    healthcheck
}

/// The composition's fields with the image's and the engine's defaults where it has none.
fn config_of(
    t: &TargetService,
    device: &DeviceContext,
    img: &ImageDefaults,
    built: Built,
) -> ServiceConfig {
    let c = &t.composition;
    let hostname = match &c.hostname {
        Some(h) => h.clone(),
        None if built.network_mode == "host" => device.hostname.clone(),
        None => String::new(),
    };
    ServiceConfig {
        image: if img.id.is_empty() {
            t.image.clone()
        } else {
            img.id.clone()
        },
        command: c.command.clone().unwrap_or(img.cmd.clone()),
        entrypoint: c.entrypoint.clone().unwrap_or(img.entrypoint.clone()),
        environment: built.environment,
        labels: built.labels,
        cap_add: c.cap_add.clone(),
        cap_drop: c.cap_drop.clone(),
        cgroup_parent: c.cgroup_parent.clone().unwrap_or_default(),
        devices: c.devices.iter().map(|d| parse_device(d)).collect(),
        device_requests: built.device_requests,
        dns: c.dns.clone(),
        dns_opt: c.dns_opt.clone(),
        dns_search: c.dns_search.clone(),
        extra_hosts: c
            .extra_hosts
            .iter()
            .map(|h| h.replacen('=', ":", 1))
            .collect(),
        group_add: c.group_add.clone(),
        healthcheck: healthcheck(c, img),
        network_mode: built.network_mode,
        networks: built.networks,
        pid: c.pid.clone().unwrap_or_default(),
        pids_limit: c.pids_limit.unwrap_or(0),
        ports: ports(c),
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
        tmpfs: built.tmpfs,
        ulimits: c.ulimits.clone(),
        userns_mode: c.userns_mode.clone().unwrap_or_default(),
        volumes: built.volumes,
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
        running: t.running && c.running.unwrap_or(true),
    }
}
