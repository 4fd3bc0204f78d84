//! The boot splash logo (docs/contract/device-config.md §2.6): `HOST_SPLASH_image`, a PNG as a data
//! URI or plain base64, in `<boot>/splash/balena-logo.png` (or the legacy `resin-logo.png`). The
//! logo the OS shipped is kept as `balena-logo-default.png`; "unset" means that one.

use super::{
    err, read_bytes, write_file, Backend, BootConfig, BootError, BootKeys, BootValue, Mounts,
};
use crate::encoding::{base64, base64_decode};

pub struct SplashImage;

const PREFIX: &str = "HOST_SPLASH_";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const DEFAULT: &str = "balena-logo-default.png";

fn dir(m: &Mounts) -> std::path::PathBuf {
    m.boot.join("splash")
}

/// The logo file the OS shows: balena-logo.png, else resin-logo.png if only that exists.
fn active(m: &Mounts) -> std::path::PathBuf {
    let d = dir(m);
    if !d.join("balena-logo.png").exists() && d.join("resin-logo.png").exists() {
        d.join("resin-logo.png")
    } else {
        d.join("balena-logo.png")
    }
}

/// `data:<mime>[;params];base64,<data>` becomes `data:<mime>;base64,<data>`; plain text is
/// taken as base64 PNG; empty stays empty.
pub fn normalise(value: &str) -> String {
    let v = value.trim();
    if v.is_empty() {
        return String::new();
    }
    if let Some(rest) = v.strip_prefix("data:") {
        if let Some((head, data)) = rest.split_once(',') {
            let mime = head.split(';').next().unwrap_or_default();
            return format!("data:{mime};base64,{data}");
        }
    }
    format!("data:image/png;base64,{v}")
}

fn png_of(uri: &str) -> Result<Vec<u8>, BootError> {
    let data = uri.split_once(',').map_or(uri, |(_, d)| d);
    let bytes = base64_decode(data).ok_or_else(|| err("The splash image is not valid base64"))?;
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(err("The splash image is not a PNG"));
    }
    Ok(bytes)
}

impl BootKeys for SplashImage {
    fn name(&self) -> &'static str {
        "splash"
    }
    fn is_boot_config_var(&self, env_name: &str) -> bool {
        env_name
            .strip_prefix(PREFIX)
            .is_some_and(|k| k.eq_ignore_ascii_case("image"))
    }
    fn key_of(&self, _env_name: &str) -> String {
        "image".into()
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn value_of(&self, _key: &str, env_value: &str) -> BootValue {
        BootValue::Str(normalise(env_value))
    }
    fn is_supported(&self, key: &str) -> bool {
        key == "image"
    }
    fn ensure_required(&self, _device_type: &str, target: &mut BootConfig) {
        // An empty value means the default logo, which reads as "no setting".
        if target.get("image") == Some(&BootValue::Str(String::new())) {
            target.remove("image");
        }
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        match target.get("image") {
            Some(BootValue::Str(uri)) if !uri.is_empty() => png_of(uri).map(drop),
            _ => Ok(()),
        }
    }
}

impl Backend for SplashImage {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let d = dir(m);
        let current = read_bytes(&active(m))?;
        // The first look keeps what the OS shipped as the default.
        if !d.join(DEFAULT).exists() {
            if let Some(bytes) = &current {
                write_file(&d.join(DEFAULT), bytes)?;
            }
        }
        let default = read_bytes(&d.join(DEFAULT))?;
        let mut cfg = BootConfig::new();
        if let Some(bytes) = current.filter(|c| Some(c) != default.as_ref()) {
            cfg.insert(
                "image".into(),
                BootValue::Str(format!("data:image/png;base64,{}", base64(&bytes))),
            );
        }
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let bytes = match target.get("image") {
            Some(BootValue::Str(uri)) if !uri.is_empty() => png_of(uri)?,
            _ => match read_bytes(&dir(m).join(DEFAULT))? {
                Some(b) => b,
                // No default known (no logo ever existed): nothing to restore.
                None => return Ok(()),
            },
        };
        write_file(&active(m), &bytes)
    }
}
