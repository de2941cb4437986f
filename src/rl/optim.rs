//! Adam and SGD written out over a `VarStore`, so their state (moments and step count) can be
//! checkpointed and restored exactly; tch's own optimisers keep their state out of reach.
use tch::{Device, Kind, Tensor};

use crate::config::{LearnerConfig, OptimizerKind};
use crate::error::{Error, Result};
use crate::policy::NamedTensor;

/// Whether `t` is a defined, contiguous f32 tensor in host memory.
fn is_host_f32(t: &Tensor) -> bool {
    t.defined() && t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// The data of a defined, contiguous f32 CPU tensor as a host slice, or `None` for any other
/// tensor.
///
/// # Safety
/// While the slice lives, the tensor's storage (which other handles and views may share) must not
/// be written: no in-place tensor op, no mutable slice, no other thread.
pub unsafe fn host_f32(t: &Tensor) -> Option<&[f32]> {
    if !is_host_f32(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: a contiguous f32 CPU tensor of `n` elements starts at its data pointer; that nobody
    // writes it meanwhile is the caller's promise.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) })
}

/// [`host_f32`], writable.
///
/// # Safety
/// While the slice lives, the tensor's storage (which other handles and views may share) must not
/// be read or written any other way: no tensor op on it, no other slice of it, no other thread.
pub unsafe fn host_f32_mut(t: &mut Tensor) -> Option<&mut [f32]> {
    if !is_host_f32(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: as in `host_f32`, with exclusive access promised by the caller.
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) })
}

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

    /// Sets the learning rate of the steps that follow (a schedule's).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
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

    /// Checks the gradient norm (non-finite: an error, nothing changed), counts the step and
    /// returns the clipping factor of the gradients.
    fn begin_step(&mut self, grad_norm: f64, step: u64) -> Result<f64> {
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                quantity: "gradient norm",
                step,
            });
        }
        self.t += 1;
        Ok(
            if self.max_grad_norm > 0.0 && grad_norm > self.max_grad_norm {
                self.max_grad_norm / (grad_norm + 1e-12)
            } else {
                1.0
            },
        )
    }

    /// Applies one update from the gradients in `vars`, then zeroes them. A non-finite gradient
    /// is reported and nothing is changed.
    pub fn step(&mut self, vars: &[(String, Tensor)], step: u64) -> Result<StepInfo> {
        let grad_norm = Self::grad_norm(vars)?;
        let scale = self.begin_step(grad_norm, step)?;
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

    /// Whether [`Optimizer::step_host`] can update `vars` in place: every variable and moment is
    /// a contiguous f32 tensor in host memory.
    pub fn host_eligible(&self, vars: &[(String, Tensor)]) -> bool {
        vars.iter()
            .map(|(_, p)| p)
            .chain(&self.m)
            .chain(&self.v)
            .all(is_host_f32)
    }

    /// [`Optimizer::step`] with the gradients given as host data (one per variable, in `vars`'
    /// order), applied in place to the weights' and moments' host memory: no tensor op, so no
    /// dispatch cost, which dominates for a tabular policy's few hundred weights. Same update,
    /// same clipping, same errors. Call only when [`Optimizer::host_eligible`].
    pub fn step_host(
        &mut self,
        vars: &[(String, Tensor)],
        grads: &[Vec<f64>],
        step: u64,
    ) -> Result<StepInfo> {
        if grads.len() != vars.len() || !self.host_eligible(vars) {
            return Err(Error::Corrupt(
                "a host optimiser step needs host f32 variables and one gradient each".into(),
            ));
        }
        // Checked before anything changes, so a bad call leaves weights and state as they were.
        for (i, ((_, p), g)) in vars.iter().zip(grads).enumerate() {
            if p.numel() != g.len() {
                return Err(Error::Corrupt(format!(
                    "gradient {i} has {} values for a variable of {}",
                    g.len(),
                    p.numel()
                )));
            }
        }
        let grad_norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let scale = self.begin_step(grad_norm, step)?;
        let t = self.t as i32;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = (1.0 - self.beta1.powi(t)) as f32;
        let bc2 = (1.0 - self.beta2.powi(t)) as f32;
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        for (i, ((_, p), g)) in vars.iter().zip(grads).enumerate() {
            // A second handle on the variable's storage, to write through.
            let mut handle = p.shallow_clone();
            // SAFETY: the learner thread owns its variables and moments, no other slice of them
            // is alive, and no tensor op runs on them while these slices are used.
            let p = unsafe { host_f32_mut(&mut handle) }.expect("checked by host_eligible");
            match self.kind {
                OptimizerKind::Sgd => {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= (g * scale) as f32 * lr;
                    }
                }
                OptimizerKind::Adam => {
                    // SAFETY: as above; m and v are distinct tensors from p.
                    let m = unsafe { host_f32_mut(&mut self.m[i]) }.expect("host_eligible");
                    let v = unsafe { host_f32_mut(&mut self.v[i]) }.expect("host_eligible");
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        let g = (g * scale) as f32;
                        *m = *m * b1 + g * (1.0 - b1);
                        *v = *v * b2 + g * g * (1.0 - b2);
                        *p -= *m / ((*v / bc2).sqrt() + eps) * (lr / bc1);
                    }
                }
            }
        }
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
            if is_host_f32(p) {
                // SAFETY: read only, on the thread that owns `p`, with no op running on it.
                let values = unsafe { host_f32(p) }.expect("checked by is_host_f32");
                if !values.iter().all(|x| x.is_finite()) {
                    return Ok(false);
                }
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LearnerConfig;
    use proptest::prelude::*;

    fn vars(values: &[Vec<f32>]) -> Vec<(String, Tensor)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = Tensor::from_slice(v).set_requires_grad(true);
                (format!("w{i}"), t)
            })
            .collect()
    }

    fn host(vars: &[(String, Tensor)]) -> Vec<Vec<f32>> {
        vars.iter()
            .map(|(_, t)| Vec::<f32>::try_from(t.detach()).unwrap())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The in-place host update is the tensor update: same weights, moments and norm, for
        /// both optimisers, with and without clipping, over several steps.
        #[test]
        fn prop_host_step_matches_tensor_step(
            init in prop::collection::vec(-2.0f32..2.0, 7),
            grads in prop::collection::vec(prop::collection::vec(-3.0f64..3.0, 7), 1..4),
            adam in any::<bool>(),
            clip in prop_oneof![Just(0.0), 0.1f64..4.0],
        ) {
            let cfg = LearnerConfig {
                optimizer: if adam { OptimizerKind::Adam } else { OptimizerKind::Sgd },
                lr: 0.05,
                max_grad_norm: clip,
                ..LearnerConfig::default()
            };
            // Two variables of 3 and 4 values.
            let split = |v: &[f32]| vec![v[..3].to_vec(), v[3..].to_vec()];
            let (a, b) = (vars(&split(&init)), vars(&split(&init)));
            let (mut opt_a, mut opt_b) = (Optimizer::new(&cfg, &a), Optimizer::new(&cfg, &b));
            prop_assert!(opt_b.host_eligible(&b));
            for (step, g) in grads.iter().enumerate() {
                let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                let gs = split(&g32);
                // The gradient of Σ p·g with respect to p is g.
                for ((_, p), g) in a.iter().zip(&gs) {
                    (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
                }
                let info_a = opt_a.step(&a, step as u64).unwrap();
                let hg: Vec<Vec<f64>> = gs
                    .iter()
                    .map(|v| v.iter().map(|&x| x as f64).collect())
                    .collect();
                let info_b = opt_b.step_host(&b, &hg, step as u64).unwrap();
                prop_assert!((info_a.grad_norm - info_b.grad_norm).abs() < 1e-4 * (1.0 + info_a.grad_norm));
                for (x, y) in host(&a).iter().flatten().zip(host(&b).iter().flatten()) {
                    prop_assert!((x - y).abs() < 1e-5 * (1.0 + x.abs()), "{} vs {}", x, y);
                }
            }
            let (ta, sa) = opt_a.state(&a).unwrap();
            let (tb, sb) = opt_b.state(&b).unwrap();
            prop_assert_eq!(ta, tb);
            for (x, y) in sa.iter().zip(&sb) {
                let (x, y) = (x.to_tensor(Device::Cpu).unwrap(), y.to_tensor(Device::Cpu).unwrap());
                prop_assert!(x.allclose(&y, 1e-5, 1e-7, false));
            }
        }
    }

    #[test]
    fn a_non_finite_or_misshapen_host_gradient_changes_nothing() {
        let v = vars(&[vec![1.0, 2.0]]);
        let mut opt = Optimizer::new(&LearnerConfig::default(), &v);
        let err = opt.step_host(&v, &[vec![f64::NAN, 0.0]], 3).unwrap_err();
        assert!(matches!(
            err,
            Error::NonFinite {
                quantity: "gradient norm",
                step: 3
            }
        ));
        let err = opt.step_host(&v, &[vec![1.0]], 4).unwrap_err().to_string();
        assert!(
            err.contains("gradient 0 has 1 values for a variable of 2"),
            "{err}"
        );
        assert_eq!(host(&v), vec![vec![1.0, 2.0]]);
        assert_eq!(opt.state(&v).unwrap().0, 0);
        assert!(Optimizer::all_finite(&v).unwrap());
        let bad = vars(&[vec![1.0, f32::INFINITY]]);
        assert!(!Optimizer::all_finite(&bad).unwrap());
    }

    #[test]
    fn host_views_refuse_tensors_that_are_not_contiguous_host_f32() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
            .view([2, 2])
            .tr();
        assert!(!is_host_f32(&t));
        assert!(unsafe { host_f32(&t) }.is_none());
        assert!(!is_host_f32(&Tensor::from_slice(&[1.0f64])));
        let ok = Tensor::from_slice(&[1.0f32, 2.0]);
        assert_eq!(unsafe { host_f32(&ok) }.unwrap(), &[1.0, 2.0]);
        let mut handle = ok.shallow_clone();
        unsafe { host_f32_mut(&mut handle) }.unwrap()[1] = 5.0;
        assert_eq!(Vec::<f32>::try_from(&ok).unwrap(), vec![1.0, 5.0]);
    }
}
