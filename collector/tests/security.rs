//! Limits: a per-agent rate limit answered 429 with Retry-After, the cap on
//! GPUs per agent, and slow clients cut off, none of which changes any state;
//! TLS configuration errors. (TLS and mutual TLS between the real agent and
//! collector binaries: `tests/tests/tls.rs`.)

use std::io::{Read, Write};
use std::time::Duration;

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_wire::time::now_ms;
use dcwatt_wire::{Batch, Entity, GpuInfo, Quantity, Reading, VERSION};
use serde_json::Value;

mod common;
use common::start_at as start;

const TOKEN: &str = "agent-token";
const OPERATOR: &str = "operator-token";

fn base_config(extra: &str) -> String {
    format!(
        "{extra}\n[operator]\ntoken_sha256 = \"{}\"\n[[agents]]\nid = \"n1\"\ntoken_sha256 = \"{}\"\n",
        hex::encode(token_hash(OPERATOR)),
        hex::encode(token_hash(TOKEN))
    )
}

fn batch(seq: u64, gpus: &[&str]) -> Batch {
    let ts = now_ms();
    Batch {
        version: VERSION,
        agent: "n1".into(),
        seq,
        first_seq: None,
        node: "n1".into(),
        created_ms: ts,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, u)| GpuInfo {
                uuid: (*u).into(),
                index: i as u32,
                model: "NVIDIA GB300".into(),
                module: None,
            })
            .collect(),
        readings: gpus
            .iter()
            .map(|u| Reading {
                ts_ms: ts,
                entity: Entity::Gpu((*u).into()),
                quantity: Quantity::PowerWatts,
                value: 1000.0,
            })
            .collect(),
    }
}

async fn agents(http: &reqwest::Client, base: &str) -> Value {
    let s: Value = common::get_json_as(http, &format!("{base}/v1/summary"), OPERATOR).await;
    serde_json::json!({"agents": s["agents"], "gpus": s["gpus"]})
}

#[test]
fn tls_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let config = base_config(&format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"",
        missing.display(),
        missing.display()
    ));
    let err = Config::from_toml(&config)
        .unwrap()
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.cert_file") && err.contains("no such file"),
        "{err}"
    );
    // A file that is not a certificate: the collector refuses to start, naming the key.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = dcwatt_collector::serve::acceptor(&junk, &junk, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tls.cert_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_rate_gets_429_with_retry_after_and_changes_nothing() {
    let (addr, stop) = start(&base_config(
        "agent_batches_per_second = 0.5\nagent_batch_burst = 2",
    ))
    .await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    for seq in 1..=2 {
        let r = http
            .post(format!("{base}/v1/batches"))
            .bearer_auth(TOKEN)
            .json(&batch(seq, &["GPU-a"]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let before = agents(&http, &base).await;
    let r = http
        .post(format!("{base}/v1/batches"))
        .bearer_auth(TOKEN)
        .json(&batch(3, &["GPU-a"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(agents(&http, &base).await, before);
    let (_, m) = common::get_as(&http, &format!("{base}/metrics"), OPERATOR).await;
    assert!(
        m.contains("dcwatt_ingest_batches_total{result=\"rate_limited\"} 1"),
        "{m}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_report_more_gpus_than_its_cap() {
    let (addr, stop) = start(&base_config("max_gpus_per_agent = 2")).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |seq, gpus: &'static [&'static str]| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/v1/batches"))
                .bearer_auth(TOKEN)
                .json(&batch(seq, gpus))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post(1, &["GPU-a", "GPU-b"]).await.status(), 200);
    let before = agents(&http, &base).await;
    let r = post(2, &["GPU-a", "GPU-b", "GPU-c"]).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_gpus_per_agent"),
        "{body}"
    );
    assert_eq!(agents(&http, &base).await, before);
    // Its own GPUs still go in.
    assert_eq!(post(3, &["GPU-b"]).await.status(), 200);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_served() {
    let (addr, stop) = start(&base_config(
        "header_timeout = \"1s\"\nrequest_timeout = \"1s\"",
    ))
    .await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let before = agents(&http, &base).await;

    // Headers that never end: the connection is closed.
    let slow_headers = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let mut buf = Vec::new();
        // Returns when the server closes (EOF), or fails after 20 s.
        let n = s.read_to_end(&mut buf);
        (n.is_ok(), String::from_utf8_lossy(&buf).into_owned())
    });
    // A body that never ends: 408.
    let slow_body = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"version\":1,"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    // Meanwhile a well-behaved agent is served.
    let r = http
        .post(format!("{base}/v1/batches"))
        .bearer_auth(TOKEN)
        .json(&batch(1, &["GPU-a"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after_good = agents(&http, &base).await;
    assert_ne!(after_good, before);

    let (closed, said) = tokio::task::spawn_blocking(move || slow_headers.join().unwrap())
        .await
        .unwrap();
    assert!(closed, "the slow-header connection was not closed");
    assert!(!said.contains("200 OK"), "{said}");
    let said = tokio::task::spawn_blocking(move || slow_body.join().unwrap())
        .await
        .unwrap();
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert_eq!(agents(&http, &base).await, after_good);
    let _ = stop.send(());
}
