//! Prometheus metrics, from both doors: `arsnetctl metrics` (the control socket) and the
//! opt-in `metrics_listen` HTTP listener. Every exposition is read back with a real parser
//! (a grammar that unescapes label values), and its numbers are checked against what
//! `status --json` and `servers --json` say.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::Value;

use crate::util::*;

const LONG: Duration = Duration::from_secs(60);

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

/// A daemon serving metrics on a free loopback port; `extra` goes at the top of its config.
fn metrics_daemon(root: &Path, extra: &str) -> (Daemon, u16) {
    let port = free_ports(1)[0];
    let config = format!("metrics_listen = \"127.0.0.1:{port}\"\n{extra}\n{TEST_CONFIG}");
    (Daemon::start_with_config(root, &config), port)
}

/// One HTTP/1.1 request on a fresh connection: the status code and the body.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    stream.set_read_timeout(Some(LONG)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read the answer");
    let reply = String::from_utf8(reply).expect("a UTF-8 answer");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {reply:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

fn scrape(port: u16) -> Exposition {
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn parse(text: &str) -> Exposition {
    parse_prometheus(text).unwrap_or_else(|e| panic!("not the exposition format ({e:?}):\n{text}"))
}

fn ctl_metrics(d: &Daemon) -> Exposition {
    parse(&d.ok(&["metrics"]))
}

/// The value of `family`'s one sample whose labels include `labels`.
fn value(x: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let f = x
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    let matching: Vec<f64> = f
        .iter_samples()
        .filter(|s| {
            let set = s.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Counter(c) => c.value.as_f64(),
            other => panic!("{family}: unexpected value {other:?}"),
        })
        .collect();
    assert_eq!(matching.len(), 1, "{family}{labels:?}: {matching:?}");
    matching[0]
}

fn kind(x: &Exposition, family: &str) -> PrometheusType {
    x.families[family].family_type.clone()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Serves a file of `size` bytes named `name` on one port of `d`; returns it and the port.
fn serve_one(d: &Daemon, dir: &Path, name: &str, size: usize) -> (std::path::PathBuf, u16) {
    let file = dir.join(name);
    write_file(&file, size, 99);
    let port = free_ports(1)[0];
    serve(d, &file, &[port], &[]);
    (file, port)
}

fn fetch_to_completion(d: &Daemon, out: &Path, port: u16) -> u64 {
    let job = fetch(d, out, &[port], &[]);
    d.wait_job(job, LONG, |s| job_state(s) == "completed");
    job
}

/// What both doors must say about a finished job and the port that served it.
fn check_against_status(x: &Exposition, status: &Value, port: &Value, group: &str) {
    let id = status["id"].to_string();
    let job = [("job_id", id.as_str())];
    assert_eq!(
        value(x, "arsnet_job_verified_bytes", &job),
        num(&status["bytes_done"])
    );
    assert_eq!(
        value(x, "arsnet_job_size_bytes", &job),
        num(&status["size"])
    );
    assert_eq!(
        value(x, "arsnet_job_segments_done", &job),
        num(&status["segments_done"])
    );
    assert_eq!(
        value(x, "arsnet_job_segments", &job),
        num(&status["segments_total"])
    );
    for state in ["queued", "running", "completed", "failed", "cancelled"] {
        let want = f64::from(u8::from(state == "completed"));
        let labels = [("job_id", id.as_str()), ("state", state)];
        assert_eq!(value(x, "arsnet_job_state", &labels), want, "{state}");
    }
    let source = &status["sources"][0];
    let address = source["address"].as_str().unwrap();
    let src = [("job_id", id.as_str()), ("source", address)];
    assert_eq!(
        value(x, "arsnet_job_source_bytes", &src),
        num(&source["bytes"])
    );
    assert_eq!(
        value(x, "arsnet_job_source_segments", &src),
        num(&source["segments"])
    );
    assert_eq!(value(x, "arsnet_job_source_blamed", &src), 0.0);
    let current = source["state"].as_str().expect("a source's state");
    for state in ["idle", "connecting", "active", "backoff", "blamed"] {
        let want = f64::from(u8::from(state == current));
        let labels = [
            ("job_id", id.as_str()),
            ("source", address),
            ("state", state),
        ];
        assert_eq!(
            value(x, "arsnet_job_source_state", &labels),
            want,
            "{address} {state}"
        );
    }
    let p = port["port"].to_string();
    let srv = [("group", group), ("port", p.as_str())];
    assert_eq!(
        value(x, "arsnet_server_sent_bytes_total", &srv),
        num(&port["bytes_sent"])
    );
    assert_eq!(
        value(x, "arsnet_server_segments_sent_total", &srv),
        num(&port["segments_sent"])
    );
    assert_eq!(value(x, "arsnet_server_listening", &srv), 1.0);
    assert_eq!(
        value(x, "arsnet_served_bytes_total", &[]),
        num(&port["bytes_sent"])
    );
    assert_eq!(
        value(x, "arsnet_downloaded_bytes_total", &[]),
        num(&status["size"])
    );
    let done = [("state", "completed")];
    assert_eq!(value(x, "arsnet_jobs_finished_total", &done), 1.0);
    assert_eq!(value(x, "arsnet_jobs", &done), 1.0);
    for counter in [
        "arsnet_downloaded_bytes_total",
        "arsnet_server_sent_bytes_total",
    ] {
        assert_eq!(kind(x, counter), PrometheusType::Counter, "{counter}");
    }
    assert_eq!(kind(x, "arsnet_job_verified_bytes"), PrometheusType::Gauge);
}

#[test]
fn metrics_from_ctl_and_http_match_status() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, metrics_port) = metrics_daemon(&tmp.path().join("d"), "");
    let size = 65536 * 9 + 321;
    let (_, port) = serve_one(&d, tmp.path(), "payload.bin", size);
    let job = fetch_to_completion(&d, &tmp.path().join("out"), port);
    let status = d.status(job);
    assert_eq!(num(&status["bytes_done"]), size as f64);
    let servers = d.json(&["servers"]);
    let group = servers["groups"][0]["id"].to_string();
    let port_info = &servers["groups"][0]["ports"][0];
    assert!(num(&port_info["bytes_sent"]) >= size as f64, "{port_info}");
    for (door, x) in [
        ("arsnetctl", ctl_metrics(&d)),
        ("http", scrape(metrics_port)),
    ] {
        println!("checking what {door} says");
        check_against_status(&x, &status, port_info, &group);
        assert!(value(&x, "arsnet_uptime_seconds", &[]) > 0.0);
    }
    // --json carries the same text as one string, in a document of the one schema.
    let out = d.ctl(&["--json", "metrics"]);
    assert!(out.status.success(), "{out:?}");
    let docs =
        crate::cli_contract::conforming(&crate::cli_contract::schema(), "metrics", &out.stdout);
    let doc = &docs[0];
    let text = doc["metrics"].as_str().expect("metrics is a string");
    check_against_status(&parse(text), &status, port_info, &group);
}

#[test]
fn counters_do_not_drop_when_finished_jobs_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, metrics_port) = metrics_daemon(&tmp.path().join("d"), "keep_finished_jobs = 1");
    let size = 65536 * 3 + 5;
    let (_, port) = serve_one(&d, tmp.path(), "payload.bin", size);
    // The table keeps one finished job besides the new one: the third fetch prunes the
    // first job.
    let jobs: Vec<u64> = (0..3)
        .map(|i| fetch_to_completion(&d, &tmp.path().join(format!("out{i}")), port))
        .collect();
    assert!(
        !d.ctl(&["status", &jobs[0].to_string()]).status.success(),
        "job 1 was pruned"
    );
    let sent = num(&d.json(&["servers"])["groups"][0]["ports"][0]["bytes_sent"]);
    let group = d.json(&["servers"])["groups"][0]["id"].to_string();
    for x in [ctl_metrics(&d), scrape(metrics_port)] {
        let done = [("state", "completed")];
        assert_eq!(value(&x, "arsnet_jobs_finished_total", &done), 3.0);
        // The table itself holds two: the counters are not sums over it.
        assert_eq!(value(&x, "arsnet_jobs", &done), 2.0);
        assert_eq!(
            value(&x, "arsnet_downloaded_bytes_total", &[]),
            3.0 * size as f64
        );
        assert_eq!(value(&x, "arsnet_served_bytes_total", &[]), sent);
    }
    // A removed group's bytes stay in the daemon's served total.
    d.ok(&["unserve", &group]);
    let x = scrape(metrics_port);
    assert_eq!(value(&x, "arsnet_served_bytes_total", &[]), sent);
    // A job that ends while no engine runs it (paused, then cancelled) counts too, once.
    // Its only source accepts and stays silent, so the job is still running at the pause
    // (one nobody listens at could be given up first, and a failed job is not paused).
    let silent = silent_source();
    let silent_port = silent.local_addr().unwrap().port();
    let dead = fetch(&d, &tmp.path().join("dead"), &[silent_port], &[]);
    d.ok(&["pause", &dead.to_string()]);
    for _ in 0..2 {
        d.ok(&["cancel", &dead.to_string()]);
    }
    let x = scrape(metrics_port);
    let cancelled = [("state", "cancelled")];
    assert_eq!(value(&x, "arsnet_jobs_finished_total", &cancelled), 1.0);
    let done = [("state", "completed")];
    assert_eq!(value(&x, "arsnet_jobs_finished_total", &done), 3.0);
    assert!(!x.families["arsnet_server_sent_bytes_total"]
        .iter_samples()
        .any(|_| true));
}

#[test]
fn a_file_name_with_quotes_parses_back_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let (d, metrics_port) = metrics_daemon(&tmp.path().join("d"), "");
    // Every character of the format's syntax that a file name may hold (a backslash or a
    // newline is refused as a name; the encoder's unit tests cover those).
    let name = r#"say "hi", {a="b"} = ok é.bin"#;
    let (_, port) = serve_one(&d, tmp.path(), name, 1000);
    let job = fetch_to_completion(&d, &tmp.path().join("out"), port);
    let text = d.ok(&["metrics"]);
    assert!(
        text.contains(r#"name="say \"hi\", {a=\"b\"} = ok é.bin""#),
        "{text}"
    );
    let id = job.to_string();
    for x in [parse(&text), scrape(metrics_port)] {
        let labels = [("job_id", id.as_str()), ("name", name)];
        assert_eq!(value(&x, "arsnet_job_verified_bytes", &labels), 1000.0);
    }
}

#[test]
fn only_get_metrics_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, port) = metrics_daemon(&tmp.path().join("d"), "");
    for path in ["/", "/metric", "/metrics/", "/metricsx", "/favicon.ico"] {
        assert_eq!(get(port, path).0, 404, "{path}");
    }
    // The query string is not the path.
    assert_eq!(get(port, "/metrics?debug=1").0, 200);
    let post =
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(http(port, post).0, 405);
    let (status, _) = http(port, "NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn stalled_clients_are_cut_off_and_a_flood_waits_its_turn() {
    use arsnet_proto::limits::METRICS_MAX_CONNECTIONS;
    let tmp = tempfile::tempdir().unwrap();
    let (d, port) = metrics_daemon(&tmp.path().join("d"), "");
    // Half-sent requests hold every slot the listener has.
    let stalled: Vec<TcpStream> = (0..METRICS_MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.set_read_timeout(Some(LONG)).unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    // One more, complete, request waits in the backlog: no answer while the slots are held
    // (the stalled ones have 5 s before their header timeout).
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    waiting
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let early = waiting.read(&mut [0u8; 1]);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered while every slot was held: {early:?}"
    );
    // The daemon itself is not held up.
    d.ok(&["list"]);
    // Each stalled one is closed at its header timeout (5 s) at the latest by its
    // deadline (10 s); then the waiting one is served.
    for mut s in stalled {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    waiting.set_read_timeout(Some(LONG)).unwrap();
    let mut answer = Vec::new();
    waiting.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "stalled clients held on for {took:?}"
    );
}

#[test]
fn a_bad_metrics_listen_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    for bad in ["127.0.0.1:0", "localhost", "not an address"] {
        std::fs::write(&config, format!("metrics_listen = \"{bad}\"\n")).unwrap();
        let out = std::process::Command::new(bin("arsnetd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("metrics_listen"), "{bad}: {stderr}");
    }
    // A port already taken stops the daemon at start, saying why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    std::fs::write(&config, format!("metrics_listen = \"{addr}\"\n")).unwrap();
    let root = tmp.path().join("d");
    let out = std::process::Command::new(bin("arsnetd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(root.join("ctl.sock"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen for metrics"), "{stderr}");
}
