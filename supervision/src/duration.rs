//! Durations in tree files: an integer or decimal number with a unit.

use std::time::Duration;

/// The longest duration [`parse_duration`] accepts: a year (`"8760h"`).
/// Longer ones are surely mistakes, and arithmetic on them overflows
/// (`Instant + d`, a backoff stretched by its `random_factor`).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`, `"100us"`, up to
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{s}` has no unit (use ms, s, m or h, e.g. \"5s\")"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("duration `{s}` does not start with a number"));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` has a malformed number `{num}`"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1_000_000.0,
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "duration `{s}` has an unknown unit `{other}` (use us, ms, s, m or h)"
            ));
        }
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "duration `{s}` is longer than the limit of 8760h (a year)"
        )),
    }
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if Duration::from_millis(ms as u64) == d {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("s").unwrap_err().contains("does not start"));
        assert!(parse_duration("1.2.3s").unwrap_err().contains("malformed"));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for long in [
            "8761h".to_owned(),
            "4000000000000000h".to_owned(),
            format!("{}s", "9".repeat(400)),
        ] {
            assert!(
                parse_duration(&long).is_err_and(|e| e.contains("longer than the limit")),
                "{long}"
            );
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in ["5s", "250ms", "100us"] {
            assert_eq!(format_duration(parse_duration(d).unwrap_or_default()), d);
        }
    }
}
