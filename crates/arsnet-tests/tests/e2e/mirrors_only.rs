//! Jobs of HTTP mirrors alone, against real nginx: no source proves a segment, so the
//! user's pin is the identity and the whole file is checked against it before it is
//! published (or, with `--no-verify`, nothing is checked and the job says so). A wrong pin
//! publishes nothing; a kill -9 mid-download resumes from the journal.

use std::path::Path;
use std::process::{Command, Output};

use crate::http_mirrors::{completed, fetch_sources, setup, LONG, SIZE};
use crate::nginx::Nginx;
use crate::util::*;

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// `fetch --wait` of `sources` into `dir` with `flags`: the command's output.
fn fetch_wait(
    client: &Daemon,
    dir: &Path,
    sources: &[String],
    flags: &[&str],
) -> std::process::Output {
    let mut args = vec!["fetch".to_string(), "-o".into(), dir.display().to_string()];
    for source in sources {
        args.extend(["--source".to_string(), source.clone()]);
    }
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend(["--wait".to_string(), "--timeout".into(), "90s".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    client.ctl(&refs)
}

/// Waits until the journal of `f.bin` in `out` holds a record past its header (84 + name +
/// 32 × 4 segments): at least one segment is durable.
fn wait_for_a_journaled_segment(client: &Daemon, job: u64, out: &Path) {
    let journal = out.join("f.bin.arsnet-segments");
    let header = 84 + "f.bin".len() as u64 + 32 * (SIZE as u64 >> 20);
    client.wait_job(job, LONG, |_| {
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > header)
    });
}

#[test]
fn nginx_mirrors_alone_with_each_pin_kind_or_no_verify_give_the_same_bytes() {
    let s = setup();
    let a = Nginx::start(&s.mirror_root, "");
    let b = Nginx::start(&s.mirror_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let mirrors = [a.url("f.bin"), b.url("f.bin")];
    let blake3 = blake3_hex(&s.data);
    let sha256 = sha256_hex(&s.file);
    for (i, (flags, verification, said)) in [
        (
            vec!["--blake3", blake3.as_str()],
            "whole-file",
            format!("verified: the whole file against the pinned BLAKE3 {blake3}"),
        ),
        (
            vec!["--sha256", sha256.as_str()],
            "whole-file",
            "verified: the whole file against the pinned SHA-256".to_string(),
        ),
        (vec!["--no-verify"], "none", "NOT verified".to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let out = s.tmp.path().join(format!("out{i}"));
        let run = fetch_wait(&client, &out, &mirrors, &flags);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{flags:?}: {run:?}");
        assert!(stdout.contains(&said), "{flags:?}: {stdout}");
        // Saved under the URL's file name, byte for byte.
        assert_same(&out.join("f.bin"), &s.data);
        let job: u64 = stdout.lines().next().unwrap().trim().parse().unwrap();
        let status = client.status(job);
        assert_eq!(status["verification"], verification, "{status}");
        // The BLAKE3 shown is the pinned one, never the layout's placeholder root.
        let shown = status["blake3"].as_str().map(str::to_string);
        let expected = (flags[0] == "--blake3").then(|| blake3.clone());
        assert_eq!(shown, expected, "{status}");
        let human = client.ok(&["status", &job.to_string()]);
        assert_eq!(
            human.contains("NOT verified"),
            verification == "none",
            "{human}"
        );
        // The mirrors between them delivered the file, and neither was held to fault. (How
        // the work was shared is timing: one fast mirror may take all four segments.)
        let delivered: u64 = mirrors
            .iter()
            .map(|m| {
                crate::http_mirrors::source(&status, m)["bytes"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert!(delivered >= SIZE as u64, "delivered {delivered}: {status}");
        for mirror in &mirrors {
            let source = crate::http_mirrors::source(&status, mirror);
            assert_eq!(source["failures"], 0, "{mirror}: {status}");
        }
    }
}

#[test]
fn a_wrong_pin_on_mirrors_alone_publishes_nothing_and_says_which_hash_differs() {
    let s = setup();
    let a = Nginx::start(&s.mirror_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let other = blake3_hex(b"some other file");
    for (i, (pin, algorithm)) in [("--sha256", "SHA-256"), ("--blake3", "BLAKE3")]
        .into_iter()
        .enumerate()
    {
        let out = s.tmp.path().join(format!("out{i}"));
        let run = fetch_wait(&client, &out, &[a.url("f.bin")], &[pin, &other]);
        assert_eq!(run.status.code(), Some(4), "{pin}: {run:?}");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(
            said.contains(
                &format!("{algorithm} is {}", blake3_hex(&s.data))
                    .replace(&blake3_hex(&s.data), "")
            ) && said.contains(&format!("not the pinned {other}"))
                && said.contains("nothing was published"),
            "{pin}: {said}"
        );
        assert!(!out.join("f.bin").exists(), "{pin}: a file was published");
    }
}

#[test]
fn a_job_of_mirrors_alone_resumes_after_kill_9_of_the_daemon() {
    let s = setup();
    let n = Nginx::start(&s.mirror_root, "limit_rate 262144;");
    let mut client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sha256 = sha256_hex(&s.file);
    let job = fetch_sources(&client, &out, &[n.url("f.bin")], &["--sha256", &sha256]);
    // A segment is durable, and the crash comes while the rest is still on its way.
    wait_for_a_journaled_segment(&client, job, &out);
    client.kill9();
    client.restart();
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    assert!(
        status["adopted_segments"].as_u64().unwrap() > 0,
        "what was durable before the crash was kept: {status}\n{}",
        tail(&client.log(), 40)
    );
    assert_eq!(status["verification"], "whole-file", "{status}");
}

#[test]
fn no_verify_is_refused_where_something_verifies() {
    let s = setup();
    let a = Nginx::start(&s.mirror_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let blake3 = blake3_hex(&s.data);
    for extra in [
        vec!["--source", "127.0.0.1:5999", "--no-verify"],
        vec!["--no-verify", "--blake3", blake3.as_str()],
    ] {
        let mut args = vec!["fetch", "-o", out.to_str().unwrap(), "--source"];
        let url = a.url("f.bin");
        args.push(&url);
        args.extend(extra.iter().copied());
        let run = client.ctl(&args);
        assert_eq!(run.status.code(), Some(2), "{extra:?}: {run:?}");
    }
    // A URL that names no file.
    let run = client.ctl(&[
        "fetch",
        "-o",
        out.to_str().unwrap(),
        "--source",
        &a.url(""),
        "--no-verify",
    ]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("file name"),
        "{run:?}"
    );
}

#[test]
fn a_mirror_of_another_size_among_mirrors_alone_is_outvoted_and_blamed_with_its_size() {
    let s = setup();
    let short_root = s.tmp.path().join("short");
    std::fs::create_dir_all(&short_root).unwrap();
    let short = &s.data[..SIZE - 4096];
    std::fs::write(short_root.join("f.bin"), short).unwrap();
    let a = Nginx::start(&s.mirror_root, "");
    let b = Nginx::start(&s.mirror_root, "");
    let liar = Nginx::start(&short_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sha256 = sha256_hex(&s.file);
    // The liar first: whoever answers first decides nothing.
    let sources = [liar.url("f.bin"), a.url("f.bin"), b.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &["--sha256", &sha256]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    let blamed = crate::http_mirrors::source(&status, &liar.url("f.bin"));
    assert_eq!(blamed["state"], "blamed", "{status}");
    let detail = blamed["detail"].as_str().unwrap();
    assert!(detail.contains(&short.len().to_string()), "{detail}");
}

/// A mirror URL whose name ArsNet keeps for its own files, or too long to take their
/// suffixes, is refused when the request is made (a usage error), not when the job runs.
#[test]
fn a_mirror_name_arsnet_reserves_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let out = tmp.path().join("out");
    let long = format!("http://127.0.0.1:9/{}", "n".repeat(202));
    for (url, why) in [
        ("http://127.0.0.1:9/x.img.arsnet-dump", "reserves"),
        ("http://127.0.0.1:9/x.img.Arsnet-Segments", "reserves"),
        (long.as_str(), "limit of file names"),
    ] {
        let run = fetch_wait(&client, &out, &[url.to_string()], &["--no-verify"]);
        assert_eq!(run.status.code(), Some(2), "{url}: {run:?}");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(said.contains(why), "{url}: {said}");
    }
    assert!(client.ok(&["list"]).lines().all(|l| !l.contains("arsnet-")));
}

/// An empty file on mirrors alone (nginx answers a Range request on it with 416, or the
/// whole empty body): published empty, with each kind of identity, never left waiting.
#[test]
fn an_empty_file_on_mirrors_alone_is_published_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("empty.bin"), b"").unwrap();
    let mirrors = [Nginx::start(&root, ""), Nginx::start(&root, "")];
    let sources: Vec<String> = mirrors.iter().map(|n| n.url("empty.bin")).collect();
    let client = Daemon::start(&tmp.path().join("cli"));
    let sha256 = sha256_hex(&root.join("empty.bin"));
    let blake3 = blake3_hex(b"");
    for (i, flags) in [
        vec!["--no-verify"],
        vec!["--sha256", sha256.as_str()],
        vec!["--blake3", blake3.as_str()],
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("out{i}"));
        let run = fetch_wait(&client, &out, &sources, &flags);
        assert!(run.status.success(), "{flags:?}: {run:?}");
        let got = std::fs::read(out.join("empty.bin")).unwrap();
        assert!(got.is_empty(), "{flags:?}: {} bytes", got.len());
    }
}

/// A mirror answering like an empty file (200, no body: truncated, or half synced) beside
/// a good one: with a pin that is not the empty file's, it is refused and the job completes.
#[test]
fn a_mirror_answering_empty_is_refused_when_the_pin_says_otherwise() {
    let s = setup();
    let sha256 = sha256_hex(&s.file);
    let n = Nginx::start(
        &s.mirror_root,
        "location = /trunc/f.bin { return 200 \"\"; }",
    );
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [n.url("trunc/f.bin"), n.url("f.bin")];
    let run = fetch_wait(&client, &out, &sources, &["--sha256", &sha256]);
    assert!(run.status.success(), "{run:?}");
    assert_same(&out.join("f.bin"), &s.data);
    let status = client.status(1);
    let bad = crate::http_mirrors::source(&status, &n.url("trunc/f.bin"));
    let detail = bad["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("as if the file were empty"), "{status}");
}

/// A checksum server that answers each request after a second with 404, counting how many
/// requests it holds at once.
fn counting_checksum_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (open, most) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let seen = most.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (open, most) = (open.clone(), most.clone());
            std::thread::spawn(move || {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(&stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                open.fetch_sub(1, Ordering::SeqCst);
                let _ = (&stream).write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    (base, seen)
}

/// A flood of `fetch --checksum-url` opens no flood of connections: the daemon reads a few
/// checksum files at a time and the other requests wait their turn (each is still answered:
/// here, with the server's 404).
#[test]
fn checksum_files_are_read_a_few_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, most) = counting_checksum_server();
    let client = Daemon::start(&tmp.path().join("cli"));
    let runs: Vec<Output> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..8)
            .map(|i| {
                let (client, base, tmp) = (&client, &base, &tmp);
                scope.spawn(move || {
                    let out = tmp.path().join(format!("out{i}"));
                    let (source, sums) = (format!("{base}/f{i}.bin"), format!("{base}/SHA256SUMS"));
                    let dir = out.to_str().unwrap();
                    client.ctl(&[
                        "fetch",
                        "-o",
                        dir,
                        "--source",
                        &source,
                        "--checksum-url",
                        &sums,
                    ])
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for out in runs {
        assert!(!out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("404"), "{said}");
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=4).contains(&most), "{most} checksum reads at once");
}

#[test]
fn a_checksum_url_pins_the_job_to_its_line_for_the_file() {
    let s = setup();
    let sha256 = sha256_hex(&s.file);
    let blake3 = blake3_hex(&s.data);
    let other = blake3_hex(b"another file");
    // As mirrors publish them: other files listed too, paths before the name, both styles.
    let sums = s.mirror_root.join("SHA256SUMS");
    std::fs::write(
        &sums,
        format!("{other}  ./other.iso\n{sha256}  ./pub/f.bin\n"),
    )
    .unwrap();
    std::fs::write(s.mirror_root.join("B3SUMS"), format!("{blake3} *f.bin\n")).unwrap();
    std::fs::write(
        s.mirror_root.join("WRONGSUMS.sha256"),
        format!("{other}  f.bin\n"),
    )
    .unwrap();
    std::fs::write(
        s.mirror_root.join("NOLINE.sha256"),
        format!("{sha256}  other.iso\n"),
    )
    .unwrap();
    let a = Nginx::start(&s.mirror_root, "");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    for (i, sums) in ["SHA256SUMS", "B3SUMS"].into_iter().enumerate() {
        let out = s.tmp.path().join(format!("out{i}"));
        let run = fetch_wait(
            &client,
            &out,
            &[a.url("f.bin")],
            &["--checksum-url", &a.url(sums)],
        );
        assert!(run.status.success(), "{sums}: {run:?}");
        assert_same(&out.join("f.bin"), &s.data);
    }
    // A line that names other content: the whole-file check refuses to publish.
    let out = s.tmp.path().join("wrong");
    let url = a.url("WRONGSUMS.sha256");
    let run = fetch_wait(&client, &out, &[a.url("f.bin")], &["--checksum-url", &url]);
    assert_eq!(run.status.code(), Some(4), "{run:?}");
    assert!(!out.join("f.bin").exists());
    // No line for the name, or no file at all: the request is refused, no job is queued.
    for missing in ["NOLINE.sha256", "MISSING.sha256"] {
        let url = a.url(missing);
        let run = fetch_wait(&client, &out, &[a.url("f.bin")], &["--checksum-url", &url]);
        assert_eq!(run.status.code(), Some(1), "{missing}: {run:?}");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(
            said.contains("--checksum-url") && said.contains(missing),
            "{said}"
        );
    }
    let said = String::from_utf8_lossy(
        &fetch_wait(
            &client,
            &out,
            &[a.url("f.bin")],
            &["--checksum-url", &a.url("NOLINE.sha256")],
        )
        .stderr,
    )
    .to_string();
    assert!(said.contains("lists no line for f.bin"), "{said}");
}

/// Four nginx mirrors of a 16 MiB file, the first of which flips a byte in every MiB.
struct Flipping {
    tmp: tempfile::TempDir,
    data: Vec<u8>,
    good: Vec<Nginx>,
    liar: Nginx,
    sha256: String,
}

impl Flipping {
    fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let good_root = tmp.path().join("good");
        let bad_root = tmp.path().join("bad");
        std::fs::create_dir_all(&good_root).unwrap();
        std::fs::create_dir_all(&bad_root).unwrap();
        let data = write_file(&good_root.join("f.bin"), 16 << 20, 5);
        let mut flipped = data.clone();
        for i in (512..flipped.len()).step_by(1 << 20) {
            flipped[i] ^= 0x01;
        }
        std::fs::write(bad_root.join("f.bin"), &flipped).unwrap();
        // The honest mirrors are throttled (3 MiB/s a connection) and the liar is not, so the
        // liar certainly delivers much of the file, flipped bytes included: left unthrottled,
        // the honest ones might win nearly every segment and leave nothing to catch.
        let good = (0..3)
            .map(|_| Nginx::start(&good_root, "limit_rate 3m;"))
            .collect();
        let liar = Nginx::start(&bad_root, "");
        let sha256 = sha256_hex(&good_root.join("f.bin"));
        Flipping {
            tmp,
            data,
            good,
            liar,
            sha256,
        }
    }

    fn sources(&self) -> Vec<String> {
        let mut sources = vec![self.liar.url("f.bin")];
        sources.extend(self.good.iter().map(|n| n.url("f.bin")));
        sources
    }

    /// A client daemon; `cross_check_every = 0` turns the cross-check off.
    fn client(&self, name: &str, cross_check_every: u64) -> Daemon {
        let config = format!("{TEST_CONFIG}cross_check_every = {cross_check_every}\n");
        Daemon::start_with_config(&self.tmp.path().join(name), &config)
    }

    /// The liar is blamed, saying `why`; no honest mirror is.
    fn assert_only_the_liar_blamed(&self, status: &serde_json::Value, why: &str) {
        let blamed = crate::http_mirrors::source(status, &self.liar.url("f.bin"));
        assert_eq!(blamed["state"], "blamed", "{status}");
        let detail = blamed["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{detail}: {status}");
        for n in &self.good {
            let honest = crate::http_mirrors::source(status, &n.url("f.bin"));
            assert_ne!(honest["state"], "blamed", "{status}");
        }
    }
}

/// One mirror of four flips a byte in every MiB, and the cross-check while downloading is
/// off. Alone, the mirrors' segments cannot be checked one by one; the whole-file check
/// fails, the mirrors are compared segment by segment, the liar is blamed and what it sent
/// is fetched again from the others.
#[test]
fn a_mirror_flipping_a_byte_per_mib_is_found_by_provenance_and_its_segments_fetched_again() {
    let f = Flipping::start();
    let client = f.client("cli", 0);
    let blake3 = blake3_hex(&f.data);
    for (i, pin) in [
        ("--sha256", f.sha256.as_str()),
        ("--blake3", blake3.as_str()),
    ]
    .into_iter()
    .enumerate()
    {
        let out = f.tmp.path().join(format!("out{i}"));
        let job = fetch_sources(&client, &out, &f.sources(), &[pin.0, pin.1]);
        let status = completed(&client, job);
        assert_same(&out.join("f.bin"), &f.data);
        f.assert_only_the_liar_blamed(&status, "failed its");
    }
}

/// The same liar, found while downloading: its first segment is fetched again from the
/// others, two agree against it, it is blamed at once and what it sent is fetched again —
/// which even a job without any end check (`--no-verify`) relies on. With the cross-check
/// off, that job publishes the liar's bytes (what makes this test able to fail).
#[test]
fn a_lying_mirror_is_caught_by_the_cross_check_while_downloading() {
    let f = Flipping::start();
    let client = f.client("cli", 64);
    let out = f.tmp.path().join("checked");
    let job = fetch_sources(&client, &out, &f.sources(), &["--no-verify"]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &f.data);
    f.assert_only_the_liar_blamed(&status, "cross-check: its segment");
    // With a pin too. A job with an end check does not wait for its samples: on a fast
    // loopback the file may be whole before a sample is back, and then the end check's
    // comparison finds the liar instead. Which of the two blames it is timing; that the
    // liar, and only the liar, is blamed for a segment that differs is not.
    let out = f.tmp.path().join("pinned");
    let job = fetch_sources(&client, &out, &f.sources(), &["--sha256", &f.sha256]);
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &f.data);
    f.assert_only_the_liar_blamed(&status, "differs from what");

    let unchecked = f.client("unchecked", 0);
    let out = f.tmp.path().join("unchecked");
    let job = fetch_sources(&unchecked, &out, &f.sources(), &["--no-verify"]);
    completed(&unchecked, job);
    let got = std::fs::read(out.join("f.bin")).unwrap();
    assert_ne!(
        got, f.data,
        "without the cross-check the liar's bytes are kept"
    );
}

/// `fetch -r` of a running job with a pin the job was not started with is refused: the run
/// under way would not enforce it (a review found it attached and published unchecked).
#[test]
fn fetch_r_with_a_pin_never_attaches_to_a_job_that_does_not_check_it() {
    let s = setup();
    let slow = Nginx::start(&s.mirror_root, "limit_rate 131072;");
    let client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sources = [slow.url("f.bin")];
    let job = fetch_sources(&client, &out, &sources, &["--no-verify"]);
    let other = blake3_hex(b"another file");
    let sha256 = sha256_hex(&s.file);
    for pin in [
        ["--sha256", other.as_str()],
        ["--sha256", sha256.as_str()],
        ["--blake3", other.as_str()],
    ] {
        let mut args = vec![
            "fetch",
            "-r",
            "-o",
            out.to_str().unwrap(),
            "--source",
            &sources[0],
        ];
        args.extend(pin);
        let run = client.ctl(&args);
        assert_eq!(run.status.code(), Some(1), "{pin:?}: {run:?}");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(
            said.contains(&format!("job {job}")) && said.contains("cannot add a check"),
            "{said}"
        );
    }
    // The same request without a pin attaches.
    let again = fetch_sources(&client, &out, &sources, &["-r", "--no-verify"]);
    assert_eq!(again, job);
    client.ok(&["cancel", &job.to_string()]);
}

/// The same while the job is still starting: its only mirror accepts and never answers, so
/// the job runs without having accepted any content. A pin sent now would never be read by
/// that run; it is refused as well (it used to be taken as the job's "first pin", and
/// dropped).
#[test]
fn fetch_r_with_a_pin_is_refused_while_the_job_has_no_content_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/f.bin", silent.local_addr().unwrap());
    let client = Daemon::start(&tmp.path().join("cli"));
    let out = tmp.path().join("out");
    let job = fetch_sources(&client, &out, std::slice::from_ref(&url), &["--no-verify"]);
    client.wait_job(job, LONG, |st| st["state"] == "running");
    let pin = blake3_hex(b"any file");
    let dir = out.to_str().unwrap();
    let args = ["fetch", "-r", "-o", dir, "--source", &url, "--blake3", &pin];
    let run = client.ctl(&args);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("cannot add a check"), "{said}");
    client.ok(&["cancel", &job.to_string()]);
    drop(silent);
}

/// A crash between publishing and the job's end: after the restart the job of mirrors
/// alone recognises its file by the pin (its layout's root is no file's hash).
#[test]
fn a_job_of_mirrors_alone_whose_file_was_published_before_a_crash_completes() {
    let s = setup();
    let n = Nginx::start(&s.mirror_root, "");
    let mut client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let sha256 = sha256_hex(&s.file);
    let job = fetch_sources(&client, &out, &[n.url("f.bin")], &["--sha256", &sha256]);
    completed(&client, job);
    // The crash: DIR/NAME is in place and the journal gone, but "completed" never reached
    // the job table.
    client.kill9();
    let state_path = client.state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["jobs"][0]["state"] = serde_json::json!("Running");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    client.restart();
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    assert_eq!(status["verification"], "whole-file", "{status}");
}

/// `--no-verify` has nothing to check a journal's segments against after a restart: a dump
/// rewritten meanwhile by someone who can write DIR must not be published as the mirrors'.
#[test]
fn a_no_verify_job_fetches_its_journaled_segments_again_after_a_restart() {
    let s = setup();
    let n = Nginx::start(&s.mirror_root, "limit_rate 262144;");
    let mut client = Daemon::start(&s.tmp.path().join("cli"));
    let out = s.tmp.path().join("out");
    let job = fetch_sources(&client, &out, &[n.url("f.bin")], &["--no-verify"]);
    wait_for_a_journaled_segment(&client, job, &out);
    client.kill9();
    // The journal says segments are done; their bytes are not what the mirror sent now.
    use std::os::unix::fs::FileExt;
    let dump = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("f.bin.arsnet-dump"))
        .unwrap();
    dump.write_all_at(&vec![0u8; SIZE], 0).unwrap();
    drop(dump);
    client.restart();
    let status = completed(&client, job);
    assert_same(&out.join("f.bin"), &s.data);
    assert_eq!(status["adopted_segments"], 0, "{status}");
}
