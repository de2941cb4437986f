//! The batched decoding loop every sequence goes through (tool-use episodes of the small
//! transformer and of a pretrained LM, and plain text for `asymre generate`): each sequence of a
//! batch advances one token per step through one forward pass with the KV cache. A token is
//! sampled in Rust from the sequence's own stream, or forced when the environment has tokens
//! queued (tool results).
//!
//! A row of the batch decodes for all the sequences that agree on every token so far: the G
//! samples of a prompt start on one row (the prompt is prefilled once), and a row forks, with a
//! copy of its cache, when its sequences write different tokens. A policy that often samples the
//! same continuation (as a warm-started one does) then decodes far fewer rows than sequences.
//! Finished rows feed padding until a quarter of the batch's rows have finished, or until a fork
//! gathers the cache anyway; then they leave the batch and its cache.
use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::sample::{choose, Decoding};
use super::Rollout;
use crate::env::Decodable;
use crate::error::{Error, Result};
use crate::policy::{DecodeCache, SequencePolicy};
use crate::text::words::PAD;

/// How a batch spends its rows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    /// The batch drops its finished sequences' rows (one gather of the KV cache) once at most
    /// this share of its rows still decode; until then finished rows feed padding.
    pub compact_at: f64,
    /// Sequences that share every token so far share one row: a prompt is prefilled once for
    /// its G samples, and a row forks (a copy of its cache) when its sequences write different
    /// tokens. Off, every sequence has its own row.
    pub share_prefixes: bool,
}

pub(super) const BATCHING: Batching = Batching {
    compact_at: 0.75,
    share_prefixes: true,
};

/// A sequence to sample this step: its index, its stream, and the choice once made.
type SampleJob<'a> = std::sync::Mutex<(usize, &'a mut ChaCha8Rng, Option<(u32, f64)>)>;

/// What one step feeds the model: a token, its position and whether it is real, per row.
struct Feed {
    next: Vec<i64>,
    positions: Vec<i64>,
    real: Vec<bool>,
    /// Rows for the sequences that wrote another token than the first of their row: (the row
    /// they leave, token, sequences).
    forks: Vec<(usize, u32, Vec<usize>)>,
}

/// The state of one batch being decoded.
struct Batch<E> {
    seqs: Vec<E>,
    /// The sequences each row decodes for: they share every token so far, so they share the
    /// row's cache and logits. A row whose sequences all finished feeds padding.
    rows: Vec<Vec<usize>>,
    streams: Vec<ChaCha8Rng>,
    decoding: Decoding,
    /// log μ(y) of each sequence so far, and of each token it wrote.
    logps: Vec<f64>,
    token_logps: Vec<Vec<f32>>,
}

/// Decodes `seqs` (each ending by its own limit, at most `max_tokens` tokens prompt included)
/// to their end; `between` runs after every step's tokens are chosen (a protocol runs the tool
/// calls they completed there). Each sequence samples from its own stream of `streams`.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode<P, E>(
    model: &P,
    seqs: Vec<E>,
    max_tokens: usize,
    decoding: Decoding,
    streams: Vec<ChaCha8Rng>,
    device: Device,
    batching: Batching,
    mut between: impl FnMut(&mut [E]),
) -> Result<Vec<Rollout<E>>>
where
    P: SequencePolicy,
    E: Decodable,
{
    let b = seqs.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    // Each sequence samples from its own stream (its id's, [`crate::ids`]), so that what it
    // writes does not depend on which row it shares or when that row forked.
    if streams.len() != b {
        return Err(Error::Corrupt(format!(
            "{} sampling streams for {b} sequences",
            streams.len()
        )));
    }
    let mut batch = Batch {
        rows: rows_by_prompt(&seqs, batching.share_prefixes),
        seqs,
        streams,
        decoding,
        logps: vec![0.0; b],
        token_logps: vec![Vec::new(); b],
    };
    let (mut cache, mut logits, capacity) = batch.prefill(model, max_tokens, device);
    let vocab = logits.size()[1] as usize;
    let mut host = Vec::new();
    while !batch.rows.is_empty() && cache.len() < capacity {
        let n = batch.rows.len();
        host.resize(n * vocab, 0.0);
        let flat = logits
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]);
        flat.copy_data(&mut host, n * vocab);
        let mut feed = batch.advance(&host, vocab);
        between(&mut batch.seqs);
        let running = feed.real.iter().filter(|&&x| x).count() + feed.forks.len();
        if running == 0 {
            break;
        }
        // A fork needs rows of its own: one gather of the cache copies the parents' rows and
        // drops finished ones. Without forks, finished rows go once few enough still decode.
        if !feed.forks.is_empty() || (running as f64) <= batching.compact_at * n as f64 {
            let keep = batch.regroup(&mut feed);
            cache.keep_rows(&Tensor::from_slice(&keep).to_device(device));
        }
        logits = tch::no_grad(|| {
            model.step(
                &Tensor::from_slice(&feed.next).to_device(device),
                &Tensor::from_slice(&feed.positions).to_device(device),
                &Tensor::from_slice(&feed.real).to_device(device),
                &mut cache,
            )
        });
    }
    Ok(batch.finish())
}

/// One row per distinct prompt (`share`) or per sequence, in order of first appearance.
fn rows_by_prompt<E: Decodable>(seqs: &[E], share: bool) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut row_of: HashMap<&[u32], usize> = HashMap::new();
    for (i, seq) in seqs.iter().enumerate() {
        match row_of.get(seq.tokens()) {
            Some(&r) if share => rows[r].push(i),
            _ => {
                row_of.insert(seq.tokens(), rows.len());
                rows.push(vec![i]);
            }
        }
    }
    rows
}

impl<E: Decodable> Batch<E> {
    /// The prompt of row `r`.
    fn prompt(&self, r: usize) -> &[u32] {
        self.seqs[self.rows[r][0]].tokens()
    }

    /// Prefills every row's prompt in a cache with room for each sequence's `max_tokens`;
    /// returns the cache, the next-token logits and the cache's capacity. The prefix every
    /// prompt shares (a chat template's system message and tool list) is prefilled once; each
    /// row's rest follows it, left-padded: [shared | pad … rest].
    fn prefill<P: SequencePolicy>(
        &self,
        model: &P,
        max_tokens: usize,
        device: Device,
    ) -> (P::Cache, Tensor, usize) {
        let u = self.rows.len();
        let first = self.prompt(0);
        let shared = (0..u).map(|r| self.prompt(r)).fold(first.len(), |n, t| {
            n.min(first.iter().zip(t).take_while(|(a, b)| a == b).count())
        });
        let shared = if u > 1 { shared } else { 0 };
        let lengths = (0..u).map(|r| self.prompt(r).len());
        let shortest = lengths.clone().min().unwrap_or(1);
        let p = lengths.max().unwrap_or(1);
        let width = p.max(1);
        let mut prompts = vec![PAD as i64; u * width];
        let mut valid = vec![false; u * width];
        for r in 0..u {
            let tokens = self.prompt(r);
            let off = p - tokens.len();
            for (j, &t) in tokens.iter().enumerate() {
                let col = if j < shared { j } else { off + j };
                prompts[r * width + col] = t as i64;
                valid[r * width + col] = true;
            }
        }
        let shape = [u as i64, width as i64];
        // Every sequence ends within `max_tokens` tokens of its own start (prompt included).
        let capacity = p + max_tokens.saturating_sub(shortest).max(1);
        let (cache, logits) = tch::no_grad(|| {
            model.prefill_shared(
                &Tensor::from_slice(&prompts).view(shape).to_device(device),
                &Tensor::from_slice(&valid).view(shape).to_device(device),
                shared,
                capacity,
            )
        });
        (cache, logits, capacity)
    }

    /// Every live sequence takes its next token (forced, or chosen from its row's logits in
    /// `host` [rows × vocab]); the rows split by the token their sequences wrote.
    fn advance(&mut self, host: &[f32], vocab: usize) -> Feed {
        let n = self.rows.len();
        let mut feed = Feed {
            next: vec![PAD as i64; n],
            positions: vec![0; n],
            real: vec![false; n],
            forks: Vec::new(),
        };
        let sampled = self.sample_all(host, vocab);
        for r in 0..n {
            // The row's sequences by the token each writes next, in order of first appearance;
            // finished sequences leave.
            let mut children: Vec<(u32, Vec<usize>)> = Vec::new();
            for i in std::mem::take(&mut self.rows[r]) {
                let Some(tok) = self.next_token(i, sampled[i]) else {
                    continue;
                };
                match children.iter_mut().find(|(t, _)| *t == tok) {
                    Some((_, same)) => same.push(i),
                    None => children.push((tok, vec![i])),
                }
            }
            let mut children = children.into_iter();
            if let Some((tok, members)) = children.next() {
                (feed.next[r], feed.real[r]) = (tok as i64, true);
                feed.positions[r] = self.seqs[members[0]].tokens().len() as i64 - 1;
                self.rows[r] = members;
            }
            feed.forks
                .extend(children.map(|(tok, members)| (r, tok, members)));
        }
        feed
    }

    /// Every live sequence's forced token, or its choice from its row of `host` [rows × vocab]
    /// with its log-probability: the choices made in parallel (each sequence draws from its own
    /// stream, so the order does not matter), indexed by sequence.
    fn sample_all(&mut self, host: &[f32], vocab: usize) -> Vec<Option<(u32, Option<f64>)>> {
        let mut out: Vec<Option<(u32, Option<f64>)>> = vec![None; self.seqs.len()];
        let mut row_of = vec![usize::MAX; self.seqs.len()];
        for (r, seqs) in self.rows.iter().enumerate() {
            for &i in seqs {
                row_of[i] = r;
            }
        }
        // Live sequences take their forced token, or sample.
        let mut samples = vec![false; self.seqs.len()];
        for (i, seq) in self.seqs.iter_mut().enumerate() {
            if row_of[i] != usize::MAX && !seq.done() {
                match seq.take_forced() {
                    Some(t) => out[i] = Some((t, None)),
                    None => samples[i] = true,
                }
            }
        }
        let decoding = self.decoding;
        let jobs: Vec<SampleJob> = self
            .streams
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| samples[*i])
            .map(|(i, rng)| std::sync::Mutex::new((i, rng, None)))
            .collect();
        crate::parallel::for_each(jobs.len(), &|j| {
            let mut job = jobs[j].lock().unwrap_or_else(|e| e.into_inner());
            let (i, rng, choice) = &mut *job;
            let r = row_of[*i];
            *choice = Some(choose(&host[r * vocab..(r + 1) * vocab], decoding, *rng));
        });
        for job in jobs {
            let (i, _, choice) = job.into_inner().unwrap_or_else(|e| e.into_inner());
            out[i] = choice.map(|(t, logp)| (t, Some(logp)));
        }
        out
    }

    /// Sequence `i`'s next token from [`Batch::sample_all`]'s `choice` (a forced token has no
    /// log-probability); `None` when it has ended (before or with this token: a token that ends
    /// its sequence needs no logits after it).
    fn next_token(&mut self, i: usize, choice: Option<(u32, Option<f64>)>) -> Option<u32> {
        let seq = &mut self.seqs[i];
        let (tok, logp) = choice?;
        if let Some(logp) = logp {
            self.logps[i] += logp;
            let at = seq.tokens().len();
            self.token_logps[i].resize(at, 0.0);
            self.token_logps[i].push(logp as f32);
            seq.push_token(tok);
        }
        (!seq.done()).then_some(tok)
    }

    /// Lays out the rows that still decode, forks included, and returns the cache rows they
    /// take (a fork takes its parent's: its sequences are as long as the parent's, so it
    /// feeds at the parent's position).
    fn regroup(&mut self, feed: &mut Feed) -> Vec<i64> {
        let n = self.rows.len();
        let layout: Vec<(usize, i64, Vec<usize>)> = (0..n)
            .filter(|&r| feed.real[r])
            .map(|r| (r, feed.next[r], std::mem::take(&mut self.rows[r])))
            .chain(
                std::mem::take(&mut feed.forks)
                    .into_iter()
                    .map(|(r, tok, seqs)| (r, tok as i64, seqs)),
            )
            .collect();
        let keep: Vec<i64> = layout.iter().map(|&(r, _, _)| r as i64).collect();
        feed.positions = layout.iter().map(|&(r, _, _)| feed.positions[r]).collect();
        feed.next = layout.iter().map(|&(_, tok, _)| tok).collect();
        feed.real = vec![true; layout.len()];
        self.rows = layout.into_iter().map(|(_, _, seqs)| seqs).collect();
        keep
    }

    /// The sequences with their log μ; one still running is truncated.
    fn finish(self) -> Vec<Rollout<E>> {
        self.seqs
            .into_iter()
            .zip(self.logps.into_iter().zip(self.token_logps))
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
            .collect()
    }
}
