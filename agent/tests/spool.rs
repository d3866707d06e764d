//! The spool under stress, against a recording collector on 127.0.0.1 that
//! applies each `(agent, seq)` once as the real one does (duplicates, `first_seq`,
//! 409 with `last_seq`) and keeps every batch it applied, so exactly-once can be
//! checked precisely: the real `dcwatt-agent` binary killed with SIGKILL over and
//! over while it writes, and a spool that fills up while the collector is down.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::{must, pdu_fixture, serve, Agent};
use dcwatt_agent::spool::{Fsync, Spool, SpoolSpec, Storage};
use dcwatt_wire::{Batch, BatchAck, ErrorBody};

const METRICS: &str = "/redfish/v1/PowerEquipment/RackPDUs/1/Metrics";
/// Readings per batch: the PDU's power and energy.
const READINGS: usize = 2;

#[derive(Default)]
struct Recorder {
    /// While true, answer 503 with `Retry-After: 1`.
    down: AtomicBool,
    /// The lowest seq ever offered (applied or not).
    lowest_offered: AtomicU64,
    applied: Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    last_seq: u64,
    /// Every applied request: (first_seq, seq, readings).
    batches: Vec<(u64, u64, usize)>,
    duplicates: u64,
    conflicts: u64,
}

async fn batches(State(c): State<Arc<Recorder>>, headers: HeaderMap, body: String) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some("Bearer s3cret") {
        return (StatusCode::UNAUTHORIZED, "unknown token").into_response();
    }
    let batch: Batch = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e}")).into_response(),
    };
    let first = batch.first_seq.unwrap_or(batch.seq);
    c.lowest_offered.fetch_min(first, Ordering::SeqCst);
    if c.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "down",
        )
            .into_response();
    }
    let mut a = c.applied.lock().unwrap();
    if batch.seq <= a.last_seq {
        a.duplicates += 1;
        let ack = BatchAck {
            accepted: 0,
            duplicate: true,
            last_seq: a.last_seq,
        };
        return axum::Json(ack).into_response();
    }
    if first <= a.last_seq {
        a.conflicts += 1;
        let e = ErrorBody {
            error: "first_seq: overlap".into(),
            last_seq: Some(a.last_seq),
        };
        return (StatusCode::CONFLICT, axum::Json(e)).into_response();
    }
    a.last_seq = batch.seq;
    a.batches.push((first, batch.seq, batch.readings.len()));
    let ack = BatchAck {
        accepted: batch.readings.len(),
        duplicate: false,
        last_seq: batch.seq,
    };
    axum::Json(ack).into_response()
}

async fn recorder() -> (Arc<Recorder>, String) {
    let c = Arc::new(Recorder {
        lowest_offered: AtomicU64::new(u64::MAX),
        ..Recorder::default()
    });
    let addr = serve(
        Router::new()
            .route("/v1/batches", post(batches))
            .with_state(Arc::clone(&c)),
    )
    .await;
    (c, format!("http://{addr}"))
}

async fn meters() -> String {
    let fixture = pdu_fixture();
    let addr = serve(Router::new().route(METRICS, get(move || async move { fixture }))).await;
    format!("http://{addr}{METRICS}")
}

fn config(
    collector: &str,
    token: &std::path::Path,
    spool: &std::path::Path,
    meter: &str,
    max_bytes: u64,
) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
interval = "100ms"
node = "r1-n1"
[[collectors]]
url = "{collector}"
token_file = "{token}"
[spool]
dir = "{spool}"
max_bytes = {max_bytes}
[[sources]]
type = "redfish"
meter = "pdu-1"
url = "{meter}"
"#,
        token = token.display(),
        spool = spool.display(),
    )
}

/// The seqs an applied request stands for, checking that each is applied once,
/// in order, with every batch's readings.
fn covered(batches: &[(u64, u64, usize)]) -> BTreeSet<u64> {
    let mut seqs = BTreeSet::new();
    let mut last = 0;
    for &(first, seq, readings) in batches {
        assert!(
            first > last,
            "request {first}..={seq} after {last}: out of order or twice"
        );
        assert_eq!(
            readings,
            READINGS * (seq - first + 1) as usize,
            "{first}..={seq}"
        );
        seqs.extend(first..=seq);
        last = seq;
    }
    seqs
}

/// Starts the real binary and waits for its `listening on` line.
fn spawn_agent(config: &std::path::Path, log: &std::path::Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcwatt-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    child
}

/// Waits until `f` holds, polling; panics with `what` after a generous limit.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_nothing_and_applies_nothing_twice() {
    let (collector, url) = recorder().await;
    let meter = meters().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let spool_dir = dir.path().join("spool");
    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, config(&url, &token, &spool_dir, &meter, 1 << 20)).unwrap();
    let log = dir.path().join("agent.log");

    // SIGKILL 50 times, 0-300 ms after start: mid-tick, mid-fsync, mid-POST.
    let mut rng = fastrand::Rng::with_seed(0x5eed_5900);
    let opened = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Spool opened.")
            .count()
    };
    for round in 0..50 {
        let mut child = spawn_agent(&conf, &log);
        // The spool opens every time, whatever the last kill left.
        eventually("the spool opens", || opened() == round + 1).await;
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: the agent exited by itself; log:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A last, clean run that delivers the backlog, then SIGTERM.
    let mut child = spawn_agent(&conf, &log);
    let spooled_before = collector.applied.lock().unwrap().last_seq;
    eventually("the backlog is delivered", || {
        collector.applied.lock().unwrap().batches.len() > 3
            && collector.applied.lock().unwrap().last_seq > spooled_before
    })
    .await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("Spool opened.").count(), 51);
    assert!(!text.contains("Agent failed"), "{text}");

    // What the collector applied and what the spool still holds are, together,
    // every sequence number the agent ever gave out, each exactly once.
    let spec = SpoolSpec {
        storage: Storage::Disk {
            dir: spool_dir,
            fsync: Fsync::Never,
        },
        max_bytes: 1 << 20,
    };
    let mut spool = Spool::open(&spec, std::slice::from_ref(&url)).unwrap();
    let held: Vec<u64> = spool
        .read_after(spool.acked(0), usize::MAX, usize::MAX)
        .iter()
        .map(|r| r.seq)
        .collect();
    let applied = collector.applied.lock().unwrap();
    let seqs = covered(&applied.batches);
    let first = collector.lowest_offered.load(Ordering::SeqCst);
    let last = spool.next_seq() - 1;
    assert_eq!(seqs.first().copied(), Some(first));
    let mut all = seqs.clone();
    for s in &held {
        assert!(all.insert(*s), "{s} both applied and still spooled");
    }
    assert_eq!(all, (first..=last).collect::<BTreeSet<u64>>());
    assert!(
        last - first + 1 >= 50,
        "{} batches in 51 runs",
        last - first + 1
    );
    assert!(spool.acked(0) <= applied.last_seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_drops_the_oldest_counts_them_and_keeps_collecting() {
    let (collector, url) = recorder().await;
    collector.down.store(true, Ordering::SeqCst);
    let meter = meters().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let spool_dir = dir.path().join("spool");
    let max = 16 << 10;
    let agent = Agent::start(&config(&url, &token, &spool_dir, &meter, max)).await;

    let dropped = format!("dcwatt_ship_batches_total{{collector=\"{url}\",result=\"dropped\"}}");
    let text = agent
        .wait_for(Duration::from_secs(60), |t| {
            common::value(t, "dcwatt_spool_dropped_batches_total").is_some_and(|v| v >= 20.0)
        })
        .await;
    // Bounded, counted, still collecting.
    assert!(must(&text, "dcwatt_spool_bytes") <= max as f64);
    assert_eq!(
        must(&text, &dropped),
        must(&text, "dcwatt_spool_dropped_batches_total")
    );
    assert_eq!(
        must(&text, r#"dcwatt_source_up{source="redfish:pdu-1"}"#),
        1.0
    );
    assert!(
        must(
            &text,
            &format!("dcwatt_ship_lag_seconds{{collector=\"{url}\"}}")
        ) > 0.0
    );
    assert!(collector.applied.lock().unwrap().batches.is_empty());

    // The collector comes back: what was kept arrives, once, in order.
    collector.down.store(false, Ordering::SeqCst);
    let ok = format!("dcwatt_ship_batches_total{{collector=\"{url}\",result=\"ok\"}}");
    let text = agent
        .wait_for(Duration::from_secs(60), |t| {
            common::value(t, &ok).is_some_and(|v| v >= 60.0)
        })
        .await;
    assert!(must(&text, "dcwatt_spool_bytes") <= max as f64);
    agent.stop().await;

    let spec = SpoolSpec {
        storage: Storage::Disk {
            dir: spool_dir,
            fsync: Fsync::Never,
        },
        max_bytes: max,
    };
    let spool = Spool::open(&spec, std::slice::from_ref(&url)).unwrap();
    let applied = collector.applied.lock().unwrap();
    let seqs = covered(&applied.batches);
    let first_ever = collector.lowest_offered.load(Ordering::SeqCst);
    let last = spool.next_seq() - 1;
    let text_dropped = must(&text, "dcwatt_spool_dropped_batches_total") as u64;
    // Applied + dropped + still waiting = every batch made, exactly.
    let waiting = spool.pending(0);
    assert_eq!(
        seqs.len() as u64 + text_dropped + waiting,
        last - first_ever + 1,
        "applied {} dropped {text_dropped} waiting {waiting}, made {first_ever}..={last}",
        seqs.len()
    );
    // Drops come from the oldest end: what was applied is one contiguous run.
    let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(seqs.len() as u64, hi - lo + 1);
    assert!(lo > first_ever);
    assert_eq!(applied.conflicts, 0);
}
