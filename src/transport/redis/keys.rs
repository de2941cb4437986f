//! The names of one run's keys: every key of run `NAME` starts with `asymre:NAME:`.

/// The names of one run's keys.
#[derive(Debug, Clone)]
pub struct RunKeys {
    prefix: String,
}

impl RunKeys {
    pub fn new(run: &str) -> Self {
        RunKeys {
            prefix: format!("asymre:{run}"),
        }
    }
    pub(super) fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }
    pub fn trajectories(&self) -> String {
        self.key("trajectories")
    }
    pub(super) fn chunk(&self, version: u64, i: usize) -> String {
        self.key(&format!("weights:{version}:{i}"))
    }
    pub(super) fn chunks(&self, version: u64) -> String {
        self.key(&format!("weights:{version}"))
    }
    pub(super) fn latest(&self) -> String {
        self.key("latest")
    }
    pub(super) fn versions(&self) -> String {
        self.key("versions")
    }
    pub(super) fn stop(&self) -> String {
        self.key("stop")
    }
    pub(super) fn failure(&self) -> String {
        self.key("failure")
    }
    pub(super) fn learner(&self) -> String {
        self.key("learner")
    }
    pub(super) fn claimed(&self) -> String {
        self.key("claimed")
    }
    /// A short stream with an entry at every learner step and at the stop: what paced actors
    /// block on.
    pub(super) fn steps(&self) -> String {
        self.key("steps")
    }
    /// The run's resolved config (TOML), for actors that join.
    pub fn config(&self) -> String {
        self.key("config")
    }
    /// The learner's session (actors' prompt ids carry it).
    pub fn session(&self) -> String {
        self.key("session")
    }
    /// The next actor id to hand out (local actors take the first ones).
    pub fn actor_ids(&self) -> String {
        self.key("actor_ids")
    }
    /// Actor `id`'s heartbeat: its sender's name, with a time to live.
    pub fn alive(&self, id: usize) -> String {
        self.key(&format!("alive:{id}"))
    }
    /// Version `version`'s file name, for weights on a shared filesystem.
    pub(super) fn weights_file(&self, version: u64) -> String {
        format!("{}-weights-{version}.bin", self.prefix.replace(':', "-"))
    }
    /// Every heartbeat of the run (a `SCAN` pattern).
    pub fn alive_pattern(&self) -> String {
        self.key("alive:*")
    }
}
