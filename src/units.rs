//! Units and their text, the leaf every layer uses (it depends on no other
//! module): human durations in policy files (`30s`, `15m`, `1h30m`, `24h`) and
//! ratios (`5%` or `0.05`), each with a serde `Deserialize` that reports what
//! it expected, so the TOML parser can point at the offending value; their
//! text for people; PromQL range durations.

use std::fmt;

use chrono::TimeDelta;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A non-negative length of time written like `30s`, `15m`, `1h30m` or `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub TimeDelta);

impl HumanDuration {
    pub fn from_secs(secs: i64) -> Self {
        HumanDuration(TimeDelta::seconds(secs))
    }

    pub fn delta(self) -> TimeDelta {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// No policy duration is longer: a year bounds every window and timer.
pub const MAX_DURATION_DAYS: i64 = 366;

const DURATION_EXPECTED: &str = "a duration like \"30s\", \"15m\", \"1h30m\" or \"250ms\"";

fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty duration, expected {DURATION_EXPECTED}"));
    }
    if text == "0" {
        return Ok(TimeDelta::zero());
    }
    let mut total = TimeDelta::zero();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration \"{text}\", expected {DURATION_EXPECTED}"
            ));
        }
        let number: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration \"{text}\" is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis_per_unit: i64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "duration \"{text}\" has no unit, expected {DURATION_EXPECTED}"
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit \"{other}\" in duration \"{text}\", expected one of ms, s, m, h, d"
                ));
            }
        };
        let part = number
            .checked_mul(millis_per_unit)
            .and_then(TimeDelta::try_milliseconds)
            .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
        total = total
            .checked_add(&part)
            .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
    }
    if total > TimeDelta::days(MAX_DURATION_DAYS) {
        return Err(format!(
            "duration \"{text}\" is longer than {MAX_DURATION_DAYS}d, expected at most {}h",
            MAX_DURATION_DAYS * 24
        ));
    }
    Ok(total)
}

/// Formats a duration the way a person would write it in a policy: `2m`, `1h30m`, `45s`, `250ms`.
pub fn format_duration(delta: TimeDelta) -> String {
    let mut millis = delta.num_milliseconds();
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if millis < 0 {
        out.push('-');
        millis = -millis;
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                if v == 0 {
                    Ok(HumanDuration::default())
                } else {
                    Err(E::custom(format!(
                        "a bare number {v} is ambiguous, expected {DURATION_EXPECTED}"
                    )))
                }
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A fraction written as `5%` or `0.05`. Stored as the fraction (0.05).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Ratio(pub f64);

const RATIO_EXPECTED: &str = "a ratio like \"5%\" or 0.05";

impl Ratio {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let value = if let Some(percent) = trimmed.strip_suffix('%') {
            percent
                .trim()
                .parse::<f64>()
                .map(|p| p / 100.0)
                .map_err(|_| format!("invalid ratio \"{text}\", expected {RATIO_EXPECTED}"))?
        } else {
            trimmed
                .parse::<f64>()
                .map_err(|_| format!("invalid ratio \"{text}\", expected {RATIO_EXPECTED}"))?
        };
        Ratio::from_f64(value)
    }

    fn from_f64(value: f64) -> Result<Self, String> {
        if value.is_finite() {
            Ok(Ratio(value))
        } else {
            Err(format!(
                "ratio must be a finite number, expected {RATIO_EXPECTED}"
            ))
        }
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_percent(self.0))
    }
}

/// `0.05` → `5%`, `0.0812` → `8.1%`, `0.00123` → `0.12%`.
pub fn format_percent(fraction: f64) -> String {
    let percent = fraction * 100.0;
    let text = if percent.abs() >= 1.0 || percent == 0.0 {
        format!("{percent:.1}")
    } else {
        format!("{percent:.2}")
    };
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}%")
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RatioVisitor;
        impl Visitor<'_> for RatioVisitor {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(RATIO_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                Ratio::parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ratio, E> {
                Ratio::from_f64(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ratio, E> {
                Ratio::from_f64(v as f64).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(RatioVisitor)
    }
}

/// `15s`, `2s`, `1500ms`: a duration PromQL accepts in a range selector.
pub fn promql_duration(interval: std::time::Duration) -> String {
    let millis = interval.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit_and_combination() {
        let cases = [
            ("30s", 30_000),
            ("15m", 900_000),
            ("24h", 86_400_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("1d", 86_400_000),
            ("0", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_duration(text).unwrap().num_milliseconds(),
                millis,
                "{text}"
            );
        }
    }

    #[test]
    fn durations_reject_what_a_person_might_mistype() {
        for text in [
            "",
            "30",
            "5 minutes",
            "1.5m",
            "m5",
            "-5s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(text).is_err(), "{text} should be rejected");
        }
        assert!(
            parse_duration("30x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
    }

    #[test]
    fn durations_format_back_to_policy_notation() {
        assert_eq!(format_duration(TimeDelta::seconds(135)), "2m15s");
        assert_eq!(format_duration(TimeDelta::hours(24)), "24h");
        assert_eq!(format_duration(TimeDelta::milliseconds(1500)), "1s500ms");
        assert_eq!(format_duration(TimeDelta::zero()), "0s");
    }

    #[test]
    fn ratios_accept_percent_and_fraction() {
        assert_eq!(Ratio::parse("5%").unwrap().0, 0.05);
        assert_eq!(Ratio::parse("0.05").unwrap().0, 0.05);
        assert_eq!(Ratio::parse(" 12.5 % ").unwrap().0, 0.125);
        assert!(Ratio::parse("five").is_err());
        assert!(Ratio::parse("NaN").is_err());
    }

    #[test]
    fn percentages_print_readably() {
        assert_eq!(format_percent(0.05), "5%");
        assert_eq!(format_percent(0.0812), "8.1%");
        assert_eq!(format_percent(0.5), "50%");
        assert_eq!(format_percent(0.00123), "0.12%");
        assert_eq!(format_percent(1.5), "150%");
    }
}
