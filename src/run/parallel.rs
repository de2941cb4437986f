//! Parallel mode: N actor threads and a learner thread over the in-process transport; the only
//! place threads are spawned. An actor that panics is reported by id, or restarted.
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::policy::WeightSnapshot;
use crate::rl::actor::{actor_loop, Actor, ActorLinks};
use crate::rl::learner::{learner_loop, Learner, LearnerHost, StepStats};
use crate::transport::local::{self, LocalControl, Pacer, SnapshotBoard};
use crate::transport::{RunControl, TrajectorySink, TrajectorySource, WeightBoard};

use super::options::RunOptions;
use super::sampled::SampledRun;

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Builds actor `id` afresh, for restarting one that panicked (`restart` counts from 1).
pub(super) type ActorFactory<'a> = dyn Fn(usize, u64) -> Result<Box<dyn Actor>> + Sync + 'a;

/// The learner thread's view of a parallel run.
pub(super) struct ParallelHost<'r, 'c, 'o> {
    run: &'r mut SampledRun<'c>,
    opts: &'r RunOptions<'o>,
}

impl LearnerHost for ParallelHost<'_, '_, '_> {
    fn learner(&mut self) -> &mut Learner {
        &mut self.run.learner
    }

    fn total_steps(&self) -> u64 {
        self.run.cfg.env.total_steps()
    }

    fn sync_interval(&self) -> u64 {
        self.run.cfg.learner.sync_interval
    }

    fn publish(&mut self) -> Result<WeightSnapshot> {
        self.run.publish()
    }

    fn after_step(&mut self, stats: &StepStats) -> Result<()> {
        if let Some(progress) = self.opts.progress {
            progress.store(self.run.learner.step(), Ordering::Relaxed);
        }
        if self.run.cfg.faults.learner_delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.run.cfg.faults.learner_delay_ms));
        }
        self.run.after_step(stats)
    }

    fn checkpoint(&mut self, now: bool) -> Result<()> {
        if now || self.run.rec.should_checkpoint(self.run.learner.step()) {
            // Parallel actors are not restored on resume: their states are not saved.
            self.run.checkpoint(Vec::new(), 0)?;
        }
        Ok(())
    }

    fn interrupted(&self) -> Option<i32> {
        self.opts.interrupted()
    }
}

/// N actor threads feeding the learner thread through the in-process transport.
pub(super) fn parallel_loop(
    run: &mut SampledRun,
    actors: Vec<Box<dyn Actor>>,
    factory: &ActorFactory,
    opts: &RunOptions,
) -> Result<Option<i32>> {
    let board = SnapshotBoard::new(run.behaviour.clone());
    let (replay, step) = (run.learner.replay(), run.learner.step());
    let control = LocalControl::new(Pacer::new(
        run.cfg.replay.max_policy_lag,
        replay.per_step(),
        replay.inserted(),
        step,
        replay.needed(step),
    ));
    let (sink, source) = local::channel(run.cfg.actor.channel_capacity);
    let sinks: Vec<Box<dyn TrajectorySink>> = actors
        .iter()
        .map(|_| Box::new(sink.clone()) as Box<dyn TrajectorySink>)
        .collect();
    // The learner hears "every actor stopped" once the actors' senders are gone.
    drop(sink);
    threads(
        run,
        actors,
        factory,
        opts,
        sinks,
        Box::new(source),
        &board,
        &control,
    )
}

/// The actor threads (each with its own sink) and the learner thread, over any transport.
#[allow(clippy::too_many_arguments)]
pub(super) fn threads(
    run: &mut SampledRun,
    actors: Vec<Box<dyn Actor>>,
    factory: &ActorFactory,
    opts: &RunOptions,
    sinks: Vec<Box<dyn TrajectorySink>>,
    source: Box<dyn TrajectorySource + Send>,
    board: &dyn WeightBoard,
    control: &dyn RunControl,
) -> Result<Option<i32>> {
    let restart = run.cfg.actor.restart;
    let panic_after = run.cfg.faults.actor_panic_after;
    let delay = Duration::from_millis(run.cfg.faults.actor_delay_ms);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (actor, sink) in actors.into_iter().zip(sinks) {
            let id = actor.id();
            let handle = std::thread::Builder::new()
                .name(format!("actor-{id}"))
                .spawn_scoped(scope, move || {
                    let mut next = Some(actor);
                    let mut restarts = 0u64;
                    loop {
                        let actor = match next.take() {
                            Some(a) => a,
                            None => match factory(id, restarts) {
                                Ok(a) => a,
                                Err(e) => return control.fail(e),
                            },
                        };
                        let links = ActorLinks {
                            sink: sink.as_ref(),
                            board,
                            control,
                            panic_after,
                            delay,
                        };
                        let result =
                            std::panic::catch_unwind(AssertUnwindSafe(|| actor_loop(actor, links)));
                        let err = match result {
                            Ok(Ok(())) => return,
                            Ok(Err(e)) => e,
                            Err(payload) => {
                                let message = panic_message(payload.as_ref());
                                if restart && !control.stopped() {
                                    restarts += 1;
                                    eprintln!(
                                        "actor {id} panicked: {message}; restarting it (restart {restarts})"
                                    );
                                    continue;
                                }
                                Error::ActorPanic { id, message }
                            }
                        };
                        return control.fail(err);
                    }
                })
                .map_err(|e| Error::io("actor thread", e))?;
            handles.push(handle);
        }
        let result = std::thread::Builder::new()
            .name("learner".into())
            .spawn_scoped(scope, move || {
                let mut host = ParallelHost { run, opts };
                // `source` goes with the learner: actors blocked on a full channel see it close.
                learner_loop(&mut host, source.as_ref(), board, control)
            })
            .map_err(|e| Error::io("learner thread", e))?
            .join()
            .unwrap_or_else(|payload| {
                Err(Error::Corrupt(format!(
                    "learner panicked: {}",
                    panic_message(payload.as_ref())
                )))
            });
        control.stop();
        for h in handles {
            let _ = h.join();
        }
        result
    })
}
