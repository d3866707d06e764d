//! The load generator works (a short run, no speed asserted: the numbers are
//! measured by the benchmark command in docs/benchmarks.md, not by tests).

use std::process::Command;

use dcwatt_sim::launch::bin_dir;

/// One run's table: (header cells, the row's cells, all of stdout).
fn run(extra: &[&str]) -> (Vec<String>, Vec<String>, String) {
    let out = Command::new(bin_dir().join("dcwatt-sim"))
        .args(["load", "--agents", "40", "--duration-s", "2"])
        .args(extra)
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
    let owned = |v: Vec<&str>| v.into_iter().map(String::from).collect();
    (owned(header), owned(cells), stdout.into_owned())
}

#[test]
fn load_generator_runs_and_reports() {
    let (header, cells, stdout) = run(&[]);
    let row = &cells.join(" | ");
    let cell = |name: &str| {
        let i = header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name:?}: {stdout}"));
        cells[i].as_str()
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

/// Merged requests of several ticks (agents with a `ship_interval`) are
/// accepted, in either encoding: none fails, and each request carries the
/// ticks it claims.
#[test]
fn load_generator_sends_merged_ticks() {
    for encoding in ["json", "binary"] {
        merged_ticks(encoding);
    }
}

fn merged_ticks(encoding: &str) {
    let (header, cells, stdout) = run(&[
        "--ticks-per-request",
        "5",
        "--interval-s",
        "0.2",
        "--encoding",
        encoding,
    ]);
    let i = header.iter().position(|h| h == "encoding").unwrap();
    assert_eq!(cells[i], encoding, "{stdout}");
    let cell = |name: &str| -> f64 {
        let i = header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name:?}: {stdout}"));
        cells[i]
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}: {stdout}"))
    };
    assert_eq!(cell("ticks/request"), 5.0, "{stdout}");
    assert_eq!(cell("failed"), 0.0, "failed requests: {stdout}");
    let (requests, batches) = (cell("requests/s"), cell("batches/s"));
    assert!(requests > 0.0, "{stdout}");
    assert!((batches - 5.0 * requests).abs() <= 3.0, "{stdout}");
}
