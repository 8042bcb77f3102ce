//! Figures that must stay true across a daemon restart and a port's stop: a job of HTTP
//! mirrors alone never shows its layout's placeholder root as the file's BLAKE3 (only the
//! user's BLAKE3 pin, or nothing), and a stopped port reports no rate.

use std::time::{Duration, Instant};

use crate::http_mirrors::{completed, fetch_sources, setup};
use crate::nginx::Nginx;
use crate::util::*;

#[test]
fn a_job_of_mirrors_alone_shows_only_a_pinned_blake3_before_and_after_a_restart() {
    let s = setup();
    let a = Nginx::start(&s.mirror_root, "");
    let b = Nginx::start(&s.mirror_root, "");
    let mut client = Daemon::start(&s.tmp.path().join("cli"));
    let mirrors = [a.url("f.bin"), b.url("f.bin")];
    let blake3 = blake3::hash(&s.data).to_hex().to_string();
    let sha256 = {
        let out = std::process::Command::new("sha256sum")
            .arg(&s.file)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    let cases = [
        (vec!["--sha256", sha256.as_str()], None),
        (vec!["--no-verify"], None),
        (vec!["--blake3", blake3.as_str()], Some(blake3.clone())),
    ];
    let mut jobs = Vec::new();
    for (i, (flags, expected)) in cases.iter().enumerate() {
        let out = s.tmp.path().join(format!("out{i}"));
        let job = fetch_sources(&client, &out, &mirrors, flags);
        let status = completed(&client, job);
        let shown = status["blake3"].as_str().map(str::to_string);
        assert_eq!(&shown, expected, "{flags:?} before the restart: {status}");
        jobs.push(job);
    }
    client.restart();
    for (job, (flags, expected)) in jobs.into_iter().zip(&cases) {
        let status = client.status(job);
        assert_eq!(job_state(&status), "completed", "{status}");
        let shown = status["blake3"].as_str().map(str::to_string);
        assert_eq!(&shown, expected, "{flags:?} after the restart: {status}");
    }
}

#[test]
fn a_stopped_port_reports_no_rate() {
    let s = slow_setup(16 << 20, 1 << 20);
    let _job = fetch(&s.client, &s.out, &s.ports, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        let servers = s.servers.json(&["servers"]);
        let sending = servers["groups"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["rate_bps"].as_u64().unwrap_or(0) > 0)
            .map(|p| p["port"].to_string());
        if let Some(port) = sending {
            break port;
        }
        assert!(Instant::now() < deadline, "no port ever sends: {servers}");
        std::thread::sleep(Duration::from_millis(100));
    };
    s.servers.ok(&["stop-server", &port]);
    let servers = s.servers.json(&["servers"]);
    let stopped = servers["groups"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port.as_str()))
        .unwrap_or_else(|| panic!("no port {port}: {servers}"));
    assert_eq!(stopped["state"], "stopped", "{servers}");
    assert_eq!(
        stopped["rate_bps"], 0,
        "a stopped port sends nothing: {servers}"
    );
}
