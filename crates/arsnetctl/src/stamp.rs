//! UTC timestamps for plain progress lines (`fetch --wait` and `watch` into a pipe, a file,
//! cron's mail): each line of a report starts with the moment it was printed, as RFC 3339
//! in UTC to the second (`2026-12-02T15:04:05Z`), so that a mailed log says when the job
//! stalled or ended. Formatted here from [`SystemTime`] (Howard Hinnant's civil-from-days
//! algorithm) rather than with a date library: nothing else in the CLI needs one.

use std::time::{SystemTime, UNIX_EPOCH};

/// `at` as `YYYY-MM-DDTHH:MM:SSZ` (UTC). A clock set before 1970 prints as the epoch.
pub fn utc(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The current time, as [`utc`] writes it.
pub fn now() -> String {
    utc(SystemTime::now())
}

/// (year, month 1..=12, day 1..=31) of the day `days` after 1970-01-01, in the proleptic
/// Gregorian calendar (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Every line of `text` with `stamp` and a space in front (the lines keep their newlines).
pub fn lines(stamp: &str, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 24 * text.lines().count());
    for line in text.lines() {
        out.push_str(stamp);
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        utc(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn known_moments() {
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        // The end of a year, and 2100, which is not a leap year.
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(at(1_796_223_845), "2026-12-02T15:04:05Z");
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // 1970..2400: each day is the day after the previous one, months have their lengths.
        let mut last = civil_from_days(-1);
        for days in 0..157_000 {
            let (y, m, d) = civil_from_days(days);
            let next_day = (y, m, d) == (last.0, last.1, last.2 + 1);
            let next_month =
                d == 1 && ((y, m) == (last.0, last.1 + 1) || (y, m) == (last.0 + 1, 1));
            assert!(next_day || next_month, "{last:?} then {:?}", (y, m, d));
            last = (y, m, d);
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn every_line_is_stamped() {
        let text = lines("T", "a\n  b\n");
        assert_eq!(text, "T a\nT   b\n");
    }
}
