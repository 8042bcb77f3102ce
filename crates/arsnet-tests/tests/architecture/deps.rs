//! Rules on dependencies: every declared dependency is used (as `cargo machete` checks),
//! and `arsnetctl` links neither `arsnet-engine` nor `arsnetd`.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use proc_macro2::{TokenStream, TokenTree};

use crate::cycles::is_path_sep;
use crate::modules::{self, Crate};

#[test]
fn no_unused_dependencies() {
    let violations = unused_deps(&crate::workspace_root());
    crate::assert_none("unused dependencies", &violations);
}

#[test]
fn ctl_links_neither_engine_nor_daemon() {
    let root = crate::workspace_root();
    let forbidden = ["arsnet-engine", "arsnetd"];
    match forbidden_in_tree(&root, "arsnetctl", &forbidden) {
        Ok(violations) => crate::assert_none("arsnetctl's normal dependency tree", &violations),
        Err(e) => panic!("cannot run cargo tree: {e}"),
    }
}

/// Lines of `cargo tree -p package -e normal --prefix none --offline`, run in `root`, that
/// name a `forbidden` package; `Err` when cargo cannot run or fails.
pub fn forbidden_in_tree(
    root: &Path,
    package: &str,
    forbidden: &[&str],
) -> Result<Vec<String>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let args = [
        "tree",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "none",
        "--offline",
    ];
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .output()
        .map_err(|e| format!("{cargo} {}: {e}", args.join(" ")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{cargo} {} exited with {}:\n{stderr}",
            args.join(" "),
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut hits: Vec<String> = stdout
        .lines()
        .filter(|l| forbidden.iter().any(|f| l.starts_with(&format!("{f} "))))
        .map(|l| format!("{package} depends on `{}`", l.trim_end_matches(" (*)")))
        .collect();
    hits.sort();
    hits.dedup();
    Ok(hits)
}

/// Every dependency of every member crate under `root` whose name never starts a path in
/// the sources that can use it, as `crate: dep (section)`; also unreadable files.
pub fn unused_deps(root: &Path) -> Vec<String> {
    let crates = match modules::member_crates(root) {
        Ok(crates) => crates,
        Err(e) => return vec![e],
    };
    let workspace_deps = workspace_dependencies(root);
    let mut out = Vec::new();
    for krate in &crates {
        let mut errors = Vec::new();
        let src = path_starts(root, &[krate.dir.join("src")], &mut errors);
        let dev_dirs = ["src", "tests", "benches", "examples"].map(|d| krate.dir.join(d));
        let dev = path_starts(root, &dev_dirs, &mut errors);
        let build = path_starts(root, &[krate.dir.join("build.rs")], &mut errors);
        for (section, deps) in dependency_tables(krate) {
            let used = match section.rsplit('.').next() {
                Some("dev-dependencies") => &dev,
                Some("build-dependencies") => &build,
                _ => &src,
            };
            for (key, spec) in deps {
                let package = package_name(&key, &spec, &workspace_deps);
                let ident = key.replace('-', "_");
                if package != krate.name && !used.contains(&ident) {
                    out.push(format!("{}: {key} ({section})", krate.name));
                }
            }
        }
        out.extend(errors.into_iter().map(|e| format!("cannot read: {e}")));
    }
    out.sort();
    out
}

/// `[workspace.dependencies]` of the root manifest (empty when there is none).
fn workspace_dependencies(root: &Path) -> toml::Table {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let manifest: toml::Table = text.parse().unwrap_or_default();
    let deps = manifest
        .get("workspace")
        .and_then(|w| w.get("dependencies"));
    deps.and_then(|d| d.as_table()).cloned().unwrap_or_default()
}

/// The dependency sections of a crate, also per target (`target.'cfg(..)'.dependencies`).
fn dependency_tables(krate: &Crate) -> Vec<(String, toml::Table)> {
    let sections = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables = Vec::new();
    for section in sections {
        if let Some(t) = krate.manifest.get(section).and_then(|t| t.as_table()) {
            tables.push((section.to_string(), t.clone()));
        }
    }
    let targets = krate.manifest.get("target").and_then(|t| t.as_table());
    for (cfg, target) in targets.into_iter().flatten() {
        for section in sections {
            if let Some(t) = target.get(section).and_then(|t| t.as_table()) {
                tables.push((format!("target.{cfg}.{section}"), t.clone()));
            }
        }
    }
    tables
}

/// The package a dependency names: `package = ` when renamed (here or in the workspace).
fn package_name(key: &str, spec: &toml::Value, workspace: &toml::Table) -> String {
    let from_workspace = spec.get("workspace").and_then(|w| w.as_bool()) == Some(true);
    let spec = match from_workspace {
        true => workspace.get(key).unwrap_or(spec),
        false => spec,
    };
    let package = spec.get("package").and_then(|p| p.as_str());
    package.unwrap_or(key).to_string()
}

/// Identifiers that start a path in the `.rs` files under `paths` (files or dirs): `x` in
/// `x::`, `use x`, `extern crate x`. Lexing drops comments, and strings are literals.
fn path_starts(root: &Path, paths: &[PathBuf], errors: &mut Vec<String>) -> HashSet<String> {
    let mut idents = HashSet::new();
    for path in paths {
        let files = match path.is_file() {
            true => vec![path.clone()],
            false => modules::rust_files(path),
        };
        for file in files {
            let text = fs::read_to_string(&file).unwrap_or_default();
            match TokenStream::from_str(&text) {
                Ok(tokens) => collect_path_starts(tokens, &mut idents),
                Err(e) => errors.push(format!("{}: {e}", modules::display(root, &file))),
            }
        }
    }
    idents
}

fn collect_path_starts(tokens: TokenStream, out: &mut HashSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let ident_at =
        |i: usize, word: &str| matches!(tokens.get(i), Some(TokenTree::Ident(x)) if x == word);
    for (i, token) in tokens.iter().enumerate() {
        let ident = match token {
            TokenTree::Group(g) => {
                collect_path_starts(g.stream(), out);
                continue;
            }
            TokenTree::Ident(ident) => ident,
            _ => continue,
        };
        // `a::x` and `T<U>::x` continue a path; `::x` (leading colon) and `use ::x` start one.
        let continues = |t: &TokenTree| match t {
            TokenTree::Ident(x) => x != "use",
            TokenTree::Group(_) => true,
            TokenTree::Punct(p) => p.as_char() == '>',
            TokenTree::Literal(_) => false,
        };
        let after_sep = i >= 3 && is_path_sep(&tokens, i - 2) && continues(&tokens[i - 3]);
        let starts_path = is_path_sep(&tokens, i + 1) && !after_sep;
        let used = i >= 1 && ident_at(i - 1, "use");
        let extern_crate = i >= 2 && ident_at(i - 1, "crate") && ident_at(i - 2, "extern");
        if starts_path || used || extern_crate {
            out.insert(ident.to_string());
        }
    }
}
