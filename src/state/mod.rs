//! The state engine: reads the device's current state and (with the state-engine issue)
//! drives it towards the target.

pub mod actions;
pub mod apply;
pub mod device;
pub mod executor;
pub mod preload;
pub mod snapshot;
pub mod target;

pub use snapshot::EngineSnapshot;
