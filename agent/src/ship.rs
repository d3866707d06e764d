//! Sends spooled batches to collectors: `POST {url}/v1/batches` with the agent's
//! bearer token, one sender task per collector, each with its own cursor in the
//! [`Spool`].
//!
//! # Order and exactly-once
//! Each batch gets the next sequence number from the spool and is written there
//! before any sender sees it. A sender reads from its collector's cursor onwards,
//! in order, and moves the cursor to the acknowledged `BatchAck::last_seq` (or to
//! the batch sent, whichever is higher); the collector applies each `(agent, seq)`
//! once, so a batch re-sent after a crash or a lost answer is a harmless duplicate.
//! Senders are independent: a slow or absent mirror never delays the primary, and
//! a mirror that comes back catches up from its own cursor.
//!
//! # Catch-up
//! When more than one batch waits, up to [`MAX_MERGE_BATCHES`] consecutive ones
//! (at most [`MAX_MERGE_BYTES`] of JSON) go as one merged batch carrying
//! `first_seq..=seq`, and merged requests are at least [`CATCHUP_INTERVAL`] apart,
//! so a recovering collector is not flattened. A `409` (the range overlaps what
//! the collector applied) moves the cursor to its `last_seq` and re-merges from
//! there. A merged batch the collector refuses is re-sent one batch at a time.
//!
//! # Failures
//! Network errors, timeouts, 5xx, 408 and 429 are retried after a capped
//! exponential backoff with jitter (half fixed, half random); a `Retry-After` in
//! seconds on 429/503 is honoured instead (up to [`RETRY_AFTER_MAX`]). So are
//! 401, 403 and 404: a token or URL the collector does not know yet is a
//! configuration to fix on one side, and the batches wait in the spool until it
//! is (dropping them would lose data to a typo). Any other 4xx (a batch the
//! collector finds malformed or too large) can never succeed: that batch is
//! skipped and counted `rejected`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dcwatt_wire::{Batch, BatchAck, ErrorBody, GpuInfo, Reading, BATCHES_PATH, VERSION};
use reqwest::StatusCode;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::Collector;
use crate::sources::{error_chain, now_ms};
use crate::spool::{Record, Spool, SpoolError, SpoolSpec, Stats};

/// First retry delay after a failed POST.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Most batches merged into one catch-up request.
pub const MAX_MERGE_BATCHES: usize = 600;
/// Most JSON bytes of batches merged into one catch-up request (the collector
/// accepts 8 MiB by default).
pub const MAX_MERGE_BYTES: usize = 1 << 20;
/// Shortest time between two merged (catch-up) requests to one collector.
pub const CATCHUP_INTERVAL: Duration = Duration::from_millis(200);
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
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What the collection loop, the senders and `/metrics` share.
#[derive(Debug)]
pub struct Shared {
    spool: Mutex<Spool>,
    collectors: Vec<CollectorStats>,
    wake: Vec<Notify>,
}

/// One collector's counters.
#[derive(Debug)]
struct CollectorStats {
    label: String,
    ok: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
}

/// A copy of one collector's counters and levels, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorStatus {
    /// The `collector` label: its configured URL without a trailing `/`.
    pub collector: String,
    /// Batches the collector applied.
    pub ok: u64,
    /// Batches the collector had applied before.
    pub duplicate: u64,
    /// Batches the collector refused (4xx), skipped.
    pub rejected: u64,
    /// Batches dropped from the full spool before this collector got them.
    pub dropped: u64,
    /// Batches waiting for this collector.
    pub queued: u64,
    /// Age of the oldest batch waiting for this collector, seconds (0 when none).
    pub lag_seconds: f64,
}

/// Everything shipping shows on `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The spool's levels and counters.
    pub spool: Stats,
    /// Per collector, in configuration order.
    pub collectors: Vec<CollectorStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current counters and levels.
    pub fn status(&self) -> Status {
        let now = now_ms();
        let spool = self.lock();
        let collectors = self
            .collectors
            .iter()
            .enumerate()
            .map(|(i, c)| CollectorStatus {
                collector: c.label.clone(),
                ok: c.ok.load(Ordering::Relaxed),
                duplicate: c.duplicate.load(Ordering::Relaxed),
                rejected: c.rejected.load(Ordering::Relaxed),
                dropped: spool.dropped_for(i),
                queued: spool.pending(i),
                lag_seconds: spool.lag_ms(i, now) as f64 / 1000.0,
            })
            .collect();
        Status {
            spool: spool.stats(),
            collectors,
        }
    }

    /// Runs `f` on the spool on a blocking thread (it may sync files).
    async fn with_spool<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> R + Send + 'static,
    ) -> Option<R> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&mut shared.lock()))
            .await
            .ok()
    }
}

/// Makes batches and spools them.
#[derive(Debug)]
pub struct Shipper {
    node: String,
    shared: Arc<Shared>,
    /// Whether the last append failed (so a failing disk logs once).
    failing: bool,
}

/// What [`Shipper::start`] returns.
#[derive(Debug)]
pub struct Started {
    /// Makes batches and spools them.
    pub shipper: Shipper,
    /// Shared with `/metrics`.
    pub shared: Arc<Shared>,
    /// The sender tasks; they end once `stop` turns true.
    pub tasks: Vec<JoinHandle<()>>,
}

impl Shipper {
    /// Opens the spool and starts one sender task per collector. They stop when
    /// `stop` turns true.
    pub fn start(
        node: String,
        collectors: Vec<Collector>,
        spool: &SpoolSpec,
        stop: watch::Receiver<bool>,
    ) -> Result<Started, ShipError> {
        let labels: Vec<String> = collectors
            .iter()
            .map(|c| c.url.as_str().trim_end_matches('/').to_owned())
            .collect();
        let mut clients = Vec::new();
        for (c, label) in collectors.iter().zip(&labels) {
            let mut builder = reqwest::Client::builder()
                .timeout(c.timeout)
                .user_agent(concat!("dcwatt-agent/", env!("CARGO_PKG_VERSION")));
            let client_err = |source| ShipError::Client {
                url: label.clone(),
                source,
            };
            if let Some(pem) = &c.ca_pem {
                // The site's CA only: a public certificate for the name is not enough.
                let ca = reqwest::Certificate::from_pem(pem).map_err(client_err)?;
                builder = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(ca);
            }
            if let Some(pem) = &c.identity_pem {
                builder = builder.identity(reqwest::Identity::from_pem(pem).map_err(client_err)?);
            }
            if c.url.scheme() == "http" {
                tracing::warn!(collector = %label, "Plain HTTP to this collector: the bearer token crosses the network in clear (a lab setup only).");
            }
            let client = builder.build().map_err(|source| ShipError::Client {
                url: label.clone(),
                source,
            })?;
            clients.push(client);
        }
        let spool = Spool::open(spool, &labels)?;
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            collectors: labels
                .iter()
                .map(|label| CollectorStats {
                    label: label.clone(),
                    ok: AtomicU64::new(0),
                    duplicate: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                })
                .collect(),
            wake: labels.iter().map(|_| Notify::new()).collect(),
        });
        let mut tasks = Vec::new();
        for (index, (c, client)) in collectors.into_iter().zip(clients).enumerate() {
            let sender = Sender {
                index,
                shared: Arc::clone(&shared),
                client,
                endpoint: format!("{}{BATCHES_PATH}", labels[index]),
                label: labels[index].clone(),
                token: c.token,
            };
            tasks.push(tokio::spawn(sender.run(stop.clone())));
        }
        let shipper = Self {
            node,
            shared: Arc::clone(&shared),
            failing: false,
        };
        Ok(Started {
            shipper,
            shared,
            tasks,
        })
    }

    /// Makes the next batch from one tick's readings, spools it and wakes the
    /// senders. Non-finite values are left out (JSON has no NaN). A batch that
    /// cannot be spooled is dropped and counted; collection goes on.
    pub async fn submit(&mut self, gpus: Vec<GpuInfo>, mut readings: Vec<Reading>) {
        readings.retain(|r| r.value.is_finite());
        let node = self.node.clone();
        let appended = self
            .shared
            .with_spool(move |spool| {
                let batch = Batch {
                    version: VERSION,
                    agent: node.clone(),
                    seq: spool.next_seq(),
                    first_seq: None,
                    node,
                    created_ms: now_ms(),
                    gpus,
                    readings,
                };
                let body = serde_json::to_vec(&batch).map_err(|e| e.to_string())?;
                spool
                    .append(batch.created_ms, &body)
                    .map_err(|e| e.to_string())
            })
            .await;
        match appended {
            Some(Ok(seq)) => {
                if self.failing {
                    info!(seq, "Spooling works again.");
                }
                self.failing = false;
            }
            Some(Err(e)) if !self.failing => {
                warn!(error = %e, "Batch could not be spooled; dropped.");
                self.failing = true;
            }
            Some(Err(e)) => debug!(error = %e, "Batch could not be spooled; dropped."),
            None => warn!("Spooling task failed; batch dropped."),
        }
        for w in &self.shared.wake {
            w.notify_one();
        }
    }
}

/// What one POST came to.
enum Outcome {
    /// 2xx.
    Accepted { duplicate: bool, last_seq: u64 },
    /// 409 with the collector's `last_seq`.
    Conflict { last_seq: u64 },
    /// A 4xx other than 401/403/404/408/429: this batch can never succeed.
    Rejected { status: StatusCode, error: String },
    /// Worth retrying: network error, timeout, 5xx, 401, 403, 404, 408, 429.
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

/// One collector's sender task.
struct Sender {
    index: usize,
    shared: Arc<Shared>,
    client: reqwest::Client,
    endpoint: String,
    label: String,
    token: String,
}

impl Sender {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_INITIAL;
        let mut failing = false;
        // Send unmerged up to this seq (after a merged batch was refused).
        let mut single_until = 0u64;
        let mut last_merged: Option<Instant> = None;
        loop {
            let Some((after, records)) = self.next(single_until, &mut stop).await else {
                return;
            };
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                continue;
            };
            let (first, last, n) = (first.seq, last.seq, records.len() as u64);
            if n > 1 {
                if let Some(wait) = last_merged
                    .map(|t| CATCHUP_INTERVAL.saturating_sub(t.elapsed()))
                    .filter(|w| !w.is_zero())
                {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
                last_merged = Some(Instant::now());
            }
            let body = match merge(&records) {
                Some(b) => b,
                None => {
                    warn!(collector = %self.label, first, last, "Spooled batches do not decode; skipped.");
                    self.ack(last).await;
                    continue;
                }
            };
            let outcome = tokio::select! {
                o = self.post(body) => o,
                _ = stopped(&mut stop) => return,
            };
            let stats = &self.shared.collectors[self.index];
            match outcome {
                Outcome::Accepted {
                    duplicate,
                    last_seq,
                } => {
                    let counter = if duplicate {
                        &stats.duplicate
                    } else {
                        &stats.ok
                    };
                    counter.fetch_add(n, Ordering::Relaxed);
                    self.ack(last.max(last_seq)).await;
                    if failing {
                        info!(collector = %self.label, "Collector reachable again.");
                    }
                    failing = false;
                    backoff = BACKOFF_INITIAL;
                }
                Outcome::Conflict { last_seq } if last_seq > after => {
                    debug!(collector = %self.label, first, last, last_seq, "Merged batch overlaps what the collector applied; re-merging.");
                    self.ack(last_seq).await;
                }
                Outcome::Conflict { last_seq } => {
                    warn!(collector = %self.label, first, last, last_seq, "Collector answered 409 without progress; retrying with backoff.");
                    if !self.sleep(&mut backoff, None, &mut stop).await {
                        return;
                    }
                }
                Outcome::Rejected { status, error } if n > 1 => {
                    warn!(collector = %self.label, first, last, status = %status, error = %error, "Collector refused a merged batch; re-sending one by one.");
                    single_until = last;
                }
                Outcome::Rejected { status, error } => {
                    warn!(collector = %self.label, seq = last, status = %status, error = %error, "Collector rejected a batch; batch skipped.");
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    self.ack(last).await;
                    backoff = BACKOFF_INITIAL;
                }
                Outcome::Retry { error, after } => {
                    if failing {
                        debug!(collector = %self.label, error = %error, retry_in = ?backoff, "Batch send failed.");
                    } else {
                        warn!(collector = %self.label, error = %error, "Batch send failed; retrying with backoff.");
                    }
                    failing = true;
                    if !self.sleep(&mut backoff, after, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Waits `after` (a `Retry-After`) or the jittered backoff, then doubles the
    /// backoff. False on stop.
    async fn sleep(
        &self,
        backoff: &mut Duration,
        after: Option<Duration>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let wait = after.unwrap_or_else(|| jitter(*backoff));
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stopped(stop) => false,
        }
    }

    async fn ack(&self, seq: u64) {
        let index = self.index;
        match self.shared.with_spool(move |s| s.ack(index, seq)).await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                warn!(collector = %self.label, error = %e, "Spool cursor could not be saved.")
            }
            None => warn!(collector = %self.label, "Spool cursor task failed."),
        }
    }

    /// The cursor and the next batches after it, waiting for some; `None` on stop.
    async fn next(
        &self,
        single_until: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(u64, Vec<Record>)> {
        let index = self.index;
        loop {
            let read = self
                .shared
                .with_spool(move |s| {
                    let after = s.acked(index);
                    let max = if after < single_until {
                        1
                    } else {
                        MAX_MERGE_BATCHES
                    };
                    (after, s.read_after(after, MAX_MERGE_BYTES, max))
                })
                .await;
            if let Some((after, records)) = read {
                if !records.is_empty() {
                    return Some((after, records));
                }
            }
            tokio::select! {
                _ = self.shared.wake[index].notified() => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Outcome {
        let resp = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("post {}: {}", self.endpoint, error_chain(&e.without_url())),
                    after: None,
                }
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            return match serde_json::from_slice::<BatchAck>(&body) {
                Ok(a) => Outcome::Accepted {
                    duplicate: a.duplicate,
                    last_seq: a.last_seq,
                },
                Err(_) => Outcome::Accepted {
                    duplicate: false,
                    last_seq: 0,
                },
            };
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
        if status == StatusCode::CONFLICT {
            if let Some(last_seq) = parsed.as_ref().and_then(|e| e.last_seq) {
                return Outcome::Conflict { last_seq };
            }
        }
        let error = parsed.map(|e| e.error).unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]).into_owned()
        });
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status == StatusCode::NOT_FOUND
        {
            let honoured = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            Outcome::Retry {
                error: format!("post {}: http status {status}: {error}", self.endpoint),
                after: retry_after.filter(|_| honoured),
            }
        } else {
            Outcome::Rejected { status, error }
        }
    }
}

/// A `Retry-After` in delta-seconds, capped at [`RETRY_AFTER_MAX`]. (HTTP dates
/// are not honoured: the backoff applies.)
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX))
}

/// Half of `d` fixed, half random: senders that failed together spread out.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The request body for `records`: a single batch as spooled, or several merged
/// into one carrying `first_seq..=seq`. `None` when nothing decodes.
fn merge(records: &[Record]) -> Option<Vec<u8>> {
    if let [one] = records {
        return Some(one.body.to_vec());
    }
    let mut merged: Option<Batch> = None;
    let mut gpus: BTreeMap<String, GpuInfo> = BTreeMap::new();
    for r in records {
        let b: Batch = match serde_json::from_slice(&r.body) {
            Ok(b) => b,
            Err(e) => {
                warn!(seq = r.seq, error = %e, "Spooled batch does not decode; skipped.");
                continue;
            }
        };
        for g in &b.gpus {
            gpus.insert(g.uuid.clone(), g.clone());
        }
        match merged.as_mut() {
            None => {
                let mut m = b;
                m.first_seq = Some(m.seq);
                merged = Some(m);
            }
            Some(m) => {
                m.seq = b.seq;
                m.created_ms = b.created_ms;
                m.readings.extend(b.readings);
            }
        }
    }
    let mut m = merged?;
    if m.first_seq == Some(m.seq) {
        m.first_seq = None;
    }
    m.gpus = gpus.into_values().collect();
    serde_json::to_vec(&m).ok()
}

/// Resolves when `stop` turns true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcwatt_wire::{Entity, Quantity};

    fn record(seq: u64, gpu: &str, value: f64) -> Record {
        let b = Batch {
            version: VERSION,
            agent: "a".into(),
            seq,
            first_seq: None,
            node: "a".into(),
            created_ms: seq as i64,
            gpus: vec![GpuInfo {
                uuid: gpu.into(),
                index: 0,
                model: "m".into(),
            }],
            readings: vec![Reading {
                ts_ms: seq as i64,
                entity: Entity::Gpu(gpu.into()),
                quantity: Quantity::PowerWatts,
                value,
            }],
        };
        Record {
            seq,
            created_ms: seq as i64,
            body: serde_json::to_vec(&b).unwrap().into(),
        }
    }

    #[test]
    fn merge_carries_the_range_and_every_reading() {
        let one = record(5, "GPU-a", 1.0);
        assert_eq!(
            merge(std::slice::from_ref(&one)).unwrap(),
            one.body.to_vec()
        );
        let recs = vec![
            record(5, "GPU-a", 1.0),
            record(6, "GPU-a", 2.0),
            Record {
                seq: 7,
                created_ms: 7,
                body: b"not json".to_vec().into(),
            },
            record(8, "GPU-b", 3.0),
        ];
        let m: Batch = serde_json::from_slice(&merge(&recs).unwrap()).unwrap();
        assert_eq!((m.first_seq, m.seq, m.created_ms), (Some(5), 8, 8));
        let values: Vec<f64> = m.readings.iter().map(|r| r.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0]);
        let uuids: Vec<&str> = m.gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids, vec!["GPU-a", "GPU-b"]);
    }

    #[test]
    fn retry_after_and_jitter() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999"), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }
}
