//! One ledger row as the collector books it and a statement carries it, its
//! canonical bytes and its hashes.
//!
//! The canonical bytes are the UTF-8 text the hash chain has always hashed
//! (fields separated by `|`, every float as the 16 hex digits of its IEEE 754
//! bits, an absent value as `-`):
//!
//! ```text
//! dcwatt-ledger-v1|{id}|{minute_ms}|{tenant}|{it_joules}|{facility_joules}|{pue}|{pue_basis}|{gpu_ms}|{late 0/1}|{prev_hash}
//! ```
//!
//! and, for a row with statistics (any of utilization, peak power, node
//! energy present, or excursions above 0), that text wrapped as
//!
//! ```text
//! dcwatt-ledger-v2|{the v1 text}|{util_mean}|{peak_watts}|{excursions}|{node_joules}
//! ```
//!
//! and, for a row with delivery data (GPU service levels: the leased GPU time
//! of the minute per delivery state, and the digest of its list of GPUs not
//! available), that text (v1 or v2) wrapped once more as
//!
//! ```text
//! dcwatt-ledger-v3|{the v1 or v2 text}|{available_ms}|{degraded_ms}|{down_ms}|{unknown_ms}|{delivery_digest}
//! ```
//!
//! where `delivery_digest` is [`delivery_digest`] of the row's GPUs that were
//! not available (kept beside the row, carried in statements), so a changed,
//! added or dropped incident breaks the row's hash. Rows without delivery
//! data keep their v1/v2 bytes.
//!
//! and, for a row with activity or module data (mean SM or tensor activity,
//! idle energy or module energy present), that text (v1, v2 or v3) wrapped
//! once more as
//!
//! ```text
//! dcwatt-ledger-v4|{the v1, v2 or v3 text}|{sm_active_mean}|{tensor_active_mean}|{idle_joules}|{module_joules}
//! ```
//!
//! Rows without them keep their earlier bytes.
//!
//! They cover every column of the row except `hash`, which is derived from
//! them. The chain hash is `hex(SHA-256(canonical))`; the row's Merkle leaf is
//! `SHA-256(0x00 ‖ canonical)` ([`crate::merkle::leaf_hash`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::{self, Hash};

/// The previous hash of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One booked row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Position in the chain, from 1 (its Merkle leaf index is `id - 1`).
    pub id: i64,
    /// The UTC minute, Unix ms.
    pub minute_ms: i64,
    /// Tenant, `_unleased` or `_unattributed`.
    pub tenant: String,
    /// IT energy of its GPUs in the minute, J.
    pub it_joules: f64,
    /// IT energy × PUE, J, when a PUE was available.
    pub facility_joules: Option<f64>,
    /// The PUE applied.
    pub pue: Option<f64>,
    /// Where the PUE came from: `minute`, `24h` or `none`.
    pub pue_basis: String,
    /// GPU time leased in the minute, ms.
    pub gpu_ms: i64,
    /// Booked after an earlier row for the same minute (late data).
    pub late: bool,
    /// Mean utilization of its GPUs in the minute, 0..1 (time-weighted by
    /// lease share), when they reported any.
    pub util_mean: Option<f64>,
    /// Σ over its GPUs of each GPU's highest power reading in the minute, W:
    /// an upper bound of its peak power (GPUs of one job peak together).
    pub peak_watts: Option<f64>,
    /// Thermal excursions that started on its GPUs in the minute.
    pub excursions: i64,
    /// Its share of metered nodes' energy beyond their GPUs, J (part of
    /// `it_joules`), where its GPUs' nodes are metered.
    pub node_joules: Option<f64>,
    /// GPU service levels of the minute (from version 3 on), when booked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// GPU-time-weighted mean GPM SM activity of its GPUs in the minute,
    /// 0..1, when any of them has GPM (from version 4 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_active_mean: Option<f64>,
    /// GPU-time-weighted mean GPM tensor activity, 0..1 (version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_active_mean: Option<f64>,
    /// Its GPUs' energy while their SM activity was below the idle
    /// threshold, J (part of its GPU energy; version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_joules: Option<f64>,
    /// Its share of superchip modules' energy beyond their GPUs (Grace CPU,
    /// LPDDR, board), J (part of `it_joules`; version 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_joules: Option<f64>,
    /// The previous row's hash.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

impl Row {
    /// The canonical bytes (see the module documentation).
    pub fn canonical(&self) -> String {
        let bits = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{:016x}", x.to_bits()));
        let content = format!(
            "dcwatt-ledger-v1|{}|{}|{}|{:016x}|{}|{}|{}|{}|{}|{}",
            self.id,
            self.minute_ms,
            self.tenant,
            self.it_joules.to_bits(),
            bits(self.facility_joules),
            bits(self.pue),
            self.pue_basis,
            self.gpu_ms,
            u8::from(self.late),
            self.prev_hash
        );
        // Rows with statistics (from version 2 on) cover them too; a row
        // without any is exactly as version 1 wrote it, so older chains verify.
        let plain = self.util_mean.is_none()
            && self.peak_watts.is_none()
            && self.excursions == 0
            && self.node_joules.is_none();
        let content = if plain {
            content
        } else {
            format!(
                "dcwatt-ledger-v2|{content}|{}|{}|{}|{}",
                bits(self.util_mean),
                bits(self.peak_watts),
                self.excursions,
                bits(self.node_joules)
            )
        };
        let content = match &self.delivery {
            None => content,
            Some(d) => format!(
                "dcwatt-ledger-v3|{content}|{}|{}|{}|{}|{}",
                d.available_ms, d.degraded_ms, d.down_ms, d.unknown_ms, d.digest
            ),
        };
        // Activity and module energy (version 4); rows without keep their bytes.
        if self.sm_active_mean.is_none()
            && self.tensor_active_mean.is_none()
            && self.idle_joules.is_none()
            && self.module_joules.is_none()
        {
            content
        } else {
            format!(
                "dcwatt-ledger-v4|{content}|{}|{}|{}|{}",
                bits(self.sm_active_mean),
                bits(self.tensor_active_mean),
                bits(self.idle_joules),
                bits(self.module_joules)
            )
        }
    }

    /// The hash of this row's id and content after `prev_hash` (the chain).
    pub fn compute_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical().as_bytes()))
    }

    /// The chain hash and the Merkle leaf hash at once (the canonical bytes
    /// written once: the booking path's cost).
    pub fn hashes(&self) -> (String, Hash) {
        let canonical = self.canonical();
        (
            hex::encode(Sha256::digest(canonical.as_bytes())),
            merkle::leaf_hash(canonical.as_bytes()),
        )
    }

    /// The row's Merkle leaf hash, `SHA-256(0x00 ‖ canonical)`.
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(self.canonical().as_bytes())
    }
}

/// What a row's GPUs delivered in its minute: leased GPU time per state, ms,
/// and the digest of the GPUs that were not available.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// GPU time up and reporting, not degraded, ms.
    pub available_ms: i64,
    /// GPU time up but throttled, power-braked, capped below its default
    /// limit or in a thermal excursion, ms.
    pub degraded_ms: i64,
    /// GPU time down (lost, reset required, NVML errors), ms.
    pub down_ms: i64,
    /// GPU time with no data from the node (an agent or network outage), ms.
    pub unknown_ms: i64,
    /// [`delivery_digest`] of `gpus`.
    pub digest: String,
    /// The GPU-minutes of the row that were not available, sorted by UUID
    /// (not hashed into the row directly: through `digest`). Statements
    /// carry them; a row read for the chain alone may leave them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<DeliveryEntry>,
}

/// One GPU-minute of a row that was not available.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeliveryEntry {
    /// The GPU's UUID.
    pub uuid: String,
    /// `degraded`, `down` or `unknown`.
    pub state: String,
    /// Why (`thermal`, `power_brake`, `power_cap`, `thermal_excursion`,
    /// `gpu_down`, `no_data`).
    pub reason: String,
    /// Whose: `facility` (a CDU excursion in the GPU's zone), `gpu`, or
    /// `unknown` (no data).
    pub cause: String,
    /// The tenant's leased time of that GPU-minute, ms.
    pub ms: i64,
}

/// The digest of a row's list of GPUs not available: hex SHA-256 of
/// `dcwatt-delivery-v1` followed, for each entry in (UUID, state, reason,
/// cause, ms) order, by `\n{uuid}|{state}|{reason}|{cause}|{ms}`.
pub fn delivery_digest(entries: &[DeliveryEntry]) -> String {
    let mut sorted: Vec<&DeliveryEntry> = entries.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    h.update(b"dcwatt-delivery-v1");
    for e in sorted {
        h.update(format!("\n{}|{}|{}|{}|{}", e.uuid, e.state, e.reason, e.cause, e.ms).as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            id: 3,
            minute_ms: 60_000,
            tenant: "lab-a".into(),
            it_joules: 1.0,
            facility_joules: None,
            pue: None,
            pue_basis: "none".into(),
            gpu_ms: 60_000,
            late: false,
            util_mean: None,
            peak_watts: None,
            excursions: 0,
            node_joules: None,
            delivery: None,
            sm_active_mean: None,
            tensor_active_mean: None,
            idle_joules: None,
            module_joules: None,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn rows_without_delivery_keep_their_bytes_and_v3_wraps_them() {
        let plain = row();
        let v1 =
            format!("dcwatt-ledger-v1|3|60000|lab-a|3ff0000000000000|-|-|none|60000|0|{GENESIS}");
        assert_eq!(plain.canonical(), v1);
        let gpus = vec![DeliveryEntry {
            uuid: "GPU-1".into(),
            state: "down".into(),
            reason: "gpu_down".into(),
            cause: "gpu".into(),
            ms: 60_000,
        }];
        let digest = delivery_digest(&gpus);
        let mut r = row();
        r.delivery = Some(Delivery {
            available_ms: 0,
            degraded_ms: 0,
            down_ms: 60_000,
            unknown_ms: 0,
            digest: digest.clone(),
            gpus,
        });
        assert_eq!(
            r.canonical(),
            format!("dcwatt-ledger-v3|{v1}|0|0|60000|0|{digest}")
        );
        // A changed state count, or a changed list, changes the hash.
        let h = r.compute_hash();
        let mut moved = r.clone();
        if let Some(d) = moved.delivery.as_mut() {
            d.down_ms = 0;
            d.available_ms = 60_000;
        }
        assert_ne!(moved.compute_hash(), h);
        let mut other = r.clone();
        if let Some(d) = other.delivery.as_mut() {
            d.gpus[0].state = "degraded".into();
            d.digest = delivery_digest(&d.gpus);
        }
        assert_ne!(other.compute_hash(), h);
        // The list's order does not matter, its content does.
        assert_eq!(
            delivery_digest(&[]),
            hex::encode(Sha256::digest(b"dcwatt-delivery-v1"))
        );
    }

    #[test]
    fn activity_and_module_energy_wrap_as_v4() {
        let v1 =
            format!("dcwatt-ledger-v1|3|60000|lab-a|3ff0000000000000|-|-|none|60000|0|{GENESIS}");
        let mut r = row();
        r.module_joules = Some(2.0);
        assert_eq!(
            r.canonical(),
            format!("dcwatt-ledger-v4|{v1}|-|-|-|4000000000000000")
        );
        r.sm_active_mean = Some(0.5);
        r.idle_joules = Some(1.0);
        assert_eq!(
            r.canonical(),
            format!("dcwatt-ledger-v4|{v1}|3fe0000000000000|-|3ff0000000000000|4000000000000000")
        );
        let h = r.compute_hash();
        for edit in [
            |r: &mut Row| r.idle_joules = Some(0.5),
            |r: &mut Row| r.module_joules = Some(3.0),
            |r: &mut Row| r.sm_active_mean = None,
            |r: &mut Row| r.tensor_active_mean = Some(0.1),
        ] {
            let mut e = r.clone();
            edit(&mut e);
            assert_ne!(e.compute_hash(), h, "{e:?}");
        }
    }
}
