//! The group commit: batches applied in memory wait in the [`CommitQueue`]
//! and the committer thread writes them in one transaction per group, in
//! the order they were applied; a failure reloads the state from the store.

use std::sync::MutexGuard;

use super::Collector;
use crate::state::State;
use crate::store::Store;

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

impl Collector {
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
    pub(super) fn run_committer(&self, stop: &std::sync::atomic::AtomicBool) {
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
    pub(super) fn queue_changes(
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
    pub(super) fn has_uncommitted(&self, agent: &str) -> bool {
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
