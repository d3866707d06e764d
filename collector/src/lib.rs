//! # dcwatt-collector
//!
//! Receives agents' batches, keeps the hall's live state and its energy, and
//! exports PUE and energy counters to Prometheus.
//!
//! # Layout
//! The rule: **http → app → {domain, store} → {site, time}; nothing points
//! back up** (`docs/architecture.md`; `tests/tests/layout.rs` fails on an
//! import loop between files, or between folders taken whole).
//!
//! - [`http`]: the routes only: extractors for who asks, one error type,
//!   store reads on a read connection off the async workers.
//! - [`app`]: the application core, [`app::Collector`]: applies batches,
//!   the group commit (`app::commit`), the background jobs (`app::jobs`)
//!   it starts and stops. [`config`]: the TOML file and its validation
//!   into a `Site` (used by `app`).
//! - Domain that reads the store:
//!   - [`windows`]: PUE and partial PUE over fixed UTC periods from the stored minutes.
//!   - [`figures`]: the derived figures at one instant, shared by `/metrics` and the summary.
//!   - [`export`]: the Prometheus exposition.
//!   - [`statement`]: a tenant's monthly statement (API and offline report).
//!   - [`efficiency`]: the annual efficiency (KPI) report with its provenance;
//!     [`efficiency_html`]: the same as one self-contained page.
//!   - [`transparency`]: the signing key, the checkpoint step of the booking
//!     job, the ledger tree's gauges.
//! - [`store`]: the durable state in SQLite; each batch committed with its
//!   sequence number. Its files: the schema and migrations, the write path,
//!   the tenant ledger, its Merkle tree, and the tables of bounds, service
//!   levels and superchip modules.
//! - Domain that the store persists, and leaves:
//!   - [`ingest`]: bearer tokens, batch validation (a rejected batch changes nothing).
//!   - [`state`]: latest values, energy per meter, per role and zone, per GPU; dedup by `(agent, seq)`.
//!   - [`energy`]: counters with resets, power integration with a gap limit, energy curves.
//!   - [`bounds`]: gaps, resets, swaps and glitches as events, and the
//!     bounds they put on any period's energy.
//!   - [`delivery`]: GPU service levels: the rules, the per-GPU tracker, the report types.
//!   - [`thermal`], [`utilization`]: thermal excursions; GPU utilization, idle energy, XIDs, modules.
//!   - [`tenants`]: leases and the split of each GPU-minute among owners.
//!   - [`pue`]: PUE and its ISO/IEC 30134-2 category, as pure functions.
//!   - [`names`]: every metric name; [`latency`]: the ingest latency histogram.
//! - [`site`]: the domain model ([`site::Role`], [`site::ItPoint`],
//!   [`site::Meter`], [`site::Site`], [`site::LeaseBook`]); [`check`]: the one `ConfigError`
//!   and the id check. Time: `dcwatt_wire::time`.
//! - [`serve`]: the listener (TLS, limits); [`run`]: serves the collector
//!   on a bound listener until `shutdown` resolves.

pub mod app;
pub mod bounds;
pub mod check;
pub mod config;
pub mod delivery;
pub mod efficiency;
pub mod efficiency_html;
pub mod energy;
pub mod export;
pub mod figures;
pub mod http;
pub mod ingest;
pub mod latency;
pub mod names;
pub mod pue;
pub mod serve;
pub mod site;
pub mod state;
pub mod statement;
pub mod store;
pub mod tenants;
pub mod thermal;
pub mod transparency;
pub mod utilization;
pub mod windows;

use std::future::Future;
use std::sync::Arc;

use site::Site;

/// Why the collector stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The durable store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The background work could not start.
    #[error(transparent)]
    Start(#[from] app::StartError),
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
    let collector = app::Collector::open(site)?;
    let tls = match &collector.site().tls {
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
    let limits = collector.site().limits;
    let jobs = collector.start()?;
    let served = serve::serve(
        listener,
        http::router(Arc::clone(&collector)),
        tls,
        limits,
        shutdown,
    )
    .await;
    jobs.stop();
    served?;
    Ok(())
}
