//! File formats read by more than one part of the trainer: GGUF model files (weights for
//! [`crate::policy`], vocabulary and chat template for [`crate::text`]), and JSON-lines files
//! read with a cap on each line ([`lines`]: datasets, scored episodes).
pub mod gguf;
pub mod lines;
