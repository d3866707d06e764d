//! Tenant routes: `GET /v1/tenants/{tenant}/energy`, `/statement` and
//! `/excursions`, read by the operator or by the tenant itself
//! ([`TenantAuth`]).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as Extract};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcwatt_wire::time::now_ms;
use serde::{Deserialize, Serialize};

use super::auth::TenantAuth;
use super::query::{parse_period, parse_step, MAX_EXCURSIONS};
use super::{read, ApiError};
use crate::app::Collector;

/// The query of a tenant route parsed, and its `from`/`to` instants (400).
fn with_period<Q>(
    query: Result<Query<Q>, QueryRejection>,
    period: impl Fn(&Q) -> (&String, &String),
) -> Result<(Q, i64, i64), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let (from, to) = period(&q);
    let (from, to) = parse_period(from, to)?;
    Ok((q, from, to))
}

/// `format` of a tenant route: JSON (false, the default) or CSV (true).
fn csv_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "format: {other:?} is neither json nor csv"
        ))),
    }
}

/// `GET /v1/tenants/{tenant}/excursions` query.
#[derive(Deserialize)]
pub(super) struct PeriodOnly {
    from: String,
    to: String,
}

/// The thermal excursions of a tenant's leased GPUs that started in `[from, to)`.
pub(super) async fn excursions(
    Extract(collector): Extract<Arc<Collector>>,
    TenantAuth(tenant): TenantAuth,
    query: Result<Query<PeriodOnly>, QueryRejection>,
) -> Response {
    let (_, from, to) = match with_period(query, |q: &PeriodOnly| (&q.from, &q.to)) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let t = tenant.clone();
    let found = read(&collector, move |store| {
        store.excursions(Some(&t), from, to, MAX_EXCURSIONS + 1)
    })
    .await;
    match found {
        Ok(list) if list.len() > MAX_EXCURSIONS => ApiError::bad_request(format!(
            "to: more than {MAX_EXCURSIONS} excursions started in the period; ask for a shorter one"
        ))
        .into_response(),
        Ok(list) => {
            Json(serde_json::json!({ "tenant": tenant, "excursions": list })).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/tenants/{tenant}/energy` query.
#[derive(Deserialize)]
pub(super) struct EnergyQuery {
    from: String,
    to: String,
    step: Option<String>,
    format: Option<String>,
}

/// One step of a tenant's energy.
#[derive(Serialize, Default, Clone)]
struct EnergyStep {
    from_ms: i64,
    to_ms: i64,
    it_joules: f64,
    facility_joules: f64,
    gpu_seconds: f64,
    rows: usize,
    rows_without_pue: usize,
    late_rows: usize,
    /// Mean GPU utilization, weighted by leased GPU time.
    mean_utilization: Option<f64>,
    /// The highest per-minute peak power (Σ of its GPUs' peaks), W.
    peak_watts: Option<f64>,
    thermal_excursions: i64,
    /// Of `it_joules`: the share of metered nodes' energy beyond their GPUs.
    node_joules: f64,
    /// Of `it_joules`: the share of superchip modules' energy beyond their GPUs.
    module_joules: f64,
    /// GPU energy while idle (SM activity below the threshold), J; absent
    /// without GPM.
    idle_joules: Option<f64>,
    #[serde(skip)]
    util_weight: (f64, f64),
}

impl EnergyStep {
    /// Adds one ledger row.
    fn add(&mut self, r: &crate::store::ledger::Row) {
        self.it_joules += r.it_joules;
        self.facility_joules += r.facility_joules.unwrap_or(0.0);
        self.gpu_seconds += r.gpu_ms as f64 / 1000.0;
        self.rows += 1;
        self.rows_without_pue += usize::from(r.pue.is_none());
        self.late_rows += usize::from(r.late);
        if let Some(u) = r.util_mean {
            let w = r.gpu_ms.max(1) as f64;
            self.util_weight.0 += u * w;
            self.util_weight.1 += w;
            self.mean_utilization = Some(self.util_weight.0 / self.util_weight.1);
        }
        if let Some(p) = r.peak_watts {
            self.peak_watts = Some(self.peak_watts.map_or(p, |q| q.max(p)));
        }
        self.thermal_excursions += r.excursions;
        self.node_joules += r.node_joules.unwrap_or(0.0);
        self.module_joules += r.module_joules.unwrap_or(0.0);
        if let Some(j) = r.idle_joules {
            *self.idle_joules.get_or_insert(0.0) += j;
        }
    }
}

pub(super) async fn energy(
    Extract(collector): Extract<Arc<Collector>>,
    TenantAuth(tenant): TenantAuth,
    query: Result<Query<EnergyQuery>, QueryRejection>,
) -> Response {
    let (q, from, to) = match with_period(query, |q: &EnergyQuery| (&q.from, &q.to)) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let step = match parse_step(q.step.as_deref(), to - from) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let csv = match csv_format(q.format.as_deref()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mut steps: Vec<EnergyStep> = Vec::new();
    let mut t = from;
    while t < to {
        steps.push(EnergyStep {
            from_ms: t,
            to_ms: t.saturating_add(step).min(to),
            ..EnergyStep::default()
        });
        t = t.saturating_add(step);
    }
    // Rows are folded into their step as they are read: memory is the steps'.
    let t = tenant.clone();
    let found = read(&collector, move |store| {
        store.for_each_tenant_row(&t, from, to, |r| {
            let i = usize::try_from((r.minute_ms - from) / step).unwrap_or(0);
            if let Some(s) = steps.get_mut(i) {
                s.add(&r);
            }
        })?;
        Ok((steps, store.ledger_head()?))
    })
    .await;
    let (steps, head) = match found {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if csv {
        let mut out = String::from(
            "from_ms,to_ms,it_joules,facility_joules,gpu_seconds,rows,rows_without_pue,late_rows,mean_utilization,peak_watts,thermal_excursions,node_joules,module_joules,idle_joules\n",
        );
        for s in &steps {
            out += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                s.from_ms,
                s.to_ms,
                s.it_joules,
                s.facility_joules,
                s.gpu_seconds,
                s.rows,
                s.rows_without_pue,
                s.late_rows,
                s.mean_utilization.map_or(String::new(), |u| u.to_string()),
                s.peak_watts.map_or(String::new(), |p| p.to_string()),
                s.thermal_excursions,
                s.node_joules,
                s.module_joules,
                s.idle_joules.map_or(String::new(), |j| j.to_string())
            );
        }
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
    }
    Json(serde_json::json!({
        "tenant": tenant,
        "from_ms": from,
        "to_ms": to,
        "step_ms": step,
        "ledger_head": head,
        "steps": steps,
    }))
    .into_response()
}

/// `GET /v1/tenants/{tenant}/statement` query.
#[derive(Deserialize)]
pub(super) struct StatementQuery {
    month: String,
    format: Option<String>,
}

pub(super) async fn statement(
    Extract(collector): Extract<Arc<Collector>>,
    TenantAuth(tenant): TenantAuth,
    query: Result<Query<StatementQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return ApiError::bad_request(format!("query: {e}")).into_response(),
    };
    let csv = match csv_format(q.format.as_deref()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (s, t, month) = (Arc::clone(&collector), tenant.clone(), q.month.clone());
    let result = read(&collector, move |store| {
        crate::statement::statement(store, s.site(), &t, &month, now_ms())
    })
    .await;
    match result {
        Ok(Some(s)) if csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            s.to_csv(),
        )
            .into_response(),
        Ok(Some(s)) => Json(s).into_response(),
        Ok(None) => {
            ApiError::bad_request(format!("month: {:?} is not YYYY-MM", q.month)).into_response()
        }
        Err(e) => e.into_response(),
    }
}
