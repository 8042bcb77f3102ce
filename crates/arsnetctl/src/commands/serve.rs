//! `arsnetctl serve`: the file is opened here, with the caller's rights, and passed to the
//! daemon, which serves what this user could read.

use std::os::fd::AsFd;
use std::path::Path;

use arsnet_proto::control::{Request, Response, ServeSpec};

use super::call::{absolute, call, call_with_handles, print_value, unexpected};
use crate::cli::ServeArgs;
use crate::exit::{Exit, Failure};

pub async fn serve(socket: &Path, json: bool, args: ServeArgs) -> Result<Exit, Failure> {
    let spec = ServeSpec {
        file: absolute(&args.file)?,
        count: args.count,
        ports: args.ports,
        bind: args.bind,
        rate: args.rate,
        status_interval_secs: args.interval,
        http: args.http,
    };
    // The same check the daemon makes, so that a request that cannot be right is a usage
    // error here (exit 2) and never reaches the daemon.
    spec.validate()
        .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
    let opened = std::fs::File::open(&spec.file).map_err(|e| {
        Failure::new(
            Exit::Refused,
            format!("cannot read {}: {e}", spec.file.display()),
        )
    })?;
    let request = Request::Serve(spec);
    let id = match call_with_handles(socket, request, &[opened.as_fd()]).await? {
        Response::GroupStarted { id } => id,
        other => return unexpected(other),
    };
    // The content's BLAKE3, which clients can pin with `fetch --blake3`: on stderr, so that
    // stdout stays the bare group id scripts read.
    let blake3 = match call(socket, Request::Servers).await? {
        Response::Servers(groups) => groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| arsnet_proto::manifest::to_hex(&g.blake3)),
        _ => None,
    };
    if let (Some(hex), false) = (&blake3, json) {
        crate::out::err_line(&format!("group {id} serves content BLAKE3 {hex}"));
    }
    print_value(
        json,
        serde_json::json!({ "group_id": id, "blake3": blake3 }),
        &id.to_string(),
    )
}
