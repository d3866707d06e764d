//! What the collector's integration tests share: a collector run in-process on
//! 127.0.0.1:0 from a config text, and reading one sample of an exposition.
//! (Each test file compiles this module on its own; not every file uses all of it.)
#![allow(dead_code)]

use dcwatt_collector::config::Config;

/// Starts a collector from `config` on 127.0.0.1:0. Send on (or drop) the
/// returned sender to stop it; a collector that fails to run panics the test.
pub async fn start_at(config: &str) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let site = Config::from_toml(config).unwrap().build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = dcwatt_collector::run(site, listener, async {
            let _ = rx.await;
        })
        .await
        {
            panic!("collector: {e}");
        }
    });
    (addr, tx)
}

/// [`start_at`], giving the base URL (`http://127.0.0.1:PORT`).
pub async fn start(config: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr, stop) = start_at(config).await;
    (format!("http://{addr}"), stop)
}

/// The value of the unlabelled or fully labelled `series` in an exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `GET url` with `token` as the bearer: the status and the body.
pub async fn get_as(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let resp = http.get(url).bearer_auth(token).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `GET url` with `token` as the bearer, its body as JSON (any status).
pub async fn get_json_as(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    let (status, body) = get_as(http, url, token).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} ({status}): {e}: {body}"))
}
