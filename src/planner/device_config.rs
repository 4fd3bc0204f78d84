//! The device-config half of the state funnel (docs/contract/device-config.md §1.2): from the
//! target's config variables and what the device has now, the steps that close the gap. Pure: the
//! state engine reads the current values (config.json, the database, the VPN unit, the boot
//! backends) and runs the steps.

use super::boot_keys::{self, BootConfig, BootKeys};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    /// One of these words.
    Word(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    ConfigJson,
    Db,
}

/// A supervisor config variable of table 3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigVar {
    /// The variable name without `BALENA_`/`RESIN_`.
    pub env: &'static str,
    /// v19's config key (config.json key or `config` table key).
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub storage: Storage,
    /// Takes effect only after a reboot (the OS reads it at boot).
    pub reboot: bool,
}

const fn var(
    env: &'static str,
    key: &'static str,
    kind: Kind,
    default: &'static str,
    storage: Storage,
) -> ConfigVar {
    ConfigVar {
        env,
        key,
        kind,
        default,
        storage,
        reboot: false,
    }
}

/// Table 3.1, but `SUPERVISOR_LOCAL_MODE`, which the state engine switches itself (entering
/// and leaving local mode has steps of its own), and `SUPERVISOR_VPN_CONTROL` (a unit, below).
pub const VARS: &[ConfigVar] = &[
    var(
        "SUPERVISOR_POLL_INTERVAL",
        "appUpdatePollInterval",
        Kind::Int,
        "900000",
        Storage::ConfigJson,
    ),
    var(
        "SUPERVISOR_INSTANT_UPDATE_TRIGGER",
        "instantUpdates",
        Kind::Bool,
        "true",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_CONNECTIVITY_CHECK",
        "connectivityCheckEnabled",
        Kind::Bool,
        "true",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_LOG_CONTROL",
        "loggingEnabled",
        Kind::Bool,
        "true",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_API_REQUEST_TIMEOUT",
        "apiRequestTimeout",
        Kind::Int,
        "59000",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA",
        "delta",
        Kind::Bool,
        "false",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA_REQUEST_TIMEOUT",
        "deltaRequestTimeout",
        Kind::Int,
        "59000",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA_APPLY_TIMEOUT",
        "deltaApplyTimeout",
        Kind::Int,
        "0",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA_RETRY_COUNT",
        "deltaRetryCount",
        Kind::Int,
        "30",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA_RETRY_INTERVAL",
        "deltaRetryInterval",
        Kind::Int,
        "10000",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_DELTA_VERSION",
        "deltaVersion",
        Kind::Int,
        "2",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_OVERRIDE_LOCK",
        "lockOverride",
        Kind::Bool,
        "false",
        Storage::Db,
    ),
    ConfigVar {
        reboot: true,
        ..var(
            "SUPERVISOR_PERSISTENT_LOGGING",
            "persistentLogging",
            Kind::Bool,
            "false",
            Storage::ConfigJson,
        )
    },
    var(
        "HOST_FIREWALL_MODE",
        "firewallMode",
        Kind::Word(&["on", "off", "auto"]),
        "off",
        Storage::Db,
    ),
    var(
        "HOST_DISCOVERABILITY",
        "hostDiscoverability",
        Kind::Bool,
        "true",
        Storage::Db,
    ),
    var(
        "SUPERVISOR_HARDWARE_METRICS",
        "hardwareMetrics",
        Kind::Bool,
        "true",
        Storage::Db,
    ),
];

pub const VPN_CONTROL: &str = "SUPERVISOR_VPN_CONTROL";

/// The device's config variables as v19 shows them in a target it has not been given (the
/// local target of a fresh device, which balena-cli sends back with every push): every
/// variable of table 3.1 in v19's order, the stored value else the default, with local mode
/// and the VPN as they are now. v19 has no default firewall mode: unset shows as "".
pub fn current_as_target(
    stored: &BTreeMap<&'static str, String>,
    local_mode: bool,
    vpn_on: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for v in VARS {
        let value = match stored.get(v.env) {
            Some(s) => s.clone(),
            None if v.env == "HOST_FIREWALL_MODE" => String::new(),
            None => v.default.to_string(),
        };
        out.insert(v.env.into(), value.into());
        if v.env == "SUPERVISOR_INSTANT_UPDATE_TRIGGER" {
            out.insert(
                "SUPERVISOR_LOCAL_MODE".into(),
                local_mode.to_string().into(),
            );
        }
    }
    out.insert(VPN_CONTROL.into(), vpn_on.to_string().into());
    out
}

/// v19's checkTruthy: `1`, `true`, `on` in any case.
fn truthy(v: &str) -> bool {
    crate::config::config_json::str_as_bool(v) == Some(true)
}

/// Is `v` a valid value of its kind (PermissiveBoolean / PermissiveNumber / the words)?
fn valid(kind: Kind, v: &str) -> bool {
    match kind {
        Kind::Bool => {
            truthy(v)
                || matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "off"
                )
        }
        // parseInt semantics: a leading integer is enough.
        Kind::Int => leading_int(v).is_some(),
        // Unset (""), as v19 shows an unset firewall mode and balena-cli sends it back.
        Kind::Word(words) => v.is_empty() || words.contains(&v),
    }
}

fn leading_int(v: &str) -> Option<i64> {
    let t = v.trim_start();
    let end = t
        .char_indices()
        .take_while(|(i, c)| c.is_ascii_digit() || (*i == 0 && (*c == '-' || *c == '+')))
        .map(|(i, c)| i + c.len_utf8())
        .last()?;
    t[..end].parse().ok()
}

/// Equal as their kind compares them (bool: truthiness; int: value; words: text).
fn same(kind: Kind, a: &str, b: &str) -> bool {
    match kind {
        Kind::Bool => truthy(a) == truthy(b),
        Kind::Int => match (leading_int(a), leading_int(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        Kind::Word(_) => a == b,
    }
}

/// The value as it is stored: booleans as `true`/`false`, integers as digits.
pub fn canonical(kind: Kind, v: &str) -> String {
    match kind {
        Kind::Bool => truthy(v).to_string(),
        Kind::Int => leading_int(v).map_or_else(|| v.to_string(), |n| n.to_string()),
        Kind::Word(_) => v.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub var: ConfigVar,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigStep {
    /// Supervisor config variables, all in one step.
    ChangeConfig { changes: Vec<Change> },
    /// Start or stop the host's `openvpn.service`.
    SetVpn { enable: bool },
    /// Write every active backend from the target's variables.
    SetBootConfig { target: BTreeMap<String, String> },
    /// Touch the reboot breadcrumb (the device reboots once nothing else is left to do).
    RebootBreadcrumb { reason: String },
}

/// What the device has now.
pub struct Current<'a> {
    /// Supervisor config values by variable name (absent: never set, i.e. the default).
    pub vars: BTreeMap<&'static str, String>,
    /// Is openvpn active? `None` when the host cannot be asked (no system bus).
    pub vpn_active: Option<bool>,
    /// Each active backend with what it reads now.
    pub boot: Vec<(&'a dyn BootKeys, BootConfig)>,
}

/// The plan of one iteration, and warnings to log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<ConfigStep>,
    pub warnings: Vec<String>,
}

/// Device-config steps (§1.2): supervisor variables first, then the VPN; boot config only
/// when neither has anything to do. `vpn_recently_tried`: a VPN step ran within the hour.
pub fn plan(
    target: &BTreeMap<String, String>,
    current: &Current,
    device_type: &str,
    managed: bool,
    vpn_recently_tried: bool,
) -> Result<Plan, String> {
    let mut out = Plan::default();
    let mut changes = Vec::new();
    for v in VARS {
        let now = current.vars.get(v.env).map_or(v.default, String::as_str);
        let wanted = target.get(v.env).map_or(v.default, String::as_str);
        if same(v.kind, now, wanted) {
            continue;
        }
        if valid(v.kind, wanted) {
            changes.push(Change {
                var: *v,
                value: canonical(v.kind, wanted),
            });
        } else {
            out.warnings.push(format!(
                "Warning: Ignoring invalid device configuration value for {}, value: {wanted}. Falling back to default ({})",
                v.env, v.default
            ));
            if !same(v.kind, now, v.default) {
                changes.push(Change {
                    var: *v,
                    value: v.default.to_string(),
                });
            }
        }
    }
    if !changes.is_empty() {
        let rebooting: Vec<&Change> = changes.iter().filter(|c| c.var.reboot).collect();
        if !rebooting.is_empty() {
            let reason: BTreeMap<&str, &str> = rebooting
                .iter()
                .map(|c| (c.var.key, c.value.as_str()))
                .collect();
            out.steps.push(ConfigStep::RebootBreadcrumb {
                reason: serde_json::to_string(&reason).unwrap_or_default(),
            });
        }
        out.steps.push(ConfigStep::ChangeConfig { changes });
    }
    // The VPN is on unless the target says otherwise; one attempt an hour.
    if managed && !vpn_recently_tried {
        let wanted = target
            .get(VPN_CONTROL)
            .is_none_or(|v| v.is_empty() || truthy(v));
        if let Some(active) = current.vpn_active {
            if active != wanted {
                out.steps.push(ConfigStep::SetVpn { enable: wanted });
            }
        }
    }
    if !out.steps.is_empty() {
        return Ok(out);
    }
    let mut boot_change = false;
    let mut reboot = false;
    for (backend, now) in &current.boot {
        let Some(wanted) = backend_target(*backend, target, device_type, now) else {
            continue;
        };
        if boot_keys::change_required(*backend, now, &wanted).map_err(|e| e.0)? {
            boot_change = true;
            reboot |= backend.reboot_required(now, &wanted);
        }
    }
    if boot_change {
        if reboot {
            out.steps.push(ConfigStep::RebootBreadcrumb {
                reason: "{}".into(),
            });
        }
        let boot_target = target
            .iter()
            .filter(|(k, _)| k.starts_with(boot_keys::HOST_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.steps.push(ConfigStep::SetBootConfig {
            target: boot_target,
        });
    }
    Ok(out)
}

/// What a backend should hold for `target`; `None` when the target says nothing about it and
/// it holds something: it is left alone (see docs/decisions.md — without v19's initial config
/// report to the cloud, a target without them would wipe a device's boot settings).
pub fn backend_target(
    backend: &dyn BootKeys,
    target: &BTreeMap<String, String>,
    device_type: &str,
    now: &BootConfig,
) -> Option<BootConfig> {
    let mut wanted = boot_keys::env_to_boot(backend, target);
    if wanted.is_empty() && !now.is_empty() {
        return None;
    }
    backend.ensure_required(device_type, &mut wanted);
    Some(wanted)
}

/// The config change as the log shows it: `{"SUPERVISOR_POLL_INTERVAL":"600000"}`.
pub fn human_readable(changes: &[Change]) -> String {
    let map: BTreeMap<&str, &str> = changes
        .iter()
        .map(|c| (c.var.env, c.value.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests;
