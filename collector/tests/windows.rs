//! PUE over fixed UTC periods through `GET /v1/pue`: three hours of steady,
//! known load posted over HTTP, one meter with a five-minute gap, and the
//! energies, PUE, partial PUE per zone and coverage checked exactly.

use dcwatt_collector::api::now_ms;
use dcwatt_collector::config::{token_hash, Config};
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use serde_json::Value;

const TOKEN: &str = "gateway-token";
const HOUR: i64 = 3_600_000;

/// (meter, role, zone, it_point, watts, parent)
type MeterSpec = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    f64,
    Option<&'static str>,
);
const METERS: [MeterSpec; 10] = [
    ("utility", "facility", "site", None, 50_000.0, None),
    ("pdu-1", "it", "hall-1", Some("pdu_output"), 20_000.0, None),
    ("pdu-2", "it", "hall-2", Some("pdu_output"), 20_000.0, None),
    ("cdu-1", "cooling", "hall-1", None, 4_000.0, None),
    ("chiller", "cooling", "plant", None, 5_000.0, None),
    // Sub-meters: pdu-1's two feeds add up to it; pdu-2's one reads 5 % high.
    (
        "pdu-1a",
        "it",
        "hall-1",
        Some("pdu_output"),
        12_000.0,
        Some("pdu-1"),
    ),
    (
        "pdu-1b",
        "it",
        "hall-1",
        Some("pdu_output"),
        8_000.0,
        Some("pdu-1"),
    ),
    (
        "pdu-2a",
        "it",
        "hall-2",
        Some("pdu_output"),
        21_000.0,
        Some("pdu-2"),
    ),
    ("heat-export", "reused", "site", None, 3_000.0, None),
    ("solar", "renewable", "site", None, 10_000.0, None),
];

async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = format!(
        "carbon_intensity_kg_per_kwh = 0.3\n# A day of history posted as fast as it goes.\nagent_batches_per_second = 1e6\nagent_batch_burst = 100000\n[[agents]]\nid = \"gw\"\ntoken_sha256 = \"{}\"\n",
        hex::encode(token_hash(TOKEN))
    );
    for (id, role, zone, point, _, parent) in METERS {
        config += &format!("[[meters]]\nid = \"{id}\"\nrole = \"{role}\"\nzone = \"{zone}\"\n");
        if let Some(p) = point {
            config += &format!("it_point = \"{p}\"\n");
        }
        if let Some(p) = parent {
            config += &format!("parent = \"{p}\"\n");
        }
    }
    let site = Config::from_toml(&config).unwrap().build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dcwatt_collector::run(site, listener, async {
        let _ = rx.await;
    }));
    (url, tx)
}

#[tokio::test]
async fn fixed_periods_give_exact_energies_pue_partial_pue_and_coverage() {
    let (url, _stop) = start().await;
    let http = reqwest::Client::new();
    let now = now_ms();
    let t_start = now.div_euclid(HOUR) * HOUR - 3 * HOUR;
    // pdu-2 is silent for five minutes in the second hour.
    let gap = (t_start + HOUR + 600_000)..(t_start + HOUR + 900_000);
    let mut seq = 0;
    let mut t = t_start;
    while t <= now {
        seq += 1;
        let readings = METERS
            .iter()
            .filter(|(id, ..)| !(*id == "pdu-2" && gap.contains(&t)))
            .map(|(id, _, _, _, watts, _)| Reading {
                ts_ms: t,
                entity: Entity::Meter((*id).into()),
                quantity: Quantity::EnergyJoules,
                value: 1.0e9 + watts * (t - t_start) as f64 / 1000.0,
            })
            .collect();
        let batch = Batch {
            version: VERSION,
            agent: "gw".into(),
            seq,
            first_seq: None,
            node: "gw".into(),
            created_ms: t,
            gpus: vec![],
            readings,
        };
        let resp = http
            .post(format!("{url}/v1/batches"))
            .bearer_auth(TOKEN)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        t += 10_000;
    }
    let pue = |from: String, to: String| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let resp = http
                .get(format!("{url}/v1/pue?from={from}&to={to}"))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);

    // Hour 1: every meter clean.
    let (status, h1) = pue(t_start.to_string(), (t_start + HOUR).to_string()).await;
    assert_eq!(status, 200, "{h1}");
    assert_eq!(
        (h1["complete"].as_bool(), h1["coverage_ratio"].as_f64()),
        (Some(true), Some(1.0)),
        "{h1}"
    );
    assert_eq!(h1["resolution"], "minute");
    let e = &h1["energy_joules"];
    assert!(
        close(e["facility"].as_f64().unwrap(), 50_000.0 * 3600.0),
        "{e}"
    );
    assert!(close(e["it"].as_f64().unwrap(), 40_000.0 * 3600.0), "{e}");
    assert!(
        close(e["cooling"].as_f64().unwrap(), 9_000.0 * 3600.0),
        "{e}"
    );
    assert!(close(h1["pue"].as_f64().unwrap(), 1.25), "{h1}");
    assert!(close(h1["dcie_ratio"].as_f64().unwrap(), 0.8), "{h1}");
    assert_eq!(h1["category"].as_u64(), Some(2));
    // Sub-meters are not counted twice (IT is still 40 kW), and the EU KPIs.
    assert!(close(h1["erf_ratio"].as_f64().unwrap(), 3.0 / 50.0), "{h1}");
    assert!(
        close(h1["ref_ratio"].as_f64().unwrap(), 10.0 / 50.0),
        "{h1}"
    );
    assert!(
        close(h1["cue_kg_per_kwh"].as_f64().unwrap(), 0.3 * 1.25),
        "{h1}"
    );
    // Hall 1: (20 + 4 + 5 × ½) / 20; hall 2: (20 + 5 × ½) / 20. The chiller in
    // the plant zone is shared by IT energy.
    let zones = h1["zones"].as_array().unwrap();
    let zone = |name: &str| zones.iter().find(|z| z["zone"] == name).unwrap().clone();
    assert!(
        close(zone("hall-1")["partial_pue"].as_f64().unwrap(), 1.325),
        "{zones:?}"
    );
    assert!(
        close(zone("hall-2")["partial_pue"].as_f64().unwrap(), 1.125),
        "{zones:?}"
    );
    assert_eq!(zone("hall-2")["complete"], true);

    // The same hour in RFC 3339 gives the same answer.
    let (_, again) = pue(rfc3339(t_start), rfc3339(t_start + HOUR)).await;
    assert_eq!(again, h1);

    // Hour 2: pdu-2's gap touches six minutes (the one holding its last reading
    // before the gap, and the five of the gap). The counter still tells the
    // energy across the gap, so the energies are right, but the hour is not complete.
    let (_, h2) = pue(
        (t_start + HOUR).to_string(),
        (t_start + 2 * HOUR).to_string(),
    )
    .await;
    assert_eq!(h2["complete"], false, "{h2}");
    assert!(
        close(h2["coverage_ratio"].as_f64().unwrap(), 54.0 / 60.0),
        "{h2}"
    );
    assert!(
        close(
            h2["energy_joules"]["it"].as_f64().unwrap(),
            40_000.0 * 3600.0
        ),
        "{h2}"
    );
    assert!(
        h2["missing_reason"]
            .as_str()
            .unwrap()
            .contains("incomplete"),
        "{h2}"
    );
    assert_eq!(zone_of(&h2, "hall-2")["complete"], false);
    assert_eq!(zone_of(&h2, "hall-1")["complete"], true);

    // The meter tree, live: pdu-1's feeds add up; pdu-2's sub-meter reads 5 % more
    // than pdu-2 itself, which is flagged.
    let summary: Value = http
        .get(format!("{url}/v1/summary"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let residual = &summary["tree_residual_ratio"];
    assert!(
        residual["pdu-1"].as_f64().unwrap().abs() < 1e-9,
        "{residual}"
    );
    assert!(
        close(residual["pdu-2"].as_f64().unwrap(), -0.05),
        "{residual}"
    );
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().contains("pdu-2"),
        "{warnings:?}"
    );

    // Bad questions are refused with the parameter named.
    let (status, body) = pue((t_start + HOUR).to_string(), t_start.to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("to"), "{body}");
    let (status, body) = pue("yesterday".into(), t_start.to_string()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
}

fn zone_of(period: &Value, name: &str) -> Value {
    period["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == name)
        .unwrap()
        .clone()
}

/// Unix ms → RFC 3339 (UTC, seconds), without a date crate.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
