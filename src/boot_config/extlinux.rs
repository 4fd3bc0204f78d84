//! Older Jetson `extlinux/extlinux.conf` (docs/contract/device-config.md §2.2):
//! `HOST_EXTLINUX_isolcpus` in the default label's APPEND line and `HOST_EXTLINUX_fdt` as its FDT
//! directive. Only those two lines are edited; everything else in the file stays as it is.

use super::{
    err, read_optional, write_file, Backend, BootConfig, BootError, BootKeys, BootValue, Mounts,
};

pub struct Extlinux;

pub const PREFIX: &str = "HOST_EXTLINUX_";

/// The two settings of `HOST_EXTLINUX_*` (extra_uEnv.txt has the same).
pub fn supports(key: &str) -> bool {
    key == "isolcpus" || key == "fdt"
}
const MISSING: &str = "Could not find extlinux file. Device is possibly bricked";

pub fn matches(device_type: &str, meta_release: Option<&str>) -> bool {
    device_type.starts_with("jetson-") && meta_release.is_some_and(|v| older_than(v, (2, 47, 0)))
}

/// `version` (like `2.45.1+rev2`) is below `limit`; unparsable versions are not.
fn older_than(version: &str, limit: (u64, u64, u64)) -> bool {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['+', '-']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => (a, b, c) < limit,
        _ => false,
    }
}

fn path(m: &Mounts) -> std::path::PathBuf {
    m.boot.join("extlinux/extlinux.conf")
}

/// The lines of extlinux.conf we edit: the default label's APPEND and FDT (indices).
struct Parsed {
    append: usize,
    fdt: Option<usize>,
}

fn directive(line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let (first, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let rest = rest.trim();
    if first.eq_ignore_ascii_case("MENU") {
        let (second, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return Some((
            format!("MENU {}", second.to_uppercase()),
            value.trim().into(),
        ));
    }
    Some((first.to_uppercase(), rest.to_string()))
}

fn parse(lines: &[&str]) -> Result<Parsed, BootError> {
    let mut default = None;
    let mut labels: Vec<(String, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match directive(line) {
            Some((d, v)) if d == "LABEL" => labels.push((v, i)),
            Some((d, v)) if d == "DEFAULT" && labels.is_empty() => default = Some(v),
            _ => {}
        }
    }
    let default = default.ok_or_else(|| err("ExtLinuxParseError: no DEFAULT directive"))?;
    let pos = labels
        .iter()
        .position(|(name, _)| *name == default)
        .ok_or_else(|| err(format!("ExtLinuxParseError: no label named {default}")))?;
    let label_start = labels[pos].1;
    let label_end = labels.get(pos + 1).map_or(lines.len(), |(_, i)| *i);
    let mut append = None;
    let mut fdt = None;
    for (i, line) in lines
        .iter()
        .enumerate()
        .take(label_end)
        .skip(label_start + 1)
    {
        match directive(line) {
            Some((d, _)) if d == "APPEND" => append = Some(i),
            Some((d, _)) if d == "FDT" => fdt = Some(i),
            _ => {}
        }
    }
    let append =
        append.ok_or_else(|| err("AppendDirectiveError: the default label has no APPEND"))?;
    Ok(Parsed { append, fdt })
}

fn append_tokens(line: &str) -> Result<Vec<String>, BootError> {
    let (_, value) = directive(line).unwrap_or_default();
    let tokens: Vec<String> = value.split_whitespace().map(String::from).collect();
    if let Some(bad) = tokens.iter().find(|t| t.matches('=').count() > 1) {
        return Err(err(format!(
            "AppendDirectiveError: unable to parse '{bad}'"
        )));
    }
    Ok(tokens)
}

fn indent_of(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

impl BootKeys for Extlinux {
    fn name(&self) -> &'static str {
        "extlinux"
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn is_supported(&self, key: &str) -> bool {
        supports(key)
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        for (k, v) in target {
            let BootValue::Str(v) = v else {
                return Err(err(format!("{k} must be a single value")));
            };
            if v.contains('=') || v.contains(char::is_whitespace) {
                return Err(err(format!("Invalid value for {k}: {v:?}")));
            }
            if k == "fdt" && v.is_empty() {
                return Err(err("fdt must not be empty"));
            }
        }
        Ok(())
    }
}

impl Backend for Extlinux {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let text = read_optional(&path(m))?.ok_or_else(|| err(MISSING))?;
        let lines: Vec<&str> = text.lines().collect();
        let p = parse(&lines)?;
        let mut cfg = BootConfig::new();
        for t in append_tokens(lines[p.append])? {
            if let Some(v) = t.strip_prefix("isolcpus=") {
                cfg.insert("isolcpus".into(), BootValue::Str(v.into()));
            } else if t == "isolcpus" {
                cfg.insert("isolcpus".into(), BootValue::Str(String::new()));
            }
        }
        if let Some(i) = p.fdt {
            cfg.insert(
                "fdt".into(),
                BootValue::Str(directive(lines[i]).unwrap_or_default().1),
            );
        }
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let text = read_optional(&path(m))?.ok_or_else(|| err(MISSING))?;
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let p = parse(&refs)?;
        let mut tokens: Vec<String> = append_tokens(refs[p.append])?
            .into_iter()
            .filter(|t| t != "isolcpus" && !t.starts_with("isolcpus="))
            .collect();
        if let Some(BootValue::Str(v)) = target.get("isolcpus") {
            tokens.push(if v.is_empty() {
                "isolcpus".into()
            } else {
                format!("isolcpus={v}")
            });
        }
        let indent = indent_of(refs[p.append]).to_string();
        let fdt = match target.get("fdt") {
            Some(BootValue::Str(v)) => Some(format!("{indent}FDT {v}")),
            _ => None,
        };
        lines[p.append] = format!("{indent}APPEND {}", tokens.join(" "));
        match (p.fdt, fdt) {
            (Some(i), Some(line)) => lines[i] = line,
            (Some(i), None) => {
                lines.remove(i);
            }
            (None, Some(line)) => lines.insert(p.append, line),
            (None, None) => {}
        }
        write_file(&path(m), (lines.join("\n") + "\n").as_bytes())
    }
}
