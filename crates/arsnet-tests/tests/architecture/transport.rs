//! Rule: the control channel's transport is named only by its backend
//! (`arsnet-client/src/transport/`). Everything else speaks to `transport::Stream`,
//! `Listener` and `Peer`, so that a second backend (a Windows named pipe) is one file
//! beside the Unix one, not an edit across the daemon and the client. Test code may use the
//! socket types directly (to plant a stranger's socket, say); the end-to-end test crate is
//! not product code and is left out.

use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;

use crate::modules;

/// What only a transport backend may name: the socket types, the peer's credentials and
/// descriptor passing.
pub const TRANSPORT_WORDS: &[&str] = &[
    "UnixStream",
    "UnixListener",
    "UnixDatagram",
    "peer_cred",
    "SO_PEERCRED",
    "SCM_RIGHTS",
    "sendmsg",
    "recvmsg",
];

/// The backend's directory, relative to the workspace root.
pub const BACKEND_DIR: &str = "crates/arsnet-client/src/transport";

#[test]
fn only_the_transport_backend_names_sockets() {
    let violations = transport_outside_backend(&crate::workspace_root());
    crate::assert_none("transport named outside its backend", &violations);
}

/// Every non-test use of a [`TRANSPORT_WORDS`] word outside [`BACKEND_DIR`] in the crates
/// under `root` (but `arsnet-tests`), as `file:line: word`; also parse errors.
pub fn transport_outside_backend(root: &Path) -> Vec<String> {
    let crates = match modules::member_crates(root) {
        Ok(crates) => crates,
        Err(e) => return vec![e],
    };
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for krate in crates.iter().filter(|k| k.name != "arsnet-tests") {
        for target in modules::targets(root, krate, &mut errors) {
            for module in &target.modules {
                if module.file.starts_with(root.join(BACKEND_DIR)) {
                    continue;
                }
                let file = modules::display(root, &module.file);
                for item in &module.items {
                    if modules::is_test_only(modules::item_attrs(item)) {
                        continue;
                    }
                    let mut words = Vec::new();
                    words_in(item.to_token_stream(), &mut words);
                    found.extend(words.into_iter().map(|(l, w)| format!("{file}:{l}: {w}")));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found.extend(errors.into_iter().map(|e| format!("cannot read: {e}")));
    found
}

fn words_in(tokens: TokenStream, out: &mut Vec<(usize, String)>) {
    for token in tokens {
        match token {
            TokenTree::Group(g) => words_in(g.stream(), out),
            TokenTree::Ident(ident) => {
                let word = ident.to_string();
                if TRANSPORT_WORDS.contains(&word.as_str()) {
                    out.push((modules::line(ident.span()), word));
                }
            }
            _ => {}
        }
    }
}
