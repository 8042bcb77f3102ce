//! Attacks on virtual servers: idle, half-open and trickling clients that try to lock honest
//! clients out, and served files edited in place behind the server's back.

use std::io::{Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Generous bound for one honest download of a small file; the point is "it completes",
/// not how fast.
const DEADLINE: Duration = Duration::from_secs(90);

/// `fetch --wait` of `ports` into `out`, given up after `DEADLINE`.
fn fetch_wait(client: &Daemon, out: &Path, ports: &[u16]) -> Option<std::process::Output> {
    let owned = fetch_args(out, ports, &["--wait"]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    ctl_within(client, &args, DEADLINE)
}

fn describe(out: &Option<std::process::Output>) -> String {
    match out {
        None => format!("still running after {DEADLINE:?}"),
        Some(o) => format!(
            "{}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    }
}

/// Opens `count` connections to `port` that never request anything: three in four say
/// HELLO and then nothing (they never read the header either), the rest connect and send
/// nothing at all. They come from 127.0.0.1 ..= 127.0.0.8, so that both the per-address
/// limit and the whole-port limit are in play, and 127.0.0.1 is the honest client's own.
fn idle_crowd(port: u16, count: usize) -> Vec<TcpStream> {
    let hello = hello_frame();
    let mut crowd = Vec::new();
    for i in 0..count {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8);
        // A server that stops accepting makes connects hang in the backlog; those that do
        // not get through are simply not part of the crowd.
        let Ok(mut s) = connect_from(source, port, Duration::from_secs(2), None) else {
            continue;
        };
        if i % 4 != 3 && s.write_all(&hello).is_err() {
            continue;
        }
        crowd.push(s);
    }
    crowd
}

#[test]
fn idle_connections_cannot_lock_honest_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("crowded.bin");
    let data = write_file(&file, 2 * 1024 * 1024 + 777, 81);
    let ports = free_ports(1);
    serve(&servers, &file, &ports, &[]);

    let crowd = idle_crowd(ports[0], 200);
    assert!(
        crowd.len() >= 64,
        "the attack fills the port: only {} connected",
        crowd.len()
    );

    let out = tmp.path().join("out");
    let result = fetch_wait(&client, &out, &ports);
    assert!(
        result.as_ref().is_some_and(|o| o.status.success()),
        "an honest fetch behind 200 idle connections must complete: {}\nclient log:\n{}\nserver log:\n{}",
        describe(&result),
        tail(&client.log(), 20),
        tail(&servers.log(), 20)
    );
    assert_same(&out.join("crowded.bin"), &data);

    // However many came, the port never served more than its limit at once.
    let groups = servers.json(&["servers"])["groups"].clone();
    let connections = groups[0]["ports"][0]["connections"]
        .as_u64()
        .unwrap_or_else(|| panic!("connections in {groups}"));
    assert!(connections <= 64, "{connections} connections on one port");
    drop(crowd);
}

#[test]
fn clients_that_stop_reading_cannot_lock_honest_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 MiB segments, so that what the clients below ask for is more than the kernel's
    // socket buffers can absorb for them (up to 4 MiB on Linux).
    let config = TEST_CONFIG.replace("segment_size = 65536", "segment_size = 1048576");
    let servers = Daemon::start_with_config(&tmp.path().join("srv"), &config);
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("trickled.bin");
    let data = write_file(&file, 8 * 1024 * 1024 + 3, 82);
    let ports = free_ports(1);
    serve(&servers, &file, &ports, &[]);

    // 96 clients from six addresses (more than the port's slots) each ask for the whole
    // file and never read a byte: the server's writes to them stall.
    let mut requests = hello_frame();
    for segment in 0..9u64 {
        arsnet_proto::wire::ClientFrame::Request { segment }.encode(&mut requests);
    }
    let mut stalled = Vec::new();
    for i in 0..96 {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 6) as u8);
        if let Ok(mut s) = connect_from(source, ports[0], Duration::from_secs(2), Some(4096)) {
            if s.write_all(&requests).is_ok() {
                stalled.push(s);
            }
        }
    }
    assert!(stalled.len() >= 64, "only {} connected", stalled.len());

    let out = tmp.path().join("out");
    let result = fetch_wait(&client, &out, &ports);
    assert!(
        result.as_ref().is_some_and(|o| o.status.success()),
        "an honest fetch behind clients that stopped reading must complete: {}\nserver log:\n{}",
        describe(&result),
        tail(&servers.log(), 20)
    );
    assert_same(&out.join("trickled.bin"), &data);
    drop(stalled);
}

/// Overwrites the file's bytes in place with `new` (same size, same inode) and puts its
/// modification time back, as `touch -r` after an edit would: only ctime tells.
fn edit_in_place_keeping_mtime(path: &Path, new: &[u8]) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(before.len(), new.len() as u64, "same size");
    let mtime = before.modified().unwrap();
    let atime = before.accessed().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(new).unwrap();
    f.sync_all().unwrap();
    f.set_times(
        std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(atime),
    )
    .unwrap();
    drop(f);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(after.modified().unwrap(), mtime, "mtime restored");
    assert_eq!(after.len(), before.len());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(after.ino(), before.ino(), "edited in place, not replaced");
}

#[test]
fn an_in_place_edit_that_keeps_mtime_is_served_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("edited.bin");
    let old = write_file(&file, 1024 * 1024 + 5, 91);
    let ports = free_ports(2);
    serve(&servers, &file, &ports, &[]);

    let first = tmp.path().join("out0");
    let result = fetch_wait(&client, &first, &ports);
    assert!(
        result.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&result)
    );
    assert_same(&first.join("edited.bin"), &old);

    let new = test_data(old.len(), 92);
    edit_in_place_keeping_mtime(&file, &new);

    // The group needs a moment to notice and re-hash; until then a fetch may fail (never
    // deliver), so poll with fresh downloads until one completes.
    let deadline = Instant::now() + DEADLINE;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = tmp.path().join(format!("out{attempt}"));
        let result = fetch_wait(&client, &out, &ports);
        if result.as_ref().is_some_and(|o| o.status.success()) {
            assert_same(&out.join("edited.bin"), &new);
            assert!(servers.log().contains("re-hashed"), "{}", servers.log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after an in-place edit that kept size and mtime, no fetch got the new content \
             ({attempt} attempts); last: {}\nserver log:\n{}",
            describe(&result),
            tail(&servers.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_restarted_daemon_does_not_reuse_digests_of_a_file_edited_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mut servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("cached.bin");
    let old = write_file(&file, 1024 * 1024 + 9, 93);
    let ports = free_ports(1);
    serve(&servers, &file, &ports, &[]);
    let first = tmp.path().join("out0");
    let result = fetch_wait(&client, &first, &ports);
    assert!(
        result.as_ref().is_some_and(|o| o.status.success()),
        "{}",
        describe(&result)
    );
    assert_same(&first.join("cached.bin"), &old);

    // Edited while the daemon is down: the restored group must hash the file again rather
    // than trust the digest cache written for the old content.
    servers.kill9();
    let new = test_data(old.len(), 94);
    edit_in_place_keeping_mtime(&file, &new);
    // The log is appended to across runs: what the restarted daemon says starts here.
    let logged_before = servers.log().len();
    servers.restart();

    let out = tmp.path().join("out1");
    let result = fetch_wait(&client, &out, &ports);
    assert!(
        result.as_ref().is_some_and(|o| o.status.success()),
        "fetch after restart: {}\nserver log:\n{}",
        describe(&result),
        tail(&servers.log(), 20)
    );
    assert_same(&out.join("cached.bin"), &new);
    let log = servers.log();
    let hashed = log[logged_before..].matches("hashed file").count();
    assert!(
        hashed >= 1,
        "the restarted daemon hashed the file again (not the cache's digests):\n{}",
        &log[logged_before..]
    );
}
