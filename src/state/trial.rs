//! Release trials in the state engine (docs/trials.md): the stored trials kept in line with
//! the target, judged by the current containers at every iteration, and the target to apply
//! (a failed release replaced by the one before it). The rules are the planner's
//! (`planner::trial`); here are the database, the log lines and the status.

use super::apply::StateEngine;
use crate::compose::target::{app_to_v3, TargetState};
use crate::encoding::rfc3339_from_seconds;
use crate::logs::event;
use crate::planner::trial::{self, judge, Trial, TrialState, Verdict};
use crate::planner::CurrentApp;
use crate::protocol::TrialStatus;
use log::warn;

impl StateEngine {
    /// Brings the stored trials in line with `target`, judges the open ones by the `current`
    /// containers, publishes them, and returns the target to apply.
    pub(super) fn trial_target(
        &mut self,
        target: &TargetState,
        current: &[CurrentApp],
    ) -> TargetState {
        let mut trials = self.db().trials().unwrap_or_default();
        self.follow_target_trials(target, &mut trials);
        let now = crate::logs::now_ms();
        for t in trials.iter_mut().filter(|t| t.state.open()) {
            let services: Vec<_> = current
                .iter()
                .filter(|a| a.app_uuid == t.app_uuid)
                .flat_map(|a| a.services.iter().cloned())
                .collect();
            let expected: Vec<&str> = target
                .apps
                .get(&t.app_uuid)
                .and_then(|a| a.release.as_ref())
                .map(|r| {
                    r.services
                        .iter()
                        .filter(|(_, s)| s.running)
                        .map(|(n, _)| n.as_str())
                        .collect()
                })
                .unwrap_or_default();
            match judge(t, &services, &expected, now) {
                Verdict::Unchanged => continue,
                Verdict::Open { deadline_ms } => {
                    t.state = TrialState::Running;
                    t.deadline_ms = Some(deadline_ms);
                    event(
                        format!(
                            "Release {} is on trial for {}s",
                            t.commit,
                            t.window_ms / 1000
                        ),
                        false,
                    );
                }
                Verdict::Fail { reason } => fail(t, reason),
                Verdict::Pass => {
                    t.state = TrialState::Passed;
                    event(format!("Release {} passed its trial", t.commit), false);
                    if let Some(app) = target.apps.get(&t.app_uuid) {
                        self.keep_applied(&t.app_uuid, &t.commit, &app_to_v3(app));
                    }
                }
            }
            self.store_trial(t);
        }
        self.publish_trials(target, &trials);
        self.open_trials = trial::OpenTrials::of(&trials);
        trial::effective_target(target, &trials)
    }

    /// New trials for releases that ask for one (stored before they are applied, with the
    /// release to go back to); trials of releases no longer in the target are forgotten.
    fn follow_target_trials(&self, target: &TargetState, trials: &mut Vec<Trial>) {
        trials.retain(|t| {
            let wanted = target.apps.get(&t.app_uuid).is_some_and(|a| {
                trial::window_ms(a).is_some()
                    && a.release.as_ref().is_some_and(|r| r.commit == t.commit)
            });
            if !wanted {
                let _ = self.db().delete_trial(&t.app_uuid);
            }
            wanted
        });
        for (uuid, app) in &target.apps {
            let (Some(window_ms), Some(rel)) = (trial::window_ms(app), &app.release) else {
                continue;
            };
            if trials.iter().any(|t| &t.app_uuid == uuid) {
                continue;
            }
            let previous = self
                .db()
                .applied_release(uuid)
                .ok()
                .flatten()
                .filter(|(c, _)| c != &rel.commit);
            let t = Trial {
                app_uuid: uuid.clone(),
                commit: rel.commit.clone(),
                window_ms,
                deadline_ms: None,
                state: TrialState::Pending,
                reason: None,
                previous,
            };
            self.store_trial(&t);
            trials.push(t);
        }
    }

    fn store_trial(&self, t: &Trial) {
        if let Err(e) = self.db().save_trial(t) {
            warn!("Cannot store the trial of release {}: {e}", t.commit);
        }
    }

    fn keep_applied(&self, app_uuid: &str, commit: &str, app: &serde_json::Value) {
        if let Err(e) = self.db().set_applied_release(app_uuid, commit, app) {
            warn!("Cannot record the applied release {commit}: {e}");
        }
    }

    /// A step could not create or start a service of a release on trial: the trial fails.
    pub(super) fn fail_trial_of(&self, app_uuid: &str, commit: &str, service: &str, error: &str) {
        let mut trials = self.db().trials().unwrap_or_default();
        if let Some(t) = trials
            .iter_mut()
            .find(|t| t.app_uuid == app_uuid && t.commit == commit && t.state.open())
        {
            fail(t, format!("{service} could not be started: {error}"));
            self.store_trial(t);
        }
    }

    /// `force` (an update forced by the API or a local target): failed releases are tried again.
    pub(super) fn retry_failed_trials(&self) {
        // Read first: the database guard must not live through the loop, which stores.
        let trials = self.db().trials().unwrap_or_default();
        for mut t in trials {
            if t.state == TrialState::Failed {
                event(format!("Trying release {} again (forced)", t.commit), false);
                t.state = TrialState::Pending;
                t.deadline_ms = None;
                t.reason = None;
                self.store_trial(&t);
            }
        }
    }

    /// After convergence: the releases that now run for good are recorded as the ones to go
    /// back to (not those still on trial, as this iteration's trials said).
    pub(super) fn record_applied_releases(&self, applied: &TargetState) {
        for (uuid, app) in &applied.apps {
            let Some(rel) = &app.release else { continue };
            if !self
                .open_trials
                .releases
                .contains(&(uuid.clone(), rel.commit.clone()))
            {
                self.keep_applied(uuid, &rel.commit, &app_to_v3(app));
            }
        }
    }

    fn publish_trials(&self, target: &TargetState, trials: &[Trial]) {
        let statuses: Vec<TrialStatus> = trials
            .iter()
            .map(|t| TrialStatus {
                app_uuid: t.app_uuid.clone(),
                app_id: target.apps.get(&t.app_uuid).map_or(0, |a| a.id),
                commit: t.commit.clone(),
                state: t.state.as_str(),
                deadline: t.deadline_ms.map(|ms| rfc3339_from_seconds(ms / 1000)),
                reason: t.reason.clone(),
                previous_commit: t.previous.as_ref().map(|(c, _)| c.clone()),
                rolled_back: t.state == TrialState::Failed && t.previous.is_some(),
            })
            .collect();
        let unchanged = self.status.lock().unwrap_or_else(|p| p.into_inner()).trials == statuses;
        if !unchanged {
            self.set_status(|s| s.trials = statuses);
        }
    }
}

/// Marks a trial failed and logs the one line that says what happens.
fn fail(t: &mut Trial, reason: String) {
    let previous = t.previous.as_ref().map(|(c, _)| c.as_str());
    event(trial::failure_line(&t.commit, &reason, previous), true);
    t.state = TrialState::Failed;
    t.reason = Some(reason);
}
