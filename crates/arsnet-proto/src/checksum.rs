//! Picking one file's digest out of a published checksum file.
//!
//! Mirrors publish checksums as text files — `SHA256SUMS`, `B3SUMS`, `foo.iso.sha256`, Fedora's
//! BSD-tagged `CHECKSUM` — and a user who points ArsNet at one expects the download to be
//! pinned to the digest listed for the file being fetched. This module parses that text (it is
//! pure: the caller fetched the bytes and decoded them as UTF-8) and returns the [`Pin`] for
//! one file name.
//!
//! Two line formats are accepted, one entry per line; blank lines and `#` comments are ignored
//! and `\r\n` line ends are fine:
//!
//! * GNU coreutils / `b3sum`: `HEX  NAME`, `HEX *NAME` (binary-mode marker) or `HEX NAME`. A
//!   line starting with `\` has `\\`, `\n` and `\r` escapes in its name. These lines do not say
//!   which hash they hold, so the caller passes a hint, usually from [`algorithm_of_name`] on
//!   the checksum file's URL.
//! * BSD tags: `SHA256 (NAME) = HEX` or `BLAKE3 (NAME) = HEX`. The tag decides the algorithm;
//!   lines with other tags (MD5, SHA1, SHA512, ...) are skipped.
//!
//! Only 64-digit digests are considered; shorter or longer ones (md5, sha512) are skipped.
//!
//! **Name matching.** A checksum file is usually generated where the files live, so it lists
//! them by whatever path the publisher ran the tool with: `x.iso`, `./x.iso` or
//! `./images/x.iso`. The name sought is a bare file name (the one being downloaded), so a line
//! matches when its name equals it exactly (after stripping leading `./`) or when the last
//! `/`-separated component does. An exact match outranks a last-component match: a file
//! listing both `x.iso` and `old/x.iso` means the former. Two matches of the same rank with
//! different digests are refused as ambiguous rather than guessed between; identical
//! duplicates (common when files are concatenated) are accepted.

use std::borrow::Cow;

use crate::control::Pin;
use crate::manifest::{from_hex, Digest};

/// Which hash a checksum file holds, when its lines do not say it themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

/// Why no digest could be taken from a checksum file for the name sought.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("the checksum file lists no line for {name}")]
    NotListed { name: String },
    #[error(
        "the checksum file lists conflicting digests for {name}, so it cannot tell which one \
         to trust"
    )]
    Ambiguous { name: String },
    #[error(
        "the checksum file lists {name} but does not say which hash it holds: use a file \
         named like SHA256SUMS or B3SUMS (or ending in .sha256 or .b3), or a BSD-tagged file \
         with lines like `SHA256 ({name}) = ...`"
    )]
    UnknownAlgorithm { name: String },
}

/// The algorithm a checksum file's URL or file name suggests: "SHA256SUMS", "x.sha256",
/// "sha256sum.txt" → Sha256; "B3SUMS", "x.b3", "x.blake3", "BLAKE3SUMS" → Blake3 (ASCII case
/// ignored); else None.
pub fn algorithm_of_name(file_name: &str) -> Option<Algorithm> {
    // A URL's query or fragment is not part of the name; then keep the last path component.
    let path = file_name.split(['?', '#']).next().unwrap_or(file_name);
    let base = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    let stem = base.strip_suffix(".txt").unwrap_or(&base);
    const SHA256: [&str; 3] = [".sha256", "sha256sum", "sha256sums"];
    const BLAKE3: [&str; 6] = [
        ".b3",
        ".blake3",
        "b3sum",
        "b3sums",
        "blake3sum",
        "blake3sums",
    ];
    if SHA256.iter().any(|suffix| stem.ends_with(suffix)) {
        Some(Algorithm::Sha256)
    } else if BLAKE3.iter().any(|suffix| stem.ends_with(suffix)) {
        Some(Algorithm::Blake3)
    } else {
        None
    }
}

/// The digest for `name` in `text`. `hint` is the algorithm from the URL's name (or None).
pub fn find_digest(text: &str, name: &str, hint: Option<Algorithm>) -> Result<Pin, ChecksumError> {
    let mut best: Option<Found> = None;
    for entry in text.lines().filter_map(parse_line) {
        let Some(quality) = match_quality(&entry.name, name) else {
            continue;
        };
        let algorithm = entry.algorithm.or(hint);
        match &mut best {
            Some(found) if found.quality > quality => {}
            Some(found) if found.quality == quality => found.merge(algorithm, entry.digest),
            _ => {
                best = Some(Found {
                    quality,
                    algorithm,
                    digest: entry.digest,
                    conflict: false,
                })
            }
        }
    }
    let name = name.to_owned();
    match best {
        None => Err(ChecksumError::NotListed { name }),
        Some(found) if found.conflict => Err(ChecksumError::Ambiguous { name }),
        Some(Found {
            algorithm: None, ..
        }) => Err(ChecksumError::UnknownAlgorithm { name }),
        Some(Found {
            algorithm: Some(Algorithm::Sha256),
            digest,
            ..
        }) => Ok(Pin::Sha256(digest)),
        Some(Found {
            algorithm: Some(Algorithm::Blake3),
            digest,
            ..
        }) => Ok(Pin::Blake3(digest)),
    }
}

/// How well a listed name matches the name sought; a higher rank wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Quality {
    LastComponent,
    Exact,
}

/// The best-ranked matches seen so far, folded into one.
struct Found {
    quality: Quality,
    /// `None` while no matching line said (and no hint told) which hash it is.
    algorithm: Option<Algorithm>,
    digest: Digest,
    conflict: bool,
}

impl Found {
    /// Folds in another line of the same rank. Lines agree when their digests are equal and
    /// their algorithms do not contradict each other (an unknown one agrees with any).
    fn merge(&mut self, algorithm: Option<Algorithm>, digest: Digest) {
        let algorithms_clash = matches!((self.algorithm, algorithm), (Some(a), Some(b)) if a != b);
        if digest != self.digest || algorithms_clash {
            self.conflict = true;
        }
        self.algorithm = self.algorithm.or(algorithm);
    }
}

/// One usable line of a checksum file.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    name: Cow<'a, str>,
    digest: Digest,
    /// Set by a BSD tag; `None` for GNU-style lines.
    algorithm: Option<Algorithm>,
}

/// Parses one line; `None` for blank lines, comments, and anything not usable (other
/// algorithms, other digest lengths, malformed lines).
fn parse_line(line: &str) -> Option<Entry<'_>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return None;
    }
    let (escaped, body) = match line.strip_prefix('\\') {
        Some(body) => (true, body),
        None => (false, line),
    };
    let (raw_name, digest, algorithm) = match parse_gnu(body) {
        Some((name, digest)) => (name, digest, None),
        None => {
            let (name, digest, algorithm) = parse_bsd(body)?;
            (name, digest, Some(algorithm))
        }
    };
    let name = if escaped {
        Cow::Owned(unescape(raw_name)?)
    } else {
        Cow::Borrowed(raw_name)
    };
    if name.is_empty() {
        return None;
    }
    Some(Entry {
        name,
        digest,
        algorithm,
    })
}

/// `HEX  NAME`, `HEX *NAME` or `HEX NAME` → (NAME, digest).
fn parse_gnu(body: &str) -> Option<(&str, Digest)> {
    let hex = body.get(..64)?;
    let rest = body.get(64..)?;
    let name = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))
        .or_else(|| rest.strip_prefix(' '))?;
    Some((name, parse_hex(hex)?))
}

/// `TAG (NAME) = HEX` with a known TAG → (NAME, digest, algorithm).
fn parse_bsd(body: &str) -> Option<(&str, Digest, Algorithm)> {
    let (tag, rest) = body.split_once(" (")?;
    let algorithm = if tag.eq_ignore_ascii_case("SHA256") {
        Algorithm::Sha256
    } else if tag.eq_ignore_ascii_case("BLAKE3") {
        Algorithm::Blake3
    } else {
        return None;
    };
    // The name may itself contain ") = ", so the digest is what follows the last one.
    let (name, hex) = rest.rsplit_once(") = ")?;
    Some((name, parse_hex(hex.trim_end())?, algorithm))
}

/// Exactly 64 hex digits (either case). Checked here because `from_hex` trims and its
/// per-pair parse would accept a `+` sign.
fn parse_hex(hex: &str) -> Option<Digest> {
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        from_hex(hex)
    } else {
        None
    }
}

/// Undoes GNU name escaping (`\\`, `\n`, `\r`); `None` for any other escape.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            _ => return None,
        }
    }
    Some(out)
}

/// How `listed` (a name as the checksum file writes it) matches `sought`, if at all.
fn match_quality(listed: &str, sought: &str) -> Option<Quality> {
    let mut path = listed;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    if listed == sought || path == sought {
        return Some(Quality::Exact);
    }
    match path.rsplit_once('/') {
        Some((_, last)) if !last.is_empty() && last == sought => Some(Quality::LastComponent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

    fn digest(hex: &str) -> Digest {
        from_hex(hex).unwrap()
    }

    fn sha(hex: &str) -> Result<Pin, ChecksumError> {
        Ok(Pin::Sha256(digest(hex)))
    }

    fn b3(hex: &str) -> Result<Pin, ChecksumError> {
        Ok(Pin::Blake3(digest(hex)))
    }

    fn find(text: &str, name: &str) -> Result<Pin, ChecksumError> {
        find_digest(text, name, Some(Algorithm::Sha256))
    }

    fn not_listed(name: &str) -> Result<Pin, ChecksumError> {
        Err(ChecksumError::NotListed { name: name.into() })
    }

    fn ambiguous(name: &str) -> Result<Pin, ChecksumError> {
        Err(ChecksumError::Ambiguous { name: name.into() })
    }

    #[test]
    fn gnu_two_spaces() {
        let text = format!("{A}  x.img\n{B}  y.img\n");
        assert_eq!(find(&text, "x.img"), sha(A));
        assert_eq!(find(&text, "y.img"), sha(B));
    }

    #[test]
    fn gnu_binary_marker() {
        let text = format!("{A} *x.img\n{B} *y.img\n");
        assert_eq!(find(&text, "x.img"), sha(A));
        assert_eq!(find(&text, "y.img"), sha(B));
        assert_eq!(find(&text, "*x.img"), not_listed("*x.img"));
    }

    #[test]
    fn gnu_single_space() {
        let text = format!("{A} x.img\n");
        assert_eq!(find(&text, "x.img"), sha(A));
    }

    #[test]
    fn gnu_name_with_spaces() {
        let text = format!("{A}  my disk image.img\n{B} *other  file.img\n");
        assert_eq!(find(&text, "my disk image.img"), sha(A));
        assert_eq!(find(&text, "other  file.img"), sha(B));
    }

    #[test]
    fn b3sum_file_with_blake3_hint() {
        let text = format!("{C}  x.img\n");
        assert_eq!(find_digest(&text, "x.img", Some(Algorithm::Blake3)), b3(C));
    }

    #[test]
    fn uppercase_hex_accepted() {
        let text = format!("{}  x.img\n", C.to_ascii_uppercase());
        assert_eq!(find(&text, "x.img"), sha(C));
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let text = format!("\\{A}  a\\\\b\n\\{B}  line\\nbreak\n\\{C} *cr\\rx\n");
        assert_eq!(find(&text, "a\\b"), sha(A));
        assert_eq!(find(&text, "line\nbreak"), sha(B));
        assert_eq!(find(&text, "cr\rx"), sha(C));
        assert_eq!(find(&text, "a\\\\b"), not_listed("a\\\\b"));
    }

    #[test]
    fn unescaped_line_keeps_backslashes() {
        let text = format!("{A}  a\\\\b\n");
        assert_eq!(find(&text, "a\\\\b"), sha(A));
    }

    #[test]
    fn bad_escape_skips_the_line() {
        let text = format!("\\{A}  a\\tb\n\\{B}  trailing\\\n");
        assert_eq!(find(&text, "a\\tb"), not_listed("a\\tb"));
        assert_eq!(find(&text, "a\tb"), not_listed("a\tb"));
        assert_eq!(find(&text, "trailing"), not_listed("trailing"));
    }

    #[test]
    fn escaped_bsd_line() {
        let text = format!("\\SHA256 (a\\\\b) = {A}\n");
        assert_eq!(find_digest(&text, "a\\b", None), sha(A));
    }

    #[test]
    fn dot_slash_and_directory_prefixes() {
        let text = format!("{A}  ./x.iso\n{B}  ./dir/y.iso\n{C}  pool/main/z.iso\n");
        assert_eq!(find(&text, "x.iso"), sha(A));
        assert_eq!(find(&text, "y.iso"), sha(B));
        assert_eq!(find(&text, "z.iso"), sha(C));
        assert_eq!(find(&text, "dir/y.iso"), sha(B));
        assert_eq!(find(&text, "main"), not_listed("main"));
    }

    #[test]
    fn exact_match_wins_over_last_component() {
        let before = format!("{A}  old/x.iso\n{B}  x.iso\n{C}  ./older/x.iso\n");
        let after = format!("{B}  x.iso\n{A}  old/x.iso\n{C}  other/x.iso\n");
        assert_eq!(find(&before, "x.iso"), sha(B));
        assert_eq!(find(&after, "x.iso"), sha(B));
        // `./x.iso` is the same file as `x.iso`, so it counts as exact.
        let dotted = format!("{A}  dir/x.iso\n{B}  ./x.iso\n");
        assert_eq!(find(&dotted, "x.iso"), sha(B));
    }

    #[test]
    fn identical_duplicates_are_fine() {
        let text = format!("{A}  x.img\n{B}  y.img\n{A} *x.img\nSHA256 (x.img) = {A}\n");
        assert_eq!(find(&text, "x.img"), sha(A));
        let nested = format!("{A}  a/x.img\n{A}  b/x.img\n");
        assert_eq!(find(&nested, "x.img"), sha(A));
    }

    #[test]
    fn conflicting_duplicates_are_ambiguous() {
        let text = format!("{A}  x.img\n{B}  x.img\n");
        assert_eq!(find(&text, "x.img"), ambiguous("x.img"));
        let nested = format!("{A}  a/x.img\n{B}  b/x.img\n");
        assert_eq!(find(&nested, "x.img"), ambiguous("x.img"));
        // The same digest under two different algorithms is a conflict too.
        let tags = format!("SHA256 (x.img) = {A}\nBLAKE3 (x.img) = {A}\n");
        assert_eq!(find_digest(&tags, "x.img", None), ambiguous("x.img"));
    }

    #[test]
    fn conflict_below_the_best_rank_is_ignored() {
        let text = format!("{A}  a/x.img\n{B}  b/x.img\n{C}  x.img\n");
        assert_eq!(find(&text, "x.img"), sha(C));
    }

    #[test]
    fn bsd_tags() {
        let text = format!("SHA256 (x.img) = {A}\nBLAKE3 (y.img) = {B}\n");
        assert_eq!(find_digest(&text, "x.img", None), sha(A));
        assert_eq!(find_digest(&text, "y.img", None), b3(B));
        let dirs = format!("SHA256 (./dir/x.img) = {A}\n");
        assert_eq!(find_digest(&dirs, "x.img", None), sha(A));
    }

    #[test]
    fn bsd_name_with_parentheses_and_equals() {
        let text = format!("SHA256 (x (1)) = y.img) = {A}\n");
        assert_eq!(find_digest(&text, "x (1)) = y.img", None), sha(A));
    }

    #[test]
    fn bsd_tag_overrides_hint() {
        let text = format!("BLAKE3 (x.img) = {A}\nSHA256 (y.img) = {B}\n");
        assert_eq!(find_digest(&text, "x.img", Some(Algorithm::Sha256)), b3(A));
        assert_eq!(find_digest(&text, "y.img", Some(Algorithm::Blake3)), sha(B));
    }

    #[test]
    fn untagged_and_tagged_lines_agree_without_hint() {
        let text = format!("{A}  x.img\nSHA256 (x.img) = {A}\n");
        assert_eq!(find_digest(&text, "x.img", None), sha(A));
    }

    #[test]
    fn md5_lines_and_other_tags_are_skipped() {
        let sha512 = format!("{A}{A}");
        let text = format!(
            "{MD5}  x.img\nMD5 (x.img) = {MD5}\nSHA1 (x.img) = {A}\n\
             SHA512 (x.img) = {sha512}\n{sha512}  x.img\n{B}  x.img\n"
        );
        assert_eq!(find(&text, "x.img"), sha(B));
        let only_others = format!("{MD5}  x.img\nSHA512 (x.img) = {sha512}\n");
        assert_eq!(find(&only_others, "x.img"), not_listed("x.img"));
    }

    #[test]
    fn malformed_digests_are_skipped() {
        let plus = format!("+{}", &A[1..]);
        let text = format!("{plus}  x.img\nSHA256 (x.img) = {plus}\n{A}x.img\n{A}  \n");
        assert_eq!(find(&text, "x.img"), not_listed("x.img"));
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let text = format!("# SHA256 checksums\n\n   \n  # {B}  x.img\n{A}  x.img\n\n");
        assert_eq!(find(&text, "x.img"), sha(A));
    }

    #[test]
    fn crlf_line_ends() {
        let text = format!("{A}  x.img\r\n{B}  y.img\r\nSHA256 (z.img) = {C}\r\n");
        assert_eq!(find(&text, "x.img"), sha(A));
        assert_eq!(find(&text, "y.img"), sha(B));
        assert_eq!(find(&text, "z.img"), sha(C));
        let unterminated = format!("{A}  x.img\r");
        assert_eq!(find(&unterminated, "x.img"), sha(A));
    }

    #[test]
    fn not_listed_error() {
        let text = format!("{A}  y.img\n");
        let err = find(&text, "x.img").unwrap_err();
        assert_eq!(
            err,
            ChecksumError::NotListed {
                name: "x.img".into()
            }
        );
        assert_eq!(err.to_string(), "the checksum file lists no line for x.img");
        assert_eq!(find("", "x.img"), not_listed("x.img"));
        assert_eq!(find(&text, ""), not_listed(""));
    }

    #[test]
    fn ambiguous_error_message() {
        let text = format!("{A}  x.img\n{B}  x.img\n");
        let message = find(&text, "x.img").unwrap_err().to_string();
        assert!(
            message.contains("x.img") && message.contains("conflicting"),
            "{message}"
        );
    }

    #[test]
    fn unknown_algorithm_error() {
        let text = format!("{A}  x.img\n");
        let err = find_digest(&text, "x.img", None).unwrap_err();
        assert_eq!(
            err,
            ChecksumError::UnknownAlgorithm {
                name: "x.img".into()
            }
        );
        let message = err.to_string();
        for needle in ["x.img", "SHA256SUMS", "B3SUMS", "SHA256 (x.img) = "] {
            assert!(message.contains(needle), "{message}");
        }
        // Without a matching line the error is about the name, not the algorithm.
        assert_eq!(find_digest(&text, "y.img", None), not_listed("y.img"));
    }

    #[test]
    fn ambiguity_outranks_unknown_algorithm() {
        let text = format!("{A}  x.img\n{B}  x.img\n");
        assert_eq!(find_digest(&text, "x.img", None), ambiguous("x.img"));
    }

    #[test]
    fn algorithm_of_name_cases() {
        let sha = Some(Algorithm::Sha256);
        let b3 = Some(Algorithm::Blake3);
        for name in [
            "SHA256SUMS",
            "sha256sums",
            "x.iso.sha256",
            "X.ISO.SHA256",
            "sha256sum.txt",
            "SHA256SUMS.txt",
            "x.iso.sha256sum",
            "https://mirror.example/pub/releases/SHA256SUMS",
            "https://mirror.example/x.iso.sha256?download=1#top",
        ] {
            assert_eq!(algorithm_of_name(name), sha, "{name}");
        }
        for name in [
            "B3SUMS",
            "b3sums",
            "x.b3",
            "x.B3",
            "x.blake3",
            "BLAKE3SUMS",
            "b3sum.txt",
            "https://mirror.example/dir/B3SUMS",
        ] {
            assert_eq!(algorithm_of_name(name), b3, "{name}");
        }
        for name in [
            "",
            "CHECKSUM",
            "MD5SUMS",
            "SHA512SUMS",
            "SHA256SUMS.gpg",
            "x.iso",
            "sha256/x.iso",
            "https://mirror.example/SHA256SUMS/",
        ] {
            assert_eq!(algorithm_of_name(name), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn find_digest_never_panics(
            text in any::<String>(),
            name in any::<String>(),
            hint in proptest::option::of(prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Blake3)]),
        ) {
            let _ = find_digest(&text, &name, hint);
            let _ = algorithm_of_name(&text);
        }

        #[test]
        fn find_digest_never_panics_on_checksum_like_lines(
            text in "([0-9a-fA-F]{60,66}|SHA256 \\(|BLAKE3 \\(|\\) = |[ *\\\\/.#()=x\r\nñ]){0,40}",
            name in "[x./\\\\ñ]{0,4}",
        ) {
            let _ = find_digest(&text, &name, None);
            let _ = find_digest(&text, &name, Some(Algorithm::Blake3));
        }
    }
}
