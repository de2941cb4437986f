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
use crate::policy::{sorted_vars, PrefixBatch, SequencePolicy};
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

/// A demonstration: the whole sequence, prompt included, and which tokens the policy writes.
pub type Demo = (Vec<u32>, Vec<bool>);

/// `warmstart.demos` demonstrations in the token protocol.
pub fn token_demos(cfg: &Config, task: &Task) -> Result<Vec<Demo>> {
    demos(cfg, task, |item| {
        let (tokens, mask) = demonstration(task, item)?;
        let mut all = prompt_tokens(task, item);
        let mut all_mask = vec![false; all.len()];
        all.extend(tokens);
        all_mask.extend(mask);
        Some((all, all_mask))
    })
}

/// `warmstart.demos` demonstrations written by `demo` on train-split items of their own, those
/// that fit in `env.max_tokens`.
pub fn demos<T: crate::env::TaskSource>(
    cfg: &Config,
    task: &T,
    demo: impl Fn(&T::Item) -> Option<Demo>,
) -> Result<Vec<Demo>> {
    let written: Vec<Demo> = (0..cfg.warmstart.demos as u64)
        .filter_map(|i| demo(&task.item(Split::Train, DEMO_BASE + i)))
        .collect();
    let longest = written.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    let n = written.len();
    let demos: Vec<Demo> = written
        .into_iter()
        .filter(|(all, _)| all.len() <= cfg.env.max_tokens)
        .collect();
    if demos.len() < n {
        eprintln!(
            "warm start: {} of {n} demonstrations fit in env.max_tokens = {} (the longest has {longest} tokens)",
            demos.len(),
            cfg.env.max_tokens
        );
    }
    if demos.is_empty() && cfg.warmstart.demos > 0 {
        return Err(Error::input(
            "warmstart: no demonstration fits in env.max_tokens",
        ));
    }
    Ok(demos)
}

/// Trains `model` (whose variables are in `vs`, on `device`) to imitate `demos`: the negative
/// log-likelihood of the tokens the policy writes (tool results and prompts masked out).
pub fn warm_start<P: SequencePolicy>(
    cfg: &Config,
    model: &P,
    vs: &VarStore,
    demos: &[Demo],
    device: Device,
) -> Result<WarmstartReport> {
    let w = &cfg.warmstart;
    if w.demos == 0 || w.steps == 0 || demos.is_empty() {
        return Ok(WarmstartReport::default());
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
    let mut shown = std::time::Instant::now();
    for step in 0..w.steps {
        let batch: Vec<&Demo> = (0..w.batch_size)
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
        // Long warm starts (a pretrained LM) show progress.
        if shown.elapsed().as_secs() >= 10 {
            eprintln!("warm start: step {}/{}, nll {value:.3}", step + 1, w.steps);
            shown = std::time::Instant::now();
        }
    }
    Ok(report)
}
