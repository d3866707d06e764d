//! The collector's background work, started by [`Collector::start`] and
//! stopped by [`Jobs::stop`] (or dropping [`Jobs`]): the store's
//! checkpointer, the committer thread, the refresher (trailing windows,
//! ledger booking and totals, pruning) and the lease reload on SIGHUP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dcwatt_wire::time::now_ms;

use dcwatt_wire::time::{month_of, HOUR_MS};

use super::Collector;

/// How often the stored trailing windows are recomputed for `/metrics`.
pub const WINDOW_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the background work could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store's checkpointer could not start.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The committer thread could not be spawned.
    #[error("starting the committer thread: {0}")]
    Thread(std::io::Error),
}

/// The running background work of a [`Collector`].
pub struct Jobs {
    collector: Arc<Collector>,
    stop_committer: Arc<AtomicBool>,
    committer: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Stopped (after a last checkpoint) when dropped, after the committer.
    _checkpointer: Option<crate::store::Checkpointer>,
}

impl Collector {
    /// Starts the background work: the WAL checkpointer, the committer
    /// thread (the collector is ready from then on), the refresher and the
    /// SIGHUP lease reload. Call it inside a Tokio runtime.
    pub fn start(self: &Arc<Self>) -> Result<Jobs, StartError> {
        let checkpointer = self
            .store()
            .checkpoint_in_background(std::time::Duration::from_millis(500))?;
        let stop_committer = Arc::new(AtomicBool::new(false));
        let committer = {
            let collector = Arc::clone(self);
            let stop = Arc::clone(&stop_committer);
            std::thread::Builder::new()
                .name("dcwatt-commit".into())
                .spawn(move || collector.run_committer(&stop))
                .map_err(StartError::Thread)?
        };
        let tasks = vec![
            tokio::spawn(reload_on_sighup(Arc::clone(self))),
            tokio::spawn(refresh_windows(Arc::clone(self))),
        ];
        Ok(Jobs {
            collector: Arc::clone(self),
            stop_committer,
            committer: Some(committer),
            tasks,
            _checkpointer: checkpointer,
        })
    }
}

impl Jobs {
    /// Stops the background work: the tasks at once, the committer after it
    /// wrote what was queued, the checkpointer last.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop_committer.store(true, Ordering::Relaxed);
        self.collector.commit_wake.notify_all();
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
    }
}

/// Reloads the leases on every SIGHUP; a bad file is logged and changes nothing.
async fn reload_on_sighup(collector: Arc<Collector>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = collector.reload_leases() {
            tracing::warn!(error = %e, "Lease reload refused; the leases in force stay.");
        }
    }
}

/// Every [`WINDOW_REFRESH`]: recomputes the stored trailing windows and the
/// ledger totals (a scrape only reads the last result) and books closed ledger
/// minutes; prunes old rows once an hour.
async fn refresh_windows(collector: Arc<Collector>) {
    let mut tick = tokio::time::interval(WINDOW_REFRESH);
    let mut last_prune = i64::MIN;
    loop {
        tick.tick().await;
        let s = Arc::clone(&collector);
        let done = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            if now.saturating_sub(last_prune) >= HOUR_MS {
                if let Err(e) = s.store().prune(now) {
                    tracing::warn!(error = %e, "Pruning old periods failed.");
                }
                last_prune = now;
            }
            // Reads on a read connection: the committer goes on meanwhile.
            match s.with_reader(|r| crate::windows::trailing(r, &s.site, now)) {
                Ok(w) => {
                    // The ledger's fallback PUE: the trailing 24 h, when complete.
                    let fallback = w
                        .iter()
                        .find(|p| p.window == Some("24h") && p.complete)
                        .and_then(|p| p.pue);
                    // Silent GPUs' closed minutes first, booked with the rest:
                    // found on a read connection (a scan of every GPU), then
                    // booked, checked again, under the write lock.
                    let booked = s
                        .with_reader(|r| r.silence_candidates(&s.site, now))
                        .and_then(|c| s.store().book_silences_among(&s.site, now, &c));
                    if let Err(e) = booked {
                        tracing::warn!(error = %e, "Booking silent GPU minutes failed.");
                    }
                    let booked = s.store().close_minutes(&s.site, now, fallback);
                    match booked {
                        // Signed only once the hour's minutes are booked.
                        Ok(_) => crate::transparency::after_booking(
                            &mut s.store(),
                            &s.site,
                            &s.transparency,
                            now,
                        ),
                        Err(e) => tracing::warn!(error = %e, "Booking ledger minutes failed."),
                    }
                    if let Ok(mut cached) = s.windows.lock() {
                        *cached = w;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Computing the PUE windows failed."),
            }
            if let Ok(n) = s.with_reader(|r| r.invalid_pue_minutes()) {
                s.invalid_pue_minutes.store(n, Ordering::Relaxed);
            }
            if let Ok(j) = s.with_reader(|r| r.unbooked_node_joules()) {
                s.unbooked_node_joules.store(j.to_bits(), Ordering::Relaxed);
            }
            // Only the rows booked since the last refresh: the ledger is append-only.
            let after = s
                .tenant_totals
                .lock()
                .map(|t| t.after_id)
                .unwrap_or_default();
            let month = month_of(now).0;
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
