//! ArsNet's tokio drivers. `server` hosts virtual server groups (one file, one listener per
//! port); `download` runs download jobs, feeding network events to the pure scheduler
//! (`arsnet-sched`) and its decisions to sockets and the crash-safe store (`arsnet-store`).

pub mod download;
pub mod rate;
pub mod server;
pub mod wire_io;

/// Formats a byte rate for logs and tables: "12.3 MB/s".
pub fn human_rate(bytes_per_sec: u64) -> String {
    format!("{}/s", human_bytes(bytes_per_sec))
}

/// Formats a byte count with SI units, as network tools do: "1.07 GB".
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

#[cfg(test)]
mod tests {
    #[test]
    fn human_units() {
        assert_eq!(super::human_bytes(999), "999 B");
        assert_eq!(super::human_bytes(1_500_000), "1.50 MB");
        assert_eq!(super::human_rate(2_000_000_000), "2.00 GB/s");
    }
}
