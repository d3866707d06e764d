//! The application core: the [`Collector`] every route and background job
//! shares. It holds the live state, the store and its read connections, the
//! cached figures, the per-agent rate limiter, and applies batches
//! ([`Collector::apply_batch`]: dedup, conflict and ownership checks, apply,
//! queue for the group commit). [`commit`] writes the queued batches;
//! [`jobs`] runs the background work, started and stopped with
//! [`Collector::start`].

mod commit;
mod jobs;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dcwatt_wire::{Batch, BatchAck};

use crate::figures::{self, Figures};
use crate::ingest::Rejection;
use crate::latency::Latency;
use crate::site::Site;
use crate::state::State;
use crate::store::{Store, StoreError};
use crate::windows::Period;

use commit::CommitQueue;
pub use commit::{COMMIT_GATHER, COMMIT_GROUP_MAX};
pub use jobs::{Jobs, StartError, WINDOW_REFRESH};

/// What every route and background job shares.
pub struct Collector {
    /// The validated configuration.
    site: Site,
    /// The live state. Locked briefly: validation happens before locking.
    state: Mutex<State>,
    /// The store (a file with `[ledger]`, else in memory); locked only while
    /// `state` is locked, or alone.
    store: Mutex<Store>,
    /// The stored trailing windows, as last computed by the refresher.
    windows: Mutex<Vec<Period>>,
    /// Ledger totals per owner, kept up to date by the refresher.
    tenant_totals: Mutex<LedgerTotals>,
    /// The database file, for read connections; `None` in memory.
    db_path: Option<std::path::PathBuf>,
    /// Idle read connections (see [`Collector::with_reader`]).
    readers: Mutex<Vec<Store>>,
    /// Agents that may be waiting for a pending batch's outcome: notified
    /// after each group commit and each failure.
    committed: tokio::sync::Notify,
    /// Batches waiting for the group commit.
    commits: Mutex<CommitQueue>,
    /// Wakes the committer thread when a batch is queued.
    commit_wake: std::sync::Condvar,
    /// [`Figures::unbooked_node_joules`] as `f64` bits, as last read.
    unbooked_node_joules: AtomicU64,
    /// Complete minutes with an invalid PUE, as last read.
    invalid_pue_minutes: AtomicI64,
    /// Each agent's token bucket: (tokens, when last filled).
    rates: Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    /// How long `POST /v1/batches` took, from the handler's start to its answer.
    ingest_latency: Latency,
    /// The ledger tree's figures for `/metrics` (see `transparency`).
    transparency: crate::transparency::Gauges,
    /// `/readyz`: true while the committer runs (it starts once the state is
    /// loaded from the store), so batches can be acknowledged.
    ready: AtomicBool,
}

/// The ledger's totals per owner, kept by adding what was booked after
/// `after_id` (the ledger is append-only): the refresher never re-reads it whole.
#[derive(Debug, Default)]
pub struct LedgerTotals {
    /// Per owner, sorted by owner.
    pub by_owner: Vec<crate::store::ledger::TenantTotal>,
    /// The last ledger row counted.
    pub after_id: i64,
}

impl LedgerTotals {
    /// Adds the totals of the rows up to `last_id`.
    pub fn add(&mut self, new: &[crate::store::ledger::TenantTotal], last_id: i64) {
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

/// What applying a batch in memory came to.
pub enum Applied {
    /// Applied and queued for the group commit; says when it is written.
    Queued {
        /// Readings accepted.
        accepted: usize,
        /// Written, or why not.
        written: tokio::sync::oneshot::Receiver<Result<(), String>>,
    },
    /// Answered without a commit (duplicate, conflict, failure).
    Answer(Result<BatchAck, Rejection>),
    /// It overlaps a batch of its agent that is applied but not committed:
    /// ask again once that batch's group is written (or failed).
    Wait,
}

/// Why an operator's GPU release did not happen.
#[derive(Debug)]
pub enum ReleaseError {
    /// No agent owns the GPU.
    NotOwned,
    /// The change could not be stored.
    Store(StoreError),
}

impl Collector {
    /// Opens the store (the `[ledger]` file, else in memory) and loads the
    /// state from it. Nothing runs until [`Collector::start`].
    pub fn open(site: Site) -> Result<Arc<Collector>, StoreError> {
        let mut state = State::new(&site);
        let store = match &site.ledger_path {
            Some(path) => {
                let store = Store::open(path)?;
                store.set_synchronous(site.ledger_synchronous)?;
                store.load(&mut state)?;
                tracing::info!(path = %path.display(), agents = state.agents.len(), "State loaded.");
                store
            }
            None => {
                tracing::warn!("No [ledger] configured: state is kept in memory only and a restart starts from zero.");
                Store::in_memory()?
            }
        };
        Ok(Arc::new(Collector::new(site, state, store)))
    }

    fn new(site: Site, state: State, store: Store) -> Collector {
        Collector {
            state: Mutex::new(state),
            store: Mutex::new(store),
            windows: Mutex::new(Vec::new()),
            tenant_totals: Mutex::new(LedgerTotals::default()),
            db_path: site.ledger_path.clone(),
            readers: Mutex::new(Vec::new()),
            committed: tokio::sync::Notify::new(),
            invalid_pue_minutes: AtomicI64::new(0),
            unbooked_node_joules: AtomicU64::new(0),
            commits: Mutex::new(CommitQueue::default()),
            commit_wake: std::sync::Condvar::new(),
            rates: Mutex::new(std::collections::HashMap::new()),
            ingest_latency: Latency::default(),
            transparency: crate::transparency::Gauges::default(),
            ready: AtomicBool::new(false),
            site,
        }
    }

    /// The validated configuration.
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// True while the committer runs, so batches can be acknowledged.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The ingest latency histogram.
    pub fn ingest_latency(&self) -> &Latency {
        &self.ingest_latency
    }

    /// Counts a batch answered with `result` (a rejection's label).
    pub fn count_batch(&self, result: &'static str) {
        self.lock().count_batch(result);
    }

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
    pub fn take_token(&self, agent: &str) -> Result<(), u64> {
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

    /// The live state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State> {
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
        f: impl FnOnce(&Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
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

    /// The figures at `now`, with the last computed stored windows.
    pub fn figures(&self, state: &State, now: i64) -> Figures {
        let windows = self.windows.lock().map(|w| w.clone()).unwrap_or_default();
        let mut f = figures::compute(state, &self.site, now, windows);
        f.invalid_pue_minutes = self.invalid_pue_minutes.load(Ordering::Relaxed);
        f.unbooked_node_joules = f64::from_bits(self.unbooked_node_joules.load(Ordering::Relaxed));
        f
    }

    /// The whole `/metrics` exposition at `now`. Blocks: tens of
    /// milliseconds for a hall.
    pub fn render_metrics(&self, now: i64) -> String {
        let state = self.lock();
        let figures = self.figures(&state, now);
        let totals = self
            .tenant_totals
            .lock()
            .map(|t| t.by_owner.clone())
            .unwrap_or_default();
        let mut text = crate::export::render(&state, &self.site, &figures, &totals);
        drop(state);
        let (commits, batches) = {
            let q = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            (q.commits, q.committed_batches)
        };
        text.push_str(&dcwatt_expo::encode(crate::export::self_families(
            commits,
            batches,
            self.ingest_latency.snapshot(),
        )));
        text.push_str(&dcwatt_expo::encode(self.transparency.families()));
        text
    }

    /// Resolves at the next group commit or failure. Create it before
    /// [`Collector::apply_batch`] answers [`Applied::Wait`], so that no
    /// notification is missed in between.
    pub fn committed(&self) -> tokio::sync::futures::Notified<'_> {
        self.committed.notified()
    }

    /// Under the state lock: dedup, apply, serialize, queue. The lock is released
    /// before the commit is awaited.
    pub fn apply_batch(&self, batch: &Batch, agent: &str, now: i64) -> Applied {
        let site = &self.site;
        let mut state = self.lock();
        let last_seq = state.agents.get(agent).map_or(0, |a| a.last_seq);
        let first_seq = batch.first_seq.unwrap_or(batch.seq);
        if first_seq <= last_seq && self.has_uncommitted(agent) {
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
        match self.queue_changes(state, agent, &changes, Some((agent.to_owned(), batch.seq))) {
            Ok(written) => Applied::Queued { accepted, written },
            Err(e) => Applied::Answer(Err(Rejection::Unavailable(format!(
                "the collector could not store the batch: {e}"
            )))),
        }
    }

    /// The operator's release of GPU `uuid` (it moved to another node; the
    /// next agent to report it owns it; its energy stays): the agent that
    /// owned it, and the receiver that says when the change is written.
    pub fn release_gpu(
        &self,
        uuid: &str,
    ) -> Result<(String, tokio::sync::oneshot::Receiver<Result<(), String>>), ReleaseError> {
        let mut state = self.lock();
        let owner = state.release_gpu(uuid).ok_or(ReleaseError::NotOwned)?;
        let mut changes = crate::state::Changes::default();
        changes.gpus.insert(uuid.to_owned());
        // No agent's row changes ("" is no agent): only the GPU's.
        let written = self
            .queue_changes(state, "", &changes, None)
            .map_err(ReleaseError::Store)?;
        Ok((owner, written))
    }
}
