//! The collector's configuration file (TOML): listener, limits, the agents it
//! accepts and the site model (meters with roles, zones and IT measurement points).
//!
//! [`Config`] is what the file says; [`Config::build`] validates it into a
//! [`Site`], the runtime form, or names the offending key and why.
//!
//! Size: every TOML section with its defaults and its validation into a
//! `Site`; the domain types are to move to their own module.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use crate::check::{check_id, invalid, ConfigError};
pub use crate::site::{
    token_hash, ItPoint, Meter, ReferencePue, Role, Site, Synchronous, TlsConfig,
};
pub use crate::tenants::LeaseConfig;

/// The collector's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address for the HTTP API and `/metrics`. Default `127.0.0.1:9400`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A meter with no reading for this long is stale: it drops out of the live
    /// powers and instant PUE, and the PUE coverage falls. Default `30s`.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// Power-only meters are integrated (trapezoid) between two readings no
    /// further apart than this; a longer gap is counted, not filled. Default `10s`.
    #[serde(default = "default_max_gap", with = "humantime_serde")]
    pub max_gap: Duration,
    /// Readings older than this are rejected (an absurd timestamp). Default `7d`.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_reading_age: Duration,
    /// Readings further ahead of the collector's clock than this are rejected. Default `5m`.
    #[serde(default = "default_max_future", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Largest accepted request body, bytes. Default 8 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Most readings in one batch. Default 100,000.
    #[serde(default = "default_max_readings")]
    pub max_readings_per_batch: usize,
    /// TLS on the listener. Without it the collector speaks plain HTTP (a lab
    /// setup; warned at start): tokens then cross the network in clear.
    pub tls: Option<TlsConfig>,
    /// Most connections served at once. Default 16384.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Request headers must arrive within this (slow clients are cut off). Default `10s`.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A batch body must arrive within this. Default `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Batches per second each agent may post on average (token bucket);
    /// beyond it, 429 with `Retry-After`. Default 10 (agents post 1/s, and
    /// at most 5/s while catching up).
    #[serde(default = "default_agent_rate")]
    pub agent_batches_per_second: f64,
    /// The bucket's size: batches an agent may post at once. Default 60.
    #[serde(default = "default_agent_burst")]
    pub agent_batch_burst: u32,
    /// Most distinct GPUs one agent may report (a UUID explosion cannot blow up
    /// memory); batches naming more are refused (403). Default 64.
    #[serde(default = "default_max_gpus")]
    pub max_gpus_per_agent: usize,
    /// PUE is published only above this IT power (W, averaged over the window):
    /// a ratio over a near-zero denominator is noise. Default 1000 W.
    #[serde(default = "default_it_floor")]
    pub pue_it_floor_watts: f64,
    /// Where the collector keeps its state. Without it, state lives in memory
    /// only and a restart starts from zero (a lab setup; warned at start).
    pub ledger: Option<LedgerConfig>,
    /// Grid carbon intensity, kg CO2e per kWh of facility energy, for CUE.
    pub carbon_intensity_kg_per_kwh: Option<f64>,
    /// A sub-meter tree may read this much more than its parent (meter
    /// tolerances) before it is flagged. Default 0.02 (2 %).
    #[serde(default = "default_tree_tolerance")]
    pub meter_tree_tolerance: f64,
    /// A PUE above this is invalid (a meter or the site model is wrong): not
    /// given as a PUE. Default 3.0.
    #[serde(default = "default_pue_max")]
    pub pue_max_ratio: f64,
    /// `[pue]`: when a PUE over a period is exported.
    #[serde(default)]
    pub pue: PueConfig,
    /// `[utilization]`: what counts as an idle GPU.
    #[serde(default)]
    pub utilization: UtilizationConfig,
    /// The operator: reads `/v1/summary`. Without it, `/v1/summary` is open
    /// (a lab setup; a warning is logged at start).
    pub operator: Option<OperatorConfig>,
    /// `[metrics]`: who may scrape `/metrics`. With an `[operator]`,
    /// `/metrics` needs the operator's token or this scrape token (it carries
    /// every tenant's figures, and agents on tenants' nodes reach the same
    /// port); without an `[operator]` it is open (a lab setup).
    pub metrics: Option<MetricsConfig>,
    /// The agents allowed to post batches.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// The site's meters.
    #[serde(default)]
    pub meters: Vec<MeterConfig>,
    /// Tenants: labs leasing GPUs, each reading only its own energy.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Who leases which nodes or GPUs, when.
    #[serde(default)]
    pub leases: Vec<LeaseConfig>,
    /// Thermal excursion limits.
    #[serde(default)]
    pub thermal: crate::thermal::ThermalConfig,
    /// `[report]`: the annual efficiency report.
    #[serde(default)]
    pub report: ReportConfig,
    /// SHA-256 of the file as read (hex), for the report's provenance.
    #[serde(skip)]
    pub source_sha256: Option<String>,
    /// `[sla]`: how GPU-minutes are judged for service levels.
    #[serde(default)]
    pub sla: crate::delivery::SlaConfig,
    /// `[[power_events]]`: site power events declared by the operator
    /// (their GPUs' non-available minutes have cause `facility`).
    #[serde(default)]
    pub power_events: Vec<crate::delivery::PowerEventConfig>,
}

/// `[report]`: what the efficiency report compares the site's PUE with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Reference PUE values (`reference_pue = [{ name = "…", pue = 1.56 }]`).
    /// Default: the Uptime Institute's 2024 industry average (1.56) and a
    /// hyperscale reference (1.10).
    #[serde(default = "default_references")]
    pub reference_pue: Vec<ReferencePue>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            reference_pue: default_references(),
        }
    }
}

/// The most reference values `[report] reference_pue` may list.
pub const MAX_REFERENCES: usize = 16;

fn default_references() -> Vec<ReferencePue> {
    vec![
        ReferencePue {
            name: "Uptime Institute 2024 industry average".into(),
            pue: 1.56,
        },
        ReferencePue {
            name: "hyperscale reference".into(),
            pue: 1.10,
        },
    ]
}

/// A tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's id (letters, digits, `-_.:`; not starting with `_`).
    pub id: String,
    /// SHA-256 of the tenant's bearer token, 64 hex digits.
    pub token_sha256: String,
    /// The GPU availability promised to the tenant, a share in (0, 1]
    /// (e.g. 0.995): its statements and the month-to-date alert compare
    /// against it.
    #[serde(default)]
    pub availability_target: Option<f64>,
}

/// The durable store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// The SQLite database file (created if missing; its directory must exist).
    pub path: std::path::PathBuf,
    /// A ledger minute is booked this long after it ends (GPU data arriving
    /// later is booked as a late row for the same minute). Default `2m`.
    #[serde(default = "default_close_after", with = "humantime_serde")]
    pub close_after: Duration,
    /// When a batch is acknowledged: `full` (default) once its transaction is
    /// synced to disk, so an acknowledged batch survives a power cut; `normal`
    /// once it is written, which survives a killed process but not a power cut.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// The Ed25519 key that signs a checkpoint of the ledger's Merkle tree at
    /// every closed UTC hour (`dcwatt-collector keygen --out FILE` writes
    /// one). Without it nothing is signed and the collector warns at start.
    #[serde(default)]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// This collector's name in its signed checkpoints: 1–128 characters of
    /// `[A-Za-z0-9._:-]`. Default: the host name, else `collector`.
    #[serde(default)]
    pub collector_id: Option<String>,
}

/// The operator principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// SHA-256 of the operator's bearer token, 64 hex digits.
    pub token_sha256: String,
}

/// `[metrics]`: the scrape token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// SHA-256 of the bearer token Prometheus presents (its `authorization`
    /// setting), 64 hex digits. It reads `/metrics` only.
    pub token_sha256: String,
}

/// One agent allowed to post batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id (its node name).
    pub id: String,
    /// SHA-256 of its bearer token, 64 hex digits (`sha256sum` of the token file,
    /// without a trailing newline in the file).
    pub token_sha256: String,
    /// The meters this agent may report; readings of any other meter are
    /// refused (403). Absent: none (deny by default: a meter's readings are
    /// billed and published, so only the agents named for it may send them).
    pub meters: Option<Vec<String>>,
    /// The zone (hall) its node is in, for its GPUs' figures. Default `default`.
    #[serde(default = "default_zone")]
    pub zone: String,
}

/// One meter of the site model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// The id the agent reports it under (`meter = "…"` in the agent's source).
    pub id: String,
    /// What the meter measures.
    pub role: Role,
    /// The zone (hall) it belongs to. Default `default`.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Where IT energy is measured; required for role `it`, refused for others.
    pub it_point: Option<ItPoint>,
    /// The most this meter can measure, W (its rating). A counter jump bigger than
    /// this × the time between readings × 1.1 is a glitch: rejected and counted.
    /// Not for a `water` meter (see `nominal_max_cubic_meters_per_hour`).
    pub nominal_max_watts: Option<f64>,
    /// A `water` meter's largest flow, m³/h: the overload flow rate Q4 on its
    /// plate (ISO 4064). A volume jump bigger than this × the time between
    /// readings × 1.1 is a glitch: rejected and counted, as for energy.
    pub nominal_max_cubic_meters_per_hour: Option<f64>,
    /// The meter this one is a sub-meter of (same role): its energy is part of
    /// the parent's, so only the parent counts in the role's totals and PUE; the
    /// children give the breakdown and are checked against the parent.
    pub parent: Option<String>,
    /// The node whose input power this meter measures (a PSU or a PDU outlet;
    /// role `it`). The node's energy beyond its GPUs' is shared among the
    /// tenants of its GPUs by GPU time, into their ledger rows.
    pub node: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:9400".into()
}
fn default_stale_after() -> Duration {
    Duration::from_secs(30)
}
fn default_max_gap() -> Duration {
    Duration::from_secs(10)
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_max_future() -> Duration {
    Duration::from_secs(300)
}
fn default_max_body() -> usize {
    8 << 20
}
fn default_max_readings() -> usize {
    100_000
}
fn default_max_connections() -> usize {
    16_384
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_agent_rate() -> f64 {
    10.0
}
fn default_agent_burst() -> u32 {
    60
}
fn default_max_gpus() -> usize {
    64
}
fn default_it_floor() -> f64 {
    1000.0
}
fn default_close_after() -> Duration {
    Duration::from_secs(120)
}
fn default_tree_tolerance() -> f64 {
    0.02
}
fn default_pue_max() -> f64 {
    3.0
}
fn default_zone() -> String {
    "default".into()
}

/// `[pue]`: how uncertain a period's PUE may be and still be exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PueConfig {
    /// A period's PUE (partial PUE, WUE) is exported as the plain figure
    /// when its bounds are within this share of it: max(PUE − lower, upper −
    /// PUE) / PUE. Default 0.001 (0.1 %).
    #[serde(default = "default_max_uncertainty")]
    pub max_uncertainty: f64,
}

impl Default for PueConfig {
    fn default() -> Self {
        PueConfig {
            max_uncertainty: default_max_uncertainty(),
        }
    }
}

fn default_max_uncertainty() -> f64 {
    0.001
}

/// `[utilization]`: GPU utilization aggregates and idle energy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtilizationConfig {
    /// A GPU whose SM activity (GPM, `sm_active_ratio`) is below this is
    /// idle: its energy then counts as idle energy. A ratio, above 0 and at
    /// most 1. Default 0.05 (5 %).
    #[serde(default = "default_idle_sm_active_below")]
    pub idle_sm_active_below: f64,
}

impl Default for UtilizationConfig {
    fn default() -> Self {
        UtilizationConfig {
            idle_sm_active_below: default_idle_sm_active_below(),
        }
    }
}

fn default_idle_sm_active_below() -> f64 {
    0.05
}

impl Config {
    /// Reads and parses a file (no validation beyond types).
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_toml(&text)?;
        config.source_sha256 = Some(hex::encode(Sha256::digest(text.as_bytes())));
        Ok(config)
    }

    /// Parses TOML text. String values may name environment variables
    /// (`${NAME}`; `$${` is a literal `${`): see `dcwatt_confenv`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        dcwatt_confenv::from_toml(text).map_err(|e| match e {
            dcwatt_confenv::Error::Toml(e) => {
                ConfigError::Parse(e.to_string().trim_end().to_owned())
            }
            dcwatt_confenv::Error::Env { key, reason } => invalid(key, reason),
        })
    }

    /// Validates into the runtime form, naming the first offending key.
    pub fn build(self) -> Result<Site, ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("{:?} is not an ip:port address", self.listen),
            ));
        }
        for (key, d) in [
            ("stale_after", self.stale_after),
            ("max_gap", self.max_gap),
            ("max_reading_age", self.max_reading_age),
            ("max_clock_skew", self.max_clock_skew),
        ] {
            // Bounded, so that no sum of an instant and a duration overflows.
            if d.is_zero() || d > MAX_DURATION {
                return Err(invalid(
                    key,
                    "must be longer than zero and at most 400 days",
                ));
            }
        }
        if let Some(l) = &self.ledger {
            if l.close_after > MAX_DURATION {
                return Err(invalid("ledger.close_after", "must be at most 400 days"));
            }
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        for (key, d) in [
            ("header_timeout", self.header_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(invalid(key, "must be longer than zero and at most 1h"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if !(self.agent_batches_per_second.is_finite() && self.agent_batches_per_second > 0.0) {
            return Err(invalid(
                "agent_batches_per_second",
                "must be a positive number",
            ));
        }
        if self.agent_batch_burst == 0 {
            return Err(invalid("agent_batch_burst", "must be at least 1"));
        }
        if self.max_gpus_per_agent == 0 {
            return Err(invalid("max_gpus_per_agent", "must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("tls.cert_file", Some(&tls.cert_file)),
                ("tls.key_file", Some(&tls.key_file)),
                ("tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        return Err(invalid(key, format!("{}: no such file", path.display())));
                    }
                }
            }
        }
        if self.max_readings_per_batch == 0 {
            return Err(invalid("max_readings_per_batch", "must be at least 1"));
        }
        if !(self.pue_it_floor_watts.is_finite() && self.pue_it_floor_watts > 0.0) {
            return Err(invalid(
                "pue_it_floor_watts",
                "must be a positive number of watts",
            ));
        }
        if let Some(ledger) = &self.ledger {
            let dir = ledger.path.parent().filter(|d| !d.as_os_str().is_empty());
            if ledger.path.as_os_str().is_empty() || dir.is_some_and(|d| !d.is_dir()) {
                return Err(invalid(
                    "ledger.path",
                    format!("{}: the directory does not exist", ledger.path.display()),
                ));
            }
        }
        let (ledger_key, collector_id) = ledger_identity(self.ledger.as_ref())?;
        if self
            .carbon_intensity_kg_per_kwh
            .is_some_and(|c| !(c.is_finite() && (0.0..=5.0).contains(&c)))
        {
            return Err(invalid(
                "carbon_intensity_kg_per_kwh",
                "must be 0 to 5 kg CO2e per kWh",
            ));
        }
        if self.report.reference_pue.len() > MAX_REFERENCES {
            return Err(invalid(
                "report.reference_pue",
                format!("at most {MAX_REFERENCES} references"),
            ));
        }
        for (i, r) in self.report.reference_pue.iter().enumerate() {
            if r.name.trim().is_empty()
                || r.name.len() > 128
                || r.name.chars().any(char::is_control)
            {
                return Err(invalid(
                    format!("report.reference_pue[{i}].name"),
                    "must be 1 to 128 printable characters",
                ));
            }
            if !(r.pue.is_finite() && (1.0..=10.0).contains(&r.pue)) {
                return Err(invalid(
                    format!("report.reference_pue[{i}].pue"),
                    "must be a PUE from 1 to 10",
                ));
            }
        }
        if !(self.meter_tree_tolerance.is_finite()
            && (0.0..1.0).contains(&self.meter_tree_tolerance))
        {
            return Err(invalid(
                "meter_tree_tolerance",
                "must be 0 or more and below 1",
            ));
        }
        if !(self.pue_max_ratio.is_finite() && self.pue_max_ratio > 1.0) {
            return Err(invalid("pue_max_ratio", "must be a number above 1"));
        }
        if !(self.pue.max_uncertainty.is_finite() && (0.0..1.0).contains(&self.pue.max_uncertainty))
        {
            return Err(invalid(
                "pue.max_uncertainty",
                "must be 0 or more and below 1 (a share: 0.001 is 0.1 %)",
            ));
        }
        let idle = self.utilization.idle_sm_active_below;
        if !(idle.is_finite() && idle > 0.0 && idle <= 1.0) {
            return Err(invalid(
                "utilization.idle_sm_active_below",
                "must be above 0 and at most 1 (a ratio: 0.05 is 5 % SM activity)",
            ));
        }
        let operator_token = match &self.operator {
            Some(op) => Some(parse_sha256("operator.token_sha256", &op.token_sha256)?),
            None => None,
        };
        let metrics_token = match &self.metrics {
            Some(m) => {
                let hash = parse_sha256("metrics.token_sha256", &m.token_sha256)?;
                if Some(hash) == operator_token {
                    return Err(invalid(
                        "metrics.token_sha256",
                        "the same token is configured twice",
                    ));
                }
                Some(hash)
            }
            None => None,
        };
        let mut agent_tokens = HashMap::new();
        let mut agent_ids = HashSet::new();
        if let Err((key, why)) = self.sla.validate() {
            return Err(invalid(format!("sla.{key}"), why));
        }
        if let Err((key, why)) = self.thermal.validate() {
            return Err(invalid(format!("thermal.{key}"), why));
        }
        let mut agent_zones = HashMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            check_id(&format!("agents[{i}].id"), &a.id)?;
            check_id(&format!("agents[{i}].zone"), &a.zone)?;
            agent_zones.insert(a.id.clone(), a.zone.clone());
            if !agent_ids.insert(a.id.as_str()) {
                return Err(invalid(
                    format!("agents[{i}].id"),
                    format!("duplicate agent id {:?}", a.id),
                ));
            }
            let key = format!("agents[{i}].token_sha256");
            let hash = parse_sha256(&key, &a.token_sha256)?;
            if Some(hash) == operator_token
                || Some(hash) == metrics_token
                || agent_tokens.insert(hash, a.id.clone()).is_some()
            {
                return Err(invalid(key, "the same token is configured twice"));
            }
        }
        let mut agent_meters = HashMap::new();
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(list) = &a.meters {
                for (j, m) in list.iter().enumerate() {
                    if !self.meters.iter().any(|x| &x.id == m) {
                        return Err(invalid(
                            format!("agents[{i}].meters[{j}]"),
                            format!("no meter {m:?} is configured"),
                        ));
                    }
                }
            }
            agent_meters.insert(
                a.id.clone(),
                a.meters
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<HashSet<String>>(),
            );
        }
        let mut meters = HashMap::new();
        for (i, m) in self.meters.iter().enumerate() {
            check_id(&format!("meters[{i}].id"), &m.id)?;
            check_id(&format!("meters[{i}].zone"), &m.zone)?;
            match (m.role, m.it_point) {
                (Role::It, None) => {
                    return Err(invalid(
                        format!("meters[{i}].it_point"),
                        "required for role \"it\": where IT energy is measured (ups_output, pdu_output or it_input)",
                    ))
                }
                (r, Some(_)) if r != Role::It => {
                    return Err(invalid(
                        format!("meters[{i}].it_point"),
                        format!("only meters with role \"it\" have one, this one is {:?}", r.as_str()),
                    ))
                }
                _ => {}
            }
            if m.nominal_max_watts
                .is_some_and(|w| !(w.is_finite() && w > 0.0))
            {
                return Err(invalid(
                    format!("meters[{i}].nominal_max_watts"),
                    "must be a positive number of watts",
                ));
            }
            if m.role == Role::Water && m.nominal_max_watts.is_some() {
                return Err(invalid(
                    format!("meters[{i}].nominal_max_watts"),
                    "a water meter counts volume, not energy: bound its glitches with nominal_max_cubic_meters_per_hour",
                ));
            }
            if let Some(q) = m.nominal_max_cubic_meters_per_hour {
                let key = format!("meters[{i}].nominal_max_cubic_meters_per_hour");
                if m.role != Role::Water {
                    return Err(invalid(
                        key,
                        format!("only meters with role \"water\" have one, this one is {:?} (use nominal_max_watts)", m.role.as_str()),
                    ));
                }
                if !(q.is_finite() && q > 0.0) {
                    return Err(invalid(key, "must be a positive flow in m³/h"));
                }
            }
            if let Some(node) = &m.node {
                check_id(&format!("meters[{i}].node"), node)?;
                if m.role != Role::It {
                    return Err(invalid(
                        format!("meters[{i}].node"),
                        "only an IT meter (role \"it\") measures a node's input",
                    ));
                }
            }
            let meter = Meter {
                role: m.role,
                zone: m.zone.clone(),
                it_point: m.it_point,
                nominal_max_watts: m.nominal_max_watts,
                nominal_max_cubic_meters_per_hour: m.nominal_max_cubic_meters_per_hour,
                parent: m.parent.clone(),
                node: m.node.clone(),
            };
            if meters.insert(m.id.clone(), meter).is_some() {
                return Err(invalid(
                    format!("meters[{i}].id"),
                    format!("duplicate meter id {:?}", m.id),
                ));
            }
        }
        let mut tenant_tokens = HashMap::new();
        let mut availability_targets = std::collections::BTreeMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            check_id(&format!("tenants[{i}].id"), &t.id)?;
            if t.id.starts_with('_') {
                return Err(invalid(
                    format!("tenants[{i}].id"),
                    "must not start with '_' (reserved for the unleased and unattributed rows)",
                ));
            }
            if tenant_tokens.values().any(|v: &String| v == &t.id) {
                return Err(invalid(
                    format!("tenants[{i}].id"),
                    format!("duplicate tenant id {:?}", t.id),
                ));
            }
            if let Some(a) = t.availability_target {
                if !(a.is_finite() && a > 0.0 && a <= 1.0) {
                    return Err(invalid(
                        format!("tenants[{i}].availability_target"),
                        format!("{a} is not a share in (0, 1] (e.g. 0.995 for 99.5 %)"),
                    ));
                }
                availability_targets.insert(t.id.clone(), a);
            }
            let key = format!("tenants[{i}].token_sha256");
            let hash = parse_sha256(&key, &t.token_sha256)?;
            if Some(hash) == operator_token
                || Some(hash) == metrics_token
                || agent_tokens.contains_key(&hash)
                || tenant_tokens.insert(hash, t.id.clone()).is_some()
            {
                return Err(invalid(key, "the same token is configured twice"));
            }
        }
        let tenant_ids: HashSet<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        let leases =
            crate::site::LeaseBook::new(crate::tenants::Leases::build(&self.leases, &tenant_ids)?);
        for (i, m) in self.meters.iter().enumerate() {
            let Some(parent) = &m.parent else { continue };
            let key = format!("meters[{i}].parent");
            let Some(p) = meters.get(parent) else {
                return Err(invalid(key, format!("no meter {parent:?}")));
            };
            if p.role != m.role {
                return Err(invalid(key, format!("{parent:?} is a {} meter, this one {}: a sub-meter measures part of its parent", p.role.as_str(), m.role.as_str())));
            }
            // No cycles: walking up must end.
            let mut seen = HashSet::from([m.id.as_str()]);
            let mut up = Some(parent.as_str());
            while let Some(id) = up {
                if !seen.insert(id) {
                    return Err(invalid(key, "the parents form a cycle"));
                }
                up = meters.get(id).and_then(|x| x.parent.as_deref());
            }
        }
        let mut required_per_zone = std::collections::BTreeMap::new();
        for m in meters
            .values()
            .filter(|m| m.counted() && matches!(m.role, Role::Facility | Role::It))
        {
            *required_per_zone.entry(m.zone.clone()).or_insert(0) += 1;
        }
        let water_meters = meters
            .values()
            .filter(|m| m.counted() && m.role == Role::Water)
            .count();
        let zones: std::collections::BTreeSet<String> = meters
            .values()
            .map(|m| m.zone.clone())
            .chain(agent_zones.values().cloned())
            .collect();
        let power_events = crate::delivery::build_power_events(&self.power_events, &zones)?;
        let metered_nodes = meters.values().filter_map(|m| m.node.clone()).collect();
        Ok(Site {
            metered_nodes,
            limits: crate::serve::Limits {
                max_connections: self.max_connections,
                handshake_timeout: self.header_timeout,
                header_timeout: self.header_timeout,
            },
            request_timeout: self.request_timeout,
            agent_rate: self.agent_batches_per_second,
            agent_burst: self.agent_batch_burst,
            max_gpus_per_agent: self.max_gpus_per_agent,
            tls: self.tls,
            agent_zones,
            zones,
            config_path: None,
            thermal: self.thermal,
            sla: self.sla,
            power_events,
            availability_targets,
            listen: self.listen,
            stale_after_ms: millis(self.stale_after),
            max_gap_ms: millis(self.max_gap),
            max_age_ms: millis(self.max_reading_age),
            max_future_ms: millis(self.max_clock_skew),
            max_body_bytes: self.max_body_bytes,
            max_readings: self.max_readings_per_batch,
            pue_it_floor_watts: self.pue_it_floor_watts,
            pue_max_ratio: self.pue_max_ratio,
            pue_max_uncertainty: self.pue.max_uncertainty,
            idle_sm_active_below: self.utilization.idle_sm_active_below,
            carbon_intensity_kg_per_kwh: self.carbon_intensity_kg_per_kwh,
            reference_pue: self.report.reference_pue,
            config_sha256: self.source_sha256,
            meter_tree_tolerance: self.meter_tree_tolerance,
            required_per_zone,
            water_meters,
            close_after_ms: self
                .ledger
                .as_ref()
                .map_or(120_000, |l| millis(l.close_after)),
            ledger_synchronous: self
                .ledger
                .as_ref()
                .map_or_else(Synchronous::default, |l| l.synchronous),
            ledger_path: self.ledger.map(|l| l.path),
            ledger_key,
            collector_id,
            tenant_tokens,
            agent_meters,
            leases,
            operator_token,
            metrics_token,
            agent_tokens,
            meters,
        })
    }
}

/// The longest duration a config key may set: 400 days.
const MAX_DURATION: Duration = Duration::from_secs(400 * 86_400);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_sha256(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| invalid(key, "must be 64 hex digits (the SHA-256 of the token)"))?;
    Ok(out)
}

/// The signing key and collector id of `[ledger]` (start-up: the key file is
/// read and checked here, so a bad one stops the collector naming the key).
pub fn ledger_identity(
    ledger: Option<&LedgerConfig>,
) -> Result<(Option<ed25519_dalek::SigningKey>, String), ConfigError> {
    let id = match ledger.and_then(|l| l.collector_id.clone()) {
        Some(id) => {
            if !dcwatt_verify::checkpoint::valid_collector_id(&id) {
                return Err(invalid(
                    "ledger.collector_id",
                    "must be 1 to 128 characters of [A-Za-z0-9._:-]",
                ));
            }
            id
        }
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| dcwatt_verify::checkpoint::valid_collector_id(h))
            .unwrap_or_else(|| "collector".to_owned()),
    };
    let Some(path) = ledger.and_then(|l| l.signing_key_file.as_ref()) else {
        return Ok((None, id));
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "ledger.signing_key_file",
            format!("{}: {e}", path.display()),
        )
    })?;
    let key = dcwatt_verify::checkpoint::parse_secret_key(&text).map_err(|e| {
        invalid(
            "ledger.signing_key_file",
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok((Some(key), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn err(text: &str) -> String {
        match Config::from_toml(text).and_then(Config::build) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn values_may_name_environment_variables() {
        std::env::set_var("DCWATT_COLLECTOR_CONFIG_TEST_HASH", H);
        let site = Config::from_toml(
            "[[agents]]\nid = \"n$1\"\ntoken_sha256 = \"${DCWATT_COLLECTOR_CONFIG_TEST_HASH}\"\n",
        )
        .unwrap()
        .build();
        // `$1` is not a reference: kept, and then refused as an id character.
        assert!(site.unwrap_err().to_string().contains("\"n$1\""));
        let site = Config::from_toml(
            "[[agents]]\nid = \"n1\"\ntoken_sha256 = \"${DCWATT_COLLECTOR_CONFIG_TEST_HASH}\"\n",
        )
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(site.agent_tokens[&token_hash("test")], "n1");
    }

    #[test]
    fn minimal_config_is_valid() {
        let site = Config::from_toml("").unwrap().build().unwrap();
        assert_eq!(site.listen, "127.0.0.1:9400");
        assert_eq!(site.stale_after_ms, 30_000);
    }

    #[test]
    fn water_meters_count_for_wue_not_for_pue() {
        let site = Config::from_toml(
            "[[meters]]\nid = \"u\"\nrole = \"facility\"\nzone = \"hall-1\"\n\
             [[meters]]\nid = \"w\"\nrole = \"water\"\nzone = \"hall-1\"\n\
             nominal_max_cubic_meters_per_hour = 16.0\n\
             [[meters]]\nid = \"w-a\"\nrole = \"water\"\nzone = \"hall-1\"\nparent = \"w\"\n",
        )
        .unwrap()
        .build()
        .unwrap();
        // The sub-meter is part of its parent: one water meter counts.
        assert_eq!(site.water_meters, 1);
        assert_eq!(site.required_per_zone["hall-1"], 1);
        assert_eq!(
            site.meters["w"].nominal_max_cubic_meters_per_hour,
            Some(16.0)
        );
        assert_eq!(site.meters["w"].role.as_str(), "water");
    }

    #[test]
    fn full_config_builds() {
        let site = Config::from_toml(&format!(
            r#"
            listen = "0.0.0.0:9400"
            stale_after = "10s"
            [operator]
            token_sha256 = "{}"
            [[agents]]
            id = "r1-n1"
            token_sha256 = "{H}"
            [[meters]]
            id = "utility-a"
            role = "facility"
            zone = "hall-1"
            [[meters]]
            id = "pdu-r1"
            role = "it"
            zone = "hall-1"
            it_point = "pdu_output"
            "#,
            "ab".repeat(32)
        ))
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(
            site.agent_tokens
                .get(&token_hash("test"))
                .map(String::as_str),
            Some("r1-n1")
        );
        assert_eq!(
            site.meters["pdu-r1"].it_point.map(ItPoint::category),
            Some(2)
        );
        assert_eq!(site.stale_after_ms, 10_000);
    }

    #[test]
    fn bad_configs_name_key_and_reason() {
        let cases: &[(&str, &[&str])] = &[
            ("listen = \"nowhere\"", &["listen", "ip:port"]),
            ("stale_after = \"soon\"", &["stale_after"]),
            ("stale_after = \"0s\"", &["stale_after", "longer than zero"]),
            ("bogus = 1", &["bogus", "unknown field"]),
            (
                "[ledger]\npath = \"c.sqlite\"\nsynchronous = \"sometimes\"",
                &["synchronous", "unknown variant"],
            ),
            ("[[agents]]\nid = \"a\"\ntoken_sha256 = \"xyz\"", &["agents[0].token_sha256", "64 hex"]),
            ("stale_after = \"1000000y\"", &["stale_after", "400 days"]),
            ("max_reading_age = \"401d\"", &["max_reading_age", "400 days"]),
            ("[ledger]\npath = \"x\"\nclose_after = \"500d\"", &["ledger.close_after", "400 days"]),
            ("[metrics]\ntoken_sha256 = \"xyz\"", &["metrics.token_sha256", "64 hex"]),
            (
                &format!("[[agents]]\nid = \"a\"\ntoken_sha256 = \"{H}\"\n[[agents]]\nid = \"a\"\ntoken_sha256 = \"{H}\""),
                &["agents[1].id", "duplicate"],
            ),
            (
                &format!("[[agents]]\nid = \"a\"\ntoken_sha256 = \"{H}\"\n[[agents]]\nid = \"b\"\ntoken_sha256 = \"{H}\""),
                &["agents[1].token_sha256", "twice"],
            ),
            ("[[meters]]\nid = \"m\"\nrole = \"it\"", &["meters[0].it_point", "required"]),
            ("[[meters]]\nid = \"m\"\nrole = \"facility\"\nit_point = \"pdu_output\"", &["meters[0].it_point", "only"]),
            ("[[meters]]\nid = \"m\"\nrole = \"heating\"", &["heating", "role"]),
            ("[[meters]]\nid = \"m\"\nrole = \"facility\"\nnode = \"n1\"", &["meters[0].node", "only an IT meter"]),
            ("[[meters]]\nid = \"m\"\nrole = \"it\"\nit_point = \"it_input\"\nnode = \"n/1\"", &["meters[0].node", "may only contain"]),
            ("[[meters]]\nid = \"a/../b\"\nrole = \"other\"", &["meters[0].id", "may only contain"]),
            ("[[meters]]\nid = \"m\"\nrole = \"other\"\n[[meters]]\nid = \"m\"\nrole = \"other\"", &["meters[1].id", "duplicate"]),
            ("pue_it_floor_watts = -1.0", &["pue_it_floor_watts"]),
            ("max_body_bytes = 10", &["max_body_bytes"]),
            ("pue_max_ratio = 0.5", &["pue_max_ratio"]),
            ("[pue]\nmax_uncertainty = -0.1", &["pue.max_uncertainty"]),
            ("[pue]\nmax_uncertainty = 1.5", &["pue.max_uncertainty"]),
            ("[pue]\nmax_uncertainty = nan", &["pue.max_uncertainty"]),
            ("[pue]\nmaximum = 1", &["maximum"]),
            ("[utilization]\nidle_sm_active_below = 0.0", &["utilization.idle_sm_active_below"]),
            ("[utilization]\nidle_sm_active_below = 1.5", &["utilization.idle_sm_active_below"]),
            ("[utilization]\nidle_sm_active_below = nan", &["utilization.idle_sm_active_below"]),
            ("[utilization]\nidle = 0.1", &["idle"]),
            ("carbon_intensity_kg_per_kwh = 40.0", &["carbon_intensity_kg_per_kwh"]),
            ("[report]\nreference_pue = [{ name = \"x\", pue = 0.9 }]", &["report.reference_pue[0].pue"]),
            ("[report]\nreference_pue = [{ name = \"x\", pue = 1.2 }, { name = \"\", pue = 1.2 }]", &["report.reference_pue[1].name"]),
            ("[report]\nreference_pue = [{ name = \"x\", pue = nan }]", &["report.reference_pue[0].pue"]),
            ("[report]\nreference = 1.5", &["reference"]),
            ("[[meters]]\nid = \"a\"\nrole = \"other\"\nparent = \"z\"", &["meters[0].parent", "no meter"]),
            (
                "[[meters]]\nid = \"a\"\nrole = \"other\"\nparent = \"b\"\n[[meters]]\nid = \"b\"\nrole = \"other\"\nparent = \"a\"",
                &["meters[0].parent", "cycle"],
            ),
            (
                "[[meters]]\nid = \"a\"\nrole = \"cooling\"\nparent = \"b\"\n[[meters]]\nid = \"b\"\nrole = \"other\"",
                &["meters[0].parent", "sub-meter"],
            ),
            ("[[meters]]\nid = \"m\"\nrole = \"other\"\nnominal_max_watts = -3.0", &["meters[0].nominal_max_watts"]),
            ("[[meters]]\nid = \"w\"\nrole = \"water\"\nit_point = \"it_input\"", &["meters[0].it_point", "only meters with role \"it\"", "\"water\""]),
            ("[[meters]]\nid = \"w\"\nrole = \"water\"\nnominal_max_watts = 5000.0", &["meters[0].nominal_max_watts", "volume, not energy", "nominal_max_cubic_meters_per_hour"]),
            ("[[meters]]\nid = \"w\"\nrole = \"water\"\nnominal_max_cubic_meters_per_hour = 0.0", &["meters[0].nominal_max_cubic_meters_per_hour", "positive"]),
            ("[[meters]]\nid = \"w\"\nrole = \"water\"\nnominal_max_cubic_meters_per_hour = nan", &["meters[0].nominal_max_cubic_meters_per_hour", "positive"]),
            ("[[meters]]\nid = \"m\"\nrole = \"cooling\"\nnominal_max_cubic_meters_per_hour = 16.0", &["meters[0].nominal_max_cubic_meters_per_hour", "only meters with role \"water\"", "nominal_max_watts"]),
            ("[[meters]]\nid = \"w\"\nrole = \"water\"\nnode = \"n1\"", &["meters[0].node", "only an IT meter"]),
            (
                "[[meters]]\nid = \"a\"\nrole = \"water\"\nparent = \"b\"\n[[meters]]\nid = \"b\"\nrole = \"facility\"",
                &["meters[0].parent", "sub-meter"],
            ),
            ("[ledger]\npath = \"/nonexistent/dir/c.sqlite\"", &["ledger.path", "does not exist"]),
            (
                "[[agents]]\nid = \"${DCWATT_COLLECTOR_TEST_SURELY_UNSET}\"\ntoken_sha256 = \"x\"",
                &["agents[0].id: environment variable DCWATT_COLLECTOR_TEST_SURELY_UNSET is not set"],
            ),
            ("[ledger]\npath = \"${bad name}\"", &["ledger.path: ", "$${"]),
            ("[[agents]]\nid = \"$${X}\"\ntoken_sha256 = \"x\"", &["agents[0].id", "may only contain"]),
        ];
        for (text, needles) in cases {
            let e = err(text);
            for n in *needles {
                assert!(
                    e.contains(n),
                    "error for {text:?} should mention {n:?}: {e}"
                );
            }
        }
    }
}
