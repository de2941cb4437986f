//! Decoding: policies playing episodes. One batched loop ([`decode`]) with one sampler
//! ([`sample`]) serves every sequence: tool-use episodes in any protocol ([`Player`]: what actors
//! sample and evaluation runs greedily) and plain text ([`generate`]: `asymre generate` and the
//! decoding benchmark).
mod decode;
pub mod generate;
pub mod sample;

use rand_chacha::ChaCha8Rng;
use tch::Device;

use crate::env::tool_use::reward::{self, Call, RewardConfig, ScoreMeans};
use crate::env::{Decodable, Protocol, ProtocolEpisode, Split, TaskSource, ToolSet};
use crate::error::{Error, Result};
use crate::policy::SequencePolicy;
use crate::rng::{self, Role};

pub use sample::Decoding;

/// A finished sequence with the behaviour log-probability of the tokens the policy chose.
pub struct Rollout<E> {
    pub episode: E,
    /// log μ(y): summed over sampled tokens (0 under greedy decoding).
    pub behaviour_logp: f64,
    /// log μ of each token, aligned with `episode.tokens` (0 where the policy did not write it).
    pub token_logp: Vec<f32>,
}

/// A policy playing a task source's items in a protocol, on a device: the (environment,
/// protocol, policy) triple of a tool-use run.
pub struct Player<'a, P, T, R> {
    pub model: &'a P,
    pub task: &'a T,
    pub protocol: &'a R,
    pub device: Device,
}

impl<P, T, R> Player<'_, P, T, R>
where
    P: SequencePolicy,
    T: TaskSource + ToolSet<T::Item>,
    R: Protocol<T>,
{
    /// Runs `items` to completion, each episode drawing from its own stream of `streams`.
    pub fn rollout(
        &self,
        items: Vec<T::Item>,
        decoding: Decoding,
        streams: Vec<ChaCha8Rng>,
    ) -> Result<Vec<Rollout<R::Episode>>> {
        let items = self.task.begin(items);
        let abandon = |items: &[T::Item]| {
            self.task.end(items.iter().map(|i| (i, None)).collect());
        };
        let episodes = match items
            .iter()
            .map(|it| self.protocol.start(self.task, it.clone()))
            .collect::<Result<Vec<_>>>()
        {
            Ok(e) => e,
            Err(e) => {
                abandon(&items);
                return Err(e);
            }
        };
        let max_tokens = self.protocol.max_tokens().min(self.model.context_len());
        let mut rollouts = match decode::decode(
            self.model,
            episodes,
            max_tokens,
            decoding,
            streams,
            self.device,
            decode::BATCHING,
            |episodes| run_pending_calls(episodes, self.task),
        ) {
            Ok(r) => r,
            Err(e) => {
                abandon(&items);
                return Err(e);
            }
        };
        let ended: Vec<T::Item> = rollouts.iter().map(|r| r.episode.item().clone()).collect();
        self.task.end(
            ended
                .iter()
                .zip(rollouts.iter_mut().map(|r| Some(r.episode.attempt_mut())))
                .collect(),
        );
        Ok(rollouts)
    }

    /// Greedy episodes on items `0..episodes` of `split`, `batch` at a time, scored with
    /// `reward`; `on_episode` sees each.
    pub fn evaluate(
        &self,
        split: Split,
        episodes: usize,
        batch: usize,
        reward: &RewardConfig,
        mut on_episode: impl FnMut(&R::Episode),
    ) -> Result<ScoreMeans> {
        let mut stats = ScoreMeans::default();
        let indices: Vec<u64> = (0..episodes as u64).collect();
        for chunk in indices.chunks(batch.max(1)) {
            let items = chunk.iter().map(|&i| self.task.item(split, i)).collect();
            // Greedy decoding draws nothing from its streams.
            let streams = chunk
                .iter()
                .map(|&i| rng::keyed(0, Role::Eval, 0, 0, i))
                .collect();
            for r in self.rollout(items, Decoding::Greedy, streams)? {
                let ep = &r.episode;
                let gold = self
                    .task
                    .gold(ep.item())
                    .ok_or_else(|| Error::Corrupt("an item has no gold".into()))?;
                stats.add(
                    &reward::score(reward, ep.attempt(), &gold),
                    ep.tokens().len() - ep.prompt_len(),
                );
                on_episode(ep);
            }
        }
        Ok(stats.finish())
    }
}

/// Runs the calls the episodes completed in this decoding step, all in one
/// [`ToolSet::execute_batch`], and delivers each episode its results.
fn run_pending_calls<T, E>(episodes: &mut [E], task: &T)
where
    T: TaskSource + ToolSet<T::Item>,
    E: ProtocolEpisode<T>,
{
    let waiting: Vec<usize> = (0..episodes.len())
        .filter(|&i| !episodes[i].pending_calls().is_empty())
        .collect();
    if waiting.is_empty() {
        return;
    }
    let mut results = {
        let calls: Vec<(&T::Item, &Call)> = waiting
            .iter()
            .flat_map(|&i| {
                let ep = &episodes[i];
                ep.pending_calls().iter().map(move |c| (ep.item(), c))
            })
            .collect();
        task.execute_batch(&calls).into_iter()
    };
    for i in waiting {
        let n = episodes[i].pending_calls().len();
        let mine: Vec<_> = results.by_ref().take(n).collect();
        episodes[i].deliver(mine);
    }
}

#[cfg(test)]
mod tests {
    use super::decode::{decode, Batching};
    use super::*;
    use crate::env::tool_use::protocol::{Episode, Limits, TokenProtocol};
    use crate::env::tool_use::tasks::{Item, Task};
    use tch::Kind;

    /// `n` sampling streams for a test's episodes.
    fn streams(n: usize, seed: u64) -> Vec<ChaCha8Rng> {
        (0..n as u64)
            .map(|i| crate::rng::keyed(seed, crate::rng::Role::Episode, 0, 0, i))
            .collect()
    }

    const LIMITS: Limits = Limits::new(48, 2);

    /// The task's tools, counting how many batches they were asked to run and of what size.
    struct Counting<'a> {
        task: &'a Task,
        batches: std::sync::Mutex<Vec<usize>>,
    }

    impl ToolSet<Item> for Counting<'_> {
        fn execute(
            &self,
            item: &Item,
            call: &crate::env::tool_use::reward::Call,
        ) -> std::result::Result<String, String> {
            self.task.execute(item, call)
        }

        fn execute_batch(
            &self,
            calls: &[(&Item, &crate::env::tool_use::reward::Call)],
        ) -> Vec<std::result::Result<String, String>> {
            self.batches.lock().unwrap().push(calls.len());
            calls.iter().map(|(i, c)| self.task.execute(i, c)).collect()
        }
    }

    impl TaskSource for Counting<'_> {
        type Item = Item;
        fn prompt_item(&self, id: &crate::ids::PromptId) -> Item {
            self.task.prompt_item(id)
        }
        fn item(&self, split: crate::env::Split, index: u64) -> Item {
            self.task.item(split, index)
        }
        fn prompt(&self, item: &Item) -> String {
            self.task.prompt(item)
        }
        fn tools(&self, item: &Item) -> Vec<crate::env::ToolSpec> {
            TaskSource::tools(self.task, item)
        }
        fn gold(&self, item: &Item) -> Option<crate::env::tool_use::reward::Gold> {
            self.task.gold(item)
        }
        fn name(&self) -> String {
            self.task.name()
        }
        fn locate(&self, id: Option<&serde_json::Value>, prompt: &str) -> Result<Item, String> {
            self.task.locate(id, prompt)
        }
    }

    /// The calls that episodes complete in one decoding step go to the tools in one batch, and
    /// each episode gets what running its own call alone would have given it.
    #[test]
    fn a_steps_calls_run_as_one_batch() {
        use crate::env::tool_use::tasks::{tests::spec, Split, TaskKind};
        let task = Task::new(spec(TaskKind::Calc));
        let counting = Counting {
            task: &task,
            batches: Default::default(),
        };
        let texts = [
            "CALL add a 1 b 2 /CALL",
            "CALL mul a 3 b 4 /CALL",
            "CALL get a 3 b 4 /CALL", // a wrong call: an error, still in the batch
            "CALL add a 1 /CALL b",   // a call closed two steps earlier
            "ANS 5",                  // no call
        ];
        let item = task.item(Split::Train, 0);
        let mut batched: Vec<Episode> = texts
            .iter()
            .map(|_| Episode::new(&counting, item.clone(), LIMITS))
            .collect();
        let mut alone = batched.clone();
        let tokens: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| crate::text::words::encode(t).unwrap())
            .collect();
        let steps = tokens.iter().map(Vec::len).max().unwrap();
        for step in 0..steps {
            for (ep, toks) in batched.iter_mut().zip(&tokens) {
                if let Some(&t) = toks.get(step) {
                    ep.push_token(t);
                }
            }
            run_pending_calls(&mut batched, &counting);
            for (ep, toks) in alone.iter_mut().zip(&tokens) {
                if let Some(&t) = toks.get(step) {
                    ep.push_policy(t, &task);
                }
            }
        }
        // Step 4 closes the short call; step 6 closes three calls at once.
        assert_eq!(*counting.batches.lock().unwrap(), [1, 3]);
        for (b, a) in batched.iter_mut().zip(&mut alone) {
            assert_eq!(b.attempt, a.attempt);
            let (mut fb, mut fa) = (Vec::new(), Vec::new());
            while let Some(t) = b.take_forced() {
                fb.push(t);
            }
            while let Some(t) = a.take_forced() {
                fa.push(t);
            }
            assert_eq!(fb, fa);
        }
        assert_eq!(batched[0].attempt.results, [Some("3".to_string())]);
        assert_eq!(batched[2].attempt.results, [None]);
    }

    /// An untrained one-block decoder and the chain task.
    fn untrained() -> (tch::nn::VarStore, crate::policy::Transformer, Task) {
        use crate::env::tool_use::tasks::{tests::spec, TaskKind};
        use crate::policy::transformer::TransformerConfig;
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let tcfg = TransformerConfig {
            layers: 1,
            d_model: 32,
            heads: 2,
            ..Default::default()
        };
        let vocab = crate::text::words::size();
        let model = crate::policy::Transformer::new(&vs.root(), &tcfg, vocab, 48);
        crate::policy::seeded_init(&vs, 4);
        (vs, model, Task::new(spec(TaskKind::Chain)))
    }

    /// Dropping finished episodes from the batch and prefilling a shared prompt once change
    /// nothing any episode decodes: the same tokens and the same log μ as a batch that prefills
    /// every row and feeds padding to the end.
    #[test]
    fn dropping_finished_rows_and_sharing_prompts_change_no_episode() {
        use crate::env::tool_use::tasks::Split;
        let (vs, model, task) = untrained();
        // End about one episode in six at each token, so that rows finish at different steps.
        tch::no_grad(|| {
            let bias = vs.variables()["head.bias"].shallow_clone();
            let _ = bias.get(crate::text::words::EOS as i64).fill_(2.5);
        });
        for decoding in [Decoding::Sample { temperature: 1.0 }, Decoding::Greedy] {
            let run = |compact_at, share_prefixes| {
                // Four prompts, four samples each.
                let episodes = (0..16)
                    .map(|i| Episode::new(&task, task.item(Split::Train, i / 4), LIMITS))
                    .collect();
                let batching = Batching {
                    compact_at,
                    share_prefixes,
                };
                let cpu = Device::Cpu;
                let n = LIMITS.max_tokens;
                decode(
                    &model,
                    episodes,
                    n,
                    decoding,
                    streams(16, 9),
                    cpu,
                    batching,
                    |eps: &mut [Episode]| run_pending_calls(eps, &task),
                )
                .unwrap()
            };
            let (padded, dropped) = (run(0.0, false), run(1.0, true));
            let mut lengths: Vec<usize> = padded.iter().map(|r| r.episode.tokens.len()).collect();
            lengths.sort_unstable();
            lengths.dedup();
            assert!(
                lengths.len() > 2,
                "{decoding:?}: episodes end together {lengths:?}"
            );
            for (a, b) in padded.iter().zip(&dropped) {
                assert_eq!(a.episode.tokens, b.episode.tokens, "{decoding:?}");
                assert_eq!(a.episode.policy_mask, b.episode.policy_mask);
                for (x, y) in a.token_logp.iter().zip(&b.token_logp) {
                    assert!((x - y).abs() < 1e-5, "{decoding:?}: {x} vs {y}");
                }
                assert!((a.behaviour_logp - b.behaviour_logp).abs() < 1e-4);
            }
        }
    }

    /// The per-token log μ an actor stores is what the padded forward pass computes for
    /// the same weights and tokens, position by position; their sum is the sequence's log μ.
    #[test]
    fn stored_token_logp_matches_the_learner_forward_pass() {
        use crate::env::tool_use::tasks::Split;
        let (_vs, model, task) = untrained();
        // Three prompts, two samples each: the shared prefill feeds both.
        let items = (0..6).map(|i| task.item(Split::Train, i / 2)).collect();
        let limits = LIMITS;
        let sample = Decoding::Sample { temperature: 1.0 };
        let protocol = TokenProtocol { limits };
        let player = Player {
            model: &model,
            task: &task,
            protocol: &protocol,
            device: Device::Cpu,
        };
        let rollouts = player.rollout(items, sample, streams(6, 5)).unwrap();
        let rows = rollouts
            .iter()
            .map(|r| (&r.episode.tokens[..], &r.episode.policy_mask[..]));
        let (tokens, mask) = crate::policy::pad_batch(rows);
        let scores = tch::no_grad(|| model.token_logp(&tokens, &mask)).unwrap();
        for (i, r) in rollouts.iter().enumerate() {
            assert_eq!(r.token_logp.len(), r.episode.tokens.len());
            let got = Vec::<f64>::try_from(scores.token_logp.get(i as i64).to_kind(Kind::Double))
                .unwrap();
            let mut sum = 0.0;
            for (j, &stored) in r.token_logp.iter().enumerate().skip(1) {
                assert!((got[j - 1] - stored as f64).abs() < 1e-3, "{i} {j}");
                assert!(r.episode.policy_mask[j] || stored == 0.0);
                sum += stored as f64;
            }
            assert!(
                (sum - r.behaviour_logp).abs() < 1e-3,
                "{sum} vs {}",
                r.behaviour_logp
            );
        }
        assert!(scores.entropy > 0.0);
    }
}
