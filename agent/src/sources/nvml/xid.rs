//! XID errors from NVML's event API, on a dedicated thread (`dcwatt-nvml-xid`):
//! `nvmlEventSetCreate`, `nvmlDeviceRegisterEvents` for every GPU, then
//! `nvmlEventSetWait_v2` in a loop with a short timeout, so the thread notices
//! a stop request within [`WAIT_MS`].
//!
//! Counts are kept per GPU UUID and XID code since the agent started; the
//! collection reads them ([`XidCounts`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};
use tracing::{debug, info, warn};

/// How long one wait for an event lasts, milliseconds: how late the thread
/// notices a stop request (a re-init or a changed GPU count). A thread told to
/// stop counts no event it receives after that, so the thread that replaces
/// it (its event set starts after the stop) never counts one twice. Each
/// timeout wakes the thread, so not shorter than a collection tick.
pub const WAIT_MS: u32 = 1000;

/// How long the caller waits for the thread to register its GPUs.
const READY_WAIT: Duration = Duration::from_secs(2);

/// XID counts: GPU UUID → XID code → count.
pub type XidCounts = Arc<Mutex<BTreeMap<String, BTreeMap<u64, u64>>>>;

/// A running event thread; dropping it asks the thread to stop.
#[derive(Debug)]
pub struct XidThread {
    stop: Arc<AtomicBool>,
    _handle: JoinHandle<()>,
}

impl XidThread {
    /// Starts the thread for the first `count` GPUs and waits (briefly) until
    /// they are registered, so no event after this call is missed. `None`
    /// when the thread cannot be started.
    pub fn start(nvml: Arc<Nvml>, count: u32, counts: XidCounts) -> Option<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("dcwatt-nvml-xid".to_owned())
            .spawn(move || run(&nvml, count, &counts, &thread_stop, &ready_tx));
        match handle {
            Ok(h) => {
                // Registered, or gave up; either way the thread says so (or ends).
                let _ = ready_rx.recv_timeout(READY_WAIT);
                Some(Self { stop, _handle: h })
            }
            Err(e) => {
                warn!(error = %e, "Cannot start the XID event thread; XID errors are not counted.");
                None
            }
        }
    }
}

impl Drop for XidThread {
    /// Asks the thread to stop; it ends within one wait ([`WAIT_MS`]). It is
    /// not joined: a driver call that hangs must not hang the caller too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Registers every GPU that supports XID events; a GPU whose registration
/// fails is left out (a failed registration frees the set: start over).
fn register<'n>(nvml: &'n Nvml, count: u32, counts: &XidCounts) -> Result<EventSet<'n>, NvmlError> {
    let mut skip = Vec::new();
    'again: loop {
        let mut set = nvml.create_event_set()?;
        for index in 0..count {
            if skip.contains(&index) {
                continue;
            }
            let dev = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(_) => {
                    skip.push(index);
                    continue;
                }
            };
            let supported = dev
                .supported_event_types()
                .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
            if !supported {
                debug!(gpu = index, "GPU does not report XID events.");
                skip.push(index);
                continue;
            }
            match dev.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => {
                    set = s;
                    // Counted from now on: a registered GPU has an entry, even
                    // with no XID yet (its shipped count is 0, not absent).
                    if let Ok(uuid) = dev.uuid() {
                        counts
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(uuid)
                            .or_default();
                    }
                }
                Err(e) => {
                    warn!(gpu = index, error = %e.error, "Cannot register for XID events; XIDs of this GPU are not counted.");
                    skip.push(index);
                    continue 'again;
                }
            }
        }
        return Ok(set);
    }
}

fn run(nvml: &Nvml, count: u32, counts: &XidCounts, stop: &AtomicBool, ready: &mpsc::Sender<()>) {
    let set = match register(nvml, count, counts) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "Cannot create an NVML event set; XID errors are not counted.");
            let _ = ready.send(());
            return;
        }
    };
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        match set.wait(WAIT_MS) {
            Ok(_) if stop.load(Ordering::Relaxed) => break,
            Ok(event) => {
                let code = match event.event_data {
                    Some(XidError::Value(v)) => v,
                    // NVML's 999: an XID it could not decode.
                    Some(XidError::Unknown) => 999,
                    None => continue,
                };
                let Ok(uuid) = event.device.uuid() else {
                    debug!(xid = code, "XID event for a GPU without a readable UUID.");
                    continue;
                };
                warn!(uuid = %uuid, xid = code, "GPU reported an XID error.");
                let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
                *map.entry(uuid).or_default().entry(code).or_default() += 1;
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => {
                // A lost GPU or a driver going away: keep listening, slowly.
                debug!(error = %e, "NVML event wait failed.");
                std::thread::sleep(Duration::from_millis(u64::from(WAIT_MS)));
            }
        }
    }
    info!("XID event thread stopped.");
}
