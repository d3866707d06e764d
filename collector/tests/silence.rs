//! A leased GPU that stops reporting has its closed minutes booked `unknown`
//! as they close, through the real collector (in-process: HTTP ingest,
//! booking job, SQLite store), without waiting for it to report again:
//! across a collector restart nothing is lost and nothing doubled, its
//! return books no minute twice, a GPU released by the operator and a GPU
//! whose lease ended stop being booked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dcwatt_collector::config::token_hash;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::get_json_as;

const OPERATOR: &str = "operator-token";
const LAB_A: &str = "lab-a-token";
const MIN: i64 = 60_000;
/// (node, token, GPUs).
const NODES: [(&str, &str, &[&str]); 2] = [
    ("n1", "n1-token", &["GPU-1", "GPU-2"]),
    ("n2", "n2-token", &["GPU-3"]),
];

fn rfc3339(ms: i64) -> String {
    let (y, m, d) = dcwatt_wire::time::civil_from_days(ms.div_euclid(86_400_000));
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// n1 leased from `t0` on; n2 from `t0` for 8 minutes.
fn config(db: &std::path::Path, t0: i64) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    let mut c = format!(
        "agent_batches_per_second = 1000.0\nagent_batch_burst = 1000\n\
         [ledger]\npath = \"{}\"\nclose_after = \"1s\"\n[operator]\ntoken_sha256 = \"{}\"\n\
         [sla]\nsilence_after = \"3s\"\n",
        db.display(),
        h(OPERATOR)
    );
    for (id, token, _) in NODES {
        c += &format!(
            "[[agents]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
            h(token)
        );
    }
    c += &format!(
        "[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
         [[leases]]\ntenant = \"lab-a\"\nnodes = [\"n1\"]\nfrom = \"{}\"\nto = \"2100-01-01T00:00:00Z\"\n\
         [[leases]]\ntenant = \"lab-a\"\nnodes = [\"n2\"]\nfrom = \"{}\"\nto = \"{}\"\n",
        h(LAB_A),
        rfc3339(t0),
        rfc3339(t0),
        rfc3339(t0 + 8 * MIN)
    );
    c
}

async fn post(http: &reqwest::Client, url: &str, node: usize, seq: u64, ts: i64, uuids: &[&str]) {
    let (id, token, gpus) = NODES[node];
    let batch = Batch {
        version: VERSION,
        agent: id.into(),
        seq,
        first_seq: None,
        node: id.into(),
        created_ms: ts,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, g)| GpuInfo {
                uuid: (*g).into(),
                index: i as u32,
                model: "NVIDIA GB300".into(),
                module: None,
            })
            .collect(),
        readings: uuids
            .iter()
            .flat_map(|g| {
                let r = |quantity, value| Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu((*g).into()),
                    quantity,
                    value,
                };
                [
                    r(Quantity::GpuUp, 1.0),
                    r(
                        Quantity::EnergyJoules,
                        (ts / 1000 % 1_000_000) as f64 * 100.0,
                    ),
                    r(Quantity::PowerWatts, 100.0),
                ]
            })
            .collect(),
    };
    let resp = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .json(&batch)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(status, 200, "{}", resp.text().await.unwrap());
}

/// (GPU, minute) → [(state, reason, ms)], one element per booking.
type Booked = BTreeMap<(String, i64), Vec<(String, String, i64)>>;

/// Every booked non-available GPU-minute of lab-a in the months of `t0` and
/// `now`.
async fn booked(http: &reqwest::Client, url: &str, t0: i64) -> Booked {
    let mut months: Vec<String> = [t0, now_ms()]
        .iter()
        .map(|t| {
            let (y, m, _) = dcwatt_wire::time::civil_from_days(t.div_euclid(86_400_000));
            format!("{y:04}-{m:02}")
        })
        .collect();
    months.dedup();
    let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for month in months {
        let s = get_json_as(
            http,
            &format!("{url}/v1/tenants/lab-a/statement?month={month}"),
            LAB_A,
        )
        .await;
        for r in s["proofs"]["rows"].as_array().unwrap_or(&Vec::new()) {
            let row = &r["row"];
            let minute = row["minute_ms"].as_i64().unwrap();
            for g in row["delivery"]["gpus"].as_array().unwrap_or(&Vec::new()) {
                let s = |k: &str| g[k].as_str().unwrap().to_owned();
                out.entry((s("uuid"), minute)).or_default().push((
                    s("state"),
                    s("reason"),
                    g["ms"].as_i64().unwrap(),
                ));
            }
        }
    }
    out
}

/// The minutes of `uuid` booked, each checked booked once, whole, unknown.
fn minutes_of(b: &Booked, uuid: &str) -> Vec<i64> {
    b.iter()
        .filter(|((u, _), _)| u == uuid)
        .map(|((_, m), v)| {
            assert_eq!(
                v,
                &vec![("unknown".to_owned(), "no_data".to_owned(), MIN)],
                "{uuid} at {m}: {b:?}"
            );
            *m
        })
        .collect()
}

fn contiguous(from: i64, to: i64) -> Vec<i64> {
    (from..to).step_by(MIN as usize).collect()
}

async fn wait_for<F: Fn(&Booked) -> bool>(
    http: &reqwest::Client,
    url: &str,
    t0: i64,
    secs: u64,
    what: &str,
    done: F,
) -> Booked {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let b = booked(http, url, t0).await;
        if done(&b) {
            return b;
        }
        assert!(Instant::now() < deadline, "{what}: {b:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_leased_gpus_are_booked_unknown_as_minutes_close_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let t0 = now_ms().div_euclid(MIN) * MIN - 12 * MIN;
    let (url, stop) = common::start(&config(&db, t0)).await;
    let http = reqwest::Client::new();

    // Four minutes of 10 s ticks from t0, then silence.
    for k in 0..=24i64 {
        let ts = t0 + k * 10_000;
        post(&http, &url, 0, k as u64 + 1, ts, &["GPU-1", "GPU-2"]).await;
        post(&http, &url, 1, k as u64 + 1, ts, &["GPU-3"]).await;
    }
    let silent_from = t0 + 5 * MIN;
    // The booking job books the closed silent minutes (up to a minute
    // before now): GPU-1 and GPU-2 from minute 5, GPU-3 until its lease
    // ends at minute 8.
    let b = wait_for(&http, &url, t0, 40, "first booking", |b| {
        minutes_of(b, "GPU-1").len() >= 5
    })
    .await;
    let first = minutes_of(&b, "GPU-1");
    assert_eq!(
        first,
        contiguous(silent_from, silent_from + first.len() as i64 * MIN)
    );
    assert_eq!(
        minutes_of(&b, "GPU-3"),
        contiguous(silent_from, t0 + 8 * MIN),
        "GPU-3's lease ended at minute 8"
    );

    // The operator releases GPU-2: it stops being booked (after the pass
    // that may be running).
    let resp = http
        .post(format!("{url}/v1/admin/gpus/GPU-2/release"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let released = minutes_of(&booked(&http, &url, t0).await, "GPU-2");
    assert!(!released.is_empty());

    // Restart: the booked stretch is kept in the database.
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (url, stop) = common::start(&config(&db, t0)).await;
    let before = minutes_of(&booked(&http, &url, t0).await, "GPU-1").len();
    // A minute closes after the restart: booked once, next to the others.
    let b = wait_for(&http, &url, t0, 90, "a minute after the restart", |b| {
        minutes_of(b, "GPU-1").len() > before
    })
    .await;
    let gpu1 = minutes_of(&b, "GPU-1");
    assert_eq!(
        gpu1,
        contiguous(silent_from, silent_from + gpu1.len() as i64 * MIN)
    );

    // GPU-1 reports again: its tracker's unknown minutes for the silence
    // are those not booked yet, each once.
    let back = now_ms();
    post(&http, &url, 0, 100, back, &["GPU-1"]).await;
    post(&http, &url, 0, 101, back + 10_000, &["GPU-1"]).await;
    let back_minute = back.div_euclid(MIN) * MIN;
    wait_for(&http, &url, t0, 90, "the return", |b| {
        minutes_of(b, "GPU-1").last() == Some(&(back_minute - MIN))
    })
    .await;
    // Two more booking passes (every 10 s): whatever the return opened is
    // booked by then.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let b = booked(&http, &url, t0).await;
    assert_eq!(
        minutes_of(&b, "GPU-1"),
        contiguous(silent_from, back_minute)
    );
    // Released: nothing more after the release.
    assert_eq!(minutes_of(&b, "GPU-2"), released);
    assert_eq!(
        minutes_of(&b, "GPU-3"),
        contiguous(silent_from, t0 + 8 * MIN)
    );

    // The ledger still verifies, and the statement's service counts them.
    let v = get_json_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR).await;
    assert_eq!(v["broken"], Value::Null, "{v}");
    let _ = stop.send(());
}
