//! Boot-config backends (device-config.md §2): the `HOST_*` config variables that end up in
//! files on the boot partition (config.txt, extlinux.conf, extra_uEnv.txt, configfs.json, the
//! splash logo), in raw bytes of the TX2's boot sector (odmdata), or in config.json (Orin power
//! and fan modes).
//!
//! Each backend says whether it serves a device type, reads its current settings, converts
//! between config variables and its own keys, refuses keys it must not touch, writes atomically
//! and says whether a change needs a reboot. Reading and the variable conversions are pure text
//! transforms; only `read`/`write` touch files, all under the paths given in [`Mounts`].

mod config_txt;
mod configfs;
mod extlinux;
mod extra_uenv;
mod odmdata;
mod power_fan;
mod splash;

#[cfg(test)]
mod tests;

use crate::config::ConfigJson;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A backend setting: one value, or a list (config.txt `dtoverlay`, configfs `ssdt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootValue {
    Str(String),
    List(Vec<String>),
}

impl BootValue {
    /// As a config variable shows it: lists as `"a","b"` (JSON without the brackets).
    pub fn to_env(&self) -> String {
        match self {
            BootValue::Str(s) => s.clone(),
            BootValue::List(items) => {
                let json = serde_json::to_string(items).unwrap_or_default();
                json[1..json.len() - 1].to_string()
            }
        }
    }
}

/// A backend's settings, by its own key names.
pub type BootConfig = BTreeMap<String, BootValue>;

/// Where a backend finds its files.
pub struct Mounts<'a> {
    pub boot: PathBuf,
    pub root: PathBuf,
    pub config_json: &'a ConfigJson,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootError(pub String);

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootError {}

fn err(m: impl Into<String>) -> BootError {
    BootError(m.into())
}

/// The common prefix of boot config variables (names without `BALENA_`/`RESIN_`).
pub const HOST_PREFIX: &str = "HOST_";

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// The start of its variables' names (`HOST_CONFIG_`, ...): the rest is the key.
    fn prefix(&self) -> &'static str;
    /// Does a (prefix-less) config variable belong to this backend?
    fn is_boot_config_var(&self, env_name: &str) -> bool {
        env_name
            .strip_prefix(self.prefix())
            .is_some_and(|k| !k.is_empty())
    }
    /// The backend key of one of its variables.
    fn key_of(&self, env_name: &str) -> String {
        env_name
            .strip_prefix(self.prefix())
            .unwrap_or(env_name)
            .to_string()
    }
    /// The variable name of a backend key.
    fn env_name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }
    /// A variable's value as this backend stores it.
    fn value_of(&self, key: &str, env_value: &str) -> BootValue {
        let _ = key;
        BootValue::Str(env_value.to_string())
    }
    /// Keys the supervisor may change (others are refused with v19's message).
    fn is_supported(&self, key: &str) -> bool;
    /// Values the device type always needs, added to a target before comparing and writing.
    fn ensure_required(&self, device_type: &str, target: &mut BootConfig) {
        let _ = (device_type, target);
    }
    /// Refuses values that cannot be written (checked before any write).
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        let _ = target;
        Ok(())
    }
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError>;
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError>;
    fn reboot_required(&self, current: &BootConfig, target: &BootConfig) -> bool {
        let _ = (current, target);
        true
    }
    /// Keys whose absence from the target means "leave as it is" (odmdata's `configuration`).
    fn kept_when_absent(&self, key: &str) -> bool {
        let _ = key;
        false
    }
}

/// The backends serving a device (several can: config.txt and the splash logo on a Pi).
/// `meta_release` is `META_BALENA_VERSION` of the host's os-release.
pub fn backends_for(
    device_type: &str,
    meta_release: Option<&str>,
    boot: &Path,
) -> Vec<Box<dyn Backend>> {
    let mut out: Vec<Box<dyn Backend>> = Vec::new();
    if config_txt::matches(device_type) {
        out.push(Box::new(config_txt::ConfigTxt));
    }
    if extlinux::matches(device_type, meta_release) {
        out.push(Box::new(extlinux::Extlinux));
    }
    if extra_uenv::matches(device_type, boot) {
        out.push(Box::new(extra_uenv::ExtraUEnv));
    }
    if device_type == "up-board" {
        out.push(Box::new(configfs::ConfigFs));
    }
    if device_type.ends_with("-tx2") {
        out.push(Box::new(odmdata::Odmdata));
    }
    out.push(Box::new(splash::SplashImage));
    if device_type.contains("-orin-") {
        out.push(Box::new(power_fan::PowerFan));
    }
    out
}

/// Is a (prefix-less) variable a boot config variable of any backend? (v19's
/// `isBootConfigVar`, over every backend, so a variable of another device type is still
/// recognised as a config variable rather than dropped as unknown.)
pub fn is_boot_config_var(env_name: &str) -> bool {
    let all: [&dyn Backend; 7] = [
        &config_txt::ConfigTxt,
        &extlinux::Extlinux,
        &extra_uenv::ExtraUEnv,
        &configfs::ConfigFs,
        &odmdata::Odmdata,
        &splash::SplashImage,
        &power_fan::PowerFan,
    ];
    all.iter().any(|b| b.is_boot_config_var(env_name))
}

/// A backend's part of a target's config variables, in its own keys.
pub fn env_to_boot(backend: &dyn Backend, env: &BTreeMap<String, String>) -> BootConfig {
    env.iter()
        .filter(|(k, _)| backend.is_boot_config_var(k))
        .map(|(k, v)| {
            let key = backend.key_of(k);
            let value = backend.value_of(&key, v);
            (key, value)
        })
        .collect()
}

/// A backend's settings as config variables.
pub fn boot_to_env(backend: &dyn Backend, cfg: &BootConfig) -> BTreeMap<String, String> {
    cfg.iter()
        .map(|(k, v)| (backend.env_name(k), v.to_env()))
        .collect()
}

/// Does the target differ from the current settings? A differing key the backend must not
/// touch is an error (device-config.md §1.2 rule 4); keys only in `current` count as
/// differences (the target is authoritative), except those the backend keeps when absent.
pub fn change_required(
    backend: &dyn Backend,
    current: &BootConfig,
    target: &BootConfig,
) -> Result<bool, BootError> {
    let mut changed = false;
    let keys: std::collections::BTreeSet<&String> = current.keys().chain(target.keys()).collect();
    for key in keys {
        if current.get(key) == target.get(key) {
            continue;
        }
        if !target.contains_key(key) && backend.kept_when_absent(key) {
            continue;
        }
        if !backend.is_supported(key) {
            return Err(err(format!(
                "Attempt to change blacklisted config value {key}"
            )));
        }
        changed = true;
    }
    if changed {
        backend.validate(target)?;
    }
    Ok(changed)
}

/// Reads a file on the boot partition; a missing file is `None`.
fn read_optional(path: &Path) -> Result<Option<String>, BootError> {
    Ok(read_bytes(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The same, as bytes.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, BootError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes a file on the boot partition atomically (temp file, fsync, rename, fsync dir).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BootError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    crate::fsutil::write_atomic(path, bytes)
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// List values of a variable: `a` is `[a]`; `"a","b"` is `[a, b]`.
fn list_value(v: &str) -> Vec<String> {
    let v = v.trim();
    if !v.starts_with('"') {
        return if v.is_empty() {
            Vec::new()
        } else {
            vec![v.to_string()]
        };
    }
    serde_json::from_str::<Vec<String>>(&format!("[{v}]")).unwrap_or_else(|_| {
        v.split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}
