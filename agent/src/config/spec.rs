//! The validated configuration the agent runs with: what
//! [`AgentConfig::build`](super::AgentConfig::build) gives.

use super::*;

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
    /// Shortest time between two steady-state requests (zero: each batch at once).
    pub ship_interval: Duration,
    /// How batches are encoded on the wire.
    pub encoding: Encoding,
}

impl std::fmt::Debug for Collector {
    // The token stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("url", &self.url.as_str())
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("ship_interval", &self.ship_interval)
            .field("encoding", &self.encoding)
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
    /// Ship module power and integrated energy (`Entity::Module`).
    pub ship_modules: bool,
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
