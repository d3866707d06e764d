//! A GB300 tray as the real board reports it: the fake library serves the
//! profile transcribed from `sim/fake-nvml/captures/qx-gb300.xml`, the real
//! agent reads it, and every value on its `/metrics` that the capture shows is
//! compared with the value parsed out of the capture itself (power per scope,
//! module power once per superchip, temperatures, T.Limit offsets and
//! margin, limits, memory with reserved memory, clocks, PCIe, remapped rows,
//! identity). Then the NVML call budget of a steady-state tick, counted by the
//! fake library per symbol.
//!
//! The library reads `DCWATT_FAKE_NVML_STATE` at init, a process-global: this
//! binary holds exactly one test function.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{must, promtool_check_metrics, value, Agent};
use dcwatt_fake_nvml::capture::{self, number, path};
use dcwatt_fake_nvml::introspect::{call_counts, reset_call_counts};
use dcwatt_fake_nvml::profiles::gb300_tray;
use dcwatt_fake_nvml::{FakeNode, LIB_PATH, STATE_ENV};

/// NVML calls per GPU per steady-state tick (`gpu::CALL_BUDGET`): the
/// field-values call, the temperature, and two calls for the readings that
/// have no field, taken in turn. The node's device count (one per tick for
/// the four GPUs) is counted apart.
const CALL_BUDGET_PER_GPU: f64 = 4.0;

/// Calls made once per node per tick (or by the XID thread), not per GPU,
/// or when the agent stops (its GPM sample buffers freed).
const NODE_CALLS: [&str; 4] = [
    "nvmlDeviceGetCount_v2",
    "nvmlEventSetWait_v2",
    "nvmlGpmSampleFree",
    "nvmlShutdown",
];

const NODE: &str = "gb300-n1";

fn labels(gpu: usize, uuid: &str, model: &str) -> String {
    format!(r#"node="{NODE}",gpu="{gpu}",uuid="{uuid}",model="{model}""#)
}

fn near(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: /metrics {got}, capture {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gb300_tray_matches_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.state");
    std::env::set_var(STATE_ENV, &state);
    let xml = capture::read("qx-gb300.xml").expect("the GB300 capture");
    let driver = path(&xml, "driver_version").expect("driver_version");
    FakeNode {
        driver: driver.to_owned(),
        // Energy counters hold still (a read before time_ms answers energy_mj).
        time_ms: dcwatt_agent::sources::now_ms() + 3_600_000,
        horizon_ms: None,
        init_fail: false,
        gpus: gb300_tray(),
    }
    .write(&state)
    .unwrap();

    let agent = Agent::start(&format!(
        r#"
interval = "100ms"
node = "{NODE}"
[[sources]]
type = "nvml"
library = "{LIB_PATH}"
"#
    ))
    .await;
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            t.matches("dcwatt_module_power_watts{").count() == 2
                && t.matches("dcwatt_gpu_temperature_slowdown_margin_celsius{")
                    .count()
                    == 4
                && t.matches("dcwatt_gpu_sm_active_ratio{").count() == 4
                && (0..4)
                    .all(|i| t.contains(&format!("dcwatt_gpu_up{{node=\"{NODE}\",gpu=\"{i}\"")))
        })
        .await;

    let gpus = capture::gpus(&xml);
    assert_eq!(gpus.len(), 4);
    let mut modules: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, g) in gpus.iter().enumerate() {
        let at = |p: &str| path(g, p).unwrap_or_else(|| panic!("no <{p}> for GPU {i}"));
        let num = |p: &str, unit: &str| {
            number(at(p), unit).unwrap_or_else(|| panic!("<{p}> {:?} is not in {unit}", at(p)))
        };
        let uuid = at("uuid");
        let model = at("product_name");
        let l = labels(i, uuid, model);
        let s = |name: &str| must(&text, &format!("{name}{{{l}}}"));
        let sl = |name: &str, k: &str, v: &str| must(&text, &format!(r#"{name}{{{l},{k}="{v}"}}"#));
        let what = |m: &str| format!("GPU {i} {m}");

        assert_eq!(
            must(
                &text,
                &format!(r#"dcwatt_gpu_up{{node="{NODE}",gpu="{i}",uuid="{uuid}"}}"#)
            ),
            1.0
        );
        let bus = at("pci/pci_bus_id");
        assert_eq!(
            must(
                &text,
                &format!(r#"dcwatt_gpu_info{{{l},driver_version="{driver}",pci_bus_id="{bus}"}}"#)
            ),
            1.0,
            "{}",
            what("identity")
        );
        // Power, three scopes.
        near(
            s("dcwatt_gpu_power_watts"),
            num("gpu_power_readings/average_power_draw", "W"),
            &what("power"),
        );
        near(
            s("dcwatt_gpu_power_instant_watts"),
            num("gpu_power_readings/instant_power_draw", "W"),
            &what("instant power"),
        );
        near(
            s("dcwatt_gpu_memory_power_watts"),
            num("gpu_memory_power_readings/average_power_draw", "W"),
            &what("memory power"),
        );
        near(
            s("dcwatt_gpu_power_limit_watts"),
            num("gpu_power_readings/current_power_limit", "W"),
            &what("limit"),
        );
        near(
            s("dcwatt_gpu_power_default_limit_watts"),
            num("gpu_power_readings/default_power_limit", "W"),
            &what("default limit"),
        );
        // Temperatures, the margin and the T.Limit offsets, signed.
        let temp = "dcwatt_gpu_temperature_celsius";
        near(
            sl(temp, "sensor", "gpu"),
            num("temperature/gpu_temp", "C"),
            &what("temp"),
        );
        near(
            sl(temp, "sensor", "memory"),
            num("temperature/memory_temp", "C"),
            &what("mem temp"),
        );
        near(
            s("dcwatt_gpu_temperature_slowdown_margin_celsius"),
            num("temperature/gpu_temp_tlimit", "C"),
            &what("margin"),
        );
        let off = "dcwatt_gpu_temperature_tlimit_offset_celsius";
        for (label, p) in [
            ("shutdown", "temperature/gpu_temp_max_tlimit_threshold"),
            ("slowdown", "temperature/gpu_temp_slow_tlimit_threshold"),
            (
                "memory_max",
                "temperature/gpu_temp_max_mem_tlimit_threshold",
            ),
            ("gpu_max", "temperature/gpu_temp_max_gpu_tlimit_threshold"),
        ] {
            near(sl(off, "threshold", label), num(p, "C"), &what(label));
        }
        assert_eq!(
            value(
                &text,
                &format!(r#"dcwatt_gpu_temperature_threshold_celsius{{{l},threshold="slowdown"}}"#)
            ),
            None,
            "offsets are not degrees"
        );
        // Memory: reserved apart from used.
        let mib = 1024.0 * 1024.0;
        near(
            s("dcwatt_gpu_memory_total_bytes"),
            num("fb_memory_usage/total", "MiB") * mib,
            &what("total"),
        );
        near(
            s("dcwatt_gpu_memory_used_bytes"),
            num("fb_memory_usage/used", "MiB") * mib,
            &what("used"),
        );
        near(
            s("dcwatt_gpu_memory_reserved_bytes"),
            num("fb_memory_usage/reserved", "MiB") * mib,
            &what("reserved"),
        );
        // Clocks, PCIe, health.
        near(
            sl("dcwatt_gpu_clock_hertz", "clock", "sm"),
            num("clocks/sm_clock", "MHz") * 1e6,
            &what("sm"),
        );
        near(
            sl("dcwatt_gpu_clock_hertz", "clock", "memory"),
            num("clocks/mem_clock", "MHz") * 1e6,
            &what("mem clock"),
        );
        near(
            s("dcwatt_gpu_pcie_link_generation"),
            num("pci/pci_gpu_link_info/pcie_gen/current_link_gen", ""),
            &what("pcie gen"),
        );
        near(
            s("dcwatt_gpu_pcie_link_width_lanes"),
            num("pci/pci_gpu_link_info/link_widths/current_link_width", "x"),
            &what("pcie width"),
        );
        near(
            s("dcwatt_gpu_pcie_replays_total"),
            num("pci/replay_counter", ""),
            &what("replays"),
        );
        // No recovery action asked (the GB300 capture has no such element;
        // the profile answers "None", 0, as the GB200 capture shows).
        assert_eq!(s("dcwatt_gpu_recovery_action"), 0.0, "{}", what("recovery"));
        near(
            sl("dcwatt_gpu_remapped_rows_total", "cause", "correctable"),
            num("remapped_rows/remapped_row_corr", ""),
            &what("remapped corr"),
        );
        near(
            sl("dcwatt_gpu_remapped_rows_total", "cause", "uncorrectable"),
            num("remapped_rows/remapped_row_unc", ""),
            &what("remapped unc"),
        );
        let yes = |p: &str| if at(p) == "Yes" { 1.0 } else { 0.0 };
        near(
            s("dcwatt_gpu_remapped_rows_pending"),
            yes("remapped_rows/remapped_row_pending"),
            &what("pending"),
        );
        near(
            s("dcwatt_gpu_remapped_rows_failure"),
            yes("remapped_rows/remapped_row_failure"),
            &what("failure"),
        );
        let idle = if at("clocks_event_reasons/clocks_event_reason_gpu_idle") == "Active" {
            1.0
        } else {
            0.0
        };
        near(
            sl("dcwatt_gpu_throttle_active", "reason", "gpu_idle"),
            idle,
            &what("idle"),
        );
        assert_eq!(
            value(
                &text,
                &format!("dcwatt_gpu_down_info{{{l},reason=\"gpu_lost\"}}")
            ),
            None
        );
        // GPM: served on the profile (idle, as the capture's 0 % utilization).
        near(
            s("dcwatt_gpu_sm_active_ratio"),
            num("utilization/gpu_util", "%") / 100.0,
            &what("sm active"),
        );
        for name in [
            "dcwatt_gpu_sm_occupancy_ratio",
            "dcwatt_gpu_tensor_active_ratio",
            "dcwatt_gpu_dram_active_ratio",
        ] {
            assert_eq!(s(name), 0.0, "{}", what(name));
        }
        modules.entry(at("serial").to_owned()).or_default().push(i);
    }

    // Module power: once per superchip (the GPUs sharing a board serial), as
    // its lowest-index GPU reports it; its partner reports the same module
    // within 1 % (the capture read them a moment apart).
    assert_eq!(modules.len(), 2);
    for (serial, members) in &modules {
        let id = format!("sn-{serial}");
        let gpus_label = members
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            must(
                &text,
                &format!(
                    r#"dcwatt_module_info{{node="{NODE}",module="{id}",gpus="{gpus_label}"}}"#
                )
            ),
            1.0
        );
        let module = |p: &str, i: usize| number(path(gpus[i], p).unwrap(), "W").unwrap();
        let got = must(
            &text,
            &format!(r#"dcwatt_module_power_watts{{node="{NODE}",module="{id}"}}"#),
        );
        near(
            got,
            module("module_power_readings/average_power_draw", members[0]),
            "module power",
        );
        let partner = module("module_power_readings/average_power_draw", members[1]);
        assert!((got - partner).abs() / partner < 0.01, "{got} vs {partner}");
        near(
            must(
                &text,
                &format!(r#"dcwatt_module_power_instant_watts{{node="{NODE}",module="{id}"}}"#),
            ),
            module("module_power_readings/instant_power_draw", members[0]),
            "module instant",
        );
        // The module is more than its GPUs: the Grace CPU and LPDDR too.
        let gpu_sum: f64 = members
            .iter()
            .map(|i| {
                number(
                    path(gpus[*i], "gpu_power_readings/average_power_draw").unwrap(),
                    "W",
                )
                .unwrap()
            })
            .sum();
        assert!(got > gpu_sum, "module {got} W ≤ its GPUs {gpu_sum} W");
    }
    assert_eq!(
        text.matches("dcwatt_module_power_watts{").count(),
        2,
        "{text}"
    );

    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));

    // Module energy is integrated (no counter): it grows while power flows.
    let energy = |t: &str| {
        value(
            t,
            &format!(
                r#"dcwatt_module_energy_joules_total{{node="{NODE}",module="sn-1650000000001",method="integrated"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    let e0 = energy(&text);
    let text = agent
        .wait_for(Duration::from_secs(10), |t| energy(t) > e0)
        .await;
    assert!(energy(&text) > e0);
    // NVLink: 18 links per GPU, Blackwell's four error counters each, all 0.
    let text = agent
        .wait_for(Duration::from_secs(20), |t| {
            t.matches("dcwatt_gpu_nvlink_errors_total{").count() == 4 * 18 * 4
        })
        .await;
    assert!(text
        .lines()
        .filter(|l| l.starts_with("dcwatt_gpu_nvlink_errors_total{"))
        .all(|l| l.ends_with(" 0")));

    // The call budget of a steady-state tick (static facts cached), counted
    // by the library: every NVML call the agent's GPU reads make, per GPU
    // per tick; a tick is one field-values call per GPU.
    reset_call_counts().unwrap();
    let field_calls =
        |c: &BTreeMap<String, u64>| c.get("nvmlDeviceGetFieldValues").copied().unwrap_or(0);
    let mut counts = call_counts().unwrap();
    while field_calls(&counts) < 4 * 40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = call_counts().unwrap();
    }
    agent.stop().await;
    let counts = call_counts().unwrap();
    let ticks_x_gpus = field_calls(&counts) as f64;
    let per_gpu: BTreeMap<&String, f64> = counts
        .iter()
        .filter(|(name, _)| !NODE_CALLS.contains(&name.as_str()))
        .map(|(name, n)| (name, *n as f64 / ticks_x_gpus))
        .collect();
    let total: f64 = per_gpu.values().sum();
    assert!(
        total <= CALL_BUDGET_PER_GPU + 1e-9,
        "{total:.2} NVML calls per GPU per tick, budget {CALL_BUDGET_PER_GPU}: {per_gpu:#?}"
    );
    let per = |name: &str| per_gpu.get(&name.to_owned()).copied().unwrap_or(0.0);
    // The stop frees the two GPM sample buffers of each GPU (the control
    // thread ends after the agent's stop returns).
    let mut freed = counts.get("nvmlGpmSampleFree").copied().unwrap_or(0);
    for _ in 0..100 {
        if freed >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        freed = call_counts()
            .unwrap()
            .get("nvmlGpmSampleFree")
            .copied()
            .unwrap_or(0);
    }
    assert_eq!(freed, 8, "{counts:#?}");
    assert!(
        per("nvmlDeviceGetCount_v2") == 0.0
            && counts.get("nvmlDeviceGetCount_v2").copied().unwrap_or(0) as f64
                <= ticks_x_gpus / 4.0 + 1.0,
        "{counts:#?}"
    );
    // Within the budget every reading still comes round: GPM, utilization
    // and clock-event reasons at least every third tick, memory, margin and
    // clocks at least every 20th (the readings without a field, in turn).
    for (name, at_least) in [
        ("nvmlGpmMetricsGet", 1.0 / 3.0),
        ("nvmlGpmSampleGet", 1.0 / 3.0),
        ("nvmlDeviceGetUtilizationRates", 1.0 / 3.0),
        ("nvmlDeviceGetCurrentClocksEventReasons", 1.0 / 3.0),
        ("nvmlDeviceGetMemoryInfo_v2", 1.0 / 20.0),
        ("nvmlDeviceGetMarginTemperature", 1.0 / 20.0),
        ("nvmlDeviceGetClockInfo", 2.0 / 20.0),
        ("nvmlDeviceGetTemperatureV", 1.0),
        ("nvmlDeviceGetFieldValues", 1.0),
    ] {
        assert!(per(name) >= at_least, "{name}: {per_gpu:#?}");
    }
    // No deprecated call where NVML 13's answers.
    for deprecated in [
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetViolationStatus",
        "nvmlDeviceGetPowerUsage",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetHandleByIndex_v2",
    ] {
        assert_eq!(
            per_gpu.get(&deprecated.to_owned()).copied().unwrap_or(0.0),
            0.0,
            "{deprecated}: {per_gpu:#?}"
        );
    }
}
