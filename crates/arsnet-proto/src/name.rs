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
