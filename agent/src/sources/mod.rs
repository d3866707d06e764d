//! The closed set of sources the agent reads, and what one collection yields.
//!
//! Each source turns one device protocol into [`dcwatt_wire::Reading`]s in SI
//! units, plus its own health: [`Collected::error`] for the source as a whole,
//! [`Collected::gpus`] for the GPUs an NVML source enumerated.

pub mod http_json;
pub mod http_meter;
pub mod meter;
pub mod nvml;
pub mod prometheus_text;
pub mod redfish;

use std::time::Duration;

pub use dcwatt_wire::time::now_ms;
use dcwatt_wire::{GpuInfo, Reading};

use crate::config::SourceSpec;
use http_json::HttpJsonSource;
use meter::MeterStatus;
use nvml::NvmlSource;
use prometheus_text::PrometheusTextSource;
use redfish::RedfishSource;

/// One configured source.
#[derive(Debug)]
pub enum Source {
    /// The node's GPUs through NVML (`type = "nvml"`).
    Nvml(NvmlSource),
    /// One Redfish meter, or a discovered service (`type = "redfish"`).
    Redfish(RedfishSource),
    /// One JSON meter (`type = "http_json"`).
    HttpJson(HttpJsonSource),
    /// One meter in a Prometheus exposition (`type = "prometheus_text"`).
    PrometheusText(PrometheusTextSource),
}

/// What one collection of one source yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// The values read, SI units, each with its own read instant.
    pub readings: Vec<Reading>,
    /// The GPUs seen, up or lost (NVML only).
    pub gpus: Vec<GpuStatus>,
    /// Set when the source as a whole failed this time (`dcwatt_source_up 0`).
    pub error: Option<String>,
    /// Each meter this source read, up or down (meter sources only).
    pub meters: Vec<MeterStatus>,
    /// Superchip modules and their power, read once per module (NVML only;
    /// on the agent's `/metrics`; shipped as `Entity::Module` only with `ship_modules`).
    pub modules: Vec<ModuleStatus>,
}

/// One superchip module (a Grace CPU with its GPUs and LPDDR) as NVML
/// reports it through the module power scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleStatus {
    /// The module's id (`docs/nvml.md`, "Module power").
    pub id: String,
    /// NVML indexes of its GPUs, ascending.
    pub gpus: Vec<u32>,
    /// 1 s average power, watts; `None` when no GPU of it answered.
    pub power_w: Option<f64>,
    /// Instantaneous power, watts.
    pub power_instant_w: Option<f64>,
    /// Energy integrated by the agent from `power_w` since it started
    /// (NVML has no module energy counter), joules.
    pub energy_j: f64,
}

/// One GPU's identity and whether it answered this collection.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuStatus {
    /// Index, UUID and model.
    pub info: GpuInfo,
    /// False when NVML says the GPU is lost (or it failed to answer at all).
    pub up: bool,
    /// Agent-only values (`/metrics` only, not shipped).
    pub detail: nvml::detail::GpuDetail,
}

impl Collected {
    /// A successful collection.
    pub fn ok(readings: Vec<Reading>) -> Self {
        Self {
            readings,
            ..Self::default()
        }
    }

    /// A failed collection.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Why a source could not be set up at all (a configuration or OS problem, not
/// a device failure: those are data).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The NVML worker thread could not be started.
    #[error("cannot start the nvml thread: {0}")]
    NvmlThread(#[source] std::io::Error),
    /// A meter's HTTP client could not be built (TLS setup, CA file).
    #[error("meter {meter}: {source}")]
    Meter {
        /// The meter id (or prefix).
        meter: String,
        /// What failed.
        source: meter::ClientError,
    },
}

impl Source {
    /// Builds a source from its validated config. `interval` bounds sources that
    /// have no timeout of their own (NVML).
    pub fn build(spec: SourceSpec, interval: Duration) -> Result<Self, SourceError> {
        let meter_err = |meter: &str| {
            let meter = meter.to_owned();
            move |source| SourceError::Meter { meter, source }
        };
        let warn_insecure = |meter: &str, tls: &meter::TlsSpec| {
            if tls.insecure_skip_verify {
                tracing::warn!(
                    meter = %meter,
                    "TLS VERIFICATION DISABLED (tls_insecure_skip_verify = true): anyone on the path can forge this meter's readings."
                );
            }
        };
        match spec {
            SourceSpec::Nvml(n) => Ok(Self::Nvml(NvmlSource::start(n, interval)?)),
            SourceSpec::Redfish(r) => {
                warn_insecure(&r.meter, &r.tls);
                let e = meter_err(&r.meter);
                RedfishSource::new(r).map(Self::Redfish).map_err(e)
            }
            SourceSpec::HttpJson(r) => {
                warn_insecure(&r.meter, &r.http.tls);
                let e = meter_err(&r.meter);
                HttpJsonSource::new(r).map(Self::HttpJson).map_err(e)
            }
            SourceSpec::PrometheusText(r) => {
                warn_insecure(&r.meter, &r.http.tls);
                let e = meter_err(&r.meter);
                PrometheusTextSource::new(r)
                    .map(Self::PrometheusText)
                    .map_err(e)
            }
        }
    }

    /// The `source` label: `nvml`, or `<type>:<meter>` (`<type>:<prefix>` for
    /// Redfish discovery).
    pub fn label(&self) -> String {
        match self {
            Self::Nvml(_) => "nvml".to_owned(),
            Self::Redfish(r) => format!("redfish:{}", r.meter()),
            Self::HttpJson(r) => format!("http_json:{}", r.http.meter()),
            Self::PrometheusText(r) => format!("prometheus_text:{}", r.http.meter()),
        }
    }

    /// The single meter this source reads, if it reads exactly one configured meter.
    pub fn meter(&self) -> Option<&str> {
        match self {
            Self::Nvml(_) => None,
            Self::Redfish(r) if r.discovers() => None,
            Self::Redfish(r) => Some(r.meter()),
            Self::HttpJson(HttpJsonSource { http, .. })
            | Self::PrometheusText(PrometheusTextSource { http, .. }) => Some(http.meter()),
        }
    }

    /// True for facility-meter sources (read on their own schedule).
    pub fn is_meter_source(&self) -> bool {
        !matches!(self, Self::Nvml(_))
    }

    /// The meters this source reads now (empty for NVML).
    pub fn meters(&self) -> Vec<String> {
        match self {
            Self::Nvml(_) => Vec::new(),
            Self::Redfish(r) => r.meters(),
            Self::HttpJson(HttpJsonSource { http, .. })
            | Self::PrometheusText(PrometheusTextSource { http, .. }) => {
                vec![http.meter().to_owned()]
            }
        }
    }

    /// This source's own interval, when it has one.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Self::Nvml(_) => None,
            Self::Redfish(r) => r.interval(),
            Self::HttpJson(HttpJsonSource { http, .. })
            | Self::PrometheusText(PrometheusTextSource { http, .. }) => http.interval(),
        }
    }

    /// How long one collection may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Nvml(n) => n.timeout(),
            Self::Redfish(r) => r.timeout(),
            Self::HttpJson(HttpJsonSource { http, .. })
            | Self::PrometheusText(PrometheusTextSource { http, .. }) => http.timeout(),
        }
    }

    /// Collects once. Never fails: a failure is [`Collected::error`].
    pub async fn collect(&self) -> Collected {
        match self {
            Self::Nvml(n) => n.collect().await,
            Self::Redfish(r) => r.collect().await,
            Self::HttpJson(r) => r.collect().await,
            Self::PrometheusText(r) => r.collect().await,
        }
    }
}

/// An error and its causes, joined by `: ` (reqwest's own text omits the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        cur = c.source();
    }
    s
}
