//! Reads the node's GPUs through NVML (`libnvidia-ml.so.1`, via `nvml-wrapper`).
//!
//! NVML calls block, and on real drivers they sometimes hang. So nothing here
//! runs on the async runtime:
//! - a control thread (`dcwatt-nvml`) initializes NVML (retrying with
//!   backoff while the driver is missing), counts the GPUs and hands out one
//!   collection at a time;
//! - a reader thread (`dcwatt-nvml-gpu`, [`gpu`]) reads the GPUs one after
//!   another. If it is still inside one GPU halfway to the collection's
//!   deadline, that GPU is left to it and a new reader takes the rest, so a
//!   call that hangs on one GPU stalls that GPU only (and a thread, until the
//!   call returns): at the deadline the GPUs that have not answered are
//!   reported down (`dcwatt_gpu_up 0`, still listed) and the others as read.
//!   One reader rather than a thread per GPU: waking 8 threads a tick cost
//!   more CPU than their reads (docs/benchmarks.md);
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
//! - [`raw`]: NVML calls made through the wrapper's library handle (scoped
//!   field values, NVML 13's versioned calls).
//!
//! Superchip modules (Grace-Blackwell: a Grace CPU, its two GPUs and LPDDR)
//! report their power through either GPU; one GPU per module reads it (the
//! lowest index that answered the last tick), and the energy is integrated
//! here ([`ModuleStatus`]).

pub mod detail;
pub mod gpu;
pub mod raw;
pub mod xid;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use dcwatt_wire::{Entity, Quantity, Reading};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{now_ms, Collected, GpuStatus, ModuleStatus, SourceError};
use crate::config::{NvmlLibrary, NvmlSpec};
use crate::names as n;
use detail::{Fam, GpuDetail, Sample};
use gpu::{GpuRead, GpuState};
use xid::{XidCounts, XidThread};

/// The longest wait between two init attempts while NVML is missing.
const MAX_INIT_BACKOFF: Duration = Duration::from_secs(30);

/// The share of the source's timeout the GPUs get to answer; the rest is
/// margin for assembling the result.
const GPU_DEADLINE_SHARE: f64 = 0.75;

/// The longest gap between two module power readings that the energy
/// integration bridges, ms; a longer one (a GPU down, NVML reloaded) adds
/// nothing, rather than inventing the power in between.
const MODULE_MAX_GAP_MS: i64 = 10_000;

/// A module's integrated energy and its last power reading.
#[derive(Debug, Default)]
struct ModuleEnergy {
    last: Option<(i64, f64)>,
    joules: f64,
}

impl ModuleEnergy {
    /// Adds the energy from the last reading to this one (`ts` Unix ms,
    /// `power` W; `None`: no reading this tick): the trapezoid, unless the
    /// gap exceeds [`MODULE_MAX_GAP_MS`] or time did not advance.
    fn add(&mut self, ts: i64, power: Option<f64>) {
        if let (Some((t0, p0)), Some(p1)) = (self.last, power) {
            if ts > t0 && ts - t0 <= MODULE_MAX_GAP_MS {
                self.joules += (p0 + p1) / 2.0 * (ts - t0) as f64 / 1000.0;
            }
        }
        self.last = power.map(|p| (ts, p));
    }
}

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
        control.ship_modules = spec.ship_modules;
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

/// The thread that reads the GPUs (`dcwatt-nvml-gpu`), one after another.
struct Reader {
    jobs: mpsc::Sender<Job>,
}

/// One tick's reads, for a reader.
struct Job {
    nvml: Arc<Nvml>,
    generation: u64,
    driver: Arc<str>,
    tick: u64,
    /// The GPUs to read, in this order, with their state.
    gpus: Vec<(u32, Arc<Mutex<GpuState>>)>,
    replies: Arc<Replies>,
    /// Set when the control thread gave up on this reader: it stops before
    /// its next GPU, and ends.
    abandoned: Arc<AtomicBool>,
    /// The GPU the reader is on.
    current: Arc<AtomicU32>,
}

impl Reader {
    /// Starts a reader thread; `None` (logged) when that fails.
    fn start() -> Option<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("dcwatt-nvml-gpu".to_owned())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job.run();
                    if job.abandoned.load(Ordering::Acquire) {
                        break; // replaced: its work goes to another reader
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Self { jobs: tx }),
            Err(e) => {
                warn!(error = %e, "Cannot start a GPU reader thread; GPUs are not read this tick.");
                None
            }
        }
    }
}

impl Job {
    fn run(&self) {
        for (index, state) in &self.gpus {
            if self.abandoned.load(Ordering::Acquire) {
                return;
            }
            self.current.store(*index, Ordering::Release);
            let mut state = match state.try_lock() {
                Ok(s) => s,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // An abandoned reader is still inside a call on this GPU.
                Err(TryLockError::WouldBlock) => {
                    self.replies.skip(*index, self.tick);
                    continue;
                }
            };
            let read = state.read(&self.nvml, self.generation, &self.driver);
            drop(state);
            self.replies.answer(*index, self.tick, read);
        }
    }
}

/// Where a reader leaves this tick's answers. The control thread is woken
/// once, by the last answer, not once per GPU: each wake-up costs more than a
/// GPU's reads (docs/benchmarks.md).
#[derive(Default)]
struct Replies {
    current: Mutex<Tick>,
    all_in: Condvar,
}

/// The answers of one tick, and the GPUs still expected.
#[derive(Default)]
struct Tick {
    tick: u64,
    expected: BTreeSet<u32>,
    reads: BTreeMap<u32, GpuRead>,
}

impl Replies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tick> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A GPU's answer; one from an earlier tick is stale and dropped.
    fn answer(&self, index: u32, tick: u64, read: GpuRead) {
        let mut t = self.lock();
        if t.tick == tick {
            t.reads.insert(index, read);
            self.done(&mut t, index);
        }
    }

    /// A GPU not read this tick (busy in an abandoned reader).
    fn skip(&self, index: u32, tick: u64) {
        let mut t = self.lock();
        if t.tick == tick {
            self.done(&mut t, index);
        }
    }

    fn done(&self, t: &mut Tick, index: u32) {
        if t.expected.remove(&index) && t.expected.is_empty() {
            self.all_in.notify_one();
        }
    }

    /// Waits until every expected GPU is done or `until`; true when all are.
    fn wait(&self, until: Instant) -> bool {
        let mut t = self.lock();
        while !t.expected.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            t = self
                .all_in
                .wait_timeout(t, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
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
    /// Per GPU index: what is learned about it; locked while it is read.
    states: Vec<Arc<Mutex<GpuState>>>,
    reader: Option<Reader>,
    /// GPUs a reader was left inside at the last takeover, read last until
    /// they answer in time again.
    slow: BTreeSet<u32>,
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
    /// Per module id: energy integrated from its power.
    modules: BTreeMap<String, ModuleEnergy>,
    /// Ship module power and energy (`Entity::Module`) to collectors.
    ship_modules: bool,
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
            states: Vec::new(),
            reader: None,
            slow: BTreeSet::new(),
            last: BTreeMap::new(),
            silent: Vec::new(),
            tick: 0,
            replies: Arc::default(),
            xid: None,
            xid_count: 0,
            xid_counts: XidCounts::default(),
            modules: BTreeMap::new(),
            ship_modules: false,
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
                self.release_gpus(&nvml);
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
        let reads = self.read_gpus(&nvml, count, deadline);
        self.assemble(count, reads)
    }

    /// Frees what the GPUs hold of `nvml` (GPM sample buffers) before it is
    /// shut down. A GPU busy in a (hung) call is left alone.
    fn release_gpus(&self, nvml: &Nvml) {
        for state in &self.states {
            match state.try_lock() {
                Ok(mut s) => s.release(nvml),
                Err(TryLockError::Poisoned(p)) => p.into_inner().release(nvml),
                Err(TryLockError::WouldBlock) => {}
            }
        }
    }

    /// Reads every GPU that is free, on one reader thread, in index order
    /// with the slow GPUs last. If the reader is still inside one GPU halfway
    /// to the deadline, that GPU is left to it (it hangs, or is slow) and a new
    /// reader takes the GPUs not read yet: a GPU that hangs stalls only
    /// itself, and the common tick costs one hand-off instead of one per GPU.
    fn read_gpus(
        &mut self,
        nvml: &Arc<Nvml>,
        count: u32,
        deadline: Instant,
    ) -> BTreeMap<u32, GpuRead> {
        self.tick += 1;
        while self.states.len() < count as usize {
            let i = u32::try_from(self.states.len()).unwrap_or(u32::MAX);
            self.states.push(Arc::new(Mutex::new(GpuState::new(i))));
        }
        // A GPU whose state is locked is inside a call in an abandoned reader.
        let mut order: Vec<u32> = (0..count)
            .filter(|i| {
                !matches!(
                    self.states[*i as usize].try_lock(),
                    Err(TryLockError::WouldBlock)
                )
            })
            .collect();
        order.sort_by_key(|i| (self.slow.contains(i), *i));
        *self.replies.lock() = Tick {
            tick: self.tick,
            expected: order.iter().copied().collect(),
            reads: BTreeMap::new(),
        };
        let now = Instant::now();
        let takeover = now + deadline.saturating_duration_since(now) / 2;
        if let Some((abandoned, current)) = self.send(nvml, order.clone()) {
            if self.replies.wait(takeover) {
                for i in &order {
                    self.slow.remove(i);
                }
            } else {
                let stuck = current.load(Ordering::Acquire);
                abandoned.store(true, Ordering::Release);
                self.reader = None;
                if stuck != u32::MAX {
                    self.slow.insert(stuck); // else it had not started: still in an older job
                }
                let expected = self.replies.lock().expected.clone();
                let rest: Vec<u32> = order
                    .into_iter()
                    .filter(|i| *i != stuck && expected.contains(i))
                    .collect();
                if !rest.is_empty() {
                    self.send(nvml, rest);
                }
                self.replies.wait(deadline);
            }
        }
        std::mem::take(&mut self.replies.lock().reads)
    }

    /// Gives `gpus` to the reader (started if there is none); the job's
    /// "abandoned" flag and current GPU, or `None` when no reader runs.
    fn send(
        &mut self,
        nvml: &Arc<Nvml>,
        gpus: Vec<u32>,
    ) -> Option<(Arc<AtomicBool>, Arc<AtomicU32>)> {
        if self.reader.is_none() {
            self.reader = Reader::start();
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let current = Arc::new(AtomicU32::new(u32::MAX));
        let job = Job {
            nvml: Arc::clone(nvml),
            generation: self.generation,
            driver: Arc::clone(&self.driver),
            tick: self.tick,
            gpus: gpus
                .iter()
                .map(|i| (*i, Arc::clone(&self.states[*i as usize])))
                .collect(),
            replies: Arc::clone(&self.replies),
            abandoned: Arc::clone(&abandoned),
            current: Arc::clone(&current),
        };
        if self.reader.as_ref()?.jobs.send(job).is_err() {
            self.reader = None;
            return None;
        }
        Some((abandoned, current))
    }

    fn assemble(&mut self, count: u32, mut reads: BTreeMap<u32, GpuRead>) -> Collected {
        let xids = self
            .xid_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = Collected::default();
        let mut silent = Vec::new();
        // Module id → its GPUs this tick: (index, up, module power read).
        let mut groups: BTreeMap<String, Vec<(u32, bool, Option<gpu::ModuleRead>)>> =
            BTreeMap::new();
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
                    r.down_reason = Some("no_answer".to_owned());
                    r.module = None;
                    r.readings.clear();
                    r.detail.samples.retain(|s| s.fam.agent_kept());
                    r.detail.samples.push(Sample::labelled(
                        Fam::DownInfo,
                        n::REASON,
                        "no_answer",
                        1.0,
                    ));
                    r
                }
            };
            if self.silent.contains(&index) && !silent.contains(&index) {
                info!(gpu = index, "GPU answers NVML again.");
            }
            let mut read = read;
            if let Some(key) = &read.module_key {
                groups
                    .entry(key.clone())
                    .or_default()
                    .push((index, read.up, read.module.take()));
            }
            let Some(info) = read.info.clone() else {
                continue; // never identified: nothing to name it by
            };
            // The detail goes out with this tick; the last read keeps only
            // what a GPU that stops answering still shows (its identity
            // and the counters the agent keeps), not a copy of every sample.
            let mut detail = std::mem::take(&mut read.detail);
            read.detail = GpuDetail {
                driver_version: detail.driver_version.clone(),
                pci_bus_id: detail.pci_bus_id.clone(),
                samples: detail
                    .samples
                    .iter()
                    .filter(|s| s.fam.agent_kept())
                    .cloned()
                    .collect(),
            };
            if let Some(codes) = xids.get(&info.uuid) {
                // Shipped: every code together, a counter (wire docs).
                out.readings.push(Reading {
                    ts_ms: now_ms(),
                    entity: Entity::Gpu(info.uuid.clone()),
                    quantity: Quantity::XidErrorsTotal,
                    value: codes.values().sum::<u64>() as f64,
                });
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
            if !read.up {
                // Why, as a code (wire `DOWN_REASONS`), before `gpu_up`.
                out.readings.push(Reading {
                    ts_ms: now_ms(),
                    entity: Entity::Gpu(info.uuid.clone()),
                    quantity: Quantity::GpuDownReasonCode,
                    value: f64::from(dcwatt_wire::down_reason_code(
                        read.down_reason.as_deref().unwrap_or_default(),
                    )),
                });
            }
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
        out.modules = self.modules(groups);
        if self.ship_modules {
            let ts = now_ms();
            for m in &out.modules {
                // Each GPU names its module, so the collector can bill the
                // module's energy beyond its GPUs to whoever leases them.
                for g in out
                    .gpus
                    .iter_mut()
                    .filter(|g| m.gpus.contains(&g.info.index))
                {
                    g.info.module = Some(m.id.clone());
                }
                let entity = Entity::Module(m.id.clone());
                if let Some(w) = m.power_w {
                    out.readings.push(Reading {
                        ts_ms: ts,
                        entity: entity.clone(),
                        quantity: Quantity::PowerWatts,
                        value: w,
                    });
                }
                out.readings.push(Reading {
                    ts_ms: ts,
                    entity,
                    quantity: Quantity::IntegratedEnergyJoules,
                    value: m.energy_j,
                });
            }
        }
        out
    }

    /// The modules of this tick: each one's power from the lowest-index GPU
    /// that read it, its energy integrated (trapezoid, never across a gap
    /// over [`MODULE_MAX_GAP_MS`]); then picks each module's reader for the
    /// next tick (the lowest-index GPU that is up; all of them while none is).
    fn modules(
        &mut self,
        groups: BTreeMap<String, Vec<(u32, bool, Option<gpu::ModuleRead>)>>,
    ) -> Vec<ModuleStatus> {
        let mut out = Vec::new();
        let ts = now_ms();
        for (id, members) in groups {
            let read = members
                .iter()
                .find_map(|(_, _, m)| m.as_ref().filter(|m| m.power_w.is_some()));
            let power_w = read.and_then(|m| m.power_w);
            let power_instant_w = read.and_then(|m| m.power_instant_w);
            if power_w.is_none() && !self.modules.contains_key(&id) {
                continue; // the module scope is not supported here
            }
            let e = self.modules.entry(id.clone()).or_default();
            e.add(ts, power_w);
            let reader = members.iter().find(|(_, up, _)| *up).map(|(i, _, _)| *i);
            for (i, _, _) in &members {
                if let Some(state) = self.states.get(*i as usize) {
                    if let Ok(mut s) = state.try_lock() {
                        s.module_reader = reader.is_none_or(|r| r == *i);
                    }
                }
            }
            out.push(ModuleStatus {
                id,
                gpus: members.iter().map(|(i, _, _)| *i).collect(),
                power_w,
                power_instant_w,
                energy_j: e.joules,
            });
        }
        out
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Stop the XID thread before the library handle goes away.
        self.xid = None;
        if let Some(nvml) = self.nvml.take() {
            self.release_gpus(&nvml);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_energy_is_the_trapezoid_and_skips_gaps() {
        let mut e = ModuleEnergy::default();
        e.add(1_000, Some(400.0));
        assert_eq!(e.joules, 0.0);
        e.add(2_000, Some(500.0)); // 1 s at a mean of 450 W
        assert_eq!(e.joules, 450.0);
        e.add(3_000, None); // no reading: nothing counted, and the next starts afresh
        e.add(4_000, Some(500.0));
        assert_eq!(e.joules, 450.0);
        e.add(4_000 + MODULE_MAX_GAP_MS + 1, Some(500.0)); // too long a gap
        assert_eq!(e.joules, 450.0);
        e.add(4_000 + MODULE_MAX_GAP_MS + 501, Some(300.0));
        assert_eq!(e.joules, 450.0 + 200.0);
        e.add(4_000, Some(300.0)); // time went back: nothing
        assert_eq!(e.joules, 650.0);
    }
}
