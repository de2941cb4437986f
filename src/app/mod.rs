//! The application above the library: the command line ([`cli`]), what each command does
//! ([`commands`]), and the experiments built on runs ([`experiments`]: sweeps, reports, plots,
//! benchmarks). Nothing in the library imports from here.
pub mod cli;
pub mod commands;
pub mod experiments;
