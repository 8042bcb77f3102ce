//! The workspace as the checkers see it: member crates (`crates/*/Cargo.toml`), their
//! targets (lib, bins) and each target's tree of non-test modules, parsed with `syn`.

use std::fs;
use std::path::{Path, PathBuf};

use syn::{Attribute, ImplItem, Item, Meta, TraitItem};

/// One member crate: its package name, directory and parsed manifest.
pub struct Crate {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: toml::Table,
}

/// One module of a target: `path` is relative to the crate root (`[]` is the root).
pub struct Module {
    pub path: Vec<String>,
    pub file: PathBuf,
    pub items: Vec<Item>,
    /// Child modules declared here outside `#[cfg(test)]` (inline or `mod x;`).
    pub children: Vec<String>,
}

/// A compiled target (the lib or a bin) and all its non-test modules, root first.
pub struct Target {
    pub name: String,
    pub modules: Vec<Module>,
}

/// Every member crate under `root/crates/*/` that has a `[package]`, sorted by dir.
pub fn member_crates(root: &Path) -> Result<Vec<Crate>, String> {
    let crates_dir = root.join("crates");
    let entries =
        fs::read_dir(&crates_dir).map_err(|e| format!("{}: {e}", crates_dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    let mut crates = Vec::new();
    for dir in dirs {
        let manifest_path = dir.join("Cargo.toml");
        let text = fs::read_to_string(&manifest_path)
            .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let manifest: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str());
        if let Some(name) = name {
            let name = name.to_string();
            crates.push(Crate {
                name,
                dir,
                manifest,
            });
        }
    }
    Ok(crates)
}

/// `path` shown relative to `root` when it is under it.
pub fn display(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Line of a span's start (1-based), from `proc-macro2`'s `span-locations`.
pub fn line(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// `crate`, `crate::a::b`: a module path for messages.
pub fn module_name(path: &[String]) -> String {
    let mut name = String::from("crate");
    for segment in path {
        name.push_str("::");
        name.push_str(segment);
    }
    name
}

/// Every `.rs` file under `dir`, recursively, sorted (none when `dir` does not exist).
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The crate's target roots: `[lib] path` or `src/lib.rs`, `src/main.rs`, `src/bin/*`
/// and `[[bin]] path`s, each with a name for messages.
fn target_roots(krate: &Crate) -> Vec<(String, PathBuf)> {
    let mut roots = Vec::new();
    let lib_path = krate
        .manifest
        .get("lib")
        .and_then(|l| l.get("path"))
        .and_then(|p| p.as_str());
    roots.push((
        "lib".to_string(),
        krate.dir.join(lib_path.unwrap_or("src/lib.rs")),
    ));
    roots.push(("bin".to_string(), krate.dir.join("src/main.rs")));
    for file in rust_files(&krate.dir.join("src/bin")) {
        let parent_is_bin = file.parent().is_some_and(|p| p.ends_with("src/bin"));
        if parent_is_bin || file.ends_with("main.rs") {
            let shown = display(&krate.dir, &file);
            roots.push((format!("bin {shown}"), file));
        }
    }
    let bins = krate.manifest.get("bin").and_then(|b| b.as_array());
    for bin in bins.into_iter().flatten() {
        if let Some(path) = bin.get("path").and_then(|p| p.as_str()) {
            roots.push((format!("bin {path}"), krate.dir.join(path)));
        }
    }
    let mut unique: Vec<(String, PathBuf)> = Vec::new();
    for (name, path) in roots {
        if path.is_file() && !unique.iter().any(|(_, p)| *p == path) {
            unique.push((name, path));
        }
    }
    unique
}

/// Every target of `krate` with its module tree; parse errors and missing module files
/// go to `errors` (as `file:line: message`).
pub fn targets(root: &Path, krate: &Crate, errors: &mut Vec<String>) -> Vec<Target> {
    let mut targets = Vec::new();
    for (kind, file) in target_roots(krate) {
        let mut loader = Loader {
            root,
            modules: Vec::new(),
            errors: Vec::new(),
        };
        let child_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        loader.load_file(Vec::new(), &file, child_dir);
        errors.append(&mut loader.errors);
        let name = format!("{} ({kind})", krate.name);
        targets.push(Target {
            name,
            modules: loader.modules,
        });
    }
    targets
}

/// Parses a whole file, with the error as `file:line: message`.
pub fn parse_file(root: &Path, file: &Path) -> Result<syn::File, String> {
    let text = fs::read_to_string(file).map_err(|e| format!("{}: {e}", display(root, file)))?;
    syn::parse_file(&text).map_err(|e| format!("{}:{}: {e}", display(root, file), line(e.span())))
}

struct Loader<'a> {
    root: &'a Path,
    modules: Vec<Module>,
    errors: Vec<String>,
}

impl Loader<'_> {
    fn load_file(&mut self, path: Vec<String>, file: &Path, child_dir: PathBuf) {
        match parse_file(self.root, file) {
            Ok(parsed) => self.add_module(path, file, parsed.items, child_dir),
            Err(e) => self.errors.push(e),
        }
    }

    /// Records a module, then loads its non-test children (inline, or from their files).
    fn add_module(&mut self, path: Vec<String>, file: &Path, items: Vec<Item>, child_dir: PathBuf) {
        let child_mods: Vec<syn::ItemMod> = items
            .iter()
            .filter_map(|item| match item {
                Item::Mod(m) if !is_test_only(&m.attrs) => Some(m.clone()),
                _ => None,
            })
            .collect();
        let children = child_mods.iter().map(|m| m.ident.to_string()).collect();
        let module = Module {
            path: path.clone(),
            file: file.to_path_buf(),
            items,
            children,
        };
        self.modules.push(module);
        for m in child_mods {
            let name = m.ident.to_string();
            let mut child_path = path.clone();
            child_path.push(name.clone());
            match m.content {
                Some((_, inner)) => {
                    self.add_module(child_path, file, inner, child_dir.join(&name));
                }
                None => self.load_declared(child_path, file, &m, &child_dir),
            }
        }
    }

    /// Loads `mod name;`: `#[path]`, else `name.rs`, else `name/mod.rs` in `child_dir`.
    fn load_declared(&mut self, path: Vec<String>, file: &Path, m: &syn::ItemMod, dir: &Path) {
        let name = m.ident.to_string();
        let here = file.parent().unwrap_or(Path::new("."));
        let candidates = match path_attr(&m.attrs) {
            Some(p) => vec![here.join(p)],
            None => vec![
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ],
        };
        let Some(found) = candidates.iter().find(|c| c.is_file()) else {
            let at = line(m.ident.span());
            let shown = display(self.root, file);
            self.errors
                .push(format!("{shown}:{at}: no file for `mod {name};`"));
            return;
        };
        let mod_rs = found.ends_with("mod.rs") || path_attr(&m.attrs).is_some();
        let child_dir = match mod_rs {
            true => found.parent().map(Path::to_path_buf).unwrap_or_default(),
            false => dir.join(&name),
        };
        self.load_file(path, found, child_dir);
    }
}

/// The value of `#[path = "..."]`, when present.
fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.path().is_ident("path"))
        .and_then(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
}

/// True for items that exist only in test builds: `#[cfg(test)]` (also inside `all(..)`,
/// or every branch of `any(..)`), and test functions (`#[test]`, `#[tokio::test]`).
pub fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let is_test_attr = attr
            .path()
            .segments
            .last()
            .is_some_and(|s| s.ident == "test");
        let is_cfg_test = attr.path().is_ident("cfg")
            && attr
                .parse_args::<Meta>()
                .is_ok_and(|meta| cfg_requires_test(&meta));
        is_test_attr || is_cfg_test
    })
}

fn cfg_requires_test(meta: &Meta) -> bool {
    match meta {
        Meta::Path(p) => p.is_ident("test"),
        Meta::List(list) => {
            let parser = syn::punctuated::Punctuated::<Meta, syn::Token![,]>::parse_terminated;
            let Ok(nested) = list.parse_args_with(parser) else {
                return false;
            };
            if list.path.is_ident("all") {
                nested.iter().any(cfg_requires_test)
            } else if list.path.is_ident("any") {
                !nested.is_empty() && nested.iter().all(cfg_requires_test)
            } else {
                false
            }
        }
        Meta::NameValue(_) => false,
    }
}

/// The attributes of an item (none for verbatim tokens).
pub fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The attributes of an impl item.
pub fn impl_item_attrs(item: &ImplItem) -> &[Attribute] {
    match item {
        ImplItem::Const(i) => &i.attrs,
        ImplItem::Fn(i) => &i.attrs,
        ImplItem::Type(i) => &i.attrs,
        ImplItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}

/// The attributes of a trait item.
pub fn trait_item_attrs(item: &TraitItem) -> &[Attribute] {
    match item {
        TraitItem::Const(i) => &i.attrs,
        TraitItem::Fn(i) => &i.attrs,
        TraitItem::Type(i) => &i.attrs,
        TraitItem::Macro(i) => &i.attrs,
        _ => &[],
    }
}
