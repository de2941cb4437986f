//! `[actor]`: how many actors, their messages and device.
use serde::{Deserialize, Serialize};

use super::{check, DeviceChoice, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorConfig {
    /// Number of actor threads (parallel mode); serial mode steps the same actors in turn. 0:
    /// none in the learner's process (only actor processes joining through `--transport`).
    pub threads: usize,
    /// Trajectories an actor produces per message.
    pub batch_size: usize,
    /// G: samples drawn per prompt; the relative baseline's V̂ is their mean reward.
    pub group_size: usize,
    /// Messages the actor→learner channel holds before actors block (the back-pressure).
    pub channel_capacity: usize,
    /// Parallel mode: restart an actor thread that panicked (with a fresh RNG stream) instead of
    /// stopping the run.
    pub restart: bool,
    /// Where actors decode: `cpu`, `cuda` or `auto` (each actor holds its own copy of the
    /// weights there).
    pub device: DeviceChoice,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            threads: 2,
            batch_size: 256,
            group_size: 8,
            channel_capacity: 4,
            restart: false,
            device: DeviceChoice::Cpu,
        }
    }
}

impl ActorConfig {
    /// Checks `[actor]`.
    pub fn validate(&self) -> Result<()> {
        let a = self;
        check(
            a.threads <= 256,
            "actor.threads",
            "between 0 (only actor processes through --transport) and 256",
            a.threads,
        )?;
        check(a.batch_size >= 1, "actor.batch_size", ">= 1", a.batch_size)?;
        check(a.group_size >= 1, "actor.group_size", ">= 1", a.group_size)?;
        check(
            a.batch_size.is_multiple_of(a.group_size),
            "actor.batch_size",
            &format!("a multiple of actor.group_size ({})", a.group_size),
            a.batch_size,
        )?;
        check(
            a.channel_capacity >= 1,
            "actor.channel_capacity",
            ">= 1",
            a.channel_capacity,
        )?;

        Ok(())
    }
}
