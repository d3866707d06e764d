//! Every metric name and label key the agent exports, in one place.
//!
//! Names follow the project's rules: prefix `dcwatt_`, the unit in the name,
//! `_total` on counters. Dashboards and alert rules may use only these.

/// GPU power draw, watts (gauge).
pub const GPU_POWER_WATTS: &str = "dcwatt_gpu_power_watts";
/// GPU energy counter since the driver's own zero, joules (counter).
pub const GPU_ENERGY_JOULES_TOTAL: &str = "dcwatt_gpu_energy_joules_total";
/// GPU temperature, degrees Celsius, label [`SENSOR`] (gauge).
pub const GPU_TEMPERATURE_CELSIUS: &str = "dcwatt_gpu_temperature_celsius";
/// GPU busy ratio, 0..1 (gauge).
pub const GPU_UTILIZATION_RATIO: &str = "dcwatt_gpu_utilization_ratio";
/// GPU memory-bandwidth busy ratio, 0..1 (gauge).
pub const GPU_MEMORY_UTILIZATION_RATIO: &str = "dcwatt_gpu_memory_utilization_ratio";
/// GPU memory in use, bytes (gauge).
pub const GPU_MEMORY_USED_BYTES: &str = "dcwatt_gpu_memory_used_bytes";
/// GPU memory installed, bytes (gauge).
pub const GPU_MEMORY_TOTAL_BYTES: &str = "dcwatt_gpu_memory_total_bytes";
/// The enforced GPU power limit, watts (gauge).
pub const GPU_POWER_LIMIT_WATTS: &str = "dcwatt_gpu_power_limit_watts";
/// 1 when the GPU answered the last collection, 0 when it is lost (gauge).
pub const GPU_UP: &str = "dcwatt_gpu_up";
/// GPU identity, value 1, labels [`UUID`], [`MODEL`], [`DRIVER_VERSION`], [`PCI_BUS_ID`] (gauge).
pub const GPU_INFO: &str = "dcwatt_gpu_info";
/// GPU instantaneous power, watts (gauge; NVML field `POWER_INSTANT`).
pub const GPU_POWER_INSTANT_WATTS: &str = "dcwatt_gpu_power_instant_watts";
/// The default GPU power limit, watts (gauge).
pub const GPU_POWER_DEFAULT_LIMIT_WATTS: &str = "dcwatt_gpu_power_default_limit_watts";
/// Decreases (resets) of the GPU energy counter the agent saw (counter). The
/// issue's `dcwatt_gpu_energy_counter_resets_total` is not used: `promtool check
/// metrics` rejects "counter" inside a metric name.
pub const GPU_ENERGY_RESETS_TOTAL: &str = "dcwatt_gpu_energy_resets_total";
/// The GPU's own temperature thresholds, °C, label [`THRESHOLD`] (gauge).
pub const GPU_TEMPERATURE_THRESHOLD_CELSIUS: &str = "dcwatt_gpu_temperature_threshold_celsius";
/// Slowdown threshold minus GPU temperature, °C (gauge).
pub const GPU_TEMPERATURE_SLOWDOWN_MARGIN_CELSIUS: &str =
    "dcwatt_gpu_temperature_slowdown_margin_celsius";
/// 1 while a clock-event (throttle) reason is active, label [`REASON`] (gauge).
pub const GPU_THROTTLE_ACTIVE: &str = "dcwatt_gpu_throttle_active";
/// Cumulative violation time, seconds, label [`POLICY`] (counter).
pub const GPU_THROTTLE_VIOLATION_SECONDS_TOTAL: &str =
    "dcwatt_gpu_throttle_violation_seconds_total";
/// Current clock, hertz, label [`CLOCK`] (gauge).
pub const GPU_CLOCK_HERTZ: &str = "dcwatt_gpu_clock_hertz";
/// Fan speed, ratio 0..1, label [`FAN`] (gauge; absent without fans).
pub const GPU_FAN_SPEED_RATIO: &str = "dcwatt_gpu_fan_speed_ratio";
/// ECC errors (aggregate), label [`ERROR`] (counter).
pub const GPU_ECC_ERRORS_TOTAL: &str = "dcwatt_gpu_ecc_errors_total";
/// Current PCIe link generation (gauge).
pub const GPU_PCIE_LINK_GENERATION: &str = "dcwatt_gpu_pcie_link_generation";
/// Current PCIe link width, lanes (gauge).
pub const GPU_PCIE_LINK_WIDTH_LANES: &str = "dcwatt_gpu_pcie_link_width_lanes";
/// XID errors since the agent started, label [`XID`] (counter).
pub const GPU_XID_ERRORS_TOTAL: &str = "dcwatt_gpu_xid_errors_total";
/// 1 when MIG mode is on (gauge).
pub const GPU_MIG_ENABLED: &str = "dcwatt_gpu_mig_enabled";
/// A MIG instance, value 1, labels [`MIG_UUID`], [`GPU_INSTANCE`], [`PROFILE`] (gauge).
pub const GPU_MIG_INSTANCE_INFO: &str = "dcwatt_gpu_mig_instance_info";
/// GPU memory power, watts (gauge; NVML field `POWER_AVERAGE`, memory scope).
pub const GPU_MEMORY_POWER_WATTS: &str = "dcwatt_gpu_memory_power_watts";
/// GPU memory reserved by the driver and firmware, bytes (gauge).
pub const GPU_MEMORY_RESERVED_BYTES: &str = "dcwatt_gpu_memory_reserved_bytes";
/// Thresholds as signed offsets from T.Limit, °C, label [`THRESHOLD`] (gauge).
pub const GPU_TEMPERATURE_TLIMIT_OFFSET_CELSIUS: &str =
    "dcwatt_gpu_temperature_tlimit_offset_celsius";
/// Value 1 while the GPU is down, label [`REASON`] (gauge; absent while up).
pub const GPU_DOWN_INFO: &str = "dcwatt_gpu_down_info";
/// Share of SMs busy over the last tick, 0..1 (gauge; GPM).
pub const GPU_SM_ACTIVE_RATIO: &str = "dcwatt_gpu_sm_active_ratio";
/// Active warps over the theoretical maximum, 0..1 (gauge; GPM).
pub const GPU_SM_OCCUPANCY_RATIO: &str = "dcwatt_gpu_sm_occupancy_ratio";
/// Share of time SMs ran any tensor operation, 0..1 (gauge; GPM).
pub const GPU_TENSOR_ACTIVE_RATIO: &str = "dcwatt_gpu_tensor_active_ratio";
/// DRAM bandwidth used over its maximum, 0..1 (gauge; GPM).
pub const GPU_DRAM_ACTIVE_RATIO: &str = "dcwatt_gpu_dram_active_ratio";
/// Share of a MIG instance's SMs busy over its last GPM window, 0..1, labels
/// [`MIG_UUID`], [`GPU_INSTANCE`] (gauge; GPM per instance).
pub const GPU_MIG_SM_ACTIVE_RATIO: &str = "dcwatt_gpu_mig_sm_active_ratio";
/// A MIG instance's SM occupancy, 0..1 (gauge; GPM per instance).
pub const GPU_MIG_SM_OCCUPANCY_RATIO: &str = "dcwatt_gpu_mig_sm_occupancy_ratio";
/// A MIG instance's tensor activity, 0..1 (gauge; GPM per instance).
pub const GPU_MIG_TENSOR_ACTIVE_RATIO: &str = "dcwatt_gpu_mig_tensor_active_ratio";
/// A MIG instance's DRAM bandwidth use, 0..1 (gauge; GPM per instance).
pub const GPU_MIG_DRAM_ACTIVE_RATIO: &str = "dcwatt_gpu_mig_dram_active_ratio";
/// NVLink error counters, labels [`LINK`], [`COUNTER`] (counter).
pub const GPU_NVLINK_ERRORS_TOTAL: &str = "dcwatt_gpu_nvlink_errors_total";
/// PCIe replays (counter).
pub const GPU_PCIE_REPLAYS_TOTAL: &str = "dcwatt_gpu_pcie_replays_total";
/// The recovery action NVML asks for (0 none, 1 GPU reset, 2 node reboot, …).
pub const GPU_RECOVERY_ACTION: &str = "dcwatt_gpu_recovery_action";
/// Remapped memory rows, label [`CAUSE`] (counter).
pub const GPU_REMAPPED_ROWS_TOTAL: &str = "dcwatt_gpu_remapped_rows_total";
/// 1 while a row remapping waits for a GPU reset (gauge).
pub const GPU_REMAPPED_ROWS_PENDING: &str = "dcwatt_gpu_remapped_rows_pending";
/// 1 once a row remapping failed (gauge).
pub const GPU_REMAPPED_ROWS_FAILURE: &str = "dcwatt_gpu_remapped_rows_failure";
/// Superchip module power (GPUs, Grace CPU, LPDDR), 1 s average, watts, label [`MODULE`] (gauge).
pub const MODULE_POWER_WATTS: &str = "dcwatt_module_power_watts";
/// Module instantaneous power, watts, label [`MODULE`] (gauge).
pub const MODULE_POWER_INSTANT_WATTS: &str = "dcwatt_module_power_instant_watts";
/// Module energy integrated by the agent from the module power, joules,
/// labels [`MODULE`], [`METHOD`] (counter).
pub const MODULE_ENERGY_JOULES_TOTAL: &str = "dcwatt_module_energy_joules_total";
/// A module and its GPUs, value 1, labels [`MODULE`], [`GPUS`] (gauge).
pub const MODULE_INFO: &str = "dcwatt_module_info";

/// Meter power, watts (gauge).
pub const METER_POWER_WATTS: &str = "dcwatt_meter_power_watts";
/// Meter energy register, joules (counter).
pub const METER_ENERGY_JOULES_TOTAL: &str = "dcwatt_meter_energy_joules_total";
/// Meter water volume register, cubic metres (counter).
pub const METER_WATER_CUBIC_METERS_TOTAL: &str = "dcwatt_meter_water_cubic_meters_total";
/// 1 when the meter answered the last collection with valid data (gauge).
pub const METER_UP: &str = "dcwatt_meter_up";
/// Meter (environment) temperature, degrees Celsius (gauge).
pub const METER_TEMPERATURE_CELSIUS: &str = "dcwatt_meter_temperature_celsius";
/// CDU coolant temperature, degrees Celsius, label [`POINT`] (gauge).
pub const METER_COOLANT_TEMPERATURE_CELSIUS: &str = "dcwatt_meter_coolant_temperature_celsius";
/// CDU coolant flow, cubic metres per second (gauge).
pub const METER_COOLANT_FLOW_CUBIC_METERS_PER_SECOND: &str =
    "dcwatt_meter_coolant_flow_cubic_meters_per_second";
/// Heat carried away by a CDU's coolant, watts (gauge).
pub const METER_HEAT_REMOVED_WATTS: &str = "dcwatt_meter_heat_removed_watts";
/// Failed meter reads, label [`KIND`] (counter).
pub const METER_ERRORS_TOTAL: &str = "dcwatt_meter_errors_total";
/// Meter energy-counter resets seen (counter).
pub const METER_ENERGY_RESETS_TOTAL: &str = "dcwatt_meter_energy_resets_total";
/// Time of a meter's latest good reading, Unix seconds (gauge).
pub const METER_LAST_READING_TIMESTAMP_SECONDS: &str =
    "dcwatt_meter_last_reading_timestamp_seconds";

/// 1 when the source's last collection succeeded (gauge).
pub const SOURCE_UP: &str = "dcwatt_source_up";
/// Failed collections of a source (counter).
pub const SOURCE_ERRORS_TOTAL: &str = "dcwatt_source_errors_total";
/// How long the source's last collection took, seconds (gauge).
pub const SOURCE_DURATION_SECONDS: &str = "dcwatt_source_duration_seconds";

/// Batches handled per collector, by [`RESULT`] (counter).
pub const SHIP_BATCHES_TOTAL: &str = "dcwatt_ship_batches_total";
/// Requests a collector refused (4xx but 408, 409, 429), by [`STATUS`] (counter).
pub const SHIP_REFUSALS_TOTAL: &str = "dcwatt_ship_refusals_total";
/// Answers against the protocol per collector, by [`KIND`] (counter).
pub const SHIP_PROTOCOL_ERRORS_TOTAL: &str = "dcwatt_ship_protocol_errors_total";
/// Batches in the spool waiting for a collector (gauge).
pub const SHIP_QUEUE_BATCHES: &str = "dcwatt_ship_queue_batches";

/// Age of the oldest batch waiting for a collector, seconds; 0 when caught up (gauge).
pub const SHIP_LAG_SECONDS: &str = "dcwatt_ship_lag_seconds";
/// Bytes the spool holds, file headers included (gauge).
pub const SPOOL_BYTES: &str = "dcwatt_spool_bytes";
/// Batches in the spool that some collector has not acknowledged (gauge).
pub const SPOOL_BATCHES: &str = "dcwatt_spool_batches";
/// Torn or corrupt spool records found and skipped (counter).
pub const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "dcwatt_spool_corrupt_records_total";
/// Batches dropped unsent: the spool was full, or a write failed (counter).
pub const SPOOL_DROPPED_BATCHES_TOTAL: &str = "dcwatt_spool_dropped_batches_total";

/// Label: the node name.
pub const NODE: &str = "node";
/// Label: the GPU's NVML index on its node.
pub const GPU: &str = "gpu";
/// Label: the GPU's NVML UUID.
pub const UUID: &str = "uuid";
/// Label: the GPU's model name.
pub const MODEL: &str = "model";
/// Label: which temperature sensor, [`SENSOR_GPU`] or [`SENSOR_MEMORY`].
pub const SENSOR: &str = "sensor";
/// Label: the NVIDIA driver version.
pub const DRIVER_VERSION: &str = "driver_version";
/// Label: the GPU's PCI bus id.
pub const PCI_BUS_ID: &str = "pci_bus_id";
/// Label: `slowdown`, `shutdown`, `gpu_max` or `memory_max`.
pub const THRESHOLD: &str = "threshold";
/// Label: a throttle reason (`sw_power_cap`, `hw_thermal_slowdown`, …).
pub const REASON: &str = "reason";
/// Label: a violation policy, `power` or `thermal`.
pub const POLICY: &str = "policy";
/// Label: a clock domain, `sm` or `memory`.
pub const CLOCK: &str = "clock";
/// Label: a fan's index.
pub const FAN: &str = "fan";
/// Label: an ECC error kind, `corrected` or `uncorrected`.
pub const ERROR: &str = "error";
/// Label: why rows were remapped, `correctable` or `uncorrectable`.
pub const CAUSE: &str = "cause";
/// Label: an NVLink link's index.
pub const LINK: &str = "link";
/// Label: an NVLink error counter (`rcv_errors`, `symbol_errors`, …).
pub const COUNTER: &str = "counter";
/// Label: a superchip module's id (`docs/nvml.md`, "Module power").
pub const MODULE: &str = "module";
/// Label: the NVML indexes of a module's GPUs, comma-separated (`0,1`).
pub const GPUS: &str = "gpus";
/// Label: how an energy counter was obtained; [`METHOD_INTEGRATED`].
pub const METHOD: &str = "method";
/// [`METHOD`] value: integrated by the agent from power readings (no counter exists).
pub const METHOD_INTEGRATED: &str = "integrated";
/// Label: an XID code.
pub const XID: &str = "xid";
/// Label: a MIG instance's UUID.
pub const MIG_UUID: &str = "mig_uuid";
/// Label: a MIG GPU instance id.
pub const GPU_INSTANCE: &str = "gpu_instance";
/// Label: a MIG profile (`1g.35gb`).
pub const PROFILE: &str = "profile";
/// Label: a meter's configured id.
pub const METER: &str = "meter";
/// Label: where on a coolant loop, [`POINT_SUPPLY`] or [`POINT_RETURN`].
pub const POINT: &str = "point";
/// [`POINT`] value: coolant entering the load.
pub const POINT_SUPPLY: &str = "supply";
/// [`POINT`] value: coolant leaving the load.
pub const POINT_RETURN: &str = "return";
/// Label: the class of a meter error (`timeout`, `http`, `parse`, …).
pub const KIND: &str = "kind";
/// Label: a source, `nvml` or `<type>:<meter>` (`redfish:pdu-1`, `http_json:utility-a`).
pub const SOURCE: &str = "source";
/// Label: a collector, by its configured URL.
pub const COLLECTOR: &str = "collector";
/// Label: what became of a batch, one of the `RESULT_*` values.
pub const RESULT: &str = "result";
/// Label: an HTTP status code (`403`).
pub const STATUS: &str = "status";

/// [`SENSOR`] value: the GPU core.
pub const SENSOR_GPU: &str = "gpu";
/// [`SENSOR`] value: the GPU memory.
pub const SENSOR_MEMORY: &str = "memory";
/// [`RESULT`] value: the collector applied the batch.
pub const RESULT_OK: &str = "ok";
/// [`RESULT`] value: the collector had applied the batch before.
pub const RESULT_DUPLICATE: &str = "duplicate";
/// [`RESULT`] value: the collector refused the batch (a 4xx but 401, 403, 408,
/// 409, 429), each try counted; what became of it is `dropped_rejected` or a
/// later result.
pub const RESULT_REJECTED: &str = "rejected";
/// [`RESULT`] value: the collector refused the batch with 401 or 403, each try
/// counted; it is held and retried.
pub const RESULT_FORBIDDEN: &str = "forbidden";
/// [`RESULT`] value: the collector's answer broke the protocol (an
/// acknowledgement of a seq never sent, no acknowledgement), each try counted;
/// the batch is retried.
pub const RESULT_PROTOCOL_ERROR: &str = "protocol_error";
/// [`RESULT`] value: the collector refused the batch for good; it was given up.
pub const RESULT_DROPPED_REJECTED: &str = "dropped_rejected";
/// [`RESULT`] value: the spool was full; the batch was dropped before this collector got it.
pub const RESULT_DROPPED: &str = "dropped";
