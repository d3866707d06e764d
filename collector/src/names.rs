//! Every metric name and label key the collector exports, in one place, so the
//! dashboards and alert rules can be checked against them.

/// Power by meter role and zone, W (fresh meters only).
pub const POWER_WATTS: &str = "dcwatt_power_watts";
/// Energy by meter role and zone since the collector started, J.
pub const ENERGY_JOULES_TOTAL: &str = "dcwatt_energy_joules_total";
/// Energy-based PUE over a trailing window.
pub const PUE_RATIO: &str = "dcwatt_pue_ratio";
/// The least PUE of a trailing window its energy bounds allow (beside an exported `dcwatt_pue_ratio`).
pub const PUE_LOWER_RATIO: &str = "dcwatt_pue_lower_ratio";
/// The most PUE of a trailing window its energy bounds allow (beside an exported `dcwatt_pue_ratio`).
pub const PUE_UPPER_RATIO: &str = "dcwatt_pue_upper_ratio";
/// A trailing window's PUE uncertainty: max(PUE − lower, upper − PUE) / PUE, where bounded.
pub const PUE_UNCERTAINTY_RATIO: &str = "dcwatt_pue_uncertainty_ratio";
/// Bounds of a zone's partial PUE over a trailing window (beside an exported `dcwatt_partial_pue_ratio`).
pub const PARTIAL_PUE_LOWER_RATIO: &str = "dcwatt_partial_pue_lower_ratio";
/// See [`PARTIAL_PUE_LOWER_RATIO`].
pub const PARTIAL_PUE_UPPER_RATIO: &str = "dcwatt_partial_pue_upper_ratio";
/// Bounds of a trailing window's WUE (beside an exported WUE), L/kWh.
pub const WUE_LOWER: &str = "dcwatt_wue_lower_litres_per_kilowatt_hour";
/// See [`WUE_LOWER`].
pub const WUE_UPPER: &str = "dcwatt_wue_upper_litres_per_kilowatt_hour";
/// Meter events (gaps, resets, swaps, power gaps, glitches) per meter and kind.
pub const METER_EVENTS_TOTAL: &str = "dcwatt_meter_events_total";
/// Power-based (instantaneous) PUE.
pub const PUE_INSTANT_RATIO: &str = "dcwatt_pue_instant_ratio";
/// Partial PUE of a zone over a trailing window.
pub const PARTIAL_PUE_RATIO: &str = "dcwatt_partial_pue_ratio";
/// Share of a window's minutes (or, live, of its span) that every facility and IT meter covers.
pub const PUE_COVERAGE_RATIO: &str = "dcwatt_pue_coverage_ratio";
/// Energy of each meter since the collector started, J.
pub const METER_ENERGY_JOULES_TOTAL: &str = "dcwatt_meter_energy_joules_total";
/// Counter resets seen per meter.
pub const METER_COUNTER_RESETS_TOTAL: &str = "dcwatt_meter_energy_resets_total";
/// Power-only meter gaps longer than `max_gap` (not integrated).
pub const METER_GAPS_TOTAL: &str = "dcwatt_meter_gaps_total";
/// Counter jumps beyond `nominal_max_watts`, rejected.
pub const METER_GLITCHES_TOTAL: &str = "dcwatt_meter_glitches_total";
/// 1 when the meter reported within `stale_after`.
pub const METER_UP: &str = "dcwatt_meter_up";
/// Sum of GPU power reported by agents, W.
pub const GPU_POWER_WATTS_SUM: &str = "dcwatt_gpus_power_watts";
/// GPU energy from NVML counters since the collector started, J.
pub const GPU_ENERGY_JOULES_TOTAL: &str = "dcwatt_gpus_energy_joules_total";
/// GPU energy counter resets seen.
pub const GPU_COUNTER_RESETS_TOTAL: &str = "dcwatt_gpus_energy_resets_total";
/// Metered nodes' energy beyond their GPUs that could not be booked to anyone.
pub const UNBOOKED_ENERGY_JOULES_TOTAL: &str = "dcwatt_unbooked_energy_joules_total";
/// GPU energy counter readings refused as glitches.
pub const GPU_COUNTER_GLITCHES_TOTAL: &str = "dcwatt_gpus_energy_glitches_total";
/// Last time an agent's batch was applied, Unix seconds.
pub const AGENT_LAST_SEEN: &str = "dcwatt_agent_last_seen_timestamp_seconds";
/// Batches received, by result.
pub const INGEST_BATCHES_TOTAL: &str = "dcwatt_ingest_batches_total";
/// Store transactions written by the group commit.
pub const STORE_COMMITS_TOTAL: &str = "dcwatt_store_commits_total";
/// Batches written by the group commit.
pub const STORE_COMMITTED_BATCHES_TOTAL: &str = "dcwatt_store_committed_batches_total";
/// Time to answer `POST /v1/batches` (histogram).
pub const INGEST_REQUEST_DURATION_SECONDS: &str = "dcwatt_ingest_request_duration_seconds";
/// Readings applied.
pub const INGEST_READINGS_TOTAL: &str = "dcwatt_ingest_readings_total";
/// Readings ignored, by reason (unknown meter, out of order, unknown quantity).
pub const INGEST_IGNORED_READINGS_TOTAL: &str = "dcwatt_ingest_ignored_readings_total";

/// Label: meter role.
pub const ROLE: &str = "role";
/// Label: zone (hall).
pub const ZONE: &str = "zone";
/// Label: window of an energy-based figure.
pub const WINDOW: &str = "window";
/// Label: ISO/IEC 30134-2 PUE category (1, 2 or 3).
pub const CATEGORY: &str = "category";
/// Label: meter id.
pub const METER: &str = "meter";
/// Label: agent id.
pub const AGENT: &str = "agent";
/// Label: result of an ingest.
pub const RESULT: &str = "result";
/// Label: why a reading was ignored.
pub const REASON: &str = "reason";

/// Energy booked to a tenant, by basis (it, facility).
pub const TENANT_ENERGY_JOULES_TOTAL: &str = "dcwatt_tenant_energy_joules_total";
/// GPU-seconds leased by a tenant.
pub const TENANT_GPU_SECONDS_TOTAL: &str = "dcwatt_tenant_gpu_seconds_total";
/// Leased GPU-seconds of a tenant by delivery state.
pub const TENANT_GPU_DELIVERY_SECONDS_TOTAL: &str = "dcwatt_tenant_gpu_delivery_seconds_total";
/// Leased GPU-seconds of a tenant by delivery state, UTC month to date.
pub const TENANT_GPU_DELIVERY_MONTH_SECONDS: &str = "dcwatt_tenant_gpu_delivery_month_seconds";
/// A tenant's availability target.
pub const TENANT_AVAILABILITY_TARGET_RATIO: &str = "dcwatt_tenant_availability_target_ratio";
/// Label: delivery state (`available`, `degraded`, `down`, `unknown`).
pub const STATE: &str = "state";
/// GPU energy of time covered by more than one lease.
pub const UNATTRIBUTED_ENERGY_JOULES_TOTAL: &str = "dcwatt_unattributed_energy_joules_total";
/// GPU energy of time no lease covers.
pub const UNLEASED_ENERGY_JOULES_TOTAL: &str = "dcwatt_unleased_energy_joules_total";
/// Label: tenant.
pub const TENANT: &str = "tenant";
/// Label: energy basis (`it`, `facility`).
pub const BASIS: &str = "basis";
/// Energy reuse factor.
pub const ERF_RATIO: &str = "dcwatt_erf_ratio";
/// Renewable energy factor.
pub const REF_RATIO: &str = "dcwatt_ref_ratio";
/// Water usage effectiveness, litres of site water per kWh of IT energy.
pub const WUE: &str = "dcwatt_wue_litres_per_kilowatt_hour";
/// Site water input by zone since the collector started, m³ (`water` meters).
pub const WATER_CUBIC_METERS_TOTAL: &str = "dcwatt_water_cubic_meters_total";
/// Water volume of each `water` meter since the collector started, m³.
pub const METER_WATER_CUBIC_METERS_TOTAL: &str = "dcwatt_meter_water_cubic_meters_total";
/// Carbon usage effectiveness, kg CO2e per kWh of IT energy.
pub const CUE: &str = "dcwatt_cue_kilograms_per_kilowatt_hour";
/// A meter's residual against its sub-meters.
pub const METER_TREE_RESIDUAL_RATIO: &str = "dcwatt_meter_tree_residual_ratio";
/// Complete minutes with an invalid PUE.
pub const PUE_INVALID_MINUTES_TOTAL: &str = "dcwatt_pue_invalid_total";
/// GPUs with at least one open thermal excursion, per zone.
pub const GPUS_IN_THERMAL_EXCURSION: &str = "dcwatt_gpus_in_thermal_excursion";
/// Coolant distribution units with at least one open excursion, per zone.
pub const CDUS_IN_THERMAL_EXCURSION: &str = "dcwatt_cdus_in_thermal_excursion";
/// Thermal excursions opened, per zone and kind.
pub const THERMAL_EXCURSIONS_TOTAL: &str = "dcwatt_thermal_excursions_total";
/// Thermal excursions of a tenant's leased GPUs.
pub const TENANT_THERMAL_EXCURSIONS_TOTAL: &str = "dcwatt_tenant_thermal_excursions_total";
/// Label: what went out of range.
pub const KIND: &str = "kind";
/// GPU-time-weighted mean utilization of every kind, per zone and window.
pub const ZONE_GPUS_UTILIZATION_RATIO: &str = "dcwatt_zone_gpus_utilization_ratio";
/// The same for the whole site.
pub const GPUS_UTILIZATION_RATIO: &str = "dcwatt_gpus_utilization_ratio";
/// GPU energy spent while SM activity was below the idle threshold, per zone, J.
pub const ZONE_GPUS_IDLE_ENERGY_JOULES_TOTAL: &str = "dcwatt_zone_gpus_idle_energy_joules_total";
/// The same for the whole site.
pub const GPUS_IDLE_ENERGY_JOULES_TOTAL: &str = "dcwatt_gpus_idle_energy_joules_total";
/// XID errors of the GPUs, per zone.
pub const ZONE_GPUS_XID_ERRORS_TOTAL: &str = "dcwatt_zone_gpus_xid_errors_total";
/// The same for the whole site.
pub const GPUS_XID_ERRORS_TOTAL: &str = "dcwatt_gpus_xid_errors_total";
/// Power of the fresh superchip modules, W.
pub const MODULES_POWER_WATTS: &str = "dcwatt_modules_power_watts";
/// Superchip modules' energy, integrated by their agents, J.
pub const MODULES_ENERGY_JOULES_TOTAL: &str = "dcwatt_modules_energy_joules_total";
/// Mean utilization of the GPUs a tenant leases now (fresh readings only).
pub const TENANT_GPU_UTILIZATION_RATIO: &str = "dcwatt_tenant_gpu_utilization_ratio";

/// Rows (Merkle leaves) in the ledger's tree.
pub const LEDGER_TREE_SIZE: &str = "dcwatt_ledger_tree_size";
/// Start of the UTC hour of the latest signed ledger checkpoint, Unix seconds.
pub const LEDGER_CHECKPOINT_TIMESTAMP_SECONDS: &str = "dcwatt_ledger_checkpoint_timestamp_seconds";
