//! # dcwatt-collector
//!
//! Receives agents' batches, keeps the hall's live state and its energy, and
//! exports PUE and energy counters to Prometheus.
//!
//! # Layout
//! - [`config`]: the TOML file and its validation into a [`config::Site`].
//! - [`ingest`]: bearer tokens, batch validation (a rejected batch changes nothing).
//! - [`state`]: latest values, energy per meter, per role and zone, per GPU; dedup by `(agent, seq)`.
//! - [`energy`]: counters with resets, power integration with a gap limit, minute buckets.
//! - [`pue`]: PUE and its ISO/IEC 30134-2 category, as pure functions.
//! - [`figures`]: the derived figures at one instant, shared by `/metrics` and the summary.
//! - [`export`]: the Prometheus exposition; [`names`]: every metric name.
//! - [`api`]: the HTTP routes.
//! - [`run`]: serves a router on a bound listener until `shutdown` resolves.

pub mod api;
pub mod config;
pub mod energy;
pub mod export;
pub mod figures;
pub mod ingest;
pub mod names;
pub mod pue;
pub mod state;

use std::future::Future;
use std::sync::{Arc, Mutex};

use config::Site;

/// Serves the collector on `listener` until `shutdown` resolves.
pub async fn run(
    site: Site,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if site.operator_token.is_none() {
        tracing::warn!("No [operator] token configured: /v1/summary is open to anyone who can reach the listener.");
    }
    let shared = Arc::new(api::Shared {
        state: Mutex::new(state::State::new(&site)),
        site,
    });
    axum::serve(listener, api::router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}
