//! GPU service levels: what each leased GPU delivered, minute by minute.
//!
//! Every GPU-minute gets one delivery state, decided from the GPU's own
//! readings by the rules below (documented for tenants in `docs/tenants.md`):
//!
//! - The time between two readings of a GPU (at most `stale_after` apart)
//!   holds the state its earlier reading reported (sample and hold), cut at
//!   UTC minute edges; that is the minute's *covered* time.
//! - **down**: the GPU reported `gpu_up 0` (NVML lost it, a reset is
//!   required, NVML errors) for more than `[sla] down_share` of the covered
//!   time (default 0: any of it).
//! - **degraded**: not down, but thermally throttled (`hw_thermal_slowdown`,
//!   `sw_thermal_slowdown`, or `hw_slowdown` without a power brake),
//!   power-braked (`hw_power_brake_slowdown`) or power-capped
//!   (`sw_power_cap`) while its enforced limit is below its default limit,
//!   for more than `[sla] degraded_share` of the covered time (default 0.1),
//!   or in an open thermal excursion (until its all-clear begins) for any
//!   of it.
//! - **available**: up and reporting, neither of the above.
//! - **unknown**: a whole minute without a single reading of the GPU (its
//!   node's agent or the network was out), between two readings more than
//!   `stale_after` apart; booked when the GPU reports again (at most
//!   [`UNKNOWN_GAP_MAX_MINUTES`] of one gap).
//!
//! A degraded or down minute's cause is `facility` when a CDU in the GPU's
//! zone was in a thermal excursion during its non-available time (a site
//! power event is not seen by the collector yet), else
//! `gpu`; an unknown minute's cause is `unknown`.
//!
//! The ledger books, per tenant-minute row, the tenant's leased GPU time per
//! state and, in `ledger_delivery` keyed by the row, each GPU-minute that was
//! not available (UUID, state, reason, cause, ms); the row's hash covers the
//! sorted list through its digest ([`dcwatt_verify::row::delivery_digest`]),
//! so storage grows with incidents, not with GPUs.
//!
//! The tables, the booking of silences and the reports read from the store
//! are in `store::delivery`.
//!
//! Size: the delivery rules, their per-GPU tracker and the report types form
//! one rule set (documented for tenants in `docs/tenants.md`).

use serde::{Deserialize, Serialize};

use dcwatt_wire::Quantity;

use dcwatt_wire::time::{DAY_MS, MINUTE_MS};

use crate::site::Site;

/// The most unknown minutes booked for one silence of one GPU (one day):
/// a GPU back after longer is booked unknown for the day before its return.
pub const UNKNOWN_GAP_MAX_MINUTES: i64 = 1440;

pub use crate::site::{PowerEvent, SlaConfig};

/// `[[power_events]]`: a site power event the operator declares (a utility
/// outage, a UPS or PDU failure, a breaker trip): the degraded, down and
/// unknown GPU-minutes of the GPUs in its zone (every zone without one)
/// that it overlaps have cause `facility`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerEventConfig {
    /// The zone (an agent's or a meter's); absent: the whole site.
    #[serde(default)]
    pub zone: Option<String>,
    /// Start, RFC 3339.
    pub from: String,
    /// End (exclusive), RFC 3339.
    pub to: String,
    /// What happened (for the operator; not used).
    #[serde(default)]
    pub note: String,
}

/// Validates `[[power_events]]` against the configured zones.
pub fn build_power_events(
    config: &[PowerEventConfig],
    zones: &std::collections::BTreeSet<String>,
) -> Result<Vec<PowerEvent>, crate::check::ConfigError> {
    use crate::check::invalid;
    let mut out = Vec::with_capacity(config.len());
    for (i, e) in config.iter().enumerate() {
        if let Some(z) = &e.zone {
            if !zones.contains(z) {
                return Err(invalid(
                    format!("power_events[{i}].zone"),
                    format!("{z:?} is no agent's or meter's zone"),
                ));
            }
        }
        let from_ms = crate::tenants::parse_time(&format!("power_events[{i}].from"), &e.from)?;
        let to_ms = crate::tenants::parse_time(&format!("power_events[{i}].to"), &e.to)?;
        if to_ms <= from_ms {
            return Err(invalid(
                format!("power_events[{i}].to"),
                "must be after from",
            ));
        }
        if to_ms - from_ms > 31 * DAY_MS {
            return Err(invalid(
                format!("power_events[{i}].to"),
                "an event longer than 31 days is not a power event",
            ));
        }
        out.push(PowerEvent {
            zone: e.zone.clone(),
            from_ms,
            to_ms,
        });
    }
    Ok(out)
}

/// True when a declared power event of the node's zone (or the site)
/// overlaps the minute.
pub(crate) fn in_power_event(site: &Site, node: &str, minute_ms: i64) -> bool {
    if site.power_events.is_empty() {
        return false;
    }
    let zone = site.agent_zones.get(node);
    site.power_events.iter().any(|e| {
        e.from_ms < minute_ms + MINUTE_MS
            && minute_ms < e.to_ms
            && e.zone.as_ref().is_none_or(|z| Some(z) == zone)
    })
}

/// A GPU-minute's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryState {
    /// Up and reporting, not degraded.
    Available,
    /// Up but throttled, capped, braked or in a thermal excursion.
    Degraded,
    /// Down.
    Down,
    /// No data from the node.
    Unknown,
}

impl DeliveryState {
    /// Every state, in the order of the ledger's columns.
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Available,
        DeliveryState::Degraded,
        DeliveryState::Down,
        DeliveryState::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Available => "available",
            DeliveryState::Degraded => "degraded",
            DeliveryState::Down => "down",
            DeliveryState::Unknown => "unknown",
        }
    }

    /// The ledger column of its GPU time.
    pub(crate) fn column(self) -> &'static str {
        match self {
            DeliveryState::Available => "available_ms",
            DeliveryState::Degraded => "degraded_ms",
            DeliveryState::Down => "down_ms",
            DeliveryState::Unknown => "unknown_ms",
        }
    }
}

/// One GPU-minute, judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveredMinute {
    /// Start of the minute, Unix ms.
    pub minute_ms: i64,
    /// Its state.
    pub state: DeliveryState,
    /// Why it is not available (empty when it is).
    pub reason: &'static str,
    /// `facility`, `gpu` or `unknown` (empty when available).
    pub cause: &'static str,
}

// Persisted with every batch of the GPU: what is 0, false or absent is
// left out of its JSON.
fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// Time of the minute in progress, ms, by what held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct MinuteTime {
    minute_ms: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    covered: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    down: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    thermal: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    brake: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    cap: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    excursion: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    throttled: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    facility: i64,
    /// The down reason's code last held in the minute (wire `DOWN_REASONS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
    /// Down time that followed an XID (see [`XID_TOOK_IT_OUT_MS`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    xid: i64,
}

/// An XID seen at most this long before a GPU went down (or while it is
/// down) is taken as what put it down: its down minutes say `xid`.
pub const XID_TOOK_IT_OUT_MS: i64 = MINUTE_MS;

/// The reason a down minute gives for the agent's down reason code (wire
/// `DOWN_REASONS`): `lost` (fell off the bus), `reset_required`,
/// `no_permission`, `insufficient_power`, `no_answer` (NVML did not answer
/// within the agent's timeout), `nvml_error` (any other NVML error that put
/// it down), `gpu_down` (no code: an older agent, or one this collector
/// does not know).
pub fn down_reason(code: Option<u32>) -> &'static str {
    match code.and_then(|c| dcwatt_wire::down_reason_of(f64::from(c))) {
        Some("gpu_lost") => "lost",
        Some("reset_required") => "reset_required",
        Some("no_permission") => "no_permission",
        Some("insufficient_power") => "insufficient_power",
        Some("no_answer") => "no_answer",
        Some("other") | None => "gpu_down",
        Some(_) => "nvml_error",
    }
}

/// One GPU's delivery gauges (as last reported) and its minute in progress.
/// Kept in the GPU's state, persisted with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// The last reading's time, Unix ms (0: none yet).
    last_ms: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    down: bool,
    /// When it last went down (while down).
    #[serde(default, skip_serializing_if = "is_zero")]
    down_since: i64,
    /// Its down reason's code (while down, when the agent sent one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    down_code: Option<u32>,
    /// The XID counter's last value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xid_total: Option<f64>,
    /// When the XID counter last rose.
    #[serde(default, skip_serializing_if = "is_zero")]
    xid_ms: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    hw_thermal: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    sw_thermal: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    hw_slowdown: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    brake: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    cap: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit_w: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_w: Option<f64>,
    /// The GPU is in an open thermal excursion.
    #[serde(default, skip_serializing_if = "is_false")]
    pub excursion: bool,
    /// A CDU of its zone is in an open thermal excursion.
    #[serde(default, skip_serializing_if = "is_false")]
    pub facility: bool,
    minute: MinuteTime,
}

pub(crate) fn floor_minute(ts: i64) -> i64 {
    ts.div_euclid(MINUTE_MS) * MINUTE_MS
}

impl Tracker {
    /// Takes one reading of the GPU at `ts` (any quantity: every reading
    /// says the node reported); pushes the minutes it completes.
    pub fn observe(
        &mut self,
        ts: i64,
        q: Quantity,
        v: f64,
        stale_ms: i64,
        sla: &SlaConfig,
        out: &mut Vec<DeliveredMinute>,
    ) {
        if ts < self.last_ms {
            return; // out of order: its time was already held
        }
        if self.last_ms == 0 {
            // The GPU's first reading: its minute counts only from its start
            // (a minute seen in part from the first reading on is not judged,
            // as its energy is not booked either).
            let start = floor_minute(ts);
            self.minute = MinuteTime {
                minute_ms: if start == ts {
                    start
                } else {
                    start + MINUTE_MS
                },
                ..MinuteTime::default()
            };
        } else if ts > self.last_ms {
            if ts - self.last_ms <= stale_ms {
                self.hold(self.last_ms, ts, sla, out);
            } else {
                let (last_min, ts_min) = (floor_minute(self.last_ms), floor_minute(ts));
                if ts_min > self.minute.minute_ms {
                    self.finish(sla, out);
                    let silent = (ts_min - last_min) / MINUTE_MS - 1;
                    let first = ts_min - silent.min(UNKNOWN_GAP_MAX_MINUTES) * MINUTE_MS;
                    let mut m = first.max(last_min + MINUTE_MS);
                    while m < ts_min {
                        out.push(DeliveredMinute {
                            minute_ms: m,
                            state: DeliveryState::Unknown,
                            reason: "no_data",
                            cause: "unknown",
                        });
                        m += MINUTE_MS;
                    }
                    self.minute = MinuteTime {
                        minute_ms: ts_min,
                        ..MinuteTime::default()
                    };
                }
            }
        }
        self.last_ms = ts;
        let on = v >= 0.5;
        match q {
            Quantity::GpuUp => self.set_down(!on, ts),
            Quantity::GpuDownReasonCode => {
                // Validated a whole number at ingest; a code not listed is
                // kept and read as "down, reason not listed".
                self.down_code = (v >= 0.0 && v <= f64::from(u32::MAX)).then_some(v as u32);
            }
            Quantity::XidErrorsTotal => {
                // A rise, or a decrease to a non-zero count (the agent
                // restarted and saw XIDs since).
                let rose = match self.xid_total {
                    Some(prev) => v > prev || (v < prev && v > 0.0),
                    None => false,
                };
                if rose {
                    self.xid_ms = ts;
                }
                self.xid_total = Some(v);
            }
            Quantity::ThrottleHwThermalSlowdown => self.hw_thermal = on,
            Quantity::ThrottleSwThermalSlowdown => self.sw_thermal = on,
            Quantity::ThrottleHwSlowdown => self.hw_slowdown = on,
            Quantity::ThrottleHwPowerBrakeSlowdown => self.brake = on,
            Quantity::ThrottleSwPowerCap => self.cap = on,
            Quantity::PowerLimitWatts => self.limit_w = Some(v),
            Quantity::PowerDefaultLimitWatts => self.default_w = Some(v),
            // Energy, power, utilization, …: the GPU answers NVML.
            Quantity::PowerWatts | Quantity::EnergyJoules | Quantity::UtilizationRatio => {
                self.set_down(false, ts);
            }
            _ => {}
        }
    }

    fn set_down(&mut self, down: bool, ts: i64) {
        if down && !self.down {
            self.down_since = ts;
        }
        if !down {
            self.down_since = 0;
            self.down_code = None;
        }
        self.down = down;
    }

    /// Down after an XID: one at most [`XID_TOOK_IT_OUT_MS`] before it
    /// went down, or while down.
    fn down_by_xid(&self) -> bool {
        self.down && self.xid_ms > 0 && self.xid_ms >= self.down_since - XID_TOOK_IT_OUT_MS
    }

    /// Capped below its default limit (both known).
    fn capped(&self) -> bool {
        self.cap && matches!((self.limit_w, self.default_w), (Some(l), Some(d)) if l < d - 0.5)
    }

    /// Holds the current gauges over `[from, to)`, completing minutes.
    fn hold(&mut self, from: i64, to: i64, sla: &SlaConfig, out: &mut Vec<DeliveredMinute>) {
        let thermal = self.hw_thermal || self.sw_thermal || (self.hw_slowdown && !self.brake);
        let capped = self.capped();
        let throttled = thermal || self.brake || capped || self.excursion;
        let by_xid = self.down_by_xid();
        let mut a = from;
        while a < to {
            let m = floor_minute(a);
            if m < self.minute.minute_ms {
                a = to.min(self.minute.minute_ms);
                continue;
            }
            if m > self.minute.minute_ms {
                self.finish(sla, out);
                self.minute = MinuteTime {
                    minute_ms: m,
                    ..MinuteTime::default()
                };
            }
            let b = to.min(m + MINUTE_MS);
            let d = b - a;
            let t = &mut self.minute;
            t.covered += d;
            if self.down {
                t.down += d;
                if self.down_code.is_some() {
                    t.code = self.down_code;
                }
                if by_xid {
                    t.xid += d;
                }
            }
            if thermal {
                t.thermal += d;
            }
            if self.brake {
                t.brake += d;
            }
            if capped {
                t.cap += d;
            }
            if self.excursion {
                t.excursion += d;
            }
            if throttled {
                t.throttled += d;
            }
            if self.facility && (self.down || throttled) {
                t.facility += d;
            }
            if b == m + MINUTE_MS {
                // Held to its end: the minute is complete.
                self.finish(sla, out);
            }
            a = b;
        }
    }

    /// Judges the minute in progress if it has covered time.
    fn finish(&mut self, sla: &SlaConfig, out: &mut Vec<DeliveredMinute>) {
        let t = self.minute;
        if t.covered <= 0 {
            return;
        }
        out.push(judge(&t, sla));
        self.minute.covered = 0;
        self.minute.code = None;
        self.minute.xid = 0;
    }
}

fn judge(t: &MinuteTime, sla: &SlaConfig) -> DeliveredMinute {
    let c = t.covered as f64;
    let cause = if t.facility > 0 { "facility" } else { "gpu" };
    if t.down > 0 && t.down as f64 > sla.down_share * c {
        return DeliveredMinute {
            minute_ms: t.minute_ms,
            state: DeliveryState::Down,
            // An XID before most of its down time: the XID took it out.
            reason: if t.xid * 2 > t.down {
                "xid"
            } else {
                down_reason(t.code)
            },
            cause,
        };
    }
    if t.excursion > 0 || t.throttled as f64 > sla.degraded_share * c {
        // The throttle that held longest; an excursion alone when none did.
        let mut reason = ("thermal", t.thermal);
        for r in [
            ("power_brake", t.brake),
            ("power_cap", t.cap),
            ("thermal_excursion", t.excursion),
        ] {
            if r.1 > reason.1 {
                reason = r;
            }
        }
        return DeliveredMinute {
            minute_ms: t.minute_ms,
            state: DeliveryState::Degraded,
            reason: reason.0,
            cause,
        };
    }
    DeliveredMinute {
        minute_ms: t.minute_ms,
        state: DeliveryState::Available,
        reason: "",
        cause: "",
    }
}

/// GPU-minutes not available, by cause.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ByCause {
    /// Degraded GPU-minutes.
    pub degraded_gpu_minutes: f64,
    /// Down GPU-minutes.
    pub down_gpu_minutes: f64,
    /// Unknown GPU-minutes (the facility's: a declared power event).
    pub unknown_gpu_minutes: f64,
}

/// Consecutive non-available minutes of GPUs with the same state, reason
/// and cause, merged (GPUs whose stretches coincide share one incident).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Start, Unix ms.
    pub start_ms: i64,
    /// End (exclusive), Unix ms.
    pub end_ms: i64,
    /// `degraded`, `down` or `unknown`.
    pub state: String,
    /// Why (see [`DeliveredMinute::reason`]).
    pub reason: String,
    /// `facility`, `gpu` or `unknown`.
    pub cause: String,
    /// The GPUs, by UUID.
    pub gpus: Vec<String>,
    /// Leased GPU-minutes it took.
    pub gpu_minutes: f64,
}

/// (UUID, state, reason, cause) of a GPU's non-available minutes (the UUID
/// left empty where GPUs are merged).
pub(crate) type IncidentKind = (String, String, String, String);

/// GPU-minutes per state, the ratios from them and the causes: a tenant's
/// in one hall ([`Service`]) or in every hall ([`CombinedService`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Levels {
    /// GPU-minutes leased and judged: the four states below added up.
    pub leased_gpu_minutes: f64,
    /// Up and reporting, not degraded.
    pub available_gpu_minutes: f64,
    /// Up but throttled, braked, capped or in a thermal excursion.
    pub degraded_gpu_minutes: f64,
    /// Down.
    pub down_gpu_minutes: f64,
    /// No data from the node: neither delivered nor down as far as anyone
    /// can tell, left out of the ratios.
    pub unknown_gpu_minutes: f64,
    /// (available + degraded) / (leased − unknown): the GPU time delivered
    /// of the time that was observed; `None` without observed time.
    pub availability_ratio: Option<f64>,
    /// available / (leased − unknown): delivered at full performance.
    pub undegraded_ratio: Option<f64>,
    /// The tenant's `availability_target`, if set.
    pub availability_target: Option<f64>,
    /// `availability_ratio >= availability_target`, where both are known.
    pub target_met: Option<bool>,
    /// Non-available GPU-minutes the facility caused (a CDU excursion in
    /// the GPU's zone).
    pub facility: ByCause,
    /// Non-available GPU-minutes the GPU itself caused (as far as the data
    /// tells).
    pub gpu: ByCause,
}

impl Levels {
    /// The state lines and the ratios as CSV, after `heading` (a `# …` line).
    fn to_csv(&self, heading: &str) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut out =
            format!("{heading}\nstate,gpu_minutes,facility_gpu_minutes,gpu_gpu_minutes\n");
        out += &format!("leased,{},,\n", self.leased_gpu_minutes);
        out += &format!("available,{},,\n", self.available_gpu_minutes);
        out += &format!(
            "degraded,{},{},{}\n",
            self.degraded_gpu_minutes,
            self.facility.degraded_gpu_minutes,
            self.gpu.degraded_gpu_minutes
        );
        out += &format!(
            "down,{},{},{}\n",
            self.down_gpu_minutes, self.facility.down_gpu_minutes, self.gpu.down_gpu_minutes
        );
        out += &format!(
            "unknown,{},{},\n",
            self.unknown_gpu_minutes, self.facility.unknown_gpu_minutes
        );
        out += &format!(
            "# availability_ratio {} undegraded_ratio {} availability_target {} target_met {}\n",
            opt(self.availability_ratio),
            opt(self.undegraded_ratio),
            opt(self.availability_target),
            self.target_met.map(|m| m.to_string()).unwrap_or_default()
        );
        out
    }
}

/// A tenant's GPU service levels over a statement's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// The GPU-minutes per state, ratios and causes.
    #[serde(flatten)]
    pub levels: Levels,
    /// The incidents, by start.
    pub incidents: Vec<Incident>,
    /// The same GPU-minutes per lease (see [`LeaseService`]): each state
    /// adds up over the leases to the tenant's figure above.
    pub leases: Vec<LeaseService>,
}

/// The id under which GPU-minutes no single lease of the tenant accounts
/// for are listed (leases changed since they were booked).
pub const UNMATCHED_LEASE: &str = "_unmatched";

/// One lease's GPU-minutes in a statement's period. A non-available
/// GPU-minute counts for the lease covering its GPU at the minute's start
/// (else at its end); a row's available time is split among the tenant's
/// leases in force in its minute by their GPU time in it (the GPUs the
/// collector knows each lease to cover, times the lease's time in the
/// minute) less their non-available time, the last taking the remainder,
/// so every state adds up exactly over the leases.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaseService {
    /// The lease's id ([`UNMATCHED_LEASE`] for time no lease accounts for).
    pub id: String,
    /// The lease's start, Unix ms (absent for [`UNMATCHED_LEASE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Its end (exclusive), Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// The four states added up.
    pub leased_gpu_minutes: f64,
    /// Available GPU-minutes.
    pub available_gpu_minutes: f64,
    /// Degraded GPU-minutes.
    pub degraded_gpu_minutes: f64,
    /// Down GPU-minutes.
    pub down_gpu_minutes: f64,
    /// Unknown GPU-minutes.
    pub unknown_gpu_minutes: f64,
    /// (available + degraded) / (leased − unknown).
    pub availability_ratio: Option<f64>,
}

/// An incident in one hall of a [`CombinedService`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HallIncident {
    /// The hall: the collector configuration its statement was read with.
    pub hall: String,
    /// The incident.
    #[serde(flatten)]
    pub incident: Incident,
}

/// A lease's figures in one hall of a [`CombinedService`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HallLease {
    /// The hall.
    pub hall: String,
    /// The lease's figures there.
    #[serde(flatten)]
    pub lease: LeaseService,
}

/// A tenant's service levels across halls (`dcwatt-collector report` with
/// several `--config`): each state's GPU-minutes added up over the halls,
/// the ratios recomputed from the sums (never a mean of the halls'
/// ratios), incidents and leases listed with their hall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CombinedService {
    /// Each state's GPU-minutes added up over the halls, the ratios from
    /// the sums, the tenant's target (the first hall's that has one).
    #[serde(flatten)]
    pub levels: Levels,
    /// Every hall's incidents, by start, then hall.
    pub incidents: Vec<HallIncident>,
    /// Every hall's leases.
    pub leases: Vec<HallLease>,
}

/// Adds up the halls' service levels: `(hall, service)`; `None` without any.
pub fn combine_service<'a>(
    halls: impl IntoIterator<Item = (&'a str, &'a Service)>,
) -> Option<CombinedService> {
    let mut out: Option<CombinedService> = None;
    for (hall, s) in halls {
        let c = out.get_or_insert_with(|| CombinedService {
            levels: Levels::default(),
            incidents: Vec::new(),
            leases: Vec::new(),
        });
        let (l, h) = (&mut c.levels, &s.levels);
        l.leased_gpu_minutes += h.leased_gpu_minutes;
        l.available_gpu_minutes += h.available_gpu_minutes;
        l.degraded_gpu_minutes += h.degraded_gpu_minutes;
        l.down_gpu_minutes += h.down_gpu_minutes;
        l.unknown_gpu_minutes += h.unknown_gpu_minutes;
        l.availability_target = l.availability_target.or(h.availability_target);
        for (to, from) in [(&mut l.facility, &h.facility), (&mut l.gpu, &h.gpu)] {
            to.degraded_gpu_minutes += from.degraded_gpu_minutes;
            to.down_gpu_minutes += from.down_gpu_minutes;
            to.unknown_gpu_minutes += from.unknown_gpu_minutes;
        }
        c.incidents.extend(s.incidents.iter().map(|i| HallIncident {
            hall: hall.to_owned(),
            incident: i.clone(),
        }));
        c.leases.extend(s.leases.iter().map(|l| HallLease {
            hall: hall.to_owned(),
            lease: l.clone(),
        }));
    }
    let c = out.as_mut()?;
    let l = &mut c.levels;
    let observed = l.available_gpu_minutes + l.degraded_gpu_minutes + l.down_gpu_minutes;
    let ratio = |num: f64| (observed > 0.0).then(|| num / observed);
    l.availability_ratio = ratio(l.available_gpu_minutes + l.degraded_gpu_minutes);
    l.undegraded_ratio = ratio(l.available_gpu_minutes);
    l.target_met = l
        .availability_ratio
        .zip(l.availability_target)
        .map(|(r, t)| r >= t);
    c.incidents
        .sort_by(|a, b| (a.incident.start_ms, &a.hall).cmp(&(b.incident.start_ms, &b.hall)));
    out
}

impl CombinedService {
    /// As CSV lines after a `# service (all halls)` line.
    pub fn to_csv(&self) -> String {
        let mut out = self.levels.to_csv("# service (all halls)");
        out += "# incidents\nhall,start_ms,end_ms,state,reason,cause,gpu_minutes,gpus\n";
        for h in &self.incidents {
            let i = &h.incident;
            out += &format!(
                "{},{},{},{},{},{},{},{}\n",
                h.hall,
                i.start_ms,
                i.end_ms,
                i.state,
                i.reason,
                i.cause,
                i.gpu_minutes,
                i.gpus.join(" ")
            );
        }
        out
    }
}

impl Service {
    /// The service levels and incidents as CSV lines (appended to the
    /// statement's CSV after a `# service` line).
    pub fn to_csv(&self) -> String {
        let mut out = self.levels.to_csv("# service");
        out += "# leases
lease,leased_gpu_minutes,available_gpu_minutes,degraded_gpu_minutes,down_gpu_minutes,unknown_gpu_minutes
";
        for l in &self.leases {
            out += &format!(
                "{},{},{},{},{},{}
",
                l.id,
                l.leased_gpu_minutes,
                l.available_gpu_minutes,
                l.degraded_gpu_minutes,
                l.down_gpu_minutes,
                l.unknown_gpu_minutes
            );
        }
        out += "# incidents
start_ms,end_ms,state,reason,cause,gpu_minutes,gpus
";
        for i in &self.incidents {
            out += &format!(
                "{},{},{},{},{},{},{}
",
                i.start_ms,
                i.end_ms,
                i.state,
                i.reason,
                i.cause,
                i.gpu_minutes,
                i.gpus.join(" ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Tracker, ticks: &[(i64, &[(Quantity, f64)])]) -> Vec<DeliveredMinute> {
        let mut out = Vec::new();
        for (ts, rs) in ticks {
            for (q, v) in *rs {
                t.observe(*ts, *q, *v, 30_000, &SlaConfig::default(), &mut out);
            }
        }
        out
    }

    #[test]
    fn minutes_are_judged_by_held_time() {
        let mut t = Tracker::default();
        let base = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;
        let mut ticks: Vec<(i64, Vec<(Quantity, f64)>)> = Vec::new();
        // Minute 0 available, minute 1 throttled 20 s (degraded), minute 2
        // throttled 5 s (available), minute 3 down 10 s (down), then silent
        // for minutes 4..=6 (unknown), back in minute 7.
        for s in (0..240).step_by(5) {
            let ts = base + s * 1000;
            let thermal = (80..100).contains(&s) || (120..125).contains(&s);
            let down = (190..200).contains(&s);
            ticks.push((
                ts,
                vec![
                    (Quantity::GpuUp, if down { 0.0 } else { 1.0 }),
                    (
                        Quantity::ThrottleHwThermalSlowdown,
                        if thermal { 1.0 } else { 0.0 },
                    ),
                ],
            ));
        }
        ticks.push((base + 420_000, vec![(Quantity::GpuUp, 1.0)]));
        ticks.push((base + 450_000, vec![(Quantity::GpuUp, 1.0)]));
        ticks.push((base + 480_000, vec![(Quantity::GpuUp, 1.0)]));
        let refs: Vec<(i64, &[(Quantity, f64)])> =
            ticks.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        let out = run(&mut t, &refs);
        let states: Vec<(i64, &str, &str)> = out
            .iter()
            .map(|d| ((d.minute_ms - base) / MINUTE_MS, d.state.as_str(), d.reason))
            .collect();
        assert_eq!(
            states,
            vec![
                (0, "available", ""),
                (1, "degraded", "thermal"),
                (2, "available", ""),
                (3, "down", "gpu_down"),
                (4, "unknown", "no_data"),
                (5, "unknown", "no_data"),
                (6, "unknown", "no_data"),
                (7, "available", ""),
            ]
        );
    }

    #[test]
    fn a_down_minute_gives_the_agents_reason_or_the_xid() {
        let base = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;
        // (code sent with gpu_up 0, XID counter rising this long before
        // the GPU went down, reason wanted)
        for (code, xid_before, want) in [
            (None, None, "gpu_down"),
            (Some(1.0), None, "lost"),
            (Some(2.0), None, "reset_required"),
            (Some(4.0), None, "no_permission"),
            (Some(13.0), None, "no_answer"),
            (Some(3.0), None, "nvml_error"),
            (Some(0.0), None, "gpu_down"),
            (Some(999.0), None, "gpu_down"),
            (Some(2.0), Some(20_000), "xid"),
            // An XID long before it went down did not take it out.
            (Some(2.0), Some(2 * XID_TOOK_IT_OUT_MS), "reset_required"),
        ] {
            let mut t = Tracker::default();
            let mut ticks: Vec<(i64, Vec<(Quantity, f64)>)> = Vec::new();
            // Up for three minutes, down from minute 3 on.
            for s in (0..300).step_by(5) {
                let ts = base + s * 1000;
                let down = s >= 180;
                let mut rs = vec![(Quantity::GpuUp, if down { 0.0 } else { 1.0 })];
                if down {
                    if let Some(c) = code {
                        rs.insert(0, (Quantity::GpuDownReasonCode, c));
                    }
                }
                let xid = match xid_before {
                    Some(b) if s * 1000 >= 180_000 - b => 1.0,
                    _ => 0.0,
                };
                rs.insert(0, (Quantity::XidErrorsTotal, xid));
                ticks.push((ts, rs));
            }
            let refs: Vec<(i64, &[(Quantity, f64)])> =
                ticks.iter().map(|(t, v)| (*t, v.as_slice())).collect();
            let out = run(&mut t, &refs);
            let got: Vec<(i64, &str)> = out
                .iter()
                .filter(|d| d.state == DeliveryState::Down)
                .map(|d| ((d.minute_ms - base) / MINUTE_MS, d.reason))
                .collect();
            assert_eq!(got, vec![(3, want)], "{code:?} {xid_before:?}");
        }
    }

    #[test]
    fn a_cap_counts_only_below_the_default_limit() {
        let base = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;
        for (limit, want) in [(700.0, "available"), (500.0, "degraded")] {
            let mut t = Tracker::default();
            let mut ticks = Vec::new();
            for s in (0..=60).step_by(5) {
                ticks.push((
                    base + s * 1000,
                    vec![
                        (Quantity::PowerDefaultLimitWatts, 700.0),
                        (Quantity::PowerLimitWatts, limit),
                        (Quantity::ThrottleSwPowerCap, 1.0),
                    ],
                ));
            }
            let refs: Vec<(i64, &[(Quantity, f64)])> =
                ticks.iter().map(|(t, v)| (*t, v.as_slice())).collect();
            let out = run(&mut t, &refs);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].state.as_str(), want, "limit {limit}");
        }
    }

    #[test]
    fn a_tracker_persisted_mid_minute_goes_on_the_same() {
        let base = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;
        let steady: &[(Quantity, f64)] = &[
            (Quantity::GpuUp, 1.0),
            (Quantity::PowerLimitWatts, 700.0),
            (Quantity::PowerDefaultLimitWatts, 700.0),
            (Quantity::ThrottleSwPowerCap, 1.0),
            (Quantity::ThrottleHwThermalSlowdown, 0.0),
        ];
        let hot: &[(Quantity, f64)] = &[(Quantity::ThrottleHwThermalSlowdown, 1.0)];
        let first: Vec<(i64, &[(Quantity, f64)])> = (0..9)
            .map(|k| (base + k * 5_000, if k > 4 { hot } else { steady }))
            .collect();
        let rest: Vec<(i64, &[(Quantity, f64)])> =
            (9..30).map(|k| (base + k * 5_000, steady)).collect();
        let mut t = Tracker::default();
        run(&mut t, &first);
        let json = serde_json::to_string(&t).unwrap();
        // Small: it is written with the GPU's state at every batch.
        assert!(json.len() < 200, "{} bytes: {json}", json.len());
        let mut back: Tracker = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(run(&mut back, &rest), run(&mut t, &rest));
    }

    #[test]
    fn bad_sla_keys_are_refused_by_name() {
        let token = "0".repeat(64);
        for (text, key) in [
            ("[sla]\ndegraded_share = 1.5\n".to_owned(), "sla.degraded_share"),
            ("[sla]\ndown_share = -1\n".to_owned(), "sla.down_share"),
            ("[sla]\nsilence_after = \"2d\"\n".to_owned(), "sla.silence_after"),
            (
                "[[power_events]]\nzone = \"nowhere\"\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2026-01-01T01:00:00Z\"\n".to_owned(),
                "power_events[0].zone",
            ),
            (
                "[[power_events]]\nfrom = \"2026-01-01T01:00:00Z\"\nto = \"2026-01-01T00:00:00Z\"\n".to_owned(),
                "power_events[0].to",
            ),
            (
                "[[power_events]]\nfrom = \"yesterday\"\nto = \"2026-01-01T00:00:00Z\"\n".to_owned(),
                "power_events[0].from",
            ),
            (
                "[[power_events]]\nfrom = \"2026-01-01T00:00:00Z\"\nto = \"2026-03-01T00:00:00Z\"\n".to_owned(),
                "power_events[0].to",
            ),
            (
                format!("[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{token}\"\navailability_target = 1.2\n"),
                "tenants[0].availability_target",
            ),
            (
                format!("[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{token}\"\navailability_target = 0\n"),
                "tenants[0].availability_target",
            ),
        ] {
            let e = crate::config::Config::from_toml(&text)
                .unwrap()
                .build()
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let ok = format!(
            "[sla]\ndegraded_share = 0.2\n[[tenants]]\nid = \"lab-a\"\ntoken_sha256 = \"{token}\"\navailability_target = 0.995\n"
        );
        let site = crate::config::Config::from_toml(&ok)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(site.availability_targets.get("lab-a"), Some(&0.995));
        assert_eq!(site.sla.degraded_share, 0.2);
        // Unknown keys and bad durations are refused too.
        assert!(crate::config::Config::from_toml("[sla]\nshare = 0.2\n").is_err());
        let e = crate::config::Config::from_toml("[sla]\nsilence_after = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("silence_after"), "{e}");
    }

    #[test]
    fn shares_outside_0_1_are_refused() {
        for bad in [-0.1, 1.0, f64::NAN] {
            let c = SlaConfig {
                degraded_share: bad,
                ..SlaConfig::default()
            };
            assert_eq!(c.validate().unwrap_err().0, "degraded_share");
        }
    }
}
