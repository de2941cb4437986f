//! Environments: what produces rewards for the actors' samples.
pub mod bandit;
pub mod tool_use;

pub use bandit::Bandit;
