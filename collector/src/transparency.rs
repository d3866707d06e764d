//! The ledger's transparency log, as the collector runs it: the signing key
//! (`dcwatt-collector keygen`), the booking job's checkpoint step and the
//! tree's gauges. The tree, its checkpoints and proofs are stored with the
//! ledger (`store::tree`).

use std::sync::atomic::{AtomicI64, Ordering};

use dcwatt_verify::checkpoint::{self, Checkpoint};
use ed25519_dalek::SigningKey;

use crate::site::Site;
use crate::store::Store;

pub use crate::store::tree::{last_closed_hour, MAX_CHECKPOINTS};

/// Why a key could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The system's random source failed.
    #[error("reading /dev/urandom: {0}")]
    Random(std::io::Error),
    /// The file could not be created (it must not exist).
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes a new signing key to `path` (which must not exist), readable by its
/// owner only (0600); returns the key.
pub fn write_new_key(path: &std::path::Path) -> Result<SigningKey, KeygenError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(KeygenError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let write_err = |source| KeygenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(checkpoint::secret_key_text(&key).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_err)?;
    Ok(key)
}

/// The tree's figures for `/metrics`, refreshed by the booking job.
#[derive(Debug)]
pub struct Gauges {
    tree_size: AtomicI64,
    checkpoint_hour_ms: AtomicI64,
}

impl Default for Gauges {
    fn default() -> Gauges {
        Gauges {
            tree_size: AtomicI64::new(-1),
            checkpoint_hour_ms: AtomicI64::new(i64::MIN),
        }
    }
}

impl Gauges {
    /// Records the tree's size and the latest checkpoint.
    pub fn set(&self, size: u64, latest: Option<&Checkpoint>) {
        self.tree_size
            .store(i64::try_from(size).unwrap_or(i64::MAX), Ordering::Relaxed);
        if let Some(c) = latest {
            self.checkpoint_hour_ms.store(c.hour_ms, Ordering::Relaxed);
        }
    }

    /// The exposition of `dcwatt_ledger_tree_size` and
    /// `dcwatt_ledger_checkpoint_timestamp_seconds` (each once known).
    pub fn families(&self) -> Vec<dcwatt_expo::Family> {
        let mut out = Vec::new();
        let size = self.tree_size.load(Ordering::Relaxed);
        if size >= 0 {
            let mut f = dcwatt_expo::Family::gauge(
                crate::names::LEDGER_TREE_SIZE,
                "Rows (Merkle leaves) in the ledger's tree.",
            );
            f.add(&[], size as f64);
            out.push(f);
        }
        let hour = self.checkpoint_hour_ms.load(Ordering::Relaxed);
        if hour != i64::MIN {
            let mut f = dcwatt_expo::Family::gauge(
                crate::names::LEDGER_CHECKPOINT_TIMESTAMP_SECONDS,
                "Start of the UTC hour of the latest signed checkpoint, Unix seconds.",
            );
            f.add(&[], hour as f64 / 1000.0);
            out.push(f);
        }
        out
    }
}

/// The booking job's step after each booking pass: signs the checkpoint of
/// the last closed hour when due and refreshes the gauges. Failures are
/// logged; booking goes on.
pub fn after_booking(store: &mut Store, site: &Site, gauges: &Gauges, now_ms: i64) {
    match store.checkpoint_due(site, now_ms) {
        Ok(Some(c)) => tracing::info!(
            hour_ms = c.hour_ms,
            tree_size = c.tree_size,
            root = %c.root_hash,
            "Ledger checkpoint signed."
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "Signing the ledger checkpoint failed."),
    }
    match store.tree_head() {
        Ok((size, latest)) => gauges.set(size, latest.as_ref()),
        Err(e) => tracing::warn!(error = %e, "Reading the ledger tree failed."),
    }
}
