//! When a release may switch (docs/windows.md): a release labelled
//! `io.tinyvisor.update.window` is downloaded at once but switched to (kills, creates, starts)
//! only inside a window of the device's local time; `io.tinyvisor.update.at: reboot` waits for
//! the next boot. Pure: the state engine gives the local time and whether the host booted since
//! the release was first seen; this says whether to wait and which steps may run meanwhile.

use super::Step;
use crate::compose::policy::{parse_windows, release_label, Window, UPDATE_AT, UPDATE_WINDOW};
use crate::compose::target::TargetApp;
use std::collections::BTreeSet;

/// When a release asks to switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchPolicy {
    Windows(Vec<Window>),
    AtReboot,
}

/// The switch policy of an app's target release (`at: reboot` wins over windows); `None`: at
/// once, as v19.
pub fn policy(app: &TargetApp) -> Option<SwitchPolicy> {
    if release_label(app, UPDATE_AT) == Some("reboot") {
        return Some(SwitchPolicy::AtReboot);
    }
    // Labels were validated with the target.
    let windows = parse_windows(release_label(app, UPDATE_WINDOW)?).ok()?;
    Some(SwitchPolicy::Windows(windows))
}

/// The switch policy of an app's new release and its commit: `None` when the release asks for
/// none, when nothing of the app runs yet (a first install) or when `running` is that release.
pub fn pending_switch<'a>(
    app: &'a TargetApp,
    running: Option<&str>,
) -> Option<(SwitchPolicy, &'a str)> {
    let commit = app.release.as_ref()?.commit.as_str();
    if running.is_none_or(|r| r == commit) {
        return None;
    }
    Some((policy(app)?, commit))
}

/// Whether a release may switch now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    Switch,
    /// Until `window` opens, in `in_secs` seconds.
    UntilWindow {
        window: Window,
        in_secs: u32,
    },
    UntilReboot,
}

/// Decides for a release with `policy`, at `second_of_day` local time; `booted_since` tells
/// whether the host booted since the release was first seen.
pub fn hold(policy: &SwitchPolicy, second_of_day: u32, booted_since: bool) -> Hold {
    match policy {
        SwitchPolicy::AtReboot if booted_since => Hold::Switch,
        SwitchPolicy::AtReboot => Hold::UntilReboot,
        SwitchPolicy::Windows(windows) => windows
            .iter()
            .map(|w| (w.until_open(second_of_day), *w))
            .min_by_key(|(secs, _)| *secs)
            .map_or(Hold::Switch, |(secs, window)| match secs {
                0 => Hold::Switch,
                in_secs => Hold::UntilWindow { window, in_secs },
            }),
    }
}

/// Keeps the steps that may run while the apps in `held` wait: downloads and what does not
/// touch a running service. Returns them and whether any step was held back.
pub fn withhold(steps: Vec<Step>, held: &BTreeSet<i64>) -> (Vec<Step>, bool) {
    if held.is_empty() {
        return (steps, false);
    }
    let before = steps.len();
    let kept: Vec<Step> = steps
        .into_iter()
        .filter(|s| may_run_while_waiting(s) || step_app(s).is_none_or(|a| !held.contains(&a)))
        .collect();
    let withheld = kept.len() != before;
    (kept, withheld)
}

fn may_run_while_waiting(s: &Step) -> bool {
    matches!(
        s,
        Step::Fetch { .. }
            | Step::SaveImage { .. }
            | Step::CreateNetwork { .. }
            | Step::CreateVolume { .. }
            | Step::Noop
            | Step::EnsureSupervisorNetwork
            | Step::EnsureExtraFirmwareVolume
            | Step::Cleanup
    )
}

/// The app a step acts on, when it acts on one.
fn step_app(s: &Step) -> Option<i64> {
    Some(match s {
        Step::Fetch { image, .. } | Step::RemoveImage { image } | Step::SaveImage { image } => {
            image.app_id
        }
        Step::Kill { current, .. } | Step::Stop { current } | Step::Remove { current } => {
            current.app_id
        }
        Step::Start { target } => target.app_id,
        Step::UpdateMetadata { current, .. } | Step::Handover { current, .. } => current.app_id,
        Step::UpdateCommit { app_id, .. }
        | Step::TakeLock { app_id, .. }
        | Step::ReleaseLock { app_id } => *app_id,
        Step::CreateNetwork { target } => target.app_id,
        Step::RemoveNetwork { current } => current.app_id,
        Step::CreateVolume { target } => target.app_id,
        Step::RemoveVolume { current } => current.app_id,
        _ => return None,
    })
}

/// `3h12m`, `45s`: a wait for people to read.
pub fn human_duration(secs: u32) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::target::parse_device_target;
    use serde_json::json;

    fn app(labels: serde_json::Value) -> TargetApp {
        let t = parse_device_target(
            &json!({"name": "d", "config": {}, "apps": {"a": {"id": 1, "name": "a",
            "releases": {"c2": {"id": 1, "services": {"web": {"id": 1, "image_id": 1, "image": "w",
                "labels": labels}}}}}}}),
        )
        .unwrap();
        t.apps["a"].clone()
    }

    #[test]
    fn policies_from_labels() {
        assert_eq!(policy(&app(json!({}))), None);
        assert_eq!(
            policy(&app(json!({UPDATE_WINDOW: "02:00-04:30"}))),
            Some(SwitchPolicy::Windows(vec![Window {
                start: 7200,
                end: 16_200
            }]))
        );
        assert_eq!(
            policy(&app(
                json!({UPDATE_WINDOW: "02:00-04:30", UPDATE_AT: "reboot"})
            )),
            Some(SwitchPolicy::AtReboot)
        );
    }

    #[test]
    fn only_a_new_release_of_a_running_app_waits() {
        let waits = app(json!({UPDATE_AT: "reboot"}));
        assert_eq!(
            pending_switch(&waits, Some("c1")),
            Some((SwitchPolicy::AtReboot, "c2"))
        );
        assert_eq!(pending_switch(&waits, None), None, "first install");
        assert_eq!(pending_switch(&waits, Some("c2")), None, "already running");
        assert_eq!(
            pending_switch(&app(json!({})), Some("c1")),
            None,
            "no policy"
        );
    }

    #[test]
    fn hold_table() {
        let windows = SwitchPolicy::Windows(parse_windows("02:00-04:30,22:00-01:00").unwrap());
        let cases = [
            (&windows, 3 * 3600, false, Hold::Switch),
            (&windows, 23 * 3600, false, Hold::Switch),
            (&windows, 1800, false, Hold::Switch), // 00:30, inside the window across midnight
            (
                &windows,
                3600,
                false,
                Hold::UntilWindow {
                    window: Window {
                        start: 7200,
                        end: 16_200,
                    },
                    in_secs: 3600,
                },
            ),
            (
                &windows,
                12 * 3600,
                false,
                Hold::UntilWindow {
                    window: Window {
                        start: 79_200,
                        end: 3600,
                    },
                    in_secs: 10 * 3600,
                },
            ),
            (&SwitchPolicy::AtReboot, 0, false, Hold::UntilReboot),
            (&SwitchPolicy::AtReboot, 0, true, Hold::Switch),
        ];
        for (p, sod, booted, want) in cases {
            assert_eq!(hold(p, sod, booted), want, "{p:?} at {sod}");
        }
    }

    #[test]
    fn only_downloads_run_while_an_app_waits() {
        use crate::compose::service::{Service, ServiceOrigin};
        use crate::planner::ImageRef;
        let origin = |app_id| ServiceOrigin {
            app_id,
            service_name: "web".into(),
            commit: "c2".into(),
            ..Default::default()
        };
        let t = app(json!({}));
        let svc = &t.release.as_ref().unwrap().services["web"];
        let s1 = Service::from_target(svc, &origin(1), &Default::default(), None);
        let s2 = Service::from_target(svc, &origin(2), &Default::default(), None);
        let steps = vec![
            Step::Fetch {
                image: ImageRef::for_service(&s1),
                service_name: "web".into(),
            },
            Step::Kill {
                current: Box::new(s1.clone()),
                reason: vec![],
            },
            Step::Start {
                target: Box::new(s1),
            },
            Step::Start {
                target: Box::new(s2),
            },
            Step::UpdateCommit {
                app_id: 1,
                commit: "c2".into(),
            },
        ];
        let (kept, withheld) = withhold(steps.clone(), &BTreeSet::from([1]));
        assert!(withheld);
        let actions: Vec<_> = kept.iter().map(|s| (s.action(), step_app(s))).collect();
        assert_eq!(actions, [("fetch", Some(1)), ("start", Some(2))]);
        assert_eq!(withhold(steps.clone(), &BTreeSet::new()), (steps, false));
        assert_eq!(human_duration(3 * 3600 + 12 * 60 + 5), "3h12m");
        assert_eq!(human_duration(45), "45s");
    }
}
