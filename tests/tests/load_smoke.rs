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
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("| agents |"))
        .unwrap_or_else(|| panic!("no header:\n{stdout}"))
        .split('|')
        .map(str::trim)
        .collect();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let cell = |name: &str| {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name:?}: {stdout}"));
        cells[i]
    };
    let batches: f64 = cell("batches/s").parse().unwrap();
    assert!(batches > 0.0, "{row}");
    assert_eq!(cell("failed"), "0", "failed requests: {row}");
    // The collector's own latency histogram was read (a number, not NaN).
    let within: f64 = cell("collector ≤ 50 ms")
        .trim_end_matches(" %")
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {row}"));
    assert!(within > 0.0, "{row}");
}
