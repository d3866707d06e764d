//! Whole trays as real Grace-Blackwell hardware reports them, transcribed from
//! the `nvidia-smi -q -x` captures in `captures/` (see its README). Every value
//! a profile takes from a capture is listed in [`CaptureGpu`], and
//! `tests/profiles.rs` parses the same values out of the XML, so a
//! transcription error fails a test.
//!
//! What the captures do not show is chosen and said so: the energy counter
//! (nvidia-smi prints none) starts at [`ENERGY_START_MJ`] and runs
//! [`ENERGY_SKEW_PPM`] fast against the 1 s power average, as a real counter
//! and a real average disagree by a little.

use crate::{FakeGpm, FakeGpu, FakeRemappedRows, FakeTlimit};

/// The energy counter of every profile GPU at the state file's `time_ms`, mJ
/// (not in the captures).
pub const ENERGY_START_MJ: u64 = 86_400_000_000;

/// How much faster than power × time the profiles' energy counters run, ppm
/// (not in the captures).
pub const ENERGY_SKEW_PPM: i32 = 700;

/// One GPU of a capture: the values the profiles take from it, in the
/// capture's own units (W with two decimals as centiwatts, MiB, °C, MHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureGpu {
    /// `pci/pci_bus_id`.
    pub pci_bus_id: &'static str,
    /// `serial`: shared by the two GPUs of a superchip.
    pub serial: &'static str,
    /// `uuid`.
    pub uuid: &'static str,
    /// `platformInfo/module_id`: the GPU's id within the node.
    pub module_id: u32,
    /// `temperature/gpu_temp`, °C.
    pub gpu_temp_c: u32,
    /// `temperature/gpu_temp_tlimit`, °C (the margin to slowdown).
    pub tlimit_c: i32,
    /// `temperature/memory_temp`, °C.
    pub memory_temp_c: u32,
    /// `gpu_power_readings/average_power_draw`, cW.
    pub power_cw: u32,
    /// `gpu_power_readings/instant_power_draw`, cW.
    pub power_instant_cw: u32,
    /// `gpu_memory_power_readings/average_power_draw`, cW.
    pub memory_power_cw: u32,
    /// `module_power_readings/average_power_draw`, cW.
    pub module_power_cw: u32,
    /// `module_power_readings/instant_power_draw`, cW.
    pub module_power_instant_cw: u32,
}

/// Values every GPU of a capture shares, same units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureTray {
    /// `product_name`.
    pub product_name: &'static str,
    /// `driver_version`.
    pub driver_version: &'static str,
    /// `fb_memory_usage/total`, MiB.
    pub memory_total_mib: u64,
    /// `fb_memory_usage/reserved`, MiB.
    pub memory_reserved_mib: u64,
    /// `fb_memory_usage/used`, MiB.
    pub memory_used_mib: u64,
    /// `gpu_power_readings/current_power_limit` (= default), cW.
    pub power_limit_cw: u32,
    /// `clocks/sm_clock`, MHz.
    pub sm_clock_mhz: u32,
    /// `clocks/mem_clock`, MHz.
    pub mem_clock_mhz: u32,
    /// `pci/pci_gpu_link_info/pcie_gen/current_link_gen`.
    pub pcie_gen: u32,
    /// `pci/pci_gpu_link_info/link_widths/current_link_width`, lanes.
    pub pcie_width: u32,
    /// `temperature/gpu_temp_{max,slow,max_mem,max_gpu}_tlimit_threshold`, °C.
    pub tlimit: FakeTlimit,
    /// The GPUs, in NVML index order.
    pub gpus: [CaptureGpu; 4],
}

/// `captures/qx-gb300.xml`: 4× GB300, two superchips (PCI domains 0008/0009
/// and 0018/0019), idle.
pub const GB300: CaptureTray = CaptureTray {
    product_name: "NVIDIA GB300",
    driver_version: "580.173.02",
    memory_total_mib: 284_208,
    memory_reserved_mib: 947,
    memory_used_mib: 0,
    power_limit_cw: 140_000,
    sm_clock_mhz: 120,
    mem_clock_mhz: 3996,
    pcie_gen: 6,
    pcie_width: 16,
    tlimit: FakeTlimit {
        shutdown: -5,
        slowdown: -2,
        mem_max: 0,
        gpu_max: 0,
    },
    gpus: [
        gpu(
            "00000008:06:00.0",
            "1650000000001",
            0,
            2,
            (38, 49, 38),
            (18_036, 18_029, 3_570),
            (48_829, 48_768),
        ),
        gpu(
            "00000009:06:00.0",
            "1650000000001",
            1,
            1,
            (39, 48, 38),
            (17_626, 17_626, 3_659),
            (48_630, 48_621),
        ),
        gpu(
            "00000018:06:00.0",
            "1650000000002",
            2,
            4,
            (39, 48, 39),
            (17_592, 17_591, 3_495),
            (49_685, 50_053),
        ),
        gpu(
            "00000019:06:00.0",
            "1650000000002",
            3,
            3,
            (39, 48, 39),
            (18_005, 18_005, 4_220),
            (49_432, 49_309),
        ),
    ],
};

/// `captures/qx-gb200.xml`: 4× GB200, two superchips, every PCI domain 0000
/// (the board serial alone tells the superchips apart), idle.
pub const GB200: CaptureTray = CaptureTray {
    product_name: "NVIDIA GB200",
    driver_version: "580.173.02",
    memory_total_mib: 189_471,
    memory_reserved_mib: 742,
    memory_used_mib: 0,
    power_limit_cw: 120_000,
    sm_clock_mhz: 120,
    mem_clock_mhz: 3996,
    pcie_gen: 5,
    pcie_width: 16,
    tlimit: FakeTlimit {
        shutdown: -5,
        slowdown: -2,
        mem_max: 0,
        gpu_max: 0,
    },
    gpus: [
        gpu(
            "00000000:29:00.0",
            "1650000000001",
            0,
            2,
            (27, 60, 27),
            (16_593, 16_593, 3_026),
            (46_717, 46_768),
        ),
        gpu(
            "00000000:3F:00.0",
            "1650000000001",
            1,
            1,
            (28, 59, 27),
            (16_857, 16_857, 2_916),
            (46_015, 46_120),
        ),
        gpu(
            "00000000:9C:00.0",
            "1650000000002",
            2,
            4,
            (27, 60, 28),
            (15_648, 15_648, 3_103),
            (45_980, 45_964),
        ),
        gpu(
            "00000000:B2:00.0",
            "1650000000002",
            3,
            3,
            (26, 61, 27),
            (17_199, 17_161, 3_470),
            (45_243, 45_180),
        ),
    ],
};

/// The scrubbed UUIDs of both captures: `GPU-0000000i-0000-0000-0000-00000000000i`.
const UUIDS: [&str; 4] = [
    "GPU-00000000-0000-0000-0000-000000000000",
    "GPU-00000001-0000-0000-0000-000000000001",
    "GPU-00000002-0000-0000-0000-000000000002",
    "GPU-00000003-0000-0000-0000-000000000003",
];

const fn gpu(
    pci_bus_id: &'static str,
    serial: &'static str,
    index: usize,
    module_id: u32,
    (gpu_temp_c, tlimit_c, memory_temp_c): (u32, i32, u32),
    (power_cw, power_instant_cw, memory_power_cw): (u32, u32, u32),
    (module_power_cw, module_power_instant_cw): (u32, u32),
) -> CaptureGpu {
    CaptureGpu {
        pci_bus_id,
        serial,
        uuid: UUIDS[index],
        module_id,
        gpu_temp_c,
        tlimit_c,
        memory_temp_c,
        power_cw,
        power_instant_cw,
        memory_power_cw,
        module_power_cw,
        module_power_instant_cw,
    }
}

const MIB: u64 = 1 << 20;

/// PCI domain and bus of `DDDDDDDD:BB:00.0`; `None` if it is not of that form.
pub fn parse_bus_id(id: &str) -> Option<(u32, u32)> {
    let (domain, rest) = id.split_once(':')?;
    let (bus, _) = rest.split_once(':')?;
    Some((
        u32::from_str_radix(domain, 16).ok()?,
        u32::from_str_radix(bus, 16).ok()?,
    ))
}

impl CaptureTray {
    /// The tray as fake GPUs: every value the capture gives, each in NVML's
    /// unit (cW × 10 = mW, MiB × 2^20 = bytes), the GPU idle (`gpu_idle`
    /// clocks-event reason, 0 % utilization), no fans, no MIG, ECC and
    /// remapped rows at 0, and an energy counter (see the module docs).
    pub fn fake_gpus(&self) -> Vec<FakeGpu> {
        self.gpus
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (domain, bus) = parse_bus_id(c.pci_bus_id).unwrap_or((0, 0));
                FakeGpu {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    uuid: c.uuid.into(),
                    power_mw: c.power_cw * 10,
                    energy_mj: ENERGY_START_MJ,
                    temp_c: c.gpu_temp_c,
                    mem_temp_c: c.memory_temp_c,
                    util_gpu_pct: 0,
                    util_mem_pct: 0,
                    mem_total_bytes: self.memory_total_mib * MIB,
                    mem_used_bytes: self.memory_used_mib * MIB,
                    power_limit_mw: self.power_limit_cw * 10,
                    throttle_reasons: 0x1, // gpu_idle: Active in the captures
                    lost: false,
                    name: self.product_name.into(),
                    power_instant_mw: Some(c.power_instant_cw * 10),
                    power_default_limit_mw: Some(self.power_limit_cw * 10),
                    sm_clock_mhz: Some(self.sm_clock_mhz),
                    mem_clock_mhz: Some(self.mem_clock_mhz),
                    ecc_corrected: Some(0),
                    ecc_uncorrected: Some(0),
                    violation_power_ns: Some(0),
                    violation_thermal_ns: Some(0),
                    pcie_gen: Some(self.pcie_gen),
                    pcie_width: Some(self.pcie_width),
                    mig_mode: Some(false),
                    // The classic threshold call is not the interface on
                    // Blackwell: the captures show only T.Limit offsets.
                    unsupported: vec!["nvmlDeviceGetTemperatureThreshold".into()],
                    module_power_mw: Some(c.module_power_cw * 10),
                    module_power_instant_mw: Some(c.module_power_instant_cw * 10),
                    memory_power_mw: Some(c.memory_power_cw * 10),
                    pci_domain: Some(domain),
                    pci_bus: Some(bus),
                    module_id: Some(c.module_id),
                    serial: Some(c.serial.into()),
                    mem_reserved_bytes: Some(self.memory_reserved_mib * MIB),
                    tlimit_c: Some(c.tlimit_c),
                    tlimit_offsets: Some(self.tlimit),
                    energy_skew_ppm: Some(ENERGY_SKEW_PPM),
                    pcie_replay: Some(0),
                    // "None", as the GB200 capture's <gpu_recovery_action>.
                    recovery_action: Some(0),
                    remapped_rows: Some(FakeRemappedRows::default()),
                    // Not in the captures; idle like them (0 % utilization).
                    gpm: Some(FakeGpm::default()),
                    // Not in the captures: 18 NVLink 5 links per Blackwell
                    // GPU, no errors.
                    nvlink_links: Some(18),
                    ..FakeGpu::default()
                }
            })
            .collect()
    }
}

/// The GB300 tray as fake GPUs ([`GB300`]).
pub fn gb300_tray() -> Vec<FakeGpu> {
    GB300.fake_gpus()
}

/// The GB200 tray as fake GPUs ([`GB200`]).
pub fn gb200_tray() -> Vec<FakeGpu> {
    GB200.fake_gpus()
}
