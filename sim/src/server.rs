//! The simulator's process side: [`Sim`] / [`serve`] run the hall on wall-clock ticks,
//! writes every node's fake NVML state file into the state directory each
//! tick, and serves the Redfish meters plus the `/sim/*` routes (site, truth,
//! power, fault injection) over HTTP. Reads nothing but requests.
//!
//! # Ticks and the fake NVML counters
//! The fake library extrapolates a file's counter with the file's power until
//! the next file replaces it. For that to be exact and never run backwards,
//! each tick is published a little *ahead* of the instant it starts: the loop
//! wakes `lead` ms before the boundary, advances the hall to the boundary and
//! writes the files, which the library holds flat until their `time_ms`.
//! `lead` adapts to how long the writes take (5..=50 ms). A late wake-up moves
//! the boundary instead (ticks are then longer than [`TICK_MS`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dcwatt_fake_nvml::{write_state_with_horizon, FakeGpu, DEFAULT_DRIVER};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::hall::{Entity, Hall, HallError, MeterRole, TICK_MS, WATER_METER, ZONE};
use crate::{now_ms, redfish, SimConfig};

/// Shortest and longest publication lead, ms.
const MIN_LEAD_MS: i64 = 5;
const MAX_LEAD_MS: i64 = 50;
/// How long a GPU counter reset may wait for its tick.
const FAULT_WAIT: Duration = Duration::from_secs(5);

/// Why the simulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configured hall cannot be built.
    #[error(transparent)]
    Hall(#[from] HallError),
    /// The state directory cannot be created.
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A fake NVML state file cannot be written at start-up.
    #[error("cannot write fake nvml state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener has no local address.
    #[error("listener has no local address: {0}")]
    Listener(std::io::Error),
    /// The HTTP server failed.
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler and the tick loop share.
pub(crate) struct Shared {
    hall: Mutex<Hall>,
    /// `http://ADDR`, the base of the meter URLs in `/sim/site`.
    base_url: String,
    /// Per node (in `Hall::nodes` order), its fake NVML state file.
    state_files: Vec<PathBuf>,
    /// Counts ticks taken; fault handlers wait on it.
    ticks: watch::Sender<u64>,
    /// The zone `/sim/site` gives every meter.
    zone: String,
}

impl Shared {
    /// The hall; a panic elsewhere while holding it does not stop the simulation.
    pub(crate) fn hall(&self) -> MutexGuard<'_, Hall> {
        self.hall.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A simulated hall ready to serve: built, its state directory created and
/// every node's fake NVML state file written, so an agent can start on it
/// before [`Sim::serve`] is called.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    hall: Hall,
    state_files: Vec<PathBuf>,
    zone: String,
}

impl Sim {
    /// Builds the hall starting now and writes the first state files
    /// (`{node}.nvml` in `config.state_dir`, created if missing).
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| SimError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let hall = Hall::new(&config, now_ms())?;
        // Absolute, so that agents started from anywhere find the files.
        let dir =
            std::fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
        let state_files: Vec<PathBuf> = hall
            .nodes()
            .map(|n| dir.join(format!("{}.nvml", n.name)))
            .collect();
        let (time_ms, nodes) = snapshot(&hall, state_files.len());
        if let Err((path, source)) = write_snapshot(&state_files, time_ms, nodes) {
            return Err(SimError::StateFile { path, source });
        }
        Ok(Self {
            config,
            hall,
            state_files,
            zone: ZONE.to_owned(),
        })
    }

    /// The zone `/sim/site` gives every meter (default `hall-1`): a second
    /// simulated hall of a campus is another zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// The nodes' fake NVML state files, in [`Hall::nodes`] order.
    pub fn state_files(&self) -> &[PathBuf] {
        &self.state_files
    }

    /// The hall as built (its first tick).
    pub fn hall(&self) -> &Hall {
        &self.hall
    }

    /// Runs until `shutdown` completes: ticks every [`TICK_MS`], rewrites the
    /// state files each tick, and serves the HTTP routes of
    /// `docs/interfaces.md` on `listener`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SimError> {
        let addr = listener.local_addr().map_err(SimError::Listener)?;
        let config = self.config;
        let shared = Arc::new(Shared {
            hall: Mutex::new(self.hall),
            base_url: format!("http://{}", reachable(addr)),
            state_files: self.state_files,
            ticks: watch::Sender::new(0),
            zone: self.zone,
        });
        info!(
            racks = config.racks,
            nodes_per_rack = config.nodes_per_rack,
            gpus_per_node = config.gpus_per_node,
            seed = config.seed,
            state_dir = %config.state_dir.display(),
            "Simulated hall started."
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let ticker = tokio::spawn(tick_loop(Arc::clone(&shared), stop_rx));
        let app = router(shared);
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
            .await;
        if let Err(e) = ticker.await {
            warn!(error = %e, "Tick loop ended abnormally.");
        }
        info!("Simulated hall stopped.");
        result.map_err(SimError::Serve)
    }
}

/// [`Sim::new`] then [`Sim::serve`]: the state files exist once the hall is
/// built, shortly after this is first polled.
pub async fn serve(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    Sim::new(config)?.serve(listener, shutdown).await
}

/// An address clients can dial: the unspecified address becomes loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(redfish::routes())
        .route("/sim/site", get(site))
        .route("/sim/truth", get(truth))
        .route("/sim/power", get(power))
        .route("/sim/water/{id}", get(water))
        .route("/sim/fault", post(fault))
        .with_state(shared)
}

/// Ticks until `stop` turns true.
async fn tick_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut lead_ms = MIN_LEAD_MS;
    let mut failing = false;
    loop {
        let boundary = shared.hall().tick_start_ms() + TICK_MS;
        let wait_ms = (boundary - lead_ms - now_ms()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let tick_shared = Arc::clone(&shared);
        let taken = tokio::task::spawn_blocking(move || {
            let (time_ms, nodes) = {
                let mut hall = tick_shared.hall();
                hall.advance_to(boundary.max(now_ms() + lead_ms));
                snapshot(&hall, tick_shared.state_files.len())
            };
            let started = Instant::now();
            let result = write_snapshot(&tick_shared.state_files, time_ms, nodes);
            (started.elapsed(), result)
        })
        .await;
        match taken {
            Ok((took, result)) => {
                // Twice the write time plus slack, so files land before their instant.
                lead_ms = (2 * took.as_millis() as i64 + 2).clamp(MIN_LEAD_MS, MAX_LEAD_MS);
                match result {
                    Err((path, e)) if !failing => {
                        failing = true;
                        warn!(path = %path.display(), error = %e, "Fake NVML state write failed.");
                    }
                    Ok(()) if failing => {
                        failing = false;
                        info!("Fake NVML state writes recovered.");
                    }
                    _ => {}
                }
            }
            Err(e) => warn!(error = %e, "Tick task failed."),
        }
        shared.ticks.send_modify(|n| *n += 1);
    }
}

/// Every node's fake NVML GPUs at the hall's current tick, and its start.
fn snapshot(hall: &Hall, nodes: usize) -> (i64, Vec<Vec<FakeGpu>>) {
    (
        hall.tick_start_ms(),
        (0..nodes).map(|n| hall.fake_nvml_gpus(n)).collect(),
    )
}

/// Writes one state file per node; reports the first failure.
fn write_snapshot(
    files: &[PathBuf],
    time_ms: i64,
    nodes: Vec<Vec<FakeGpu>>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let mut first_error = None;
    for (path, gpus) in files.iter().zip(nodes) {
        // The library extrapolates at most one tick: if this loop falls behind
        // (a loaded machine), the counters hold instead of stepping back.
        if let Err(e) = write_state_with_horizon(
            path,
            DEFAULT_DRIVER,
            time_ms,
            Some(crate::hall::TICK_MS),
            &gpus,
        ) {
            first_error.get_or_insert((path.clone(), e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `{"error": "…"}` with a status.
pub(crate) fn error_response(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

fn hall_status(e: &HallError) -> StatusCode {
    match e {
        HallError::UnknownMeter(_) | HallError::UnknownGpu(_) => StatusCode::NOT_FOUND,
        HallError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn hall_error(e: &HallError) -> Response {
    error_response(hall_status(e), &e.to_string())
}

#[derive(Serialize)]
struct SiteNode {
    name: String,
    rack: u32,
    state_file: String,
    gpus: Vec<String>,
}

#[derive(Serialize)]
struct SiteMeter {
    id: String,
    role: MeterRole,
    zone: String,
    url: String,
    it_point: Option<&'static str>,
}

/// A water meter: JSON at `url` (`/sim/water/{id}`), for an `http_json` source.
#[derive(Serialize)]
struct SiteWaterMeter {
    id: &'static str,
    zone: String,
    url: String,
}

#[derive(Serialize)]
struct Site {
    nodes: Vec<SiteNode>,
    meters: Vec<SiteMeter>,
    water_meters: Vec<SiteWaterMeter>,
}

/// `GET /sim/site`: nodes, their state files and GPUs; meters and their URLs.
async fn site(State(shared): State<Arc<Shared>>) -> Json<Site> {
    let hall = shared.hall();
    let nodes = hall
        .nodes()
        .zip(&shared.state_files)
        .map(|(n, path)| SiteNode {
            name: n.name.clone(),
            rack: n.rack,
            state_file: path.display().to_string(),
            gpus: n.gpus.clone(),
        })
        .collect();
    let meters = hall
        .meters()
        .iter()
        .map(|m| SiteMeter {
            id: m.id.clone(),
            role: m.role,
            zone: shared.zone.clone(),
            url: format!("{}{}", shared.base_url, redfish::metrics_path(m)),
            it_point: (m.role == MeterRole::It).then_some("pdu_output"),
        })
        .collect();
    let water_meters = vec![SiteWaterMeter {
        id: WATER_METER,
        zone: shared.zone.clone(),
        url: format!("{}/sim/water/{WATER_METER}", shared.base_url),
    }];
    Json(Site {
        nodes,
        meters,
        water_meters,
    })
}

/// `GET /sim/water/{id}`: the water meter as a BMS gateway would answer —
/// `{"id", "total_litres", "flow_litres_per_minute", "ts_ms"}`, exact at `ts_ms`.
async fn water(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if id != WATER_METER {
        return error_response(StatusCode::NOT_FOUND, &format!("no water meter {id:?}"));
    }
    let now = now_ms();
    match shared.hall().water_reading(now) {
        Ok(r) => Json(json!({
            "id": id,
            "total_litres": r.volume_cubic_meters * 1000.0,
            "flow_litres_per_minute": r.flow_cubic_meters_per_second * 60_000.0,
            "ts_ms": now,
        }))
        .into_response(),
        Err(e) => hall_error(&e),
    }
}

#[derive(Deserialize)]
struct TruthQuery {
    entity: String,
    from_ms: i64,
    to_ms: i64,
}

/// `GET /sim/truth?entity=meter:ID|gpu:UUID&from_ms=…&to_ms=…` → `{"joules": f64}`;
/// `entity=water:ID` → `{"cubic_meters": f64}`.
async fn truth(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<TruthQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.body_text().to_lowercase()),
    };
    let entity: Entity = match q.entity.parse() {
        Ok(e) => e,
        Err(e) => return hall_error(&e),
    };
    let now = now_ms();
    if q.to_ms > now {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("to_ms {} is after the current instant {now}", q.to_ms),
        );
    }
    let key = match entity {
        Entity::Water(_) => "cubic_meters",
        Entity::Meter(_) | Entity::Gpu(_) => "joules",
    };
    match shared.hall().truth(&entity, q.from_ms, q.to_ms) {
        Ok(v) => Json(json!({ key: v })).into_response(),
        Err(e) => hall_error(&e),
    }
}

/// `GET /sim/power`: powers at this instant.
async fn power(State(shared): State<Arc<Shared>>) -> Response {
    match shared.hall().power(now_ms()) {
        Ok(p) => Json(p).into_response(),
        Err(e) => hall_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Fault {
    ResetMeterCounter { meter: String },
    ResetGpuCounter { gpu: String },
    HeatGpu { gpu: String, celsius: f64 },
    Xid { gpu: String, code: u64 },
    LoseGpu { gpu: String, lost: bool },
}

/// `POST /sim/fault`: restarts a counter from zero → `{"at_ms": T}`.
async fn fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("invalid fault: {e}")),
    };
    match fault {
        Fault::ResetMeterCounter { meter } => {
            match shared.hall().reset_meter_counter(&meter, now_ms()) {
                Ok(at_ms) => {
                    info!(meter = %meter, at_ms, "Meter counter reset.");
                    Json(json!({ "at_ms": at_ms })).into_response()
                }
                Err(e) => hall_error(&e),
            }
        }
        Fault::HeatGpu { gpu, celsius } => match shared.hall().heat_gpu(&gpu, celsius) {
            Ok(()) => {
                info!(gpu = %gpu, celsius, "GPU heated.");
                Json(json!({ "at_ms": now_ms() })).into_response()
            }
            Err(e) => hall_error(&e),
        },
        Fault::LoseGpu { gpu, lost } => match shared.hall().lose_gpu(&gpu, lost) {
            Ok(()) => {
                info!(gpu = %gpu, lost, "GPU lost or found.");
                Json(json!({ "at_ms": now_ms() })).into_response()
            }
            Err(e) => hall_error(&e),
        },
        Fault::Xid { gpu, code } => match shared.hall().xid_gpu(&gpu, code) {
            Ok(id) => {
                info!(gpu = %gpu, code, id, "XID raised.");
                Json(json!({ "at_ms": now_ms(), "id": id })).into_response()
            }
            Err(e) => hall_error(&e),
        },
        Fault::ResetGpuCounter { gpu } => match reset_gpu(&shared, &gpu).await {
            Ok(at_ms) => {
                info!(gpu = %gpu, at_ms, "GPU counter reset.");
                Json(json!({ "at_ms": at_ms })).into_response()
            }
            Err((status, error)) => error_response(status, &error),
        },
    }
}

/// Requests a GPU counter reset and waits for the tick that applies it.
async fn reset_gpu(shared: &Shared, gpu: &str) -> Result<i64, (StatusCode, String)> {
    let mut ticks = shared.ticks.subscribe();
    shared
        .hall()
        .request_gpu_reset(gpu)
        .map_err(|e| (hall_status(&e), e.to_string()))?;
    let wait = async {
        loop {
            if ticks.changed().await.is_err() {
                return None;
            }
            let hall = shared.hall();
            if !hall.gpu_reset_pending(gpu).ok()? {
                return hall.gpu_reset_ms(gpu).ok().flatten();
            }
        }
    };
    match tokio::time::timeout(FAULT_WAIT, wait).await {
        Ok(Some(at_ms)) => Ok(at_ms),
        _ => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the simulator took no tick to apply the reset".into(),
        )),
    }
}
