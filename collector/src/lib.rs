//! # dcwatt-collector
//!
//! Receives agents' batches, keeps the hall's live state and its energy, and
//! exports PUE and energy counters to Prometheus.
//!
//! # Layout
//! - [`config`]: the TOML file and its validation into a [`config::Site`].
//! - [`ingest`]: bearer tokens, batch validation (a rejected batch changes nothing).
//! - [`state`]: latest values, energy per meter, per role and zone, per GPU; dedup by `(agent, seq)`.
//! - [`energy`]: counters with resets, power integration with a gap limit, energy curves.
//! - [`store`]: the durable state in SQLite; each batch committed with its sequence number.
//! - [`windows`]: PUE and partial PUE over fixed UTC periods from the stored minutes.
//! - [`bounds`]: gaps, resets, swaps and glitches as stored events, and the
//!   bounds they put on any period's energy.
//! - [`tenants`]: leases and the split of each GPU-minute among owners.
//! - [`ledger`]: the append-only, hash-chained tenant ledger.
//! - [`transparency`]: the ledger's Merkle tree, signed checkpoints and proofs.
//! - [`statement`]: a tenant's monthly statement (API and offline report).
//! - [`efficiency`]: the annual efficiency (KPI) report with its provenance;
//!   [`efficiency_html`]: the same as one self-contained page.
//! - [`pue`]: PUE and its ISO/IEC 30134-2 category, as pure functions.
//! - [`figures`]: the derived figures at one instant, shared by `/metrics` and the summary.
//! - [`utilization`]: GPU utilization aggregates, idle energy, XID counts, modules.
//! - [`export`]: the Prometheus exposition; [`names`]: every metric name.
//! - [`api`]: the HTTP routes.
//! - [`run`]: serves a router on a bound listener until `shutdown` resolves.

pub mod api;
pub mod bounds;
pub mod config;
pub mod delivery;
pub mod efficiency;
pub mod efficiency_html;
pub mod energy;
pub mod export;
pub mod figures;
pub mod ingest;
pub mod ledger;
pub mod modules;
pub mod names;
pub mod pue;
pub mod serve;
pub mod state;
pub mod statement;
pub mod store;
pub mod tenants;
pub mod thermal;
pub mod transparency;
pub mod utilization;
pub mod windows;

use std::future::Future;
use std::sync::{Arc, Mutex};

use config::Site;

/// Why the collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The durable store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(#[from] serve::TlsError),
    /// The HTTP server failed.
    #[error("serving http: {0}")]
    Serve(#[from] std::io::Error),
}

/// Serves the collector on `listener` until `shutdown` resolves. With a ledger
/// configured, state is loaded from it first and every batch is committed to it.
pub async fn run(
    site: Site,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if site.operator_token.is_none() {
        tracing::warn!("No [operator] token configured: /v1/summary is open to anyone who can reach the listener.");
    }
    if site.ledger_key.is_none() {
        tracing::warn!("No [ledger] signing_key_file: no checkpoint of the ledger is signed, so tenants cannot verify their statements (dcwatt-collector keygen --out FILE writes a key).");
    }
    for m in site.unreported_meters() {
        tracing::warn!(
            meter = m,
            "No agent may report this meter (it is in no agent's `meters`): it will not count."
        );
    }
    let mut state = state::State::new(&site);
    let store = match &site.ledger_path {
        Some(path) => {
            let store = store::Store::open(path)?;
            store.set_synchronous(site.ledger_synchronous)?;
            store.load(&mut state)?;
            tracing::info!(path = %path.display(), agents = state.agents.len(), "State loaded.");
            store
        }
        None => {
            tracing::warn!("No [ledger] configured: state is kept in memory only and a restart starts from zero.");
            store::Store::in_memory()?
        }
    };
    // Stopped (after a last checkpoint) when `run` returns.
    let _checkpointer = store.checkpoint_in_background(std::time::Duration::from_millis(500))?;
    let shared = Arc::new(api::Shared {
        state: Mutex::new(state),
        store: Mutex::new(store),
        windows: Mutex::new(Vec::new()),
        tenant_totals: Mutex::new(api::LedgerTotals::default()),
        db_path: site.ledger_path.clone(),
        readers: Mutex::new(Vec::new()),
        committed: tokio::sync::Notify::new(),
        invalid_pue_minutes: std::sync::atomic::AtomicI64::new(0),
        unbooked_node_joules: std::sync::atomic::AtomicU64::new(0),
        commits: Mutex::new(api::CommitQueue::default()),
        commit_wake: std::sync::Condvar::new(),
        rates: Mutex::new(std::collections::HashMap::new()),
        ingest_latency: api::Latency::default(),
        transparency: transparency::Gauges::default(),
        ready: std::sync::atomic::AtomicBool::new(false),
        site,
    });
    let tls = match &shared.site.tls {
        Some(t) => Some(serve::acceptor(
            &t.cert_file,
            &t.key_file,
            t.client_ca_file.as_deref(),
        )?),
        None => {
            tracing::warn!("No [tls] configured: plain HTTP, bearer tokens cross the network in clear (a lab setup only).");
            None
        }
    };
    let limits = shared.site.limits;
    let stop_committer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop_committer);
        std::thread::Builder::new()
            .name("dcwatt-commit".into())
            .spawn(move || shared.run_committer(&stop))?
    };
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&shared)));
    let refresher = tokio::spawn(refresh_windows(Arc::clone(&shared)));
    let served = serve::serve(
        listener,
        api::router(Arc::clone(&shared)),
        tls,
        limits,
        shutdown,
    )
    .await;
    refresher.abort();
    reloader.abort();
    stop_committer.store(true, std::sync::atomic::Ordering::Relaxed);
    shared.commit_wake.notify_all();
    let _ = committer.join();
    served?;
    Ok(())
}

/// Reloads the leases on every SIGHUP; a bad file is logged and changes nothing.
async fn reload_on_sighup(shared: Arc<api::Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = shared.reload_leases() {
            tracing::warn!(error = %e, "Lease reload refused; the leases in force stay.");
        }
    }
}

/// How often the stored trailing windows are recomputed for `/metrics`.
pub const WINDOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`WINDOW_REFRESH`]: recomputes the stored trailing windows and the
/// ledger totals (a scrape only reads the last result) and books closed ledger
/// minutes; prunes old rows once an hour.
async fn refresh_windows(shared: Arc<api::Shared>) {
    let mut tick = tokio::time::interval(WINDOW_REFRESH);
    let mut last_prune = i64::MIN;
    loop {
        tick.tick().await;
        let s = Arc::clone(&shared);
        let done = tokio::task::spawn_blocking(move || {
            let now = api::now_ms();
            if now.saturating_sub(last_prune) >= 3_600_000 {
                if let Err(e) = s.store().prune(now) {
                    tracing::warn!(error = %e, "Pruning old periods failed.");
                }
                last_prune = now;
            }
            // Reads on a read connection: the committer goes on meanwhile.
            match s.with_reader(|r| windows::trailing(r, &s.site, now)) {
                Ok(w) => {
                    // The ledger's fallback PUE: the trailing 24 h, when complete.
                    let fallback = w
                        .iter()
                        .find(|p| p.window == Some("24h") && p.complete)
                        .and_then(|p| p.pue);
                    // Silent GPUs' closed minutes first, booked with the rest.
                    if let Err(e) = s.store().book_silences(&s.site, now) {
                        tracing::warn!(error = %e, "Booking silent GPU minutes failed.");
                    }
                    let booked = s.store().close_minutes(&s.site, now, fallback);
                    match booked {
                        // Signed only once the hour's minutes are booked.
                        Ok(_) => transparency::after_booking(&mut s.store(), &s, now),
                        Err(e) => tracing::warn!(error = %e, "Booking ledger minutes failed."),
                    }
                    if let Ok(mut cached) = s.windows.lock() {
                        *cached = w;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Computing the PUE windows failed."),
            }
            if let Ok(n) = s.with_reader(|r| r.invalid_pue_minutes()) {
                s.invalid_pue_minutes
                    .store(n, std::sync::atomic::Ordering::Relaxed);
            }
            if let Ok(j) = s.with_reader(|r| r.unbooked_node_joules()) {
                s.unbooked_node_joules
                    .store(j.to_bits(), std::sync::atomic::Ordering::Relaxed);
            }
            // Only the rows booked since the last refresh: the ledger is append-only.
            let after = s
                .tenant_totals
                .lock()
                .map(|t| t.after_id)
                .unwrap_or_default();
            let month = statement::month_of(now).0;
            match s.with_reader(|r| r.ledger_totals_since(after, month)) {
                Ok((new, last)) => {
                    if let Ok(mut cached) = s.tenant_totals.lock() {
                        if cached.after_id == after {
                            cached.add(&new, last);
                            cached.roll_month(month);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Reading ledger totals failed."),
            }
            last_prune
        })
        .await;
        if let Ok(p) = done {
            last_prune = p;
        }
    }
}
