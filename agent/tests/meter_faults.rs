//! Meters that misbehave, served by small axum servers on 127.0.0.1: too slow,
//! 500s, HTML and truncated bodies, huge bodies, redirect loops, NaN and
//! negative values, counter resets, expiring Redfish sessions, basic auth.
//! Each failure is data: the meter is down, the error is counted by kind, and
//! nothing else stops.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::Router;
use common::{must, serve, value, Agent};
use dcwatt_agent::config::{RedfishAuth, RedfishSpec};
use dcwatt_agent::sources::meter::{ErrorKind, TlsSpec};
use dcwatt_agent::sources::redfish::RedfishSource;
use dcwatt_agent::sources::Collected;

fn spec(url: &str, auth: RedfishAuth) -> RedfishSpec {
    RedfishSpec {
        meter: "m".to_owned(),
        url: url.parse().unwrap(),
        timeout: Duration::from_secs(5),
        discover: false,
        interval: None,
        auth,
        tls: TlsSpec::default(),
    }
}

async fn read(url: &str) -> Collected {
    RedfishSource::new(spec(url, RedfishAuth::None))
        .unwrap()
        .collect()
        .await
}

fn kind(c: &Collected) -> Option<ErrorKind> {
    c.meters[0].error.as_ref().map(|e| e.kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_errors_of_the_right_kind() {
    let router = Router::new()
        .route(
            "/500",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "oops") }),
        )
        .route(
            "/html",
            get(|| async { "<html><body>502 Bad Gateway</body></html>" }),
        )
        .route(
            "/truncated",
            get(|| async { r#"{"PowerWatts":{"Reading":12"# }),
        )
        .route(
            "/huge",
            get(|| async { format!("{{\"x\":\"{}\"}}", "a".repeat(5 << 20)) }),
        )
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/nan",
            get(|| async { r#"{"PowerWatts":{"Reading":"NaN"}}"# }),
        )
        .route(
            "/negative",
            get(|| async { r#"{"PowerWatts":{"Reading":-5}}"# }),
        )
        .route(
            "/wrongtype",
            get(|| async { r#"{"EnergykWh":{"Reading":true}}"# }),
        )
        .route(
            "/dangling",
            get(|| async {
                r#"{"PowerWatts":{"Reading":5,"DataSourceUri":"/redfish/v1/Chassis/Gone/Sensors/X"}}"#
            }),
        );
    let addr = serve(router).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for (path, expected) in [
        ("/500", ErrorKind::Http),
        ("/html", ErrorKind::Parse),
        ("/truncated", ErrorKind::Parse),
        ("/huge", ErrorKind::Body),
        ("/loop", ErrorKind::Http),
        ("/nan", ErrorKind::Value),
        ("/negative", ErrorKind::Value),
        ("/wrongtype", ErrorKind::Value),
    ] {
        let c = read(&format!("http://{addr}{path}")).await;
        assert_eq!(kind(&c), Some(expected), "{path}: {:?}", c.error);
        assert!(c.readings.is_empty(), "{path}");
        let msg = c.error.unwrap();
        assert!(msg.contains(path), "{path}: error names the url: {msg}");
    }
    let c = read(&format!("http://{dead}/x")).await;
    assert_eq!(kind(&c), Some(ErrorKind::Connect), "{:?}", c.error);

    // A DataSourceUri that leads nowhere is never followed: the reading stands.
    let c = read(&format!("http://{addr}/dangling")).await;
    assert_eq!(c.error, None);
    assert_eq!(c.readings[0].value, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_reading_time_is_used_when_plausible() {
    let now = dcwatt_agent::sources::now_ms();
    let recent = now - 10_000;
    let router = Router::new()
        .route(
            "/recent",
            get(move || async move {
                let secs = recent / 1000;
                format!(
                    r#"{{"ReadingType":"Power","ReadingUnits":"W","Reading":7,"ReadingTime":"{}"}}"#,
                    rfc3339(secs)
                )
            }),
        )
        .route(
            "/skewed",
            get(|| async {
                r#"{"ReadingType":"Power","ReadingUnits":"W","Reading":7,"ReadingTime":"2001-01-01T00:00:00Z"}"#
            }),
        );
    let addr = serve(router).await;
    let c = read(&format!("http://{addr}/recent")).await;
    assert_eq!(c.readings[0].ts_ms, recent / 1000 * 1000);
    let c = read(&format!("http://{addr}/skewed")).await;
    assert!(
        c.readings[0].ts_ms >= now,
        "a wrong device clock falls back to ours"
    );
}

/// Unix seconds as RFC 3339 UTC (civil-from-days, Howard Hinnant).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A BMC whose sessions expire after two requests.
#[derive(Default)]
struct Bmc {
    logins: AtomicUsize,
    uses: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_logs_in_again() {
    let bmc = Arc::new(Bmc::default());
    let (b1, b2) = (Arc::clone(&bmc), Arc::clone(&bmc));
    let router = Router::new()
        .route(
            "/redfish/v1/",
            get(|| async {
                r#"{"Links":{"Sessions":{"@odata.id":"/redfish/v1/SessionService/Sessions"}}}"#
            }),
        )
        .route(
            "/redfish/v1/SessionService/Sessions",
            post(move |body: String| async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if v["UserName"] != "admin" || v["Password"] != "secret" {
                    return (StatusCode::UNAUTHORIZED, HeaderMap::new(), "").into_response();
                }
                let n = b1.logins.fetch_add(1, Ordering::SeqCst) + 1;
                b1.uses.store(0, Ordering::SeqCst);
                let mut h = HeaderMap::new();
                h.insert("x-auth-token", format!("tok-{n}").parse().unwrap());
                (StatusCode::CREATED, h, "{}").into_response()
            }),
        )
        .route(
            "/redfish/v1/Metrics",
            get(move |headers: HeaderMap| async move {
                let current = format!("tok-{}", b2.logins.load(Ordering::SeqCst));
                let valid = headers
                    .get("x-auth-token")
                    .is_some_and(|t| t.to_str().ok() == Some(current.as_str()));
                if !valid || b2.uses.fetch_add(1, Ordering::SeqCst) >= 2 {
                    return (StatusCode::UNAUTHORIZED, "").into_response();
                }
                r#"{"PowerWatts":{"Reading":100}}"#.into_response()
            }),
        );
    let addr = serve(router).await;
    let url = format!("http://{addr}/redfish/v1/Metrics");
    let session = |password: &str| RedfishAuth::Session {
        username: "admin".into(),
        password: password.into(),
    };
    let source = RedfishSource::new(spec(&url, session("secret"))).unwrap();
    for _ in 0..5 {
        let c = source.collect().await;
        assert_eq!(c.error, None);
        assert_eq!(c.readings[0].value, 100.0);
    }
    // Two reads per session: five reads needed three logins.
    assert_eq!(bmc.logins.load(Ordering::SeqCst), 3);

    let wrong = RedfishSource::new(spec(&url, session("nope"))).unwrap();
    let c = wrong.collect().await;
    assert_eq!(kind(&c), Some(ErrorKind::Auth), "{:?}", c.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_sent() {
    let router = Router::new().route(
        "/m",
        get(|headers: HeaderMap| async move {
            // admin:secret
            if headers.get("authorization").and_then(|h| h.to_str().ok())
                == Some("Basic YWRtaW46c2VjcmV0")
            {
                r#"{"PowerWatts":{"Reading":1}}"#.into_response()
            } else {
                (StatusCode::UNAUTHORIZED, "").into_response()
            }
        }),
    );
    let addr = serve(router).await;
    let url = format!("http://{addr}/m");
    let basic = |password: &str| RedfishAuth::Basic {
        username: "admin".into(),
        password: password.into(),
    };
    let c = RedfishSource::new(spec(&url, basic("secret")))
        .unwrap()
        .collect()
        .await;
    assert_eq!(c.error, None);
    let c = RedfishSource::new(spec(&url, basic("wrong")))
        .unwrap()
        .collect()
        .await;
    assert_eq!(kind(&c), Some(ErrorKind::Auth));
}

/// The whole agent: a slow meter does not hold up a fast one, errors and resets
/// are exported by kind, and the exposition passes `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_meter_does_not_stall_the_others() {
    let fast_hits = Arc::new(AtomicUsize::new(0));
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let reset_hits = Arc::new(AtomicUsize::new(0));
    let (f, s, r) = (
        Arc::clone(&fast_hits),
        Arc::clone(&slow_hits),
        Arc::clone(&reset_hits),
    );
    let router = Router::new()
        .route(
            "/fast",
            get(move || async move {
                f.fetch_add(1, Ordering::SeqCst);
                r#"{"PowerWatts":{"Reading":10},"EnergykWh":{"Reading":2}}"#
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                "{}"
            }),
        )
        .route(
            "/reset",
            // The SensorResetTime changes on every third read.
            get(move || async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                format!(
                    r#"{{"EnergykWh":{{"Reading":{},"SensorResetTime":"2025-01-0{}T00:00:00Z"}}}}"#,
                    10 + n,
                    1 + (n / 3) % 9
                )
            }),
        )
        .route(
            "/500",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") }),
        );
    let addr = serve(router).await;
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "redfish"
meter = "slow"
url = "http://{addr}/slow"
timeout = "20s"
[[sources]]
type = "redfish"
meter = "fast"
url = "http://{addr}/fast"
[[sources]]
type = "redfish"
meter = "resetting"
url = "http://{addr}/reset"
[[sources]]
type = "redfish"
meter = "busy"
url = "http://{addr}/500"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(15), |t| {
            value(t, r#"dcwatt_meter_energy_resets_total{meter="resetting"}"#)
                .is_some_and(|v| v >= 1.0)
                && fast_hits.load(Ordering::SeqCst) >= 10
                && value(t, r#"dcwatt_meter_errors_total{meter="busy",kind="http"}"#)
                    .is_some_and(|v| v >= 2.0)
        })
        .await;
    // The slow meter's first read is still pending: it was never started again,
    // and the fast one kept its own pace meanwhile.
    assert_eq!(slow_hits.load(Ordering::SeqCst), 1);
    assert_eq!(value(&text, r#"dcwatt_meter_up{meter="slow"}"#), None);
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="fast"}"#), 1.0);
    assert_eq!(
        must(&text, r#"dcwatt_meter_energy_joules_total{meter="fast"}"#),
        7.2e6
    );
    assert!(
        must(
            &text,
            r#"dcwatt_meter_last_reading_timestamp_seconds{meter="fast"}"#
        ) > 1.7e9
    );
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="busy"}"#), 0.0);
    assert_eq!(
        must(
            &text,
            r#"dcwatt_meter_errors_total{meter="busy",kind="timeout"}"#
        ),
        0.0
    );
    assert_eq!(
        must(&text, r#"dcwatt_source_up{source="redfish:busy"}"#),
        0.0
    );
    promtool_check(&text);
    agent.stop().await;
}

/// A meter that times out is down with kind `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_counted_as_timeout() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "{}"
        }),
    );
    let addr = serve(router).await;
    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "gw-1"
[[sources]]
type = "redfish"
meter = "slow"
url = "http://{addr}/slow"
timeout = "200ms"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(15), |t| {
            value(
                t,
                r#"dcwatt_meter_errors_total{meter="slow",kind="timeout"}"#,
            )
            .is_some_and(|v| v >= 2.0)
        })
        .await;
    assert_eq!(must(&text, r#"dcwatt_meter_up{meter="slow"}"#), 0.0);
    agent.stop().await;
}

/// `promtool check metrics` must accept the exposition (Debian's `prometheus`
/// package; `scripts/test` installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (install Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

/// A one-route HTTPS server with the test certificate for 127.0.0.1.
async fn serve_tls(body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certs = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // An untrusting client aborts the handshake: that is the point.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_the_ca_or_the_loud_option() {
    let addr = serve_tls(r#"{"PowerWatts":{"Reading":42}}"#).await;
    let url = format!("https://{addr}/redfish/v1/Metrics");
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
    let with = |tls: TlsSpec| {
        let mut s = spec(&url, RedfishAuth::None);
        s.tls = tls;
        RedfishSource::new(s).unwrap()
    };
    // Not trusted by default.
    let c = with(TlsSpec::default()).collect().await;
    assert_eq!(kind(&c), Some(ErrorKind::Tls), "{:?}", c.error);
    // Trusted through ca_file.
    let c = with(TlsSpec {
        ca_file: Some(ca),
        insecure_skip_verify: false,
    })
    .collect()
    .await;
    assert_eq!(c.error, None);
    assert_eq!(c.readings[0].value, 42.0);
    // Or with verification off, explicitly.
    let c = with(TlsSpec {
        ca_file: None,
        insecure_skip_verify: true,
    })
    .collect()
    .await;
    assert_eq!(c.error, None);
}

/// A raw loopback server that answers every connection with `head` and then
/// `body` one byte per `every` (`None`: all at once, then close).
async fn serve_raw(head: String, body: &'static [u8], every: Option<Duration>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let head = head.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf).await;
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                match every {
                    None => {
                        let _ = tcp.write_all(body).await;
                    }
                    Some(d) => {
                        for b in body {
                            if tcp.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(d).await;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}/m")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_and_cut_bodies_fail() {
    const BODY: &[u8] = br#"{"PowerWatts":{"Reading":12.5}}"#;
    let head = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // One byte per 100 ms: the whole body would take 3 s; the timeout is 300 ms.
    let drip = serve_raw(head(BODY.len()), BODY, Some(Duration::from_millis(100))).await;
    let mut s = spec(&drip, RedfishAuth::None);
    s.timeout = Duration::from_millis(300);
    let c = RedfishSource::new(s).unwrap().collect().await;
    assert_eq!(kind(&c), Some(ErrorKind::Timeout), "{:?}", c.error);
    // The connection closes before Content-Length bytes arrived.
    let cut = serve_raw(head(BODY.len() + 100), BODY, None).await;
    let c = read(&cut).await;
    assert_eq!(kind(&c), Some(ErrorKind::Body), "{:?}", c.error);
    // The same server, whole: it works.
    let whole = serve_raw(head(BODY.len()), BODY, None).await;
    let c = read(&whole).await;
    assert_eq!(c.error, None);
    assert_eq!(c.readings[0].value, 12.5);
}
