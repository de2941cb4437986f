//! Adam and SGD written out over a `VarStore`, so their state (moments and step count) can be
//! checkpointed and restored exactly; tch's own optimisers keep their state out of reach.
use tch::{Kind, Tensor};

use crate::config::{LearnerConfig, OptimizerKind};
use crate::error::{Error, Result};
use crate::policy::NamedTensor;

/// The optimiser and its state, aligned with the policy's variables in sorted-name order.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    max_grad_norm: f64,
    t: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
}

impl Optimizer {
    pub fn new(cfg: &LearnerConfig, vars: &[(String, Tensor)]) -> Self {
        let zeros = || {
            vars.iter()
                .map(|(_, p)| p.zeros_like().detach())
                .collect::<Vec<_>>()
        };
        Optimizer {
            kind: cfg.optimizer,
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            max_grad_norm: cfg.max_grad_norm,
            t: 0,
            m: zeros(),
            v: zeros(),
        }
    }

    /// Global gradient norm of `vars` (0 for variables without a gradient).
    pub fn grad_norm(vars: &[(String, Tensor)]) -> Result<f64> {
        let mut total = 0.0;
        for (_, p) in vars {
            let g = p.grad();
            if g.defined() {
                total += g
                    .f_pow_tensor_scalar(2)?
                    .f_sum(Kind::Double)?
                    .double_value(&[]);
            }
        }
        Ok(total.sqrt())
    }

    /// Applies one update from the gradients in `vars`, then zeroes them. A non-finite gradient
    /// is reported and nothing is changed.
    pub fn step(&mut self, vars: &[(String, Tensor)], step: u64) -> Result<StepInfo> {
        let grad_norm = Self::grad_norm(vars)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                quantity: "gradient norm",
                step,
            });
        }
        let scale = if self.max_grad_norm > 0.0 && grad_norm > self.max_grad_norm {
            self.max_grad_norm / (grad_norm + 1e-12)
        } else {
            1.0
        };
        self.t += 1;
        let t = self.t as i32;
        tch::no_grad(|| -> Result<()> {
            for (i, (_, p)) in vars.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if scale != 1.0 {
                    g.f_mul_scalar(scale)?
                } else {
                    g.shallow_clone()
                };
                let mut p = p.shallow_clone();
                match self.kind {
                    OptimizerKind::Sgd => {
                        let _ = p.f_sub_(&g.f_mul_scalar(self.lr)?)?;
                    }
                    OptimizerKind::Adam => {
                        let m = &mut self.m[i];
                        let v = &mut self.v[i];
                        let _ = m.f_mul_scalar_(self.beta1)?;
                        let _ = m.f_add_(&g.f_mul_scalar(1.0 - self.beta1)?)?;
                        let _ = v.f_mul_scalar_(self.beta2)?;
                        let _ = v.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - self.beta2)?)?;
                        let bc1 = 1.0 - self.beta1.powi(t);
                        let bc2 = 1.0 - self.beta2.powi(t);
                        let denom = v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(self.eps)?;
                        let _ = p.f_sub_(&m.f_div(&denom)?.f_mul_scalar(self.lr / bc1)?)?;
                    }
                }
            }
            Ok(())
        })?;
        Self::zero_grad(vars)?;
        Ok(StepInfo { grad_norm })
    }

    /// Zeroes the gradients of `vars`.
    pub fn zero_grad(vars: &[(String, Tensor)]) -> Result<()> {
        for (_, p) in vars {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// Whether every value of `vars` is finite.
    pub fn all_finite(vars: &[(String, Tensor)]) -> Result<bool> {
        for (_, p) in vars {
            if !bool::try_from(p.f_isfinite()?.f_all()?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The step count and the first and second moments as host data.
    pub fn state(&self, vars: &[(String, Tensor)]) -> Result<(u64, Vec<NamedTensor>)> {
        let mut out = Vec::with_capacity(2 * vars.len());
        for (i, (name, _)) in vars.iter().enumerate() {
            out.push(NamedTensor::from_tensor(&format!("m.{name}"), &self.m[i])?);
            out.push(NamedTensor::from_tensor(&format!("v.{name}"), &self.v[i])?);
        }
        Ok((self.t, out))
    }

    /// Restores what [`Optimizer::state`] returned.
    pub fn load_state(
        &mut self,
        vars: &[(String, Tensor)],
        t: u64,
        saved: &[NamedTensor],
    ) -> Result<()> {
        if saved.len() != 2 * vars.len() {
            return Err(Error::Corrupt(format!(
                "optimiser state has {} tensors, expected {}",
                saved.len(),
                2 * vars.len()
            )));
        }
        for (i, (name, p)) in vars.iter().enumerate() {
            let (m, v) = (&saved[2 * i], &saved[2 * i + 1]);
            if m.name != format!("m.{name}") || v.name != format!("v.{name}") {
                return Err(Error::Corrupt(format!(
                    "optimiser state does not match variable {name}"
                )));
            }
            self.m[i] = m.to_tensor(p.device())?;
            self.v[i] = v.to_tensor(p.device())?;
        }
        self.t = t;
        Ok(())
    }
}
