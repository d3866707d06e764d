//! The fake library fills structs laid out by NVIDIA's `nvml.h`; the agent
//! passes structs laid out by `nvml-wrapper-sys`'s Rust bindings. This test
//! compares the two, field by field, for every struct the agent hands to (or
//! gets from) NVML, and every version constant of a versioned call: a binding
//! that drifted from the header (a field added, a type widened) fails here
//! instead of corrupting memory in the agent.
//!
//! The C side is the library's own table (`dcwattFakeLayout`: `sizeof`,
//! `_Alignof`, `offsetof` as the C compiler computed them from the header).

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};

use dcwatt_fake_nvml::introspect::{layout, LayoutRow};
use nvml_wrapper_sys::bindings as b;

/// `(type, field) -> (offset, size)`, the Rust side, in the C table's terms.
fn rust_layout() -> BTreeMap<(String, String), (u64, u64)> {
    let mut m = BTreeMap::new();
    macro_rules! st {
        ($c:literal, $t:ty) => {
            m.insert(
                ($c.to_owned(), String::new()),
                (align_of::<$t>() as u64, size_of::<$t>() as u64),
            );
        };
    }
    macro_rules! field {
        ($c:literal, $t:ty, $f:ident, $ft:ty) => {
            m.insert(
                ($c.to_owned(), stringify!($f).to_owned()),
                (offset_of!($t, $f) as u64, size_of::<$ft>() as u64),
            );
        };
    }
    macro_rules! version {
        ($c:literal, $t:ty, $v:literal) => {
            // What the agent and nvml-wrapper send: NVML_STRUCT_VERSION.
            m.insert(
                ($c.to_owned(), "(version)".to_owned()),
                (0, (size_of::<$t>() | ($v << 24)) as u64),
            );
        };
    }
    st!("nvmlFieldValue_t", b::nvmlFieldValue_t);
    field!("nvmlFieldValue_t", b::nvmlFieldValue_t, fieldId, u32);
    field!("nvmlFieldValue_t", b::nvmlFieldValue_t, scopeId, u32);
    field!("nvmlFieldValue_t", b::nvmlFieldValue_t, timestamp, i64);
    field!("nvmlFieldValue_t", b::nvmlFieldValue_t, latencyUsec, i64);
    field!(
        "nvmlFieldValue_t",
        b::nvmlFieldValue_t,
        valueType,
        b::nvmlValueType_t
    );
    field!(
        "nvmlFieldValue_t",
        b::nvmlFieldValue_t,
        nvmlReturn,
        b::nvmlReturn_t
    );
    field!(
        "nvmlFieldValue_t",
        b::nvmlFieldValue_t,
        value,
        b::nvmlValue_t
    );
    st!("nvmlValue_t", b::nvmlValue_t);
    st!("nvmlMemory_t", b::nvmlMemory_t);
    field!("nvmlMemory_t", b::nvmlMemory_t, total, u64);
    field!("nvmlMemory_t", b::nvmlMemory_t, free, u64);
    field!("nvmlMemory_t", b::nvmlMemory_t, used, u64);
    st!("nvmlMemory_v2_t", b::nvmlMemory_v2_t);
    field!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, version, u32);
    field!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, total, u64);
    field!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, reserved, u64);
    field!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, free, u64);
    field!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, used, u64);
    version!("nvmlMemory_v2_t", b::nvmlMemory_v2_t, 2);
    st!("nvmlTemperature_v1_t", b::nvmlTemperature_v1_t);
    field!(
        "nvmlTemperature_v1_t",
        b::nvmlTemperature_v1_t,
        version,
        u32
    );
    field!(
        "nvmlTemperature_v1_t",
        b::nvmlTemperature_v1_t,
        sensorType,
        b::nvmlTemperatureSensors_t
    );
    field!(
        "nvmlTemperature_v1_t",
        b::nvmlTemperature_v1_t,
        temperature,
        i32
    );
    version!("nvmlTemperature_v1_t", b::nvmlTemperature_v1_t, 1);
    st!("nvmlMarginTemperature_v1_t", b::nvmlMarginTemperature_v1_t);
    field!(
        "nvmlMarginTemperature_v1_t",
        b::nvmlMarginTemperature_v1_t,
        version,
        u32
    );
    field!(
        "nvmlMarginTemperature_v1_t",
        b::nvmlMarginTemperature_v1_t,
        marginTemperature,
        i32
    );
    version!(
        "nvmlMarginTemperature_v1_t",
        b::nvmlMarginTemperature_v1_t,
        1
    );
    st!("nvmlUtilization_t", b::nvmlUtilization_t);
    field!("nvmlUtilization_t", b::nvmlUtilization_t, gpu, u32);
    field!("nvmlUtilization_t", b::nvmlUtilization_t, memory, u32);
    st!("nvmlPciInfo_t", b::nvmlPciInfo_t);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, busIdLegacy, [i8; 16]);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, domain, u32);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, bus, u32);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, device, u32);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, pciDeviceId, u32);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, pciSubSystemId, u32);
    field!("nvmlPciInfo_t", b::nvmlPciInfo_t, busId, [i8; 32]);
    st!("nvmlViolationTime_t", b::nvmlViolationTime_t);
    field!(
        "nvmlViolationTime_t",
        b::nvmlViolationTime_t,
        referenceTime,
        u64
    );
    field!(
        "nvmlViolationTime_t",
        b::nvmlViolationTime_t,
        violationTime,
        u64
    );
    st!("nvmlEventData_t", b::nvmlEventData_t);
    field!(
        "nvmlEventData_t",
        b::nvmlEventData_t,
        device,
        b::nvmlDevice_t
    );
    field!("nvmlEventData_t", b::nvmlEventData_t, eventType, u64);
    field!("nvmlEventData_t", b::nvmlEventData_t, eventData, u64);
    field!("nvmlEventData_t", b::nvmlEventData_t, gpuInstanceId, u32);
    field!(
        "nvmlEventData_t",
        b::nvmlEventData_t,
        computeInstanceId,
        u32
    );
    st!("nvmlGpmMetric_t", b::nvmlGpmMetric_t);
    field!("nvmlGpmMetric_t", b::nvmlGpmMetric_t, metricId, u32);
    field!(
        "nvmlGpmMetric_t",
        b::nvmlGpmMetric_t,
        nvmlReturn,
        b::nvmlReturn_t
    );
    field!("nvmlGpmMetric_t", b::nvmlGpmMetric_t, value, f64);
    field!(
        "nvmlGpmMetric_t",
        b::nvmlGpmMetric_t,
        metricInfo,
        [usize; 3]
    );
    st!("nvmlGpmMetricsGet_t", b::nvmlGpmMetricsGet_t);
    field!("nvmlGpmMetricsGet_t", b::nvmlGpmMetricsGet_t, version, u32);
    field!(
        "nvmlGpmMetricsGet_t",
        b::nvmlGpmMetricsGet_t,
        numMetrics,
        u32
    );
    field!(
        "nvmlGpmMetricsGet_t",
        b::nvmlGpmMetricsGet_t,
        sample1,
        b::nvmlGpmSample_t
    );
    field!(
        "nvmlGpmMetricsGet_t",
        b::nvmlGpmMetricsGet_t,
        sample2,
        b::nvmlGpmSample_t
    );
    field!(
        "nvmlGpmMetricsGet_t",
        b::nvmlGpmMetricsGet_t,
        metrics,
        [b::nvmlGpmMetric_t; 210]
    );
    // Version 1 of the struct, whatever the array's length (see KNOWN).
    m.insert(
        ("nvmlGpmMetricsGet_t".to_owned(), "(version)".to_owned()),
        (0, u64::from(b::NVML_GPM_METRICS_GET_VERSION)),
    );
    m
}

/// Where NVIDIA's header and nvml-wrapper-sys 0.10 really differ: the header
/// (NVML 13.3) gives `nvmlGpmMetricsGet_t` 333 metric slots, the binding 210,
/// under the same version 1. NVML touches only `numMetrics` of them, so the
/// binding's struct is safe for up to 210 metrics; the agent does not use it
/// anyway (its own struct, `dcwatt_agent::sources::nvml::raw::GpmMetricsGet`,
/// has the header's 333, checked in the agent's `tests/nvml_layout.rs`).
const KNOWN: [(&str, &str); 2] = [
    ("nvmlGpmMetricsGet_t", ""),
    ("nvmlGpmMetricsGet_t", "metrics"),
];

#[test]
fn header_structs_match_the_rust_bindings() {
    let c: BTreeMap<(String, String), (u64, u64)> = layout()
        .expect("the fake library's layout table")
        .into_iter()
        .map(
            |LayoutRow {
                 ty,
                 field,
                 offset,
                 size,
             }| ((ty, field), (offset, size)),
        )
        .collect();
    let rust = rust_layout();
    assert!(!c.is_empty(), "the library's layout table is empty");
    let mut wrong = Vec::new();
    for (key, want) in &rust {
        match c.get(key) {
            Some(got) if got == want => {}
            Some(_) if KNOWN.contains(&(key.0.as_str(), key.1.as_str())) => {}
            Some(got) => wrong.push(format!(
                "{}.{}: header (offset/align, size) {got:?}, nvml-wrapper-sys {want:?}",
                key.0, key.1
            )),
            None => wrong.push(format!("{}.{}: not in the library's table", key.0, key.1)),
        }
    }
    for key in c.keys() {
        if !rust.contains_key(key) {
            wrong.push(format!(
                "{}.{}: in the library's table, not checked here",
                key.0, key.1
            ));
        }
    }
    assert!(wrong.is_empty(), "layout mismatches:\n{}", wrong.join("\n"));
}

/// The known difference is still there (when a newer binding matches the
/// header, this fails: drop it from [`KNOWN`]).
#[test]
fn gpm_metric_array_lengths_differ_as_documented() {
    let c: BTreeMap<_, _> = layout()
        .expect("the fake library's layout table")
        .into_iter()
        .map(|r| ((r.ty, r.field), (r.offset, r.size)))
        .collect();
    let header = c[&("nvmlGpmMetricsGet_t".to_owned(), "metrics".to_owned())].1;
    let element = size_of::<b::nvmlGpmMetric_t>() as u64;
    assert_eq!(header / element, 333);
    let binding = size_of::<b::nvmlGpmMetricsGet_t>() - offset_of!(b::nvmlGpmMetricsGet_t, metrics);
    assert_eq!(binding as u64 / element, 210);
}

/// The comparison itself can fail: a struct whose layout differs is caught.
#[test]
fn a_wrong_layout_is_caught() {
    let rust = rust_layout();
    // Pretend the binding had a 4-byte `timestamp` (an `int` instead of `long long`).
    let mut drifted = rust.clone();
    if let Some(v) = drifted.get_mut(&("nvmlFieldValue_t".to_owned(), "timestamp".to_owned())) {
        v.1 = 4;
    }
    let c: BTreeMap<_, _> = layout()
        .expect("the fake library's layout table")
        .into_iter()
        .map(|r| ((r.ty, r.field), (r.offset, r.size)))
        .collect();
    assert!(drifted.iter().any(|(k, v)| c.get(k) != Some(v)));
}
