//! Release trials (docs/trials.md): a release whose services carry
//! `io.tinyvisor.rollback.window` must run well for that long once all its services run, or
//! the device goes back to the release it ran before. Pure: the state engine stores the trials
//! and gives them the current containers; this says what they mean and what to apply.

use crate::compose::policy::{parse_duration_ms, service_label};
use crate::compose::service::Service;
use crate::compose::target::{parse_app_v3, TargetApp, TargetState};
use crate::compose::ServiceStatus;
use serde_json::Value;
use std::collections::BTreeSet;

pub use crate::compose::policy::ROLLBACK_WINDOW as WINDOW_LABEL;
/// A service restarted this many times during a trial fails it.
pub const MAX_RESTARTS: i64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialState {
    /// Stored before the release is applied; the window opens once all its services run.
    Pending,
    Running,
    Passed,
    Failed,
}

impl TrialState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Running => "running",
            TrialState::Passed => "passed",
            TrialState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<TrialState> {
        Some(match s {
            "pending" => TrialState::Pending,
            "running" => TrialState::Running,
            "passed" => TrialState::Passed,
            "failed" => TrialState::Failed,
            _ => return None,
        })
    }

    /// Pending or running: the release is still being judged.
    pub fn open(self) -> bool {
        matches!(self, TrialState::Pending | TrialState::Running)
    }
}

/// One app's trial (a `tv_trial` row).
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub app_uuid: String,
    pub commit: String,
    pub window_ms: i64,
    /// Unix milliseconds the window closes; set when it opens.
    pub deadline_ms: Option<i64>,
    pub state: TrialState,
    pub reason: Option<String>,
    /// The release to go back to: its commit and the app as v3 JSON (`app_to_v3`). None on a
    /// first install.
    pub previous: Option<(String, Value)>,
}

/// The trial window a release asks for: the label on any service, in its own labels or its
/// composition's (the smallest if several differ). `None`: no trial (v19's behaviour).
pub fn window_ms(app: &TargetApp) -> Option<i64> {
    app.release
        .iter()
        .flat_map(|r| r.services.values())
        .filter_map(|s| service_label(s, WINDOW_LABEL))
        .filter_map(parse_duration_ms)
        .min()
}

/// What the open (pending or running) trials ask of the rest of an iteration: which releases
/// are not yet the ones to go back to, and which images must stay for a rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenTrials {
    /// (app uuid, commit) of the releases on trial.
    pub releases: BTreeSet<(String, String)>,
    /// Image names of the releases those trials would go back to.
    pub retained_images: BTreeSet<String>,
}

impl OpenTrials {
    pub fn of(trials: &[Trial]) -> OpenTrials {
        let open = || trials.iter().filter(|t| t.state.open());
        OpenTrials {
            releases: open()
                .map(|t| (t.app_uuid.clone(), t.commit.clone()))
                .collect(),
            retained_images: open()
                .filter_map(|t| {
                    let (_, app) = t.previous.as_ref()?;
                    parse_app_v3(&t.app_uuid, app).ok()?.release
                })
                .flat_map(|rel| rel.services.into_values().map(|s| s.image))
                .collect(),
        }
    }

    /// A trial is pending or running: a converged device keeps looking.
    pub fn any(&self) -> bool {
        !self.releases.is_empty()
    }
}

/// The line a failed trial is logged and shown with.
pub fn failure_line(commit: &str, reason: &str, previous: Option<&str>) -> String {
    match previous {
        Some(prev) => {
            format!("Release {commit} failed its trial: {reason}; rolling back to {prev}")
        }
        None => format!(
            "Release {commit} failed its trial: {reason}; there is no earlier release to go back to"
        ),
    }
}

/// What the current containers mean for a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    /// All services run: the window opens and closes at `deadline_ms`.
    Open {
        deadline_ms: i64,
    },
    Fail {
        reason: String,
    },
    Pass,
}

/// Judges `trial` by the app's current containers (`current`) and the services its release
/// should run (`expected`).
pub fn judge(trial: &Trial, current: &[Service], expected: &[&str], now_ms: i64) -> Verdict {
    if !trial.state.open() {
        return Verdict::Unchanged;
    }
    let started_ms = trial.deadline_ms.map(|d| d - trial.window_ms);
    let of_release: Vec<&Service> = current
        .iter()
        .filter(|s| s.commit.as_deref() == Some(trial.commit.as_str()))
        .collect();
    if let Some(reason) = of_release
        .iter()
        .find_map(|s| failure(s, started_ms.map(|t| now_ms - t)))
    {
        return Verdict::Fail { reason };
    }
    match trial.deadline_ms {
        Some(deadline) if now_ms >= deadline => Verdict::Pass,
        Some(_) => Verdict::Unchanged,
        None => {
            let all_run = expected.iter().all(|name| {
                of_release
                    .iter()
                    .any(|s| &s.service_name == name && s.status == ServiceStatus::Running)
            });
            if all_run {
                Verdict::Open {
                    deadline_ms: now_ms + trial.window_ms,
                }
            } else {
                Verdict::Unchanged
            }
        }
    }
}

/// Why a container fails its release's trial, if it does. `elapsed_ms`: time since the window
/// opened (None before).
fn failure(s: &Service, elapsed_ms: Option<i64>) -> Option<String> {
    let when = match elapsed_ms {
        Some(ms) => format!(" after {}s", ms.max(0) / 1000),
        None => String::new(),
    };
    let name = &s.service_name;
    if s.health.as_deref() == Some("unhealthy") {
        return Some(format!("{name} unhealthy{when}"));
    }
    if s.restart_count >= MAX_RESTARTS {
        return Some(format!("{name} restarted {} times{when}", s.restart_count));
    }
    let stopped = !matches!(
        s.status,
        ServiceStatus::Running | ServiceStatus::Installing | ServiceStatus::Installed
    );
    match s.exit_code {
        Some(code) if stopped && code != 0 => Some(format!("{name} exited with code {code}{when}")),
        _ => None,
    }
}

/// The target to apply: apps whose release failed its trial go back to the release they ran
/// before (as it was stored), as long as the target still names the failed release.
pub fn effective_target(target: &TargetState, trials: &[Trial]) -> TargetState {
    let mut out = target.clone();
    for trial in trials.iter().filter(|t| t.state == TrialState::Failed) {
        let Some((_, previous)) = &trial.previous else {
            continue;
        };
        let names_failed = target
            .apps
            .get(&trial.app_uuid)
            .and_then(|a| a.release.as_ref())
            .is_some_and(|r| r.commit == trial.commit);
        if !names_failed {
            continue;
        }
        if let Ok(app) = parse_app_v3(&trial.app_uuid, previous) {
            out.apps.insert(trial.app_uuid.clone(), app);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::target::{app_to_v3, parse_device_target};
    use serde_json::json;

    fn target(commit: &str, labels: Value) -> TargetState {
        parse_device_target(
            &json!({"name": "d", "config": {}, "apps": {"app": {"id": 1, "name": "a",
            "releases": {commit: {"id": 1, "services": {
                "web": {"id": 1, "image_id": 1, "image": format!("web:{commit}"), "labels": labels},
                "db": {"id": 2, "image_id": 2, "image": "db:1"}}}}}}}),
        )
        .unwrap()
    }

    fn trial(state: TrialState, deadline_ms: Option<i64>) -> Trial {
        Trial {
            app_uuid: "app".into(),
            commit: "new".into(),
            window_ms: 60_000,
            deadline_ms,
            state,
            reason: None,
            previous: Some((
                "old".into(),
                app_to_v3(&target("old", json!({})).apps["app"]),
            )),
        }
    }

    fn container(name: &str, commit: &str, status: ServiceStatus) -> Service {
        let t = target(commit, json!({}));
        let rel = t.apps["app"].release.as_ref().unwrap();
        let origin = crate::compose::service::ServiceOrigin {
            app_id: 1,
            app_uuid: "app".into(),
            commit: commit.into(),
            service_name: name.into(),
            ..Default::default()
        };
        let mut s = Service::from_target(&rel.services[name], &origin, &Default::default(), None);
        s.status = status;
        s
    }

    #[test]
    fn the_window_comes_from_any_service() {
        let t = target("new", json!({WINDOW_LABEL: "90s"}));
        assert_eq!(window_ms(&t.apps["app"]), Some(90_000));
        assert_eq!(window_ms(&target("new", json!({})).apps["app"]), None);
    }

    #[test]
    fn the_window_opens_once_every_service_runs() {
        let t = trial(TrialState::Pending, None);
        let web = container("web", "new", ServiceStatus::Running);
        let db = container("db", "new", ServiceStatus::Installed);
        assert_eq!(
            judge(&t, &[web.clone(), db], &["web", "db"], 1000),
            Verdict::Unchanged
        );
        let db = container("db", "new", ServiceStatus::Running);
        assert_eq!(
            judge(&t, &[web, db], &["web", "db"], 1000),
            Verdict::Open {
                deadline_ms: 61_000
            }
        );
    }

    #[test]
    fn failures_during_the_window() {
        let t = trial(TrialState::Running, Some(100_000));
        let now = 80_000; // 40 s into the window
        let mut web = container("web", "new", ServiceStatus::Running);
        web.health = Some("unhealthy".into());
        assert_eq!(
            judge(&t, &[web], &["web"], now),
            Verdict::Fail {
                reason: "web unhealthy after 40s".into()
            }
        );
        let mut web = container("web", "new", ServiceStatus::Other("exited".into()));
        web.exit_code = Some(1);
        assert_eq!(
            judge(&t, &[web], &["web"], now),
            Verdict::Fail {
                reason: "web exited with code 1 after 40s".into()
            }
        );
        let mut web = container("web", "new", ServiceStatus::Running);
        web.restart_count = 3;
        assert_eq!(
            judge(&t, &[web], &["web"], now),
            Verdict::Fail {
                reason: "web restarted 3 times after 40s".into()
            }
        );
        // A clean exit, and containers of other releases, fail nothing.
        let mut job = container("web", "new", ServiceStatus::Other("exited".into()));
        job.exit_code = Some(0);
        let mut old = container("db", "old", ServiceStatus::Running);
        old.health = Some("unhealthy".into());
        assert_eq!(judge(&t, &[job, old], &["web"], now), Verdict::Unchanged);
        // At the deadline it passes; closed trials are not judged.
        let web = container("web", "new", ServiceStatus::Running);
        assert_eq!(
            judge(&t, std::slice::from_ref(&web), &["web"], 100_000),
            Verdict::Pass
        );
        let done = trial(TrialState::Failed, Some(100_000));
        assert_eq!(judge(&done, &[web], &["web"], 100_000), Verdict::Unchanged);
    }

    #[test]
    fn open_trials_keep_their_previous_releases_images() {
        let open = OpenTrials::of(&[
            trial(TrialState::Running, Some(1)),
            Trial {
                app_uuid: "other".into(),
                ..trial(TrialState::Passed, Some(1))
            },
        ]);
        assert_eq!(
            open.releases,
            BTreeSet::from([("app".to_string(), "new".to_string())])
        );
        assert_eq!(
            open.retained_images,
            BTreeSet::from(["web:old".to_string(), "db:1".to_string()])
        );
        assert!(open.any());
        assert!(!OpenTrials::of(&[trial(TrialState::Failed, Some(1))]).any());
    }

    #[test]
    fn a_failed_release_is_replaced_by_the_previous_one_while_the_target_names_it() {
        let new = target("new", json!({WINDOW_LABEL: "1m"}));
        let failed = trial(TrialState::Failed, Some(1));
        let out = effective_target(&new, std::slice::from_ref(&failed));
        assert_eq!(out.apps["app"].release.as_ref().unwrap().commit, "old");
        assert_eq!(out.apps["app"], target("old", json!({})).apps["app"]);
        // Another commit named: the trial no longer applies.
        let newer = target("newer", json!({}));
        assert_eq!(
            effective_target(&newer, std::slice::from_ref(&failed)),
            newer
        );
        // Running or passed trials, and a first install, change nothing.
        for t in [
            trial(TrialState::Running, Some(1)),
            trial(TrialState::Passed, Some(1)),
            Trial {
                previous: None,
                ..failed
            },
        ] {
            assert_eq!(effective_target(&new, &[t]), new);
        }
    }
}
