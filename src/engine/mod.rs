//! Engine client: the only module that speaks the Docker/balenaEngine HTTP API.

mod client;
mod error;
pub mod stream;
pub mod types;

pub use client::{
    base64url, label_filters, percent_encode, registry_auth, registry_token_auth, split_reference,
    Engine, LogsOptions, Query, Response,
};
pub use error::{EngineError, Result};
