//! The agent's cached state and its HTTP face: `GET /metrics` renders the latest
//! collected values (a scrape never triggers a collection), `GET /healthz`
//! answers `ok`.
//!
//! The scheduler writes the state after each tick ([`Snapshot::apply`]); the
//! spool and the senders keep their own counters ([`ship::Shared`]), read at
//! render time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dcwatt_expo::{encode, Family};
use dcwatt_wire::{Entity, GpuInfo, Quantity};

use crate::names as n;
use crate::ship::{self, Status};
use crate::sources::nvml::detail::{Fam, GpuDetail};
use crate::sources::Collected;
use crate::sources::ModuleStatus;

/// Everything `/metrics` shows, shared between the scheduler, shippers and HTTP.
#[derive(Debug)]
pub struct State {
    node: String,
    snapshot: Mutex<Snapshot>,
    ship: Option<Arc<ship::Shared>>,
}

/// The latest collected values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// GPUs by UUID.
    pub gpus: BTreeMap<String, GpuEntry>,
    /// Meters by id.
    pub meters: BTreeMap<String, MeterEntry>,
    /// Sources by `source` label.
    pub sources: BTreeMap<String, SourceEntry>,
    /// Superchip modules by id (NVML).
    pub modules: BTreeMap<String, ModuleStatus>,
}

/// One GPU's latest state.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuEntry {
    /// Index, UUID, model.
    pub info: GpuInfo,
    /// Whether it answered the last collection.
    pub up: bool,
    /// Latest value per quantity (SI units); empty while down.
    pub values: BTreeMap<Quantity, f64>,
    /// Agent-only values (NVML source); only agent-kept counters while down.
    pub detail: GpuDetail,
}

/// One meter's latest state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeterEntry {
    /// Whether it answered the last collection with valid data.
    pub up: bool,
    /// Latest value per quantity (SI units); only those it reported.
    pub values: BTreeMap<Quantity, f64>,
    /// Failed reads since start, by error kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Energy-counter resets seen since start.
    pub resets_total: u64,
    /// Timestamp of the latest good reading, Unix ms.
    pub last_reading_ms: Option<i64>,
}

/// One source's health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceEntry {
    /// Whether the last collection succeeded.
    pub up: bool,
    /// Failed collections since start.
    pub errors_total: u64,
    /// Duration of the last collection, seconds.
    pub duration_seconds: f64,
}

impl Snapshot {
    /// Records one source's collection. `meter` is the meter it reads, if any.
    /// The GPUs' details are moved out of `c` (the rest of it is left).
    pub fn apply(&mut self, label: &str, meter: Option<&str>, c: &mut Collected, took: Duration) {
        let ok = c.error.is_none();
        let src = self.sources.entry(label.to_owned()).or_default();
        src.up = ok;
        src.duration_seconds = took.as_secs_f64();
        if !ok {
            src.errors_total += 1;
        }

        if let Some(meter) = meter {
            let entry = self.meters.entry(meter.to_owned()).or_default();
            entry.up = ok;
            entry.values = values_of(c, |e| matches!(e, Entity::Meter(m) if m == meter));
        } else if !ok {
            // NVML failed as a whole: no GPU answered.
            for gpu in self.gpus.values_mut() {
                gpu.up = false;
                gpu.values.clear();
                gpu.detail.samples.retain(|s| s.fam.agent_kept());
            }
            // Module energy is the agent's own counter: kept; power is not.
            for m in self.modules.values_mut() {
                m.power_w = None;
                m.power_instant_w = None;
            }
        } else {
            for m in &c.modules {
                self.modules.insert(m.id.clone(), m.clone());
            }
            // Each GPU's latest values, in one pass over the readings.
            let mut values: HashMap<&str, BTreeMap<Quantity, f64>> = HashMap::new();
            for r in &c.readings {
                if let Entity::Gpu(u) = &r.entity {
                    values.entry(u).or_default().insert(r.quantity, r.value);
                }
            }
            self.gpus = c
                .gpus
                .iter_mut()
                .map(|g| {
                    let uuid = &g.info.uuid;
                    let values = match values.remove(uuid.as_str()) {
                        Some(v) if g.up => v,
                        _ => BTreeMap::new(),
                    };
                    let entry = GpuEntry {
                        info: g.info.clone(),
                        up: g.up,
                        values,
                        detail: std::mem::take(&mut g.detail),
                    };
                    (uuid.clone(), entry)
                })
                .collect();
        }
    }
}

impl Snapshot {
    /// Records one meter source's collection: the source's health, then each
    /// meter it reports in [`Collected::meters`]. A meter that failed loses its
    /// values (its last good time stays, as `dcwatt_meter_last_reading_timestamp_seconds`).
    pub fn apply_meters(&mut self, label: &str, c: &Collected, took: Duration) {
        let src = self.sources.entry(label.to_owned()).or_default();
        src.up = c.error.is_none();
        src.duration_seconds = took.as_secs_f64();
        if c.error.is_some() {
            src.errors_total += 1;
        }
        for m in &c.meters {
            let entry = self.meters.entry(m.id.clone()).or_default();
            match &m.error {
                Some(e) => {
                    entry.up = false;
                    entry.values.clear();
                    *entry.errors.entry(e.kind.as_str()).or_default() += 1;
                }
                None => {
                    entry.up = true;
                    entry.values = values_of(c, |e| matches!(e, Entity::Meter(id) if *id == m.id));
                    entry.resets_total += m.resets;
                    let newest = c
                        .readings
                        .iter()
                        .filter(|r| matches!(&r.entity, Entity::Meter(id) if *id == m.id))
                        .map(|r| r.ts_ms)
                        .max();
                    if newest.is_some() {
                        entry.last_reading_ms = newest;
                    }
                }
            }
        }
    }
}

fn values_of(c: &Collected, pick: impl Fn(&Entity) -> bool) -> BTreeMap<Quantity, f64> {
    c.readings
        .iter()
        .filter(|r| pick(&r.entity))
        .map(|r| (r.quantity, r.value))
        .collect()
}

impl State {
    /// Empty state for `node`, showing the given shipping counters (none for a
    /// standalone exporter).
    pub fn new(node: String, ship: Option<Arc<ship::Shared>>) -> Self {
        Self {
            node,
            snapshot: Mutex::new(Snapshot::default()),
            ship,
        }
    }

    /// Runs `f` on the snapshot under its lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut guard = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// The text exposition of the current state.
    pub fn render(&self) -> String {
        let ship = self.ship.as_ref().map(|s| s.status());
        // Rendered under the lock rather than from a copy: the copy cost more
        // than the render, and a collection waits at most one render.
        self.update(|snap| render(&self.node, snap, ship.as_ref()))
    }
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Renders a snapshot and shipping counters in the Prometheus text format.
pub fn render(node: &str, snap: &Snapshot, ship: Option<&Status>) -> String {
    let gpu_gauges: [(&str, &str, Quantity); 6] = [
        (
            n::GPU_POWER_WATTS,
            "GPU power draw, watts (NVML power usage).",
            Quantity::PowerWatts,
        ),
        (
            n::GPU_UTILIZATION_RATIO,
            "GPU busy ratio, 0..1.",
            Quantity::UtilizationRatio,
        ),
        (
            n::GPU_MEMORY_UTILIZATION_RATIO,
            "GPU memory-bandwidth busy ratio, 0..1.",
            Quantity::MemoryUtilizationRatio,
        ),
        (
            n::GPU_MEMORY_USED_BYTES,
            "GPU memory in use, bytes.",
            Quantity::MemoryUsedBytes,
        ),
        (
            n::GPU_MEMORY_TOTAL_BYTES,
            "GPU memory installed, bytes.",
            Quantity::MemoryTotalBytes,
        ),
        (
            n::GPU_POWER_LIMIT_WATTS,
            "Enforced GPU power limit, watts.",
            Quantity::PowerLimitWatts,
        ),
    ];
    let mut families = Vec::new();

    let mut gpus: Vec<&GpuEntry> = snap.gpus.values().collect();
    gpus.sort_by_key(|g| g.info.index);
    let gpu_labels: Vec<(String, &GpuEntry)> = gpus
        .iter()
        .map(|g| (g.info.index.to_string(), *g))
        .collect();

    for (name, help, q) in gpu_gauges {
        let mut f = Family::gauge(name, help);
        for (idx, g) in &gpu_labels {
            if let Some(v) = g.values.get(&q) {
                f.add(
                    &[
                        (n::NODE, node),
                        (n::GPU, idx),
                        (n::UUID, &g.info.uuid),
                        (n::MODEL, &g.info.model),
                    ],
                    *v,
                );
            }
        }
        families.push(f);
    }

    let mut energy = Family::counter(
        n::GPU_ENERGY_JOULES_TOTAL,
        "GPU energy counter since the driver's zero, joules (NVML total energy).",
    );
    let mut temp = Family::gauge(
        n::GPU_TEMPERATURE_CELSIUS,
        "GPU temperature, degrees Celsius, by sensor.",
    );
    let mut up = Family::gauge(
        n::GPU_UP,
        "1 when the GPU answered the last collection, 0 when it is lost.",
    );
    for (idx, g) in &gpu_labels {
        let base = [
            (n::NODE, node),
            (n::GPU, idx.as_str()),
            (n::UUID, g.info.uuid.as_str()),
            (n::MODEL, g.info.model.as_str()),
        ];
        if let Some(v) = g.values.get(&Quantity::EnergyJoules) {
            energy.add(&base, *v);
        }
        for (sensor, q) in [
            (n::SENSOR_GPU, Quantity::TemperatureCelsius),
            (n::SENSOR_MEMORY, Quantity::MemoryTemperatureCelsius),
        ] {
            if let Some(v) = g.values.get(&q) {
                let mut labels = base.to_vec();
                labels.push((n::SENSOR, sensor));
                temp.add(&labels, *v);
            }
        }
        up.add(&base[..3], bool_value(g.up));
    }
    families.extend([energy, temp, up]);
    families.extend(gpu_detail_families(node, &gpu_labels));
    families.extend(module_families(node, snap));

    let mut m_power = Family::gauge(n::METER_POWER_WATTS, "Meter power, watts.");
    let mut m_energy = Family::counter(
        n::METER_ENERGY_JOULES_TOTAL,
        "Meter energy register, joules.",
    );
    let mut m_water = Family::counter(
        n::METER_WATER_CUBIC_METERS_TOTAL,
        "Meter water volume register, cubic metres.",
    );
    let mut m_up = Family::gauge(
        n::METER_UP,
        "1 when the meter answered the last collection with valid data.",
    );
    for (id, m) in &snap.meters {
        let labels = [(n::METER, id.as_str())];
        if let Some(v) = m.values.get(&Quantity::PowerWatts) {
            m_power.add(&labels, *v);
        }
        if let Some(v) = m.values.get(&Quantity::EnergyJoules) {
            m_energy.add(&labels, *v);
        }
        if let Some(v) = m.values.get(&Quantity::WaterVolumeCubicMeters) {
            m_water.add(&labels, *v);
        }
        m_up.add(&labels, bool_value(m.up));
    }
    families.extend([m_power, m_energy, m_water, m_up]);
    families.extend(meter_detail_families(snap));

    let mut s_up = Family::gauge(
        n::SOURCE_UP,
        "1 when the source's last collection succeeded.",
    );
    let mut s_err = Family::counter(n::SOURCE_ERRORS_TOTAL, "Failed collections of the source.");
    let mut s_dur = Family::gauge(
        n::SOURCE_DURATION_SECONDS,
        "Duration of the source's last collection, seconds.",
    );
    for (label, s) in &snap.sources {
        let labels = [(n::SOURCE, label.as_str())];
        s_up.add(&labels, bool_value(s.up));
        s_err.add(&labels, s.errors_total as f64);
        s_dur.add(&labels, s.duration_seconds);
    }
    families.extend([s_up, s_err, s_dur]);

    if let Some(ship) = ship {
        families.extend(ship_families(ship));
    }

    encode(families)
}

/// `dcwatt_gpu_info` and the agent-only GPU families ([`Fam`]).
fn gpu_detail_families(node: &str, gpus: &[(String, &GpuEntry)]) -> Vec<Family> {
    let mut info = Family::gauge(
        n::GPU_INFO,
        "GPU identity: UUID, model, driver version, PCI bus id; always 1.",
    );
    for (idx, g) in gpus {
        info.add(
            &[
                (n::NODE, node),
                (n::GPU, idx),
                (n::UUID, &g.info.uuid),
                (n::MODEL, &g.info.model),
                (n::DRIVER_VERSION, &g.detail.driver_version),
                (n::PCI_BUS_ID, &g.detail.pci_bus_id),
            ],
            1.0,
        );
    }
    let mut out = vec![info];
    for fam in Fam::ALL {
        let mut f = if fam.is_counter() {
            Family::counter(fam.name(), fam.help())
        } else {
            Family::gauge(fam.name(), fam.help())
        };
        for (idx, g) in gpus {
            for s in g.detail.samples.iter().filter(|s| s.fam == fam) {
                let mut labels: Vec<(&str, &str)> = vec![
                    (n::NODE, node),
                    (n::GPU, idx),
                    (n::UUID, &g.info.uuid),
                    (n::MODEL, &g.info.model),
                ];
                labels.extend(s.labels.iter().map(|(k, v)| (*k, v.as_ref())));
                f.add(&labels, s.value);
            }
        }
        out.push(f);
    }
    out
}

/// Superchip modules: power, instantaneous power, integrated energy, GPUs.
fn module_families(node: &str, snap: &Snapshot) -> Vec<Family> {
    let mut power = Family::gauge(
        n::MODULE_POWER_WATTS,
        "Superchip module power (GPUs, Grace CPU, LPDDR), 1 s average, watts; read once per module.",
    );
    let mut instant = Family::gauge(
        n::MODULE_POWER_INSTANT_WATTS,
        "Superchip module instantaneous power, watts.",
    );
    let mut energy = Family::counter(
        n::MODULE_ENERGY_JOULES_TOTAL,
        "Superchip module energy since the agent started, joules, integrated from the module power (NVML has no module counter).",
    );
    let mut info = Family::gauge(
        n::MODULE_INFO,
        "A superchip module and the NVML indexes of its GPUs; always 1.",
    );
    for (id, m) in &snap.modules {
        let labels = [(n::NODE, node), (n::MODULE, id.as_str())];
        if let Some(w) = m.power_w {
            power.add(&labels, w);
        }
        if let Some(w) = m.power_instant_w {
            instant.add(&labels, w);
        }
        energy.add(
            &[
                (n::NODE, node),
                (n::MODULE, id.as_str()),
                (n::METHOD, n::METHOD_INTEGRATED),
            ],
            m.energy_j,
        );
        let gpus: Vec<String> = m.gpus.iter().map(u32::to_string).collect();
        info.add(
            &[
                (n::NODE, node),
                (n::MODULE, id.as_str()),
                (n::GPUS, gpus.join(",").as_str()),
            ],
            1.0,
        );
    }
    vec![power, instant, energy, info]
}

/// Meter temperatures, coolant, errors by kind, resets and reading age.
fn meter_detail_families(snap: &Snapshot) -> Vec<Family> {
    let mut temp = Family::gauge(
        n::METER_TEMPERATURE_CELSIUS,
        "Meter (environment) temperature, degrees Celsius.",
    );
    let mut coolant = Family::gauge(
        n::METER_COOLANT_TEMPERATURE_CELSIUS,
        "Coolant temperature at a CDU connector, degrees Celsius, by point (supply or return).",
    );
    let mut flow = Family::gauge(
        n::METER_COOLANT_FLOW_CUBIC_METERS_PER_SECOND,
        "Coolant flow, cubic metres per second.",
    );
    let mut heat = Family::gauge(
        n::METER_HEAT_REMOVED_WATTS,
        "Heat carried away by the coolant, watts.",
    );
    let mut errors = Family::counter(
        n::METER_ERRORS_TOTAL,
        "Failed meter reads, by kind (timeout, connect, tls, http, auth, body, parse, value).",
    );
    let mut resets = Family::counter(
        n::METER_ENERGY_RESETS_TOTAL,
        "Meter energy counter resets seen (a decrease, or a new Redfish SensorResetTime).",
    );
    let mut last = Family::gauge(
        n::METER_LAST_READING_TIMESTAMP_SECONDS,
        "Time of the meter's latest good reading, Unix seconds (the device's clock when plausible).",
    );
    for (id, m) in &snap.meters {
        let labels = [(n::METER, id.as_str())];
        if let Some(v) = m.values.get(&Quantity::TemperatureCelsius) {
            temp.add(&labels, *v);
        }
        for (point, q) in [
            (n::POINT_SUPPLY, Quantity::CoolantSupplyTemperatureCelsius),
            (n::POINT_RETURN, Quantity::CoolantReturnTemperatureCelsius),
        ] {
            if let Some(v) = m.values.get(&q) {
                coolant.add(&[(n::METER, id.as_str()), (n::POINT, point)], *v);
            }
        }
        if let Some(v) = m.values.get(&Quantity::CoolantFlowCubicMetersPerSecond) {
            flow.add(&labels, *v);
        }
        if let Some(v) = m.values.get(&Quantity::HeatRemovedWatts) {
            heat.add(&labels, *v);
        }
        for kind in crate::sources::meter::ErrorKind::ALL {
            let k = kind.as_str();
            let v = m.errors.get(k).copied().unwrap_or(0);
            errors.add(&[(n::METER, id.as_str()), (n::KIND, k)], v as f64);
        }
        resets.add(&labels, m.resets_total as f64);
        if let Some(ms) = m.last_reading_ms {
            last.add(&labels, ms as f64 / 1000.0);
        }
    }
    vec![temp, coolant, flow, heat, errors, resets, last]
}

fn ship_families(ship: &Status) -> Vec<Family> {
    let mut batches = Family::counter(
        n::SHIP_BATCHES_TOTAL,
        "Batches handled per collector, by result.",
    );
    let mut queue = Family::gauge(
        n::SHIP_QUEUE_BATCHES,
        "Batches in the spool waiting for the collector.",
    );
    let mut lag = Family::gauge(
        n::SHIP_LAG_SECONDS,
        "Age of the oldest batch waiting for the collector, seconds; 0 when caught up.",
    );
    let mut refusals = Family::counter(
        n::SHIP_REFUSALS_TOTAL,
        "Requests the collector refused (4xx but 408, 409, 429), by HTTP status.",
    );
    let mut protocol = Family::counter(
        n::SHIP_PROTOCOL_ERRORS_TOTAL,
        "Collector answers against the protocol, by kind; never applied, retried.",
    );
    for c in &ship.collectors {
        for (result, v) in [
            (n::RESULT_OK, c.ok),
            (n::RESULT_DUPLICATE, c.duplicate),
            (n::RESULT_REJECTED, c.rejected),
            (n::RESULT_FORBIDDEN, c.forbidden),
            (n::RESULT_PROTOCOL_ERROR, c.protocol_error),
            (n::RESULT_DROPPED_REJECTED, c.dropped_rejected),
            (n::RESULT_DROPPED, c.dropped),
        ] {
            batches.add(
                &[(n::COLLECTOR, c.collector.as_str()), (n::RESULT, result)],
                v as f64,
            );
        }
        for (status, v) in &c.refusals {
            let status = status.to_string();
            refusals.add(
                &[(n::COLLECTOR, c.collector.as_str()), (n::STATUS, &status)],
                *v as f64,
            );
        }
        for (kind, v) in ship::ProtocolError::ALL.iter().zip(c.protocol_errors) {
            protocol.add(
                &[
                    (n::COLLECTOR, c.collector.as_str()),
                    (n::KIND, kind.as_str()),
                ],
                v as f64,
            );
        }
        queue.add(&[(n::COLLECTOR, c.collector.as_str())], c.queued as f64);
        lag.add(&[(n::COLLECTOR, c.collector.as_str())], c.lag_seconds);
    }
    let mut bytes = Family::gauge(
        n::SPOOL_BYTES,
        "Bytes the spool holds, file headers included.",
    );
    bytes.add(&[], ship.spool.bytes as f64);
    let mut held = Family::gauge(
        n::SPOOL_BATCHES,
        "Batches in the spool that some collector has not acknowledged.",
    );
    held.add(&[], ship.spool.batches as f64);
    let mut corrupt = Family::counter(
        n::SPOOL_CORRUPT_RECORDS_TOTAL,
        "Torn or corrupt spool records found and skipped.",
    );
    corrupt.add(&[], ship.spool.corrupt_records as f64);
    let mut dropped = Family::counter(
        n::SPOOL_DROPPED_BATCHES_TOTAL,
        "Batches dropped unsent: the spool was full, or a write failed.",
    );
    dropped.add(&[], ship.spool.dropped_batches as f64);
    vec![
        batches, refusals, protocol, queue, lag, bytes, held, corrupt, dropped,
    ]
}

/// The HTTP routes: `GET /metrics`, `GET /healthz`.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, dcwatt_expo::CONTENT_TYPE)],
        state.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::GpuStatus;
    use dcwatt_wire::Reading;

    fn reading(entity: Entity, quantity: Quantity, value: f64) -> Reading {
        Reading {
            ts_ms: 1,
            entity,
            quantity,
            value,
        }
    }

    #[test]
    fn gpu_values_render_with_labels() {
        let mut snap = Snapshot::default();
        let gpu = |uuid: &str, index| GpuInfo {
            uuid: uuid.into(),
            index,
            model: "NVIDIA GB300".into(),
            module: None,
        };
        let mut c = Collected {
            readings: vec![
                reading(Entity::Gpu("GPU-a".into()), Quantity::PowerWatts, 1100.0),
                reading(
                    Entity::Gpu("GPU-a".into()),
                    Quantity::MemoryTemperatureCelsius,
                    66.0,
                ),
            ],
            gpus: vec![
                GpuStatus {
                    info: gpu("GPU-a", 0),
                    up: true,
                    detail: GpuDetail::default(),
                },
                GpuStatus {
                    info: gpu("GPU-b", 1),
                    up: false,
                    detail: GpuDetail::default(),
                },
            ],
            error: None,
            meters: Vec::new(),
            modules: Vec::new(),
        };
        snap.apply("nvml", None, &mut c, Duration::from_millis(5));
        let text = render("n1", &snap, None);
        assert!(text.contains(
            r#"dcwatt_gpu_power_watts{node="n1",gpu="0",uuid="GPU-a",model="NVIDIA GB300"} 1100"#
        ), "{text}");
        assert!(text.contains(
            r#"dcwatt_gpu_temperature_celsius{node="n1",gpu="0",uuid="GPU-a",model="NVIDIA GB300",sensor="memory"} 66"#
        ), "{text}");
        assert!(
            text.contains(r#"dcwatt_gpu_up{node="n1",gpu="1",uuid="GPU-b"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dcwatt_source_up{source="nvml"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dcwatt_source_duration_seconds{source="nvml"} 0.005"#),
            "{text}"
        );

        snap.apply("nvml", None, &mut Collected::failed("gone"), Duration::ZERO);
        let text = render("n1", &snap, None);
        assert!(
            text.contains(r#"dcwatt_gpu_up{node="n1",gpu="0",uuid="GPU-a"} 0"#),
            "{text}"
        );
        assert!(!text.contains("dcwatt_gpu_power_watts"), "{text}");
        assert!(
            text.contains(r#"dcwatt_source_errors_total{source="nvml"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn gpu_detail_renders_and_agent_kept_counters_survive_a_failure() {
        use crate::sources::nvml::detail::Sample;
        let mut snap = Snapshot::default();
        let detail = GpuDetail {
            driver_version: "580.95.05".into(),
            pci_bus_id: "00000000:18:00.0".into(),
            samples: vec![
                Sample::labelled(Fam::XidErrors, n::XID, "79", 2.0),
                Sample::labelled(Fam::Clock, n::CLOCK, "sm", 1.98e9),
            ],
        };
        let mut c = Collected {
            readings: Vec::new(),
            gpus: vec![GpuStatus {
                info: GpuInfo {
                    uuid: "GPU-a".into(),
                    index: 0,
                    model: "M".into(),
                    module: None,
                },
                up: true,
                detail,
            }],
            error: None,
            ..Collected::default()
        };
        snap.apply("nvml", None, &mut c, Duration::ZERO);
        let text = render("n1", &snap, None);
        let base = r#"node="n1",gpu="0",uuid="GPU-a",model="M""#;
        assert!(
            text.contains(&format!(
                r#"dcwatt_gpu_xid_errors_total{{{base},xid="79"}} 2"#
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"dcwatt_gpu_clock_hertz{{{base},clock="sm"}} 1980000000"#
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"dcwatt_gpu_info{{{base},driver_version="580.95.05",pci_bus_id="00000000:18:00.0"}} 1"#
        )), "{text}");
        assert!(
            text.contains("# TYPE dcwatt_gpu_xid_errors_total counter"),
            "{text}"
        );

        // NVML fails as a whole: readings go, the agent's own counters stay.
        snap.apply("nvml", None, &mut Collected::failed("x"), Duration::ZERO);
        let text = render("n1", &snap, None);
        assert!(
            text.contains(&format!(
                r#"dcwatt_gpu_xid_errors_total{{{base},xid="79"}} 2"#
            )),
            "{text}"
        );
        assert!(!text.contains("dcwatt_gpu_clock_hertz"), "{text}");
    }

    #[test]
    fn failed_meter_loses_its_values() {
        let mut snap = Snapshot::default();
        let mut ok = Collected::ok(vec![reading(
            Entity::Meter("m".into()),
            Quantity::EnergyJoules,
            7.2e6,
        )]);
        snap.apply("redfish:m", Some("m"), &mut ok, Duration::ZERO);
        let text = render("n1", &snap, None);
        assert!(
            text.contains(r#"dcwatt_meter_energy_joules_total{meter="m"} 7200000"#),
            "{text}"
        );
        assert!(text.contains(r#"dcwatt_meter_up{meter="m"} 1"#), "{text}");
        assert!(!text.contains("dcwatt_meter_power_watts"), "{text}");
        snap.apply(
            "redfish:m",
            Some("m"),
            &mut Collected::failed("x"),
            Duration::ZERO,
        );
        let text = render("n1", &snap, None);
        assert!(text.contains(r#"dcwatt_meter_up{meter="m"} 0"#), "{text}");
        assert!(
            !text.contains("dcwatt_meter_energy_joules_total{"),
            "{text}"
        );
    }

    #[test]
    fn modules_render_and_keep_their_energy_when_nvml_fails() {
        let mut snap = Snapshot::default();
        let mut c = Collected {
            modules: vec![ModuleStatus {
                id: "sn-1".into(),
                gpus: vec![0, 1],
                power_w: Some(488.29),
                power_instant_w: Some(487.68),
                energy_j: 1234.5,
            }],
            ..Collected::default()
        };
        snap.apply("nvml", None, &mut c, Duration::ZERO);
        let text = render("n1", &snap, None);
        for line in [
            "dcwatt_module_power_watts{node=\"n1\",module=\"sn-1\"} 488.29\n",
            "dcwatt_module_power_instant_watts{node=\"n1\",module=\"sn-1\"} 487.68\n",
            "dcwatt_module_energy_joules_total{node=\"n1\",module=\"sn-1\",method=\"integrated\"} 1234.5\n",
            "dcwatt_module_info{node=\"n1\",module=\"sn-1\",gpus=\"0,1\"} 1\n",
            "# TYPE dcwatt_module_energy_joules_total counter\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // NVML fails as a whole: the power goes, the agent's own counter stays.
        snap.apply("nvml", None, &mut Collected::failed("x"), Duration::ZERO);
        let text = render("n1", &snap, None);
        assert!(!text.contains("dcwatt_module_power_watts{"), "{text}");
        assert!(text.contains("dcwatt_module_energy_joules_total{node=\"n1\",module=\"sn-1\",method=\"integrated\"} 1234.5\n"));
    }
}
