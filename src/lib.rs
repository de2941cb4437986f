//! # asymre
//!
//! An off-policy reinforcement-learning trainer implementing Asymmetric REINFORCE (AsymRE,
//! Arnal et al. 2025, arXiv 2506.20520) on libtorch: actor threads sample trajectories from a
//! lagged behaviour policy μ into a replay buffer; a learner applies
//! loss = −mean((r − V)·log π(y)) with a configurable baseline V.
//!
//! Modules, in the order data flows:
//! - [`config`]: the one root config, validated once;
//! - [`env`]: environments (the bandit); [`exact`]: the bandit's expected-gradient flow;
//! - [`policy`]: policies and weight snapshots; [`actor`]: `actor_loop`;
//! - [`trajectory`], [`replay`]: what actors send and where the learner keeps it;
//! - [`loss`], [`optim`], [`learner`]: `learner_loop`'s step;
//! - [`train`]: the only place that spawns threads; [`metrics`], [`checkpoint`], [`plot`];
//! - [`bench`]: throughput against a plain PyTorch baseline.
pub mod actor;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod env;
pub mod error;
pub mod exact;
pub mod ids;
pub mod learner;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod policy;
pub mod replay;
pub mod reward;
pub mod rng;
pub mod rollout;
pub mod sweep;
pub mod text;
pub mod train;
pub mod trajectory;
pub mod warmstart;

pub use config::Config;
pub use error::{Error, Result};
