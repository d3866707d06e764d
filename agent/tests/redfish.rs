//! Redfish meters over real HTTP: the DMTF mockups served by the real Redfish
//! server `sushy-static` (PyPI `sushy-tools`, installed by `scripts/test` into
//! `.venv-test`), explicit and discovery mode, compared to golden files
//! (`UPDATE_GOLDEN=1` rewrites them); plus meters that answer garbage, nulls,
//! or too slowly, served by a local axum server.

mod common;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcwatt_agent::config::{RedfishAuth, RedfishSpec};
use dcwatt_agent::sources::meter::TlsSpec;
use dcwatt_agent::sources::redfish::RedfishSource;
use dcwatt_agent::sources::Collected;

use axum::routing::get;
use axum::Router;
use common::{must, pdu_fixture, serve, value, Agent};

const METRICS: &str = "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_are_read_and_failures_are_data() {
    let fixture = pdu_fixture();
    let router = Router::new()
        .route(METRICS, get(move || async move { fixture }))
        .route("/garbage", get(|| async { "<html>bad gateway</html>" }))
        .route(
            "/partial",
            get(|| async { r#"{"PowerWatts":{"Reading":null},"EnergykWh":{"Reading":1.5}}"# }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "{}"
            }),
        );
    let meters = serve(router).await;

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "redfish"
meter = "pdu-1"
url = "http://{meters}{METRICS}"
[[sources]]
type = "redfish"
meter = "pdu-bad"
url = "http://{meters}/garbage"
[[sources]]
type = "redfish"
meter = "pdu-partial"
url = "http://{meters}/partial"
[[sources]]
type = "redfish"
meter = "pdu-slow"
url = "http://{meters}/slow"
timeout = "200ms"
"#
    ))
    .await;

    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(
                t,
                r#"dcwatt_source_errors_total{source="redfish:pdu-slow"}"#,
            )
            .is_some_and(|v| v >= 2.0)
                && value(t, r#"dcwatt_source_errors_total{source="redfish:pdu-bad"}"#)
                    .is_some_and(|v| v >= 2.0)
        })
        .await;

    // The DMTF mockup: 6438 W, 56438 kWh.
    assert_eq!(
        must(&text, r#"dcwatt_meter_power_watts{meter="pdu-1"}"#),
        6438.0
    );
    assert_eq!(
        must(&text, r#"dcwatt_meter_energy_joules_total{meter="pdu-1"}"#),
        56438.0 * 3.6e6
    );
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="pdu-1"}"#), 1.0);
    assert_eq!(
        must(&text, r#"dcwatt_source_up{source="redfish:pdu-1"}"#),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_source_errors_total{source="redfish:pdu-1"}"#
        ),
        0.0
    );
    assert!(
        must(
            &text,
            r#"dcwatt_source_duration_seconds{source="redfish:pdu-1"}"#
        ) < 1.0
    );

    // Garbage: down, counted, no values.
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="pdu-bad"}"#), 0.0);
    assert_eq!(
        must(&text, r#"dcwatt_source_up{source="redfish:pdu-bad"}"#),
        0.0
    );
    assert_eq!(
        value(&text, r#"dcwatt_meter_power_watts{meter="pdu-bad"}"#),
        None
    );

    // A null reading is absent, never 0.
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="pdu-partial"}"#), 1.0);
    assert_eq!(
        value(&text, r#"dcwatt_meter_power_watts{meter="pdu-partial"}"#),
        None
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_energy_joules_total{meter="pdu-partial"}"#
        ),
        1.5 * 3.6e6
    );

    // Too slow: timed out, down; its duration is bounded by the timeout.
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="pdu-slow"}"#), 0.0);
    assert!(
        must(
            &text,
            r#"dcwatt_source_duration_seconds{source="redfish:pdu-slow"}"#
        ) < 1.0
    );

    // Standalone exporter: no collectors, no shipping metrics.
    assert!(!text.contains("dcwatt_ship_"), "{text}");
    assert!(!text.contains("dcwatt_gpu_"), "{text}");

    let health = reqwest::get(format!("http://{}/healthz", agent.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_meter_does_not_stop_the_agent() {
    // A port nobody listens on: bind, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "redfish"
meter = "gone"
url = "http://{dead}/redfish/v1/x"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, r#"dcwatt_source_errors_total{source="redfish:gone"}"#)
                .is_some_and(|v| v >= 3.0)
        })
        .await;
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="gone"}"#), 0.0);
    agent.stop().await;
}

// ---- sushy-static -----------------------------------------------------------

/// A running `sushy-static` serving one mockup folder; killed on drop.
struct Sushy {
    child: Child,
    base: String,
}

/// Where `sushy-static` is: `$SUSHY_STATIC`, the repo's `.venv-test`, or `PATH`.
fn sushy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SUSHY_STATIC") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/sushy-static");
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sushy-static"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "sushy-static not found: run scripts/test (it installs sushy-tools into .venv-test), \
             or set SUSHY_STATIC to its path"
        )
    })
}

impl Sushy {
    /// Serves `dir` on a free loopback port and waits until it answers.
    fn start(dir: &Path) -> Sushy {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = sushy_binary();
        let child = Command::new(&bin)
            .args(["--interface", "127.0.0.1", "--port", &port.to_string()])
            .arg("--mockup-files")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (scripts/test installs sushy-tools into .venv-test)",
                    bin.display()
                )
            });
        let sushy = Sushy {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::blocking_get_ok(&format!("{}/redfish/v1/", sushy.base));
            if ok {
                return sushy;
            }
            assert!(
                Instant::now() < deadline,
                "sushy-static did not answer on {} within 60 s",
                sushy.base
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/redfish/v1{path}", self.base)
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny blocking GET over std TCP (the test must not need a second runtime).
mod reqwest {
    pub use ::reqwest::*;

    pub fn blocking_get_ok(url: &str) -> bool {
        use std::io::{Read, Write};
        let Some(rest) = url.strip_prefix("http://") else {
            return false;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut s) = std::net::TcpStream::connect(host) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let req = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") && &buf[9..12] == b"200"
    }
}

/// A copy of one mockup in a temp dir (tests may rewrite it).
fn mockup(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/redfish")
        .join(name);
    let dst = tempfile::tempdir().unwrap();
    copy_dir(&src, dst.path());
    dst
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn spec(meter: &str, url: &str, discover: bool) -> RedfishSpec {
    RedfishSpec {
        meter: meter.to_owned(),
        url: url.parse().unwrap(),
        timeout: Duration::from_secs(10),
        discover,
        interval: None,
        auth: RedfishAuth::None,
        tls: TlsSpec::default(),
    }
}

/// One line per reading: `meter quantity value`, sorted; then meter errors.
fn describe(c: &Collected) -> String {
    let mut lines: Vec<String> = c
        .readings
        .iter()
        .map(|r| {
            format!(
                "{} {:?} {}",
                match &r.entity {
                    dcwatt_wire::Entity::Meter(m) => m.as_str(),
                    _ => "?",
                },
                r.quantity,
                r.value
            )
        })
        .collect();
    for m in &c.meters {
        if let Some(e) = &m.error {
            lines.push(format!("{} error {}", m.id, e.kind.as_str()));
        }
    }
    lines.sort();
    let mut out = String::new();
    for l in lines {
        writeln!(out, "{l}").unwrap();
    }
    out
}

/// Compares `actual` with `tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

/// Every kind of meter resource in the three mockups, read one by one.
const EXPLICIT: &[(&str, &[&str])] = &[
    (
        "public-pdu",
        &[
            "/PowerEquipment/RackPDUs/1/Metrics",
            "/PowerEquipment/RackPDUs/1/Outlets/A1",
            "/PowerEquipment/RackPDUs/1/Mains/AC1",
            "/PowerEquipment/RackPDUs/1/Branches/A",
            "/Chassis/PDU/Sensors/EnergyA1",
        ],
    ),
    (
        "public-rackmount1",
        &[
            "/Chassis/1U/Power",
            "/Chassis/1U/PowerSubsystem/PowerSupplies/Bay1/Metrics",
            "/Chassis/1U/EnvironmentMetrics",
        ],
    ),
    (
        "public-cooling-unit",
        &[
            "/ThermalEquipment/CDUs/1",
            "/ThermalEquipment/CDUs/1/PrimaryCoolantConnectors/1",
            "/ThermalEquipment/CDUs/1/SecondaryCoolantConnectors/1",
            "/ThermalEquipment/CDUs/1/EnvironmentMetrics",
            "/Chassis/CDU/Sensors/SecondaryFlow",
            "/Chassis/CDU/Sensors/SecondaryHeatLoad",
        ],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mockup_meter_reads_as_golden() {
    let mut out = String::new();
    for (name, paths) in EXPLICIT {
        let dir = mockup(name);
        let sushy = Sushy::start(dir.path());
        for path in *paths {
            let id = format!("{name}{}", path.replace('/', "."));
            let c = RedfishSource::new(spec(&id, &sushy.url(path), false))
                .unwrap()
                .collect()
                .await;
            assert_eq!(c.error, None, "{id}");
            assert!(!c.readings.is_empty(), "{id}: no reading");
            out += &describe(&c);
        }
    }
    golden("redfish_explicit.txt", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_every_meter_of_each_mockup() {
    let mut out = String::new();
    for name in ["public-pdu", "public-rackmount1", "public-cooling-unit"] {
        let dir = mockup(name);
        let sushy = Sushy::start(dir.path());
        let source = RedfishSource::new(spec(name, &sushy.url(""), true)).unwrap();
        let c = source.collect().await;
        assert_eq!(c.error, None, "{name}");
        assert!(!c.meters.is_empty(), "{name}: nothing discovered");
        // The ids are stable: prefix + path below the service root.
        assert_eq!(
            source.meters(),
            c.meters.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
        );
        out += &describe(&c);
    }
    golden("redfish_discovery.txt", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_advance_and_resets_are_counted() {
    let dir = mockup("public-pdu");
    let sushy = Sushy::start(dir.path());
    let file = dir
        .path()
        .join("PowerEquipment/RackPDUs/1/Metrics/index.json");
    let original = std::fs::read_to_string(&file).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&original).unwrap();
    let source = RedfishSource::new(spec(
        "pdu",
        &sushy.url("/PowerEquipment/RackPDUs/1/Metrics"),
        false,
    ))
    .unwrap();
    let energy = |c: &Collected| {
        c.readings
            .iter()
            .find(|r| r.quantity == dcwatt_wire::Quantity::EnergyJoules)
            .map(|r| r.value)
    };
    let mut rewrite = |kwh: f64, reset_time: &str| {
        doc["EnergykWh"]["Reading"] = kwh.into();
        doc["EnergykWh"]["SensorResetTime"] = reset_time.into();
        std::fs::write(&file, serde_json::to_string(&doc).unwrap()).unwrap();
    };

    rewrite(100.0, "2025-01-01T00:00:00Z");
    let c = source.collect().await;
    assert_eq!(energy(&c), Some(100.0 * 3.6e6));
    assert_eq!(c.meters[0].resets, 0);

    rewrite(100.5, "2025-01-01T00:00:00Z");
    let c = source.collect().await;
    assert_eq!(energy(&c), Some(100.5 * 3.6e6));
    assert_eq!(c.meters[0].resets, 0);

    // A decrease is a reset.
    rewrite(0.25, "2025-01-01T00:00:00Z");
    let c = source.collect().await;
    assert_eq!(energy(&c), Some(0.25 * 3.6e6));
    assert_eq!(c.meters[0].resets, 1);

    // A new SensorResetTime is a reset even when the value went up.
    rewrite(7.0, "2025-06-01T00:00:00Z");
    let c = source.collect().await;
    assert_eq!(c.meters[0].resets, 1);

    // A null reading is absent, not zero, and the meter is still up.
    doc["EnergykWh"]["Reading"] = serde_json::Value::Null;
    std::fs::write(&file, serde_json::to_string(&doc).unwrap()).unwrap();
    let c = source.collect().await;
    assert_eq!(energy(&c), None);
    assert!(c.meters[0].error.is_none());
}

/// The whole agent in discovery mode on the CDU mockup: coolant metrics with
/// their labels, and an exposition that `promtool check metrics` accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_discovers_a_cdu_and_exports_coolant() {
    let dir = mockup("public-cooling-unit");
    let sushy = Sushy::start(dir.path());
    let agent = Agent::start(&format!(
        r#"
interval = "200ms"
node = "gw-1"
[[sources]]
type = "redfish"
meter = "cdu-4"
url = "{}"
discover = true
timeout = "10s"
"#,
        sushy.url("")
    ))
    .await;
    let connector = "cdu-4.ThermalEquipment.CDUs.1.SecondaryCoolantConnectors.1";
    let text = agent
        .wait_for(Duration::from_secs(60), |t| {
            value(t, &format!(r#"dcwatt_meter_up{{meter="{connector}"}}"#)) == Some(1.0)
        })
        .await;
    assert_eq!(
        must(
            &text,
            &format!(
                r#"dcwatt_meter_coolant_temperature_celsius{{meter="{connector}",point="return"}}"#
            )
        ),
        48.0
    );
    assert_eq!(
        must(
            &text,
            &format!(r#"dcwatt_meter_heat_removed_watts{{meter="{connector}"}}"#)
        ),
        25310.0
    );
    assert_eq!(
        must(&text, r#"dcwatt_source_up{source="redfish:cdu-4"}"#),
        1.0
    );
    promtool_check(&text);
    agent.stop().await;
}

/// `promtool check metrics` must accept the exposition.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (install Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

/// A discovered PDU with many meters is read a few meters at a time: its
/// embedded web server sees at most `MAX_CONCURRENT_READS` requests at once,
/// and every meter is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_meters_are_read_a_few_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const OUTLETS: usize = 20;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let outlets: Vec<serde_json::Value> = (0..OUTLETS)
        .map(|i| serde_json::json!({"@odata.id": format!("/redfish/v1/PowerEquipment/RackPDUs/1/Outlets/{i}")}))
        .collect();
    let (f, m) = (Arc::clone(&in_flight), Arc::clone(&most));
    let router = Router::new()
        .route(
            "/redfish/v1/",
            get(|| async { r#"{"PowerEquipment":{"@odata.id":"/redfish/v1/PowerEquipment"}}"# }),
        )
        .route(
            "/redfish/v1/PowerEquipment",
            get(|| async {
                r#"{"RackPDUs":{"@odata.id":"/redfish/v1/PowerEquipment/RackPDUs/1"}}"#
            }),
        )
        .route(
            "/redfish/v1/PowerEquipment/RackPDUs/1",
            get(move || {
                let body = serde_json::json!({ "Outlets": outlets.clone() }).to_string();
                async move { body }
            }),
        )
        .route(
            "/redfish/v1/PowerEquipment/RackPDUs/1/Outlets/{i}",
            get(move |axum::extract::Path(i): axum::extract::Path<usize>| {
                let (f, m) = (Arc::clone(&f), Arc::clone(&m));
                async move {
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    format!(r#"{{"PowerWatts":{{"Reading":{}}}}}"#, 100 + i)
                }
            }),
        );
    let meters = serve(router).await;
    let source =
        RedfishSource::new(spec("pdu", &format!("http://{meters}/redfish/v1/"), true)).unwrap();
    // The walk reads one resource at a time; the meter reads come after it.
    let c = source.collect().await;
    assert_eq!(c.error, None);
    assert_eq!(c.meters.len(), OUTLETS, "{:?}", c.meters);
    assert!(c.meters.iter().all(|m| m.error.is_none()), "{:?}", c.meters);
    let watts: Vec<f64> = c.readings.iter().map(|r| r.value).collect();
    assert_eq!(watts.len(), OUTLETS);
    let most = most.load(Ordering::SeqCst);
    assert!(
        (2..=dcwatt_agent::sources::redfish::MAX_CONCURRENT_READS).contains(&most),
        "{most} requests at once"
    );
}
