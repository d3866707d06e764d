//! The efficiency report as one self-contained HTML page: inline CSS, inline
//! SVG charts (the months' PUE, then one chart per month of its days' PUE),
//! no script and no external asset, so it can be mailed, archived and opened
//! anywhere. Key figures carry stable ids (`pue`, `pue-lower`, `pue-upper`,
//! `category`, `coverage`, `measured`, `wue`, `erf`, `ref`, `cue`, `dcie`)
//! and their full-precision value in `data-value`.

use std::fmt::Write as _;

use crate::efficiency::{Figures, Report};

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A ratio to four decimals, or a dash.
pub fn four(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.4}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{:.2} %", x * 100.0))
}

fn kwh(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.1}"))
}

/// A key figure: `<span id=… data-value=…>text</span>`.
fn figure(id: &str, value: Option<f64>, text: String) -> String {
    format!(
        "<span class=\"fig\" id=\"{id}\" data-value=\"{}\">{}</span>",
        value.map(|v| v.to_string()).unwrap_or_default(),
        esc(&text)
    )
}

/// One bar of a chart.
struct Bar {
    label: String,
    value: Option<f64>,
    lower: Option<f64>,
    upper: Option<f64>,
}

/// A bar chart of PUE values with their bounds as whiskers and horizontal
/// reference lines, as inline SVG.
fn chart(
    title: &str,
    bars: &[Bar],
    lines: &[(String, f64, &str)],
    label_every: usize,
    width: f64,
) -> String {
    let w = width;
    const H: f64 = 220.0;
    const LEFT: f64 = 52.0;
    const RIGHT: f64 = 12.0;
    const TOP: f64 = 28.0;
    const BOTTOM: f64 = 30.0;
    let mut values: Vec<f64> = bars
        .iter()
        .flat_map(|b| [b.value, b.lower, b.upper])
        .flatten()
        .chain(lines.iter().map(|l| l.1))
        .filter(|v| v.is_finite())
        .collect();
    if values.is_empty() {
        values.push(1.0);
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.15).max(0.02);
    let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v - lo) / (hi - lo));
    let slot = (w - LEFT - RIGHT) / bars.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {H}\" width=\"{w}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{H}\" fill=\"#ffffff\"/>\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\" fill=\"#222\">{t}</text>",
        t = esc(title)
    );
    // Axis and ticks.
    for k in 0..=4 {
        let v = lo + (hi - lo) * f64::from(k) / 4.0;
        let yy = y(v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{v:.3}</text>",
            x2 = w - RIGHT,
            tx = LEFT - 4.0,
            ty = yy + 3.0
        );
    }
    let base = y(lo);
    for (i, b) in bars.iter().enumerate() {
        let x = LEFT + slot * i as f64;
        let bw = (slot * 0.7).max(1.0);
        let bx = x + (slot - bw) / 2.0;
        let cx = x + slot / 2.0;
        if let Some(v) = b.value {
            let top = y(v);
            let _ = write!(
                svg,
                "<rect class=\"bar\" x=\"{bx:.1}\" y=\"{top:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"#3b7dd8\"><title>{l}: {v:.4}</title></rect>",
                h = (base - top).max(0.5),
                l = esc(&b.label)
            );
            let lo_y = b.lower.map_or(top, y);
            // Unbounded: the whisker runs to the top of the chart.
            let hi_y = b.upper.map_or(TOP, y);
            if (lo_y - hi_y).abs() > 0.5 {
                let _ = write!(
                    svg,
                    "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{lo_y:.1}\" y2=\"{hi_y:.1}\" stroke=\"#222\" stroke-width=\"1.5\"/>"
                );
            }
        } else {
            let _ = write!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{ty:.1}\" font-size=\"9\" text-anchor=\"middle\" fill=\"#999\">–</text>",
                ty = base - 4.0
            );
        }
        if i % label_every.max(1) == 0 {
            let _ = write!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{ty}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#333\">{l}</text>",
                ty = H - BOTTOM + 14.0,
                l = esc(&b.label)
            );
        }
    }
    for (k, (name, v, color)) in lines.iter().enumerate() {
        let yy = y(*v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"{color}\">{n} {v:.3}</text>",
            x2 = w - RIGHT,
            tx = w - RIGHT - 2.0,
            ty = yy - 3.0 - 11.0 * (k % 2) as f64,
            n = esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

const COLORS: [&str; 4] = ["#c0392b", "#8e44ad", "#d35400", "#16a085"];

fn figures_row(out: &mut String, f: &Figures) {
    let _ = write!(
        out,
        "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} – {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        esc(&f.label),
        four(f.pue),
        four(f.pue_lower),
        four(f.pue_upper),
        pct(Some(f.coverage_ratio)),
        pct(Some(f.measured_ratio)),
        four(f.wue_litres_per_kwh),
        four(f.erf_ratio),
        four(f.ref_ratio),
        kwh(f.energy_kwh.get("facility").copied()),
        kwh(f.energy_kwh.get("it").copied()),
        f.events
    );
}

const FIGURES_HEAD: &str = "<tr><th>Period</th><th>PUE</th><th>bounds</th><th>coverage</th><th>measured</th><th>WUE L/kWh</th><th>ERF</th><th>REF</th><th>facility kWh</th><th>IT kWh</th><th>events</th></tr>";

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#1d1d1d;background:#fafafa;max-width:1100px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc;padding-bottom:3px}\
.sub{color:#555;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:10px}\
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:130px}\
.card .k{font-size:12px;color:#555}.card>.fig{font-size:24px;font-weight:600;display:block}\
.card .b{font-size:11px;color:#555}table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}\
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{background:#f0f0f0}.claim{background:#fff;border-left:4px solid #3b7dd8;padding:6px 10px;margin:6px 0}\
.months{display:flex;flex-wrap:wrap;gap:8px}.months svg{border:1px solid #ddd;max-width:100%;height:auto}\
dt{font-weight:600;margin-top:6px}dd{margin-left:16px}code{font-size:12px}";

/// The page.
pub fn render(r: &Report) -> String {
    let t = &r.total;
    let mut o = String::new();
    let title = format!("Energy efficiency report {} – {}", r.from, r.to);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        o,
        "<h1>{}</h1><p class=\"sub\">Collector <b>{}</b>, period {} to {} (exclusive, UTC){}; generated {}.</p>",
        esc(&title),
        esc(&r.provenance.collector_id),
        esc(&r.from),
        esc(&r.to),
        r.zone
            .as_ref()
            .map(|z| format!(", zone <b>{}</b> (site figures stay the site's)", esc(z)))
            .unwrap_or_default(),
        esc(&r.generated)
    );
    if r.period_open {
        o.push_str("<p class=\"claim\" id=\"period-open\">The period had not ended when this report was made: its figures are to date, and the time after counts as not reported.</p>");
    }
    // Key figures.
    o.push_str("<h2>Key figures</h2><div class=\"cards\">");
    let card = |o: &mut String, k: &str, fig: String, b: String| {
        let _ = write!(
            o,
            "<div class=\"card\"><span class=\"k\">{}</span>{fig}<span class=\"b\">{b}</span></div>",
            esc(k)
        );
    };
    card(
        &mut o,
        "PUE (ISO/IEC 30134-2)",
        figure("pue", t.pue, four(t.pue)),
        format!(
            "bounds {} – {}",
            figure("pue-lower", t.pue_lower, four(t.pue_lower)),
            figure(
                "pue-upper",
                t.pue_upper,
                t.pue_upper
                    .map_or_else(|| "unbounded".to_owned(), |v| format!("{v:.4}"))
            )
        ),
    );
    card(
        &mut o,
        "category",
        figure(
            "category",
            t.category.map(f64::from),
            t.category
                .map_or_else(|| "—".to_owned(), |c| format!("Category {c}")),
        ),
        "where IT energy is measured".into(),
    );
    card(
        &mut o,
        "coverage",
        figure(
            "coverage",
            Some(t.coverage_ratio),
            pct(Some(t.coverage_ratio)),
        ),
        format!(
            "measured directly {}",
            figure(
                "measured",
                Some(t.measured_ratio),
                pct(Some(t.measured_ratio))
            )
        ),
    );
    card(
        &mut o,
        "WUE L/kWh (30134-9)",
        figure("wue", t.wue_litres_per_kwh, four(t.wue_litres_per_kwh)),
        format!(
            "bounds {} – {}",
            four(t.wue_lower_litres_per_kwh),
            four(t.wue_upper_litres_per_kwh)
        ),
    );
    card(
        &mut o,
        "ERF (30134-6)",
        figure("erf", t.erf_ratio, four(t.erf_ratio)),
        "reused / facility energy".into(),
    );
    card(
        &mut o,
        "REF (30134-3)",
        figure("ref", t.ref_ratio, four(t.ref_ratio)),
        "renewable / facility energy".into(),
    );
    card(
        &mut o,
        "CUE kg CO2e/kWh (30134-8)",
        figure(
            "cue",
            t.cue_kg_per_kwh,
            t.cue_kg_per_kwh
                .map_or_else(|| "not configured".to_owned(), |v| format!("{v:.4}")),
        ),
        "carbon_intensity_kg_per_kwh × PUE".into(),
    );
    card(
        &mut o,
        "DCiE",
        figure("dcie", t.dcie_ratio, four(t.dcie_ratio)),
        "IT / facility energy".into(),
    );
    o.push_str("</div>");
    if let Some(why) = &t.missing_reason {
        let _ = write!(o, "<p class=\"claim\">Note: {}</p>", esc(why));
    }
    // The claim.
    o.push_str("<h2>Against reference values</h2>");
    for (i, c) in r.references.iter().enumerate() {
        let _ = write!(
            o,
            "<p class=\"claim\" id=\"claim-{i}\">{}</p>",
            esc(&c.statement)
        );
    }
    // Overview chart.
    let months: Vec<Bar> = r
        .months
        .iter()
        .map(|m| Bar {
            label: m.label.clone(),
            value: m.pue,
            lower: m.pue_lower,
            upper: m.pue_upper,
        })
        .collect();
    let lines: Vec<(String, f64, &str)> = r
        .references
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), c.reference_pue, COLORS[i % COLORS.len()]))
        .chain(t.pue.map(|p| ("period PUE".to_owned(), p, "#27ae60")))
        .collect();
    o.push_str("<h2>PUE by month</h2>");
    o.push_str(&chart(
        "Monthly PUE (bars) with bounds (whiskers) and references (dashed)",
        &months,
        &lines,
        1,
        720.0,
    ));
    // Energy and water.
    o.push_str("<h2>Energy by role and water</h2><table><tr><th>role</th><th>kWh</th><th>lower</th><th>upper</th></tr>");
    for (role, v) in &t.energy_kwh {
        let b = t.energy_bounds_kwh.get(role);
        let _ = write!(
            o,
            "<tr><td>{role}</td><td class=\"n\" id=\"energy-{role}\" data-value=\"{v}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            kwh(Some(*v)),
            kwh(b.map(|b| b.lower)),
            b.and_then(|b| b.upper)
                .map_or_else(|| "unbounded".to_owned(), |u| format!("{u:.1}"))
        );
    }
    if let Some(w) = t.water_cubic_meters {
        let _ = write!(
            o,
            "<tr><td>water (m³)</td><td class=\"n\" id=\"water\" data-value=\"{w}\">{w:.3}</td><td colspan=\"2\">coverage {}</td></tr>",
            pct(t.water_coverage_ratio)
        );
    }
    o.push_str("</table>");
    // Zones.
    if !t.zones.is_empty() {
        o.push_str("<h2>Partial PUE by zone</h2><table><tr><th>zone</th><th>partial PUE</th><th>bounds</th><th>IT kWh</th><th>own infrastructure kWh</th><th>shared kWh</th><th>coverage</th></tr>");
        for z in &t.zones {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{} – {}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td></tr>",
                esc(&z.zone),
                four(z.partial_pue),
                four(z.partial_pue_lower),
                four(z.partial_pue_upper),
                z.it_kwh,
                z.infrastructure_kwh,
                z.shared_kwh,
                pct(Some(z.coverage_ratio))
            );
        }
        o.push_str("</table>");
    }
    // Breakdown.
    let _ = write!(o, "<h2>Quarters</h2><table>{FIGURES_HEAD}");
    for q in &r.quarters {
        figures_row(&mut o, q);
    }
    let _ = write!(o, "</table><h2>Months</h2><table>{FIGURES_HEAD}");
    for m in &r.months {
        figures_row(&mut o, m);
    }
    o.push_str("</table><h2>Each month by day</h2><div class=\"months\">");
    for m in &r.months {
        let bars: Vec<Bar> = m
            .days
            .iter()
            .map(|d| Bar {
                label: d.date.get(8..).unwrap_or_default().to_owned(),
                value: d.pue,
                lower: d.pue_lower,
                upper: d.pue_upper,
            })
            .collect();
        let lines: Vec<(String, f64, &str)> = m
            .pue
            .map(|p| ("month".to_owned(), p, "#27ae60"))
            .into_iter()
            .collect();
        let _ = write!(o, "<figure id=\"month-{}\">", esc(&m.label));
        o.push_str(&chart(
            &format!("{}: daily PUE, month {}", m.label, four(m.pue)),
            &bars,
            &lines,
            5,
            530.0,
        ));
        o.push_str("</figure>");
    }
    o.push_str("</div>");
    // Meters.
    o.push_str("<h2>Meters the figures rest on</h2><table><tr><th>meter</th><th>role</th><th>zone</th><th>IT point</th><th>parent</th><th>first reported</th><th>last reported</th><th>coverage</th><th>events</th></tr>");
    for m in &r.meters {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&m.meter),
            m.role,
            esc(&m.zone),
            m.it_point
                .map(|p| format!("{p} (category {})", m.category.unwrap_or(0)))
                .unwrap_or_default(),
            esc(m.parent.as_deref().unwrap_or("")),
            esc(m.first_reported.as_deref().unwrap_or("never")),
            esc(m.last_reported.as_deref().unwrap_or("never")),
            pct(Some(m.coverage_ratio)),
            m.events
        );
    }
    o.push_str("</table>");
    // Events.
    let _ = write!(
        o,
        "<h2>Events that affected the figures</h2><p>{} listed{}: {}.</p>",
        r.events.len(),
        if r.events_left_out > 0 {
            format!(", {} more not listed", r.events_left_out)
        } else {
            String::new()
        },
        if r.event_counts.is_empty() {
            "none".to_owned()
        } else {
            r.event_counts
                .iter()
                .map(|(k, n)| format!("{n} {}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !r.events.is_empty() {
        o.push_str("<table><tr><th>meter</th><th>kind</th><th>from</th><th>to</th><th>counted kWh</th><th>may be lower by kWh</th><th>may be higher by kWh</th><th>count</th></tr>");
        for e in &r.events {
            let v = &e.view;
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{:.3}</td><td class=\"n\">{:.3}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&v.meter),
                esc(v.kind),
                esc(&e.from),
                esc(&e.to),
                v.joules / 3.6e6,
                v.below_joules / 3.6e6,
                v.above_joules
                    .map_or_else(|| "unbounded".to_owned(), |a| format!("{:.3}", a / 3.6e6)),
                v.count
            );
        }
        o.push_str("</table>");
    }
    // Provenance.
    let p = &r.provenance;
    let cp = p.ledger.checkpoint.as_ref();
    let _ = write!(
        o,
        "<h2>Provenance</h2><table>\
         <tr><th>collector version</th><td><code id=\"collector-version\">{}</code></td></tr>\
         <tr><th>configuration SHA-256</th><td><code id=\"config-sha256\">{}</code></td></tr>\
         <tr><th>ledger rows (tree size)</th><td><code>{}</code></td></tr>\
         <tr><th>ledger chain head</th><td><code id=\"chain-head\">{}</code></td></tr>\
         <tr><th>signed checkpoint</th><td><code id=\"checkpoint\">{}</code></td></tr></table>",
        esc(p.collector_version),
        esc(p.config_sha256.as_deref().unwrap_or("not read from a file")),
        p.ledger.tree_size,
        esc(&p.ledger.chain_head),
        cp.map_or_else(
            || "none signed".to_owned(),
            |c| esc(&format!(
                "hour {} size {} root {} signature {}{}",
                crate::efficiency::instant(c.hour_ms),
                c.tree_size,
                c.root_hash,
                c.signature,
                if p.ledger.checkpoint_covers_end {
                    ""
                } else {
                    " (the latest: none yet at or after the report's end)"
                }
            ))
        )
    );
    o.push_str(
        "<h2>What the figures mean</h2><dl>\
<dt>PUE</dt><dd>Facility energy / IT energy over the period, a ratio of sums (ISO/IEC 30134-2). The category says where IT energy is measured: 1 UPS output, 2 PDU output, 3 IT equipment input; with mixed points the lowest holds.</dd>\
<dt>Bounds</dt><dd>The least and most the PUE can be given every gap, reset, meter swap, power gap and unreported stretch listed below: least facility / most IT, and most facility / least IT. Unbounded where a meter without a rating left something unknown.</dd>\
<dt>Coverage</dt><dd>The share of the period's minutes in which every facility and IT meter measured both edges. Measured directly: the share of the facility and IT energy not spread over a gap, reset or swap.</dd>\
<dt>Partial PUE</dt><dd>(Zone IT + zone infrastructure + its share of the shared infrastructure, by IT energy) / zone IT.</dd>\
<dt>WUE</dt><dd>Site water input in litres per kWh of IT energy (ISO/IEC 30134-9).</dd>\
<dt>ERF, REF</dt><dd>Reused energy / facility energy (ISO/IEC 30134-6); renewable energy / facility energy (ISO/IEC 30134-3).</dd>\
<dt>CUE</dt><dd>kg CO2e per kWh of IT energy (ISO/IEC 30134-8): the configured grid carbon intensity × PUE; absent when none is configured.</dd>\
<dt>Provenance</dt><dd>The collector version, the SHA-256 of its configuration file, and the ledger's chain head and signed checkpoint when the report was made: anyone holding the database can check the report against the data.</dd>\
</dl></body></html>\n",
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_chart_without_values_still_draws() {
        let svg = chart("t", &[], &[], 1, 500.0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        let bars = [
            Bar {
                label: "a".into(),
                value: Some(1.2),
                lower: Some(1.1),
                upper: None,
            },
            Bar {
                label: "b".into(),
                value: None,
                lower: None,
                upper: None,
            },
        ];
        let svg = chart("t", &bars, &[("ref".into(), 1.56, "#c00")], 1, 500.0);
        assert_eq!(svg.matches("class=\"bar\"").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }
}
