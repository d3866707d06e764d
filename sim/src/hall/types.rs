//! The hall's vocabulary: meters, nodes, entities of the truth, readings and
//! errors. Plain data; reads and writes nothing.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// What a meter measures, as the collector's site config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterRole {
    /// The facility input (utility feed).
    Facility,
    /// IT load, measured at PDU output (PUE category 2).
    It,
    /// The cooling plant.
    Cooling,
}

/// One served meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterInfo {
    /// Meter id (`utility-a`, `pdu-r1`, `cooling-1`).
    pub id: String,
    /// What it measures.
    pub role: MeterRole,
    /// The rack a PDU feeds (from 1); `None` for other meters.
    pub rack: Option<u32>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `r{R}-n{N}`, both from 1.
    pub name: String,
    /// The rack, from 1.
    pub rack: u32,
    /// Its GPUs' UUIDs, by NVML index.
    pub gpus: Vec<String>,
}

/// Something whose energy (or water) the truth knows: `meter:ID`,
/// `gpu:UUID` or `water:ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entity {
    /// A served meter, by id.
    Meter(String),
    /// A GPU, by UUID.
    Gpu(String),
    /// A water meter, by id: its truth is a volume, m³.
    Water(String),
}

impl FromStr for Entity {
    type Err = HallError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("meter", id)) if !id.is_empty() => Ok(Self::Meter(id.to_owned())),
            Some(("gpu", uuid)) if !uuid.is_empty() => Ok(Self::Gpu(uuid.to_owned())),
            Some(("water", id)) if !id.is_empty() => Ok(Self::Water(id.to_owned())),
            _ => Err(HallError::BadEntity(s.to_owned())),
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Meter(id) => write!(f, "meter:{id}"),
            Self::Gpu(uuid) => write!(f, "gpu:{uuid}"),
            Self::Water(id) => write!(f, "water:{id}"),
        }
    }
}

/// What the hall refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HallError {
    /// The topology cannot be simulated.
    #[error("invalid hall: {0}")]
    Config(String),
    /// No meter has this id.
    #[error("unknown meter {0:?}")]
    UnknownMeter(String),
    /// No GPU has this UUID.
    #[error("unknown gpu {0:?}")]
    UnknownGpu(String),
    /// Neither `meter:ID`, `gpu:UUID` nor `water:ID`.
    #[error("entity {0:?} is neither meter:ID, gpu:UUID nor water:ID")]
    BadEntity(String),
    /// `from_ms` after `to_ms`.
    #[error("from_ms {from_ms} is after to_ms {to_ms}")]
    Reversed {
        /// Interval start, Unix ms.
        from_ms: i64,
        /// Interval end, Unix ms.
        to_ms: i64,
    },
    /// The instant is before the oldest recorded tick.
    #[error("{at_ms} is before the recorded history, which starts at {oldest_ms}")]
    BeforeHistory {
        /// The instant asked for, Unix ms.
        at_ms: i64,
        /// The oldest recorded instant, Unix ms.
        oldest_ms: i64,
    },
}

/// Powers at one instant, W.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerSummary {
    /// The facility meter.
    pub facility_watts: f64,
    /// All rack PDUs.
    pub it_watts: f64,
    /// The cooling meter.
    pub cooling_watts: f64,
    /// All GPUs.
    pub gpu_watts: f64,
}

/// A meter as served at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterReading {
    /// Power, W.
    pub power_watts: f64,
    /// The served energy counter (since its last reset), J.
    pub energy_joules: f64,
}

/// The water meter as served at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaterReading {
    /// Flow, m³/s.
    pub flow_cubic_meters_per_second: f64,
    /// The served volume counter (since its last reset), m³.
    pub volume_cubic_meters: f64,
}
