//! The agent's TOML configuration: the serde shape ([`AgentConfig`]), its
//! validation ([`AgentConfig::build`]) and the runtime result ([`RuntimeConfig`]).
//!
//! Every error names the key that is wrong (`sources[1].url: …`), so that
//! `dcwatt-agent --check-config FILE` tells an operator what to fix.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

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
    /// One Redfish `PowerDistributionMetrics` resource (a PDU, a feed, a CDU…).
    Redfish(RedfishConfig),
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
    /// The meter's id, unique in this agent; the collector's site config gives it a role.
    pub meter: String,
    /// Absolute URL of the resource, e.g.
    /// `https://pdu-r12-a/redfish/v1/PowerEquipment/RackPDUs/1/Metrics`.
    pub url: String,
    /// Timeout of one GET, humantime. Default `2s`.
    pub timeout: Duration,
}

/// The closed set of `type` values.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SourceType {
    Nvml,
    Redfish,
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
}

impl TryFrom<RawSource> for SourceConfig {
    type Error = String;

    fn try_from(r: RawSource) -> Result<Self, String> {
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
                Ok(Self::Nvml(NvmlConfig { library: r.library }))
            }
            SourceType::Redfish => {
                if r.library.is_some() {
                    return Err(not_for("library", "redfish"));
                }
                Ok(Self::Redfish(RedfishConfig {
                    meter: r.meter.ok_or_else(|| missing("meter", "redfish"))?,
                    url: r.url.ok_or_else(|| missing("url", "redfish"))?,
                    timeout: r.timeout.unwrap_or_else(default_redfish_timeout),
                }))
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
    /// Read one Redfish meter.
    Redfish(RedfishSpec),
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
    /// The meter's id.
    pub meter: String,
    /// The resource's absolute URL.
    pub url: Url,
    /// Timeout of one GET.
    pub timeout: Duration,
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
                SourceConfig::Redfish(r) => {
                    let spec = build_redfish(i, r)?;
                    if !meters.insert(spec.meter.clone()) {
                        return Err(invalid(
                            format!("sources[{i}].meter"),
                            format!("duplicate meter id {:?}", spec.meter),
                        ));
                    }
                    SourceSpec::Redfish(spec)
                }
            };
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

fn build_redfish(i: usize, r: RedfishConfig) -> Result<RedfishSpec, ConfigError> {
    let meter = r.meter.trim().to_owned();
    if meter.is_empty() {
        return Err(invalid(format!("sources[{i}].meter"), "empty"));
    }
    let url = parse_http_url(&r.url).map_err(|e| invalid(format!("sources[{i}].url"), e))?;
    if r.timeout.is_zero() {
        return Err(invalid(format!("sources[{i}].timeout"), "must be above 0"));
    }
    Ok(RedfishSpec {
        meter,
        url,
        timeout: r.timeout,
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
}
