//! The collector killed with SIGKILL at random moments, often in the middle of
//! ingesting a batch, and restarted on the same database: no batch is counted
//! twice and none is lost. The test is the agent here: it re-sends a batch until
//! the collector acknowledges it, as the real agent does, so the exact energy
//! that must come out is known.

use std::ffi::OsString;
use std::time::Duration;

use dcwatt_sim::launch::Proc;
use dcwatt_tests::sample;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use sha2::{Digest, Sha256};

const TOKEN: &str = "crash-test-agent-token";
const BATCHES: u64 = 300;
const RESET_AT: u64 = 150;

/// A small deterministic PRNG (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The facility counter the "meter" shows at batch `k`: 1 kJ per batch, and a
/// reset at `RESET_AT` after which it restarts at 500 J.
fn counter(k: u64) -> f64 {
    if k < RESET_AT {
        1000.0 * k as f64
    } else {
        500.0 + 1000.0 * (k - RESET_AT) as f64
    }
}

fn batch(k: u64, t0: i64) -> Batch {
    let ts = t0 + k as i64 * 100;
    let r = |entity, quantity, value| Reading {
        ts_ms: ts,
        entity,
        quantity,
        value,
    };
    Batch {
        version: VERSION,
        agent: "n1".into(),
        seq: k,
        first_seq: None,
        node: "n1".into(),
        created_ms: ts,
        gpus: vec![],
        readings: vec![
            r(
                Entity::Meter("utility".into()),
                Quantity::EnergyJoules,
                counter(k),
            ),
            r(
                Entity::Meter("pdu".into()),
                Quantity::EnergyJoules,
                800.0 * k as f64,
            ),
            r(
                Entity::Gpu("GPU-1".into()),
                Quantity::EnergyJoules,
                100.0 * k as f64,
            ),
        ],
    }
}

fn start(dir: &std::path::Path, n: u32) -> Proc {
    let conf = dir.join("collector.toml");
    Proc::spawn(
        "collector",
        "dcwatt-collector",
        &[OsString::from("--config"), conf.into()],
        &[("RUST_LOG", "warn".into())],
        &dir.join(format!("collector-{n}.log")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_neither_loses_nor_doubles() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"listen = "127.0.0.1:0"
[ledger]
path = "{}"
[[agents]]
id = "n1"
token_sha256 = "{}"
meters = ["utility", "pdu"]
[[meters]]
id = "utility"
role = "facility"
[[meters]]
id = "pdu"
role = "it"
it_point = "pdu_output"
"#,
        dir.path().join("collector.sqlite").display(),
        hex::encode(Sha256::digest(TOKEN))
    );
    std::fs::write(dir.path().join("collector.toml"), config).unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed_dc3a);
    let mut starts = 1;
    let mut collector = start(dir.path(), starts);
    let t0 = now_ms() - 60_000;
    let (mut kills, mut duplicates) = (0, 0);
    for k in 1..=BATCHES {
        let body = serde_json::to_vec(&batch(k, t0)).unwrap();
        loop {
            // One batch in five: a SIGKILL 0–4 ms from now, racing the ingest.
            if rng.next().is_multiple_of(5) {
                let pid = collector.pid() as i32;
                let delay = Duration::from_micros(rng.next() % 4000);
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    // SAFETY: kill(2) on our own child; a stale pid of a reaped
                    // child at worst gets ESRCH, as it is not reused this fast.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                });
                kills += 1;
            }
            let sent = http
                .post(format!("{}/v1/batches", collector.url()))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let ack: serde_json::Value = resp.json().await.unwrap();
                    duplicates += u32::from(ack["duplicate"] == true);
                    break;
                }
                Ok(resp) => panic!(
                    "batch {k}: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                ),
                Err(_) => {
                    // Killed: restart on the same database, resend the same batch.
                    std::thread::sleep(Duration::from_millis(5));
                    collector.kill();
                    starts += 1;
                    collector = start(dir.path(), starts);
                }
            }
        }
    }
    // A kill may still be in flight: give it its time, then one clean start.
    std::thread::sleep(Duration::from_millis(10));
    collector.kill();
    let collector = start(dir.path(), starts + 1);
    let metrics = reqwest::get(format!("{}/metrics", collector.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let summary: serde_json::Value = reqwest::get(format!("{}/v1/summary", collector.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        starts > 15,
        "only {starts} starts for {kills} kills: the test did not test much"
    );
    // Facility: 1 kJ per batch from 1 to RESET_AT-1, the 500 J after the reset, 1 kJ per batch after.
    let facility = 1000.0 * (RESET_AT - 2) as f64 + 500.0 + 1000.0 * (BATCHES - RESET_AT) as f64;
    let it = 800.0 * (BATCHES - 1) as f64;
    assert_eq!(
        sample(
            &metrics,
            r#"dcwatt_energy_joules_total{role="facility",zone="default"}"#
        ),
        Some(facility),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"dcwatt_energy_joules_total{role="it",zone="default"}"#
        ),
        Some(it)
    );
    assert_eq!(
        sample(&metrics, "dcwatt_gpus_energy_joules_total"),
        Some(100.0 * (BATCHES - 1) as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"dcwatt_meter_energy_resets_total{meter="utility",role="facility",zone="default"}"#
        ),
        Some(1.0)
    );
    assert_eq!(summary["agents"][0]["last_seq"].as_u64(), Some(BATCHES));
    eprintln!("{kills} kills, {starts} starts, {duplicates} batches answered as duplicates");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
