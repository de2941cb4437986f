//! Policies and the plain-data weight snapshots that carry them from the learner to the actors.
//!
//! A `tch::Tensor` never crosses a thread: the learner copies its variables into a
//! [`WeightSnapshot`] (host `f32` data, variables in sorted-name order) and each actor loads it
//! into its own `VarStore`.
pub mod tabular;
pub mod transformer;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

pub use tabular::TabularPolicy;
pub use transformer::Transformer;

use crate::config::{Config, PolicyKind};
use crate::trajectory::Trajectory;

/// The trained policy π, whichever kind the config asks for.
#[derive(Debug)]
pub enum PolicyModel {
    Tabular(TabularPolicy),
    Transformer(Transformer),
}

impl PolicyModel {
    /// Registers the configured policy under `path`; `init_logits` seeds the tabular one.
    pub fn build(cfg: &Config, path: &tch::nn::Path, init_logits: &[f64]) -> Self {
        match cfg.policy.kind {
            PolicyKind::Tabular => PolicyModel::Tabular(TabularPolicy::new(path, init_logits)),
            PolicyKind::Transformer => PolicyModel::Transformer(Transformer::new(
                path,
                &transformer::TransformerConfig {
                    layers: cfg.policy.layers,
                    d_model: cfg.policy.d_model,
                    heads: cfg.policy.heads,
                },
                crate::env::tool_use::vocab::size(),
                cfg.env.max_tokens,
            )),
        }
    }

    /// The transformer, for tool use (the config's validation pairs it with `env.kind`).
    pub fn transformer(&self) -> Result<&Transformer> {
        match self {
            PolicyModel::Transformer(m) => Ok(m),
            PolicyModel::Tabular(_) => {
                Err(Error::input("policy.kind: tool use needs a transformer"))
            }
        }
    }

    /// Like [`PolicyModel::transformer`], taking ownership.
    pub fn into_transformer(self) -> Result<Transformer> {
        match self {
            PolicyModel::Transformer(m) => Ok(m),
            PolicyModel::Tabular(_) => {
                Err(Error::input("policy.kind: tool use needs a transformer"))
            }
        }
    }

    /// log π(y) of each trajectory → [B] on `device`: the arm's log-probability, or the sum over
    /// the policy's tokens of a right-padded batch in one masked forward pass.
    pub fn target_logp(&self, batch: &[&Trajectory], device: Device) -> Result<Tensor> {
        match self {
            PolicyModel::Tabular(p) => {
                let arms: Vec<i64> = batch.iter().map(|t| t.actions[0] as i64).collect();
                p.target_logp(&Tensor::from_slice(&arms).to_device(device))
            }
            PolicyModel::Transformer(m) => {
                let (tokens, mask) =
                    pad_batch(batch.iter().map(|t| (&t.actions[..], &t.policy_mask[..])));
                m.sequence_logp(&tokens.to_device(device), &mask.to_device(device))
            }
        }
    }
}

/// Right-pads token sequences with `<pad>` into [B, T] int64 and their policy masks into [B, T]
/// float.
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

/// The variables of a `VarStore` in sorted-name order; the tensors share storage with the store.
pub fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A versioned copy of the learner's weights. `version` is the learner step it was taken at.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSnapshot {
    pub version: u64,
    pub tensors: Vec<NamedTensor>,
}

impl WeightSnapshot {
    /// Copies every variable of `vs` to host memory.
    pub fn take(vs: &VarStore, version: u64) -> Result<Self> {
        let tensors = sorted_vars(vs)
            .iter()
            .map(|(name, t)| NamedTensor::from_tensor(name, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(WeightSnapshot { version, tensors })
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
            for ((name, var), saved) in vars.iter().zip(&self.tensors) {
                let shape: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
                if *name != saved.name || shape != saved.shape {
                    return Err(Error::Corrupt(format!(
                        "weight snapshot tensor {} {:?} does not match policy variable {name} {shape:?}",
                        saved.name, saved.shape
                    )));
                }
                let mut var = var.shallow_clone();
                var.f_copy_(&saved.to_tensor(var.device())?)?;
            }
            Ok(())
        })
    }
}
