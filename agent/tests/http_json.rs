//! `type = "http_json"` meters over real HTTP: a Shelly-style Pro 3EM answer
//! (Wh totals, W power), a JSON-RPC meter read with POST, unit and scale
//! conversion, numeric strings, the meter's own timestamp, null readings, wrong
//! pointers and bad values.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use common::{must, serve, value, Agent};
use dcwatt_agent::config::AgentConfig;

/// A Shelly Pro 3EM `EM.GetStatus` + `EMData.GetStatus` style answer.
const SHELLY: &str = r#"{
  "id": 0,
  "a_current": 4.029, "a_voltage": 236.1, "a_act_power": 951.2,
  "b_act_power": 1000.5, "c_act_power": 1010.3,
  "total_act_power": 2962.0,
  "emdata": { "total_act": 1234567.89, "total_act_ret": 0.0 },
  "temperature": { "tC": 41.5, "tF": 106.7 },
  "power_factor": null,
  "ts": 1700000000.25
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_meters_are_read_in_si_units() {
    let rpc_bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&rpc_bodies);
    let router = Router::new()
        .route("/shelly", get(|| async { SHELLY }))
        .route(
            "/rpc",
            post(move |body: String| async move {
                seen.lock().unwrap().push(body);
                r#"{"jsonrpc":"2.0","id":1,"result":{"energy_mwh":"2.5","power_kw":"0.75","flow_lpm":120,"supply_k":300.15}}"#
            }),
        )
        .route("/water", get(|| async { r#"{"total_litres":"123456.5"}"# }))
        .route("/negative", get(|| async { r#"{"p":-1}"# }))
        .route("/null", get(|| async { r#"{"p":null,"e":5}"# }));
    let addr = serve(router).await;

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "http_json"
meter = "shelly-1"
url = "http://{addr}/shelly"
power = {{ pointer = "/total_act_power", unit = "W" }}
energy = {{ pointer = "/emdata/total_act", unit = "Wh" }}
temperature = {{ pointer = "/temperature/tC", unit = "Cel" }}
[[sources]]
type = "http_json"
meter = "rpc-1"
url = "http://{addr}/rpc"
method = "POST"
body = '{{"jsonrpc":"2.0","id":1,"method":"Meter.GetStatus"}}'
headers = {{ "X-Api-Key" = "k1" }}
energy = {{ pointer = "/result/energy_mwh", unit = "MWh" }}
power = {{ pointer = "/result/power_kw", unit = "kW", scale = 2.0 }}
coolant_flow = {{ pointer = "/result/flow_lpm", unit = "L/min" }}
coolant_supply_temperature = {{ pointer = "/result/supply_k", unit = "K" }}
[[sources]]
type = "http_json"
meter = "water-1"
url = "http://{addr}/water"
water_volume = {{ pointer = "/total_litres", unit = "L" }}
[[sources]]
type = "http_json"
meter = "neg"
url = "http://{addr}/negative"
power = {{ pointer = "/p", unit = "W" }}
[[sources]]
type = "http_json"
meter = "nulls"
url = "http://{addr}/null"
power = {{ pointer = "/p", unit = "W" }}
energy = {{ pointer = "/e", unit = "kJ" }}
[[sources]]
type = "http_json"
meter = "wrong-pointer"
url = "http://{addr}/shelly"
power = {{ pointer = "/nope", unit = "W" }}
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            value(t, r#"dcwatt_meter_up{meter="rpc-1"}"#) == Some(1.0)
                && value(t, r#"dcwatt_meter_up{meter="shelly-1"}"#) == Some(1.0)
                && value(t, r#"dcwatt_meter_errors_total{meter="neg",kind="value"}"#)
                    .is_some_and(|v| v >= 1.0)
                && value(
                    t,
                    r#"dcwatt_meter_errors_total{meter="wrong-pointer",kind="parse"}"#,
                )
                .is_some_and(|v| v >= 1.0)
                && value(t, r#"dcwatt_meter_up{meter="nulls"}"#) == Some(1.0)
                && value(t, r#"dcwatt_meter_up{meter="water-1"}"#) == Some(1.0)
        })
        .await;

    assert_eq!(
        must(&text, r#"dcwatt_meter_power_watts{meter="shelly-1"}"#),
        2962.0
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_energy_joules_total{meter="shelly-1"}"#
        ),
        1234567.89 * 3600.0
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_temperature_celsius{meter="shelly-1"}"#
        ),
        41.5
    );
    // Numeric strings, MWh, kW with a scale, L/min → m³/s, K → °C.
    assert_eq!(
        must(&text, r#"dcwatt_meter_energy_joules_total{meter="rpc-1"}"#),
        2.5 * 3.6e9
    );
    assert_eq!(
        must(&text, r#"dcwatt_meter_power_watts{meter="rpc-1"}"#),
        1500.0
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_coolant_flow_cubic_meters_per_second{meter="rpc-1"}"#
        ),
        120.0 * 1e-3 / 60.0
    );
    let supply = must(
        &text,
        r#"dcwatt_meter_coolant_temperature_celsius{meter="rpc-1",point="supply"}"#,
    );
    assert!((supply - 27.0).abs() < 1e-9, "{supply}");
    // Litres → m³; a water meter has no energy.
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_water_cubic_meters_total{meter="water-1"}"#
        ),
        123456.5 * 1e-3
    );
    assert_eq!(
        value(
            &text,
            r#"dcwatt_meter_energy_joules_total{meter="water-1"}"#
        ),
        None
    );
    let bodies = rpc_bodies.lock().unwrap().clone();
    assert_eq!(
        bodies[0],
        r#"{"jsonrpc":"2.0","id":1,"method":"Meter.GetStatus"}"#
    );
    // Negative power: no reading, meter down.
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="neg"}"#), 0.0);
    assert_eq!(
        value(&text, r#"dcwatt_meter_power_watts{meter="neg"}"#),
        None
    );
    // A null reading is absent; the meter is up.
    assert_eq!(
        value(&text, r#"dcwatt_meter_power_watts{meter="nulls"}"#),
        None
    );
    assert_eq!(
        must(&text, r#"dcwatt_meter_energy_joules_total{meter="nulls"}"#),
        5000.0
    );
    assert_eq!(
        must(
            &text,
            r#"dcwatt_source_up{source="http_json:wrong-pointer"}"#
        ),
        0.0
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_timestamp_is_used() {
    use dcwatt_agent::sources::Source;
    let now_s = dcwatt_agent::sources::now_ms() as f64 / 1000.0;
    let router = Router::new().route(
        "/t",
        get(move || async move { format!(r#"{{"p":5,"ts":{}}}"#, now_s - 3.0) }),
    );
    let addr = serve(router).await;
    let config = AgentConfig::from_toml(&format!(
        r#"
node = "n"
[[sources]]
type = "http_json"
meter = "t"
url = "http://{addr}/t"
timestamp = {{ pointer = "/ts", format = "unix_s" }}
power = {{ pointer = "/p", unit = "W" }}
"#
    ))
    .and_then(AgentConfig::build)
    .unwrap();
    let source = Source::build(config.sources[0].clone(), Duration::from_secs(1)).unwrap();
    let c = source.collect().await;
    assert_eq!(c.error, None);
    assert_eq!(c.readings[0].ts_ms, ((now_s - 3.0) * 1000.0) as i64);
}

#[test]
fn bad_configs_name_the_key() {
    let build = |extra: &str| {
        AgentConfig::from_toml(&format!(
            "node = \"n\"\n[[sources]]\ntype = \"http_json\"\nmeter = \"m\"\nurl = \"http://h/x\"\n{extra}"
        ))
        .and_then(AgentConfig::build)
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(build("power = { pointer = \"/p\", unit = \"W\" }").is_ok());
    let cases = [
        ("", "sources[0]: no quantity configured"),
        (
            "power = { pointer = \"/p\", unit = \"kWh\" }",
            "sources[0].power.unit: \"kWh\" is not a unit of power",
        ),
        (
            "energy = { pointer = \"/p\", unit = \"kwh\" }",
            "sources[0].energy.unit: unknown unit \"kwh\"",
        ),
        (
            "power = { pointer = \"p\", unit = \"W\" }",
            "sources[0].power.pointer: \"p\" is not a JSON Pointer",
        ),
        (
            "power = { pointer = \"/p\", unit = \"W\", scale = 0 }",
            "sources[0].power.scale: 0 must be finite and above 0",
        ),
        (
            "power = { metric = \"x\", unit = \"W\" }",
            "sources[0].power.metric: not valid for type = \"http_json\"",
        ),
        (
            "body = \"{}\"\npower = { pointer = \"/p\", unit = \"W\" }",
            "sources[0].body: only valid with method = \"POST\"",
        ),
        (
            "method = \"PUT\"\npower = { pointer = \"/p\", unit = \"W\" }",
            "sources[0].method: \"PUT\"",
        ),
        (
            "power = { pointer = \"/p\", unit = \"W\", colour = 1 }",
            "unknown field `colour`",
        ),
        (
            "discover = true\npower = { pointer = \"/p\", unit = \"W\" }",
            "key `discover` is not valid for type = \"http_json\"",
        ),
        (
            "headers = { \"Bad Header\" = \"x\" }\npower = { pointer = \"/p\", unit = \"W\" }",
            "sources[0].headers.Bad Header: not a valid http header name",
        ),
        (
            "timestamp = { pointer = \"/t\", format = \"iso\" }\npower = { pointer = \"/p\", unit = \"W\" }",
            "sources[0].timestamp.format: \"iso\"",
        ),
    ];
    for (extra, expected) in cases {
        let err = build(extra).expect_err(extra);
        assert!(err.contains(expected), "{extra}: {err}");
    }
}
