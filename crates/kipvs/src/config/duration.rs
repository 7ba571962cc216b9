//! Durations written the way Go's `time.ParseDuration` (and so kube-proxy's
//! `metav1.Duration`) writes them: `30s`, `1m30s`, `1.5h`, `300ms`, `0`.
//!
//! Written here rather than taken from a crate because the common duration crates parse
//! a different grammar (`humantime` rejects fractions like `1.5h`, which Go accepts), and
//! a config that kube-proxy accepts must not be refused by kipvs.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. 30s, 1m30s, 500ms)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses a non-negative Go duration.
///
/// Fails on an empty string, a missing or unknown unit (`ns us µs ms s m h`), a negative
/// value or one that does not fit in a `Duration`.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.starts_with('-') {
        return Err(fail("negative durations are not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(fail("empty"));
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(fail("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("missing unit")),
            _ => return Err(fail("unknown unit")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if fraction.contains('.') {
            return Err(fail("expected a number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| fail("number too large"))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| fail("number too large"))?;
        // Fractions beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in fraction.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| fail("number too large"))?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("number too large"))?;
    let sub = u32::try_from(total_nanos % 1_000_000_000).map_err(|_| fail("number too large"))?;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration as Go prints it (`1m30s`, `500ms`, `0s`), for logs and defaults.
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    if d < Duration::from_secs(1) {
        let nanos = d.subsec_nanos();
        return if nanos % 1_000_000 == 0 {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let frac = d.subsec_nanos();
    if frac == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let digits = format!("{frac:09}");
        out.push_str(&format!("{s}.{}s", digits.trim_end_matches('0')));
    }
    out
}

/// Deserializes a Go duration string (serde `deserialize_with` helper).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct GoDuration;
    impl Visitor<'_> for GoDuration {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 30s, 1m30s or 500ms")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_go_duration(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(GoDuration)
}

/// Deserializes an optional Go duration (`null` or absent is `None`).
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrapper(#[serde(deserialize_with = "deserialize")] Duration);
    let wrapped: Option<Wrapper> = serde::Deserialize::deserialize(deserializer)?;
    Ok(wrapped.map(|Wrapper(d)| d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        parse_go_duration(s).unwrap()
    }

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("2h22m"), Duration::from_secs(2 * 3600 + 22 * 60));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("10µs"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("+1s"), Duration::from_secs(1));
    }

    #[test]
    fn malformed_durations_are_refused_with_the_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("30 s", "unknown unit"),
            ("5d", "unknown unit"),
            ("s", "expected a number"),
            ("1.2.3s", "expected a number"),
            ("-5s", "negative"),
            ("99999999999999999999999h", "too large"),
        ] {
            let err = parse_go_duration(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn durations_format_as_go_prints_them() {
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
        assert_eq!(format_go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn formatting_then_parsing_gives_the_same_duration() {
        for secs in [0, 1, 59, 61, 3599, 3601, 86400] {
            let dur = Duration::from_secs(secs);
            assert_eq!(d(&format_go_duration(dur)), dur);
        }
    }
}
