//! TLS between the real binaries: a collector that requires client
//! certificates (mutual TLS), an agent that trusts only the site's CA and
//! presents its certificate, and an agent without one, whose batches never get
//! in and wait in its spool. Certificates are made by the real `openssl`.

use std::ffi::OsString;
use std::time::Duration;

use dcwatt_collector::config::token_hash;
use dcwatt_sim::launch::Proc;
use dcwatt_tests::{make_certs, sample, wait_for};
use serde_json::Value;

const OPERATOR: &str = "operator-token";

fn agent_config(
    dir: &std::path::Path,
    node: &str,
    url: &str,
    with_cert: bool,
) -> std::path::PathBuf {
    let token = dir.join(format!("{node}.token"));
    std::fs::write(&token, format!("{node}-token\n")).unwrap();
    let mut c = format!(
        "listen = \"127.0.0.1:0\"\ninterval = \"200ms\"\nnode = \"{node}\"\n\n[[collectors]]\nurl = \"{url}\"\ntoken_file = \"{}\"\nca_file = \"{}\"\n",
        token.display(),
        dir.join("ca.pem").display()
    );
    if with_cert {
        c += &format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        );
    }
    c += &format!(
        "\n[spool]\ndir = \"{}\"\n",
        dir.join(format!("spool-{node}")).display()
    );
    let path = dir.join(format!("agent-{node}.toml"));
    std::fs::write(&path, c).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_a_mutual_tls_collector_only_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let h = |t: &str| hex::encode(token_hash(t));
    let collector_toml = d.join("collector.toml");
    std::fs::write(
        &collector_toml,
        format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\
             [operator]\ntoken_sha256 = \"{}\"\n\
             [[agents]]\nid = \"n1\"\ntoken_sha256 = \"{}\"\n[[agents]]\nid = \"n2\"\ntoken_sha256 = \"{}\"\n",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            d.join("ca.pem").display(),
            h(OPERATOR),
            h("n1-token"),
            h("n2-token"),
        ),
    )
    .unwrap();
    let collector = Proc::spawn(
        "collector",
        "dcwatt-collector",
        &[OsString::from("--config"), collector_toml.into_os_string()],
        &[],
        &d.join("collector.log"),
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{}", collector.addr.port());
    let n1 = agent_config(d, "n1", &url, true);
    let n2 = agent_config(d, "n2", &url, false);
    let mut agents = Vec::new();
    for (node, cfg) in [("n1", n1), ("n2", n2)] {
        agents.push(
            Proc::spawn(
                node,
                "dcwatt-agent",
                &[OsString::from("--config"), cfg.into_os_string()],
                &[],
                &d.join(format!("agent-{node}.log")),
            )
            .unwrap(),
        );
    }
    // The operator reads the summary over mutual TLS too.
    let mut identity = std::fs::read(d.join("client.pem")).unwrap();
    identity.extend(std::fs::read(d.join("client.key")).unwrap());
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let summary = || async {
        https
            .get(format!("{url}/v1/summary"))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
    };
    let agents_seen = wait_for(
        "n1's batches over mutual TLS",
        Duration::from_secs(60),
        || async {
            let s = summary().await?;
            let list = s["agents"].as_array()?.clone();
            list.iter()
                .any(|a| a["id"] == "n1" && a["last_seq"].as_u64().unwrap_or(0) > 0)
                .then_some(list)
        },
    )
    .await;
    assert!(
        agents_seen.iter().all(|a| a["id"] != "n2"),
        "an agent without a client certificate got in: {agents_seen:?}"
    );
    // n2 keeps its batches in its spool, none acknowledged.
    let m = reqwest::get(format!("{}/metrics", agents[1].url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok = m
        .lines()
        .find(|l| l.starts_with("dcwatt_ship_batches_total{") && l.contains("result=\"ok\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(ok, Some(0.0), "{m}");
    assert!(
        sample(&m, "dcwatt_spool_batches").unwrap_or(0.0) > 0.0,
        "{m}"
    );
    // Plain HTTP to the TLS listener gets nothing.
    assert!(
        reqwest::get(format!("http://{}/v1/summary", collector.addr))
            .await
            .is_err()
    );
    let log = std::fs::read_to_string(d.join("collector.log")).unwrap_or_default();
    assert!(
        !log.contains("n1-token") && !log.contains(OPERATOR),
        "a token in the log"
    );
}
