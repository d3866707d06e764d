//! Superchip module energy billed end to end, through real processes on
//! 127.0.0.1: a GB300 tray (the fake NVML library serving the profile
//! transcribed from a real `nvidia-smi -q -x` capture: 4 GPUs, 2 superchip
//! modules, constant power) read by the real agent with `ship_modules =
//! true`, beside a node meter (the node's input, served over HTTP as JSON);
//! the real collector bills the tenant leasing the node.
//!
//! For every complete, closed minute the tenant's `module_joules` must equal
//! the modules' energy less their GPUs' energy, computed here from the fake
//! library's own state (module and GPU power, the energy counter's skew), and
//! its `it_joules` must equal the node meter's energy: the module part is
//! not counted a second time in the node's remainder. Tolerance 1 %: every
//! power is constant, so the agent's trapezoid of module power, the GPU
//! counters and the collector's cut at minute edges (linear interpolation)
//! are exact but for timestamp jitter (milliseconds against a 60 s minute,
//! well under 0.1 %); counting the module part twice would add ≈ 17 % to
//! `it_joules`, and leaving it out would take 100 % of `module_joules`.

use std::io::Write as _;
use std::time::Duration;

use dcwatt_fake_nvml::profiles::{gb300_tray, ENERGY_SKEW_PPM};
use dcwatt_fake_nvml::{FakeNode, LIB_PATH, STATE_ENV};
use dcwatt_sim::launch::Proc;
use dcwatt_tests::wait_for;
use dcwatt_wire::time::{civil_from_days, DAY_MS, MINUTE_MS};
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "gb300-n1";
const METER: &str = "psu-gb300-n1";
const TENANT_TOKEN: &str = "lab-a-token";
const AGENT_TOKEN: &str = "gb300-n1-agent-token";
/// The node's input power, W: its GPUs, modules and the rest of the tray.
const NODE_W: f64 = 1500.0;
const MIN: i64 = MINUTE_MS;

fn now_ms() -> i64 {
    dcwatt_agent::sources::now_ms()
}

/// A node meter over HTTP: `{"power_w": …, "energy_wh": …}`, its register
/// counting `NODE_W` from `t0_ms`. One request per connection.
async fn serve_meter(t0_ms: i64) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let hours = (now_ms() - t0_ms) as f64 / 3_600_000.0;
                let body = format!(
                    r#"{{"power_w": {NODE_W}, "energy_wh": {}}}"#,
                    1_000_000.0 + NODE_W * hours
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

fn sha(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_energy_is_billed_once_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The tray: constant power, energy counters running from now.
    let t0 = now_ms();
    let gpus = gb300_tray();
    let state = d.join("gb300.state");
    FakeNode {
        driver: "580.95.05".into(),
        time_ms: t0,
        horizon_ms: None,
        init_fail: false,
        gpus: gpus.clone(),
    }
    .write(&state)
    .unwrap();
    let meter = serve_meter(t0).await;

    // What the tray's modules give beyond their GPUs per minute, J: each
    // superchip (the GPUs sharing a board serial) reports its power through
    // the lowest-index GPU; each GPU's counter runs ENERGY_SKEW_PPM fast.
    let skew = 1.0 + f64::from(ENERGY_SKEW_PPM) / 1e6;
    let mut serials: Vec<&str> = gpus
        .iter()
        .map(|g| g.serial.as_deref().expect("the profile's board serial"))
        .collect();
    serials.dedup();
    assert_eq!(serials.len(), 2, "two superchips");
    let module_rest_per_min: f64 = serials
        .iter()
        .map(|s| {
            let members: Vec<_> = gpus
                .iter()
                .filter(|g| g.serial.as_deref() == Some(*s))
                .collect();
            let module_w = f64::from(members[0].module_power_mw.unwrap()) / 1000.0;
            let gpus_w: f64 = members
                .iter()
                .map(|g| f64::from(g.power_mw) / 1000.0 * skew)
                .sum();
            (module_w - gpus_w) * 60.0
        })
        .sum();
    assert!(module_rest_per_min > 0.0);

    // The collector: the tenant leases the node; the node is metered.
    let collector_conf = d.join("collector.toml");
    std::fs::write(
        &collector_conf,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             [[agents]]\nid = \"{NODE}\"\ntoken_sha256 = \"{}\"\nmeters = [\"{METER}\"]\n\
             [[meters]]\nid = \"{METER}\"\nrole = \"it\"\nit_point = \"it_input\"\nnode = \"{NODE}\"\n\
             [[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{}\"\n\
             [[leases]]\ntenant = \"lab-a\"\nnodes = [\"{NODE}\"]\nfrom = \"2020-01-01T00:00:00Z\"\nto = \"2100-01-01T00:00:00Z\"\n\
             [ledger]\npath = {}\nclose_after = \"5s\"\n",
            sha(AGENT_TOKEN),
            sha(TENANT_TOKEN),
            toml_str(&d.join("collector.sqlite").display().to_string()),
        ),
    )
    .unwrap();
    let log_env = || vec![("RUST_LOG", std::ffi::OsString::from("info"))];
    let collector = Proc::spawn(
        "collector",
        "dcwatt-collector",
        &["--config".into(), collector_conf.into()],
        &log_env(),
        &d.join("collector.log"),
    )
    .expect("dcwatt-collector (build the workspace first)");

    // The agent: the fake NVML tray with modules shipped, and the meter.
    let token_file = d.join("agent.token");
    std::fs::File::create(&token_file)
        .unwrap()
        .write_all(AGENT_TOKEN.as_bytes())
        .unwrap();
    let agent_conf = d.join("agent.toml");
    std::fs::write(
        &agent_conf,
        format!(
            "listen = \"127.0.0.1:0\"\ninterval = \"500ms\"\nnode = \"{NODE}\"\n\
             [[collectors]]\nurl = {}\ntoken_file = {}\n\
             [spool]\ndir = {}\n\
             [[sources]]\ntype = \"nvml\"\nlibrary = {}\nship_modules = true\n\
             [[sources]]\ntype = \"http_json\"\nmeter = \"{METER}\"\nurl = \"http://{meter}/status\"\n\
             power = {{ pointer = \"/power_w\", unit = \"W\" }}\n\
             energy = {{ pointer = \"/energy_wh\", unit = \"Wh\" }}\n",
            toml_str(&collector.url()),
            toml_str(&token_file.display().to_string()),
            toml_str(&d.join("spool").display().to_string()),
            toml_str(LIB_PATH),
        ),
    )
    .unwrap();
    let mut envs = log_env();
    envs.push((STATE_ENV, state.clone().into_os_string()));
    let started = now_ms();
    let _agent = Proc::spawn(
        "agent",
        "dcwatt-agent",
        &["--config".into(), agent_conf.into()],
        &envs,
        &d.join("agent.log"),
    )
    .expect("dcwatt-agent (build the workspace first)");

    // Complete minutes: after the agent's first readings (a margin for its
    // start), every GPU leased for the whole minute.
    let first = (started + 5_000).div_euclid(MIN) * MIN + MIN;
    let (y, m, _) = civil_from_days(first.div_euclid(DAY_MS));
    let month = format!("{y:04}-{m:02}");
    let url = format!(
        "{}/v1/tenants/lab-a/statement?month={month}",
        collector.url()
    );
    let http = reqwest::Client::new();
    // Per minute: (it, module, node, GPU ms), every row of the minute added
    // (adjustment rows included).
    let minutes = wait_for(
        "two complete minutes booked with module energy",
        Duration::from_secs(240),
        || async {
            let st: Value = http
                .get(&url)
                .bearer_auth(TENANT_TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let mut by_minute: std::collections::BTreeMap<i64, (f64, f64, f64, i64)> =
                Default::default();
            for r in st["proofs"]["rows"].as_array()? {
                let r = &r["row"];
                let minute = r["minute_ms"].as_i64()?;
                let e = by_minute.entry(minute).or_default();
                e.0 += r["it_joules"].as_f64()?;
                e.1 += r["module_joules"].as_f64().unwrap_or(0.0);
                e.2 += r["node_joules"].as_f64().unwrap_or(0.0);
                e.3 += r["gpu_ms"].as_i64()?;
            }
            let complete: Vec<(i64, (f64, f64, f64, i64))> = by_minute
                .into_iter()
                .filter(|(m, v)| *m >= first && v.3 == 4 * MIN && v.1 > 0.0 && v.2 > 0.0)
                .collect();
            (complete.len() >= 2).then_some(complete)
        },
    )
    .await;

    eprintln!("module remainder truth {module_rest_per_min:.1} J/min; booked (it, module, node, GPU ms): {minutes:?}");
    let within = |got: f64, want: f64| (got - want).abs() <= 0.01 * want.abs();
    for (minute, (it, module, node, _)) in &minutes {
        // The modules' energy beyond their GPUs, billed as module energy.
        assert!(
            within(*module, module_rest_per_min),
            "minute {minute}: module_joules {module}, truth {module_rest_per_min}"
        );
        // Metered node: the tenant (all four GPUs) is billed the meter's
        // energy, once: GPUs + module remainders + the node's remainder.
        assert!(
            within(*it, NODE_W * 60.0),
            "minute {minute}: it_joules {it}, node meter {} (module {module}, node {node})",
            NODE_W * 60.0
        );
        let gpus_j: f64 = gpus
            .iter()
            .map(|g| f64::from(g.power_mw) / 1000.0 * skew * 60.0)
            .sum();
        assert!(
            within(*node, NODE_W * 60.0 - gpus_j - module_rest_per_min),
            "minute {minute}: node_joules {node}, gpus {gpus_j}, module {module}"
        );
    }
}
