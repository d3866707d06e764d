//! # dcwatt-expo: Prometheus exposition from cached state
//!
//! Agent and collector keep their latest values in their own state and render
//! `/metrics` from it at scrape time (a scrape never triggers a collection).
//! Counters such as `dcwatt_gpu_energy_joules_total` are *absolute* values read
//! from a device, which the `prometheus` crate's `Counter` (increment-only) cannot
//! hold; this crate builds `MetricFamily` protos directly and encodes them with
//! the crate's `TextEncoder`.
//!
//! # Layout
//! - [`Family`]: one metric family under construction (`counter` or `gauge`).
//! - [`encode`]: families → text exposition format 0.0.4.

use prometheus::proto::{self, MetricType};
use prometheus::Encoder;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family under construction.
pub struct Family {
    mf: proto::MetricFamily,
}

impl Family {
    /// A gauge family.
    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, MetricType::GAUGE)
    }

    /// A counter family (the name must end in `_total`).
    pub fn counter(name: &str, help: &str) -> Self {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        Self::new(name, help, MetricType::COUNTER)
    }

    fn new(name: &str, help: &str, kind: MetricType) -> Self {
        let mut mf = proto::MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Self { mf }
    }

    /// Adds one sample with the given labels. Non-finite values are skipped:
    /// a missing sample is better than a NaN that poisons every sum.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if !value.is_finite() {
            return self;
        }
        let mut m = proto::Metric::default();
        let pairs: Vec<proto::LabelPair> = labels
            .iter()
            .map(|(k, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name((*k).to_owned());
                p.set_value((*v).to_owned());
                p
            })
            .collect();
        m.set_label(pairs);
        if self.mf.get_field_type() == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.mf.mut_metric().push(m);
        self
    }

    /// True when no sample was added.
    pub fn is_empty(&self) -> bool {
        self.mf.get_metric().is_empty()
    }

    /// The finished family.
    pub fn build(self) -> proto::MetricFamily {
        self.mf
    }
}

/// Encodes families in the text format. Families without samples are left out
/// (the format has no way to say "no series", and promtool warns on it).
pub fn encode(families: Vec<Family>) -> String {
    let mfs: Vec<proto::MetricFamily> = families
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(Family::build)
        .collect();
    let mut buf = Vec::with_capacity(4096);
    // Encoding into a Vec cannot fail on I/O; a failure here is a malformed family.
    if let Err(e) = prometheus::TextEncoder::new().encode(&mfs, &mut buf) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
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
}
