//! Shipping to collectors over real HTTP: a tiny axum "collector" records the
//! batches it accepts, checks the bearer token, and fails on purpose first.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use common::{must, pdu_fixture, serve, Agent};
use dcwatt_wire::{Batch, BatchAck, Entity, ErrorBody, Quantity};

const METRICS: &str = "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics";

#[derive(Default)]
struct Collector {
    token: String,
    /// 503s still to answer before accepting anything.
    failures_left: AtomicU32,
    /// Every POST seen, accepted or not.
    posts: AtomicU32,
    accepted: Mutex<Vec<Batch>>,
}

type Reply = (StatusCode, String);

async fn batches(State(c): State<Arc<Collector>>, headers: HeaderMap, body: String) -> Reply {
    c.posts.fetch_add(1, Ordering::SeqCst);
    let error = |status: StatusCode, e: &str| {
        let body = serde_json::to_string(&ErrorBody {
            error: e.into(),
            last_seq: None,
        })
        .unwrap();
        (status, body)
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {}", c.token)) {
        return error(StatusCode::UNAUTHORIZED, "authorization: unknown token");
    }
    if c.failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "warming up");
    }
    let batch: Batch = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    let mut accepted = c.accepted.lock().unwrap();
    let duplicate = accepted
        .iter()
        .any(|b| b.agent == batch.agent && b.seq == batch.seq);
    let n = batch.readings.len();
    let seq = batch.seq;
    if !duplicate {
        accepted.push(batch);
    }
    let ack = BatchAck {
        accepted: if duplicate { 0 } else { n },
        duplicate,
        last_seq: seq,
    };
    (StatusCode::OK, serde_json::to_string(&ack).unwrap())
}

fn collector(token: &str, failures: u32) -> Arc<Collector> {
    Arc::new(Collector {
        token: token.into(),
        failures_left: AtomicU32::new(failures),
        ..Collector::default()
    })
}

fn collector_router(c: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/batches", post(batches))
        .with_state(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_in_order_exactly_once_despite_failures() {
    let started_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let fixture = pdu_fixture();
    let meters = serve(Router::new().route(METRICS, get(move || async move { fixture }))).await;

    let good = collector("s3cret", 3);
    let good_addr = serve(collector_router(Arc::clone(&good))).await;
    // A second collector that refuses our token: its batches wait in the queue
    // (a token is fixed on one side or the other; dropping would lose data).
    let refusing = collector("other-token", 0);
    let refusing_addr = serve(collector_router(Arc::clone(&refusing))).await;

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "s3cret\n").unwrap();

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "r1-n1"
[[collectors]]
url = "http://{good_addr}"
token_file = "{token}"
[[collectors]]
url = "http://{refusing_addr}/"
token_file = "{token}"
[[sources]]
type = "redfish"
meter = "pdu-1"
url = "http://{meters}{METRICS}"
"#,
        token = token.display()
    ))
    .await;

    let good_label = format!("http://{good_addr}");
    let refusing_label = format!("http://{refusing_addr}");
    let ok_series = format!(r#"dcwatt_ship_batches_total{{collector="{good_label}",result="ok"}}"#);
    let rejected_series =
        format!(r#"dcwatt_ship_batches_total{{collector="{refusing_label}",result="rejected"}}"#);
    let waiting_series = format!(r#"dcwatt_ship_queue_batches{{collector="{refusing_label}"}}"#);
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            common::value(t, &ok_series).is_some_and(|v| v >= 8.0)
                && common::value(t, &waiting_series).is_some_and(|v| v >= 5.0)
        })
        .await;
    assert_eq!(
        common::value(&text, &rejected_series).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    assert!(
        refusing.posts.load(Ordering::SeqCst) >= 1,
        "the refusing collector was tried"
    );
    assert_eq!(
        must(
            &text,
            &format!(r#"dcwatt_ship_batches_total{{collector="{good_label}",result="dropped"}}"#)
        ),
        0.0
    );
    assert_eq!(
        must(
            &text,
            &format!(r#"dcwatt_ship_batches_total{{collector="{good_label}",result="duplicate"}}"#)
        ),
        0.0
    );
    assert!(
        must(
            &text,
            &format!(r#"dcwatt_ship_queue_batches{{collector="{good_label}"}}"#)
        ) >= 0.0
    );
    agent.stop().await;

    let accepted = good.accepted.lock().unwrap().clone();
    // The three 503s were retried: more POSTs than accepted requests.
    assert_eq!(good.failures_left.load(Ordering::SeqCst), 0);
    assert!(good.posts.load(Ordering::SeqCst) as usize >= accepted.len() + 3);

    // seq starts at the agent's start time in µs (no [spool]: nothing persisted)
    // and grows by one; the backlog after the 503s came merged (`first_seq..=seq`).
    // In order, none lost, none twice, two readings per batch.
    let first = accepted[0].first_seq.unwrap_or(accepted[0].seq);
    assert!(
        first >= started_us && first < started_us + 60_000_000,
        "{first} vs {started_us}"
    );
    let mut next = first;
    for (i, b) in accepted.iter().enumerate() {
        let from = b.first_seq.unwrap_or(b.seq);
        assert_eq!(from, next, "request {i} out of order");
        next = b.seq + 1;
        assert_eq!(b.version, dcwatt_wire::VERSION);
        assert_eq!(b.agent, "r1-n1");
        assert_eq!(b.node, "r1-n1");
        assert!(b.gpus.is_empty());
        assert_eq!(b.readings.len() as u64, 2 * (b.seq - from + 1));
        for pair in b.readings.chunks(2) {
            let power = pair
                .iter()
                .find(|r| {
                    r.entity == Entity::Meter("pdu-1".into()) && r.quantity == Quantity::PowerWatts
                })
                .expect("meter power in every batch");
            assert_eq!(power.value, 6438.0);
            let energy = pair
                .iter()
                .find(|r| r.quantity == Quantity::EnergyJoules)
                .expect("meter energy in every batch");
            assert_eq!(energy.value, 56438.0 * 3.6e6);
            assert!((power.ts_ms - b.created_ms).abs() < 5_000);
        }
    }
    assert!(next - first >= 8, "{} batches", next - first);
    // The refusing collector never accepted anything, and the good one did not wait for it.
    assert!(refusing.accepted.lock().unwrap().is_empty());
}

/// `ship_interval`: the ticks of each interval go as one merged request, in
/// order, none lost, none twice; the request count follows the interval, not
/// the ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_interval_merges_the_ticks_of_each_interval() {
    let fixture = pdu_fixture();
    let meters = serve(Router::new().route(METRICS, get(move || async move { fixture }))).await;
    let good = collector("s3cret", 0);
    let addr = serve(collector_router(Arc::clone(&good))).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "s3cret\n").unwrap();

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "r1-n1"
[[collectors]]
url = "http://{addr}"
token_file = "{token}"
ship_interval = "1s"
[[sources]]
type = "redfish"
meter = "pdu-1"
url = "http://{meters}{METRICS}"
"#,
        token = token.display()
    ))
    .await;
    let ok_series =
        format!(r#"dcwatt_ship_batches_total{{collector="http://{addr}",result="ok"}}"#);
    agent
        .wait_for(Duration::from_secs(30), |t| {
            common::value(t, &ok_series).is_some_and(|v| v >= 30.0)
        })
        .await;
    agent.stop().await;

    let accepted = good.accepted.lock().unwrap().clone();
    let posts = good.posts.load(Ordering::SeqCst) as u64;
    let mut next = accepted[0].first_seq.unwrap_or(accepted[0].seq);
    let mut ticks = 0;
    for (i, b) in accepted.iter().enumerate() {
        let from = b.first_seq.unwrap_or(b.seq);
        assert_eq!(from, next, "request {i} out of order");
        next = b.seq + 1;
        ticks += b.seq - from + 1;
        assert_eq!(b.readings.len() as u64, 2 * (b.seq - from + 1));
    }
    assert!(ticks >= 30, "{ticks} ticks");
    // At 100 ms ticks and one request a second, about 10 ticks per request;
    // without pacing every tick is its own request (posts == ticks).
    assert!(
        posts * 4 <= ticks,
        "{posts} requests carried {ticks} ticks: not paced"
    );
    // Every request after the first carries several ticks.
    let merged = accepted
        .iter()
        .skip(1)
        .filter(|b| b.first_seq.is_some())
        .count();
    assert!(
        merged + 1 >= accepted.len(),
        "{merged} of {} merged",
        accepted.len()
    );
}
