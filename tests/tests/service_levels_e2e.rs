//! GPU service levels through every real part: the simulator makes NVML
//! report one GPU lost (`GPU_IS_LOST`) for about 70 s, the real agent (fake
//! NVML library) reports it down with its reason code on the wire, and the
//! real collector books its down minutes with reason `lost` in the tenant's
//! statement, for that GPU only; the ledger verifies.

use std::time::Duration;

use dcwatt_sim::launch::{launch, LaunchOptions};
use dcwatt_tests::{get_json, spawn_sim, wait_for};
use serde_json::{json, Value};

const LAB_A: &str = "lab-a-token";
const MIN: i64 = 60_000;

async fn lose(sim: &str, gpu: &str, lost: bool) -> i64 {
    let r = reqwest::Client::new()
        .post(format!("{sim}/sim/fault"))
        .json(&json!({"kind": "lose_gpu", "gpu": gpu, "lost": lost}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["at_ms"].as_i64().unwrap()
}

async fn statement(collector: &str, month: &str) -> Value {
    reqwest::Client::new()
        .get(format!(
            "{collector}/v1/tenants/lab-a/statement?month={month}"
        ))
        .bearer_auth(LAB_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gpu_is_booked_down_with_its_reason_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 1, 2, 4, 3);
    let token = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(LAB_A));
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "500ms".into(),
        log_filter: "info".into(),
        mirror: false,
        // The first line lands in the `[ledger]` table the launcher writes
        // last: minutes are booked 5 s after they end (not 2 min).
        collector_extra: format!(
            "close_after = \"5s\"\n\
             [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{token}\"\navailability_target = 0.99\n\
             [[leases]]\ntenant = \"lab-a\"\nnodes = [\"*\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"2100-01-01T00:00:00Z\"\n"
        ),
    };
    let dep = launch(&sim.url(), &opts).await.unwrap();
    let collector = dep.collector.url();
    let lost = dep.site.nodes[1].gpus[2].clone();
    let gpus: usize = dep.site.nodes.iter().map(|n| n.gpus.len()).sum();
    wait_for("every GPU reporting", Duration::from_secs(60), || async {
        let s = get_json(&format!("{collector}/v1/summary")).await;
        (s["gpus"]["reporting"].as_u64()? as usize == gpus).then_some(())
    })
    .await;

    // Lost for ~70 s, then found again.
    let from = lose(&sim.url(), &lost, true).await;
    tokio::time::sleep(Duration::from_secs(70)).await;
    let to = lose(&sim.url(), &lost, false).await;
    let (y, m, _) = dcwatt_wire::time::civil_from_days(to.div_euclid(86_400_000));
    let month = format!("{y:04}-{m:02}");

    // Booked once the minute after it is closed: one incident, that GPU,
    // down, reason `lost` (code 1 on the wire), cause `gpu`, covering the
    // time it was lost and at most the minutes it touched.
    let booked_to = to.div_euclid(MIN) * MIN + MIN;
    let st = wait_for(
        "the down minutes booked",
        Duration::from_secs(200),
        || async {
            let st = statement(&collector, &month).await;
            let last = st["proofs"]["rows"]
                .as_array()?
                .iter()
                .filter_map(|r| r["row"]["minute_ms"].as_i64())
                .max()?;
            (last >= booked_to).then_some(st)
        },
    )
    .await;
    let sv = &st["service"];
    let incidents = sv["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{sv}");
    let i = &incidents[0];
    assert_eq!(i["state"], "down", "{sv}");
    assert_eq!(i["reason"], "lost", "{sv}");
    assert_eq!(i["cause"], "gpu", "{sv}");
    assert_eq!(i["gpus"], json!([lost]), "{sv}");
    let (start, end) = (
        i["start_ms"].as_i64().unwrap(),
        i["end_ms"].as_i64().unwrap(),
    );
    // Whole UTC minutes: from the minute it was lost in (or the next, when
    // the agent's first down reading came after that minute's end) to the
    // minute it was found in (or the next).
    let minute = |t: i64| t.div_euclid(MIN) * MIN;
    assert!(
        [minute(from), minute(from) + MIN].contains(&start)
            && [minute(to) + MIN, minute(to) + 2 * MIN].contains(&end),
        "{start}..{end} vs {from}..{to}"
    );
    let touched = (end - start) / MIN;
    let down = sv["down_gpu_minutes"].as_f64().unwrap();
    assert!(
        down >= 1.0 && down <= touched as f64,
        "{down} down GPU-minutes, {touched} minutes touched: {sv}"
    );
    assert_eq!(sv["degraded_gpu_minutes"], 0.0, "{sv}");
    let leased = sv["leased_gpu_minutes"].as_f64().unwrap();
    let ratio = sv["availability_ratio"].as_f64().unwrap();
    let unknown = sv["unknown_gpu_minutes"].as_f64().unwrap();
    assert!(
        (ratio - (leased - unknown - down) / (leased - unknown)).abs() < 1e-12,
        "{sv}"
    );
    // The ledger verifies (read beside the running collector).
    let store = dcwatt_collector::store::Store::open(&dir.path().join("collector.sqlite")).unwrap();
    let v = store.verify_ledger().unwrap();
    assert_eq!(v.broken, None, "{} rows", v.rows);
    assert!(v.rows > 0);
}
