//! Rule: no function in a crate's non-test sources is longer than 80 lines, counted from the
//! start of its signature to its closing brace. Free functions, methods, trait default
//! methods and nested functions all count; there is no allowlist.

use std::path::Path;

use syn::visit::{self, Visit};
use syn::{Block, ImplItem, Item, Signature, TraitItem, Visibility};

use crate::modules;

pub const MAX_FN_LINES: usize = 80;

#[test]
fn no_long_functions() {
    let violations = long_functions(&crate::workspace_root(), MAX_FN_LINES);
    crate::assert_none("functions longer than 80 lines", &violations);
}

/// Every function longer than `max` lines in the non-test modules of every target of
/// every member crate under `root`, as `file:line: name is N lines`; also parse errors.
pub fn long_functions(root: &Path, max: usize) -> Vec<String> {
    let crates = match modules::member_crates(root) {
        Ok(crates) => crates,
        Err(e) => return vec![e],
    };
    let mut found: Vec<(String, usize, String)> = Vec::new();
    let mut errors = Vec::new();
    for krate in &crates {
        for target in modules::targets(root, krate, &mut errors) {
            for module in &target.modules {
                let file = modules::display(root, &module.file);
                let mut finder = LongFns {
                    max,
                    scope: Vec::new(),
                    found: Vec::new(),
                };
                module.items.iter().for_each(|item| finder.visit_item(item));
                found.extend(
                    finder
                        .found
                        .into_iter()
                        .map(|(l, msg)| (file.clone(), l, msg)),
                );
            }
        }
    }
    // A module shared by two targets (lib and bin) is reported once.
    found.sort();
    found.dedup();
    let mut out: Vec<String> = found
        .into_iter()
        .map(|(f, l, msg)| format!("{f}:{l}: {msg}"))
        .collect();
    out.extend(errors.into_iter().map(|e| format!("cannot read: {e}")));
    out
}

/// Finds long functions in one module's items, skipping test code and child modules.
struct LongFns {
    max: usize,
    /// Enclosing `impl`/`trait`/`fn` names, for messages.
    scope: Vec<String>,
    found: Vec<(usize, String)>,
}

impl LongFns {
    fn check(&mut self, vis: Option<&Visibility>, sig: &Signature, block: &Block) {
        let start = signature_start(vis, sig);
        let end = block.brace_token.span.close().end().line;
        let lines = end + 1 - start;
        if lines > self.max {
            let mut name = self.scope.clone();
            name.push(sig.ident.to_string());
            let name = name.join("::");
            self.found.push((
                start,
                format!("fn {name} is {lines} lines (max {})", self.max),
            ));
        }
    }

    fn in_scope(&mut self, name: String, walk: impl FnOnce(&mut Self)) {
        self.scope.push(name);
        walk(self);
        self.scope.pop();
    }
}

/// The first line of a signature: its visibility or first qualifier, else `fn`.
fn signature_start(vis: Option<&Visibility>, sig: &Signature) -> usize {
    let mut lines = vec![sig.fn_token.span.start().line];
    match vis {
        Some(Visibility::Public(p)) => lines.push(p.span.start().line),
        Some(Visibility::Restricted(r)) => lines.push(r.pub_token.span.start().line),
        _ => {}
    }
    lines.extend(sig.constness.map(|t| t.span.start().line));
    lines.extend(sig.asyncness.map(|t| t.span.start().line));
    lines.extend(sig.unsafety.map(|t| t.span.start().line));
    lines.extend(sig.abi.as_ref().map(|a| a.extern_token.span.start().line));
    lines.into_iter().min().unwrap_or(0)
}

impl<'ast> Visit<'ast> for LongFns {
    fn visit_item(&mut self, item: &'ast Item) {
        if modules::is_test_only(modules::item_attrs(item)) {
            return;
        }
        match item {
            Item::Mod(_) => {}
            Item::Fn(f) => {
                self.check(Some(&f.vis), &f.sig, &f.block);
                self.in_scope(f.sig.ident.to_string(), |s| visit::visit_item_fn(s, f));
            }
            Item::Impl(i) => {
                let ty = &i.self_ty;
                let name = quote_type(ty);
                self.in_scope(name, |s| visit::visit_item_impl(s, i));
            }
            Item::Trait(t) => self.in_scope(t.ident.to_string(), |s| visit::visit_item_trait(s, t)),
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        if modules::is_test_only(modules::impl_item_attrs(item)) {
            return;
        }
        if let ImplItem::Fn(f) = item {
            self.check(Some(&f.vis), &f.sig, &f.block);
            self.in_scope(f.sig.ident.to_string(), |s| visit::visit_impl_item_fn(s, f));
        } else {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast TraitItem) {
        if modules::is_test_only(modules::trait_item_attrs(item)) {
            return;
        }
        if let TraitItem::Fn(f) = item {
            if let Some(block) = &f.default {
                self.check(None, &f.sig, block);
            }
            self.in_scope(f.sig.ident.to_string(), |s| {
                visit::visit_trait_item_fn(s, f)
            });
        } else {
            visit::visit_trait_item(self, item);
        }
    }
}

/// The last path segment of an impl's self type (`Foo` for `crate::a::Foo<T>`), else `impl`.
fn quote_type(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        syn::Type::Reference(r) => Some(quote_type(&r.elem)),
        _ => None,
    }
    .unwrap_or_else(|| "impl".to_string())
}
