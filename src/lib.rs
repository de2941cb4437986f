//! # asymre
//!
//! An off-policy reinforcement-learning trainer implementing Asymmetric REINFORCE (AsymRE,
//! Arnal et al. 2025, arXiv 2506.20520) on libtorch: actor threads sample trajectories from a
//! lagged behaviour policy μ into a replay buffer; a learner applies
//! loss = −mean((r − V)·log π(y)) with a configurable baseline V.
//!
//! Modules, from the bottom up (imports point down; no circles):
//! - [`error`], [`math`], [`rng`], [`clock`], [`ids`], [`device`]: errors, numerics, seeded
//!   streams, the UTC date, disjoint ids, devices;
//! - [`formats`]: files read by several layers (GGUF, capped JSON lines, `.venv` packages);
//!   [`text`]: tokenizers and chat templates;
//! - [`config`]: the one root config, a file per section, validated once;
//! - [`env`]: environments (the bandit; tool-use tasks, their tools, protocol and rewards);
//! - [`policy`]: policies (tabular, the small transformer, pretrained LMs) behind the
//!   sequence-policy boundary, and weight snapshots; [`rollout`]: the one batched decoding loop;
//! - [`trajectory`]: the plain data actors send;
//! - [`rl`]: the replay buffer, losses, the optimiser, the learner and the actors;
//! - [`transport`]: how actors and learner meet (in process: a channel and a snapshot board);
//! - [`store`]: checkpoints and metric sinks; [`run`]: serial, parallel and multi-host runs of
//!   any environment through one runner, the only place threads are spawned;
//! - [`app`], above the library: the command line, the commands, and the experiments built on
//!   runs (sweeps, reports, plots, benchmarks).
pub mod app;
pub mod clock;
pub mod config;
pub mod device;
pub mod env;
pub mod error;
pub mod formats;
pub mod ids;
pub mod math;
pub mod parallel;
pub mod policy;
pub mod rl;
pub mod rng;
pub mod rollout;
pub mod run;
pub mod store;
pub mod text;
pub mod trajectory;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
