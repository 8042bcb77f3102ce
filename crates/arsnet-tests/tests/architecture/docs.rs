//! Rules that keep the docs in step with the code: PROTOCOL.md lists every limit in
//! `arsnet-proto/src/limits.rs` by name, and ARCHITECTURE.md states an "Architecture
//! Invariant:" for every crate in the workspace.

use std::fs;
use std::path::Path;

#[test]
fn protocol_md_lists_every_limit() {
    let violations = unlisted_limits(&crate::workspace_root());
    crate::assert_none("limits missing from PROTOCOL.md", &violations);
}

#[test]
fn architecture_md_states_an_invariant_per_crate() {
    let violations = crates_without_invariant(&crate::workspace_root());
    crate::assert_none(
        "crates without an Architecture Invariant in ARCHITECTURE.md",
        &violations,
    );
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Names of the `pub const` items in limits.rs that PROTOCOL.md does not mention.
pub fn unlisted_limits(root: &Path) -> Vec<String> {
    let limits = read(&root.join("crates/arsnet-proto/src/limits.rs"));
    let protocol = read(&root.join("PROTOCOL.md"));
    limits
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("pub const "))
        .filter_map(|rest| rest.split(':').next())
        .map(str::trim)
        .filter(|name| !protocol.contains(&format!("`{name}`")))
        .map(|name| format!("{name} (limits.rs) is not named as `{name}` in PROTOCOL.md"))
        .collect()
}

/// Crates under `crates/` whose section of ARCHITECTURE.md (the text from the line naming
/// the crate as a heading `### name` to the next heading) has no "Architecture Invariant:".
pub fn crates_without_invariant(root: &Path) -> Vec<String> {
    let doc = read(&root.join("ARCHITECTURE.md"));
    let mut names: Vec<String> = fs::read_dir(root.join("crates"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|name| !section_has_invariant(&doc, name))
        .map(|name| {
            format!("{name}: no \"### `{name}`\" section with an \"Architecture Invariant:\" line")
        })
        .collect()
}

fn section_has_invariant(doc: &str, name: &str) -> bool {
    let heading = format!("### `{name}`");
    let Some(start) = doc.lines().position(|l| l.trim_end() == heading) else {
        return false;
    };
    doc.lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with('#'))
        .any(|l| l.contains("Architecture Invariant:"))
}

#[test]
fn the_doc_checks_catch_what_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("crates/arsnet-proto/src")).unwrap();
    fs::create_dir_all(root.join("crates/a")).unwrap();
    fs::create_dir_all(root.join("crates/b")).unwrap();
    fs::write(root.join("crates/a/Cargo.toml"), "").unwrap();
    fs::write(root.join("crates/b/Cargo.toml"), "").unwrap();
    fs::write(
        root.join("crates/arsnet-proto/src/limits.rs"),
        "/// doc\npub const LISTED: u32 = 1;\npub const HIDDEN: usize = 2;\nconst PRIVATE: u8 = 3;\n",
    )
    .unwrap();
    fs::write(
        root.join("PROTOCOL.md"),
        "`LISTED` is 1; HIDDEN only in prose\n",
    )
    .unwrap();
    assert_eq!(unlisted_limits(root).len(), 1);
    assert!(unlisted_limits(root)[0].starts_with("HIDDEN"));
    fs::write(
        root.join("ARCHITECTURE.md"),
        "### `a`\ntext\nArchitecture Invariant: x\n### `b`\ntext\n## Next\nArchitecture Invariant: y\n",
    )
    .unwrap();
    let missing = crates_without_invariant(root);
    // `b`'s invariant is past the next heading, so it is not b's; `arsnet-proto` has no
    // Cargo.toml in this fixture, so it is not a crate.
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(missing[0].starts_with("b:"), "{missing:?}");
}
