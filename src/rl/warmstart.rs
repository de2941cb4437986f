//! Behaviour cloning on scripted demonstrations, so RL starts from a policy that knows the
//! protocol (as the paper's LLMs did) but is far from perfect: the loss is the negative
//! log-likelihood of the tokens the policy writes in a demonstration (tool results masked out).
use rand::Rng;
use tch::nn::VarStore;
use tch::{Device, Kind};

use crate::config::{Config, LearnerConfig, OptimizerKind};
use crate::env::tool_use::protocol::{demonstration, prompt_tokens};
use crate::env::tool_use::tasks::{Split, Task};
use crate::error::{Error, Result};
use crate::policy::{sorted_vars, PrefixBatch, Transformer};
use crate::rl::optim::Optimizer;
use crate::rng::{self, Role};

/// Demonstrations use train-split items numbered from here, apart from the actors' items.
const DEMO_BASE: u64 = 1 << 50;

/// What the warm start did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct WarmstartReport {
    pub steps: u64,
    /// Mean per-token negative log-likelihood of the last step.
    pub final_nll: f64,
}

/// Trains `model` (whose variables are in `vs`, on `device`) to imitate demonstrations.
pub fn warm_start(
    cfg: &Config,
    model: &Transformer,
    vs: &VarStore,
    task: &Task,
    device: Device,
) -> Result<WarmstartReport> {
    let w = &cfg.warmstart;
    if w.demos == 0 || w.steps == 0 {
        return Ok(WarmstartReport::default());
    }
    let demos: Vec<(Vec<u32>, Vec<bool>)> = (0..w.demos as u64)
        .filter_map(|i| {
            let item = task.item(Split::Train, DEMO_BASE + i);
            let (tokens, mask) = demonstration(task, &item)?;
            let mut all = prompt_tokens(task, &item);
            let mut all_mask = vec![false; all.len()];
            all.extend(tokens);
            all_mask.extend(mask);
            (all.len() <= cfg.env.max_tokens).then_some((all, all_mask))
        })
        .collect();
    if demos.is_empty() {
        return Err(Error::input(
            "warmstart: no demonstration fits in env.max_tokens",
        ));
    }
    let vars = sorted_vars(vs);
    let opt_cfg = LearnerConfig {
        optimizer: OptimizerKind::Adam,
        lr: w.lr,
        max_grad_norm: 1.0,
        ..cfg.learner.clone()
    };
    let mut optimizer = Optimizer::new(&opt_cfg, &vars);
    let mut rng = rng::stream(cfg.seed, Role::Init, 1);
    let mut report = WarmstartReport::default();
    for step in 0..w.steps {
        let batch: Vec<&(Vec<u32>, Vec<bool>)> = (0..w.batch_size)
            .map(|_| &demos[rng.gen_range(0..demos.len())])
            .collect();
        let rows = PrefixBatch::new(batch.iter().map(|(t, m)| (&t[..], &m[..])));
        let scores = model.score_prefixes(&rows, device)?;
        let n = scores.mask.sum(Kind::Float);
        let nll = scores.token_logp.sum(Kind::Float).neg() / &n;
        let value = nll.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::NonFinite {
                quantity: "warm-start loss",
                step,
            });
        }
        nll.backward();
        optimizer.step(&vars, step)?;
        report = WarmstartReport {
            steps: step + 1,
            final_nll: value,
        };
    }
    Ok(report)
}
