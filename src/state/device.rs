//! What the device is: the facts injected into containers and offered to contracts.

use crate::compose::contracts::Universe;
use crate::compose::service::DeviceContext;
use crate::config::Settings;
use std::collections::BTreeMap;
use std::path::Path;

fn os_release(settings: &Settings) -> BTreeMap<String, String> {
    crate::host::os_release(&settings.paths.host_os_version_path)
}

/// The device facts that go into every container.
pub fn device_context(settings: &Settings, device_name: &str) -> DeviceContext {
    let cfg = &settings.config_json;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let os_release = os_release(settings);
    let field = |k: &str| os_release.get(k).cloned();
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
    let os_release = os_release(settings);
    let field = |k: &str| os_release.get(k).cloned();
    // `uname -r`, e.g. `6.1.77` or `4.9.253-l4t-r32.7.1`.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let version_prefix = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect()
    };
    let kernel = (!release.is_empty()).then(|| ("linux".to_string(), version_prefix(release)));
    let l4t = release.find("-l4t-r").map(|at| {
        let v = version_prefix(&release[at + 6..]);
        // `31.0` counts as `31.0.0` (docs/contract/engine.md (g)).
        if v.matches('.').count() == 1 {
            format!("{v}.0")
        } else {
            v
        }
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
