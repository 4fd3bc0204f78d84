//! The host OS decision (docs/hostos.md §2): given the host release the target names, what
//! the device knows of it and a few facts of the host, what to do now. Pure, like the rest of
//! the planner; the state engine gathers the facts and carries the step out.

use crate::compose::hostapp::{HostApp, HostRecord};

/// At most this many install attempts of one release (helios: "too many failed installs").
pub const MAX_ATTEMPTS: u32 = 3;
/// Attempts made this long ago no longer count: a device that gave up tries again a day later.
pub const ATTEMPTS_EXPIRE_SECS: i64 = 24 * 3600;

/// What the host tells us, read by the state engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFacts<'a> {
    /// The running OS's build (`BALENA_BOARD_REV`, else `RESIN_BOARD_REV`, of os-release).
    pub current_build: Option<&'a str>,
    /// The tmpfs breadcrumb of a finished install of this release: the updater has installed
    /// it and reboots the device (gone after the reboot, and after an OS rollback).
    pub installed: bool,
    /// `os-update.service` is running: an install started before we were restarted.
    pub updater_running: bool,
    /// Unix seconds now.
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStep {
    /// The device runs this release.
    Running,
    /// Installed; the updater reboots the device into it.
    AwaitReboot,
    /// An updater started earlier is still running: wait for it, without a new attempt.
    Resume,
    /// Install, counting attempt `attempt` (1-based) before anything else is done.
    Install { attempt: u32 },
    /// Too many failed installs: nothing until a new release or a day has passed.
    GaveUp,
    /// The running OS names no build (no board revision in os-release): not a balenaOS host,
    /// or one too old to say; its OS is never replaced. helios would run the updater anyway
    /// and count failures; on a host that is not balenaOS that updater must not run at all.
    NoBuild,
}

/// Attempts that still count for `target`: those of the same release, made within a day.
pub fn attempts(target: &HostApp, record: Option<&HostRecord>, now: i64) -> u32 {
    match record {
        Some(r)
            if r.release.release_uuid == target.release_uuid
                && now - r.attempted_at < ATTEMPTS_EXPIRE_SECS =>
        {
            r.install_attempts
        }
        _ => 0,
    }
}

/// The next host OS step. Builds are compared as exact strings, as helios does: no version
/// order, no downgrade check (the updater refuses what it cannot install).
pub fn decide(target: &HostApp, record: Option<&HostRecord>, facts: &HostFacts) -> HostStep {
    let Some(build) = facts.current_build else {
        return HostStep::NoBuild;
    };
    if build == target.build {
        return HostStep::Running;
    }
    if facts.installed {
        return HostStep::AwaitReboot;
    }
    if facts.updater_running {
        return HostStep::Resume;
    }
    match attempts(target, record, facts.now) {
        n if n >= MAX_ATTEMPTS => HostStep::GaveUp,
        n => HostStep::Install { attempt: n + 1 },
    }
}

impl HostStep {
    /// The release's `update_status` and its `hostapp` service's status in the state report
    /// (helios's report.rs): done and Running, else still installing — `aborted` once the
    /// apply can do no more (given up, or waiting for the updater's reboot).
    pub fn report(self) -> (&'static str, &'static str) {
        match self {
            HostStep::Running => ("done", "Running"),
            HostStep::AwaitReboot | HostStep::GaveUp | HostStep::NoBuild => {
                ("aborted", "Installing")
            }
            HostStep::Resume | HostStep::Install { .. } => ("applying changes", "Installing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(release: &str, build: &str) -> HostApp {
        HostApp {
            app_uuid: "hostapp-uuid".into(),
            release_uuid: release.into(),
            image: "reg/hostos@sha256:1".into(),
            build: build.into(),
            updater: "reg/updater:1".into(),
        }
    }

    fn record(release: &str, attempts: u32, at: i64) -> HostRecord {
        HostRecord {
            release: target(release, "new"),
            install_attempts: attempts,
            attempted_at: at,
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn facts(build: Option<&str>, installed: bool, running: bool) -> HostFacts<'_> {
        HostFacts {
            current_build: build,
            installed,
            updater_running: running,
            now: NOW,
        }
    }

    #[test]
    fn decision_table() {
        let t = target("r2", "new");
        let cases: &[(&str, Option<HostRecord>, HostFacts, HostStep)] = &[
            (
                "same build runs",
                None,
                facts(Some("new"), false, false),
                HostStep::Running,
            ),
            (
                "same build wins over a breadcrumb",
                None,
                facts(Some("new"), true, false),
                HostStep::Running,
            ),
            (
                "builds are exact strings",
                None,
                facts(Some("New"), false, false),
                HostStep::Install { attempt: 1 },
            ),
            (
                "no build known: never installed",
                None,
                facts(None, false, false),
                HostStep::NoBuild,
            ),
            (
                "installed, awaiting reboot",
                Some(record("r2", 1, NOW)),
                facts(Some("old"), true, false),
                HostStep::AwaitReboot,
            ),
            (
                "updater still running: resume",
                Some(record("r2", 1, NOW)),
                facts(Some("old"), false, true),
                HostStep::Resume,
            ),
            (
                "second attempt",
                Some(record("r2", 1, NOW - 60)),
                facts(Some("old"), false, false),
                HostStep::Install { attempt: 2 },
            ),
            (
                "third attempt",
                Some(record("r2", 2, NOW - 60)),
                facts(Some("old"), false, false),
                HostStep::Install { attempt: 3 },
            ),
            (
                "three failed: give up",
                Some(record("r2", 3, NOW - 60)),
                facts(Some("old"), false, false),
                HostStep::GaveUp,
            ),
            (
                "four (an older count) still gives up",
                Some(record("r2", 4, NOW - 60)),
                facts(Some("old"), false, false),
                HostStep::GaveUp,
            ),
            (
                "a day later the count starts again",
                Some(record("r2", 3, NOW - ATTEMPTS_EXPIRE_SECS)),
                facts(Some("old"), false, false),
                HostStep::Install { attempt: 1 },
            ),
            (
                "a new release starts again",
                Some(record("r1", 3, NOW - 60)),
                facts(Some("old"), false, false),
                HostStep::Install { attempt: 1 },
            ),
            (
                "rolled back (breadcrumb gone, old build): retried within the limit",
                Some(record("r2", 1, NOW - 600)),
                facts(Some("old"), false, false),
                HostStep::Install { attempt: 2 },
            ),
        ];
        for (name, rec, f, want) in cases {
            assert_eq!(decide(&t, rec.as_ref(), f), *want, "{name}");
        }
    }

    #[test]
    fn report_statuses() {
        assert_eq!(HostStep::Running.report(), ("done", "Running"));
        assert_eq!(HostStep::GaveUp.report(), ("aborted", "Installing"));
        assert_eq!(HostStep::AwaitReboot.report(), ("aborted", "Installing"));
        assert_eq!(
            HostStep::Install { attempt: 1 }.report(),
            ("applying changes", "Installing")
        );
    }
}
