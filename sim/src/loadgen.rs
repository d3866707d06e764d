//! `dcwatt-sim load`: a hall's worth of agents against one collector on
//! 127.0.0.1, bounded in count and time, for the benchmarks.
//!
//! Starts a real `dcwatt-collector` (its own database, N agents configured),
//! then N simulated agents, each posting a realistic batch once per interval
//! (4 GPUs × every GPU reading, plus a meter), phases spread over the interval.
//! Reports batches/s, readings/s, latency p50/p99/max, the collector's CPU
//! seconds and peak RSS (from `/proc`), and, as the ceiling, the rate at which
//! this process decodes the same batches with serde alone.
//!
//! `--ticks-per-request K` models agents with `[[collectors]] ship_interval`
//! = K × interval: each request is one merged batch (`first_seq..=seq`)
//! carrying K ticks, sent every K intervals. "batches" in the report are
//! always ticks (one agent's readings of one interval), so rows with
//! different K compare per unit of work.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use dcwatt_wire::binary::Encoding;

use crate::launch::Proc;
use crate::now_ms;

/// Options of the load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Simulated agents (one per node).
    #[arg(long, default_value_t = 500)]
    pub agents: usize,
    /// GPUs per agent.
    #[arg(long, default_value_t = 4)]
    pub gpus: usize,
    /// Seconds between one agent's batches.
    #[arg(long, default_value_t = 1.0)]
    pub interval_s: f64,
    /// How long to load, seconds (after a short warm-up).
    #[arg(long, default_value_t = 20)]
    pub duration_s: u64,
    /// Concurrent requests in flight at most.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Where the collector's config, database and log go (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run once per agent count in this list (comma-separated) instead of `--agents`,
    /// each against a fresh collector, and print one table.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Scrape the collector's `/metrics` this often during the load, as
    /// Prometheus would (0: never); the slowest scrape is reported.
    #[arg(long, default_value_t = 15.0)]
    pub scrape_interval_s: f64,
    /// The collector's `[ledger] synchronous`: `full` (its default: every
    /// transaction synced before the acknowledgement) or `normal`.
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    pub synchronous: String,
    /// Ticks per request (1..=60): K > 1 sends one merged batch of K ticks
    /// every K intervals, as an agent with `ship_interval` = K × interval.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub ticks_per_request: u64,
    /// How the requests are encoded: `json`, or `binary` (the compact form,
    /// as an agent with `[[collectors]] encoding = "binary"`).
    #[arg(long, default_value = "json", value_parser = ["json", "binary"])]
    pub encoding: String,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Agents simulated.
    pub agents: usize,
    /// Ticks carried by one request (`--ticks-per-request`).
    pub ticks_per_request: u64,
    /// The requests' encoding (`--encoding`).
    pub encoding: String,
    /// Requests acknowledged per second.
    pub requests_per_s: f64,
    /// Batches (ticks) acknowledged per second.
    pub batches_per_s: f64,
    /// Readings acknowledged per second.
    pub readings_per_s: f64,
    /// Requests that failed (non-2xx or transport error).
    pub failed: u64,
    /// Batches the schedule wanted but that could not start on time (the
    /// generator or the collector fell behind).
    pub late_starts: u64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Collector CPU seconds per second of load.
    pub collector_cpu: f64,
    /// Collector peak RSS, MiB.
    pub collector_peak_rss_mib: f64,
    /// serde-only decode of the same batches, batches/s (one core).
    pub decode_only_per_s: f64,
    /// Time to render the collector's `/metrics` once at the end, ms.
    pub metrics_render_ms: f64,
    /// Mean batches per store transaction (group commit), over the whole run.
    pub batches_per_commit: f64,
    /// The slowest `/metrics` scrape during the load, ms (NaN: none made).
    pub scrape_under_load_max_ms: f64,
    /// Inside the collector (its histogram, handler start to answer): the
    /// upper bound of the bucket holding the 99th percentile, ms.
    pub server_p99_le_ms: f64,
    /// Inside the collector: share of the requests answered within 50 ms.
    pub server_within_50ms: f64,
    /// The generator's own CPU, cores (it shares the machine with the collector).
    pub generator_cpu: f64,
}

/// The collector's ingest latency histogram in an exposition: cumulative
/// `(upper bound s, count)` per bucket, `+Inf` last.
fn latency_buckets(text: &str) -> Vec<(f64, f64)> {
    let prefix = "dcwatt_ingest_request_duration_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| {
            let (le, n) = l.strip_prefix(prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse().ok()?))
        })
        .collect()
}

/// From the histogram's growth over the measured span (`end` − `start`): the
/// upper bound of the bucket holding the 99th percentile (ms), and the share of
/// requests answered within 50 ms.
fn server_side(start: &[(f64, f64)], end: &[(f64, f64)]) -> (f64, f64) {
    let grown: Vec<(f64, f64)> = end
        .iter()
        .map(|(le, n)| {
            let before = start.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b);
            (*le, n - before)
        })
        .collect();
    let total = grown.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let p99 = grown
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map_or(f64::NAN, |(le, _)| le * 1000.0);
    let within_50 = grown
        .iter()
        .find(|(le, _)| (*le - 0.05).abs() < 1e-12)
        .map_or(f64::NAN, |(_, n)| n / total);
    (p99, within_50)
}

/// A counter's value in a Prometheus text exposition (unlabelled series).
fn counter_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn batch(agent: usize, gpus: usize, seq: u64, ts: i64) -> Value {
    let node = format!("n{agent:05}");
    let mut readings = Vec::with_capacity(gpus * 9 + 2);
    let mut infos = Vec::with_capacity(gpus);
    for g in 0..gpus {
        let uuid = format!("GPU-{agent:08x}-{g:04x}-4000-8000-000000000000");
        infos.push(json!({"uuid": uuid, "index": g, "model": "NVIDIA GB300"}));
        for (q, v) in [
            ("power_watts", 1000.0 + g as f64),
            ("energy_joules", 1.0e6 + seq as f64 * 1000.0),
            ("temperature_celsius", 65.0),
            ("memory_temperature_celsius", 60.0),
            ("utilization_ratio", 0.95),
            ("memory_utilization_ratio", 0.4),
            ("memory_used_bytes", 1.9e11),
            ("memory_total_bytes", 2.88e11),
            ("power_limit_watts", 1400.0),
        ] {
            readings.push(json!({"ts_ms": ts, "entity": {"gpu": uuid}, "quantity": q, "value": v}));
        }
    }
    let meter = format!("pdu-{agent:05}");
    readings.push(json!({"ts_ms": ts, "entity": {"meter": meter}, "quantity": "power_watts", "value": 4700.0}));
    readings.push(json!({"ts_ms": ts, "entity": {"meter": meter}, "quantity": "energy_joules", "value": 1.0e8 + seq as f64 * 4700.0}));
    json!({"version": 1, "agent": node, "seq": seq, "node": node, "created_ms": ts, "gpus": infos, "readings": readings})
}

/// The placeholder time of tick `k` in a template (13 digits, distinct per tick).
fn placeholder_ts(k: u64) -> i64 {
    1_795_000_000_000 + k as i64
}

/// The JSON template of one request of `ticks` ticks: one batch, or a merged
/// batch whose `first_seq` is the placeholder 999999 and whose readings carry
/// each tick's placeholder time.
fn template(agent: usize, gpus: usize, ticks: u64) -> String {
    let mut one = batch(agent, gpus, 1, placeholder_ts(ticks - 1));
    if ticks > 1 {
        let mut readings = Vec::new();
        for k in 0..ticks {
            if let Some(Value::Array(r)) = batch(agent, gpus, 1, placeholder_ts(k)).get("readings")
            {
                readings.extend(r.iter().cloned());
            }
        }
        one["readings"] = Value::Array(readings);
        one["first_seq"] = json!(999_999);
    }
    serde_json::to_string(&one).unwrap_or_default()
}

/// (user + system CPU seconds, peak RSS bytes) of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    crate::measure::proc_usage(pid).map(|(cpu, rss, _threads)| (cpu, rss))
}

/// Runs the load and returns what it measured.
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("dcwatt-load-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let token = |i: usize| format!("load-agent-{i}");
    let mut config = format!(
        "listen = \"127.0.0.1:0\"\n[ledger]\npath = {:?}\nsynchronous = {:?}\n",
        dir.join("collector.sqlite").display().to_string(),
        args.synchronous
    );
    for i in 0..args.agents {
        config += &format!(
            "[[agents]]\nid = \"n{i:05}\"\ntoken_sha256 = \"{}\"\nmeters = [\"pdu-{i:05}\"{}]\n[[meters]]\nid = \"pdu-{i:05}\"\nrole = \"it\"\nzone = \"hall-1\"\nit_point = \"pdu_output\"\n",
            hex::encode(Sha256::digest(token(i).as_bytes())),
            // The first agent also reads the utility meter.
            if i == 0 { ", \"utility\"" } else { "" }
        );
    }
    config += "[[meters]]\nid = \"utility\"\nrole = \"facility\"\nzone = \"hall-1\"\n";
    let conf = dir.join("collector.toml");
    std::fs::write(&conf, config)?;
    let collector = Proc::spawn(
        "collector",
        "dcwatt-collector",
        &[OsString::from("--config"), conf.into()],
        &[("RUST_LOG", "warn".into())],
        &dir.join("collector.log"),
    )?;
    let url = format!("{}/v1/batches", collector.url());

    // The decode-only ceiling, on the same batches in the same encoding.
    let encoding = if args.encoding == "binary" {
        Encoding::Binary
    } else {
        Encoding::Json
    };
    let sample: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            let b = batch(i, args.gpus, 1, now_ms());
            match (
                encoding,
                serde_json::from_value::<dcwatt_wire::Batch>(b.clone()),
            ) {
                (Encoding::Binary, Ok(b)) => dcwatt_wire::binary::encode(&b),
                _ => serde_json::to_vec(&b).unwrap_or_default(),
            }
        })
        .collect();
    let start = Instant::now();
    let mut decoded = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for b in &sample {
            let parsed = match encoding {
                Encoding::Json => serde_json::from_slice::<dcwatt_wire::Batch>(b).is_ok(),
                Encoding::Binary => dcwatt_wire::binary::decode(b).is_ok(),
            };
            decoded += u64::from(parsed);
        }
    }
    let decode_only_per_s = decoded as f64 / start.elapsed().as_secs_f64();

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(10))
        .build()?;
    let gate = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let interval = Duration::from_secs_f64(args.interval_s.max(0.01));
    let readings_per_batch = (args.gpus * 9 + 2) as u64;
    let ticks = args.ticks_per_request.max(1);
    let request_interval = interval * ticks as u32;
    // Every agent's first request (which registers its GPUs, a one-off
    // cost) falls inside the warm-up, and the first phase-spread round of
    // requests has settled: 3 s, or two request intervals when longer.
    let warmup = Duration::from_secs(3).max(request_interval * 2);
    let t0 = Instant::now();
    let end = t0 + warmup + Duration::from_secs(args.duration_s);
    // (ok, latency ms, sent after the warm-up, started late)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, f64, bool, bool)>();
    let mut tasks = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let (http, url, gate, tx) = (http.clone(), url.clone(), Arc::clone(&gate), tx.clone());
        let token = token(i);
        let template = template(i, args.gpus, ticks);
        // The binary form is built from the parsed template per request.
        let parsed: Option<dcwatt_wire::Batch> = match encoding {
            Encoding::Binary => serde_json::from_str(&template).ok(),
            Encoding::Json => None,
        };
        // Phases spread over the interval, as real agents' clocks are.
        let phase = request_interval.mul_f64(i as f64 / args.agents as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(t0 + phase),
                request_interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = 0u64;
            loop {
                // Stops at the end of the span, not at the next tick after
                // it (that wait, up to a request interval, would count in the
                // measured time and lower every rate).
                let Ok(due) =
                    tokio::time::timeout_at(tokio::time::Instant::from_std(end), tick.tick()).await
                else {
                    return;
                };
                if Instant::now() >= end {
                    return;
                }
                let late = due.elapsed() > request_interval / 2;
                let first = seq + 1;
                seq += ticks;
                // The JSON is rendered once per agent; only seq and times
                // change (cheap text substitution, so the generator spends its
                // CPU on requests, not on building JSON).
                let now = now_ms();
                let at = |k: u64| {
                    now - ((ticks - 1 - k) as f64 * interval.as_secs_f64() * 1000.0) as i64
                };
                let body = if let Some(t) = &parsed {
                    let mut b = t.clone();
                    b.seq = seq;
                    b.first_seq = (ticks > 1).then_some(first);
                    b.created_ms = now;
                    for r in &mut b.readings {
                        r.ts_ms = at(r.ts_ms.saturating_sub(placeholder_ts(0)).max(0) as u64);
                    }
                    dcwatt_wire::binary::encode(&b)
                } else {
                    let mut body = template
                        .replace("\"seq\":1,", &format!("\"seq\":{seq},"))
                        .replace("\"first_seq\":999999,", &format!("\"first_seq\":{first},"));
                    for k in 0..ticks {
                        body = body.replace(&placeholder_ts(k).to_string(), &at(k).to_string());
                    }
                    body.into_bytes()
                };
                let Ok(permit) = Arc::clone(&gate).acquire_owned().await else {
                    return;
                };
                let (http, url, token, tx) = (http.clone(), url.clone(), token.clone(), tx.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let ok = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", encoding.content_type())
                        .body(body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    let measured = sent >= t0 + warmup;
                    drop(permit);
                    let _ = tx.send((ok, ms, measured, measured && late));
                });
            }
        }));
    }
    drop(tx);
    // Prometheus scraping meanwhile: the scrape competes with ingest.
    let scraper = {
        let (http, url) = (http.clone(), format!("{}/metrics", collector.url()));
        let every = Duration::from_secs_f64(args.scrape_interval_s.max(0.0));
        tokio::spawn(async move {
            let mut slowest = f64::NAN;
            if every.is_zero() {
                return slowest;
            }
            let mut at = t0 + warmup;
            while at < end {
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                let sent = Instant::now();
                if let Ok(r) = http.get(&url).send().await {
                    if r.bytes().await.is_ok() {
                        slowest = slowest.max(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                at += every;
            }
            slowest
        })
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + warmup)).await;
    let usage_at_warm = proc_usage(collector.pid());
    let own_at_warm = proc_usage(std::process::id());
    let hist_at_warm = match http
        .get(format!("{}/metrics", collector.url()))
        .send()
        .await
    {
        Ok(r) => latency_buckets(&r.text().await.unwrap_or_default()),
        Err(_) => Vec::new(),
    };
    let measure_start = Instant::now();
    let mut latencies = Vec::new();
    let (mut failed, mut late_starts) = (0u64, 0u64);
    let mut ok_count = 0u64;
    for t in tasks {
        let _ = t.await;
    }
    let measured_for = measure_start.elapsed().as_secs_f64();
    let scrape_under_load_max_ms = scraper.await.unwrap_or(f64::NAN);
    let usage_end = proc_usage(collector.pid());
    let own_end = proc_usage(std::process::id());
    let generator_cpu = match (own_at_warm, own_end) {
        (Some((c0, _)), Some((c1, _))) => (c1 - c0) / measured_for.max(0.001),
        _ => f64::NAN,
    };
    // Requests still in flight finish into the channel; the warm-up is not counted.
    while let Some((ok, ms, measured, late)) =
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    {
        if !measured {
            continue;
        }
        late_starts += u64::from(late);
        if ok {
            ok_count += 1;
            latencies.push(ms);
        } else {
            failed += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| crate::measure::percentile(&latencies, p);
    let total_for = measured_for;
    let render = Instant::now();
    let exposition = reqwest::get(format!("{}/metrics", collector.url()))
        .await
        .context("metrics")?
        .text()
        .await
        .unwrap_or_default();
    let metrics_render_ms = render.elapsed().as_secs_f64() * 1000.0;
    let (server_p99_le_ms, server_within_50ms) =
        server_side(&hist_at_warm, &latency_buckets(&exposition));
    let batches_per_commit = match (
        counter_value(&exposition, "dcwatt_store_committed_batches_total"),
        counter_value(&exposition, "dcwatt_store_commits_total"),
    ) {
        (Some(b), Some(c)) if c > 0.0 => b / c,
        _ => f64::NAN,
    };
    let (cpu, rss) = match (usage_at_warm, usage_end) {
        (Some((c0, _)), Some((c1, rss))) => ((c1 - c0) / measured_for.max(0.001), rss),
        _ => (f64::NAN, 0),
    };
    Ok(LoadReport {
        agents: args.agents,
        ticks_per_request: ticks,
        encoding: args.encoding.clone(),
        requests_per_s: ok_count as f64 / total_for,
        batches_per_s: (ok_count * ticks) as f64 / total_for,
        readings_per_s: (ok_count * ticks * readings_per_batch) as f64 / total_for,
        failed,
        late_starts,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        collector_cpu: cpu,
        collector_peak_rss_mib: rss as f64 / (1024.0 * 1024.0),
        decode_only_per_s,
        metrics_render_ms,
        batches_per_commit,
        scrape_under_load_max_ms,
        server_p99_le_ms,
        server_within_50ms,
        generator_cpu,
    })
}

/// The report as a table row (Markdown).
pub fn table(reports: &[LoadReport]) -> String {
    let mut out = String::from(
        "| agents | ticks/request | encoding | requests/s | batches/s | readings/s | p50 ms | p99 ms | max ms | collector p99 ≤ ms | collector ≤ 50 ms | failed | late starts | generator CPU (cores) | collector CPU (cores) | collector peak RSS MiB | collector CPU µs/batch | batches/commit | decode-only batches/s | ingest / decode, per core | /metrics ms | slowest scrape under load, ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        out += &format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.2} % | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} % | {:.1} | {:.1} |\n",
            r.agents,
            r.ticks_per_request,
            r.encoding,
            r.requests_per_s,
            r.batches_per_s,
            r.readings_per_s,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.server_p99_le_ms,
            100.0 * r.server_within_50ms,
            r.failed,
            r.late_starts,
            r.generator_cpu,
            r.collector_cpu,
            r.collector_peak_rss_mib,
            1e6 * r.collector_cpu / r.batches_per_s,
            r.batches_per_commit,
            r.decode_only_per_s,
            100.0 * (r.batches_per_s / r.collector_cpu) / r.decode_only_per_s,
            r.metrics_render_ms,
            r.scrape_under_load_max_ms,
        );
    }
    out
}
