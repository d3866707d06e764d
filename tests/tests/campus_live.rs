//! A campus on an existing engine: two simulated halls, each with its own
//! collector, plus the mirror site's collector; one real Prometheus per hall
//! (the shipped `deploy/campus/prometheus-hall.yml`) remote-writing into a
//! real VictoriaMetrics, where vmalert evaluates the shipped recording rules
//! (`deploy/prometheus/recording.yml`). The campus energy by role and PUE read
//! from the store equal the simulators' ground truth, and the mirror, whose
//! series are in the store too, is not counted.
//!
//! The bound. To end on exact figures the agents are stopped: every
//! collector's counters then hold what its meters' readings span, and the
//! store's campus figures converge on their sum (checked exactly). In
//! VictoriaMetrics `increase()` over a window holding a series' first sample
//! counts that sample from zero, so on halls younger than the rules' hour the
//! figures are each collector's counters whole: the energy between its
//! meters' first and last readings. The truth is taken from before each
//! collector started to after its agents stopped, so the store's energy is at
//! most the truth (1e-6 for float formatting), and at least the truth less
//! what no reading covers: the start-up before a meter's first reading and
//! the last agent interval, allowed 3 s of the role's mean power.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dcwatt_sim::launch::{launch, Deployment, LaunchOptions, Proc};
use dcwatt_tests::{get_json, sample, wait_for};
use sha2::{Digest, Sha256};

/// Kills a server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
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

fn start(program: &str, args: &[String], dir: &Path, log: &str) -> Server {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    let child = Command::new(program)
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    Server(child)
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

/// An instant query; the single value, or `None` when the result is empty.
async fn value(base: &str, q: &str) -> Option<f64> {
    let v = get_json(&format!("{base}/api/v1/query?query={}", url_escape(q))).await;
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// A simulated hall in its own zone, its collector and agents (and the mirror).
async fn hall(dir: &Path, n: u32, mirror: bool) -> (Proc, Deployment, i64) {
    std::fs::create_dir_all(dir).unwrap();
    let args: Vec<OsString> = [
        "serve",
        "--racks",
        "2",
        "--nodes-per-rack",
        "1",
        "--gpus-per-node",
        "2",
        "--seed",
        &(20 + n).to_string(),
        "--listen",
        "127.0.0.1:0",
        "--zone",
        &format!("hall-{n}"),
        "--state-dir",
    ]
    .iter()
    .map(OsString::from)
    .chain([dir.join("nvml").into_os_string()])
    .collect();
    let sim = Proc::spawn("sim", "dcwatt-sim", &args, &[], &dir.join("sim.log")).unwrap();
    let opts = LaunchOptions {
        dir: dir.to_path_buf(),
        interval: "500ms".into(),
        log_filter: "warn".into(),
        mirror,
        collector_extra: format!(
            "\n[operator]\ntoken_sha256 = \"{}\"\n[metrics]\ntoken_sha256 = \"{}\"\n",
            hex::encode(Sha256::digest(b"operator-token")),
            hex::encode(Sha256::digest(b"scrape-token"))
        ),
    };
    // The truth starts before the collector does.
    let started = dcwatt_wire::time::now_ms();
    let dep = launch(&sim.url(), &opts).await.unwrap();
    (sim, dep, started)
}

/// The shipped hall Prometheus config, pointed at this hall's collector (and
/// mirror), the store, with 1 s intervals.
fn hall_prometheus(dir: &Path, n: u32, collector: &str, mirror: Option<&str>, store: &str) {
    std::fs::create_dir_all(dir.join("targets/agents")).unwrap();
    let shipped =
        std::fs::read_to_string(repo().join("deploy/campus/prometheus-hall.yml")).unwrap();
    let mut text = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("hall: hall-1", &format!("hall: hall-{n}"))
        .replace("collector-hall-1.example:9400", collector)
        .replace(
            "http://campus-store.example:8428/api/v1/write",
            &format!("{store}/api/v1/write"),
        )
        .replace("batch_send_deadline: 5s", "batch_send_deadline: 1s");
    for needle in ["hall: hall-", "/api/v1/write", "dcwatt-collector-mirror"] {
        assert!(text.contains(needle), "{needle} not in prometheus-hall.yml");
    }
    match mirror {
        Some(m) => text = text.replace("collector-mirror.example:9400", m),
        None => {
            // Only one hall scrapes the mirror: cut its job.
            let from = text.find("  # The mirror site's collector").unwrap();
            let to = text.find("remote_write:").unwrap();
            text.replace_range(from..to, "");
        }
    }
    std::fs::write(dir.join("prometheus.yml"), text).unwrap();
    std::fs::copy(
        repo().join("deploy/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(dir.join("dcwatt-scrape.token"), "scrape-token\n").unwrap();
}

/// A collector's energy counters by role, summed over its zones.
async fn counters(collector: &Proc) -> std::collections::BTreeMap<String, f64> {
    let m = reqwest::Client::new()
        .get(format!("{}/metrics", collector.url()))
        .bearer_auth("scrape-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for l in m
        .lines()
        .filter(|l| l.starts_with("dcwatt_energy_joules_total{"))
    {
        let role = l.split("role=\"").nth(1).and_then(|r| r.split('"').next());
        let v = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(role), Some(v)) = (role, v) {
            *out.entry(role.to_owned()).or_default() += v;
        }
    }
    assert!(sample(&m, "dcwatt_pue_invalid_total").is_some(), "{m}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campus_figures_from_the_global_store_match_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The campus store and its rules.
    let vm_port = free_port();
    let store = format!("http://127.0.0.1:{vm_port}");
    std::fs::create_dir_all(d.join("vm")).unwrap();
    let _vm = start(
        "victoria-metrics",
        &[
            format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            format!("-storageDataPath={}", d.join("vm/data").display()),
            "-retentionPeriod=1d".into(),
            // The newest samples queryable at once (the shipped default: 5 s).
            "-search.latencyOffset=0s".into(),
            "-search.disableCache".into(),
        ],
        &d.join("vm"),
        "victoria-metrics.log",
    );
    wait_for(
        "victoria-metrics ready",
        Duration::from_secs(60),
        || async {
            let r = reqwest::get(format!("{store}/health")).await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/recording.yml"))
        .unwrap()
        .replace("interval: 1m", "interval: 1s");
    std::fs::write(d.join("vm/recording.yml"), rules).unwrap();
    let _vmalert = start(
        "vmalert",
        &[
            format!("-rule={}", d.join("vm/recording.yml").display()),
            format!("-datasource.url={store}"),
            format!("-remoteWrite.url={store}"),
            "-evaluationInterval=1s".into(),
            format!("-httpListenAddr=127.0.0.1:{}", free_port()),
        ],
        &d.join("vm"),
        "vmalert.log",
    );

    // Two halls; hall 1's agents also ship to the mirror site's collector.
    let (_sim1, mut hall1, started1) = hall(&d.join("hall-1"), 1, true).await;
    let (_sim2, mut hall2, started2) = hall(&d.join("hall-2"), 2, false).await;
    let mut proms = Vec::new();
    for (n, dep) in [(1, &hall1), (2, &hall2)] {
        let pdir = d.join(format!("prometheus-{n}"));
        let mirror = dep.mirror.as_ref().map(|m| m.addr.to_string());
        hall_prometheus(
            &pdir,
            n,
            &dep.collector.addr.to_string(),
            mirror.as_deref(),
            &store,
        );
        let port = free_port();
        proms.push(start(
            "prometheus",
            &[
                "--config.file=prometheus.yml".into(),
                format!("--storage.tsdb.path={}", pdir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &pdir,
            "prometheus.log",
        ));
    }

    // The campus figures appear in the store, from both halls.
    let both = "count(count by (hall) (dcwatt_energy_joules_total{job=\"dcwatt-collector\"}))";
    wait_for(
        "both halls in the store",
        Duration::from_secs(60),
        || async { (value(&store, both).await? == 2.0).then_some(()) },
    )
    .await;
    wait_for(
        "the campus PUE recorded",
        Duration::from_secs(60),
        || async { value(&store, "dcwatt:pue_ratio:1h").await },
    )
    .await;
    // Energy to compare: 20 s more of both halls.
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Stop the agents: the collectors' counters are final.
    hall1.agents.clear();
    hall2.agents.clear();
    let stopped = dcwatt_wire::time::now_ms();

    // The store converges on the halls' collectors' counters (the mirror's
    // not among them): a batch in flight may still land, so until stable.
    let roles = ["facility", "it", "cooling"];
    let mut last: Option<Vec<f64>> = None;
    let mut tries = 0;
    let stored = loop {
        let (a, b) = (
            counters(&hall1.collector).await,
            counters(&hall2.collector).await,
        );
        let sums: Vec<f64> = roles
            .iter()
            .map(|r| a.get(*r).copied().unwrap_or(0.0) + b.get(*r).copied().unwrap_or(0.0))
            .collect();
        let mut from_store = Vec::new();
        for (role, rule) in [
            ("facility", Some("dcwatt:facility_energy_joules:increase1h")),
            ("it", Some("dcwatt:it_energy_joules:increase1h")),
            ("cooling", None),
        ] {
            let q = match rule {
                Some(r) => r.to_owned(),
                // No rule records cooling: the rules' expression for it.
                None => format!(
                    "sum(increase(dcwatt_energy_joules_total{{job=\"dcwatt-collector\",role=\"{role}\"}}[1h]))"
                ),
            };
            from_store.push(value(&store, &q).await.unwrap_or(f64::NAN));
        }
        let equal = sums
            .iter()
            .zip(&from_store)
            .all(|(a, b)| (a - b).abs() <= 1e-9 * a.abs().max(1.0));
        if equal && last.as_ref() == Some(&sums) {
            break from_store;
        }
        tries += 1;
        assert!(
            tries < 120,
            "the store's campus energy {from_store:?} never settled on the collectors' counters {sums:?}"
        );
        last = Some(sums);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The truth: every meter of each role of both halls, from before its
    // collector started to after its agents stopped.
    let mut truth = vec![0.0; roles.len()];
    for (dep, sim_started) in [(&hall1, started1), (&hall2, started2)] {
        let sim = dep.site.meters.first().unwrap().url.clone();
        let base = &sim[..sim.find("/redfish").unwrap()];
        for m in &dep.site.meters {
            let v = get_json(&format!(
                "{base}/sim/truth?entity=meter:{}&from_ms={sim_started}&to_ms={stopped}",
                m.id
            ))
            .await;
            let j = v["joules"].as_f64().unwrap_or_else(|| panic!("{v}"));
            if let Some(i) = roles.iter().position(|r| *r == m.role) {
                truth[i] += j;
            }
        }
    }
    let span_s = (stopped - started1.min(started2)) as f64 / 1000.0;
    for (i, role) in roles.iter().enumerate() {
        let (got, want) = (stored[i], truth[i]);
        let allowed = 3.0 * want / span_s;
        eprintln!(
            "campus {role}: store {got:.0} J, truth {want:.0} J, short by {:.0} J (allowed {allowed:.0})",
            want - got
        );
        assert!(got > 0.0, "{role}: nothing");
        assert!(
            got <= want * (1.0 + 1e-6),
            "{role}: store {got} J above the truth {want} J"
        );
        assert!(
            got >= want - allowed,
            "{role}: store {got} J, truth {want} J, more than 3 s of power short"
        );
    }

    // The campus PUE: the rule's ratio of the stored energies, and the truth's
    // within what the energies allow (3 s of power of a span, both ways).
    // (The rule reads the energies recorded one evaluation before: until it settles.)
    let pue = wait_for(
        "the campus PUE settled",
        Duration::from_secs(60),
        || async {
            let pue = value(&store, "dcwatt:pue_ratio:1h").await?;
            ((pue - stored[0] / stored[1]).abs() < 1e-9).then_some(pue)
        },
    )
    .await;
    let true_pue = truth[0] / truth[1];
    let rel = 3.0 / span_s;
    eprintln!(
        "campus PUE: store {pue:.5}, truth {true_pue:.5} (allowed ±{:.2} %)",
        rel * 100.0
    );
    assert!(
        (pue / true_pue - 1.0).abs() <= rel,
        "PUE {pue}, truth {true_pue}"
    );

    // The mirror's series are in the store, with hall 1's energy, and
    // counting them would have added it again: the figures above exclude it.
    let mirror_it = value(
        &store,
        "sum(increase(dcwatt_energy_joules_total{job=\"dcwatt-collector-mirror\",role=\"it\"}[1h]))",
    )
    .await
    .expect("the mirror's series in the store");
    let hall1_it = counters(&hall1.collector).await["it"];
    assert!(
        (mirror_it / hall1_it - 1.0).abs() < 0.05,
        "mirror {mirror_it} J, hall 1 {hall1_it} J"
    );
    assert!(stored[1] + mirror_it > truth[1] * (1.0 + 1e-6));

    drop(proms);
    drop(hall1);
    drop(hall2);
}
