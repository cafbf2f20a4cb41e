//! Why an SSH connection or session failed, worded for the person at the
//! terminal (the host key messages are OpenSSH's and cf's).

use std::path::PathBuf;

use super::config::CONNECT_TIMEOUT;

/// Why an SSH connection or session failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("no answer from {addr} within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { addr: String },
    /// The server's host key is not the announced one (checked before any
    /// credential is sent).
    #[error(
        "Host key verification failed.\n\nThe fingerprint of the received key was {got:?}, \
         but {expected:?} was expected: someone may be intercepting the connection, \
         or the proxy's host key changed."
    )]
    HostKeyMismatch { expected: String, got: String },
    /// There was no fingerprint to verify the host key against.
    #[error("Unable to verify identity of host.\n\nThe fingerprint of the received key was {got:?}.")]
    NoFingerprint { got: String },
    #[error(
        "Unsupported host key fingerprint format {0:?}: use SHA256:<base64> (as `ssh-keygen -l` prints it), \
         the bare base64 or 64 hex digits"
    )]
    BadFingerprint(String),
    #[error("the server presented a host certificate; only plain host keys can be verified")]
    HostCertificate,
    /// The server refused the credentials.
    #[error("the server refused the login of {user:?}")]
    AuthFailed { user: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("SSH session allocation failed: {0}")]
    Session(String),
    /// A pty-req, exec or shell request got a failure reply.
    #[error("the server refused the {0} request")]
    Refused(&'static str),
    #[error("cannot listen on {addr} for -L {spec}: {source}")]
    Listen { spec: String, addr: String, source: std::io::Error },
    /// The connection ended while a session or `-N` was waiting on it.
    #[error("the connection to {addr} was closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    ConnectionLost { addr: String, reason: Option<String> },
    #[error("the remote command exited without exit status or exit signal")]
    NoExitStatus,
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_both_fingerprints() {
        let e = SshError::HostKeyMismatch { expected: "SHA256:want".into(), got: "SHA256:got".into() };
        let s = e.to_string();
        assert!(
            s.starts_with("Host key verification failed.") && s.contains("SHA256:want") && s.contains("SHA256:got")
        );
        let lost = SshError::ConnectionLost { addr: "127.0.0.1:2222".into(), reason: None };
        assert_eq!(lost.to_string(), "the connection to 127.0.0.1:2222 was closed");
    }
}
