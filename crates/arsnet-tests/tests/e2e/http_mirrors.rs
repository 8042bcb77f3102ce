//! HTTP(S) mirrors as sources beside ArsNet servers, against a real nginx: a mixed job is
//! byte-identical and the mirrors do their share; a mirror with other bytes, another size,
//! no Range support, errors or redirect loops is dropped with its reason and never mixed in;
//! a mirror's file that changes mid-job is detected; credentials in a URL are never shown.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::nginx::Nginx;
use crate::util::*;

pub(crate) const LONG: Duration = Duration::from_secs(90);
pub(crate) const SIZE: usize = 4 << 20;

/// An ArsNet server group of one port serving `file` (rate-limited, so that mirrors matter).
fn arsnet_server(root: &Path, file: &Path, rate: &str) -> (Daemon, u16) {
    let d = Daemon::start(&root.join("srv"));
    let port = free_ports(1)[0];
    serve(&d, file, &[port], &["--rate", rate]);
    (d, port)
}

/// `fetch --source S... -o DIR` on `client`; the job id.
pub(crate) fn fetch_sources(
    client: &Daemon,
    dir: &Path,
    sources: &[String],
    flags: &[&str],
) -> u64 {
    let mut args = vec!["fetch".to_string(), "-o".into(), dir.display().to_string()];
    for source in sources {
        args.push("--source".into());
        args.push(source.clone());
    }
    args.extend(flags.iter().map(|f| f.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client
        .ok(&refs)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .expect("job id")
}

pub(crate) fn completed(client: &Daemon, job: u64) -> Value {
    client.wait_job(job, LONG, |s| {
        let state = job_state(s);
        assert_ne!(state, "failed", "{s}");
        state == "completed"
    })
}

pub(crate) fn source<'a>(status: &'a Value, address: &str) -> &'a Value {
    status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == address)
        .unwrap_or_else(|| panic!("no source {address} in {status}"))
}

pub(crate) struct Setup {
    pub tmp: tempfile::TempDir,
    pub data: Vec<u8>,
    pub file: std::path::PathBuf,
    pub mirror_root: std::path::PathBuf,
}

pub(crate) fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let data = write_file(&file, SIZE, 77);
    let mirror_root = tmp.path().join("www");
    std::fs::create_dir_all(&mirror_root).unwrap();
    std::fs::write(mirror_root.join("f.bin"), &data).unwrap();
    Setup {
        tmp,
        data,
        file,
        mirror_root,
    }
}

#[test]
fn arsnet_servers_and_nginx_mirrors_in_one_job_give_the_same_bytes() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "262144");
    let a = Nginx::start(&s.mirror_root, "");
    let b = Nginx::start(&s.mirror_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{port}"), a.url("f.bin"), b.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &[]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    // The mirrors, unthrottled, did most of the work; the slow server named the content.
    let by_mirrors: u64 = [a.url("f.bin"), b.url("f.bin")]
        .iter()
        .map(|u| source(&status, u)["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        by_mirrors > (SIZE as u64) / 2,
        "mirrors delivered {by_mirrors}: {status}"
    );
}

#[test]
fn a_mirror_with_other_bytes_is_blamed_and_its_bytes_never_kept() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "1048576");
    let bad_root = s.tmp.path().join("bad");
    std::fs::create_dir_all(&bad_root).unwrap();
    let mut corrupt = s.data.clone();
    for i in (0..corrupt.len()).step_by(1 << 20) {
        corrupt[i] ^= 0xff;
    }
    std::fs::write(bad_root.join("f.bin"), &corrupt).unwrap();
    let liar = Nginx::start(&bad_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{port}"), liar.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &[]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    assert_eq!(
        source(&status, &liar.url("f.bin"))["state"],
        "blamed",
        "{status}"
    );
}

#[test]
fn mirrors_of_another_size_without_range_or_failing_are_dropped_with_the_reason() {
    let s = setup();
    // 256 KiB/s: with the one good mirror the job takes several seconds, however fast the
    // bad mirrors are answered.
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "262144");
    std::fs::write(s.mirror_root.join("short.bin"), &s.data[..SIZE / 2]).unwrap();
    let extra = "location = /norange.bin { max_ranges 0; alias ROOT/f.bin; }\n\
                 location = /busy.bin { add_header Retry-After 7 always; return 503; }\n\
                 location = /loop.bin { return 302 /loop.bin; }\n\
                 location = /moved.bin { return 301 /f.bin; }\n\
                 limit_rate 524288;"
        .replace("ROOT", &s.mirror_root.display().to_string());
    // Throttled (the ArsNet server too, above), so that the job outlasts every mirror's
    // first answer: each bad one is dropped with its reason before the file is whole.
    let n = Nginx::start(&s.mirror_root, &extra);
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [
        format!("127.0.0.1:{port}"),
        n.url("short.bin"),
        n.url("norange.bin"),
        n.url("busy.bin"),
        n.url("loop.bin"),
        n.url("moved.bin"),
    ];
    let job = fetch_sources(&client, &out, &sources, &[]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    let detail = |name: &str| {
        source(&status, &n.url(name))["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        source(&status, &n.url("short.bin"))["state"],
        "blamed",
        "{status}"
    );
    assert!(
        detail("short.bin").contains(&format!("{} bytes", SIZE / 2)),
        "{status}"
    );
    assert!(detail("norange.bin").contains("ignores Range"), "{status}");
    assert!(
        detail("busy.bin").contains("503 (retry after 7s)"),
        "{status}"
    );
    assert!(detail("loop.bin").contains("redirect"), "{status}");
    // A redirect to the real file is followed: that mirror helped.
    assert!(
        source(&status, &n.url("moved.bin"))["bytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{status}"
    );
}

#[test]
fn a_mirror_whose_file_changes_mid_job_is_detected_and_never_mixed_in() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "524288");
    // Slow enough that the file is replaced while the mirror is still serving.
    let n = Nginx::start(&s.mirror_root, "limit_rate 262144;");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{port}"), n.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &[]);
    client.wait_job(job, LONG, |st| {
        st["sources"][1]["bytes"].as_u64().unwrap_or(0) > 0
    });
    // A new version, put in place the way mirrors publish (write, then rename over).
    let next = s.mirror_root.join("f.bin.new");
    std::fs::write(&next, test_data(SIZE, 78)).unwrap();
    std::fs::rename(&next, s.mirror_root.join("f.bin")).unwrap();
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    let log = client.log();
    assert!(
        log.contains("mirror's file changed")
            || source(&status, &n.url("f.bin"))["state"] == "blamed",
        "the change was noticed: {status}\n{}",
        tail(&log, 30)
    );
}

#[test]
fn a_mirror_killed_mid_transfer_leaves_the_job_to_the_others() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "524288");
    let mut n = Nginx::start(&s.mirror_root, "limit_rate 524288;");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{port}"), n.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &[]);
    client.wait_job(job, LONG, |st| {
        st["sources"][1]["bytes"].as_u64().unwrap_or(0) > 0
    });
    n.kill();
    completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
}

#[test]
fn mirrors_alone_are_refused_and_credentials_are_never_shown() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "4194304");
    let n = Nginx::start(&s.mirror_root, "");
    // A state dir that already exists open to others (as packaging may make it), and a
    // debug log: neither may give the credentials away.
    let cli_root = s.tmp.path().join("cli");
    std::fs::create_dir_all(cli_root.join("state")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        cli_root.join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let client = Daemon::start_debug(&cli_root);
    let out = s.tmp.path().join("out");
    let alone = client.ctl(&[
        "fetch",
        "-o",
        out.to_str().unwrap(),
        "--source",
        &n.url("f.bin"),
    ]);
    // Alone and without a pin, mirrors say nothing of what the file must be: a usage error.
    assert_eq!(alone.status.code(), Some(2), "{alone:?}");
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(
        said.contains("--sha256") && said.contains("--no-verify"),
        "{said}"
    );

    let secret = format!(
        "http://alice:hunter2@127.0.0.1:{}/f.bin?token=s3cr3t",
        n.port
    );
    let job = fetch_sources(&client, &out, &[format!("127.0.0.1:{port}"), secret], &[]);
    completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    let shown = [
        client.ok(&["list"]),
        client.ok(&["status", &job.to_string()]),
        client.ok(&["status", &job.to_string(), "--json"]),
        client.ok(&["metrics"]),
        client.log(),
    ];
    for text in shown {
        for leak in ["hunter2", "alice", "s3cr3t"] {
            assert!(!text.contains(leak), "{leak} shown in:\n{text}");
        }
    }
    // The state file must keep the URL whole (to fetch after a restart), so it is private.
    use std::os::unix::fs::MetadataExt;
    let state = client.state_dir.join("state.json");
    assert!(std::fs::read_to_string(&state).unwrap().contains("hunter2"));
    assert_eq!(
        std::fs::metadata(&state).unwrap().mode() & 0o077,
        0,
        "state.json is private"
    );
    assert_eq!(
        std::fs::metadata(&client.state_dir).unwrap().mode() & 0o077,
        0,
        "the state dir is closed"
    );
}

#[test]
fn a_mixed_job_resumes_after_kill_9_of_the_daemon() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "262144");
    let n = Nginx::start(&s.mirror_root, "limit_rate 131072;");
    let mut client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{port}"), n.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &[]);
    client.wait_job(job, LONG, |st| {
        st["sources"][1]["bytes"].as_u64().unwrap_or(0) > 256 * 1024
            && st["segments_done"].as_u64().unwrap_or(0) > 4
    });
    client.kill9();
    client.restart();
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    assert!(
        status["adopted_segments"].as_u64().unwrap() > 0,
        "what was verified before the crash was kept: {status}"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl in `dir`: returns
/// (CA certificate, server certificate, server key).
fn make_ca(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ArsNet test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[test]
fn an_https_mirror_with_a_private_ca_needs_that_ca() {
    let s = setup();
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "262144");
    let pki = s.tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (ca, cert, key) = make_ca(&pki);
    let plain = Nginx::start(&s.mirror_root, "");
    // A redirect down to plain http (which would carry a URL's credentials in clear).
    let down = format!(
        "location = /down.bin {{ return 302 {}; }}",
        plain.url("f.bin")
    );
    let n = Nginx::start_tls(&s.mirror_root, &cert, &key, &down);
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let sources = [format!("127.0.0.1:{port}"), n.https_url("f.bin")];

    // Without the CA, the mirror's certificate is not trusted: it never serves a byte.
    let untrusted = s.tmp.path().join("untrusted");
    let job = fetch_sources(&client, &untrusted, &sources, &[]);
    let status = completed(&client, job);
    assert_same(&untrusted.join("f.bin"), &s.data);
    let mirror = source(&status, &n.https_url("f.bin"));
    assert_eq!(mirror["bytes"], 0, "{status}");
    assert!(mirror["failures"].as_u64().unwrap() > 0, "{status}");

    // With it, the mirror takes its share.
    let trusted = s.tmp.path().join("trusted");
    let ca = ca.display().to_string();
    let job = fetch_sources(&client, &trusted, &sources, &["--ca-cert", &ca]);
    let status = completed(&client, job);
    assert_same(&trusted.join("f.bin"), &s.data);
    let mirror = source(&status, &n.https_url("f.bin"));
    assert!(
        mirror["bytes"].as_u64().unwrap() > (SIZE as u64) / 2,
        "{status}"
    );

    let downgraded = s.tmp.path().join("downgraded");
    let with_down = [sources[0].clone(), n.https_url("down.bin")];
    let job = fetch_sources(&client, &downgraded, &with_down, &["--ca-cert", &ca]);
    let status = completed(&client, job);
    let detail = source(&status, &n.https_url("down.bin"))["detail"].to_string();
    assert!(detail.contains("from https to plain http"), "{status}");
    assert_eq!(source(&status, &n.https_url("down.bin"))["bytes"], 0);

    // Not a certificate: refused before anything runs.
    let bogus = s.tmp.path().join("bogus.pem");
    std::fs::write(&bogus, "hello").unwrap();
    let out = client.ctl(&[
        "fetch",
        "-o",
        s.tmp.path().join("x").to_str().unwrap(),
        "--source",
        &sources[0],
        "--ca-cert",
        bogus.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

fn curl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl")
}

/// The HTTP status curl got for `url`, with `extra` arguments before it.
fn http_code(extra: &[&str], url: &str) -> String {
    let mut args = extra.to_vec();
    args.extend(["-o", "/dev/null", "-w", "%{http_code}", url]);
    String::from_utf8_lossy(&curl(&args).stdout).into_owned()
}

#[test]
fn serve_http_answers_curl_and_serves_as_a_mirror_to_arsnet() {
    let s = setup();
    let srv = Daemon::start(&s.tmp.path().join("srv"));
    let ports = free_ports(2);
    serve(&srv, &s.file, &ports, &["--http"]);
    let url = |port: u16| format!("http://127.0.0.1:{port}/f.bin");

    // The whole file, a range, and the headers: ETag is the file's BLAKE3.
    let whole = curl(&["-o", "-", &url(ports[0])]);
    assert!(whole.status.success(), "{whole:?}");
    assert_eq!(whole.stdout, s.data, "curl got the file");
    let part = curl(&["-r", "1000-1999", "-o", "-", &url(ports[1])]);
    assert_eq!(part.stdout, &s.data[1000..2000]);
    let head = curl(&["-I", &url(ports[0])]);
    let headers = String::from_utf8_lossy(&head.stdout).to_lowercase();
    let b3 = blake3::hash(&s.data).to_hex().to_string();
    assert!(headers.contains(&format!("etag: \"{b3}\"")), "{headers}");
    assert!(headers.contains("accept-ranges: bytes"), "{headers}");
    assert!(
        headers.contains(&format!("content-length: {SIZE}")),
        "{headers}"
    );
    // A stale If-Range gets the whole (current) file; an impossible range gets 416.
    assert_eq!(
        http_code(&["-r", "0-9", "-H", "If-Range: \"old\""], &url(ports[0])),
        "200"
    );
    assert_eq!(
        http_code(&["-r", &format!("{SIZE}-")], &url(ports[0])),
        "416"
    );
    let other = format!("http://127.0.0.1:{}/other", ports[0]);
    assert_eq!(http_code(&[], &other), "404");

    // ArsNet itself: one port as an ArsNet server, the other as an HTTP mirror.
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [format!("127.0.0.1:{}", ports[0]), url(ports[1])];
    let job = fetch_sources(&client, &out, &sources, &[]);
    completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    // Which of the two did the work in that job is timing; alone, the HTTP port must serve
    // every byte.
    let alone = s.tmp.path().join("alone");
    let pin = blake3::hash(&s.data).to_hex().to_string();
    let job = fetch_sources(&client, &alone, &[url(ports[1])], &["--blake3", &pin]);
    let status = completed(&client, job);
    assert_same(&alone.join("f.bin"), &s.data);
    assert_eq!(
        source(&status, &url(ports[1]))["bytes"].as_u64(),
        Some(SIZE as u64),
        "{status}"
    );

    // The ArsNet protocol still works on an --http port, and a plain serve stays ArsNet-only.
    let plain = free_ports(1);
    serve(&srv, &s.mirror_root.join("f.bin"), &plain, &[]);
    let refused = curl(&[
        "--max-time",
        "3",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{}/f.bin", plain[0]),
    ]);
    assert!(!refused.status.success(), "no HTTP without --http");
}

/// A mirror that answers the first request (the one-byte probe) with a 206 whose body never
/// ends: the probe must be cut off, not buffered.
fn endless_mirror() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/{SIZE}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                // At most 1 GiB, so a broken client cannot make the test run forever.
                for _ in 0..16384 {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_mirror_whose_probe_never_ends_is_cut_off_and_blamed() {
    let s = setup();
    // 1 MiB/s: about 4 s, so the job outlasts the endless probe however slowly it runs.
    let (_srv, port) = arsnet_server(s.tmp.path(), &s.file, "1048576");
    let mirror = format!("http://127.0.0.1:{}/f.bin", endless_mirror());
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let job = fetch_sources(
        &client,
        &out,
        &[format!("127.0.0.1:{port}"), mirror.clone()],
        &[],
    );
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    let shown = source(&status, &mirror);
    assert_eq!(shown["state"], "blamed", "{status}");
    assert!(
        shown["detail"].to_string().contains("longer than"),
        "{status}"
    );
    // Nothing of the endless body was kept: the daemon never grew by anything like it.
    let hwm: u64 = std::fs::read_to_string(format!("/proc/{}/status", client.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(hwm < 256 * 1024, "peak RSS {hwm} kB");
}

/// A mirror of `data` that answers Range requests slowly and counts how many it serves at
/// once; returns its port and the highest count seen.
fn counting_mirror(data: Vec<u8>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = Arc::new(data);
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (data, now, most) = (data.clone(), now.clone(), most.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut range = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(r) = lower.strip_prefix("range: bytes=") {
                            let (a, b) = r.trim().split_once('-').unwrap();
                            range =
                                Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let (first, last) = range.unwrap_or((0, data.len() - 1));
                    let level = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(level, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{}\r\n\
                         Content-Length: {}\r\nETag: \"v1\"\r\n\r\n",
                        data.len(),
                        last - first + 1
                    );
                    let pieces: Vec<&[u8]> = data[first..=last].chunks(16 * 1024).collect();
                    let Some((final_piece, body)) = pieces.split_last() else {
                        return;
                    };
                    let mut alive = stream.write_all(head.as_bytes()).is_ok();
                    for piece in body {
                        // Slow enough that requests overlap when the client sends several.
                        std::thread::sleep(Duration::from_millis(10));
                        alive = alive && stream.write_all(piece).is_ok();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    // Out of flight before the client can hold the whole body, so that its
                    // next request is never counted beside this one.
                    now.fetch_sub(1, Ordering::SeqCst);
                    if !alive || stream.write_all(final_piece).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn connections_per_source_sets_the_requests_in_flight_per_mirror() {
    let s = setup();
    let client = Daemon::start(&s.tmp.path().join("cli"));
    // The mirror is the job's only source, identified by a pin: with no second source there
    // is no endgame duplicate whose cancel could overlap the request that replaces it.
    let pin = blake3::hash(&s.data).to_hex().to_string();
    for (extra, expected) in [(vec!["--connections-per-source", "3"], 3), (vec![], 2)] {
        let (mirror_port, most) = counting_mirror(s.data.clone());
        let mirror = format!("http://127.0.0.1:{mirror_port}/f.bin");
        let out = s.tmp.path().join(format!("out-{expected}"));
        let mut flags = vec!["--blake3", pin.as_str()];
        flags.extend(&extra);
        let job = fetch_sources(&client, &out, &[mirror], &flags);
        completed(&client, job);
        assert_same(&out.join("f.bin"), &s.data);
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(most, expected, "requests in flight at once with {extra:?}");
    }
    let refused = client.ctl(&[
        "fetch",
        "-o",
        "/tmp/x",
        "-a",
        "127.0.0.1",
        "-p",
        "9",
        "--connections-per-source",
        "17",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}
