//! The golden exposition files pass `promtool check metrics`.

use dcwatt_tests::promtool_check_metrics;

#[test]
fn collector_golden_metrics_pass_promtool() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../collector/tests/golden/metrics.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
}

#[test]
fn promtool_check_catches_a_bad_exposition() {
    // The check itself can fail: a counter without `_total` is a lint error.
    let bad = "# HELP x_joules Energy.\n# TYPE x_joules counter\nx_joules 1\n";
    assert!(promtool_check_metrics(bad).is_err());
}
