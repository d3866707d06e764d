//! The site: the domain model the collector runs on, built from the TOML
//! file by `config` and read by everything else. What a meter measures
//! ([`Role`], [`ItPoint`]), a meter as counted ([`Meter`]), and the
//! validated [`Site`] with its lease book ([`LeaseBook`]: the leases in
//! force, replaced on reload; the leases themselves are `tenants`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tenants::Leases;

/// One reference PUE the report compares the measured PUE with.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReferencePue {
    /// What it is, e.g. `Uptime Institute 2024 industry average`.
    pub name: String,
    /// The reference value, 1 to 10.
    pub pue: f64,
}

/// SQLite's `synchronous` setting for the store (WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every transaction synced before it counts as committed (one fsync per
    /// group commit, shared by every batch in the group).
    #[default]
    Full,
    /// Synced at checkpoints only.
    Normal,
}

/// `[tls]`: the listener's certificate, and client certificates for mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain, PEM.
    pub cert_file: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// When set, every client must present a certificate signed by this CA (PEM).
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// What a meter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The facility's total input (utility feed): PUE's numerator.
    Facility,
    /// IT load: PUE's denominator.
    It,
    /// Cooling plant (CDUs, chillers, dry coolers, pumps).
    Cooling,
    /// Power infrastructure losses (UPS, transformers, distribution).
    PowerInfra,
    /// Anything else (lighting, offices).
    Other,
    /// Energy exported for reuse (waste heat to a district network): ERF's numerator.
    Reused,
    /// Renewable energy supplied to the facility: REF's numerator.
    Renewable,
    /// Site water input (make-up, humidification, adiabatic cooling): WUE's
    /// numerator. Its counter is a volume (m³), never an energy: it counts in
    /// no energy total, PUE or coverage of PUE.
    Water,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 8] = [
        Role::Facility,
        Role::It,
        Role::Cooling,
        Role::PowerInfra,
        Role::Other,
        Role::Reused,
        Role::Renewable,
        Role::Water,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Facility => "facility",
            Role::It => "it",
            Role::Cooling => "cooling",
            Role::PowerInfra => "power_infra",
            Role::Other => "other",
            Role::Reused => "reused",
            Role::Renewable => "renewable",
            Role::Water => "water",
        }
    }
}

/// Where IT energy is measured (ISO/IEC 30134-2 PUE categories).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItPoint {
    /// UPS output: category 1.
    UpsOutput,
    /// PDU output: category 2.
    PduOutput,
    /// IT equipment input: category 3.
    ItInput,
}

impl ItPoint {
    /// The ISO/IEC 30134-2 category number.
    pub fn category(self) -> u8 {
        match self {
            ItPoint::UpsOutput => 1,
            ItPoint::PduOutput => 2,
            ItPoint::ItInput => 3,
        }
    }
}

/// A meter as the collector uses it.
#[derive(Debug, Clone)]
pub struct Meter {
    /// Role.
    pub role: Role,
    /// Zone.
    pub zone: String,
    /// IT measurement point (role `it` only).
    pub it_point: Option<ItPoint>,
    /// See [`crate::config::MeterConfig::nominal_max_watts`].
    pub nominal_max_watts: Option<f64>,
    /// See [`crate::config::MeterConfig::nominal_max_cubic_meters_per_hour`].
    pub nominal_max_cubic_meters_per_hour: Option<f64>,
    /// See [`crate::config::MeterConfig::parent`].
    pub parent: Option<String>,
    /// See [`crate::config::MeterConfig::node`].
    pub node: Option<String>,
}

impl Meter {
    /// Whether the meter counts in its role's totals: not a sub-meter.
    pub fn counted(&self) -> bool {
        self.parent.is_none()
    }
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Site {
    /// Listen address as configured (`main` binds it).
    pub listen: String,
    /// See [`crate::config::Config::stale_after`], in ms.
    pub stale_after_ms: i64,
    /// See [`crate::config::Config::max_gap`], in ms.
    pub max_gap_ms: i64,
    /// See [`crate::config::Config::max_reading_age`], in ms.
    pub max_age_ms: i64,
    /// See [`crate::config::Config::max_clock_skew`], in ms.
    pub max_future_ms: i64,
    /// See [`crate::config::Config::max_body_bytes`].
    pub max_body_bytes: usize,
    /// See [`crate::config::Config::max_readings_per_batch`].
    pub max_readings: usize,
    /// See [`crate::config::Config::pue_it_floor_watts`].
    pub pue_it_floor_watts: f64,
    /// See [`crate::config::Config::pue_max_ratio`].
    pub pue_max_ratio: f64,
    /// See [`crate::config::PueConfig::max_uncertainty`].
    pub pue_max_uncertainty: f64,
    /// See [`crate::config::UtilizationConfig::idle_sm_active_below`].
    pub idle_sm_active_below: f64,
    /// See [`crate::config::Config::carbon_intensity_kg_per_kwh`].
    pub carbon_intensity_kg_per_kwh: Option<f64>,
    /// See [`crate::config::ReportConfig::reference_pue`].
    pub reference_pue: Vec<ReferencePue>,
    /// SHA-256 of the configuration file as read (hex); `None` when built
    /// from text.
    pub config_sha256: Option<String>,
    /// See [`crate::config::Config::meter_tree_tolerance`].
    pub meter_tree_tolerance: f64,
    /// Facility and IT meters (those PUE needs) per zone.
    pub required_per_zone: std::collections::BTreeMap<String, usize>,
    /// Water meters that count (not sub-meters), all zones: those WUE needs.
    pub water_meters: usize,
    /// The SQLite database, if state is kept.
    pub ledger_path: Option<std::path::PathBuf>,
    /// See [`crate::config::LedgerConfig::synchronous`].
    pub ledger_synchronous: Synchronous,
    /// See [`crate::config::LedgerConfig::close_after`], in ms.
    pub close_after_ms: i64,
    /// The checkpoint signing key ([`crate::config::LedgerConfig::signing_key_file`]), read at start.
    pub ledger_key: Option<ed25519_dalek::SigningKey>,
    /// See [`crate::config::LedgerConfig::collector_id`].
    pub collector_id: String,
    /// SHA-256 of each tenant's token → tenant id.
    pub tenant_tokens: HashMap<[u8; 32], String>,
    /// The leases in force (reloadable).
    pub leases: LeaseBook,
    /// The file this was read from, for reloading leases.
    pub config_path: Option<std::path::PathBuf>,
    /// SHA-256 of the operator token, if one is configured.
    pub operator_token: Option<[u8; 32]>,
    /// SHA-256 of the scrape token (`[metrics]`), if one is configured.
    pub metrics_token: Option<[u8; 32]>,
    /// SHA-256 of each agent's token → agent id.
    pub agent_tokens: HashMap<[u8; 32], String>,
    /// Agent id → the meters it may report (empty: none).
    pub agent_meters: HashMap<String, HashSet<String>>,
    /// Meters by id.
    pub meters: HashMap<String, Meter>,
    /// Agent id → the zone of its node.
    pub agent_zones: HashMap<String, String>,
    /// Nodes whose input power a meter measures.
    pub metered_nodes: HashSet<String>,
    /// Every zone named by a meter or an agent.
    pub zones: std::collections::BTreeSet<String>,
    /// Thermal excursion limits.
    pub thermal: crate::thermal::ThermalConfig,
    /// How GPU-minutes are judged for service levels.
    pub sla: SlaConfig,
    /// Declared site power events.
    pub power_events: Vec<PowerEvent>,
    /// Each tenant's availability target, where one is set.
    pub availability_targets: std::collections::BTreeMap<String, f64>,
    /// TLS, if configured.
    pub tls: Option<TlsConfig>,
    /// Connection limits of the listener.
    pub limits: crate::serve::Limits,
    /// See [`crate::config::Config::request_timeout`].
    pub request_timeout: Duration,
    /// See [`crate::config::Config::agent_batches_per_second`].
    pub agent_rate: f64,
    /// See [`crate::config::Config::agent_batch_burst`].
    pub agent_burst: u32,
    /// See [`crate::config::Config::max_gpus_per_agent`].
    pub max_gpus_per_agent: usize,
}

impl Site {
    /// The configured meters that no agent may report (no `[[agents]]`
    /// lists them): they will never count, which is likely a mistake.
    pub fn unreported_meters(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .meters
            .keys()
            .filter(|m| !self.agent_meters.values().any(|a| a.contains(*m)))
            .map(String::as_str)
            .collect();
        out.sort_unstable();
        out
    }
}

/// `[sla]`: how GPU-minutes are judged.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// A minute throttled (thermal, power brake, cap below default) for more
    /// than this share of its covered time is degraded. Default 0.1.
    #[serde(default = "default_degraded_share")]
    pub degraded_share: f64,
    /// A minute down for more than this share of its covered time is down.
    /// Default 0 (any down time).
    #[serde(default)]
    pub down_share: f64,
    /// How long after a GPU's silent minute ends (no reading of it) it is
    /// booked `unknown` without waiting for the GPU to report again: time
    /// for an agent's spooled batches to arrive after a network outage.
    /// At least the ledger's `close_after`, at most a day. Default 5 min.
    #[serde(default = "default_silence_after", with = "humantime_serde")]
    pub silence_after: std::time::Duration,
}

fn default_silence_after() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_degraded_share() -> f64 {
    0.1
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            degraded_share: default_degraded_share(),
            down_share: 0.0,
            silence_after: default_silence_after(),
        }
    }
}

impl SlaConfig {
    /// Checks the shares: `(key, why)` of the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("degraded_share", self.degraded_share),
            ("down_share", self.down_share),
        ] {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err((key, format!("{v} is not a share in [0, 1)")));
            }
        }
        if self.silence_after > std::time::Duration::from_secs(86_400) {
            return Err((
                "silence_after",
                format!("{:?} is longer than a day", self.silence_after),
            ));
        }
        Ok(())
    }
}

/// A site power event, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerEvent {
    /// Its zone; `None`: every zone.
    pub zone: Option<String>,
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
}

/// SHA-256 of a bearer token, as the site stores it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The leases in force, replaceable while the collector runs (reload on
/// SIGHUP or `POST /v1/admin/leases/reload`). Each call sees one consistent set.
#[derive(Debug, Clone, Default)]
pub struct LeaseBook(std::sync::Arc<std::sync::RwLock<Leases>>);

impl LeaseBook {
    /// A book holding `leases`.
    pub fn new(leases: Leases) -> LeaseBook {
        LeaseBook(std::sync::Arc::new(std::sync::RwLock::new(leases)))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Leases> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces every lease at once.
    pub fn replace(&self, leases: Leases) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = leases;
    }

    /// A copy of the leases in force.
    pub fn snapshot(&self) -> Leases {
        self.read().clone()
    }

    /// True when no lease is configured.
    pub fn is_empty(&self) -> bool {
        self.read().all().is_empty()
    }

    /// See [`Leases::split`].
    pub fn split(&self, node: &str, uuid: &str, from_ms: i64, to_ms: i64) -> Vec<(String, i64)> {
        self.read().split(node, uuid, from_ms, to_ms)
    }

    /// See [`Leases::attribute`].
    pub fn attribute(
        &self,
        node: &str,
        uuid: &str,
        from_ms: i64,
        to_ms: i64,
        joules: f64,
    ) -> Vec<(String, f64, i64)> {
        self.read().attribute(node, uuid, from_ms, to_ms, joules)
    }
}
