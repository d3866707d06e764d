//! The operator kit against a real Prometheus: the shipped rule files are
//! loaded by the `prometheus` server (Debian's package), which scrapes a
//! running simulated hall (collector and agents as real processes). Every
//! rule must evaluate without error, the recording rules must produce the
//! site PUE from the collector's energy counters, and the PUE-coverage alert,
//! whose condition holds on a hall that has run for less than an hour, must be
//! pending while the delivery alerts stay quiet. Every dashboard panel's
//! query returns data from the live hall (tenants leasing its nodes, and the
//! events some panels show raised through the simulator's fault API: a GPU
//! past its slowdown threshold, XIDs), except the long-window PUE panels,
//! which need their whole window of history.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dcwatt_sim::launch::{launch, LaunchOptions};
use dcwatt_tests::{dashboard_exprs, get_json, spawn_sim, wait_for};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Kills the Prometheus server when the test ends, however it ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The shipped rule files, with the recording interval shortened so the test
/// does not wait a minute for the first evaluation. Nothing else changes.
fn copy_rules(dir: &Path) {
    for name in ["recording.yml", "alerts.yml"] {
        let text = std::fs::read_to_string(repo().join("deploy/prometheus").join(name)).unwrap();
        let text = text.replace("interval: 1m", "interval: 1s");
        std::fs::write(dir.join(name), text).unwrap();
    }
}

async fn fault(sim: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/sim/fault"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{body}: {}", r.status());
}

/// A dashboard query as Grafana sends it, for "All" and a one-hour range.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__range", "1h")
        .replace("$__rate_interval", "1m")
        .replace("$zone", ".*")
        .replace("$node", ".*")
        .replace("$tenant", ".*")
}

/// Dashboard queries that return nothing from a hall that has run for
/// minutes, and why: a PUE window is exported only when complete, which
/// takes its whole span of complete minutes. (Their data path is the same
/// series with other windows, which the "PUE by window" panel shows here, and
/// `dcwatt_pue_coverage_ratio` for every window.)
const NEEDS_HISTORY: &[(&str, &str)] = &[
    ("\"PUE 1h\"", "dcwatt_pue_ratio{window=\"1h\"}"),
    ("\"PUE 24h\"", "dcwatt_pue_ratio{window=\"24h\"}"),
    ("\"PUE 7d\"", "dcwatt_pue_ratio{window=\"7d\"}"),
    ("\"PUE 30d\"", "dcwatt_pue_ratio{window=\"30d\"}"),
    ("\"PUE 365d\"", "dcwatt_pue_ratio{window=\"365d\"}"),
    (
        "\"Partial PUE per zone (1h)\"",
        "dcwatt_partial_pue_ratio{zone=~\"$zone\",window=\"1h\"}",
    ),
    // The shortest, live 5m window is complete after five minutes; the panels
    // show the recording rules' PUE and WUE meanwhile (checked here).
    ("\"PUE by window\"", "dcwatt_pue_ratio"),
    ("\"WUE by window\"", "dcwatt_wue_litres_per_kilowatt_hour"),
];

/// Dashboard queries about a site model the simulated hall does not have: a
/// sub-meter tree (`parent`: meters of one role under another).
const NOT_IN_THIS_HALL: &[(&str, &str)] = &[(
    "\"Meter tree residual\"",
    "dcwatt_meter_tree_residual_ratio",
)];

async fn query(prom: &str, q: &str) -> Vec<Value> {
    let url = format!("{prom}/api/v1/query?query={}", url_escape(q));
    let v = get_json(&url).await;
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rules_run_in_prometheus_against_a_live_hall() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _) = spawn_sim(dir.path(), 2, 1, 4, 11);
    let opts = LaunchOptions {
        dir: dir.path().to_path_buf(),
        interval: "500ms".into(),
        log_filter: "info".into(),
        mirror: false,
        // /metrics closed to all but the scrape token, as deployed. Two
        // tenants lease the two racks (for the tenant dashboard); minutes are
        // booked 1 s after they end (this first line continues [ledger]);
        // an excursion opens after 1 s.
        collector_extra: format!(
            "close_after = \"1s\"\n\
             [operator]\ntoken_sha256 = \"{}\"\n[metrics]\ntoken_sha256 = \"{}\"\n\
             [thermal]\nmin_duration = \"1s\"\n\
             [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\navailability_target = 0.995\n\
             [[tenants]]\nid = \"lab-b\"\ntoken_sha256 = \"{}\"\n\
             [[leases]]\ntenant = \"lab-a\"\nnodes = [\"r1-*\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"2100-01-01T00:00:00Z\"\n\
             [[leases]]\ntenant = \"lab-b\"\nnodes = [\"r2-*\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"2100-01-01T00:00:00Z\"\n",
            hex::encode(Sha256::digest(b"operator-token")),
            hex::encode(Sha256::digest(b"scrape-token")),
            hex::encode(Sha256::digest(b"lab-a-token")),
            hex::encode(Sha256::digest(b"lab-b-token")),
        ),
    };
    let dep = launch(&sim.url(), &opts).await.unwrap();
    // The events the thermal dashboard shows: a GPU of lab-a's rack past its
    // slowdown threshold (an excursion, hardware thermal slowdown), an XID.
    let hot_gpu = dep.site.nodes[0].gpus[0].clone();
    fault(
        &sim.url(),
        json!({"kind": "heat_gpu", "gpu": hot_gpu, "celsius": 40.0}),
    )
    .await;
    fault(
        &sim.url(),
        json!({"kind": "xid", "gpu": hot_gpu, "code": 79}),
    )
    .await;

    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    copy_rules(&prom_dir);
    let agents: Vec<String> = dep
        .agents
        .iter()
        .map(|a| format!("\"{}\"", a.addr))
        .collect();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [recording.yml, alerts.yml]\n\
             scrape_configs:\n\
             - job_name: dcwatt-agent\n  static_configs: [{{targets: [{}]}}]\n\
             - job_name: dcwatt-collector\n  authorization: {{type: Bearer, credentials_file: dcwatt-scrape.token}}\n  static_configs: [{{targets: [\"{}\"]}}]\n",
            agents.join(", "),
            dep.collector.addr
        ),
    )
    .unwrap();
    std::fs::write(prom_dir.join("dcwatt-scrape.token"), "scrape-token\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(prom_dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .current_dir(&prom_dir)
        .arg("--config.file=prometheus.yml")
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot run prometheus (install Debian's prometheus package)");
    let _prometheus = Prometheus(child);
    let prom = format!("http://127.0.0.1:{port}");

    wait_for("prometheus ready", Duration::from_secs(60), || async {
        let r = reqwest::get(format!("{prom}/-/ready")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Every target is scraped.
    let targets = dep.agents.len() + 1;
    wait_for("every target up", Duration::from_secs(60), || async {
        let up = query(&prom, "sum(up)").await;
        let n = up.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (n as usize == targets).then_some(())
    })
    .await;

    // The recording rules produce the site PUE from the energy counters.
    // A few seconds of counters first, so that the increase is not one step.
    wait_for(
        "twenty collector scrapes",
        Duration::from_secs(60),
        || async {
            let r = query(&prom, "count_over_time(up{job=\"dcwatt-collector\"}[1h])").await;
            let n = r.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
            (n >= 20.0).then_some(())
        },
    )
    .await;
    let pue = wait_for("dcwatt:pue_ratio:1h", Duration::from_secs(30), || async {
        let r = query(&prom, "dcwatt:pue_ratio:1h").await;
        r.first()?["value"][1].as_str()?.parse::<f64>().ok()
    })
    .await;
    // Against the simulator's ground truth over the span Prometheus sampled.
    let span = |q: &'static str| {
        let prom = prom.clone();
        async move {
            let r = query(&prom, q).await;
            let secs: f64 = r[0]["value"][1].as_str().unwrap().parse().unwrap();
            (secs * 1000.0) as i64
        }
    };
    let last = span("max(timestamp(dcwatt_energy_joules_total{role=\"facility\"}))").await;
    let first =
        span("min(min_over_time(timestamp(dcwatt_energy_joules_total{role=\"facility\"})[1h:1s]))")
            .await;
    let mut want = std::collections::BTreeMap::<&str, f64>::new();
    for m in &dep.site.meters {
        let v = get_json(&format!(
            "{}/sim/truth?entity=meter:{}&from_ms={first}&to_ms={last}",
            sim.url(),
            m.id
        ))
        .await;
        *want.entry(m.role.as_str()).or_default() += v["joules"].as_f64().unwrap();
    }
    let true_pue = want["facility"] / want["it"];
    eprintln!("PUE from Prometheus' recording rule {pue}, ground truth {true_pue}");
    assert!(
        (pue / true_pue - 1.0).abs() < 0.03,
        "Prometheus' PUE from counters {pue}, truth {true_pue} over {first}..{last}"
    );
    let day = query(&prom, "dcwatt:pue_ratio:1d").await;
    assert_eq!(day.len(), 1, "dcwatt:pue_ratio:1d: {day:?}");
    let zones = query(&prom, "zone:dcwatt_pue_ratio:1h").await;
    assert!(!zones.is_empty(), "zone:dcwatt_pue_ratio:1h");

    // Every rule of both files is loaded and evaluates without error.
    let rules = get_json(&format!("{prom}/api/v1/rules")).await;
    let mut names = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_owned();
            assert_eq!(rule["health"], "ok", "{name}: {rule}");
            names.push(name);
        }
    }
    for expected in [
        "dcwatt:pue_ratio:1h",
        "DcwattGpuNearSlowdownThreshold",
        "DcwattMeterStale",
        "DcwattPueCoverageIncomplete",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not loaded: {names:?}"
        );
    }

    // A hall that has run for minutes has an incomplete last hour: pending.
    // Nothing about delivery is pending on a healthy hall.
    let alerts = wait_for(
        "coverage alert pending",
        Duration::from_secs(30),
        || async {
            let v = get_json(&format!("{prom}/api/v1/alerts")).await;
            let list = v["data"]["alerts"].as_array()?.clone();
            list.iter()
                .any(|a| {
                    a["labels"]["alertname"] == "DcwattPueCoverageIncomplete"
                        && a["state"] == "pending"
                })
                .then_some(list)
        },
    )
    .await;
    for a in &alerts {
        let name = a["labels"]["alertname"].as_str().unwrap_or_default();
        assert!(
            !matches!(
                name,
                "DcwattAgentSilent"
                    | "DcwattAgentDown"
                    | "DcwattCollectorDown"
                    | "DcwattCollectorIngestFailing"
                    | "DcwattSpoolDropping"
                    | "DcwattGpuLost"
            ),
            "{name} on a healthy hall: {a}"
        );
    }

    // Every dashboard query is valid PromQL for this Prometheus, with the
    // variables as Grafana fills them for "All" and a one-hour range.
    for (place, expr) in dashboard_exprs() {
        let expr = grafana_expr(&expr);
        let url = format!("{prom}/api/v1/query?query={}", url_escape(&expr));
        let v = get_json(&url).await;
        assert_eq!(v["status"], "success", "{place}: {expr}: {v}");
    }

    // The XID panel shows increases: a series' first sample is no increase,
    // so a second XID once Prometheus has the counter.
    wait_for(
        "the XID counter in Prometheus",
        Duration::from_secs(60),
        || async {
            let r = query(&prom, "dcwatt_gpu_xid_errors_total").await;
            (!r.is_empty()).then_some(())
        },
    )
    .await;
    fault(
        &sim.url(),
        json!({"kind": "xid", "gpu": hot_gpu, "code": 79}),
    )
    .await;

    // Every panel's query returns at least one series (tenant minutes are
    // booked once their minute has closed: up to a minute and a half).
    let exprs = dashboard_exprs();
    for (place, expr) in NEEDS_HISTORY.iter().chain(NOT_IN_THIS_HALL) {
        assert!(
            exprs.iter().any(|(p, e)| p.contains(place) && e == expr),
            "{place}: {expr} is no dashboard query any more"
        );
    }
    // A query passes once it has returned a series: some flicker (the instant
    // PUE is absent while the meters' latest readings, taken by different
    // agents at different instants of a load step, put IT above facility).
    let mut empty: Vec<&(String, String)> = exprs
        .iter()
        .filter(|(place, expr)| {
            !NEEDS_HISTORY
                .iter()
                .chain(NOT_IN_THIS_HALL)
                .any(|(p, e)| place.contains(p) && expr == e)
        })
        .collect();
    for _ in 0..150 {
        let mut still = Vec::new();
        for q in empty {
            if query(&prom, &grafana_expr(&q.1)).await.is_empty() {
                still.push(q);
            }
        }
        empty = still;
        if empty.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let empty: Vec<String> = empty.iter().map(|(p, e)| format!("{p}: {e}")).collect();
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}
