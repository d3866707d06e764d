//! The ledger row as stored: its columns and their decoding, read by the
//! ledger (verification, statements) and by its Merkle tree (leaves).

use dcwatt_verify::row::Row;

/// The ledger columns [`read_row`] reads, in its order.
pub const ROW_COLUMNS: &str =
    "id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash, util_mean, peak_watts, excursions, node_joules, available_ms, degraded_ms, down_ms, unknown_ms, delivery_digest,
     sm_active_mean, tensor_active_mean, idle_joules, module_joules";

pub fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        minute_ms: r.get(1)?,
        tenant: r.get(2)?,
        it_joules: r.get(3)?,
        facility_joules: r.get(4)?,
        pue: r.get(5)?,
        pue_basis: r.get(6)?,
        gpu_ms: r.get(7)?,
        late: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
        util_mean: r.get(11)?,
        peak_watts: r.get(12)?,
        excursions: r.get(13)?,
        node_joules: r.get(14)?,
        delivery: match r.get::<_, Option<String>>(19)? {
            None => None,
            Some(digest) => Some(dcwatt_verify::row::Delivery {
                available_ms: r.get::<_, Option<i64>>(15)?.unwrap_or(0),
                degraded_ms: r.get::<_, Option<i64>>(16)?.unwrap_or(0),
                down_ms: r.get::<_, Option<i64>>(17)?.unwrap_or(0),
                unknown_ms: r.get::<_, Option<i64>>(18)?.unwrap_or(0),
                digest,
                gpus: Vec::new(),
            }),
        },
        sm_active_mean: r.get(20)?,
        tensor_active_mean: r.get(21)?,
        idle_joules: r.get(22)?,
        module_joules: r.get(23)?,
    })
}
