//! Thermal excursions: a GPU near its own limits, or a coolant distribution
//! unit (CDU) outside its envelope, for long enough to matter.
//!
//! Each (entity, [`Kind`]) is an [`Episode`] driven by the readings' own
//! timestamps, so a spool replayed after an outage yields the same excursions
//! as live delivery. A condition opens an excursion once it has held for
//! `min_duration`; it closes once the all-clear, below the limit by the
//! hysteresis, has held for `min_duration` too. A value between the two
//! levels changes nothing: no flapping on a reading that hovers at the limit.
//!
//! GPU limits are the GPU's own (slowdown and memory maximum, as NVML reports
//! them), never a fixed temperature. A GPU whose thresholds are unknown is not
//! judged on temperature; its throttle reasons still count.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use dcwatt_wire::time::MINUTE_MS;

/// What went out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Core temperature within the margin of the GPU's slowdown threshold.
    GpuTemperature,
    /// Memory temperature within the margin of the GPU's memory maximum.
    MemoryTemperature,
    /// NVML reports hardware or software thermal slowdown.
    ThermalSlowdown,
    /// CDU coolant supply temperature above its maximum.
    CoolantSupplyTemperature,
    /// CDU return − supply temperature outside its range.
    CoolantDeltaT,
    /// CDU coolant flow below its minimum.
    CoolantFlow,
}

impl Kind {
    /// Every kind, in label order.
    pub const ALL: [Kind; 6] = [
        Kind::GpuTemperature,
        Kind::MemoryTemperature,
        Kind::ThermalSlowdown,
        Kind::CoolantSupplyTemperature,
        Kind::CoolantDeltaT,
        Kind::CoolantFlow,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GpuTemperature => "gpu_temperature",
            Kind::MemoryTemperature => "memory_temperature",
            Kind::ThermalSlowdown => "thermal_slowdown",
            Kind::CoolantSupplyTemperature => "coolant_supply_temperature",
            Kind::CoolantDeltaT => "coolant_delta_t",
            Kind::CoolantFlow => "coolant_flow",
        }
    }

    /// Parses a label value.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The `[thermal]` section of the collector's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermalConfig {
    /// A GPU is in excursion at `slowdown threshold − margin` and above. Default 5 °C.
    #[serde(default = "default_margin")]
    pub gpu_margin_celsius: f64,
    /// Memory is in excursion at `memory maximum − margin` and above. Default 5 °C.
    #[serde(default = "default_margin")]
    pub memory_margin_celsius: f64,
    /// How far below the entry level a temperature must fall to clear. Default 2 °C.
    #[serde(default = "default_hysteresis")]
    pub hysteresis_celsius: f64,
    /// How long a condition, and then its all-clear, must hold. Default 30 s.
    #[serde(default = "default_min_duration", with = "humantime_serde")]
    pub min_duration: Duration,
    /// Coolant supply temperature limit. Default 45 °C (ASHRAE class W45).
    #[serde(default = "default_supply_max")]
    pub coolant_supply_max_celsius: f64,
    /// Largest return − supply difference before it is an excursion. Default 15 °C.
    #[serde(default = "default_delta_t_max")]
    pub coolant_delta_t_max_celsius: f64,
    /// Smallest return − supply difference, if checked (a bypass or a stopped load).
    #[serde(default)]
    pub coolant_delta_t_min_celsius: Option<f64>,
    /// Smallest coolant flow, m³/s, if checked.
    #[serde(default)]
    pub coolant_flow_min_cubic_meters_per_second: Option<f64>,
}

impl Default for ThermalConfig {
    fn default() -> Self {
        ThermalConfig {
            gpu_margin_celsius: default_margin(),
            memory_margin_celsius: default_margin(),
            hysteresis_celsius: default_hysteresis(),
            min_duration: default_min_duration(),
            coolant_supply_max_celsius: default_supply_max(),
            coolant_delta_t_max_celsius: default_delta_t_max(),
            coolant_delta_t_min_celsius: None,
            coolant_flow_min_cubic_meters_per_second: None,
        }
    }
}

fn default_margin() -> f64 {
    5.0
}
fn default_hysteresis() -> f64 {
    2.0
}
fn default_min_duration() -> Duration {
    Duration::from_secs(30)
}
fn default_supply_max() -> f64 {
    45.0
}
fn default_delta_t_max() -> f64 {
    15.0
}

impl ThermalConfig {
    /// Checks the values; the error names the key and says why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let temps = [
            ("gpu_margin_celsius", Some(self.gpu_margin_celsius)),
            ("memory_margin_celsius", Some(self.memory_margin_celsius)),
            ("hysteresis_celsius", Some(self.hysteresis_celsius)),
            (
                "coolant_delta_t_max_celsius",
                Some(self.coolant_delta_t_max_celsius),
            ),
            (
                "coolant_delta_t_min_celsius",
                self.coolant_delta_t_min_celsius,
            ),
            (
                "coolant_flow_min_cubic_meters_per_second",
                self.coolant_flow_min_cubic_meters_per_second,
            ),
        ];
        for (key, v) in temps {
            if let Some(v) = v {
                if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                    return Err((key.into(), format!("{v} must be a number from 0 to 100")));
                }
            }
        }
        if !(self.coolant_supply_max_celsius.is_finite()
            && (0.0..=100.0).contains(&self.coolant_supply_max_celsius))
        {
            return Err((
                "coolant_supply_max_celsius".into(),
                "must be a temperature from 0 to 100 °C".into(),
            ));
        }
        if let Some(min) = self.coolant_delta_t_min_celsius {
            if min >= self.coolant_delta_t_max_celsius {
                return Err((
                    "coolant_delta_t_min_celsius".into(),
                    format!(
                        "{min} must be below coolant_delta_t_max_celsius ({})",
                        self.coolant_delta_t_max_celsius
                    ),
                ));
            }
        }
        Ok(())
    }

    fn min_ms(&self) -> i64 {
        i64::try_from(self.min_duration.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Where a value stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Past the entry level.
    Out,
    /// Between the entry level and the all-clear level: no change.
    Between,
    /// Past the all-clear level.
    Clear,
}

/// Level of a value that is bad when high: out at `enter` and above, clear below `enter − hysteresis`.
fn high(v: f64, enter: f64, hysteresis: f64) -> Level {
    if v >= enter {
        Level::Out
    } else if v < enter - hysteresis {
        Level::Clear
    } else {
        Level::Between
    }
}

/// Level of a value that is bad when low: out below `enter`, clear at `enter + hysteresis` and above.
fn low(v: f64, enter: f64, hysteresis: f64) -> Level {
    if v < enter {
        Level::Out
    } else if v >= enter + hysteresis {
        Level::Clear
    } else {
        Level::Between
    }
}

/// One condition of one entity over time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Since when the condition has held, while not yet open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_ms: Option<i64>,
    /// When the open excursion started (the first reading out of range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<i64>,
    /// Since when the all-clear has held, while open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearing_ms: Option<i64>,
    /// The last reading judged.
    #[serde(default)]
    pub last_ms: i64,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// An excursion opened; it started at this instant.
    Opened(i64),
    /// The excursion that started at `.0` closed at `.1` (the first all-clear reading).
    Closed(i64, i64),
}

impl Episode {
    /// Whether an excursion is open.
    pub fn is_open(&self) -> bool {
        self.open_ms.is_some()
    }

    /// Judges one reading. Readings not newer than the last one are ignored.
    pub fn step(&mut self, ts: i64, level: Level, min_ms: i64) -> Option<Transition> {
        if ts <= self.last_ms {
            return None;
        }
        self.last_ms = ts;
        match (self.open_ms, level) {
            (None, Level::Out) => {
                let since = *self.pending_ms.get_or_insert(ts);
                if ts - since >= min_ms {
                    self.pending_ms = None;
                    self.open_ms = Some(since);
                    return Some(Transition::Opened(since));
                }
            }
            (None, _) => self.pending_ms = None,
            (Some(open), Level::Clear) => {
                let since = *self.clearing_ms.get_or_insert(ts);
                if ts - since >= min_ms {
                    self.clearing_ms = None;
                    self.open_ms = None;
                    return Some(Transition::Closed(open, since));
                }
            }
            (Some(_), _) => self.clearing_ms = None,
        }
        None
    }
}

/// The episodes of one entity, by kind.
pub type Episodes = BTreeMap<Kind, Episode>;

/// The latest thermal values of one GPU, each (Unix ms, value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuThermals {
    /// Memory temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_temperature: Option<(i64, f64)>,
    /// Slowdown threshold, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<(i64, f64)>,
    /// Memory maximum operating temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<(i64, f64)>,
    /// Hardware thermal slowdown flag (0/1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hw_thermal: Option<(i64, f64)>,
    /// Software thermal slowdown flag (0/1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_thermal: Option<(i64, f64)>,
    /// The episodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub episodes: Episodes,
}

/// The latest coolant values of one CDU, each (Unix ms, value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coolant {
    /// Supply temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supply: Option<(i64, f64)>,
    /// Return temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<(i64, f64)>,
    /// Flow, m³/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<(i64, f64)>,
    /// The episodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub episodes: Episodes,
}

impl Coolant {
    /// Whether it holds a reading or an episode.
    pub fn has_state(&self) -> bool {
        self.supply.is_some()
            || self.ret.is_some()
            || self.flow.is_some()
            || !self.episodes.is_empty()
    }
}

/// Readings older than this next to the one judged are not combined with it.
const PAIR_MS: i64 = MINUTE_MS;

fn fresh(v: Option<(i64, f64)>, ts: i64) -> Option<f64> {
    v.filter(|(t, _)| (ts - t).abs() <= PAIR_MS).map(|(_, x)| x)
}

/// Judges a GPU's latest values at `ts` (the instant of its newest reading).
pub fn judge_gpu(
    t: &mut GpuThermals,
    core: Option<(i64, f64)>,
    ts: i64,
    cfg: &ThermalConfig,
) -> Vec<(Kind, Transition)> {
    let h = cfg.hysteresis_celsius;
    let core_level = fresh(core, ts)
        .zip(fresh(t.slowdown, ts))
        .map(|(c, s)| high(c, s - cfg.gpu_margin_celsius, h));
    let mem_level = fresh(t.memory_temperature, ts)
        .zip(fresh(t.memory_max, ts))
        .map(|(m, max)| high(m, max - cfg.memory_margin_celsius, h));
    let flags = [fresh(t.hw_thermal, ts), fresh(t.sw_thermal, ts)];
    let slowdown_level = if flags.iter().any(|f| f.is_some_and(|v| v >= 0.5)) {
        Some(Level::Out)
    } else if flags.iter().any(Option::is_some) {
        Some(Level::Clear)
    } else {
        None
    };
    let judged = [
        (Kind::GpuTemperature, core_level),
        (Kind::MemoryTemperature, mem_level),
        (Kind::ThermalSlowdown, slowdown_level),
    ];
    step_all(&mut t.episodes, ts, &judged, cfg.min_ms())
}

/// Judges a CDU's latest coolant values at `ts`.
pub fn judge_coolant(c: &mut Coolant, ts: i64, cfg: &ThermalConfig) -> Vec<(Kind, Transition)> {
    let h = cfg.hysteresis_celsius;
    let supply = fresh(c.supply, ts);
    let supply_level = supply.map(|s| high(s, cfg.coolant_supply_max_celsius, h));
    let delta_level = supply.zip(fresh(c.ret, ts)).map(|(s, r)| {
        let dt = r - s;
        let over = high(dt, cfg.coolant_delta_t_max_celsius, h);
        let under = cfg
            .coolant_delta_t_min_celsius
            .map_or(Level::Clear, |min| low(dt, min, h));
        match (over, under) {
            (Level::Out, _) | (_, Level::Out) => Level::Out,
            (Level::Clear, Level::Clear) => Level::Clear,
            _ => Level::Between,
        }
    });
    let flow_level = cfg
        .coolant_flow_min_cubic_meters_per_second
        .zip(fresh(c.flow, ts))
        .map(|(min, f)| low(f, min, min * 0.05));
    let judged = [
        (Kind::CoolantSupplyTemperature, supply_level),
        (Kind::CoolantDeltaT, delta_level),
        (Kind::CoolantFlow, flow_level),
    ];
    step_all(&mut c.episodes, ts, &judged, cfg.min_ms())
}

fn step_all(
    episodes: &mut Episodes,
    ts: i64,
    judged: &[(Kind, Option<Level>)],
    min_ms: i64,
) -> Vec<(Kind, Transition)> {
    let mut out = Vec::new();
    for (kind, level) in judged {
        let Some(level) = level else { continue };
        let e = episodes.entry(*kind).or_default();
        if let Some(t) = e.step(ts, *level, min_ms) {
            out.push((*kind, t));
        }
        if *e == Episode::default() || (e.pending_ms.is_none() && !e.is_open()) {
            episodes.remove(kind);
        }
    }
    out
}

/// One excursion as the store books it and the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excursion {
    /// `gpu` or `meter`.
    pub entity_kind: &'static str,
    /// GPU UUID or meter id.
    pub entity: String,
    /// The node, for a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What went out of range.
    pub kind: Kind,
    /// The zone.
    pub zone: String,
    /// The tenant leasing the GPU when it started (`_unleased` when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it started, Unix ms.
    pub opened_ms: i64,
    /// When it ended, Unix ms; absent while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_opens_after_the_minimum_and_closes_after_the_all_clear_holds() {
        let mut e = Episode::default();
        let min = 30_000;
        assert_eq!(e.step(1_000, Level::Out, min), None);
        // Between the levels while pending: the streak starts again.
        assert_eq!(e.step(11_000, Level::Between, min), None);
        assert_eq!(e.step(21_000, Level::Out, min), None);
        assert_eq!(e.step(41_000, Level::Out, min), None);
        assert_eq!(
            e.step(51_000, Level::Out, min),
            Some(Transition::Opened(21_000))
        );
        // Between the levels: stays open, and an all-clear streak restarts.
        assert_eq!(e.step(61_000, Level::Clear, min), None);
        assert_eq!(e.step(71_000, Level::Between, min), None);
        assert_eq!(e.step(81_000, Level::Clear, min), None);
        assert_eq!(e.step(101_000, Level::Clear, min), None);
        // An older reading changes nothing.
        assert_eq!(e.step(90_000, Level::Out, min), None);
        assert_eq!(
            e.step(111_000, Level::Clear, min),
            Some(Transition::Closed(21_000, 81_000))
        );
        assert!(!e.is_open());
    }

    #[test]
    fn zero_minimum_opens_and_closes_at_once() {
        let mut e = Episode::default();
        assert_eq!(e.step(5, Level::Out, 0), Some(Transition::Opened(5)));
        assert_eq!(e.step(6, Level::Clear, 0), Some(Transition::Closed(5, 6)));
    }

    #[test]
    fn gpu_temperature_is_judged_against_its_own_threshold() {
        let cfg = ThermalConfig {
            min_duration: Duration::ZERO,
            ..ThermalConfig::default()
        };
        let mut t = GpuThermals {
            slowdown: Some((0, 90.0)),
            ..GpuThermals::default()
        };
        // 84.9 °C is fine for a GPU that slows down at 90 °C with a 5 °C margin…
        assert!(judge_gpu(&mut t, Some((1000, 84.9)), 1000, &cfg).is_empty());
        // …85 °C is not.
        assert_eq!(
            judge_gpu(&mut t, Some((2000, 85.0)), 2000, &cfg),
            vec![(Kind::GpuTemperature, Transition::Opened(2000))]
        );
        // 83.5 °C is within the hysteresis: still open; 82.9 °C clears.
        assert!(judge_gpu(&mut t, Some((3000, 83.5)), 3000, &cfg).is_empty());
        assert_eq!(
            judge_gpu(&mut t, Some((4000, 82.9)), 4000, &cfg),
            vec![(Kind::GpuTemperature, Transition::Closed(2000, 4000))]
        );
        // A GPU with another threshold: the same 85 °C is fine at a 95 °C slowdown.
        let mut other = GpuThermals {
            slowdown: Some((0, 95.0)),
            ..GpuThermals::default()
        };
        assert!(judge_gpu(&mut other, Some((1000, 85.0)), 1000, &cfg).is_empty());
        // No threshold known: not judged on temperature at all.
        let mut unknown = GpuThermals::default();
        assert!(judge_gpu(&mut unknown, Some((1000, 120.0)), 1000, &cfg).is_empty());
    }

    #[test]
    fn coolant_limits() {
        let cfg = ThermalConfig {
            min_duration: Duration::ZERO,
            coolant_flow_min_cubic_meters_per_second: Some(0.01),
            coolant_delta_t_min_celsius: Some(2.0),
            ..ThermalConfig::default()
        };
        let mut c = Coolant {
            supply: Some((1000, 46.0)),
            ret: Some((1000, 50.0)),
            flow: Some((1000, 0.02)),
            ..Coolant::default()
        };
        assert_eq!(
            judge_coolant(&mut c, 1000, &cfg),
            vec![(Kind::CoolantSupplyTemperature, Transition::Opened(1000))]
        );
        c.supply = Some((2000, 30.0));
        c.ret = Some((2000, 31.0)); // ΔT 1 °C: below the 2 °C minimum
        c.flow = Some((2000, 0.005));
        let got = judge_coolant(&mut c, 2000, &cfg);
        assert_eq!(
            got,
            vec![
                (
                    Kind::CoolantSupplyTemperature,
                    Transition::Closed(1000, 2000)
                ),
                (Kind::CoolantDeltaT, Transition::Opened(2000)),
                (Kind::CoolantFlow, Transition::Opened(2000)),
            ]
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let cfg = ThermalConfig {
            coolant_delta_t_min_celsius: Some(20.0),
            ..ThermalConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().0, "coolant_delta_t_min_celsius");
        let cfg = ThermalConfig {
            gpu_margin_celsius: f64::NAN,
            ..ThermalConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().0, "gpu_margin_celsius");
    }
}
