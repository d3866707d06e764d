//! A tenant's monthly statement, from the ledger and the stored energies:
//! totals, a daily breakdown with each day's PUE (category, coverage), the
//! stretches of leased time with nothing booked, and the ledger head hash at
//! the time of issue, and the tenant's rows with their RFC 9162 inclusion
//! proofs against a signed checkpoint (`proofs`; JSON only), which
//! `dcwatt-verify` checks. `GET /v1/tenants/{tenant}/statement` and
//! `dcwatt-collector report` both produce it, so the two agree. A tenant
//! leasing nodes in several halls (one collector each) gets one [`Combined`]
//! statement from `dcwatt-collector report --config A --config B …`.

use serde::Serialize;

use dcwatt_wire::time::{civil_from_days, days_from_civil, month_of, DAY_MS, HOUR_MS, MINUTE_MS};

use crate::site::Site;
use crate::store::{Resolution, Store, StoreError};
use crate::windows;

/// `YYYY-MM` → the month's `[from, to)` in Unix ms, UTC.
pub fn month_range(month: &str) -> Option<(i64, i64)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i64, i64) = (y.parse().ok()?, m.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    Some(month_of(days_from_civil(y, m, 1) * DAY_MS))
}

/// One day of a statement.
#[derive(Debug, Clone, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// IT energy booked, J.
    pub it_joules: f64,
    /// Facility-burdened energy booked, J.
    pub facility_joules: f64,
    /// GPU-hours leased.
    pub gpu_hours: f64,
    /// The site's PUE of the day.
    pub pue: Option<f64>,
    /// Its ISO/IEC 30134-2 category.
    pub category: Option<u8>,
    /// Complete minutes / minutes of the day.
    pub coverage_ratio: f64,
    /// Every minute of the day complete.
    pub pue_complete: bool,
    /// Ledger rows without a PUE (facility energy not burdened).
    pub rows_without_pue: usize,
}

/// Leased time with nothing booked.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
}

/// A tenant's statement for one month.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    /// The tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// When it was issued, Unix ms.
    pub issued_ms: i64,
    /// The ledger head hash when it was issued.
    pub ledger_head: String,
    /// IT energy, kWh.
    pub it_kwh: f64,
    /// Facility-burdened energy, kWh.
    pub facility_kwh: f64,
    /// GPU-hours leased.
    pub gpu_hours: f64,
    /// Rows booked after their minute had been booked (late data).
    pub late_rows: usize,
    /// Per day, up to the day of issue.
    pub days: Vec<Day>,
    /// Leased time with no booked row (minutes not yet booked excluded).
    pub gaps: Vec<Gap>,
    /// GPU service levels: leased GPU-minutes per delivery state,
    /// availability against the tenant's target, incidents (absent when no
    /// row of the month has delivery data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::delivery::Service>,
    /// GPU activity (SM, tensor), idle energy and energy beyond the GPUs
    /// (module, node) of the month (absent when no row carries any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<dcwatt_verify::activity::Activity>,
    /// The month's rows, each with its leaf index and inclusion proof, and
    /// the signed checkpoint they are proven against. Only this tenant's rows
    /// appear; other rows enter only as hashes inside the proofs.
    pub proofs: dcwatt_verify::check::Proofs,
}

/// Builds the statement of `tenant` for `month` (`YYYY-MM`) as of `now_ms`.
pub fn statement(
    store: &Store,
    site: &Site,
    tenant: &str,
    month: &str,
    now_ms: i64,
) -> Result<Option<Statement>, StoreError> {
    let Some((from, to)) = month_range(month) else {
        return Ok(None);
    };
    let mut rows = store.tenant_rows(tenant, from, to)?;
    let service = crate::store::delivery::service(store, site, tenant, from, to, &mut rows)?;
    let booked_until = (now_ms - MINUTE_MS - site.close_after_ms).div_euclid(MINUTE_MS) * MINUTE_MS;
    let mut days = Vec::new();
    let mut day = from;
    while day < to && day <= now_ms {
        let (y, m, d) = civil_from_days(day / DAY_MS);
        let in_day = rows
            .iter()
            .filter(|r| r.minute_ms >= day && r.minute_ms < day + DAY_MS);
        let (mut it, mut fac, mut ms, mut no_pue) = (0.0, 0.0, 0i64, 0usize);
        for r in in_day {
            it += r.it_joules;
            fac += r.facility_joules.unwrap_or(0.0);
            ms += r.gpu_ms;
            no_pue += usize::from(r.pue.is_none());
        }
        let p = windows::period(store, site, day, day + DAY_MS, Resolution::Hour)?;
        days.push(Day {
            date: format!("{y:04}-{m:02}-{d:02}"),
            it_joules: it,
            facility_joules: fac,
            gpu_hours: ms as f64 / HOUR_MS as f64,
            pue: p.pue,
            category: p.category,
            coverage_ratio: p.coverage_ratio,
            pue_complete: p.complete,
            rows_without_pue: no_pue,
        });
        day += DAY_MS;
    }
    // Leased minutes (by any of the tenant's leases) with no row, up to what is booked.
    let leases = site.leases.snapshot();
    let leased: Vec<(i64, i64)> = leases
        .all()
        .iter()
        .filter(|l| l.tenant == tenant)
        .map(|l| (l.from_ms.max(from), l.to_ms.min(to).min(booked_until)))
        .filter(|(a, b)| a < b)
        .collect();
    let proofs = store.statement_proofs(&rows, to)?;
    let booked: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.minute_ms).collect();
    let mut gaps: Vec<Gap> = Vec::new();
    let mut minute = from;
    while minute < to.min(booked_until) {
        let is_leased = leased
            .iter()
            .any(|(a, b)| *a <= minute && minute + MINUTE_MS <= *b);
        if is_leased && !booked.contains(&minute) {
            match gaps.last_mut() {
                Some(g) if g.to_ms == minute => g.to_ms += MINUTE_MS,
                _ => gaps.push(Gap {
                    from_ms: minute,
                    to_ms: minute + MINUTE_MS,
                }),
            }
        }
        minute += MINUTE_MS;
    }
    Ok(Some(Statement {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        issued_ms: now_ms,
        ledger_head: store.ledger_head()?,
        it_kwh: days.iter().map(|d| d.it_joules).sum::<f64>() / 3.6e6,
        facility_kwh: days.iter().map(|d| d.facility_joules).sum::<f64>() / 3.6e6,
        gpu_hours: days.iter().map(|d| d.gpu_hours).sum(),
        late_rows: rows.iter().filter(|r| r.late).count(),
        days,
        gaps,
        service,
        activity: dcwatt_verify::activity::Activity::of_rows(&rows),
        proofs,
    }))
}

impl Statement {
    /// The daily breakdown as CSV, a totals line last.
    pub fn to_csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut out = String::from(
            "date,it_kwh,facility_kwh,gpu_hours,pue,category,pue_coverage_ratio,pue_complete,rows_without_pue\n",
        );
        for d in &self.days {
            out += &format!(
                "{},{},{},{},{},{},{},{},{}\n",
                d.date,
                d.it_joules / 3.6e6,
                d.facility_joules / 3.6e6,
                d.gpu_hours,
                opt(d.pue),
                d.category.map(|c| c.to_string()).unwrap_or_default(),
                d.coverage_ratio,
                d.pue_complete,
                d.rows_without_pue
            );
        }
        out += &format!(
            "total,{},{},{},,,,,\n# tenant {} month {} ledger head {} gaps {}\n",
            self.it_kwh,
            self.facility_kwh,
            self.gpu_hours,
            self.tenant,
            self.month,
            self.ledger_head,
            self.gaps.len()
        );
        if let Some(a) = &self.activity {
            out += &crate::store::modules::activity_csv(a);
        }
        if let Some(s) = &self.service {
            out += &s.to_csv();
        }
        out
    }
}

/// One day of a [`Combined`] statement: the halls' days added up (each
/// hall's PUE stays in its own statement: the halls' PUEs differ).
#[derive(Debug, Clone, Serialize)]
pub struct CombinedDay {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// IT energy booked in every hall, J.
    pub it_joules: f64,
    /// Facility-burdened energy booked in every hall, J.
    pub facility_joules: f64,
    /// GPU-hours leased in every hall.
    pub gpu_hours: f64,
    /// Ledger rows without a PUE, in every hall.
    pub rows_without_pue: usize,
}

/// One hall's part of a [`Combined`] statement: its own statement.
#[derive(Debug, Clone, Serialize)]
pub struct HallStatement {
    /// The collector configuration it was read with.
    pub config: String,
    /// The hall's statement, as `report` with that configuration alone gives it.
    #[serde(flatten)]
    pub statement: Statement,
}

/// A tenant's statement for one month across several halls: the totals and
/// days are the sums of the halls' rows; each hall's statement (ledger head,
/// gaps, PUE per day) is kept whole in `halls`.
#[derive(Debug, Clone, Serialize)]
pub struct Combined {
    /// The tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// When it was issued, Unix ms.
    pub issued_ms: i64,
    /// IT energy of every hall, kWh.
    pub it_kwh: f64,
    /// Facility-burdened energy of every hall, kWh.
    pub facility_kwh: f64,
    /// GPU-hours leased in every hall.
    pub gpu_hours: f64,
    /// Late rows in every hall.
    pub late_rows: usize,
    /// Per day, every hall's rows added.
    pub days: Vec<CombinedDay>,
    /// GPU service levels of every hall added up (absent when no hall has
    /// any): see [`crate::delivery::combine_service`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::delivery::CombinedService>,
    /// GPU activity, idle and module energy of every hall's rows together:
    /// SM and tensor activity means weighted by each row's GPU time, idle,
    /// module and node energy summed (absent when no hall's row carries
    /// any). The same definition as one hall's `activity`, over the rows of
    /// all halls (each hall's statement lists them in `proofs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activity: Option<dcwatt_verify::activity::Activity>,
    /// Each hall's own statement, in the order given.
    pub halls: Vec<HallStatement>,
}

/// Merges the statements of one tenant and month from several halls.
pub fn combine(tenant: &str, month: &str, issued_ms: i64, halls: Vec<HallStatement>) -> Combined {
    let mut days: std::collections::BTreeMap<String, CombinedDay> = Default::default();
    for h in &halls {
        for d in &h.statement.days {
            let day = days.entry(d.date.clone()).or_insert_with(|| CombinedDay {
                date: d.date.clone(),
                it_joules: 0.0,
                facility_joules: 0.0,
                gpu_hours: 0.0,
                rows_without_pue: 0,
            });
            day.it_joules += d.it_joules;
            day.facility_joules += d.facility_joules;
            day.gpu_hours += d.gpu_hours;
            day.rows_without_pue += d.rows_without_pue;
        }
    }
    let days: Vec<CombinedDay> = days.into_values().collect();
    let service = crate::delivery::combine_service(
        halls
            .iter()
            .filter_map(|h| Some((h.config.as_str(), h.statement.service.as_ref()?))),
    );
    let activity = dcwatt_verify::activity::Activity::of_rows(
        halls
            .iter()
            .flat_map(|h| h.statement.proofs.rows.iter().map(|p| &p.row)),
    );
    Combined {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        issued_ms,
        it_kwh: days.iter().map(|d| d.it_joules).sum::<f64>() / 3.6e6,
        facility_kwh: days.iter().map(|d| d.facility_joules).sum::<f64>() / 3.6e6,
        gpu_hours: days.iter().map(|d| d.gpu_hours).sum(),
        late_rows: halls.iter().map(|h| h.statement.late_rows).sum(),
        days,
        service,
        activity,
        halls,
    }
}

impl Combined {
    /// The daily sums as CSV, a totals line, then one comment line per hall.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("date,it_kwh,facility_kwh,gpu_hours,rows_without_pue\n");
        for d in &self.days {
            out += &format!(
                "{},{},{},{},{}\n",
                d.date,
                d.it_joules / 3.6e6,
                d.facility_joules / 3.6e6,
                d.gpu_hours,
                d.rows_without_pue
            );
        }
        out += &format!(
            "total,{},{},{},\n# tenant {} month {} halls {}\n",
            self.it_kwh,
            self.facility_kwh,
            self.gpu_hours,
            self.tenant,
            self.month,
            self.halls.len()
        );
        for h in &self.halls {
            let s = &h.statement;
            out += &format!(
                "# hall {} it_kwh {} facility_kwh {} gpu_hours {} ledger head {} gaps {}\n",
                h.config,
                s.it_kwh,
                s.facility_kwh,
                s.gpu_hours,
                s.ledger_head,
                s.gaps.len()
            );
        }
        if let Some(a) = &self.activity {
            out += &crate::store::modules::activity_csv(a);
        }
        if let Some(sv) = &self.service {
            out += &sv.to_csv();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
        let (a, b) = month_range("2026-02").unwrap();
        assert_eq!((b - a) / DAY_MS, 28);
        let (a, b) = month_range("2028-12").unwrap();
        assert_eq!((b - a) / DAY_MS, 31);
        assert_eq!(civil_from_days(b / DAY_MS), (2029, 1, 1));
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"] {
            assert_eq!(month_range(bad), None, "{bad}");
        }
    }
}
