//! UP board ACPI tables (docs/contract/device-config.md §2.4): `HOST_CONFIGFS_ssdt` kept in
//! `<boot>/configfs.json`. Loading the tables into `/sys/kernel/config` at start (v19's
//! `initialise`) needs the board's kernel and is not done here; the setting takes effect at
//! the next boot, when the OS loads them.

use super::{err, list_value, read_optional, write_file, Backend, BootConfig, BootError, BootKeys};
use super::{BootValue, Mounts};

pub struct ConfigFs;

const PREFIX: &str = "HOST_CONFIGFS_";

impl BootKeys for ConfigFs {
    fn name(&self) -> &'static str {
        "configfs"
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn value_of(&self, _key: &str, env_value: &str) -> BootValue {
        BootValue::List(list_value(env_value))
    }
    fn is_supported(&self, key: &str) -> bool {
        key == "ssdt"
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        // Table names become file names under /boot/acpi-tables.
        let names = match target.get("ssdt") {
            Some(BootValue::List(l)) => l.clone(),
            _ => Vec::new(),
        };
        match names.iter().find(|n| {
            n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || n.starts_with('.')
        }) {
            Some(bad) => Err(err(format!("Invalid ACPI table name: {bad:?}"))),
            None => Ok(()),
        }
    }
}

impl Backend for ConfigFs {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let text = read_optional(&m.boot.join("configfs.json"))?.unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ssdt: Vec<String> = doc
            .get("ssdt")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut cfg = BootConfig::new();
        if !ssdt.is_empty() {
            cfg.insert("ssdt".into(), BootValue::List(ssdt));
        }
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let file = m.boot.join("configfs.json");
        let text = read_optional(&file)?.unwrap_or_default();
        let mut doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_default();
        match target.get("ssdt") {
            Some(BootValue::List(l)) if !l.is_empty() => {
                doc.insert("ssdt".into(), serde_json::json!(l));
            }
            _ => {
                doc.remove("ssdt");
            }
        }
        write_file(&file, serde_json::Value::Object(doc).to_string().as_bytes())
    }
}
