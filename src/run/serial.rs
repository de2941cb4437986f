//! Serial mode: actors and learner interleaved on one thread in a fixed order, bit-identical
//! for a seed on CPU and across a checkpoint and resume.
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::options::RunOptions;
use super::sampled::{SampledRun, SavedActors};
use crate::error::{Error, Result};
use crate::rl::actor::Actor;

/// Actors and learner interleaved on one thread in a fixed order. Returns the signal code when
/// interrupted (after checkpointing).
pub(super) fn serial_loop(
    run: &mut SampledRun,
    mut actors: Vec<Box<dyn Actor>>,
    saved: SavedActors,
    opts: &RunOptions,
) -> Result<Option<i32>> {
    let SavedActors {
        states: saved,
        next: mut next_actor,
    } = saved;
    if !saved.is_empty() {
        if saved.len() != actors.len() {
            return Err(Error::Corrupt(format!(
                "checkpoint has {} actors, config has {}",
                saved.len(),
                actors.len()
            )));
        }
        for (actor, state) in actors.iter_mut().zip(saved) {
            actor.set_state(state);
        }
    }
    let total = run.cfg.env.total_steps();
    let states =
        |actors: &[Box<dyn Actor>]| actors.iter().map(|a| a.state().clone()).collect::<Vec<_>>();
    let mut guard = super::contention::ThreadGuard::new(
        run.cfg.learner.intra_op_threads,
        run.cfg.learner.adapt_threads,
    );
    while run.learner.step() < total {
        if let Some(code) = opts.interrupted() {
            run.checkpoint(states(&actors), next_actor)?;
            return Ok(Some(code));
        }
        let t0 = Instant::now();
        while !run.learner.ready() {
            let batch = actors[next_actor].act()?;
            next_actor = (next_actor + 1) % actors.len();
            run.learner.ingest(batch);
        }
        let t1 = Instant::now();
        let stats = run.learner.train_step()?;
        if let Some(progress) = opts.progress {
            progress.store(run.learner.step(), Ordering::Relaxed);
        }
        if run
            .learner
            .step()
            .is_multiple_of(run.cfg.learner.sync_interval)
        {
            let snap = run.publish()?;
            for actor in &mut actors {
                actor.load(&snap)?;
            }
        }
        run.phases.act += t1.duration_since(t0).as_secs_f64();
        run.phases.learn += t1.elapsed().as_secs_f64();
        run.phases.steps += 1;
        run.after_step(&stats)?;
        guard.after_step();
        if run.rec.should_checkpoint(run.learner.step()) {
            run.checkpoint(states(&actors), next_actor)?;
        }
    }
    Ok(None)
}
