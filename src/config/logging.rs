//! `[logging]` and `[checkpoint]`: what a run writes and how often.
use serde::{Deserialize, Serialize};

use super::{check, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Learner steps between metric rows.
    pub every: u64,
    /// Also write TensorBoard event files under `tb/`.
    pub tensorboard: bool,
    /// Show a progress bar on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Tool use: learner steps between held-out evaluations (0 = only after the warm start and
    /// at the end).
    pub eval_every: u64,
    /// Tool use: held-out episodes per evaluation (greedy decoding).
    pub eval_episodes: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            every: 50,
            tensorboard: true,
            progress: true,
            eval_every: 0,
            eval_episodes: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Learner steps between checkpoints (0 = only at the end).
    pub every: u64,
    /// Checkpoints kept on disk, newest first.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 2000,
            keep: 2,
        }
    }
}

impl LoggingConfig {
    /// Checks `[logging]`.
    pub fn validate(&self) -> Result<()> {
        check(
            self.eval_episodes >= 1,
            "logging.eval_episodes",
            ">= 1",
            self.eval_episodes,
        )?;
        let g = self;
        check(g.every >= 1, "logging.every", ">= 1", g.every)?;
        Ok(())
    }
}

impl CheckpointConfig {
    /// Checks `[checkpoint]`.
    pub fn validate(&self) -> Result<()> {
        check(self.keep >= 1, "checkpoint.keep", ">= 1", self.keep)?;
        Ok(())
    }
}
