//! Reads the node's GPUs through NVML (`libnvidia-ml.so.1`, via `nvml-wrapper`).
//!
//! NVML calls block, and on real drivers they sometimes hang. So nothing here
//! runs on the async runtime:
//! - a control thread (`dcwatt-nvml`) initializes NVML (retrying with
//!   backoff while the driver is missing), counts the GPUs and hands out one
//!   collection at a time;
//! - each GPU has its own thread (`dcwatt-nvml-gpu`, [`gpu`]), so a call that
//!   hangs on one GPU stalls that GPU only: at the collection's deadline the
//!   GPUs that have not answered are reported down (`dcwatt_gpu_up 0`, still
//!   listed) and the others are reported as read;
//! - XID errors arrive through NVML's event API on their own thread ([`xid`]).
//!
//! Failures are data: "not supported" leaves that series out (learned once,
//! logged once); a lost GPU is reported down while the others keep going; an
//! init failure fails the source (`dcwatt_source_up{source="nvml"} 0`) while
//! the other sources keep running.
//!
//! # Layout
//! - [`NvmlSource`]: the async face the scheduler calls.
//! - [`gpu`]: one GPU's reads and what is learned about it.
//! - [`detail`]: the agent-only per-GPU values and their metric families.
//! - [`xid`]: the XID event thread.

pub mod detail;
pub mod gpu;
pub mod xid;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dcwatt_wire::{Entity, Quantity, Reading};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{now_ms, Collected, GpuStatus, SourceError};
use crate::config::{NvmlLibrary, NvmlSpec};
use crate::names as n;
use detail::{Fam, Sample};
use gpu::{GpuRead, GpuState};
use xid::{XidCounts, XidThread};

/// The longest wait between two init attempts while NVML is missing.
const MAX_INIT_BACKOFF: Duration = Duration::from_secs(30);

/// The share of the source's timeout the GPUs get to answer; the rest is
/// margin for assembling the result.
const GPU_DEADLINE_SHARE: f64 = 0.75;

/// One collection request to the control thread.
struct Request {
    deadline: Instant,
    reply: oneshot::Sender<Collected>,
}

/// The NVML source: a handle on its control thread.
#[derive(Debug)]
pub struct NvmlSource {
    requests: mpsc::SyncSender<Request>,
    timeout: Duration,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl NvmlSource {
    /// Starts the control thread. NVML itself is initialized on the first
    /// collection; `timeout` bounds one collection (and is the first init
    /// retry delay).
    pub fn start(spec: NvmlSpec, timeout: Duration) -> Result<Self, SourceError> {
        // One request in flight at most: a hung driver must not pile up requests.
        let (tx, rx) = mpsc::sync_channel::<Request>(1);
        let mut control = Control::new(spec.library, timeout);
        std::thread::Builder::new()
            .name("dcwatt-nvml".to_owned())
            .spawn(move || {
                // Ends when the source (the sender) is dropped; dropping the
                // control stops the XID thread and lets the GPU threads end.
                while let Ok(req) = rx.recv() {
                    let c = control.collect(req.deadline);
                    let _ = req.reply.send(c);
                }
            })
            .map_err(SourceError::NvmlThread)?;
        Ok(Self {
            requests: tx,
            timeout,
        })
    }

    /// How long one collection may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks the control thread for one collection of every GPU.
    pub async fn collect(&self) -> Collected {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.timeout.mul_f64(GPU_DEADLINE_SHARE);
        match self.requests.try_send(Request {
            deadline,
            reply: tx,
        }) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                return Collected::failed("nvml: the previous collection is still running")
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Collected::failed("nvml: the control thread is gone")
            }
        }
        rx.await
            .unwrap_or_else(|_| Collected::failed("nvml: the control thread is gone"))
    }
}

/// A GPU's thread: where to send it work, and whether it is still busy.
struct GpuThread {
    jobs: mpsc::Sender<Job>,
    busy: Arc<AtomicBool>,
}

/// One read request to a GPU thread.
struct Job {
    nvml: Arc<Nvml>,
    generation: u64,
    driver: Arc<str>,
    tick: u64,
    replies: Arc<Replies>,
}

/// Where the GPU threads leave this tick's answers. The control thread is
/// woken once, by the last answer, not once per GPU: each wake-up costs more
/// than a GPU's reads (docs/benchmarks.md).
#[derive(Default)]
struct Replies {
    tick: Mutex<Tick>,
    all_in: Condvar,
}

/// The answers of one tick, and how many are still out.
#[derive(Default)]
struct Tick {
    tick: u64,
    waiting: usize,
    reads: BTreeMap<u32, GpuRead>,
}

impl Replies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tick> {
        self.tick.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A GPU thread's answer; one from an earlier tick is stale and dropped.
    fn answer(&self, index: u32, tick: u64, read: GpuRead) {
        let mut t = self.lock();
        if t.tick != tick {
            return;
        }
        t.reads.insert(index, read);
        t.waiting = t.waiting.saturating_sub(1);
        if t.waiting == 0 {
            self.all_in.notify_one();
        }
    }
}

/// State owned by the control thread.
struct Control {
    library: NvmlLibrary,
    nvml: Option<Arc<Nvml>>,
    driver: Arc<str>,
    /// Incremented at each successful init.
    generation: u64,
    /// Init failures in a row, and when the next attempt is due.
    failures: u32,
    next_init: Option<Instant>,
    first_backoff: Duration,
    last_init_error: String,
    gpus: Vec<GpuThread>,
    /// What each GPU said last (identity and agent-kept counters), for GPUs
    /// that do not answer in time.
    last: BTreeMap<u32, GpuRead>,
    /// Indexes not answering in time at the last collection (logged once).
    silent: Vec<u32>,
    tick: u64,
    replies: Arc<Replies>,
    xid: Option<XidThread>,
    xid_count: u32,
    xid_counts: XidCounts,
}

impl Control {
    fn new(library: NvmlLibrary, first_backoff: Duration) -> Self {
        Self {
            library,
            nvml: None,
            driver: Arc::from(""),
            generation: 0,
            failures: 0,
            next_init: None,
            first_backoff,
            last_init_error: String::new(),
            gpus: Vec::new(),
            last: BTreeMap::new(),
            silent: Vec::new(),
            tick: 0,
            replies: Arc::default(),
            xid: None,
            xid_count: 0,
            xid_counts: XidCounts::default(),
        }
    }

    /// Initializes NVML unless it is, or an attempt is not yet due.
    fn ensure_init(&mut self) -> Result<Arc<Nvml>, String> {
        if let Some(nvml) = &self.nvml {
            return Ok(Arc::clone(nvml));
        }
        if let Some(due) = self.next_init {
            let now = Instant::now();
            if now < due {
                return Err(format!(
                    "nvml init ({}): {}; next attempt in {} ms",
                    library_name(&self.library),
                    self.last_init_error,
                    due.duration_since(now).as_millis()
                ));
            }
        }
        match init(&self.library) {
            Ok(nvml) => {
                let nvml = Arc::new(nvml);
                self.driver = Arc::from(nvml.sys_driver_version().unwrap_or_default());
                info!(library = %library_name(&self.library), driver = %self.driver, "NVML initialized.");
                self.failures = 0;
                self.next_init = None;
                self.generation += 1;
                // A new library instance: the old event set belongs to the old one.
                self.xid = None;
                self.xid_count = 0;
                self.nvml = Some(Arc::clone(&nvml));
                Ok(nvml)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .first_backoff
                    .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
                    .min(MAX_INIT_BACKOFF);
                self.next_init = Some(Instant::now() + backoff);
                self.last_init_error = e.to_string();
                Err(format!(
                    "nvml init ({}): {e}; next attempt in {} ms",
                    library_name(&self.library),
                    backoff.as_millis()
                ))
            }
        }
    }

    fn collect(&mut self, deadline: Instant) -> Collected {
        let nvml = match self.ensure_init() {
            Ok(n) => n,
            Err(e) => return Collected::failed(e),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                // Re-initialize on the next tick: the driver may have been reloaded.
                self.nvml = None;
                self.xid = None;
                return Collected::failed(format!("nvml device count: {e}"));
            }
        };
        if count != self.xid_count || self.xid.is_none() {
            // New GPUs (or a new init): register them all for XID events.
            self.xid = None;
            self.xid = XidThread::start(Arc::clone(&nvml), count, Arc::clone(&self.xid_counts));
            self.xid_count = count;
        }
        self.dispatch(&nvml, count);
        let reads = self.gather(deadline);
        self.assemble(count, reads)
    }

    /// Sends a read to every GPU thread that is free.
    fn dispatch(&mut self, nvml: &Arc<Nvml>, count: u32) {
        self.tick += 1;
        let replies = Arc::clone(&self.replies);
        *replies.lock() = Tick {
            tick: self.tick,
            ..Tick::default()
        };
        for index in 0..count {
            let job = Job {
                nvml: Arc::clone(nvml),
                generation: self.generation,
                driver: Arc::clone(&self.driver),
                tick: self.tick,
                replies: Arc::clone(&replies),
            };
            let Some(thread) = self.gpu_thread(index) else {
                continue;
            };
            if thread.busy.swap(true, Ordering::AcqRel) {
                continue; // still inside a call from an earlier tick
            }
            // Counted before it is sent, so the answer always finds it.
            replies.lock().waiting += 1;
            if thread.jobs.send(job).is_err() {
                thread.busy.store(false, Ordering::Release);
                replies.lock().waiting -= 1;
            }
        }
    }

    /// The thread of GPU `index`, started on first use.
    fn gpu_thread(&mut self, index: u32) -> Option<&GpuThread> {
        while self.gpus.len() <= index as usize {
            let i = u32::try_from(self.gpus.len()).unwrap_or(u32::MAX);
            let (tx, rx) = mpsc::channel::<Job>();
            let busy = Arc::new(AtomicBool::new(false));
            let thread_busy = Arc::clone(&busy);
            let spawned = std::thread::Builder::new()
                .name("dcwatt-nvml-gpu".to_owned())
                .spawn(move || {
                    let mut state = GpuState::new(i);
                    while let Ok(job) = rx.recv() {
                        let read = state.read(&job.nvml, job.generation, &job.driver);
                        drop(job.nvml);
                        thread_busy.store(false, Ordering::Release);
                        job.replies.answer(i, job.tick, read);
                    }
                });
            if let Err(e) = spawned {
                warn!(gpu = i, error = %e, "Cannot start a GPU thread; the GPU is not read.");
                return None;
            }
            self.gpus.push(GpuThread { jobs: tx, busy });
        }
        self.gpus.get(index as usize)
    }

    /// This tick's answers, once all came or the deadline passed. A GPU
    /// whose thread was still busy got no job and is not waited for.
    fn gather(&mut self, deadline: Instant) -> BTreeMap<u32, GpuRead> {
        let mut t = self.replies.lock();
        while t.waiting > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            t = self
                .replies
                .all_in
                .wait_timeout(t, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::take(&mut t.reads)
    }

    fn assemble(&mut self, count: u32, mut reads: BTreeMap<u32, GpuRead>) -> Collected {
        let xids = self
            .xid_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = Collected::default();
        let mut silent = Vec::new();
        for index in 0..count {
            let read = match reads.remove(&index) {
                Some(r) => r,
                None => {
                    silent.push(index);
                    if !self.silent.contains(&index) {
                        warn!(
                            gpu = index,
                            "GPU did not answer NVML in time; marking it down."
                        );
                    }
                    // Not answering: down, listed under its last identity,
                    // with the counters the agent keeps.
                    let mut r = self.last.get(&index).cloned().unwrap_or_default();
                    r.up = false;
                    r.readings.clear();
                    r.detail.samples.retain(|s| s.fam.agent_kept());
                    r
                }
            };
            if self.silent.contains(&index) && !silent.contains(&index) {
                info!(gpu = index, "GPU answers NVML again.");
            }
            let mut read = read;
            let Some(info) = read.info.clone() else {
                continue; // never identified: nothing to name it by
            };
            let mut detail = read.detail.clone();
            if let Some(codes) = xids.get(&info.uuid) {
                for (code, c) in codes {
                    detail.samples.push(Sample::labelled(
                        Fam::XidErrors,
                        n::XID,
                        code.to_string(),
                        *c as f64,
                    ));
                }
            }
            out.readings.append(&mut read.readings);
            out.readings.push(Reading {
                ts_ms: now_ms(),
                entity: Entity::Gpu(info.uuid.clone()),
                quantity: Quantity::GpuUp,
                value: if read.up { 1.0 } else { 0.0 },
            });
            out.gpus.push(GpuStatus {
                info,
                up: read.up,
                detail,
            });
            self.last.insert(index, read);
        }
        self.silent = silent;
        out
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Stop the XID thread before the library handle goes away.
        self.xid = None;
    }
}

fn init(library: &NvmlLibrary) -> Result<Nvml, NvmlError> {
    match library {
        NvmlLibrary::System => Nvml::init(),
        NvmlLibrary::Path(p) => Nvml::builder().lib_path(p.as_os_str()).init(),
    }
}

fn library_name(library: &NvmlLibrary) -> String {
    match library {
        NvmlLibrary::System => "system libnvidia-ml".to_owned(),
        NvmlLibrary::Path(p) => p.display().to_string(),
    }
}
