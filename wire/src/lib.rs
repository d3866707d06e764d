//! # dcwatt-wire: the agent ↔ collector contract
//!
//! An agent sends a [`Batch`] as JSON (or, when told to, in the compact
//! [`binary`] form) in the body of `POST /v1/batches`; the
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
//! - [`time`]: Unix-ms time shared by both binaries.
//! - [`binary`]: the compact binary form of a batch.

pub mod binary;
pub mod time;

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
    /// The superchip module (`Entity::Module` id) whose power scope holds
    /// this GPU, sent only by agents with `ship_modules = true` (collectors
    /// before this field refuse it: `deny_unknown_fields`). Absent: the
    /// GPU's module is not known, or not shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
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
///
/// Decoding is forward compatible: an object whose one key this version does
/// not know (an entity kind added later) decodes as [`Entity::Other`] with
/// that key, so that a collector ignores (and counts) such readings instead
/// of refusing the whole batch. Collectors before this catch-all refuse a
/// batch with an unknown entity: agents send [`Entity::Module`] only when
/// told to (see `docs/operations.md`, rollout order).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// A GPU, by NVML UUID.
    Gpu(String),
    /// A facility or IT meter, by the id configured for it (`meter = "…"`).
    Meter(String),
    /// A node, by name.
    Node(String),
    /// A superchip module (Grace-Blackwell: one Grace CPU, two GPUs, LPDDR),
    /// by the agent's module id (`sn-<board serial>`, `pci-<domain>`), unique
    /// within its node.
    Module(String),
    /// An entity kind this version does not know, by its key: decoded, never
    /// applied. Encodes as `{"<key>": null}`.
    Other(String),
}

impl Entity {
    /// The key it is encoded under, and its id (empty for [`Entity::Other`]).
    pub fn parts(&self) -> (&str, &str) {
        match self {
            Entity::Gpu(id) => ("gpu", id),
            Entity::Meter(id) => ("meter", id),
            Entity::Node(id) => ("node", id),
            Entity::Module(id) => ("module", id),
            Entity::Other(key) => (key, ""),
        }
    }
}

impl Serialize for Entity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Entity::Other(key) => map.serialize_entry(key, &())?,
            e => {
                let (key, id) = e.parts();
                map.serialize_entry(key, id)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Entity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entity;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with one key: gpu, meter, node or module")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entity, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<EntityKey>()? else {
                    return Err(A::Error::invalid_length(0, &self));
                };
                let entity = match key {
                    EntityKey::Gpu => Entity::Gpu(map.next_value()?),
                    EntityKey::Meter => Entity::Meter(map.next_value()?),
                    EntityKey::Node => Entity::Node(map.next_value()?),
                    EntityKey::Module => Entity::Module(map.next_value()?),
                    EntityKey::Other(key) => {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        Entity::Other(key)
                    }
                };
                if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(2, &self));
                }
                Ok(entity)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// An entity's key, decoded without allocating for the known ones (one
/// reading in a batch is one entity: this is the hot path of ingest).
enum EntityKey {
    Gpu,
    Meter,
    Node,
    Module,
    Other(String),
}

impl<'de> Deserialize<'de> for EntityKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = EntityKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an entity kind")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<EntityKey, E> {
                Ok(match key {
                    "gpu" => EntityKey::Gpu,
                    "meter" => EntityKey::Meter,
                    "node" => EntityKey::Node,
                    "module" => EntityKey::Module,
                    other => EntityKey::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_str(Visit)
    }
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
    /// GPM: the share of SMs busy over the agent's sample window, 0..=1
    /// (`NVML_GPM_METRIC_SM_UTIL`).
    SmActiveRatio,
    /// GPM: active warps against the SMs' maximum, 0..=1 (`…_SM_OCCUPANCY`).
    SmOccupancyRatio,
    /// GPM: the share of time any tensor pipe was busy, 0..=1 (`…_ANY_TENSOR_UTIL`).
    TensorActiveRatio,
    /// GPM: DRAM bandwidth used against the maximum, 0..=1 (`…_DRAM_BW_UTIL`).
    DramActiveRatio,
    /// A counter of the GPU's XID (critical error) events seen by the agent,
    /// every XID code together, since the agent started: it never decreases
    /// while the agent runs, and restarts from 0 with the agent (a decrease is
    /// a reset, the new value the count since it).
    XidErrorsTotal,
    /// Energy the agent integrated from power readings (not a device
    /// counter), joules since the agent started: a module's energy
    /// (`Entity::Module`). A decrease is a reset (agent restart).
    IntegratedEnergyJoules,
    /// Why the GPU is down, as a numeric code ([`DOWN_REASONS`]), sent with
    /// `gpu_up` 0 (absent while it is up). A code this version does not know
    /// means "down, for a reason not listed".
    GpuDownReasonCode,
    /// A quantity this version does not know (sent by a newer agent): kept
    /// decodable so that one new quantity does not reject a whole batch.
    #[serde(other)]
    Other,
}

/// The codes of [`Quantity::GpuDownReasonCode`]: `(code, agent reason)`,
/// the agent's reason being the `reason` label of its
/// `dcwatt_gpu_down_info` (the NVML error that put the GPU down, or
/// `no_answer` when NVML did not answer within the agent's timeout). Codes
/// are never reused; 0 is "a reason the agent could not name".
pub const DOWN_REASONS: &[(u32, &str)] = &[
    (0, "other"),
    (1, "gpu_lost"),
    (2, "reset_required"),
    (3, "unknown"),
    (4, "no_permission"),
    (5, "corrupted_inforom"),
    (6, "irq_issue"),
    (7, "insufficient_power"),
    (8, "lib_rm_version_mismatch"),
    (9, "operating_system"),
    (10, "uninitialized"),
    (11, "driver_not_loaded"),
    (12, "timeout"),
    (13, "no_answer"),
];

/// The code of an agent's down reason (0 for one not listed).
pub fn down_reason_code(reason: &str) -> u32 {
    DOWN_REASONS
        .iter()
        .find(|(_, r)| *r == reason)
        .map_or(0, |(c, _)| *c)
}

/// The agent's reason of a code, `None` for a code not listed (from a newer
/// agent) or a value that is not a whole number.
pub fn down_reason_of(value: f64) -> Option<&'static str> {
    if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0) {
        return None;
    }
    DOWN_REASONS
        .iter()
        .find(|(c, _)| f64::from(*c) == value)
        .map(|(_, r)| *r)
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
    fn entities_encode_as_before_and_unknown_kinds_decode_as_other() {
        for (e, json) in [
            (Entity::Gpu("GPU-1".into()), r#"{"gpu":"GPU-1"}"#),
            (Entity::Meter("m".into()), r#"{"meter":"m"}"#),
            (Entity::Node("n".into()), r#"{"node":"n"}"#),
            (Entity::Module("sn-1".into()), r#"{"module":"sn-1"}"#),
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), json);
            assert_eq!(serde_json::from_str::<Entity>(json).unwrap(), e);
        }
        let json = r#"{"ts_ms":1,"entity":{"rack":{"id":7}},"quantity":"power_watts","value":1}"#;
        let r: Reading = serde_json::from_str(json).unwrap();
        assert_eq!(r.entity, Entity::Other("rack".into()));
        for bad in [
            r#"{}"#,
            r#"{"gpu":"a","meter":"b"}"#,
            r#"{"gpu":7}"#,
            r#""gpu""#,
        ] {
            assert!(serde_json::from_str::<Entity>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_quantities_are_snake_case() {
        for (q, name) in [
            (Quantity::SmActiveRatio, "sm_active_ratio"),
            (Quantity::SmOccupancyRatio, "sm_occupancy_ratio"),
            (Quantity::TensorActiveRatio, "tensor_active_ratio"),
            (Quantity::DramActiveRatio, "dram_active_ratio"),
            (Quantity::XidErrorsTotal, "xid_errors_total"),
            (Quantity::IntegratedEnergyJoules, "integrated_energy_joules"),
            (Quantity::GpuDownReasonCode, "gpu_down_reason_code"),
        ] {
            assert_eq!(serde_json::to_string(&q).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn down_reason_codes_round_trip_and_unknown_ones_are_none() {
        for (c, r) in DOWN_REASONS {
            assert_eq!(down_reason_code(r), *c);
            assert_eq!(down_reason_of(f64::from(*c)), Some(*r));
        }
        assert_eq!(down_reason_code("nvml_error_999"), 0);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1.5, 999.0] {
            assert_eq!(down_reason_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_batch_field_is_rejected() {
        let json = r#"{"version":1,"agent":"a","seq":1,"node":"n","created_ms":1,"readings":[],"extra":1}"#;
        let err = serde_json::from_str::<Batch>(json).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
    }
}
