//! File formats read by more than one part of the trainer: GGUF model files (weights for
//! [`crate::policy`], vocabulary and chat template for [`crate::text`]).
pub mod gguf;
