//! `type = "prometheus_text"` meters over real HTTP: one series of an
//! snmp_exporter-style exposition (UPS and PDU MIBs), picked by metric name
//! and labels; unit and scale; counters and gauges; ambiguous, missing and
//! malformed series are errors.

mod common;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{must, serve, value, Agent};

/// What snmp_exporter answers for a UPS and a PDU (abridged).
const SNMP: &str = r#"# HELP snmp_scrape_duration_seconds Total SNMP time scrape took (walk and processing).
# TYPE snmp_scrape_duration_seconds gauge
snmp_scrape_duration_seconds{module="ups"} 0.231
# HELP upsOutputPower The output real power, in watts - 1.3.6.1.2.1.33.1.4.4.1.4
# TYPE upsOutputPower gauge
upsOutputPower{upsOutputLineIndex="1"} 4100
upsOutputPower{upsOutputLineIndex="2"} 3900
upsOutputPower{upsOutputLineIndex="3"} 4000
# HELP upsOutputEnergy Output energy in tenths of kWh - vendor MIB
# TYPE upsOutputEnergy counter
upsOutputEnergy{line="1",site="hall \"A\"\\1"} 123456 TS
# HELP pduInletTemp Inlet temperature in tenths of degrees Celsius
# TYPE pduInletTemp gauge
pduInletTemp{pdu="r12-a"} 231
pduInletTemp{pdu="r12-b"} NaN
# HELP makeupWaterTotal Make-up water of the dry coolers, US gallons - BMS
# TYPE makeupWaterTotal counter
makeupWaterTotal{loop="dc-1"} 26417.2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_are_picked_by_name_and_labels() {
    // A sample timestamp 5 s ago: plausible, so it is the reading's time.
    let ts_ms = dcwatt_agent::sources::now_ms() - 5_000;
    let snmp = SNMP.replace("TS", &ts_ms.to_string());
    let router = Router::new()
        .route("/snmp", get(move || async move { snmp }))
        .route("/broken", get(|| async { "upsOutputPower{line=\"1} 5\n" }));
    let addr = serve(router).await;
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "prometheus_text"
meter = "ups-1"
url = "http://{addr}/snmp?target=ups-1&module=ups"
power = {{ metric = "upsOutputPower", labels = {{ upsOutputLineIndex = "2" }}, unit = "W" }}
energy = {{ metric = "upsOutputEnergy", labels = {{ line = "1", site = "hall \"A\"\\1" }}, unit = "kWh", scale = 0.1 }}
[[sources]]
type = "prometheus_text"
meter = "pdu-r12-a"
url = "http://{addr}/snmp"
temperature = {{ metric = "pduInletTemp", labels = {{ pdu = "r12-a" }}, unit = "Cel", scale = 0.1 }}
[[sources]]
type = "prometheus_text"
meter = "water-1"
url = "http://{addr}/snmp"
water_volume = {{ metric = "makeupWaterTotal", labels = {{ loop = "dc-1" }}, unit = "gal" }}
[[sources]]
type = "prometheus_text"
meter = "ambiguous"
url = "http://{addr}/snmp"
power = {{ metric = "upsOutputPower", unit = "W" }}
[[sources]]
type = "prometheus_text"
meter = "nan"
url = "http://{addr}/snmp"
temperature = {{ metric = "pduInletTemp", labels = {{ pdu = "r12-b" }}, unit = "Cel" }}
[[sources]]
type = "prometheus_text"
meter = "missing"
url = "http://{addr}/snmp"
power = {{ metric = "upsOutputPower", labels = {{ upsOutputLineIndex = "9" }}, unit = "W" }}
[[sources]]
type = "prometheus_text"
meter = "broken"
url = "http://{addr}/broken"
power = {{ metric = "upsOutputPower", unit = "W" }}
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(10), |t| {
            ["ambiguous", "missing", "broken"].iter().all(|m| {
                value(
                    t,
                    &format!(r#"dcwatt_meter_errors_total{{meter="{m}",kind="parse"}}"#),
                )
                .is_some_and(|v| v >= 1.0)
            }) && value(t, r#"dcwatt_meter_errors_total{meter="nan",kind="value"}"#)
                .is_some_and(|v| v >= 1.0)
                && value(t, r#"dcwatt_meter_up{meter="ups-1"}"#) == Some(1.0)
                && value(t, r#"dcwatt_meter_up{meter="pdu-r12-a"}"#) == Some(1.0)
                && value(t, r#"dcwatt_meter_up{meter="water-1"}"#) == Some(1.0)
        })
        .await;
    assert_eq!(
        must(&text, r#"dcwatt_meter_power_watts{meter="ups-1"}"#),
        3900.0
    );
    let e = must(&text, r#"dcwatt_meter_energy_joules_total{meter="ups-1"}"#);
    assert!((e - 12345.6 * 3.6e6).abs() < 1.0, "{e}");
    // The exposed sample timestamp is the reading's time.
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_last_reading_timestamp_seconds{meter="ups-1"}"#
        ),
        ts_ms as f64 / 1000.0
    );
    let t = must(
        &text,
        r#"dcwatt_meter_temperature_celsius{meter="pdu-r12-a"}"#,
    );
    assert!((t - 23.1).abs() < 1e-9, "{t}");
    // US gallons → m³.
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_water_cubic_meters_total{meter="water-1"}"#
        ),
        26417.2 * 3.785_411_784e-3
    );
    for m in ["ambiguous", "missing", "broken", "nan"] {
        assert_eq!(
            must(&text, &format!(r#"dcwatt_meter_up{{meter="{m}"}}"#)),
            0.0
        );
    }
    agent.stop().await;
}
