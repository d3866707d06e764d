//! Redfish meters over real HTTP: the DMTF mockup served by a local axum server,
//! plus meters that answer garbage, nulls, or too slowly.

mod common;

use std::time::Duration;

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
