//! Work built on runs: sweeps ([`sweep`]) and what reads their results ([`report`]), figures
//! ([`plot`]), plain-text tables ([`table`]) and the throughput benchmark ([`bench`]).
pub mod bench;
pub mod bench_grpo;
pub mod bench_lm;
pub mod bench_transport;
pub mod plot;
pub mod report;
pub mod sweep;
pub mod table;
