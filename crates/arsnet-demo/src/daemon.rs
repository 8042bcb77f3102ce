//! The demo's private daemon: the daemon library on a thread of this process, with a temp
//! socket and state dir, so that `cargo run -p arsnet-demo` needs nothing else built.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arsnet_proto::control::Request;
use arsnetctl::commands::call::call;
use arsnetctl::exit::{Exit, Failure};

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Refused, message)
}

/// Starts the daemon and waits until it answers; returns its socket.
pub async fn start(root: &Path) -> Result<PathBuf, Failure> {
    let socket = root.join("arsnetd.sock");
    let args = arsnetd::Args {
        socket: Some(socket.clone()),
        state_dir: Some(root.join("state")),
        // The demo prints what happens; the daemon's own log would interleave with it.
        log: Some("warn".into()),
        ..arsnetd::Args::default()
    };
    let origin = arsnetd::Origin::new(args);
    let config = origin
        .load()
        .map_err(|e| fail(format!("demo daemon configuration: {e}")))?;
    std::thread::Builder::new()
        .name("arsnetd".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(arsnetd::run(config, origin)) {
                        eprintln!("demo: arsnetd stopped: {e:#}");
                    }
                }
                Err(e) => {
                    eprintln!("demo: cannot start arsnetd's runtime: {e}")
                }
            }
        })
        .map_err(|e| fail(format!("cannot start arsnetd: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if call(&socket, Request::Ping).await.is_ok() {
            arsnetctl::out::line("demo: started a private arsnetd inside this process");
            return Ok(socket);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(fail("the private arsnetd did not start within 20 s"))
}
