//! The state engine's loop: restore what the database holds, then wait for a command, an
//! engine event, a finished host OS install or bundle import, or the next due time; handle it; iterate when
//! due. The commands are handled in `commands.rs`, the schedule's rules are `schedule.rs`.

use super::apply::{Outcome, StateEngine};
use super::commands::Next;
use super::events::ContainerEvent;
use super::schedule::Schedule;
use crate::compose::target::TargetState;
use crate::protocol::{AppState, Command, LOCAL_SOURCE};
use crossbeam_channel::Receiver;
use log::{info, warn};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the loop keeps from one turn to the next.
pub(super) struct LoopState {
    /// The target being applied (the stored one of the current source).
    pub target: Option<TargetState>,
    /// The apply in progress was forced; cleared once it converges.
    pub force: bool,
    /// The last iteration found nothing left to do (or only a release waiting to switch).
    pub converged: bool,
    pub schedule: Schedule,
    /// When the next iteration is due. Commands that change nothing (GetTarget) do not move
    /// it, so a client polling the API neither delays nor hurries the loop.
    pub due: Instant,
    /// The re-check interval of a converged device.
    pub idle: Duration,
}

/// Why the loop woke up.
enum Wake {
    Command(Command),
    /// An event or a finished install, already handled.
    Handled,
    Timeout,
    /// Every sender is gone: the daemon is stopping.
    Closed,
}

impl StateEngine {
    pub(super) fn run(&mut self, rx: Receiver<Command>) {
        let target = self.restore();
        let events = self.follow_engine_events();
        let idle = Duration::from_millis(self.settings.config_json.poll_interval_ms());
        let mut l = LoopState {
            target,
            force: false,
            converged: false,
            schedule: Schedule::new(idle),
            due: Instant::now(),
            idle,
        };
        // Bundles: what an import cut short left is removed, then the directory is read.
        self.clean_interrupted_import();
        self.scan_bundles();
        loop {
            self.run_due_side_jobs(&l);
            match self.next_wake(&rx, &events, &mut l) {
                Wake::Closed => return,
                Wake::Handled => continue,
                // Woken for a side job only: the apps are not due yet.
                Wake::Timeout if Instant::now() < l.due => continue,
                Wake::Timeout => {}
                Wake::Command(cmd) => match self.handle_command(cmd, &mut l) {
                    Next::Stop => return,
                    Next::Wait => continue,
                    Next::Iterate => {}
                },
            }
            self.iterate_now(&mut l);
        }
    }

    /// Start-up: the keys, tags, preload, local mode, the stored target, the firewall and
    /// host discoverability as stored. Returns the target to apply.
    fn restore(&mut self) -> Option<TargetState> {
        // Nothing is known to be applied until the first iteration has looked.
        self.set_status(|s| s.app_state = AppState::Applying);
        self.publish_api_keys();
        let tags = self.stored_tags();
        self.set_status(|s| s.target_tags = Arc::new(tags));
        let never_set = self
            .db()
            .config_get("targetStateSet")
            .ok()
            .flatten()
            .as_deref()
            != Some("true");
        if never_set {
            let data = self.settings.paths.data_mountpoint.clone();
            let mut db = self.db();
            super::preload::preload(&data, &mut db, &self.engine, LOCAL_SOURCE);
        }
        self.local_mode = self.settings.config_json.unmanaged()
            || self.db().config_get("localMode").ok().flatten().as_deref() == Some("true");
        if !self.local_mode {
            // A cut while leaving local mode: finish the cleanup (v19 runs it at every start).
            let snapshot = self.db().engine_snapshot().ok().flatten();
            if let Some(before) = snapshot {
                self.leave_local_mode(&before);
            }
        }
        self.publish_mode();
        // Cloud targets are stored under the API endpoint, local ones under "local" (v19).
        let target = self.effective_target();
        let published = target.clone().map(Arc::new);
        self.set_status(|s| s.target = published);
        if let Some(t) = target.as_ref().filter(|_| !self.local_mode) {
            self.follow_log_control(t);
        }
        self.apply_firewall(target.as_ref());
        // Host discoverability as stored (v19 applies it at every start).
        let discoverable = self.db().config_get("hostDiscoverability").ok().flatten();
        self.apply_discoverability(discoverable.as_deref().is_none_or(|v| v == "true"));
        target
    }

    /// Our containers' events: a crash, a loop or a failing healthcheck is seen at once.
    fn follow_engine_events(&self) -> Receiver<ContainerEvent> {
        let (event_tx, events) = crossbeam_channel::bounded(16);
        if let Err(e) = super::events::spawn(self.engine.clone(), event_tx) {
            warn!("cannot follow the engine's events: {e}");
        }
        events
    }

    /// The host OS step and unhealthy restarts, when their time has come.
    fn run_due_side_jobs(&mut self, l: &LoopState) {
        if !self.shutting_down && self.host_os.due.is_some_and(|d| d <= Instant::now()) {
            self.host_os.due = self.step_host_os(l.target.as_ref());
        }
        if self.unhealthy.due().is_some_and(|d| d <= Instant::now()) {
            self.restart_unhealthy_due();
        }
    }

    /// Waits for a command, an engine event, a finished install or the earliest due time.
    fn next_wake(
        &mut self,
        rx: &Receiver<Command>,
        events: &Receiver<ContainerEvent>,
        l: &mut LoopState,
    ) -> Wake {
        let wake_at = [self.host_os.due, self.unhealthy.due()]
            .into_iter()
            .flatten()
            .fold(l.due, Instant::min);
        let done = self.host_os.done.clone();
        let bundle_done = self.bundles.done.clone();
        crossbeam_channel::select! {
            recv(rx) -> c => c.map_or(Wake::Closed, Wake::Command),
            recv(events) -> ev => {
                if let Ok(ev) = ev {
                    self.container_event(&ev);
                    // A converged device looks again soon; an apply in progress (or backing
                    // off) keeps its own pace.
                    if l.converged {
                        l.due = l.due.min(Instant::now() + Duration::from_millis(500));
                    }
                }
                Wake::Handled
            },
            recv(done) -> finished => {
                if let Ok((release, result)) = finished {
                    self.host_os_finished(release, result);
                }
                Wake::Handled
            },
            recv(bundle_done) -> finished => {
                if let Ok(finished) = finished {
                    self.bundle_finished(finished, l);
                }
                Wake::Handled
            },
            default(wake_at.saturating_duration_since(Instant::now())) => Wake::Timeout,
        }
    }

    /// One iteration now (unless going down or without a target), and when the next is due.
    fn iterate_now(&mut self, l: &mut LoopState) {
        if self.shutting_down {
            // Going down: targets are still stored, nothing more is applied.
            l.due = Instant::now() + l.idle;
            return;
        }
        let Some(target) = l.target.clone() else {
            self.set_status(|s| s.app_state = AppState::Applied);
            l.due = Instant::now() + l.idle;
            return;
        };
        let started = Instant::now();
        let outcome = self.iterate(&target, l.force);
        l.converged = matches!(outcome, Ok(Outcome::Converged | Outcome::Waiting { .. }));
        match outcome {
            Ok(Outcome::Waiting { wake_in }) => self.waiting(l, wake_in),
            Ok(Outcome::Converged) => self.converged(l),
            Ok(Outcome::Progress { all_noop }) => {
                self.set_status(|s| {
                    s.app_state = AppState::Applying;
                    s.applying_since.get_or_insert_with(Instant::now);
                });
                l.due = Instant::now() + l.schedule.progressed(all_noop);
            }
            Err(e) => self.failed(l, &e),
        }
        log::debug!("iteration took {:?}", started.elapsed());
    }

    /// Nothing to do until a window opens (no polling of the clock) or the device boots.
    fn waiting(&mut self, l: &mut LoopState, wake_in: Option<Duration>) {
        let (wait, _) = l.schedule.converged();
        l.due = Instant::now() + wake_in.map_or(wait, |w| w.min(wait));
        self.settled(AppState::Waiting);
    }

    /// Nothing left to apply now: the state says which, errors and the apply's start clear.
    fn settled(&self, app_state: AppState) {
        self.set_status(|s| {
            s.app_state = app_state;
            s.last_error = None;
            s.failures = 0;
            s.applying_since = None;
        });
    }

    fn converged(&mut self, l: &mut LoopState) {
        // A converged apply may try the VPN again at once (v19 resets its limits).
        self.vpn_tried_at = None;
        let (wait, news) = l.schedule.converged();
        if news {
            info!("Device state applied");
        }
        l.force = false;
        // A release on trial is watched each second until its window closes.
        let wait = if self.open_trials.any() {
            wait.min(Duration::from_secs(1))
        } else {
            wait
        };
        l.due = Instant::now() + wait;
        self.settled(AppState::Applied);
    }

    fn failed(&mut self, l: &mut LoopState, e: &super::step_error::StepError) {
        let backoff = l.schedule.failed();
        if e.is_locked() {
            crate::logs::event(
                format!(
                    "Updates are locked, retrying in {:?}. Reason: {}",
                    backoff, e.failure
                ),
                false,
            );
        } else {
            crate::logs::event(format!("Failed to apply state transition steps. {e}"), true);
        }
        let failures = l.schedule.failures;
        self.set_status(|s| {
            s.app_state = AppState::Applying;
            s.last_error = Some(e.to_string());
            s.failures = failures;
            s.applying_since.get_or_insert_with(Instant::now);
        });
        l.due = Instant::now() + backoff;
    }
}
