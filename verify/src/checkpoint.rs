//! Signed checkpoints (tree heads): the message the collector signs with
//! Ed25519, and their checking.
//!
//! The signed message is UTF-8 text, five lines, each ending in `\n`:
//!
//! ```text
//! dcwatt-checkpoint-v1
//! collector {collector_id}
//! hour {hour_ms}
//! tree_size {tree_size}
//! root {root_hash}
//! ```
//!
//! `collector_id` is 1–128 characters of `[A-Za-z0-9._:-]`; `hour_ms` is the
//! start of the closed UTC hour, Unix ms, in decimal; `tree_size` the number of
//! ledger rows (leaves) in decimal; `root_hash` the RFC 9162 root as 64
//! lowercase hex digits. The signature is Ed25519 (RFC 8032) over exactly
//! these bytes, 128 hex digits in JSON.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{hash_from_hex, Hash};

/// The first line of every signed message.
pub const DOMAIN: &str = "dcwatt-checkpoint-v1\n";

/// A checkpoint failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The collector id is not an id.
    #[error("collector id {0:?} is not 1 to 128 characters of [A-Za-z0-9._:-]")]
    CollectorId(String),
    /// The root hash is not 64 hex digits.
    #[error("root hash {0:?} is not 64 hex digits")]
    Root(String),
    /// The signature is not 128 hex digits.
    #[error("signature is not 128 hex digits")]
    SignatureFormat,
    /// The signature does not verify.
    #[error("signature does not verify with the public key")]
    BadSignature,
    /// A key does not parse.
    #[error("{0}")]
    Key(String),
}

/// One signed tree head, as stored, served and saved by tenants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The collector that signed it (`[ledger] collector_id`).
    pub collector_id: String,
    /// The start of the closed UTC hour, Unix ms: when it was signed, every
    /// ledger minute before `hour_ms + 1 h` was booked.
    pub hour_ms: i64,
    /// Ledger rows (Merkle leaves) covered.
    pub tree_size: u64,
    /// The RFC 9162 root of those rows, hex.
    pub root_hash: String,
    /// Ed25519 over [`message`], hex.
    pub signature: String,
}

/// Whether `id` may be a collector id (it is written into the signed text).
pub fn valid_collector_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// The exact bytes signed for a checkpoint.
pub fn message(collector_id: &str, hour_ms: i64, tree_size: u64, root: &Hash) -> Vec<u8> {
    format!(
        "{DOMAIN}collector {collector_id}\nhour {hour_ms}\ntree_size {tree_size}\nroot {}\n",
        hex::encode(root)
    )
    .into_bytes()
}

/// Signs a checkpoint.
pub fn sign(
    key: &SigningKey,
    collector_id: &str,
    hour_ms: i64,
    tree_size: u64,
    root: &Hash,
) -> Result<Checkpoint, CheckpointError> {
    if !valid_collector_id(collector_id) {
        return Err(CheckpointError::CollectorId(collector_id.to_owned()));
    }
    let sig = key.sign(&message(collector_id, hour_ms, tree_size, root));
    Ok(Checkpoint {
        collector_id: collector_id.to_owned(),
        hour_ms,
        tree_size,
        root_hash: hex::encode(root),
        signature: hex::encode(sig.to_bytes()),
    })
}

impl Checkpoint {
    /// Checks the signature; returns the root hash it vouches for.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Hash, CheckpointError> {
        if !valid_collector_id(&self.collector_id) {
            return Err(CheckpointError::CollectorId(self.collector_id.clone()));
        }
        let root =
            hash_from_hex(&self.root_hash).ok_or(CheckpointError::Root(self.root_hash.clone()))?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CheckpointError::SignatureFormat)?;
        key.verify(
            &message(&self.collector_id, self.hour_ms, self.tree_size, &root),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| CheckpointError::BadSignature)?;
        Ok(root)
    }
}

/// The text of a secret key file: the 32-byte Ed25519 seed as 64 hex digits
/// and a newline.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// A secret key from a key file's text (64 hex digits, surrounding
/// whitespace ignored).
pub fn parse_secret_key(text: &str) -> Result<SigningKey, CheckpointError> {
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CheckpointError::Key("the key file does not hold 64 hex digits".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key: 64 hex digits, or the JSON `GET /v1/ledger/public-key`
/// answers (`{"public_key": "…"}`).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, CheckpointError> {
    let text = text.trim();
    let hex_text = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| CheckpointError::Key(format!("public key JSON: {e}")))?;
        v.get("public_key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| CheckpointError::Key("public key JSON has no \"public_key\"".into()))?
            .to_owned()
    } else {
        text.to_owned()
    };
    let bytes: [u8; 32] = hex::decode(&hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CheckpointError::Key("the public key is not 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| CheckpointError::Key("the public key is not a valid Ed25519 point".into()))
}
