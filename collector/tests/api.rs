//! The collector's HTTP API, in-process on 127.0.0.1:0, driven by real HTTP:
//! energy arithmetic, resets, duplicates, and hostile batches that must change
//! nothing.

use dcwatt_collector::config::token_hash;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::sample;

const TOKEN: &str = "agent-one-token";
const OTHER_TOKEN: &str = "agent-two-token";

struct Collector {
    url: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start() -> Collector {
    start_with("").await
}

/// The collector with `extra` appended to its config (tables such as `[ledger]`).
async fn start_with(extra: &str) -> Collector {
    let config = format!(
        r#"
        listen = "127.0.0.1:0"
        [[agents]]
        id = "n1"
        token_sha256 = "{}"
        meters = ["utility", "pdu-1", "pdu-2"]
        [[agents]]
        id = "n2"
        token_sha256 = "{}"
        meters = ["pdu-2"]
        [[meters]]
        id = "utility"
        role = "facility"
        zone = "hall-1"
        [[meters]]
        id = "pdu-1"
        role = "it"
        zone = "hall-1"
        it_point = "pdu_output"
        [[meters]]
        id = "pdu-2"
        role = "it"
        zone = "hall-1"
        it_point = "it_input"
        {extra}
        "#,
        hex::encode(token_hash(TOKEN)),
        hex::encode(token_hash(OTHER_TOKEN))
    );
    let (url, tx) = common::start(&config).await;
    Collector {
        url,
        http: reqwest::Client::new(),
        stop: Some(tx),
    }
}

fn reading(ts_ms: i64, meter: &str, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity: Entity::Meter(meter.into()),
        quantity,
        value,
    }
}

fn batch(seq: u64, readings: Vec<Reading>) -> Batch {
    Batch {
        version: VERSION,
        agent: "n1".into(),
        seq,
        first_seq: None,
        node: "n1".into(),
        created_ms: now_ms(),
        gpus: vec![],
        readings,
    }
}

/// Counter readings for the three meters at `ts` (facility, pdu-1, pdu-2), in J.
fn counters(seq: u64, ts: i64, f: f64, p1: f64, p2: f64) -> Batch {
    batch(
        seq,
        vec![
            reading(ts, "utility", Quantity::PowerWatts, 13_000.0),
            reading(ts, "utility", Quantity::EnergyJoules, f),
            reading(ts, "pdu-1", Quantity::PowerWatts, 6_000.0),
            reading(ts, "pdu-1", Quantity::EnergyJoules, p1),
            reading(ts, "pdu-2", Quantity::PowerWatts, 4_000.0),
            reading(ts, "pdu-2", Quantity::EnergyJoules, p2),
        ],
    )
}

impl Collector {
    async fn post_raw(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/batches", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, b: &Batch) -> (u16, Value) {
        self.post_raw(
            Some(TOKEN),
            "application/json",
            serde_json::to_vec(b).unwrap(),
        )
        .await
    }

    async fn summary(&self) -> Value {
        self.http
            .get(format!("{}/v1/summary", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The parts of the summary that a rejected batch must not change.
    async fn state(&self) -> Value {
        let s = self.summary().await;
        serde_json::json!({"meters": s["meters"], "gpus": s["gpus"], "agents": s["agents"]})
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn energy_pue_reset_and_duplicate() {
    let c = start().await;
    let t0 = now_ms() - 30_000;
    assert_eq!(c.post(&counters(1, t0, 1.0e9, 5.0e8, 2.0e8)).await.0, 200);
    // +13 MJ facility, +6 MJ and +4 MJ IT.
    let (status, ack) = c
        .post(&counters(2, t0 + 10_000, 1.013e9, 5.06e8, 2.04e8))
        .await;
    assert_eq!(
        (status, ack["accepted"].as_u64(), ack["duplicate"].as_bool()),
        (200, Some(6), Some(false))
    );
    // pdu-2 reset: its counter restarted and counted 1 MJ since. Facility +13 MJ, pdu-1 +6 MJ.
    assert_eq!(
        c.post(&counters(3, t0 + 20_000, 1.026e9, 5.12e8, 1.0e6))
            .await
            .0,
        200
    );
    // The same batch again: a duplicate, nothing changes.
    let before = c.state().await;
    let (status, ack) = c
        .post(&counters(3, t0 + 20_000, 1.026e9, 5.12e8, 1.0e6))
        .await;
    assert_eq!(
        (status, ack["duplicate"].as_bool(), ack["accepted"].as_u64()),
        (200, Some(true), Some(0))
    );
    assert_eq!(c.state().await, before);

    let m = c.metrics().await;
    let facility = sample(
        &m,
        r#"dcwatt_energy_joules_total{role="facility",zone="hall-1"}"#,
    )
    .unwrap();
    let it = sample(&m, r#"dcwatt_energy_joules_total{role="it",zone="hall-1"}"#).unwrap();
    assert_eq!(facility, 26.0e6);
    assert_eq!(it, 6.0e6 + 4.0e6 + 6.0e6 + 1.0e6);
    // 20 s of five minutes: the PUE is computed over the covered span but is not
    // the plain PUE on /metrics.
    assert!(!m.contains("dcwatt_pue_ratio{"), "{m}");
    let cov = sample(&m, r#"dcwatt_pue_coverage_ratio{window="5m"}"#).unwrap();
    assert!((cov - 20.0 / 300.0).abs() < 1e-9, "{cov}");
    let s = c.summary().await;
    let hour = &s["pue_live"];
    assert_eq!(hour["window"], "5m");
    assert_eq!(
        (hour["from_ms"].as_i64(), hour["to_ms"].as_i64()),
        (Some(t0), Some(t0 + 20_000))
    );
    assert_eq!(hour["complete"], false);
    let pue = hour["pue"].as_f64().unwrap();
    assert!((pue - 26.0 / 17.0).abs() < 1e-12, "{pue}");
    // Mixed IT points (PDU output and IT input): category 2, the lower one.
    assert_eq!(s["category"].as_u64(), Some(2));
    // pdu-2 reset within the last 10 s: no instant PUE (its energy there is unknown).
    assert_eq!(
        sample(&m, r#"dcwatt_pue_instant_ratio{category="2"}"#),
        None,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_meter_energy_resets_total{meter="pdu-2",role="it",zone="hall-1"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"dcwatt_ingest_batches_total{result="duplicate"}"#),
        Some(1.0)
    );

    let pdu2 = s["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "pdu-2")
        .unwrap();
    assert_eq!(pdu2["last_reset"]["before_ms"].as_i64(), Some(t0 + 10_000));
    assert_eq!(pdu2["last_reset"]["after_ms"].as_i64(), Some(t0 + 20_000));
    assert_eq!(pdu2["energy_from_ms"].as_i64(), Some(t0));
    assert_eq!(pdu2["events"]["reset"].as_u64(), Some(1));
    assert_eq!(s["power_watts"]["facility"].as_f64(), Some(13_000.0));
    // Ten seconds on, clean: the instant PUE is the energies' ratio over
    // those 10 s, cut at the same instants for every meter (13 / (6 + 4)).
    let next = counters(4, t0 + 30_000, 1.039e9, 5.18e8, 5.0e6);
    assert_eq!(c.post(&next).await.0, 200);
    let m = c.metrics().await;
    let instant = sample(&m, r#"dcwatt_pue_instant_ratio{category="2"}"#).unwrap();
    assert!((instant - 1.3).abs() < 1e-12, "{instant}");
}

/// A transaction that fails (here a trigger in the database refuses it)
/// acknowledges nothing and leaves nothing applied: the batch answers 503, the
/// state goes back to what the store holds, and the same batch sent again once
/// the store accepts writes counts its energy exactly once.
#[tokio::test]
async fn a_failed_commit_applies_nothing_and_the_batch_can_be_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let c = start_with(&format!("[ledger]\npath = {:?}", db.to_str().unwrap())).await;
    let t0 = now_ms() - 30_000;
    assert_eq!(c.post(&counters(1, t0, 1.0e9, 5.0e8, 2.0e8)).await.0, 200);
    let before = c.state().await;
    let energy = |m: &str, role: &str| {
        sample(
            m,
            &format!(r#"dcwatt_energy_joules_total{{role="{role}",zone="hall-1"}}"#),
        )
    };

    let fault = rusqlite::Connection::open(&db).unwrap();
    fault
        .execute_batch(
            "CREATE TRIGGER fault_i BEFORE INSERT ON agents BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
             CREATE TRIGGER fault_u BEFORE UPDATE ON agents BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    let next = counters(2, t0 + 10_000, 1.013e9, 5.06e8, 2.04e8);
    let (status, body) = c.post(&next).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("injected fault"),
        "{body}"
    );
    assert_eq!(c.state().await, before);
    let m = c.metrics().await;
    assert_eq!(energy(&m, "facility"), Some(0.0));

    fault
        .execute_batch("DROP TRIGGER fault_i; DROP TRIGGER fault_u;")
        .unwrap();
    let (status, ack) = c.post(&next).await;
    assert_eq!(
        (status, ack["accepted"].as_u64(), ack["duplicate"].as_bool()),
        (200, Some(6), Some(false))
    );
    let m = c.metrics().await;
    assert_eq!(energy(&m, "facility"), Some(13.0e6));
    assert_eq!(energy(&m, "it"), Some(6.0e6 + 4.0e6));
    assert_eq!(
        sample(&m, r#"dcwatt_ingest_batches_total{result="ok"}"#),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_covered_window_exports_plain_pue_cut_at_the_same_instants() {
    let c = start().await;
    let now = now_ms();
    // Four hundred seconds of steady load: facility 13 kW, IT 6 + 4 kW, read
    // every 20 s; pdu-2 starts 120 s late, so it alone bounds the live window.
    for k in 0..=20i64 {
        let ts = now - 400_000 + k * 20_000;
        let secs = (ts - (now - 400_000)) as f64 / 1000.0;
        let mut b = counters(
            k as u64 + 1,
            ts,
            13_000.0 * secs,
            6_000.0 * secs,
            4_000.0 * secs,
        );
        if k < 6 {
            b.readings.truncate(4);
        }
        assert_eq!(c.post(&b).await.0, 200);
    }
    let m = c.metrics().await;
    let pue = sample(&m, r#"dcwatt_pue_ratio{window="5m",category="2"}"#).unwrap();
    assert!((pue - 1.3).abs() < 1e-9, "{pue}");
    assert!(!m.contains(r#"dcwatt_pue_ratio{window="1h""#), "{m}");
    let s = c.summary().await;
    let live = &s["pue_live"];
    assert_eq!(
        live["from_ms"].as_i64(),
        Some(now - 280_000),
        "pdu-2's first reading"
    );
    assert_eq!(live["to_ms"].as_i64(), Some(now));
    // Facility is cut at pdu-2's start too: 280 s at 13 kW, not 300 s.
    let f = live["energy_joules"]["facility"].as_f64().unwrap();
    let it = live["energy_joules"]["it"].as_f64().unwrap();
    assert!((f - 13_000.0 * 280.0).abs() < 1e-6, "{f}");
    assert!((it - 10_000.0 * 280.0).abs() < 1e-6, "{it}");
}

#[tokio::test]
async fn power_only_meter_is_integrated_but_not_across_gaps() {
    let c = start().await;
    let t0 = now_ms() - 120_000;
    let p = |seq, ts, w| batch(seq, vec![reading(ts, "utility", Quantity::PowerWatts, w)]);
    c.post(&p(1, t0, 1000.0)).await;
    c.post(&p(2, t0 + 4_000, 3000.0)).await; // 8 kJ
    c.post(&p(3, t0 + 60_000, 3000.0)).await; // 56 s gap > 10 s: nothing
    c.post(&p(4, t0 + 61_000, 1000.0)).await; // 2 kJ
    let m = c.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_energy_joules_total{role="facility",zone="hall-1"}"#
        ),
        Some(10_000.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_meter_gaps_total{meter="utility",role="facility",zone="hall-1"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn hostile_batches_are_refused_and_change_nothing() {
    let c = start().await;
    let now = now_ms();
    assert_eq!(
        c.post(&counters(10, now - 5_000, 1.0e9, 5.0e8, 2.0e8))
            .await
            .0,
        200
    );
    let before = c.state().await;
    let ok = || counters(11, now, 1.1e9, 5.1e8, 2.1e8);
    let good = serde_json::to_vec(&ok()).unwrap();
    let mut other_agent = ok();
    other_agent.agent = "n2".into();
    let mut future = ok();
    future.readings[2].ts_ms = now + 86_400_000;
    let mut ancient = ok();
    ancient.readings[1].ts_ms = now - 365 * 86_400_000;
    let mut negative = ok();
    negative.readings[4].value = -5.0;
    let mut version = ok();
    version.version = 99;
    let mut spaced = ok();
    spaced.readings[0].entity = Entity::Meter("a b".into());
    let infinite = String::from_utf8(good.clone())
        .unwrap()
        .replacen("13000.0", "1e999", 1);
    let huge = vec![b' '; 9 << 20];
    let text = String::from_utf8(good.clone()).unwrap();
    let nan = text.replacen("13000.0", "NaN", 1);
    let as_string = text.replacen("13000.0", "\"13000\"", 1);
    let unknown_field = text.replacen("{", "{\"extra\":1,", 1);
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut neg_energy = ok();
    neg_energy.readings[1].value = -1.0;
    let mut absurd_power = ok();
    absurd_power.readings[0].value = 1e300;
    let mut ratio = ok();
    ratio.readings[0].quantity = Quantity::UtilizationRatio;
    ratio.readings[0].value = 1.5;
    let mut hot = ok();
    hot.readings[0].quantity = Quantity::TemperatureCelsius;
    hot.readings[0].value = 10_000.0;
    let mut other_node = ok();
    other_node.node = "n2".into();
    let mut ghost = ok();
    ghost.agent = "ghost".into();
    let mut empty_agent = ok();
    empty_agent.agent = String::new();
    let mut first_after = ok();
    first_after.first_seq = Some(12);
    let mut long_id = ok();
    long_id.readings[0].entity = Entity::Meter("m".repeat(10_000));
    let mut traversal = ok();
    traversal.readings[0].entity = Entity::Meter("../../etc/passwd".into());
    let mut control = ok();
    control.readings[0].entity = Entity::Meter("pdu\r\nX-Evil: 1".into());
    let mut bad_model = ok();
    bad_model.gpus = vec![dcwatt_wire::GpuInfo {
        uuid: "GPU-1".into(),
        index: 0,
        model: "x\u{7}".into(),
        module: None,
    }];
    let mut replay = ok();
    replay.seq = 10;
    let mut foreign_meter = ok();
    foreign_meter.agent = "n2".into();
    foreign_meter.node = "n2".into();
    let json = "application/json";
    let enc = |b: &Batch| serde_json::to_vec(b).unwrap();
    let binary = dcwatt_wire::binary::CONTENT_TYPE;
    let bin = |b: &Batch| dcwatt_wire::binary::encode(b);
    let mut nan_value = ok();
    nan_value.readings[0].value = f64::NAN;
    // A good binary batch's head, then a reading count of 10^9 and nothing.
    let mut no_readings = ok();
    no_readings.readings.clear();
    let mut lying_count = bin(&no_readings);
    lying_count.pop();
    lying_count.extend_from_slice(&[0x80, 0x94, 0xeb, 0xdc, 0x03]);
    // (name, token, content type, body, expected status, what the error must mention)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            json,
            good.clone(),
            401,
            "missing Authorization",
        ),
        (
            "wrong token",
            Some("guess"),
            json,
            good.clone(),
            401,
            "unknown agent token",
        ),
        (
            "another agent's token",
            Some(OTHER_TOKEN),
            json,
            good.clone(),
            403,
            "agent",
        ),
        (
            "body for another agent",
            Some(TOKEN),
            json,
            enc(&other_agent),
            403,
            "agent",
        ),
        (
            "malformed JSON",
            Some(TOKEN),
            json,
            b"{\"version\":1,".to_vec(),
            400,
            "malformed batch",
        ),
        (
            "missing field",
            Some(TOKEN),
            json,
            br#"{"version":1,"agent":"n1"}"#.to_vec(),
            400,
            "seq",
        ),
        (
            "infinite value",
            Some(TOKEN),
            json,
            infinite.into_bytes(),
            400,
            "malformed batch",
        ),
        (
            "negative power",
            Some(TOKEN),
            json,
            enc(&negative),
            400,
            "readings[4].value",
        ),
        (
            "timestamp a day ahead",
            Some(TOKEN),
            json,
            enc(&future),
            400,
            "readings[2].ts_ms",
        ),
        (
            "timestamp a year old",
            Some(TOKEN),
            json,
            enc(&ancient),
            400,
            "readings[1].ts_ms",
        ),
        (
            "unknown version",
            Some(TOKEN),
            json,
            enc(&version),
            400,
            "version",
        ),
        (
            "whitespace in an id",
            Some(TOKEN),
            json,
            enc(&spaced),
            400,
            "readings[0].entity",
        ),
        (
            "wrong content type",
            Some(TOKEN),
            "text/plain",
            good.clone(),
            415,
            "content-type",
        ),
        (
            "oversized body",
            Some(TOKEN),
            json,
            huge,
            413,
            "larger than",
        ),
        (
            "NaN literal",
            Some(TOKEN),
            json,
            nan.into_bytes(),
            400,
            "malformed batch",
        ),
        (
            "value as a string",
            Some(TOKEN),
            json,
            as_string.into_bytes(),
            400,
            "malformed batch",
        ),
        (
            "unknown field",
            Some(TOKEN),
            json,
            unknown_field.into_bytes(),
            400,
            "unknown field",
        ),
        (
            "deeply nested JSON",
            Some(TOKEN),
            json,
            nested.into_bytes(),
            400,
            "malformed batch",
        ),
        (
            "empty body",
            Some(TOKEN),
            json,
            Vec::new(),
            400,
            "malformed batch",
        ),
        (
            "JSON array",
            Some(TOKEN),
            json,
            b"[1,2,3]".to_vec(),
            400,
            "malformed batch",
        ),
        (
            "not UTF-8",
            Some(TOKEN),
            json,
            vec![0xff, 0xfe, 0x7b],
            400,
            "malformed batch",
        ),
        (
            "negative energy",
            Some(TOKEN),
            json,
            enc(&neg_energy),
            400,
            "readings[1].value",
        ),
        (
            "absurd power",
            Some(TOKEN),
            json,
            enc(&absurd_power),
            400,
            "out of range",
        ),
        (
            "utilization above 1",
            Some(TOKEN),
            json,
            enc(&ratio),
            400,
            "out of range",
        ),
        (
            "temperature 10000 °C",
            Some(TOKEN),
            json,
            enc(&hot),
            400,
            "out of range",
        ),
        (
            "another agent's node",
            Some(TOKEN),
            json,
            enc(&other_node),
            403,
            "own node",
        ),
        (
            "unknown agent in the body",
            Some(TOKEN),
            json,
            enc(&ghost),
            403,
            "ghost",
        ),
        (
            "empty agent id",
            Some(TOKEN),
            json,
            enc(&empty_agent),
            403,
            "agent",
        ),
        (
            "first_seq after seq",
            Some(TOKEN),
            json,
            enc(&first_after),
            400,
            "first_seq",
        ),
        (
            "a 10 kB meter id",
            Some(TOKEN),
            json,
            enc(&long_id),
            400,
            "readings[0].entity",
        ),
        (
            "path traversal in a meter id",
            Some(TOKEN),
            json,
            enc(&traversal),
            400,
            "readings[0].entity",
        ),
        (
            "header injection in a meter id",
            Some(TOKEN),
            json,
            enc(&control),
            400,
            "readings[0].entity",
        ),
        (
            "control character in a model",
            Some(TOKEN),
            json,
            enc(&bad_model),
            400,
            "gpus[0].model",
        ),
        (
            "a meter the agent may not report",
            Some(OTHER_TOKEN),
            json,
            enc(&foreign_meter),
            403,
            "not one of",
        ),
        (
            "empty bearer token",
            Some(""),
            json,
            good.clone(),
            401,
            "Bearer",
        ),
        (
            "content type missing",
            Some(TOKEN),
            "",
            good.clone(),
            415,
            "content-type",
        ),
        // The binary form: refused for the same reasons, with its own
        // decoding errors.
        (
            "binary: truncated",
            Some(TOKEN),
            binary,
            bin(&ok())[..40].to_vec(),
            400,
            "malformed binary batch",
        ),
        (
            "binary: JSON body",
            Some(TOKEN),
            binary,
            good.clone(),
            400,
            "magic",
        ),
        (
            "binary: NaN value",
            Some(TOKEN),
            binary,
            bin(&nan_value),
            400,
            "not a finite",
        ),
        (
            "binary: negative energy",
            Some(TOKEN),
            binary,
            bin(&neg_energy),
            400,
            "readings[1].value",
        ),
        (
            "binary: another agent's node",
            Some(TOKEN),
            binary,
            bin(&other_node),
            403,
            "own node",
        ),
        (
            "binary: a billion readings in a few bytes",
            Some(TOKEN),
            binary,
            lying_count,
            400,
            "do not fit",
        ),
        // A replay is answered 200 and changes nothing.
        (
            "duplicate sequence",
            Some(TOKEN),
            json,
            enc(&replay),
            200,
            "",
        ),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for (name, token, content_type, body, status, needle) in cases {
        let (got, answer) = c.post_raw(token, content_type, body).await;
        assert_eq!(got, status, "{name}: {answer}");
        if status == 200 {
            assert_eq!(answer["duplicate"], true, "{name}: {answer}");
        }
        let text = answer["error"].as_str().unwrap_or_default();
        assert!(
            text.contains(needle),
            "{name}: error {text:?} should mention {needle:?}"
        );
        assert_eq!(c.state().await, before, "{name} changed the state");
    }
    // And the good batch still applies afterwards.
    assert_eq!(c.post_raw(Some(TOKEN), json, good).await.0, 200);
    assert_ne!(c.state().await, before);
}

#[tokio::test]
async fn a_binary_batch_applies_as_its_json_twin_and_both_forms_dedupe_each_other() {
    let (j, b) = (start().await, start().await);
    let now = now_ms();
    let binary = dcwatt_wire::binary::CONTENT_TYPE;
    for (seq, dt, f, p1, p2) in [
        (1, 30_000, 1.0e9, 5.0e8, 2.0e8),
        (2, 0, 1.3e9, 6.1e8, 2.4e8),
    ] {
        let batch = counters(seq, now - dt, f, p1, p2);
        assert_eq!(j.post(&batch).await.0, 200);
        let (status, ack) = b
            .post_raw(Some(TOKEN), binary, dcwatt_wire::binary::encode(&batch))
            .await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["accepted"], batch.readings.len(), "{ack}");
    }
    // The same state, but for when each collector heard from the agent.
    let heard = |mut v: Value| {
        v["agents"][0]["last_seen_ms"] = Value::Null;
        v
    };
    assert_eq!(heard(j.state().await), heard(b.state().await));
    assert!(j.state().await["meters"][0]["energy_joules"].as_f64() > Some(0.0));
    // The JSON form of a batch the binary form delivered is a duplicate.
    let (status, ack) = b.post(&counters(2, now, 1.3e9, 6.1e8, 2.4e8)).await;
    assert_eq!(
        (status, &ack["duplicate"]),
        (200, &Value::Bool(true)),
        "{ack}"
    );
}

#[tokio::test]
async fn merged_batches_apply_once_and_overlaps_are_refused() {
    let c = start().await;
    let t0 = now_ms() - 60_000;
    assert_eq!(c.post(&counters(5, t0, 0.0, 0.0, 0.0)).await.0, 200);
    // A merged batch standing for 6..=8, applied once.
    let mut merged = counters(8, t0 + 10_000, 130_000.0, 60_000.0, 40_000.0);
    merged.first_seq = Some(6);
    let (status, ack) = c.post(&merged).await;
    assert_eq!((status, ack["last_seq"].as_u64()), (200, Some(8)));
    // 7..=9 overlaps 6..=8: refused whole, with where to resume.
    let before = c.state().await;
    let mut overlap = counters(9, t0 + 20_000, 260_000.0, 120_000.0, 80_000.0);
    overlap.first_seq = Some(7);
    let (status, answer) = c.post(&overlap).await;
    assert_eq!(
        (status, answer["last_seq"].as_u64()),
        (409, Some(8)),
        "{answer}"
    );
    assert_eq!(c.state().await, before);
    // first_seq after seq is malformed.
    overlap.first_seq = Some(10);
    assert_eq!(c.post(&overlap).await.0, 400);
    // Resent from 9: applied.
    overlap.first_seq = Some(9);
    assert_eq!(c.post(&overlap).await.0, 200);
    let m = c.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_energy_joules_total{role="facility",zone="hall-1"}"#
        ),
        Some(260_000.0)
    );
}

#[tokio::test]
async fn an_agent_reports_only_its_own_gpus_and_meters() {
    let c = start().await;
    let now = now_ms();
    let gpu = |agent: &str, seq: u64, uuid: &str, j: f64| Batch {
        agent: agent.into(),
        node: agent.into(),
        readings: vec![Reading {
            ts_ms: now - 1000 + seq as i64,
            entity: Entity::Gpu(uuid.into()),
            quantity: Quantity::EnergyJoules,
            value: j,
        }],
        ..batch(seq, vec![])
    };
    assert_eq!(c.post(&gpu("n1", 1, "GPU-n1-0", 100.0)).await.0, 200);
    let before = c.state().await;
    // n2 claims n1's GPU: refused, nothing changes.
    let (status, answer) = c
        .post_raw(
            Some(OTHER_TOKEN),
            "application/json",
            serde_json::to_vec(&gpu("n2", 1, "GPU-n1-0", 9e9)).unwrap(),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("GPU-n1-0"),
        "{answer}"
    );
    // n2 may report pdu-2 only.
    let meter = |id: &str| Batch {
        agent: "n2".into(),
        node: "n2".into(),
        readings: vec![reading(now - 500, id, Quantity::EnergyJoules, 1.0)],
        ..batch(2, vec![])
    };
    let (status, answer) = c
        .post_raw(
            Some(OTHER_TOKEN),
            "application/json",
            serde_json::to_vec(&meter("utility")).unwrap(),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("readings[0].entity"),
        "{answer}"
    );
    assert_eq!(c.state().await, before);
    let (status, _) = c
        .post_raw(
            Some(OTHER_TOKEN),
            "application/json",
            serde_json::to_vec(&meter("pdu-2")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
}
