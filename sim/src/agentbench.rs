//! `dcwatt-sim agent-bench`: what one agent costs its node, measured beside the
//! node_exporter every such node already runs.
//!
//! Starts, as real processes on 127.0.0.1: the simulator (`dcwatt-sim serve`,
//! two racks of one node each, so four Redfish meters: utility, two rack PDUs,
//! cooling), one `dcwatt-agent` reading the first node's GPUs through the fake
//! `libnvidia-ml.so.1` and all four meters over Redfish, optionally a
//! `dcwatt-collector` it ships to (otherwise it is a standalone exporter), and,
//! when installed, Debian's `prometheus-node-exporter` with its default
//! collectors. Scrapes the agent's `/metrics` every second and node_exporter's
//! every 15 s, timing each scrape from the client (keep-alive HTTP), and reads
//! each process's CPU seconds (user + system, `/proc/PID/stat`) and peak RSS
//! (`VmHWM`, `/proc/PID/status`) over the measured span.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::launch::{fetch_site, Proc};
use crate::measure::{percentile, proc_usage};

/// Options of the agent benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentBenchArgs {
    /// How long to measure, seconds (after a 3 s warm-up).
    #[arg(long, default_value_t = 300)]
    pub duration_s: u64,
    /// GPUs of the simulated node (fake NVML).
    #[arg(long, default_value_t = 8)]
    pub gpus: u32,
    /// The agent's collection interval (humantime).
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Each Redfish meter's own read interval (humantime; `[[sources]]
    /// interval`). Default: the agent's interval.
    #[arg(long)]
    pub meter_interval: Option<String>,
    /// With `--with-collector`: the agent's `[[collectors]] ship_interval`
    /// (humantime). Default: each batch at once.
    #[arg(long)]
    pub ship_interval: Option<String>,
    /// Seconds between two scrapes of the agent's `/metrics` while CPU is
    /// measured (default: node_exporter's, as one Prometheus scrapes both).
    #[arg(long, default_value_t = 15.0)]
    pub agent_scrape_s: f64,
    /// Seconds between two scrapes of node_exporter's `/metrics`.
    #[arg(long, default_value_t = 15.0)]
    pub node_exporter_scrape_s: f64,
    /// Requests of the latency phase, after the measured span: the agent's
    /// `/metrics` and its `/healthz` (the floor: same server and client, a
    /// 2-byte answer), alternately, each after a pause.
    #[arg(long, default_value_t = 300)]
    pub latency_requests: usize,
    /// The pause before each request of the latency phase, milliseconds: long
    /// enough for every thread to park again, as between two real scrapes.
    #[arg(long, default_value_t = 100)]
    pub latency_gap_ms: u64,
    /// Also start a collector and let the agent ship to it (with its durable
    /// spool); without it the agent is a standalone exporter.
    #[arg(long)]
    pub with_collector: bool,
    /// The node_exporter binary (default: `prometheus-node-exporter` or
    /// `node_exporter` on the PATH; skipped when neither is there).
    #[arg(long)]
    pub node_exporter: Option<PathBuf>,
    /// Do not run node_exporter even when it is installed.
    #[arg(long)]
    pub no_node_exporter: bool,
    /// Where configs, tokens, spool and logs go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// What was measured of one process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessRow {
    /// `dcwatt-agent`, `node_exporter`, `dcwatt-collector`.
    pub process: String,
    /// User + system CPU seconds over the measured span.
    pub cpu_s: f64,
    /// `cpu_s` as a percentage of one core over the span.
    pub cpu_pct: f64,
    /// Peak resident set (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Threads at the end (`Threads:` in `/proc/PID/status`).
    pub threads: u64,
    /// Its `/metrics` scrapes during the span (none when not scraped).
    pub scrapes: Latency,
}

/// One endpoint of the latency phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRow {
    /// `/metrics` or `/healthz`.
    pub endpoint: String,
    /// Its requests.
    pub latency: Latency,
}

/// Timed requests to one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Successful requests.
    pub requests: usize,
    /// Failed requests (transport error or non-2xx).
    pub failed: usize,
    /// Latency percentiles, ms (NaN without requests).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Size of the last body, bytes.
    pub bytes: usize,
}

impl Latency {
    /// The table cells: requests, failed, p50, p99, max, bytes.
    fn cells(&self) -> String {
        let ms = |v: f64| {
            if v.is_nan() {
                "-".to_owned()
            } else {
                format!("{v:.2}")
            }
        };
        format!(
            "{} | {} | {} | {} | {} | {}",
            self.requests,
            self.failed,
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.max_ms),
            self.bytes
        )
    }
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentBenchReport {
    /// Measured span, seconds.
    pub measured_s: f64,
    /// One row per process, the agent first.
    pub rows: Vec<ProcessRow>,
    /// The agent's latency phase.
    pub latency: Vec<LatencyRow>,
    /// Why node_exporter is not in the table, when it is not.
    pub node_exporter_missing: Option<String>,
}

/// A child that is not a dcwatt binary (node_exporter): killed when dropped.
struct Foreign {
    child: std::process::Child,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0 for a free port")?;
    Ok(l.local_addr()?.port())
}

/// Starts node_exporter on a free loopback port with its default collectors and
/// waits (up to 20 s) until its `/metrics` answers.
async fn start_node_exporter(
    bin: &Path,
    dir: &Path,
    http: &reqwest::Client,
) -> anyhow::Result<(Foreign, String)> {
    let port = free_port()?;
    let log = dir.join("node_exporter.log");
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(bin)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut proc = Foreign { child };
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return Ok((proc, url));
            }
        }
        if matches!(proc.child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
            bail!(
                "node_exporter did not serve {url}; its log {}:\n{}",
                log.display(),
                crate::launch::tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default() // a JSON string is a valid TOML basic string
}

/// Scrape timings of one target.
#[derive(Default)]
struct Scrapes {
    latencies_ms: Vec<f64>,
    failed: usize,
    last_bytes: usize,
}

impl Scrapes {
    /// Sorts the latencies and sums them up.
    fn summary(&mut self) -> Latency {
        self.latencies_ms.sort_by(f64::total_cmp);
        let pct = |p: f64| percentile(&self.latencies_ms, p);
        Latency {
            requests: self.latencies_ms.len(),
            failed: self.failed,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: self.latencies_ms.last().copied().unwrap_or(f64::NAN),
            bytes: self.last_bytes,
        }
    }
}

async fn scrape(http: &reqwest::Client, url: &str, into: &mut Scrapes) {
    let start = Instant::now();
    let body = match http.get(url).send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.ok(),
        _ => None,
    };
    match body {
        Some(b) => {
            into.latencies_ms
                .push(start.elapsed().as_secs_f64() * 1000.0);
            into.last_bytes = b.len();
        }
        None => into.failed += 1,
    }
}

/// Runs the benchmark and returns what it measured.
pub async fn run(args: &AgentBenchArgs) -> anyhow::Result<AgentBenchReport> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("dcwatt-agent-bench-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(dir.join("nvml"))
        .with_context(|| format!("cannot create {}", dir.join("nvml").display()))?;
    let quiet = || vec![("RUST_LOG", OsString::from("warn"))];

    // Two racks of one node: four meters (utility, pdu-r1, pdu-r2, cooling).
    let sim = Proc::spawn(
        "simulator",
        "dcwatt-sim",
        &[
            "serve".into(),
            "--racks".into(),
            "2".into(),
            "--nodes-per-rack".into(),
            "1".into(),
            "--gpus-per-node".into(),
            args.gpus.to_string().into(),
            "--state-dir".into(),
            dir.join("nvml").into(),
        ],
        &quiet(),
        &dir.join("sim.log"),
    )?;
    let site = fetch_site(&sim.url()).await?;
    let node = site
        .nodes
        .first()
        .context("the simulator reported no nodes")?
        .clone();

    let mut agent_toml = format!(
        "listen = \"127.0.0.1:0\"\ninterval = {}\nnode = {}\n",
        toml_str(&args.interval),
        toml_str(&node.name)
    );
    let collector = if args.with_collector {
        let token = hex::encode(Sha256::digest(
            format!("{}:{:?}", node.name, std::time::SystemTime::now()).as_bytes(),
        ));
        let token_file = dir.join("agent.token");
        std::fs::write(&token_file, &token)
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        let mut conf = format!(
            "listen = \"127.0.0.1:0\"\n[ledger]\npath = {}\n[[agents]]\nid = {}\ntoken_sha256 = \"{}\"\n",
            toml_str(&dir.join("collector.sqlite").display().to_string()),
            toml_str(&node.name),
            hex::encode(Sha256::digest(token.as_bytes()))
        );
        conf += &format!(
            "meters = [{}]\n",
            site.meters
                .iter()
                .map(|m| toml_str(&m.id))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for m in &site.meters {
            conf += &format!(
                "[[meters]]\nid = {}\nrole = {}\nzone = {}\n",
                toml_str(&m.id),
                toml_str(&m.role),
                toml_str(&m.zone)
            );
            if let Some(p) = &m.it_point {
                conf += &format!("it_point = {}\n", toml_str(p));
            }
        }
        let path = dir.join("collector.toml");
        std::fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
        let c = Proc::spawn(
            "collector",
            "dcwatt-collector",
            &["--config".into(), path.into()],
            &quiet(),
            &dir.join("collector.log"),
        )?;
        agent_toml += &format!(
            "\n[[collectors]]\nurl = {}\ntoken_file = {}\n",
            toml_str(&c.url()),
            toml_str(&token_file.display().to_string()),
        );
        if let Some(every) = &args.ship_interval {
            agent_toml += &format!("ship_interval = {}\n", toml_str(every));
        }
        agent_toml += &format!(
            "\n[spool]\ndir = {}\n",
            toml_str(&dir.join("spool").display().to_string())
        );
        Some(c)
    } else {
        None
    };
    agent_toml += &format!(
        "\n[[sources]]\ntype = \"nvml\"\nlibrary = {}\n",
        toml_str(dcwatt_fake_nvml::LIB_PATH)
    );
    for m in &site.meters {
        agent_toml += &format!(
            "\n[[sources]]\ntype = \"redfish\"\nmeter = {}\nurl = {}\n",
            toml_str(&m.id),
            toml_str(&m.url)
        );
        if let Some(every) = &args.meter_interval {
            agent_toml += &format!("interval = {}\n", toml_str(every));
        }
    }
    let agent_conf = dir.join("agent.toml");
    std::fs::write(&agent_conf, agent_toml)
        .with_context(|| format!("cannot write {}", agent_conf.display()))?;
    let mut agent_env = quiet();
    agent_env.push((
        "DCWATT_FAKE_NVML_STATE",
        node.state_file.clone().into_os_string(),
    ));
    let agent = Proc::spawn(
        "agent",
        "dcwatt-agent",
        &["--config".into(), agent_conf.into()],
        &agent_env,
        &dir.join("agent.log"),
    )?;

    // Separate keep-alive clients, as two Prometheus scrape pools would be.
    let client = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1)
            .build()
    };
    let (agent_http, ne_http) = (client()?, client()?);
    let node_exporter_bin = if args.no_node_exporter {
        None
    } else {
        args.node_exporter
            .clone()
            .or_else(|| find_on_path(&["prometheus-node-exporter", "node_exporter"]))
    };
    let (node_exporter, node_exporter_missing) = match &node_exporter_bin {
        Some(bin) => (Some(start_node_exporter(bin, &dir, &ne_http).await?), None),
        None if args.no_node_exporter => (None, Some("--no-node-exporter".to_owned())),
        None => (
            None,
            Some("not installed (apt-get install prometheus-node-exporter)".to_owned()),
        ),
    };

    // Warm-up: a few collections, the first scrapes, connections open.
    let agent_url = format!("{}/metrics", agent.url());
    let warmup_end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < warmup_end {
        let _ = agent_http.get(&agent_url).send().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pids: Vec<(String, u32)> = std::iter::once(("dcwatt-agent".to_owned(), agent.pid()))
        .chain(
            node_exporter
                .as_ref()
                .map(|(p, _)| ("node_exporter".to_owned(), p.child.id())),
        )
        .chain(
            collector
                .as_ref()
                .map(|c| ("dcwatt-collector".to_owned(), c.pid())),
        )
        .collect();
    let start_usage: Vec<Option<(f64, u64, u64)>> =
        pids.iter().map(|(_, pid)| proc_usage(*pid)).collect();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(args.duration_s);
    let mut agent_scrapes = Scrapes::default();
    let mut ne_scrapes = Scrapes::default();
    let agent_every = Duration::from_secs_f64(args.agent_scrape_s.max(0.01));
    let ne_every = Duration::from_secs_f64(args.node_exporter_scrape_s.max(0.01));
    let mut next_agent = t0;
    let mut next_ne = t0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_agent {
            scrape(&agent_http, &agent_url, &mut agent_scrapes).await;
            next_agent += agent_every;
        }
        if let Some((_, url)) = &node_exporter {
            if Instant::now() >= next_ne {
                scrape(&ne_http, url, &mut ne_scrapes).await;
                next_ne += ne_every;
            }
        }
        let next = if node_exporter.is_some() {
            next_agent.min(next_ne)
        } else {
            next_agent
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(next.min(end))).await;
    }
    let measured_s = t0.elapsed().as_secs_f64();
    let end_usage: Vec<Option<(f64, u64, u64)>> =
        pids.iter().map(|(_, pid)| proc_usage(*pid)).collect();

    let mut rows = Vec::new();
    for (i, (name, _)) in pids.iter().enumerate() {
        let (cpu_s, rss, threads) = match (start_usage[i], end_usage[i]) {
            (Some((c0, _, _)), Some((c1, rss, threads))) => (c1 - c0, rss, threads),
            _ => bail!("{name} exited during the run; logs in {}", dir.display()),
        };
        let scrapes = match name.as_str() {
            "dcwatt-agent" => agent_scrapes.summary(),
            "node_exporter" => ne_scrapes.summary(),
            _ => Scrapes::default().summary(),
        };
        rows.push(ProcessRow {
            process: name.clone(),
            cpu_s,
            cpu_pct: 100.0 * cpu_s / measured_s.max(0.001),
            peak_rss_mib: rss as f64 / (1024.0 * 1024.0),
            threads,
            scrapes,
        });
    }
    // Latency phase, after the CPU figures are taken: many samples of the
    // agent's `/metrics`, and of `/healthz`, which shows what the machine and
    // the client alone cost (wake-ups, loopback, HTTP).
    let healthz_url = format!("{}/healthz", agent.url());
    let mut lat_metrics = Scrapes::default();
    let mut lat_healthz = Scrapes::default();
    let gap = Duration::from_millis(args.latency_gap_ms);
    for i in 0..args.latency_requests {
        tokio::time::sleep(gap).await;
        if i % 2 == 0 {
            scrape(&agent_http, &agent_url, &mut lat_metrics).await;
        } else {
            scrape(&agent_http, &healthz_url, &mut lat_healthz).await;
        }
    }
    let latency = [("/metrics", lat_metrics), ("/healthz", lat_healthz)]
        .into_iter()
        .map(|(endpoint, mut s)| LatencyRow {
            endpoint: endpoint.to_owned(),
            latency: s.summary(),
        })
        .collect();
    // Every child is killed on drop (agent, node_exporter, collector, simulator).
    drop(node_exporter);
    drop(agent);
    drop(collector);
    drop(sim);
    Ok(AgentBenchReport {
        measured_s,
        rows,
        latency,
        node_exporter_missing,
    })
}

/// The report as a Markdown table, with a note when node_exporter is missing.
pub fn table(report: &AgentBenchReport) -> String {
    let mut out = format!(
        "measured for {:.0} s\n\n| process | CPU s | CPU % of one core | peak RSS MiB | threads | scrapes | failed | /metrics p50 ms | /metrics p99 ms | /metrics max ms | /metrics bytes |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        report.measured_s
    );
    for r in &report.rows {
        out += &format!(
            "| {} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
            r.process,
            r.cpu_s,
            r.cpu_pct,
            r.peak_rss_mib,
            r.threads,
            r.scrapes.cells(),
        );
    }
    out.push_str(
        "\nThe agent's latency after the measured span (keep-alive, a pause before each request):\n\n| endpoint | requests | failed | p50 ms | p99 ms | max ms | bytes |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in &report.latency {
        out += &format!("| {} | {} |\n", r.endpoint, r.latency.cells());
    }
    if let Some(why) = &report.node_exporter_missing {
        out += &format!("\nnode_exporter: {why}\n");
    }
    out
}
