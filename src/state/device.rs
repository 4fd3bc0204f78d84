//! What the device is: the facts injected into containers and offered to contracts.

use crate::compose::contracts::Universe;
use crate::compose::service::DeviceContext;
use crate::config::Settings;
use std::path::Path;

/// The device facts that go into every container.
pub fn device_context(settings: &Settings, device_name: &str) -> DeviceContext {
    let cfg = &settings.config_json;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let os_release = read(&settings.paths.host_os_version_path).unwrap_or_default();
    let field = |k: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(&format!("{k}="))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    DeviceContext {
        uuid: cfg.get_str("uuid").unwrap_or_default(),
        device_type: settings.device_type.slug.clone(),
        device_arch: settings.device_type.arch.clone(),
        os_version: field("PRETTY_NAME").unwrap_or_default(),
        device_name: device_name.to_string(),
        hostname: cfg
            .get_str("hostname")
            .or_else(|| {
                read(&settings.paths.root_mountpoint.join("etc/hostname"))
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default(),
        listen_port: settings.listen_port,
        api_endpoint: cfg.api_endpoint(),
        device_api_key: cfg.get_str("deviceApiKey").unwrap_or_default(),
        docker_socket: settings.paths.docker_socket.display().to_string(),
        board_rev: field("BALENA_BOARD_REV"),
        host_lib_modules: settings.paths.root_mountpoint.join("lib/modules").exists(),
        host_lib_firmware: settings.paths.root_mountpoint.join("lib/firmware").exists(),
    }
}

/// What the device offers to contracts: our supervisor-compatible version, device type,
/// architecture, OS from os-release, kernel from the running system.
pub fn universe(settings: &Settings) -> Universe {
    let os_release =
        std::fs::read_to_string(&settings.paths.host_os_version_path).unwrap_or_default();
    let field = |k: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(&format!("{k}="))
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|r| {
            let version: String = r
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            ("linux".to_string(), version)
        });
    let l4t = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| {
            let at = r.find("-l4t-r")?;
            let v: String = r[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            Some(if v.matches('.').count() == 1 {
                format!("{v}.0")
            } else {
                v
            })
        });
    Universe {
        supervisor_version: crate::SUPERVISOR_VERSION.to_string(),
        device_type: settings.device_type.slug.clone(),
        arch: settings.device_type.arch.clone(),
        os: field("ID").zip(field("VERSION")),
        kernel,
        l4t,
    }
}
