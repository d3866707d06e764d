//! # dcwatt-verify
//!
//! What a tenant needs to check its energy bill without trusting the
//! operator, and what the collector uses to produce the proofs, so that both
//! sides share one definition of every byte:
//!
//! - [`merkle`]: RFC 9162 hashing, inclusion and consistency proofs, the
//!   incremental frontier.
//! - [`row`]: a ledger row and its canonical bytes (the Merkle leaf).
//! - [`checkpoint`]: the signed tree head and its exact message.
//! - [`check`]: the verifier's checks over saved checkpoints, consistency
//!   proofs and a statement.
//! - [`activity`]: a statement's GPU activity, idle and module energy,
//!   summed from its rows.
//!
//! No network, no database: the `dcwatt-verify` binary reads files.

pub mod activity;
pub mod check;
pub mod checkpoint;
pub mod merkle;
pub mod row;
