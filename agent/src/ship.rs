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
//! # Pacing
//! With `[[collectors]] ship_interval` above zero, a sender waits that long
//! after the start of an acknowledged request before it reads the spool again,
//! so the batches spooled meanwhile go as one merged request (below): one
//! request and one durable write per agent per interval at the collector,
//! instead of one per tick. Every batch is spooled first: with `[spool]` on
//! disk a crash or stop while waiting loses nothing (the next run sends it);
//! with the in-memory spool a stop loses what waits, as it loses any unsent
//! batch. Failures keep their own backoff; a backlog (a request at half the
//! merge byte limit or at the batch limit) catches up at [`CATCHUP_INTERVAL`],
//! and a refused merged batch is isolated, without pacing.
//!
//! # Catch-up
//! When more than one batch waits, up to [`MAX_MERGE_BATCHES`] consecutive ones
//! (at most [`MAX_MERGE_BYTES`] of JSON) go as one merged batch carrying
//! `first_seq..=seq`, and merged requests are at least [`CATCHUP_INTERVAL`] apart,
//! so a recovering collector is not flattened. A `409` (the range overlaps what
//! the collector applied) moves the cursor to its `last_seq` and re-merges from
//! there. A merged batch the collector refuses with a 400 or another final 4xx
//! is re-sent one batch at a time (see below).
//!
//! # What a collector's answer is trusted for
//! A collector cannot acknowledge what this agent never sent it. Per collector,
//! the sender keeps the highest seq it can have been sent: the highest posted to
//! it by this process, or, for what came before, the highest seq the spool held
//! when it was opened (an earlier run may have sent any of those, and a cursor
//! may lag behind a power cut). A `BatchAck.last_seq` or a 409's `last_seq`
//! above that is a protocol error (`kind="last_seq_beyond_sent"`), as is a 2xx
//! whose body does not decode as a `BatchAck` (not JSON, `accepted` or
//! `duplicate` missing; `last_seq` may be absent, as the wire type allows, and
//! then only the batch sent counts as acknowledged) or a 409 without `last_seq`
//! (`kind="invalid_ack"`): never applied to the cursor, counted
//! (`dcwatt_ship_protocol_errors_total{kind}`, and the request's batches as
//! `result="protocol_error"`), logged at most once a minute, and the request
//! retried after the backoff. A collector that keeps doing so holds its queue
//! (the spool's bound then drops the oldest, counted `dropped`). That includes a
//! collector that applied higher seqs of this agent from elsewhere (a run
//! without a spool, or with a wiped one, whose clock was ahead): the agent does
//! not jump its seqs above such a `last_seq` (the batches sent meanwhile were
//! answered as duplicates without being applied); an operator resolves it.
//!
//! # Failures
//! Network errors, timeouts, 5xx, 408 and 429 are retried after a capped
//! exponential backoff with jitter (half fixed, half random); a `Retry-After` in
//! seconds on 429/503 is honoured instead (up to [`RETRY_AFTER_MAX`]). A 4xx
//! other than 408, 409 and 429 is a refusal, counted per status
//! (`dcwatt_ship_refusals_total{status}`):
//! - 401, 403 (`result="forbidden"`) and 404 (`result="rejected"`): a token,
//!   binding or URL to fix on one side; the batch is held and retried with the
//!   same capped backoff, never given up (dropping would lose data to a typo),
//!   nothing in the body honoured: never a hot loop.
//! - 400 whose error names `ts_ms`, `created_ms` or `version` (`field: why`,
//!   as the collector writes it; `result="rejected"`): clock skew, or a version
//!   the collector does not read yet. Held and retried with backoff: it may
//!   succeed once the clocks or the collector are fixed. Once the collector has
//!   refused batches so for [`Tuning::reject_hold`] ([`REJECT_HOLD`], 6 h) and
//!   acknowledged nothing since, a batch it refuses so is given up (the cursor
//!   moves past it; `result="dropped_rejected"`), and so is every next one it
//!   refuses until it acknowledges one again: a batch that will never be
//!   accepted (older than the collector's `max_reading_age`, a meter's clock
//!   far off) must not hold the queue for good.
//! - Any other 4xx (a batch the collector finds malformed or too large): the
//!   same bytes would be refused again; given up at once (`dropped_rejected`).
//!
//! A merged batch refused with a 400 or another final 4xx is re-sent one batch
//! at a time first, so that only the refused batch is held or given up (one
//! refused with 401, 403 or 404 is held as it is). Each refused or
//! protocol-breaking try counts the batches it carried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dcwatt_wire::binary::Encoding;
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
/// How long a collector may refuse every batch for clock skew or version
/// before the batches it refuses are given up (`dropped_rejected`).
pub const REJECT_HOLD: Duration = Duration::from_secs(6 * 3600);
/// Longest error body kept for a log line.
const MAX_ERROR_TEXT: usize = 512;

/// A sender's timings: [`Tuning::default`] in the agent; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// First retry delay after a failed POST ([`BACKOFF_INITIAL`]).
    pub backoff_initial: Duration,
    /// Longest retry delay ([`BACKOFF_MAX`]).
    pub backoff_max: Duration,
    /// Shortest time between two merged requests ([`CATCHUP_INTERVAL`]).
    pub catchup_interval: Duration,
    /// How long a collector may refuse every batch for clock skew or version
    /// before refused batches are given up ([`REJECT_HOLD`]).
    pub reject_hold: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
            catchup_interval: CATCHUP_INTERVAL,
            reject_hold: REJECT_HOLD,
        }
    }
}

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
#[derive(Debug, Default)]
struct CollectorStats {
    label: String,
    ok: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    forbidden: AtomicU64,
    protocol_error: AtomicU64,
    dropped_rejected: AtomicU64,
    /// Per [`ProtocolError`], in its order.
    protocol_errors: [AtomicU64; ProtocolError::ALL.len()],
    /// Refused requests by HTTP status.
    refusals: Mutex<BTreeMap<u16, u64>>,
}

/// An answer that breaks the protocol: counted, never applied, retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A `BatchAck.last_seq` (2xx) or a 409's `last_seq` above the highest seq
    /// this collector can have been sent (see the module docs).
    LastSeqBeyondSent,
    /// A 2xx whose body does not decode as a `BatchAck`, or a 409 without `last_seq`.
    InvalidAck,
}

impl ProtocolError {
    /// Every kind, in the order of [`CollectorStatus::protocol_errors`].
    pub const ALL: [ProtocolError; 2] =
        [ProtocolError::LastSeqBeyondSent, ProtocolError::InvalidAck];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::LastSeqBeyondSent => "last_seq_beyond_sent",
            ProtocolError::InvalidAck => "invalid_ack",
        }
    }
}

impl CollectorStats {
    /// A protocol error on a request carrying `n` batches.
    fn protocol(&self, kind: ProtocolError, n: u64) {
        self.protocol_error.fetch_add(n, Ordering::Relaxed);
        self.protocol_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal of a request carrying `n` batches.
    fn refused(&self, status: StatusCode, kind: Refusal, n: u64) {
        let counter = match kind {
            Refusal::Forbidden => &self.forbidden,
            Refusal::NotFound | Refusal::Held | Refusal::Final => &self.rejected,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        *refusals.entry(status.as_u16()).or_default() += 1;
    }
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
    /// Batches in requests the collector refused with a 4xx other than 401,
    /// 403, 408, 409, 429 (each try counts).
    pub rejected: u64,
    /// Batches in requests refused with 401 or 403 (each try counts).
    pub forbidden: u64,
    /// Batches in requests answered against the protocol (each try counts).
    pub protocol_error: u64,
    /// Batches given up because the collector refused them for good.
    pub dropped_rejected: u64,
    /// Requests answered against the protocol, per [`ProtocolError::ALL`].
    pub protocol_errors: [u64; ProtocolError::ALL.len()],
    /// Refused requests (4xx but 408, 409, 429) by HTTP status, ascending.
    pub refusals: Vec<(u16, u64)>,
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
                forbidden: c.forbidden.load(Ordering::Relaxed),
                protocol_error: c.protocol_error.load(Ordering::Relaxed),
                dropped_rejected: c.dropped_rejected.load(Ordering::Relaxed),
                protocol_errors: std::array::from_fn(|k| {
                    c.protocol_errors[k].load(Ordering::Relaxed)
                }),
                refusals: c
                    .refusals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(s, n)| (*s, *n))
                    .collect(),
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
        Self::start_with(node, collectors, spool, stop, Tuning::default())
    }

    /// [`Shipper::start`] with the senders' timings given.
    pub fn start_with(
        node: String,
        collectors: Vec<Collector>,
        spool: &SpoolSpec,
        stop: watch::Receiver<bool>,
        tuning: Tuning,
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
        // Every seq up to here may have been sent by an earlier run.
        let sent_before = spool.next_seq().saturating_sub(1);
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            collectors: labels
                .iter()
                .map(|label| CollectorStats {
                    label: label.clone(),
                    ..CollectorStats::default()
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
                tuning,
                ship_interval: c.ship_interval,
                encoding: c.encoding,
                sent_max: sent_before,
                warn_protocol: Warner::default(),
                warn_refused: Warner::default(),
                warn_dropped: Warner::default(),
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
    /// 2xx with a `BatchAck`.
    Accepted { duplicate: bool, last_seq: u64 },
    /// 409 with the collector's `last_seq`.
    Conflict { last_seq: u64 },
    /// 2xx without a `BatchAck`, or 409 without `last_seq`: no answer.
    InvalidAck { status: StatusCode, error: String },
    /// A 4xx other than 408, 409 and 429.
    Refused {
        status: StatusCode,
        error: String,
        kind: Refusal,
    },
    /// Worth retrying: network error, timeout, 5xx, 408, 429.
    Retry {
        error: String,
        after: Option<Duration>,
    },
}

/// What a refusal (4xx) means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 401, 403: a token or binding to fix; held, backoff, never given up.
    Forbidden,
    /// 404: a URL to fix; held, backoff, never given up.
    NotFound,
    /// 400 naming `ts_ms`, `created_ms` or `version`: clock skew or a version
    /// the collector does not read yet; held, backoff, given up after
    /// [`Tuning::reject_hold`].
    Held,
    /// Any other 4xx: the same bytes will be refused again; given up at once.
    Final,
}

/// The classification of a refusal by its status and error text.
fn refusal(status: StatusCode, error: &str) -> Refusal {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Refusal::Forbidden,
        StatusCode::NOT_FOUND => Refusal::NotFound,
        StatusCode::BAD_REQUEST if names_clock_or_version(error) => Refusal::Held,
        // An encoding the collector does not read (`encoding = "binary"`
        // ahead of the collector's upgrade): as a version mismatch.
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Refusal::Held,
        _ => Refusal::Final,
    }
}

/// True when a collector's error names (`field: why`) a timestamp or the
/// version: `readings[3].ts_ms: …`, `created_ms: …`, `version: …`.
fn names_clock_or_version(error: &str) -> bool {
    let Some((field, _)) = error.split_once(':') else {
        return false;
    };
    let last = field.trim().rsplit('.').next().unwrap_or_default();
    let last = last.split('[').next().unwrap_or_default();
    matches!(last, "ts_ms" | "created_ms" | "version")
}

/// At most one warning per [`WARN_EVERY`] per kind of trouble; the rest at debug.
#[derive(Debug, Default)]
struct Warner {
    last: Option<Instant>,
    suppressed: u64,
}

/// The shortest time between two warnings of one kind from one sender.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Warner {
    /// `Some(warnings suppressed since the last one)` when one may be logged now.
    fn ready(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One collector's sender task.
struct Sender {
    index: usize,
    shared: Arc<Shared>,
    client: reqwest::Client,
    endpoint: String,
    label: String,
    token: String,
    tuning: Tuning,
    /// Shortest time between two steady-state requests (`[[collectors]]
    /// ship_interval`; zero: each batch at once).
    ship_interval: Duration,
    /// How the request bodies are encoded (`[[collectors]] encoding`).
    encoding: Encoding,
    /// The highest seq this collector can have been sent: the highest posted
    /// to it by this process, or any seq spooled before it started.
    sent_max: u64,
    warn_protocol: Warner,
    warn_refused: Warner,
    warn_dropped: Warner,
}

impl Sender {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.tuning.backoff_initial;
        let mut failing = false;
        // Send unmerged up to this seq (after a merged batch was refused).
        let mut single_until = 0u64;
        let mut last_merged: Option<Instant> = None;
        // Since when every batch was refused for clock skew or version, with
        // nothing acknowledged since.
        let mut refused_since: Option<Instant> = None;
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
                    .map(|t| self.tuning.catchup_interval.saturating_sub(t.elapsed()))
                    .filter(|w| !w.is_zero())
                {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
                last_merged = Some(Instant::now());
            }
            let body = match merge(&records, self.encoding) {
                Some(b) => b,
                None => {
                    warn!(collector = %self.label, first, last, "Spooled batches do not decode; skipped.");
                    self.ack(last).await;
                    continue;
                }
            };
            // A request at (about) the merge limits is catch-up: more may wait
            // behind it, so it is not paced.
            let catching_up =
                records.len() >= MAX_MERGE_BATCHES || body.len() * 2 >= MAX_MERGE_BYTES;
            // From here on the collector may have seen up to `last`.
            self.sent_max = self.sent_max.max(last);
            let posted = Instant::now();
            let outcome = tokio::select! {
                o = self.post(body) => o,
                _ = stopped(&mut stop) => return,
            };
            let stats = &self.shared.collectors[self.index];
            let sent_max = self.sent_max;
            // What to do after counting: wait (with a `Retry-After`, if any)
            // before the next try, or go on at once.
            let mut wait: Option<Option<Duration>> = None;
            match outcome {
                Outcome::Accepted { last_seq, .. } | Outcome::Conflict { last_seq }
                    if last_seq > sent_max =>
                {
                    stats.protocol(ProtocolError::LastSeqBeyondSent, n);
                    if let Some(suppressed) = self.warn_protocol.ready() {
                        warn!(collector = %self.label, first, last, last_seq, sent_max, suppressed, "Collector acknowledged a sequence number never sent to it; not applied, retrying with backoff.");
                    } else {
                        debug!(collector = %self.label, first, last, last_seq, sent_max, "Collector acknowledged a sequence number never sent to it.");
                    }
                    wait = Some(None);
                }
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
                    refused_since = None;
                    backoff = self.tuning.backoff_initial;
                    // Paced: the batches of the next `ship_interval` go as one
                    // request. Not while catching up or isolating a refused batch.
                    let pace = self.ship_interval.saturating_sub(posted.elapsed());
                    if !pace.is_zero() && !catching_up && last >= single_until {
                        tokio::select! {
                            _ = tokio::time::sleep(pace) => {}
                            _ = stopped(&mut stop) => return,
                        }
                    }
                }
                Outcome::Conflict { last_seq } if last_seq > after => {
                    debug!(collector = %self.label, first, last, last_seq, "Merged batch overlaps what the collector applied; re-merging.");
                    self.ack(last_seq).await;
                }
                Outcome::Conflict { last_seq } => {
                    if let Some(suppressed) = self.warn_protocol.ready() {
                        warn!(collector = %self.label, first, last, last_seq, suppressed, "Collector answered 409 without progress; retrying with backoff.");
                    }
                    wait = Some(None);
                }
                Outcome::InvalidAck { status, error } => {
                    stats.protocol(ProtocolError::InvalidAck, n);
                    if let Some(suppressed) = self.warn_protocol.ready() {
                        warn!(collector = %self.label, first, last, status = %status, error = %error, suppressed, "Collector answer is no acknowledgement; retrying with backoff.");
                    } else {
                        debug!(collector = %self.label, first, last, status = %status, error = %error, "Collector answer is no acknowledgement.");
                    }
                    wait = Some(None);
                }
                Outcome::Refused {
                    status,
                    error,
                    kind,
                } => {
                    stats.refused(status, kind, n);
                    let held = match kind {
                        Refusal::Forbidden | Refusal::NotFound => true,
                        Refusal::Held => {
                            let since = *refused_since.get_or_insert_with(Instant::now);
                            n > 1 || since.elapsed() < self.tuning.reject_hold
                        }
                        Refusal::Final => false,
                    };
                    if n > 1 && matches!(kind, Refusal::Held | Refusal::Final) {
                        // One of them may be the one refused: isolate it.
                        debug!(collector = %self.label, first, last, status = %status, error = %error, "Collector refused a merged batch; re-sending one by one.");
                        single_until = last;
                    } else if held {
                        if let Some(suppressed) = self.warn_refused.ready() {
                            warn!(collector = %self.label, first, last, status = %status, error = %error, suppressed, "Collector refused a batch; held, retrying with backoff.");
                        } else {
                            debug!(collector = %self.label, first, last, status = %status, error = %error, "Collector refused a batch; held.");
                        }
                        wait = Some(None);
                    } else {
                        stats.dropped_rejected.fetch_add(n, Ordering::Relaxed);
                        if let Some(suppressed) = self.warn_dropped.ready() {
                            warn!(collector = %self.label, seq = last, status = %status, error = %error, suppressed, "Collector refused a batch for good; batch given up.");
                        } else {
                            debug!(collector = %self.label, seq = last, status = %status, error = %error, "Collector refused a batch for good; batch given up.");
                        }
                        self.ack(last).await;
                    }
                }
                Outcome::Retry { error, after } => {
                    if failing {
                        debug!(collector = %self.label, error = %error, retry_in = ?backoff, "Batch send failed.");
                    } else {
                        warn!(collector = %self.label, error = %error, "Batch send failed; retrying with backoff.");
                    }
                    failing = true;
                    wait = Some(after);
                }
            }
            if let Some(after) = wait {
                if !self.sleep(&mut backoff, after, &mut stop).await {
                    return;
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
        *backoff = (*backoff * 2).min(self.tuning.backoff_max);
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
            .header(reqwest::header::CONTENT_TYPE, self.encoding.content_type())
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
                Ok(a) => {
                    debug!(collector = %self.label, accepted = a.accepted, duplicate = a.duplicate, last_seq = a.last_seq, "Batch acknowledged.");
                    Outcome::Accepted {
                        duplicate: a.duplicate,
                        last_seq: a.last_seq,
                    }
                }
                Err(e) => Outcome::InvalidAck {
                    status,
                    error: e.to_string(),
                },
            };
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
        if status == StatusCode::CONFLICT {
            return match parsed.as_ref().and_then(|e| e.last_seq) {
                Some(last_seq) => Outcome::Conflict { last_seq },
                None => Outcome::InvalidAck {
                    status,
                    error: "409 without last_seq".into(),
                },
            };
        }
        let error = parsed.map(|e| e.error).unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_TEXT)]).into_owned()
        });
        if status.is_client_error()
            && status != StatusCode::TOO_MANY_REQUESTS
            && status != StatusCode::REQUEST_TIMEOUT
        {
            // Nothing from the body is honoured but the error text for logs.
            return Outcome::Refused {
                status,
                kind: refusal(status, &error),
                error,
            };
        }
        let honoured = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        Outcome::Retry {
            error: format!("post {}: http status {status}: {error}", self.endpoint),
            after: retry_after.filter(|_| honoured),
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

/// The request body for `records` in `encoding`: a single batch as spooled
/// (re-encoded for the binary form), or several merged into one carrying
/// `first_seq..=seq`. `None` when nothing decodes.
fn merge(records: &[Record], encoding: Encoding) -> Option<Vec<u8>> {
    if let ([one], Encoding::Json) = (records, encoding) {
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
    match encoding {
        Encoding::Json => serde_json::to_vec(&m).ok(),
        Encoding::Binary => Some(dcwatt_wire::binary::encode(&m)),
    }
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
                module: None,
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
            merge(std::slice::from_ref(&one), Encoding::Json).unwrap(),
            one.body.to_vec()
        );
        let spooled: Batch = serde_json::from_slice(&one.body).unwrap();
        assert_eq!(
            dcwatt_wire::binary::decode(
                &merge(std::slice::from_ref(&one), Encoding::Binary).unwrap()
            )
            .unwrap(),
            spooled
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
        let m: Batch = serde_json::from_slice(&merge(&recs, Encoding::Json).unwrap()).unwrap();
        let b = dcwatt_wire::binary::decode(&merge(&recs, Encoding::Binary).unwrap()).unwrap();
        assert_eq!(b, m);
        assert_eq!((m.first_seq, m.seq, m.created_ms), (Some(5), 8, 8));
        let values: Vec<f64> = m.readings.iter().map(|r| r.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0]);
        let uuids: Vec<&str> = m.gpus.iter().map(|g| g.uuid.as_str()).collect();
        assert_eq!(uuids, vec!["GPU-a", "GPU-b"]);
    }

    #[test]
    fn refusals_are_classified_by_status_and_field() {
        let skew = "readings[12].ts_ms: 1 is outside the accepted range [2, 3]";
        assert_eq!(refusal(StatusCode::BAD_REQUEST, skew), Refusal::Held);
        for held in [
            "created_ms: in the future",
            "version: unsupported version 9",
        ] {
            assert_eq!(refusal(StatusCode::BAD_REQUEST, held), Refusal::Held);
        }
        for final_ in [
            "readings[0].value: -1 is out of range",
            "node: must be 1 to 128 characters",
            "malformed batch: expected value at line 1 column 1",
            "the ts_ms field is fine: readings",
            "",
        ] {
            assert_eq!(refusal(StatusCode::BAD_REQUEST, final_), Refusal::Final);
        }
        assert_eq!(refusal(StatusCode::PAYLOAD_TOO_LARGE, skew), Refusal::Final);
        assert_eq!(
            refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-type must be"),
            Refusal::Held
        );
        assert_eq!(refusal(StatusCode::FORBIDDEN, skew), Refusal::Forbidden);
        assert_eq!(refusal(StatusCode::UNAUTHORIZED, ""), Refusal::Forbidden);
        assert_eq!(refusal(StatusCode::NOT_FOUND, ""), Refusal::NotFound);
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
