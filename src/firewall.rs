//! The host firewall v19 always installs (docs/security.md, "Firewall"): an iptables chain
//! `BALENA-FIREWALL`, jumped to from `INPUT`, that lets the Supervisor API port be reached only
//! from `lo`, `supervisor0`, `docker0`, `tun0` and `resin-vpn` (from anywhere in local mode),
//! and, with `HOST_FIREWALL_MODE` on (or auto with a host-networked service), closes the rest
//! of the host but for SSH, the engine, mDNS, ICMP and DNS to the engine's bridges.
//!
//! [`ruleset`] renders the rules (pure); [`apply`] hands them to `iptables-restore` and
//! `ip6tables-restore` for IPv4 and IPv6 without touching any other chain's rules.

use std::io::Write;
use std::process::{Command, Stdio};

pub const CHAIN: &str = "BALENA-FIREWALL";

/// Interfaces from which the API is reachable outside local mode (v19's allowed interfaces).
pub const API_INTERFACES: &[&str] = &["resin-vpn", "tun0", "docker0", "lo", "supervisor0"];

/// `HOST_FIREWALL_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    On,
    Off,
    /// On only while some service of the target runs with host networking.
    Auto,
}

impl Mode {
    /// The mode a config value names; anything else is off, as v19 reverts to it (the warning
    /// about an invalid value is the device-config plan's, once per apply).
    pub fn parse(value: &str) -> Mode {
        match value {
            "on" => Mode::On,
            "auto" => Mode::Auto,
            _ => Mode::Off,
        }
    }
}

/// Everything the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub local_mode: bool,
    pub api_port: u16,
    /// A target service uses `network_mode: host` (decides `auto`).
    pub host_network_services: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The `iptables-restore --noflush` input for one family: the chain flushed and rebuilt in
/// v19's order, and the jump from INPUT added unless it is there already (`input_jumps`), so
/// its place among the host's own INPUT rules is kept.
pub fn ruleset(s: &Settings, family: Family, input_jumps: bool) -> String {
    let mut r = vec![
        "*filter".to_string(),
        format!(":{CHAIN} - [0:0]"),
        format!("-F {CHAIN}"),
    ];
    let mut add = |rule: String| r.push(format!("-A {CHAIN} {rule}"));
    let api = |extra: &str, target: &str| {
        format!(
            "-p tcp --dport {}{extra} -m comment --comment \"Supervisor API\" -j {target}",
            s.api_port
        )
    };
    if s.local_mode {
        add(api("", "ACCEPT"));
    } else {
        for intf in API_INTERFACES {
            add(api(&format!(" -i {intf}"), "ACCEPT"));
        }
    }
    add(api("", "REJECT"));
    let icmp = match family {
        Family::V4 => "icmp",
        Family::V6 => "ipv6-icmp",
    };
    for rule in [
        "-p tcp --dport 22222 -m comment --comment \"SSH Server\" -j ACCEPT".to_string(),
        "-p tcp --dport 2375 -m comment --comment \"balenaEngine\" -j ACCEPT".into(),
        "-m addrtype --dst-type MULTICAST -m comment --comment \"mDNS\" -j ACCEPT".into(),
        format!("-p {icmp} -m comment --comment \"ICMP\" -j ACCEPT"),
        "-p udp --dport 53 -i balena0 -m comment --comment \"DNS\" -j ACCEPT".into(),
        "-p udp --dport 53 -i br+ -m comment --comment \"DNS\" -j ACCEPT".into(),
    ] {
        add(rule);
    }
    let closed = match s.mode {
        Mode::On => true,
        Mode::Off => false,
        Mode::Auto => s.host_network_services,
    };
    if !closed {
        let mode = match s.mode {
            Mode::Auto => "auto",
            _ => "off",
        };
        add(format!(
            "-m comment --comment \"Firewall disabled ({mode})\" -j RETURN"
        ));
    }
    add("-m comment --comment \"Reject everything else\" -j REJECT".into());
    // Inserted at the top, in this order: established traffic first, then local sources.
    r.push(format!(
        "-I {CHAIN} 1 -m addrtype --src-type LOCAL -m comment --comment \"Locally-sourced traffic\" -j ACCEPT"
    ));
    r.push(format!(
        "-I {CHAIN} 1 -m state --state ESTABLISHED,RELATED -j ACCEPT"
    ));
    if !input_jumps {
        r.push(format!("-I INPUT 1 -j {CHAIN}"));
    }
    r.push("COMMIT".into());
    r.join("\n") + "\n"
}

/// Why the firewall could not be applied.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host's iptables tools for one family.
fn tools(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables", "iptables-restore"),
        Family::V6 => ("ip6tables", "ip6tables-restore"),
    }
}

/// A tool's output, or its failure with what it said on stderr.
fn succeeded(what: &str, out: std::process::Output) -> Result<std::process::Output, Error> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether INPUT already jumps to the chain.
fn input_jumps(family: Family) -> Result<bool, Error> {
    let (list, _) = tools(family);
    let out = Command::new(list)
        .args(["-w", "-S", "INPUT"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("{list}: {e}")))?;
    let out = succeeded(&format!("{list} -S INPUT"), out)?;
    let jump = format!("-j {CHAIN}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("-A INPUT") && l.trim_end().ends_with(&jump)))
}

fn restore(family: Family, rules: &str) -> Result<(), Error> {
    let (_, restore) = tools(family);
    let mut child = Command::new(restore)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error(format!("{restore}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|e| Error(format!("{restore}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error(format!("{restore}: {e}")))?;
    succeeded(restore, out).map(drop)
}

/// Installs the rules for IPv4 and IPv6. A host without IPv6 tables is not an error for IPv4.
pub fn apply(s: &Settings) -> Result<(), Error> {
    log::info!("Applying firewall mode: {:?}", s.mode);
    for family in [Family::V4, Family::V6] {
        let result =
            input_jumps(family).and_then(|jumps| restore(family, &ruleset(s, family, jumps)));
        match (family, result) {
            (_, Ok(())) => {}
            (Family::V6, Err(e)) => log::warn!("IPv6 firewall not applied: {e}"),
            (Family::V4, Err(e)) => {
                crate::logs::event("Firewall mode not applied due to error", true);
                return Err(e);
            }
        }
    }
    log::info!("Firewall mode applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: Mode, local_mode: bool) -> Settings {
        Settings {
            mode,
            local_mode,
            api_port: 48484,
            host_network_services: false,
        }
    }

    #[test]
    fn the_api_port_is_open_only_on_the_supervisors_interfaces() {
        let r = ruleset(&settings(Mode::Off, false), Family::V4, false);
        for intf in API_INTERFACES {
            assert!(
                r.contains(&format!("-p tcp --dport 48484 -i {intf} -m comment")),
                "{intf}: {r}"
            );
        }
        let reject = "-A BALENA-FIREWALL -p tcp --dport 48484 -m comment --comment \"Supervisor API\" -j REJECT";
        assert!(r.contains(reject));
        // Off: everything else returns to INPUT.
        assert!(r.contains("Firewall disabled (off)\" -j RETURN"));
        assert!(r.contains("-I INPUT 1 -j BALENA-FIREWALL"));
        assert!(r.starts_with("*filter\n:BALENA-FIREWALL - [0:0]\n-F BALENA-FIREWALL\n"));
        assert!(r.ends_with("COMMIT\n"));
    }

    #[test]
    fn local_mode_opens_the_api_on_every_interface() {
        let r = ruleset(&settings(Mode::Off, true), Family::V4, true);
        assert!(r.contains(
            "-A BALENA-FIREWALL -p tcp --dport 48484 -m comment --comment \"Supervisor API\" -j ACCEPT"
        ));
        assert!(!r.contains("-i docker0"));
        assert!(!r.contains("-I INPUT"), "the jump is there already");
    }

    #[test]
    fn on_and_auto_close_the_rest_of_the_host() {
        let on = ruleset(&settings(Mode::On, false), Family::V6, false);
        assert!(!on.contains("RETURN"));
        assert!(on.contains("-p ipv6-icmp"));
        let mut auto = settings(Mode::Auto, false);
        assert!(ruleset(&auto, Family::V4, false).contains("Firewall disabled (auto)"));
        auto.host_network_services = true;
        assert!(!ruleset(&auto, Family::V4, false).contains("RETURN"));
        assert_eq!(Mode::parse("bogus"), Mode::Off);
        assert_eq!(Mode::parse(""), Mode::Off);
    }
}
