//! Prometheus exposition of the collector's aggregates (`GET /metrics`), rendered
//! from the live state at scrape time. Energies are exported as counters so that
//! `increase(facility) / increase(it)` gives the PUE of any window across any
//! number of collectors.
//!
//! Size: the whole Prometheus exposition, every family with its help text in
//! one place (the metric list reads top to bottom).

use dcwatt_expo::{encode, Family};

use crate::figures::Figures;
use crate::names as n;
use crate::site::Site;
use crate::state::State;

/// The collector's own families: the group commit's transactions and the
/// batches they held (their ratio is the mean group size), and the ingest
/// latency histogram.
pub fn self_families(
    commits: u64,
    batches: u64,
    latency: crate::latency::LatencySnapshot,
) -> Vec<Family> {
    let mut c = Family::counter(
        n::STORE_COMMITS_TOTAL,
        "Store transactions written by the group commit.",
    );
    c.add(&[], commits as f64);
    let mut b = Family::counter(
        n::STORE_COMMITTED_BATCHES_TOTAL,
        "Batches written by the group commit (÷ commits: the mean group size).",
    );
    b.add(&[], batches as f64);
    let crate::latency::LatencySnapshot {
        buckets,
        sum_s: sum,
        count,
    } = latency;
    let l = Family::histogram(
        n::INGEST_REQUEST_DURATION_SECONDS,
        "Time to answer POST /v1/batches, from the handler's start (headers read) to its answer, including the wait for the group commit.",
        &buckets,
        sum,
        count,
    );
    vec![c, b, l]
}

/// Renders `/metrics`. `tenant_totals` are the ledger's totals per owner.
pub fn render(
    state: &State,
    site: &Site,
    figures: &Figures,
    tenant_totals: &[crate::store::ledger::TenantTotal],
) -> String {
    let mut tenant_energy = Family::counter(
        n::TENANT_ENERGY_JOULES_TOTAL,
        "Energy booked to a tenant in the ledger, joules: basis it (its GPUs) or facility (IT × the PUE of the same minute).",
    );
    let mut tenant_seconds = Family::counter(
        n::TENANT_GPU_SECONDS_TOTAL,
        "GPU-seconds leased, booked in the ledger.",
    );
    let mut tenant_minutes = Family::counter(
        n::TENANT_GPU_DELIVERY_SECONDS_TOTAL,
        "Leased GPU-seconds booked in the ledger by delivery state (available, degraded, down, unknown: no data from the node).",
    );
    let mut tenant_month = Family::gauge(
        n::TENANT_GPU_DELIVERY_MONTH_SECONDS,
        "Leased GPU-seconds booked in the ledger by delivery state, for the minutes of the UTC month to date.",
    );
    let mut tenant_target = Family::gauge(
        n::TENANT_AVAILABILITY_TARGET_RATIO,
        "The GPU availability promised to a tenant ([[tenants]] availability_target).",
    );
    let mut unattributed = Family::counter(
        n::UNATTRIBUTED_ENERGY_JOULES_TOTAL,
        "GPU energy of time covered by more than one lease, booked to nobody, joules.",
    );
    let mut unleased = Family::counter(
        n::UNLEASED_ENERGY_JOULES_TOTAL,
        "GPU energy of time no lease covers, joules.",
    );
    // Label-less counters are exported from the start, at 0 until something
    // is booked to them, so that a panel or an increase() sees the first joule.
    let (mut unattributed_j, mut unleased_j) = (0.0, 0.0);
    for t in tenant_totals {
        let (it, facility, gpu_ms) = (&t.it_joules, &t.facility_joules, &t.gpu_ms);
        match t.owner.as_str() {
            crate::tenants::UNATTRIBUTED => {
                unattributed_j += *it;
            }
            crate::tenants::UNLEASED => {
                unleased_j += *it;
            }
            tenant => {
                tenant_energy.add(&[(n::TENANT, tenant), (n::BASIS, "it")], *it);
                tenant_energy.add(&[(n::TENANT, tenant), (n::BASIS, "facility")], *facility);
                tenant_seconds.add(&[(n::TENANT, tenant)], *gpu_ms as f64 / 1000.0);
                // Service levels, for tenants with delivery data only.
                if t.delivery_ms.iter().any(|v| *v != 0) {
                    for (state, ms) in crate::delivery::DeliveryState::ALL
                        .iter()
                        .zip(t.delivery_ms)
                    {
                        tenant_minutes.add(
                            &[(n::TENANT, tenant), (n::STATE, state.as_str())],
                            ms as f64 / 1000.0,
                        );
                    }
                }
                if t.month_delivery_ms.iter().any(|v| *v != 0) {
                    for (state, ms) in crate::delivery::DeliveryState::ALL
                        .iter()
                        .zip(t.month_delivery_ms)
                    {
                        tenant_month.add(
                            &[(n::TENANT, tenant), (n::STATE, state.as_str())],
                            ms as f64 / 1000.0,
                        );
                    }
                }
            }
        }
    }
    for (tenant, target) in &site.availability_targets {
        tenant_target.add(&[(n::TENANT, tenant)], *target);
    }
    unattributed.add(&[], unattributed_j);
    unleased.add(&[], unleased_j);
    let mut energy = Family::counter(
        n::ENERGY_JOULES_TOTAL,
        "Energy by meter role and zone since the collector started, joules.",
    );
    let mut power = Family::gauge(
        n::POWER_WATTS,
        "Power of the fresh meters by role and zone, watts.",
    );
    for ((role, zone), joules) in state.energy_by_role_zone() {
        let labels = [(n::ROLE, role.as_str()), (n::ZONE, zone)];
        energy.add(&labels, joules);
        power.add(
            &labels,
            figures
                .zone_power_watts
                .get(&(role, zone.to_owned()))
                .copied()
                .unwrap_or(0.0),
        );
    }

    let category = figures.category.map(|c| c.to_string()).unwrap_or_default();
    let mut pue = Family::gauge(
        n::PUE_RATIO,
        "Energy-based PUE over a trailing window (facility / IT energy); absent while its bounds are wider than [pue] max_uncertainty (the live 5m: while incomplete).",
    );
    let mut pue_lower = Family::gauge(
        n::PUE_LOWER_RATIO,
        "The least PUE a trailing window's energy bounds allow (least facility / most IT), beside an exported dcwatt_pue_ratio.",
    );
    let mut pue_upper = Family::gauge(
        n::PUE_UPPER_RATIO,
        "The most PUE a trailing window's energy bounds allow (most facility / least IT), beside an exported dcwatt_pue_ratio.",
    );
    let mut pue_uncertainty = Family::gauge(
        n::PUE_UNCERTAINTY_RATIO,
        "max(PUE - lower, upper - PUE) / PUE of a trailing window, where its bounds are finite.",
    );
    let mut coverage = Family::gauge(
        n::PUE_COVERAGE_RATIO,
        "Share of the trailing window that every facility and IT meter covers.",
    );
    let mut partial = Family::gauge(
        n::PARTIAL_PUE_RATIO,
        "Partial PUE of a zone over a trailing window, shared infrastructure allocated by IT energy; absent while its bounds are wider than [pue] max_uncertainty.",
    );
    let mut partial_lower = Family::gauge(
        n::PARTIAL_PUE_LOWER_RATIO,
        "The least partial PUE of a zone its energy bounds allow, beside an exported dcwatt_partial_pue_ratio.",
    );
    let mut partial_upper = Family::gauge(
        n::PARTIAL_PUE_UPPER_RATIO,
        "The most partial PUE of a zone its energy bounds allow, beside an exported dcwatt_partial_pue_ratio.",
    );
    let live = &figures.pue_live;
    if let (Some(p), true) = (live.pue, live.complete) {
        pue.add(&[(n::WINDOW, live.window), (n::CATEGORY, &category)], p);
    }
    coverage.add(&[(n::WINDOW, live.window)], live.coverage_ratio);
    let mut erf = Family::gauge(
        n::ERF_RATIO,
        "Energy reuse factor over a complete trailing window: reused / facility energy.",
    );
    let mut reff = Family::gauge(
        n::REF_RATIO,
        "Renewable energy factor over a complete trailing window: renewable / facility energy.",
    );
    let mut cue = Family::gauge(
        n::CUE,
        "Carbon usage effectiveness over a complete trailing window: kg CO2e per kWh of IT energy.",
    );
    let mut wue = Family::gauge(
        n::WUE,
        "Water usage effectiveness over a complete trailing window: litres of site water per kWh of IT energy.",
    );
    if let (Some(v), true) = (live.wue_litres_per_kwh, live.wue_complete) {
        wue.add(&[(n::WINDOW, live.window)], v);
    }
    let mut wue_lower = Family::gauge(
        n::WUE_LOWER,
        "The least WUE of a trailing window its bounds allow (L/kWh), beside an exported WUE.",
    );
    let mut wue_upper = Family::gauge(
        n::WUE_UPPER,
        "The most WUE of a trailing window its bounds allow (L/kWh), beside an exported WUE.",
    );
    for w in &figures.windows {
        let label = [(n::WINDOW, w.window.unwrap_or_default())];
        if w.complete {
            w.erf_ratio.map(|v| erf.add(&label, v));
            w.ref_ratio.map(|v| reff.add(&label, v));
        }
        if w.pue_exported {
            w.cue_kg_per_kwh.map(|v| cue.add(&label, v));
        }
        if let (Some(v), true) = (w.wue_litres_per_kwh, w.wue_exported) {
            wue.add(&label, v);
            w.wue_lower_litres_per_kwh.map(|v| wue_lower.add(&label, v));
            w.wue_upper_litres_per_kwh.map(|v| wue_upper.add(&label, v));
        }
    }
    let mut residual = Family::gauge(
        n::METER_TREE_RESIDUAL_RATIO,
        "(meter − Σ its sub-meters) / meter over the live window; below −tolerance the sub-meters read more than their parent.",
    );
    for (id, r) in &figures.tree_residual_ratio {
        residual.add(&[(n::METER, id.as_str())], *r);
    }
    let mut invalid = Family::counter(
        n::PUE_INVALID_MINUTES_TOTAL,
        "Complete minutes whose PUE was below 1 or above pue_max_ratio.",
    );
    invalid.add(&[], figures.invalid_pue_minutes as f64);
    let mut unbooked = Family::counter(
        n::UNBOOKED_ENERGY_JOULES_TOTAL,
        "Metered nodes' energy beyond their GPUs that could not be booked to any owner (no GPU time in the minute to share it by), joules.",
    );
    unbooked.add(&[], figures.unbooked_node_joules);
    for w in &figures.windows {
        let label = w.window.unwrap_or_default();
        let labels = [(n::WINDOW, label), (n::CATEGORY, category.as_str())];
        if let (Some(p), true) = (w.pue, w.pue_exported) {
            pue.add(&labels, p);
            w.pue_lower.map(|v| pue_lower.add(&labels, v));
            w.pue_upper.map(|v| pue_upper.add(&labels, v));
        }
        if let Some(u) = w.pue_uncertainty_ratio {
            pue_uncertainty.add(&[(n::WINDOW, label)], u);
        }
        coverage.add(&[(n::WINDOW, label)], w.coverage_ratio);
        for z in w.zones.iter().filter(|z| z.partial_pue_exported) {
            if let Some(p) = z.partial_pue {
                let labels = [(n::ZONE, z.zone.as_str()), (n::WINDOW, label)];
                partial.add(&labels, p);
                z.partial_pue_lower.map(|v| partial_lower.add(&labels, v));
                z.partial_pue_upper.map(|v| partial_upper.add(&labels, v));
            }
        }
    }
    let mut instant = Family::gauge(
        n::PUE_INSTANT_RATIO,
        "Instantaneous PUE: facility / IT energy over the last 10 s every facility and IT meter covers, all cut at the same two instants.",
    );
    if let Some(p) = figures.pue_instant {
        instant.add(&[(n::CATEGORY, &category)], p);
    }

    let mut meter_energy = Family::counter(
        n::METER_ENERGY_JOULES_TOTAL,
        "Energy of each meter since the collector started, joules.",
    );
    let mut meter_resets = Family::counter(
        n::METER_COUNTER_RESETS_TOTAL,
        "Counter resets seen per meter (its energy counter, or a water meter's volume counter).",
    );
    let mut meter_gaps = Family::counter(
        n::METER_GAPS_TOTAL,
        "Gaps longer than max_gap in a power-only meter, not integrated.",
    );
    let mut meter_glitches = Family::counter(
        n::METER_GLITCHES_TOTAL,
        "Counter jumps beyond the meter's nominal_max_watts (nominal_max_cubic_meters_per_hour for water), rejected.",
    );
    let mut meter_water = Family::counter(
        n::METER_WATER_CUBIC_METERS_TOTAL,
        "Volume of each water meter since the collector started, cubic metres.",
    );
    let mut water = Family::counter(
        n::WATER_CUBIC_METERS_TOTAL,
        "Site water input by zone since the collector started, cubic metres (water meters that are not sub-meters).",
    );
    let mut meter_up = Family::gauge(n::METER_UP, "1 when the meter reported within stale_after.");
    let mut meter_events = Family::counter(
        n::METER_EVENTS_TOTAL,
        "Meter events by kind: gap (a counter silent beyond stale_after), reset, swap (a replaced meter, rebased), power_gap (a power-only meter beyond max_gap), glitch (refused readings).",
    );
    let mut water_by_zone: std::collections::BTreeMap<&str, f64> = Default::default();
    for (id, m) in &state.meters {
        let labels = [
            (n::METER, id.as_str()),
            (n::ROLE, m.meter.role.as_str()),
            (n::ZONE, m.meter.zone.as_str()),
        ];
        if let Some(v) = m.water_cubic_meters() {
            meter_water.add(&labels, v);
            if m.meter.parent.is_none() {
                *water_by_zone.entry(m.meter.zone.as_str()).or_default() += v;
            }
        } else {
            meter_energy.add(&labels, m.energy_joules());
        }
        meter_resets.add(&labels, m.acc.resets as f64);
        meter_gaps.add(&labels, m.acc.gaps as f64);
        meter_glitches.add(&labels, m.acc.glitches as f64);
        for (kind, count) in [
            (crate::bounds::EventKind::Gap, m.acc.counter_gaps),
            (crate::bounds::EventKind::Reset, m.acc.resets),
            (crate::bounds::EventKind::Swap, m.acc.swaps),
            (crate::bounds::EventKind::PowerGap, m.acc.gaps),
            (crate::bounds::EventKind::Glitch, m.acc.glitches),
        ] {
            meter_events.add(
                &[(n::METER, id.as_str()), (n::KIND, kind.as_str())],
                count as f64,
            );
        }
        let up = m
            .acc
            .last_ms
            .is_some_and(|t| figures.now_ms - t <= site.stale_after_ms);
        meter_up.add(&labels, f64::from(u8::from(up)));
    }

    for (zone, v) in water_by_zone {
        water.add(&[(n::ZONE, zone)], v);
    }

    let mut gpu_power = Family::gauge(
        n::GPU_POWER_WATTS_SUM,
        "Sum of the fresh GPU power readings, watts (GPU-only: not a PUE denominator).",
    );
    let gpu_watts: f64 = state
        .gpus
        .values()
        .filter_map(|g| g.power)
        .filter(|(t, _)| figures.now_ms - t <= site.stale_after_ms)
        .map(|(_, w)| w)
        .sum();
    gpu_power.add(&[], gpu_watts);
    let mut gpu_energy = Family::counter(
        n::GPU_ENERGY_JOULES_TOTAL,
        "GPU energy from NVML counters since the collector started, joules.",
    );
    let (gpu_joules, gpu_resets_seen) = state.gpu_totals();
    gpu_energy.add(&[], gpu_joules);
    let mut gpu_resets = Family::counter(
        n::GPU_COUNTER_RESETS_TOTAL,
        "GPU energy counter resets seen.",
    );
    gpu_resets.add(&[], gpu_resets_seen as f64);
    let mut gpu_glitches = Family::counter(
        n::GPU_COUNTER_GLITCHES_TOTAL,
        "GPU energy counter readings refused as glitches (a jump beyond the GPU's power limit, or a decrease no reset explains).",
    );
    gpu_glitches.add(&[], state.gpus.values().map(|g| g.glitches as f64).sum());

    let mut last_seen = Family::gauge(
        n::AGENT_LAST_SEEN,
        "When the agent's last batch was applied, Unix seconds.",
    );
    for (id, a) in &state.agents {
        last_seen.add(&[(n::AGENT, id.as_str())], a.last_seen_ms as f64 / 1000.0);
    }
    let mut batches = Family::counter(n::INGEST_BATCHES_TOTAL, "Batches received, by result.");
    for (result, count) in &state.batches {
        batches.add(&[(n::RESULT, result)], *count as f64);
    }
    let mut readings = Family::counter(n::INGEST_READINGS_TOTAL, "Readings applied.");
    readings.add(&[], state.readings as f64);
    let mut ignored = Family::counter(
        n::INGEST_IGNORED_READINGS_TOTAL,
        "Readings of valid batches that were not used, by reason.",
    );
    for (why, count) in &state.ignored {
        ignored.add(&[(n::REASON, why.as_str())], *count as f64);
    }

    let [in_excursion, cdus_in_excursion, excursions, tenant_excursions] =
        thermal_families(state, site);
    let mut gpu_families = utilization_families(site, &figures.gpu_utilization);
    let tenant_utilization = tenant_utilization(state, site, figures.now_ms);
    encode(
        vec![
            tenant_utilization,
            in_excursion,
            cdus_in_excursion,
            excursions,
            tenant_excursions,
            erf,
            reff,
            cue,
            wue,
            wue_lower,
            wue_upper,
            residual,
            invalid,
            unbooked,
            tenant_energy,
            tenant_seconds,
            tenant_minutes,
            tenant_month,
            tenant_target,
            unattributed,
            unleased,
            energy,
            power,
            pue,
            pue_lower,
            pue_upper,
            pue_uncertainty,
            instant,
            coverage,
            partial,
            partial_lower,
            partial_upper,
            meter_energy,
            meter_water,
            water,
            meter_resets,
            meter_gaps,
            meter_glitches,
            meter_events,
            meter_up,
            gpu_power,
            gpu_energy,
            gpu_resets,
            gpu_glitches,
        ]
        .into_iter()
        .chain(gpu_families.drain(..))
        .chain([last_seen, batches, readings, ignored])
        .collect(),
    )
}

/// Utilization means (live and 1h, per zone and site), idle energy and XID
/// errors (counters, every configured zone at 0 from the start), modules.
fn utilization_families(site: &Site, u: &crate::utilization::UtilizationFigures) -> Vec<Family> {
    let mut zone_ratio = Family::gauge(
        n::ZONE_GPUS_UTILIZATION_RATIO,
        "GPU-time-weighted mean of each utilization kind in a zone: window live (fresh GPUs' latest values) or 1h.",
    );
    let mut site_ratio = Family::gauge(
        n::GPUS_UTILIZATION_RATIO,
        "GPU-time-weighted mean of each utilization kind over the site: window live (fresh GPUs' latest values) or 1h.",
    );
    let mut zone_idle = Family::counter(
        n::ZONE_GPUS_IDLE_ENERGY_JOULES_TOTAL,
        "GPU energy spent while SM activity was below [utilization] idle_sm_active_below, per zone, joules.",
    );
    let mut site_idle = Family::counter(
        n::GPUS_IDLE_ENERGY_JOULES_TOTAL,
        "GPU energy spent while SM activity was below [utilization] idle_sm_active_below, joules.",
    );
    let mut zone_xid = Family::counter(
        n::ZONE_GPUS_XID_ERRORS_TOTAL,
        "XID (critical error) events of the GPUs in a zone, every code.",
    );
    let mut site_xid = Family::counter(
        n::GPUS_XID_ERRORS_TOTAL,
        "XID (critical error) events of every GPU, every code.",
    );
    let mut module_power = Family::gauge(
        n::MODULES_POWER_WATTS,
        "Sum of the fresh superchip module power readings (GPUs, CPU, memory), watts.",
    );
    let mut module_energy = Family::counter(
        n::MODULES_ENERGY_JOULES_TOTAL,
        "Superchip modules' energy integrated by their agents from power (method integrated), joules.",
    );
    let empty = crate::utilization::ScopeFigures::default();
    let mut zones: std::collections::BTreeSet<&str> =
        site.zones.iter().map(String::as_str).collect();
    zones.extend(u.zones.keys().map(String::as_str));
    for zone in zones {
        let z = u.zones.get(zone).unwrap_or(&empty);
        for (kind, m) in &z.ratios {
            for (window, v) in [("live", m.live), ("1h", m.hour)] {
                if let Some(v) = v {
                    zone_ratio.add(&[(n::ZONE, zone), (n::KIND, kind), (n::WINDOW, window)], v);
                }
            }
        }
        zone_idle.add(&[(n::ZONE, zone)], z.idle_energy_joules);
        zone_xid.add(&[(n::ZONE, zone)], z.xid_errors);
    }
    for (kind, m) in &u.site.ratios {
        for (window, v) in [("live", m.live), ("1h", m.hour)] {
            if let Some(v) = v {
                site_ratio.add(&[(n::KIND, kind), (n::WINDOW, window)], v);
            }
        }
    }
    site_idle.add(&[], u.site.idle_energy_joules);
    site_xid.add(&[], u.site.xid_errors);
    if let Some(w) = u.site.module_power_watts {
        module_power.add(&[], w);
    }
    module_energy.add(&[], u.site.module_energy_joules);
    vec![
        zone_ratio,
        site_ratio,
        zone_idle,
        site_idle,
        zone_xid,
        site_xid,
        module_power,
        module_energy,
    ]
}

/// The thermal excursion families: every zone, kind and tenant present, 0 when none.
fn thermal_families(state: &State, site: &Site) -> [Family; 4] {
    use std::collections::{BTreeMap, BTreeSet};
    let mut gpus: BTreeMap<&str, f64> = site.zones.iter().map(|z| (z.as_str(), 0.0)).collect();
    let mut cdus = gpus.clone();
    let mut open_gpus: BTreeSet<(&str, &str)> = BTreeSet::new();
    let open = state.open_excursions(site);
    for e in &open {
        if open_gpus.insert((e.entity_kind, e.entity.as_str())) {
            let map = if e.entity_kind == "gpu" {
                &mut gpus
            } else {
                &mut cdus
            };
            *map.entry(e.zone.as_str()).or_default() += 1.0;
        }
    }
    let mut in_excursion = Family::gauge(
        n::GPUS_IN_THERMAL_EXCURSION,
        "GPUs with at least one open thermal excursion (near their own thresholds or thermally throttled).",
    );
    for (zone, count) in gpus {
        in_excursion.add(&[(n::ZONE, zone)], count);
    }
    let mut cdus_in_excursion = Family::gauge(
        n::CDUS_IN_THERMAL_EXCURSION,
        "Coolant distribution units with at least one open excursion.",
    );
    for (zone, count) in cdus {
        cdus_in_excursion.add(&[(n::ZONE, zone)], count);
    }
    let mut excursions = Family::counter(
        n::THERMAL_EXCURSIONS_TOTAL,
        "Thermal excursions opened, by zone and kind.",
    );
    for zone in &site.zones {
        for kind in crate::thermal::Kind::ALL {
            let count = state
                .excursions_opened
                .get(&(zone.clone(), kind))
                .copied()
                .unwrap_or(0);
            excursions.add(&[(n::ZONE, zone), (n::KIND, kind.as_str())], count as f64);
        }
    }
    let mut tenant_excursions = Family::counter(
        n::TENANT_THERMAL_EXCURSIONS_TOTAL,
        "Thermal excursions of a tenant's leased GPUs.",
    );
    let tenants: BTreeSet<&str> = site.tenant_tokens.values().map(String::as_str).collect();
    for t in tenants {
        let count = state.tenant_excursions.get(t).copied().unwrap_or(0);
        tenant_excursions.add(&[(n::TENANT, t)], count as f64);
    }
    [
        in_excursion,
        cdus_in_excursion,
        excursions,
        tenant_excursions,
    ]
}

/// Mean utilization of the GPUs each tenant leases at `now_ms`, from fresh readings.
fn tenant_utilization(state: &State, site: &Site, now_ms: i64) -> Family {
    use std::collections::BTreeMap;
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    if !site.leases.is_empty() {
        for (uuid, g) in &state.gpus {
            let Some((t, u)) = g.utilization else {
                continue;
            };
            if now_ms - t > site.stale_after_ms {
                continue;
            }
            let owners = site.leases.split(&g.node, uuid, now_ms, now_ms + 1);
            if let Some((owner, _)) = owners.first().filter(|(o, _)| !o.starts_with('_')) {
                let e = sums.entry(owner.clone()).or_default();
                e.0 += u;
                e.1 += 1;
            }
        }
    }
    let mut f = Family::gauge(
        n::TENANT_GPU_UTILIZATION_RATIO,
        "Mean utilization of the GPUs a tenant leases now, 0..1 (GPUs with a fresh reading).",
    );
    for (tenant, (sum, count)) in sums {
        f.add(&[(n::TENANT, &tenant)], sum / f64::from(count));
    }
    f
}
