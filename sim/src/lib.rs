//! # dcwatt-sim: a simulated liquid-cooled GPU hall
//!
//! Drives the demo, the end-to-end tests and the benchmarks. A hall of racks
//! of nodes of GB300-class GPUs runs training jobs; the simulator serves its
//! facility and IT meters over real Redfish HTTP, writes one fake NVML state
//! file per node (read by `dcwatt-fake-nvml`'s `libnvidia-ml.so.1`), and knows
//! the ground truth of every joule (`/sim/truth`), counter resets included.
//! The HTTP contract is `docs/interfaces.md` ("Simulator HTTP").
//!
//! Run it in-process with [`serve`] (bind `127.0.0.1:0`, pass the listener and
//! a shutdown future) — or [`Sim::new`] first when the state files must exist
//! before anything else starts, then [`Sim::serve`] — or as `dcwatt-sim serve …`. Use [`Hall`] directly for
//! physics without wall-clock time.
//!
//! # Layout
//! - [`hall`]: the physics — powers, thermals, meters, truth, resets.
//! - `load`: one node's load schedule (training steps, idle gaps), the PRNG,
//!   the thermal model.
//! - [`redfish`]: the meters as Redfish `PowerEquipment` resources.
//! - [`launch`]: configs, tokens and processes of a deployment against the simulator.
//! - [`loadgen`]: `dcwatt-sim load`, a hall's worth of agents against one collector.
//! - [`agentbench`]: `dcwatt-sim agent-bench`, one agent's CPU, RSS and scrape
//!   latency beside node_exporter; [`measure`]: CPU, RSS and percentiles of both.
//! - [`demo`]: `dcwatt-sim demo`, the whole pipeline with a live line per second.
//! - `server`: [`Sim`], [`serve`], wall-clock ticks, fake NVML state files, `/sim/*`.

use std::path::PathBuf;

pub mod agentbench;
pub mod demo;
pub mod hall;
pub mod launch;
mod load;
pub mod loadgen;
pub mod measure;
pub mod redfish;
mod server;

pub use hall::{
    Entity, Hall, HallError, MeterInfo, MeterReading, MeterRole, NodeInfo, PowerSummary,
    WaterReading,
};
pub use load::Phase;
pub use server::{serve, Sim, SimError};

/// The hall to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Racks, each with one IT PDU (`pdu-r{R}`), at least 1.
    pub racks: u32,
    /// Nodes per rack (`r{R}-n{N}`), at least 1.
    pub nodes_per_rack: u32,
    /// GPUs per node, 1..=64.
    pub gpus_per_node: u32,
    /// Seeds every load schedule, jitter and GPU UUID: same seed, same hall.
    pub seed: u64,
    /// Where [`serve`] writes each node's fake NVML state file, `{node}.nvml`
    /// (created if missing).
    pub state_dir: PathBuf,
}

/// Wall-clock time, Unix milliseconds (the one clock every binary reads).
pub use dcwatt_wire::time::now_ms;
