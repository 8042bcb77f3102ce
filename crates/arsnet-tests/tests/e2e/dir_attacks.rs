//! The download directory is hostile ground, and servers may lie about the content: symlinks
//! and swapped files at the partial-file paths, reserved names, torn journals and crashes
//! around publishing, mirrors that disagree, pins, and headers larger than the disk.

use std::path::Path;
use std::time::Duration;

use crate::faulty::{Fault, FaultyServer};
use crate::util::*;

const LONG: Duration = Duration::from_secs(60);

fn terminal(s: &serde_json::Value) -> bool {
    matches!(job_state(s).as_str(), "completed" | "failed" | "cancelled")
}

fn failure(s: &serde_json::Value) -> String {
    s["reason"].as_str().unwrap_or_default().to_string()
}

fn b3(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// What `pause_midway` and the tests acting on a running job use: 6 MiB from 4 ports of
/// 256 KiB/s each, about 6 s, so that an action taken at 20% lands seconds before the end
/// even on a slow, loaded machine (each port's first burst is only 64 KiB).
const MIDWAY_SIZE: usize = 6 << 20;
const MIDWAY_RATE: u64 = 256 << 10;

fn setup(size: usize, rate: u64) -> Slow {
    let s = slow_setup(size, rate);
    std::fs::create_dir_all(&s.out).unwrap();
    s
}

fn pause_midway(s: &Slow, job: u64) {
    s.client.wait_job(job, LONG, |st| progress(st) > 0.2);
    s.client.ok(&["pause", &job.to_string()]);
    s.client.wait_job(job, LONG, |st| job_state(st) == "paused");
}

#[test]
fn a_symlink_swapped_in_for_the_dump_is_refused_and_its_target_untouched() {
    let s = setup(MIDWAY_SIZE, MIDWAY_RATE);
    let victim = s.tmp.path().join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    pause_midway(&s, job);
    let dump = s.out.join("slow.bin.arsnet-dump");
    std::fs::remove_file(&dump).unwrap();
    std::os::unix::fs::symlink(&victim, &dump).unwrap();
    s.client.ok(&["resume", &job.to_string()]);
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    let reason = failure(&st);
    assert!(
        reason.contains("slow.bin.arsnet-dump") && reason.contains("symbolic link"),
        "{reason}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
    assert!(!s.out.join("slow.bin").exists(), "nothing published");
    assert!(std::fs::symlink_metadata(&dump)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_file_planted_at_the_dump_path_is_never_published() {
    let s = setup(MIDWAY_SIZE, MIDWAY_RATE);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) > 0.2);
    // While the job runs, someone moves the real dump away and plants a file of the right
    // size at its name.
    let dump = s.out.join("slow.bin.arsnet-dump");
    std::fs::rename(&dump, s.out.join("moved")).unwrap();
    std::fs::write(&dump, vec![0u8; s.data.len()]).unwrap();
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&s.out.join("slow.bin"), &s.data);
    assert_eq!(
        std::fs::read(&dump).unwrap(),
        vec![0u8; s.data.len()],
        "theirs, left alone"
    );
}

#[test]
fn reserved_suffix_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let data = test_data(200_000, 3);
    for name in ["other.bin.arsnet-dump", "other.bin.arsnet-segments"] {
        let server = FaultyServer::start(data.clone(), name, 65536, Fault::Name(name.into()));
        let out = tmp.path().join(format!("out-{name}"));
        let job = fetch(&client, &out, &[server.port], &[]);
        let st = client.wait_job(job, LONG, terminal);
        assert_eq!(job_state(&st), "failed", "{st}");
        assert!(failure(&st).contains("reserves"), "{st}");
        assert!(!out.join(name).exists());
    }
}

/// Serves `data` as `name` from `count` ports of a fresh group in `dir`; returns the ports.
fn serve_content(
    d: &Daemon,
    dir: &Path,
    name: &str,
    data: &[u8],
    count: usize,
    extra: &[&str],
) -> Vec<u16> {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, data).unwrap();
    let ports = free_ports(count);
    serve(d, &file, &ports, extra);
    ports
}

#[test]
fn the_majority_decides_not_the_fastest_and_a_pin_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let x = test_data(3 << 20, 1);
    let y = test_data(3 << 20, 2);
    // Three slow servers of X, one fast server of Y (its header arrives first).
    let mut ports = serve_content(
        &servers,
        &tmp.path().join("x"),
        "same.bin",
        &x,
        3,
        &["--rate", "4000000"],
    );
    let fast = serve_content(&servers, &tmp.path().join("y"), "same.bin", &y, 1, &[]);
    ports.extend(&fast);

    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&out.join("same.bin"), &x);
    assert_eq!(st["blake3"], blake3::hash(&x).to_hex().as_str());
    let y_source = &st["sources"][3];
    assert_eq!(y_source["state"], "blamed", "{st}");
    assert!(
        y_source["detail"]
            .as_str()
            .unwrap()
            .contains("other content"),
        "{st}"
    );

    // The user pins Y (the minority): Y it is, and the X servers are the ones blamed. Y now
    // comes from a throttled server (1 MiB/s, about 3 s), so the job is still running when
    // every X server's header arrives: an unthrottled Y could finish it before.
    let slow_y = serve_content(
        &servers,
        &tmp.path().join("y-slow"),
        "same.bin",
        &y,
        1,
        &["--rate", "1M"],
    );
    let ports = [&ports[..3], &slow_y[..]].concat();
    let pinned = tmp.path().join("pinned");
    let job = fetch(&client, &pinned, &ports, &["--blake3", &b3(&y)]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&pinned.join("same.bin"), &y);
    for i in 0..3 {
        assert_eq!(st["sources"][i]["state"], "blamed", "{st}");
    }
}

#[test]
fn the_first_header_decides_nothing() {
    // The minority's header arrives first, every time: the majority's come 300 ms later.
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let x = test_data(1 << 20, 11);
    let y = test_data(1 << 20, 12);
    let late = Fault::LateHeader(Duration::from_millis(300));
    let mut ports: Vec<u16> = (0..3)
        .map(|_| FaultyServer::start(x.clone(), "order.bin", 65536, late.clone()).port)
        .collect();
    let first = FaultyServer::start(y, "order.bin", 65536, Fault::Slow(Duration::ZERO));
    ports.push(first.port);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&out.join("order.bin"), &x);
    assert_eq!(st["sources"][3]["state"], "blamed", "{st}");
}

#[test]
fn no_strict_majority_fails_naming_both_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let x = test_data(1 << 20, 5);
    let y = test_data(1 << 20, 6);
    let mut ports = serve_content(&servers, &tmp.path().join("x"), "two.bin", &x, 2, &[]);
    ports.extend(serve_content(
        &servers,
        &tmp.path().join("y"),
        "two.bin",
        &y,
        2,
        &[],
    ));
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    let reason = failure(&st);
    assert!(
        reason.contains(&b3(&x)) && reason.contains(&b3(&y)),
        "{reason}"
    );
    assert!(reason.contains("--blake3"), "{reason}");
    assert!(!out.join("two.bin").exists());
    assert!(
        !out.join("two.bin.arsnet-dump").exists(),
        "nothing was stored"
    );
    // As the error says: pin one, and the same job downloads it.
    let again = fetch(&client, &out, &ports, &["-r", "--blake3", &b3(&y)]);
    assert_eq!(again, job, "fetch -r attaches to the failed job");
    let st = client.wait_job(job, LONG, |s| terminal(s) && job_state(s) != "failed");
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&out.join("two.bin"), &y);
}

#[test]
fn fetch_r_cannot_switch_a_job_to_other_content() {
    let s = setup(MIDWAY_SIZE, MIDWAY_RATE);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    pause_midway(&s, job);
    let args = fetch_args(&s.out, &s.ports, &["-r", "--blake3", &"ab".repeat(32)]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.client.ctl(&refs);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other content"),
        "{out:?}"
    );
    let st = s.client.status(job);
    assert_eq!(job_state(&st), "paused", "the job is left as it was: {st}");
    // The right pin attaches and finishes it.
    let again = fetch(
        &s.client,
        &s.out,
        &s.ports,
        &["-r", "--blake3", &b3(&s.data)],
    );
    assert_eq!(again, job);
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&s.out.join("slow.bin"), &s.data);
}

#[test]
fn a_sha256_pin_is_checked_before_publishing() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let data = test_data(1 << 20, 9);
    let ports = serve_content(&servers, &tmp.path().join("s"), "sha.bin", &data, 2, &[]);
    let sum = std::process::Command::new("sha256sum")
        .arg(tmp.path().join("s/sha.bin"))
        .output()
        .unwrap();
    let right = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let wrong = "0".repeat(64);

    let bad = tmp.path().join("bad");
    let job = fetch(&client, &bad, &ports, &["--sha256", &wrong]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    assert!(failure(&st).contains(&right), "names the real digest: {st}");
    assert!(!bad.join("sha.bin").exists(), "nothing published");

    let good = tmp.path().join("good");
    let job = fetch(&client, &good, &ports, &["--sha256", &right]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&good.join("sha.bin"), &data);
}

#[test]
fn a_torn_journal_header_is_kept_aside_and_the_download_completes() {
    let mut s = setup(MIDWAY_SIZE, MIDWAY_RATE);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    pause_midway(&s, job);
    s.client.kill9();
    // What a crash while the journal was being created leaves: a header cut short.
    let journal = s.out.join("slow.bin.arsnet-segments");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(30).unwrap();
    drop(f);
    s.client.restart();
    s.client.ok(&["resume", &job.to_string()]);
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&s.out.join("slow.bin"), &s.data);
    let kept: Vec<String> = std::fs::read_dir(&s.out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".arsnet-untrusted-"))
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the untrusted journal is kept aside: {kept:?}"
    );
}

#[test]
fn a_crash_after_publishing_is_completed_on_restart() {
    let mut s = setup(4 << 20, 4 << 20);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    // The crash: DIR/NAME is in place and the journal gone, but "completed" never reached
    // the job table.
    s.client.kill9();
    let state_path = s.client.state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["jobs"][0]["state"] = serde_json::json!("Running");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    s.client.restart();
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert_same(&s.out.join("slow.bin"), &s.data);
    // And a different file at that name is not taken for it.
    s.client.kill9();
    std::fs::write(s.out.join("slow.bin"), b"not it").unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["jobs"][0]["state"] = serde_json::json!("Running");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    s.client.restart();
    let st = s.client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    assert!(failure(&st).contains("already exists"), "{st}");
    assert_eq!(std::fs::read(s.out.join("slow.bin")).unwrap(), b"not it");
}

#[test]
fn a_header_larger_than_the_free_space_fails_before_any_write() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let server = FaultyServer::start(Vec::new(), "huge.img", 65536, Fault::AnnounceSize(1 << 40));
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &[server.port], &[]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    let reason = failure(&st);
    assert!(
        reason.contains("1099511627776") && reason.contains("free"),
        "{reason}"
    );
    let entries: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        entries.iter().all(|&n| n == 0),
        "nothing was created in DIR"
    );
}

#[test]
fn an_orphaned_partial_download_never_chooses_the_content() {
    // Someone leaves a partial download of Z under the name the honest servers serve X as
    // (a job of another daemon, killed), then a fresh daemon is asked to `fetch -r`.
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let z = test_data(8 << 20, 21);
    let x = test_data(8 << 20, 22);
    let z_ports = serve_content(
        &servers,
        &tmp.path().join("z"),
        "same.bin",
        &z,
        2,
        &["--rate", "2000000"],
    );
    let x_ports = serve_content(&servers, &tmp.path().join("x"), "same.bin", &x, 3, &[]);
    let out = tmp.path().join("out");
    // A complete download of Z that was never published (its SHA-256 pin was wrong): every
    // segment of Z is journaled, so adopting it would finish at once, without any server.
    let mut planter = Daemon::start(&tmp.path().join("planter"));
    let wrong = "0".repeat(64);
    let job = fetch(&planter, &out, &z_ports, &["--sha256", &wrong]);
    let st = planter.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    planter.kill9();
    assert!(out.join("same.bin.arsnet-segments").exists());

    let client = Daemon::start(&tmp.path().join("cli"));
    let job = fetch(&client, &out, &x_ports, &["-r"]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    assert!(failure(&st).contains("other content"), "{st}");
    assert!(!out.join("same.bin").exists(), "Z was not published");
    assert!(
        out.join("same.bin.arsnet-segments").exists(),
        "the orphan was left alone"
    );
    assert_eq!(st["adopted_segments"], 0, "{st}");
}
