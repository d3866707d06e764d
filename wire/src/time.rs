//! Time as both binaries count it: Unix milliseconds, UTC, the proleptic
//! Gregorian calendar. One of each: the unit constants, flooring, civil
//! dates and their inverse, calendar months, the clock, and RFC 3339.

/// One second, ms.
pub const SECOND_MS: i64 = 1_000;
/// One minute, ms.
pub const MINUTE_MS: i64 = 60_000;
/// One hour, ms.
pub const HOUR_MS: i64 = 3_600_000;
/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// Current Unix time in ms (0 before 1970, `i64::MAX` far in the future).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `ms` floored to a multiple of `step` (> 0), also before 1970.
pub fn floor(ms: i64, step: i64) -> i64 {
    ms.div_euclid(step) * step
}

/// The start of the UTC minute holding `ms`.
pub fn floor_minute(ms: i64) -> i64 {
    floor(ms, MINUTE_MS)
}

/// The start of the UTC hour holding `ms`.
pub fn floor_hour(ms: i64) -> i64 {
    floor(ms, HOUR_MS)
}

/// The start of the UTC day holding `ms`.
pub fn floor_day(ms: i64) -> i64 {
    floor(ms, DAY_MS)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). A
/// day that does not exist (02-30) gives a day number whose date differs.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The civil date (year, month, day) of the UTC day holding `ms`.
pub fn civil_of(ms: i64) -> (i64, i64, i64) {
    civil_from_days(ms.div_euclid(DAY_MS))
}

/// The first instant of month `m` of year `y`, counting on past December
/// (`m` = 13 is January of `y + 1`; `m` from 1 up).
pub fn month_start(y: i64, m: i64) -> i64 {
    let (y, m) = (y + (m - 1).div_euclid(12), (m - 1).rem_euclid(12) + 1);
    days_from_civil(y, m, 1) * DAY_MS
}

/// The UTC calendar month holding `ms`: `[its first instant, the next
/// month's first instant)`.
pub fn month_of(ms: i64) -> (i64, i64) {
    let (y, m, _) = civil_of(ms);
    (month_start(y, m), month_start(y, m + 1))
}

/// Parses an RFC 3339 date-time (`2024-05-01T12:00:00Z`, `…+02:00`,
/// fractional seconds allowed, only the first three digits counted) to Unix
/// ms. A date that does not exist (`02-30`) is refused.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo, d) {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if rest.as_bytes()[3] != b':' || oh > 23 || om > 59 {
                return None;
            }
            let sign = if rest.as_bytes()[0] == b'-' { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * SECOND_MS + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn months_and_floors() {
        let (a, b) = month_of(days_from_civil(2028, 2, 10) * DAY_MS + 5);
        assert_eq!((b - a) / DAY_MS, 29);
        let (a, b) = month_of(days_from_civil(2028, 12, 31) * DAY_MS);
        assert_eq!((b - a) / DAY_MS, 31);
        assert_eq!(civil_of(b), (2029, 1, 1));
        assert_eq!(month_start(2028, 13), month_start(2029, 1));
        assert_eq!(floor_minute(-1), -MINUTE_MS);
        assert_eq!(floor_hour(HOUR_MS + 1), HOUR_MS);
        assert_eq!(floor_day(DAY_MS - 1), 0);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.250Z"),
            Some(1_714_564_800_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000)
        );
        assert_eq!(parse_rfc3339_ms("2024-05-01"), None);
        assert_eq!(parse_rfc3339_ms("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-05-01T00:00:00"), None);
        assert_eq!(parse_rfc3339_ms("2024-05-01T00:00:00+24:00"), None);
    }
}
