//! Helpers shared by the agent's integration tests: run the real agent
//! in-process on 127.0.0.1:0, scrape it, read values out of the exposition.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dcwatt_agent::config::AgentConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running agent.
pub struct Agent {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), dcwatt_agent::Error>>>,
}

impl Agent {
    /// Builds the config from TOML and runs the agent on an ephemeral port.
    pub async fn start(toml: &str) -> Agent {
        let config = AgentConfig::from_toml(toml)
            .and_then(AgentConfig::build)
            .expect("test config is valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(dcwatt_agent::run(config, listener, async move {
            let _ = rx.await;
        }));
        Agent {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// GET /metrics.
    pub async fn scrape(&self) -> String {
        let resp = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        resp.text().await.unwrap()
    }

    /// Scrapes until `pred` holds on the text, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.scrape().await;
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("condition not met within {timeout:?}; last scrape:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the agent and checks it ended cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("agent stops within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

/// The value of the sample whose series is exactly `series`
/// (`name{label="v",...}` as rendered), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("sample value parses"))
}

/// Like [`value`], but panics with the scrape when the series is missing.
pub fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// The DMTF public-pdu Metrics mockup.
pub fn pdu_fixture() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/redfish/public-pdu/PowerEquipment/RackPDUs/1/Metrics/index.json"
    );
    std::fs::read_to_string(path).unwrap()
}

/// Serves `router` on 127.0.0.1:0 in the background; returns its address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// `promtool check metrics` on the text; `Err` carries its output.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (Debian's prometheus package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
