//! `dcwatt-sim agent-bench` works: a short run starts the simulator, an agent
//! (8 fake GPUs, 4 Redfish meters) and, when installed, node_exporter, scrapes
//! them and prints its table. No speed is asserted; the numbers are measured by
//! the command in docs/benchmarks.md. The command kills every process it starts.

use std::process::Command;

use dcwatt_sim::launch::bin_dir;

fn agent_bench(extra: &[&str]) -> String {
    let out = Command::new(bin_dir().join("dcwatt-sim"))
        .args(["agent-bench", "--duration-s", "3", "--agent-scrape-s", "1"])
        .args(["--latency-requests", "6", "--latency-gap-ms", "20"])
        .args(extra)
        .output()
        .expect("dcwatt-sim (build the workspace first)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn row<'a>(stdout: &'a str, process: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("| {process} |")))
        .unwrap_or_else(|| panic!("no {process} row:\n{stdout}"));
    line.split('|').map(str::trim).collect()
}

#[test]
fn agent_bench_runs_and_reports() {
    let stdout = agent_bench(&[]);
    // | process | CPU s | CPU % | peak RSS MiB | threads | scrapes | failed | …
    let agent = row(&stdout, "dcwatt-agent");
    let rss: f64 = agent[4].parse().unwrap();
    assert!(rss > 0.0, "{stdout}");
    let scrapes: u64 = agent[6].parse().unwrap();
    assert!(scrapes >= 2, "{stdout}");
    assert_eq!(agent[7], "0", "failed scrapes:\n{stdout}");
    // | endpoint | requests | failed | p50 ms | …: three of each, none failed.
    for endpoint in ["/metrics", "/healthz"] {
        let lat = row(&stdout, endpoint);
        assert_eq!((lat[2], lat[3]), ("3", "0"), "{stdout}");
    }
    if which("prometheus-node-exporter") || which("node_exporter") {
        let ne = row(&stdout, "node_exporter");
        assert_eq!(ne[7], "0", "failed scrapes:\n{stdout}");
    } else {
        assert!(stdout.contains("node_exporter: not installed"), "{stdout}");
    }
}

#[test]
fn agent_bench_with_collector_runs() {
    // With the meters read every 2 s and batches shipped every 2 s: the
    // agent takes both settings (a refused config fails the run).
    let stdout = agent_bench(&[
        "--with-collector",
        "--no-node-exporter",
        "--meter-interval",
        "2s",
        "--ship-interval",
        "2s",
    ]);
    row(&stdout, "dcwatt-agent");
    row(&stdout, "dcwatt-collector");
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}
