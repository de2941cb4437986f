//! The replay buffer: a bounded ring owned by the learner thread (never shared).
//!
//! It also paces the learner: step k may run only once enough trajectories have arrived for
//! every trajectory to be used `reuse` times on average, so a fast learner waits for the actors
//! instead of overfitting a stale buffer.
use std::collections::VecDeque;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ReplayConfig, Sampling};
use crate::trajectory::Trajectory;

/// The ring and its counters; serialisable whole for exact resumption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replay {
    buf: VecDeque<Trajectory>,
    capacity: usize,
    sampling: Sampling,
    reuse: f64,
    batch_size: usize,
    /// Global index (arrival order) of `buf[0]`.
    front_index: u64,
    /// Trajectories ever pushed.
    inserted: u64,
    /// Trajectories dropped for exceeding `max_policy_lag`.
    stale_dropped: u64,
}

impl Replay {
    pub fn new(cfg: &ReplayConfig, batch_size: usize) -> Self {
        Replay {
            buf: VecDeque::with_capacity(cfg.capacity),
            capacity: cfg.capacity,
            sampling: cfg.sampling,
            reuse: cfg.reuse,
            batch_size,
            front_index: 0,
            inserted: 0,
            stale_dropped: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    pub fn stale_dropped(&self) -> u64 {
        self.stale_dropped
    }

    /// Appends one trajectory, evicting the oldest when full.
    pub fn push(&mut self, t: Trajectory) {
        if self.buf.len() == self.capacity {
            self.buf.pop_front();
            self.front_index += 1;
        }
        self.buf.push_back(t);
        self.inserted += 1;
    }

    /// Appends a message's trajectories in arrival order, evicting the oldest when full: one bulk
    /// copy, where pushing them one by one costs a call per trajectory.
    pub fn push_many(&mut self, batch: Vec<Trajectory>) {
        let incoming = batch.len();
        // What would not fit even in an empty ring is evicted on arrival.
        let skip = incoming.saturating_sub(self.capacity);
        let evict = (self.buf.len() + incoming - skip).saturating_sub(self.capacity);
        self.buf.drain(..evict);
        if skip == 0 {
            self.buf.extend(batch);
        } else {
            self.buf.extend(batch.into_iter().skip(skip));
        }
        self.front_index += (evict + skip) as u64;
        self.inserted += incoming as u64;
    }

    /// Drops trajectories from the front whose policy is more than `max_lag` steps older than
    /// `version` (0 = no limit).
    pub fn evict_stale(&mut self, version: u64, max_lag: u64) {
        if max_lag == 0 {
            return;
        }
        while let Some(front) = self.buf.front() {
            if version.saturating_sub(front.policy_version) <= max_lag {
                break;
            }
            self.buf.pop_front();
            self.front_index += 1;
            self.stale_dropped += 1;
        }
    }

    /// First global index of learner step `step`'s window in FIFO mode.
    fn fifo_start(&self, step: u64) -> u64 {
        let start = (step as f64 * self.batch_size as f64 / self.reuse).floor() as u64;
        start.max(self.front_index)
    }

    /// Whether learner step `step` has the data it needs.
    pub fn ready(&self, step: u64) -> bool {
        match self.sampling {
            Sampling::Fifo => self.inserted >= self.fifo_start(step) + self.batch_size as u64,
            Sampling::Uniform => {
                self.buf.len() >= self.batch_size
                    && self.inserted as f64 * self.reuse
                        >= ((step + 1) * self.batch_size as u64) as f64
            }
        }
    }

    /// The positions in the ring of learner step `step`'s batch. Call only when [`Replay::ready`].
    pub fn sample(&self, step: u64, rng: &mut impl Rng) -> Vec<usize> {
        match self.sampling {
            Sampling::Fifo => {
                let first = (self.fifo_start(step) - self.front_index) as usize;
                (first..first + self.batch_size).collect()
            }
            Sampling::Uniform => (0..self.batch_size)
                .map(|_| rng.gen_range(0..self.buf.len()))
                .collect(),
        }
    }

    pub fn get(&self, pos: usize) -> &Trajectory {
        &self.buf[pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn traj(i: u64, version: u64) -> Trajectory {
        Trajectory {
            prompt: i,
            actions: vec![i as u32].into(),
            reward: 0.0,
            behaviour_logp: 0.0,
            group_mean: 0.0,
            behaviour_value: None,
            policy_version: version,
            policy_mask: Vec::new(),
            stats: None,
            behaviour_token_logp: Vec::new(),
            group_std: 0.0,
        }
    }

    fn cfg(capacity: usize, sampling: Sampling, reuse: f64) -> ReplayConfig {
        ReplayConfig {
            capacity,
            sampling,
            reuse,
            max_policy_lag: 0,
        }
    }

    #[test]
    fn ring_is_bounded_and_evicts_oldest() {
        let mut r = Replay::new(&cfg(4, Sampling::Fifo, 1.0), 2);
        for i in 0..10 {
            r.push(traj(i, 0));
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.inserted(), 10);
        assert_eq!(r.get(0).prompt, 6);
    }

    #[test]
    fn pushing_a_batch_is_pushing_its_trajectories_one_by_one() {
        for (capacity, sizes) in [(4, vec![3, 3, 1]), (5, vec![7, 2]), (3, vec![0, 3, 3])] {
            let (mut one, mut many) = (
                Replay::new(&cfg(capacity, Sampling::Fifo, 1.0), 2),
                Replay::new(&cfg(capacity, Sampling::Fifo, 1.0), 2),
            );
            let mut next = 0;
            for size in sizes {
                let batch: Vec<Trajectory> = (next..next + size).map(|i| traj(i, 0)).collect();
                next += size;
                for t in batch.clone() {
                    one.push(t);
                }
                many.push_many(batch);
                assert_eq!(many, one);
            }
        }
    }

    #[test]
    fn fifo_with_reuse_one_uses_each_sample_once_in_order() {
        let mut r = Replay::new(&cfg(100, Sampling::Fifo, 1.0), 3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut seen = vec![];
        for i in 0..9 {
            r.push(traj(i, 0));
        }
        for step in 0..3 {
            assert!(r.ready(step));
            seen.extend(
                r.sample(step, &mut rng)
                    .into_iter()
                    .map(|p| r.get(p).prompt),
            );
        }
        assert!(!r.ready(3));
        assert_eq!(seen, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn fifo_with_reuse_two_overlaps_windows() {
        let mut r = Replay::new(&cfg(100, Sampling::Fifo, 2.0), 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for i in 0..6 {
            r.push(traj(i, 0));
        }
        let w1: Vec<u64> = r
            .sample(1, &mut rng)
            .into_iter()
            .map(|p| r.get(p).prompt)
            .collect();
        assert_eq!(w1, vec![2, 3, 4, 5]);
        assert!(r.ready(1) && !r.ready(2));
    }

    #[test]
    fn uniform_is_paced_by_reuse() {
        let mut r = Replay::new(&cfg(100, Sampling::Uniform, 2.0), 4);
        for i in 0..4 {
            r.push(traj(i, 0));
        }
        // 4 inserted × reuse 2 = 8 sample-uses: steps 0 and 1, not 2.
        assert!(r.ready(0) && r.ready(1) && !r.ready(2));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert!(r.sample(0, &mut rng).iter().all(|&p| p < 4));
    }

    #[test]
    fn stale_samples_are_dropped_and_counted() {
        let mut r = Replay::new(&cfg(100, Sampling::Fifo, 1.0), 2);
        for (i, v) in [0, 0, 5, 10].into_iter().enumerate() {
            r.push(traj(i as u64, v));
        }
        r.evict_stale(12, 7);
        assert_eq!(r.len(), 2);
        assert_eq!(r.stale_dropped(), 2);
        assert_eq!(r.get(0).policy_version, 5);
        // The FIFO window skips what was evicted.
        assert!(r.ready(0));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(r.sample(0, &mut rng), vec![0, 1]);
    }
}
