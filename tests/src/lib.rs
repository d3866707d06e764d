//! Support for the end-to-end tests in `tests/tests/`: the real binaries are
//! started through `dcwatt_sim::launch`, these are the checks around them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `promtool check metrics` on an exposition text; `Err` carries its output.
/// promtool must be installed (README's test command installs it).
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (install Debian's prometheus package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| e.to_string())?;
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

/// The value of one series (`name{labels}` exactly as exposed) in an exposition text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET a URL and parse JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// GET a URL as text.
pub async fn get_text(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Every panel of a dashboard, rows' inner panels included.
pub fn walk_panels<'a>(panels: &'a [serde_json::Value], out: &mut Vec<&'a serde_json::Value>) {
    for p in panels {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            walk_panels(inner, out);
        }
    }
}

/// Every query of every dashboard: (where, expression).
pub fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        let mut panels = Vec::new();
        walk_panels(d["panels"].as_array().unwrap(), &mut panels);
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                out.push((format!("{file}: {}", p["title"]), expr.to_owned()));
            }
        }
    }
    out
}

/// The dashboards in `dashboards/`, by file name, parsed.
pub fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes, by the real `openssl`: a CA (`ca.pem`), a server certificate for
/// 127.0.0.1 (`server.pem`, `server.key`), a client certificate (`client.pem`,
/// `client.key`) it signed, and an unrelated CA (`other.pem`).
pub fn make_certs(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("cannot run openssl (scripts/test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dcwatt test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj"]);
        let subj = format!("/CN={who}");
        req.push(&subj);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    // A second CA that signed nothing of ours.
    let mut other = vec!["req", "-x509"];
    other.extend(ec);
    other.extend([
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=other CA",
    ]);
    openssl(&other);
}

/// Starts the simulator (`dcwatt-sim serve` on 127.0.0.1:0) for a hall of
/// `racks` × `nodes_per_rack` nodes with `gpus_per_node` GPUs each, writing
/// the fake NVML state files into `dir/nvml` (returned) and its log to
/// `dir/sim.log`. The process is killed when the returned `Proc` is dropped.
pub fn spawn_sim(
    dir: &std::path::Path,
    racks: u32,
    nodes_per_rack: u32,
    gpus_per_node: u32,
    seed: u64,
) -> (dcwatt_sim::launch::Proc, std::path::PathBuf) {
    let state_dir = dir.join("nvml");
    std::fs::create_dir_all(&state_dir).expect("the NVML state directory");
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into()];
    for (flag, value) in [
        ("--racks", racks.to_string()),
        ("--nodes-per-rack", nodes_per_rack.to_string()),
        ("--gpus-per-node", gpus_per_node.to_string()),
        ("--seed", seed.to_string()),
        ("--listen", "127.0.0.1:0".to_owned()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    args.extend(["--state-dir".into(), state_dir.clone().into_os_string()]);
    let sim =
        dcwatt_sim::launch::Proc::spawn("sim", "dcwatt-sim", &args, &[], &dir.join("sim.log"))
            .expect("dcwatt-sim (build the workspace first)");
    (sim, state_dir)
}
