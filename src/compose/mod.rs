//! The compose model: the v3 target state, services, networks and volumes, and how they map
//! to and from engine objects.

pub mod composition;
pub mod contracts;
pub mod hostapp;
pub mod image;
pub mod labels;
pub mod network;
pub mod policy;
pub mod service;
pub mod target;
pub mod volume;

pub use image::ImageRef;
pub use network::Network;
pub use service::{Service, ServiceConfig, ServiceStatus};
pub use target::{TargetError, TargetState};
pub use volume::Volume;

#[cfg(test)]
mod tests;
