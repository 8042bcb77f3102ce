//! Talking to the daemon and printing its answers: one request and its response, and the
//! output conventions every command shares (`--json` prints one JSON value per line).

use std::path::{Path, PathBuf};

use arsnet_client::transport::BorrowedHandle;
use arsnet_client::Client;
use arsnet_proto::control::{Request, Response};

use crate::exit::{Exit, Failure};
use crate::out;

/// `path` made absolute for the daemon (which has another working directory). The control
/// protocol carries paths as UTF-8 text: a path that is not is a usage error here, before
/// anything is created or sent (it was refused by the daemon as a malformed frame, exit 3).
pub fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    if path.to_str().is_none() {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "{}: not valid UTF-8, which the control protocol needs of paths; rename it, or use a link with a UTF-8 name",
                path.display()
            ),
        ));
    }
    std::path::absolute(path)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", path.display())))
}

pub async fn call(socket: &Path, request: Request) -> Result<Response, Failure> {
    let mut client = Client::connect(socket).await?;
    Ok(client.call(request).await?)
}

/// [`call`], passing files this process opened (the daemon acts on what this process could
/// open).
pub async fn call_with_handles(
    socket: &Path,
    request: Request,
    handles: &[BorrowedHandle<'_>],
) -> Result<Response, Failure> {
    let mut client = Client::connect(socket).await?;
    client.send_with_handles(request.clone(), handles).await?;
    Ok(client.answer_to(&request).await?)
}

/// Prints a command's answer: the JSON document `json_value` with `--json` (see
/// `crate::json`), else `text`.
pub fn print_value(json: bool, json_value: serde_json::Value, text: &str) -> Result<Exit, Failure> {
    if json {
        crate::json::print(json_value);
    } else {
        out::line(text);
    }
    Ok(Exit::Ok)
}

/// The answer to a request that just has to succeed.
pub fn done(json: bool, response: Response) -> Result<Exit, Failure> {
    match response {
        Response::Done => print_value(json, serde_json::json!({ "ok": true }), "ok"),
        other => unexpected(other),
    }
}

pub fn unexpected<T>(response: Response) -> Result<T, Failure> {
    Err(Failure::new(
        Exit::Refused,
        format!("unexpected answer from arsnetd: {response:?}"),
    ))
}
