//! Rule: inside each crate target, the graph of modules (edge A→B when A names something in
//! B through a path) has no cycle. Test-only code (`#[cfg(test)]`, `#[test]`) is left out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Attribute, ImplItem, Item, TraitItem, UseTree, Visibility};

use crate::modules::{self, Module, Target};

#[test]
fn no_module_import_cycles() {
    let violations = find_cycles(&crate::workspace_root());
    crate::assert_none("module import cycles", &violations);
}

/// Every cycle (strongly connected component of more than one module) of every target of
/// every member crate under `root`, with one example reference per edge; also parse errors.
pub fn find_cycles(root: &Path) -> Vec<String> {
    let crates = match modules::member_crates(root) {
        Ok(crates) => crates,
        Err(e) => return vec![e],
    };
    let mut violations = Vec::new();
    for krate in &crates {
        let mut errors = Vec::new();
        for target in modules::targets(root, krate, &mut errors) {
            let mut cycles = target_cycles(root, &target);
            cycles.sort();
            violations.extend(cycles);
        }
        violations.extend(errors.into_iter().map(|e| format!("cannot read: {e}")));
    }
    violations
}

/// The cycles of one target, each as a multi-line message.
fn target_cycles(root: &Path, target: &Target) -> Vec<String> {
    let edges = module_edges(root, &target.modules);
    let mut adjacency = vec![Vec::new(); target.modules.len()];
    for &(from, to) in edges.keys() {
        adjacency[from].push(to);
    }
    let name = |i: usize| modules::module_name(&target.modules[i].path);
    let mut out = Vec::new();
    for mut scc in strongly_connected(&adjacency) {
        if scc.len() < 2 {
            continue;
        }
        scc.sort_by_key(|&i| name(i));
        let members: Vec<String> = scc.iter().map(|&i| name(i)).collect();
        let mut message = format!("{}: cycle among {}", target.name, members.join(", "));
        for (&(from, to), example) in &edges {
            if scc.contains(&from) && scc.contains(&to) {
                let edge = format!("{} -> {}", name(from), name(to));
                message.push_str(&format!("\n      {edge}: {example}"));
            }
        }
        out.push(message);
    }
    out
}

/// Edges between module indices, each with its first example (`file:line `path``).
fn module_edges(root: &Path, mods: &[Module]) -> BTreeMap<(usize, usize), String> {
    let resolver = Resolver::new(mods);
    let mut edges = BTreeMap::new();
    for (from, module) in mods.iter().enumerate() {
        let mut collector = RefCollector::default();
        for item in &module.items {
            collector.visit_item(item);
        }
        let aliases = resolver.aliases(&module.path, &collector.refs);
        for r in &collector.refs {
            let Some(target) = resolver.resolve(&module.path, r, &aliases) else {
                continue;
            };
            let to = resolver.index[&target];
            if to != from {
                let file = modules::display(root, &module.file);
                let example = format!("{file}:{} `{}`", r.line, r.segs.join("::"));
                edges.entry((from, to)).or_insert(example);
            }
        }
    }
    edges
}

/// A path seen in a module; `use_leaf` is set for the leaves of `use` trees.
struct Ref {
    segs: Vec<String>,
    line: usize,
    use_leaf: Option<UseLeaf>,
}

/// A `use` leaf; `alias` is the name it brings in (none for `*` and `_`).
struct UseLeaf {
    alias: Option<String>,
}

/// Collects the paths of one module's own items: not its child modules, not test code,
/// not attributes or visibilities (`pub(super)` is no reference).
#[derive(Default)]
struct RefCollector {
    refs: Vec<Ref>,
}

impl<'ast> Visit<'ast> for RefCollector {
    fn visit_item(&mut self, item: &'ast Item) {
        if modules::is_test_only(modules::item_attrs(item)) {
            return;
        }
        match item {
            Item::Mod(_) => {}
            Item::Use(u) if u.leading_colon.is_some() => {}
            Item::Use(u) => flatten_use(&u.tree, &mut Vec::new(), &mut self.refs),
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        if !modules::is_test_only(modules::impl_item_attrs(item)) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast TraitItem) {
        if !modules::is_test_only(modules::trait_item_attrs(item)) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_attribute(&mut self, _: &'ast Attribute) {}

    fn visit_visibility(&mut self, _: &'ast Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first() {
                let segs = path.segments.iter().map(|s| s.ident.to_string()).collect();
                let line = modules::line(first.ident.span());
                self.refs.push(Ref {
                    segs,
                    line,
                    use_leaf: None,
                });
            }
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        scan_tokens(mac.tokens.clone(), &mut self.refs);
    }
}

/// The leaves of a `use` tree as full paths (`a::{self, b as c, *}` → `a`, `a::b`, `a`).
fn flatten_use(tree: &UseTree, prefix: &mut Vec<String>, out: &mut Vec<Ref>) {
    let mut leaf = |ident: &syn::Ident, alias: Option<String>| {
        let mut segs = prefix.clone();
        if ident != "self" || segs.is_empty() {
            segs.push(ident.to_string());
        }
        let alias = alias.or_else(|| segs.last().cloned()).filter(|a| a != "_");
        let use_leaf = Some(UseLeaf { alias });
        out.push(Ref {
            segs,
            line: modules::line(ident.span()),
            use_leaf,
        });
    };
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) => leaf(&n.ident, None),
        UseTree::Rename(r) => leaf(&r.ident, Some(r.rename.to_string())),
        UseTree::Glob(g) => {
            // `*` names no module, so `a::*` lands in `a`.
            let mut segs = prefix.clone();
            segs.push("*".to_string());
            let line = modules::line(g.star_token.span);
            let use_leaf = Some(UseLeaf { alias: None });
            out.push(Ref {
                segs,
                line,
                use_leaf,
            });
        }
        UseTree::Group(g) => g.items.iter().for_each(|t| flatten_use(t, prefix, out)),
    }
}

/// Best effort inside macro bodies (which `syn` leaves as tokens): every `a::b::c` run.
fn scan_tokens(tokens: TokenStream, out: &mut Vec<Ref>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Group(g) => scan_tokens(g.stream(), out),
            TokenTree::Ident(first) if !(i >= 2 && is_path_sep(&tokens, i - 2)) => {
                let mut segs = vec![first.to_string()];
                while is_path_sep(&tokens, i + 1) {
                    let Some(TokenTree::Ident(next)) = tokens.get(i + 3) else {
                        break;
                    };
                    segs.push(next.to_string());
                    i += 3;
                }
                let line = modules::line(first.span());
                out.push(Ref {
                    segs,
                    line,
                    use_leaf: None,
                });
            }
            _ => {}
        }
        i += 1;
    }
}

/// True when `tokens[i..i + 2]` is `::`.
pub fn is_path_sep(tokens: &[TokenTree], i: usize) -> bool {
    let colon =
        |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == ':');
    let joint = matches!(tokens.get(i), Some(TokenTree::Punct(p)) if p.spacing() == Spacing::Joint);
    colon(tokens.get(i)) && joint && colon(tokens.get(i + 1))
}

/// Maps paths, seen from a module, to the module they name.
struct Resolver {
    index: HashMap<Vec<String>, usize>,
    children: HashMap<Vec<String>, HashSet<String>>,
}

impl Resolver {
    fn new(mods: &[Module]) -> Resolver {
        let index = mods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.path.clone(), i))
            .collect();
        let children = mods
            .iter()
            .map(|m| (m.path.clone(), m.children.iter().cloned().collect()))
            .collect();
        Resolver { index, children }
    }

    /// Names that `use` brings in for modules (`use super::sibling;` → `sibling`).
    fn aliases(&self, from: &[String], refs: &[Ref]) -> HashMap<String, Vec<String>> {
        let mut aliases = HashMap::new();
        // Twice, so that `use sibling::inner;` after `use super::sibling;` resolves too.
        for _ in 0..2 {
            for r in refs {
                let Some(UseLeaf { alias: Some(alias) }) = &r.use_leaf else {
                    continue;
                };
                let full = self.full_path(from, r, &aliases);
                if let Some(full) = full.filter(|f| self.index.contains_key(f)) {
                    aliases.insert(alias.clone(), full);
                }
            }
        }
        aliases
    }

    /// The module a reference lands in: the longest existing module prefix of its path.
    fn resolve(
        &self,
        from: &[String],
        r: &Ref,
        aliases: &HashMap<String, Vec<String>>,
    ) -> Option<Vec<String>> {
        let mut full = self.full_path(from, r, aliases)?;
        while !self.index.contains_key(&full) {
            full.pop()?;
        }
        Some(full)
    }

    /// The crate-relative path of a reference, or `None` when it is not into this crate
    /// (extern crates, locals, prelude names).
    fn full_path(
        &self,
        from: &[String],
        r: &Ref,
        aliases: &HashMap<String, Vec<String>>,
    ) -> Option<Vec<String>> {
        let first = r.segs.first()?.as_str();
        let (mut base, rest) = match first {
            "crate" => (Vec::new(), &r.segs[1..]),
            "self" => (from.to_vec(), &r.segs[1..]),
            "super" => {
                let supers = r.segs.iter().take_while(|s| *s == "super").count();
                let kept = from.len().checked_sub(supers)?;
                (from[..kept].to_vec(), &r.segs[supers..])
            }
            _ if r.use_leaf.is_none() && r.segs.len() < 2 => return None,
            _ if self.children.get(from).is_some_and(|c| c.contains(first)) => {
                (from.to_vec(), &r.segs[..])
            }
            _ => (aliases.get(first)?.clone(), &r.segs[1..]),
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

/// Tarjan's strongly connected components of a graph given as adjacency lists.
fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adjacency.len();
    let mut state = Tarjan {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            state.connect(v, adjacency);
        }
    }
    state.sccs
}

struct Tarjan {
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    sccs: Vec<Vec<usize>>,
}

impl Tarjan {
    fn connect(&mut self, v: usize, adjacency: &[Vec<usize>]) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &adjacency[v] {
            match self.index[w] {
                None => {
                    self.connect(w, adjacency);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            self.sccs.push(scc);
        }
    }
}
