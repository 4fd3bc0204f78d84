//! Why a step (or the iteration around it) failed, typed: the loop tells an update lock (not
//! our error: retried with backoff, logged as v19 does) from failures of the engine, the
//! database or the host, without reading texts.

use crate::engine::EngineError;
use crate::locks::LockError;

/// What failed.
#[derive(Debug)]
pub enum Failure {
    /// An app holds its update lock.
    Locked(String),
    Engine(EngineError),
    Database(crate::db::Error),
    /// A pull or a delta failed (the text is v19's `Failed to download ...`).
    Download(String),
    /// Files on the host: lock files, breadcrumbs, config.json, boot config.
    Host(String),
    /// The step cannot be taken as things are (a dependency that will not start, an object
    /// of the same name with another configuration); the text says why.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Locked(m) | Failure::Download(m) | Failure::Host(m) | Failure::Refused(m) => {
                f.write_str(m)
            }
            Failure::Engine(e) => e.fmt(f),
            Failure::Database(e) => e.fmt(f),
        }
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Engine(e)
    }
}

impl From<crate::db::Error> for Failure {
    fn from(e: crate::db::Error) -> Self {
        Failure::Database(e)
    }
}

impl From<LockError> for Failure {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Held { .. } => Failure::Locked(e.to_string()),
            LockError::Io { .. } => Failure::Host(e.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Host(e.to_string())
    }
}

impl From<crate::config::config_json::ConfigError> for Failure {
    fn from(e: crate::config::config_json::ConfigError) -> Self {
        Failure::Host(e.to_string())
    }
}

/// A failure and the step it stopped.
#[derive(Debug)]
pub struct StepError {
    pub step: String,
    pub failure: Failure,
}

impl StepError {
    pub fn new(step: impl Into<String>, failure: Failure) -> StepError {
        StepError {
            step: step.into(),
            failure,
        }
    }

    /// The app holds its update lock: retried with backoff, not counted as our error.
    pub fn is_locked(&self) -> bool {
        matches!(self.failure, Failure::Locked(_))
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_locked_and_reads_as_v19s_text() {
        let held = LockError::Held {
            app_id: 1,
            service: "main".into(),
        };
        let e = StepError::new("takeLock", held.into());
        assert!(e.is_locked());
        assert_eq!(
            e.to_string(),
            "takeLock: Lockfile exists for { appId: 1, service: main }"
        );
        let io = LockError::Io {
            path: "/x".into(),
            source: std::io::Error::other("denied"),
        };
        assert!(!StepError::new("takeLock", io.into()).is_locked());
    }
}
