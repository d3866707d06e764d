//! What an agent on a GB300 tray ships: the real agent reads the fake
//! library's GB300 profile and posts to a tiny recording "collector" over
//! real HTTP. GPM ratios and XID counts per GPU always; each superchip
//! module's power and integrated energy (`Entity::Module`) only with
//! `ship_modules = true`, which older collectors could not decode.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use common::{serve, Agent};
use dcwatt_fake_nvml::profiles::gb300_tray;
use dcwatt_fake_nvml::{FakeGpm, FakeGpu, FakeNode, FakeXid, LIB_PATH, STATE_ENV};
use dcwatt_wire::{Batch, BatchAck, Entity, Quantity};

type Seen = Arc<Mutex<Vec<Batch>>>;

async fn record(State(seen): State<Seen>, body: String) -> String {
    let batch: Batch = serde_json::from_str(&body).expect("a batch in the wire format");
    let ack = BatchAck {
        accepted: batch.readings.len(),
        duplicate: false,
        last_seq: batch.seq,
    };
    seen.lock().unwrap().push(batch);
    serde_json::to_string(&ack).unwrap()
}

fn write(state: &std::path::Path, gpus: Vec<FakeGpu>) {
    FakeNode {
        driver: "580.95.05".into(),
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail: false,
        gpus,
    }
    .write(state)
    .unwrap();
}

/// Runs an agent with `extra` in its nvml source until the recorder has
/// `ticks` batches after the first; returns them. `later`: a state written
/// once the agent runs (XID events count from the agent's start).
async fn ship(
    extra: &str,
    ticks: usize,
    later: Option<(&std::path::Path, Vec<FakeGpu>)>,
) -> Vec<Batch> {
    let seen: Seen = Arc::default();
    let addr = serve(
        Router::new()
            .route("/v1/batches", post(record))
            .with_state(Arc::clone(&seen)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "t\n").unwrap();
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gb300-n1"
[[collectors]]
url = "http://{addr}"
token_file = "{token}"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
{extra}
"#,
        token = token.display()
    ))
    .await;
    for _ in 0..200 {
        if seen.lock().unwrap().len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some((state, gpus)) = later {
        write(state, gpus);
    }
    for _ in 0..200 {
        if seen.lock().unwrap().len() > ticks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop().await;
    let batches = seen.lock().unwrap().clone();
    assert!(batches.len() > ticks, "{} batches", batches.len());
    batches
}

/// The last value of `q` for each entity, over every batch.
fn last(batches: &[Batch], q: Quantity) -> BTreeMap<Entity, f64> {
    batches
        .iter()
        .flat_map(|b| &b.readings)
        .filter(|r| r.quantity == q)
        .map(|r| (r.entity.clone(), r.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gb300_ships_gpm_xids_and_modules_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    let mut gpus = gb300_tray();
    gpus[1].gpm = Some(FakeGpm {
        sm_active_pct: 40,
        sm_occupancy_pct: 25,
        tensor_active_pct: 30,
        dram_active_pct: 55,
    });
    let uuids: Vec<String> = gpus.iter().map(|g| g.uuid.clone()).collect();
    let module_mw: Vec<u32> = gpus.iter().filter_map(|g| g.module_power_mw).collect();
    write(&state, gpus.clone());
    let mut with_xid = gpus.clone();
    with_xid[2].xids = vec![FakeXid { id: 1, code: 79 }];

    // Default: no module entity on the wire (an older collector would refuse it).
    let plain = ship("", 12, Some((&state, with_xid))).await;
    assert!(
        plain
            .iter()
            .flat_map(|b| &b.readings)
            .all(|r| matches!(r.entity, Entity::Gpu(_) | Entity::Meter(_))),
        "a non-GPU entity without ship_modules"
    );
    assert!(
        plain
            .iter()
            .flat_map(|b| &b.gpus)
            .all(|g| g.module.is_none()),
        "a GPU names its module without ship_modules"
    );
    // GPM ratios per GPU, as NVML's percent / 100.
    let sm = last(&plain, Quantity::SmActiveRatio);
    assert_eq!(sm.len(), 4, "{sm:?}");
    assert_eq!(sm[&Entity::Gpu(uuids[1].clone())], 0.4);
    assert_eq!(sm[&Entity::Gpu(uuids[0].clone())], 0.0);
    assert_eq!(
        last(&plain, Quantity::TensorActiveRatio)[&Entity::Gpu(uuids[1].clone())],
        0.3
    );
    assert_eq!(
        last(&plain, Quantity::DramActiveRatio)[&Entity::Gpu(uuids[1].clone())],
        0.55
    );
    // XIDs: every registered GPU has its counter, GPU 2 at its one XID.
    let xid = last(&plain, Quantity::XidErrorsTotal);
    assert_eq!(xid.len(), 4, "{xid:?}");
    assert_eq!(xid[&Entity::Gpu(uuids[2].clone())], 1.0);
    assert_eq!(xid[&Entity::Gpu(uuids[3].clone())], 0.0);

    // With ship_modules: both superchips, their module-scope power, and an
    // energy integrated by the agent that only grows.
    write(&state, gpus);
    let told = ship("ship_modules = true", 8, None).await;
    let power = last(&told, Quantity::PowerWatts);
    let modules: Vec<(&Entity, &f64)> = power
        .iter()
        .filter(|(e, _)| matches!(e, Entity::Module(_)))
        .collect();
    assert_eq!(modules.len(), 2, "{power:?}");
    for (_, w) in &modules {
        assert!(
            module_mw.iter().any(|mw| f64::from(*mw) / 1000.0 == **w),
            "{w} W is no GPU's module power {module_mw:?}"
        );
    }
    // Each GPU names the module it shares with its superchip sibling: two
    // GPUs per module, every module shipped.
    let mut members: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for g in told.iter().flat_map(|b| &b.gpus) {
        let m = g.module.clone().expect("a GPU without its module");
        members.entry(m).or_default().insert(g.uuid.clone());
    }
    assert_eq!(members.len(), 2, "{members:?}");
    for (m, gpus) in &members {
        assert_eq!(gpus.len(), 2, "{m}: {gpus:?}");
        assert!(
            modules
                .iter()
                .any(|(e, _)| **e == Entity::Module(m.clone())),
            "{m} is not a shipped module"
        );
    }
    let mut energies: BTreeMap<Entity, Vec<f64>> = BTreeMap::new();
    for r in told.iter().flat_map(|b| &b.readings) {
        if r.quantity == Quantity::IntegratedEnergyJoules {
            assert!(matches!(r.entity, Entity::Module(_)), "{r:?}");
            energies.entry(r.entity.clone()).or_default().push(r.value);
        }
    }
    assert_eq!(energies.len(), 2, "{energies:?}");
    for (e, v) in &energies {
        assert!(v.windows(2).all(|w| w[1] >= w[0]), "{e:?}: {v:?}");
        assert!(v.last().unwrap() > &0.0, "{e:?}: {v:?}");
    }
}
