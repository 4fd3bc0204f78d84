//! What the state engine does with each command of the channel protocol (`protocol.rs`),
//! between iterations. A handler replies on the command's own channel and tells the loop
//! whether an iteration should follow.

use super::apply::StateEngine;
use super::run_loop::LoopState;
use crate::compose::target::TargetState;
use crate::protocol::{AppState, Command, TargetNotSet, LOCAL_SOURCE};
use crossbeam_channel::Sender;
use std::sync::Arc;
use std::time::Instant;

/// What the loop does after a command.
pub(super) enum Next {
    Stop,
    /// Wait for the next wake-up (the command changed nothing the apps depend on).
    Wait,
    /// Iterate now (or when due).
    Iterate,
}

impl StateEngine {
    pub(super) fn handle_command(&mut self, cmd: Command, l: &mut LoopState) -> Next {
        let target = l.target.as_ref();
        let lock_override = target.is_some_and(super::lock_override);
        match cmd {
            Command::Shutdown => Next::Stop,
            Command::RegenerateApiKey { old, reply } => {
                let result = self.regenerate_api_key(old);
                if result.is_ok() {
                    // A service whose key changed is recreated with the new one now, rather
                    // than holding a dead key until the next poll.
                    l.due = Instant::now();
                }
                let _ = reply.send(result.map_err(|e| e.to_string()));
                Next::Wait
            }
            Command::CleanupVolumes { reply } => {
                let _ = reply.send(self.cleanup_volumes(target).map_err(|e| e.to_string()));
                Next::Wait
            }
            Command::SetTags { tags, reply } => {
                let _ = reply.send(self.set_tags(tags).map_err(|e| e.to_string()));
                Next::Wait
            }
            Command::HostConfig {
                patch,
                force,
                reply,
            } => {
                let _ = reply.send(self.host_config(&patch, force || lock_override));
                Next::Wait
            }
            Command::Power {
                action,
                force,
                reply,
            } => {
                let _ = self.power(action, force || lock_override, |r| {
                    let _ = reply.send(r);
                });
                Next::Wait
            }
            Command::GetTarget { reply } => {
                let _ = reply.send(l.target.clone());
                iterate_if_due(l)
            }
            Command::CurrentConfig { reply } => {
                let _ = reply.send(self.current_config_as_target());
                iterate_if_due(l)
            }
            Command::AppAction {
                app_id,
                action,
                force,
                reply,
            } => {
                let result = self.run_action(
                    app_id,
                    &format!("App action {action:?}"),
                    |actions, held| actions.run_app(app_id, action, force, target, held),
                );
                let _ = reply.send(result);
                Next::Iterate
            }
            Command::ServiceAction {
                app_id,
                which,
                action,
                force,
                reply,
            } => {
                let result = self.run_action(
                    app_id,
                    &format!("Service action {action:?}"),
                    |actions, held| actions.run(app_id, &which, action, force, target, held),
                );
                let _ = reply.send(result);
                Next::Iterate
            }
            Command::ImportBundle { body, reply } => {
                self.import_bundle(body, reply);
                Next::Wait
            }
            Command::ScanBundles => {
                self.scan_bundles();
                Next::Wait
            }
            Command::SetTarget {
                state,
                source,
                force,
                reply,
            } => self.set_target(state, &source, force, &reply, l),
        }
    }

    /// A new target from the cloud or the local API: stored before anything is applied (a
    /// power cut resumes towards it), then applied.
    fn set_target(
        &mut self,
        state: TargetState,
        source: &str,
        force: bool,
        reply: &Sender<Result<(), TargetNotSet>>,
        l: &mut LoopState,
    ) -> Next {
        if let Some(digest) = self.bundles.in_force.take() {
            super::bundle::note_target_after_bundle(&digest, &state, l.target.as_ref());
        }
        let stored = self.store_target(state, source, force, l);
        let next = if stored.is_ok() {
            Next::Iterate
        } else {
            Next::Wait
        };
        let _ = reply.send(stored);
        next
    }

    /// Stores a target of `source` and makes it the one applied if `source` is the current
    /// mode's.
    pub(super) fn store_target(
        &mut self,
        state: TargetState,
        source: &str,
        force: bool,
        l: &mut LoopState,
    ) -> Result<(), TargetNotSet> {
        if source == LOCAL_SOURCE && !self.local_mode {
            return Err(TargetNotSet::Refused(
                "Target state can only set when device is in local mode".into(),
            ));
        }
        let saved = self.db().save_target(&state, source);
        if let Err(e) = saved {
            return Err(TargetNotSet::Storage(format!(
                "cannot store the target: {e}"
            )));
        }
        let state = state.normalised();
        if source != LOCAL_SOURCE {
            self.follow_local_mode_setting(&state);
            self.follow_log_control(&state);
        }
        l.target = if source == self.source() {
            Some(state)
        } else {
            self.effective_target()
        };
        let published = l.target.clone().map(Arc::new);
        self.set_status(|s| s.target = published);
        l.force = force;
        if force {
            self.retry_failed_trials();
        }
        l.schedule.new_target();
        self.host_os.due = Some(Instant::now());
        // Until an iteration has looked, the new target is not applied.
        self.set_status(|s| s.app_state = AppState::Applying);
        Ok(())
    }
}

/// A read-only command: iterate only if an iteration was due anyway.
fn iterate_if_due(l: &LoopState) -> Next {
    if Instant::now() < l.due {
        Next::Wait
    } else {
        Next::Iterate
    }
}
