//! A short run of the spool benchmark (`benches/spool.rs`), so it keeps building
//! and working: every row measured, every batch read back.

#[path = "../benches/spool.rs"]
mod bench;

#[test]
fn spool_benchmark_runs() {
    let rows = bench::run(200);
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert!(r.batches_per_s > 0.0 && r.mb_per_s > 0.0, "{}", r.what);
    }
    let table = bench::table(&rows);
    assert_eq!(table.lines().count(), 7, "{table}");
}
