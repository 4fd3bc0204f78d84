//! Small encodings shared by the engine client, the cloud link and the key store.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Standard base64 with padding (HTTP Basic).
pub fn base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// URL-safe base64 with padding, as the engine expects in `X-Registry-Auth`.
pub fn base64url(data: &[u8]) -> String {
    URL_SAFE.encode(data)
}

/// Standard base64 that takes its padding or leaves it out (config.json's CA and the keys
/// people paste may have either).
const PADDING_OPTIONAL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes standard base64 (padding optional, no whitespace); `None` for anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    PADDING_OPTIONAL.decode(text).ok()
}

/// 32 lowercase hex characters from the kernel's random source: the shape of the real
/// supervisor's uuids and API keys (a UUIDv4 without dashes).
pub fn random_hex_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// How deep arrays and objects nest in a JSON text (strings skipped), scanning without
/// parsing: lets a deeply nested body be refused before a recursive parser walks it on a
/// small thread stack.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-25T14:52:13.123Z`) to Unix seconds.
pub fn rfc3339_seconds(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    let mut t = days * 86_400 + h * 3600 + mi * 60 + sec;
    // A numeric offset (+01:00) moves the instant.
    if let Some(pos) = s[19..].find(['+', '-']) {
        let off = &s[19 + pos..];
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let oh: i64 = off.get(1..3)?.parse().ok()?;
        let om: i64 = off.get(4..6)?.parse().ok()?;
        t -= sign * (oh * 3600 + om * 60);
    }
    Some(t)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as an RFC 3339 UTC timestamp (`2026-11-25T14:52:13Z`), the inverse of
/// `rfc3339_seconds`.
pub fn rfc3339_from_seconds(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A decimal number: an optional sign, digits with at most one `.`, an optional exponent
/// (`30`, `1.5`, `.5`, `2e3`). The durations and sizes of compose files are read with it
/// instead of `f64::from_str`, whose correctly rounded algorithm and tables cost ~15 KB on
/// armv6: 18 significant digits are kept, more than a duration or a size has.
pub fn parse_decimal(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let (mut mantissa, mut exponent, mut digits, mut dot) = (0u64, 0i32, 0, false);
    while let Some(&c) = b.get(i) {
        match c {
            b'0'..=b'9' if mantissa < 100_000_000_000_000_000 => {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                exponent -= i32::from(dot);
            }
            b'0'..=b'9' => exponent += i32::from(!dot),
            b'.' if !dot => dot = true,
            _ => break,
        }
        digits += usize::from(c != b'.');
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        let written = text.get(i + 1..)?;
        let unsigned = written.strip_prefix(['+', '-']).unwrap_or(written);
        if unsigned.is_empty()
            || unsigned.len() > 4
            || !unsigned.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        exponent += written.parse::<i32>().ok()?;
        i = b.len();
    }
    if i != b.len() {
        return None;
    }
    let value = mantissa as f64 * 10f64.powi(exponent);
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_read_like_f64_from_str_for_durations_and_sizes() {
        for text in [
            "0",
            "30",
            "1.5",
            ".5",
            "5.",
            "+2",
            "-3.25",
            "2e3",
            "1.5E-3",
            "0.000001",
            "1e+2",
            "123456789.125",
            "3600",
        ] {
            assert_eq!(
                super::parse_decimal(text),
                Some(text.parse::<f64>().unwrap()),
                "{text}"
            );
        }
        for text in [
            "", ".", "-", "1..2", "1.2.3", "e3", "1e", "1e+", "1x", "inf", "NaN", " 1", "1e99999",
        ] {
            assert_eq!(super::parse_decimal(text), None, "{text}");
        }
    }

    #[test]
    fn rfc3339_formats_and_parses_back() {
        for t in [0, 951_782_400, 1_764_720_000, 1_800_000_123, 4_102_444_799] {
            let text = super::rfc3339_from_seconds(t);
            assert_eq!(super::rfc3339_seconds(&text), Some(t), "{text}");
        }
        assert_eq!(
            super::rfc3339_from_seconds(951_782_400),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for data in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"\x89PNG\r\n\x1a\n\x00\xff",
        ] {
            assert_eq!(
                super::base64_decode(&super::base64(data)).as_deref(),
                Some(data)
            );
        }
        assert_eq!(super::base64_decode("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(super::base64_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(super::base64_decode("not base64!"), None);
        assert_eq!(super::base64_decode("Z"), None);
    }

    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
            assert_eq!(base64url(plain.as_bytes()), enc);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8=");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn keys_are_32_hex_and_differ() {
        let a = random_hex_key().unwrap();
        let b = random_hex_key().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod depth_tests {
    #[test]
    fn nesting_is_counted_outside_strings() {
        use super::json_depth;
        assert_eq!(json_depth(b"{}"), 1);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}],"c":"[[[[\"[["}"#), 4);
        assert_eq!(json_depth(&[b'['; 100_000]), 100_000);
        assert_eq!(json_depth(b"42"), 0);
    }
}
