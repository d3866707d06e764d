//! Billing-grade integrity, against a real collector on 127.0.0.1:0: hostile
//! and fuzzed queries are answered 4xx without unbounded work, counter dips,
//! glitches and resets count only what was measured, a resend of a batch that
//! is applied but not yet committed waits for its group's outcome, absurd
//! sequence numbers change nothing, and tenants' figures need a token.

use std::time::Duration;

use dcwatt_collector::config::token_hash;
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use proptest::prelude::*;
use serde_json::Value;

mod common;
use common::{get_as, sample};

const TOKEN: &str = "agent-n1-token";
const OTHER: &str = "agent-n2-token";
const OPERATOR: &str = "operator-token";
const SCRAPER: &str = "scrape-token";
const LAB_A: &str = "lab-a-token";

fn config(extra: &str) -> String {
    let h = |t: &str| hex::encode(token_hash(t));
    format!(
        r#"
        [operator]
        token_sha256 = "{}"
        [metrics]
        token_sha256 = "{}"
        [[agents]]
        id = "n1"
        token_sha256 = "{}"
        meters = ["utility"]
        [[agents]]
        id = "n2"
        token_sha256 = "{}"
        [[meters]]
        id = "utility"
        role = "facility"
        nominal_max_watts = 1000.0
        [[tenants]]
        id = "lab-a"
        token_sha256 = "{}"
        [[leases]]
        tenant = "lab-a"
        nodes = ["n1"]
        from = "2020-01-01T00:00:00Z"
        to = "2100-01-01T00:00:00Z"
        {extra}
        "#,
        h(OPERATOR),
        h(SCRAPER),
        h(TOKEN),
        h(OTHER),
        h(LAB_A)
    )
}

fn batch(agent: &str, seq: u64, readings: Vec<Reading>) -> Batch {
    Batch {
        version: VERSION,
        agent: agent.into(),
        seq,
        first_seq: None,
        node: agent.into(),
        created_ms: now_ms(),
        gpus: vec![],
        readings,
    }
}

fn meter(ts_ms: i64, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity: Entity::Meter("utility".into()),
        quantity: Quantity::EnergyJoules,
        value,
    }
}

fn gpu(ts_ms: i64, quantity: Quantity, value: f64) -> Reading {
    Reading {
        ts_ms,
        entity: Entity::Gpu("GPU-a".into()),
        quantity,
        value,
    }
}

async fn post(http: &reqwest::Client, url: &str, token: &str, b: &Batch) -> (u16, Value) {
    let r = http
        .post(format!("{url}/v1/batches"))
        .bearer_auth(token)
        .json(b)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metrics(http: &reqwest::Client, url: &str) -> String {
    let (status, m) = get_as(http, &format!("{url}/metrics"), SCRAPER).await;
    assert_eq!(status, 200, "{m}");
    m
}

fn facility(m: &str) -> Option<f64> {
    sample(
        m,
        r#"dcwatt_energy_joules_total{role="facility",zone="default"}"#,
    )
}

/// The requests that made the collector allocate without end, and their
/// siblings: each is a 400 naming the parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_get_400_naming_the_parameter() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let energy = format!("{url}/v1/tenants/lab-a/energy");
    for (query, needle) in [
        (
            "from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z&step=300000000y",
            "step",
        ),
        (
            "from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z&step=2d",
            "step",
        ),
        ("from=0&to=86400000&step=1m&format=json", "OK"),
        ("from=0&to=34560000000&step=1m", "step"),
        ("from=-9223372036854775808&to=9223372036854775807", "from"),
        ("from=0&to=9223372036854775807", "to"),
        ("from=0&to=34560000001", "to"),
        ("from=5&to=5", "to"),
        ("from=9999-12-31T23:59:59Z&to=10000-01-01T00:00:00Z", "to"),
    ] {
        let (status, body) = get_as(&http, &format!("{energy}?{query}"), LAB_A).await;
        if needle == "OK" {
            assert_eq!(status, 200, "{query}: {body}");
            continue;
        }
        assert_eq!(status, 400, "{query}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert!(
            e["error"].as_str().unwrap().starts_with(needle),
            "{query}: {body}"
        );
    }
    for (path, needle) in [
        (
            "/v1/pue?from=-9223372036854775808&to=9223372036854775807",
            "from",
        ),
        ("/v1/pue?from=0&to=9223372036854775807", "to"),
        (
            "/v1/tenants/lab-a/excursions?from=0&to=9223372036854775807",
            "to",
        ),
        ("/v1/tenants/lab-a/statement?month=99999-01", "month"),
        ("/v1/tenants/lab-a/statement?month=2026-13", "month"),
        ("/v1/ledger/checkpoints?from=5&to=1", "to"),
        (
            "/v1/reports/efficiency?from=-9223372036854775808&to=9223372036854775807",
            "from",
        ),
        ("/v1/reports/efficiency?from=0&to=9223372036854775807", "to"),
        ("/v1/reports/efficiency?from=0&to=34646400000", "to"),
        (
            "/v1/reports/efficiency?from=2026-02-29&to=2027-01-01",
            "from",
        ),
        ("/v1/reports/efficiency?from=0&to=86400000&zone=%00", "zone"),
        ("/v1/ledger/checkpoints?from=yesterday", "from"),
        ("/v1/ledger/consistency?from_size=0&to_size=1", "from_size"),
        (
            "/v1/ledger/consistency?from_size=1&to_size=18446744073709551616",
            "to_size",
        ),
    ] {
        let (status, body) = get_as(&http, &format!("{url}{path}"), OPERATOR).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(&format!("\"{needle}:")), "{path}: {body}");
    }
}

fn query_string() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..2_000_000_000_000).prop_map(|n| n.to_string()),
        Just("9223372036854775808".to_string()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        "[0-9]{1,12}(ms|s|m|h|d|w|y|us|ns)",
        "[ -~]{0,12}",
    ];
    let key = prop_oneof![
        Just("from"),
        Just("to"),
        Just("step"),
        Just("month"),
        Just("format"),
        Just("from_size"),
        Just("to_size"),
        Just("zone"),
        Just("x")
    ];
    prop::collection::vec((key, number), 0..5).prop_map(|kv| {
        kv.iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The resident set of this process (the collector runs in it), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// 10,000 random query strings per GET endpoint: every answer is 2xx or 4xx
/// (a request that hangs fails on the client's timeout), memory stays
/// bounded, and the ledger does not change.
#[test]
fn fuzzed_queries_are_answered_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, _stop) = rt.block_on(common::start(&config("")));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let cases: u32 = std::env::var("DCWATT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let before = rt.block_on(get_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR));
    for path in [
        "/v1/pue",
        "/v1/tenants/lab-a/energy",
        "/v1/tenants/lab-a/statement",
        "/v1/tenants/lab-a/excursions",
        "/v1/summary",
        "/metrics",
        "/v1/ledger/checkpoints",
        "/v1/ledger/consistency",
        "/v1/ledger/public-key",
        "/v1/reports/efficiency",
    ] {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&query_string(), |q| {
                let (status, body) =
                    rt.block_on(get_as(&http, &format!("{url}{path}?{q}"), OPERATOR));
                prop_assert!((200..500).contains(&status), "{path}?{q}: {status} {body}");
                Ok(())
            })
            .unwrap();
        let rss = rss_bytes();
        assert!(rss < 200 << 20, "{path}: RSS {} MiB", rss >> 20);
    }
    let after = rt.block_on(get_as(&http, &format!("{url}/v1/ledger/verify"), OPERATOR));
    assert_eq!(before, after);
}

/// A float32 dip, a glitch down, a real reset, and a jump up, on a meter
/// rated 1000 W: only the measured energy counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_dips_glitches_and_resets_count_only_what_was_measured() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    let t = now_ms() - 60_000;
    let series = [
        (t, 1e12),
        (t + 1000, 1e12 - 1.0),   // rounding: held, 0 J
        (t + 2000, 1e12 + 100.0), // +100 J from the held value
        (t + 3000, 5e11),         // down, not countable from zero in 1 s: a glitch
        (t + 4000, 1e12 + 900.0), // back: +800 J over 2 s from the held value
        (t + 5000, 400.0),        // down to what 1 s counts from zero: a reset, +400 J
        (t + 6000, 9e12),         // up far beyond 1000 W: a glitch
        (t + 7000, 1300.0),       // +900 J over 2 s
    ];
    for (i, (ts, v)) in series.into_iter().enumerate() {
        let (status, body) = post(
            &http,
            &url,
            TOKEN,
            &batch("n1", i as u64 + 1, vec![meter(ts, v)]),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let m = metrics(&http, &url).await;
    assert_eq!(facility(&m), Some(100.0 + 800.0 + 400.0 + 900.0), "{m}");
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_meter_glitches_total{meter="utility",role="facility",zone="default"}"#
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"dcwatt_meter_energy_resets_total{meter="utility",role="facility",zone="default"}"#
        ),
        Some(1.0),
        "{m}"
    );

    // A GPU is judged against its own power limit (700 W here).
    let g = |seq: u64, ts: i64, j: f64| {
        let mut b = batch(
            "n1",
            seq,
            vec![
                gpu(ts, Quantity::PowerLimitWatts, 700.0),
                gpu(ts, Quantity::EnergyJoules, j),
            ],
        );
        b.gpus = vec![GpuInfo {
            uuid: "GPU-a".into(),
            index: 0,
            model: "NVIDIA GB300".into(),
            module: None,
        }];
        b
    };
    for (i, (ts, j)) in [
        (t, 5e6),
        (t + 1000, 5e6 + 600.0),
        (t + 2000, 4e6),        // a glitch down
        (t + 3000, 5e6 + 10e6), // a glitch up: 10 MJ in a second
        (t + 4000, 5e6 + 1900.0),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = post(&http, &url, TOKEN, &g(20 + i as u64, ts, j)).await;
        assert_eq!(status, 200, "{body}");
    }
    let m = metrics(&http, &url).await;
    assert_eq!(
        sample(&m, "dcwatt_gpus_energy_joules_total"),
        Some(1900.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "dcwatt_gpus_energy_glitches_total"),
        Some(2.0),
        "{m}"
    );
}

/// Tenants' figures are not public: `/metrics` needs the scrape or operator token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_scrape_or_operator_token() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    let anonymous = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    for (token, want) in [(SCRAPER, 200), (OPERATOR, 200), (LAB_A, 401), (TOKEN, 401)] {
        let (status, body) = get_as(&http, &format!("{url}/metrics"), token).await;
        assert_eq!(status, want, "{token}: {body}");
        if want == 200 {
            assert!(body.contains("dcwatt_gpus_energy_joules_total"), "{body}");
        }
    }
}

/// Sequence numbers beyond what the store holds, while another agent's batch
/// waits for its group: refused before anything changes; every minute once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_seq_beside_a_pending_group_changes_nothing() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    let t = now_ms() - 30_000;
    assert_eq!(
        post(&http, &url, TOKEN, &batch("n1", 1, vec![meter(t, 1000.0)]))
            .await
            .0,
        200
    );
    // A and B concurrently: A is queued for the group commit while B arrives.
    let a = batch("n1", 2, vec![meter(t + 1000, 1500.0)]);
    let mut b = batch("n2", 1 << 63, vec![]);
    b.first_seq = Some(1);
    let (ra, rb) = tokio::join!(post(&http, &url, TOKEN, &a), post(&http, &url, OTHER, &b));
    assert_eq!(ra.0, 200, "{ra:?}");
    assert_eq!(rb.0, 400, "{rb:?}");
    assert!(
        rb.1["error"].as_str().unwrap().starts_with("seq:"),
        "{rb:?}"
    );
    // A's next batch, and A again: counted once.
    let next = batch("n1", 3, vec![meter(t + 2000, 2000.0)]);
    assert_eq!(post(&http, &url, TOKEN, &next).await.0, 200);
    let (status, dup) = post(&http, &url, TOKEN, &a).await;
    assert_eq!((status, dup["duplicate"].as_bool()), (200, Some(true)));
    let m = metrics(&http, &url).await;
    assert_eq!(facility(&m), Some(1000.0), "{m}");
    let (_, summary) = get_as(&http, &format!("{url}/v1/summary"), OPERATOR).await;
    let s: Value = serde_json::from_str(&summary).unwrap();
    let agents: Vec<&str> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["n1"], "n2 was never applied: {summary}");
}

/// A resend of a batch that is applied but not yet committed is not answered
/// "duplicate": it waits for the group, and when the group fails it fails too
/// (or is applied anew), so an agent never drops a batch that was not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_a_pending_batch_waits_for_its_groups_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let (url, _stop) = common::start(&config(&format!(
        "[ledger]\npath = {:?}",
        db.to_str().unwrap()
    )))
    .await;
    let http = reqwest::Client::new();
    let t = now_ms() - 30_000;
    assert_eq!(
        post(&http, &url, TOKEN, &batch("n1", 1, vec![meter(t, 1000.0)]))
            .await
            .0,
        200
    );
    let fault = rusqlite::Connection::open(&db).unwrap();
    fault
        .execute_batch(
            "CREATE TRIGGER fault_u BEFORE UPDATE ON agents BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    // The batch and its resend, at once: neither may be acknowledged.
    let a = batch("n1", 2, vec![meter(t + 1000, 1500.0)]);
    let (r1, r2) = tokio::join!(post(&http, &url, TOKEN, &a), post(&http, &url, TOKEN, &a));
    for r in [&r1, &r2] {
        assert_eq!(
            r.0, 503,
            "a batch that was not stored was acknowledged: {r:?}"
        );
    }
    fault.execute_batch("DROP TRIGGER fault_u;").unwrap();
    let (status, ack) = post(&http, &url, TOKEN, &a).await;
    assert_eq!(
        (status, ack["duplicate"].as_bool()),
        (200, Some(false)),
        "{ack}"
    );
    let (status, ack) = post(&http, &url, TOKEN, &a).await;
    assert_eq!(
        (status, ack["duplicate"].as_bool()),
        (200, Some(true)),
        "{ack}"
    );
    assert_eq!(facility(&metrics(&http, &url).await), Some(500.0));
}

/// An agent names in `gpus` a GPU another agent owns: refused, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_listed_by_another_agent_is_refused() {
    let (url, _stop) = common::start(&config("")).await;
    let http = reqwest::Client::new();
    let t = now_ms() - 10_000;
    let mut mine = batch("n1", 1, vec![gpu(t, Quantity::PowerWatts, 500.0)]);
    mine.gpus = vec![GpuInfo {
        uuid: "GPU-a".into(),
        index: 0,
        model: "NVIDIA GB300".into(),
        module: None,
    }];
    assert_eq!(post(&http, &url, TOKEN, &mine).await.0, 200);
    let mut theirs = batch("n2", 1, vec![]);
    theirs.gpus = vec![GpuInfo {
        uuid: "GPU-a".into(),
        index: 3,
        model: "renamed".into(),
        module: None,
    }];
    let (status, body) = post(&http, &url, OTHER, &theirs).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("gpus[0].uuid"),
        "{body}"
    );
    let (_, s) = get_as(&http, &format!("{url}/v1/summary"), OPERATOR).await;
    let s: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(s["hottest_gpus"].as_array().map(Vec::len), Some(0));
    assert_eq!(s["gpus"]["count"], 1);
    assert!(!s.to_string().contains("renamed"), "{s}");

    // The GPU really moved: only the operator releases it, then n2 owns it.
    let release = |token: &'static str, uuid: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(format!("{url}/v1/admin/gpus/{uuid}/release"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (token, uuid, want) in [
        (OTHER, "GPU-a", 401),
        (LAB_A, "GPU-a", 401),
        (OPERATOR, "GPU-zz", 404),
        (OPERATOR, "GPU%20a", 400),
    ] {
        let (status, body) = release(token, uuid).await;
        assert_eq!(status, want, "{token} {uuid}: {body}");
    }
    assert_eq!(post(&http, &url, OTHER, &theirs).await.0, 403);
    // The command-line client, against the running collector.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("operator.token");
    std::fs::write(&token_file, format!("{OPERATOR}\n")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dcwatt-collector"))
        .args(["gpu", "release", "--url", &url, "--token-file"])
        .arg(&token_file)
        .arg("GPU-a")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(r#""released_from":"n1""#), "{said}");
    let (status, body) = post(&http, &url, OTHER, &theirs).await;
    assert_eq!(status, 200, "{body}");
    // Now n1 may no longer report it.
    let mut again = batch("n1", 2, vec![gpu(t + 1000, Quantity::PowerWatts, 500.0)]);
    again.gpus = mine.gpus.clone();
    assert_eq!(post(&http, &url, TOKEN, &again).await.0, 403);
    // n2 owns it now: releasing it again names n2.
    let (status, body) = release(OPERATOR, "GPU-a").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""released_from":"n2""#), "{body}");
}

/// The ingest latency histogram's cumulative `(le, count)` buckets.
fn latency_buckets(m: &str) -> Vec<(String, f64)> {
    m.lines()
        .filter_map(|l| l.strip_prefix("dcwatt_ingest_request_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// Eight 400-day tenant queries and a ledger verification, over and over,
/// while an agent posts: every batch is acknowledged and counted exactly.
/// Reads run on read connections of their own, outside the committer's lock.
/// The acknowledgement latency is printed (the collector's own histogram) and
/// recorded in `docs/benchmarks.md`; a test asserts no timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_queries_do_not_hold_up_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let ledger = format!("[ledger]\npath = {:?}", db.to_str().unwrap());
    let site = dcwatt_collector::config::Config::from_toml(&config(&ledger))
        .unwrap()
        .build()
        .unwrap();
    // 60 days of booked minutes for lab-a, through the collector's own
    // booking (tenant_open rows, then close_minutes).
    let days = 60i64;
    let start = (now_ms() - (days + 1) * 86_400_000).div_euclid(60_000) * 60_000;
    {
        let mut store = dcwatt_collector::store::Store::open(&db).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        {
            let mut ins = conn
                .prepare("INSERT INTO tenant_open (minute_ms, tenant, it_joules, gpu_ms) VALUES (?1, 'lab-a', 60000.0, 60000)")
                .unwrap();
            for m in 0..days * 1440 {
                ins.execute([start + m * 60_000]).unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
        let booked = store.close_minutes(&site, now_ms(), None).unwrap();
        assert_eq!(booked, usize::try_from(days * 1440).unwrap());
    }
    let (url, _stop) = common::start(&config(&ledger)).await;
    let http = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..9 {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (path, token) = if i == 8 {
                    ("/v1/ledger/verify".to_owned(), OPERATOR)
                } else {
                    // One instant for both ends: two calls a millisecond
                    // apart made the span 400 days + 1 ms (refused).
                    let now = now_ms();
                    (
                        format!(
                            "/v1/tenants/lab-a/energy?from={}&to={now}&step=1d",
                            now - 400 * 86_400_000
                        ),
                        LAB_A,
                    )
                };
                let (status, body) = get_as(&http, &format!("{url}{path}"), token).await;
                assert_eq!(status, 200, "{path}: {body}");
                n += 1;
            }
            n
        }));
    }
    let t = now_ms() - 200_000;
    // Under the agent's rate limit (10 batches/s).
    let batches = 100u64;
    for i in 0..=batches {
        let b = batch(
            "n1",
            i + 1,
            vec![meter(t + i as i64 * 1000, 1e6 + 100.0 * i as f64)],
        );
        let (status, body) = post(&http, &url, TOKEN, &b).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    let m = metrics(&http, &url).await;
    assert_eq!(facility(&m), Some(100.0 * batches as f64), "{m}");
    let buckets = latency_buckets(&m);
    let total = buckets.last().map_or(0.0, |b| b.1);
    let p99 = buckets
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map_or("+Inf".to_owned(), |(le, _)| le.clone());
    println!(
        "{} batches acknowledged during {reads} long reads: p99 ≤ {p99} s (collector histogram: {buckets:?})",
        batches + 1
    );
}
