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

use dcwatt_wire::binary::Encoding;
use dcwatt_wire::Quantity;

use crate::sources::meter::{Dimension, TlsSpec, Unit};
use crate::spool::{Fsync, SpoolSpec, Storage};

mod meters;
mod spec;
#[cfg(test)]
mod tests;

use meters::*;
pub use spec::*;

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
    /// Shortest time between two steady-state requests to this collector,
    /// humantime, at most [`MAX_SHIP_INTERVAL`]. Default `0s`: each tick's
    /// batch is sent at once. Above the agent's `interval`, the batches spooled
    /// meanwhile go as one merged request (`first_seq..=seq`), so a collector
    /// takes one request and one durable write per agent per `ship_interval`.
    #[serde(default, with = "humantime_serde")]
    pub ship_interval: Option<Duration>,
    /// How batches are encoded: `json` (default, every collector reads it)
    /// or `binary` (the compact form, cheaper for the collector to decode;
    /// needs a collector that reads it: upgrade collectors first).
    pub encoding: Option<String>,
}

/// The longest `[[collectors]] ship_interval`: well below the collector's
/// default `stale_after` (30 s), so the live view never goes stale between two
/// requests.
pub const MAX_SHIP_INTERVAL: Duration = Duration::from_secs(15);

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
    /// Ship each superchip module's power and integrated energy to the
    /// collectors (`Entity::Module`). Default false: collectors before the
    /// entity catch-all refuse such batches (`docs/operations.md`).
    pub ship_modules: bool,
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
    ship_modules: Option<bool>,
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
                Ok(Self::Nvml(NvmlConfig {
                    library: r.library,
                    ship_modules: r.ship_modules.unwrap_or(false),
                }))
            }
            SourceType::Redfish => {
                let ty = "redfish";
                if r.library.is_some() {
                    return Err(not_for("library", ty));
                }
                if r.ship_modules.is_some() {
                    return Err(not_for("ship_modules", ty));
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
                    ("ship_modules", r.ship_modules.is_some()),
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
    /// String values may name environment variables (`${NODE_NAME}`; `$${` is a
    /// literal `${`): see `dcwatt_confenv`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        dcwatt_confenv::from_toml(text).map_err(|e| match e {
            dcwatt_confenv::Error::Toml(e) => ConfigError::Parse(e),
            dcwatt_confenv::Error::Env { key, reason } => invalid(key, reason),
        })
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
        check_node_id(&node)?;

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
    let ship_interval = c.ship_interval.unwrap_or(Duration::ZERO);
    if ship_interval > MAX_SHIP_INTERVAL {
        return Err(invalid(
            format!("collectors[{i}].ship_interval"),
            format!(
                "{} is above the longest accepted, {}",
                humantime_serde::re::humantime::format_duration(ship_interval),
                humantime_serde::re::humantime::format_duration(MAX_SHIP_INTERVAL)
            ),
        ));
    }
    let encoding = match c.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("binary") => Encoding::Binary,
        Some(other) => {
            return Err(invalid(
                format!("collectors[{i}].encoding"),
                format!("{other:?} is not one of \"json\", \"binary\""),
            ))
        }
    };
    Ok(Collector {
        url,
        token,
        timeout: c.timeout,
        ca_pem: ca,
        identity_pem: identity,
        ship_interval,
        encoding,
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
    Ok(NvmlSpec {
        library,
        ship_modules: n.ship_modules,
    })
}

/// The node is the agent's id towards collectors: refuse here what a collector
/// would refuse (1 to 128 of `[A-Za-z0-9._:-]`), rather than ship batches that
/// every collector answers 401.
fn check_node_id(node: &str) -> Result<(), ConfigError> {
    if node.is_empty() || node.len() > 128 {
        return Err(invalid(
            "node",
            format!("{node:?} must be 1 to 128 characters (it is the agent's id)"),
        ));
    }
    if let Some(c) = node
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
    {
        return Err(invalid(
            "node",
            format!(
                "{node:?} contains {c:?}: an agent id may only contain ASCII letters, digits, '-', '_', '.', ':'"
            ),
        ));
    }
    Ok(())
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
