//! The host firewall with the real iptables, inside private network namespaces: a "device"
//! namespace with interfaces named like balenaOS's (`eth0`, `docker0`, `supervisor0`) joined
//! by veth pairs to one client namespace each, a listener on the API port and on another port,
//! and `tinyvisor firewall` installing the rules. Which client reaches which port is checked
//! for each mode. Nothing touches this machine's own tables.

mod common;

use std::process::{Command, Stdio};

fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn must(script: &str) -> String {
    let (ok, text) = sh(script);
    assert!(ok, "{script}: {text}");
    text
}

/// The namespaces of one test, removed on drop (with the listeners in them).
struct Lab {
    tag: String,
    listeners: Vec<std::process::Child>,
}

/// (client namespace suffix, device-side interface, subnet's third octet)
const LINKS: &[(&str, &str, u8)] = &[
    ("lan", "eth0", 1),
    ("dock", "docker0", 2),
    ("sup", "supervisor0", 3),
];

impl Lab {
    fn new() -> Lab {
        let tag = format!("tvfw{}", std::process::id() % 100_000);
        let dev = format!("{tag}dev");
        must(&format!("ip netns add {dev} && ip -n {dev} link set lo up"));
        for (name, intf, octet) in LINKS {
            let ns = format!("{tag}{name}");
            must(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip link add {tag}{name}a type veth peer name {tag}{name}b && \
                 ip link set {tag}{name}a netns {dev} && ip link set {tag}{name}b netns {ns} && \
                 ip -n {dev} link set {tag}{name}a name {intf} && \
                 ip -n {dev} addr add 10.251.{octet}.1/24 dev {intf} && ip -n {dev} link set {intf} up && \
                 ip -n {ns} addr add 10.251.{octet}.2/24 dev {tag}{name}b && ip -n {ns} link set {tag}{name}b up"
            ));
        }
        let listen = |port: u16| {
            Command::new("ip")
                .args(["netns", "exec", &dev, "socat"])
                .arg(format!("TCP-LISTEN:{port},fork,reuseaddr"))
                .arg("SYSTEM:echo ok")
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let lab = Lab {
            listeners: vec![listen(48484), listen(8080)],
            tag,
        };
        // Wait for both listeners.
        for port in [48484, 8080] {
            let ok = (0..50).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                lab.reaches("dev", "127.0.0.1", port)
            });
            assert!(ok, "listener on {port} did not start");
        }
        lab
    }

    /// Whether namespace `from` gets the listener's answer at `addr:port` within a second.
    fn reaches(&self, from: &str, addr: &str, port: u16) -> bool {
        let (_, text) = sh(&format!(
            "ip netns exec {}{from} socat -T1 - TCP:{addr}:{port},connect-timeout=1 </dev/null",
            self.tag
        ));
        text.trim() == "ok"
    }

    /// The API port and the other port, as seen from lo, the LAN, docker0 and supervisor0.
    fn matrix(&self) -> Vec<(&'static str, u16, bool)> {
        let mut out = vec![("lo", 48484, self.reaches("dev", "127.0.0.1", 48484))];
        for (name, _, octet) in LINKS {
            for port in [48484, 8080] {
                out.push((
                    name,
                    port,
                    self.reaches(name, &format!("10.251.{octet}.1"), port),
                ));
            }
        }
        out
    }

    fn firewall(&self, args: &str) {
        must(&format!(
            "ip netns exec {}dev {} --config-path /nonexistent/config.json firewall {args}",
            self.tag,
            env!("CARGO_BIN_EXE_tinyvisor")
        ));
    }

    fn iptables(&self, cmd: &str) -> String {
        must(&format!("ip netns exec {}dev {cmd}", self.tag))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
        let mut del = format!("ip netns del {}dev", self.tag);
        for (name, _, _) in LINKS {
            del.push_str(&format!("; ip netns del {}{name}", self.tag));
        }
        sh(&del);
    }
}

fn can_make_namespaces() -> bool {
    sh("command -v ip && command -v socat && command -v iptables-restore").0
}

#[test]
fn the_api_is_reachable_only_where_each_mode_allows() {
    assert!(
        can_make_namespaces(),
        "needs ip, socat and iptables (scripts/test installs them)"
    );
    let lab = Lab::new();
    // A rule of the host's own, which must keep its place behind the jump.
    lab.iptables("iptables -A INPUT -p tcp --dport 9999 -j ACCEPT");
    let open_everywhere: Vec<_> = lab.matrix();
    assert!(
        open_everywhere.iter().all(|(_, _, ok)| *ok),
        "{open_everywhere:?}"
    );

    // Off (the default): only the API port is restricted, to the supervisor's interfaces.
    lab.firewall("--mode off");
    assert_eq!(
        lab.matrix(),
        [
            ("lo", 48484, true),
            ("lan", 48484, false),
            ("lan", 8080, true),
            ("dock", 48484, true),
            ("dock", 8080, true),
            ("sup", 48484, true),
            ("sup", 8080, true),
        ]
    );
    // Local mode: the API on every interface.
    lab.firewall("--mode off --local-mode");
    assert!(lab.matrix().iter().all(|(_, _, ok)| *ok));
    // On: the rest of the host is closed too (from every interface but lo).
    lab.firewall("--mode on");
    assert_eq!(
        lab.matrix(),
        [
            ("lo", 48484, true),
            ("lan", 48484, false),
            ("lan", 8080, false),
            ("dock", 48484, true),
            ("dock", 8080, false),
            ("sup", 48484, true),
            ("sup", 8080, false),
        ]
    );
    // Auto: closed only with host-networked services.
    lab.firewall("--mode auto");
    assert!(lab.reaches("lan", "10.251.1.1", 8080));
    lab.firewall("--mode auto --host-network");
    assert!(!lab.reaches("lan", "10.251.1.1", 8080));

    // Applied again and again: one jump, the host's rule still there after it, IPv6 too.
    let input = lab.iptables("iptables -S INPUT");
    let rules: Vec<&str> = input.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(
        rules,
        [
            "-A INPUT -j BALENA-FIREWALL",
            "-A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT"
        ]
    );
    let v6 = lab.iptables("ip6tables -S BALENA-FIREWALL");
    assert!(
        v6.contains("--dport 48484") && v6.contains("ipv6-icmp"),
        "{v6}"
    );
}
