//! Process configuration: the environment variables the real supervisor reads
//! (docs/contract/config.md §1), command-line overrides, and config.json (see [`config_json`]).
//!
//! Precedence for every path: command-line flag > environment variable > default.
//! The API port: flag > `LISTEN_PORT` > config.json `listenPort` > 48484.

pub mod ca;
pub mod config_json;

pub use config_json::{ConfigError, ConfigJson};
use std::path::{Path, PathBuf};

pub const DEFAULT_LISTEN_PORT: u16 = 48484;

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub docker_socket: Option<PathBuf>,
    pub root_mountpoint: Option<PathBuf>,
    pub boot_mountpoint: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub state_mountpoint: Option<PathBuf>,
    pub data_mountpoint: Option<PathBuf>,
    pub database_path: Option<PathBuf>,
    pub listen_port: Option<u16>,
}

/// Where everything lives, resolved once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub docker_socket: PathBuf,
    pub root_mountpoint: PathBuf,
    pub boot_mountpoint: PathBuf,
    /// config.json (`CONFIG_MOUNT_POINT`, despite the name a file path).
    pub config_path: PathBuf,
    pub state_mountpoint: PathBuf,
    pub data_mountpoint: PathBuf,
    pub database_path: PathBuf,
    pub host_os_version_path: PathBuf,
    pub vpn_status_path: PathBuf,
    pub led_file: PathBuf,
    pub mac_address_path: PathBuf,
    pub dbus_system_bus_address: String,
}

/// A bad environment variable, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub var: String,
    pub message: String,
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "environment variable {}: {}", self.var, self.message)
    }
}

impl std::error::Error for EnvError {}

impl Paths {
    /// Resolves paths from `env` (a lookup such as `std::env::var`) and the overrides.
    pub fn resolve(env: &dyn Fn(&str) -> Option<String>, o: &Overrides) -> Paths {
        let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let pick = |flag: &Option<PathBuf>, name: &str, default: &str| -> PathBuf {
            flag.clone()
                .or_else(|| var(name))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        let root = pick(&o.root_mountpoint, "ROOT_MOUNTPOINT", "/mnt/root");
        let boot = pick(&o.boot_mountpoint, "BOOT_MOUNTPOINT", "/mnt/boot");
        let under_root = |rel: &str| root.join(rel.trim_start_matches('/'));
        Paths {
            docker_socket: pick(&o.docker_socket, "DOCKER_SOCKET", "/var/run/docker.sock"),
            config_path: o
                .config_path
                .clone()
                .or_else(|| var("CONFIG_MOUNT_POINT"))
                .unwrap_or_else(|| boot.join("config.json")),
            state_mountpoint: pick(&o.state_mountpoint, "STATE_MOUNTPOINT", "/mnt/state"),
            data_mountpoint: pick(&o.data_mountpoint, "DATA_MOUNTPOINT", "/mnt/data"),
            database_path: pick(&o.database_path, "DATABASE_PATH", "/data/database.sqlite"),
            host_os_version_path: var("HOST_OS_VERSION_PATH")
                .unwrap_or_else(|| under_root("etc/os-release")),
            vpn_status_path: var("VPN_STATUS_PATH")
                .unwrap_or_else(|| under_root("run/openvpn/vpn_status")),
            led_file: var("LED_FILE")
                .unwrap_or_else(|| PathBuf::from("/sys/class/leds/led0/brightness")),
            mac_address_path: var("MAC_ADDRESS_PATH")
                .unwrap_or_else(|| PathBuf::from("/sys/class/net")),
            dbus_system_bus_address: env("DBUS_SYSTEM_BUS_ADDRESS")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| {
                    format!(
                        "unix:path={}",
                        under_root("run/dbus/system_bus_socket").display()
                    )
                }),
            root_mountpoint: root,
            boot_mountpoint: boot,
        }
    }
}

impl Paths {
    /// Where balenaOS's current start script leaves things (docs/deploy.md): it mounts no
    /// partition into the container (v19's entry script mounts them itself, as root of a
    /// privileged container), but binds the host's `/` at ROOT_MOUNTPOINT, so the host's own
    /// `/mnt/boot`, `/mnt/state` and `/mnt/data` are there. A default path that does not exist
    /// is replaced by its counterpart under the root when that does; older balenaOS bound
    /// config.json at `/boot/config.json`. Paths given by flag or variable are kept.
    pub fn with_host_fallbacks(
        mut self,
        env: &dyn Fn(&str) -> Option<String>,
        o: &Overrides,
        exists: &dyn Fn(&Path) -> bool,
    ) -> Paths {
        let given = |flag: &Option<PathBuf>, var: &str| {
            flag.is_some() || env(var).is_some_and(|v| !v.is_empty())
        };
        let config_given = given(&o.config_path, "CONFIG_MOUNT_POINT");
        if !config_given && !exists(&self.config_path) {
            let on_host = self.root_mountpoint.join("mnt/boot");
            if exists(&on_host.join("config.json")) {
                // The whole boot partition is there: config.txt and device-type.json too.
                self.boot_mountpoint = on_host;
                self.config_path = self.boot_mountpoint.join("config.json");
            } else if exists(Path::new("/boot/config.json")) {
                self.config_path = PathBuf::from("/boot/config.json");
            }
        }
        for (path, flag, var, name) in [
            (
                &mut self.state_mountpoint,
                &o.state_mountpoint,
                "STATE_MOUNTPOINT",
                "mnt/state",
            ),
            (
                &mut self.data_mountpoint,
                &o.data_mountpoint,
                "DATA_MOUNTPOINT",
                "mnt/data",
            ),
        ] {
            let on_host = self.root_mountpoint.join(name);
            if !given(flag, var) && !exists(path) && exists(&on_host) {
                *path = on_host;
            }
        }
        self
    }
}

/// Everything the daemon needs to know at start.
#[derive(Debug)]
pub struct Settings {
    pub paths: Paths,
    pub listen_port: u16,
    pub config_json: ConfigJson,
    pub device_type: DeviceType,
    /// Custom root CAs for the balena API, registry token and delta calls (managed devices).
    pub custom_ca: Vec<ca::CustomCa>,
    /// Between failed host OS install attempts (helios's fixed local retry interval, 30 s;
    /// `TINYVISOR_HOSTOS_RETRY_MS`).
    pub hostos_retry: std::time::Duration,
}

/// `TINYVISOR_HOSTOS_RETRY_MS`: milliseconds, 100 to one day; 30 s when unset.
fn hostos_retry(env: &dyn Fn(&str) -> Option<String>) -> Result<std::time::Duration, EnvError> {
    const VAR: &str = "TINYVISOR_HOSTOS_RETRY_MS";
    match env(VAR).filter(|v| !v.is_empty()) {
        None => Ok(std::time::Duration::from_secs(30)),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if (100..=86_400_000).contains(&ms) => Ok(std::time::Duration::from_millis(ms)),
            _ => Err(EnvError {
                var: VAR.into(),
                message: format!("expected milliseconds between 100 and 86400000, got {v:?}"),
            }),
        },
    }
}

/// Errors that stop the daemon at start, each naming its source.
#[derive(Debug)]
pub enum SettingsError {
    Env(EnvError),
    ConfigJson(ConfigError),
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::Env(e) => e.fmt(f),
            SettingsError::ConfigJson(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    pub fn load(
        env: &dyn Fn(&str) -> Option<String>,
        o: &Overrides,
    ) -> Result<Settings, SettingsError> {
        let paths = Paths::resolve(env, o).with_host_fallbacks(env, o, &|p| p.exists());
        let config_json =
            ConfigJson::load(&paths.config_path).map_err(SettingsError::ConfigJson)?;
        let env_port = match env("LISTEN_PORT").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err(SettingsError::Env(EnvError {
                        var: "LISTEN_PORT".into(),
                        message: format!("expected a port number (1-65535), got {v:?}"),
                    }))
                }
            }),
        };
        let listen_port = o
            .listen_port
            .or(env_port)
            .unwrap_or_else(|| config_json.listen_port());
        let device_type = DeviceType::read(&paths.boot_mountpoint, &config_json);
        // Only a managed device talks TLS: an unmanaged one does not hold CA files in memory
        // (a whole CA bundle named by NODE_EXTRA_CA_CERTS is ~0.5 MiB of it).
        let custom_ca = if config_json.unmanaged() {
            Vec::new()
        } else {
            ca::collect(
                env,
                &paths.root_mountpoint,
                config_json.get_str("balenaRootCA"),
            )
        };
        let hostos_retry = hostos_retry(env).map_err(SettingsError::Env)?;
        Ok(Settings {
            paths,
            listen_port,
            config_json,
            device_type,
            custom_ca,
            hostos_retry,
        })
    }
}

/// Device type slug and architecture: `$BOOT/device-type.json` first, then config.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceType {
    pub slug: String,
    pub arch: String,
}

impl DeviceType {
    pub fn read(boot: &Path, config: &ConfigJson) -> DeviceType {
        let from_file = std::fs::read(boot.join("device-type.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        let field = |k: &str| {
            from_file
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        DeviceType {
            slug: field("slug")
                .or_else(|| config.get_str("deviceType"))
                .unwrap_or_else(|| "unknown".into()),
            arch: field("arch").unwrap_or_else(|| "unknown".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn in_a_balenaos_v8_container_the_hosts_partitions_are_found_through_its_root() {
        let host: Vec<PathBuf> = [
            "/mnt/root/mnt/boot/config.json",
            "/mnt/root/mnt/state",
            "/mnt/root/mnt/data",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let exists = |p: &Path| host.iter().any(|h| h == p);
        let env = env_of(&[("BOOT_MOUNTPOINT", "/mnt/boot")]);
        let p = Paths::resolve(&env, &Overrides::default()).with_host_fallbacks(
            &env,
            &Overrides::default(),
            &exists,
        );
        assert_eq!(
            p.config_path,
            PathBuf::from("/mnt/root/mnt/boot/config.json")
        );
        assert_eq!(p.boot_mountpoint, PathBuf::from("/mnt/root/mnt/boot"));
        assert_eq!(p.state_mountpoint, PathBuf::from("/mnt/root/mnt/state"));
        assert_eq!(p.data_mountpoint, PathBuf::from("/mnt/root/mnt/data"));
        // Older balenaOS: config.json bound at /boot/config.json.
        let old = |p: &Path| p == Path::new("/boot/config.json");
        let p = Paths::resolve(&env, &Overrides::default()).with_host_fallbacks(
            &env,
            &Overrides::default(),
            &old,
        );
        assert_eq!(p.config_path, PathBuf::from("/boot/config.json"));
        assert_eq!(p.state_mountpoint, PathBuf::from("/mnt/state"));
        // What is given is kept, and what exists is used.
        let env = env_of(&[("STATE_MOUNTPOINT", "/elsewhere")]);
        let p = Paths::resolve(&env, &Overrides::default()).with_host_fallbacks(
            &env,
            &Overrides::default(),
            &exists,
        );
        assert_eq!(p.state_mountpoint, PathBuf::from("/elsewhere"));
        let all = |_: &Path| true;
        let p = Paths::resolve(&env, &Overrides::default()).with_host_fallbacks(
            &env,
            &Overrides::default(),
            &all,
        );
        assert_eq!(p.config_path, PathBuf::from("/mnt/boot/config.json"));
    }

    #[test]
    fn defaults_match_the_real_supervisor() {
        let p = Paths::resolve(&env_of(&[]), &Overrides::default());
        assert_eq!(p.docker_socket, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(p.config_path, PathBuf::from("/mnt/boot/config.json"));
        assert_eq!(p.database_path, PathBuf::from("/data/database.sqlite"));
        assert_eq!(
            p.host_os_version_path,
            PathBuf::from("/mnt/root/etc/os-release")
        );
        assert_eq!(
            p.vpn_status_path,
            PathBuf::from("/mnt/root/run/openvpn/vpn_status")
        );
        assert_eq!(p.data_mountpoint, PathBuf::from("/mnt/data"));
        assert_eq!(p.state_mountpoint, PathBuf::from("/mnt/state"));
        assert_eq!(
            p.dbus_system_bus_address,
            "unix:path=/mnt/root/run/dbus/system_bus_socket"
        );
    }

    #[test]
    fn env_then_flags_override() {
        let env = env_of(&[
            ("BOOT_MOUNTPOINT", "/b"),
            ("ROOT_MOUNTPOINT", "/r"),
            ("DOCKER_SOCKET", "/e.sock"),
            ("DATABASE_PATH", "/d.sqlite"),
        ]);
        let p = Paths::resolve(&env, &Overrides::default());
        assert_eq!(p.config_path, PathBuf::from("/b/config.json"));
        assert_eq!(p.host_os_version_path, PathBuf::from("/r/etc/os-release"));
        assert_eq!(p.docker_socket, PathBuf::from("/e.sock"));
        let o = Overrides {
            docker_socket: Some("/f.sock".into()),
            config_path: Some("/c.json".into()),
            ..Default::default()
        };
        let p = Paths::resolve(&env, &o);
        assert_eq!(p.docker_socket, PathBuf::from("/f.sock"));
        assert_eq!(p.config_path, PathBuf::from("/c.json"));
        assert_eq!(p.database_path, PathBuf::from("/d.sqlite"));
        let p = Paths::resolve(
            &env_of(&[("CONFIG_MOUNT_POINT", "/x/cfg.json")]),
            &Overrides::default(),
        );
        assert_eq!(p.config_path, PathBuf::from("/x/cfg.json"));
    }

    #[test]
    fn listen_port_precedence() {
        let dir = TempDir::new("settings");
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, br#"{"listenPort":"4000"}"#).unwrap();
        let cfg_s = cfg.to_str().unwrap();
        let s = Settings::load(
            &env_of(&[("CONFIG_MOUNT_POINT", cfg_s)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.listen_port, 4000);
        let env = env_of(&[("CONFIG_MOUNT_POINT", cfg_s), ("LISTEN_PORT", "5000")]);
        assert_eq!(
            Settings::load(&env, &Overrides::default())
                .unwrap()
                .listen_port,
            5000
        );
        let o = Overrides {
            listen_port: Some(6000),
            ..Default::default()
        };
        assert_eq!(Settings::load(&env, &o).unwrap().listen_port, 6000);
        let bad = env_of(&[("CONFIG_MOUNT_POINT", cfg_s), ("LISTEN_PORT", "http")]);
        let e = Settings::load(&bad, &Overrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable LISTEN_PORT: expected a port number (1-65535), got \"http\""
        );
    }

    #[test]
    fn device_type_prefers_device_type_json() {
        let dir = TempDir::new("settings");
        std::fs::write(
            dir.path().join("config.json"),
            br#"{"deviceType":"raspberry-pi"}"#,
        )
        .unwrap();
        let c = ConfigJson::load(&dir.path().join("config.json")).unwrap();
        assert_eq!(DeviceType::read(dir.path(), &c).slug, "raspberry-pi");
        std::fs::write(
            dir.path().join("device-type.json"),
            br#"{"slug":"raspberrypi0-2w-64","arch":"aarch64"}"#,
        )
        .unwrap();
        let d = DeviceType::read(dir.path(), &c);
        assert_eq!(
            (d.slug.as_str(), d.arch.as_str()),
            ("raspberrypi0-2w-64", "aarch64")
        );
    }
}
