//! The GB300 and GB200 profiles are transcribed from the real captures in
//! `captures/`: this test parses every value a profile takes out of the XML
//! (`dcwatt_fake_nvml::capture`, a small tag extractor, no XML crate) and compares, so a transcription
//! error fails here. It also checks the two facts the agent's module grouping
//! relies on: the GPUs of a superchip share the board serial, and on the
//! GB300 tray they are PCI domain pairs.

use dcwatt_fake_nvml::capture::{self, gpus};
use dcwatt_fake_nvml::profiles::{parse_bus_id, CaptureTray, GB200, GB300};

/// `a/b/c`: nested tags; panics naming the path when it is missing.
fn path<'a>(xml: &'a str, p: &str) -> &'a str {
    capture::path(xml, p).unwrap_or_else(|| panic!("no <{p}> in the capture"))
}

/// "180.36 W" → 18036 (centiwatts), exactly, from the decimal text.
fn centi(text: &str, unit: &str) -> u32 {
    let n = text
        .strip_suffix(unit)
        .unwrap_or_else(|| panic!("{text:?} is not in {unit}"))
        .trim();
    let (int, frac) = n.split_once('.').unwrap_or((n, "0"));
    assert_eq!(frac.len(), 2, "{text}: two decimals");
    int.parse::<u32>().unwrap() * 100 + frac.parse::<u32>().unwrap()
}

/// "38 C" → 38; "-2 C" → -2; "284208 MiB" → 284208; "16x" → 16.
fn int(text: &str, unit: &str) -> i64 {
    text.strip_suffix(unit)
        .unwrap_or_else(|| panic!("{text:?} is not in {unit}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn check(file: &str, tray: &CaptureTray) {
    let xml = capture::read(file).expect("the capture");
    assert_eq!(path(&xml, "driver_version"), tray.driver_version);
    let blocks = gpus(&xml);
    assert_eq!(blocks.len(), tray.gpus.len(), "{file}: GPUs");
    for (g, c) in blocks.iter().zip(&tray.gpus) {
        let at = |p: &str| path(g, p);
        let what = format!("{file} {}", c.pci_bus_id);
        assert_eq!(at("product_name"), tray.product_name, "{what}");
        assert_eq!(at("pci/pci_bus_id"), c.pci_bus_id, "{what}");
        assert_eq!(at("serial"), c.serial, "{what}");
        assert_eq!(at("uuid"), c.uuid, "{what}");
        assert_eq!(
            int(at("platformInfo/module_id"), ""),
            i64::from(c.module_id),
            "{what}"
        );
        assert_eq!(
            int(at("temperature/gpu_temp"), "C"),
            i64::from(c.gpu_temp_c),
            "{what}"
        );
        assert_eq!(
            int(at("temperature/gpu_temp_tlimit"), "C"),
            i64::from(c.tlimit_c),
            "{what}"
        );
        assert_eq!(
            int(at("temperature/memory_temp"), "C"),
            i64::from(c.memory_temp_c),
            "{what}"
        );
        let t = &tray.tlimit;
        for (p, want) in [
            ("temperature/gpu_temp_max_tlimit_threshold", t.shutdown),
            ("temperature/gpu_temp_slow_tlimit_threshold", t.slowdown),
            ("temperature/gpu_temp_max_mem_tlimit_threshold", t.mem_max),
            ("temperature/gpu_temp_max_gpu_tlimit_threshold", t.gpu_max),
        ] {
            assert_eq!(int(at(p), "C"), i64::from(want), "{what} {p}");
        }
        assert_eq!(
            centi(at("gpu_power_readings/average_power_draw"), "W"),
            c.power_cw,
            "{what}"
        );
        assert_eq!(
            centi(at("gpu_power_readings/instant_power_draw"), "W"),
            c.power_instant_cw,
            "{what}"
        );
        assert_eq!(
            centi(at("gpu_power_readings/current_power_limit"), "W"),
            tray.power_limit_cw,
            "{what}"
        );
        assert_eq!(
            centi(at("gpu_power_readings/default_power_limit"), "W"),
            tray.power_limit_cw,
            "{what}"
        );
        assert_eq!(
            centi(at("gpu_memory_power_readings/average_power_draw"), "W"),
            c.memory_power_cw,
            "{what}"
        );
        assert_eq!(
            at("gpu_memory_power_readings/instant_power_draw"),
            "N/A",
            "{what}"
        );
        assert_eq!(
            centi(at("module_power_readings/average_power_draw"), "W"),
            c.module_power_cw,
            "{what}"
        );
        assert_eq!(
            centi(at("module_power_readings/instant_power_draw"), "W"),
            c.module_power_instant_cw,
            "{what}"
        );
        assert_eq!(
            int(at("fb_memory_usage/total"), "MiB"),
            tray.memory_total_mib as i64,
            "{what}"
        );
        assert_eq!(
            int(at("fb_memory_usage/reserved"), "MiB"),
            tray.memory_reserved_mib as i64,
            "{what}"
        );
        assert_eq!(
            int(at("fb_memory_usage/used"), "MiB"),
            tray.memory_used_mib as i64,
            "{what}"
        );
        assert_eq!(
            int(at("clocks/sm_clock"), "MHz"),
            i64::from(tray.sm_clock_mhz),
            "{what}"
        );
        assert_eq!(
            int(at("clocks/mem_clock"), "MHz"),
            i64::from(tray.mem_clock_mhz),
            "{what}"
        );
        assert_eq!(
            int(at("pci/pci_gpu_link_info/pcie_gen/current_link_gen"), ""),
            i64::from(tray.pcie_gen),
            "{what}"
        );
        assert_eq!(
            int(
                at("pci/pci_gpu_link_info/link_widths/current_link_width"),
                "x"
            ),
            i64::from(tray.pcie_width),
            "{what}"
        );
        assert_eq!(
            at("clocks_event_reasons/clocks_event_reason_gpu_idle"),
            "Active",
            "{what}"
        );
        assert_eq!(int(at("pci/replay_counter"), ""), 0, "{what}");
        assert_eq!(int(at("remapped_rows/remapped_row_corr"), ""), 0, "{what}");
        assert_eq!(int(at("remapped_rows/remapped_row_unc"), ""), 0, "{what}");
        assert_eq!(at("remapped_rows/remapped_row_pending"), "No", "{what}");
        assert_eq!(at("remapped_rows/remapped_row_failure"), "No", "{what}");
    }
}

#[test]
fn gb300_profile_is_the_capture() {
    check("qx-gb300.xml", &GB300);
}

#[test]
fn gb200_profile_is_the_capture() {
    check("qx-gb200.xml", &GB200);
}

#[test]
fn superchips_share_the_serial() {
    for tray in [&GB300, &GB200] {
        let g = &tray.gpus;
        assert_eq!(g[0].serial, g[1].serial);
        assert_eq!(g[2].serial, g[3].serial);
        assert_ne!(g[0].serial, g[2].serial);
        // module_id is per GPU, not per superchip: it cannot group them.
        let mut ids: Vec<u32> = g.iter().map(|x| x.module_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4]);
    }
    let domains: Vec<u32> = GB300
        .gpus
        .iter()
        .map(|g| parse_bus_id(g.pci_bus_id).unwrap().0)
        .collect();
    assert_eq!(domains, [0x8, 0x9, 0x18, 0x19]);
    assert!(GB200
        .gpus
        .iter()
        .all(|g| parse_bus_id(g.pci_bus_id).unwrap().0 == 0));
}

#[test]
fn the_extractor_can_fail() {
    // A wrong transcription is caught: the comparison is not vacuous.
    let mut tray = GB300;
    tray.gpus[1].module_power_cw += 1;
    let r = std::panic::catch_unwind(|| check("qx-gb300.xml", &tray));
    assert!(r.is_err());
}
