//! All-or-nothing validation of a `serve` request, so that a bad port list or file is
//! reported with the culprit named and nothing is started.

use std::collections::HashSet;
use std::path::PathBuf;

/// Why a server group could not be started (or a port not restarted).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("port {0} is outside the allowed range 1024..=65535")]
    PortOutOfRange(u16),
    #[error("-n says {expected} servers but {got} ports were given")]
    CountMismatch { expected: u32, got: usize },
    #[error("port {0} is listed twice")]
    DuplicatePort(u16),
    #[error("port {port} cannot be used: {reason}")]
    PortUnavailable { port: u16, reason: String },
    #[error("bind address {0:?} is not an IP address")]
    BadBind(String),
    #[error("file {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("no virtual server on port {0}")]
    UnknownPort(u16),
    #[error("{0}")]
    Internal(String),
}

/// Checks the port list against the spec's rules: exactly `count` ports, each in
/// 1024..=65535, no duplicates.
pub fn validate_ports(count: u32, ports: &[u16]) -> Result<(), ServeError> {
    if let Some(&port) = ports.iter().find(|&&p| p < 1024) {
        return Err(ServeError::PortOutOfRange(port));
    }
    if ports.len() != count as usize || count == 0 {
        return Err(ServeError::CountMismatch {
            expected: count,
            got: ports.len(),
        });
    }
    let mut seen = HashSet::new();
    for &port in ports {
        if !seen.insert(port) {
            return Err(ServeError::DuplicatePort(port));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rules() {
        assert!(validate_ports(2, &[5000, 5001]).is_ok());
        assert!(matches!(
            validate_ports(2, &[5000, 80]),
            Err(ServeError::PortOutOfRange(80))
        ));
        assert!(matches!(
            validate_ports(3, &[5000, 5001]),
            Err(ServeError::CountMismatch { .. })
        ));
        assert!(matches!(
            validate_ports(2, &[5000, 5000]),
            Err(ServeError::DuplicatePort(5000))
        ));
        assert!(matches!(
            validate_ports(0, &[]),
            Err(ServeError::CountMismatch { .. })
        ));
        assert!(validate_ports(1, &[65535]).is_ok());
    }
}
