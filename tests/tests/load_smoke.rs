//! The load generator works (a short run, no speed asserted: the numbers are
//! measured by the benchmark command in docs/benchmarks.md, not by tests).

use std::process::Command;

use dcwatt_sim::launch::bin_dir;

#[test]
fn load_generator_runs_and_reports() {
    let out = Command::new(bin_dir().join("dcwatt-sim"))
        .args(["load", "--agents", "40", "--duration-s", "2"])
        .output()
        .expect("dcwatt-sim (build the workspace first)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 40 |"))
        .unwrap_or_else(|| panic!("no row:\n{stdout}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | agents | batches/s | readings/s | p50 | p99 | max | failed | …
    let batches: f64 = cells[2].parse().unwrap();
    assert!(batches > 0.0, "{row}");
    assert_eq!(cells[7], "0", "failed requests: {row}");
}
