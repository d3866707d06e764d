//! The load of one simulated node and the PRNG behind it: training jobs made
//! of steps (compute at high power, then communication at about half), idle
//! gaps between jobs, and the GPU thermal model. Pure functions of the seed
//! and of simulated time; reads and writes nothing.

/// Compute part of a training step, ms (before jitter).
const COMPUTE_MS: f64 = 800.0;
/// Communication part of a training step, ms (before jitter).
const COMM_MS: f64 = 200.0;
/// Power of an idle GPU, W.
pub(crate) const IDLE_W: f64 = 150.0;
/// Enforced power limit, W.
pub(crate) const POWER_LIMIT_W: f64 = 1400.0;
/// Temperature a GPU drifts to at zero power, °C (coolant supply plus cold plate).
const TEMP_BASE_C: f64 = 30.0;
/// Temperature rise per watt at steady state, °C/W.
const TEMP_PER_W: f64 = 0.035;
/// Thermal time constant, ms.
const TEMP_TAU_MS: f64 = 5000.0;
/// How much cooler the HBM runs than the core, °C.
pub(crate) const MEM_TEMP_OFFSET_C: f64 = 4.0;
/// Memory an idle GPU holds (driver context), bytes.
const IDLE_MEM_BYTES: u64 = 600 << 20;

/// A SplitMix64 generator: tiny, fast, and the same sequence everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// A factor in `[1 - rel, 1 + rel)`.
    pub(crate) fn jitter(&mut self, rel: f64) -> f64 {
        1.0 + rel * (2.0 * self.unit() - 1.0)
    }
}

/// Mixes two numbers into a seed (one SplitMix64 step over their combination).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    Prng::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// What a node's GPUs are doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No job: GPUs at idle power.
    Idle,
    /// The compute part of a training step: near full power.
    Compute,
    /// The communication part of a training step (all-reduce): about half power.
    Comm,
}

impl Phase {
    /// GPU busy ratio in this phase, percent.
    pub(crate) fn util_pct(self) -> u32 {
        match self {
            Self::Idle => 0,
            Self::Compute => 95,
            Self::Comm => 30,
        }
    }

    /// Memory-bandwidth busy ratio in this phase, percent.
    pub(crate) fn mem_util_pct(self) -> u32 {
        match self {
            Self::Idle => 0,
            Self::Compute => 40,
            Self::Comm => 20,
        }
    }
}

/// The load schedule of one node. The schedule draws from its own PRNG, so it
/// depends only on the seed and on simulated time, not on the tick cadence.
#[derive(Debug, Clone)]
pub(crate) struct NodeLoad {
    rng: Prng,
    phase: Phase,
    phase_end_ms: i64,
    steps_left: u32,
    job_power_w: f64,
    job_mem_bytes: u64,
}

impl NodeLoad {
    /// A node at `start_ms`, caught mid-job (3 in 4) or mid-gap.
    pub(crate) fn new(seed: u64, start_ms: i64) -> Self {
        let mut rng = Prng::new(seed);
        let mut load = Self {
            rng: rng.clone(),
            phase: Phase::Idle,
            phase_end_ms: start_ms,
            steps_left: 0,
            job_power_w: 0.0,
            job_mem_bytes: IDLE_MEM_BYTES,
        };
        if rng.unit() < 0.75 {
            load.start_job(&mut rng, start_ms);
            load.steps_left = (rng.range(5.0, 120.0)) as u32;
            // Somewhere inside a step.
            let into = rng.range(0.0, COMPUTE_MS + COMM_MS) as i64;
            if into < COMPUTE_MS as i64 {
                load.phase = Phase::Compute;
                load.phase_end_ms = start_ms + (COMPUTE_MS as i64 - into).max(1);
            } else {
                load.phase = Phase::Comm;
                load.phase_end_ms = start_ms + (COMPUTE_MS as i64 + COMM_MS as i64 - into).max(1);
            }
        } else {
            load.phase = Phase::Idle;
            load.phase_end_ms = start_ms + rng.range(1000.0, 10_000.0) as i64;
        }
        load.rng = rng;
        load
    }

    fn start_job(&mut self, rng: &mut Prng, at_ms: i64) {
        self.job_power_w = rng.range(1000.0, 1200.0);
        self.job_mem_bytes = rng.range(150e9, 250e9) as u64;
        self.steps_left = rng.range(20.0, 150.0) as u32;
        self.phase = Phase::Compute;
        self.phase_end_ms = at_ms + (COMPUTE_MS * rng.jitter(0.05)) as i64;
    }

    /// Moves the schedule forward so that the phase is the one at `t_ms`.
    pub(crate) fn advance(&mut self, t_ms: i64) {
        let mut rng = self.rng.clone();
        while self.phase_end_ms <= t_ms {
            let at = self.phase_end_ms;
            match self.phase {
                Phase::Compute => {
                    self.phase = Phase::Comm;
                    self.phase_end_ms = at + (COMM_MS * rng.jitter(0.1)) as i64;
                }
                Phase::Comm if self.steps_left > 0 => {
                    self.steps_left -= 1;
                    self.phase = Phase::Compute;
                    self.phase_end_ms = at + (COMPUTE_MS * rng.jitter(0.05)) as i64;
                }
                Phase::Comm => {
                    self.phase = Phase::Idle;
                    self.job_mem_bytes = IDLE_MEM_BYTES;
                    self.phase_end_ms = at + rng.range(3000.0, 12_000.0) as i64;
                }
                Phase::Idle => self.start_job(&mut rng, at),
            }
        }
        self.rng = rng;
    }

    /// The phase at the last `advance`.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The power a GPU of this node draws in the current phase, before jitter, W.
    pub(crate) fn gpu_target_w(&self) -> f64 {
        match self.phase {
            Phase::Idle => IDLE_W,
            Phase::Compute => self.job_power_w,
            Phase::Comm => 0.5 * self.job_power_w,
        }
    }

    /// Memory a GPU of this node holds, bytes.
    pub(crate) fn mem_used_bytes(&self) -> u64 {
        self.job_mem_bytes
    }
}

/// The steady-state core temperature at `power_w`, °C.
pub(crate) fn steady_temp_c(power_w: f64) -> f64 {
    TEMP_BASE_C + TEMP_PER_W * power_w
}

/// First-order lag: the core temperature after `dt_ms` at constant `power_w`.
pub(crate) fn next_temp_c(temp_c: f64, power_w: f64, dt_ms: i64) -> f64 {
    let target = steady_temp_c(power_w);
    target + (temp_c - target) * (-(dt_ms as f64) / TEMP_TAU_MS).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_deterministic_and_uniform_enough() {
        let mut a = Prng::new(42);
        let mut b = Prng::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| a.unit()).collect();
        assert!(xs
            .iter()
            .zip((0..10_000).map(|_| b.unit()))
            .all(|(x, y)| *x == y));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn schedule_has_steps_and_gaps() {
        let mut load = NodeLoad::new(7, 0);
        let (mut compute, mut comm, mut idle) = (0, 0, 0);
        for t in (0..600_000).step_by(100) {
            load.advance(t);
            match load.phase() {
                Phase::Compute => compute += 1,
                Phase::Comm => comm += 1,
                Phase::Idle => idle += 1,
            }
            assert!(load.gpu_target_w() <= POWER_LIMIT_W);
        }
        assert!(
            compute > 3 * comm && comm > 0 && idle > 0,
            "{compute} {comm} {idle}"
        );
    }

    #[test]
    fn schedule_does_not_depend_on_the_cadence() {
        let mut fine = NodeLoad::new(3, 1000);
        let mut coarse = NodeLoad::new(3, 1000);
        for t in (1000..100_000).step_by(10) {
            fine.advance(t);
        }
        coarse.advance(99_990);
        assert_eq!(fine.phase(), coarse.phase());
        assert_eq!(fine.phase_end_ms, coarse.phase_end_ms);
    }

    #[test]
    fn temperature_lags_toward_steady_state() {
        let mut t = steady_temp_c(IDLE_W);
        t = next_temp_c(t, 1100.0, 5000);
        let target = steady_temp_c(1100.0);
        let start = steady_temp_c(IDLE_W);
        // One time constant: 63 % of the way.
        assert!(((t - start) / (target - start) - 0.632).abs() < 0.01);
    }
}
