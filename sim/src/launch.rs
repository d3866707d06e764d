//! Lays out and starts a whole deployment against a running simulator, as real
//! processes on 127.0.0.1: one collector (and optionally a mirror collector with
//! the same site config), one agent per simulated node (NVML
//! through the fake library, its rack's PDU over Redfish on the first node of
//! each rack) and one facility gateway agent (utility feed and cooling meters
//! over Redfish, the site water meter as `http_json`).
//! The demo and the end-to-end tests both start their world through here.
//!
//! Writes, under the deployment's directory: `tokens/*.token`,
//! `collector.toml`, `agent-<node>.toml`, each agent's spool `spool-<node>/`, and
//! each process's stderr as `*.log`. In an agent's config the `[[sources]]` come
//! last, so cutting the file at its first `[[sources]]` leaves a valid config.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The id of the facility gateway agent.
pub const GATEWAY: &str = "gw-1";

/// The directory holding the dcwatt binaries: `DCWATT_BIN_DIR`, else the
/// directory of the running executable (`target/<profile>`; from a test binary
/// in `target/<profile>/deps`, its parent).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DCWATT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(Path::to_path_buf).unwrap_or(dir);
    }
    dir
}

/// A child process that is killed when dropped.
pub struct Proc {
    /// A short name for messages.
    pub name: String,
    /// The address it printed (`listening on …`).
    pub addr: SocketAddr,
    /// Its stderr log.
    pub log: PathBuf,
    child: std::process::Child,
}

impl Proc {
    /// Starts `bin_dir()/program` with `args` and `envs`, stderr to `log`, and
    /// waits (up to 60 s) for its `listening on ADDR` line on stdout.
    pub fn spawn(
        name: &str,
        program: &str,
        args: &[OsString],
        envs: &[(&str, OsString)],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let path = bin_dir().join(program);
        if !path.exists() {
            bail!(
                "{} not found: build the workspace first (cargo build --workspace --bins)",
                path.display()
            );
        }
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut proc = Proc {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
            child,
        };
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) => line,
            _ => bail!(
                "{name} did not report its address; its log {}:\n{}",
                log.display(),
                tail(log)
            ),
        };
        proc.addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| anyhow!("{name} printed {line:?}, expected \"listening on ADDR\""))?;
        Ok(proc)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit (then SIGKILL).
    pub fn terminate(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The simulator's `/sim/site`, as far as a deployment needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct SiteView {
    /// Simulated nodes.
    pub nodes: Vec<NodeView>,
    /// Simulated meters.
    pub meters: Vec<MeterView>,
    /// Simulated water meters (JSON, read by `http_json`).
    #[serde(default)]
    pub water_meters: Vec<WaterMeterView>,
}

/// One simulated water meter.
#[derive(Debug, Clone, Deserialize)]
pub struct WaterMeterView {
    /// Meter id.
    pub id: String,
    /// Zone.
    pub zone: String,
    /// Its JSON URL: `total_litres`, `ts_ms`.
    pub url: String,
}

/// One simulated node.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeView {
    /// Node name (`r1-n1`).
    pub name: String,
    /// Rack number.
    pub rack: u32,
    /// Its fake NVML state file.
    pub state_file: PathBuf,
    /// Its GPUs' UUIDs.
    pub gpus: Vec<String>,
}

/// One simulated meter.
#[derive(Debug, Clone, Deserialize)]
pub struct MeterView {
    /// Meter id.
    pub id: String,
    /// Role (`facility`, `it`, `cooling`).
    pub role: String,
    /// Zone.
    pub zone: String,
    /// Its Redfish resource URL.
    pub url: String,
    /// IT measurement point (role `it`).
    pub it_point: Option<String>,
}

/// How to lay out the deployment.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Where configs, tokens and logs go.
    pub dir: PathBuf,
    /// The agents' collection interval (`"1s"`, `"200ms"`).
    pub interval: String,
    /// `RUST_LOG` for the children.
    pub log_filter: String,
    /// Also start a mirror collector (same config, its own port, sent the
    /// binary encoding where the primary gets JSON); every agent
    /// ships to both.
    pub mirror: bool,
    /// TOML tables appended to the collectors' config (`[thermal]` limits, say).
    pub collector_extra: String,
}

/// A running deployment. Dropping it kills every process.
pub struct Deployment {
    /// The simulated site.
    pub site: SiteView,
    /// The collector.
    pub collector: Proc,
    /// The mirror collector, when asked for.
    pub mirror: Option<Proc>,
    /// The agents, node agents first, the gateway last.
    pub agents: Vec<Proc>,
    /// The token of each agent, by id.
    pub tokens: Vec<(String, String)>,
    /// The directory of configs and logs.
    pub dir: PathBuf,
}

impl Deployment {
    /// Kills the collector with SIGKILL (no shutdown of any kind) and starts it
    /// again on the same address and database, as a crashed and restarted
    /// collector would be: the agents' configured URL stays valid.
    pub fn crash_and_restart_collector(
        &mut self,
        down_for: std::time::Duration,
    ) -> anyhow::Result<()> {
        let addr = self.collector.addr;
        self.collector.kill();
        std::thread::sleep(down_for);
        let conf = self.dir.join("collector.toml");
        let text = std::fs::read_to_string(&conf)?;
        let pinned = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        );
        let restarted = self.dir.join("collector-restarted.toml");
        std::fs::write(&restarted, pinned)?;
        self.collector = Proc::spawn(
            "collector",
            "dcwatt-collector",
            &["--config".into(), restarted.into()],
            &[],
            &self.dir.join("collector-restarted.log"),
        )?;
        Ok(())
    }
}

/// Fetches the simulator's site description.
pub async fn fetch_site(sim_url: &str) -> anyhow::Result<SiteView> {
    let site = reqwest::get(format!("{sim_url}/sim/site"))
        .await
        .context("cannot reach the simulator")?
        .error_for_status()?
        .json()
        .await
        .context("malformed /sim/site")?;
    Ok(site)
}

fn token_for(id: &str, dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    // Unpredictable enough for a loopback demo: hash of id, time and pid.
    let seed = format!(
        "{id}:{:?}:{}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    let token = hex::encode(Sha256::digest(seed.as_bytes()));
    let path = dir.join("tokens").join(format!("{id}.token"));
    std::fs::write(&path, &token)?;
    Ok((token, path))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default() // a JSON string is a valid TOML basic string
}

/// Writes the configs and starts the collector and every agent.
pub async fn launch(sim_url: &str, opts: &LaunchOptions) -> anyhow::Result<Deployment> {
    let site = fetch_site(sim_url).await?;
    std::fs::create_dir_all(opts.dir.join("tokens"))?;
    let mut agent_ids: Vec<String> = site.nodes.iter().map(|n| n.name.clone()).collect();
    agent_ids.push(GATEWAY.to_owned());

    // Who reads which meter: the first node of each rack its rack's PDU, the
    // gateway every other meter and the water meters.
    let mut meters_read: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut racks_seen = std::collections::BTreeSet::new();
    for node in &site.nodes {
        if racks_seen.insert(node.rack) {
            let pdu = format!("pdu-r{}", node.rack);
            if let Some(m) = site.meters.iter().find(|m| m.id == pdu) {
                meters_read.entry(&node.name).or_default().push(&m.id);
            }
        }
    }
    meters_read.entry(GATEWAY).or_default().extend(
        site.meters
            .iter()
            .filter(|m| m.role != "it")
            .map(|m| m.id.as_str())
            .chain(site.water_meters.iter().map(|w| w.id.as_str())),
    );
    let mut collector_toml = String::from("listen = \"127.0.0.1:0\"\n");
    let mut tokens = Vec::new();
    let mut token_files = Vec::new();
    for id in &agent_ids {
        let (token, path) = token_for(id, &opts.dir)?;
        collector_toml += &format!(
            "\n[[agents]]\nid = {}\ntoken_sha256 = \"{}\"\n",
            toml_str(id),
            hex::encode(Sha256::digest(token.as_bytes()))
        );
        // Each agent may report exactly the meters it reads.
        let ids: Vec<String> = meters_read
            .get(id.as_str())
            .into_iter()
            .flatten()
            .map(|m| toml_str(m))
            .collect();
        collector_toml += &format!("meters = [{}]\n", ids.join(", "));
        tokens.push((id.clone(), token));
        token_files.push(path);
    }
    for m in &site.meters {
        collector_toml += &format!(
            "\n[[meters]]\nid = {}\nrole = {}\nzone = {}\n",
            toml_str(&m.id),
            toml_str(&m.role),
            toml_str(&m.zone)
        );
        if let Some(p) = &m.it_point {
            collector_toml += &format!("it_point = {}\n", toml_str(p));
        }
    }
    for w in &site.water_meters {
        collector_toml += &format!(
            "\n[[meters]]\nid = {}\nrole = \"water\"\nzone = {}\nnominal_max_cubic_meters_per_hour = 10.0\n",
            toml_str(&w.id),
            toml_str(&w.zone)
        );
    }
    // Each collector keeps its state in its own database.
    let collector_conf = opts.dir.join("collector.toml");
    let ledger = |name: &str| {
        format!(
            "\n[ledger]\npath = {}\n",
            toml_str(&opts.dir.join(name).display().to_string())
        )
    };
    std::fs::write(
        &collector_conf,
        format!(
            "{collector_toml}{}{}",
            ledger("collector.sqlite"),
            opts.collector_extra
        ),
    )?;
    let mirror_conf = opts.dir.join("mirror.toml");
    std::fs::write(
        &mirror_conf,
        format!(
            "{collector_toml}{}{}",
            ledger("mirror.sqlite"),
            opts.collector_extra
        ),
    )?;
    let log_env = || vec![("RUST_LOG", OsString::from(&opts.log_filter))];
    let collector = Proc::spawn(
        "collector",
        "dcwatt-collector",
        &["--config".into(), collector_conf.clone().into()],
        &log_env(),
        &opts.dir.join("collector.log"),
    )?;
    let mirror = if opts.mirror {
        Some(Proc::spawn(
            "mirror",
            "dcwatt-collector",
            &["--config".into(), mirror_conf.clone().into()],
            &log_env(),
            &opts.dir.join("mirror.log"),
        )?)
    } else {
        None
    };

    let redfish = |m: &MeterView| {
        format!(
            "\n[[sources]]\ntype = \"redfish\"\nmeter = {}\nurl = {}\n",
            toml_str(&m.id),
            toml_str(&m.url)
        )
    };
    let mut agents = Vec::new();
    for (i, id) in agent_ids.iter().enumerate() {
        let mut toml = format!(
            "listen = \"127.0.0.1:0\"\ninterval = {}\nnode = {}\n\n[[collectors]]\nurl = {}\ntoken_file = {}\n",
            toml_str(&opts.interval),
            toml_str(id),
            toml_str(&collector.url()),
            toml_str(&token_files[i].display().to_string()),
        );
        if let Some(m) = &mirror {
            // The mirror is sent the binary form, the primary JSON: what
            // compares the two collectors checks both encodings end to end.
            toml += &format!(
                "\n[[collectors]]\nurl = {}\ntoken_file = {}\nencoding = \"binary\"\n",
                toml_str(&m.url()),
                toml_str(&token_files[i].display().to_string()),
            );
        }
        toml += &format!(
            "\n[spool]\ndir = {}\n",
            toml_str(&opts.dir.join(format!("spool-{id}")).display().to_string())
        );
        let mut envs = log_env();
        if let Some(node) = site.nodes.iter().find(|n| &n.name == id) {
            toml += &format!(
                "\n[[sources]]\ntype = \"nvml\"\nlibrary = {}\n",
                toml_str(dcwatt_fake_nvml::LIB_PATH)
            );
            envs.push((
                "DCWATT_FAKE_NVML_STATE",
                node.state_file.clone().into_os_string(),
            ));
            for m in site.meters.iter().filter(|m| {
                meters_read
                    .get(id.as_str())
                    .is_some_and(|r| r.contains(&m.id.as_str()))
            }) {
                toml += &redfish(m);
            }
        } else {
            for m in site.meters.iter().filter(|m| m.role != "it") {
                toml += &redfish(m);
            }
            for w in &site.water_meters {
                toml += &format!(
                    "\n[[sources]]\ntype = \"http_json\"\nmeter = {}\nurl = {}\n\
                     water_volume = {{ pointer = \"/total_litres\", unit = \"L\" }}\n\
                     timestamp = {{ pointer = \"/ts_ms\", format = \"unix_ms\" }}\n",
                    toml_str(&w.id),
                    toml_str(&w.url)
                );
            }
        }
        let conf = opts.dir.join(format!("agent-{id}.toml"));
        std::fs::write(&conf, toml)?;
        let log = opts.dir.join(format!("agent-{id}.log"));
        agents.push(Proc::spawn(
            &format!("agent {id}"),
            "dcwatt-agent",
            &["--config".into(), conf.into()],
            &envs,
            &log,
        )?);
    }
    Ok(Deployment {
        site,
        collector,
        mirror,
        agents,
        tokens,
        dir: opts.dir.clone(),
    })
}
