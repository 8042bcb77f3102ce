//! Validation of file names received from servers. The name a server announces becomes a
//! path component on the client's disk, so it is untrusted input of the worst kind: only a
//! plain, single-component name may pass.

use crate::limits::MAX_NAME_LEN;

/// Why a file name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name is empty")]
    Empty,
    #[error("file name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("file name is not valid UTF-8")]
    NotUtf8,
    #[error("file name {0:?} contains a path separator or NUL")]
    Separator(String),
    #[error("file name {0:?} is a relative path component")]
    Dots(String),
    #[error("file name {0:?} contains a control character")]
    Control(String),
    #[error("file name {0:?} ends in a suffix ArsNet reserves for partial downloads")]
    Reserved(String),
    #[error(
        "file name {0:?} is {len} bytes: with the partial files' suffixes it would exceed the \
         {MAX_NAME_LEN}-byte limit of file names (at most {most} bytes)",
        most = MAX_NAME_LEN - LONGEST_DERIVED_SUFFIX,
        len = .0.len()
    )]
    TooLongForSuffix(String),
}

/// Suffix of the dump file: `DIR/NAME.arsnet-dump`.
pub const DUMP_SUFFIX: &str = ".arsnet-dump";
/// Suffix of the journal file: `DIR/NAME.arsnet-segments`.
pub const JOURNAL_SUFFIX: &str = ".arsnet-segments";
/// Inserted into the name of a journal that could not be trusted and was kept aside.
pub const UNTRUSTED_MARK: &str = ".arsnet-untrusted";

/// The longest suffix ArsNet adds to a download's name: a journal kept aside,
/// `NAME.arsnet-segments.arsnet-untrusted-SECS` (SECS: up to 20 digits). Every name derived
/// from a download's name must fit the file system's limit, or a partial download could end
/// up stuck (a journal that cannot be set aside can never be replaced).
pub const LONGEST_DERIVED_SUFFIX: usize = JOURNAL_SUFFIX.len() + UNTRUSTED_MARK.len() + 1 + 20;

/// True when `name` ends in (or contains the kept-aside mark of) an ArsNet-reserved suffix.
/// ASCII case is ignored, since the directory may be on a case-insensitive file system.
pub fn is_reserved_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(DUMP_SUFFIX)
        || lower.ends_with(JOURNAL_SUFFIX)
        || lower.contains(UNTRUSTED_MARK)
}

/// A name a download may be saved under in its directory: a plain file name
/// ([`validate_file_name`]) short enough to take the partial files' suffixes, and not one of
/// ArsNet's own names (so a download is never published over another's partial files). The
/// one rule, applied to a request's mirror URL when it arrives and to a server's announced
/// name before anything is created.
pub fn validate_download_name(raw: &[u8]) -> Result<&str, NameError> {
    let name = validate_file_name(raw)?;
    if name.len() + LONGEST_DERIVED_SUFFIX > MAX_NAME_LEN {
        return Err(NameError::TooLongForSuffix(name.to_owned()));
    }
    if is_reserved_name(name) {
        return Err(NameError::Reserved(name.to_owned()));
    }
    Ok(name)
}

/// Accepts only a plain file name: non-empty, at most 255 bytes, UTF-8, no `/`, `\`, NUL or
/// other control characters, and not `.` or `..`. Returns the name as a `&str`.
pub fn validate_file_name(raw: &[u8]) -> Result<&str, NameError> {
    if raw.is_empty() {
        return Err(NameError::Empty);
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let name = std::str::from_utf8(raw).map_err(|_| NameError::NotUtf8)?;
    if name.contains(['/', '\\', '\0']) {
        return Err(NameError::Separator(name.to_owned()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.to_owned()));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control(name.to_owned()));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in [
            "a",
            "disk.img",
            "weights-v2.safetensors",
            "..hidden",
            "a..b",
            "ünïcode",
        ] {
            assert_eq!(validate_file_name(ok.as_bytes()), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_anything_path_like() {
        let long = "x".repeat(256);
        let cases: [&[u8]; 10] = [
            b"",
            b"../x",
            b"..",
            b".",
            b"a/b",
            b"/etc/passwd",
            b"a\\b",
            b"a\0b",
            b"\xff\xfe",
            long.as_bytes(),
        ];
        for bad in cases {
            assert!(validate_file_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_file_name(b"a\nb").is_err());
        assert!(validate_file_name("x".repeat(255).as_bytes()).is_ok());
    }
}
