//! HTTP routes: `POST /v1/batches`, `GET /metrics`, `/healthz`, `/readyz`,
//! `GET /v1/summary`. Handlers are thin: ingest and figures do the work.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{to_bytes, Body};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dcwatt_wire::{BatchAck, ErrorBody, BATCHES_PATH};
use serde::{Deserialize, Serialize};

use crate::config::Site;
use crate::figures::{self, Figures};
use crate::ingest::{self, Rejection};
use crate::state::State;
use crate::store::{Resolution, Store};
use crate::windows::{self, Period};

/// What every handler shares.
pub struct Shared {
    /// The validated configuration.
    pub site: Site,
    /// The live state. Locked briefly: validation happens before locking.
    pub state: Mutex<State>,
    /// The store (a file with `[ledger]`, else in memory); locked only while
    /// `state` is locked, or alone.
    pub store: Mutex<Store>,
    /// The stored trailing windows, as last computed by the refresher.
    pub windows: Mutex<Vec<Period>>,
    /// Ledger totals per owner, kept up to date by the refresher.
    pub tenant_totals: Mutex<LedgerTotals>,
    /// The database file, for read connections; `None` in memory.
    pub db_path: Option<std::path::PathBuf>,
    /// Idle read connections (see [`Shared::read_store`]).
    pub readers: Mutex<Vec<Store>>,
    /// Agents that may be waiting for a pending batch's outcome: notified
    /// after each group commit and each failure.
    pub committed: tokio::sync::Notify,
    /// Batches waiting for the group commit.
    pub commits: Mutex<CommitQueue>,
    /// Wakes the committer thread when a batch is queued.
    pub commit_wake: std::sync::Condvar,
    /// [`Figures::unbooked_node_joules`] as `f64` bits, as last read.
    pub unbooked_node_joules: std::sync::atomic::AtomicU64,
    /// Complete minutes with an invalid PUE, as last read.
    pub invalid_pue_minutes: std::sync::atomic::AtomicI64,
    /// Each agent's token bucket: (tokens, when last filled).
    pub rates: Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    /// How long `POST /v1/batches` took, from the handler's start to its answer.
    pub ingest_latency: Latency,
    /// The ledger tree's figures for `/metrics` (see `transparency`).
    pub transparency: crate::transparency::Gauges,
    /// `/readyz`: true while the committer runs (it starts once the state is
    /// loaded from the store), so batches can be acknowledged.
    pub ready: std::sync::atomic::AtomicBool,
}

/// The ledger's totals per owner, kept by adding what was booked after
/// `after_id` (the ledger is append-only): the refresher never re-reads it whole.
#[derive(Debug, Default)]
pub struct LedgerTotals {
    /// Per owner, sorted by owner.
    pub by_owner: Vec<crate::ledger::TenantTotal>,
    /// The last ledger row counted.
    pub after_id: i64,
}

impl LedgerTotals {
    /// Adds the totals of the rows up to `last_id`.
    pub fn add(&mut self, new: &[crate::ledger::TenantTotal], last_id: i64) {
        for t in new {
            match self
                .by_owner
                .binary_search_by(|o| o.owner.as_str().cmp(&t.owner))
            {
                Ok(i) => self.by_owner[i].add(t),
                Err(i) => self.by_owner.insert(i, t.clone()),
            }
        }
        self.after_id = self.after_id.max(last_id);
    }

    /// Starts the month-to-date counts of every owner again from `month_ms`
    /// (those with rows booked in it since are already there).
    pub fn roll_month(&mut self, month_ms: i64) {
        for t in &mut self.by_owner {
            if t.month_ms < month_ms {
                t.month_ms = month_ms;
                t.month_delivery_ms = [0; 4];
            }
        }
    }
}

/// The most idle read connections kept open.
const IDLE_READERS: usize = 4;

/// A latency histogram with fixed buckets, updated without a lock.
#[derive(Default)]
pub struct Latency {
    /// Observations per bucket of [`LATENCY_BUCKETS_S`] (not cumulative), then above the last.
    counts: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    /// Sum of the observations, µs.
    sum_us: std::sync::atomic::AtomicU64,
}

/// Upper bounds of the ingest latency buckets, seconds.
pub const LATENCY_BUCKETS_S: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Latency {
    /// Counts one observation.
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Cumulative `(upper bound s, count ≤ it)` per bucket, the sum (s) and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.counts)
            .map(|(le, n)| {
                acc += n.load(Relaxed);
                (*le, acc)
            })
            .collect();
        let count = acc + self.counts[LATENCY_BUCKETS_S.len()].load(Relaxed);
        (buckets, self.sum_us.load(Relaxed) as f64 / 1e6, count)
    }
}

impl Shared {
    /// Re-reads the config file and puts its leases in force, all at once, if
    /// the whole file is valid and names the same tenants (new tenants and
    /// tokens need a restart). Minutes already attributed stay as booked (the
    /// ledger is append-only); the new leases apply to what comes next.
    /// Returns the number of leases now in force.
    pub fn reload_leases(&self) -> Result<usize, String> {
        let path = self
            .site
            .config_path
            .as_ref()
            .ok_or("this collector was not started from a config file")?;
        let config = crate::config::Config::from_file(path).map_err(|e| e.to_string())?;
        let tenants: std::collections::BTreeSet<String> =
            config.tenants.iter().map(|t| t.id.clone()).collect();
        let site = config
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let running: std::collections::BTreeSet<String> =
            self.site.tenant_tokens.values().cloned().collect();
        if tenants != running {
            return Err(format!(
                "{}: the tenants changed ({:?} running, {:?} in the file): restart to load them",
                path.display(),
                running,
                tenants
            ));
        }
        let leases = site.leases.snapshot();
        let n = leases.all().len();
        self.site.leases.replace(leases);
        tracing::info!(leases = n, "Leases reloaded.");
        Ok(n)
    }

    /// Takes one token from the agent's bucket; `Err(seconds)` until the next
    /// token when it is empty.
    fn take_token(&self, agent: &str) -> Result<(), u64> {
        let site = &self.site;
        let now = std::time::Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let burst = f64::from(site.agent_burst);
        let (tokens, last) = rates.entry(agent.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * site.agent_rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / site.agent_rate).ceil().max(1.0) as u64)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch we
        // would rather lose than serve: apply() has no panicking paths.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a read connection of its own when the store is a file (a
    /// WAL reader neither waits for the committer nor holds it up), else on
    /// the store under its lock (in memory there is one connection). Call it
    /// off the async workers: it blocks.
    pub fn with_reader<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        let Some(path) = &self.db_path else {
            return f(&self.store());
        };
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let reader = match pooled {
            Some(r) => r,
            None => Store::open_reader(path)?,
        };
        let out = f(&reader);
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(reader);
        }
        out
    }

    /// [`Shared::with_reader`] on a blocking thread, for a handler: a store
    /// error is a 503.
    async fn read_store<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shared = Arc::clone(self);
        match tokio::task::spawn_blocking(move || shared.with_reader(f)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store: {e}"),
            )),
            Err(e) => Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the store failed: {e}"),
            )),
        }
    }

    /// The figures at `now`, with the last computed stored windows.
    fn figures(&self, state: &State, now: i64) -> Figures {
        let windows = self.windows.lock().map(|w| w.clone()).unwrap_or_default();
        let mut f = figures::compute(state, &self.site, now, windows);
        f.invalid_pue_minutes = self
            .invalid_pue_minutes
            .load(std::sync::atomic::Ordering::Relaxed);
        f.unbooked_node_joules = f64::from_bits(
            self.unbooked_node_joules
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        f
    }
}

/// The router over shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(BATCHES_PATH, post(post_batch))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/summary", get(summary))
        .route("/v1/pue", get(pue_period))
        .route("/v1/reports/efficiency", get(efficiency_report))
        .route("/v1/tenants/{tenant}/energy", get(tenant_energy))
        .route("/v1/tenants/{tenant}/statement", get(tenant_statement))
        .route("/v1/tenants/{tenant}/excursions", get(tenant_excursions))
        .route("/v1/ledger/verify", get(ledger_verify))
        .route(
            "/v1/ledger/public-key",
            get(crate::transparency::public_key),
        )
        .route(
            "/v1/ledger/checkpoints",
            get(crate::transparency::checkpoints),
        )
        .route(
            "/v1/ledger/consistency",
            get(crate::transparency::consistency),
        )
        .route("/v1/admin/leases/reload", post(reload_leases))
        .route("/v1/admin/gpus/{uuid}/release", post(release_gpu))
        .with_state(shared)
}

/// `GET /readyz`: 200 once the state is loaded and the committer runs, else 503.
async fn readyz(Extract(shared): Extract<Arc<Shared>>) -> Response {
    if shared.ready.load(std::sync::atomic::Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: state not loaded or committer not running\n",
        )
            .into_response()
    }
}

/// Current Unix time in ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: text.into(),
            last_seq: None,
        }),
    )
        .into_response()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = match &self {
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::TooManyRequests { retry_after_s, .. } => {
                let retry = retry_after_s.to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry)],
                    Json(ErrorBody {
                        error: self.to_string(),
                        last_seq: None,
                    }),
                )
                    .into_response();
            }
            Rejection::Conflict { error, last_seq } => {
                let body = ErrorBody {
                    error: error.clone(),
                    last_seq: Some(*last_seq),
                };
                return (StatusCode::CONFLICT, Json(body)).into_response();
            }
        };
        error(status, self.to_string())
    }
}

fn rejection_label(r: &Rejection) -> &'static str {
    match r {
        Rejection::Unauthorized(_) => "unauthorized",
        Rejection::Forbidden(_) => "forbidden",
        Rejection::Invalid(_) => "invalid",
        Rejection::TooLarge(_) => "too_large",
        Rejection::UnsupportedMediaType(_) => "unsupported_media_type",
        Rejection::Conflict { .. } => "conflict",
        Rejection::Unavailable(_) => "unavailable",
        Rejection::Timeout(_) => "timeout",
        Rejection::TooManyRequests { .. } => "rate_limited",
    }
}

async fn post_batch(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let response = match accept_batch(&shared, &headers, body).await {
        Ok(ack) => Json(ack).into_response(),
        Err(rejection) => {
            shared.lock().count_batch(rejection_label(&rejection));
            tracing::debug!(error = %rejection, "Batch rejected.");
            rejection.into_response()
        }
    };
    shared.ingest_latency.observe(started.elapsed());
    response
}

async fn accept_batch(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
) -> Result<BatchAck, Rejection> {
    let site = &shared.site;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let agent = ingest::authenticate_agent(site, auth)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.trim_start().starts_with("application/json") {
        return Err(Rejection::UnsupportedMediaType(format!(
            "content-type must be application/json, not {content_type:?}"
        )));
    }
    shared
        .take_token(agent)
        .map_err(|retry_after_s| Rejection::TooManyRequests {
            error: format!(
                "agent {agent:?} posts more than {} batches per second",
                site.agent_rate
            ),
            retry_after_s,
        })?;
    let bytes = tokio::time::timeout(site.request_timeout, to_bytes(body, site.max_body_bytes))
        .await
        .map_err(|_| {
            Rejection::Timeout(format!(
                "the body did not arrive within {} s",
                site.request_timeout.as_secs_f64()
            ))
        })?
        .map_err(|_| {
            Rejection::TooLarge(format!("body larger than {} bytes", site.max_body_bytes))
        })?;
    let now = now_ms();
    let batch = ingest::decode(&bytes, agent, site, now)?;
    // A resend of a batch that is applied but not yet committed waits for its
    // group's outcome: a duplicate is answered only for what is durable.
    let deadline = tokio::time::Instant::now() + site.request_timeout;
    let (accepted, written) = loop {
        let committed = shared.committed.notified();
        match apply_and_queue(shared, &batch, agent, now) {
            Applied::Queued { accepted, written } => break (accepted, written),
            Applied::Answer(a) => return a,
            Applied::Wait => {
                if tokio::time::timeout_at(deadline, committed).await.is_err() {
                    return Err(Rejection::Unavailable(format!(
                        "agent {agent:?}'s earlier batches are still being written; send again"
                    )));
                }
            }
        }
    };
    // Acknowledged only once the transaction that holds it committed.
    let written = written
        .await
        .unwrap_or_else(|_| Err("the collector is stopping".into()));
    if let Err(e) = written {
        return Err(Rejection::Unavailable(format!(
            "the collector could not store the batch: {e}"
        )));
    }
    Ok(BatchAck {
        accepted,
        duplicate: false,
        last_seq: batch.seq,
    })
}

/// What applying a batch in memory came to.
enum Applied {
    /// Applied and queued for the group commit; says when it is written.
    Queued {
        accepted: usize,
        written: tokio::sync::oneshot::Receiver<Result<(), String>>,
    },
    /// Answered without a commit (duplicate, conflict, failure).
    Answer(Result<BatchAck, Rejection>),
    /// It overlaps a batch of its agent that is applied but not committed:
    /// ask again once that batch's group is written (or failed).
    Wait,
}

/// Under the state lock: dedup, apply, serialize, queue. The lock is released
/// before the commit is awaited.
fn apply_and_queue(shared: &Shared, batch: &dcwatt_wire::Batch, agent: &str, now: i64) -> Applied {
    let site = &shared.site;
    let mut state = shared.lock();
    let last_seq = state.agents.get(agent).map_or(0, |a| a.last_seq);
    let first_seq = batch.first_seq.unwrap_or(batch.seq);
    if first_seq <= last_seq && shared.has_uncommitted(agent) {
        return Applied::Wait;
    }
    if batch.seq <= last_seq {
        state.count_batch("duplicate");
        return Applied::Answer(Ok(BatchAck {
            accepted: 0,
            duplicate: true,
            last_seq,
        }));
    }
    if first_seq <= last_seq {
        return Applied::Answer(Err(Rejection::Conflict {
            error: format!(
                "first_seq: batches {first_seq}..={} overlap what was applied (up to {last_seq}): send from {}",
                batch.seq,
                last_seq + 1
            ),
            last_seq,
        }));
    }
    if let Some(would) = state.gpu_cap_exceeded(batch, site.max_gpus_per_agent) {
        return Applied::Answer(Err(Rejection::Forbidden(format!(
            "gpus: agent {agent:?} would report {would} GPUs, more than max_gpus_per_agent ({})",
            site.max_gpus_per_agent
        ))));
    }
    if let Some((field, uuid, owner)) = state.foreign_gpu(batch) {
        return Applied::Answer(Err(Rejection::Forbidden(format!(
            "{field}: GPU {uuid} is reported by agent {owner:?}, not {agent:?}; the operator releases a GPU that moved"
        ))));
    }
    let (accepted, changes) = state.apply(batch, site, now);
    // Serialize what this batch changed now (later batches will change the
    // state again), queue it, and let the group commit write it.
    match shared.queue_changes(state, agent, &changes, Some((agent.to_owned(), batch.seq))) {
        Ok(written) => Applied::Queued { accepted, written },
        Err(e) => Applied::Answer(Err(Rejection::Unavailable(format!(
            "the collector could not store the batch: {e}"
        )))),
    }
}

/// Batches applied in memory and waiting to be written (group commit: the
/// committer thread writes every batch queued so far in one transaction and
/// tells each request how its batch fared).
#[derive(Default)]
pub struct CommitQueue {
    pending: Vec<(Queued, Written)>,
    /// Per agent, the highest seq applied in memory and not yet committed
    /// (pending here, or in the group being written).
    uncommitted: std::collections::HashMap<String, u64>,
    /// When the oldest pending batch was queued.
    oldest: Option<std::time::Instant>,
    /// Transactions written (for the metrics).
    pub commits: u64,
    /// Batches written by those transactions.
    pub committed_batches: u64,
}

/// Where a queued batch's outcome goes: written, or why not.
type Written = tokio::sync::oneshot::Sender<Result<(), String>>;

/// One applied change waiting for the group commit.
struct Queued {
    prepared: crate::store::Prepared,
    /// The agent and seq of a batch (`None` for an operator's change).
    batch: Option<(String, u64)>,
}

/// How long the committer lets batches gather before writing them in one
/// transaction, counted from the oldest one queued. Each transaction costs
/// the same WAL frames and page writes whether it holds one batch or fifty,
/// so under load a few milliseconds here divide the store's cost per batch;
/// an idle collector pays them as latency on a lone batch.
pub const COMMIT_GATHER: std::time::Duration = std::time::Duration::from_millis(4);
/// A group this large is written at once.
pub const COMMIT_GROUP_MAX: usize = 256;

impl Shared {
    /// Queues an applied batch's rows; the receiver says when they are written.
    fn queue_commit(&self, queued: Queued) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut q = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((agent, seq)) = &queued.batch {
            let top = q.uncommitted.entry(agent.clone()).or_default();
            *top = (*top).max(*seq);
        }
        q.pending.push((queued, tx));
        let n = q.pending.len();
        if n == 1 {
            q.oldest = Some(std::time::Instant::now());
        }
        drop(q);
        if n == 1 || n == COMMIT_GROUP_MAX {
            self.commit_wake.notify_one();
        }
        rx
    }

    /// The committer thread: writes the queued batches in groups, in the
    /// order they were applied, until `stop`; then the rest.
    pub fn run_committer(&self, stop: &std::sync::atomic::AtomicBool) {
        // Ready from here until this returns (or unwinds).
        struct Running<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let _running = Running(&self.ready);
        let stopping = || stop.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            {
                let mut q = self.commits.lock().unwrap_or_else(|p| p.into_inner());
                while q.pending.is_empty() {
                    if stopping() {
                        return;
                    }
                    q = self
                        .commit_wake
                        .wait_timeout(q, std::time::Duration::from_millis(200))
                        .map_or_else(|p| p.into_inner().0, |(q, _)| q);
                }
                // Let the group gather, unless it is full or we are stopping.
                while q.pending.len() < COMMIT_GROUP_MAX && !stopping() {
                    let waited = q.oldest.map_or(COMMIT_GATHER, |t| t.elapsed());
                    let Some(left) = COMMIT_GATHER.checked_sub(waited).filter(|d| !d.is_zero())
                    else {
                        break;
                    };
                    q = self
                        .commit_wake
                        .wait_timeout(q, left)
                        .map_or_else(|p| p.into_inner().0, |(q, _)| q);
                }
                q.oldest = None;
            }
            // The group is taken only under the store's lock: whoever reloads
            // the state (holding that lock) never misses a group in flight.
            let mut store = self.store();
            let group = std::mem::take(
                &mut self
                    .commits
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pending,
            );
            if group.is_empty() {
                continue; // failed and reloaded meanwhile
            }
            let (items, written): (Vec<Queued>, Vec<Written>) = group.into_iter().unzip();
            match store.commit_group(items.iter().map(|q| &q.prepared), &self.site) {
                Ok(()) => {
                    drop(store);
                    {
                        let mut q = self.commits.lock().unwrap_or_else(|p| p.into_inner());
                        q.commits += 1;
                        q.committed_batches += items.len() as u64;
                        for (agent, seq) in items.iter().filter_map(|i| i.batch.as_ref()) {
                            if q.uncommitted.get(agent).is_some_and(|top| top <= seq) {
                                q.uncommitted.remove(agent);
                            }
                        }
                    }
                    *self.lock().batches.entry("ok").or_default() += items.len() as u64;
                    for w in written {
                        let _ = w.send(Ok(()));
                    }
                    self.committed.notify_waiters();
                }
                Err(e) => {
                    tracing::error!(error = %e, batches = items.len(), "Batch commit failed; state reloaded from the store.");
                    self.fail_and_reload(
                        &store,
                        written,
                        &format!("the group it was written with failed: {e}"),
                    );
                }
            }
        }
    }

    /// Serializes what was just applied under `state` and queues it for the
    /// group commit; the receiver says when it is written. If it cannot be
    /// serialized, the one failure path runs (every batch queued after the
    /// last commit fails, the state goes back to the store's) and the error
    /// is returned.
    fn queue_changes(
        &self,
        state: MutexGuard<'_, State>,
        agent: &str,
        changes: &crate::state::Changes,
        batch: Option<(String, u64)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), String>>, crate::store::StoreError> {
        match crate::store::prepare(agent, &state, changes) {
            Ok(prepared) => Ok(self.queue_commit(Queued { prepared, batch })),
            Err(e) => {
                drop(state); // lock order: store, then state
                let store = self.store();
                self.fail_and_reload(
                    &store,
                    Vec::new(),
                    &format!("a change applied before it failed: {e}"),
                );
                Err(e)
            }
        }
    }

    /// True while a batch of `agent` is applied in memory but not committed.
    fn has_uncommitted(&self, agent: &str) -> bool {
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .uncommitted
            .contains_key(agent)
    }

    /// The one failure path between apply and commit: `failed` (a group that
    /// did not commit) and every batch still queued fail with `why`, and the
    /// state goes back to what `store` holds (the caller holds the store's
    /// lock, so no group is in flight), all under the state lock so that no
    /// batch is applied in between. Batches applied in memory after a failed
    /// one build on it: they cannot stand alone.
    fn fail_and_reload(&self, store: &Store, failed: Vec<Written>, why: &str) {
        let mut state = self.lock();
        let later = {
            let mut q = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            q.uncommitted.clear();
            q.oldest = None;
            std::mem::take(&mut q.pending)
        };
        if !later.is_empty() {
            tracing::error!(batches = later.len(), error = %why, "Queued batches failed with an earlier one; state reloaded from the store.");
        }
        self.reload_into(store, &mut state);
        drop(state);
        for w in failed.into_iter().chain(later.into_iter().map(|(_, w)| w)) {
            let _ = w.send(Err(why.to_owned()));
        }
        self.committed.notify_waiters();
    }

    /// Replaces `state` with what the store holds, keeping the counters.
    fn reload_into(&self, store: &Store, state: &mut State) {
        let mut reloaded = State::new(&self.site);
        if let Err(e) = store.load(&mut reloaded) {
            tracing::error!(error = %e, "Reloading the state failed.");
        }
        reloaded.batches = std::mem::take(&mut state.batches);
        reloaded.readings = state.readings;
        reloaded.ignored = std::mem::take(&mut state.ignored);
        *state = reloaded;
    }
}

async fn metrics(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    // Every tenant's figures are in it: with an operator configured, only the
    // operator and the scrape token read it.
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if shared.site.operator_token.is_some()
        && !ingest::is_operator(&shared.site, auth)
        && !ingest::is_scraper(&shared.site, auth)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "/metrics needs the scrape token ([metrics] token_sha256) or the operator token",
        );
    }
    // A hall's exposition takes tens of milliseconds to write: off the async
    // workers, so that ingest keeps being served meanwhile.
    let rendered = tokio::task::spawn_blocking(move || {
        let state = shared.lock();
        let figures = shared.figures(&state, now_ms());
        let totals = shared
            .tenant_totals
            .lock()
            .map(|t| t.by_owner.clone())
            .unwrap_or_default();
        let mut text = crate::export::render(&state, &shared.site, &figures, &totals);
        drop(state);
        let (commits, batches) = {
            let q = shared.commits.lock().unwrap_or_else(|p| p.into_inner());
            (q.commits, q.committed_batches)
        };
        text.push_str(&dcwatt_expo::encode(crate::export::self_families(
            commits,
            batches,
            shared.ingest_latency.snapshot(),
        )));
        text.push_str(&dcwatt_expo::encode(shared.transparency.families()));
        text
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, dcwatt_expo::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// One meter in the summary.
#[derive(Serialize)]
struct MeterView<'a> {
    id: &'a str,
    role: &'static str,
    zone: &'a str,
    category: Option<u8>,
    power_watts: Option<f64>,
    energy_joules: f64,
    /// A water meter's volume, m³ (its energy_joules is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    water_cubic_meters: Option<f64>,
    energy_from_ms: Option<i64>,
    energy_to_ms: Option<i64>,
    last_ms: Option<i64>,
    fresh: bool,
    resets: u64,
    last_reset: Option<ResetView>,
    gaps: u64,
    /// Events by kind (`gap`, `reset`, `swap`, `power_gap`, `glitch`), as
    /// `dcwatt_meter_events_total` counts them.
    events: std::collections::BTreeMap<&'static str, u64>,
    /// The last swap (a replaced meter): the last reading before it and the
    /// reading it was rebased at.
    last_swap: Option<ResetView>,
}

#[derive(Serialize)]
struct ResetView {
    before_ms: i64,
    after_ms: i64,
}

#[derive(Serialize)]
struct GpuView<'a> {
    node: &'a str,
    index: u32,
    uuid: &'a str,
    model: &'a str,
    temperature_celsius: f64,
    power_watts: Option<f64>,
}

#[derive(Serialize)]
struct AgentView<'a> {
    id: &'a str,
    last_seq: u64,
    last_seen_ms: i64,
}

#[derive(Serialize)]
struct GpuTotals {
    count: usize,
    reporting: usize,
    power_watts: f64,
    energy_joules: f64,
    counter_resets: u64,
}

#[derive(Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    figures: &'a Figures,
    meters: Vec<MeterView<'a>>,
    gpus: GpuTotals,
    hottest_gpus: Vec<GpuView<'a>>,
    thermal_excursions: Vec<OpenExcursion>,
    agents: Vec<AgentView<'a>>,
}

/// An open thermal excursion in the summary.
#[derive(Serialize)]
struct OpenExcursion {
    zone: String,
    entity_kind: &'static str,
    entity: String,
    kind: crate::thermal::Kind,
    since_ms: i64,
}

/// With an operator configured, only the operator reads hall-wide data.
fn operator_only(site: &Site, headers: &HeaderMap) -> Result<(), ApiError> {
    if site.operator_token.is_none() {
        return Ok(());
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if ingest::is_operator(site, auth) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this needs the operator token".into(),
        ))
    }
}

/// An error answer: status and text.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// `from` and `to` of `GET /v1/pue`: RFC 3339 (`2026-11-01T00:00:00Z`) or Unix ms.
#[derive(Deserialize)]
struct PeriodQuery {
    from: String,
    to: String,
}

/// The first instant a query may name: 1970-01-01T00:00:00Z.
pub const MIN_INSTANT_MS: i64 = 0;
/// The last instant a query may name: 9999-12-31T23:59:59.999Z.
pub const MAX_INSTANT_MS: i64 = 253_402_300_799_999;
/// The longest period a query may cover: 400 days.
pub const MAX_SPAN_MS: i64 = 400 * 86_400_000;
/// The most steps `GET /v1/tenants/{t}/energy` answers with.
pub const MAX_STEPS: i64 = 10_000;
/// The most excursions one `GET /v1/tenants/{t}/excursions` answers with.
pub const MAX_EXCURSIONS: usize = 10_000;

fn bad_request(text: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, text.into())
}

/// An instant of a query: RFC 3339 or Unix ms, within
/// [`MIN_INSTANT_MS`]..=[`MAX_INSTANT_MS`], so that every sum and difference
/// of two of them fits an `i64`.
fn parse_instant(key: &str, text: &str) -> Result<i64, ApiError> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => humantime_serde::re::humantime::parse_rfc3339(text)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok()),
    };
    let ms = ms.ok_or_else(|| {
        bad_request(format!(
            "{key}: {text:?} is neither RFC 3339 (2026-11-01T00:00:00Z) nor Unix milliseconds"
        ))
    })?;
    if !(MIN_INSTANT_MS..=MAX_INSTANT_MS).contains(&ms) {
        return Err(bad_request(format!(
            "{key}: {ms} is outside [{MIN_INSTANT_MS}, {MAX_INSTANT_MS}] (1970-01-01 to 9999-12-31)"
        )));
    }
    Ok(ms)
}

/// `from` and `to` of a query: both instants, `to` after `from` by at most
/// [`MAX_SPAN_MS`].
fn parse_period(from: &str, to: &str) -> Result<(i64, i64), ApiError> {
    let (from, to) = (parse_instant("from", from)?, parse_instant("to", to)?);
    if to <= from || to - from > MAX_SPAN_MS {
        return Err(bad_request("to: must be after from, by at most 400 days"));
    }
    Ok((from, to))
}

/// `step` of a tenant energy query, ms: whole minutes, at most the span, and
/// at most [`MAX_STEPS`] steps over it; absent, the whole span.
fn parse_step(step: Option<&str>, span_ms: i64) -> Result<i64, ApiError> {
    let Some(text) = step else {
        return Ok(span_ms);
    };
    let ms = humantime_serde::re::humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms >= 60_000 && ms % 60_000 == 0)
        .ok_or_else(|| bad_request("step: must be whole minutes (1m, 1h, 1d)"))?;
    if ms > span_ms {
        return Err(bad_request(format!(
            "step: {text} is longer than the period ({} min)",
            span_ms / 60_000
        )));
    }
    // span ≤ MAX_SPAN_MS and ms ≥ 1 min: no overflow.
    if (span_ms + ms - 1) / ms > MAX_STEPS {
        return Err(bad_request(format!(
            "step: {text} cuts the period into more than {MAX_STEPS} steps"
        )));
    }
    Ok(ms)
}

async fn pue_period(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<PeriodQuery>, QueryRejection>,
) -> Response {
    let site = &shared.site;
    if let Err(r) = operator_only(site, &headers) {
        return r.into_response();
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e}")),
    };
    let (from, to) = match parse_period(&q.from, &q.to) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    // Minutes while they are kept and the span is short; hours otherwise.
    let minutes_kept = now_ms() - crate::store::MINUTE_RETENTION_MS;
    let resolution = if to - from <= 2 * 86_400_000 && from >= minutes_kept {
        Resolution::Minute
    } else {
        Resolution::Hour
    };
    let step = resolution.ms();
    let (from, to) = (resolution.floor(from), resolution.floor(to + step - 1));
    let s = Arc::clone(&shared);
    match shared
        .read_store(move |store| windows::period(store, &s.site, from, to, resolution))
        .await
    {
        Ok(p) => Json(p).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/reports/efficiency` query: `from`, `to` (dates, or RFC 3339 /
/// Unix ms at UTC midnights), `zone`, `format` (json, csv, html).
#[derive(Deserialize)]
struct EfficiencyQuery {
    from: String,
    to: String,
    zone: Option<String>,
    format: Option<String>,
}

/// The efficiency report over `[from, to)` (operator only).
async fn efficiency_report(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<EfficiencyQuery>, QueryRejection>,
) -> Response {
    use crate::efficiency::{self, ReportError};
    if let Err(r) = operator_only(&shared.site, &headers) {
        return r.into_response();
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e}")),
    };
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return error(
            StatusCode::BAD_REQUEST,
            "format: must be json, csv or html".to_owned(),
        );
    }
    let period = efficiency::parse_day("from", &q.from).and_then(|from| {
        let to = efficiency::parse_day("to", &q.to)?;
        efficiency::check_period(from, to).map(|()| (from, to))
    });
    let (from, to) = match period {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let s = Arc::clone(&shared);
    let zone = q.zone;
    let found = shared
        .read_store(move |store| {
            Ok(efficiency::report(
                store,
                &s.site,
                from,
                to,
                zone.as_deref(),
                now_ms(),
            ))
        })
        .await;
    let report = match found {
        Ok(Ok(r)) => r,
        Ok(Err(ReportError::Invalid(key, why))) => {
            return error(StatusCode::BAD_REQUEST, format!("{key}: {why}"))
        }
        Ok(Err(ReportError::Store(e))) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
        }
        Err(e) => return e.into_response(),
    };
    match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv(),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::efficiency_html::render(&report),
        )
            .into_response(),
        _ => Json(report).into_response(),
    }
}

/// Tenant data: the operator reads every tenant; a tenant only itself.
fn tenant_or_operator(site: &Site, headers: &HeaderMap, tenant: &str) -> Result<(), ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token =
        ingest::bearer(auth).map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if ingest::is_operator(site, auth) {
        return Ok(());
    }
    match site.tenant_tokens.get(&crate::config::token_hash(token)) {
        Some(own) if own == tenant => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::FORBIDDEN,
            "tenant: this token reads only its own tenant".into(),
        )),
        None => Err(ApiError(StatusCode::UNAUTHORIZED, "unknown token".into())),
    }
}

/// The checks every tenant endpoint starts with: the caller may read this
/// tenant (403/401), the tenant exists (404), the query parses and its
/// `from`/`to` are instants (400). Returns the query and the period.
fn tenant_query<Q>(
    site: &Site,
    headers: &HeaderMap,
    tenant: &str,
    query: Result<Query<Q>, QueryRejection>,
    period: impl Fn(&Q) -> (&String, &String),
) -> Result<(Q, i64, i64), ApiError> {
    tenant_or_operator(site, headers, tenant)?;
    if !site.tenant_tokens.values().any(|t| t == tenant) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("tenant: no tenant {tenant:?}"),
        ));
    }
    let Query(q) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("query: {e}")))?;
    let (from, to) = period(&q);
    let (from, to) = parse_period(from, to)?;
    Ok((q, from, to))
}

/// `GET /v1/tenants/{tenant}/excursions` query.
#[derive(Deserialize)]
struct PeriodOnly {
    from: String,
    to: String,
}

/// The thermal excursions of a tenant's leased GPUs that started in `[from, to)`.
async fn tenant_excursions(
    Extract(shared): Extract<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PeriodOnly>, QueryRejection>,
) -> Response {
    let site = &shared.site;
    let (_, from, to) = match tenant_query(site, &headers, &tenant, query, |q: &PeriodOnly| {
        (&q.from, &q.to)
    }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let t = tenant.clone();
    let found = shared
        .read_store(move |store| store.excursions(Some(&t), from, to, MAX_EXCURSIONS + 1))
        .await;
    match found {
        Ok(list) if list.len() > MAX_EXCURSIONS => error(
            StatusCode::BAD_REQUEST,
            format!("to: more than {MAX_EXCURSIONS} excursions started in the period; ask for a shorter one"),
        ),
        Ok(list) => {
            Json(serde_json::json!({ "tenant": tenant, "excursions": list })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/tenants/{tenant}/energy` query.
#[derive(Deserialize)]
struct EnergyQuery {
    from: String,
    to: String,
    step: Option<String>,
    format: Option<String>,
}

/// One step of a tenant's energy.
#[derive(Serialize, Default, Clone)]
struct EnergyStep {
    from_ms: i64,
    to_ms: i64,
    it_joules: f64,
    facility_joules: f64,
    gpu_seconds: f64,
    rows: usize,
    rows_without_pue: usize,
    late_rows: usize,
    /// Mean GPU utilization, weighted by leased GPU time.
    mean_utilization: Option<f64>,
    /// The highest per-minute peak power (Σ of its GPUs' peaks), W.
    peak_watts: Option<f64>,
    thermal_excursions: i64,
    /// Of `it_joules`: the share of metered nodes' energy beyond their GPUs.
    node_joules: f64,
    /// Of `it_joules`: the share of superchip modules' energy beyond their GPUs.
    module_joules: f64,
    /// GPU energy while idle (SM activity below the threshold), J; absent
    /// without GPM.
    idle_joules: Option<f64>,
    #[serde(skip)]
    util_weight: (f64, f64),
}

impl EnergyStep {
    /// Adds one ledger row.
    fn add(&mut self, r: &crate::ledger::Row) {
        self.it_joules += r.it_joules;
        self.facility_joules += r.facility_joules.unwrap_or(0.0);
        self.gpu_seconds += r.gpu_ms as f64 / 1000.0;
        self.rows += 1;
        self.rows_without_pue += usize::from(r.pue.is_none());
        self.late_rows += usize::from(r.late);
        if let Some(u) = r.util_mean {
            let w = r.gpu_ms.max(1) as f64;
            self.util_weight.0 += u * w;
            self.util_weight.1 += w;
            self.mean_utilization = Some(self.util_weight.0 / self.util_weight.1);
        }
        if let Some(p) = r.peak_watts {
            self.peak_watts = Some(self.peak_watts.map_or(p, |q| q.max(p)));
        }
        self.thermal_excursions += r.excursions;
        self.node_joules += r.node_joules.unwrap_or(0.0);
        self.module_joules += r.module_joules.unwrap_or(0.0);
        if let Some(j) = r.idle_joules {
            *self.idle_joules.get_or_insert(0.0) += j;
        }
    }
}

async fn tenant_energy(
    Extract(shared): Extract<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EnergyQuery>, QueryRejection>,
) -> Response {
    let site = &shared.site;
    let (q, from, to) = match tenant_query(site, &headers, &tenant, query, |q: &EnergyQuery| {
        (&q.from, &q.to)
    }) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let step = match parse_step(q.step.as_deref(), to - from) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format: {other:?} is neither json nor csv"),
            )
        }
    };
    let mut steps: Vec<EnergyStep> = Vec::new();
    let mut t = from;
    while t < to {
        steps.push(EnergyStep {
            from_ms: t,
            to_ms: t.saturating_add(step).min(to),
            ..EnergyStep::default()
        });
        t = t.saturating_add(step);
    }
    // Rows are folded into their step as they are read: memory is the steps'.
    let t = tenant.clone();
    let read = shared
        .read_store(move |store| {
            store.for_each_tenant_row(&t, from, to, |r| {
                let i = usize::try_from((r.minute_ms - from) / step).unwrap_or(0);
                if let Some(s) = steps.get_mut(i) {
                    s.add(&r);
                }
            })?;
            Ok((steps, store.ledger_head()?))
        })
        .await;
    let (steps, head) = match read {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if csv {
        let mut out = String::from(
            "from_ms,to_ms,it_joules,facility_joules,gpu_seconds,rows,rows_without_pue,late_rows,mean_utilization,peak_watts,thermal_excursions,node_joules,module_joules,idle_joules\n",
        );
        for s in &steps {
            out += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                s.from_ms,
                s.to_ms,
                s.it_joules,
                s.facility_joules,
                s.gpu_seconds,
                s.rows,
                s.rows_without_pue,
                s.late_rows,
                s.mean_utilization.map_or(String::new(), |u| u.to_string()),
                s.peak_watts.map_or(String::new(), |p| p.to_string()),
                s.thermal_excursions,
                s.node_joules,
                s.module_joules,
                s.idle_joules.map_or(String::new(), |j| j.to_string())
            );
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
    }
    Json(serde_json::json!({
        "tenant": tenant,
        "from_ms": from,
        "to_ms": to,
        "step_ms": step,
        "ledger_head": head,
        "steps": steps,
    }))
    .into_response()
}

/// `GET /v1/tenants/{tenant}/statement` query.
#[derive(Deserialize)]
struct StatementQuery {
    month: String,
    format: Option<String>,
}

async fn tenant_statement(
    Extract(shared): Extract<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Response {
    let site = &shared.site;
    if let Err(e) = tenant_or_operator(site, &headers, &tenant) {
        return e.into_response();
    }
    if !site.tenant_tokens.values().any(|t| *t == tenant) {
        return error(
            StatusCode::NOT_FOUND,
            format!("tenant: no tenant {tenant:?}"),
        );
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("query: {e}")),
    };
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format: {other:?} is neither json nor csv"),
            )
        }
    };
    let (s, t, month) = (Arc::clone(&shared), tenant.clone(), q.month.clone());
    let result = shared
        .read_store(move |store| crate::statement::statement(store, &s.site, &t, &month, now_ms()))
        .await;
    match result {
        Ok(Some(s)) if csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            s.to_csv(),
        )
            .into_response(),
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => error(
            StatusCode::BAD_REQUEST,
            format!("month: {:?} is not YYYY-MM", q.month),
        ),
        Err(e) => e.into_response(),
    }
}

/// Re-reads the leases from the config file (operator only); see [`Shared::reload_leases`].
async fn reload_leases(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !ingest::is_operator(&shared.site, auth) {
        return error(StatusCode::UNAUTHORIZED, "this needs the operator token");
    }
    match shared.reload_leases() {
        Ok(n) => Json(serde_json::json!({ "leases": n })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /v1/admin/gpus/{uuid}/release` (operator only): the GPU moved to
/// another node; the next agent to report it owns it. Its energy stays.
async fn release_gpu(
    Extract(shared): Extract<Arc<Shared>>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !ingest::is_operator(&shared.site, auth) {
        return error(StatusCode::UNAUTHORIZED, "this needs the operator token");
    }
    if let Err(why) = ingest::check_id(&uuid) {
        return error(StatusCode::BAD_REQUEST, format!("uuid: {why}"));
    }
    let (owner, written) = {
        let mut state = shared.lock();
        let Some(owner) = state.release_gpu(&uuid) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("uuid: no agent owns GPU {uuid:?}"),
            );
        };
        let mut changes = crate::state::Changes::default();
        changes.gpus.insert(uuid.clone());
        // No agent's row changes ("" is no agent): only the GPU's.
        match shared.queue_changes(state, "", &changes, None) {
            Ok(written) => (owner, written),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        }
    };
    match written.await {
        Ok(Ok(())) => {
            tracing::info!(gpu = %uuid, agent = %owner, "GPU released by the operator.");
            Json(serde_json::json!({ "gpu": uuid, "released_from": owner })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the collector is stopping"),
    }
}

async fn ledger_verify(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    // The chain is the operator's to check, even in a lab setup.
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !ingest::is_operator(&shared.site, auth) {
        return error(StatusCode::UNAUTHORIZED, "this needs the operator token");
    }
    match shared.read_store(|store| store.verify_ledger()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn summary(Extract(shared): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    let site = &shared.site;
    if let Err(r) = operator_only(site, &headers) {
        return r.into_response();
    }
    let now = now_ms();
    let state = shared.lock();
    let figures = shared.figures(&state, now);
    let fresh = |t: i64| now - t <= site.stale_after_ms;
    let meters = state
        .meters
        .iter()
        .map(|(id, m)| MeterView {
            id,
            role: m.role.as_str(),
            zone: &m.zone,
            category: m.it_point.map(|p| p.category()),
            power_watts: m.acc.power.map(|(_, w)| w),
            energy_joules: m.energy_joules(),
            water_cubic_meters: m.water_cubic_meters(),
            energy_from_ms: m.acc.energy_from_ms,
            energy_to_ms: m.acc.energy_to_ms,
            last_ms: m.acc.last_ms,
            fresh: m.acc.last_ms.is_some_and(fresh),
            resets: m.acc.resets,
            last_reset: m.acc.last_reset.map(|(before_ms, after_ms)| ResetView {
                before_ms,
                after_ms,
            }),
            gaps: m.acc.gaps,
            events: [
                ("gap", m.acc.counter_gaps),
                ("reset", m.acc.resets),
                ("swap", m.acc.swaps),
                ("power_gap", m.acc.gaps),
                ("glitch", m.acc.glitches),
            ]
            .into_iter()
            .collect(),
            last_swap: m.acc.last_swap.map(|(before_ms, after_ms)| ResetView {
                before_ms,
                after_ms,
            }),
        })
        .collect();
    let mut hottest: Vec<GpuView> = state
        .gpus
        .iter()
        .filter_map(|(uuid, g)| {
            let (t, temp) = g.temperature?;
            fresh(t).then_some(GpuView {
                node: &g.node,
                index: g.index,
                uuid,
                model: &g.model,
                temperature_celsius: temp,
                power_watts: g.power.map(|(_, w)| w),
            })
        })
        .collect();
    hottest.sort_by(|a, b| b.temperature_celsius.total_cmp(&a.temperature_celsius));
    hottest.truncate(5);
    let gpus = GpuTotals {
        count: state.gpus.len(),
        reporting: state.gpus.values().filter(|g| fresh(g.last_ms)).count(),
        power_watts: state
            .gpus
            .values()
            .filter_map(|g| g.power)
            .filter(|(t, _)| fresh(*t))
            .map(|(_, w)| w)
            .sum(),
        energy_joules: state.gpu_totals().0,
        counter_resets: state.gpu_totals().1,
    };
    let agents = state
        .agents
        .iter()
        .map(|(id, a)| AgentView {
            id,
            last_seq: a.last_seq,
            last_seen_ms: a.last_seen_ms,
        })
        .collect();
    let thermal_excursions = state
        .open_excursions(site)
        .into_iter()
        .map(
            |(zone, entity_kind, entity, kind, since_ms)| OpenExcursion {
                zone,
                entity_kind,
                entity,
                kind,
                since_ms,
            },
        )
        .collect();
    Json(Summary {
        figures: &figures,
        meters,
        gpus,
        hottest_gpus: hottest,
        thermal_excursions,
        agents,
    })
    .into_response()
}

#[cfg(test)]
mod readiness_tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn shared() -> Arc<Shared> {
        let site = crate::config::Config::from_toml("")
            .unwrap()
            .build()
            .unwrap();
        Arc::new(Shared {
            state: Mutex::new(State::new(&site)),
            store: Mutex::new(Store::in_memory().unwrap()),
            windows: Mutex::new(Vec::new()),
            tenant_totals: Mutex::new(LedgerTotals::default()),
            db_path: None,
            readers: Mutex::new(Vec::new()),
            committed: tokio::sync::Notify::new(),
            invalid_pue_minutes: std::sync::atomic::AtomicI64::new(0),
            unbooked_node_joules: std::sync::atomic::AtomicU64::new(0),
            commits: Mutex::new(CommitQueue::default()),
            commit_wake: std::sync::Condvar::new(),
            rates: Mutex::new(std::collections::HashMap::new()),
            ingest_latency: Latency::default(),
            ready: AtomicBool::new(false),
            transparency: crate::transparency::Gauges::default(),
            site,
        })
    }

    async fn status(s: &Arc<Shared>) -> StatusCode {
        readyz(Extract(Arc::clone(s))).await.status()
    }

    #[tokio::test]
    async fn readyz_follows_the_committer() {
        let s = shared();
        assert_eq!(status(&s).await, StatusCode::SERVICE_UNAVAILABLE);
        let stop = Arc::new(AtomicBool::new(false));
        let committer = {
            let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
            std::thread::spawn(move || s.run_committer(&stop))
        };
        while !s.ready.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert_eq!(status(&s).await, StatusCode::OK);
        stop.store(true, Ordering::Relaxed);
        s.commit_wake.notify_all();
        committer.join().unwrap();
        assert_eq!(status(&s).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
