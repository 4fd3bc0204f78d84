//! Boot-config backends (docs/contract/device-config.md §2): the `HOST_*` config variables that end
//! up in files on the boot partition (config.txt, extlinux.conf, extra_uEnv.txt, configfs.json, the
//! splash logo), in raw bytes of the TX2's boot sector (odmdata), or in config.json (Orin power and
//! fan modes).
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
pub use crate::planner::boot_keys::{
    boot_to_env, change_required, env_to_boot, BootConfig, BootError, BootKeys, BootValue,
    HOST_PREFIX,
};
pub(crate) use crate::planner::boot_keys::{err, list_value};
use std::path::{Path, PathBuf};

/// Where a backend finds its files.
pub struct Mounts<'a> {
    pub boot: PathBuf,
    pub root: PathBuf,
    pub config_json: &'a ConfigJson,
}

/// A boot-config backend: its keys (the pure part the plan uses) and the files it reads and
/// writes.
pub trait Backend: BootKeys {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError>;
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError>;
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
    let all: [&dyn BootKeys; 7] = [
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
