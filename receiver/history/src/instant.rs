//! Instants as an operator writes them and as listings print them.
//!
//! Accepted: ISO 8601 / RFC 3339 with fractions of a second
//! (`2026-12-07T10:15:30.25Z`, `2026-12-07T11:15:30.25+01:00`); the same
//! without an offset, or with a space for the `T`, is UTC (the receiver's
//! clock is kept in UTC, whatever its host's time zone); `now`; and a time
//! relative to now: `-10m`, `-1h30m`, `-2d`, `-500ms` (units ms, s, m, h,
//! d). Printed as RFC 3339 in UTC with microseconds.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

const NS_PER_MS: i64 = 1_000_000;

/// The instant `text` names, in nanoseconds since the epoch; `now_ns` is
/// what relative instants count back from. `Err` says what is accepted.
pub fn parse(text: &str, now_ns: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not an instant: give ISO 8601 (2026-12-07T10:15:30.25Z, an offset or UTC), \
             \"now\", or a time ago (-10m, -1h30m, -2d, -500ms)"
        )
    };
    if t == "now" {
        return Ok(now_ns);
    }
    if let Some(ago) = t.strip_prefix('-') {
        return Ok(now_ns.saturating_sub(parse_duration(ago).ok_or_else(bad)?));
    }
    if let Ok(dt) = OffsetDateTime::parse(t, &Rfc3339) {
        return to_ns(dt).ok_or_else(bad);
    }
    // No offset: UTC. Fractions of a second are optional.
    let with_t = t.replacen(' ', "T", 1);
    let plain = format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute][optional [:[second][optional [.[subsecond]]]]]"
    );
    match PrimitiveDateTime::parse(&with_t, &plain) {
        Ok(dt) => to_ns(dt.assume_offset(UtcOffset::UTC)).ok_or_else(bad),
        Err(_) => Err(bad()),
    }
}

fn to_ns(dt: OffsetDateTime) -> Option<i64> {
    i64::try_from(dt.unix_timestamp_nanos()).ok()
}

/// `1h30m`, `10m`, `2d`, `500ms`: nanoseconds.
fn parse_duration(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => NS_PER_MS,
            "s" => 1_000 * NS_PER_MS,
            "m" | "min" => 60_000 * NS_PER_MS,
            "h" => 3_600_000 * NS_PER_MS,
            "d" => 86_400_000 * NS_PER_MS,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

/// `ns` as RFC 3339 in UTC, with microseconds.
pub fn format(ns: i64) -> String {
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)) else {
        return format!("{ns} ns");
    };
    let dt = dt.replace_nanosecond(dt.nanosecond() / 1_000 * 1_000).unwrap_or(dt);
    let fmt = format_description!(version = 2, "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    dt.format(&fmt).unwrap_or_else(|_| format!("{ns} ns"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000_000_000; // 2026-11-29T...

    #[test]
    fn iso_instants_with_and_without_offsets() {
        let utc = parse("2026-12-07T10:15:30.25Z", NOW).unwrap();
        assert_eq!(parse("2026-12-07T11:15:30.25+01:00", NOW).unwrap(), utc);
        assert_eq!(parse("2026-12-07T10:15:30.25", NOW).unwrap(), utc, "no offset: UTC");
        assert_eq!(parse("2026-12-07 10:15:30.250", NOW).unwrap(), utc);
        assert_eq!(parse("2026-12-07T10:15", NOW).unwrap(), utc - 30_250_000_000);
        assert_eq!(format(utc), "2026-12-07T10:15:30.250000Z");
        assert_eq!(parse(&format(utc), NOW).unwrap(), utc, "what is printed parses back");
    }

    #[test]
    fn relative_instants() {
        assert_eq!(parse("now", NOW).unwrap(), NOW);
        assert_eq!(parse("-10m", NOW).unwrap(), NOW - 600_000_000_000);
        assert_eq!(parse("-1h30m", NOW).unwrap(), NOW - 5_400_000_000_000);
        assert_eq!(parse("-2d", NOW).unwrap(), NOW - 172_800_000_000_000);
        assert_eq!(parse("-500ms", NOW).unwrap(), NOW - 500_000_000);
    }

    #[test]
    fn nonsense_is_refused_with_what_is_accepted() {
        for bad in ["", "yesterday", "-", "-10", "-10x", "2026-13-01T00:00:00Z", "12:00"] {
            let e = parse(bad, NOW).unwrap_err();
            assert!(e.contains("ISO 8601"), "{bad:?}: {e}");
        }
    }
}
