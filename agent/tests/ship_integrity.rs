//! Billing-grade shipping: the agent's [`Shipper`] against a fake collector on
//! 127.0.0.1 that misbehaves on purpose, in turn: an acknowledgement of a seq
//! never sent (`last_seq = u64::MAX`), a 200 whose body is no acknowledgement,
//! a 409 naming a seq never sent, 400s for clock skew, 401s, and later a
//! stretch of 403s. Otherwise it applies each `(agent, seq)` once as the real
//! collector does. Every batch made must arrive exactly once (by seq and by
//! the sum of its energy readings), the cursor must stay on real
//! acknowledgements, every misbehaviour must be counted, and the 403s must be
//! answered with backoff, not a hot loop.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use common::{must, serve};
use dcwatt_agent::config::Collector;
use dcwatt_agent::metrics::{render, Snapshot};
use dcwatt_agent::ship::{Shared, Shipper, Tuning};
use dcwatt_agent::spool::{Fsync, Spool, SpoolSpec, Storage};
use dcwatt_wire::{Batch, BatchAck, Entity, ErrorBody, Quantity, Reading};
use tokio::sync::watch;

/// One scripted answer, used once, in order, before normal service.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scripted {
    /// Apply the batch, but acknowledge `last_seq = u64::MAX`.
    AckBeyond,
    /// 200 with a body that is not a `BatchAck`.
    NotAnAck,
    /// 200 with an acknowledgement that lacks `duplicate`.
    AckWithoutDuplicate,
    /// 409 naming `last_seq = u64::MAX - 1`.
    ConflictBeyond,
    /// 400: a reading's `ts_ms` outside the collector's accepted range.
    Skew,
    /// 400: a version this collector does not read.
    Version,
    /// 401.
    Unauthorized,
}

#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Scripted>>,
    /// While true, answer 403 (and count it in `forbidden_posts`).
    forbidden: AtomicBool,
    forbidden_posts: AtomicU32,
    /// Batches whose readings carry this energy value are refused with a
    /// clock-skew 400 forever.
    poison: Mutex<Option<f64>>,
    poison_posts: AtomicU32,
    posts: AtomicU32,
    applied: Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    last_seq: u64,
    /// Every applied request: (first_seq, seq, energy readings).
    batches: Vec<(u64, u64, Vec<f64>)>,
}

fn error(status: StatusCode, error: &str, last_seq: Option<u64>) -> Response {
    let body = ErrorBody {
        error: error.into(),
        last_seq,
    };
    (status, axum::Json(body)).into_response()
}

const SKEW: &str = "readings[0].ts_ms: 1 is outside the accepted range [2, 3] (collector clock 2)";

async fn batches(State(c): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    c.posts.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some("Bearer s3cret") {
        return error(StatusCode::UNAUTHORIZED, "unknown agent token", None);
    }
    let batch: Batch = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}"), None),
    };
    if c.forbidden.load(Ordering::SeqCst) {
        c.forbidden_posts.fetch_add(1, Ordering::SeqCst);
        return error(
            StatusCode::FORBIDDEN,
            "node: agent \"r1-n1\" reports only its own node",
            None,
        );
    }
    let energies: Vec<f64> = batch
        .readings
        .iter()
        .filter(|r| r.quantity == Quantity::EnergyJoules)
        .map(|r| r.value)
        .collect();
    let poison = *c.poison.lock().unwrap();
    if poison.is_some_and(|p| energies.contains(&p)) {
        c.poison_posts.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::BAD_REQUEST, SKEW, None);
    }
    let scripted = c.script.lock().unwrap().pop_front();
    match scripted {
        None | Some(Scripted::AckBeyond) => {}
        Some(Scripted::NotAnAck) => return (StatusCode::OK, "ok").into_response(),
        Some(Scripted::AckWithoutDuplicate) => {
            return (StatusCode::OK, r#"{"accepted":1,"last_seq":1}"#).into_response()
        }
        Some(Scripted::ConflictBeyond) => {
            return error(
                StatusCode::CONFLICT,
                "first_seq: overlap",
                Some(u64::MAX - 1),
            )
        }
        Some(Scripted::Skew) => return error(StatusCode::BAD_REQUEST, SKEW, None),
        Some(Scripted::Version) => {
            return error(
                StatusCode::BAD_REQUEST,
                "version: unsupported version 1, this collector reads 2",
                None,
            )
        }
        Some(Scripted::Unauthorized) => {
            return error(StatusCode::UNAUTHORIZED, "unknown agent token", None)
        }
    }
    let first = batch.first_seq.unwrap_or(batch.seq);
    let mut a = c.applied.lock().unwrap();
    let ack = if batch.seq <= a.last_seq {
        BatchAck {
            accepted: 0,
            duplicate: true,
            last_seq: a.last_seq,
        }
    } else if first <= a.last_seq {
        return error(StatusCode::CONFLICT, "first_seq: overlap", Some(a.last_seq));
    } else {
        a.last_seq = batch.seq;
        a.batches.push((first, batch.seq, energies));
        BatchAck {
            accepted: batch.readings.len(),
            duplicate: false,
            last_seq: batch.seq,
        }
    };
    let ack = match scripted {
        Some(Scripted::AckBeyond) => BatchAck {
            last_seq: u64::MAX,
            ..ack
        },
        _ => ack,
    };
    axum::Json(ack).into_response()
}

async fn fake(script: &[Scripted]) -> (Arc<Fake>, String) {
    let c = Arc::new(Fake {
        script: Mutex::new(script.iter().copied().collect()),
        ..Fake::default()
    });
    let addr = serve(
        Router::new()
            .route("/v1/batches", post(batches))
            .with_state(Arc::clone(&c)),
    )
    .await;
    (c, format!("http://{addr}"))
}

fn spool_spec(dir: &std::path::Path) -> SpoolSpec {
    SpoolSpec {
        storage: Storage::Disk {
            dir: dir.to_owned(),
            fsync: Fsync::Never,
        },
        max_bytes: 1 << 20,
    }
}

/// Short backoffs, so that a test runs in seconds; the cap stays far above
/// what a test waits, so the backoff keeps doubling through a refusing phase.
fn tuning() -> Tuning {
    Tuning {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_secs(10),
        catchup_interval: Duration::from_millis(10),
        ..Tuning::default()
    }
}

struct Running {
    shipper: Shipper,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

fn start(url: &str, spool: &SpoolSpec, tuning: Tuning) -> Running {
    let collector = Collector {
        url: url.parse().unwrap(),
        token: "s3cret".into(),
        timeout: Duration::from_secs(10),
        ca_pem: None,
        identity_pem: None,
        ship_interval: Duration::ZERO,
        encoding: dcwatt_wire::binary::Encoding::Json,
    };
    let (stop, stop_rx) = watch::channel(false);
    let started =
        Shipper::start_with("r1-n1".into(), vec![collector], spool, stop_rx, tuning).unwrap();
    Running {
        shipper: started.shipper,
        shared: started.shared,
        tasks: started.tasks,
        stop,
    }
}

impl Running {
    /// One tick's batch: a meter's energy counter reading `joules`.
    async fn submit(&mut self, joules: f64) {
        let reading = Reading {
            ts_ms: 1_764_000_000_000,
            entity: Entity::Meter("pdu-1".into()),
            quantity: Quantity::EnergyJoules,
            value: joules,
        };
        self.shipper.submit(Vec::new(), vec![reading]).await;
    }

    /// Batches waiting for the collector (0 once the last answer was taken).
    fn queued(&self) -> u64 {
        self.shared.status().collectors[0].queued
    }

    fn metrics(&self) -> String {
        render("r1-n1", &Snapshot::default(), Some(&self.shared.status()))
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("sender stops")
                .unwrap();
        }
    }
}

/// Waits until `f` holds, polling; panics with `what` after a generous limit.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "not within 60 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The seqs the applied requests stand for, each applied once and in order,
/// and the sum of their energy readings.
fn covered(batches: &[(u64, u64, Vec<f64>)]) -> (BTreeSet<u64>, f64) {
    let mut seqs = BTreeSet::new();
    let mut last = 0;
    let mut sum = 0.0;
    for (first, seq, energies) in batches {
        assert!(
            *first > last,
            "request {first}..={seq} after {last}: out of order or twice"
        );
        assert_eq!(energies.len() as u64, seq - first + 1, "{first}..={seq}");
        seqs.extend(*first..=*seq);
        sum += energies.iter().sum::<f64>();
        last = *seq;
    }
    (seqs, sum)
}

fn series(name: &str, url: &str, label: &str, value: &str) -> String {
    format!("{name}{{collector=\"{url}\",{label}=\"{value}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_or_refusing_collector_loses_and_doubles_nothing() {
    use Scripted::*;
    let script = [
        AckBeyond,
        NotAnAck,
        AckWithoutDuplicate,
        ConflictBeyond,
        Skew,
        Skew,
        Version,
        Unauthorized,
        Unauthorized,
    ];
    let (fake, url) = fake(&script).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = spool_spec(dir.path());
    let mut agent = start(&url, &spec, tuning());

    // Phase 1: the scripted misbehaviour, then normal service.
    let mut made = 0u32;
    for _ in 0..5 {
        made += 1;
        agent.submit(f64::from(made) * 1000.0).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("the script is used up and phase 1 applied", || {
        fake.script.lock().unwrap().is_empty()
            && covered(&fake.applied.lock().unwrap().batches).0.len() == made as usize
    })
    .await;

    // Phase 2: 403 while 30 more batches are made, one every 20 ms or more.
    fake.forbidden.store(true, Ordering::SeqCst);
    for _ in 0..30 {
        made += 1;
        agent.submit(f64::from(made) * 1000.0).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually("403 answered twice", || {
        fake.forbidden_posts.load(Ordering::SeqCst) >= 2
    })
    .await;
    fake.forbidden.store(false, Ordering::SeqCst);
    let forbidden_posts = fake.forbidden_posts.load(Ordering::SeqCst);

    // Phase 3: normal service again; everything arrives.
    for _ in 0..5 {
        made += 1;
        agent.submit(f64::from(made) * 1000.0).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("every batch applied and acknowledged", || {
        covered(&fake.applied.lock().unwrap().batches).0.len() == made as usize
            && agent.queued() == 0
    })
    .await;
    let text = agent.metrics();
    agent.stop().await;

    // Exactly once: contiguous seqs, each applied once, energies summed once.
    let applied = fake.applied.lock().unwrap();
    let (seqs, sum) = covered(&applied.batches);
    let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(seqs.len() as u64, hi - lo + 1, "no gap");
    assert_eq!(seqs.len(), made as usize);
    let want: f64 = (1..=made).map(|i| f64::from(i) * 1000.0).sum();
    assert_eq!(sum, want, "every energy reading once");

    // The cursor is the last real acknowledgement; no seq jumped to u64::MAX.
    let spool = Spool::open(&spec, std::slice::from_ref(&url)).unwrap();
    assert_eq!(spool.acked(0), applied.last_seq);
    assert_eq!(spool.acked(0), hi);
    assert_eq!(spool.next_seq(), hi + 1);
    assert_eq!(spool.pending(0), 0);

    // Counted: the protocol errors, the refusals by status, the forbidden answers.
    let batches = |result: &str| {
        must(
            &text,
            &series("dcwatt_ship_batches_total", &url, "result", result),
        )
    };
    let protocol = |kind: &str| {
        must(
            &text,
            &series("dcwatt_ship_protocol_errors_total", &url, "kind", kind),
        )
    };
    let refusals = |status: &str| {
        must(
            &text,
            &series("dcwatt_ship_refusals_total", &url, "status", status),
        )
    };
    assert_eq!(protocol("last_seq_beyond_sent"), 2.0, "{text}");
    assert_eq!(protocol("invalid_ack"), 2.0, "{text}");
    assert!(batches("protocol_error") >= 4.0, "{text}");
    assert_eq!(refusals("400"), 3.0, "{text}");
    assert_eq!(refusals("401"), 2.0, "{text}");
    assert_eq!(refusals("403"), f64::from(forbidden_posts), "{text}");
    assert!(batches("rejected") >= 3.0, "{text}");
    assert!(
        batches("forbidden") >= f64::from(2 + forbidden_posts),
        "{text}"
    );
    assert_eq!(batches("dropped_rejected"), 0.0, "{text}");
    // The batches acknowledged with `u64::MAX` (applied, but the answer was
    // not taken) never count as ok; their retry was answered as a duplicate or
    // a 409 that moved the cursor. Every other batch counts ok once.
    let (ok, duplicate) = (batches("ok"), batches("duplicate"));
    assert!(ok + duplicate <= f64::from(made), "{text}");
    assert!(ok >= f64::from(made - 5) && ok < f64::from(made), "{text}");

    // No hot loop: 30 batches were made during the 403s, at least 600 ms of
    // them; the doubling backoff asked far fewer times (a retry per batch, or
    // a reset backoff, would ask 30 times or more).
    assert!(
        (2..=15).contains(&forbidden_posts),
        "{forbidden_posts} requests answered 403 while 30 batches were made"
    );
}

/// A batch the collector refuses for clock skew forever is retried with
/// backoff for `reject_hold`, then given up and counted `dropped_rejected`;
/// the batches after it are not blocked for good and arrive once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_forever_is_held_then_dropped_and_counted() {
    let (fake, url) = fake(&[]).await;
    *fake.poison.lock().unwrap() = Some(3000.0);
    let dir = tempfile::tempdir().unwrap();
    let spec = spool_spec(dir.path());
    let tuning = Tuning {
        reject_hold: Duration::from_millis(300),
        ..tuning()
    };
    let mut agent = start(&url, &spec, tuning);
    for i in 1..=6u32 {
        agent.submit(f64::from(i) * 1000.0).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("the others applied and acknowledged", || {
        covered(&fake.applied.lock().unwrap().batches).0.len() == 5 && agent.queued() == 0
    })
    .await;
    let text = agent.metrics();
    agent.stop().await;

    let applied = fake.applied.lock().unwrap();
    let (seqs, sum) = covered(&applied.batches);
    assert_eq!(sum, 1000.0 + 2000.0 + 4000.0 + 5000.0 + 6000.0);
    let (lo, hi) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(hi - lo + 1, 6, "one seq missing: the poisoned batch");
    assert!(!seqs.contains(&(lo + 2)));
    // Held and retried (with backoff, over 300 ms) before it was given up.
    let poison_posts = fake.poison_posts.load(Ordering::SeqCst);
    assert!(poison_posts >= 3, "{poison_posts} tries");
    let batches = |result: &str| {
        must(
            &text,
            &series("dcwatt_ship_batches_total", &url, "result", result),
        )
    };
    assert_eq!(batches("dropped_rejected"), 1.0, "{text}");
    assert_eq!(batches("ok"), 5.0, "{text}");
    assert!(batches("rejected") >= f64::from(poison_posts), "{text}");
    let spool = Spool::open(&spec, std::slice::from_ref(&url)).unwrap();
    assert_eq!(spool.acked(0), hi);
}
