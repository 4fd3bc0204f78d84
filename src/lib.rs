//! tinyvisor: a small, synchronous re-implementation of the balena Supervisor.
//! See ARCHITECTURE.md for the map of modules, threads and channels.

pub mod compose;
pub mod config;
pub mod dry_run;
pub mod engine;
pub mod fsutil;
pub mod planner;
pub mod state;

#[cfg(test)]
pub(crate) mod testutil;

/// Our own version, as printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
