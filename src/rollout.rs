//! Batched decoding of tool-use episodes: every episode of a batch advances one token per step
//! through one forward pass with the KV cache. A token is sampled in Rust from the actor's RNG, or
//! forced when the environment has tool results queued.
//!
//! A row of the batch decodes for all the episodes that agree on every token so far: the G
//! samples of a prompt start on one row (the prompt is prefilled once), and a row forks, with a
//! copy of its cache, when its episodes write different tokens. A policy that often samples the
//! same continuation (as a warm-started one does) then decodes far fewer rows than episodes.
//! Finished rows feed padding until a quarter of the batch's rows have finished, or until a fork
//! gathers the cache anyway; then they leave the batch and its cache.
use std::collections::HashMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::env::tool_use::protocol::{Episode, Limits, TokenProtocol};
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::tool_use::tasks::{Item, Task};
use crate::env::{Protocol, ProtocolEpisode, TaskSource, ToolSet};
use crate::error::Result;
use crate::policy::{DecodeCache, SequencePolicy};
use crate::text::words::PAD;

/// How a batch spends its rows.
#[derive(Debug, Clone, Copy)]
struct Batching {
    /// The batch drops its finished episodes' rows (one gather of the KV cache) once at most
    /// this share of its rows still decode; until then finished rows feed padding.
    compact_at: f64,
    /// Episodes that share every token so far share one row: a prompt is prefilled once for
    /// its G samples, and a row forks (a copy of its cache) when its episodes write different
    /// tokens. Off, every episode has its own row.
    share_prefixes: bool,
}

const BATCHING: Batching = Batching {
    compact_at: 0.75,
    share_prefixes: true,
};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Decoding {
    /// Sample from softmax(logits / temperature).
    Sample { temperature: f64 },
    /// The most likely token (evaluation).
    Greedy,
}

/// A finished episode with the behaviour log-probability of the tokens the policy chose.
pub struct Rollout<E = Episode> {
    pub episode: E,
    /// log μ(y): summed over sampled tokens (0 under greedy decoding).
    pub behaviour_logp: f64,
    /// log μ of each token, aligned with `episode.tokens` (0 where the policy did not write it).
    pub token_logp: Vec<f32>,
}

/// Runs `items` to completion with `model` on `device`, in the 60-word token protocol.
pub fn rollout<P: SequencePolicy>(
    model: &P,
    task: &Task,
    items: Vec<Item>,
    limits: Limits,
    decoding: Decoding,
    streams: Vec<ChaCha8Rng>,
    device: Device,
) -> Result<Vec<Rollout>> {
    let protocol = TokenProtocol { limits };
    rollout_with(model, task, &protocol, items, decoding, streams, device)
}

/// Runs `items` of `task` to completion with `model` on `device`, in `protocol`: any sequence
/// policy, task source and protocol.
pub fn rollout_with<P, T, R>(
    model: &P,
    task: &T,
    protocol: &R,
    items: Vec<T::Item>,
    decoding: Decoding,
    streams: Vec<ChaCha8Rng>,
    device: Device,
) -> Result<Vec<Rollout<R::Episode>>>
where
    P: SequencePolicy,
    T: TaskSource + ToolSet<T::Item>,
    R: Protocol<T>,
{
    let episodes = items
        .into_iter()
        .map(|it| protocol.start(task, it))
        .collect::<Result<Vec<_>>>()?;
    let max_tokens = protocol.max_tokens().min(model.context_len());
    decode(
        model, task, episodes, max_tokens, decoding, streams, device, BATCHING,
    )
}

/// Decodes `episodes` (each ending by its own limit, at most `max_tokens` tokens prompt
/// included) to their end.
#[allow(clippy::too_many_arguments)]
fn decode<P, T, E>(
    model: &P,
    task: &T,
    mut episodes: Vec<E>,
    max_tokens: usize,
    decoding: Decoding,
    mut streams: Vec<ChaCha8Rng>,
    device: Device,
    batching: Batching,
) -> Result<Vec<Rollout<E>>>
where
    P: SequencePolicy,
    T: TaskSource + ToolSet<T::Item>,
    E: ProtocolEpisode<T>,
{
    let b = episodes.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    // Each episode samples from its own stream (its id's, [`crate::ids`]), so that what it
    // writes does not depend on which row it shares or when that row forked.
    if streams.len() != b {
        return Err(crate::error::Error::Corrupt(format!(
            "{} sampling streams for {b} episodes",
            streams.len()
        )));
    }
    let mut logps = vec![0.0f64; b];
    let mut token_logps: Vec<Vec<f32>> = vec![Vec::new(); b];
    // The episodes each row of the batch decodes for: they share every token so far, so they
    // share the row's cache and logits. A row whose episodes all finished feeds padding. Each
    // distinct prompt starts one row and is prefilled once.
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut row_of: HashMap<&[u32], usize> = HashMap::new();
    for (i, ep) in episodes.iter().enumerate() {
        match row_of.get(ep.tokens()) {
            Some(&r) if batching.share_prefixes => rows[r].push(i),
            _ => {
                row_of.insert(ep.tokens(), rows.len());
                rows.push(vec![i]);
            }
        }
    }
    let prompt = |r: &Vec<usize>| episodes[r[0]].tokens();
    let u = rows.len();
    // The prefix every prompt shares (a chat template's system message and tool list) is
    // prefilled once; each row's rest follows it, left-padded: [shared | pad … rest].
    let first = prompt(&rows[0]);
    let shared = rows.iter().map(prompt).fold(first.len(), |n, t| {
        n.min(first.iter().zip(t).take_while(|(a, b)| a == b).count())
    });
    let shared = if u > 1 { shared } else { 0 };
    let shortest = rows.iter().map(|r| prompt(r).len()).min().unwrap_or(1);
    let p = rows.iter().map(|r| prompt(r).len()).max().unwrap_or(1);
    let width = p.max(1);
    let mut prompts = vec![PAD as i64; u * width];
    let mut valid = vec![false; u * width];
    for (i, tokens) in rows.iter().map(prompt).enumerate() {
        let off = p - tokens.len();
        for (j, &t) in tokens.iter().enumerate() {
            let col = if j < shared { j } else { off + j };
            prompts[i * width + col] = t as i64;
            valid[i * width + col] = true;
        }
    }
    let shape = [u as i64, width as i64];
    // Every episode ends within `max_tokens` tokens of its own start (prompt included).
    let capacity = p + max_tokens.saturating_sub(shortest).max(1);
    let (mut cache, mut logits) = tch::no_grad(|| {
        model.prefill_shared(
            &Tensor::from_slice(&prompts).view(shape).to_device(device),
            &Tensor::from_slice(&valid).view(shape).to_device(device),
            shared,
            capacity,
        )
    });
    let vocab = logits.size()[1] as usize;
    let mut host = Vec::new();
    while !rows.is_empty() && cache.len() < capacity {
        let n = rows.len();
        host.resize(n * vocab, 0.0);
        let flat = logits
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        flat.copy_data(&mut host, n * vocab);
        let (mut next, mut positions, mut real) =
            (vec![PAD as i64; n], vec![0i64; n], vec![false; n]);
        // Rows for the episodes that wrote another token than the first of their row: (the row
        // they leave, token, episodes).
        let mut forks: Vec<(usize, u32, Vec<usize>)> = Vec::new();
        for r in 0..n {
            // The row's episodes by the token each writes next, in order of first appearance;
            // finished episodes leave.
            let mut children: Vec<(u32, Vec<usize>)> = Vec::new();
            for i in std::mem::take(&mut rows[r]) {
                let ep = &mut episodes[i];
                if ep.done() {
                    continue;
                }
                let tok = match ep.take_forced() {
                    Some(t) => t,
                    None => {
                        let row = &host[r * vocab..(r + 1) * vocab];
                        let (tok, logp) = choose(row, decoding, &mut streams[i]);
                        logps[i] += logp;
                        let at = ep.tokens().len();
                        token_logps[i].resize(at, 0.0);
                        token_logps[i].push(logp as f32);
                        ep.push_token(tok);
                        tok
                    }
                };
                // A token that ends its episode needs no logits after it.
                if ep.done() {
                    continue;
                }
                match children.iter_mut().find(|(t, _)| *t == tok) {
                    Some((_, same)) => same.push(i),
                    None => children.push((tok, vec![i])),
                }
            }
            let mut children = children.into_iter();
            if let Some((tok, members)) = children.next() {
                (next[r], real[r]) = (tok as i64, true);
                positions[r] = episodes[members[0]].tokens().len() as i64 - 1;
                rows[r] = members;
            }
            forks.extend(children.map(|(tok, members)| (r, tok, members)));
        }
        run_pending_calls(&mut episodes, task);
        let running = real.iter().filter(|&&x| x).count() + forks.len();
        if running == 0 {
            break;
        }
        // A fork needs rows of its own: one gather of the cache copies the parents' rows and
        // drops finished ones. Without forks, finished rows go once few enough still decode.
        if !forks.is_empty() || (running as f64) <= batching.compact_at * n as f64 {
            // The new rows: (the row whose cache it takes, its next token, its episodes). A
            // fork's episodes are as long as its parent's, so it feeds at the parent's position.
            let layout: Vec<(usize, i64, Vec<usize>)> = (0..n)
                .filter(|&r| real[r])
                .map(|r| (r, next[r], std::mem::take(&mut rows[r])))
                .chain(forks.into_iter().map(|(r, tok, eps)| (r, tok as i64, eps)))
                .collect();
            let index: Vec<i64> = layout.iter().map(|&(r, _, _)| r as i64).collect();
            cache.keep_rows(&Tensor::from_slice(&index).to_device(device));
            positions = layout.iter().map(|&(r, _, _)| positions[r]).collect();
            next = layout.iter().map(|&(_, tok, _)| tok).collect();
            rows = layout.into_iter().map(|(_, _, eps)| eps).collect();
            real = vec![true; running];
        }
        logits = tch::no_grad(|| {
            model.step(
                &Tensor::from_slice(&next).to_device(device),
                &Tensor::from_slice(&positions).to_device(device),
                &Tensor::from_slice(&real).to_device(device),
                &mut cache,
            )
        });
    }
    Ok(episodes
        .into_iter()
        .zip(logps.into_iter().zip(token_logps))
        .map(|(mut episode, (behaviour_logp, mut token_logp))| {
            if !episode.done() {
                episode.truncate();
            }
            token_logp.resize(episode.tokens().len(), 0.0);
            Rollout {
                episode,
                behaviour_logp,
                token_logp,
            }
        })
        .collect())
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
        let calls: Vec<(&T::Item, &crate::env::tool_use::reward::Call)> = waiting
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

/// Picks a token from one row of logits; returns it with its log-probability under the sampling
/// distribution.
fn choose(row: &[f32], decoding: Decoding, rng: &mut impl Rng) -> (u32, f64) {
    match decoding {
        Decoding::Greedy => {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
            (best as u32, 0.0)
        }
        Decoding::Sample { temperature } => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut total = 0.0;
            let weights: Vec<f64> = row
                .iter()
                .map(|&x| {
                    let w = ((x as f64 - max) / temperature).exp();
                    total += w;
                    w
                })
                .collect();
            let mut u = rng.gen::<f64>() * total;
            let mut pick = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if u < *w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            (pick as u32, (weights[pick] / total).ln())
        }
    }
}

/// Greedy episodes on items `0..episodes` of `split`, scored with `reward`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<P: SequencePolicy>(
    model: &P,
    task: &Task,
    split: crate::env::tool_use::tasks::Split,
    episodes: usize,
    limits: Limits,
    reward: &crate::env::tool_use::reward::RewardConfig,
    device: Device,
    on_episode: impl FnMut(&Episode),
) -> Result<ScoreMeans> {
    let protocol = TokenProtocol { limits };
    evaluate_with(
        model, task, &protocol, split, episodes, 256, reward, device, on_episode,
    )
}

/// [`evaluate`] in any protocol (the chat format of a pretrained LM), `batch` episodes at a
/// time.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with<P, T, R>(
    model: &P,
    task: &T,
    protocol: &R,
    split: crate::env::tool_use::tasks::Split,
    episodes: usize,
    batch: usize,
    reward: &crate::env::tool_use::reward::RewardConfig,
    device: Device,
    mut on_episode: impl FnMut(&R::Episode),
) -> Result<ScoreMeans>
where
    P: SequencePolicy,
    T: TaskSource + ToolSet<T::Item>,
    R: Protocol<T>,
{
    let mut stats = ScoreMeans::default();
    let indices: Vec<u64> = (0..episodes as u64).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let items = chunk.iter().map(|&i| task.item(split, i)).collect();
        // Greedy decoding draws nothing from its streams.
        let streams = chunk
            .iter()
            .map(|&i| crate::rng::keyed(0, crate::rng::Role::Eval, 0, 0, i))
            .collect();
        for r in rollout_with(
            model,
            task,
            protocol,
            items,
            Decoding::Greedy,
            streams,
            device,
        )? {
            let ep = &r.episode;
            let gold = task
                .gold(ep.item())
                .ok_or_else(|| crate::error::Error::Corrupt("an item has no gold".into()))?;
            stats.add(
                &crate::env::tool_use::reward::score(reward, ep.attempt(), &gold),
                ep.tokens().len() - ep.prompt_len(),
            );
            on_episode(ep);
        }
    }
    Ok(stats.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `n` sampling streams for a test's episodes.
    fn streams(n: usize, seed: u64) -> Vec<ChaCha8Rng> {
        (0..n as u64)
            .map(|i| crate::rng::keyed(seed, crate::rng::Role::Episode, 0, 0, i))
            .collect()
    }

    #[test]
    fn sampling_follows_the_softmax_and_reports_its_log_probability() {
        let row = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            let (t, logp) = choose(&row, Decoding::Sample { temperature: 1.0 }, &mut rng);
            counts[t as usize] += 1;
            let want = if t == 0 { 0.25f64.ln() } else { 0.75f64.ln() };
            assert!((logp - want).abs() < 1e-6, "{logp} vs {want}");
        }
        assert_eq!(counts[2], 0);
        let share = counts[1] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.015, "{share}");
        assert_eq!(choose(&row, Decoding::Greedy, &mut rng).0, 1);
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
                    &task,
                    episodes,
                    n,
                    decoding,
                    streams(16, 9),
                    cpu,
                    batching,
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
        let rollouts = rollout(
            &model,
            &task,
            items,
            limits,
            sample,
            streams(6, 5),
            Device::Cpu,
        )
        .unwrap();
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
