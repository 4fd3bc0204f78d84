//! Jetson Orin power and fan modes (docs/contract/device-config.md §2.7): `HOST_CONFIG_power_mode`
//! and `HOST_CONFIG_fan_profile` as config.json `os.power.mode` and `os.fan.profile`, read by
//! balenaOS at boot. Only a power mode change needs a reboot.

use super::{err, Backend, BootConfig, BootError, BootKeys, BootValue, Mounts};
use serde_json::{json, Value};

pub struct PowerFan;

const PREFIX: &str = "HOST_CONFIG_";

fn key(env_name: &str) -> Option<&'static str> {
    let suffix = env_name.strip_prefix(PREFIX)?;
    if suffix.eq_ignore_ascii_case("power_mode") {
        Some("power_mode")
    } else if suffix.eq_ignore_ascii_case("fan_profile") {
        Some("fan_profile")
    } else {
        None
    }
}

impl BootKeys for PowerFan {
    fn name(&self) -> &'static str {
        "power-fan"
    }
    fn is_boot_config_var(&self, env_name: &str) -> bool {
        key(env_name).is_some()
    }
    fn key_of(&self, env_name: &str) -> String {
        key(env_name).unwrap_or_default().to_string()
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn is_supported(&self, key: &str) -> bool {
        key == "power_mode" || key == "fan_profile"
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        for (k, v) in target {
            match v {
                BootValue::Str(s) if s.len() <= 64 && !s.chars().any(char::is_control) => {}
                _ => return Err(err(format!("Invalid value for {k}"))),
            }
        }
        Ok(())
    }
    fn reboot_required(&self, current: &BootConfig, target: &BootConfig) -> bool {
        current.get("power_mode") != target.get("power_mode")
    }
}

impl Backend for PowerFan {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let os = m
            .config_json
            .snapshot()
            .get("os")
            .cloned()
            .unwrap_or_default();
        let mut cfg = BootConfig::new();
        for (k, ptr) in [
            ("power_mode", "/power/mode"),
            ("fan_profile", "/fan/profile"),
        ] {
            if let Some(v) = os.pointer(ptr).and_then(Value::as_str) {
                cfg.insert(k.into(), BootValue::Str(v.into()));
            }
        }
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let mut os = match m.config_json.snapshot().get("os") {
            Some(Value::Object(o)) => o.clone(),
            _ => serde_json::Map::new(),
        };
        for (k, section, field) in [
            ("power_mode", "power", "mode"),
            ("fan_profile", "fan", "profile"),
        ] {
            match target.get(k) {
                Some(BootValue::Str(v)) => {
                    os.insert(section.into(), json!({ field: v }));
                }
                _ => {
                    os.remove(section);
                }
            }
        }
        m.config_json
            .update(&[("os", Some(Value::Object(os)))])
            .map(drop)
            .map_err(|e| err(format!("cannot write config.json: {e}")))
    }
}
