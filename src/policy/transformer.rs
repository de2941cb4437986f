//! A small causal decoder (pre-norm, learned positions) with a KV cache for batched decoding.
//!
//! Shapes: B episodes, T tokens, D = d_model, H heads, V vocabulary. The learner scores a batch
//! of trajectories as a prefix tree ([`Transformer::score_prefixes`]): one forward pass in which
//! each distinct prefix is computed once. Actors prefill left-padded prompts and then decode one
//! token per row per step, so decoding cost is linear in length.
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::config::Precision;
use crate::error::Result;
use crate::policy::prefix::PrefixBatch;
use crate::policy::{KvCache, SequencePolicy};

/// With bf16 products, the learner rounds its node count up to a multiple of this.
const NODE_ROWS: usize = 64;

/// Per-token log-probabilities of a batch under the policy.
#[derive(Debug)]
pub struct TokenScores {
    /// [B, L] log π of each position's token (0 where the policy did not write it).
    pub token_logp: Tensor,
    /// [B, L] float, 1 where the policy wrote the token.
    pub mask: Tensor,
    /// Mean entropy (nats) of π's next-token distribution over the masked positions (detached).
    pub entropy: f64,
}

/// The architecture (`[policy]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub precision: Precision,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            layers: 2,
            d_model: 128,
            heads: 4,
            precision: Precision::F32,
        }
    }
}

#[derive(Debug)]
struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// The decoder.
#[derive(Debug)]
pub struct Transformer {
    tok: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    head: nn::Linear,
    heads: i64,
    d_model: i64,
    precision: Precision,
    /// Token ids: 0..vocab.
    vocab: i64,
    pub max_len: i64,
}

impl Transformer {
    pub fn new(p: &nn::Path, cfg: &TransformerConfig, vocab: usize, max_len: usize) -> Self {
        let d = cfg.d_model as i64;
        let emb = nn::EmbeddingConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let blocks = (0..cfg.layers)
            .map(|i| {
                let b = p / format!("block{i}");
                Block {
                    ln1: nn::layer_norm(&b / "ln1", vec![d], Default::default()),
                    qkv: nn::linear(&b / "qkv", d, 3 * d, Default::default()),
                    proj: nn::linear(&b / "proj", d, d, Default::default()),
                    ln2: nn::layer_norm(&b / "ln2", vec![d], Default::default()),
                    fc1: nn::linear(&b / "fc1", d, 4 * d, Default::default()),
                    fc2: nn::linear(&b / "fc2", 4 * d, d, Default::default()),
                }
            })
            .collect();
        Transformer {
            tok: nn::embedding(p / "tok", vocab as i64, d, emb),
            pos: nn::embedding(p / "pos", max_len as i64, d, emb),
            blocks,
            ln_f: nn::layer_norm(p / "ln_f", vec![d], Default::default()),
            head: nn::linear(p / "head", d, vocab as i64, Default::default()),
            heads: cfg.heads as i64,
            d_model: d,
            precision: cfg.precision,
            vocab: vocab as i64,
            max_len: max_len as i64,
        }
    }

    /// `layer(x)` for a decoder block's layer, in the configured precision; the result is f32
    /// either way. The output head stays f32 (`head.forward`): it is a few percent of the
    /// arithmetic, and rounding logits to bfloat16 would put about 0.4% relative error into every
    /// log-probability the losses and importance ratios use.
    fn linear(&self, layer: &nn::Linear, x: &Tensor) -> Tensor {
        match self.precision {
            Precision::F32 => layer.forward(x),
            Precision::Bf16 => {
                let half = |t: &Tensor| t.to_kind(Kind::BFloat16);
                x.to_kind(Kind::BFloat16)
                    .linear(&half(&layer.ws), layer.bs.as_ref().map(half).as_ref())
                    .to_kind(Kind::Float)
            }
        }
    }

    fn split_heads(&self, x: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("[B, T, D]");
        x.view([b, t, self.heads, self.d_model / self.heads])
            .transpose(1, 2)
    }

    /// Queries, keys and values [B, H, T, D/H] from a QKV projection [B, T, 3D].
    fn split_qkv(&self, qkv: &Tensor) -> (Tensor, Tensor, Tensor) {
        let parts = qkv.split(self.d_model, 2);
        (
            self.split_heads(&parts[0]),
            self.split_heads(&parts[1]),
            self.split_heads(&parts[2]),
        )
    }

    /// One block. `x`: [B, T, D]; `kv`, when decoding, is the layer's cached keys and values and
    /// the position where `x`'s own go; `mask` [B, 1, T, S] bool (true = may attend).
    fn block_attend(
        &self,
        blk: &Block,
        x: &Tensor,
        kv: Option<(&mut Tensor, &mut Tensor, i64)>,
        mask: &Tensor,
    ) -> Tensor {
        let (b, t, d) = x.size3().expect("[B, T, D]");
        let (q, k, v) = self.split_qkv(&self.linear(&blk.qkv, &blk.ln1.forward(x)));
        let (k, v) = match kv {
            Some((kc, vc, start)) => {
                kc.narrow(2, start, t).copy_(&k);
                vc.narrow(2, start, t).copy_(&v);
                (kc.narrow(2, 0, start + t), vc.narrow(2, 0, start + t))
            }
            None => (k, v),
        };
        let att =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let att = att.transpose(1, 2).contiguous().view([b, t, d]);
        self.finish_block(blk, x, &att)
    }

    /// The rest of a block once attention produced `att` (shaped like `x`): the projection and
    /// the MLP, each with its residual.
    fn finish_block(&self, blk: &Block, x: &Tensor, att: &Tensor) -> Tensor {
        let x = x + self.linear(&blk.proj, att);
        let h = self.linear(
            &blk.fc2,
            &self.linear(&blk.fc1, &blk.ln2.forward(&x)).gelu("none"),
        );
        x + h
    }

    /// One block over the nodes of a [`PrefixBatch`]: `x` [N, D]. The per-token layers see each
    /// node once; attention gathers the nodes into the padded rows `slots` [B × W] (causal, so
    /// a real position never sees padding) and takes each node's output from its own slot
    /// `reps` [N]. Gathering is differentiable, and each node's key and value receive the
    /// gradients of every row that attends to them.
    fn block_shared(
        &self,
        blk: &Block,
        x: &Tensor,
        slots: &Tensor,
        reps: &Tensor,
        (b, w): (i64, i64),
    ) -> Tensor {
        let d = self.d_model;
        let (q, k, v) = self.split_qkv(
            &self
                .linear(&blk.qkv, &blk.ln1.forward(x))
                .index_select(0, slots)
                .view([b, w, 3 * d]),
        );
        let att = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let att = att
            .transpose(1, 2)
            .contiguous()
            .view([b * w, d])
            .index_select(0, reps);
        self.finish_block(blk, x, &att)
    }

    fn embed(&self, tokens: &Tensor, positions: &Tensor) -> Tensor {
        self.tok.forward(tokens) + self.pos.forward(&positions.clamp(0, self.max_len - 1))
    }

    /// Logits for every position of right-padded sequences: `tokens` [B, T] int64 → [B, T, V].
    /// The padded reference of the tests (the learner uses [`Transformer::score_prefixes`]).
    #[cfg(test)]
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        let (b, t) = tokens.size2().expect("[B, T]");
        let device = tokens.device();
        let positions = Tensor::arange(t, (Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, t], false);
        let mut x = self.embed(tokens, &positions);
        let causal = Tensor::ones([t, t], (Kind::Bool, device))
            .tril(0)
            .view([1, 1, t, t]);
        for blk in &self.blocks {
            x = self.block_attend(blk, &x, None, &causal);
        }
        self.head.forward(&self.ln_f.forward(&x))
    }

    /// log π of every policy-written token given its prefix, computing each distinct prefix of
    /// the batch once (see [`PrefixBatch`]); what the learner and the warm start score. Returns
    /// the same [`TokenScores`] as one forward pass over the right-padded rows would (the tests'
    /// `token_logp`), on `device`: [B, W] with W = the longest row's length − 1.
    pub fn score_prefixes(&self, batch: &PrefixBatch, device: Device) -> Result<TokenScores> {
        let index =
            |v: &[i64]| -> Result<Tensor> { Ok(Tensor::f_from_slice(v)?.f_to_device(device)?) };
        let (b, w) = (batch.rows as i64, batch.width as i64);
        // oneDNN compiles and caches a kernel for every shape of a bf16 product, and the node
        // count changes from batch to batch: unrounded, each new count costs a compilation and
        // its cache entry (resident memory grew by 0.7 GiB in 40 s of training). Rounding up to
        // a multiple of NODE_ROWS keeps the shapes few; the placeholder nodes (token 0 at
        // position 0, reading slot 0) are computed and never used.
        let nodes = match self.precision {
            Precision::F32 => batch.nodes(),
            Precision::Bf16 => batch.nodes().next_multiple_of(NODE_ROWS),
        };
        let padded = |v: &[i64]| {
            let mut v = v.to_vec();
            v.resize(nodes, 0);
            index(&v)
        };
        let slots = index(&batch.slot_node)?;
        let reps = padded(&batch.node_slot)?;
        let mut x = self.embed(&padded(&batch.node_token)?, &padded(&batch.node_pos)?);
        for blk in &self.blocks {
            x = self.block_shared(blk, &x, &slots, &reps, (b, w));
        }
        let heads = x.f_index_select(0, &index(&batch.head_nodes)?)?;
        let logp = self
            .head
            .forward(&self.ln_f.forward(&heads))
            .f_log_softmax(-1, Kind::Float)?;
        let vocab = logp.size()[1];
        let picked: Vec<i64> = batch
            .slot_head
            .iter()
            .zip(&batch.slot_target)
            .map(|(&h, &t)| h * vocab + t)
            .collect();
        let mask = Tensor::f_from_slice(&batch.mask)?
            .f_view([b, w])?
            .f_to_device(device)?;
        let token_logp = logp
            .f_view([-1])?
            .f_index_select(0, &index(&picked)?)?
            .f_view([b, w])?
            * &mask;
        let uses = Tensor::f_from_slice(&batch.head_uses)?.f_to_device(device)?;
        let entropy = mean_entropy(&logp, &uses)?;
        Ok(TokenScores {
            token_logp,
            mask,
            entropy,
        })
    }

    /// log π of every token given its prefix, in one forward pass over right-padded rows:
    /// `tokens` [B, T] int64 and `policy_mask` [B, T] float → [`TokenScores`] over positions
    /// 1..T (masked entries are 0). The plain reference for [`Transformer::score_prefixes`], in
    /// the tests.
    #[cfg(test)]
    pub fn token_logp(&self, tokens: &Tensor, policy_mask: &Tensor) -> Result<TokenScores> {
        let t = tokens.size()[1];
        let logits = self.forward(&tokens.narrow(1, 0, t - 1));
        let logp = logits.f_log_softmax(-1, Kind::Float)?;
        let next = tokens.narrow(1, 1, t - 1).unsqueeze(-1);
        let mask = policy_mask.narrow(1, 1, t - 1);
        let token_logp = logp.f_gather(-1, &next, false)?.squeeze_dim(-1) * &mask;
        let entropy = mean_entropy(&logp, &mask)?;
        Ok(TokenScores {
            token_logp,
            mask,
            entropy,
        })
    }

    fn run_cached(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        cache: &mut KvCache,
        mask: &Tensor,
    ) -> Tensor {
        let mut x = self.embed(tokens, positions);
        let start = cache.len;
        for (i, blk) in self.blocks.iter().enumerate() {
            let (k, v) = (&mut cache.k[i], &mut cache.v[i]);
            x = self.block_attend(blk, &x, Some((k, v, start)), mask);
        }
        let t = x.size()[1];
        self.head
            .forward(&self.ln_f.forward(&x.narrow(1, t - 1, 1)))
            .squeeze_dim(1)
    }
}

/// The entropy (nats) of the next-token distributions in `logp` ([…, V] log-probabilities),
/// averaged with `weights` (shaped like `logp` without its last axis; detached).
fn mean_entropy(logp: &Tensor, weights: &Tensor) -> Result<f64> {
    tch::no_grad(|| {
        let per_row = (logp.exp() * logp).f_sum_dim_intlist(-1, false, Kind::Float)?;
        let total = (per_row * weights).f_sum(Kind::Double)?.f_neg()?;
        let n = weights.f_sum(Kind::Double)?.double_value(&[]).max(1.0);
        Ok(total.double_value(&[]) / n)
    })
}

impl SequencePolicy for Transformer {
    type Cache = KvCache;

    fn vocab_size(&self) -> usize {
        self.vocab as usize
    }

    fn context_len(&self) -> usize {
        self.max_len as usize
    }

    fn prefill(&self, prompts: &Tensor, valid: &Tensor, capacity: usize) -> (KvCache, Tensor) {
        self.prefill_shared(prompts, valid, 0, capacity)
    }

    fn prefill_shared(
        &self,
        prompts: &Tensor,
        valid: &Tensor,
        shared: usize,
        capacity: usize,
    ) -> (KvCache, Tensor) {
        let dh = self.d_model / self.heads;
        let layers = self.blocks.len();
        KvCache::for_prompts(layers, valid, capacity, self.heads, dh, Kind::Float).prefill_shared(
            prompts,
            valid,
            shared,
            |t, p, c, m| self.run_cached(t, p, c, m),
        )
    }

    fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        real: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        cache.step(tokens, positions, real, |t, p, c, m| {
            self.run_cached(t, p, c, m)
        })
    }

    fn score_prefixes(&self, batch: &PrefixBatch, device: Device) -> Result<TokenScores> {
        Transformer::score_prefixes(self, batch, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small decoder, with `like`'s weights when given. Tests run in parallel threads that
    /// share libtorch's generator, so two models meant to be equal must not both draw from it.
    fn small(precision: Precision, like: Option<&nn::VarStore>) -> (nn::VarStore, Transformer) {
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = TransformerConfig {
            layers: 2,
            d_model: 32,
            heads: 4,
            precision,
        };
        let model = Transformer::new(&vs.root(), &cfg, 20, 16);
        crate::policy::seeded_init(&vs, 0);
        if let Some(src) = like {
            vs.copy(src).expect("same architecture");
        }
        (vs, model)
    }

    /// Decoding with the cache from left-padded prompts gives the same logits as a full forward
    /// pass over each unpadded sequence.
    #[test]
    fn cached_decoding_matches_full_forward() {
        check_cached_decoding(Precision::F32, 1e-4);
    }

    /// The same with bfloat16 products, up to their rounding (the two paths multiply matrices of
    /// different shapes, so they round differently).
    #[test]
    fn cached_decoding_matches_full_forward_in_bf16() {
        check_cached_decoding(Precision::Bf16, 3e-2);
    }

    fn check_cached_decoding(precision: Precision, tolerance: f64) {
        let (_vs, model) = small(precision, None);
        let seqs: [&[i64]; 2] = [&[1, 5, 6, 7, 8, 9, 3], &[1, 4, 2, 11, 12]];
        let prompt_lens = [3usize, 2];
        let p = 3;
        let mut prompts = vec![0i64; 2 * p];
        let mut valid = vec![false; 2 * p];
        for (i, s) in seqs.iter().enumerate() {
            let off = p - prompt_lens[i];
            for j in 0..prompt_lens[i] {
                prompts[i * p + off + j] = s[j];
                valid[i * p + off + j] = true;
            }
        }
        let prompts = Tensor::from_slice(&prompts).view([2, p as i64]);
        let valid = Tensor::from_slice(&valid).view([2, p as i64]);
        let (mut cache, mut logits) = model.prefill(&prompts, &valid, 16);
        let mut cached: Vec<Vec<Tensor>> = vec![vec![logits.get(0)], vec![logits.get(1)]];
        for step in 0..3 {
            let mut toks = vec![0i64; 2];
            let mut pos = vec![0i64; 2];
            for i in 0..2 {
                let at = prompt_lens[i] + step;
                toks[i] = seqs[i][at];
                pos[i] = at as i64;
            }
            let real = Tensor::from_slice(&[true, true]);
            logits = model.step(
                &Tensor::from_slice(&toks),
                &Tensor::from_slice(&pos),
                &real,
                &mut cache,
            );
            cached[0].push(logits.get(0));
            cached[1].push(logits.get(1));
        }
        for i in 0..2 {
            let full = model
                .forward(&Tensor::from_slice(seqs[i]).view([1, -1]))
                .get(0);
            for (step, c) in cached[i].iter().enumerate() {
                let want = full.get((prompt_lens[i] + step - 1) as i64);
                let diff = (c - want).abs().max().double_value(&[]);
                assert!(diff < tolerance, "episode {i} step {step}: {diff}");
            }
        }
    }

    /// Scoring through the prefix tree gives the padded forward pass's log-probabilities,
    /// entropy and gradients: rows of one prompt that part at different points, a repeated row,
    /// a row that is a prefix of another, and rows of other lengths.
    #[test]
    fn shared_prefix_scoring_matches_the_padded_forward_pass() {
        check_shared_prefix_scoring(Precision::F32, 1e-5, 1e-4);
    }

    /// The same with bf16 products (whose node count is rounded up with placeholder nodes), up
    /// to bf16 rounding: the two paths multiply matrices of different shapes.
    #[test]
    fn shared_prefix_scoring_matches_the_padded_forward_pass_in_bf16() {
        check_shared_prefix_scoring(Precision::Bf16, 3e-2, 5e-2);
    }

    fn check_shared_prefix_scoring(precision: Precision, values: f64, grads: f64) {
        let (f, p) = (false, true);
        let rows: Vec<(Vec<u32>, Vec<bool>)> = vec![
            (vec![1, 5, 6, 7, 8, 9, 3], vec![f, f, f, p, p, p, p]),
            (vec![1, 5, 6, 7, 8, 9, 3], vec![f, f, f, p, p, p, p]),
            (vec![1, 5, 6, 7, 10, 3], vec![f, f, f, p, p, p]),
            (
                vec![1, 5, 6, 11, 12, 13, 14, 2, 3],
                vec![f, f, f, p, p, f, f, p, p],
            ),
            (vec![1, 5, 6, 7, 8], vec![f, f, f, p, p]),
            (vec![1, 4, 2, 3], vec![f, f, p, p]),
        ];
        let view = || rows.iter().map(|(a, m)| (&a[..], &m[..]));
        let shared = PrefixBatch::new(view());
        let fed: usize = rows.iter().map(|(a, _)| a.len() - 1).sum();
        assert!(
            shared.nodes() < fed / 2,
            "{} nodes for {fed} positions",
            shared.nodes()
        );
        let (tokens, mask) = crate::policy::pad_batch(view());
        let weights = Tensor::from_slice(&[1.0f32, -0.5, 2.0, 0.3, -1.0, 0.7]).view([6, 1]);
        let (vs, model) = small(precision, None);
        let run = |tree: bool| {
            for mut v in vs.trainable_variables() {
                v.zero_grad();
            }
            let scores = if tree {
                model.score_prefixes(&shared, Device::Cpu).unwrap()
            } else {
                model.token_logp(&tokens, &mask).unwrap()
            };
            (scores.token_logp.shallow_clone() * &weights)
                .sum(Kind::Float)
                .backward();
            let grads: Vec<(String, Tensor)> = crate::policy::sorted_vars(&vs)
                .into_iter()
                .map(|(name, v)| (name, v.grad().copy()))
                .collect();
            (scores, grads)
        };
        let (want, want_grads) = run(false);
        let (got, got_grads) = run(true);
        assert_eq!(got.token_logp.size(), want.token_logp.size());
        assert!(got.mask.equal(&want.mask));
        let diff = (&got.token_logp - &want.token_logp)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < values, "log π differs by {diff}");
        assert!((got.entropy - want.entropy).abs() < values);
        for ((name, a), (_, b)) in want_grads.iter().zip(&got_grads) {
            let scale = a.abs().max().double_value(&[]);
            let off = (b - a).abs().max().double_value(&[]);
            assert!(scale > 0.0, "{name} has no gradient");
            assert!(
                off < grads * scale.max(1.0),
                "{name}: {off} against {scale}"
            );
        }
    }

    /// Mixed precision computes in bfloat16 (the logits move) but stays close to f32: logits
    /// within 2% of the largest one, and each weight's gradient of Σ log π within 5% of its f32
    /// norm. The weights, their gradients and the logits' dtype stay f32.
    #[test]
    fn bf16_products_track_f32_in_values_and_gradients() {
        let tokens =
            Tensor::from_slice(&[1i64, 5, 6, 7, 8, 9, 3, 1, 4, 2, 11, 12, 13, 0]).view([2, 7]);
        let mask = Tensor::from_slice(&[0f32, 0., 1., 1., 0., 1., 1., 0., 0., 0., 1., 1., 1., 0.])
            .view([2, 7]);
        let (reference, _) = small(Precision::F32, None);
        let run = |precision| {
            let (vs, model) = small(precision, Some(&reference));
            let logits = model.forward(&tokens);
            let loss = model
                .token_logp(&tokens, &mask)
                .unwrap()
                .token_logp
                .sum(Kind::Float);
            loss.backward();
            let grads: Vec<(String, Tensor)> = crate::policy::sorted_vars(&vs)
                .into_iter()
                .map(|(name, v)| {
                    assert_eq!(v.kind(), Kind::Float, "{name}");
                    (name, v.grad())
                })
                .collect();
            (logits, grads)
        };
        let (l32, g32) = run(Precision::F32);
        let (l16, g16) = run(Precision::Bf16);
        assert_eq!(l16.kind(), Kind::Float);
        let moved = (&l16 - &l32).abs().max().double_value(&[]);
        assert!(moved > 0.0, "bf16 gave bit-identical logits: not in effect");
        let scale = l32.abs().max().double_value(&[]);
        assert!(
            moved < 0.02 * scale,
            "bf16 logits moved by {moved} (largest logit {scale})"
        );
        for ((name, a), (_, b)) in g32.iter().zip(&g16) {
            assert_eq!(b.kind(), Kind::Float, "{name}");
            let scale = a.norm().double_value(&[]);
            let off = (b - a).norm().double_value(&[]);
            assert!(scale > 0.0, "{name} has no gradient");
            assert!(off < 0.05 * scale, "{name}: {off} against {scale}");
        }
    }
}
