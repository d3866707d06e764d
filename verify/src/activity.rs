//! A tenant's GPU activity, idle energy and module energy over a set of
//! ledger rows (a statement's month): one definition for the collector that
//! states it and the verifier that sums the rows again.

use serde::{Deserialize, Serialize};

use crate::row::Row;

/// Activity and energy beyond the GPUs over a set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Mean GPM SM activity, 0..1: each row's mean weighted by its leased
    /// GPU time, over the rows that have one (absent when none has).
    pub sm_active_mean: Option<f64>,
    /// Mean GPM tensor activity, weighted likewise.
    pub tensor_active_mean: Option<f64>,
    /// GPU energy while SM activity was below the idle threshold, kWh
    /// (absent when no row has GPM).
    pub idle_kwh: Option<f64>,
    /// `idle_kwh` over the GPU energy (IT energy less node and module
    /// energy) of the rows that state idle energy.
    pub idle_share_of_gpu_energy: Option<f64>,
    /// Superchip modules' energy beyond their GPUs (Grace CPU, LPDDR,
    /// board), kWh: part of the IT energy.
    pub module_kwh: f64,
    /// Metered nodes' energy beyond their GPUs and modules, kWh: part of
    /// the IT energy.
    pub node_kwh: f64,
}

impl Activity {
    /// The activity of `rows`, or `None` when no row carries activity,
    /// idle, module or node energy (a statement then leaves it out).
    pub fn of_rows<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Option<Activity> {
        let (mut sm, mut tensor) = ((0.0, 0.0), (0.0, 0.0));
        let (mut idle, mut idle_gpu, mut module, mut node) = (None::<f64>, 0.0, 0.0, 0.0);
        let mut any = false;
        for r in rows {
            let w = r.gpu_ms.max(1) as f64;
            if let Some(m) = r.sm_active_mean {
                sm.0 += m * w;
                sm.1 += w;
            }
            if let Some(m) = r.tensor_active_mean {
                tensor.0 += m * w;
                tensor.1 += w;
            }
            let (n, mj) = (r.node_joules.unwrap_or(0.0), r.module_joules.unwrap_or(0.0));
            if let Some(j) = r.idle_joules {
                *idle.get_or_insert(0.0) += j;
                idle_gpu += r.it_joules - n - mj;
            }
            module += mj;
            node += n;
            any |= r.sm_active_mean.is_some()
                || r.tensor_active_mean.is_some()
                || r.idle_joules.is_some()
                || r.module_joules.is_some()
                || r.node_joules.is_some();
        }
        let mean = |(s, w): (f64, f64)| (w > 0.0).then(|| s / w);
        any.then(|| Activity {
            sm_active_mean: mean(sm),
            tensor_active_mean: mean(tensor),
            idle_kwh: idle.map(|j| j / 3.6e6),
            idle_share_of_gpu_energy: idle.filter(|_| idle_gpu > 0.0).map(|j| j / idle_gpu),
            module_kwh: module / 3.6e6,
            node_kwh: node / 3.6e6,
        })
    }

    /// The fields as (name, value) for checks and CSV, in order.
    pub fn fields(&self) -> [(&'static str, Option<f64>); 6] {
        [
            ("sm_active_mean", self.sm_active_mean),
            ("tensor_active_mean", self.tensor_active_mean),
            ("idle_kwh", self.idle_kwh),
            ("idle_share_of_gpu_energy", self.idle_share_of_gpu_energy),
            ("module_kwh", Some(self.module_kwh)),
            ("node_kwh", Some(self.node_kwh)),
        ]
    }
}
