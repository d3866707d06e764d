//! `dcwatt-sim demo`: the whole pipeline on simulated hardware. Starts the
//! simulated hall in this process, then the collector and one agent per node
//! (plus a facility gateway agent) as real processes on 127.0.0.1, prints their
//! URLs, and one live line per second from the collector's `/v1/summary`
//! until Ctrl-C (or `--duration`), then stops everything it started.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::launch::{launch, LaunchOptions};

/// Options of the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Racks in the simulated hall.
    #[arg(long, default_value_t = 2)]
    pub racks: u32,
    /// Nodes per rack (one agent each).
    #[arg(long, default_value_t = 2)]
    pub nodes_per_rack: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 4)]
    pub gpus_per_node: u32,
    /// Seed of the load profile.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The agents' collection interval.
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Where configs, tokens and logs go (default: a new temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo until Ctrl-C or `--duration`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("dcwatt-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let state_dir = dir.join("nvml");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let config = crate::SimConfig {
        racks: args.racks,
        nodes_per_rack: args.nodes_per_rack,
        gpus_per_node: args.gpus_per_node,
        seed: args.seed,
        state_dir,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_url = format!("http://{}", listener.local_addr()?);
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(crate::serve(config, listener, async {
        let _ = sim_stopped.await;
    }));

    let opts = LaunchOptions {
        dir: dir.clone(),
        interval: args.interval.clone(),
        log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        mirror: false,
        collector_extra: String::new(),
    };
    let mut deployment = launch(&sim_url, &opts).await?;
    let collector = deployment.collector.url();
    println!(
        "dcwatt demo: a simulated hall of {} nodes × {} GPUs",
        deployment.site.nodes.len(),
        args.gpus_per_node
    );
    println!("  simulated Redfish meters  {sim_url}/redfish/v1/PowerEquipment");
    println!("  collector metrics         {collector}/metrics");
    println!("  collector summary         {collector}/v1/summary");
    for a in &deployment.agents {
        println!("  {:<25} {}/metrics", a.name, a.url());
    }
    println!("  configs and logs          {}", dir.display());
    println!("Ctrl-C stops everything.\n");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let line = match http.get(format!("{collector}/v1/summary")).send().await {
            Ok(resp) => match resp.json::<Value>().await {
                Ok(s) => live_line(&s),
                Err(e) => format!("summary unreadable: {e}"),
            },
            Err(e) => format!("collector unreachable: {e}"),
        };
        println!("{line}");
        for a in &mut deployment.agents {
            if !a.is_running() {
                println!("{} exited; its log: {}", a.name, a.log.display());
            }
        }
    }
    println!("\nStopping.");
    for a in &mut deployment.agents {
        a.terminate();
    }
    deployment.collector.terminate();
    let _ = stop_sim.send(());
    let _ = sim.await;
    Ok(())
}

/// One line of the live view: facility, IT and cooling power, PUE, WUE,
/// hottest GPU.
pub fn live_line(s: &Value) -> String {
    let kw = |role: &str| {
        s["power_watts"][role]
            .as_f64()
            .map_or("   -   ".into(), |w| format!("{:7.1}", w / 1000.0))
    };
    let ratio = |v: &Value| v.as_f64().map_or(" -  ".into(), |p| format!("{p:.3}"));
    let hour = &s["pue_live"];
    let category = s["category"].as_u64().map_or("-".into(), |c| c.to_string());
    // The plain 5 min PUE once the window is covered; before that, the PUE of
    // the covered part, with how much of the window that is.
    let window = match (hour["complete"].as_bool(), hour["coverage_ratio"].as_f64()) {
        (Some(false), Some(c)) => format!("{:.0} % of 5m", c * 100.0),
        _ => "5m".to_owned(),
    };
    let hottest = s["hottest_gpus"]
        .get(0)
        .map(|g| {
            format!(
                "{}/gpu{} {:.1} °C",
                g["node"].as_str().unwrap_or("?"),
                g["index"].as_u64().unwrap_or(0),
                g["temperature_celsius"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .unwrap_or_else(|| "-".into());
    let time = s["now_ms"]
        .as_i64()
        .map(|ms| ms / 1000 % 86_400)
        .map_or("--:--:--".into(), |t| {
            format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
        });
    // WUE over the same span, litres of site water per kWh of IT energy.
    let wue = hour["wue_litres_per_kwh"]
        .as_f64()
        .map_or(" -  ".into(), |w| format!("{w:.3}"));
    format!(
        "{time} UTC  facility {} kW  IT {} kW  cooling {} kW  PUE {} ({window}, cat. {category}; instant {})  WUE {wue} L/kWh  hottest {hottest}",
        kw("facility"),
        kw("it"),
        kw("cooling"),
        ratio(&hour["pue"]),
        ratio(&s["pue_instant"]),
    )
}
