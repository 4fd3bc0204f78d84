//! Facts about the host the cloud report and registration need (docs/contract/cloud-api.md §5.3):
//! OS release, network addresses and MACs, hardware metrics. Reads /proc, /sys and os-release;
//! changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `KEY="value"` lines of an os-release file.
pub fn os_release(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// OS version (`PRETTY_NAME`) and variant (`VARIANT_ID`, else from `developmentMode`).
pub fn os_version_and_variant(
    path: &Path,
    development_mode: Option<bool>,
) -> (Option<String>, Option<String>) {
    let rel = os_release(path);
    let version = rel.get("PRETTY_NAME").cloned().filter(|v| !v.is_empty());
    let variant = rel
        .get("VARIANT_ID")
        .cloned()
        .filter(|v| !v.is_empty())
        .or_else(|| development_mode.map(|d| if d { "dev" } else { "prod" }.to_string()));
    (version, variant)
}

/// Interfaces whose addresses are not the device's own (engine bridges, VPN, loopback, ...).
pub fn interface_ignored(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let bridge = name
        .strip_prefix("br-")
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    ["balena", "docker", "rce", "tun"]
        .iter()
        .any(|p| numbered(p))
        || bridge
        || matches!(
            name,
            "resin-vpn" | "lo" | "resin-dns" | "supervisor0" | "balena-redsocks" | "resin-redsocks"
        )
}

/// Non-internal IPv4 and global IPv6 addresses of the device's own interfaces, space-separated
/// and sorted so the value only changes when the set does.
pub fn ip_addresses() -> String {
    let mut out = BTreeSet::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once with freeifaddrs.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return String::new();
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if interface_ignored(&name) {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    if !ip.is_loopback() {
                        out.insert(ip.to_string());
                    }
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    // Global scope only: no loopback, no link-local (fe80::/10).
                    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
                    if sin6.sin6_scope_id == 0 && !ip.is_loopback() && !link_local {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(ifap);
    }
    out.into_iter().collect::<Vec<_>>().join(" ")
}

/// MACs of real (type 1, not enslaved) interfaces under `/sys/class/net`, uppercase.
pub fn mac_addresses(sys_class_net: &Path) -> Option<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(sys_class_net).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let kind = std::fs::read_to_string(dir.join("type")).unwrap_or_default();
        if interface_ignored(&name) || kind.trim() != "1" || dir.join("master").exists() {
            continue;
        }
        if let Ok(mac) = std::fs::read_to_string(dir.join("address")) {
            let mac = mac.trim().to_ascii_uppercase();
            if !mac.is_empty() && mac != "00:00:00:00:00:00" {
                out.insert(mac);
            }
        }
    }
    (!out.is_empty()).then(|| out.into_iter().collect::<Vec<_>>().join(" "))
}

/// Hardware metrics of the report, each rounded to its "significant change" bucket by the
/// caller. `None` fields are sent as null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub cpu_usage: Option<u64>,
    pub memory_usage: Option<u64>,
    pub memory_total: Option<u64>,
    pub storage_usage: Option<u64>,
    pub storage_total: Option<u64>,
    pub storage_block_device: Option<String>,
    pub cpu_temp: Option<u64>,
    pub cpu_id: Option<String>,
}

/// Busy and total jiffies from /proc/stat, for CPU usage between two readings.
pub fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Memory used and total in MB: used = total − free − buffers − cached − reclaimable.
pub fn memory_mb(meminfo: &str) -> Option<(u64, u64)> {
    let field = |k: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let total = field("MemTotal")?;
    let free = field("MemFree").unwrap_or(0);
    let used = total
        .saturating_sub(free)
        .saturating_sub(field("Buffers").unwrap_or(0))
        .saturating_sub(field("Cached").unwrap_or(0))
        .saturating_sub(field("SReclaimable").unwrap_or(0));
    Some((used / 1024, total / 1024))
}

fn statvfs(path: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st)
    }
}

/// Used and total MB of the file system holding `path`.
// statvfs's field types are narrower on 32-bit targets: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
pub fn storage_mb(path: &Path) -> Option<(u64, u64)> {
    let st = statvfs(path)?;
    let block = u64::from(st.f_frsize);
    let total = u64::from(st.f_blocks) * block;
    let free = u64::from(st.f_bfree) * block;
    Some((total.saturating_sub(free) / 1_048_576, total / 1_048_576))
}

/// Bytes free for ordinary files on the file system holding `path`.
#[allow(clippy::useless_conversion)]
pub fn available_bytes(path: &Path) -> Option<u64> {
    let st = statvfs(path)?;
    Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// The block device mounted at `mount` (from /proc/self/mounts), e.g. `/dev/mmcblk0p6`.
pub fn block_device(mounts: &str, mount: &Path) -> Option<String> {
    let mount = mount.to_string_lossy();
    mounts
        .lines()
        .rev()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?, parts.next()?))
        })
        .filter(|(dev, at)| *at == mount && dev.starts_with("/dev/"))
        .map(|(dev, _)| dev.to_string())
        .next()
}

/// Reads every metric now; CPU usage is measured since the previous `cpu_times` reading.
pub fn metrics(data_path: &Path, previous_cpu: Option<(u64, u64)>) -> Metrics {
    // Without an earlier reading, the average since boot (a first report that says "unknown"
    // would be followed by a metrics-only report as soon as a second reading exists).
    let cpu_usage = match (previous_cpu.unwrap_or((0, 0)), cpu_times()) {
        ((b0, t0), Some((b1, t1))) if t1 > t0 => Some(b1.saturating_sub(b0) * 100 / (t1 - t0)),
        _ => None,
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| memory_mb(&m));
    let storage = storage_mb(data_path);
    let cpu_temp = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|milli| milli / 1000);
    let cpu_id = [
        "/proc/device-tree/serial-number",
        "/sys/devices/soc0/serial_number",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| {
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_lowercase()
    })
    .filter(|s| !s.is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    Metrics {
        cpu_usage,
        memory_usage: mem.map(|m| m.0),
        memory_total: mem.map(|m| m.1),
        storage_usage: storage.map(|s| s.0),
        storage_total: storage.map(|s| s.1),
        storage_block_device: block_device(&mounts, data_path),
        cpu_temp,
        cpu_id,
    }
}

/// Hands freed heap pages back to the kernel after handling a large input (a big target):
/// glibc keeps them in the heap otherwise, so one 10 MB request would raise RSS for good.
/// musl returns large frees by itself.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn engine_and_vpn_interfaces_are_ignored() {
        for name in [
            "balena0",
            "docker0",
            "tun0",
            "rce1",
            "resin-vpn",
            "lo",
            "supervisor0",
            "br-0123456789ab",
            "resin-redsocks",
        ] {
            assert!(interface_ignored(name), "{name}");
        }
        for name in [
            "eth0",
            "wlan0",
            "br-lan",
            "balena",
            "docker0a",
            "br-0123456789abc",
        ] {
            assert!(!interface_ignored(name), "{name}");
        }
    }

    #[test]
    fn macs_come_from_real_interfaces_only() {
        let dir = TempDir::new("macs");
        let add = |name: &str, kind: &str, mac: &str, master: bool| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            if master {
                std::fs::write(d.join("master"), "").unwrap();
            }
        };
        add("eth0", "1", "dc:a6:32:00:11:22", false);
        add("wlan0", "1", "dc:a6:32:00:11:23", false);
        add("docker0", "1", "02:42:00:00:00:01", false);
        add("veth1", "1", "aa:aa:aa:aa:aa:aa", true);
        add("lo", "772", "00:00:00:00:00:00", false);
        add("can0", "280", "", false);
        assert_eq!(
            mac_addresses(dir.path()).as_deref(),
            Some("DC:A6:32:00:11:22 DC:A6:32:00:11:23")
        );
        assert_eq!(mac_addresses(&dir.path().join("none")), None);
    }

    #[test]
    fn memory_used_leaves_out_caches() {
        let m = "MemTotal:  1024000 kB\nMemFree: 102400 kB\nBuffers: 10240 kB\nCached: 204800 kB\nSReclaimable: 10240 kB\n";
        assert_eq!(
            memory_mb(m),
            Some(((1024000 - 102400 - 10240 - 204800 - 10240) / 1024, 1000))
        );
        assert_eq!(memory_mb("nothing"), None);
    }

    #[test]
    fn os_variant_falls_back_to_development_mode() {
        let dir = TempDir::new("osrel");
        let p = dir.path().join("os-release");
        std::fs::write(&p, "PRETTY_NAME=\"balenaOS 6.0.10\"\nVARIANT_ID=prod\n").unwrap();
        assert_eq!(
            os_version_and_variant(&p, Some(true)),
            (Some("balenaOS 6.0.10".into()), Some("prod".into()))
        );
        std::fs::write(&p, "PRETTY_NAME=\"balenaOS 6.0.10\"\n").unwrap();
        assert_eq!(
            os_version_and_variant(&p, Some(true)).1.as_deref(),
            Some("dev")
        );
        assert_eq!(os_version_and_variant(&p, None).1, None);
        assert_eq!(
            os_version_and_variant(&dir.path().join("x"), None),
            (None, None)
        );
    }

    #[test]
    fn block_device_is_the_last_mount_at_the_path() {
        let mounts = "/dev/mmcblk0p5 /mnt/data ext4 rw 0 0\noverlay / overlay rw 0 0\n/dev/mmcblk0p6 /mnt/data ext4 rw 0 0\n";
        assert_eq!(
            block_device(mounts, Path::new("/mnt/data")).as_deref(),
            Some("/dev/mmcblk0p6")
        );
        assert_eq!(block_device(mounts, Path::new("/")), None);
    }

    #[test]
    fn live_readings_are_plausible() {
        assert!(!ip_addresses().split(' ').any(|a| a == "127.0.0.1"));
        let (busy, total) = cpu_times().unwrap();
        assert!(busy <= total && total > 0);
        let (used, total) = storage_mb(Path::new("/")).unwrap();
        assert!(used <= total && total > 0);
    }
}
