//! The ledger's transparency log as stored: an RFC 9162 Merkle tree over the
//! booked rows, signed checkpoints (tree heads) at every closed UTC hour, and
//! the proofs a tenant checks with `dcwatt-verify`. The signing key and the
//! gauges are in `crate::transparency`.
//!
//! - The tree grows in the transaction that books rows ([`extend_tree`]): one
//!   leaf hash per row and the complete nodes it finishes, from the frontier
//!   (the right edge of the tree), never re-hashing the ledger. Stored: the
//!   complete nodes of levels 4, 8, 12, … (`ledger_tree`, one per 16 rows and
//!   fewer above); the leaves and the levels between are computed from the
//!   rows themselves when a proof needs them.
//! - [`Store::checkpoint_due`], called by the background job that books
//!   ledger minutes, signs `(tree size, root, hour, collector id)` once per
//!   closed hour with the `[ledger] signing_key_file` key (the message is
//!   [`dcwatt_verify::checkpoint::message`]).
//! - HTTP (in `http::ledger`): `GET /v1/ledger/public-key` (open),
//!   `GET /v1/ledger/checkpoints` and `GET /v1/ledger/consistency` (any
//!   tenant token or the operator's); a statement's inclusion proofs come
//!   from [`Store::statement_proofs`].
//!
//! Size: the Merkle tree, its stored nodes, checkpoints and proofs are one
//! mechanism; splitting them would spread one invariant over files.

use std::collections::HashMap;

use dcwatt_verify::check::{Proofs, ProvenRow};
use dcwatt_verify::checkpoint::{self, Checkpoint, CheckpointError};
use dcwatt_verify::merkle::{self, Frontier, Hash, Nodes, ProofError};
use dcwatt_verify::row::Row;
use rusqlite::{params, Connection, OptionalExtension};

use dcwatt_wire::time::{HOUR_MS, MINUTE_MS};

use super::rows::{read_row, ROW_COLUMNS};
use crate::site::Site;
use crate::store::{Store, StoreError};

/// Complete nodes are stored on the levels that are multiples of this (not
/// the leaves, which are the rows' own hashes): a subtree hash below the
/// first stored level is one read of at most 16 rows, above it at most 8
/// stored reads.
pub const STORED_EVERY: u32 = 4;

const _: () = assert!(STORED_EVERY.is_power_of_two());

/// Whether complete nodes of `level` are stored (levels 4, 8, 12, …; the
/// leaves and the levels between are computed from the ledger's rows).
fn stored(level: u32) -> bool {
    level != 0 && level & (STORED_EVERY - 1) == 0
}

/// At most this many checkpoints per answer (over a year of hours).
pub const MAX_CHECKPOINTS: usize = 10_000;

/// A failure of the tree or of signing.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A statement failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A node the tree needs is not stored.
    #[error("node {index} of level {level} is missing")]
    Missing {
        /// Its level.
        level: u32,
        /// Its index.
        index: u64,
    },
    /// A stored hash is not 32 bytes.
    #[error("node {index} of level {level} is not a 32-byte hash")]
    Corrupt {
        /// Its level.
        level: u32,
        /// Its index.
        index: u64,
    },
    /// Ledger row ids are not 1, 2, 3, …: the tree cannot take them.
    #[error("ledger row {found} where row {expected} was expected: run `dcwatt-collector ledger verify`")]
    NotContiguous {
        /// The id the tree needs next.
        expected: i64,
        /// The id found.
        found: i64,
    },
    /// The ledger holds fewer rows than the latest checkpoint.
    #[error("the ledger has {size} rows but checkpoint {hour_ms} signed {signed}: rows were removed; nothing more is signed")]
    Shrunk {
        /// Rows now.
        size: u64,
        /// Rows signed.
        signed: u64,
        /// The checkpoint's hour.
        hour_ms: i64,
    },
    /// A proof could not be built.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// Signing failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl From<TreeError> for StoreError {
    fn from(e: TreeError) -> StoreError {
        match e {
            TreeError::Sql(e) => StoreError::Sql(e),
            other => StoreError::Tree(other.to_string()),
        }
    }
}

/// Complete subtree hashes: levels below [`STORED_EVERY`] computed from the
/// ledger's rows (read a block of `2^STORED_EVERY` at a time), the others
/// read from `ledger_tree`; cached for one use.
pub struct StoredNodes<'c> {
    conn: &'c Connection,
    cache: HashMap<(u32, u64), Hash>,
}

impl<'c> StoredNodes<'c> {
    /// Reads from `conn` (a transaction derefs to one).
    pub fn new(conn: &'c Connection) -> StoredNodes<'c> {
        StoredNodes {
            conn,
            cache: HashMap::new(),
        }
    }

    /// Caches the leaf hashes of the block of rows holding leaf `index`.
    fn load_block(&mut self, index: u64) -> Result<(), TreeError> {
        let first = index >> STORED_EVERY << STORED_EVERY;
        let missing = TreeError::Missing { level: 0, index };
        let first_id = i64::try_from(first).map_err(|_| missing)?;
        let rows: Vec<Row> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM ledger WHERE id > ?1 AND id <= ?2 ORDER BY id",
                ROW_COLUMNS
            ))?
            .query_map(
                params![first_id, first_id.saturating_add(1 << STORED_EVERY)],
                read_row,
            )?
            .collect::<Result<_, _>>()?;
        for (k, row) in rows.iter().enumerate() {
            let expected = first_id + k as i64 + 1;
            if row.id != expected {
                return Err(TreeError::NotContiguous {
                    expected,
                    found: row.id,
                });
            }
            self.cache.insert((0, first + k as u64), row.leaf_hash());
        }
        Ok(())
    }
}

impl Nodes for StoredNodes<'_> {
    type Error = TreeError;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, TreeError> {
        if let Some(h) = self.cache.get(&(level, index)) {
            return Ok(*h);
        }
        let missing = TreeError::Missing { level, index };
        let hash = if level == 0 {
            self.load_block(index)?;
            *self.cache.get(&(0, index)).ok_or(missing)?
        } else if stored(level) {
            let idx = i64::try_from(index).map_err(|_| missing)?;
            let blob: Option<Vec<u8>> = self
                .conn
                .prepare_cached("SELECT hash FROM ledger_tree WHERE level = ?1 AND idx = ?2")?
                .query_row(params![level, idx], |r| r.get(0))
                .optional()?;
            let blob = blob.ok_or(TreeError::Missing { level, index })?;
            merkle::to_hash(&blob).map_err(|_| TreeError::Corrupt { level, index })?
        } else {
            let left_index = index.checked_mul(2).ok_or(missing)?;
            let left = self.node(level - 1, left_index)?;
            let right = self.node(level - 1, left_index + 1)?;
            merkle::node_hash(&left, &right)
        };
        self.cache.insert((level, index), hash);
        Ok(hash)
    }
}

/// Leaves in the tree: the ledger's rows (ids 1 to the last).
pub fn tree_size(conn: &Connection) -> Result<u64, TreeError> {
    let max: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM ledger")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(max).unwrap_or(0))
}

/// Leaves covered by the stored nodes of level [`STORED_EVERY`] (a multiple
/// of `2^STORED_EVERY`).
fn stored_leaves(conn: &Connection) -> Result<u64, TreeError> {
    let max: Option<i64> = conn
        .prepare_cached("SELECT MAX(idx) FROM ledger_tree WHERE level = ?1")?
        .query_row(params![STORED_EVERY], |r| r.get(0))?;
    Ok(max.map_or(0, |m| (u64::try_from(m).unwrap_or(0) + 1) << STORED_EVERY))
}

/// Adds the nodes that `leaves` (the rows just booked, in id order: id and
/// leaf hash) complete to the stored tree, after the rows booked before them
/// whose nodes are not stored yet: the last incomplete block (fewer than
/// `2^STORED_EVERY` rows), or every row of a database from before the tree.
/// Inside the booking transaction.
pub fn extend_tree(
    tx: &rusqlite::Transaction<'_>,
    leaves: &[(i64, Hash)],
) -> Result<(), TreeError> {
    let start = stored_leaves(tx)?;
    let mut frontier = Frontier::load(&mut StoredNodes::new(tx), start)?;
    let before_new = match leaves.first() {
        Some((id, _)) => id - 1,
        None => i64::try_from(tree_size(tx)?).unwrap_or(i64::MAX),
    };
    let start_id = i64::try_from(start).unwrap_or(i64::MAX);
    if start_id < before_new {
        let older: Vec<(i64, Hash)> = tx
            .prepare_cached(&format!(
                "SELECT {} FROM ledger WHERE id > ?1 AND id <= ?2 ORDER BY id",
                ROW_COLUMNS
            ))?
            .query_map(params![start_id, before_new], read_row)?
            .map(|r| r.map(|row| (row.id, row.leaf_hash())))
            .collect::<Result<_, _>>()?;
        append(tx, &mut frontier, &older)?;
    }
    append(tx, &mut frontier, leaves)
}

fn append(
    tx: &rusqlite::Transaction<'_>,
    frontier: &mut Frontier,
    leaves: &[(i64, Hash)],
) -> Result<(), TreeError> {
    let mut insert =
        tx.prepare_cached("INSERT INTO ledger_tree (level, idx, hash) VALUES (?1, ?2, ?3)")?;
    let mut made: Vec<(u32, u64, Hash)> = Vec::with_capacity(4);
    for (id, leaf) in leaves {
        let expected = i64::try_from(frontier.size())
            .ok()
            .and_then(|s| s.checked_add(1))
            .unwrap_or(i64::MAX);
        if *id != expected {
            return Err(TreeError::NotContiguous {
                expected,
                found: *id,
            });
        }
        made.clear();
        frontier.push(*leaf, |level, index, hash| {
            if stored(level) {
                made.push((level, index, *hash));
            }
        })?;
        for (level, index, hash) in &made {
            let idx = i64::try_from(*index).map_err(|_| TreeError::Missing {
                level: *level,
                index: *index,
            })?;
            insert.execute(params![level, idx, &hash[..]])?;
        }
    }
    Ok(())
}

/// The UTC hour whose every minute is booked at `now_ms`, with the collector
/// booking minutes `close_after_ms` after their end: its start, Unix ms.
pub fn last_closed_hour(now_ms: i64, close_after_ms: i64) -> i64 {
    let cutoff = now_ms
        .saturating_sub(MINUTE_MS)
        .saturating_sub(close_after_ms);
    let booked_until = cutoff.div_euclid(MINUTE_MS) * MINUTE_MS + MINUTE_MS;
    booked_until.div_euclid(HOUR_MS) * HOUR_MS - HOUR_MS
}

fn read_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        hour_ms: r.get(0)?,
        tree_size: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        root_hash: r.get(2)?,
        collector_id: r.get(3)?,
        signature: r.get(4)?,
    })
}

const CHECKPOINT_COLUMNS: &str = "hour_ms, tree_size, root_hash, collector_id, signature";

fn latest_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, TreeError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoint ORDER BY hour_ms DESC LIMIT 1"
        ))?
        .query_row([], read_checkpoint)
        .optional()?)
}

impl Store {
    /// Signs the checkpoint of the last closed hour at `now_ms`, unless it
    /// (or a later one) is signed, the tree is empty, or no key is configured.
    /// Runs after the minutes up to `now_ms` were booked.
    pub fn checkpoint_due(
        &mut self,
        site: &Site,
        now_ms: i64,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let Some(key) = &site.ledger_key else {
            return Ok(None);
        };
        let hour = last_closed_hour(now_ms, site.close_after_ms);
        let tx = self.conn.transaction()?;
        let latest = latest_checkpoint(&tx)?;
        if latest.as_ref().is_some_and(|c| c.hour_ms >= hour) {
            return Ok(None);
        }
        let size = tree_size(&tx)?;
        if let Some(c) = latest.filter(|c| c.tree_size > size) {
            return Err(TreeError::Shrunk {
                size,
                signed: c.tree_size,
                hour_ms: c.hour_ms,
            }
            .into());
        }
        if size == 0 {
            return Ok(None);
        }
        let root = Frontier::load(&mut StoredNodes::new(&tx), size)?.root();
        let cp = checkpoint::sign(key, &site.collector_id, hour, size, &root)
            .map_err(TreeError::from)?;
        tx.execute(
            &format!(
                "INSERT INTO ledger_checkpoint ({CHECKPOINT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
            ),
            params![
                cp.hour_ms,
                i64::try_from(cp.tree_size).unwrap_or(i64::MAX),
                cp.root_hash,
                cp.collector_id,
                cp.signature
            ],
        )?;
        tx.commit()?;
        Ok(Some(cp))
    }

    /// Checkpoints whose hour is in `[from_ms, to_ms)`, oldest first, at most
    /// `limit`.
    pub fn checkpoints(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let list = self
            .conn
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoint WHERE hour_ms >= ?1 AND hour_ms < ?2 ORDER BY hour_ms LIMIT ?3"
            ))?
            .query_map(params![from_ms, to_ms, limit], read_checkpoint)?
            .collect::<Result<_, _>>()?;
        Ok(list)
    }

    /// The tree's size and the latest checkpoint.
    pub fn tree_head(&self) -> Result<(u64, Option<Checkpoint>), StoreError> {
        Ok((tree_size(&self.conn)?, latest_checkpoint(&self.conn)?))
    }

    /// The consistency proof between two tree sizes, `1 ≤ from ≤ to ≤` the
    /// tree's size (checked by the caller; out of range is an error here too).
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let size = tree_size(&self.conn)?;
        if to > size {
            return Err(TreeError::Proof(ProofError::Sizes {
                from,
                to,
                why: "beyond the tree",
            })
            .into());
        }
        Ok(merkle::consistency_proof(
            &mut StoredNodes::new(&self.conn),
            from,
            to,
        )?)
    }

    /// A statement's proofs: each of `rows` (one tenant's, in id order) with
    /// its inclusion proof against the checkpoint that closes the month
    /// ending at `month_end_ms` (the first whose hour is the month's last or
    /// later and that covers every row), else the latest checkpoint.
    pub fn statement_proofs(&self, rows: &[Row], month_end_ms: i64) -> Result<Proofs, StoreError> {
        let size = tree_size(&self.conn)?;
        let size_i = i64::try_from(size).unwrap_or(i64::MAX);
        let last_id = rows.iter().map(|r| r.id).max().unwrap_or(0);
        let closing: Option<Checkpoint> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoint
                 WHERE hour_ms >= ?1 AND tree_size >= ?2 AND tree_size <= ?3 ORDER BY hour_ms LIMIT 1"
            ))?
            .query_row(
                params![month_end_ms.saturating_sub(HOUR_MS), last_id, size_i],
                read_checkpoint,
            )
            .optional()?;
        let (choice, cp) = match closing {
            Some(c) => ("month_closing", Some(c)),
            None => {
                let latest: Option<Checkpoint> = self
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM ledger_checkpoint WHERE tree_size <= ?1 ORDER BY hour_ms DESC LIMIT 1"
                    ))?
                    .query_row(params![size_i], read_checkpoint)
                    .optional()?;
                match latest {
                    Some(c) => ("latest", Some(c)),
                    None => ("none", None),
                }
            }
        };
        let mut nodes = StoredNodes::new(&self.conn);
        if let Some(c) = &cp {
            let root = merkle::root(&mut nodes, c.tree_size)?;
            if hex::encode(root) != c.root_hash {
                tracing::warn!(
                    hour_ms = c.hour_ms,
                    tree_size = c.tree_size,
                    "The ledger's tree does not match a signed checkpoint: the database was altered."
                );
            }
        }
        let signed = cp.as_ref().map_or(0, |c| c.tree_size);
        let mut proven = Vec::with_capacity(rows.len());
        let mut unproven = 0;
        for r in rows {
            let leaf = u64::try_from(r.id - 1).unwrap_or(u64::MAX);
            let proof = if leaf < signed {
                Some(
                    merkle::inclusion_proof(&mut nodes, leaf, signed)?
                        .iter()
                        .map(hex::encode)
                        .collect(),
                )
            } else {
                unproven += 1;
                None
            };
            proven.push(ProvenRow {
                row: r.clone(),
                leaf_index: leaf,
                inclusion_proof: proof,
            });
        }
        Ok(Proofs {
            checkpoint_choice: choice.to_owned(),
            checkpoint: cp,
            rows: proven,
            unproven_rows: unproven,
        })
    }
}
