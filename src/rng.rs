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
}

/// The stream for `(seed, role, index)`.
pub fn stream(seed: u64, role: Role, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((role as u64) << 48) ^ index);
    rng
}
