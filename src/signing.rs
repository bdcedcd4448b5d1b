//! Optional HMAC-SHA256 signing of task messages (`signing_key_file` in the configuration).
//!
//! When a key is configured, everything that enqueues (beat, `celeriac enqueue`, `trigger`)
//! signs each message, and workers dead-letter messages that are unsigned or whose signature
//! does not match: someone who can write to Redis but does not have the key cannot make a
//! worker run a command.
//!
//! The signature covers the message's canonical JSON (as this version serializes it) with
//! `signature` empty and `attempt` 0: the broker counts attempts itself, and a message is never
//! rewritten in the broker. Fields a newer version adds are not covered by an older verifier,
//! so sign and verify with the same version.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::broker::TaskMessage;

/// Keys shorter than this are refused: a guessable key signs nothing.
pub const MIN_KEY_BYTES: usize = 16;

/// A signing key (never printed).
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("message is not signed, but signing is required")]
    Unsigned,
    #[error("message signature does not match (tampered, or signed with another key)")]
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("signing key in {path} is too short ({len} bytes; at least {MIN_KEY_BYTES})")]
    TooShort { path: String, len: usize },
}

impl SigningKey {
    /// The key is the file's content with surrounding whitespace trimmed.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let trimmed = bytes.trim_ascii().to_vec();
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                path: path.display().to_string(),
                len: trimmed.len(),
            });
        }
        Ok(SigningKey(trimmed))
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        SigningKey(bytes.to_vec())
    }

    fn mac(&self, message: &TaskMessage) -> Hmac<Sha256> {
        let mut canonical = message.clone();
        canonical.signature = None;
        canonical.attempt = 0;
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&canonical.to_json());
        mac
    }

    /// Sets the message's signature.
    pub fn sign(&self, message: &mut TaskMessage) {
        let tag = self.mac(message).finalize().into_bytes();
        message.signature = Some(hex(&tag));
    }

    /// Checks the message's signature (in constant time).
    pub fn verify(&self, message: &TaskMessage) -> Result<(), SignatureError> {
        let sig = message
            .signature
            .as_deref()
            .ok_or(SignatureError::Unsigned)?;
        let bytes = unhex(sig).ok_or(SignatureError::Mismatch)?;
        self.mac(message)
            .verify_slice(&bytes)
            .map_err(|_| SignatureError::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(b"0123456789abcdef0123")
    }

    #[test]
    fn signed_message_verifies_across_the_wire_and_redelivery() {
        let mut m = TaskMessage::new("cleanup", "default").with_args(json!({"days": 7}));
        key().sign(&mut m);
        let mut back = TaskMessage::from_json(&m.to_json()).unwrap();
        back.attempt = 3; // the broker's count on redelivery
        assert_eq!(key().verify(&back), Ok(()));
    }

    #[test]
    fn tampering_unsigned_and_other_keys_are_refused() {
        let mut m = TaskMessage::new("cleanup", "default").with_args(json!({"days": 7}));
        assert_eq!(key().verify(&m), Err(SignatureError::Unsigned));
        key().sign(&mut m);
        let mut tampered = m.clone();
        tampered.args = json!({"days": 0});
        assert_eq!(key().verify(&tampered), Err(SignatureError::Mismatch));
        let other = SigningKey::from_bytes(b"another key, long enough");
        assert_eq!(other.verify(&m), Err(SignatureError::Mismatch));
        let mut garbage = m.clone();
        garbage.signature = Some("zz".into());
        assert_eq!(key().verify(&garbage), Err(SignatureError::Mismatch));
    }

    #[test]
    fn short_or_missing_key_files_are_errors_and_keys_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(matches!(
            SigningKey::from_file(&short),
            Err(KeyError::TooShort { len: 3, .. })
        ));
        assert!(matches!(
            SigningKey::from_file(&dir.path().join("none")),
            Err(KeyError::Read { .. })
        ));
        let good = dir.path().join("good");
        std::fs::write(&good, "  a-long-enough-secret-key \n").unwrap();
        let k = SigningKey::from_file(&good).unwrap();
        assert_eq!(format!("{k:?}"), "SigningKey(***)");
    }
}
