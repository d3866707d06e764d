//! The agent's TOML configuration: the serde shape ([`AgentConfig`]), its
//! validation ([`AgentConfig::build`]) and the runtime result ([`RuntimeConfig`]).
//!
//! Every error names the key that is wrong (`sources[1].url: …`), so that
//! `dcwatt-agent --check-config FILE` tells an operator what to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use dcwatt_wire::Quantity;

use crate::sources::meter::{Dimension, TlsSpec, Unit};
use crate::spool::{Fsync, SpoolSpec, Storage};

/// The shortest collection interval accepted: NVML power is a 1 s average on
/// recent GPUs, and meters rarely update faster than a few times a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The config file as written: `dcwatt-agent --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address that serves `GET /metrics` and `GET /healthz`. Default `127.0.0.1:9101`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Time between two collections, a humantime string (`"1s"`, `"200ms"`).
    /// Default `1s`; at least 100 ms.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// This node's name, also the agent's id towards collectors.
    /// Default: the hostname (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
    #[serde(default)]
    pub node: Option<String>,
    /// Collectors to ship batches to (primary, mirror site…). None: the agent is a
    /// standalone exporter and makes no batches.
    #[serde(default)]
    pub collectors: Vec<CollectorConfig>,
    /// What to read each tick.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// The durable spool of batches (see [`SpoolConfig`]).
    #[serde(default)]
    pub spool: Option<SpoolConfig>,
}

/// One `[[collectors]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Base URL of the collector (`http://collector-a:9400`); batches go to
    /// `{url}/v1/batches`.
    pub url: String,
    /// File holding this agent's bearer token (surrounding whitespace ignored).
    pub token_file: PathBuf,
    /// Timeout of one POST, humantime. Default `5s`.
    #[serde(default = "default_collector_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// With an `https://` URL: the CA (PEM) the collector's certificate must
    /// chain to, instead of the system's public roots.
    pub ca_file: Option<PathBuf>,
    /// This agent's client certificate (PEM), for a collector that requires
    /// mutual TLS; with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// One `[[sources]]` entry, tagged by `type`.
///
/// Deserialized through a flat struct rather than serde's internally tagged
/// enum: that one buffers the table and loses the position of a bad value, so
/// toml could no longer name the offending key.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSource")]
pub enum SourceConfig {
    /// The node's GPUs through NVML.
    Nvml(NvmlConfig),
    /// One Redfish resource, or a whole Redfish service (discovery).
    Redfish(RedfishConfig),
    /// Any JSON meter: a JSON Pointer and a unit per quantity.
    HttpJson(HttpJsonConfig),
    /// Series of another exporter's Prometheus text exposition.
    PrometheusText(PrometheusTextConfig),
}

/// `type = "nvml"`.
#[derive(Debug, Clone)]
pub struct NvmlConfig {
    /// Path of `libnvidia-ml.so.1` to load. Default: the system's (`libnvidia-ml.so`).
    pub library: Option<PathBuf>,
}

/// `type = "redfish"`.
#[derive(Debug, Clone)]
pub struct RedfishConfig {
    /// The meter's id, unique in this agent; the collector's site config gives
    /// it a role. In discovery mode, the prefix of every discovered meter's id.
    pub meter: String,
    /// Absolute URL of the resource, e.g.
    /// `https://pdu-r12-a/redfish/v1/PowerEquipment/RackPDUs/1/Metrics`; in
    /// discovery mode the service root (`https://pdu-r12-a/redfish/v1`).
    pub url: String,
    /// Timeout of one GET, humantime. Default `2s`.
    pub timeout: Duration,
    /// `discover = true`: walk the service from `url` (see `docs/meters.md`).
    pub discover: bool,
    /// Meter options shared with the other HTTP meter types.
    pub common: MeterCommonConfig,
    /// `auth = "basic" | "session"`; default `basic` when `username` is set.
    pub auth: Option<String>,
    /// Redfish user name.
    pub username: Option<String>,
    /// File holding the password (surrounding whitespace ignored).
    pub password_file: Option<PathBuf>,
}

/// Keys every HTTP meter type (`redfish`, `http_json`, `prometheus_text`) accepts.
#[derive(Debug, Clone, Default)]
pub struct MeterCommonConfig {
    /// Time between two reads of this meter, humantime. Default: the agent's `interval`.
    pub interval: Option<Duration>,
    /// PEM file of extra trusted root certificates (a site CA, a self-signed BMC).
    pub ca_file: Option<PathBuf>,
    /// Accept any TLS certificate and host name. Dangerous; warned at start.
    pub tls_insecure_skip_verify: bool,
    /// Extra request headers (not for `redfish`).
    pub headers: BTreeMap<String, String>,
}

/// `type = "http_json"`.
#[derive(Debug, Clone)]
pub struct HttpJsonConfig {
    /// The meter's id.
    pub meter: String,
    /// Absolute URL.
    pub url: String,
    /// Timeout of one request, humantime. Default `2s`.
    pub timeout: Duration,
    /// `GET` (default) or `POST`.
    pub method: Option<String>,
    /// Request body (POST only), sent as `application/json`.
    pub body: Option<String>,
    /// Shared HTTP meter keys.
    pub common: MeterCommonConfig,
    /// Where the meter's own timestamp is, if it has one.
    pub timestamp: Option<TimestampConfig>,
    /// Quantities by key (`power`, `energy`, …).
    pub quantities: Vec<(&'static str, QuantityConfig)>,
}

/// `type = "prometheus_text"`.
#[derive(Debug, Clone)]
pub struct PrometheusTextConfig {
    /// The meter's id.
    pub meter: String,
    /// Absolute URL of the exposition.
    pub url: String,
    /// Timeout of one request, humantime. Default `2s`.
    pub timeout: Duration,
    /// Shared HTTP meter keys.
    pub common: MeterCommonConfig,
    /// Quantities by key (`power`, `energy`, …).
    pub quantities: Vec<(&'static str, QuantityConfig)>,
}

/// One quantity of an `http_json` or `prometheus_text` meter, e.g.
/// `energy = { pointer = "/total", unit = "Wh" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantityConfig {
    /// `http_json`: RFC 6901 JSON Pointer to a number (or a numeric string).
    #[serde(default)]
    pub pointer: Option<String>,
    /// `prometheus_text`: the metric name of the series.
    #[serde(default)]
    pub metric: Option<String>,
    /// `prometheus_text`: labels the series must have (exact values).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The unit the meter speaks (`W`, `kW`, `Wh`, `kWh`, `J`, `Cel`, `L/min`, …).
    pub unit: String,
    /// Multiplied into the raw value before the unit conversion. Default 1.
    #[serde(default)]
    pub scale: Option<f64>,
}

/// `timestamp = { pointer = "/ts", format = "unix_ms" }` of an `http_json` meter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampConfig {
    /// JSON Pointer to the timestamp.
    pub pointer: String,
    /// `rfc3339` (default), `unix_s` or `unix_ms`.
    #[serde(default)]
    pub format: Option<String>,
}

/// The closed set of `type` values.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SourceType {
    Nvml,
    Redfish,
    HttpJson,
    PrometheusText,
}

/// Every key any source type accepts; [`SourceConfig`]'s `TryFrom` checks that
/// each type gets only its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    r#type: SourceType,
    #[serde(default)]
    library: Option<PathBuf>,
    #[serde(default)]
    meter: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    // ---- meter keys (redfish, http_json, prometheus_text) ----
    #[serde(default, with = "humantime_serde::option")]
    interval: Option<Duration>,
    #[serde(default)]
    discover: Option<bool>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    tls_insecure_skip_verify: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    timestamp: Option<TimestampConfig>,
    #[serde(default)]
    power: Option<QuantityConfig>,
    #[serde(default)]
    energy: Option<QuantityConfig>,
    #[serde(default)]
    temperature: Option<QuantityConfig>,
    #[serde(default)]
    coolant_supply_temperature: Option<QuantityConfig>,
    #[serde(default)]
    coolant_return_temperature: Option<QuantityConfig>,
    #[serde(default)]
    coolant_flow: Option<QuantityConfig>,
    #[serde(default)]
    heat_removed: Option<QuantityConfig>,
    #[serde(default)]
    water_volume: Option<QuantityConfig>,
}

impl RawSource {
    /// The first of the meter-only keys that is set.
    fn meter_key_set(&self) -> Option<&'static str> {
        [
            ("interval", self.interval.is_some()),
            ("discover", self.discover.is_some()),
            ("auth", self.auth.is_some()),
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
            ("ca_file", self.ca_file.is_some()),
            (
                "tls_insecure_skip_verify",
                self.tls_insecure_skip_verify.is_some(),
            ),
            ("headers", self.headers.is_some()),
            ("method", self.method.is_some()),
            ("body", self.body.is_some()),
            ("timestamp", self.timestamp.is_some()),
        ]
        .into_iter()
        .chain(self.quantity_keys().map(|k| (k, true)))
        .find(|(_, set)| *set)
        .map(|(k, _)| k)
    }

    fn quantity_keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.quantities().into_iter().map(|(k, _)| k)
    }

    fn quantities(&self) -> Vec<(&'static str, QuantityConfig)> {
        [
            ("power", &self.power),
            ("energy", &self.energy),
            ("temperature", &self.temperature),
            (
                "coolant_supply_temperature",
                &self.coolant_supply_temperature,
            ),
            (
                "coolant_return_temperature",
                &self.coolant_return_temperature,
            ),
            ("coolant_flow", &self.coolant_flow),
            ("heat_removed", &self.heat_removed),
            ("water_volume", &self.water_volume),
        ]
        .into_iter()
        .filter_map(|(k, q)| q.clone().map(|q| (k, q)))
        .collect()
    }

    fn common(&mut self) -> MeterCommonConfig {
        MeterCommonConfig {
            interval: self.interval,
            ca_file: self.ca_file.take(),
            tls_insecure_skip_verify: self.tls_insecure_skip_verify.unwrap_or(false),
            headers: self.headers.take().unwrap_or_default(),
        }
    }
}

impl TryFrom<RawSource> for SourceConfig {
    type Error = String;

    fn try_from(mut r: RawSource) -> Result<Self, String> {
        let not_for = |key: &str, ty: &str| format!("key `{key}` is not valid for type = \"{ty}\"");
        let missing =
            |key: &str, ty: &str| format!("missing key `{key}` (required for type = \"{ty}\")");
        match r.r#type {
            SourceType::Nvml => {
                for (key, set) in [
                    ("meter", r.meter.is_some()),
                    ("url", r.url.is_some()),
                    ("timeout", r.timeout.is_some()),
                ] {
                    if set {
                        return Err(not_for(key, "nvml"));
                    }
                }
                if let Some(key) = r.meter_key_set() {
                    return Err(not_for(key, "nvml"));
                }
                Ok(Self::Nvml(NvmlConfig { library: r.library }))
            }
            SourceType::Redfish => {
                let ty = "redfish";
                if r.library.is_some() {
                    return Err(not_for("library", ty));
                }
                for (key, set) in [
                    ("headers", r.headers.is_some()),
                    ("method", r.method.is_some()),
                    ("body", r.body.is_some()),
                    ("timestamp", r.timestamp.is_some()),
                ] {
                    if set {
                        return Err(not_for(key, ty));
                    }
                }
                if let Some(key) = r.quantity_keys().next() {
                    return Err(not_for(key, ty));
                }
                let common = r.common();
                Ok(Self::Redfish(RedfishConfig {
                    meter: r.meter.ok_or_else(|| missing("meter", ty))?,
                    url: r.url.ok_or_else(|| missing("url", ty))?,
                    timeout: r.timeout.unwrap_or_else(default_redfish_timeout),
                    discover: r.discover.unwrap_or(false),
                    common,
                    auth: r.auth,
                    username: r.username,
                    password_file: r.password_file,
                }))
            }
            SourceType::HttpJson | SourceType::PrometheusText => {
                let json = matches!(r.r#type, SourceType::HttpJson);
                let ty = if json { "http_json" } else { "prometheus_text" };
                let mut forbidden = vec![
                    ("library", r.library.is_some()),
                    ("discover", r.discover.is_some()),
                    ("auth", r.auth.is_some()),
                    ("username", r.username.is_some()),
                    ("password_file", r.password_file.is_some()),
                ];
                if !json {
                    forbidden.extend([
                        ("method", r.method.is_some()),
                        ("body", r.body.is_some()),
                        ("timestamp", r.timestamp.is_some()),
                    ]);
                }
                if let Some((key, _)) = forbidden.into_iter().find(|(_, set)| *set) {
                    return Err(not_for(key, ty));
                }
                let quantities = r.quantities();
                let common = r.common();
                let meter = r.meter.ok_or_else(|| missing("meter", ty))?;
                let url = r.url.ok_or_else(|| missing("url", ty))?;
                let timeout = r.timeout.unwrap_or_else(default_redfish_timeout);
                if json {
                    Ok(Self::HttpJson(HttpJsonConfig {
                        meter,
                        url,
                        timeout,
                        method: r.method,
                        body: r.body,
                        common,
                        timestamp: r.timestamp,
                        quantities,
                    }))
                } else {
                    Ok(Self::PrometheusText(PrometheusTextConfig {
                        meter,
                        url,
                        timeout,
                        common,
                        quantities,
                    }))
                }
            }
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9101".to_owned()
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_collector_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_redfish_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Address to bind for `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Time between two collections.
    pub interval: Duration,
    /// This node's name and the agent's id.
    pub node: String,
    /// Where batches go; empty for a standalone exporter.
    pub collectors: Vec<Collector>,
    /// What is read each tick.
    pub sources: Vec<SourceSpec>,
    /// Where batches wait for the collectors.
    pub spool: SpoolSpec,
}

/// A validated collector.
#[derive(Clone, PartialEq)]
pub struct Collector {
    /// Base URL, as configured.
    pub url: Url,
    /// The bearer token.
    pub token: String,
    /// Timeout of one POST.
    pub timeout: Duration,
    /// The CA to trust instead of the public roots (PEM, checked), if configured.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate and key (PEM, checked), for mutual TLS.
    pub identity_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Collector {
    // The token stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("url", &self.url.as_str())
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A validated source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// Read the node's GPUs through NVML.
    Nvml(NvmlSpec),
    /// Read one Redfish meter, or every meter of a Redfish service.
    Redfish(RedfishSpec),
    /// Read one JSON meter.
    HttpJson(HttpJsonSpec),
    /// Read one meter from a Prometheus text exposition.
    PrometheusText(PrometheusTextSpec),
}

/// A validated `type = "nvml"` source.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlSpec {
    /// Which NVML library to load.
    pub library: NvmlLibrary,
}

/// Which NVML library to load.
#[derive(Debug, Clone, PartialEq)]
pub enum NvmlLibrary {
    /// The system's `libnvidia-ml.so` (the dynamic loader finds it).
    System,
    /// A library at this path (a fake one in tests, a non-standard install).
    Path(PathBuf),
}

/// A validated `type = "redfish"` source.
#[derive(Debug, Clone, PartialEq)]
pub struct RedfishSpec {
    /// The meter's id (explicit mode) or the prefix of discovered meter ids.
    pub meter: String,
    /// The resource's absolute URL, or the service root in discovery mode.
    pub url: Url,
    /// Timeout of one GET.
    pub timeout: Duration,
    /// Walk the service from `url` and read every meter found.
    pub discover: bool,
    /// Time between reads; `None`: the agent's interval.
    pub interval: Option<Duration>,
    /// How to authenticate.
    pub auth: RedfishAuth,
    /// TLS roots and verification.
    pub tls: TlsSpec,
}

/// How a Redfish source authenticates.
#[derive(Clone, PartialEq)]
pub enum RedfishAuth {
    /// No credentials.
    None,
    /// HTTP basic on every request.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A Redfish session: `POST` to the sessions collection, then `X-Auth-Token`.
    Session {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for RedfishAuth {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Self::Session { username, .. } => write!(f, "Session({username:?}, <redacted>)"),
        }
    }
}

/// A validated `type = "http_json"` source.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpJsonSpec {
    /// The meter's id.
    pub meter: String,
    /// What to request.
    pub http: HttpSpec,
    /// Where the meter's own timestamp is.
    pub timestamp: Option<TimestampSpec>,
    /// What to read.
    pub quantities: Vec<QuantitySpec>,
}

/// A validated `type = "prometheus_text"` source.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusTextSpec {
    /// The meter's id.
    pub meter: String,
    /// What to request.
    pub http: HttpSpec,
    /// What to read: `path` is the metric name, `labels` must match exactly.
    pub quantities: Vec<QuantitySpec>,
}

/// One validated HTTP request of a meter.
#[derive(Clone, PartialEq)]
pub struct HttpSpec {
    /// Absolute URL.
    pub url: Url,
    /// GET or POST.
    pub method: reqwest::Method,
    /// POST body.
    pub body: Option<String>,
    /// Extra headers, validated.
    pub headers: Vec<(String, String)>,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Time between reads; `None`: the agent's interval.
    pub interval: Option<Duration>,
    /// TLS roots and verification.
    pub tls: TlsSpec,
}

impl std::fmt::Debug for HttpSpec {
    // Header values (API keys, bearer tokens) stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, _)| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("HttpSpec")
            .field("url", &self.url.as_str())
            .field("method", &self.method)
            .field("body", &self.body)
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .field("tls", &self.tls)
            .finish()
    }
}

/// One validated quantity of an `http_json` or `prometheus_text` meter.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantitySpec {
    /// The config key (`power`, `energy`, …), for error messages.
    pub key: &'static str,
    /// What it becomes on the wire.
    pub quantity: Quantity,
    /// JSON Pointer (`http_json`) or metric name (`prometheus_text`).
    pub path: String,
    /// Labels the series must carry (`prometheus_text` only).
    pub labels: BTreeMap<String, String>,
    /// The unit the meter speaks.
    pub unit: Unit,
    /// Multiplied into the raw value first.
    pub scale: f64,
}

/// Where and how an `http_json` meter states its own time.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestampSpec {
    /// JSON Pointer.
    pub pointer: String,
    /// How to read it.
    pub format: TimestampFormat,
}

/// The format of a meter's own timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampFormat {
    /// RFC 3339 text.
    Rfc3339,
    /// Unix seconds (a number, fractions allowed).
    UnixSeconds,
    /// Unix milliseconds.
    UnixMillis,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or type error; toml's text names the key, line and column.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value that parsed but does not make sense.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `sources[1].url`.
        key: String,
        /// Why, in lowercase.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<RuntimeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    AgentConfig::from_toml(&text)?.build()
}

impl AgentConfig {
    /// Parses TOML text (no validation beyond types; see [`AgentConfig::build`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Validates the config and resolves every default. Token files are read here.
    pub fn build(self) -> Result<RuntimeConfig, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{e}: {:?} (expected IP:PORT)", self.listen),
            )
        })?;
        if self.interval < MIN_INTERVAL {
            return Err(invalid(
                "interval",
                format!(
                    "{} is shorter than the minimum of {}",
                    humantime_serde::re::humantime::format_duration(self.interval),
                    humantime_serde::re::humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        let node = match self.node {
            Some(n) => n.trim().to_owned(),
            None => hostname().ok_or_else(|| {
                invalid(
                    "node",
                    "not set and the hostname is unknown (no /proc/sys/kernel/hostname, no $HOSTNAME)",
                )
            })?,
        };
        if node.is_empty() {
            return Err(invalid("node", "empty"));
        }

        let mut collectors = Vec::with_capacity(self.collectors.len());
        for (i, c) in self.collectors.into_iter().enumerate() {
            collectors.push(build_collector(i, c)?);
        }
        let mut seen = BTreeSet::new();
        for (i, c) in collectors.iter().enumerate() {
            if !seen.insert(c.url.as_str().trim_end_matches('/').to_owned()) {
                return Err(invalid(
                    format!("collectors[{i}].url"),
                    format!("duplicate collector {}", c.url),
                ));
            }
        }

        let mut sources = Vec::with_capacity(self.sources.len());
        let mut meters = BTreeSet::new();
        let mut nvml_seen = false;
        for (i, s) in self.sources.into_iter().enumerate() {
            let spec = match s {
                SourceConfig::Nvml(n) => {
                    if nvml_seen {
                        return Err(invalid(
                            format!("sources[{i}].type"),
                            "only one nvml source is allowed",
                        ));
                    }
                    nvml_seen = true;
                    SourceSpec::Nvml(build_nvml(i, n)?)
                }
                SourceConfig::Redfish(r) => SourceSpec::Redfish(build_redfish(i, r)?),
                SourceConfig::HttpJson(c) => SourceSpec::HttpJson(build_http_json(i, c)?),
                SourceConfig::PrometheusText(c) => {
                    SourceSpec::PrometheusText(build_prometheus_text(i, c)?)
                }
            };
            let meter = match &spec {
                SourceSpec::Nvml(_) => None,
                SourceSpec::Redfish(r) => Some(&r.meter),
                SourceSpec::HttpJson(r) => Some(&r.meter),
                SourceSpec::PrometheusText(r) => Some(&r.meter),
            };
            if let Some(meter) = meter {
                // The collector's id alphabet: anything else is refused there,
                // and the batches would wait in the spool for ever.
                if meter.is_empty()
                    || meter.len() > 96
                    || !meter
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                {
                    return Err(invalid(
                        format!("sources[{i}].meter"),
                        format!("{meter:?} must be 1 to 96 of ASCII letters, digits, '-', '_', '.', ':'"),
                    ));
                }
                if !meters.insert(meter.clone()) {
                    return Err(invalid(
                        format!("sources[{i}].meter"),
                        format!("duplicate meter id {meter:?}"),
                    ));
                }
            }
            sources.push(spec);
        }

        let spool = build_spool(self.spool, collectors.is_empty())?;
        Ok(RuntimeConfig {
            listen,
            interval: self.interval,
            node,
            collectors,
            sources,
            spool,
        })
    }
}

fn build_collector(i: usize, c: CollectorConfig) -> Result<Collector, ConfigError> {
    let url = parse_http_url(&c.url).map_err(|r| invalid(format!("collectors[{i}].url"), r))?;
    let key = format!("collectors[{i}].token_file");
    let text = std::fs::read_to_string(&c.token_file)
        .map_err(|e| invalid(&key, format!("cannot read {}: {e}", c.token_file.display())))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds an empty token", c.token_file.display()),
        ));
    }
    if token
        .chars()
        .any(|ch| ch.is_control() || ch.is_whitespace())
    {
        return Err(invalid(
            key,
            format!("{} holds a token with whitespace", c.token_file.display()),
        ));
    }
    if c.timeout.is_zero() {
        return Err(invalid(
            format!("collectors[{i}].timeout"),
            "must be above 0",
        ));
    }
    let read = |key: String, path: &Path| {
        std::fs::read(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    let ca = match &c.ca_file {
        Some(path) => {
            let key = format!("collectors[{i}].ca_file");
            let pem = read(key.clone(), path)?;
            reqwest::Certificate::from_pem(&pem).map_err(|e| {
                invalid(
                    key,
                    format!("{}: not a PEM certificate: {e}", path.display()),
                )
            })?;
            Some(pem)
        }
        None => None,
    };
    let identity = match (&c.client_cert_file, &c.client_key_file) {
        (Some(cert), Some(k)) => {
            let mut pem = read(format!("collectors[{i}].client_cert_file"), cert)?;
            pem.push(b'\n');
            pem.extend(read(format!("collectors[{i}].client_key_file"), k)?);
            reqwest::Identity::from_pem(&pem).map_err(|e| {
                invalid(
                    format!("collectors[{i}].client_cert_file"),
                    format!(
                        "{} with {}: not a PEM certificate and key: {e}",
                        cert.display(),
                        k.display()
                    ),
                )
            })?;
            Some(pem)
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                format!("collectors[{i}].client_key_file"),
                "required with client_cert_file",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("collectors[{i}].client_cert_file"),
                "required with client_key_file",
            ))
        }
    };
    if (ca.is_some() || identity.is_some()) && url.scheme() != "https" {
        return Err(invalid(
            format!("collectors[{i}].url"),
            "ca_file and client certificates need an https:// URL",
        ));
    }
    Ok(Collector {
        url,
        token,
        timeout: c.timeout,
        ca_pem: ca,
        identity_pem: identity,
    })
}

fn build_nvml(i: usize, n: NvmlConfig) -> Result<NvmlSpec, ConfigError> {
    let library = match n.library {
        None => NvmlLibrary::System,
        Some(p) if p.as_os_str().is_empty() => {
            return Err(invalid(format!("sources[{i}].library"), "empty path"))
        }
        Some(p) => NvmlLibrary::Path(p),
    };
    Ok(NvmlSpec { library })
}

fn build_meter_id(i: usize, meter: &str) -> Result<String, ConfigError> {
    let meter = meter.trim().to_owned();
    if meter.is_empty() {
        return Err(invalid(format!("sources[{i}].meter"), "empty"));
    }
    if meter.chars().any(char::is_control) {
        return Err(invalid(
            format!("sources[{i}].meter"),
            "contains a control character",
        ));
    }
    Ok(meter)
}

fn build_redfish(i: usize, r: RedfishConfig) -> Result<RedfishSpec, ConfigError> {
    let meter = build_meter_id(i, &r.meter)?;
    let url = parse_http_url(&r.url).map_err(|e| invalid(format!("sources[{i}].url"), e))?;
    if r.timeout.is_zero() {
        return Err(invalid(format!("sources[{i}].timeout"), "must be above 0"));
    }
    let password = match &r.password_file {
        None => None,
        Some(path) => {
            let key = format!("sources[{i}].password_file");
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
            Some(text.trim().to_owned())
        }
    };
    let auth = match (r.auth.as_deref(), r.username, password) {
        (None, None, None) => RedfishAuth::None,
        (Some(a), None, _) => {
            return Err(invalid(
                format!("sources[{i}].username"),
                format!("missing (required by auth = {a:?})"),
            ))
        }
        (_, Some(_), None) => {
            return Err(invalid(
                format!("sources[{i}].password_file"),
                "missing (required with username)",
            ))
        }
        (_, None, Some(_)) => {
            return Err(invalid(
                format!("sources[{i}].username"),
                "missing (required with password_file)",
            ))
        }
        (None | Some("basic"), Some(username), Some(password)) => {
            RedfishAuth::Basic { username, password }
        }
        (Some("session"), Some(username), Some(password)) => {
            RedfishAuth::Session { username, password }
        }
        (Some(other), ..) => {
            return Err(invalid(
                format!("sources[{i}].auth"),
                format!("unknown {other:?} (expected \"basic\" or \"session\")"),
            ))
        }
    };
    let common = build_common(i, r.common, r.timeout)?;
    Ok(RedfishSpec {
        meter,
        url,
        timeout: r.timeout,
        discover: r.discover,
        interval: common.interval,
        auth,
        tls: common.tls,
    })
}

/// The validated shared keys.
struct Common {
    interval: Option<Duration>,
    tls: TlsSpec,
    headers: Vec<(String, String)>,
}

fn build_common(i: usize, c: MeterCommonConfig, timeout: Duration) -> Result<Common, ConfigError> {
    if let Some(iv) = c.interval {
        if iv < MIN_INTERVAL {
            return Err(invalid(
                format!("sources[{i}].interval"),
                format!(
                    "{} is shorter than the minimum of {}",
                    humantime_serde::re::humantime::format_duration(iv),
                    humantime_serde::re::humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
    }
    let _ = timeout;
    if let Some(path) = &c.ca_file {
        let key = format!("sources[{i}].ca_file");
        let pem = std::fs::read(path)
            .map_err(|e| invalid(&key, format!("cannot read {}: {e}", path.display())))?;
        reqwest::Certificate::from_pem(&pem).map_err(|e| {
            invalid(
                &key,
                format!("{} is not a PEM certificate: {e}", path.display()),
            )
        })?;
    }
    let mut headers = Vec::with_capacity(c.headers.len());
    for (k, v) in c.headers {
        let key = format!("sources[{i}].headers.{k}");
        reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| invalid(&key, "not a valid http header name"))?;
        reqwest::header::HeaderValue::from_str(&v)
            .map_err(|_| invalid(&key, "not a valid http header value"))?;
        headers.push((k, v));
    }
    Ok(Common {
        interval: c.interval,
        tls: TlsSpec {
            ca_file: c.ca_file,
            insecure_skip_verify: c.tls_insecure_skip_verify,
        },
        headers,
    })
}

/// The wire quantity and unit dimension of each quantity key.
fn quantity_of(key: &str) -> Option<(Quantity, Dimension)> {
    Some(match key {
        "power" => (Quantity::PowerWatts, Dimension::Power),
        "energy" => (Quantity::EnergyJoules, Dimension::Energy),
        "temperature" => (Quantity::TemperatureCelsius, Dimension::Temperature),
        "coolant_supply_temperature" => (
            Quantity::CoolantSupplyTemperatureCelsius,
            Dimension::Temperature,
        ),
        "coolant_return_temperature" => (
            Quantity::CoolantReturnTemperatureCelsius,
            Dimension::Temperature,
        ),
        "coolant_flow" => (Quantity::CoolantFlowCubicMetersPerSecond, Dimension::Flow),
        "heat_removed" => (Quantity::HeatRemovedWatts, Dimension::Power),
        "water_volume" => (Quantity::WaterVolumeCubicMeters, Dimension::Volume),
        _ => return None,
    })
}

fn build_quantities(
    i: usize,
    qs: Vec<(&'static str, QuantityConfig)>,
    json: bool,
) -> Result<Vec<QuantitySpec>, ConfigError> {
    if qs.is_empty() {
        return Err(invalid(
            format!("sources[{i}]"),
            "no quantity configured (set at least one of power, energy, temperature, \
             coolant_supply_temperature, coolant_return_temperature, coolant_flow, heat_removed, \
             water_volume)",
        ));
    }
    let mut out = Vec::with_capacity(qs.len());
    for (key, q) in qs {
        let k = |sub: &str| format!("sources[{i}].{key}.{sub}");
        let Some((quantity, dimension)) = quantity_of(key) else {
            return Err(invalid(format!("sources[{i}].{key}"), "unknown quantity"));
        };
        let unit = Unit::parse(&q.unit).ok_or_else(|| {
            invalid(
                k("unit"),
                format!(
                    "unknown unit {:?} (expected one of {})",
                    q.unit,
                    Unit::names()
                ),
            )
        })?;
        if unit.dimension != dimension {
            return Err(invalid(
                k("unit"),
                format!(
                    "{:?} is not a unit of {key} (expected a unit convertible to {})",
                    q.unit,
                    dimension.si()
                ),
            ));
        }
        let scale = q.scale.unwrap_or(1.0);
        if !scale.is_finite() || scale <= 0.0 {
            return Err(invalid(
                k("scale"),
                format!("{scale} must be finite and above 0"),
            ));
        }
        let path = if json {
            if q.metric.is_some() {
                return Err(invalid(
                    k("metric"),
                    "not valid for type = \"http_json\" (use pointer)",
                ));
            }
            if q.labels.is_some() {
                return Err(invalid(k("labels"), "not valid for type = \"http_json\""));
            }
            let p = q.pointer.ok_or_else(|| invalid(k("pointer"), "missing"))?;
            if !(p.is_empty() || p.starts_with('/')) {
                return Err(invalid(
                    k("pointer"),
                    format!("{p:?} is not a JSON Pointer (it must start with /)"),
                ));
            }
            p
        } else {
            if q.pointer.is_some() {
                return Err(invalid(
                    k("pointer"),
                    "not valid for type = \"prometheus_text\" (use metric)",
                ));
            }
            let m = q.metric.ok_or_else(|| invalid(k("metric"), "missing"))?;
            if !crate::sources::prometheus_text::valid_metric_name(&m) {
                return Err(invalid(k("metric"), format!("{m:?} is not a metric name")));
            }
            m
        };
        out.push(QuantitySpec {
            key,
            quantity,
            path,
            labels: q.labels.unwrap_or_default(),
            unit,
            scale,
        });
    }
    Ok(out)
}

fn build_http(
    i: usize,
    url: &str,
    timeout: Duration,
    method: Option<String>,
    body: Option<String>,
    common: MeterCommonConfig,
) -> Result<HttpSpec, ConfigError> {
    let url = parse_http_url(url).map_err(|e| invalid(format!("sources[{i}].url"), e))?;
    if timeout.is_zero() {
        return Err(invalid(format!("sources[{i}].timeout"), "must be above 0"));
    }
    let method = match method.as_deref() {
        None | Some("GET") => reqwest::Method::GET,
        Some("POST") => reqwest::Method::POST,
        Some(other) => {
            return Err(invalid(
                format!("sources[{i}].method"),
                format!("{other:?} (expected \"GET\" or \"POST\")"),
            ))
        }
    };
    if body.is_some() && method != reqwest::Method::POST {
        return Err(invalid(
            format!("sources[{i}].body"),
            "only valid with method = \"POST\"",
        ));
    }
    let c = build_common(i, common, timeout)?;
    Ok(HttpSpec {
        url,
        method,
        body,
        headers: c.headers,
        timeout,
        interval: c.interval,
        tls: c.tls,
    })
}

fn build_http_json(i: usize, c: HttpJsonConfig) -> Result<HttpJsonSpec, ConfigError> {
    let meter = build_meter_id(i, &c.meter)?;
    let http = build_http(i, &c.url, c.timeout, c.method, c.body, c.common)?;
    let timestamp = match c.timestamp {
        None => None,
        Some(t) => {
            let format = match t.format.as_deref() {
                None | Some("rfc3339") => TimestampFormat::Rfc3339,
                Some("unix_s") => TimestampFormat::UnixSeconds,
                Some("unix_ms") => TimestampFormat::UnixMillis,
                Some(other) => {
                    return Err(invalid(
                        format!("sources[{i}].timestamp.format"),
                        format!("{other:?} (expected \"rfc3339\", \"unix_s\" or \"unix_ms\")"),
                    ))
                }
            };
            if !(t.pointer.is_empty() || t.pointer.starts_with('/')) {
                return Err(invalid(
                    format!("sources[{i}].timestamp.pointer"),
                    format!(
                        "{:?} is not a JSON Pointer (it must start with /)",
                        t.pointer
                    ),
                ));
            }
            Some(TimestampSpec {
                pointer: t.pointer,
                format,
            })
        }
    };
    let quantities = build_quantities(i, c.quantities, true)?;
    Ok(HttpJsonSpec {
        meter,
        http,
        timestamp,
        quantities,
    })
}

fn build_prometheus_text(
    i: usize,
    c: PrometheusTextConfig,
) -> Result<PrometheusTextSpec, ConfigError> {
    let meter = build_meter_id(i, &c.meter)?;
    let http = build_http(i, &c.url, c.timeout, None, None, c.common)?;
    let quantities = build_quantities(i, c.quantities, false)?;
    Ok(PrometheusTextSpec {
        meter,
        http,
        quantities,
    })
}

/// An absolute `http`/`https` URL, or the reason it is not one.
fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (expected http or https)"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(url)
}

/// The machine's hostname: `/proc/sys/kernel/hostname`, else `$HOSTNAME`.
fn hostname() -> Option<String> {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned());
    from_proc
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
}

// ---- [spool] ----------------------------------------------------------------

/// `[spool]`: where batches wait, on disk, until every collector acknowledged
/// them. Without it (and with collectors configured) batches wait in memory
/// only, bounded by 64 MiB, and are lost on restart: the agent warns at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool directory, created if missing; one agent per directory.
    pub dir: PathBuf,
    /// The most bytes the spool keeps; when full, the oldest batches are dropped
    /// (and counted). Default 1 GiB; at least 16 KiB.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// `"always"` (default): each batch is synced to disk before it is sent;
    /// `"never"`: left to the page cache (survives a killed agent, not a power cut).
    #[serde(default)]
    pub fsync: Fsync,
}

fn default_spool_max_bytes() -> u64 {
    crate::spool::DEFAULT_MAX_BYTES
}

fn build_spool(c: Option<SpoolConfig>, no_collectors: bool) -> Result<SpoolSpec, ConfigError> {
    let Some(c) = c else {
        return Ok(SpoolSpec {
            storage: Storage::Memory,
            max_bytes: crate::spool::DEFAULT_MEMORY_MAX_BYTES,
        });
    };
    if no_collectors {
        return Err(invalid(
            "spool",
            "no [[collectors]] are configured, so there is nothing to spool",
        ));
    }
    if c.dir.as_os_str().is_empty() {
        return Err(invalid("spool.dir", "empty path"));
    }
    if c.max_bytes < crate::spool::MIN_MAX_BYTES {
        return Err(invalid(
            "spool.max_bytes",
            format!(
                "{} is below the minimum of {}",
                c.max_bytes,
                crate::spool::MIN_MAX_BYTES
            ),
        ));
    }
    Ok(SpoolSpec {
        storage: Storage::Disk {
            dir: c.dir,
            fsync: c.fsync,
        },
        max_bytes: c.max_bytes,
    })
}

// ---- end of [spool] ---------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<RuntimeConfig, String> {
        AgentConfig::from_toml(text)
            .and_then(AgentConfig::build)
            .map_err(|e| e.to_string())
    }

    fn token_file(content: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), content).unwrap();
        f
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = build("[[sources]]\ntype = \"nvml\"\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9101".parse().unwrap());
        assert_eq!(c.interval, Duration::from_secs(1));
        assert!(!c.node.is_empty());
        assert!(c.collectors.is_empty());
        assert_eq!(
            c.sources,
            vec![SourceSpec::Nvml(NvmlSpec {
                library: NvmlLibrary::System
            })]
        );
    }

    #[test]
    fn empty_config_is_valid() {
        let c = build("").unwrap();
        assert!(c.sources.is_empty());
    }

    #[test]
    fn full_config_builds() {
        let tok = token_file("  s3cret\n");
        let text = format!(
            r#"
listen = "0.0.0.0:0"
interval = "200ms"
node = "r12-n03"
[[collectors]]
url = "http://collector-a:9400"
token_file = "{}"
[[sources]]
type = "nvml"
library = "/opt/libnvidia-ml.so.1"
[[sources]]
type = "redfish"
meter = "pdu-r12-a"
url = "https://pdu-r12-a/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"
timeout = "500ms"
"#,
            tok.path().display()
        );
        let c = build(&text).unwrap();
        assert_eq!(c.interval, Duration::from_millis(200));
        assert_eq!(c.node, "r12-n03");
        assert_eq!(c.collectors[0].token, "s3cret");
        assert_eq!(c.collectors[0].timeout, Duration::from_secs(5));
        assert_eq!(
            c.sources[0],
            SourceSpec::Nvml(NvmlSpec {
                library: NvmlLibrary::Path("/opt/libnvidia-ml.so.1".into())
            })
        );
        match &c.sources[1] {
            SourceSpec::Redfish(r) => {
                assert_eq!(r.meter, "pdu-r12-a");
                assert_eq!(r.timeout, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{:?}", c.collectors[0]).contains("s3cret"));
    }

    #[test]
    fn redfish_timeout_defaults_to_2s() {
        let c = build("[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/x\"\n")
            .unwrap();
        match &c.sources[0] {
            SourceSpec::Redfish(r) => assert_eq!(r.timeout, Duration::from_secs(2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_url_names_the_key() {
        let err = build(
            "[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"/redfish/v1\"\n",
        )
        .unwrap_err();
        assert_eq!(err, "sources[1].url: relative URL without a base");
    }

    #[test]
    fn non_http_url_is_refused() {
        let err = build("[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"ftp://h/x\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("sources[0].url: unsupported scheme"),
            "{err}"
        );
    }

    #[test]
    fn missing_token_file_names_the_key() {
        let err =
            build("[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"/x\"\n").unwrap_err();
        assert_eq!(
            err,
            "collectors[0].token_file: cannot read /x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn empty_token_is_refused() {
        let tok = token_file(" \n");
        let err = build(&format!(
            "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n",
            tok.path().display()
        ))
        .unwrap_err();
        assert!(
            err.starts_with("collectors[0].token_file: ") && err.ends_with("holds an empty token"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_meter_ids_are_refused() {
        let err = build(
            "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/a\"\n\
             [[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/b\"\n",
        )
        .unwrap_err();
        assert_eq!(err, "sources[1].meter: duplicate meter id \"m\"");
    }

    #[test]
    fn second_nvml_source_is_refused() {
        let err =
            build("[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"nvml\"\n").unwrap_err();
        assert_eq!(err, "sources[1].type: only one nvml source is allowed");
    }

    #[test]
    fn short_interval_is_refused() {
        let err = build("interval = \"50ms\"\n").unwrap_err();
        assert_eq!(err, "interval: 50ms is shorter than the minimum of 100ms");
        assert!(build("interval = \"100ms\"\n").is_ok());
    }

    #[test]
    fn bad_listen_is_refused() {
        let err = build("listen = \"localhost\"\n").unwrap_err();
        assert!(err.starts_with("listen: "), "{err}");
    }

    #[test]
    fn empty_node_is_refused() {
        assert_eq!(build("node = \" \"\n").unwrap_err(), "node: empty");
    }

    #[test]
    fn type_error_names_the_key() {
        let err = build("interval = 5\n").unwrap_err();
        assert!(err.contains("interval"), "{err}");
        let err = build("[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h\"\ntimeout = \"soon\"\n")
            .unwrap_err();
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = build("listne = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = build("[[sources]]\ntype = \"nvml\"\nlibary = \"/x\"\n").unwrap_err();
        assert!(err.contains("libary"), "{err}");
    }

    #[test]
    fn unknown_source_type_is_refused() {
        let err = build("[[sources]]\ntype = \"snmp\"\n").unwrap_err();
        assert!(err.contains("snmp"), "{err}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = build("[[sources]]\ntype = \"redfish\"\nurl = \"http://h\"\n").unwrap_err();
        assert!(
            err.contains("missing key `meter` (required for type = \"redfish\")"),
            "{err}"
        );
        let err = build("[[sources]]\ntype = \"nvml\"\nurl = \"http://h\"\n").unwrap_err();
        assert!(
            err.contains("key `url` is not valid for type = \"nvml\""),
            "{err}"
        );
    }

    #[test]
    fn source_type_errors_point_at_the_line() {
        let err = build(
            "[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h\"\ntimeout = 3\n",
        )
        .unwrap_err();
        assert!(err.contains("line 7"), "{err}");
        assert!(err.contains("timeout = 3"), "{err}");
    }

    #[test]
    fn spool_section_builds_and_names_bad_keys() {
        let tok = token_file("t");
        let base = format!(
            "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n",
            tok.path().display()
        );
        let c = build(&base).unwrap();
        assert_eq!(c.spool.storage, Storage::Memory);
        let c = build(&format!("{base}[spool]\ndir = \"/var/lib/dcwatt/spool\"\n")).unwrap();
        assert_eq!(
            c.spool,
            SpoolSpec {
                storage: Storage::Disk {
                    dir: "/var/lib/dcwatt/spool".into(),
                    fsync: Fsync::Always
                },
                max_bytes: 1 << 30
            }
        );
        let c = build(&format!(
            "{base}[spool]\ndir = \"/s\"\nmax_bytes = 65536\nfsync = \"never\"\n"
        ))
        .unwrap();
        assert_eq!(c.spool.max_bytes, 65536);
        assert!(matches!(
            c.spool.storage,
            Storage::Disk {
                fsync: Fsync::Never,
                ..
            }
        ));
        assert_eq!(
            build(&format!("{base}[spool]\ndir = \"/s\"\nmax_bytes = 10\n")).unwrap_err(),
            "spool.max_bytes: 10 is below the minimum of 16384"
        );
        assert_eq!(
            build(&format!("{base}[spool]\ndir = \"\"\n")).unwrap_err(),
            "spool.dir: empty path"
        );
        let err = build(&format!(
            "{base}[spool]\ndir = \"/s\"\nfsync = \"sometimes\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("fsync") && err.contains("sometimes"), "{err}");
        let err = build(&format!("{base}[spool]\ndri = \"/s\"\n")).unwrap_err();
        assert!(err.contains("dri"), "{err}");
        assert_eq!(
            build("[spool]\ndir = \"/s\"\n").unwrap_err(),
            "spool: no [[collectors]] are configured, so there is nothing to spool"
        );
    }

    // ---- meters ----

    #[test]
    fn redfish_discovery_with_session_auth_builds() {
        let pw = token_file("hunter2\n");
        let c = build(&format!(
            "[[sources]]\ntype = \"redfish\"\nmeter = \"pdu-a\"\nurl = \"https://pdu-a/redfish/v1\"\n\
             discover = true\ninterval = \"30s\"\ntimeout = \"40s\"\nauth = \"session\"\n\
             username = \"dcwatt\"\npassword_file = {:?}\n",
            pw.path()
        ))
        .unwrap();
        let SourceSpec::Redfish(r) = &c.sources[0] else {
            panic!("{:?}", c.sources)
        };
        assert!(r.discover);
        assert_eq!(r.interval, Some(Duration::from_secs(30)));
        assert_eq!(
            r.auth,
            RedfishAuth::Session {
                username: "dcwatt".into(),
                password: "hunter2".into()
            }
        );
        assert!(!format!("{r:?}").contains("hunter2"), "password redacted");
    }

    #[test]
    fn redfish_meter_keys_are_checked() {
        let base = "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/x\"\n";
        for (extra, expected) in [
            ("username = \"u\"\n", "sources[0].password_file: missing"),
            ("auth = \"session\"\n", "sources[0].username: missing"),
            (
                "ca_file = \"/nonexistent/ca.pem\"\n",
                "sources[0].ca_file: cannot read",
            ),
            (
                "interval = \"1ms\"\n",
                "sources[0].interval: 1ms is shorter",
            ),
            (
                "headers = { a = \"b\" }\n",
                "key `headers` is not valid for type = \"redfish\"",
            ),
            (
                "power = { pointer = \"/p\", unit = \"W\" }\n",
                "key `power` is not valid",
            ),
            ("tls_insecure_skip_verify = \"yes\"\n", "invalid type"),
        ] {
            let err = build(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = build("[[sources]]\ntype = \"nvml\"\ninterval = \"1s\"\n").unwrap_err();
        assert!(
            err.contains("key `interval` is not valid for type = \"nvml\""),
            "{err}"
        );
        let c = build(&format!("{base}tls_insecure_skip_verify = true\n")).unwrap();
        let SourceSpec::Redfish(r) = &c.sources[0] else {
            panic!()
        };
        assert!(r.tls.insecure_skip_verify);
    }

    #[test]
    fn prometheus_text_keys_are_checked() {
        let base = "[[sources]]\ntype = \"prometheus_text\"\nmeter = \"ups\"\nurl = \"http://h/metrics\"\n";
        let c = build(&format!(
            "{base}energy = {{ metric = \"upsOutputEnergy\", labels = {{ line = \"1\" }}, unit = \"kWh\" }}\n"
        ))
        .unwrap();
        let SourceSpec::PrometheusText(p) = &c.sources[0] else {
            panic!()
        };
        assert_eq!(p.quantities[0].quantity, Quantity::EnergyJoules);
        assert_eq!(p.quantities[0].labels["line"], "1");
        let c = build(&format!(
            "{base}water_volume = {{ metric = \"makeup_water_gallons_total\", unit = \"gal\" }}\n"
        ))
        .unwrap();
        let SourceSpec::PrometheusText(p) = &c.sources[0] else {
            panic!()
        };
        assert_eq!(p.quantities[0].quantity, Quantity::WaterVolumeCubicMeters);
        assert_eq!(p.quantities[0].unit.to_si(1.0), 3.785_411_784e-3);
        for (extra, expected) in [
            (
                "power = { metric = \"9x\", unit = \"W\" }\n",
                "sources[0].power.metric: \"9x\" is not a metric name",
            ),
            (
                "power = { pointer = \"/p\", unit = \"W\" }\n",
                "sources[0].power.pointer: not valid",
            ),
            (
                "method = \"POST\"\npower = { metric = \"p\", unit = \"W\" }\n",
                "key `method` is not valid",
            ),
            (
                "coolant_flow = { metric = \"f\", unit = \"W\" }\n",
                "not a unit of coolant_flow",
            ),
            (
                "water_volume = { metric = \"w\", unit = \"L/min\" }\n",
                "sources[0].water_volume.unit: \"L/min\" is not a unit of water_volume (expected a unit convertible to m3)",
            ),
        ] {
            let err = build(&format!("{base}{extra}")).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn meter_ids_are_unique_across_types() {
        let err = build(
            "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/a\"\n\
             [[sources]]\ntype = \"http_json\"\nmeter = \"m\"\nurl = \"http://h/b\"\n\
             power = { pointer = \"/p\", unit = \"W\" }\n",
        )
        .unwrap_err();
        assert!(
            err.contains("sources[1].meter: duplicate meter id \"m\""),
            "{err}"
        );
    }
}
