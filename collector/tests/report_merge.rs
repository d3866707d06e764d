//! A tenant leasing nodes in two halls (two collectors, two databases) gets
//! one statement from `dcwatt-collector report --config A --config B`: its
//! energy is the sum of the halls' ledger rows, day by day, and each hall's
//! own statement is kept beside. The same database twice is refused. GPU
//! service levels add up too: hall 1's GPU is thermally throttled for 2
//! minutes, hall 2's second GPU (no energy readings, only its state) is
//! lost for 2; the combined `service` sums the halls' GPU-minutes, computes
//! availability from the sums and lists each incident with its hall. So does
//! GPU activity: hall 1's GPU is busy (GPM) for its first 4 minutes, hall 2's
//! idle for all 8; the combined `activity` weights each row's SM and tensor
//! activity by its GPU time and sums the idle energy.

use std::time::{Duration, Instant};

use dcwatt_collector::config::token_hash;
use dcwatt_collector::statement::month_range;
use dcwatt_collector::store::Store;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::time::{civil_from_days, month_of};
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::sample;

const OPERATOR: &str = "operator-token";

/// A hall: its node, its GPU and the GPU's constant power.
struct Hall {
    node: &'static str,
    gpu: &'static str,
    watts: f64,
}

const HALLS: [Hall; 2] = [
    Hall {
        node: "h1-n1",
        gpu: "GPU-h1",
        watts: 1000.0,
    },
    Hall {
        node: "h2-n1",
        gpu: "GPU-h2",
        watts: 400.0,
    },
];

fn config(db: &std::path::Path, hall: &Hall) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    format!(
        "[ledger]\npath = \"{}\"\n[operator]\ntoken_sha256 = \"{}\"\n\
         [[agents]]\nid = \"{node}\"\ntoken_sha256 = \"{}\"\n\
         [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
         [[leases]]\ntenant = \"lab-a\"\nnodes = [\"{node}\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"2100-01-01T00:00:00Z\"\n",
        db.display(),
        h(OPERATOR),
        h(hall.node),
        h("lab-a-token"),
        node = hall.node,
    )
}

/// Hall 2's second GPU: reports its state only (no energy).
const SECOND: &str = "GPU-h2b";

/// Eight minutes of readings every 10 s, ending 4 minutes ago (booked after 2).
async fn feed(url: &str, hall: &Hall, t0: i64) {
    let http = reqwest::Client::new();
    for k in 0..=48i64 {
        let ts = t0 + k * 10_000;
        let mut extra = Vec::new();
        let mut gpus = Vec::new();
        // GPM: hall 1's GPU busy in minutes 0–3 only, hall 2's idle throughout.
        let gpm = if hall.node == "h1-n1" {
            (k < 24).then_some((0.8, 0.5))
        } else {
            Some((0.02, 0.0))
        };
        if let Some((sm, tensor)) = gpm {
            for (quantity, value) in [
                (Quantity::SmActiveRatio, sm),
                (Quantity::TensorActiveRatio, tensor),
            ] {
                extra.push(Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu(hall.gpu.into()),
                    quantity,
                    value,
                });
            }
        }
        if hall.node == "h1-n1" {
            // Thermally throttled in minutes 5 and 6.
            extra.push(Reading {
                ts_ms: ts,
                entity: Entity::Gpu(hall.gpu.into()),
                quantity: Quantity::ThrottleHwThermalSlowdown,
                value: if (30..42).contains(&k) { 1.0 } else { 0.0 },
            });
        } else {
            // Lost (GPU_IS_LOST, code 1) in minutes 2 and 3.
            let lost = (12..24).contains(&k);
            gpus.push(GpuInfo {
                uuid: SECOND.into(),
                index: 1,
                model: "NVIDIA GB300".into(),
                module: None,
            });
            if lost {
                extra.push(Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu(SECOND.into()),
                    quantity: Quantity::GpuDownReasonCode,
                    value: 1.0,
                });
            }
            extra.push(Reading {
                ts_ms: ts,
                entity: Entity::Gpu(SECOND.into()),
                quantity: Quantity::GpuUp,
                value: if lost { 0.0 } else { 1.0 },
            });
        }
        let batch = Batch {
            version: VERSION,
            agent: hall.node.into(),
            seq: k as u64 + 1,
            first_seq: None,
            node: hall.node.into(),
            created_ms: ts,
            gpus: [GpuInfo {
                uuid: hall.gpu.into(),
                index: 0,
                model: "NVIDIA GB300".into(),
                module: None,
            }]
            .into_iter()
            .chain(gpus)
            .collect(),
            readings: [
                Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu(hall.gpu.into()),
                    quantity: Quantity::EnergyJoules,
                    value: hall.watts * (k * 10) as f64,
                },
                Reading {
                    ts_ms: ts,
                    entity: Entity::Gpu(hall.gpu.into()),
                    quantity: Quantity::PowerWatts,
                    value: hall.watts,
                },
            ]
            .into_iter()
            .chain(extra)
            .collect(),
        };
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth(hall.node)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    // The refresher books closed minutes every 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
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
        let booked = sample(&m, "dcwatt_tenant_gpu_seconds_total{tenant=\"lab-a\"}");
        if booked == Some(480.0) {
            break;
        }
        assert!(Instant::now() < deadline, "not all booked: {booked:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(configs: &[&std::path::Path], month: &str, format: &str) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dcwatt-collector"));
    cmd.args([
        "report", "--tenant", "lab-a", "--month", month, "--format", format,
    ]);
    for c in configs {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_in_two_halls_gets_one_statement_summing_both() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms().div_euclid(60_000) * 60_000 - 12 * 60_000;
    let (y, m, _) = civil_from_days(t0.div_euclid(86_400_000));
    let month = format!("{y:04}-{m:02}");
    let mut confs = Vec::new();
    let mut stops = Vec::new();
    for (i, hall) in HALLS.iter().enumerate() {
        let db = dir.path().join(format!("hall-{i}.sqlite"));
        let text = config(&db, hall);
        let conf = dir.path().join(format!("hall-{i}.toml"));
        std::fs::write(&conf, &text).unwrap();
        let (url, stop) = common::start(&text).await;
        feed(&url, hall, t0).await;
        confs.push((conf, db));
        stops.push(stop);
    }
    for s in stops {
        let _ = s.send(());
    }

    // What each hall's ledger holds for the month.
    let (from, to) = month_range(&month).unwrap();
    let mut rows_j = Vec::new();
    let mut all_rows = Vec::new();
    for (_, db) in &confs {
        let store = Store::open(db).unwrap();
        let rows = store.tenant_rows("lab-a", from, to).unwrap();
        assert!(!rows.is_empty());
        all_rows.extend(rows.iter().cloned());
        rows_j.push((
            rows.iter().map(|r| r.it_joules).sum::<f64>(),
            rows.iter().map(|r| r.gpu_ms).sum::<i64>() as f64 / 3_600_000.0,
        ));
    }
    let single = |i: usize| {
        let (code, out, err) = report(&[&confs[i].0], &month, "json");
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let (s1, s2) = (single(0), single(1));
    for (s, (j, _)) in [(&s1, rows_j[0]), (&s2, rows_j[1])] {
        assert!(close(s["it_kwh"].as_f64().unwrap(), j / 3.6e6), "{s}");
    }

    let (code, out, err) = report(&[&confs[0].0, &confs[1].0], &month, "json");
    assert_eq!(code, 0, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["tenant"], "lab-a");
    assert_eq!(c["month"], month.as_str());
    let total_j = rows_j[0].0 + rows_j[1].0;
    let it = c["it_kwh"].as_f64().unwrap();
    assert!(close(it, total_j / 3.6e6), "{it} kWh, rows {total_j} J");
    assert!(close(
        it,
        s1["it_kwh"].as_f64().unwrap() + s2["it_kwh"].as_f64().unwrap()
    ));
    assert!(close(
        c["gpu_hours"].as_f64().unwrap(),
        rows_j[0].1 + rows_j[1].1
    ));
    assert!(close(
        c["facility_kwh"].as_f64().unwrap(),
        s1["facility_kwh"].as_f64().unwrap() + s2["facility_kwh"].as_f64().unwrap()
    ));
    if month_of(t0 + 8 * 60_000) == month_of(t0) {
        // Eight whole minutes of 1 kW and 0.4 kW.
        assert!(close(total_j, 8.0 * 60.0 * 1400.0), "{total_j}");
    }
    // Day by day: the halls' days added.
    let days = c["days"].as_array().unwrap();
    assert_eq!(days.len(), s1["days"].as_array().unwrap().len());
    for d in days {
        let date = d["date"].as_str().unwrap();
        let of = |s: &Value| {
            s["days"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["date"] == date)
                .map_or(0.0, |x| x["it_joules"].as_f64().unwrap())
        };
        assert!(
            close(d["it_joules"].as_f64().unwrap(), of(&s1) + of(&s2)),
            "{date}"
        );
    }
    // Each hall's own statement is kept whole.
    let halls = c["halls"].as_array().unwrap();
    assert_eq!(halls.len(), 2);
    for (h, s) in halls.iter().zip([&s1, &s2]) {
        assert_eq!(h["it_kwh"], s["it_kwh"]);
        assert_eq!(h["ledger_head"], s["ledger_head"]);
    }
    assert_ne!(halls[0]["ledger_head"], halls[1]["ledger_head"]);

    // Service levels: the halls' GPU-minutes added up (hall 1: one GPU × 8
    // minutes, 2 degraded; hall 2: two GPUs × 8, 2 down), availability from
    // the sums, each incident with its hall.
    let sv = &c["service"];
    let min = |s: &Value, k: &str| s[format!("{k}_gpu_minutes")].as_f64().unwrap();
    for (k, want) in [
        ("leased", 24.0),
        ("available", 20.0),
        ("degraded", 2.0),
        ("down", 2.0),
        ("unknown", 0.0),
    ] {
        assert_eq!(min(sv, k), want, "{k}: {sv}");
        assert_eq!(
            min(sv, k),
            min(&s1["service"], k) + min(&s2["service"], k),
            "{k}"
        );
    }
    assert!(
        close(sv["availability_ratio"].as_f64().unwrap(), 22.0 / 24.0),
        "{sv}"
    );
    assert!(
        close(sv["undegraded_ratio"].as_f64().unwrap(), 20.0 / 24.0),
        "{sv}"
    );
    // Not a mean of the halls' ratios (1 and 14/16).
    assert!(!close(
        sv["availability_ratio"].as_f64().unwrap(),
        (s1["service"]["availability_ratio"].as_f64().unwrap()
            + s2["service"]["availability_ratio"].as_f64().unwrap())
            / 2.0
    ));
    let hall = |i: usize| confs[i].0.display().to_string();
    let incidents: Vec<(String, i64, i64, String, String, String)> = sv["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap().to_owned();
            (
                s("hall"),
                (i["start_ms"].as_i64().unwrap() - t0) / 60_000,
                (i["end_ms"].as_i64().unwrap() - t0) / 60_000,
                s("state"),
                s("reason"),
                i["gpus"][0].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        incidents,
        vec![
            (hall(1), 2, 4, "down".into(), "lost".into(), SECOND.into()),
            (
                hall(0),
                5,
                7,
                "degraded".into(),
                "thermal".into(),
                "GPU-h1".into()
            ),
        ],
        "{sv}"
    );
    let leases: Vec<(String, String, f64)> = sv["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["hall"].as_str().unwrap().to_owned(),
                l["id"].as_str().unwrap().to_owned(),
                l["leased_gpu_minutes"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leases,
        vec![
            (hall(0), "lab-a.1".into(), 8.0),
            (hall(1), "lab-a.1".into(), 16.0)
        ]
    );

    // Activity: the rows of both halls together, each row's SM and tensor
    // activity weighted by its GPU time; idle and module energy summed.
    let weighted = |f: fn(&dcwatt_verify::row::Row) -> Option<f64>| {
        let (mut sum, mut w) = (0.0, 0.0);
        for r in &all_rows {
            if let Some(v) = f(r) {
                sum += v * r.gpu_ms as f64;
                w += r.gpu_ms as f64;
            }
        }
        sum / w
    };
    let a = &c["activity"];
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    let sm = num(a, "sm_active_mean");
    assert!(close(sm, weighted(|r| r.sm_active_mean)), "{a}");
    assert!(
        close(
            num(a, "tensor_active_mean"),
            weighted(|r| r.tensor_active_mean)
        ),
        "{a}"
    );
    // Hall 1 busy for 4 GPU-minutes, hall 2 idle for 8: not the halls'
    // plain mean.
    let (a1, a2) = (&s1["activity"], &s2["activity"]);
    assert!(num(a1, "sm_active_mean") > 0.5 && num(a2, "sm_active_mean") < 0.05);
    assert!(
        !close(
            sm,
            (num(a1, "sm_active_mean") + num(a2, "sm_active_mean")) / 2.0
        ),
        "{a}"
    );
    assert!(sm > 0.02 && sm < 0.8, "{a}");
    let idle_j: f64 = all_rows.iter().filter_map(|r| r.idle_joules).sum();
    assert!(idle_j > 0.0);
    assert!(close(num(a, "idle_kwh"), idle_j / 3.6e6), "{a}");
    assert!(close(
        num(a, "idle_kwh"),
        num(a1, "idle_kwh") + num(a2, "idle_kwh")
    ));
    for k in ["module_kwh", "node_kwh"] {
        assert!(close(num(a, k), num(a1, k) + num(a2, k)), "{k}: {a}");
    }

    // CSV: the totals line carries the sum.
    let (code, csv, err) = report(&[&confs[0].0, &confs[1].0], &month, "csv");
    assert_eq!(code, 0, "{err}");
    let total: f64 = csv
        .lines()
        .find_map(|l| l.strip_prefix("total,"))
        .and_then(|l| l.split(',').next()?.parse().ok())
        .unwrap();
    assert!(close(total, it), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.starts_with("# hall ")).count(), 2);
    assert!(csv.contains("# service (all halls)\n"), "{csv}");
    let activity: Vec<&str> = csv
        .split("# activity\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no activity: {csv}"))
        .lines()
        .take(2)
        .collect();
    assert!(activity[0].starts_with("sm_active_mean,"), "{csv}");
    let sm_csv: f64 = activity[1].split(',').next().unwrap().parse().unwrap();
    assert!(close(sm_csv, sm), "{csv}");
    assert!(csv.contains("\ndown,2,0,2\n"), "{csv}");
    assert!(
        csv.contains(&format!("\n{},", hall(1))) && csv.contains(",down,lost,gpu,2,GPU-h2b\n"),
        "{csv}"
    );

    // One database twice (the same file, or two configs naming it) is refused.
    let (code, _, err) = report(&[&confs[0].0, &confs[0].0], &month, "json");
    assert_eq!(code, 2);
    assert!(err.contains("count twice"), "{err}");
    let copy = dir.path().join("hall-0-again.toml");
    std::fs::write(&copy, config(&confs[0].1, &HALLS[0])).unwrap();
    let (code, _, err) = report(&[&confs[0].0, &copy], &month, "json");
    assert_eq!(code, 2);
    assert!(err.contains("count twice"), "{err}");
    // A tenant missing from one hall names that hall's config.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        config(&confs[1].1, &HALLS[1]).replace("\"lab-a\"", "\"lab-z\""),
    )
    .unwrap();
    let (code, _, err) = report(&[&confs[0].0, &other], &month, "json");
    assert_eq!(code, 2);
    assert!(
        err.contains("no tenant \"lab-a\"") && err.contains("other.toml"),
        "{err}"
    );
}
