//! The meter parsers against hostile bodies, by property (10,000 cases each;
//! PROPTEST_CASES overrides): Redfish resources, any-JSON meters and
//! Prometheus text, as random bytes and as mutations of real bodies (a DMTF
//! mockup, a JSON meter, an exposition). Nothing panics; whatever is accepted
//! is a finite number in range; every refusal says why.

use dcwatt_agent::config::{AgentConfig, SourceSpec};
use dcwatt_agent::sources::{http_json, prometheus_text, redfish};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig::with_cases(n)
}

const REDFISH: &str =
    include_str!("fixtures/redfish/public-pdu/PowerEquipment/RackPDUs/1/Metrics/index.json");
const JSON_METER: &str = r#"{"result": {"power_kw": 12.5, "energy": 123456, "ts": 1795000000000}}"#;
const EXPOSITION: &str = "# HELP ups_power Output power.\n# TYPE ups_power gauge\nups_power{line=\"1\"} 1234.5\nups_power{line=\"2\"} 99\n# TYPE ups_energy counter\nups_energy{line=\"1\"} 5.5e6 1795000000000\n";

/// The quantities of one `http_json` and one `prometheus_text` source, from a real config.
fn specs() -> (
    Vec<dcwatt_agent::config::QuantitySpec>,
    Option<dcwatt_agent::config::TimestampSpec>,
    Vec<dcwatt_agent::config::QuantitySpec>,
) {
    let text = r#"
node = "n1"
[[sources]]
type = "http_json"
meter = "chiller-1"
url = "http://127.0.0.1:1/"
power = { pointer = "/result/power_kw", unit = "kW" }
energy = { pointer = "/result/energy", unit = "kWh", scale = 0.1 }
timestamp = { pointer = "/result/ts", format = "unix_ms" }
[[sources]]
type = "prometheus_text"
meter = "ups-1"
url = "http://127.0.0.1:1/metrics"
power = { metric = "ups_power", labels = { line = "1" }, unit = "W" }
energy = { metric = "ups_energy", labels = { line = "1" }, unit = "Wh" }
"#;
    let config = AgentConfig::from_toml(text).unwrap().build().unwrap();
    let mut json = None;
    let mut prom = None;
    for s in config.sources {
        match s {
            SourceSpec::HttpJson(h) => json = Some((h.quantities, h.timestamp)),
            SourceSpec::PrometheusText(p) => prom = Some(p.quantities),
            _ => {}
        }
    }
    let (q, ts) = json.unwrap();
    (q, ts, prom.unwrap())
}

fn mutate(
    base: &str,
    edits: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut body = base.as_bytes().to_vec();
    for (at, byte) in edits {
        let i = at.index(body.len());
        body[i] = *byte;
    }
    if let Some(c) = cut {
        let n = c.index(body.len());
        body.truncate(n);
    }
    body
}

fn edits() -> impl Strategy<Value = (Vec<(prop::sample::Index, u8)>, Option<prop::sample::Index>)> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        prop::option::of(any::<prop::sample::Index>()),
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn redfish_bodies_never_panic(
        (e, cut) in edits(),
        random in prop::collection::vec(any::<u8>(), 0..256),
        pick in any::<bool>(),
    ) {
        let body = if pick { mutate(REDFISH, &e, cut) } else { random };
        match redfish::parse::parse(&body) {
            Ok(p) => {
                for (_, v) in &p.values {
                    prop_assert!(v.is_finite());
                }
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn json_meter_bodies_never_panic(
        (e, cut) in edits(),
        random in prop::collection::vec(any::<u8>(), 0..128),
        pick in any::<bool>(),
        number in prop_oneof![any::<f64>().prop_map(|v| format!("{v:?}")), Just("1e400".to_owned()), Just("-5".to_owned()), Just("\"12\"".to_owned()), Just("null".to_owned())],
    ) {
        let (quantities, ts, _) = specs();
        let body = if pick {
            mutate(&JSON_METER.replace("12.5", &number), &e, cut)
        } else {
            random
        };
        match http_json::extract(&body, &quantities, ts.as_ref()) {
            Ok(x) => {
                for (_, v) in &x.0 {
                    prop_assert!(v.is_finite() && *v >= 0.0, "{v}");
                }
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    #[test]
    fn prometheus_text_never_panics(
        (e, cut) in edits(),
        random in "\\PC{0,200}",
        pick in any::<bool>(),
    ) {
        let (_, _, quantities) = specs();
        let body = if pick {
            String::from_utf8_lossy(&mutate(EXPOSITION, &e, cut)).into_owned()
        } else {
            random
        };
        match prometheus_text::parse(&body) {
            Ok(samples) => match prometheus_text::extract(&samples, &quantities) {
                Ok(x) => {
                    for (_, v) in &x.0 {
                        prop_assert!(v.is_finite() && *v >= 0.0, "{v}");
                    }
                }
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            },
            Err(err) => prop_assert!(!err.is_empty()),
        }
    }
}

#[test]
fn the_unmutated_bodies_parse() {
    let (quantities, ts, prom) = specs();
    let r = redfish::parse::parse(REDFISH.as_bytes()).unwrap();
    assert!(!r.values.is_empty());
    let j = http_json::extract(JSON_METER.as_bytes(), &quantities, ts.as_ref()).unwrap();
    assert_eq!(j.0.len(), 2);
    let samples = prometheus_text::parse(EXPOSITION).unwrap();
    let p = prometheus_text::extract(&samples, &prom).unwrap();
    assert_eq!(p.0.len(), 2);
}
