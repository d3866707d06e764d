//! What `dcwatt-verify` checks, as a library: the signatures of every
//! checkpoint, their agreement (one tree per hour, never shrinking), the
//! consistency of every checkpoint with the latest, the inclusion of every
//! statement row in the statement's checkpoint, and the statement's totals
//! against its rows. The first failure stops the walk and names what failed.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::merkle::{self, hash_from_hex, Hash};
use crate::row::Row;

/// A consistency proof as `GET /v1/ledger/consistency` answers it (and as
/// the tenant saves it, one answer per file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older tree size.
    pub from_size: u64,
    /// The newer tree size.
    pub to_size: u64,
    /// The proof's hashes, hex, in RFC 9162 order.
    pub proof: Vec<String>,
}

/// One of the tenant's rows in a statement, with its proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvenRow {
    /// The row, every column.
    pub row: Row,
    /// Its Merkle leaf index (`row.id - 1`).
    pub leaf_index: u64,
    /// Its RFC 9162 inclusion proof against the statement's checkpoint, hex;
    /// `null` when the row was booked after that checkpoint.
    pub inclusion_proof: Option<Vec<String>>,
}

/// The `proofs` section of a statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proofs {
    /// Which checkpoint the proofs are against: `month_closing` (the first
    /// checkpoint from the month's last hour on that covers every row of the
    /// month), `latest` (the month is not closed, or no closing checkpoint
    /// covers its late rows) or `none` (nothing signed yet).
    pub checkpoint_choice: String,
    /// That checkpoint, with its signature.
    pub checkpoint: Option<Checkpoint>,
    /// The tenant's rows of the month, in booking order.
    pub rows: Vec<ProvenRow>,
    /// Rows without a proof (booked after the checkpoint).
    pub unproven_rows: usize,
}

/// The parts of a statement the verifier reads.
#[derive(Debug, Clone, Deserialize)]
pub struct StatementView {
    /// The tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// IT energy, kWh.
    pub it_kwh: f64,
    /// Facility-burdened energy, kWh.
    pub facility_kwh: f64,
    /// GPU-hours leased.
    pub gpu_hours: f64,
    /// Late rows.
    pub late_rows: usize,
    /// The days.
    pub days: Vec<DayView>,
    /// The rows and their proofs.
    pub proofs: Proofs,
    /// GPU service levels, when the statement carries them.
    #[serde(default)]
    pub service: Option<ServiceView>,
    /// GPU activity, idle, module and node energy, when the statement
    /// carries them.
    #[serde(default)]
    pub activity: Option<crate::activity::Activity>,
}

/// The parts of a statement's service levels the verifier reads: GPU-minutes
/// per delivery state, summed from the rows.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceView {
    /// Available GPU-minutes.
    pub available_gpu_minutes: f64,
    /// Degraded GPU-minutes.
    pub degraded_gpu_minutes: f64,
    /// Down GPU-minutes.
    pub down_gpu_minutes: f64,
    /// GPU-minutes with no data.
    pub unknown_gpu_minutes: f64,
    /// The same per lease (absent from older statements).
    #[serde(default)]
    pub leases: Vec<LeaseView>,
}

/// One lease's GPU-minutes per state in a statement's service levels.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaseView {
    /// The lease's id.
    pub id: String,
    /// Available GPU-minutes.
    pub available_gpu_minutes: f64,
    /// Degraded GPU-minutes.
    pub degraded_gpu_minutes: f64,
    /// Down GPU-minutes.
    pub down_gpu_minutes: f64,
    /// GPU-minutes with no data.
    pub unknown_gpu_minutes: f64,
}

/// The parts of a statement's day the verifier reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DayView {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// IT energy, J.
    pub it_joules: f64,
    /// Facility-burdened energy, J.
    pub facility_joules: f64,
    /// GPU-hours.
    pub gpu_hours: f64,
}

/// Everything the tenant hands the verifier.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The collector's public key, kept from the start.
    pub public_key: VerifyingKey,
    /// Saved checkpoints, each with where it came from (for messages).
    pub checkpoints: Vec<(String, Checkpoint)>,
    /// The statement.
    pub statement: StatementView,
    /// Saved consistency proofs, each with its file.
    pub consistency: Vec<(String, ConsistencyProof)>,
    /// Accept rows booked after the statement's checkpoint (no proof yet).
    pub allow_unproven: bool,
}

/// The UTC hour of a checkpoint, for messages (`YYYY-MM-DDTHH:00Z`).
pub fn hour_text(hour_ms: i64) -> String {
    let days = hour_ms.div_euclid(86_400_000);
    let hour = hour_ms.rem_euclid(86_400_000) / 3_600_000;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{hour:02}:00Z")
}

fn describe(c: &Checkpoint) -> String {
    format!(
        "checkpoint of hour {} (tree size {})",
        hour_text(c.hour_ms),
        c.tree_size
    )
}

fn hashes(list: &[String], what: &str) -> Result<Vec<Hash>, String> {
    list.iter()
        .map(|h| hash_from_hex(h).ok_or_else(|| format!("{what}: {h:?} is not 64 hex digits")))
        .collect()
}

/// Whether two sums agree to 1e-9 relative (they are summed in another order).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

/// Runs every check. `said` receives one line per check passed; the error
/// names the first failure.
pub fn verify(inputs: &Inputs, said: &mut Vec<String>) -> Result<(), String> {
    // 1. Every checkpoint's signature, the statement's included.
    let mut all: Vec<(String, Checkpoint, Hash)> = Vec::new();
    let statement_cp = inputs.statement.proofs.checkpoint.clone();
    let sources = inputs
        .checkpoints
        .iter()
        .cloned()
        .chain(statement_cp.map(|c| ("the statement".to_owned(), c)));
    for (from, c) in sources {
        let root = c
            .verify(&inputs.public_key)
            .map_err(|e| format!("{} from {from}: {e}", describe(&c)))?;
        if !all.iter().any(|(_, k, _)| *k == c) {
            all.push((from, c, root));
        }
    }
    said.push(format!(
        "ok: {} checkpoints, every signature verifies with the public key",
        all.len()
    ));
    let Some(statement_cp) = &inputs.statement.proofs.checkpoint else {
        return Err("the statement carries no checkpoint: nothing proves its rows".into());
    };
    // 2. One tree per hour, and the tree never shrinks as hours pass.
    all.sort_by_key(|(_, c, _)| (c.hour_ms, c.tree_size));
    for pair in all.windows(2) {
        let ((fa, a, ra), (fb, b, rb)) = (&pair[0], &pair[1]);
        if a.hour_ms == b.hour_ms {
            return Err(format!(
                "two different checkpoints for hour {} ({fa}: tree size {}, root {}; {fb}: tree size {}, root {}): the ledger was rewritten",
                hour_text(a.hour_ms), a.tree_size, a.root_hash, b.tree_size, b.root_hash
            ));
        }
        if b.tree_size < a.tree_size {
            return Err(format!(
                "the tree shrank from {} rows ({}, {fa}) to {} rows ({}, {fb}): rows were removed",
                a.tree_size,
                describe(a),
                b.tree_size,
                describe(b)
            ));
        }
        if a.tree_size == b.tree_size && ra != rb {
            return Err(format!(
                "{} ({fa}) and {} ({fb}) have the same size but different roots: the ledger was rewritten",
                describe(a),
                describe(b)
            ));
        }
    }
    // 3. Every checkpoint is a prefix of the latest.
    let Some((latest_from, latest, latest_root)) = all.last().cloned() else {
        return Err("no checkpoints".into());
    };
    for (from, c, root) in &all {
        if c.tree_size == latest.tree_size {
            continue;
        }
        let Some((file, p)) = inputs
            .consistency
            .iter()
            .find(|(_, p)| p.from_size == c.tree_size && p.to_size == latest.tree_size)
        else {
            return Err(format!(
                "no consistency proof from tree size {} ({}, {from}) to {} (the latest, {latest_from}): fetch /v1/ledger/consistency?from_size={}&to_size={} and pass it with --consistency",
                c.tree_size, describe(c), latest.tree_size, c.tree_size, latest.tree_size
            ));
        };
        let proof = hashes(&p.proof, file)?;
        merkle::verify_consistency(c.tree_size, latest.tree_size, root, &latest_root, &proof)
            .map_err(|e| {
                format!(
                    "{} ({from}) is not a prefix of the latest {} ({latest_from}), proof {file}: {e}: the ledger was rewritten",
                    describe(c),
                    describe(&latest)
                )
            })?;
    }
    said.push(format!(
        "ok: every checkpoint is consistent with the latest, {}",
        describe(&latest)
    ));
    // 4. Every row is in the statement's checkpoint.
    let st = &inputs.statement;
    let root = hash_from_hex(&statement_cp.root_hash)
        .ok_or_else(|| format!("{}: bad root hash", describe(statement_cp)))?;
    let mut unproven = 0usize;
    let mut last_id = 0i64;
    for p in &st.proofs.rows {
        let r = &p.row;
        if r.tenant != st.tenant {
            return Err(format!(
                "row {}: belongs to {:?}, not the statement's tenant",
                r.id, r.tenant
            ));
        }
        if r.id <= last_id {
            return Err(format!(
                "row {}: rows out of booking order or repeated",
                r.id
            ));
        }
        last_id = r.id;
        if r.compute_hash() != r.hash {
            return Err(format!(
                "row {}: its chain hash does not match its content",
                r.id
            ));
        }
        if let Some(d) = &r.delivery {
            check_delivery(r.id, d)?;
        }
        if i64::try_from(p.leaf_index)
            .ok()
            .and_then(|i| i.checked_add(1))
            != Some(r.id)
        {
            return Err(format!(
                "row {}: leaf index {} is not its id - 1",
                r.id, p.leaf_index
            ));
        }
        let Some(proof) = &p.inclusion_proof else {
            if p.leaf_index < statement_cp.tree_size {
                return Err(format!(
                    "row {}: no inclusion proof although {} covers it",
                    r.id,
                    describe(statement_cp)
                ));
            }
            unproven += 1;
            continue;
        };
        let proof = hashes(proof, &format!("row {}", r.id))?;
        merkle::verify_inclusion(
            p.leaf_index,
            statement_cp.tree_size,
            &r.leaf_hash(),
            &proof,
            &root,
        )
        .map_err(|e| {
            format!(
                "row {} (minute {}): inclusion proof against {}: {e}: this row, or the ledger around it, is not what was signed",
                r.id,
                r.minute_ms,
                describe(statement_cp)
            )
        })?;
    }
    if unproven != st.proofs.unproven_rows {
        return Err(format!(
            "the statement says {} unproven rows, {unproven} found",
            st.proofs.unproven_rows
        ));
    }
    said.push(format!(
        "ok: {} rows of {} for {} included in {} ({})",
        st.proofs.rows.len() - unproven,
        st.tenant,
        st.month,
        describe(statement_cp),
        st.proofs.checkpoint_choice
    ));
    if unproven > 0 {
        if !inputs.allow_unproven {
            return Err(format!(
                "{unproven} rows were booked after {} and have no proof yet: verify again after the next checkpoint, or pass --allow-unproven",
                describe(statement_cp)
            ));
        }
        said.push(format!(
            "note: {unproven} rows booked after the checkpoint are not proven yet (--allow-unproven)"
        ));
    }
    // 5. The totals are the sums of the rows.
    let rows = st.proofs.rows.iter().map(|p| &p.row);
    let it: f64 = rows.clone().map(|r| r.it_joules).sum();
    let fac: f64 = rows.clone().map(|r| r.facility_joules.unwrap_or(0.0)).sum();
    // Summed as f64: hostile values must not overflow.
    let gpu_ms: f64 = rows.clone().map(|r| r.gpu_ms as f64).sum();
    let late = rows.clone().filter(|r| r.late).count();
    let day_it: f64 = st.days.iter().map(|d| d.it_joules).sum();
    let day_fac: f64 = st.days.iter().map(|d| d.facility_joules).sum();
    let day_gpu: f64 = st.days.iter().map(|d| d.gpu_hours).sum();
    let checks = [
        ("it_kwh", st.it_kwh, it / 3.6e6),
        ("facility_kwh", st.facility_kwh, fac / 3.6e6),
        ("gpu_hours", st.gpu_hours, gpu_ms / 3_600_000.0),
        ("the days' it_joules", day_it, it),
        ("the days' facility_joules", day_fac, fac),
        ("the days' gpu_hours", day_gpu, gpu_ms / 3_600_000.0),
    ];
    for (what, stated, summed) in checks {
        if !close(stated, summed) {
            return Err(format!(
                "{what} is {stated} but its rows add up to {summed}"
            ));
        }
    }
    if late != st.late_rows {
        return Err(format!(
            "late_rows is {} but {late} rows are late",
            st.late_rows
        ));
    }
    said.push(format!(
        "ok: totals equal the sum of the rows: {} kWh IT, {} kWh facility, {} GPU-hours",
        st.it_kwh, st.facility_kwh, st.gpu_hours
    ));
    // 6. Activity, idle, module and node energy are those of the rows.
    check_activity(st)?;
    if let Some(a) = &st.activity {
        said.push(format!(
            "ok: activity equals the rows': {} kWh idle, {} kWh module, {} kWh node",
            a.idle_kwh.unwrap_or(0.0),
            a.module_kwh,
            a.node_kwh
        ));
    }
    // 7. The service levels are the sums of the rows' delivery.
    if let Some(sv) = &st.service {
        let sum = |f: fn(&crate::row::Delivery) -> i64| -> f64 {
            rows.clone()
                .filter_map(|r| r.delivery.as_ref())
                .map(|d| f(d) as f64)
                .sum::<f64>()
                / 60_000.0
        };
        let checks = [
            (
                "available_gpu_minutes",
                sv.available_gpu_minutes,
                sum(|d| d.available_ms),
            ),
            (
                "degraded_gpu_minutes",
                sv.degraded_gpu_minutes,
                sum(|d| d.degraded_ms),
            ),
            ("down_gpu_minutes", sv.down_gpu_minutes, sum(|d| d.down_ms)),
            (
                "unknown_gpu_minutes",
                sv.unknown_gpu_minutes,
                sum(|d| d.unknown_ms),
            ),
        ];
        for (what, stated, summed) in checks {
            if !close(stated, summed) {
                return Err(format!(
                    "service.{what} is {stated} but its rows add up to {summed}"
                ));
            }
            // The leases add up to the same.
            if !sv.leases.is_empty() {
                let of = |l: &LeaseView| match what {
                    "available_gpu_minutes" => l.available_gpu_minutes,
                    "degraded_gpu_minutes" => l.degraded_gpu_minutes,
                    "down_gpu_minutes" => l.down_gpu_minutes,
                    _ => l.unknown_gpu_minutes,
                };
                let leases: f64 = sv.leases.iter().map(of).sum();
                if !close(leases, summed) {
                    return Err(format!(
                        "service.leases add up to {leases} {what} but the rows to {summed}"
                    ));
                }
            }
        }
        said.push(format!(
            "ok: service levels equal the sum of the rows: {} available, {} degraded, {} down, {} unknown GPU-minutes",
            sv.available_gpu_minutes, sv.degraded_gpu_minutes, sv.down_gpu_minutes, sv.unknown_gpu_minutes
        ));
    }
    Ok(())
}

/// The statement's activity section is what its rows give (absent exactly
/// when the rows carry none).
fn check_activity(st: &StatementView) -> Result<(), String> {
    let summed = crate::activity::Activity::of_rows(st.proofs.rows.iter().map(|p| &p.row));
    match (&st.activity, &summed) {
        (None, None) => Ok(()),
        // Statements from collectors before ledger v4 carry no activity
        // section even where rows have node energy.
        (None, Some(b))
            if b.sm_active_mean.is_none()
                && b.tensor_active_mean.is_none()
                && b.idle_kwh.is_none()
                && b.module_kwh == 0.0 =>
        {
            Ok(())
        }
        (None, Some(_)) => {
            Err("activity is missing but the rows carry activity, idle or module energy".into())
        }
        (Some(_), None) => Err("activity is stated but no row carries any".into()),
        (Some(a), Some(b)) => {
            for ((what, stated), (_, rows)) in a.fields().into_iter().zip(b.fields()) {
                let same = match (stated, rows) {
                    (Some(x), Some(y)) => close(x, y),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    return Err(format!(
                        "activity.{what} is {stated:?} but its rows give {rows:?}"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// A row's list of GPUs not available matches its digest and its counts.
fn check_delivery(id: i64, d: &crate::row::Delivery) -> Result<(), String> {
    if crate::row::delivery_digest(&d.gpus) != d.digest {
        return Err(format!(
            "row {id}: its list of GPUs not available does not match the row's delivery digest"
        ));
    }
    for (state, stated) in [
        ("degraded", d.degraded_ms),
        ("down", d.down_ms),
        ("unknown", d.unknown_ms),
    ] {
        let listed: f64 = d
            .gpus
            .iter()
            .filter(|e| e.state == state)
            .map(|e| e.ms as f64)
            .sum();
        if listed != stated as f64 {
            return Err(format!(
                "row {id}: {state}_ms is {stated} but its listed GPUs add up to {listed}"
            ));
        }
    }
    if d.gpus
        .iter()
        .any(|e| !matches!(e.state.as_str(), "degraded" | "down" | "unknown"))
    {
        return Err(format!("row {id}: a listed GPU has an unknown state"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hours_print_as_utc() {
        assert_eq!(super::hour_text(0), "1970-01-01T00:00Z");
        assert_eq!(
            super::hour_text(1_767_225_600_000 + 5 * 3_600_000),
            "2026-01-01T05:00Z"
        );
        assert_eq!(super::hour_text(1_835_395_200_000), "2028-02-29T00:00Z");
    }
}
