//! One seed, many independent streams: every random stream is a ChaCha8 generator keyed by
//! `(seed, role, index)`, so adding an actor never shifts another stream.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Who draws from a stream.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Role {
    /// The environment's fixed draws (the bandit's arm rewards).
    Env = 1,
    /// The initial policy parameters.
    Init = 2,
    /// Actor `index`.
    Actor = 3,
    /// The learner's replay sampling.
    Learner = 4,
    /// A prompt's item ([`crate::ids::PromptId`]).
    Item = 5,
    /// An episode's sampling stream ([`crate::ids::SourceId::episode_stream`]).
    Episode = 6,
    /// Greedy evaluation (draws nothing it uses; rollouts take a stream per episode).
    Eval = 7,
}

/// The stream for `(seed, role, index)`.
pub fn stream(seed: u64, role: Role, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((role as u64) << 48) ^ index);
    rng
}

/// The stream keyed by `(seed, role, a, b, stream)`: each value has its own bytes of the ChaCha8
/// key (seed, role, a, b) and the stream number, so distinct tuples never share a stream. The
/// ids of [`crate::ids`] are packed into `a`, `b` and `stream`.
pub fn keyed(seed: u64, role: Role, a: u64, b: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, word) in [seed, role as u64, a, b].into_iter().enumerate() {
        key[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}
