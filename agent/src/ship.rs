//! Sends batches to collectors: `POST {url}/v1/batches` with the agent's bearer
//! token, one task and one bounded in-memory queue per collector.
//!
//! Each collector gets every batch, in order. Network errors, 5xx and 429 are
//! retried with capped exponential backoff; any other 4xx can never succeed, so
//! the batch is dropped and counted `rejected`. A full queue drops its oldest
//! batch (counted `dropped`). Batches are not yet durable: the on-disk spool is
//! a later milestone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dcwatt_wire::{Batch, BatchAck, ErrorBody, GpuInfo, Reading, BATCHES_PATH, VERSION};
use reqwest::StatusCode;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::Collector;
use crate::sources::{error_chain, now_ms};

/// Batches a collector's queue holds before dropping the oldest (an hour at 1 s).
pub const QUEUE_CAPACITY: usize = 3600;
/// First retry delay after a failed POST.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest error body kept for a log line.
const MAX_ERROR_TEXT: usize = 512;

/// Why shipping could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The HTTP client for a collector could not be built.
    #[error("collector {url}: cannot build http client: {source}")]
    Client {
        /// The collector URL.
        url: String,
        /// What failed.
        source: reqwest::Error,
    },
}

/// Makes batches and hands each to every collector's queue.
#[derive(Debug)]
pub struct Shipper {
    node: String,
    next_seq: u64,
    queues: Vec<Arc<Queue>>,
}

/// What [`Shipper::start`] returns.
#[derive(Debug)]
pub struct Started {
    /// Makes batches and queues them.
    pub shipper: Shipper,
    /// Per-collector counters, for `/metrics`.
    pub stats: Vec<Arc<CollectorStats>>,
    /// The sender tasks; they end once `stop` turns true.
    pub tasks: Vec<JoinHandle<()>>,
}

/// One collector's counters, shown on `/metrics`.
#[derive(Debug)]
pub struct CollectorStats {
    collector: String,
    ok: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
}

/// A copy of one collector's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Batches the collector applied.
    pub ok: u64,
    /// Batches the collector had applied before.
    pub duplicate: u64,
    /// Batches the collector refused (4xx), dropped.
    pub rejected: u64,
    /// Batches dropped unsent because the queue was full.
    pub dropped: u64,
    /// Batches waiting now.
    pub queued: u64,
}

impl CollectorStats {
    fn new(collector: String) -> Self {
        Self {
            collector,
            ok: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }

    /// The `collector` label: its configured URL without a trailing `/`.
    pub fn collector(&self) -> &str {
        &self.collector
    }

    /// The current counters.
    pub fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            duplicate: self.duplicate.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }
}

/// A batch, encoded once, as it waits in queues.
#[derive(Debug)]
struct Queued {
    seq: u64,
    body: Vec<u8>,
}

/// One collector's bounded queue.
#[derive(Debug)]
struct Queue {
    batches: Mutex<VecDeque<Arc<Queued>>>,
    capacity: usize,
    notify: Notify,
    stats: Arc<CollectorStats>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Queued>>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, b: Arc<Queued>) {
        let mut q = self.lock();
        while q.len() >= self.capacity {
            if let Some(old) = q.pop_front() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                debug!(collector = %self.stats.collector, seq = old.seq, "Queue full; oldest batch dropped.");
            }
        }
        q.push_back(b);
        self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        self.notify.notify_one();
    }

    fn front(&self) -> Option<Arc<Queued>> {
        self.lock().front().cloned()
    }

    /// Removes the front batch if it is still `seq` (it may have been dropped
    /// for space while it was in flight).
    fn pop(&self, seq: u64) {
        let mut q = self.lock();
        if q.front().is_some_and(|b| b.seq == seq) {
            q.pop_front();
        }
        self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
    }
}

impl Shipper {
    /// Starts one sender task per collector. They stop when `stop` turns true.
    /// `capacity` is each queue's size in batches ([`QUEUE_CAPACITY`]).
    pub fn start(
        node: String,
        collectors: Vec<Collector>,
        capacity: usize,
        stop: watch::Receiver<bool>,
    ) -> Result<Started, ShipError> {
        let mut queues = Vec::new();
        let mut stats = Vec::new();
        let mut tasks = Vec::new();
        for c in collectors {
            let label = c.url.as_str().trim_end_matches('/').to_owned();
            let client = reqwest::Client::builder()
                .timeout(c.timeout)
                .user_agent(concat!("dcwatt-agent/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|source| ShipError::Client {
                    url: label.clone(),
                    source,
                })?;
            let s = Arc::new(CollectorStats::new(label.clone()));
            let queue = Arc::new(Queue {
                batches: Mutex::new(VecDeque::new()),
                capacity: capacity.max(1),
                notify: Notify::new(),
                stats: Arc::clone(&s),
            });
            let endpoint = format!("{label}{BATCHES_PATH}");
            let sender = Sender {
                queue: Arc::clone(&queue),
                client,
                endpoint,
                token: c.token,
            };
            tasks.push(tokio::spawn(sender.run(stop.clone())));
            queues.push(queue);
            stats.push(s);
        }
        let shipper = Self {
            node,
            next_seq: start_seq(),
            queues,
        };
        Ok(Started {
            shipper,
            stats,
            tasks,
        })
    }

    /// Makes the next batch from one tick's readings and queues it for every
    /// collector. Non-finite values are left out (JSON has no NaN).
    pub fn submit(&mut self, gpus: Vec<GpuInfo>, mut readings: Vec<Reading>) {
        readings.retain(|r| r.value.is_finite());
        let batch = Batch {
            version: VERSION,
            agent: self.node.clone(),
            seq: self.next_seq,
            first_seq: None,
            node: self.node.clone(),
            created_ms: now_ms(),
            gpus,
            readings,
        };
        self.next_seq += 1;
        let body = match serde_json::to_vec(&batch) {
            Ok(b) => b,
            Err(e) => {
                warn!(seq = batch.seq, error = %e, "Batch encoding failed; batch dropped.");
                return;
            }
        };
        let queued = Arc::new(Queued {
            seq: batch.seq,
            body,
        });
        for q in &self.queues {
            q.push(Arc::clone(&queued));
        }
    }
}

/// The first sequence number: the agent's start time in microseconds, so that
/// sequence numbers keep increasing across restarts.
fn start_seq() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(0)
}

/// What one POST came to.
enum Outcome {
    /// 2xx.
    Accepted { duplicate: bool },
    /// A 4xx other than 408/429: this batch can never succeed.
    Rejected { status: StatusCode, error: String },
    /// Worth retrying: network error, timeout, 5xx, 408, 429.
    Retry(String),
}

/// One collector's sender task.
struct Sender {
    queue: Arc<Queue>,
    client: reqwest::Client,
    endpoint: String,
    token: String,
}

impl Sender {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let collector = self.queue.stats.collector.clone();
        let mut backoff = BACKOFF_INITIAL;
        let mut failing = false;
        loop {
            let Some(batch) = self.next(&mut stop).await else {
                return;
            };
            let outcome = tokio::select! {
                o = self.post(&batch) => o,
                _ = stopped(&mut stop) => return,
            };
            match outcome {
                Outcome::Accepted { duplicate } => {
                    let counter = if duplicate {
                        &self.queue.stats.duplicate
                    } else {
                        &self.queue.stats.ok
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.queue.pop(batch.seq);
                    if failing {
                        info!(collector = %collector, "Collector reachable again.");
                    }
                    failing = false;
                    backoff = BACKOFF_INITIAL;
                }
                Outcome::Rejected { status, error } => {
                    warn!(collector = %collector, seq = batch.seq, status = %status, error = %error, "Collector rejected a batch; batch dropped.");
                    self.queue.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    self.queue.pop(batch.seq);
                    backoff = BACKOFF_INITIAL;
                }
                Outcome::Retry(error) => {
                    if failing {
                        debug!(collector = %collector, error = %error, retry_in = ?backoff, "Batch send failed.");
                    } else {
                        warn!(collector = %collector, error = %error, "Batch send failed; retrying with backoff.");
                    }
                    failing = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The oldest queued batch, waiting for one; `None` on stop.
    async fn next(&self, stop: &mut watch::Receiver<bool>) -> Option<Arc<Queued>> {
        loop {
            if let Some(b) = self.queue.front() {
                return Some(b);
            }
            tokio::select! {
                _ = self.queue.notify.notified() => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    async fn post(&self, batch: &Queued) -> Outcome {
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(batch.body.clone())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry(format!(
                    "post {}: {}",
                    self.endpoint,
                    error_chain(&e.without_url())
                ))
            }
        };
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            let duplicate = serde_json::from_slice::<BatchAck>(&body)
                .map(|a| a.duplicate)
                .unwrap_or(false);
            return Outcome::Accepted { duplicate };
        }
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]).into_owned()
            });
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Outcome::Retry(format!(
                "post {}: http status {status}: {error}",
                self.endpoint
            ))
        } else {
            Outcome::Rejected { status, error }
        }
    }
}

/// Resolves when `stop` turns true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(seq: u64) -> Arc<Queued> {
        Arc::new(Queued { seq, body: vec![] })
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let q = Queue {
            batches: Mutex::new(VecDeque::new()),
            capacity: 2,
            notify: Notify::new(),
            stats: Arc::new(CollectorStats::new("c".into())),
        };
        q.push(queued(1));
        q.push(queued(2));
        q.push(queued(3));
        assert_eq!(q.front().map(|b| b.seq), Some(2));
        let c = q.stats.counts();
        assert_eq!((c.dropped, c.queued), (1, 2));
        // A batch dropped while in flight is not popped twice.
        q.pop(1);
        assert_eq!(q.front().map(|b| b.seq), Some(2));
        q.pop(2);
        assert_eq!(q.front().map(|b| b.seq), Some(3));
        assert_eq!(q.stats.counts().queued, 1);
    }

    #[test]
    fn seq_starts_at_start_time_in_microseconds() {
        let before = u64::try_from(now_ms()).unwrap() * 1000;
        let seq = start_seq();
        assert!(
            seq >= before && seq < before + 60_000_000,
            "{seq} vs {before}"
        );
    }
}
