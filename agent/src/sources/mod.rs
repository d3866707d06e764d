//! The closed set of sources the agent reads, and what one collection yields.
//!
//! Each source turns one device protocol into [`dcwatt_wire::Reading`]s in SI
//! units, plus its own health: [`Collected::error`] for the source as a whole,
//! [`Collected::gpus`] for the GPUs an NVML source enumerated.

pub mod nvml;
pub mod redfish;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcwatt_wire::{GpuInfo, Reading};

use crate::config::SourceSpec;
use nvml::NvmlSource;
use redfish::RedfishSource;

/// One configured source.
#[derive(Debug)]
pub enum Source {
    /// The node's GPUs through NVML (`type = "nvml"`).
    Nvml(NvmlSource),
    /// One Redfish meter (`type = "redfish"`).
    Redfish(RedfishSource),
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
    /// The Redfish HTTP client could not be built (TLS setup).
    #[error("redfish meter {meter}: cannot build http client: {source}")]
    Redfish {
        /// The meter id.
        meter: String,
        /// What failed.
        source: reqwest::Error,
    },
}

impl Source {
    /// Builds a source from its validated config. `interval` bounds sources that
    /// have no timeout of their own (NVML).
    pub fn build(spec: SourceSpec, interval: Duration) -> Result<Self, SourceError> {
        match spec {
            SourceSpec::Nvml(n) => Ok(Self::Nvml(NvmlSource::start(n, interval)?)),
            SourceSpec::Redfish(r) => {
                let meter = r.meter.clone();
                RedfishSource::new(r)
                    .map(Self::Redfish)
                    .map_err(|source| SourceError::Redfish { meter, source })
            }
        }
    }

    /// The `source` label: `nvml` or `redfish:<meter>`.
    pub fn label(&self) -> String {
        match self {
            Self::Nvml(_) => "nvml".to_owned(),
            Self::Redfish(r) => format!("redfish:{}", r.meter()),
        }
    }

    /// The meter this source reads, if it reads one.
    pub fn meter(&self) -> Option<&str> {
        match self {
            Self::Nvml(_) => None,
            Self::Redfish(r) => Some(r.meter()),
        }
    }

    /// How long one collection may take before it counts as failed.
    pub fn timeout(&self) -> Duration {
        match self {
            Self::Nvml(n) => n.timeout(),
            Self::Redfish(r) => r.timeout(),
        }
    }

    /// Collects once. Never fails: a failure is [`Collected::error`].
    pub async fn collect(&self) -> Collected {
        match self {
            Self::Nvml(n) => n.collect().await,
            Self::Redfish(r) => r.collect().await,
        }
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
