//! README's first command works: `dcwatt-sim demo` starts the hall, the
//! collector and the agents, prints live lines with a PUE and a WUE, and stops
//! everything it started.

use std::process::Command;

use dcwatt_sim::launch::bin_dir;

#[test]
fn demo_prints_a_live_pue_line_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("dcwatt-sim"))
        .args([
            "demo",
            "--duration",
            "20",
            "--racks",
            "1",
            "--nodes-per-rack",
            "2",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("dcwatt-sim (build the workspace first)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/v1/summary"), "{stdout}");
    let pue_line = stdout
        .lines()
        .find(|l| l.contains("PUE 1.") && l.contains("facility") && l.contains("hottest r1-n"));
    assert!(pue_line.is_some(), "no live PUE line:\n{stdout}");
    // The instant PUE cuts every meter at the same instants: once it is there
    // (10 s of every meter's energy), it stays, and never reads below 1 (a
    // ratio of readings taken at different instants came and went).
    let instants: Vec<Option<f64>> = stdout
        .lines()
        .filter_map(|l| l.split("instant ").nth(1))
        .map(|rest| rest.split(')').next().unwrap_or("").trim().parse().ok())
        .collect();
    let first = instants.iter().position(Option::is_some);
    let first = first.unwrap_or_else(|| panic!("no instant PUE:\n{stdout}"));
    for v in &instants[first..] {
        let v = v.unwrap_or_else(|| panic!("the instant PUE went away:\n{stdout}"));
        assert!(v >= 1.0, "instant PUE {v}:\n{stdout}");
    }
    // The site water meter (JSON, litres) gives a live WUE of about 0.2 L/kWh.
    assert!(
        stdout.lines().any(|l| l.contains("WUE 0.")),
        "no live WUE:\n{stdout}"
    );
    // Every process it started is gone: their ports no longer answer.
    for line in stdout.lines().filter(|l| l.contains("/metrics")) {
        let url = line.split_whitespace().last().unwrap();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listening after the demo"
        );
    }
}
