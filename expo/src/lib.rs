//! # dcwatt-expo: Prometheus exposition from cached state
//!
//! Agent and collector keep their latest values in their own state and render
//! `/metrics` from it at scrape time (a scrape never triggers a collection).
//! Counters such as `dcwatt_gpu_energy_joules_total` are *absolute* values read
//! from a device, which the `prometheus` crate's `Counter` (increment-only) cannot
//! hold; this crate writes the text exposition format itself, byte for byte as
//! the `prometheus` crate's `TextEncoder` does (a test checks that on every
//! kind of label value).
//!
//! # Layout
//! - [`Family`]: one metric family under construction (`counter` or `gauge`).
//! - [`encode`]: families → text exposition format 0.0.4.

use std::fmt::Write as _;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family under construction: its samples are written straight
/// into text as they are added (a hall-sized `/metrics` has tens of thousands
/// of samples; building a protobuf message per sample first cost more than
/// the text itself).
pub struct Family {
    name: String,
    help: String,
    kind: &'static str,
    samples: String,
}

impl Family {
    /// A gauge family.
    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, "gauge")
    }

    /// A counter family (the name must end in `_total`).
    pub fn counter(name: &str, help: &str) -> Self {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        Self::new(name, help, "counter")
    }

    fn new(name: &str, help: &str, kind: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: String::new(),
        }
    }

    /// Adds one sample with the given labels. Non-finite values are skipped:
    /// a missing sample is better than a NaN that poisons every sum.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if !value.is_finite() {
            return self;
        }
        let out = &mut self.samples;
        out.push_str(&self.name);
        let mut separator = '{';
        for (k, v) in labels {
            out.push(separator);
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v, true);
            out.push('"');
            separator = ',';
        }
        if !labels.is_empty() {
            out.push('}');
        }
        // Writing into a String cannot fail.
        let _ = writeln!(out, " {value}");
        self
    }

    /// A histogram family with one series, from cumulative bucket counts
    /// (`(upper bound, observations ≤ it)`, ascending, without `+Inf`), the
    /// sum and the count of observations.
    pub fn histogram(name: &str, help: &str, buckets: &[(f64, u64)], sum: f64, count: u64) -> Self {
        let mut f = Self::new(name, help, "histogram");
        let out = &mut f.samples;
        for (le, n) in buckets {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        f
    }

    /// True when no sample was added.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Appends the family (help, type, samples) to `out`.
    fn write_to(&self, out: &mut String) {
        if !self.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&self.name);
            out.push(' ');
            escape_into(out, &self.help, false);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&self.name);
        out.push(' ');
        out.push_str(self.kind);
        out.push('\n');
        out.push_str(&self.samples);
    }
}

/// Escapes `\\` and newlines (and `"` in label values), as the text format
/// requires.
fn escape_into(out: &mut String, v: &str, quote: bool) {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !v.contains(special) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Encodes families in the text format. Families without samples are left out
/// (the format has no way to say "no series", and promtool warns on it).
pub fn encode(families: Vec<Family>) -> String {
    let mut out = String::with_capacity(
        families
            .iter()
            .map(|f| f.samples.len() + f.help.len() + 2 * f.name.len() + 24)
            .sum(),
    );
    for f in families.iter().filter(|f| !f.is_empty()) {
        f.write_to(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_gauge_render() {
        let mut c = Family::counter("dcwatt_x_joules_total", "X energy.");
        c.add(&[("meter", "m1")], 12.5);
        let mut g = Family::gauge("dcwatt_x_watts", "X power.");
        g.add(&[("meter", "m1")], f64::NAN);
        g.add(&[("meter", "m2")], 3.0);
        let text = encode(vec![c, g]);
        assert!(
            text.contains("# TYPE dcwatt_x_joules_total counter"),
            "{text}"
        );
        assert!(
            text.contains("dcwatt_x_joules_total{meter=\"m1\"} 12.5"),
            "{text}"
        );
        assert!(!text.contains("m1\"} NaN"), "{text}");
        assert!(text.contains("dcwatt_x_watts{meter=\"m2\"} 3"), "{text}");
    }

    /// The text is byte for byte what the `prometheus` crate's encoder writes
    /// for the same families: escapes, values, label-less samples, empty help.
    #[test]
    fn same_bytes_as_the_prometheus_crate() {
        use prometheus::proto::{self, MetricType};
        use prometheus::Encoder;
        let values = [0.0, -0.0, 1.5, 1e21, 1e-7, 123456789.125, -3.0, f64::MAX];
        let label_values = ["plain", "a\\b", "line\nbreak", "quo\"te", "ünï", ""];
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for (i, kind) in [MetricType::COUNTER, MetricType::GAUGE]
            .into_iter()
            .enumerate()
        {
            let (name, help) = match kind {
                MetricType::COUNTER => ("dcwatt_t_total", "Help with \\ and\nnewline \"q\"."),
                _ => ("dcwatt_t_watts", ""),
            };
            let mut f = match kind {
                MetricType::COUNTER => Family::counter(name, help),
                _ => Family::gauge(name, help),
            };
            let mut mf = proto::MetricFamily::default();
            mf.set_name(name.to_owned());
            mf.set_help(help.to_owned());
            mf.set_field_type(kind);
            for (j, v) in values.iter().enumerate() {
                let lv = label_values[(i + j) % label_values.len()];
                let labels: Vec<(&str, &str)> = if j == 0 {
                    Vec::new()
                } else {
                    vec![("meter", lv), ("zone", "hall-1")]
                };
                f.add(&labels, *v);
                let mut m = proto::Metric::default();
                m.set_label(
                    labels
                        .iter()
                        .map(|(k, v)| {
                            let mut p = proto::LabelPair::default();
                            p.set_name((*k).to_owned());
                            p.set_value((*v).to_owned());
                            p
                        })
                        .collect(),
                );
                if kind == MetricType::COUNTER {
                    let mut c = proto::Counter::default();
                    c.set_value(*v);
                    m.set_counter(c);
                } else {
                    let mut g = proto::Gauge::default();
                    g.set_value(*v);
                    m.set_gauge(g);
                }
                mf.mut_metric().push(m);
            }
            ours.push(f);
            theirs.push(mf);
        }
        // A histogram, as the crate's own Histogram renders it.
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("dcwatt_t_seconds", "Latency.")
                .buckets(vec![0.001, 0.0025, 0.05, 1.0]),
        )
        .unwrap();
        for v in [0.0005, 0.002, 0.002, 0.7, 3.0] {
            h.observe(v);
        }
        use prometheus::core::Collector;
        theirs.extend(h.collect());
        ours.push(Family::histogram(
            "dcwatt_t_seconds",
            "Latency.",
            &[(0.001, 1), (0.0025, 3), (0.05, 3), (1.0, 4)],
            h.get_sample_sum(),
            5,
        ));
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&theirs, &mut buf)
            .unwrap();
        assert_eq!(encode(ours), String::from_utf8(buf).unwrap());
    }
}
