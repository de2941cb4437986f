//! Environments: what produces rewards for the actors' samples.
pub mod bandit;

pub use bandit::Bandit;
