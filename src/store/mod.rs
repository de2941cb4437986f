//! What a run writes to disk: checkpoints ([`checkpoint`]) and metric sinks ([`metrics`]).
pub mod checkpoint;
pub mod metrics;
