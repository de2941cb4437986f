//! The replay buffer: a bounded ring owned by the learner thread (never shared).
//!
//! It also paces the learner: step k may run only once enough trajectories have arrived for
//! every trajectory to be used `reuse` times on average, so a fast learner waits for the actors
//! instead of overfitting a stale buffer.
//!
//! `max_policy_lag` is a guarantee, not a heuristic: every batch is drawn after every sample whose
//! policy is more than `max_policy_lag` learner steps behind has been removed, wherever it sits
//! in the ring (actors' messages arrive out of version order), and each removal is counted in
//! `stale_dropped`. FIFO windows advance over the samples that are still there, so a removal
//! never makes the learner train on the same window twice.
use std::collections::VecDeque;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ReplayConfig, Sampling};
use crate::trajectory::Trajectory;

/// The ring and its counters; serialisable whole for exact resumption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replay {
    /// The ring, in arrival order.
    buf: VecDeque<Entry>,
    capacity: usize,
    sampling: Sampling,
    reuse: f64,
    batch_size: usize,
    max_policy_lag: u64,
    /// Trajectories ever pushed.
    inserted: u64,
    /// Trajectories dropped for exceeding `max_policy_lag` before any batch held them.
    stale_dropped: u64,
    /// FIFO: the arrival number where the next window starts.
    window: u64,
    /// At most the oldest policy version in the ring (`u64::MAX` when empty): while it is
    /// within the lag limit, nothing needs to be scanned.
    oldest: u64,
}

impl Replay {
    pub fn new(cfg: &ReplayConfig, batch_size: usize) -> Self {
        Replay {
            buf: VecDeque::with_capacity(cfg.capacity),
            capacity: cfg.capacity,
            sampling: cfg.sampling,
            reuse: cfg.reuse,
            batch_size,
            max_policy_lag: cfg.max_policy_lag,
            inserted: 0,
            stale_dropped: 0,
            window: 0,
            oldest: u64::MAX,
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
        }
        self.oldest = self.oldest.min(t.policy_version);
        self.buf.push_back(Entry::new(self.inserted, t));
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
        let (first, oldest) = (self.inserted, &mut self.oldest);
        self.buf
            .extend(batch.into_iter().enumerate().skip(skip).map(|(i, t)| {
                *oldest = (*oldest).min(t.policy_version);
                Entry::new(first + i as u64, t)
            }));
        self.inserted += incoming as u64;
    }

    /// Removes every trajectory whose policy is more than `max_policy_lag` steps older than
    /// learner step `step` (0 = no limit), wherever it is in the ring; those no batch held yet
    /// are counted in `stale_dropped`.
    pub fn evict_stale(&mut self, step: u64) {
        let max_lag = self.max_policy_lag;
        if max_lag == 0 || step.saturating_sub(self.oldest) <= max_lag {
            return;
        }
        let (mut dropped, mut oldest) = (0, u64::MAX);
        self.buf.retain(|e| {
            let keep = step.saturating_sub(e.t.policy_version) <= max_lag;
            if keep {
                oldest = oldest.min(e.t.policy_version);
            } else if !e.trained {
                dropped += 1;
            }
            keep
        });
        self.stale_dropped += dropped;
        self.oldest = oldest;
    }

    /// FIFO: how many entries learner step `step`'s window moves on by (`batch_size / reuse`,
    /// rounded so that the windows of steps 0..k cover `floor(k · batch_size / reuse)` entries).
    fn stride(&self, step: u64) -> usize {
        let at = |k: u64| (k as f64 * self.batch_size as f64 / self.reuse).floor() as u64;
        (at(step + 1) - at(step)) as usize
    }

    /// FIFO: the position in the ring where the next window starts.
    fn window_position(&self) -> usize {
        self.buf.partition_point(|e| e.arrival < self.window)
    }

    /// Trajectories kept (pushed and not dropped as stale).
    fn kept(&self) -> u64 {
        self.inserted - self.stale_dropped
    }

    /// Whether learner step `step` has the data it needs (after dropping stale samples).
    pub fn ready(&mut self, step: u64) -> bool {
        self.evict_stale(step);
        match self.sampling {
            Sampling::Fifo => self.buf.len() - self.window_position() >= self.batch_size,
            Sampling::Uniform => {
                self.buf.len() >= self.batch_size
                    && self.kept() as f64 * self.reuse
                        >= ((step + 1) * self.batch_size as u64) as f64
            }
        }
    }

    /// The positions in the ring of learner step `step`'s batch, none of them stale; a FIFO
    /// window moves on. Call only when [`Replay::ready`], once per step.
    pub fn sample(&mut self, step: u64, rng: &mut impl Rng) -> Vec<usize> {
        self.evict_stale(step);
        match self.sampling {
            Sampling::Fifo => {
                let first = self.window_position();
                let stride = self.stride(step);
                let next = first + stride;
                self.window = match next {
                    0 => self.window,
                    n if n <= self.buf.len() => self.buf[n - 1].arrival + 1,
                    // reuse < 1 skips entries that have not arrived yet.
                    n => self.inserted + (n - self.buf.len()) as u64,
                };
                let positions: Vec<usize> =
                    (first..(first + self.batch_size).min(self.buf.len())).collect();
                self.mark_trained(&positions);
                positions
            }
            Sampling::Uniform => {
                let positions: Vec<usize> = (0..self.batch_size)
                    .map(|_| rng.gen_range(0..self.buf.len()))
                    .collect();
                self.mark_trained(&positions);
                positions
            }
        }
    }

    fn mark_trained(&mut self, positions: &[usize]) {
        for &p in positions {
            self.buf[p].trained = true;
        }
    }

    pub fn get(&self, pos: usize) -> &Trajectory {
        &self.buf[pos].t
    }

    /// How many arrivals (counted like [`Replay::inserted`]) learner step `step` needs before it
    /// can run: the pacing point of [`crate::transport::admission_limit`].
    pub fn needed(&self, step: u64) -> u64 {
        match self.sampling {
            Sampling::Fifo => {
                // The arrival that completes the window.
                let present = self.buf.len() - self.window_position();
                match present.checked_sub(self.batch_size) {
                    Some(extra) => self.buf[self.buf.len() - 1 - extra].arrival + 1,
                    None => self.inserted + (self.batch_size - present) as u64,
                }
            }
            Sampling::Uniform => {
                let uses = ((step + 1) * self.batch_size as u64) as f64 / self.reuse;
                (uses.ceil() as u64).max(self.batch_size as u64) + self.stale_dropped
            }
        }
    }

    /// Arrivals consumed per learner step, on average ([`per_step`]).
    pub fn per_step(&self) -> f64 {
        per_step(self.batch_size, self.reuse)
    }
}

/// Arrivals a learner step of `batch_size` samples, each used `reuse` times, consumes on
/// average: `batch_size / reuse` (the actors' pacing needs it without a replay of its own).
pub fn per_step(batch_size: usize, reuse: f64) -> f64 {
    batch_size as f64 / reuse
}

/// One entry of the ring: a trajectory and its bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    /// Its arrival number, counted like [`Replay::inserted`] (increasing along the ring, with
    /// gaps where samples were removed).
    arrival: u64,
    /// Whether a batch held it.
    trained: bool,
    t: Trajectory,
}

impl Entry {
    fn new(arrival: u64, t: Trajectory) -> Self {
        Entry {
            arrival,
            trained: false,
            t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::admission_limit;
    use rand::SeedableRng;

    fn traj(i: u64, version: u64) -> Trajectory {
        Trajectory {
            prompt: crate::ids::SourceId::new(0, 0, 0).prompt(i, 0),
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
        lagged(capacity, sampling, reuse, 0)
    }

    fn lagged(capacity: usize, sampling: Sampling, reuse: f64, max_lag: u64) -> ReplayConfig {
        ReplayConfig {
            capacity,
            sampling,
            reuse,
            max_policy_lag: max_lag,
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
        assert_eq!(r.get(0).actions[0], 6);
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
                    .map(|p| r.get(p).actions[0] as u64),
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
        assert!(r.ready(0));
        assert_eq!(r.sample(0, &mut rng), vec![0, 1, 2, 3]);
        assert!(r.ready(1));
        let w1: Vec<u64> = r
            .sample(1, &mut rng)
            .into_iter()
            .map(|p| r.get(p).actions[0] as u64)
            .collect();
        assert_eq!(w1, vec![2, 3, 4, 5]);
        assert!(!r.ready(2));
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
        let mut r = Replay::new(&lagged(100, Sampling::Fifo, 1.0, 7), 2);
        for (i, v) in [0, 0, 5, 10].into_iter().enumerate() {
            r.push(traj(i as u64, v));
        }
        assert!(r.ready(12));
        assert_eq!(r.len(), 2);
        assert_eq!(r.stale_dropped(), 2);
        assert_eq!(r.get(0).policy_version, 5);
        // The FIFO window skips what was evicted.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(r.sample(12, &mut rng), vec![0, 1]);
    }

    /// Messages from several actors arrive out of version order: a stale sample behind a fresh
    /// one is dropped all the same, and no trained batch ever holds a sample past the limit.
    #[test]
    fn no_batch_holds_a_stale_sample_whatever_the_arrival_order() {
        for sampling in [Sampling::Fifo, Sampling::Uniform] {
            let max_lag = 3;
            let mut r = Replay::new(&lagged(64, sampling, 1.0, max_lag), 4);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let mut step = 0u64;
            let (mut pushed, mut trained) = (0u64, 0u64);
            for round in 0..400u64 {
                // Three actors at different versions, interleaved: fresh, old, middling.
                let behind = [0, 6, 2][(round % 3) as usize];
                let version = step.saturating_sub(behind);
                r.push_many((0..4).map(|i| traj(round * 4 + i, version)).collect());
                pushed += 4;
                while r.ready(step) {
                    for p in r.sample(step, &mut rng) {
                        let lag = step - r.get(p).policy_version;
                        assert!(lag <= max_lag, "{sampling:?}: lag {lag} at step {step}");
                        trained += 1;
                    }
                    step += 1;
                }
            }
            assert!(
                r.stale_dropped() > 0,
                "{sampling:?}: the old actor's samples are stale"
            );
            assert!(trained > 0);
            assert!(r.stale_dropped() + r.len() as u64 <= pushed);
        }
    }

    /// Dropping samples ahead of the FIFO window must not make the learner reuse a window: with
    /// `reuse = 1` every sample is trained at most once.
    #[test]
    fn fifo_trains_each_sample_once_when_samples_are_dropped() {
        let mut r = Replay::new(&lagged(1000, Sampling::Fifo, 1.0, 2), 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::HashSet::new();
        let mut step = 0u64;
        for round in 0..200u64 {
            // Every other message comes from a policy far behind, and is dropped.
            let version = if round % 2 == 0 {
                step
            } else {
                step.saturating_sub(5)
            };
            r.push_many((0..4).map(|i| traj(round * 4 + i, version)).collect());
            while r.ready(step) {
                for p in r.sample(step, &mut rng) {
                    assert!(seen.insert(r.get(p).actions[0]), "sample trained twice");
                }
                step += 1;
            }
        }
        assert!(step > 50, "the learner kept stepping ({step} steps)");
    }

    #[test]
    fn the_admission_limit_keeps_paced_samples_fresh() {
        // batch 4, reuse 1: the learner at step 10 needs 44 arrivals; samples of version 8 with a
        // lag limit of 4 may be trained up to step 12, so arrivals up to 44 + 2·4 = 52.
        assert_eq!(admission_limit(44, 10, 4.0, 8, 4), 52);
        assert_eq!(admission_limit(44, 10, 4.0, 5, 4), 44);
        // Fed exactly what the limit admits, in order, the learner never drops a sample.
        let max_lag = 4;
        let mut r = Replay::new(&lagged(256, Sampling::Fifo, 1.0, max_lag), 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (mut step, mut claimed) = (0u64, 0u64);
        let sync = 2;
        for _ in 0..500 {
            let version = step - step % sync;
            let limit = admission_limit(r.needed(step), step, r.per_step(), version, max_lag);
            if claimed + 4 <= limit || claimed < r.needed(step) {
                r.push_many((0..4).map(|i| traj(claimed + i, version)).collect());
                claimed += 4;
            }
            if r.ready(step) {
                r.sample(step, &mut rng);
                step += 1;
            }
        }
        assert_eq!(r.stale_dropped(), 0);
        assert!(step > 100);
    }

    /// Twelve untrained samples dropped as stale, then twelve fresh ones: four steps train
    /// three different windows and then wait (the ring used to give the first fresh window
    /// four times, since its start was the front of the ring while the step count lagged).
    #[test]
    fn a_drop_does_not_make_the_next_window_repeat() {
        let mut r = Replay::new(&lagged(100, Sampling::Fifo, 1.0, 2), 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for i in 0..12 {
            r.push(traj(i, 0));
        }
        assert!(!r.ready(10));
        assert_eq!(r.stale_dropped(), 12);
        for i in 12..24 {
            r.push(traj(i, 10));
        }
        let mut windows = Vec::new();
        for step in 10..13 {
            assert!(r.ready(step));
            let w: Vec<u32> = r
                .sample(step, &mut rng)
                .into_iter()
                .map(|p| r.get(p).actions[0])
                .collect();
            windows.push(w);
        }
        assert_eq!(
            windows,
            [[12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]
        );
        assert!(!r.ready(13));
    }
}
