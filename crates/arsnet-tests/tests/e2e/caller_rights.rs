//! No request runs with more rights than its caller: a `control_group` member talking to a
//! root daemon can neither serve a file it cannot read nor download into a directory it
//! cannot write, whether through `arsnetctl` or a hand-made client that skips its checks;
//! and what it downloads belongs to it.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use arsnet_proto::control::{encode_frame, ClientMessage, FetchSpec, Request, ServeSpec};
use arsnet_proto::limits::CONTROL_VERSION;

use crate::util::*;

const NOBODY: u32 = 65534;
const SOCKET_ENV: &str = "ARSNET_TEST_RAW_SOCKET";
const REQUEST_ENV: &str = "ARSNET_TEST_RAW_REQUEST";
const FD_ENV: &str = "ARSNET_TEST_RAW_FD_PATH";
const REPORT_ENV: &str = "ARSNET_TEST_RAW_REPORT";

/// Not a test: a hand-made client run as another uid (this binary re-executed through
/// setpriv). Sends one raw request frame, with the descriptor of `FD_ENV`'s file when set,
/// and writes the daemon's raw answer to the report file. Does nothing in a normal run.
#[test]
fn raw_client_child_process() {
    let (Some(socket), Some(request), Some(report)) = (
        std::env::var_os(SOCKET_ENV),
        std::env::var(REQUEST_ENV).ok(),
        std::env::var_os(REPORT_ENV),
    ) else {
        return;
    };
    let frame: Vec<u8> = (0..request.len() / 2)
        .map(|i| u8::from_str_radix(&request[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    match std::env::var_os(FD_ENV) {
        Some(path) => {
            let file = std::fs::File::open(path).unwrap();
            send_with_fd(&stream, &frame, file.as_raw_fd());
        }
        None => stream.write_all(&frame).unwrap(),
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // One response frame is all we wait for: read until its length is in.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() >= 4 {
            let len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
            if answer.len() >= 4 + len {
                break;
            }
        }
    }
    std::fs::write(report, String::from_utf8_lossy(&answer).as_bytes()).unwrap();
}

fn send_with_fd(stream: &std::os::unix::net::UnixStream, bytes: &[u8], fd: i32) {
    #[repr(C, align(8))]
    struct Buf([u8; 64]);
    let mut control = Buf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a test-only sendmsg of one descriptor; every pointer outlives the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        let n = libc::sendmsg(stream.as_raw_fd(), &msg, 0);
        assert_eq!(n as usize, bytes.len(), "sendmsg");
    }
}

/// Sends `request` to `d` as nobody with a hand-made client; returns the daemon's answer as
/// text (bincode strings are readable inside it).
fn raw_request_as_nobody(d: &Daemon, request: Request, fd_of: Option<&Path>) -> String {
    let frame = encode_frame(&ClientMessage {
        version: CONTROL_VERSION,
        request,
    })
    .unwrap();
    let reports = d.root.join("raw-reports");
    std::fs::create_dir_all(&reports).unwrap();
    std::os::unix::fs::chown(&reports, Some(NOBODY), Some(NOBODY)).unwrap();
    let report = reports.join("answer.txt");
    let _ = std::fs::remove_file(&report);
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = command_as(Some(NOBODY), std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "caller_rights::raw_client_child_process",
        "--test-threads=1",
    ])
    .env(SOCKET_ENV, &d.socket)
    .env(REQUEST_ENV, hex)
    .env(REPORT_ENV, &report)
    .stdin(Stdio::null());
    if let Some(path) = fd_of {
        cmd.env(FD_ENV, path);
    }
    let out = cmd.output().expect("setpriv (util-linux) is installed");
    assert!(out.status.success(), "raw client failed: {out:?}");
    std::fs::read_to_string(&report).unwrap_or_default()
}

/// Runs `arsnetctl` against `d` as nobody (a member of `nogroup`, the control group).
fn ctl_as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    command_as(Some(NOBODY), bin("arsnetctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A root daemon whose control group is `nogroup` (nobody's primary group), in a tree that
/// nobody may traverse.
fn daemon_with_members(tmp: &Path) -> Daemon {
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!("control_group = \"nogroup\"\n{TEST_CONFIG}");
    Daemon::start_with_config(&tmp.join("d"), &config)
}

fn root_only_file(dir: &Path) -> PathBuf {
    let secret = dir.join("secret.bin");
    std::fs::write(&secret, b"root's eyes only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

#[test]
fn a_member_cannot_serve_a_file_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon_with_members(tmp.path());
    let secret = root_only_file(tmp.path());
    let port = free_ports(1)[0].to_string();
    let file = secret.to_str().unwrap();

    // Through arsnetctl: it cannot open the file, so nothing is even asked.
    let out = ctl_as_nobody(
        &d,
        &["serve", "-i", "1", "-n", "1", "-f", file, "-p", &port],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read"),
        "{out:?}"
    );

    // A hand-made client that skips the check: refused by the daemon.
    let spec = ServeSpec {
        file: secret.clone(),
        count: 1,
        ports: vec![port.parse().unwrap()],
        bind: "127.0.0.1".into(),
        rate: None,
        status_interval_secs: 1,
        http: false,
    };
    let answer = raw_request_as_nobody(&d, Request::Serve(spec.clone()), None);
    assert!(answer.contains("must open the file"), "{answer:?}");
    // ...also when it passes a file it can read, but names the secret one.
    let public = tmp.path().join("public.bin");
    std::fs::write(&public, b"anyone").unwrap();
    let answer = raw_request_as_nobody(&d, Request::Serve(spec), Some(&public));
    assert!(answer.contains("is not the one at"), "{answer:?}");
    d.assert_no_groups("nothing may be served for the member");
    assert!(!is_listening(port.parse().unwrap()));
}

#[test]
fn a_member_cannot_download_into_a_directory_it_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon_with_members(tmp.path());
    let servers = Daemon::start(&tmp.path().join("srv"));
    let data = write_file(&tmp.path().join("payload.bin"), 200_000, 4);
    let ports = free_ports(1);
    serve(&servers, &tmp.path().join("payload.bin"), &ports, &[]);
    let port = ports[0].to_string();

    // A directory only root may enter: arsnetctl cannot even create its output dir there.
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let inside = private.join("in");
    let out = ctl_as_nobody(
        &d,
        &[
            "fetch",
            "-o",
            inside.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(!inside.exists());

    // A directory it may enter but not write: the daemon refuses, whatever the client.
    let readonly = tmp.path().join("readonly");
    std::fs::create_dir(&readonly).unwrap();
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ctl_as_nobody(
        &d,
        &[
            "fetch",
            "-o",
            readonly.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not write"),
        "{out:?}"
    );
    let spec = FetchSpec {
        dir: private.clone(),
        sources: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        resume: false,
        overwrite: false,
        metric_interval_secs: 1,
        pin: None,
        ca_certs: Vec::new(),
        connections_per_source: None,
        no_verify: false,
        checksum_url: None,
    };
    let answer = raw_request_as_nobody(&d, Request::Fetch(spec), None);
    assert!(answer.contains("must open the directory"), "{answer:?}");
    assert_eq!(std::fs::read_dir(&readonly).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);

    // Mode bits that let everyone write, and an ACL that shuts the member out: the kernel,
    // asked as the member, says no, and so does the daemon.
    let denied = tmp.path().join("denied");
    std::fs::create_dir(&denied).unwrap();
    std::fs::set_permissions(&denied, std::fs::Permissions::from_mode(0o777)).unwrap();
    let acl = Command::new("setfacl")
        .args(["-m", &format!("u:{NOBODY}:r-x")])
        .arg(&denied)
        .status()
        .expect("setfacl (package acl) is installed");
    assert!(acl.success());
    let out = ctl_as_nobody(
        &d,
        &[
            "fetch",
            "-o",
            denied.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_dir(&denied).unwrap().count(), 0);

    // Its own directory: the download works, and the file is the member's.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = ctl_as_nobody(
        &d,
        &[
            "fetch",
            "--wait",
            "-o",
            mine.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", tail(&d.log(), 30));
    let file = mine.join("payload.bin");
    assert_same(&file, &data);
    assert_eq!(
        std::fs::metadata(&file).unwrap().uid(),
        NOBODY,
        "the member owns it"
    );
}

#[test]
fn a_served_file_swapped_for_a_symlink_to_a_secret_is_never_served() {
    // A member serves its own file, edits it (so the group re-hashes), then replaces it with
    // a symlink to a file only root may read. The group must go on serving the member's own
    // file (the descriptor it holds), never what the path points to now.
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon_with_members(tmp.path());
    let client = Daemon::start(&tmp.path().join("cli"));
    let secret = root_only_file(tmp.path());
    let public = tmp.path().join("pub");
    std::fs::create_dir(&public).unwrap();
    std::os::unix::fs::chown(&public, Some(NOBODY), Some(NOBODY)).unwrap();
    let file = public.join("data.txt");
    let original = test_data(100_000, 31);
    std::fs::write(&file, &original).unwrap();
    std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = free_ports(1)[0];
    let out = ctl_as_nobody(
        &d,
        &[
            "serve",
            "-i",
            "1",
            "-n",
            "1",
            "-f",
            file.to_str().unwrap(),
            "-p",
            &port.to_string(),
        ],
    );
    assert!(out.status.success(), "{out:?}");

    let mut edited = original.clone();
    edited.extend_from_slice(b"appended by the member");
    std::fs::write(&file, &edited).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();

    let secret_bytes = std::fs::read(&secret).unwrap();
    let mut got_edited = false;
    for attempt in 0..12 {
        let dir = tmp.path().join(format!("got-{attempt}"));
        let args = fetch_args(&dir, &[port], &["--wait"]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Bounded: a download the group can no longer serve waits for it forever.
        let _ = ctl_within(&client, &refs, Duration::from_secs(30));
        if let Ok(bytes) = std::fs::read(dir.join("data.txt")) {
            assert_ne!(bytes, secret_bytes, "the root-only file was served");
            assert!(
                bytes == original || bytes == edited,
                "served something else"
            );
            if bytes == edited {
                got_edited = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        got_edited,
        "the group never served the re-hashed file\n{}",
        tail(&d.log(), 20)
    );
}

#[test]
fn a_members_group_whose_file_was_replaced_is_not_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = daemon_with_members(tmp.path());
    let public = tmp.path().join("pub");
    std::fs::create_dir(&public).unwrap();
    std::os::unix::fs::chown(&public, Some(NOBODY), Some(NOBODY)).unwrap();
    let file = public.join("mine.bin");
    std::fs::write(&file, test_data(50_000, 41)).unwrap();
    std::os::unix::fs::chown(&file, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = free_ports(1)[0];
    let out = ctl_as_nobody(
        &d,
        &[
            "serve",
            "-i",
            "1",
            "-n",
            "1",
            "-f",
            file.to_str().unwrap(),
            "-p",
            &port.to_string(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    d.kill9();
    // While the daemon is down the path is made to name another file (here a link to one
    // only root may read): the group that comes back must not serve it.
    let secret = root_only_file(tmp.path());
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    d.restart();
    d.assert_no_groups("the replaced file is not served");
    assert!(!is_listening(port));
    let notes = d.json(&["list"])["notes"].to_string();
    assert!(
        notes.contains("could not be restored") && notes.contains("replaced"),
        "{notes}"
    );
}
