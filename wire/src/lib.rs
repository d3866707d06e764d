//! # dcwatt-wire: the agent ↔ collector contract
//!
//! An agent sends a [`Batch`] as JSON in the body of `POST /v1/batches`; the
//! collector answers [`BatchAck`] (2xx) or [`ErrorBody`] (4xx/5xx). This crate
//! holds the types and their serde shape only: no I/O, no validation (that is
//! the collector's `ingest`), no async runtime.
//!
//! # Units
//! Every value is in an SI base unit, named by its [`Quantity`]: watts, joules,
//! degrees Celsius, ratio 0..=1, bytes, cubic metres. Timestamps are Unix milliseconds (UTC).
//!
//! # Layout
//! - [`Batch`]: one agent's readings from one or more collection ticks.
//! - [`Reading`]: one value of one quantity of one entity at one instant.
//! - [`Entity`], [`Quantity`]: what was measured, and what kind of value it is.
//! - [`GpuInfo`]: static facts about a GPU, so the collector can map GPUs to nodes.

use serde::{Deserialize, Serialize};

/// The batch format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// The path a collector accepts batches on.
pub const BATCHES_PATH: &str = "/v1/batches";

/// One agent's readings, sent as one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Format version; [`VERSION`].
    pub version: u32,
    /// The sending agent's id (its node name unless configured otherwise).
    pub agent: String,
    /// Per-agent sequence number, strictly increasing across the agent's
    /// lifetime, restarts included. The collector applies each `(agent, seq)` once.
    /// For a merged batch (catch-up after an outage), the last sequence number merged.
    pub seq: u64,
    /// For a merged batch, the first sequence number merged: the batch stands for
    /// every batch in `first_seq..=seq`. Absent for a single batch (`= seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    /// The node the agent runs on.
    pub node: String,
    /// When the agent made the batch, Unix milliseconds.
    pub created_ms: i64,
    /// The GPUs this node has, as NVML reports them. Empty on meter gateways.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// The readings, in collection order.
    pub readings: Vec<Reading>,
}

/// Static facts about one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    /// NVML's UUID (`GPU-…`), the GPU's identity everywhere in dcwatt.
    pub uuid: String,
    /// NVML's device index on this node.
    pub index: u32,
    /// The model name (`NVIDIA GB300`, …).
    pub model: String,
}

/// One value of one quantity of one entity at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// When the value was measured, Unix milliseconds.
    pub ts_ms: i64,
    /// What was measured.
    pub entity: Entity,
    /// What kind of value it is, and its unit.
    pub quantity: Quantity,
    /// The value, in the unit its quantity names.
    pub value: f64,
}

/// What a reading is about. Serialized as a one-key object: `{"gpu": "GPU-…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// A GPU, by NVML UUID.
    Gpu(String),
    /// A facility or IT meter, by the id configured for it (`meter = "…"`).
    Meter(String),
    /// A node, by name.
    Node(String),
}

/// The kind of a reading's value; the name carries the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Power, watts (NVML: the 1 s average on Ampere and newer).
    PowerWatts,
    /// An energy counter, joules since the counter's own zero. It may reset
    /// (a decrease): the collector treats the new value as energy since the reset.
    EnergyJoules,
    /// Core (GPU) or meter temperature, degrees Celsius.
    TemperatureCelsius,
    /// GPU memory temperature, degrees Celsius.
    MemoryTemperatureCelsius,
    /// GPU busy ratio, 0..=1.
    UtilizationRatio,
    /// Memory-bandwidth busy ratio, 0..=1.
    MemoryUtilizationRatio,
    /// Memory in use, bytes.
    MemoryUsedBytes,
    /// Memory installed, bytes.
    MemoryTotalBytes,
    /// The enforced power limit, watts.
    PowerLimitWatts,
    /// 1 when the GPU answers NVML, 0 when NVML says it is lost.
    GpuUp,
    /// The GPU's own slowdown temperature threshold, degrees Celsius.
    TemperatureSlowdownCelsius,
    /// The GPU's own shutdown temperature threshold, degrees Celsius.
    TemperatureShutdownCelsius,
    /// The GPU's maximum operating temperature, degrees Celsius.
    TemperatureGpuMaxCelsius,
    /// The GPU memory's maximum operating temperature, degrees Celsius.
    TemperatureMemoryMaxCelsius,
    /// 1 while NVML reports the `sw_power_cap` clock-event reason, else 0.
    ThrottleSwPowerCap,
    /// 1 while NVML reports `hw_slowdown` (thermal or power brake), else 0.
    ThrottleHwSlowdown,
    /// 1 while NVML reports `hw_thermal_slowdown`, else 0.
    ThrottleHwThermalSlowdown,
    /// 1 while NVML reports `sw_thermal_slowdown`, else 0.
    ThrottleSwThermalSlowdown,
    /// 1 while NVML reports `hw_power_brake_slowdown`, else 0.
    ThrottleHwPowerBrakeSlowdown,
    /// Coolant temperature entering the load (CDU supply), degrees Celsius.
    CoolantSupplyTemperatureCelsius,
    /// Coolant temperature leaving the load (CDU return), degrees Celsius.
    CoolantReturnTemperatureCelsius,
    /// Coolant flow, cubic metres per second.
    CoolantFlowCubicMetersPerSecond,
    /// Heat carried away by the coolant, watts.
    HeatRemovedWatts,
    /// A water volume counter (site water input: make-up, humidification,
    /// adiabatic cooling), cubic metres since the counter's own zero. It may
    /// reset like an energy counter: a decrease is a reset, the new value the
    /// volume since it.
    WaterVolumeCubicMeters,
    /// The GPU's default power limit, watts (what a power cap below it is
    /// judged against: a GPU capped below its default delivers less).
    PowerDefaultLimitWatts,
    /// A quantity this version does not know (sent by a newer agent): kept
    /// decodable so that one new quantity does not reject a whole batch.
    #[serde(other)]
    Other,
}

/// The collector's answer to an accepted batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// Readings applied (0 for a duplicate).
    pub accepted: usize,
    /// True when this `(agent, seq)` had been applied before: nothing changed.
    pub duplicate: bool,
    /// The highest sequence number of this agent the collector has applied,
    /// after this request. An agent may drop everything up to it for this collector.
    #[serde(default)]
    pub last_seq: u64,
}

/// The body of every error answer.
///
/// `409 Conflict` answers a merged batch whose range `first_seq..=seq` overlaps
/// what the collector has already applied (`last_seq` says up to where): the
/// agent re-sends from `last_seq + 1`. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, naming the field.
    pub error: String,
    /// On `409 Conflict`: the highest sequence number applied for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_json_shape_is_stable() {
        let r = Reading {
            ts_ms: 1_700_000_000_123,
            entity: Entity::Gpu("GPU-1".into()),
            quantity: Quantity::EnergyJoules,
            value: 12.5,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"ts_ms":1700000000123,"entity":{"gpu":"GPU-1"},"quantity":"energy_joules","value":12.5}"#
        );
        assert_eq!(serde_json::from_str::<Reading>(&json).unwrap(), r);
    }

    #[test]
    fn water_volume_is_snake_case_like_the_others() {
        let json = serde_json::to_string(&Quantity::WaterVolumeCubicMeters).unwrap();
        assert_eq!(json, r#""water_volume_cubic_meters""#);
        assert_eq!(
            serde_json::from_str::<Quantity>(&json).unwrap(),
            Quantity::WaterVolumeCubicMeters
        );
    }

    #[test]
    fn unknown_quantity_decodes_as_other() {
        let json = r#"{"ts_ms":1,"entity":{"meter":"m"},"quantity":"flux_capacitance","value":1}"#;
        let r: Reading = serde_json::from_str(json).unwrap();
        assert_eq!(r.quantity, Quantity::Other);
    }

    #[test]
    fn unknown_batch_field_is_rejected() {
        let json = r#"{"version":1,"agent":"a","seq":1,"node":"n","created_ms":1,"readings":[],"extra":1}"#;
        let err = serde_json::from_str::<Batch>(json).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
