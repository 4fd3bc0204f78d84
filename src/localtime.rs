//! The device's local time: the UTC offset in force at an instant, from the host's
//! `/etc/localtime` (a TZif file: its transitions, then the POSIX TZ rule of its footer for
//! later instants). Used by update windows, which are written in local time. Written by hand:
//! a page of parsing, against a time-zone crate and its database.
//!
//! No file, or one that does not parse, means UTC (what balenaOS has by default).

use crate::encoding::{civil_from_days, days_from_civil};
use std::path::Path;

/// The zone: offsets by transition, and the rule for instants after the last one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// (transition instant, offset from it on), ascending.
    transitions: Vec<(i64, i32)>,
    /// Offset before the first transition (or of a zone without transitions).
    initial: i32,
    rule: Option<Rule>,
}

/// A POSIX TZ rule with daylight saving: `STDoffset DST[offset],Mm.w.d[/time],Mm.w.d[/time]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    std: i32,
    dst: i32,
    /// (month 1-12, week 1-5, weekday 0-6 Sunday first, seconds after local midnight).
    start: (u32, u32, u32, i64),
    end: (u32, u32, u32, i64),
}

impl Zone {
    /// The host's zone: `<root>/etc/localtime`, following a symlink inside the host root (an
    /// absolute link such as `/usr/share/zoneinfo/Europe/Berlin` is the host's path).
    pub fn of_host(root: &Path) -> Zone {
        let link = root.join("etc/localtime");
        let path = match std::fs::read_link(&link) {
            Ok(target) if target.is_absolute() => {
                root.join(target.strip_prefix("/").unwrap_or(&target))
            }
            Ok(target) => root.join("etc").join(target),
            Err(_) => link,
        };
        std::fs::read(path)
            .ok()
            .and_then(|b| Zone::parse(&b))
            .unwrap_or_default()
    }

    /// Reads a TZif file (version 1, 2 or 3; at most 1 MiB).
    pub fn parse(data: &[u8]) -> Option<Zone> {
        if data.len() > 1 << 20 || !data.starts_with(b"TZif") {
            return None;
        }
        let v1 = Header::read(data)?;
        if data[4] == 0 {
            return v1.zone(data, 44, 4);
        }
        // Version 2+: skip the 32-bit block, read the 64-bit one and the footer.
        let second = 44 + v1.block_len(4);
        let v2 = Header::read(data.get(second..)?)?;
        let mut zone = v2.zone(data, second + 44, 8)?;
        let footer_at = second + 44 + v2.block_len(8);
        let footer = std::str::from_utf8(data.get(footer_at..)?).ok()?;
        let tz = footer.trim_matches('\n');
        zone.rule = Rule::parse(tz);
        if zone.rule.is_none() {
            if let Some(std) = fixed_offset(tz) {
                if zone.transitions.is_empty() {
                    zone.initial = std;
                }
            }
        }
        Some(zone)
    }

    /// The offset from UTC (seconds) in force at `t` (Unix seconds).
    pub fn offset_at(&self, t: i64) -> i32 {
        match self.transitions.iter().rposition(|(at, _)| *at <= t) {
            Some(i) if i + 1 < self.transitions.len() || self.rule.is_none() => {
                self.transitions[i].1
            }
            Some(i) => self
                .rule
                .as_ref()
                .map_or(self.transitions[i].1, |r| r.offset_at(t)),
            None if self.transitions.is_empty() => {
                self.rule.as_ref().map_or(self.initial, |r| r.offset_at(t))
            }
            None => self.initial,
        }
    }

    /// Local time at `t`: Unix seconds shifted by the offset.
    pub fn local(&self, t: i64) -> i64 {
        t + i64::from(self.offset_at(t))
    }
}

struct Header {
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

impl Header {
    fn read(d: &[u8]) -> Option<Header> {
        let n = |i: usize| -> Option<usize> {
            Some(u32::from_be_bytes(d.get(20 + 4 * i..24 + 4 * i)?.try_into().ok()?) as usize)
        };
        let h = Header {
            isutcnt: n(0)?,
            isstdcnt: n(1)?,
            leapcnt: n(2)?,
            timecnt: n(3)?,
            typecnt: n(4)?,
            charcnt: n(5)?,
        };
        (h.typecnt > 0 && h.timecnt < 100_000 && h.typecnt < 256).then_some(h)
    }

    fn block_len(&self, time_size: usize) -> usize {
        self.timecnt * time_size
            + self.timecnt
            + self.typecnt * 6
            + self.charcnt
            + self.leapcnt * (time_size + 4)
            + self.isstdcnt
            + self.isutcnt
    }

    fn zone(&self, d: &[u8], at: usize, time_size: usize) -> Option<Zone> {
        let times = d.get(at..at + self.timecnt * time_size)?;
        let idx = d.get(at + self.timecnt * time_size..at + self.timecnt * (time_size + 1))?;
        let types_at = at + self.timecnt * (time_size + 1);
        let offset_of = |i: usize| -> Option<i32> {
            let b = d.get(types_at + 6 * i..types_at + 6 * i + 4)?;
            Some(i32::from_be_bytes(b.try_into().ok()?))
        };
        let mut transitions = Vec::with_capacity(self.timecnt);
        for i in 0..self.timecnt {
            let t = &times[i * time_size..(i + 1) * time_size];
            let at = if time_size == 8 {
                i64::from_be_bytes(t.try_into().ok()?)
            } else {
                i64::from(i32::from_be_bytes(t.try_into().ok()?))
            };
            transitions.push((at, offset_of(*idx.get(i)? as usize)?));
        }
        Some(Zone {
            transitions,
            initial: offset_of(0)?,
            rule: None,
        })
    }
}

/// `UTC0`, `<+03>-3`, `EST5`: a zone without daylight saving (POSIX offsets are west-positive).
fn fixed_offset(tz: &str) -> Option<i32> {
    let (_, rest) = name(tz)?;
    let (off, rest) = posix_offset(rest)?;
    rest.is_empty().then_some(-off)
}

/// A zone abbreviation: letters, or anything in `<...>`.
fn name(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('<') {
        let end = rest.find('>')?;
        return Some((&rest[..end], &rest[end + 1..]));
    }
    let end = s
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    (end >= 3).then(|| (&s[..end], &s[end..]))
}

/// `[+-]hh[:mm[:ss]]` in seconds, and the rest.
fn posix_offset(s: &str) -> Option<(i32, &str)> {
    let (sign, s) = match s.as_bytes().first()? {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(s.len());
    let mut parts = s[..end].split(':').map(|p| p.parse::<i32>());
    let h = parts.next()?.ok()?;
    let m = parts.next().unwrap_or(Ok(0)).ok()?;
    let sec = parts.next().unwrap_or(Ok(0)).ok()?;
    (end > 0).then_some((sign * (h * 3600 + m * 60 + sec), &s[end..]))
}

impl Rule {
    fn parse(tz: &str) -> Option<Rule> {
        let (_, rest) = name(tz)?;
        let (std_west, rest) = posix_offset(rest)?;
        let (_, rest) = name(rest)?;
        let (dst_west, rest) = match rest.strip_prefix(',') {
            Some(_) => (std_west - 3600, rest),
            None => posix_offset(rest)?,
        };
        let mut parts = rest.strip_prefix(',')?.split(',');
        let start = Rule::date(parts.next()?)?;
        let end = Rule::date(parts.next()?)?;
        Some(Rule {
            std: -std_west,
            dst: -dst_west,
            start,
            end,
        })
    }

    /// `Mm.w.d[/time]` (the form every current zone uses).
    fn date(s: &str) -> Option<(u32, u32, u32, i64)> {
        let (date, time) = s.split_once('/').unwrap_or((s, "2"));
        let mut it = date
            .strip_prefix('M')?
            .split('.')
            .map(|p| p.parse::<u32>().ok());
        let (m, w, d) = (it.next()??, it.next()??, it.next()??);
        let (time, _) = posix_offset(time)?;
        ((1..=12).contains(&m) && (1..=5).contains(&w) && d <= 6).then_some((
            m,
            w,
            d,
            i64::from(time),
        ))
    }

    fn offset_at(&self, t: i64) -> i32 {
        let year = civil_from_days((t + i64::from(self.std)).div_euclid(86_400)).0;
        // Both changes are given in the local time in force before them.
        let start = transition_utc(year, self.start) - i64::from(self.std);
        let end = transition_utc(year, self.end) - i64::from(self.dst);
        let in_dst = if start < end {
            t >= start && t < end
        } else {
            t >= start || t < end
        };
        if in_dst {
            self.dst
        } else {
            self.std
        }
    }
}

/// The instant (as if local time were UTC) of `Mm.w.d/time` in `year`.
fn transition_utc(year: i64, (m, w, d, time): (u32, u32, u32, i64)) -> i64 {
    let first = days_from_civil(year, m, 1);
    let weekday_first = (first + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
    let mut day = 1 + (d + 7 - weekday_first) % 7 + (w - 1) * 7;
    let days_in_month = (days_from_civil(
        if m == 12 { year + 1 } else { year },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - first) as u32;
    while day > days_in_month {
        day -= 7;
    }
    (first + i64::from(day) - 1) * 86_400 + time
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-07-01T12:00:00Z and 2026-01-15T12:00:00Z.
    const SUMMER: i64 = 1_782_907_200;
    const WINTER: i64 = 1_768_478_400;

    #[test]
    fn the_footer_rule_gives_daylight_saving() {
        let r = Rule::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!((r.std, r.dst), (3600, 7200));
        assert_eq!(r.offset_at(SUMMER), 7200);
        assert_eq!(r.offset_at(WINTER), 3600);
        // 2026-03-29: clocks go forward at 01:00 UTC; 2026-10-25: back at 01:00 UTC.
        assert_eq!(r.offset_at(1_774_746_000 - 1), 3600);
        assert_eq!(r.offset_at(1_774_746_000), 7200);
        assert_eq!(r.offset_at(1_792_890_000 - 1), 7200);
        assert_eq!(r.offset_at(1_792_890_000), 3600);
        // The southern hemisphere: daylight saving across the new year.
        let s = Rule::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(s.offset_at(WINTER), 11 * 3600);
        assert_eq!(s.offset_at(SUMMER), 10 * 3600);
        assert_eq!(fixed_offset("<+0530>-5:30"), Some(19_800));
        assert_eq!(fixed_offset("UTC0"), Some(0));
    }

    #[test]
    fn host_zone_files_parse() {
        // This machine's tzdata, when present: Berlin and UTC.
        let berlin = std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin");
        if let Ok(b) = std::fs::read(berlin) {
            let z = Zone::parse(&b).unwrap();
            assert_eq!(z.offset_at(SUMMER), 7200);
            assert_eq!(z.offset_at(WINTER), 3600);
            // Far past any transition in the file: the footer's rule.
            assert_eq!(z.offset_at(SUMMER + 40 * 365 * 86_400), 7200);
        }
        assert_eq!(Zone::parse(b"garbage"), None);
        assert_eq!(Zone::default().offset_at(SUMMER), 0);
        let dir = crate::testutil::TempDir::new("zone");
        assert_eq!(
            Zone::of_host(dir.path()).offset_at(SUMMER),
            0,
            "no file: UTC"
        );
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 11_016, 20_000, 50_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // The last Sunday of March 2026 is the 29th.
        assert_eq!(
            transition_utc(2026, (3, 5, 0, 7200)),
            days_from_civil(2026, 3, 29) * 86_400 + 7200
        );
    }
}
