//! The pure half of the boot-config backends: their settings ([`BootConfig`]), the
//! conversions between `HOST_*` config variables and each backend's own keys, which keys a
//! backend may change and whether a change needs a reboot ([`BootKeys`]). The device-config
//! plan works with these alone, so it can do no I/O; reading and writing the files on the
//! boot partition is `crate::boot_config::Backend`'s part.

use std::collections::BTreeMap;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootError(pub String);

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootError {}

pub(crate) fn err(m: impl Into<String>) -> BootError {
    BootError(m.into())
}

/// The common prefix of boot config variables (names without `BALENA_`/`RESIN_`).
pub const HOST_PREFIX: &str = "HOST_";
/// What a boot-config backend knows without touching a file.
pub trait BootKeys: Send + Sync {
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
/// A backend's part of a target's config variables, in its own keys.
pub fn env_to_boot(backend: &dyn BootKeys, env: &BTreeMap<String, String>) -> BootConfig {
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
pub fn boot_to_env(backend: &dyn BootKeys, cfg: &BootConfig) -> BTreeMap<String, String> {
    cfg.iter()
        .map(|(k, v)| (backend.env_name(k), v.to_env()))
        .collect()
}

/// Does the target differ from the current settings? A differing key the backend must not
/// touch is an error (docs/contract/device-config.md §1.2 rule 4); keys only in `current` count as
/// differences (the target is authoritative), except those the backend keeps when absent.
pub fn change_required(
    backend: &dyn BootKeys,
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
/// List values of a variable: `a` is `[a]`; `"a","b"` is `[a, b]`.
pub(crate) fn list_value(v: &str) -> Vec<String> {
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
