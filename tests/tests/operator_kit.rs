//! The operator kit, checked by the real tools: the Prometheus rules and
//! config by promtool (syntax, and a unit test of every alert firing and not
//! firing), the systemd units by systemd-analyze, the Grafana dashboards for
//! shape; and every metric the rules and dashboards use is one the code exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use dcwatt_tests::{dashboards, walk_panels};

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// Runs a tool; fails the test with its output unless it succeeds.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{said}");
    said
}

#[test]
fn prometheus_rules_and_config_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    run(
        &dir,
        "promtool",
        &["check", "rules", "recording.yml", "alerts.yml"],
    );
    // The config names the scrape token's file, which promtool wants to see:
    // checked in a copy with a token written beside it (no token is shipped).
    let copy = tempfile::tempdir().unwrap();
    for name in ["prometheus.yml", "recording.yml", "alerts.yml"] {
        std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
    }
    std::fs::write(copy.path().join("dcwatt-scrape.token"), "scrape-token\n").unwrap();
    run(
        copy.path(),
        "promtool",
        &["check", "config", "prometheus.yml"],
    );
    let said = run(
        &dir,
        "promtool",
        &[
            "test",
            "rules",
            "tests/alerts_test.yml",
            "tests/recording_test.yml",
        ],
    );
    assert_eq!(said.matches("SUCCESS").count(), 2, "{said}");
}

/// Every alert in alerts.yml is named in the unit tests at least twice: once
/// where it must not fire (no expected alerts) and once where it must.
#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let dir = repo().join("deploy/prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("tests/alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 12, "{alerts:?}");
    for alert in alerts {
        // Each `alertname: X` line is followed by its exp_alerts.
        let mut quiet = false;
        let mut firing = false;
        let mut lines = tests.lines().peekable();
        while let Some(l) = lines.next() {
            if l.trim() == format!("alertname: {alert}") {
                match lines.peek().map(|n| n.trim()) {
                    Some("exp_alerts: []") => quiet = true,
                    Some("exp_alerts:") => firing = true,
                    _ => {}
                }
            }
        }
        assert!(
            quiet && firing,
            "{alert}: quiet test {quiet}, firing test {firing}"
        );
    }
}

#[test]
fn systemd_units_pass_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let bin = repo().join("target/debug");
    for unit in ["dcwatt-agent.service", "dcwatt-collector.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
        // The units name the installed binaries; point them at the built ones.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        std::fs::write(dir.path().join(unit), text).unwrap();
        let said = run(dir.path(), "systemd-analyze", &["verify", unit]);
        assert!(said.trim().is_empty(), "{unit}:\n{said}");
    }
}

/// Metric names the code exports: every `"dcwatt_…"` string literal in the
/// agent's and collector's sources.
fn exported_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![repo().join("agent/src"), repo().join("collector/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"dcwatt_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// Metric names an expression uses: `dcwatt_…` words and recording-rule names.
fn used_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == '_'
                || bytes[i - 1] == ':');
        if word_start && (bytes[i].is_ascii_alphabetic()) {
            let w: String = bytes[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == ':')
                .collect();
            i += w.len();
            if w.starts_with("dcwatt_") || w.contains(":dcwatt") || w.starts_with("dcwatt:") {
                out.push(w);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn recorded_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/recording.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect()
}

fn check_names(what: &str, expr: &str, exported: &BTreeSet<String>, recorded: &BTreeSet<String>) {
    for name in used_names(expr) {
        // A histogram's series carry a suffix the code does not spell out.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        let known = if name.contains(':') {
            recorded.contains(&name)
        } else {
            exported.contains(&name) || exported.contains(base)
        };
        assert!(
            known,
            "{what}: {name} is neither exported by the code nor recorded: {expr}"
        );
    }
}

#[test]
fn rules_use_only_metrics_the_code_exports() {
    let exported = exported_names();
    let recorded = recorded_names();
    assert!(exported.contains("dcwatt_pue_ratio") && exported.contains("dcwatt_gpu_up"));
    for file in ["alerts.yml", "recording.yml"] {
        let text = std::fs::read_to_string(repo().join("deploy/prometheus").join(file)).unwrap();
        check_names(file, &text, &exported, &recorded);
    }
    // The check itself: an unknown name is caught.
    let caught = std::panic::catch_unwind(|| {
        check_names(
            "probe",
            "rate(dcwatt_made_up_total[5m])",
            &exported,
            &recorded,
        )
    });
    assert!(caught.is_err());
}

#[test]
fn dashboards_are_templated_and_use_only_exported_metrics() {
    let exported = exported_names();
    let recorded = recorded_names();
    let boards = dashboards();
    let files: Vec<&str> = boards.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        ["facility.json", "gpu-thermals.json", "tenants.json"]
    );
    let mut uids = BTreeSet::new();
    for (file, d) in &boards {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_owned()),
            "{file}: uid"
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: no datasource variable"
        );
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"], "${datasource}",
                "{file}: variable {}",
                v["name"]
            );
            check_names(
                file,
                v["definition"].as_str().unwrap(),
                &exported,
                &recorded,
            );
        }
        let mut panels = Vec::new();
        walk_panels(d["panels"].as_array().unwrap(), &mut panels);
        assert!(panels.len() >= 8, "{file}: {} panels", panels.len());
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let title = &p["title"];
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}: {title}");
                let expr = t["expr"].as_str().unwrap();
                assert!(!used_names(expr).is_empty(), "{file}: {title}: {expr}");
                check_names(&format!("{file}: {title}"), expr, &exported, &recorded);
            }
        }
    }
}

/// The unit a dashboard query's values are in, from its metrics' names (the
/// Prometheus suffix convention) and the arithmetic the query does on them.
fn query_unit(expr: &str) -> &'static str {
    if expr.trim_start().starts_with("count(") {
        return "count";
    }
    let compact: String = expr.split_whitespace().collect();
    let mut units: Vec<&'static str> = used_names(expr)
        .iter()
        .map(|name| {
            if name.contains("_joules_total") {
                if compact.contains("rate(") {
                    "W"
                } else if compact.ends_with("/3.6e6") {
                    "kWh"
                } else {
                    "J"
                }
            } else if name.contains("_seconds_total") {
                if compact.ends_with("/3600") {
                    "h"
                } else {
                    "s"
                }
            } else if name.contains("_watts") {
                "W"
            } else if name.contains("_celsius") {
                "°C"
            } else if name.contains("_litres_per_kilowatt_hour") {
                "L/kWh"
            } else if name.contains("pue_ratio") || name.contains("pue_instant_ratio") {
                // PUE and partial PUE: a ratio of at least 1, not a share.
                "ratio"
            } else if name.contains("_ratio") {
                // Coverage, utilization, residual: shares of a whole.
                "share"
            } else {
                // Gauges of things and counters of events.
                "count"
            }
        })
        .collect();
    units.dedup();
    assert_eq!(units.len(), 1, "{expr}: mixes units {units:?}");
    units[0]
}

/// Grafana units that display a query unit.
fn grafana_units(unit: &str) -> &'static [&'static str] {
    match unit {
        "W" => &["watt", "kwatt"],
        "kWh" => &["kwatth"],
        "J" => &["joule"],
        "h" => &["h"],
        "s" => &["s"],
        "°C" => &["celsius"],
        "L/kWh" => &["suffix:L/kWh"],
        "ratio" => &["none"],
        "share" => &["percentunit"],
        "count" => &["", "none", "short"],
        _ => &[],
    }
}

/// Each panel's unit is the unit of every one of its queries.
#[test]
fn dashboard_units_match_their_queries() {
    let mut checked = 0;
    for (file, d) in dashboards() {
        let mut panels = Vec::new();
        walk_panels(d["panels"].as_array().unwrap(), &mut panels);
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let title = &p["title"];
            let unit = p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            for o in p["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert!(
                    !o.to_string().contains("\"unit\""),
                    "{file}: {title}: a unit override, which this check does not read"
                );
            }
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let want = query_unit(expr);
                assert!(
                    grafana_units(want).contains(&unit),
                    "{file}: {title}: unit {unit:?}, but {expr} is in {want} ({:?})",
                    grafana_units(want)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "{checked} queries");
    // The rule does catch a mismatch.
    assert_eq!(
        query_unit("increase(dcwatt_tenant_gpu_seconds_total[1h]) / 3600"),
        "h"
    );
    assert!(!grafana_units(query_unit("dcwatt_pue_coverage_ratio")).contains(&"none"));
    assert_eq!(
        query_unit("rate(dcwatt_tenant_energy_joules_total[15m])"),
        "W"
    );
    assert_eq!(query_unit("dcwatt:pue_ratio:1h"), "ratio");
}
