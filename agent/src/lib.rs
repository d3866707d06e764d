//! # dcwatt-agent: per-node GPU and meter telemetry
//!
//! Reads GPUs through NVML and facility meters over HTTP on a fixed schedule,
//! keeps the latest values for `GET /metrics`, and ships every tick's readings
//! as a [`dcwatt_wire::Batch`] to zero or more collectors.
//!
//! # Layout
//! - [`config`]: the TOML file, its validation, the runtime config.
//! - [`sources`]: one module per protocol ([`sources::nvml`], [`sources::redfish`]),
//!   each yielding readings in SI units plus its own health.
//! - [`schedule`]: ticks, per-source timeouts, per-source up/errors/duration.
//! - [`spool`]: the durable on-disk queue of batches, cursors, sequence numbers.
//! - [`ship`]: per-collector senders, retries, catch-up merging.
//! - [`metrics`]: the cached state and the HTTP routes (`/metrics`, `/healthz`).
//! - [`names`]: every metric name and label key.
//! - [`run`]: wires them together on a listener until shutdown.

#![warn(missing_docs)]

pub mod config;
pub mod metrics;
pub mod names;
pub mod schedule;
pub mod ship;
pub mod sources;
pub mod spool;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use config::RuntimeConfig;
use metrics::State;
use ship::{ShipError, Shipper};
use sources::{Source, SourceError};

/// How long background tasks get to finish after shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source could not be set up.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Shipping could not be set up.
    #[error(transparent)]
    Ship(#[from] ShipError),
    /// The HTTP server failed.
    #[error("serving http on {addr}: {source}")]
    Serve {
        /// The listener's address, if known.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Runs the agent on `listener` until `shutdown` resolves: collects on the
/// configured interval, serves `/metrics` and `/healthz`, ships to collectors.
pub async fn run(
    config: RuntimeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    let (stop_tx, stop_rx) = watch::channel(false);

    let sources = config
        .sources
        .into_iter()
        .map(|s| Source::build(s, config.interval).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;

    let (shipper, ship_shared, mut tasks) = if config.collectors.is_empty() {
        (None, None, Vec::new())
    } else {
        if config.spool.storage == spool::Storage::Memory {
            warn!(
                max_bytes = config.spool.max_bytes,
                "No [spool] configured: batches wait in memory only and are lost if the agent stops."
            );
        }
        let started = Shipper::start(
            config.node.clone(),
            config.collectors,
            &config.spool,
            stop_rx.clone(),
        )?;
        (Some(started.shipper), Some(started.shared), started.tasks)
    };

    let state = Arc::new(State::new(config.node, ship_shared));
    tasks.push(tokio::spawn(schedule::run(
        sources,
        config.interval,
        Arc::clone(&state),
        shipper,
        stop_rx,
    )));

    let served = axum::serve(listener, metrics::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout(STOP_GRACE, t).await.is_err() {
            warn!("Background task did not stop in time; aborted.");
            abort.abort();
        }
    }
    served.map_err(|source| Error::Serve { addr, source })
}
