//! Behaviour cloning on scripted demonstrations, so RL starts from a policy that knows the
//! protocol (as the paper's LLMs did) but is far from perfect: the loss is the negative
//! log-likelihood of the tokens the policy writes in a demonstration (tool results masked out).
use std::collections::BTreeMap;

use rand::Rng;
use tch::nn::VarStore;
use tch::{Device, Kind};

use crate::config::{Config, DemoSampling, LearnerConfig, OptimizerKind};
use crate::env::{Demonstration, Protocol, Split, TaskSource, ToolSet};
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

/// `warmstart.demos` demonstrations of `protocol` on train-split items of their own, those that
/// can be written and fit in `env.max_tokens`. Dropped items are counted by reason (the first of
/// each named); when none is left, the error says why.
pub fn demos<T, R>(cfg: &Config, task: &T, protocol: &R) -> Result<Vec<Demonstration>>
where
    T: TaskSource + ToolSet<T::Item>,
    R: Protocol<T>,
{
    let n = cfg.warmstart.demos as u64;
    let mut kept = Vec::new();
    // Reason → (count, the first case's text).
    let mut dropped: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut drop = |reason: &'static str, detail: String| {
        dropped.entry(reason).or_insert((0, detail)).0 += 1;
    };
    let mut longest = 0;
    for i in 0..n {
        match protocol.demonstration(task, &task.item(Split::Train, DEMO_BASE + i)) {
            Ok(d) if d.tokens.len() <= cfg.env.max_tokens => kept.push(d),
            Ok(d) => {
                longest = longest.max(d.tokens.len());
                drop("longer than env.max_tokens", String::new());
            }
            Err(e) => drop(e.reason(), e.to_string()),
        }
    }
    let why = dropped
        .iter()
        .map(|(reason, (count, first))| match *reason {
            "longer than env.max_tokens" => format!(
                "{count} longer than env.max_tokens = {} (the longest has {longest} tokens)",
                cfg.env.max_tokens
            ),
            _ => format!("{count}: {reason} (first: {first})"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    if kept.is_empty() && n > 0 {
        return Err(Error::input(format!(
            "warmstart: none of the {n} demonstrations can be used: {why}"
        )));
    }
    if !dropped.is_empty() {
        eprintln!(
            "warm start: {} of {n} demonstrations kept; dropped {why}",
            kept.len()
        );
    }
    Ok(kept)
}

/// Trains `model` (whose variables are in `vs`, on `device`) to imitate `demos`: the negative
/// log-likelihood of the tokens the policy writes (tool results and prompts masked out).
pub fn warm_start<P: SequencePolicy>(
    cfg: &Config,
    model: &P,
    vs: &VarStore,
    demos: &[Demonstration],
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
    let mut order = Order::new(w.sampling, demos.len());
    for step in 0..w.steps {
        let lr = w.schedule.lr(w.lr, step, w.steps);
        optimizer.set_lr(lr);
        let batch: Vec<&Demonstration> = (0..w.batch_size)
            .map(|_| &demos[order.next(&mut rng)])
            .collect();
        let rows = PrefixBatch::new(batch.iter().map(|d| (&d.tokens[..], &d.policy_mask[..])));
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
            eprintln!(
                "warm start: step {}/{}, nll {value:.3}, lr {lr:.2e}",
                step + 1,
                w.steps
            );
            shown = std::time::Instant::now();
        }
    }
    Ok(report)
}

/// Which demonstration comes next under `warmstart.sampling`.
struct Order {
    sampling: DemoSampling,
    /// `Epochs`: the current pass's order, taken from the back.
    pass: Vec<usize>,
    len: usize,
}

impl Order {
    fn new(sampling: DemoSampling, len: usize) -> Self {
        Order {
            sampling,
            pass: Vec::new(),
            len,
        }
    }

    fn next(&mut self, rng: &mut impl Rng) -> usize {
        match self.sampling {
            DemoSampling::Uniform => rng.gen_range(0..self.len),
            DemoSampling::Epochs => {
                if self.pass.is_empty() {
                    use rand::seq::SliceRandom;
                    self.pass = (0..self.len).collect();
                    self.pass.shuffle(rng);
                }
                self.pass.pop().expect("demonstrations are not empty")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::tool_use::protocol::TokenProtocol;
    use crate::env::tool_use::reward::{Call, Gold};
    use crate::env::tool_use::tasks::{Item, Task};
    use crate::env::ToolSpec;
    use crate::ids::PromptId;

    /// The calc tasks with tools that always fail.
    struct Broken(Task);

    impl TaskSource for Broken {
        type Item = Item;
        fn prompt_item(&self, id: &PromptId) -> Item {
            self.0.prompt_item(id)
        }
        fn item(&self, split: Split, index: u64) -> Item {
            self.0.item(split, index)
        }
        fn prompt(&self, item: &Item) -> String {
            self.0.prompt(item)
        }
        fn tools(&self, item: &Item) -> Vec<ToolSpec> {
            TaskSource::tools(&self.0, item)
        }
        fn gold(&self, item: &Item) -> Option<Gold> {
            self.0.gold(item)
        }
        fn name(&self) -> String {
            "broken".into()
        }
        fn locate(&self, id: Option<&serde_json::Value>, prompt: &str) -> Result<Item, String> {
            self.0.locate(id, prompt)
        }
    }

    impl ToolSet<Item> for Broken {
        fn execute(&self, _item: &Item, _call: &Call) -> Result<String, String> {
            Err("the tool server is down".into())
        }
    }

    fn calc_config(sets: &[&str]) -> Config {
        let mut all = vec!["env.kind=\"tool_use\"", "policy.kind=\"transformer\""];
        all.extend(sets);
        let sets: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        crate::config::from_toml_str("", &sets).unwrap()
    }

    /// When every gold call fails, the error says so (with the tool's own words) instead of
    /// blaming `env.max_tokens`, and counts the items dropped for it.
    #[test]
    fn failing_gold_calls_are_named_as_the_cause() {
        let cfg = calc_config(&["env.no_call_share=0.0", "warmstart.demos=12"]);
        let task = Broken(Task::new(cfg.env.task_spec(cfg.seed)));
        let protocol = TokenProtocol {
            limits: cfg.env.limits(),
        };
        let err = demos(&cfg, &task, &protocol).unwrap_err().to_string();
        assert!(err.contains("none of the 12 demonstrations"), "{err}");
        assert!(err.contains("12: a gold call failed"), "{err}");
        assert!(err.contains("the tool server is down"), "{err}");
        assert!(!err.contains("max_tokens"), "{err}");
    }

    /// Demonstrations that are too long are counted with the longest length; the others kept.
    #[test]
    fn long_demonstrations_are_counted_and_the_rest_kept() {
        let cfg = calc_config(&["warmstart.demos=40", "env.max_tokens=14"]);
        let task = Task::new(cfg.env.task_spec(cfg.seed));
        let protocol = TokenProtocol {
            limits: cfg.env.limits(),
        };
        let kept = demos(&cfg, &task, &protocol).unwrap();
        assert!(!kept.is_empty() && kept.len() < 40, "{}", kept.len());
        assert!(kept.iter().all(|d| d.tokens.len() <= 14));
        let cfg = calc_config(&["warmstart.demos=40", "env.max_tokens=4"]);
        let err = demos(&cfg, &task, &protocol).unwrap_err().to_string();
        assert!(err.contains("40 longer than env.max_tokens = 4"), "{err}");
    }

    /// In passes, every demonstration comes once before any comes twice, in orders that differ
    /// from pass to pass; uniform draws repeat within a pass.
    #[test]
    fn epochs_take_every_demonstration_once_a_pass() {
        let mut rng = rng::stream(3, Role::Init, 1);
        let mut order = Order::new(DemoSampling::Epochs, 7);
        let passes: Vec<Vec<usize>> = (0..4)
            .map(|_| (0..7).map(|_| order.next(&mut rng)).collect())
            .collect();
        for pass in &passes {
            let mut sorted = pass.clone();
            sorted.sort();
            assert_eq!(sorted, (0..7).collect::<Vec<_>>(), "{passes:?}");
        }
        assert!(passes.windows(2).any(|w| w[0] != w[1]), "{passes:?}");
        let mut order = Order::new(DemoSampling::Uniform, 7);
        let draws: Vec<usize> = (0..70).map(|_| order.next(&mut rng)).collect();
        assert!(draws.chunks(7).any(|c| {
            let mut c = c.to_vec();
            c.sort();
            c.dedup();
            c.len() < 7
        }));
    }
}
