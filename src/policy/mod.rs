//! Policies and the plain-data weight snapshots that carry them from the learner to the actors.
//!
//! A `tch::Tensor` never crosses a thread: the learner copies its variables into a
//! [`WeightSnapshot`] (host `f32` data, variables in sorted-name order) and each actor loads it
//! into its own `VarStore`.
pub mod lm;
pub mod prefix;
pub mod tabular;
pub mod transformer;

use std::sync::Arc;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub use prefix::PrefixBatch;
pub use tabular::TabularPolicy;
pub use transformer::{TokenScores, Transformer};

use crate::config::{Config, DecodeWeights, PolicyKind};
use crate::text::words::Words;
use crate::text::Tokenizer;
use crate::trajectory::Trajectory;

/// The sequence-policy boundary: what decoding and the learner need of an autoregressive
/// model over token ids. Its vocabulary and context length are the model's own (and its
/// tokenizer's), never the environment's. The small transformer implements it; a pretrained
/// LM is another implementation.
pub trait SequencePolicy {
    /// The decoding state: keys and values of every layer for the tokens decoded so far.
    type Cache: DecodeCache;

    /// Token ids run from 0 to `vocab_size() - 1`.
    fn vocab_size(&self) -> usize;
    /// The most positions one sequence may have.
    fn context_len(&self) -> usize;
    /// Starts decoding `prompts` [B, P] (left-padded, `valid` [B, P] bool) in a cache of
    /// `capacity` positions; returns the cache and the next-token logits [B, V].
    fn prefill(&self, prompts: &Tensor, valid: &Tensor, capacity: usize) -> (Self::Cache, Tensor);
    /// [`SequencePolicy::prefill`] of prompts whose first `shared` columns are the same tokens
    /// in every row (all real): a model may compute them once for the batch. The rest of each
    /// row is left-padded after them.
    fn prefill_shared(
        &self,
        prompts: &Tensor,
        valid: &Tensor,
        _shared: usize,
        capacity: usize,
    ) -> (Self::Cache, Tensor) {
        self.prefill(prompts, valid, capacity)
    }
    /// Feeds one token per row (`tokens` [B] at `positions` [B]; `real` [B] false for rows that
    /// feed padding); returns the next-token logits [B, V].
    fn step(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        real: &Tensor,
        cache: &mut Self::Cache,
    ) -> Tensor;
    /// log π at every position of a batch of sequences that share prefixes, with the mean
    /// entropy of π at the positions the policy wrote.
    fn score_prefixes(&self, batch: &PrefixBatch, device: Device) -> Result<TokenScores>;
}

/// The positions [B, P] (counting real tokens only) and the attention mask [B, 1, P, P] (true =
/// may attend) of left-padded prompts with `valid` [B, P] bool: causal, never onto padding, and a
/// padding query attends to itself so that no row is fully masked.
fn prefill_mask(valid: &Tensor) -> (Tensor, Tensor) {
    let (b, p) = valid.size2().expect("[B, P]");
    let device = valid.device();
    let positions = (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let causal = Tensor::ones([p, p], (Kind::Bool, device))
        .tril(0)
        .view([1, 1, p, p]);
    let eye = Tensor::eye(p, (Kind::Bool, device)).view([1, 1, p, p]);
    let mask = causal.logical_and(&valid.view([b, 1, 1, p]).logical_or(&eye));
    (positions, mask)
}

/// Records in a cache's `valid` [B, capacity] whether the token fed at position `len` is `real`
/// [B], and returns that step's attention mask [B, 1, 1, len + 1]: the real cached positions and
/// the token itself.
fn step_mask(valid: &Tensor, len: i64, real: &Tensor) -> Tensor {
    let b = real.size()[0];
    let s = len + 1;
    valid.narrow(1, len, 1).copy_(&real.view([b, 1]));
    let keys = valid.narrow(1, 0, s).view([b, 1, 1, s]);
    let own = Tensor::zeros([1, 1, 1, s], (Kind::Bool, real.device()));
    let _ = own.narrow(3, s - 1, 1).fill_(1);
    keys.logical_or(&own)
}

/// Keys and values of every layer for the tokens decoded so far, [B, heads, capacity, head size]
/// each (the small transformer's heads, or an LM's key/value heads), with which cached positions
/// hold real tokens.
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    /// Positions filled.
    pub len: i64,
    /// The first positions, equal in every row ([`KvCache::prefill_shared`]): a decoding step
    /// may read them from row 0.
    pub shared: i64,
    /// [B, capacity] bool: which cached positions are real tokens (not left padding).
    pub(crate) valid: Tensor,
}

impl KvCache {
    /// The kind its keys and values are stored in.
    pub fn kind(&self) -> Kind {
        self.k.first().map_or(Kind::Float, Tensor::kind)
    }

    /// An empty cache of `layers` layers for the left-padded prompts whose real tokens `valid`
    /// [B, P] marks, with room for `capacity` positions of `heads` × `head_size` of `kind`.
    pub fn for_prompts(
        layers: usize,
        valid: &Tensor,
        capacity: usize,
        heads: i64,
        head_size: i64,
        kind: Kind,
    ) -> Self {
        let (b, p) = valid.size2().expect("[B, P]");
        let device = valid.device();
        let capacity = capacity as i64;
        let zeros = || Tensor::zeros([b, heads, capacity, head_size], (kind, device));
        let cache = KvCache {
            k: (0..layers).map(|_| zeros()).collect(),
            v: (0..layers).map(|_| zeros()).collect(),
            len: 0,
            shared: 0,
            valid: Tensor::zeros([b, capacity], (Kind::Bool, device)),
        };
        cache.valid.narrow(1, 0, p).copy_(valid);
        cache
    }

    /// Runs the prompts [B, P] (left-padded; `valid` as given to [`KvCache::for_prompts`])
    /// through `run(tokens, positions, cache, mask)`, which writes each layer's keys and values
    /// at `self.len` and returns the last position's logits.
    pub fn prefill(
        mut self,
        prompts: &Tensor,
        valid: &Tensor,
        run: impl FnOnce(&Tensor, &Tensor, &mut KvCache, &Tensor) -> Tensor,
    ) -> (KvCache, Tensor) {
        let (positions, mask) = prefill_mask(valid);
        let logits = run(prompts, &positions, &mut self, &mask);
        self.len = prompts.size()[1];
        (self, logits)
    }

    /// [`KvCache::prefill`] of prompts whose first `shared` columns are the same real tokens in
    /// every row: they run once, for row 0, and their keys and values are copied to the other
    /// rows; then the rest of every row runs against them.
    pub fn prefill_shared(
        mut self,
        prompts: &Tensor,
        valid: &Tensor,
        shared: usize,
        mut run: impl FnMut(&Tensor, &Tensor, &mut KvCache, &Tensor) -> Tensor,
    ) -> (KvCache, Tensor) {
        let (b, p) = prompts.size2().expect("[B, P]");
        // At least one column stays per row: the logits come from each row's last one.
        let l = (shared as i64).min(p - 1);
        if b == 1 || l <= 0 {
            return self.prefill(prompts, valid, run);
        }
        let (positions, mask) = prefill_mask(valid);
        let mut head = KvCache {
            k: self.k.iter().map(|t| t.narrow(0, 0, 1)).collect(),
            v: self.v.iter().map(|t| t.narrow(0, 0, 1)).collect(),
            len: 0,
            shared: 0,
            valid: self.valid.narrow(0, 0, 1),
        };
        let first = |t: &Tensor| t.narrow(0, 0, 1).narrow(1, 0, l);
        let _ = run(
            &first(prompts),
            &first(&positions),
            &mut head,
            &mask.narrow(0, 0, 1).narrow(2, 0, l).narrow(3, 0, l),
        );
        for t in self.k.iter().chain(&self.v) {
            t.narrow(0, 1, b - 1)
                .narrow(2, 0, l)
                .copy_(&t.narrow(0, 0, 1).narrow(2, 0, l));
        }
        (self.len, self.shared) = (l, l);
        let s = p - l;
        let logits = run(
            &prompts.narrow(1, l, s),
            &positions.narrow(1, l, s),
            &mut self,
            &mask.narrow(2, l, s),
        );
        self.len = p;
        (self, logits)
    }

    /// Feeds one token per row (`tokens` [B] at `positions` [B]; `real` [B] false for padding)
    /// through `run` like [`KvCache::prefill`]; returns the next-token logits [B, V].
    pub fn step(
        &mut self,
        tokens: &Tensor,
        positions: &Tensor,
        real: &Tensor,
        run: impl FnOnce(&Tensor, &Tensor, &mut KvCache, &Tensor) -> Tensor,
    ) -> Tensor {
        let b = tokens.size()[0];
        let mask = step_mask(&self.valid, self.len, real);
        let logits = run(&tokens.view([b, 1]), &positions.view([b, 1]), self, &mask);
        self.len += 1;
        logits
    }
}

impl DecodeCache for KvCache {
    fn len(&self) -> usize {
        self.len as usize
    }

    /// Keeps the sequences at `rows`, so that later steps compute nothing for the others; an
    /// index given twice copies its sequence, and the copies then decode on their own (a fork).
    fn keep_rows(&mut self, rows: &Tensor) {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.index_select(0, rows);
        }
        self.valid = self.valid.index_select(0, rows);
    }
}

/// A decoding cache's rows: one per sequence being decoded.
pub trait DecodeCache {
    /// Positions filled so far.
    fn len(&self) -> usize;
    /// Whether nothing has been fed yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps the rows at `rows` ([R] int64, in their new order); an index given twice forks
    /// its row.
    fn keep_rows(&mut self, rows: &Tensor);
}

/// The trained policy π, whichever kind the config asks for.
// One per learner or actor, so the size gap between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PolicyModel {
    Tabular(TabularPolicy),
    Transformer(Transformer),
    /// A pretrained LM (boxed: it holds a tensor list per layer).
    Lm(Box<lm::Lm>),
}

impl PolicyModel {
    /// The configured policy with its variables on `device`: built fresh (`init_logits` seeds
    /// the tabular one), or, for an LM, loaded from its files with its LoRA adapters.
    pub fn load(cfg: &Config, device: Device, init_logits: &[f64]) -> Result<(VarStore, Self)> {
        if cfg.policy.kind == PolicyKind::Lm {
            let files = lm::source::resolve(cfg.policy.model.as_deref().unwrap_or_default())?;
            let m = lm::source::load_files(files, device, lm_kind(cfg), cfg.policy.lora.as_ref())?;
            return Ok((m.vs, PolicyModel::Lm(Box::new(m.lm))));
        }
        let vs = VarStore::new(device);
        let policy = Self::build(cfg, &vs.root(), init_logits)?;
        Ok((vs, policy))
    }

    /// Registers the configured policy under `path`; `init_logits` seeds the tabular one. A
    /// transformer's vocabulary is the tool-use protocol's tokenizer's ([`Words`]); its learned
    /// positions cover the longest episode (`env.max_tokens`), since it is trained from scratch.
    /// An LM is loaded from its files instead ([`PolicyModel::load`]).
    pub fn build(cfg: &Config, path: &tch::nn::Path, init_logits: &[f64]) -> Result<Self> {
        Self::build_with(cfg, path, init_logits, &Words)
    }

    /// [`PolicyModel::build`] with the vocabulary of `tokenizer`.
    pub fn build_with(
        cfg: &Config,
        path: &tch::nn::Path,
        init_logits: &[f64],
        tokenizer: &dyn Tokenizer,
    ) -> Result<Self> {
        Ok(match cfg.policy.kind {
            PolicyKind::Lm => {
                return Err(Error::input(
                    "policy.kind = \"lm\": a pretrained model is loaded from its files",
                ))
            }
            PolicyKind::Tabular => PolicyModel::Tabular(TabularPolicy::new(path, init_logits)),
            PolicyKind::Transformer => PolicyModel::Transformer(Transformer::new(
                path,
                &transformer::TransformerConfig {
                    layers: cfg.policy.layers,
                    d_model: cfg.policy.d_model,
                    heads: cfg.policy.heads,
                    precision: cfg.policy.precision,
                },
                tokenizer.vocab_size(),
                cfg.env.max_tokens,
            )),
        })
    }

    /// log π of each trajectory's actions per position ([B, L] on `device`; the bandit has
    /// L = 1), with the policy's entropy over those positions. A transformer computes each
    /// prefix the batch shares once ([`PrefixBatch`]).
    pub fn score(&self, batch: &[&Trajectory], device: Device) -> Result<TokenScores> {
        match self {
            PolicyModel::Tabular(p) => {
                let arms: Vec<i64> = batch.iter().map(|t| t.actions[0] as i64).collect();
                let logp = p.target_logp(&Tensor::from_slice(&arms).to_device(device))?;
                Ok(TokenScores {
                    token_logp: logp.f_unsqueeze(1)?,
                    mask: Tensor::f_ones([batch.len() as i64, 1], (Kind::Float, device))?,
                    entropy: p.entropy()?,
                })
            }
            PolicyModel::Transformer(m) => m.score_prefixes(&Self::prefix_batch(batch), device),
            PolicyModel::Lm(m) => m.score_prefixes(&Self::prefix_batch(batch), device),
        }
    }

    /// π's logits on the host (the tabular policy's table).
    pub fn logits(&self) -> Result<Vec<f64>> {
        match self {
            PolicyModel::Tabular(p) => p.logits(),
            PolicyModel::Transformer(_) | PolicyModel::Lm(_) => Err(Error::Corrupt(
                "a sequence policy has no logit table".into(),
            )),
        }
    }

    /// The token rows of a batch as a prefix tree.
    fn prefix_batch(batch: &[&Trajectory]) -> PrefixBatch {
        PrefixBatch::new(batch.iter().map(|t| (&t.actions[..], &t.policy_mask[..])))
    }

    /// The behaviour policy's stored log μ per position, laid out like [`PolicyModel::score`]'s
    /// `token_logp` ([B, L] on `device`).
    pub fn behaviour_token_logp(&self, batch: &[&Trajectory], device: Device) -> Result<Tensor> {
        let rows: Vec<Vec<f32>> = match self {
            PolicyModel::Tabular(_) => batch.iter().map(|t| vec![t.behaviour_logp]).collect(),
            PolicyModel::Transformer(_) | PolicyModel::Lm(_) => {
                let t = batch
                    .iter()
                    .map(|t| t.actions.len())
                    .max()
                    .unwrap_or(1)
                    .max(2);
                batch
                    .iter()
                    .map(|tr| {
                        let mut row = vec![0f32; t - 1];
                        for (j, &lp) in tr.behaviour_token_logp.iter().enumerate().skip(1) {
                            row[j - 1] = lp;
                        }
                        row
                    })
                    .collect()
            }
        };
        let (b, l) = (rows.len() as i64, rows.first().map_or(1, Vec::len) as i64);
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Tensor::f_from_slice(&flat)?
            .f_view([b, l])?
            .f_to_device(device)?)
    }
}

/// A sequence policy that plays tool-use episodes (the small transformer, a pretrained LM): how
/// a run finds it in the learner's [`PolicyModel`], and how an actor takes a copy of its own.
pub trait ToolPolicy: SequencePolicy + Sized + Send {
    /// Episodes evaluated at a time (a bound on the KV cache's memory).
    const EVAL_BATCH: usize;
    /// The policy inside `model`, if it is of this kind.
    fn of(model: &PolicyModel) -> Result<&Self>;
    /// Like [`ToolPolicy::of`], taking ownership.
    fn from_model(model: PolicyModel) -> Result<Self>;
    /// Decodes from weights packed as `how` (`policy.decode_weights`); only an LM packs.
    fn decode_from(&mut self, how: DecodeWeights) -> Result<()> {
        match how {
            DecodeWeights::F32 => Ok(()),
            other => Err(Error::input(format!(
                "policy.decode_weights = \"{}\" is for a pretrained LM",
                other.name()
            ))),
        }
    }
    /// Called after new weights were copied into the model's variables.
    fn weights_changed(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The error of a policy of another kind than a run's environment plays (the config's
/// validation pairs them first).
fn other_kind(want: &str) -> Error {
    Error::input(format!("policy.kind: this environment is played by {want}"))
}

impl ToolPolicy for Transformer {
    const EVAL_BATCH: usize = 256;

    fn of(model: &PolicyModel) -> Result<&Self> {
        match model {
            PolicyModel::Transformer(m) => Ok(m),
            _ => Err(other_kind("the small transformer")),
        }
    }

    fn from_model(model: PolicyModel) -> Result<Self> {
        match model {
            PolicyModel::Transformer(m) => Ok(m),
            _ => Err(other_kind("the small transformer")),
        }
    }
}

impl ToolPolicy for lm::Lm {
    const EVAL_BATCH: usize = 32;

    fn of(model: &PolicyModel) -> Result<&Self> {
        match model {
            PolicyModel::Lm(m) => Ok(m),
            _ => Err(other_kind("a pretrained LM")),
        }
    }

    fn from_model(model: PolicyModel) -> Result<Self> {
        match model {
            PolicyModel::Lm(m) => Ok(*m),
            _ => Err(other_kind("a pretrained LM")),
        }
    }

    fn decode_from(&mut self, how: DecodeWeights) -> Result<()> {
        self.pack_for_decoding(how)
    }

    fn weights_changed(&mut self) -> Result<()> {
        lm::Lm::weights_changed(self)
    }
}

/// Right-pads token sequences with `<pad>` into [B, T] int64 and their policy masks into [B, T]
/// float: the input of the tests' padded reference pass ([`Transformer::token_logp`]).
#[cfg(test)]
pub fn pad_batch<'a>(rows: impl Iterator<Item = (&'a [u32], &'a [bool])>) -> (Tensor, Tensor) {
    let rows: Vec<_> = rows.collect();
    let t = rows.iter().map(|(a, _)| a.len()).max().unwrap_or(1).max(2);
    let mut tokens = vec![0i64; rows.len() * t];
    let mut mask = vec![0f32; rows.len() * t];
    for (i, (a, m)) in rows.iter().enumerate() {
        for (j, (&tok, &by_policy)) in a.iter().zip(m.iter()).enumerate() {
            tokens[i * t + j] = tok as i64;
            mask[i * t + j] = if by_policy { 1.0 } else { 0.0 };
        }
    }
    let shape = [rows.len() as i64, t as i64];
    (
        Tensor::from_slice(&tokens).view(shape),
        Tensor::from_slice(&mask).view(shape),
    )
}

/// The type an LM's weights are kept in: `policy.precision`.
pub fn lm_kind(cfg: &Config) -> Kind {
    match cfg.policy.precision {
        crate::config::Precision::F32 => Kind::Float,
        crate::config::Precision::Bf16 => Kind::BFloat16,
    }
}

/// Overwrites a freshly built model's random weights with draws from a seeded ChaCha stream, in
/// name order, for tests. Torch's global generator is shared by every test running at the same
/// time, so weights drawn from it after `tch::manual_seed` still depend on the interleaving.
/// The distributions are those of construction: embedding tables (2-D weights without a bias)
/// N(0, 0.02), linear weights U(±√6/√fan_in) (Kaiming), their biases U(±1/√fan_in); constant
/// tensors (layer-norm gains and shifts) stay as they are.
#[cfg(test)]
pub fn seeded_init(vs: &VarStore, seed: u64) {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let normal = Normal::new(0.0f32, 0.02).unwrap();
    tch::no_grad(|| {
        for name in names {
            let t = &vars[name];
            let n = t.numel();
            let constant = t.min().double_value(&[]) == t.max().double_value(&[]);
            let embedding = name
                .strip_suffix(".weight")
                .is_some_and(|stem| t.dim() == 2 && !vars.contains_key(&format!("{stem}.bias")));
            let values: Vec<f32> = if embedding {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            } else if constant {
                continue;
            } else {
                let (weight, gain) = match name.strip_suffix(".bias") {
                    Some(stem) => (&vars[&format!("{stem}.weight")], 1.0),
                    None => (t, 6f32.sqrt()),
                };
                let bound = gain / (weight.size()[1] as f32).sqrt();
                (0..n).map(|_| rng.gen_range(-bound..bound)).collect()
            };
            let mut t = t.shallow_clone();
            t.copy_(&Tensor::from_slice(&values).view(t.size().as_slice()));
        }
    });
}

/// One named tensor as plain host data.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    /// Copies a tensor (any device) to host `f32`.
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<Self> {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let flat = t
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_view([-1])?;
        let data = Vec::<f32>::try_from(&flat)?;
        Ok(NamedTensor {
            name: name.to_string(),
            shape,
            data,
        })
    }

    /// A tensor on `device` holding the same values.
    pub fn to_tensor(&self, device: Device) -> Result<Tensor> {
        let shape: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_slice(&self.data)?
            .f_view(shape.as_slice())?
            .f_to_device(device)?)
    }
}

/// The trained variables of a `VarStore` in sorted-name order; the tensors share storage with the
/// store. Frozen ones (an LM's base weights under LoRA) are left out: they come from the model's
/// files, so snapshots, checkpoints and the optimiser carry only what is trained.
pub fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A versioned copy of the learner's weights. `version` is the learner step it was taken at.
/// Clones share the values (the run keeps the behaviour snapshot that its actors load).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSnapshot {
    pub version: u64,
    pub tensors: Arc<Vec<NamedTensor>>,
}

impl WeightSnapshot {
    /// Copies every variable of `vs` to host memory.
    pub fn take(vs: &VarStore, version: u64) -> Result<Self> {
        let tensors = sorted_vars(vs)
            .iter()
            .map(|(name, t)| NamedTensor::from_tensor(name, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(WeightSnapshot {
            version,
            tensors: Arc::new(tensors),
        })
    }

    /// Overwrites the variables of `vs` with this snapshot; names and shapes must match exactly.
    pub fn load_into(&self, vs: &VarStore) -> Result<()> {
        let vars = sorted_vars(vs);
        if vars.len() != self.tensors.len() {
            return Err(Error::Corrupt(format!(
                "weight snapshot has {} tensors, the policy has {}",
                self.tensors.len(),
                vars.len()
            )));
        }
        tch::no_grad(|| {
            for ((name, var), saved) in vars.iter().zip(self.tensors.iter()) {
                let size = var.size();
                let shape: Vec<usize> = size.iter().map(|&d| d as usize).collect();
                if *name != saved.name || shape != saved.shape {
                    return Err(Error::Corrupt(format!(
                        "weight snapshot tensor {} {:?} does not match policy variable {name} {shape:?}",
                        saved.name, saved.shape
                    )));
                }
                if saved.data.len() != shape.iter().product::<usize>() {
                    return Err(Error::Corrupt(format!(
                        "weight snapshot tensor {} holds {} values for shape {shape:?}",
                        saved.name,
                        saved.data.len()
                    )));
                }
                // The snapshot's values as they lie (no copy), copied once into the variable.
                // SAFETY: `saved.data` holds the shape's f32 values (checked just above),
                // row-major, and outlives `view`, which only the copy below reads.
                let view = unsafe {
                    Tensor::f_from_blob(
                        saved.data.as_ptr() as *const u8,
                        &[saved.data.len() as i64],
                        &[1],
                        Kind::Float,
                        Device::Cpu,
                    )?
                }
                .f_view(size.as_slice())?;
                let mut var = var.shallow_clone();
                var.f_copy_(&view)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.zeros("a", &[2, 3]);
        let _ = root.zeros("b", &[4]);
        vs
    }

    #[test]
    fn a_snapshot_loads_into_another_store_and_its_clones_share_the_values() {
        let (from, to) = (store(), store());
        tch::no_grad(|| {
            for (i, (_, t)) in sorted_vars(&from).into_iter().enumerate() {
                let n = t.numel() as i64;
                let values = Tensor::arange(n, (Kind::Float, Device::Cpu)) + 10.0 * i as f64;
                t.shallow_clone().copy_(&values.view(t.size().as_slice()));
            }
        });
        let snap = WeightSnapshot::take(&from, 3).unwrap();
        let clone = snap.clone();
        assert!(Arc::ptr_eq(&snap.tensors, &clone.tensors));
        clone.load_into(&to).unwrap();
        for ((_, a), (_, b)) in sorted_vars(&from).iter().zip(sorted_vars(&to).iter()) {
            assert!(a.equal(b));
        }
        // The values come from the snapshot, not from the store it was taken of.
        assert_eq!(snap.tensors[0].data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn a_snapshot_whose_values_do_not_fill_its_shape_is_refused() {
        let (from, to) = (store(), store());
        let mut snap = WeightSnapshot::take(&from, 1).unwrap();
        Arc::make_mut(&mut snap.tensors)[0].data.pop();
        let err = snap.load_into(&to).unwrap_err().to_string();
        assert!(err.contains("holds 5 values for shape [2, 3]"), "{err}");
    }
}
