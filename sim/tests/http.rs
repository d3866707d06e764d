//! The simulator over real HTTP on 127.0.0.1: Redfish meters, `/sim/*`, the
//! fake NVML state files it writes, and the `dcwatt-sim serve` process.
//! Writes only temporary directories.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use dcwatt_sim::{now_ms, serve, SimConfig};
use serde_json::{json, Value};

fn config(dir: &std::path::Path) -> SimConfig {
    SimConfig {
        racks: 2,
        nodes_per_rack: 2,
        gpus_per_node: 4,
        seed: 1,
        state_dir: dir.to_path_buf(),
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn truth(client: &reqwest::Client, base: &str, entity: &str, from: i64, to: i64) -> f64 {
    let url = format!("{base}/sim/truth?entity={entity}&from_ms={from}&to_ms={to}");
    let (status, body) = get(client, &url).await;
    assert_eq!(status, 200, "{body}");
    body["joules"].as_f64().unwrap()
}

/// The energy counter of a meter (J) and the instants bracketing the read.
async fn meter_joules(client: &reqwest::Client, url: &str) -> (i64, f64, i64) {
    let before = now_ms();
    let (status, body) = get(client, url).await;
    let after = now_ms() + 1;
    assert_eq!(status, 200, "{body}");
    (
        before,
        body["EnergykWh"]["Reading"].as_f64().unwrap() * 3.6e6,
        after,
    )
}

/// The served energy of GPU `index` in a state file, mJ.
fn file_energy_mj(path: &str, index: usize) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .filter(|l| l.starts_with("gpu "))
        .nth(index)
        .unwrap();
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_meters_truth_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config(dir.path()), listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    // Walk Redfish from the service root to a PDU's metrics.
    let (_, root) = get(&client, &format!("{base}/redfish/v1/")).await;
    let pe = root["PowerEquipment"]["@odata.id"].as_str().unwrap();
    let (_, pe) = get(&client, &format!("{base}{pe}")).await;
    let racks = pe["RackPDUs"]["@odata.id"].as_str().unwrap();
    let (_, racks) = get(&client, &format!("{base}{racks}")).await;
    assert_eq!(racks["Members@odata.count"], 2);
    let pdu = racks["Members"][0]["@odata.id"].as_str().unwrap();
    assert_eq!(pdu, "/redfish/v1/PowerEquipment/RackPDUs/pdu-r1");
    let (_, pdu) = get(&client, &format!("{base}{pdu}")).await;
    let metrics_path = pdu["Metrics"]["@odata.id"].as_str().unwrap().to_owned();
    let (status, metrics) = get(&client, &format!("{base}{metrics_path}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        metrics["@odata.type"],
        "#PowerDistributionMetrics.v1_3_0.PowerDistributionMetrics"
    );
    assert_eq!(metrics["@odata.id"], metrics_path.as_str());
    let watts = metrics["PowerWatts"]["Reading"].as_f64().unwrap();
    assert!(
        (2.0 * 4.0 * 150.0..2.0 * (4.0 * 1400.0 + 800.0)).contains(&watts),
        "{watts}"
    );
    let sensor = metrics["PowerWatts"]["DataSourceUri"].as_str().unwrap();
    let (status, sensor) = get(&client, &format!("{base}{sensor}")).await;
    assert_eq!((status, sensor["Reading"].as_f64().unwrap()), (200, watts));
    for (coll, count) in [("Switchgear", 1), ("FloorPDUs", 1)] {
        let (_, c) = get(&client, &format!("{base}/redfish/v1/PowerEquipment/{coll}")).await;
        assert_eq!(c["Members@odata.count"], count);
    }
    let (status, _) = get(
        &client,
        &format!("{base}/redfish/v1/PowerEquipment/RackPDUs/pdu-r9/Metrics"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get(
        &client,
        &format!("{base}/redfish/v1/PowerEquipment/Switchgear/pdu-r1/Metrics"),
    )
    .await;
    assert_eq!(status, 404);

    // The site: nodes, state files, meters with their URLs and roles.
    let (_, site) = get(&client, &format!("{base}/sim/site")).await;
    let nodes = site["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    assert_eq!(nodes[0]["name"], "r1-n1");
    assert_eq!(nodes[0]["rack"], 1);
    assert_eq!(nodes[0]["gpus"].as_array().unwrap().len(), 4);
    let state_file = nodes[0]["state_file"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&state_file).unwrap();
    assert!(
        text.starts_with("# dcwatt-fake-nvml state v1\ndriver 580.95.05\ntime_ms "),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("gpu ")).count(), 4);
    let meters = site["meters"].as_array().unwrap();
    let utility = meters.iter().find(|m| m["id"] == "utility-a").unwrap();
    assert_eq!(utility["role"], "facility");
    assert_eq!(utility["zone"], "hall-1");
    assert_eq!(
        utility["url"],
        format!("{base}/redfish/v1/PowerEquipment/Switchgear/utility-a/Metrics")
    );
    let pdu2 = meters.iter().find(|m| m["id"] == "pdu-r2").unwrap();
    assert_eq!(
        (pdu2["role"].as_str(), pdu2["it_point"].as_str()),
        (Some("it"), Some("pdu_output"))
    );
    let cooling = meters.iter().find(|m| m["id"] == "cooling-1").unwrap();
    assert_eq!(cooling["role"], "cooling");
    assert!(cooling["it_point"].is_null());

    // Counters move exactly as the truth says between two reads.
    let url = utility["url"].as_str().unwrap().to_owned();
    let (b1, e1, a1) = meter_joules(&client, &url).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (b2, e2, a2) = meter_joules(&client, &url).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let most = truth(&client, &base, "meter:utility-a", b1, a2).await;
    let least = truth(&client, &base, "meter:utility-a", a1, b2).await;
    assert!(
        e2 - e1 <= most + 1e-6 && e2 - e1 >= least - 1e-6,
        "{least} <= {} <= {most}",
        e2 - e1
    );

    // The water meter: JSON in litres, the truth in m³.
    let water = &site["water_meters"][0];
    assert_eq!(
        (water["id"].as_str(), water["zone"].as_str()),
        (Some("water-1"), Some("hall-1"))
    );
    let water_url = water["url"].as_str().unwrap().to_owned();
    assert_eq!(water_url, format!("{base}/sim/water/water-1"));
    let (status, w1) = get(&client, &water_url).await;
    assert_eq!(status, 200, "{w1}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, w2) = get(&client, &water_url).await;
    let (t1, t2) = (w1["ts_ms"].as_i64().unwrap(), w2["ts_ms"].as_i64().unwrap());
    let litres = w2["total_litres"].as_f64().unwrap() - w1["total_litres"].as_f64().unwrap();
    let (_, t) = get(
        &client,
        &format!("{base}/sim/truth?entity=water:water-1&from_ms={t1}&to_ms={t2}"),
    )
    .await;
    let want = t["cubic_meters"].as_f64().unwrap() * 1000.0;
    assert!(
        want > 0.0 && (litres - want).abs() <= 1e-9 * want.max(1.0),
        "{litres} L vs {want} L"
    );
    assert!(w2["flow_litres_per_minute"].as_f64().unwrap() > 0.0, "{w2}");
    let (status, _) = get(&client, &format!("{base}/sim/water/water-2")).await;
    assert_eq!(status, 404);

    let (_, power) = get(&client, &format!("{base}/sim/power")).await;
    let f = power["facility_watts"].as_f64().unwrap();
    let it = power["it_watts"].as_f64().unwrap();
    assert!((1.05..1.4).contains(&(f / it)), "{power}");
    assert!(power["cooling_watts"].as_f64().unwrap() > 0.0);
    assert!(power["gpu_watts"].as_f64().unwrap() < it);

    // A meter reset: the counter restarts at at_ms.
    let r = client
        .post(format!("{base}/sim/fault"))
        .json(&json!({"kind": "reset_meter_counter", "meter": "pdu-r1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let at: Value = r.json().await.unwrap();
    let at = at["at_ms"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (b, served, a) = meter_joules(&client, &format!("{base}{metrics_path}")).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let most = truth(&client, &base, "meter:pdu-r1", at, a).await;
    let least = truth(&client, &base, "meter:pdu-r1", at, b).await;
    assert!(
        served >= least - 1e-6 && served <= most + 1e-6,
        "{least} <= {served} <= {most}"
    );

    // A GPU reset: its state file restarts from zero at at_ms (a tick boundary).
    let uuid = nodes[0]["gpus"][1].as_str().unwrap().to_owned();
    let r = client
        .post(format!("{base}/sim/fault"))
        .json(&json!({"kind": "reset_gpu_counter", "gpu": uuid}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let at: Value = r.json().await.unwrap();
    let at = at["at_ms"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let text = std::fs::read_to_string(&state_file).unwrap();
    let time_ms: i64 = text.lines().nth(2).unwrap()[8..].parse().unwrap();
    let served = file_energy_mj(&state_file, 1) as f64 / 1000.0;
    let expected = truth(
        &client,
        &base,
        &format!("gpu:{uuid}"),
        at,
        time_ms.min(now_ms()),
    )
    .await;
    assert!(time_ms > at);
    assert!(
        (served - expected).abs() < 1e-9 || time_ms > now_ms(),
        "{served} vs {expected}"
    );
    assert!(file_energy_mj(&state_file, 0) as f64 / 1000.0 > served);

    // Bad requests.
    let bad = [
        format!("{base}/sim/truth?entity=meter:nope&from_ms={at}&to_ms={at}"),
        format!("{base}/sim/truth?entity=pdu-r1&from_ms={at}&to_ms={at}"),
        format!("{base}/sim/truth?entity=meter:pdu-r1&from_ms=1&to_ms={at}"),
        format!(
            "{base}/sim/truth?entity=meter:pdu-r1&from_ms={at}&to_ms={}",
            now_ms() + 60_000
        ),
        format!("{base}/sim/truth?entity=meter:pdu-r1&from_ms=x&to_ms=1"),
    ];
    let statuses = futures_statuses(&client, &bad).await;
    assert_eq!(statuses, [404, 400, 400, 400, 400]);
    for body in [
        json!({"kind": "melt"}),
        json!({"kind": "reset_gpu_counter", "gpu": "GPU-x"}),
    ] {
        let r = client
            .post(format!("{base}/sim/fault"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].is_string());
    }

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

async fn futures_statuses(client: &reqwest::Client, urls: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for url in urls {
        let r = client.get(url).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        out.push(status);
    }
    out
}

#[test]
fn the_binary_prints_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcwatt-sim"))
        .args([
            "serve",
            "--racks",
            "1",
            "--nodes-per-rack",
            "1",
            "--gpus-per-node",
            "2",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().trim();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{line}"
    );
    assert!(dir.path().join("r1-n1.nvml").exists());
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit}");
}
