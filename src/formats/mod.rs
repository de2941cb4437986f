//! File formats read by more than one part of the trainer: GGUF model files (weights for
//! [`crate::policy`], vocabulary and chat template for [`crate::text`]), and JSON-lines files
//! read with a cap on each line ([`lines`]: datasets, scored episodes), and the files PyPI
//! packages put in the project's `.venv` ([`venv`]).
pub mod gguf;
pub mod lines;
pub mod venv;
