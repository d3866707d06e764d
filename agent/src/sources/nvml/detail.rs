//! Per-GPU values the agent exports on its own `/metrics` only (not shipped
//! to collectors: `dcwatt_wire::Quantity` has no variant for them): each is a
//! [`Sample`] of one [`Fam`] (metric family), with extra labels.

use std::borrow::Cow;

use crate::names as n;

/// One agent-only metric family of the GPU section of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fam {
    /// `dcwatt_gpu_power_instant_watts`.
    PowerInstant,
    /// `dcwatt_gpu_power_default_limit_watts`.
    PowerDefaultLimit,
    /// `dcwatt_gpu_energy_resets_total`.
    EnergyResets,
    /// `dcwatt_gpu_temperature_threshold_celsius{threshold}`.
    Threshold,
    /// `dcwatt_gpu_temperature_slowdown_margin_celsius`.
    SlowdownMargin,
    /// `dcwatt_gpu_throttle_active{reason}`.
    ThrottleActive,
    /// `dcwatt_gpu_throttle_violation_seconds_total{policy}`.
    ViolationSeconds,
    /// `dcwatt_gpu_clock_hertz{clock}`.
    Clock,
    /// `dcwatt_gpu_fan_speed_ratio{fan}`.
    FanSpeed,
    /// `dcwatt_gpu_ecc_errors_total{error}`.
    EccErrors,
    /// `dcwatt_gpu_pcie_link_generation`.
    PcieGeneration,
    /// `dcwatt_gpu_pcie_link_width_lanes`.
    PcieWidth,
    /// `dcwatt_gpu_xid_errors_total{xid}`.
    XidErrors,
    /// `dcwatt_gpu_mig_enabled`.
    MigEnabled,
    /// `dcwatt_gpu_mig_instance_info{mig_uuid,gpu_instance,profile}`.
    MigInstance,
    /// `dcwatt_gpu_memory_power_watts`.
    MemoryPower,
    /// `dcwatt_gpu_memory_reserved_bytes`.
    MemoryReserved,
    /// `dcwatt_gpu_temperature_tlimit_offset_celsius{threshold}`.
    TlimitOffset,
    /// `dcwatt_gpu_pcie_replays_total`.
    PcieReplays,
    /// `dcwatt_gpu_recovery_action`.
    RecoveryAction,
    /// `dcwatt_gpu_remapped_rows_total{cause}`.
    RemappedRows,
    /// `dcwatt_gpu_remapped_rows_pending`.
    RemappedRowsPending,
    /// `dcwatt_gpu_remapped_rows_failure`.
    RemappedRowsFailure,
    /// `dcwatt_gpu_down_info{reason}`.
    DownInfo,
    /// `dcwatt_gpu_nvlink_errors_total{link,counter}`.
    NvlinkErrors,
    /// `dcwatt_gpu_sm_active_ratio` (GPM).
    GpmSmActive,
    /// `dcwatt_gpu_sm_occupancy_ratio` (GPM).
    GpmSmOccupancy,
    /// `dcwatt_gpu_tensor_active_ratio` (GPM).
    GpmTensorActive,
    /// `dcwatt_gpu_dram_active_ratio` (GPM).
    GpmDramActive,
    /// `dcwatt_gpu_mig_sm_active_ratio{mig_uuid,gpu_instance}` (GPM per MIG instance).
    MigSmActive,
    /// `dcwatt_gpu_mig_sm_occupancy_ratio{mig_uuid,gpu_instance}`.
    MigSmOccupancy,
    /// `dcwatt_gpu_mig_tensor_active_ratio{mig_uuid,gpu_instance}`.
    MigTensorActive,
    /// `dcwatt_gpu_mig_dram_active_ratio{mig_uuid,gpu_instance}`.
    MigDramActive,
}

impl Fam {
    /// Every family, in rendering order.
    pub const ALL: [Fam; 33] = [
        Fam::PowerInstant,
        Fam::MemoryPower,
        Fam::PowerDefaultLimit,
        Fam::EnergyResets,
        Fam::Threshold,
        Fam::TlimitOffset,
        Fam::SlowdownMargin,
        Fam::ThrottleActive,
        Fam::ViolationSeconds,
        Fam::Clock,
        Fam::FanSpeed,
        Fam::EccErrors,
        Fam::PcieGeneration,
        Fam::PcieWidth,
        Fam::PcieReplays,
        Fam::RecoveryAction,
        Fam::RemappedRows,
        Fam::RemappedRowsPending,
        Fam::RemappedRowsFailure,
        Fam::NvlinkErrors,
        Fam::MemoryReserved,
        Fam::GpmSmActive,
        Fam::GpmSmOccupancy,
        Fam::GpmTensorActive,
        Fam::GpmDramActive,
        Fam::DownInfo,
        Fam::XidErrors,
        Fam::MigEnabled,
        Fam::MigInstance,
        Fam::MigSmActive,
        Fam::MigSmOccupancy,
        Fam::MigTensorActive,
        Fam::MigDramActive,
    ];

    /// The metric name.
    pub fn name(self) -> &'static str {
        match self {
            Fam::PowerInstant => n::GPU_POWER_INSTANT_WATTS,
            Fam::PowerDefaultLimit => n::GPU_POWER_DEFAULT_LIMIT_WATTS,
            Fam::EnergyResets => n::GPU_ENERGY_RESETS_TOTAL,
            Fam::Threshold => n::GPU_TEMPERATURE_THRESHOLD_CELSIUS,
            Fam::SlowdownMargin => n::GPU_TEMPERATURE_SLOWDOWN_MARGIN_CELSIUS,
            Fam::ThrottleActive => n::GPU_THROTTLE_ACTIVE,
            Fam::ViolationSeconds => n::GPU_THROTTLE_VIOLATION_SECONDS_TOTAL,
            Fam::Clock => n::GPU_CLOCK_HERTZ,
            Fam::FanSpeed => n::GPU_FAN_SPEED_RATIO,
            Fam::EccErrors => n::GPU_ECC_ERRORS_TOTAL,
            Fam::PcieGeneration => n::GPU_PCIE_LINK_GENERATION,
            Fam::PcieWidth => n::GPU_PCIE_LINK_WIDTH_LANES,
            Fam::XidErrors => n::GPU_XID_ERRORS_TOTAL,
            Fam::MigEnabled => n::GPU_MIG_ENABLED,
            Fam::MigInstance => n::GPU_MIG_INSTANCE_INFO,
            Fam::MemoryPower => n::GPU_MEMORY_POWER_WATTS,
            Fam::MemoryReserved => n::GPU_MEMORY_RESERVED_BYTES,
            Fam::TlimitOffset => n::GPU_TEMPERATURE_TLIMIT_OFFSET_CELSIUS,
            Fam::PcieReplays => n::GPU_PCIE_REPLAYS_TOTAL,
            Fam::RecoveryAction => n::GPU_RECOVERY_ACTION,
            Fam::RemappedRows => n::GPU_REMAPPED_ROWS_TOTAL,
            Fam::RemappedRowsPending => n::GPU_REMAPPED_ROWS_PENDING,
            Fam::RemappedRowsFailure => n::GPU_REMAPPED_ROWS_FAILURE,
            Fam::DownInfo => n::GPU_DOWN_INFO,
            Fam::NvlinkErrors => n::GPU_NVLINK_ERRORS_TOTAL,
            Fam::GpmSmActive => n::GPU_SM_ACTIVE_RATIO,
            Fam::GpmSmOccupancy => n::GPU_SM_OCCUPANCY_RATIO,
            Fam::GpmTensorActive => n::GPU_TENSOR_ACTIVE_RATIO,
            Fam::GpmDramActive => n::GPU_DRAM_ACTIVE_RATIO,
            Fam::MigSmActive => n::GPU_MIG_SM_ACTIVE_RATIO,
            Fam::MigSmOccupancy => n::GPU_MIG_SM_OCCUPANCY_RATIO,
            Fam::MigTensorActive => n::GPU_MIG_TENSOR_ACTIVE_RATIO,
            Fam::MigDramActive => n::GPU_MIG_DRAM_ACTIVE_RATIO,
        }
    }

    /// The `# HELP` text.
    pub fn help(self) -> &'static str {
        match self {
            Fam::PowerInstant => "GPU instantaneous power, watts (NVML field POWER_INSTANT).",
            Fam::PowerDefaultLimit => "Default GPU power limit, watts.",
            Fam::EnergyResets => {
                "Decreases of the GPU energy counter seen by this agent (driver reload, GPU reset)."
            }
            Fam::Threshold => "The GPU's own temperature thresholds, degrees Celsius.",
            Fam::SlowdownMargin => {
                "Margin to the nearest slowdown threshold, degrees Celsius (negative: past it)."
            }
            Fam::ThrottleActive => {
                "1 while NVML reports the clock-event (throttle) reason, else 0."
            }
            Fam::ViolationSeconds => {
                "Cumulative time the GPU was held below its clocks by the policy, seconds."
            }
            Fam::Clock => "Current GPU clock, hertz.",
            Fam::FanSpeed => "Fan speed, ratio of its maximum, 0..1 (absent without fans).",
            Fam::EccErrors => "ECC errors since the GPU's counters were last cleared (aggregate).",
            Fam::PcieGeneration => "Current PCIe link generation.",
            Fam::PcieWidth => "Current PCIe link width, lanes.",
            Fam::XidErrors => "XID errors NVML reported since the agent started, by XID code.",
            Fam::MigEnabled => "1 when MIG mode is on; power and energy stay per board.",
            Fam::MigInstance => "A MIG instance of the GPU, with its profile; always 1.",
            Fam::MemoryPower => "GPU memory power, watts (NVML field POWER_AVERAGE, memory scope).",
            Fam::MemoryReserved => "GPU memory reserved by the driver and firmware, bytes.",
            Fam::TlimitOffset => {
                "The GPU's temperature thresholds as offsets from T.Limit, degrees Celsius (signed)."
            }
            Fam::PcieReplays => "PCIe replays of the GPU's link.",
            Fam::RecoveryAction => {
                "The recovery action NVML asks for: 0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset, 5 recover the IMEX domain."
            }
            Fam::RemappedRows => "GPU memory rows remapped, by cause.",
            Fam::RemappedRowsPending => "1 while a row remapping waits for a GPU reset.",
            Fam::RemappedRowsFailure => "1 once a row remapping failed.",
            Fam::DownInfo => "1 while the GPU is down, with the NVML error that put it down.",
            Fam::NvlinkErrors => "NVLink error counters per link, by counter (read every 10 s).",
            Fam::GpmSmActive => "Share of SMs busy over the last GPM window, 0..1.",
            Fam::GpmSmOccupancy => "Active warps over the theoretical maximum, last GPM window, 0..1.",
            Fam::GpmTensorActive => "Share of time SMs ran any tensor operation, last GPM window, 0..1.",
            Fam::GpmDramActive => "DRAM bandwidth used over its maximum, last GPM window, 0..1.",
            Fam::MigSmActive => "Share of the MIG instance's SMs busy over its last GPM window, 0..1.",
            Fam::MigSmOccupancy => {
                "The MIG instance's active warps over the theoretical maximum, last GPM window, 0..1."
            }
            Fam::MigTensorActive => {
                "Share of time the MIG instance's SMs ran any tensor operation, last GPM window, 0..1."
            }
            Fam::MigDramActive => {
                "The MIG instance's DRAM bandwidth used over its maximum, last GPM window, 0..1."
            }
        }
    }

    /// Counter (`_total`) or gauge.
    pub fn is_counter(self) -> bool {
        matches!(
            self,
            Fam::EnergyResets
                | Fam::ViolationSeconds
                | Fam::EccErrors
                | Fam::XidErrors
                | Fam::PcieReplays
                | Fam::RemappedRows
                | Fam::NvlinkErrors
        )
    }

    /// Counters the agent itself keeps (not read from the GPU): still shown
    /// while the GPU is lost or NVML is down.
    pub fn agent_kept(self) -> bool {
        matches!(self, Fam::EnergyResets | Fam::XidErrors)
    }
}

/// One sample of an agent-only family.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its family.
    pub fam: Fam,
    /// Labels beyond `node, gpu, uuid, model` (a fixed value, such as a
    /// threshold's or a throttle reason's name, is borrowed, not copied).
    pub labels: Vec<(&'static str, Cow<'static, str>)>,
    /// The value, in the family's unit.
    pub value: f64,
}

impl Sample {
    /// A sample without extra labels.
    pub fn plain(fam: Fam, value: f64) -> Self {
        Self {
            fam,
            labels: Vec::new(),
            value,
        }
    }

    /// A sample with one extra label.
    pub fn labelled(
        fam: Fam,
        key: &'static str,
        label: impl Into<Cow<'static, str>>,
        value: f64,
    ) -> Self {
        Self {
            fam,
            labels: vec![(key, label.into())],
            value,
        }
    }
}

/// What the agent knows about one GPU beyond the shipped readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuDetail {
    /// The driver version (`dcwatt_gpu_info`), empty when unknown.
    pub driver_version: String,
    /// The PCI bus id (`00000000:18:00.0`), empty when unknown.
    pub pci_bus_id: String,
    /// Agent-only samples.
    pub samples: Vec<Sample>,
}
