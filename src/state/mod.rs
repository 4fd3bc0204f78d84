//! The state engine: reads the device's current state and (with the state-engine issue)
//! drives it towards the target.

pub mod actions;
pub mod apply;
mod bundle;
mod bundle_import;
mod commands;
pub mod device;
pub mod device_config;
pub mod events;
pub mod executor;
mod host_config;
pub mod hostos;
mod keys;
pub mod local_mode;
mod mode;
pub mod power;
pub mod preload;
mod run_loop;
pub mod schedule;
pub mod snapshot;
pub mod step_error;
mod tags;
pub mod target;
pub mod trial;
mod volumes;
pub mod window;

pub use snapshot::EngineSnapshot;

/// The `SUPERVISOR_OVERRIDE_LOCK` config variable (legacy `OVERRIDE_LOCK`) of a target, whose
/// names are stored without their `BALENA_`/`RESIN_` prefix.
pub fn lock_override(target: &crate::compose::target::TargetState) -> bool {
    ["SUPERVISOR_OVERRIDE_LOCK", "OVERRIDE_LOCK"]
        .iter()
        .any(|k| crate::compose::labels::truthy(target.config.get(*k)))
}
