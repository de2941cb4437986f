//! The bandit's expected-gradient flow (`env.mode = "exact"`) as a run.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::Config;
use crate::env::bandit::{self, Bandit};
use crate::error::{Error, Result};
use crate::math::softmax;
use crate::rl::exact::{self, ExactFlow};
use crate::store::checkpoint::Checkpoint;
use crate::store::metrics::tags;

use super::options::{Outcome, RunOptions};
use super::recorder::Recorder;
use super::summary::{bandit_row, bandit_summary};

#[derive(Serialize, Deserialize)]
pub(super) struct ExactState {
    flow: ExactFlow,
    wall_time: f64,
}

pub(super) fn run_exact(
    cfg: &Config,
    run_dir: &Path,
    opts: &RunOptions,
    resume: Option<Checkpoint>,
) -> Result<Outcome> {
    let bandit = Bandit::new(&cfg.env.bandit_spec(), cfg.seed);
    let initial = bandit::initial_logits(&cfg.env.bandit_spec(), cfg.seed);
    let total = cfg.env.total_steps();
    let per_round = cfg.env.steps_per_round;
    let (mut flow, mut step, wall) = match resume {
        Some(ckpt) => {
            let s: ExactState = serde_json::from_value(ckpt.state)
                .map_err(|e| Error::Corrupt(format!("checkpoint state: {e}")))?;
            (s.flow, ckpt.step, s.wall_time)
        }
        None => (ExactFlow::new(initial.clone()), 0, 0.0),
    };
    let mut rec = Recorder::new(cfg, run_dir, total, step, wall)?;
    let mut v = exact::baseline(&cfg.loss, bandit.value(&flow.behaviour));
    if step == 0 {
        let row = bandit_row(
            0,
            per_round,
            &bandit,
            &softmax(&flow.logits),
            bandit.value(&flow.behaviour),
            v,
        );
        rec.log(row, 0)?;
    }
    let save = |rec: &mut Recorder, flow: &ExactFlow, step: u64| -> Result<()> {
        let state = ExactState {
            flow: flow.clone(),
            wall_time: rec.wall_time(),
        };
        let state = serde_json::to_value(state).expect("exact state serialises");
        rec.checkpoint(&Checkpoint {
            step,
            state,
            tensors: vec![],
        })
    };
    while step < total {
        if let Some(code) = opts.interrupted() {
            save(&mut rec, &flow, step)?;
            rec.finish()?;
            return Ok(Outcome::Interrupted { step, code });
        }
        if step > 0 && step % per_round == 0 {
            flow.new_round();
        }
        let v_mu = bandit.value(&flow.behaviour);
        v = exact::baseline(&cfg.loss, v_mu);
        let stats = flow.step(&bandit, v, cfg.env.eta);
        step += 1;
        if !stats.loss.is_finite() || flow.logits.iter().any(|l| !l.is_finite()) {
            return Err(Error::NonFinite {
                quantity: "logits",
                step,
            });
        }
        if rec.should_log(step) {
            let mut row = bandit_row(step, per_round, &bandit, &softmax(&flow.logits), v_mu, v);
            row.push(tags::LOSS, stats.loss)
                .push(tags::GRAD_NORM, stats.grad_norm);
            rec.log(row, 0)?;
        }
        if rec.should_checkpoint(step) {
            save(&mut rec, &flow, step)?;
        }
    }
    rec.finish()?;
    let final_probs = softmax(&flow.logits);
    let behaviour = flow.behaviour.clone();
    Ok(Outcome::Finished(bandit_summary(
        cfg,
        Device::Cpu,
        step,
        &rec,
        &bandit,
        &initial,
        behaviour,
        final_probs,
        v,
    )))
}
