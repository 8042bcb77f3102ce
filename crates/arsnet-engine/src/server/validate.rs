//! All-or-nothing validation of a `serve` request, so that a bad port list or file is
//! reported with the culprit named and nothing is started.

use std::path::PathBuf;

/// Why a server group could not be started (or a port not restarted).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Request(#[from] arsnet_proto::request::RequestError),
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

/// Checks the port list against the spec's rules (the one rule, in `arsnet-proto`).
pub fn validate_ports(count: u32, ports: &[u16]) -> Result<(), ServeError> {
    Ok(arsnet_proto::request::check_ports(count, ports)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_proto::request::RequestError;

    #[test]
    fn port_rules() {
        assert!(validate_ports(2, &[5000, 5001]).is_ok());
        assert!(matches!(
            validate_ports(2, &[5000, 80]),
            Err(ServeError::Request(RequestError::PortOutOfRange(80)))
        ));
        assert!(matches!(
            validate_ports(3, &[5000, 5001]),
            Err(ServeError::Request(RequestError::CountMismatch { .. }))
        ));
        assert!(matches!(
            validate_ports(2, &[5000, 5000]),
            Err(ServeError::Request(RequestError::DuplicatePort(5000)))
        ));
        assert!(matches!(
            validate_ports(0, &[]),
            Err(ServeError::Request(RequestError::CountMismatch { .. }))
        ));
        assert!(validate_ports(1, &[65535]).is_ok());
    }
}
