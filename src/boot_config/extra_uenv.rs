//! Newer Jetson and i.MX8 `extra_uEnv.txt` (docs/contract/device-config.md §2.3):
//! `HOST_EXTLINUX_fdt` as `custom_fdt_file`, `HOST_EXTLINUX_isolcpus` inside `extra_os_cmdline`.
//! Other entries are kept in order; the two managed ones are set from the target or deleted.

use super::extlinux::{supports, PREFIX};
use super::{
    err, read_optional, write_file, Backend, BootConfig, BootError, BootKeys, BootValue, Mounts,
};

pub struct ExtraUEnv;

const FILE: &str = "extra_uEnv.txt";

pub fn matches(device_type: &str, boot: &std::path::Path) -> bool {
    let name_matches = ["-nano", "-nano-emmc", "-nano-2gb-devkit", "-tx2"]
        .iter()
        .any(|s| device_type.ends_with(s))
        || [
            "-tx2-nx",
            "-agx-orin-",
            "-orin-nx-",
            "-orin-nano-",
            "imx8mm-var-som",
        ]
        .iter()
        .any(|s| device_type.contains(s))
        || device_type == "iot-gate-imx8plus"
        || device_type == "iot-gate-imx8plus-d1d8"
        || device_type.contains("imx8m-var-dart")
        || device_type.contains("imx8mm-var-dart");
    name_matches && boot.join(FILE).is_file()
}

fn entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

impl BootKeys for ExtraUEnv {
    fn name(&self) -> &'static str {
        "extra_uEnv"
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn is_supported(&self, key: &str) -> bool {
        supports(key)
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        for (k, v) in target {
            match v {
                BootValue::Str(v) if !v.contains(|c: char| c == '=' || c.is_whitespace()) => {}
                _ => return Err(err(format!("Invalid value for {k}"))),
            }
        }
        Ok(())
    }
}

impl Backend for ExtraUEnv {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let text = read_optional(&m.boot.join(FILE))?
            .ok_or_else(|| err(format!("Could not find {FILE}")))?;
        let mut cfg = BootConfig::new();
        for (k, v) in entries(&text) {
            match k.as_str() {
                "custom_fdt_file" => {
                    cfg.insert("fdt".into(), BootValue::Str(v));
                }
                "extra_os_cmdline" => {
                    for t in v.split_whitespace() {
                        if let Some(c) = t.strip_prefix("isolcpus=") {
                            cfg.insert("isolcpus".into(), BootValue::Str(c.into()));
                        } else if t == "isolcpus" {
                            cfg.insert("isolcpus".into(), BootValue::Str(String::new()));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let file = m.boot.join(FILE);
        let text = read_optional(&file)?.ok_or_else(|| err(format!("Could not find {FILE}")))?;
        let mut out: Vec<(String, String)> = entries(&text)
            .into_iter()
            .filter(|(k, _)| k != "custom_fdt_file" && k != "extra_os_cmdline")
            .collect();
        if let Some(BootValue::Str(fdt)) = target.get("fdt") {
            out.push(("custom_fdt_file".into(), fdt.clone()));
        }
        if let Some(BootValue::Str(cpus)) = target.get("isolcpus") {
            let token = if cpus.is_empty() {
                "isolcpus".to_string()
            } else {
                format!("isolcpus={cpus}")
            };
            out.push(("extra_os_cmdline".into(), token));
        }
        let body: String = out.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        write_file(&file, body.as_bytes())
    }
}
