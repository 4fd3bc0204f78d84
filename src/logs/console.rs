//! The daemon's own log lines on stdout: `HH:MM:SS [LEVEL] message` (UTC), each line in one
//! write so the lines of different threads never interleave. A dozen lines of our own in place
//! of simplelog, which brought the `time` crate's formatting machinery into the binary.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct Console;

static CONSOLE: Console = Console;

impl Log for Console {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} [{}] {}\n",
            clock(super::now_ms() / 1000),
            record.level(),
            record.args()
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// `HH:MM:SS` of a Unix time, UTC.
fn clock(unix_secs: i64) -> String {
    let s = unix_secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// Sends the `log` macros' records at `level` and above to stdout (once per process).
pub fn init(level: LevelFilter) {
    if log::set_logger(&CONSOLE).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_utc_time_of_day() {
        assert_eq!(super::clock(0), "00:00:00");
        assert_eq!(super::clock(1_764_740_531), "05:42:11");
        assert_eq!(super::clock(-1), "23:59:59");
    }
}
