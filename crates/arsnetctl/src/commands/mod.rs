//! One function per `arsnetctl` command: build the request, call the daemon, print the
//! answer (human text, or JSON with `--json`: see `crate::json`). [`run`] only dispatches.

pub mod call;
pub mod fetch;
pub mod follow;
pub mod jobs;
pub mod serve;

use std::path::Path;

use arsnet_proto::control::{Request, Response};

use crate::cli::{Cli, Command};
use crate::exit::{Exit, Failure};
use crate::{json, out, render};
use call::{call, done, print_value, unexpected};

pub async fn run(cli: Cli) -> Result<Exit, Failure> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(arsnet_client::paths::default_socket);
    crate::again::remember(&socket);
    let (socket, json) = (socket.as_path(), cli.json);
    let simple = |request| async move { done(json, call(socket, request).await?) };
    match cli.command {
        Command::Serve(args) => serve::serve(socket, json, args).await,
        Command::Servers => servers(socket, json).await,
        Command::StopServer { ports } => simple(Request::StopServer { ports }).await,
        Command::StartServer { ports } => simple(Request::StartServer { ports }).await,
        Command::Unserve { id } => simple(Request::RemoveGroup { id }).await,
        Command::Fetch(args) => fetch::fetch(socket, json, args).await,
        Command::List => list(socket, json).await,
        Command::Status { id } => jobs::status(socket, json, id).await,
        Command::Watch(args) => jobs::watch(socket, json, args).await,
        Command::Pause { id } => jobs::change(socket, json, Request::Pause { id }, id).await,
        Command::Resume { id } => jobs::change(socket, json, Request::Resume { id }, id).await,
        Command::Cancel { id, keep } => {
            jobs::change(socket, json, Request::Cancel { id, keep }, id).await
        }
        Command::Metrics => metrics(socket, json).await,
        Command::Shutdown => simple(Request::Shutdown).await,
        // Their output is a roff page or a shell script: no JSON of it could be of use.
        Command::Man { .. } | Command::Completions { .. } if json => Err(Failure::new(
            Exit::Usage,
            "`man` and `completions` print a manual page or a script, never JSON: run them without --json",
        )),
        Command::Man { dir } => man(dir.as_deref()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "arsnetctl", &mut script);
            out::bytes(&script);
            Ok(Exit::Ok)
        }
    }
}

/// `man`: the top page on stdout, or with `dir` every command's page written there.
fn man(dir: Option<&Path>) -> Result<Exit, Failure> {
    use clap::CommandFactory;
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut page)
            .map_err(|e| Failure::new(Exit::Refused, format!("cannot render the manual: {e}")))?;
        out::bytes(&page);
        return Ok(Exit::Ok);
    };
    let fail = |e: std::io::Error| {
        Failure::new(
            Exit::Refused,
            format!("cannot write the manual pages into {}: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(fail)?;
    // The pages clap_mangen names so (the commands have no subcommands of their own).
    let command = Cli::command();
    let mut names = vec!["arsnetctl.1".to_string()];
    names.extend(
        command
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| format!("arsnetctl-{}.1", c.get_name())),
    );
    for name in names {
        out::line(&dir.join(name).display().to_string());
    }
    Ok(Exit::Ok)
}

async fn servers(socket: &Path, json: bool) -> Result<Exit, Failure> {
    match call(socket, Request::Servers).await? {
        Response::Servers(groups) => print_value(
            json,
            serde_json::json!({ "groups": json::groups(&groups) }),
            render::groups_table(&groups).trim_end(),
        ),
        other => unexpected(other),
    }
}

/// The daemon renders the exposition; printed exactly as it came (it ends with a newline).
async fn metrics(socket: &Path, json: bool) -> Result<Exit, Failure> {
    match call(socket, Request::Metrics).await? {
        Response::Metrics(text) => {
            if json {
                json::print(serde_json::json!({ "metrics": text }));
            } else {
                out::text(&text);
            }
            Ok(Exit::Ok)
        }
        other => unexpected(other),
    }
}

async fn list(socket: &Path, json: bool) -> Result<Exit, Failure> {
    let (jobs, groups, notes) = match call(socket, Request::List).await? {
        Response::List {
            jobs,
            groups,
            notes,
        } => (jobs, groups, notes),
        other => return unexpected(other),
    };
    let mut text = format!(
        "{}\n{}",
        render::jobs_table(&jobs),
        render::groups_table(&groups)
    );
    for note in &notes {
        text.push_str(&format!("\nWARNING: {note}"));
    }
    let value = serde_json::json!({
        "jobs": json::jobs(&jobs),
        "groups": json::groups(&groups),
        "notes": notes,
    });
    print_value(json, value, text.trim_end())
}
