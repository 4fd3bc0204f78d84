//! Container contracts (docs/contract/engine.md (g)): a service may require versions or slugs of
//! the device's software and hardware. Unmet requirements reject the app unless the service is
//! marked optional.

use super::target::{err, join, kind, Result};
use serde_json::Value;

/// Requirement types a contract may name.
pub const REQUIREMENT_TYPES: &[&str] = &[
    "sw.supervisor",
    "sw.l4t",
    "sw.os",
    "sw.kernel",
    "hw.device-type",
    "arch.sw",
];

/// What the device offers, by requirement type: (slug, version).
#[derive(Debug, Clone, Default)]
pub struct Universe {
    pub supervisor_version: String,
    pub device_type: String,
    pub arch: String,
    pub os: Option<(String, String)>,
    pub kernel: Option<(String, String)>,
    pub l4t: Option<String>,
}

impl Universe {
    fn offers(&self, ty: &str) -> Vec<(Option<&str>, Option<&str>)> {
        match ty {
            "sw.supervisor" => vec![(
                Some("balena-supervisor"),
                Some(self.supervisor_version.as_str()),
            )],
            "hw.device-type" => vec![(Some(self.device_type.as_str()), None)],
            "arch.sw" => vec![(Some(self.arch.as_str()), None)],
            "sw.os" => self
                .os
                .iter()
                .map(|(s, v)| (Some(s.as_str()), Some(v.as_str())))
                .collect(),
            "sw.kernel" => self
                .kernel
                .iter()
                .map(|(s, v)| (Some(s.as_str()), Some(v.as_str())))
                .collect(),
            "sw.l4t" => self.l4t.iter().map(|v| (None, Some(v.as_str()))).collect(),
            _ => vec![],
        }
    }
}

/// Checks a contract's shape; errors name the path and say what is wrong.
pub fn validate(contract: &Value, path: &str) -> Result<()> {
    let Some(m) = contract.as_object() else {
        return err(path, format!("expected an object, got {}", kind(contract)));
    };
    if let Some(t) = m.get("type") {
        if !t.is_string() {
            return err(&join(path, "type"), "expected a string");
        }
    }
    if let Some(r) = m.get("requires") {
        let Some(list) = r.as_array() else {
            return err(&join(path, "requires"), "expected a list");
        };
        for (i, req) in list.iter().enumerate() {
            validate_requirement(req, &format!("{path}.requires[{i}]"))?;
        }
    }
    Ok(())
}

fn validate_requirement(req: &Value, path: &str) -> Result<()> {
    let Some(m) = req.as_object() else {
        return err(path, format!("expected an object, got {}", kind(req)));
    };
    if let Some(or) = m.get("or") {
        let Some(list) = or.as_array() else {
            return err(&join(path, "or"), "expected a list");
        };
        for (i, r) in list.iter().enumerate() {
            validate_requirement(r, &format!("{path}.or[{i}]"))?;
        }
        return Ok(());
    }
    match m.get("type").and_then(Value::as_str) {
        Some(t) if REQUIREMENT_TYPES.contains(&t) => {}
        Some(t) => {
            return err(
                &join(path, "type"),
                format!("unsupported requirement type {t:?}"),
            )
        }
        None => return err(&join(path, "type"), "required field is missing"),
    }
    if let Some(v) = m.get("version") {
        let Some(s) = v.as_str() else {
            return err(&join(path, "version"), "expected a string");
        };
        if Range::parse(s).is_none() {
            return err(
                &join(path, "version"),
                format!("invalid version range {s:?}"),
            );
        }
    }
    if let Some(s) = m.get("slug") {
        if !s.is_string() {
            return err(&join(path, "slug"), "expected a string");
        }
    }
    Ok(())
}

/// Does the universe satisfy every requirement of a (validated) contract?
pub fn satisfied(contract: &Value, universe: &Universe) -> bool {
    contract
        .get("requires")
        .and_then(Value::as_array)
        .is_none_or(|reqs| reqs.iter().all(|r| requirement_met(r, universe)))
}

fn requirement_met(req: &Value, u: &Universe) -> bool {
    if let Some(or) = req.get("or").and_then(Value::as_array) {
        return or.iter().any(|r| requirement_met(r, u));
    }
    let ty = req.get("type").and_then(Value::as_str).unwrap_or_default();
    let slug = req.get("slug").and_then(Value::as_str);
    let range = req
        .get("version")
        .and_then(Value::as_str)
        .and_then(Range::parse);
    u.offers(ty).iter().any(|(have_slug, have_version)| {
        let slug_ok = slug.is_none_or(|s| *have_slug == Some(s));
        let version_ok = match &range {
            None => true,
            Some(r) => have_version
                .and_then(Version::parse)
                .is_some_and(|v| r.matches(&v)),
        };
        slug_ok && version_ok
    })
}

/// A version as `major.minor.patch[-pre]`; missing parts read as 0 (`31.0` is `31.0.0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    nums: [u64; 3],
    /// Empty sorts after any pre-release (1.0.0-rc < 1.0.0).
    release: bool,
    pre: String,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().trim_start_matches(['v', '=']);
        let s = s.split('+').next()?;
        let (core, pre) = match s.split_once('-') {
            Some((c, p)) => (c, p.to_string()),
            None => (s, String::new()),
        };
        let mut nums = [0u64; 3];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        for (i, p) in parts.iter().enumerate() {
            nums[i] = p.parse().ok()?;
        }
        Some(Version {
            nums,
            release: pre.is_empty(),
            pre,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// A semver range: `||`-separated sets of whitespace-separated comparators, with `^`, `~`,
/// x-ranges (`1.x`, `*`) and hyphen ranges (`1.2 - 2.0`).
#[derive(Debug, Clone)]
pub struct Range(Vec<Vec<(Op, Version)>>);

fn bound(nums: [u64; 3], release: bool) -> Version {
    Version {
        nums,
        release,
        pre: String::new(),
    }
}

/// Expands one comparator token into (op, version) pairs.
fn comparator(token: &str) -> Option<Vec<(Op, Version)>> {
    let (op, rest) = if let Some(r) = token.strip_prefix(">=") {
        (Some(Op::Ge), r)
    } else if let Some(r) = token.strip_prefix("<=") {
        (Some(Op::Le), r)
    } else if let Some(r) = token.strip_prefix('>') {
        (Some(Op::Gt), r)
    } else if let Some(r) = token.strip_prefix('<') {
        (Some(Op::Lt), r)
    } else if let Some(r) = token.strip_prefix('=') {
        (Some(Op::Eq), r)
    } else {
        (None, token)
    };
    let (caret, tilde, rest) = match rest.chars().next() {
        Some('^') => (true, false, &rest[1..]),
        Some('~') => (
            false,
            true,
            rest.trim_start_matches('~').trim_start_matches('>'),
        ),
        _ => (false, false, rest),
    };
    let rest = rest.trim_start_matches('v');
    if rest.is_empty() || rest == "*" || rest.eq_ignore_ascii_case("x") {
        return Some(vec![(Op::Ge, bound([0, 0, 0], false))]);
    }
    let core = rest.split(['-', '+']).next()?;
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut given = 0;
    let mut nums = [0u64; 3];
    for p in &parts {
        if matches!(*p, "x" | "X" | "*") {
            break;
        }
        nums[given] = p.parse().ok()?;
        given += 1;
    }
    let next = |n: [u64; 3], at: usize| -> Version {
        let mut m = [0u64; 3];
        m[..at].copy_from_slice(&n[..at]);
        m[at - 1] += 1;
        bound(m, false)
    };
    let low = if given == 3 {
        Version::parse(rest)?
    } else {
        bound(nums, false)
    };
    let exact = low.clone();
    Some(match (op, caret, tilde) {
        (None, true, _) => {
            // ^1.2.3 := >=1.2.3 <2.0.0; ^0.2.3 := <0.3.0; ^0.0.3 := <0.0.4
            let at = if nums[0] > 0 || given <= 1 {
                1
            } else if nums[1] > 0 || given == 2 {
                2
            } else {
                3
            };
            vec![(Op::Ge, low), (Op::Lt, next(nums, at.min(given.max(1))))]
        }
        (None, _, true) => {
            let at = if given >= 2 { 2 } else { 1 };
            vec![(Op::Ge, low), (Op::Lt, next(nums, at))]
        }
        (None, false, false) | (Some(Op::Eq), _, _) => {
            if given == 3 {
                vec![(Op::Eq, exact)]
            } else if given == 0 {
                vec![(Op::Ge, bound([0, 0, 0], false))]
            } else {
                vec![(Op::Ge, low), (Op::Lt, next(nums, given))]
            }
        }
        (Some(Op::Gt), _, _) if given < 3 && given > 0 => vec![(Op::Ge, next(nums, given))],
        (Some(Op::Le), _, _) if given < 3 && given > 0 => vec![(Op::Lt, next(nums, given))],
        (Some(o), _, _) => vec![(o, if given == 3 { exact } else { low })],
    })
}

impl Range {
    pub fn parse(s: &str) -> Option<Range> {
        let mut sets = Vec::new();
        for alt in s.split("||") {
            let alt = alt.trim();
            let mut set = Vec::new();
            if let Some((a, b)) = alt.split_once(" - ") {
                let lo = comparator(&format!(">={}", a.trim()))?;
                let hi = comparator(&format!("<={}", b.trim()))?;
                set.extend(lo);
                set.extend(hi);
            } else {
                // Allow `>= 1.2` with a space after the operator.
                let mut tokens: Vec<String> = Vec::new();
                for t in alt.split_whitespace() {
                    match tokens.last_mut() {
                        Some(last)
                            if matches!(
                                last.as_str(),
                                ">" | ">=" | "<" | "<=" | "=" | "^" | "~"
                            ) =>
                        {
                            last.push_str(t)
                        }
                        _ => tokens.push(t.to_string()),
                    }
                }
                if tokens.is_empty() {
                    tokens.push("*".into());
                }
                for t in tokens {
                    set.extend(comparator(&t)?);
                }
            }
            sets.push(set);
        }
        Some(Range(sets))
    }

    pub fn matches(&self, v: &Version) -> bool {
        self.0.iter().any(|set| {
            set.iter().all(|(op, b)| match op {
                Op::Lt => v < b,
                Op::Le => v <= b,
                Op::Gt => v > b,
                Op::Ge => v >= b,
                Op::Eq => v.nums == b.nums && v.pre == b.pre,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(range: &str, v: &str) -> bool {
        Range::parse(range)
            .unwrap_or_else(|| panic!("range {range}"))
            .matches(&Version::parse(v).unwrap())
    }

    #[test]
    fn semver_ranges() {
        for (r, v, want) in [
            (">=12.0.0", "19.0.5", true),
            (">=20", "19.0.5", false),
            ("<20.0.0", "19.0.5", true),
            ("^19.0.0", "19.9.0", true),
            ("^19.0.0", "20.0.0", false),
            ("^0.2.3", "0.2.9", true),
            ("^0.2.3", "0.3.0", false),
            ("~1.2.3", "1.2.9", true),
            ("~1.2.3", "1.3.0", false),
            ("1.x", "1.9.9", true),
            ("1.x", "2.0.0", false),
            ("*", "0.0.1", true),
            ("1.2.3 - 2.3.4", "2.3.4", true),
            ("1.2.3 - 2.3.4", "2.3.5", false),
            ("<1.0.0 || >=3", "3.1.0", true),
            ("<1.0.0 || >=3", "2.0.0", false),
            (">= 5.10 < 6", "5.15.0", true),
            ("=31.0.0", "31.0", true),
            ("31.0.0", "31.0.1", false),
            (">1.2", "1.2.9", false),
            (">1.2", "1.3.0", true),
            ("<=1.2", "1.2.9", true),
            (">=1.0.0", "1.0.0-rc1", false),
        ] {
            assert_eq!(m(r, v), want, "{v} in {r}");
        }
        assert!(Range::parse(">=abc").is_none());
    }

    fn universe() -> Universe {
        Universe {
            supervisor_version: "19.0.5".into(),
            device_type: "raspberrypi0-2w-64".into(),
            arch: "aarch64".into(),
            os: Some(("balena-os".into(), "6.0.10".into())),
            kernel: Some(("linux".into(), "6.1.77".into())),
            l4t: Some("31.0.0".into()),
        }
    }

    #[test]
    fn g_requirements_are_matched_against_the_device() {
        let u = universe();
        for (contract, want) in [
            (
                json!({"type": "sw.container", "requires": [{"type": "sw.supervisor", "version": ">=16"}]}),
                true,
            ),
            (
                json!({"requires": [{"type": "sw.supervisor", "version": ">=20"}]}),
                false,
            ),
            (
                json!({"requires": [{"type": "hw.device-type", "slug": "raspberrypi0-2w-64"}]}),
                true,
            ),
            (
                json!({"requires": [{"type": "hw.device-type", "slug": "intel-nuc"}]}),
                false,
            ),
            (
                json!({"requires": [{"or": [{"type": "arch.sw", "slug": "amd64"}, {"type": "arch.sw", "slug": "aarch64"}]}]}),
                true,
            ),
            (
                json!({"requires": [{"type": "sw.os", "slug": "balena-os", "version": "^6"}, {"type": "sw.kernel", "version": ">=6.1"}]}),
                true,
            ),
            (
                json!({"requires": [{"type": "sw.l4t", "version": "31.0"}]}),
                true,
            ),
            (json!({"type": "sw.container"}), true),
        ] {
            assert_eq!(satisfied(&contract, &u), want, "{contract}");
        }
        let no_l4t = Universe { l4t: None, ..u };
        assert!(!satisfied(
            &json!({"requires": [{"type": "sw.l4t"}]}),
            &no_l4t
        ));
    }

    #[test]
    fn g2_invalid_contracts_are_rejected_with_a_path() {
        for (c, path) in [
            (json!("x"), "c"),
            (json!({"requires": "x"}), "c.requires"),
            (
                json!({"requires": [{"type": "hw.unknown"}]}),
                "c.requires[0].type",
            ),
            (json!({"requires": [{"slug": "a"}]}), "c.requires[0].type"),
            (
                json!({"requires": [{"type": "sw.os", "version": "not a range!"}]}),
                "c.requires[0].version",
            ),
            (
                json!({"requires": [{"or": [{"type": "nope"}]}]}),
                "c.requires[0].or[0].type",
            ),
        ] {
            assert_eq!(validate(&c, "c").unwrap_err().path, path, "{c}");
        }
        assert!(validate(&json!({"type": "sw.container", "requires": [{"type": "sw.supervisor", "version": ">=1"}]}), "c").is_ok());
    }
}
