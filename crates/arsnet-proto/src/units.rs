//! Human-sized numbers, as network tools print them: SI units ("1.07 GB", "12.3 MB/s"). One
//! definition for the daemon's logs and the CLI's tables.

/// Formats a byte count with SI units: "999 B", "1.50 MB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// Formats a byte rate: "12.30 MB/s".
pub fn human_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// Why a human-sized number was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a rate: expected a number of bytes per second with an optional unit (5M, 5MiB, 5MB, 40Mbit)")]
    Rate(String),
    #[error(
        "{0:?} is not a duration: expected a number with a unit (90s, 5m, 2h, 1d) or plain seconds"
    )]
    Duration(String),
}

/// Splits "12.5MiB" into (12.5, "MiB"); `None` unless the number is finite and not negative.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..end].parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some((value, s[end..].trim()))
}

/// Parses a rate in bytes per second, the way curl, wget and aria2 read one: a bare number is
/// bytes; `K`, `M`, `G` (any case) are binary (KiB, MiB, GiB) as those tools use them;
/// `KiB`/`MiB`/`GiB` say so explicitly; `kB`/`MB`/`GB` are decimal (1000-based); `kbit`,
/// `Mbit`, `Gbit` (or `kbps`...) are decimal bits per second. A trailing `/s` is allowed.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::Rate(s.to_string());
    let trimmed = s.trim();
    let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let (value, unit) = split_number(trimmed).ok_or_else(bad)?;
    let factor: f64 = match unit {
        "" | "B" | "b" => 1.0,
        "K" | "k" | "KiB" | "kiB" => 1024.0,
        "M" | "m" | "MiB" => 1024.0 * 1024.0,
        "G" | "g" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "kbit" | "Kbit" | "kbps" | "Kbps" => 1e3 / 8.0,
        "Mbit" | "mbit" | "Mbps" | "mbps" => 1e6 / 8.0,
        "Gbit" | "gbit" | "Gbps" | "gbps" => 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = (value * factor).round();
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Parses a duration: `90s`, `5m`, `2h`, `1d`, `1500ms`, or plain seconds (`30`).
pub fn parse_duration(s: &str) -> Result<core::time::Duration, UnitError> {
    let bad = || UnitError::Duration(s.to_string());
    let (value, unit) = split_number(s).ok_or_else(bad)?;
    let seconds = match unit {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(bad()),
    };
    core::time::Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_units() {
        assert_eq!(super::human_bytes(999), "999 B");
        assert_eq!(super::human_bytes(1_500_000), "1.50 MB");
        assert_eq!(super::human_bytes(u64::MAX), "18446744.07 TB");
        assert_eq!(super::human_rate(2_000_000_000), "2.00 GB/s");
    }

    #[test]
    fn rates_read_as_curl_wget_and_aria2_read_them() {
        use super::parse_rate;
        for (text, bytes) in [
            ("5000", 5000),
            ("5M", 5 << 20),
            ("5m", 5 << 20),
            ("5MiB", 5 << 20),
            ("5MB", 5_000_000),
            ("512K", 512 << 10),
            ("1.5G", 3 << 29),
            ("40Mbit", 5_000_000),
            ("8kbit", 1000),
            ("2MB/s", 2_000_000),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "M",
            "5X",
            "-5M",
            "5 M B",
            "1e3",
            "inf",
            "99999999999999999999G",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        use super::parse_duration;
        use core::time::Duration;
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        for bad in ["", "s", "5 parsecs", "-1s", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
