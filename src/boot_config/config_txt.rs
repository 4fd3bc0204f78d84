//! Raspberry Pi `config.txt` (docs/contract/device-config.md §2.1), `HOST_CONFIG_<key>` variables.
//!
//! Reading follows v19 exactly (arrays, overlay grouping, `initramfs`). Writing differs on
//! purpose: v19 regenerates the whole file and loses comments and lines it cannot parse; we
//! edit it in place — comments, blank lines and unknown lines stay where they were, a changed
//! value is replaced on its own line, a key the target no longer has is dropped, new keys are
//! appended, and the device-tree lines (dtparam/dtoverlay/...) are rewritten as one block in
//! v19's layout only when they changed. The settings that result are the same as v19's.

use super::{err, list_value, read_optional, write_file, Backend, BootConfig, BootError, BootKeys};
use super::{BootValue, Mounts};

pub struct ConfigTxt;

const PREFIX: &str = "HOST_CONFIG_";
const ARRAY_KEYS: &[&str] = &[
    "dtparam",
    "dtoverlay",
    "device_tree_param",
    "device_tree_overlay",
    "gpio",
];
const BASE_DTPARAMS: &[&str] = &[
    "audio",
    "spi",
    "i2c",
    "i2c_arm",
    "i2c_vc",
    "i2c_baudrate",
    "i2c_arm_baudrate",
    "i2c_vc_baudrate",
];
const FORBIDDEN: &[&str] = &[
    "disable_commandline_tags",
    "cmdline",
    "kernel",
    "kernel_address",
    "kernel_old",
    "ramfsfile",
    "ramfsaddr",
    "initramfs",
    "device_tree_address",
    "init_emmc_clock",
    "avoid_safe_mode",
    "power_mode",
    "fan_profile",
];
const DEVICE_TYPES: &[&str] = &[
    "fincm3",
    "rt-rpi-300",
    "243390-rpi3",
    "nebra-hnt",
    "revpi-connect",
    "revpi-connect-s",
    "revpi-core-3",
    "revpi-connect-4",
];

pub fn matches(device_type: &str) -> bool {
    device_type.starts_with("raspberry") || DEVICE_TYPES.contains(&device_type)
}

fn path(m: &Mounts) -> std::path::PathBuf {
    m.boot.join("config.txt")
}

fn is_base_dtparam(p: &str) -> bool {
    let name = p.split_once('=').map_or(p, |(n, _)| n);
    BASE_DTPARAMS.contains(&name.trim())
}

/// What one line of config.txt is.
enum Line<'a> {
    /// Blank, comment, or a line v19 cannot parse: kept verbatim.
    Keep,
    Scalar(&'a str, &'a str),
    Array(&'a str, &'a str),
}

fn classify(line: &str) -> Line<'_> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Line::Keep;
    }
    if let Some((k, v)) = t.split_once('=') {
        let k = k.trim();
        return if ARRAY_KEYS.contains(&k) {
            Line::Array(k, v.trim())
        } else {
            Line::Scalar(k, v.trim())
        };
    }
    if let Some(rest) = t.strip_prefix("initramfs ") {
        return Line::Scalar("initramfs", rest.trim());
    }
    Line::Keep
}

/// Parses config.txt as v19 does.
pub fn parse(text: &str) -> BootConfig {
    let mut scalars: BootConfig = BootConfig::new();
    let mut lists: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    // dtoverlay entries with their params: "name,p1,p2".
    let mut overlays: Vec<Vec<String>> = Vec::new();
    for line in text.lines() {
        match classify(line) {
            Line::Keep => {
                let t = line.trim();
                if !t.is_empty() && !t.starts_with('#') {
                    log::warn!("Could not parse config.txt entry: {t}");
                }
            }
            Line::Scalar(k, v) => {
                scalars.insert(k.to_string(), BootValue::Str(v.to_string()));
            }
            Line::Array("dtoverlay", v) => {
                overlays.push(v.split(',').map(|s| s.trim().to_string()).collect());
            }
            Line::Array("dtparam", v) => {
                for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match overlays.last_mut() {
                        Some(o) if !is_base_dtparam(p) => o.push(p.to_string()),
                        _ => lists.entry("dtparam").or_default().push(p.to_string()),
                    }
                }
            }
            Line::Array(k, v) => lists.entry(k).or_default().push(v.to_string()),
        }
    }
    for (k, v) in lists {
        scalars.insert(k.to_string(), BootValue::List(v));
    }
    if !overlays.is_empty() {
        let joined = overlays.into_iter().map(|o| o.join(",")).collect();
        scalars.insert("dtoverlay".into(), BootValue::List(joined));
    }
    scalars
}

/// The device-tree lines of a config in v19's layout: base dtparams, the other lists, then
/// each overlay followed by its params.
fn array_lines(cfg: &BootConfig) -> Vec<String> {
    let list = |k: &str| match cfg.get(k) {
        Some(BootValue::List(v)) => v.clone(),
        Some(BootValue::Str(s)) => vec![s.clone()],
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for k in ARRAY_KEYS.iter().filter(|k| **k != "dtoverlay") {
        out.extend(list(k).into_iter().map(|v| format!("{k}={v}")));
    }
    for entry in list("dtoverlay") {
        let mut parts = entry.split(',').map(str::trim).filter(|p| !p.is_empty());
        if let Some(name) = parts.next() {
            out.push(format!("dtoverlay={name}"));
            out.extend(parts.map(|p| format!("dtparam={p}")));
        }
    }
    out
}

fn scalar_line(k: &str, v: &str) -> String {
    if k == "initramfs" {
        format!("initramfs {v}")
    } else {
        format!("{k}={v}")
    }
}

/// Edits `text` so that it parses to `target` (see the module comment).
pub fn render(text: &str, target: &BootConfig) -> String {
    let current = parse(text);
    let arrays_changed = ARRAY_KEYS.iter().any(|k| current.get(*k) != target.get(*k));
    let mut out: Vec<String> = Vec::new();
    let mut emitted = std::collections::BTreeSet::new();
    let mut arrays_emitted = false;
    for line in text.lines() {
        match classify(line) {
            Line::Keep => out.push(line.to_string()),
            Line::Scalar(k, _) => {
                if emitted.contains(k) {
                    continue;
                }
                if let Some(BootValue::Str(v)) = target.get(k) {
                    emitted.insert(k.to_string());
                    out.push(scalar_line(k, v));
                }
            }
            Line::Array(..) if !arrays_changed => out.push(line.to_string()),
            Line::Array(..) => {
                if !arrays_emitted {
                    arrays_emitted = true;
                    out.extend(array_lines(target));
                }
            }
        }
    }
    for (k, v) in target {
        if let BootValue::Str(v) = v {
            if !ARRAY_KEYS.contains(&k.as_str()) && !emitted.contains(k) {
                out.push(scalar_line(k, v));
            }
        }
    }
    if arrays_changed && !arrays_emitted {
        out.extend(array_lines(target));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Puts the device-tree lists in the form reading the file back gives (blank and empty entries
/// dropped, comma-joined dtparams split, base params of an overlay moved to `dtparam`), so a
/// target equal in effect to the file compares equal. Values that would break lines are left
/// for `validate` to refuse.
fn canonical_arrays(target: &mut BootConfig) {
    let arrays: BootConfig = target
        .iter()
        .filter(|(k, _)| ARRAY_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let breaks_lines = arrays.values().any(|v| match v {
        BootValue::Str(s) => s.contains(['\n', '\r']),
        BootValue::List(l) => l.iter().any(|s| s.contains(['\n', '\r'])),
    });
    if breaks_lines {
        return;
    }
    target.retain(|k, _| !ARRAY_KEYS.contains(&k.as_str()));
    target.extend(parse(&array_lines(&arrays).join("\n")));
}

impl BootKeys for ConfigTxt {
    fn name(&self) -> &'static str {
        "config.txt"
    }
    fn is_boot_config_var(&self, env_name: &str) -> bool {
        env_name
            .strip_prefix(PREFIX)
            .is_some_and(|k| !k.is_empty() && k != "power_mode" && k != "fan_profile")
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn value_of(&self, key: &str, env_value: &str) -> BootValue {
        if ARRAY_KEYS.contains(&key) {
            BootValue::List(list_value(env_value))
        } else {
            // The file keeps no surrounding blanks: neither does the target.
            BootValue::Str(env_value.trim().to_string())
        }
    }
    fn is_supported(&self, key: &str) -> bool {
        !FORBIDDEN.contains(&key)
    }
    fn ensure_required(&self, device_type: &str, target: &mut BootConfig) {
        canonical_arrays(target);
        if device_type != "fincm3" {
            return;
        }
        let mut overlays = match target.remove("dtoverlay") {
            Some(BootValue::List(v)) => v,
            Some(BootValue::Str(s)) => vec![s],
            None => Vec::new(),
        };
        overlays.retain(|o| !o.trim().is_empty());
        if !overlays
            .iter()
            .any(|o| o.split(',').next() == Some("balena-fin"))
        {
            overlays.push("balena-fin".into());
        }
        target.insert("dtoverlay".into(), BootValue::List(overlays));
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        for (k, v) in target {
            let ok_key = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok_key {
                return Err(err(format!("Invalid config.txt key: {k:?}")));
            }
            let values = match v {
                BootValue::Str(s) => vec![s.as_str()],
                BootValue::List(l) => l.iter().map(String::as_str).collect(),
            };
            if values.iter().any(|s| s.contains(['\n', '\r'])) {
                return Err(err(format!("Invalid value for config.txt key {k}")));
            }
        }
        Ok(())
    }
}

impl Backend for ConfigTxt {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        Ok(read_optional(&path(m))?
            .map(|t| parse(&t))
            .unwrap_or_default())
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let text = read_optional(&path(m))?.unwrap_or_default();
        write_file(&path(m), render(&text, target).as_bytes())
    }
}
