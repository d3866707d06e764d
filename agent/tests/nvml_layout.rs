//! The one NVML struct the agent lays out itself,
//! `raw::GpmMetricsGet` (nvml-wrapper-sys 0.10's `nvmlGpmMetricsGet_t` has 210
//! metric slots, NVIDIA's NVML 13.3 header 333, under the same version), against
//! the header as the fake library was compiled with it.

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};

use dcwatt_agent::sources::nvml::raw::{GpmMetricsGet, GPM_METRIC_SLOTS};
use dcwatt_fake_nvml::introspect::layout;

#[test]
fn gpm_metrics_get_matches_the_header() {
    let c: BTreeMap<(String, String), (u64, u64)> = layout()
        .expect("the fake library's layout table")
        .into_iter()
        .map(|r| ((r.ty, r.field), (r.offset, r.size)))
        .collect();
    let row = |field: &str| {
        c.get(&("nvmlGpmMetricsGet_t".to_owned(), field.to_owned()))
            .copied()
            .unwrap_or_else(|| panic!("nvmlGpmMetricsGet_t.{field} not in the table"))
    };
    let agent: [(&str, (u64, u64)); 6] = [
        (
            "",
            (
                align_of::<GpmMetricsGet>() as u64,
                size_of::<GpmMetricsGet>() as u64,
            ),
        ),
        ("version", (offset_of!(GpmMetricsGet, version) as u64, 4)),
        (
            "numMetrics",
            (offset_of!(GpmMetricsGet, num_metrics) as u64, 4),
        ),
        (
            "sample1",
            (
                offset_of!(GpmMetricsGet, sample1) as u64,
                size_of::<usize>() as u64,
            ),
        ),
        (
            "sample2",
            (
                offset_of!(GpmMetricsGet, sample2) as u64,
                size_of::<usize>() as u64,
            ),
        ),
        (
            "metrics",
            (
                offset_of!(GpmMetricsGet, metrics) as u64,
                (size_of::<GpmMetricsGet>() - offset_of!(GpmMetricsGet, metrics)) as u64,
            ),
        ),
    ];
    for (field, want) in agent {
        assert_eq!(row(field), want, "nvmlGpmMetricsGet_t.{field}");
    }
    assert_eq!(row("(version)").1, 1);
    assert_eq!(GPM_METRIC_SLOTS, 333);
}
