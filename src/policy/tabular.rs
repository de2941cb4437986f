//! The tabular softmax policy of the bandit: one logit per arm.
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// π(y) = softmax(logits)_y.
#[derive(Debug)]
pub struct TabularPolicy {
    logits: Tensor,
}

impl TabularPolicy {
    /// Registers `logits` (initialised to `init`) under `path`.
    pub fn new(path: &nn::Path, init: &[f64]) -> Self {
        let init: Vec<f32> = init.iter().map(|&x| x as f32).collect();
        let logits = path.var_copy("logits", &Tensor::from_slice(&init));
        TabularPolicy { logits }
    }

    /// A policy on `device` in a fresh `VarStore`.
    pub fn build(device: Device, init: &[f64]) -> (VarStore, Self) {
        let vs = VarStore::new(device);
        let policy = Self::new(&vs.root(), init);
        (vs, policy)
    }

    /// log π(arm) for each arm of `arms` ([B] int64 on the policy's device) → [B].
    pub fn target_logp(&self, arms: &Tensor) -> Result<Tensor> {
        Ok(self
            .logits
            .f_log_softmax(0, Kind::Float)?
            .f_gather(0, arms, false)?)
    }

    /// H(π) in nats.
    pub fn entropy(&self) -> Result<f64> {
        let logp = self.logits.f_log_softmax(0, Kind::Double)?;
        Ok(-(logp.exp() * &logp).f_sum(Kind::Double)?.double_value(&[]))
    }

    /// The logits as host `f64`.
    pub fn logits(&self) -> Result<Vec<f64>> {
        let flat = self
            .logits
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?;
        Ok(Vec::<f64>::try_from(&flat)?)
    }
}

/// The distribution an actor samples from: softmax(logits / temperature).
pub fn sampling_probs(logits: &[f64], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|l| l / temperature).collect();
    crate::math::softmax(&scaled)
}
