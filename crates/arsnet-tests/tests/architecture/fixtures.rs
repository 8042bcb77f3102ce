//! The checkers against small workspaces written to a temp dir: they catch what they should,
//! and leave alone what is allowed (a parent's `mod child;`, `#[cfg(test)]` code).

use std::fs;
use std::path::Path;

use crate::{cycles, deps, functions, transport};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn manifest(name: &str, deps: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{deps}")
}

/// A crate whose modules have three cycles (a<->b, e<->f via an alias, root<->g via
/// `pub use` and a glob) and, around `parent`, only things that must not count as edges.
fn cycle_fixture(root: &Path) {
    write(root, "crates/fx/Cargo.toml", &manifest("fx", ""));
    let lib = "mod a;\nmod b;\nmod e;\nmod f;\nmod g;\nmod parent;\n\
               #[cfg(test)]\nmod testonly;\npub use g::G;\n";
    write(root, "crates/fx/src/lib.rs", lib);
    write(
        root,
        "crates/fx/src/a.rs",
        "use crate::b::B;\npub struct A(B);\n",
    );
    let b = "pub struct B;\npub fn f() -> Option<crate::a::A> {\n    None\n}\n";
    write(root, "crates/fx/src/b.rs", b);
    let e = "use super::f as ff;\npub fn x() {\n    ff::g();\n}\n";
    write(root, "crates/fx/src/e.rs", e);
    write(
        root,
        "crates/fx/src/f.rs",
        "pub fn g() {}\npub fn y() {\n    super::e::x();\n}\n",
    );
    write(root, "crates/fx/src/g.rs", "use super::*;\npub struct G;\n");
    // `parent` declares `mod child;` and uses it only from test code; `child` uses `parent`.
    let parent = "mod child;\npub struct P;\n\
                  #[cfg(test)]\nfn helper() {\n    child::c();\n}\n\
                  #[cfg(test)]\nmod tests {\n    use super::*;\n    use super::child::c;\n}\n";
    write(root, "crates/fx/src/parent.rs", parent);
    let child = "use super::P;\npub fn c() -> Option<P> {\n    None\n}\n\
                 #[cfg(test)]\nmod tests {\n    use super::*;\n}\n";
    write(root, "crates/fx/src/parent/child.rs", child);
    // Reached only through `#[cfg(test)] mod testonly;`: not a module of the graph.
    write(
        root,
        "crates/fx/src/testonly.rs",
        "pub fn t() {\n    crate::a::A;\n}\n",
    );
}

#[test]
fn cycles_caught_and_allowed_edges_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    cycle_fixture(dir.path());
    let found = cycles::find_cycles(dir.path());
    let heads: Vec<&str> = found.iter().map(|c| c.lines().next().unwrap()).collect();
    assert_eq!(
        heads,
        [
            "fx (lib): cycle among crate, crate::g",
            "fx (lib): cycle among crate::a, crate::b",
            "fx (lib): cycle among crate::e, crate::f",
        ],
        "{found:#?}"
    );
    let all = found.join("\n");
    assert!(
        all.contains("crate::a -> crate::b: crates/fx/src/a.rs:1 `crate::b::B`"),
        "{all}"
    );
    assert!(
        all.contains("crate::b -> crate::a: crates/fx/src/b.rs:2 `crate::a::A`"),
        "{all}"
    );
    assert!(
        all.contains("crate::e -> crate::f: crates/fx/src/e.rs:1 `super::f`"),
        "{all}"
    );
    assert!(
        all.contains("crate -> crate::g: crates/fx/src/lib.rs:9 `g::G`"),
        "{all}"
    );
    assert!(
        all.contains("crate::g -> crate: crates/fx/src/g.rs:1 `super::*`"),
        "{all}"
    );
    assert!(
        !all.contains("parent") && !all.contains("testonly"),
        "{all}"
    );
}

#[test]
fn cycle_checker_reports_unreadable_modules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "crates/fx/Cargo.toml", &manifest("fx", ""));
    write(
        dir.path(),
        "crates/fx/src/lib.rs",
        "mod missing;\nmod broken;\n",
    );
    write(dir.path(), "crates/fx/src/broken.rs", "fn f( {\n");
    let found = cycles::find_cycles(dir.path());
    assert_eq!(found.len(), 2, "{found:#?}");
    let missing = "cannot read: crates/fx/src/lib.rs:1: no file for `mod missing;`";
    assert_eq!(found[0], missing, "{found:#?}");
    assert!(
        found[1].starts_with("cannot read: crates/fx/src/broken.rs:"),
        "{found:#?}"
    );
}

/// A function of exactly `lines` lines (signature to closing brace).
fn function(signature: &str, lines: usize) -> String {
    let mut text = format!("{signature} {{\n");
    for _ in 0..lines - 2 {
        text.push_str("    let _ = 0;\n");
    }
    text.push_str("}\n");
    text
}

#[test]
fn long_functions_of_every_kind_caught_test_code_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "crates/fx/Cargo.toml", &manifest("fx", ""));
    let mut lib = String::from("mod m;\n#[cfg(test)]\nmod testonly;\n");
    lib += &function("pub fn exactly_max()", 80); // line 4
    lib += &function("pub fn one_over()", 81); // line 84
    lib += &format!("#[test]\n{}", function("fn a_test()", 200)); // line 165
    lib += &format!(
        "#[cfg(test)]\nmod tests {{\n{}}}\n",
        function("fn in_tests()", 200)
    );
    write(root, "crates/fx/src/lib.rs", &lib);
    let mut m = String::from("pub struct S;\nimpl S {\n");
    m += &function("    pub async fn method(&self)", 90); // line 3
    m += "}\npub trait T {\n";
    m += &function("    fn provided(&self)", 85); // line 95
    m += "}\npub fn outer() {\n";
    m += &function("    fn nested()", 82); // line 182
    m += "}\n";
    write(root, "crates/fx/src/m.rs", &m);
    write(
        root,
        "crates/fx/src/testonly.rs",
        &function("pub fn helper()", 300),
    );
    let found = functions::long_functions(root, 80);
    let expected = [
        "crates/fx/src/lib.rs:84: fn one_over is 81 lines (max 80)",
        "crates/fx/src/m.rs:3: fn S::method is 90 lines (max 80)",
        "crates/fx/src/m.rs:95: fn T::provided is 85 lines (max 80)",
        "crates/fx/src/m.rs:181: fn outer is 84 lines (max 80)",
        "crates/fx/src/m.rs:182: fn outer::nested is 82 lines (max 80)",
    ];
    assert_eq!(found, expected);
}

#[test]
fn unused_dependencies_caught() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let deps = "[dependencies]\nused-one = \"1\"\ncomment-only = \"1\"\nnot-a-start = \"1\"\n\
                alias = { package = \"real-name\", version = \"1\" }\nreal-name = \"1\"\n\
                via-use = \"1\"\nold-style = \"1\"\nin-macro = \"1\"\n\n\
                [dev-dependencies]\nfx = { path = \".\", features = [\"x\"] }\n\
                test-only = \"1\"\ndev-unused = \"1\"\n";
    write(root, "crates/fx/Cargo.toml", &manifest("fx", deps));
    let lib = "//! Uses comment_only::x() in a comment only.\n\
               extern crate old_style;\nuse via_use;\n/* real_name::y() */\n\
               pub fn f() -> u32 {\n    let _ = \"comment_only::z\";\n\
                   crate::not_a_start::g();\n    alias::h();\n\
                   format!(\"{}\", in_macro::k());\n    used_one::f()\n}\n";
    write(root, "crates/fx/src/lib.rs", lib);
    write(
        root,
        "crates/fx/tests/t.rs",
        "#[test]\nfn t() {\n    test_only::f();\n}\n",
    );
    let found = deps::unused_deps(root);
    let expected = [
        "fx: comment-only (dependencies)",
        "fx: dev-unused (dev-dependencies)",
        "fx: not-a-start (dependencies)",
        "fx: real-name (dependencies)",
    ];
    assert_eq!(found, expected);
}

#[test]
fn cargo_tree_finds_forbidden_normal_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "Cargo.toml",
        "[workspace]\nresolver = \"2\"\nmembers = [\"crates/*\"]\n",
    );
    for name in ["mid", "bottom", "devonly"] {
        write(
            root,
            &format!("crates/{name}/Cargo.toml"),
            &manifest(name, ""),
        );
        write(root, &format!("crates/{name}/src/lib.rs"), "");
    }
    let mid = "[dependencies]\nbottom = { path = \"../bottom\" }\n";
    write(root, "crates/mid/Cargo.toml", &manifest("mid", mid));
    let top = "[dependencies]\nmid = { path = \"../mid\" }\n\
               [dev-dependencies]\ndevonly = { path = \"../devonly\" }\n";
    write(root, "crates/top/Cargo.toml", &manifest("top", top));
    write(root, "crates/top/src/lib.rs", "");
    let found = deps::forbidden_in_tree(root, "top", &["bottom", "devonly"]).unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("top depends on `bottom v0.1.0 ("),
        "{found:#?}"
    );
    let error = deps::forbidden_in_tree(root, "no-such-package", &["bottom"]).unwrap_err();
    assert!(error.contains("no-such-package"), "{error}");
}

#[test]
fn architecture_checkers_follow_the_function_length_rule() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "crates/arch/Cargo.toml", &manifest("arch", ""));
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/architecture");
    for entry in fs::read_dir(&here).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace("main.rs", "lib.rs");
        let text = fs::read_to_string(&path).unwrap();
        write(root, &format!("crates/arch/src/{name}"), &text);
    }
    let found = functions::long_functions(root, functions::MAX_FN_LINES);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn sockets_named_outside_the_transport_backend_caught() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "crates/arsnet-client/Cargo.toml",
        &manifest("arsnet-client", ""),
    );
    write(
        root,
        "crates/arsnet-client/src/lib.rs",
        "pub mod transport;\nmod client;\n",
    );
    // The backend may name anything.
    write(
        root,
        "crates/arsnet-client/src/transport/mod.rs",
        "pub struct Stream(tokio::net::UnixStream);\n",
    );
    let client = "use tokio::net::UnixStream;\n\
                  pub fn peer(s: &crate::transport::Stream) { let _ = s.0.peer_cred(); }\n\
                  #[cfg(test)]\nmod tests { fn t() { let _ = std::os::unix::net::UnixListener::bind(\"x\"); } }\n";
    write(root, "crates/arsnet-client/src/client.rs", client);
    write(
        root,
        "crates/arsnet-tests/Cargo.toml",
        &manifest("arsnet-tests", ""),
    );
    write(
        root,
        "crates/arsnet-tests/src/lib.rs",
        "pub fn e2e() { let _ = std::os::unix::net::UnixStream::pair(); }\n",
    );
    let found = transport::transport_outside_backend(root);
    assert_eq!(
        found,
        [
            "crates/arsnet-client/src/client.rs:1: UnixStream",
            "crates/arsnet-client/src/client.rs:2: peer_cred",
        ],
        "the backend, test code and the e2e crate are left alone"
    );
}
