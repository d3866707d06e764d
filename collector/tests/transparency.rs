//! The ledger's transparency log: append-only triggers, the Merkle tree grown
//! with the bookings, signed hourly checkpoints, consistency and inclusion
//! proofs, and who may read them through the API.

use std::path::Path;
use std::time::{Duration, Instant};

use dcwatt_collector::config::{token_hash, Config, Site};
use dcwatt_collector::store::Store;
use dcwatt_verify::check::{self, ConsistencyProof, Inputs, StatementView};
use dcwatt_verify::checkpoint::{self, Checkpoint};
use dcwatt_verify::merkle::{self, hash_from_hex, MemTree};
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const LAB_B: &str = "lab-b-token";
const AGENT: &str = "agent-1-token";
const HOUR: i64 = 3_600_000;

fn config(dir: &Path) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    let key = dir.join("ledger.key");
    if !key.exists() {
        dcwatt_collector::transparency::write_new_key(&key).unwrap();
    }
    format!(
        "[ledger]\npath = \"{}\"\nsigning_key_file = \"{}\"\ncollector_id = \"hall-1.collector\"\n\
         [operator]\ntoken_sha256 = \"{}\"\n\
         [[agents]]\nid = \"r1-n1\"\ntoken_sha256 = \"{}\"\n\
         [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
         [[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n\
         [[leases]]\ntenant = \"lab-a\"\ngpus = [\"GPU-a\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n\
         [[leases]]\ntenant = \"lab-b\"\ngpus = [\"GPU-b\"]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2030-01-01T00:00:00Z\"\n",
        dir.join("c.sqlite").display(),
        key.display(),
        h(OPERATOR),
        h(AGENT),
        h(LAB_A),
        h(LAB_B)
    )
}

fn site(dir: &Path) -> Site {
    Config::from_toml(&config(dir)).unwrap().build().unwrap()
}

/// Opens the open-minute table beside the store and adds `rows` (minute,
/// owner, joules), as the ingest path would have attributed them.
fn attribute(db: &Path, rows: &[(i64, &str, f64)]) {
    let c = rusqlite::Connection::open(db).unwrap();
    for (minute, owner, joules) in rows {
        c.execute(
            "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms) VALUES (?1, ?2, ?3, 60000)",
            rusqlite::params![minute, owner, joules],
        )
        .unwrap();
    }
}

/// Every booked row's leaf hash, read through the statement of each owner.
fn ledger_leaves(db: &Path) -> Vec<merkle::Hash> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash, util_mean, peak_watts, excursions, node_joules, sm_active_mean, tensor_active_mean, idle_joules, module_joules FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(dcwatt_collector::store::ledger::Row {
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
            sm_active_mean: r.get(15)?,
            tensor_active_mean: r.get(16)?,
            idle_joules: r.get(17)?,
            module_joules: r.get(18)?,
            delivery: None,
        })
    })
    .unwrap()
    .map(|r| r.unwrap().leaf_hash())
    .collect()
}

#[test]
fn booked_rows_cannot_be_updated_or_deleted_and_pruning_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path());
    let db = dir.path().join("c.sqlite");
    let mut store = Store::open(&db).unwrap();
    let t0 = 1_788_000_000_000i64.div_euclid(HOUR) * HOUR;
    // Ten minutes of two tenants: 20 rows, one stored node (16 leaves).
    let rows: Vec<(i64, &str, f64)> = (0..10)
        .flat_map(|m| {
            [
                (t0 + m * 60_000, "lab-a", 10.0),
                (t0 + m * 60_000, "lab-b", 20.0),
            ]
        })
        .collect();
    attribute(&db, &rows);
    assert_eq!(
        store.close_minutes(&site, t0 + 20 * 60_000, None).unwrap(),
        20
    );
    assert!(store
        .checkpoint_due(&site, t0 + HOUR + 10 * 60_000)
        .unwrap()
        .is_some());
    let c = rusqlite::Connection::open(&db).unwrap();
    for sql in [
        "UPDATE ledger SET it_joules = 1 WHERE id = 1",
        "DELETE FROM ledger WHERE id = 2",
        "UPDATE ledger_tree SET hash = x'00' WHERE level = 4",
        "DELETE FROM ledger_tree",
        "UPDATE ledger_checkpoint SET tree_size = 1",
        "DELETE FROM ledger_checkpoint",
    ] {
        let e = c.execute_batch(sql).unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    // Retention, however late it runs, never touches the ledger.
    store.prune(t0 + 1000 * 86_400_000).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
    assert_eq!(store.verify_ledger().unwrap().broken, None);
}

#[test]
fn an_existing_database_gains_the_triggers_and_its_rows_join_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path());
    let db = dir.path().join("c.sqlite");
    let t0 = 1_788_000_000_000i64.div_euclid(HOUR) * HOUR;
    {
        // Rows booked by a collector from before the tree: drop what it lacked.
        let mut store = Store::open(&db).unwrap();
        attribute(&db, &[(t0, "lab-a", 1.0), (t0 + 60_000, "lab-a", 2.0)]);
        store.close_minutes(&site, t0 + 10 * 60_000, None).unwrap();
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(
                "DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;
                 DROP TABLE ledger_tree; DROP TABLE ledger_checkpoint;",
            )
            .unwrap();
    }
    let mut store = Store::open(&db).unwrap();
    let e = rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DELETE FROM ledger")
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    // The next booking pass catches the tree up with the old rows, then adds the new.
    attribute(&db, &[(t0 + 20 * 60_000, "lab-b", 3.0)]);
    store.close_minutes(&site, t0 + 30 * 60_000, None).unwrap();
    let cp = store
        .checkpoint_due(&site, t0 + HOUR + 5 * 60_000)
        .unwrap()
        .unwrap();
    let mut tree = MemTree {
        leaves: ledger_leaves(&db),
    };
    assert_eq!(cp.tree_size, 3);
    assert_eq!(
        cp.root_hash,
        hex::encode(merkle::root(&mut tree, 3).unwrap())
    );
}

#[test]
fn hourly_checkpoints_are_signed_once_and_every_pair_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let site = site(dir.path());
    let key = site.ledger_key.as_ref().unwrap().verifying_key();
    let db = dir.path().join("c.sqlite");
    let mut store = Store::open(&db).unwrap();
    let t0 = 1_788_000_000_000i64.div_euclid(HOUR) * HOUR;
    // Five hours, a growing number of rows in each (1, 2, 3, 5, 8 minutes × 3 owners).
    for (h, minutes) in [1i64, 2, 3, 5, 8].into_iter().enumerate() {
        let hour = t0 + h as i64 * HOUR;
        let rows: Vec<(i64, &str, f64)> = (0..minutes)
            .flat_map(|m| {
                let minute = hour + m * 60_000;
                [
                    (minute, "lab-a", 100.0 + m as f64),
                    (minute, "lab-b", 50.0),
                    (minute, "_unleased", 1.5),
                ]
            })
            .collect();
        attribute(&db, &rows);
        // The hour closes `close_after` + 1 min after its end.
        let now = hour + HOUR + 3 * 60_000 + 1;
        store.close_minutes(&site, now, None).unwrap();
        let cp = store.checkpoint_due(&site, now).unwrap().unwrap();
        assert_eq!(cp.hour_ms, hour);
        assert_eq!(cp.collector_id, "hall-1.collector");
        // Signed once per hour.
        assert_eq!(store.checkpoint_due(&site, now + 60_000).unwrap(), None);
    }
    let cps = store.checkpoints(i64::MIN, i64::MAX, 100).unwrap();
    let sizes: Vec<u64> = cps.iter().map(|c| c.tree_size).collect();
    assert_eq!(sizes, [3, 9, 18, 33, 57]);
    let mut tree = MemTree {
        leaves: ledger_leaves(&db),
    };
    for (i, a) in cps.iter().enumerate() {
        let root_a = a.verify(&key).unwrap();
        assert_eq!(root_a, merkle::root(&mut tree, a.tree_size).unwrap());
        for b in &cps[i..] {
            let root_b = hash_from_hex(&b.root_hash).unwrap();
            let proof = store.consistency_proof(a.tree_size, b.tree_size).unwrap();
            merkle::verify_consistency(a.tree_size, b.tree_size, &root_a, &root_b, &proof).unwrap();
        }
    }
    // A statement of a "month" ending with hour 1 proves lab-a's rows of
    // hours 0 and 1 against the checkpoint that closed hour 1; a month not
    // closed by any checkpoint, against the latest.
    let rows = store.tenant_rows("lab-a", t0, t0 + 2 * HOUR).unwrap();
    assert_eq!(rows.len(), 3);
    let p = store.statement_proofs(&rows, t0 + 2 * HOUR).unwrap();
    assert_eq!(p.checkpoint_choice, "month_closing");
    assert_eq!(p.checkpoint.as_ref().unwrap(), &cps[1]);
    let p_latest = store.statement_proofs(&rows, t0 + 9 * HOUR).unwrap();
    assert_eq!(p_latest.checkpoint_choice, "latest");
    assert_eq!(p_latest.checkpoint.as_ref().unwrap(), &cps[4]);
    for p in [p, p_latest] {
        let cp = p.checkpoint.unwrap();
        let root = cp.verify(&key).unwrap();
        assert_eq!(p.unproven_rows, 0);
        for r in &p.rows {
            assert_eq!(r.row.tenant, "lab-a");
            let proof: Vec<_> = r
                .inclusion_proof
                .as_ref()
                .unwrap()
                .iter()
                .map(|h| hash_from_hex(h).unwrap())
                .collect();
            merkle::verify_inclusion(
                r.leaf_index,
                cp.tree_size,
                &r.row.leaf_hash(),
                &proof,
                &root,
            )
            .unwrap();
        }
    }
    // A forged checkpoint (another size under the same signature) is refused.
    let mut forged = cps[2].clone();
    forged.tree_size += 1;
    assert!(forged.verify(&key).is_err());
    // Signing refuses a ledger that shrank below a signed checkpoint.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("DROP TRIGGER ledger_no_delete; DELETE FROM ledger WHERE id > 50;")
        .unwrap();
    let e = store
        .checkpoint_due(&site, t0 + 9 * HOUR)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rows were removed"), "{e}");
}

/// Posts eight minutes of readings (ending 4 minutes ago) of GPU-a (lab-a,
/// 1 kW), GPU-b (lab-b, 0.5 kW) and GPU-x (nobody's, 0.25 kW).
async fn post_eight_minutes(http: &reqwest::Client, url: &str) -> i64 {
    let t0 = now_ms().div_euclid(60_000) * 60_000 - 12 * 60_000;
    let gpus = [("GPU-a", 1000.0), ("GPU-b", 500.0), ("GPU-x", 250.0)];
    for k in 0..=48i64 {
        let ts = t0 + k * 10_000;
        let batch = Batch {
            version: VERSION,
            agent: "r1-n1".into(),
            seq: k as u64 + 1,
            first_seq: None,
            node: "r1-n1".into(),
            created_ms: ts,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, g)| GpuInfo {
                    uuid: g.0.into(),
                    index: i as u32,
                    model: "NVIDIA GB300".into(),
                    module: None,
                })
                .collect(),
            readings: gpus
                .iter()
                .map(|g| Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu(g.0.into()),
                    quantity: Quantity::EnergyJoules,
                    value: g.1 * (k * 10) as f64,
                })
                .collect(),
        };
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth(AGENT)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    t0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_read_checkpoints_and_proofs_of_their_own_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop) = common::start(&config(dir.path())).await;
    let http = reqwest::Client::new();
    // After the booking job's first pass (an empty tree), the next is 10 s
    // away: the eight minutes are posted well within it, so they are booked
    // and signed in one pass.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http
            .get(format!("{url}/metrics"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if common::sample(&m, "dcwatt_ledger_tree_size").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the booking job never ran: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = post_eight_minutes(&http, &url).await;
    // The booking job books the minutes, then signs the last closed hour.
    let deadline = Instant::now() + Duration::from_secs(40);
    let metrics = loop {
        let m = http
            .get(format!("{url}/metrics"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if common::sample(&m, "dcwatt_ledger_checkpoint_timestamp_seconds").is_some() {
            break m;
        }
        assert!(Instant::now() < deadline, "no checkpoint signed: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 8 minutes × 3 owners.
    assert_eq!(
        common::sample(&metrics, "dcwatt_ledger_tree_size"),
        Some(24.0)
    );
    let hour = dcwatt_collector::transparency::last_closed_hour(now_ms(), 120_000);
    let stamp = common::sample(&metrics, "dcwatt_ledger_checkpoint_timestamp_seconds").unwrap();
    assert!(
        (stamp - hour as f64 / 1000.0).abs() <= 3600.0,
        "{stamp} vs {hour}"
    );

    // The public key is public; it is the configured key's.
    let pk: Value = common::get_json_as(&http, &format!("{url}/v1/ledger/public-key"), "x").await;
    let key_text = std::fs::read_to_string(dir.path().join("ledger.key")).unwrap();
    let key = checkpoint::parse_secret_key(&key_text)
        .unwrap()
        .verifying_key();
    assert_eq!(pk["public_key"], hex::encode(key.to_bytes()));
    assert_eq!(checkpoint::parse_public_key(&pk.to_string()).unwrap(), key);

    // Checkpoints: every tenant and the operator; nobody else.
    for (token, want) in [
        (Some(LAB_A), 200),
        (Some(LAB_B), 200),
        (Some(OPERATOR), 200),
        (Some(AGENT), 401),
        (Some("nonsense"), 401),
        (None, 401),
    ] {
        for path in [
            "/v1/ledger/checkpoints",
            "/v1/ledger/consistency?from_size=1&to_size=24",
        ] {
            let mut req = http.get(format!("{url}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.unwrap().status().as_u16();
            assert_eq!(status, want, "{path} with {token:?}");
        }
    }
    let cps: Value =
        common::get_json_as(&http, &format!("{url}/v1/ledger/checkpoints"), LAB_B).await;
    let list: Vec<Checkpoint> = serde_json::from_value(cps["checkpoints"].clone()).unwrap();
    assert_eq!(list.len(), 1, "{cps}");
    assert_eq!(list[0].tree_size, 24);
    list[0].verify(&key).unwrap();
    let empty: Value = common::get_json_as(
        &http,
        &format!("{url}/v1/ledger/checkpoints?from=0&to=1000"),
        LAB_B,
    )
    .await;
    assert_eq!(empty["checkpoints"].as_array().map(Vec::len), Some(0));

    // Consistency: every bad size is refused naming the parameter.
    for (query, names) in [
        ("from_size=0&to_size=5", "from_size"),
        ("from_size=5&to_size=25", "to_size"),
        ("from_size=9&to_size=5", "from_size"),
        ("from_size=-1&to_size=5", "from_size"),
        ("from_size=1&to_size=99999999999999999999999", "to_size"),
        ("from_size=1&to_size=18446744073709551615", "to_size"),
        ("from_size=x&to_size=5", "from_size"),
        ("to_size=5", "from_size"),
        ("from_size=1", "to_size"),
    ] {
        let (status, body) = common::get_as(
            &http,
            &format!("{url}/v1/ledger/consistency?{query}"),
            LAB_A,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(names), "{query}: {body}");
    }
    for from in 1..=24u64 {
        let p: ConsistencyProof = serde_json::from_value(
            common::get_json_as(
                &http,
                &format!("{url}/v1/ledger/consistency?from_size={from}&to_size=24"),
                LAB_A,
            )
            .await,
        )
        .unwrap();
        assert_eq!((p.from_size, p.to_size), (from, 24));
        let proof: Vec<_> = p.proof.iter().map(|h| hash_from_hex(h).unwrap()).collect();
        assert_eq!(proof.is_empty(), from == 24);
    }

    // The statement: lab-a's rows only, each with its proof; lab-b's token is refused.
    let month = {
        let (y, m, _) = dcwatt_wire::time::civil_from_days(t0 / 86_400_000);
        format!("{y:04}-{m:02}")
    };
    let path = format!("{url}/v1/tenants/lab-a/statement?month={month}");
    assert_eq!(common::get_as(&http, &path, LAB_B).await.0, 403);
    assert_eq!(common::get_as(&http, &path, "nonsense").await.0, 401);
    let (status, text) = common::get_as(&http, &path, LAB_A).await;
    assert_eq!(status, 200, "{text}");
    for other in ["lab-b", "_unleased", "GPU-"] {
        assert!(
            !text.contains(other),
            "{other} appears in lab-a's statement"
        );
    }
    let statement: Value = serde_json::from_str(&text).unwrap();
    let proofs = &statement["proofs"];
    assert_eq!(proofs["checkpoint_choice"], "latest", "{proofs}");
    assert_eq!(proofs["rows"].as_array().map(Vec::len), Some(8));
    assert_eq!(proofs["unproven_rows"], 0);
    let view: StatementView = serde_json::from_value(statement.clone()).unwrap();
    let inputs = Inputs {
        public_key: key,
        checkpoints: vec![("api".into(), list[0].clone())],
        statement: view.clone(),
        consistency: vec![],
        allow_unproven: false,
    };
    let mut said = Vec::new();
    check::verify(&inputs, &mut said).unwrap();
    // Signatures, consistency, inclusion, totals, and the service levels
    // (these rows were booked from GPU readings, with delivery data).
    assert_eq!(said.len(), 5, "{said:?}");
    // One joule more in a row, and its proof no longer holds.
    let mut edited = inputs.clone();
    edited.statement.proofs.rows[3].row.it_joules += 1.0;
    let e = check::verify(&edited, &mut Vec::new()).unwrap_err();
    assert!(e.contains("chain hash"), "{e}");
    edited.statement.proofs.rows[3].row.hash = edited.statement.proofs.rows[3].row.compute_hash();
    let e = check::verify(&edited, &mut Vec::new()).unwrap_err();
    assert!(e.starts_with("row 11 "), "{e}");
    assert!(e.contains("inclusion proof"), "{e}");
    // A total that is not the sum of the rows.
    let mut padded = inputs.clone();
    padded.statement.it_kwh *= 1.01;
    let e = check::verify(&padded, &mut Vec::new()).unwrap_err();
    assert!(e.starts_with("it_kwh"), "{e}");
    let _ = stop.send(());
}

#[test]
fn a_bad_signing_key_or_collector_id_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let cases = [
        (
            format!(
                "signing_key_file = \"{}\"",
                dir.path().join("none.key").display()
            ),
            "ledger.signing_key_file",
        ),
        (
            format!("signing_key_file = \"{}\"", bad_key.display()),
            "ledger.signing_key_file",
        ),
        (
            "collector_id = \"two words\"".to_owned(),
            "ledger.collector_id",
        ),
        ("collector_id = \"\"".to_owned(), "ledger.collector_id"),
    ];
    for (line, key) in cases {
        let text = format!("[ledger]\npath = \"{}\"\n{line}\n", db.display());
        let e = Config::from_toml(&text)
            .unwrap()
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{line}: {e}");
    }
    // keygen never overwrites a key.
    let key = dir.path().join("ledger.key");
    dcwatt_collector::transparency::write_new_key(&key).unwrap();
    assert!(dcwatt_collector::transparency::write_new_key(&key).is_err());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = format!(
        "[ledger]\npath = \"{}\"\nsigning_key_file = \"{}\"\n",
        db.display(),
        key.display()
    );
    let site = Config::from_toml(&text).unwrap().build().unwrap();
    assert!(site.ledger_key.is_some());
    assert!(dcwatt_verify::checkpoint::valid_collector_id(
        &site.collector_id
    ));
}
