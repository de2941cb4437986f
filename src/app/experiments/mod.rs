//! Work built on runs: sweeps ([`sweep`]) and what reads their results ([`report`]), figures
//! ([`plot`]), plain-text tables ([`table`]), the throughput benchmark ([`bench`]) and BFCL's
//! judgement of a model ([`bfcl`]).
pub mod bench;
pub mod bench_grpo;
pub mod bench_lm;
pub mod bench_transport;
pub mod bfcl;
pub mod plot;
pub mod report;
pub mod sweep;
pub mod table;
