//! Hall-wide routes: `GET /metrics`, `/v1/summary`, `/v1/pue` and
//! `/v1/reports/efficiency`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as Extract};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcwatt_wire::time::now_ms;
use serde::{Deserialize, Serialize};

use super::auth::{HallAuth, ScrapeAuth};
use super::query::parse_period;
use super::{read, ApiError};
use dcwatt_wire::time::DAY_MS;

use crate::app::Collector;
use crate::figures::Figures;
use crate::store::Resolution;
use crate::windows;

pub(super) async fn metrics(
    Extract(collector): Extract<Arc<Collector>>,
    _: ScrapeAuth,
) -> Response {
    // A hall's exposition takes tens of milliseconds to write: off the async
    // workers, so that ingest keeps being served meanwhile.
    let rendered = tokio::task::spawn_blocking(move || collector.render_metrics(now_ms())).await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, dcwatt_expo::CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// One meter in the summary.
#[derive(Serialize)]
struct MeterView<'a> {
    id: &'a str,
    role: &'static str,
    zone: &'a str,
    category: Option<u8>,
    power_watts: Option<f64>,
    energy_joules: f64,
    /// A water meter's volume, m³ (its energy_joules is 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    water_cubic_meters: Option<f64>,
    energy_from_ms: Option<i64>,
    energy_to_ms: Option<i64>,
    last_ms: Option<i64>,
    fresh: bool,
    resets: u64,
    last_reset: Option<ResetView>,
    gaps: u64,
    /// Events by kind (`gap`, `reset`, `swap`, `power_gap`, `glitch`), as
    /// `dcwatt_meter_events_total` counts them.
    events: std::collections::BTreeMap<&'static str, u64>,
    /// The last swap (a replaced meter): the last reading before it and the
    /// reading it was rebased at.
    last_swap: Option<ResetView>,
}

#[derive(Serialize)]
struct ResetView {
    before_ms: i64,
    after_ms: i64,
}

#[derive(Serialize)]
struct GpuView<'a> {
    node: &'a str,
    index: u32,
    uuid: &'a str,
    model: &'a str,
    temperature_celsius: f64,
    power_watts: Option<f64>,
}

#[derive(Serialize)]
struct AgentView<'a> {
    id: &'a str,
    last_seq: u64,
    last_seen_ms: i64,
}

#[derive(Serialize)]
struct GpuTotals {
    count: usize,
    reporting: usize,
    power_watts: f64,
    energy_joules: f64,
    counter_resets: u64,
}

#[derive(Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    figures: &'a Figures,
    meters: Vec<MeterView<'a>>,
    gpus: GpuTotals,
    hottest_gpus: Vec<GpuView<'a>>,
    thermal_excursions: Vec<crate::state::OpenExcursion>,
    agents: Vec<AgentView<'a>>,
}

/// `from` and `to` of `GET /v1/pue`: RFC 3339 (`2026-11-01T00:00:00Z`) or Unix ms.
#[derive(Deserialize)]
pub(super) struct PeriodQuery {
    from: String,
    to: String,
}

/// The PUE over `[from, to)`, by minute or hour (operator only).
pub(super) async fn pue_period(
    Extract(collector): Extract<Arc<Collector>>,
    _: HallAuth,
    query: Result<Query<PeriodQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return ApiError::bad_request(format!("query: {e}")).into_response(),
    };
    let (from, to) = match parse_period(&q.from, &q.to) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    // Minutes while they are kept and the span is short; hours otherwise.
    let minutes_kept = now_ms() - crate::store::MINUTE_RETENTION_MS;
    let resolution = if to - from <= 2 * DAY_MS && from >= minutes_kept {
        Resolution::Minute
    } else {
        Resolution::Hour
    };
    let step = resolution.ms();
    let (from, to) = (resolution.floor(from), resolution.floor(to + step - 1));
    let s = Arc::clone(&collector);
    match read(&collector, move |store| {
        windows::period(store, s.site(), from, to, resolution)
    })
    .await
    {
        Ok(p) => Json(p).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/reports/efficiency` query: `from`, `to` (dates, or RFC 3339 /
/// Unix ms at UTC midnights), `zone`, `format` (json, csv, html).
#[derive(Deserialize)]
pub(super) struct EfficiencyQuery {
    from: String,
    to: String,
    zone: Option<String>,
    format: Option<String>,
}

/// The efficiency report over `[from, to)` (operator only).
pub(super) async fn efficiency_report(
    Extract(collector): Extract<Arc<Collector>>,
    _: HallAuth,
    query: Result<Query<EfficiencyQuery>, QueryRejection>,
) -> Response {
    use crate::efficiency::{self, ReportError};
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return ApiError::bad_request(format!("query: {e}")).into_response(),
    };
    let format = q.format.unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "csv" | "html") {
        return ApiError::bad_request("format: must be json, csv or html").into_response();
    }
    let period = efficiency::parse_day("from", &q.from).and_then(|from| {
        let to = efficiency::parse_day("to", &q.to)?;
        efficiency::check_period(from, to).map(|()| (from, to))
    });
    let (from, to) = match period {
        Ok(p) => p,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let s = Arc::clone(&collector);
    let zone = q.zone;
    let found = read(&collector, move |store| {
        Ok(efficiency::report(
            store,
            s.site(),
            from,
            to,
            zone.as_deref(),
            now_ms(),
        ))
    })
    .await;
    let report = match found {
        Ok(Ok(r)) => r,
        Ok(Err(ReportError::Invalid(key, why))) => {
            return ApiError::bad_request(format!("{key}: {why}")).into_response()
        }
        Ok(Err(ReportError::Store(e))) => {
            return ApiError::unavailable(format!("store: {e}")).into_response()
        }
        Err(e) => return e.into_response(),
    };
    match format.as_str() {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            report.to_csv(),
        )
            .into_response(),
        "html" => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::efficiency_html::render(&report),
        )
            .into_response(),
        _ => Json(report).into_response(),
    }
}

pub(super) async fn summary(Extract(collector): Extract<Arc<Collector>>, _: HallAuth) -> Response {
    let site = collector.site();
    let now = now_ms();
    let state = collector.lock();
    let figures = collector.figures(&state, now);
    let fresh = |t: i64| now - t <= site.stale_after_ms;
    let meters = state
        .meters
        .iter()
        .map(|(id, m)| MeterView {
            id,
            role: m.meter.role.as_str(),
            zone: &m.meter.zone,
            category: m.meter.it_point.map(|p| p.category()),
            power_watts: m.acc.power.map(|(_, w)| w),
            energy_joules: m.energy_joules(),
            water_cubic_meters: m.water_cubic_meters(),
            energy_from_ms: m.acc.energy_from_ms,
            energy_to_ms: m.acc.energy_to_ms,
            last_ms: m.acc.last_ms,
            fresh: m.acc.last_ms.is_some_and(fresh),
            resets: m.acc.resets,
            last_reset: m.acc.last_reset.map(|(before_ms, after_ms)| ResetView {
                before_ms,
                after_ms,
            }),
            gaps: m.acc.gaps,
            events: [
                ("gap", m.acc.counter_gaps),
                ("reset", m.acc.resets),
                ("swap", m.acc.swaps),
                ("power_gap", m.acc.gaps),
                ("glitch", m.acc.glitches),
            ]
            .into_iter()
            .collect(),
            last_swap: m.acc.last_swap.map(|(before_ms, after_ms)| ResetView {
                before_ms,
                after_ms,
            }),
        })
        .collect();
    let mut hottest: Vec<GpuView> = state
        .gpus
        .iter()
        .filter_map(|(uuid, g)| {
            let (t, temp) = g.temperature?;
            fresh(t).then_some(GpuView {
                node: &g.node,
                index: g.index,
                uuid,
                model: &g.model,
                temperature_celsius: temp,
                power_watts: g.power.map(|(_, w)| w),
            })
        })
        .collect();
    hottest.sort_by(|a, b| b.temperature_celsius.total_cmp(&a.temperature_celsius));
    hottest.truncate(5);
    let gpus = GpuTotals {
        count: state.gpus.len(),
        reporting: state.gpus.values().filter(|g| fresh(g.last_ms)).count(),
        power_watts: state
            .gpus
            .values()
            .filter_map(|g| g.power)
            .filter(|(t, _)| fresh(*t))
            .map(|(_, w)| w)
            .sum(),
        energy_joules: state.gpu_totals().0,
        counter_resets: state.gpu_totals().1,
    };
    let agents = state
        .agents
        .iter()
        .map(|(id, a)| AgentView {
            id,
            last_seq: a.last_seq,
            last_seen_ms: a.last_seen_ms,
        })
        .collect();
    let thermal_excursions = state.open_excursions(site);
    Json(Summary {
        figures: &figures,
        meters,
        gpus,
        hottest_gpus: hottest,
        thermal_excursions,
        agents,
    })
    .into_response()
}
