//! A quick run of the hot-path benchmark (`benches/hot_paths.rs`), so it keeps
//! building and working: every row timed, the table printed. No speed is
//! asserted; the numbers are measured by the command in docs/benchmarks.md.

#[path = "../benches/hot_paths.rs"]
mod bench;

#[test]
fn hot_paths_benchmark_runs() {
    let rows = bench::run(bench::Plan::quick());
    assert_eq!(rows.len(), 9);
    for r in &rows {
        assert!(r.min_ns > 0.0 && r.min_ns.is_finite(), "{}", r.what);
    }
    let table = bench::table(&rows);
    assert_eq!(table.lines().count(), 2 + rows.len(), "{table}");
}

#[test]
fn bench_batches_pass_validation() {
    let site = bench::site(3);
    let now = dcwatt_wire::time::now_ms();
    let body = serde_json::to_vec(&bench::batch(2, 1, now)).unwrap();
    let batch = dcwatt_collector::ingest::decode(&body, "n00002", &site, now).unwrap();
    assert_eq!(batch.readings.len(), 4 * 19 + 2);
}

#[path = "../benches/ledger_booking.rs"]
mod booking;

#[test]
fn ledger_booking_benchmark_runs() {
    let rows = booking::run(booking::Plan::quick());
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert!(r.min_ms > 0.0 && r.min_ms <= r.median_ms, "{}", r.what);
    }
    assert_eq!(booking::table(&rows).lines().count(), 2 + rows.len());
}
