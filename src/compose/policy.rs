//! tinyvisor's own release labels (`io.tinyvisor.*`, docs/trials.md and docs/windows.md): their
//! names and values. A release opts in by putting them on any of its services, in the
//! service's labels or its composition's. A value that does not parse refuses the target,
//! naming the label, like any other bad field.

use super::target::{err, join, Result, TargetApp, TargetService};
use std::collections::BTreeMap;
use std::fmt;

/// A trial window (`90s`, `5m`): the release must run well that long.
pub const ROLLBACK_WINDOW: &str = "io.tinyvisor.rollback.window";
/// Local times the switch to the release may happen in (`02:00-04:30,22:00-23:00`).
pub const UPDATE_WINDOW: &str = "io.tinyvisor.update.window";
/// `reboot`: switch at the next boot.
pub const UPDATE_AT: &str = "io.tinyvisor.update.at";
/// `false`: do not restart this service when it turns unhealthy (on Docker).
pub const RESTART_UNHEALTHY: &str = "io.tinyvisor.restart-unhealthy";

/// Trial windows from one second to a week.
const MAX_DURATION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Parses `90s`, `5m`, `1h30m` or plain seconds into milliseconds (1 s to a week).
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return secs
            .checked_mul(1000)
            .filter(|ms| (1000..=MAX_DURATION_MS).contains(ms));
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
    }
    (number.is_empty() && (1000..=MAX_DURATION_MS).contains(&total)).then_some(total)
}

/// A daily window of local time, `[start, end)` in seconds of the day; it crosses midnight when
/// `end < start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u32,
    pub end: u32,
}

impl Window {
    pub fn contains(&self, second_of_day: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&second_of_day)
        } else {
            second_of_day >= self.start || second_of_day < self.end
        }
    }

    /// Seconds from `second_of_day` until the window next opens (0 inside it).
    pub fn until_open(&self, second_of_day: u32) -> u32 {
        if self.contains(second_of_day) {
            0
        } else {
            (self.start + 86_400 - second_of_day) % 86_400
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |s: u32| {
            if s.is_multiple_of(60) {
                format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
            } else {
                format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
            }
        };
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// `HH:MM[:SS]` as seconds of the day.
fn time_of_day(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let field = |i: usize, max: u32| -> Option<u32> {
        let p = parts.get(i)?;
        (p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let seconds = match parts.len() {
        2 => 0,
        3 => field(2, 59)?,
        _ => return None,
    };
    Some(field(0, 23)? * 3600 + field(1, 59)? * 60 + seconds)
}

/// `02:00-04:30` or several separated by commas (at most 24).
pub fn parse_windows(text: &str) -> std::result::Result<Vec<Window>, String> {
    let bad = || format!("expected windows like \"02:00-04:30,22:00-23:30\", got {text:?}");
    let mut out = Vec::new();
    for part in text.split(',') {
        let (a, b) = part.split_once('-').ok_or_else(bad)?;
        let w = Window {
            start: time_of_day(a).ok_or_else(bad)?,
            end: time_of_day(b).ok_or_else(bad)?,
        };
        if w.start == w.end {
            return Err(format!("window {part:?} is empty"));
        }
        out.push(w);
    }
    if out.len() > 24 {
        return Err("at most 24 windows".into());
    }
    Ok(out)
}

/// Refuses a service whose tinyvisor labels do not parse (`path` is its labels object).
pub fn validate(labels: &BTreeMap<String, String>, path: &str) -> Result<()> {
    if let Some(v) = labels.get(ROLLBACK_WINDOW) {
        if parse_duration_ms(v).is_none() {
            return err(
                &join(path, ROLLBACK_WINDOW),
                format!("expected a duration from 1s to 7d like \"90s\" or \"5m\", got {v:?}"),
            );
        }
    }
    if let Some(v) = labels.get(UPDATE_WINDOW) {
        if let Err(m) = parse_windows(v) {
            return err(&join(path, UPDATE_WINDOW), m);
        }
    }
    if let Some(v) = labels.get(UPDATE_AT) {
        if v != "reboot" {
            return err(
                &join(path, UPDATE_AT),
                format!("expected \"reboot\", got {v:?}"),
            );
        }
    }
    Ok(())
}

/// A service's label: its own labels first, else its composition's.
pub fn service_label<'a>(service: &'a TargetService, key: &str) -> Option<&'a str> {
    service
        .labels
        .get(key)
        .or_else(|| service.composition.labels.get(key))
        .map(String::as_str)
}

/// A release label as the release gives it: the first service (by name) that carries it.
pub fn release_label<'a>(app: &'a TargetApp, key: &str) -> Option<&'a str> {
    app.release
        .iter()
        .flat_map(|r| r.services.values())
        .find_map(|s| service_label(s, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bounds() {
        for (text, ms) in [
            ("90s", Some(90_000)),
            ("5m", Some(300_000)),
            ("1h30m", Some(5_400_000)),
            ("120", Some(120_000)),
            ("0s", None),
            ("8d", None),
            ("200h", None),
            ("5x", None),
            ("m", None),
            ("", None),
        ] {
            assert_eq!(parse_duration_ms(text), ms, "{text}");
        }
    }

    #[test]
    fn windows_parse_contain_and_cross_midnight() {
        let w = parse_windows("02:00-04:30, 22:00-01:00").unwrap();
        assert_eq!(
            w[0],
            Window {
                start: 7200,
                end: 16_200
            }
        );
        assert_eq!(w[1].to_string(), "22:00-01:00");
        assert!(w[0].contains(7200) && !w[0].contains(16_200));
        // Crossing midnight: 23:30 and 00:30 are inside, 01:00 and 12:00 not.
        assert!(w[1].contains(84_600) && w[1].contains(1800));
        assert!(!w[1].contains(3600) && !w[1].contains(43_200));
        assert_eq!(w[1].until_open(43_200), 36_000);
        assert_eq!(w[0].until_open(16_200), 86_400 - 9000);
        assert_eq!(w[0].until_open(7300), 0);
        assert_eq!(
            parse_windows("10:00:05-10:01").unwrap()[0].to_string(),
            "10:00:05-10:01"
        );
        for bad in [
            "",
            "2-4",
            "02:00",
            "02:00-24:00",
            "02:60-03:00",
            "02:00-02:00",
            "02:00-03:00,x",
        ] {
            assert!(parse_windows(bad).is_err(), "{bad}");
        }
    }
}
