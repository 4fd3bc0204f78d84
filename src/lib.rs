//! tinyvisor: a small, synchronous re-implementation of the balena Supervisor.
//! See ARCHITECTURE.md for the map of modules, threads and channels.

pub mod api;
pub mod balena_api;
pub mod boot_config;
pub mod bundle;
pub mod cloud;
pub mod compose;
pub mod config;
pub mod db;
pub mod dbus;
pub mod dry_run;
pub mod encoding;
pub mod engine;
pub mod firewall;
pub mod fsutil;
pub mod host;
pub mod host_config;
pub mod http;
pub mod local_api;
pub mod localtime;
pub mod locks;
pub mod logs;
pub mod planner;
pub mod protocol;
pub mod state;
pub mod systemd;
pub mod tar;

#[cfg(test)]
pub(crate) mod testutil;

/// Our own version, as printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The balena Supervisor version whose behaviour we implement; reported wherever the real one
/// reports its version (contracts, cloud, `/v2/version`), with our own as build metadata so
/// semver comparisons treat us as that version.
pub const SUPERVISOR_VERSION: &str = concat!("19.0.5+tinyvisor.", env!("CARGO_PKG_VERSION"));
