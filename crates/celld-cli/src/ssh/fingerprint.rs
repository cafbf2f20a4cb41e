//! Host key fingerprints: printed as `ssh-keygen -l` does, and parsed from
//! what an API announced (every spelling cf accepts) to check a host key.

use std::fmt;
use std::str::FromStr;

use russh::keys::{HashAlg, PublicKey};

use super::error::SshError;

/// A key's SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:` and the
/// unpadded base64 of the SHA-256 of the key blob.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// A fingerprint to check a host key against, parsed from what an API
/// announced: `SHA256:<base64>` (also `SHA512:`), the bare 43-character base64
/// cf accepts, or 64 hex digits (cf's other SHA-256 form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFingerprint {
    alg: HashAlg,
    digest: Vec<u8>,
    text: String,
}

impl ExpectedFingerprint {
    pub fn matches(&self, key: &PublicKey) -> bool {
        key.fingerprint(self.alg).as_bytes() == self.digest.as_slice()
    }
}

impl fmt::Display for ExpectedFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ExpectedFingerprint {
    type Err = SshError;

    fn from_str(s: &str) -> Result<Self, SshError> {
        let text = s.trim();
        let bad = || SshError::BadFingerprint(s.to_string());
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let digest = (0..32)
                .map(|i| text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(bad)?;
            return Ok(Self { alg: HashAlg::Sha256, digest, text: text.to_string() });
        }
        let prefixed =
            if text.contains(':') { text.to_string() } else { format!("SHA256:{}", text.trim_end_matches('=')) };
        let prefixed = prefixed.trim_end_matches('=');
        let fp = russh::keys::ssh_key::Fingerprint::from_str(prefixed).map_err(|_| bad())?;
        Ok(Self { alg: fp.algorithm(), digest: fp.as_bytes().to_vec(), text: text.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_like_ssh_keygen() {
        let key = russh::keys::parse_public_key_base64(
            "AAAAC3NzaC1lZDI1NTE5AAAAIIqwKiSVAlCNliYIO+WkSjCjZnftIlqWVOXxczWm7Ag3",
        )
        .unwrap();
        // What `ssh-keygen -lf` prints for that key.
        let printed = fingerprint(&key);
        assert_eq!(printed, "SHA256:dsjIleNgv23V4+NCi2VqdfDMgRVNHGzBNzE1IAtvGxU");
        let want: ExpectedFingerprint = printed.parse().unwrap();
        assert!(want.matches(&key));
        // cf's other spellings of the same digest.
        let bare = printed.trim_start_matches("SHA256:");
        assert!(bare.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        assert!(format!("{bare}=").parse::<ExpectedFingerprint>().unwrap().matches(&key));
        let digest = key.fingerprint(HashAlg::Sha256);
        let hex: String = digest.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        assert!(hex.to_uppercase().parse::<ExpectedFingerprint>().unwrap().matches(&key));
        let other = format!("SHA256:{}", "A".repeat(43));
        assert!(!other.parse::<ExpectedFingerprint>().unwrap().matches(&key));
        // MD5/SHA-1 colon-hex and junk are refused with a clear error.
        for bad in ["ab:cd:ef", &"aa:".repeat(19)[..56], "SHA256:!!!", "nope"] {
            let e = bad.parse::<ExpectedFingerprint>().unwrap_err();
            assert!(matches!(e, SshError::BadFingerprint(_)), "{bad}: {e}");
        }
    }
}
