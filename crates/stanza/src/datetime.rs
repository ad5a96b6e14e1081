//! XEP-0082 date and time formats, shared by every module that stamps or reads times
//! (entity time, delayed delivery, archives).

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as an XEP-0082 DateTime in UTC with seconds precision, e.g.
/// `2023-11-14T22:13:20Z` (XEP-0082 §3.2: `CCYY-MM-DDThh:mm:ss[.sss]TZD`, TZD `Z` for UTC).
/// Fractions of a second are dropped (rounded down, also before 1970).
pub fn xep0082_datetime(t: SystemTime) -> String {
    let secs: i64 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            // Before the epoch: round towards the past, so -0.5 s is 23:59:59 on 1969-12-31.
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -whole.saturating_add(1)
            } else {
                -whole
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of the day `days` after
/// 1970-01-01 (negative: before).
///
/// Years are counted from 1 March, so the leap day is the last day of a year and the month
/// lengths from March on repeat the pattern 31,30,31,30,31 (153 days per five months). Days are
/// then split into 400-year eras of 146 097 days.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // 0000-03-01 is 719 468 days before 1970-01-01.
    let shifted = days.saturating_add(719_468);
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // 0..=146_096
    // Years of 365 days, corrected for the leap days of each 4, 100 and 400 years.
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // 0..=399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1; // 1..=31
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    // January and February belong to the March-based year that started the year before.
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch as an XEP-0082 DateTime (seconds precision).
pub fn from_millis(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + std::time::Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    };
    xep0082_datetime(t)
}

/// Milliseconds since the epoch as an XEP-0082 DateTime keeping the milliseconds
/// (`2023-11-14T22:13:20.999Z`; XEP-0082 §3.2 allows `.sss`), so a time read back from it is
/// the time stored: archive stamps that clients hand back as query bounds (XEP-0313 §4.1.4).
/// Whole seconds are written without a fraction.
pub fn from_millis_exact(ms: i64) -> String {
    let frac = ms.rem_euclid(1000);
    let whole = from_millis(ms - frac);
    if frac == 0 {
        return whole;
    }
    // `from_millis` ends in `Z`: the fraction goes before it.
    let base = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{base}.{frac:03}Z")
}

/// The current time in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_format() {
        assert_eq!(from_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(from_millis(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert!(now_millis() > 1_700_000_000_000);
    }

    #[test]
    fn exact_millis_format() {
        assert_eq!(from_millis_exact(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            from_millis_exact(1_700_000_000_999),
            "2023-11-14T22:13:20.999Z"
        );
        assert_eq!(
            from_millis_exact(1_700_000_000_007),
            "2023-11-14T22:13:20.007Z"
        );
        // Before the epoch the fraction counts forward from the earlier second.
        assert_eq!(from_millis_exact(-1), "1969-12-31T23:59:59.999Z");
    }
}
