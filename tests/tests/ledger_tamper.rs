//! A tenant verifies its statement with the real `dcwatt-verify` against the
//! checkpoints it saved, from the real `dcwatt-collector`; then someone with
//! write access to the database (the triggers dropped first, as an attacker
//! would) edits a row, deletes the last rows, reorders two rows, or swaps
//! the signing key and re-signs. Each time the verifier, given the
//! checkpoints saved before, fails and names what failed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_collector::store::Store;
use dcwatt_collector::transparency::last_closed_hour;
use dcwatt_sim::launch::{bin_dir, Proc};
use dcwatt_tests::wait_for;
use dcwatt_verify::row::Row;
use serde_json::Value;

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const LAB_B: &str = "lab-b-token";
const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    dcwatt_wire::time::now_ms()
}

fn keygen(path: &Path) -> String {
    let out = Command::new(bin_dir().join("dcwatt-collector"))
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .expect("dcwatt-collector (build the workspace first)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn config(dir: &Path, db: &Path, key: &Path) -> PathBuf {
    let h = |t: &str| hex::encode(token_hash(t));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[ledger]\npath = \"{}\"\nsigning_key_file = \"{}\"\ncollector_id = \"site-1\"\n\
         [operator]\ntoken_sha256 = \"{}\"\n\
         [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
         [[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n",
        db.display(),
        key.display(),
        h(OPERATOR),
        h(LAB_A),
        h(LAB_B)
    );
    let name = format!(
        "{}.toml",
        db.file_stem().and_then(|s| s.to_str()).unwrap_or("c")
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Three past hours of bookings (2, 3 and 4 minutes of lab-a, lab-b and
/// nobody), each hour signed when it closed, as the collector's booking job
/// would have done then.
fn history(conf: &Path, db: &Path) -> i64 {
    let site = Config::from_file(conf).unwrap().build().unwrap();
    let mut store = Store::open(db).unwrap();
    let first = last_closed_hour(now_ms(), site.close_after_ms) - 4 * HOUR;
    let c = rusqlite::Connection::open(db).unwrap();
    for (h, minutes) in [2i64, 3, 4].into_iter().enumerate() {
        let hour = first + h as i64 * HOUR;
        for m in 0..minutes {
            for (owner, joules) in [
                ("lab-a", 60_000.0 + m as f64),
                ("lab-b", 30_000.0),
                ("_unleased", 500.0),
            ] {
                c.execute(
                    "INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms) VALUES (?1, ?2, ?3, 60000)",
                    rusqlite::params![hour + m * 60_000, owner, joules],
                )
                .unwrap();
                if owner == "lab-a" {
                    // Ledger v4: SM activity, idle and module energy.
                    c.execute(
                        "UPDATE tenant_open SET sm_sum = 0.5, sm_n = 1, idle_joules = 1000, module_joules = 8000
                         WHERE minute_ms = ?1 AND tenant = 'lab-a'",
                        rusqlite::params![hour + m * 60_000],
                    )
                    .unwrap();
                }
            }
        }
        let then = hour + HOUR + site.close_after_ms + 60_001;
        store.close_minutes(&site, then, None).unwrap();
        assert!(store.checkpoint_due(&site, then).unwrap().is_some());
    }
    first
}

fn collector(conf: &Path, dir: &Path) -> Proc {
    let log = dir.join(format!(
        "{}.log",
        conf.file_stem().and_then(|s| s.to_str()).unwrap_or("c")
    ));
    Proc::spawn(
        "collector",
        "dcwatt-collector",
        &[OsString::from("--config"), conf.into()],
        &[],
        &log,
    )
    .unwrap()
}

async fn get(url: &str, token: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Waits for the collector's first booking pass (the tree rebuilt, the
/// checkpoint of the last closed hour signed when due); returns the
/// checkpoints it serves.
async fn settled(url: &str) -> Value {
    wait_for(
        "a signed checkpoint of the last closed hour",
        Duration::from_secs(60),
        || async {
            let (status, body) = get(&format!("{url}/v1/ledger/checkpoints"), LAB_A).await;
            let v: Value = serde_json::from_str(&body).ok()?;
            let hour = last_closed_hour(now_ms(), 120_000);
            let latest = v["checkpoints"].as_array()?.last()?["hour_ms"].as_i64()?;
            // A copied database already holds that checkpoint: the tree
            // size on /metrics is set once the first pass has rebuilt it.
            let (_, metrics) = get(&format!("{url}/metrics"), OPERATOR).await;
            let rebuilt = metrics
                .lines()
                .any(|l| l.starts_with("dcwatt_ledger_tree_size "));
            (status == 200 && latest >= hour - HOUR && rebuilt).then_some(v)
        },
    )
    .await
}

/// What the tenant fetches for one verification: the statement and the
/// consistency proofs from each saved checkpoint's size to the statement's
/// checkpoint's, saved under `dir/name-*`. Returns the verifier's arguments.
async fn fetch(url: &str, dir: &Path, name: &str, month: &str, saved: &Value) -> Vec<OsString> {
    let (status, statement) = get(
        &format!("{url}/v1/tenants/lab-a/statement?month={month}"),
        LAB_A,
    )
    .await;
    assert_eq!(status, 200, "{statement}");
    let file = dir.join(format!("{name}-statement.json"));
    std::fs::write(&file, &statement).unwrap();
    let mut args: Vec<OsString> = vec!["--statement".into(), file.into()];
    let v: Value = serde_json::from_str(&statement).unwrap();
    let mut sizes: Vec<u64> = saved["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["tree_size"].as_u64())
        .collect();
    let to = v["proofs"]["checkpoint"]["tree_size"]
        .as_u64()
        .into_iter()
        .chain(sizes.iter().copied())
        .max()
        .unwrap();
    sizes.extend(v["proofs"]["checkpoint"]["tree_size"].as_u64());
    sizes.sort_unstable();
    sizes.dedup();
    for from in sizes.into_iter().filter(|s| *s < to) {
        let (status, body) = get(
            &format!("{url}/v1/ledger/consistency?from_size={from}&to_size={to}"),
            LAB_A,
        )
        .await;
        // A collector that lost rows cannot prove a size it no longer has.
        if status == 200 {
            let file = dir.join(format!("{name}-consistency-{from}-{to}.json"));
            std::fs::write(&file, body).unwrap();
            args.extend(["--consistency".into(), file.into_os_string()]);
        }
    }
    args
}

fn verify(dir: &Path, args: &[OsString]) -> (i32, String) {
    let out = Command::new(bin_dir().join("dcwatt-verify"))
        .arg("--public-key")
        .arg(dir.join("public-key.json"))
        .arg("--checkpoints")
        .arg(dir.join("checkpoints.json"))
        .args(args)
        .output()
        .expect("dcwatt-verify (build the workspace first)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// Every row, in id order.
fn rows(c: &rusqlite::Connection) -> Vec<Row> {
    let mut stmt = c
        .prepare("SELECT id, minute_ms, tenant, it_joules, facility_joules, pue, pue_basis, gpu_ms, late, prev_hash, hash, util_mean, peak_watts, excursions, node_joules, sm_active_mean, tensor_active_mean, idle_joules, module_joules FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
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
            sm_active_mean: r.get(15)?,
            tensor_active_mean: r.get(16)?,
            idle_joules: r.get(17)?,
            module_joules: r.get(18)?,
            // Booked without service levels: v1/v2 bytes.
            delivery: None,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The attacker's tools: a copy of the database without its triggers, and a
/// hash chain recomputed so that `ledger verify` passes again.
fn tamper(source: &Path, copy: &Path, sql: &str) -> rusqlite::Connection {
    rusqlite::Connection::open(source)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let c = rusqlite::Connection::open(copy).unwrap();
    c.execute_batch(
        "DROP TRIGGER ledger_no_update; DROP TRIGGER ledger_no_delete;
         DROP TRIGGER ledger_tree_no_update; DROP TRIGGER ledger_tree_no_delete;
         DROP TRIGGER ledger_checkpoint_no_update; DROP TRIGGER ledger_checkpoint_no_delete;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
    let mut prev = dcwatt_verify::row::GENESIS.to_owned();
    for mut row in rows(&c) {
        row.prev_hash = prev;
        row.hash = row.compute_hash();
        c.execute(
            "UPDATE ledger SET prev_hash = ?1, hash = ?2 WHERE id = ?3",
            rusqlite::params![row.prev_hash, row.hash, row.id],
        )
        .unwrap();
        prev = row.hash;
    }
    // The tree is rebuilt from the edited rows by the collector's next pass.
    c.execute_batch("DELETE FROM ledger_tree").unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_caught_by_the_tenants_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("ledger.key");
    let public_hex = keygen(&key);
    let db = d.join("c.sqlite");
    let conf = config(d, &db, &key);
    let first = history(&conf, &db);
    let month = {
        let (y, m, _) = dcwatt_wire::time::civil_from_days(first / 86_400_000);
        format!("{y:04}-{m:02}")
    };

    // The tenant keeps the public key and the checkpoints, and verifies.
    let mut c = collector(&conf, d);
    let url = c.url();
    let saved = settled(&url).await;
    let (status, pk) = get(&format!("{url}/v1/ledger/public-key"), "").await;
    assert_eq!(status, 200);
    assert!(pk.contains(&public_hex), "{pk}");
    std::fs::write(d.join("public-key.json"), pk).unwrap();
    std::fs::write(d.join("checkpoints.json"), saved.to_string()).unwrap();
    let sizes: Vec<u64> = saved["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["tree_size"].as_u64())
        .collect();
    assert!(sizes.starts_with(&[6, 15, 27]), "{saved}");
    let args_good = fetch(&url, d, "good", &month, &saved).await;
    let args = args_good.clone();
    assert!(
        args.iter().filter(|a| *a == "--consistency").count() >= 2,
        "{args:?}"
    );
    let (code, said) = verify(d, &args);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("verified"), "{said}");
    // Ledger v4 rows: the statement's activity is checked against them.
    assert!(said.contains("ok: activity equals the rows'"), "{said}");
    // A statement without the consistency proofs is not accepted.
    let (code, said) = verify(d, &args[..2]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("no consistency proof from tree size 6"),
        "{said}"
    );
    c.terminate();

    // Each tampering on its own copy, the collector restarted on it; the
    // tenant fetches the statement and consistency proofs anew.
    // Row 8 is lab-a's (ids: minute by minute, `_unleased`, lab-a, lab-b).
    let cases: [(&str, &str, bool, &[&str]); 6] = [
        (
            "edited",
            "UPDATE ledger SET it_joules = it_joules * 0.9 WHERE id = 8",
            false,
            &["the ledger was rewritten", "not what was signed"],
        ),
        (
            "idle",
            "UPDATE ledger SET idle_joules = 0 WHERE id = 8",
            false,
            &["the ledger was rewritten", "not what was signed"],
        ),
        (
            "module",
            "UPDATE ledger SET module_joules = 4000, it_joules = it_joules - 4000 WHERE id = 8",
            false,
            &["the ledger was rewritten", "not what was signed"],
        ),
        (
            "deleted",
            "DELETE FROM ledger WHERE id > 24; DELETE FROM ledger_checkpoint;",
            false,
            &["the ledger was rewritten", "rows were removed"],
        ),
        (
            "reordered",
            "UPDATE ledger SET id = -8 WHERE id = 8; UPDATE ledger SET id = 8 WHERE id = 9; UPDATE ledger SET id = 9 WHERE id = -8;",
            false,
            &["the ledger was rewritten", "not what was signed"],
        ),
        (
            "resigned",
            "UPDATE ledger SET it_joules = it_joules * 0.9 WHERE id = 8; DELETE FROM ledger_checkpoint;",
            true,
            &["from the statement: signature does not verify with the public key"],
        ),
    ];
    for (name, sql, new_key, want) in cases {
        let copy = d.join(format!("{name}.sqlite"));
        drop(tamper(&db, &copy, sql));
        let key_file = if new_key {
            let k = d.join(format!("{name}.key"));
            keygen(&k);
            k
        } else {
            key.clone()
        };
        let conf = config(d, &copy, &key_file);
        let mut c = collector(&conf, d);
        let url = c.url();
        settled(&url).await;
        // The operator's own chain check is fooled: the chain was recomputed.
        let (_, chain) = get(&format!("{url}/v1/ledger/verify"), OPERATOR).await;
        assert!(chain.contains("\"broken\":null"), "{name}: {chain}");
        let args = fetch(&url, d, name, &month, &saved).await;
        let (code, said) = verify(d, &args);
        assert_eq!(code, 1, "{name}: {said}");
        eprintln!("{name}: {said}");
        // The verifier names the first check that fails: one of these.
        let failure = said
            .lines()
            .find(|l| l.starts_with("FAILED: "))
            .unwrap_or_default();
        assert!(
            want.iter().any(|w| failure.contains(w)),
            "{name}: wanted one of {want:?} in:\n{said}"
        );
        if name == "edited" || name == "reordered" {
            // No new checkpoint was signed, so the consistency proofs the
            // tenant saved before still join its checkpoints; the rows'
            // inclusion proofs fail instead.
            let mut with_saved = args[..2].to_vec();
            with_saved.extend_from_slice(&args_good[2..]);
            let (code, said) = verify(d, &with_saved);
            assert_eq!(code, 1, "{name}: {said}");
            eprintln!("{name}, saved proofs: {said}");
            let failure = said
                .lines()
                .find(|l| l.starts_with("FAILED: row "))
                .unwrap_or_default();
            assert!(failure.contains("not what was signed"), "{name}: {said}");
        }
        c.terminate();
    }
    // An unreadable input exits 2, naming the file.
    let (code, said) = verify(d, &["--statement".into(), d.join("none.json").into()]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("none.json"), "{said}");
    std::fs::write(d.join("garbled.json"), "{\"proofs\": 1}").unwrap();
    let (code, said) = verify(d, &["--statement".into(), d.join("garbled.json").into()]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("garbled.json"), "{said}");
    // With the triggers in place, the database itself refuses.
    let conn = rusqlite::Connection::open(&db).unwrap();
    for sql in [
        "UPDATE ledger SET it_joules = 0",
        "DELETE FROM ledger WHERE id = 27",
    ] {
        let e = conn.execute_batch(sql).unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
}
