//! Disjoint ids for everything an actor draws: every (session, actor, restart, message, slot)
//! names its own prompt and its own random streams, by construction.
//!
//! A *session* is one process's stretch of a run (0, then +1 per parallel resume); an actor
//! restarted after a panic gets the next *restart* number; a *message* is the actor's n-th batch
//! of trajectories, and a *slot* a prompt or an episode inside it. Each field keeps its own bits
//! of the ChaCha8 key and stream ([`crate::rng::keyed`]), so no two of these ids share a stream
//! whatever the number of actors, restarts or resumes (the packed counters they replace let a
//! restarted actor 0 draw actor 16's prompts).
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::rng::{keyed, Role};

/// Who produces messages: one actor in one session, between two restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceId {
    pub session: u32,
    pub actor: u32,
    pub restart: u32,
}

/// A prompt x: slot `slot` of message `message` of `source`. The G samples of x share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PromptId {
    pub source: SourceId,
    pub message: u64,
    pub slot: u32,
}

impl SourceId {
    pub fn new(session: u32, actor: u32, restart: u32) -> Self {
        SourceId {
            session,
            actor,
            restart,
        }
    }

    /// Session and actor in one word of the key.
    fn word(self) -> u64 {
        (self.session as u64) << 32 | self.actor as u64
    }

    /// The source's own stream (the bandit actor samples its arms from it).
    pub fn stream(self, seed: u64) -> ChaCha8Rng {
        keyed(seed, Role::Actor, self.word(), self.restart as u64, 0)
    }

    /// The sampling stream of episode `slot` of message `message`.
    pub fn episode_stream(self, seed: u64, message: u64, slot: u32) -> ChaCha8Rng {
        keyed(
            seed,
            Role::Episode,
            self.word(),
            (self.restart as u64) << 32 | slot as u64,
            message,
        )
    }

    pub fn prompt(self, message: u64, slot: u32) -> PromptId {
        PromptId {
            source: self,
            message,
            slot,
        }
    }
}

impl PromptId {
    /// The stream a task draws this prompt's item from.
    pub fn item_stream(&self, seed: u64) -> ChaCha8Rng {
        keyed(
            seed,
            Role::Item,
            self.source.word(),
            (self.source.restart as u64) << 32 | self.slot as u64,
            self.message,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::collections::HashSet;

    /// Many actors (past the old 16- and 128-actor limits), restarts and sessions: every prompt
    /// draws a different item stream and every episode a different sampling stream, and neither
    /// kind repeats a source's own stream.
    #[test]
    fn every_prompt_and_episode_has_its_own_stream() {
        let mut first_words = HashSet::new();
        let mut prompts = HashSet::new();
        let mut count = 0;
        for session in [0, 1, 2, u32::MAX] {
            for actor in [0, 1, 15, 16, 17, 127, 128, 255, 256, 4096, u32::MAX] {
                for restart in [0, 1, 2, 16, u32::MAX] {
                    let source = SourceId::new(session, actor, restart);
                    assert!(first_words.insert(source.stream(7).gen::<u128>()));
                    count += 1;
                    for message in [0, 1, 2, 1 << 36, u64::MAX] {
                        for slot in [0, 1, 7, u32::MAX] {
                            let p = source.prompt(message, slot);
                            assert!(prompts.insert(p));
                            assert!(first_words.insert(p.item_stream(7).gen::<u128>()));
                            let e = source.episode_stream(7, message, slot);
                            assert!(first_words.insert(e.clone().gen::<u128>()));
                            count += 2;
                        }
                    }
                }
            }
        }
        assert_eq!(first_words.len(), count);
        assert_eq!(prompts.len(), 4 * 11 * 5 * 5 * 4);
    }
}
